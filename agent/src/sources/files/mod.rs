//! The `[[file]]` source: follows log files, each line a log record, through
//! rotation, exactly once through the disk queue.
//!
//! ```text
//! globs --scan (1 s)--> tracked files --read (250 ms)--> lines --> Batch --> Sink::push(batch, positions)
//! ```
//!
//! # Which file is which
//!
//! A file is known by its device and inode, checked against a fingerprint
//! (an FNV-1a hash of its first bytes, up to 256), so a new file that gets a
//! deleted one's inode is not taken for it. A file renamed away (logrotate's
//! `create`) or deleted is still read from the descriptor tern holds, to its
//! end and for `rotate_wait` more (writers reopen late), then closed; the new
//! file at the path is found by the next scan and read from its start. A file
//! that shrank under tern, or whose first bytes changed (logrotate's
//! `copytruncate`), is read again from its start, counted in
//! `tern_file_truncations_total`. Compressed files (`.gz`, `.xz`, `.bz2`,
//! `.zst`, `.lz4`, `.zip`) are never read: rotated logs being compressed
//! are the old file's copies.
//!
//! # Exactly once
//!
//! Each batch is queued in one write with the position of every followed
//! file: device, inode, fingerprint and the offset after the last line in a
//! batch so far (checkpoint `files`). After a crash or a power cut, tern
//! resumes every file at that offset: a line is queued once, none skipped. A
//! file renamed while tern was down is found again in its directory by its
//! inode and read to its end. A line not yet ended by a newline is not
//! consumed: it is read again whole after a restart.
//!
//! # Memory
//!
//! One 64 KiB read buffer for all files, and for each file its line not yet
//! ended, at most `max_line_size` (a longer line is cut, counted, and the
//! rest skipped as it is read), plus one batch.

pub mod state;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::config::glob::{match_name, Glob, Name, MAX_DEPTH};
use crate::config::{FileConfig, ReadFrom};
use crate::lifecycle::{RateLimit, Shutdown};
use crate::otlp;
use crate::otlp::logs::LogBatch;
use crate::queue::{Checkpoint, Signal};
use crate::sources::journald::convert::{Converter, Host};
use crate::sources::Sink;
use crate::telemetry::Metrics;

use state::{FileId, Fingerprint, Saved, FINGERPRINT_LEN};

/// The source's name in the queue's checkpoints and in logs.
pub const SOURCE: &str = "files";

/// A batch is queued once it has this many records.
const MAX_BATCH_RECORDS: usize = 1000;
/// A batch is queued once its records are estimated at this many bytes.
const MAX_BATCH_BYTES: usize = 512 << 10;
/// A batch is queued at the latest this long after its first record.
const MAX_BATCH_AGE: Duration = Duration::from_secs(1);
/// How often files are read.
const POLL: Duration = Duration::from_millis(250);
/// How often the globs are expanded again to find new files.
const SCAN: Duration = Duration::from_secs(1);
/// Bytes read at once.
const READ_SIZE: usize = 64 << 10;
/// A multiline record is sent once no line came for this long.
const MULTILINE_WAIT: Duration = Duration::from_secs(1);
/// Bytes read from one file in one poll before the next file's turn.
const READ_PER_POLL: u64 = 4 << 20;

/// Extensions of compressed files, which are never followed.
const COMPRESSED: [&str; 7] = ["gz", "xz", "bz2", "zst", "lz4", "zip", "Z"];

/// Starts the source on a thread named `tern-files`.
///
/// # Errors
///
/// If the thread cannot be started.
pub fn spawn(
    groups: &[FileConfig],
    resource: &[(String, String)],
    sink: Sink,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<JoinHandle<()>> {
    let mut source = Source::new(groups, resource, sink, metrics, shutdown.clone());
    crate::lifecycle::spawn("tern-files".into(), "the file source", move || {
        source.run(&shutdown);
    })
}

/// A followed file.
#[derive(Debug)]
struct Tracked {
    id: FileId,
    path: PathBuf,
    /// `log.file.path` and `log.file.name` of its records.
    path_attr: String,
    name_attr: String,
    group: usize,
    file: File,
    fp: Fingerprint,
    /// Where the next read starts.
    read_at: u64,
    /// The offset after the last line handed to the batch: its checkpoint.
    committed: u64,
    /// A line not yet ended, at most `max_line_size` of it.
    partial: Vec<u8>,
    /// The line being read is longer than `max_line_size`.
    overlong: bool,
    /// Since when its path no longer leads to it (renamed or deleted).
    gone: Option<Instant>,
    /// The record being gathered when lines join (`multiline`).
    pending: Option<Pending>,
}

/// A multiline record not yet complete: its lines so far.
#[derive(Debug)]
struct Pending {
    text: Vec<u8>,
    cut: bool,
    /// The file's offset after its last line.
    end: u64,
    /// When its last line came.
    since: Instant,
}

impl Tracked {
    /// `file` at `path`, read from `start`; `gone` when its path no longer
    /// leads to it (a rotated copy, read to its end and dropped).
    fn new(path: PathBuf, file: File, group: usize, start: u64, gone: bool) -> Tracked {
        let (id, size) = file.metadata().map_or((FileId { dev: 0, ino: 0 }, 0), |m| {
            (FileId::of(&m), m.len())
        });
        Tracked {
            id,
            path_attr: path.to_string_lossy().into_owned(),
            name_attr: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path,
            group,
            fp: Fingerprint::of(&file, size),
            file,
            read_at: start,
            committed: start,
            partial: Vec::new(),
            overlong: false,
            gone: gone.then(Instant::now),
            pending: None,
        }
    }
}

/// The copy logrotate's `copytruncate` left of the file `id` at `path`, which
/// started with `fp` and was read to `offset`: a regular file beside it (not
/// compressed), another inode, starting with the same bytes and at least
/// `offset` long.
fn find_copy(path: &Path, id: FileId, fp: &Fingerprint, offset: u64) -> Option<(PathBuf, File)> {
    if offset == 0 || fp.covered() == 0 {
        return None;
    }
    let dir = path.parent()?;
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| !compressed(p))
        .collect();
    candidates.sort();
    candidates.into_iter().find_map(|p| {
        let meta = std::fs::metadata(&p).ok()?;
        if !meta.is_file() || FileId::of(&meta) == id || meta.len() < offset {
            return None;
        }
        let file = File::open(&p).ok()?;
        fp.matches(&file, meta.len()).then_some((p, file))
    })
}

fn compressed(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| COMPRESSED.contains(&e))
}

/// Counts since they were last published.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    lines: u64,
    cut: u64,
    truncations: u64,
    rotations: u64,
    errors: u64,
}

struct Source {
    groups: Vec<FileConfig>,
    converter: Converter,
    sink: Sink,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
    hostname: Option<Vec<u8>>,
    files: Vec<Tracked>,
    /// Positions saved by an earlier run, not yet matched to a file.
    saved: HashMap<FileId, Saved>,
    /// Whether an earlier run saved positions (then `read_from` no longer
    /// applies: a file found now is new since, and read from its start).
    resumed: bool,
    batch: LogBatch,
    buf: Vec<u8>,
    counts: Counts,
    /// The positions changed without a batch (files found, dropped).
    dirty: bool,
    /// A file had more than one poll's worth to read.
    behind: bool,
    last_store: Instant,
    errors: RateLimit,
    queue_errors: RateLimit,
    halted: bool,
}

impl Source {
    fn new(
        groups: &[FileConfig],
        resource: &[(String, String)],
        sink: Sink,
        metrics: Arc<Metrics>,
        shutdown: Arc<Shutdown>,
    ) -> Source {
        Source {
            groups: groups.to_vec(),
            converter: Converter::new(resource, &[]),
            sink,
            metrics,
            shutdown,
            hostname: crate::sources::local_hostname(),
            files: Vec::new(),
            saved: HashMap::new(),
            resumed: false,
            batch: LogBatch::new("tern/file"),
            buf: vec![0; READ_SIZE],
            counts: Counts::default(),
            dirty: false,
            behind: false,
            last_store: Instant::now(),
            errors: RateLimit::new(Duration::from_secs(60)),
            queue_errors: RateLimit::new(Duration::from_secs(30)),
            halted: false,
        }
    }

    fn run(&mut self, shutdown: &Shutdown) {
        let globs: Vec<&str> = self
            .groups
            .iter()
            .flat_map(|g| g.include.iter().map(Glob::as_str))
            .collect();
        log::info!("File source started include={}", globs.join(","));
        match self.sink.checkpoint(SOURCE) {
            Ok(Some(bytes)) => match state::decode(&bytes) {
                Some(saved) => {
                    self.resumed = true;
                    self.saved = saved.into_iter().map(|s| (s.id, s)).collect();
                }
                None => log::error!(
                    "Saved file positions are unreadable; files are read as if first seen"
                ),
            },
            Ok(None) => {}
            Err(e) => log::error!("Reading the saved file positions failed error={e}"),
        }
        self.find_renamed();
        let mut first = true;
        let mut last_scan: Option<Instant> = None;
        while !shutdown.is_triggered() {
            if last_scan.map_or(true, |t| t.elapsed() >= SCAN) {
                self.scan(first);
                if first {
                    // Where each file starts is known now: keep it, so a
                    // restart before the first line loses nothing.
                    self.dirty = true;
                    self.store_positions();
                }
                first = false;
                last_scan = Some(Instant::now());
            }
            self.behind = false;
            self.poll();
            if self
                .batch
                .started()
                .is_some_and(|s| s.elapsed() >= MAX_BATCH_AGE)
            {
                self.push();
            } else if self.batch.is_empty()
                && self.dirty
                && self.last_store.elapsed() >= MAX_BATCH_AGE
            {
                // Only with no batch held: the positions cover its lines.
                self.store_positions();
            }
            self.publish();
            if self.behind {
                if shutdown.is_triggered() {
                    break;
                }
            } else if shutdown.sleep(POLL) {
                break;
            }
        }
        self.push();
        self.publish();
        log::info!("File source stopped");
    }

    /// Files an earlier run followed that the scan will not find: rotated
    /// files it was still reading (their names are not the globs'), and files
    /// renamed while tern was down, found again in their directory by inode.
    /// They are read from their saved position to their end.
    fn find_renamed(&mut self) {
        let mut left: Vec<Saved> = self
            .saved
            .values()
            .filter(|s| {
                let here = std::fs::metadata(&s.path).is_ok_and(|m| FileId::of(&m) == s.id);
                // One at its path that the globs take is the scan's.
                !(here && self.group_of(&s.path).is_some())
            })
            .cloned()
            .collect();
        left.sort_by_key(|s| s.path.clone());
        for s in left {
            let here = std::fs::metadata(&s.path).is_ok_and(|m| FileId::of(&m) == s.id);
            let found = if here {
                Some(s.path.clone())
            } else {
                let Some(dir) = s.path.parent() else { continue };
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                // The same inode, and the same first bytes: not a new file
                // that got the inode of a deleted one (a compressed copy, say).
                entries.flatten().map(|e| e.path()).find(|p| {
                    !compressed(p)
                        && std::fs::metadata(p).is_ok_and(|m| {
                            m.is_file()
                                && FileId::of(&m) == s.id
                                && File::open(p).is_ok_and(|f| s.fp.matches(&f, m.len()))
                        })
                })
            };
            match found {
                Some(path) => {
                    let group = self.group_of(&s.path).unwrap_or(0);
                    if self.track(&path, group, false) {
                        if let Some(t) = self.files.last_mut() {
                            t.gone = Some(Instant::now());
                        }
                    }
                }
                None => log::warn!(
                    "A followed file is gone since tern stopped (rotated and compressed, or deleted): if it had lines after offset={}, they are lost path={}",
                    s.offset,
                    s.path.display()
                ),
            }
        }
    }

    /// The group whose globs match `path`.
    fn group_of(&self, path: &Path) -> Option<usize> {
        self.groups.iter().position(|g| {
            g.include.iter().any(|i| i.matches(path)) && !g.exclude.iter().any(|e| e.matches(path))
        })
    }

    /// Expands the globs and follows the files not followed yet.
    fn scan(&mut self, first: bool) {
        let mut found = Vec::new();
        for (group, g) in self.groups.iter().enumerate() {
            for include in &g.include {
                let mut paths = Vec::new();
                expand(include, &mut paths);
                paths.sort();
                for p in paths {
                    if !compressed(&p) && !g.exclude.iter().any(|e| e.matches(&p)) {
                        found.push((p, group));
                    }
                }
            }
        }
        for (path, group) in found {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let id = FileId::of(&meta);
            if let Some(t) = self.files.iter_mut().find(|t| t.id == id) {
                if t.path != path && t.gone.is_some() {
                    // Renamed to another name the globs take: the same file.
                    t.gone = None;
                    t.path = path;
                }
                continue;
            }
            let tail = first
                && !self.resumed
                && self
                    .groups
                    .get(group)
                    .is_some_and(|g| g.read_from == ReadFrom::Tail);
            self.track(&path, group, tail);
        }
    }

    /// Opens `path` and follows it: from its saved position, else from its
    /// end when `tail`, else from its start. Returns whether it is followed.
    fn track(&mut self, path: &Path, group: usize, tail: bool) -> bool {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                self.counts.errors += 1;
                if let Some(suppressed) = self.errors.check() {
                    log::warn!(
                        "Cannot open a followed file path={} error={e} suppressed={suppressed}",
                        path.display()
                    );
                }
                return false;
            }
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let id = FileId::of(&meta);
        let size = meta.len();
        let start = match self.saved.remove(&id) {
            Some(s) if s.fp.matches(&file, size) && s.offset <= size => s.offset,
            Some(s) => {
                // Truncated while tern was stopped (copytruncate): what was
                // not read yet is in the copy, if it is still there.
                self.counts.truncations += 1;
                log::warn!(
                    "A followed file was truncated while tern was stopped; reading it again from its start path={}",
                    path.display()
                );
                if let Some(copy) = find_copy(path, id, &s.fp, s.offset) {
                    self.files
                        .push(Tracked::new(copy.0, copy.1, group, s.offset, true));
                }
                0
            }
            None if tail => size,
            None => 0,
        };
        log::debug!(
            "Following path={} offset={start} size={size}",
            path.display()
        );
        self.files
            .push(Tracked::new(path.to_path_buf(), file, group, start, false));
        self.dirty = true;
        true
    }

    /// Reads what every file has new, and drops the files rotated away and
    /// read to their end.
    fn poll(&mut self) {
        let mut i = 0;
        while i < self.files.len() {
            if let Some(copy) = self.check(i) {
                // The copy's rest comes before what the file has now.
                if !self.files.iter().any(|t| t.id == copy.id) {
                    self.files.insert(i, copy);
                }
            }
            let done = self.read_file(i);
            if done {
                let t = self.files.remove(i);
                log::debug!(
                    "Done with a rotated or deleted file path={}",
                    t.path.display()
                );
                self.counts.rotations += 1;
                self.dirty = true;
            } else {
                i += 1;
            }
        }
    }

    /// Looks whether file `i` was rotated away or truncated; a truncated
    /// file starts again at 0, and the copy logrotate's `copytruncate` made of
    /// it, when found, is given back to be read from where the file was.
    fn check(&mut self, i: usize) -> Option<Tracked> {
        let t = self.files.get_mut(i)?;
        let here = std::fs::metadata(&t.path).is_ok_and(|m| FileId::of(&m) == t.id);
        if here {
            t.gone = None;
        } else if t.gone.is_none() {
            t.gone = Some(Instant::now());
        }
        let size = t.file.metadata().ok()?.len();
        if size >= t.read_at && t.fp.matches(&t.file, size) {
            if t.fp.covered() < FINGERPRINT_LEN && size > t.fp.covered() as u64 {
                t.fp = Fingerprint::of(&t.file, size);
                self.dirty = true;
            }
            return None;
        }
        // Shrunk, or rewritten from its start (copytruncate, then written on).
        self.counts.truncations += 1;
        log::warn!(
            "A followed file was truncated; reading it again from its start path={}",
            t.path.display()
        );
        let copy = find_copy(&t.path, t.id, &t.fp, t.committed)
            .map(|(path, file)| Tracked::new(path, file, t.group, t.committed, true));
        t.read_at = 0;
        t.committed = 0;
        t.partial.clear();
        // Its lines come again, from the copy or not at all.
        t.pending = None;
        t.overlong = false;
        t.fp = Fingerprint::of(&t.file, size);
        self.dirty = true;
        copy
    }

    /// Reads file `i` as far as it goes this poll; true when it was rotated
    /// away, is read to its end, and `rotate_wait` passed.
    fn read_file(&mut self, i: usize) -> bool {
        let Some(group) = self.files.get(i).and_then(|t| self.groups.get(t.group)) else {
            return true;
        };
        let (rotate_wait, max_line) = (group.rotate_wait, group.max_line_size);
        // The buffer is lent out while lines go from it to the batch.
        let mut buf = std::mem::take(&mut self.buf);
        let done = self.read_lines(i, &mut buf, max_line, rotate_wait);
        self.buf = buf;
        done
    }

    fn read_lines(
        &mut self,
        i: usize,
        buf: &mut [u8],
        max_line: usize,
        rotate_wait: Duration,
    ) -> bool {
        let observed = crate::sources::unix_nanos(SystemTime::now());
        let mut budget = READ_PER_POLL;
        loop {
            let Some(t) = self.files.get_mut(i) else {
                return true;
            };
            let n = match t.file.read_at(buf, t.read_at) {
                Ok(n) => n,
                Err(e) => {
                    self.counts.errors += 1;
                    if let Some(suppressed) = self.errors.check() {
                        log::warn!(
                            "Reading a followed file failed path={} error={e} suppressed={suppressed}",
                            t.path.display()
                        );
                    }
                    break;
                }
            };
            if n == 0 {
                break;
            }
            let base = t.read_at;
            t.read_at += n as u64;
            let chunk = buf.get(..n).unwrap_or_default();
            let mut start = 0;
            while let Some(nl) = chunk
                .get(start..)
                .and_then(|c| c.iter().position(|&b| b == b'\n'))
            {
                let piece = chunk.get(start..start + nl).unwrap_or_default();
                start += nl + 1;
                let end = base + start as u64;
                let Some(t) = self.files.get_mut(i) else {
                    return true;
                };
                if t.partial.is_empty() && !t.overlong {
                    // The common case: a whole line in the chunk, sent from it.
                    match piece.get(..max_line) {
                        Some(cut) if piece.len() > max_line => {
                            self.emit_line(i, cut, true, end, observed);
                        }
                        _ => {
                            let line = piece.strip_suffix(b"\r").unwrap_or(piece);
                            self.emit_line(i, line, false, end, observed);
                        }
                    }
                    continue;
                }
                let room = max_line.saturating_sub(t.partial.len());
                t.partial
                    .extend_from_slice(piece.get(..room.min(piece.len())).unwrap_or_default());
                let cut = t.overlong || piece.len() > room;
                t.overlong = false;
                let mut line = std::mem::take(&mut t.partial);
                let text = if cut {
                    &line[..]
                } else {
                    line.strip_suffix(b"\r").unwrap_or(&line)
                };
                self.emit_line(i, text, cut, end, observed);
                // Keep the allocation for the next line that spans chunks.
                line.clear();
                if let Some(t) = self.files.get_mut(i) {
                    t.partial = line;
                }
            }
            let Some(t) = self.files.get_mut(i) else {
                return true;
            };
            let rest = chunk.get(start..).unwrap_or_default();
            let room = max_line.saturating_sub(t.partial.len());
            if rest.len() > room {
                t.overlong = true;
            }
            t.partial
                .extend_from_slice(rest.get(..room.min(rest.len())).unwrap_or_default());
            budget = budget.saturating_sub(n as u64);
            if budget == 0 {
                // More to read: the next poll comes at once.
                self.behind = true;
                return false;
            }
        }
        let Some(t) = self.files.get_mut(i) else {
            return true;
        };
        // A gathered record is complete once no line came for a while.
        if t.pending
            .as_ref()
            .is_some_and(|p| p.since.elapsed() >= MULTILINE_WAIT)
        {
            self.flush_pending(i, observed);
        }
        let Some(t) = self.files.get_mut(i) else {
            return true;
        };
        if !t.gone.is_some_and(|g| g.elapsed() >= rotate_wait) {
            return false;
        }
        // Its writer is gone: a last line without a newline is a line.
        if !t.partial.is_empty() {
            let line = std::mem::take(&mut t.partial);
            let (cut, end) = (t.overlong, t.read_at);
            self.emit_line(i, &line, cut, end, observed);
        }
        self.flush_pending(i, observed);
        true
    }

    /// Takes a line of file `i` that ends at `end`: a record of its own, or
    /// with `multiline`, the start of a record or a line joined to the one
    /// gathered.
    fn emit_line(&mut self, i: usize, text: &[u8], cut: bool, end: u64, observed: u64) {
        self.counts.lines += 1;
        let Some(t) = self.files.get(i) else { return };
        let Some(group) = self.groups.get(t.group) else {
            return;
        };
        let Some(multiline) = &group.multiline else {
            return self.send_record(i, text, cut, end, observed);
        };
        let starts = multiline.starts(text);
        let max_line = group.max_line_size;
        let Some(t) = self.files.get_mut(i) else {
            return;
        };
        if let (false, Some(p)) = (starts, t.pending.as_mut()) {
            let room = max_line.saturating_sub(p.text.len());
            let joined = text.len() + 1;
            if room > 0 {
                p.text.push(b'\n');
                p.text
                    .extend_from_slice(text.get(..(room - 1).min(text.len())).unwrap_or_default());
            }
            p.cut |= cut || joined > room;
            p.end = end;
            p.since = Instant::now();
            return;
        }
        let next = Pending {
            text: text.to_vec(),
            cut,
            end,
            since: Instant::now(),
        };
        if let Some(p) = t.pending.replace(next) {
            self.send_record(i, &p.text, p.cut, p.end, observed);
        }
    }

    /// Sends the record file `i` gathers, if any.
    fn flush_pending(&mut self, i: usize, observed: u64) {
        if let Some(p) = self.files.get_mut(i).and_then(|t| t.pending.take()) {
            self.send_record(i, &p.text, p.cut, p.end, observed);
        }
    }

    /// Adds a record of file `i` to the batch and moves the file's position
    /// past it (`end`), then queues the batch if it is full: the positions
    /// queued with a batch cover exactly the lines in it.
    fn send_record(&mut self, i: usize, text: &[u8], cut: bool, end: u64, observed: u64) {
        self.counts.cut += u64::from(cut);
        let Some(t) = self.files.get_mut(i) else {
            return;
        };
        let converter = &self.converter;
        let host = Host {
            name: self.hostname.as_deref(),
            machine_id: None,
            boot_id: None,
        };
        self.batch
            .begin(host.name.unwrap_or_default(), || converter.resource(&host))
            .observed_time(observed)
            .body(text, cut)
            .string("log.file.name", t.name_attr.as_bytes())
            .string("log.file.path", t.path_attr.as_bytes())
            .end();
        t.committed = end;
        if self.batch.len() >= MAX_BATCH_RECORDS || self.batch.bytes() >= MAX_BATCH_BYTES {
            self.push();
        }
    }

    /// The positions of every followed file, encoded.
    fn positions(&self) -> Vec<u8> {
        state::encode(self.files.iter().map(|t| Saved {
            id: t.id,
            fp: t.fp,
            offset: t.committed,
            path: t.path.clone(),
        }))
    }

    /// Queues the batch with the positions, retrying a failing queue until it
    /// is stored or the agent stops.
    fn push(&mut self) {
        if self.halted {
            return;
        }
        if self.batch.is_empty() {
            self.store_positions();
            return;
        }
        let items = self.batch.len();
        let encoded = otlp::compress(self.batch.finish());
        let positions = self.positions();
        let mut backoff = Duration::from_millis(100);
        loop {
            let checkpoint = Checkpoint {
                source: SOURCE,
                value: &positions,
            };
            match self
                .sink
                .push(Signal::Logs, &encoded, items, Some(checkpoint), SOURCE)
            {
                Ok(()) => {
                    self.dirty = false;
                    self.last_store = Instant::now();
                    return;
                }
                Err(e) => {
                    if let Some(suppressed) = self.queue_errors.check() {
                        log::error!(
                            "Queueing file lines failed; retrying without reading more records={items} error={e} suppressed={suppressed}"
                        );
                    }
                    if self.shutdown.sleep(backoff) {
                        log::warn!(
                            "Stopping with file lines not queued; they are read again at the next start records={items}"
                        );
                        self.halted = true;
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Stores the positions alone, if they changed; only while no batch is
    /// held, as they cover the batch's lines.
    fn store_positions(&mut self) {
        if !self.dirty || self.halted || !self.batch.is_empty() {
            return;
        }
        self.last_store = Instant::now();
        match self.sink.set_checkpoint(SOURCE, &self.positions()) {
            Ok(()) => self.dirty = false,
            Err(e) => log::debug!("Storing the file positions failed error={e}"),
        }
    }

    fn publish(&mut self) {
        let c = std::mem::take(&mut self.counts);
        let m = &self.metrics;
        for (name, n) in [
            ("tern_file_lines_total", c.lines),
            ("tern_file_cut_lines_total", c.cut),
            ("tern_file_truncations_total", c.truncations),
            ("tern_file_rotations_total", c.rotations),
            ("tern_file_errors_total", c.errors),
        ] {
            if n > 0 {
                m.add(name, &[], n as f64);
            }
        }
        m.set("tern_file_followed", &[], self.files.len() as f64);
    }
}

/// The paths `glob` matches now.
fn expand(glob: &Glob, out: &mut Vec<PathBuf>) {
    walk(Path::new("/"), glob.names(), 0, out);
}

fn walk(dir: &Path, names: &[Name], depth: usize, out: &mut Vec<PathBuf>) {
    let Some((name, rest)) = names.split_first() else {
        return;
    };
    let mut visit = |path: PathBuf| {
        if rest.is_empty() {
            out.push(path);
        } else if path.is_dir() {
            walk(&path, rest, depth, out);
        }
    };
    match name {
        Name::Literal(l) => visit(dir.join(l)),
        Name::Pattern(_) => {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                if match_name(name, e.file_name().as_encoded_bytes()) {
                    visit(e.path());
                }
            }
        }
        Name::AnyDirs => {
            walk(dir, rest, depth, out);
            if depth >= MAX_DEPTH {
                return;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                // Real directories only: a symlink loop must not be followed.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), names, depth + 1, out);
                }
            }
        }
    }
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}
