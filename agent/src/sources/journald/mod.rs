//! The `[journald]` source: follows the systemd journal through `journalctl`
//! and forwards every entry as an OTLP log record, exactly once, through the
//! disk queue.
//!
//! ```text
//! journalctl --follow --output=export ... | tern-journald-out --(8 x 64 KiB)--> tern-journald:
//!     export_format::Parser -> convert::Converter -> convert::Batch -> Sink::push(batch, cursor)
//! ```
//!
//! tern reads journalctl, not the journal files: libsystemd does not link
//! statically with musl, and journalctl knows every file format version.
//!
//! # Exactly once
//!
//! Each batch is queued together with the `__CURSOR` of the last entry it
//! dealt with (sent, filtered out or skipped), in one sled write
//! ([`Sink::push`] with a checkpoint). After a crash at any moment, the
//! queue holds every batch up to some cursor and nothing after it, and the
//! source starts again at that cursor. Entries that produce no record (all
//! filtered out) move the cursor with [`Sink::set_checkpoint`], at most once a
//! second.
//!
//! The source restarts with `--cursor=C`, not `--after-cursor=C`, and skips
//! the first entry when it is C's: journalctl's `--after-cursor` skips the
//! first entry at C's place whether or not it is C's, so when C was vacuumed
//! it silently drops the oldest entry left (systemd v252:
//! `sd_journal_next_skip(j, 1 + !!arg_after_cursor)`). Cursors are never taken
//! from `--show-cursor`; each entry carries its own.
//!
//! # Where it starts
//!
//! With a saved cursor: there. A short unfiltered `journalctl --cursor=C` run
//! first checks that C's entry still exists; if the journal was vacuumed past
//! it, the source goes on from the oldest entry left, logs one ERROR, and
//! counts the gap in `tern_journald_gaps_total` (and the entries lost, from
//! the sequence numbers, in `tern_journald_lost_entries_total` when the
//! journal file is the same). Without one, `read_from`: `head`, `boot`, or
//! `tail`, which saves the newest entry's cursor at once, so a restart before
//! the first log line loses nothing logged in between.
//!
//! # Failures
//!
//! journalctl missing (`spawn_failed`), exiting (`exited`), or silent for
//! `hang_timeout` while a probe run shows newer entries (`hang`): the source
//! restarts it from the last cursor after a backoff (0.5 s doubling to 30 s,
//! reset once data flows), logs one WARN line with the reason and
//! journalctl's last stderr line (repeats rate-limited), and counts it in
//! `tern_journald_restarts_total{reason}`. Nothing is lost or repeated: the
//! entry being read is read again whole.
//!
//! # Backpressure and memory
//!
//! The pipe is read by `tern-journald-out` into at most eight chunks of 64
//! KiB. While a queue write (with fsync) is behind, the chunks fill up,
//! the reader stops, the pipe fills and journalctl waits: a burst of any size
//! costs at most those chunks, one batch (512 KiB) and one entry
//! (`max_entry_size`). A queue write that fails is retried with backoff,
//! reading nothing meanwhile.
//!
//! # Batches
//!
//! A batch is queued at [`MAX_BATCH_RECORDS`] records, [`MAX_BATCH_BYTES`]
//! of estimated protobuf, or [`MAX_BATCH_AGE`] after its first record,
//! whichever comes first: big enough for the queue's write amplification
//! budget (see `queue`), small enough to bound memory and latency.

pub mod convert;
pub mod export_format;
mod journalctl;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{JournaldConfig, ReadFrom};
use crate::lifecycle::{RateLimit, Shutdown};
use crate::otlp;
use crate::queue::{Checkpoint, Signal};
use crate::sources::Sink;
use crate::telemetry::Metrics;

use convert::{Batch, Converter};
use export_format::{Entry, Limits, Outcome, Parser};
use journalctl::{Child, Failure, Journalctl, Position, Recv};

/// The source's name in the queue's checkpoints and in logs.
pub const SOURCE: &str = "journald";

/// A batch is queued once it has this many records.
pub const MAX_BATCH_RECORDS: usize = 1000;

/// A batch is queued once its records are estimated at this many bytes of
/// protobuf (before gzip).
pub const MAX_BATCH_BYTES: usize = 512 << 10;

/// A batch is queued at the latest this long after its first record.
pub const MAX_BATCH_AGE: Duration = Duration::from_secs(1);

/// How often the source looks at the clock (batch age, hang, stop) while
/// journalctl is quiet.
const TICK: Duration = Duration::from_millis(100);

/// First wait before restarting journalctl; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One WARN line per restart reason per this period; the rest are counted.
const LOG_PERIOD: Duration = Duration::from_secs(300);

/// Starts the source on a thread named `tern-journald`.
///
/// # Errors
///
/// If the thread cannot be started.
pub fn spawn(
    config: &JournaldConfig,
    resource: &[(String, String)],
    sink: Sink,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<JoinHandle<()>> {
    let source = Source {
        journalctl: Journalctl::new(config),
        pipeline: Pipeline::new(config, resource, sink.clone(), metrics.clone()),
        config: config.clone(),
        sink,
        metrics,
        backoff: MIN_BACKOFF,
        warnings: HashMap::new(),
        announced: false,
    };
    crate::lifecycle::spawn("tern-journald".into(), "the journald source", move || {
        source.run(&shutdown)
    })
}

/// The journalctl process loop: where to start, following, restarts.
struct Source {
    config: JournaldConfig,
    journalctl: Journalctl,
    pipeline: Pipeline,
    sink: Sink,
    metrics: Arc<Metrics>,
    backoff: Duration,
    warnings: HashMap<&'static str, RateLimit>,
    /// Whether the first journalctl start was logged (later ones are DEBUG).
    announced: bool,
}

impl Source {
    fn run(mut self, shutdown: &Shutdown) {
        log::info!(
            "Journald source started journalctl={} directory={} read_from={:?}",
            self.journalctl.program(),
            self.config
                .directory
                .as_ref()
                .map_or_else(|| "system".to_string(), |d| d.display().to_string()),
            self.config.read_from
        );
        while !shutdown.is_triggered() {
            let failure = match self.position() {
                Ok(position) => match self.follow(&position, shutdown) {
                    None => break,
                    Some(failure) => failure,
                },
                Err(failure) => failure,
            };
            if shutdown.is_triggered() {
                break;
            }
            self.restart_later(&failure, shutdown);
        }
        self.pipeline.flush(shutdown);
        log::info!("Journald source stopped");
    }

    /// Where journalctl starts: after what this process read, else at the
    /// saved cursor, else at `read_from`.
    fn position(&mut self) -> Result<Position, Failure> {
        if let Some(cursor) = self.pipeline.consumed().map(str::to_string) {
            return self.resume(cursor);
        }
        match self.sink.checkpoint(SOURCE) {
            Ok(Some(saved)) => match String::from_utf8(saved) {
                Ok(cursor) if valid_cursor(&cursor) => {
                    self.pipeline.resume_at(&cursor);
                    return self.resume(cursor);
                }
                _ => log::error!(
                    "Saved journal cursor is unreadable; starting from read_from={:?}",
                    self.config.read_from
                ),
            },
            Ok(None) => {}
            Err(e) => log::error!("Reading the saved journal cursor failed error={e}"),
        }
        match self.config.read_from {
            ReadFrom::Head => Ok(Position::Head),
            ReadFrom::Boot => Ok(Position::Boot),
            ReadFrom::Tail => {
                let newest = journalctl::probe(
                    self.journalctl.newest(),
                    &self.journalctl.program(),
                    1,
                    self.config.hang_timeout,
                )?;
                let Some(cursor) = newest.into_iter().next() else {
                    // An empty journal: its tail is its head.
                    return Ok(Position::Head);
                };
                if let Err(e) = self.sink.set_checkpoint(SOURCE, cursor.as_bytes()) {
                    log::error!("Saving the journal's tail cursor failed error={e}");
                }
                self.pipeline.resume_at(&cursor);
                Ok(Position::Cursor(cursor))
            }
        }
    }

    /// Checks that `cursor`'s entry still exists (counting the gap if not),
    /// and resumes there.
    fn resume(&mut self, cursor: String) -> Result<Position, Failure> {
        let first = journalctl::probe(
            self.journalctl.at_cursor(&cursor),
            &self.journalctl.program(),
            1,
            self.config.hang_timeout,
        )?;
        match first.first() {
            Some(found) if same_entry(found, &cursor) => {}
            Some(found) => {
                let lost = lost_between(&cursor, found);
                self.metrics.inc("tern_journald_gaps_total", &[]);
                if let Some(n) = lost {
                    self.metrics
                        .add("tern_journald_lost_entries_total", &[], n as f64);
                }
                log::error!(
                    "Journal entries lost: the saved cursor is gone (journal vacuumed or rotated away); continuing from the oldest entry left lost={} cursor={cursor} oldest={found}",
                    lost.map_or_else(|| "unknown".to_string(), |n| n.to_string())
                );
            }
            None => log::debug!("No journal entry at or after the cursor yet cursor={cursor}"),
        }
        Ok(Position::Cursor(cursor))
    }

    /// Follows the journal until journalctl fails (returned) or the agent
    /// stops (`None`).
    fn follow(&mut self, position: &Position, shutdown: &Shutdown) -> Option<Failure> {
        let program = self.journalctl.program();
        let child = match Child::spawn(self.journalctl.follow(position)) {
            Ok(c) => c,
            Err(e) => return Some(Failure::spawn(&program, &e)),
        };
        let mut child = child;
        let from = match position {
            Position::Head => "head".to_string(),
            Position::Boot => "boot".to_string(),
            Position::Cursor(c) => format!("cursor={c}"),
        };
        if self.announced {
            log::debug!("journalctl started from={from}");
        } else {
            log::info!("Following the journal from={from}");
            self.announced = true;
        }
        self.pipeline.start_stream(match position {
            Position::Cursor(c) => Some(c.clone()),
            _ => None,
        });
        let hang_timeout = self.config.hang_timeout;
        let grace = hang_timeout.min(Duration::from_secs(5));
        let mut last_data = Instant::now();
        let mut suspect: Option<Instant> = None;
        loop {
            if shutdown.is_triggered() {
                child.kill();
                return None;
            }
            match child.recv(TICK) {
                Recv::Data(bytes) => {
                    self.pipeline.feed(&bytes, shutdown);
                    self.pipeline.tick(shutdown);
                    last_data = Instant::now();
                    suspect = None;
                    self.backoff = MIN_BACKOFF;
                }
                Recv::End => {
                    let (status, stderr) = child.finish();
                    // `systemctl stop` signals journalctl too (the unit's
                    // cgroup), often a moment before tern: not a failure.
                    if shutdown.sleep(Duration::from_millis(200)) {
                        return None;
                    }
                    return Some(Failure::exited(status, &stderr));
                }
                Recv::Timeout => {
                    self.pipeline.tick(shutdown);
                    if let Some(since) = suspect {
                        if since.elapsed() >= grace {
                            child.kill();
                            return Some(Failure::hang(&format!(
                                "silent_for={:.1}s while the journal has newer entries",
                                last_data.elapsed().as_secs_f64()
                            )));
                        }
                    } else if last_data.elapsed() >= hang_timeout {
                        if self.newer_entries(position) {
                            suspect = Some(Instant::now());
                        } else {
                            // A quiet journal: look again in hang_timeout.
                            last_data = Instant::now();
                        }
                    }
                }
            }
        }
    }

    /// Whether the journal has entries the follower should have printed by
    /// now (a probe that hangs too counts as yes).
    fn newer_entries(&self, started_at: &Position) -> bool {
        let position = self
            .pipeline
            .consumed()
            .map_or_else(|| started_at.clone(), |c| Position::Cursor(c.to_string()));
        let cursor = match &position {
            Position::Cursor(c) => Some(c.clone()),
            _ => None,
        };
        match journalctl::probe(
            self.journalctl.probe(&position),
            &self.journalctl.program(),
            2,
            self.config.hang_timeout,
        ) {
            Ok(found) => found
                .iter()
                .any(|c| cursor.as_deref().map_or(true, |cur| !same_entry(c, cur))),
            Err(f) => {
                log::debug!("Hang check failed reason={} {}", f.reason, f.detail);
                f.reason == "hang"
            }
        }
    }

    /// Counts and logs a failure, then waits out the backoff.
    fn restart_later(&mut self, failure: &Failure, shutdown: &Shutdown) {
        self.metrics.inc(
            "tern_journald_restarts_total",
            &[("reason", failure.reason)],
        );
        let limit = self
            .warnings
            .entry(failure.reason)
            .or_insert_with(|| RateLimit::new(LOG_PERIOD));
        if let Some(suppressed) = limit.check() {
            log::warn!(
                "Journal reader failed; restarting journalctl from the last cursor reason={} {} retry_in={:.1}s suppressed={suppressed}",
                failure.reason,
                failure.detail,
                self.backoff.as_secs_f64()
            );
        }
        // Queue what was read before waiting, so a long backoff delays nothing.
        self.pipeline.flush(shutdown);
        shutdown.sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Counts kept between two publications to the self metrics (per batch).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Entries read (skipped ones included, the resumed-at entry not).
    pub entries: u64,
    /// Entries dropped by `exclude_units`.
    pub excluded: u64,
    /// Entries over `max_entry_size`.
    pub too_large: u64,
    /// Entries the stream damaged.
    pub malformed: u64,
    /// Values cut to `max_field_size`.
    pub truncated_fields: u64,
}

/// Bytes in, queued batches out: the parser, the converter, the batch being
/// built and the cursors. The source feeds it journalctl's output; the
/// benchmark feeds it a recorded stream.
#[derive(Debug)]
pub struct Pipeline {
    parser: Parser,
    handler: Handler,
}

#[derive(Debug)]
struct Handler {
    converter: Converter,
    batch: Batch,
    sink: Sink,
    metrics: Arc<Metrics>,
    /// The cursor of the last entry dealt with (in the batch, or skipped).
    consumed: Option<String>,
    /// The cursor stored in the queue.
    stored: Option<String>,
    /// The cursor of the entry the stream starts at, already dealt with.
    skip: Option<String>,
    counts: Counts,
    totals: Counts,
    last_store: Instant,
    /// When the current chunk was read, ns since the epoch.
    observed: u64,
    /// The agent is stopping and the batch could not be queued: read on
    /// without queueing (the entries are read again at the next start).
    halted: bool,
    entry_errors: RateLimit,
    queue_errors: RateLimit,
}

impl Pipeline {
    /// A pipeline for `config`, adding the `[resource]` attributes and
    /// pushing into `sink`.
    pub fn new(
        config: &JournaldConfig,
        resource: &[(String, String)],
        sink: Sink,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        let limits = Limits {
            max_field: usize::try_from(config.max_field_size).unwrap_or(usize::MAX),
            max_entry: usize::try_from(config.max_entry_size).unwrap_or(usize::MAX),
        };
        Pipeline {
            parser: Parser::new(limits),
            handler: Handler {
                converter: Converter::new(resource, &config.exclude_units),
                batch: Batch::new(),
                sink,
                metrics,
                consumed: None,
                stored: None,
                skip: None,
                counts: Counts::default(),
                totals: Counts::default(),
                last_store: Instant::now(),
                observed: 0,
                halted: false,
                entry_errors: RateLimit::new(Duration::from_secs(60)),
                queue_errors: RateLimit::new(Duration::from_secs(30)),
            },
        }
    }

    /// Parses the next bytes of the stream; queues each batch that fills up
    /// (blocking, retrying a failing queue until `shutdown`).
    pub fn feed(&mut self, bytes: &[u8], shutdown: &Shutdown) {
        let handler = &mut self.handler;
        handler.observed = crate::sources::unix_nanos(SystemTime::now());
        self.parser
            .feed(bytes, &mut |entry| handler.entry(entry, shutdown));
    }

    /// Queues the batch once it is [`MAX_BATCH_AGE`] old, and stores the
    /// cursor of entries that produced no record once a second.
    pub fn tick(&mut self, shutdown: &Shutdown) {
        let h = &mut self.handler;
        let due = match h.batch.started() {
            Some(started) => started.elapsed() >= MAX_BATCH_AGE,
            None => h.consumed != h.stored && h.last_store.elapsed() >= MAX_BATCH_AGE,
        };
        if due {
            h.flush(shutdown);
        }
    }

    /// Queues the batch now (and the cursor, if it moved). Returns false if
    /// the queue refused it until `shutdown` fired.
    pub fn flush(&mut self, shutdown: &Shutdown) -> bool {
        self.handler.flush(shutdown)
    }

    /// A new journalctl stream begins, at the entry of `skip` if given (that
    /// entry was dealt with; it is dropped if it comes first). Any partial
    /// entry of the previous stream is forgotten: it comes again whole.
    pub fn start_stream(&mut self, skip: Option<String>) {
        self.parser.reset();
        self.handler.skip = skip;
    }

    /// Sets the cursor this source resumes at (saved earlier, or the tail).
    pub fn resume_at(&mut self, cursor: &str) {
        self.handler.consumed = Some(cursor.to_string());
        self.handler.stored = Some(cursor.to_string());
    }

    /// The cursor of the last entry dealt with.
    pub fn consumed(&self) -> Option<&str> {
        self.handler.consumed.as_deref()
    }

    /// Everything counted so far.
    pub fn totals(&self) -> Counts {
        let (t, c) = (self.handler.totals, self.handler.counts);
        Counts {
            entries: t.entries + c.entries,
            excluded: t.excluded + c.excluded,
            too_large: t.too_large + c.too_large,
            malformed: t.malformed + c.malformed,
            truncated_fields: t.truncated_fields + c.truncated_fields,
        }
    }
}

impl Handler {
    fn entry(&mut self, entry: &Entry<'_>, shutdown: &Shutdown) {
        if self.halted {
            // Stopping with a batch the queue refused: it is read again at
            // the next start, and so is everything after it.
            return;
        }
        let cursor = entry.cursor().and_then(|c| std::str::from_utf8(c).ok());
        if let Some(skip) = self.skip.take() {
            if cursor.is_some_and(|c| same_entry(c, &skip)) {
                return;
            }
        }
        self.counts.entries += 1;
        match entry.outcome() {
            Outcome::Complete => {
                self.counts.truncated_fields += u64::from(entry.truncated_fields());
                if self.converter.excluded(entry) {
                    self.counts.excluded += 1;
                } else {
                    let converted = self.converter.convert(entry, self.observed);
                    self.batch.add(converted, &self.converter);
                }
            }
            Outcome::TooLarge => {
                self.counts.too_large += 1;
                if let Some(suppressed) = self.entry_errors.check() {
                    log::warn!(
                        "Journal entry skipped: larger than max_entry_size cursor={} suppressed={suppressed}",
                        cursor.unwrap_or("none")
                    );
                }
            }
            Outcome::Malformed(e) => {
                self.counts.malformed += 1;
                if let Some(suppressed) = self.entry_errors.check() {
                    log::error!(
                        "Journal entry lost: journalctl's output is damaged error={e} cursor={} suppressed={suppressed}",
                        cursor.unwrap_or("none")
                    );
                }
            }
        }
        if let Some(c) = cursor {
            let consumed = self.consumed.get_or_insert_with(String::new);
            consumed.clear();
            consumed.push_str(c);
        }
        if self.batch.len() >= MAX_BATCH_RECORDS || self.batch.bytes() >= MAX_BATCH_BYTES {
            self.flush(shutdown);
        }
    }

    fn flush(&mut self, shutdown: &Shutdown) -> bool {
        if self.halted {
            return false;
        }
        let ok = if self.batch.is_empty() {
            self.store_cursor()
        } else {
            self.push(shutdown)
        };
        self.publish();
        ok
    }

    /// Stores the cursor alone, if it moved.
    fn store_cursor(&mut self) -> bool {
        self.last_store = Instant::now();
        if self.consumed == self.stored {
            return true;
        }
        let Some(cursor) = &self.consumed else {
            return true;
        };
        match self.sink.set_checkpoint(SOURCE, cursor.as_bytes()) {
            Ok(()) => {
                self.stored = self.consumed.clone();
                true
            }
            Err(e) => {
                // Harmless: the entries behind it produced nothing to send.
                log::debug!("Storing the journal cursor failed error={e}");
                false
            }
        }
    }

    /// Queues the batch with the cursor, retrying until it is stored or the
    /// agent stops.
    fn push(&mut self, shutdown: &Shutdown) -> bool {
        let items = self.batch.len();
        let encoded = otlp::encode(&self.batch.take());
        let cursor = self.consumed.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let checkpoint = cursor.as_deref().map(|c| Checkpoint {
                source: SOURCE,
                value: c.as_bytes(),
            });
            match self
                .sink
                .push(Signal::Logs, &encoded, items, checkpoint, SOURCE)
            {
                Ok(()) => {
                    self.stored = cursor;
                    self.last_store = Instant::now();
                    return true;
                }
                Err(e) => {
                    if let Some(suppressed) = self.queue_errors.check() {
                        log::error!(
                            "Queueing journal entries failed; retrying without reading more records={items} error={e} suppressed={suppressed}"
                        );
                    }
                    if shutdown.sleep(backoff) {
                        log::warn!(
                            "Stopping with journal entries not queued; they are read again at the next start records={items}"
                        );
                        self.halted = true;
                        return false;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Adds the counts to the self metrics.
    fn publish(&mut self) {
        let c = std::mem::take(&mut self.counts);
        let m = &self.metrics;
        if c.entries > 0 {
            m.add("tern_journald_entries_total", &[], c.entries as f64);
        }
        for (reason, n) in [
            ("excluded", c.excluded),
            ("too_large", c.too_large),
            ("malformed", c.malformed),
        ] {
            if n > 0 {
                m.add(
                    "tern_journald_skipped_entries_total",
                    &[("reason", reason)],
                    n as f64,
                );
            }
        }
        if c.truncated_fields > 0 {
            m.add(
                "tern_journald_truncated_fields_total",
                &[],
                c.truncated_fields as f64,
            );
        }
        let t = &mut self.totals;
        t.entries += c.entries;
        t.excluded += c.excluded;
        t.too_large += c.too_large;
        t.malformed += c.malformed;
        t.truncated_fields += c.truncated_fields;
    }
}

/// The `key=value` parts of a cursor (`s=..;i=..;b=..;m=..;t=..;x=..`).
fn cursor_parts(cursor: &str) -> impl Iterator<Item = (&str, &str)> {
    cursor.split(';').filter_map(|p| p.split_once('='))
}

/// Whether `c` looks like a journal cursor: `k=v` pairs, single-letter keys,
/// printable ASCII, and an entry identity (`s` and `i`, or `b` and `m`).
pub fn valid_cursor(c: &str) -> bool {
    let shape = !c.is_empty()
        && c.len() <= export_format::MAX_CURSOR_LEN
        && c.bytes().all(|b| b.is_ascii_graphic())
        && c.split(';').all(|p| {
            p.split_once('=')
                .is_some_and(|(k, v)| k.len() == 1 && !v.is_empty())
        });
    let has = |k: &str| cursor_parts(c).any(|(key, _)| key == k);
    shape && ((has("s") && has("i")) || (has("b") && has("m")))
}

/// Whether two cursors name the same entry: every identity field present in
/// both agrees, as `sd_journal_test_cursor` checks.
pub fn same_entry(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let mut common = 0;
    for key in ["s", "i", "b", "m", "t", "x"] {
        let va = cursor_parts(a).find(|(k, _)| *k == key).map(|(_, v)| v);
        let vb = cursor_parts(b).find(|(k, _)| *k == key).map(|(_, v)| v);
        match (va, vb) {
            (Some(x), Some(y)) if x != y => return false,
            (Some(_), Some(_)) => common += 1,
            _ => {}
        }
    }
    common >= 2
}

/// Entries lost between the saved cursor and the oldest entry left, when
/// both are in the same sequence (same `s`): `i` is a hex sequence number.
fn lost_between(saved: &str, oldest: &str) -> Option<u64> {
    let seq = |c: &str| -> Option<(String, u64)> {
        let s = cursor_parts(c).find(|(k, _)| *k == "s")?.1.to_string();
        let i = cursor_parts(c).find(|(k, _)| *k == "i")?.1;
        Some((s, u64::from_str_radix(i, 16).ok()?))
    };
    let (s1, i1) = seq(saved)?;
    let (s2, i2) = seq(oldest)?;
    (s1 == s2 && i2 > i1).then(|| i2 - i1 - 1)
}
