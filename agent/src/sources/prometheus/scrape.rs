//! One scrape of one target: fetch the exposition, parse it, convert it and
//! hand the batches to the sink. The scheduler (`schedule.rs`) runs scrapes
//! on its workers; a [`Target`] keeps only what must outlive a scrape.
//!
//! The body is parsed as it arrives, in a bounded window, and each family is
//! converted as soon as it is complete: a scrape never holds its body whole.
//! A scrape is all or nothing, as in Prometheus: batches are buffered
//! (compressed) until the whole body has parsed, and a body that fails anywhere
//! yields no samples, `up` 0 and a reason in the log and the self metrics.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{ScrapeConfig, ScrapeTarget};
use crate::http::{is_https, Client, HttpError};
use crate::lifecycle::RateLimit;
use crate::sources::Sink;
use crate::telemetry::Metrics;

use super::convert::{Builder, TargetInfo};
use super::outcomes::Outcomes;
use super::parse::{Family, Format, Limits, Stream, StreamError};
use super::relabel::{self, TargetLabels};
use super::stale::{Recording, SeriesMemory};

/// What tern asks exporters for: OpenMetrics first, as Prometheus does.
const ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";

/// Why a scrape failed. Display is the reason logged and shown in self metrics.
#[derive(Debug)]
#[non_exhaustive]
pub enum ScrapeError {
    /// The target could not be reached or did not answer in time.
    Http(Box<dyn std::error::Error + Send + Sync>),
    /// The target answered with a status other than 200.
    Status(u16),
    /// The body was larger than `body_size_limit`.
    TooLarge(u64),
    /// The body is not valid exposition text.
    Parse(String),
    /// The samples broke a limit of the job (`sample_limit`, ...) or a
    /// `metric_relabel_configs` rule removed a sample's name.
    Refused {
        /// The self-metrics reason, like `sample_limit_exceeded`.
        reason: &'static str,
        /// What was over which limit.
        detail: String,
    },
}

impl ScrapeError {
    /// A short label for the `result` of `tern_scrapes_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Http(_) => "http_error",
            ScrapeError::Status(_) => "http_status",
            ScrapeError::TooLarge(_) => "body_too_large",
            ScrapeError::Parse(_) => "parse_error",
            ScrapeError::Refused { reason, .. } => reason,
        }
    }
}

impl std::fmt::Display for ScrapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScrapeError::Http(e) => write!(f, "http: {e}"),
            ScrapeError::Status(s) => write!(f, "server returned status {s}"),
            ScrapeError::TooLarge(limit) => {
                write!(f, "body exceeds body_size_limit of {limit} bytes")
            }
            ScrapeError::Parse(e) => write!(f, "parse: {e}"),
            ScrapeError::Refused { detail, .. } => f.write_str(detail),
        }
    }
}

impl std::error::Error for ScrapeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScrapeError::Http(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// What the targets of one job share: its settings and HTTP client.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) config: ScrapeConfig,
    client: Client,
    limits: Limits,
    /// The resource attributes every target of the job adds: the config's
    /// `[resource]`.
    extra: Vec<(String, String)>,
}

impl Job {
    /// The shared part of `config`'s targets.
    pub(crate) fn new(
        config: &ScrapeConfig,
        resource: &[(String, String)],
    ) -> std::io::Result<Job> {
        let https = config.targets.iter().any(|t| is_https(&t.url));
        let client = Client::new(&config.tls, config.timeout, https).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("scrape job {}: {e}", config.job),
            )
        })?;
        let extra: Vec<(String, String)> = resource.to_vec();
        Ok(Job {
            config: config.clone(),
            client,
            limits: Limits::default(),
            extra,
        })
    }
}

/// The part of a body a worker holds at once while parsing it: families
/// are converted as soon as they are complete, so a scrape's memory does not
/// grow with its body (a family larger than this makes it grow for a while).
const PARSE_WINDOW: usize = 256 << 10;

/// What a worker keeps from one scrape to the next, whatever target it
/// scrapes: the parse window, the batch buffer and the series hashes of a
/// scrape. A worker's buffers grow to its largest target, once; targets keep
/// none.
#[derive(Debug)]
pub(crate) struct Scratch {
    /// Parses bodies as they arrive, in a bounded window.
    stream: Stream,
    /// The batch being encoded (up to a few MiB).
    batch_buffer: Vec<u8>,
    /// The series hashes of a scrape where it differs from the last (8
    /// bytes a series; one family's while it does not).
    hashes: Vec<u64>,
    /// The buffers of `metric_relabel_configs`.
    relabel: relabel::Buffers,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        Scratch {
            stream: Stream::new(PARSE_WINDOW),
            batch_buffer: Vec::new(),
            hashes: Vec::new(),
            relabel: relabel::Buffers::default(),
        }
    }
}

/// One scrape target and what tern remembers of it between scrapes: the
/// identities of its series (for staleness) and a few counters, nothing
/// that grows with a scrape's size beyond that.
pub(crate) struct Target {
    pub(crate) job: Arc<Job>,
    pub(crate) target: ScrapeTarget,
    /// The `instance` label of its self metrics: `host:port`, plus the path
    /// when another target of the job has the same `host:port`.
    pub(crate) label: String,
    info: TargetInfo,
    /// The labels Prometheus would merge into each sample: `job`,
    /// `instance` and the target's labels, sorted by name.
    target_labels: TargetLabels,
    /// Whether each sample needs `target_labels` merged in before the
    /// job's rules (see [`relabel::must_merge`]).
    merge_target: bool,
    /// The `target_info` labels of the last good scrape: the resource its
    /// series were sent with, for their staleness markers.
    target_info: Vec<(String, String)>,
    errors: RateLimit,
    /// The series of the last good scrape, to mark vanished ones stale.
    memory: SeriesMemory,
    /// What the job's `metric_relabel_configs` made of those series.
    outcomes: Outcomes,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.target.url)
            .finish()
    }
}

impl Target {
    /// A target of `job` whose self metrics are labelled `label`.
    pub(crate) fn new(job: Arc<Job>, target: &ScrapeTarget, label: String) -> Target {
        let scheme = target.url.split("://").next().unwrap_or("http").to_string();
        let mut extra = job.extra.clone();
        extra.extend(target.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut target_labels: TargetLabels = target.labels.clone().into_iter().collect();
        target_labels.push(("job".into(), target.job.clone()));
        target_labels.push(("instance".into(), target.instance.clone()));
        target_labels.sort_unstable();
        let merge_target = relabel::must_merge(&job.config, &target_labels);
        let keep_outcomes = !job.config.metric_relabel_configs.is_empty();
        Target {
            merge_target,
            info: TargetInfo {
                job: target.job.clone(),
                instance: target.instance.clone(),
                scheme,
                extra,
            },
            target_labels,
            job,
            target: target.clone(),
            label,
            target_info: Vec::new(),
            errors: RateLimit::new(Duration::from_secs(60)),
            memory: SeriesMemory::default(),
            outcomes: Outcomes::new(keep_outcomes),
        }
    }

    /// Takes over what `old` (the same target before a reload) remembers,
    /// if its series would go out under the same resource; otherwise gives
    /// `old` back, for its series to be marked stale.
    pub(crate) fn adopt(&mut self, old: Target) -> Option<Target> {
        if old.target.url != self.target.url
            || old.info.job != self.info.job
            || old.info.extra != self.info.extra
        {
            return Some(old);
        }
        self.memory = old.memory;
        self.target_info = old.target_info;
        None
    }

    /// The time between two scrapes.
    pub(crate) fn interval(&self) -> Duration {
        self.job.config.interval
    }

    /// The target's fixed offset within the interval, so that a box with
    /// many exporters does not wake them all in the same millisecond, and
    /// every agent keeps the same phase across restarts.
    pub(crate) fn offset(&self) -> Duration {
        spread_offset(&self.target.url, self.interval())
    }

    /// Marks every series of the last good scrape stale (a target removed
    /// by a reload) and queues the markers.
    pub(crate) fn retire(mut self, sink: &Sink) {
        if self.memory.is_empty() {
            return;
        }
        let mut builder = Builder::new(
            self.info.resource(&self.target_info),
            crate::sources::unix_nanos(SystemTime::now()),
        );
        self.memory.emit_stale(None, series_hash, &mut builder);
        self.memory.clear();
        for (batch, points) in builder.finish() {
            sink.push_metrics(batch, points, &self.info.job, &self.info.instance);
        }
    }

    /// Scrapes the target once and queues the result, with `scratch`'s buffers.
    pub(crate) fn scrape(&mut self, scratch: &mut Scratch, sink: &Sink, metrics: &Metrics) {
        let started = Instant::now();
        let now_nanos = crate::sources::unix_nanos(SystemTime::now());
        let mut builder = Builder::with_buffer(
            self.info.resource(&[]),
            now_nanos,
            std::mem::take(&mut scratch.batch_buffer),
        );
        let mut next = Recording::with_buffer(std::mem::take(&mut scratch.hashes));
        let mut target_info = Vec::new();
        let mut scraped = 0;
        let result = self.fetch_and_convert(
            scratch,
            &mut next,
            &mut target_info,
            &mut builder,
            &mut scraped,
        );
        self.outcomes.finish(result.is_ok());
        let duration = started.elapsed().as_secs_f64();
        let (up, samples, kept) = match &result {
            Ok(()) => {
                let kept = next.series();
                let gone = self.memory.vanished(&next);
                if !gone.is_empty() {
                    self.memory
                        .emit_stale(Some(&gone), series_hash, &mut builder);
                }
                scratch.hashes = self.memory.remember(next);
                builder.set_resource(self.info.resource(&target_info));
                self.target_info = target_info;
                (1.0, scraped, kept)
            }
            Err(e) => {
                scratch.hashes = next.into_buffer();
                builder.discard();
                if let Some(suppressed) = self.errors.check() {
                    log::warn!(
                        "Scrape failed job={} target={} error={e} suppressed={suppressed}",
                        self.info.job,
                        self.target.url
                    );
                }
                // Every series of the last good scrape is stale now, under
                // the resource they were sent with.
                builder.set_resource(self.info.resource(&self.target_info));
                self.memory.emit_stale(None, series_hash, &mut builder);
                self.memory.clear();
                (0.0, 0, 0)
            }
        };
        builder.synthetic_gauge("up", "1 if the scrape succeeded, else 0.", up);
        builder.synthetic_gauge(
            "scrape_duration_seconds",
            "Duration of the scrape.",
            duration,
        );
        builder.synthetic_gauge(
            "scrape_samples_scraped",
            "Samples the target exposed.",
            samples as f64,
        );
        if !self.job.config.metric_relabel_configs.is_empty() {
            builder.synthetic_gauge(
                "scrape_samples_post_metric_relabeling",
                "Samples kept after metric_relabel_configs.",
                kept as f64,
            );
        }
        let (batches, batch_buffer) = builder.finish_with_buffer();
        scratch.batch_buffer = batch_buffer;
        for (batch, points) in batches {
            sink.push_metrics(batch, points, &self.info.job, &self.info.instance);
        }
        let labels = [
            ("job", self.info.job.as_str()),
            ("instance", self.label.as_str()),
        ];
        metrics.set("tern_scrape_up", &labels, up);
        metrics.set("tern_scrape_duration_seconds", &labels, duration);
        metrics.set("tern_scrape_samples", &labels, samples as f64);
        let result_label = result.as_ref().map_or_else(|e| e.reason(), |()| "ok");
        metrics.inc(
            "tern_scrapes_total",
            &[labels[0], labels[1], ("result", result_label)],
        );
    }

    /// Fetches the body and converts each family as soon as it has arrived
    /// and parsed: the series go to `next` (their hashes, and the
    /// identities of what changed), the labels of a
    /// `target_info` family to `target_info`. A scrape is all or nothing, so
    /// the caller discards what `builder` holds when this fails.
    fn fetch_and_convert(
        &mut self,
        scratch: &mut Scratch,
        next: &mut Recording,
        target_info: &mut Vec<(String, String)>,
        builder: &mut Builder,
        scraped: &mut usize,
    ) -> Result<(), ScrapeError> {
        let config = &self.job.config;
        let timeout = format!("{}", config.timeout.as_secs_f64());
        let headers = [
            ("Accept", ACCEPT),
            ("X-Prometheus-Scrape-Timeout-Seconds", timeout.as_str()),
        ];
        let stream = &mut scratch.stream;
        let relabel_scratch = &mut scratch.relabel;
        let memory = &self.memory;
        let outcomes = &mut self.outcomes;
        let limits = &self.job.limits;
        let target_labels = &self.target_labels;
        let merge_target = self.merge_target;
        let mut refused: Option<relabel::Refused> = None;
        let mut kept = 0;
        let mut emit = |family: &Family<'_>| {
            if family.name == "target_info" {
                if let Some(sample) = family.samples.first() {
                    *target_info = sample
                        .labels
                        .iter()
                        .filter(|l| l.name != "job" && l.name != "instance")
                        .map(|l| (l.name.to_string(), l.value.to_string()))
                        .collect();
                }
            }
            memory.record(next, family, series_hash);
            builder.family(family, false);
        };
        let each = |family: &Family<'_>| {
            *scraped += family.samples.len();
            if refused.is_some() {
                return;
            }
            if !relabel::needed(config, target_labels, family) {
                emit(family);
                return;
            }
            let result = relabel::family(
                config,
                target_labels,
                family,
                relabel_scratch,
                outcomes,
                &mut kept,
                merge_target,
                &mut emit,
            );
            if let Err(e) = result {
                refused = Some(e);
            }
        };
        let parsed = self.job.client.get_with(
            &self.target.url,
            &headers,
            config.body_size_limit,
            |status, content_type, body| {
                if status != 200 {
                    return Err(ScrapeError::Status(status));
                }
                let format = content_type.map_or(Format::PrometheusText, Format::from_content_type);
                stream
                    .parse(body, format, limits, each)
                    .map(|_| ())
                    .map_err(|e| match e {
                        StreamError::Read(e) => ScrapeError::Http(Box::new(e)),
                        StreamError::Parse(e) => ScrapeError::Parse(e.to_string()),
                    })
            },
        );
        let parsed = match (parsed, refused) {
            (Ok(Ok(())), Some(r)) => Ok(Err(ScrapeError::Refused {
                reason: r.reason,
                detail: r.detail,
            })),
            (parsed, _) => parsed,
        };
        match parsed {
            Ok(result) => result,
            Err(HttpError::TooLarge(limit)) => Err(ScrapeError::TooLarge(limit)),
            // The inner error: ScrapeError's Display says "http:" already.
            Err(HttpError::Timeout(e) | HttpError::Http(e)) => Err(ScrapeError::Http(e)),
            Err(e) => Err(ScrapeError::Http(Box::new(e))),
        }
    }
}

/// A hash identifying a series: sample name and labels. It runs for every
/// sample, so it reads eight bytes at a time (FxHash's multiply-rotate) into
/// two lanes that take turns, which halves the chain of multiplies a series
/// waits on, and mixes them once (murmur3's finalizer); a collision would at
/// worst miss one staleness marker.
pub(super) fn series_hash(sample: &super::parse::Sample<'_>) -> u64 {
    let mut h = SeriesHasher::default();
    h.bytes(sample.name.as_bytes());
    for l in &sample.labels {
        h.bytes(l.name.as_bytes());
        h.bytes(l.value.as_bytes());
    }
    h.finish()
}

/// See [`series_hash`].
#[derive(Default)]
struct SeriesHasher {
    /// The lane the next word goes to, then the other one.
    next: u64,
    other: u64,
}

impl SeriesHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn word(&mut self, w: u64) {
        let mixed = (self.next.rotate_left(5) ^ w).wrapping_mul(Self::K);
        self.next = self.other;
        self.other = mixed;
    }

    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        // The length separates "ab","c" from "a","bc".
        self.word(tail_word(b) ^ (b.len() as u64) << 56);
    }

    fn finish(&self) -> u64 {
        let mut h = self.next ^ self.other.rotate_left(32).wrapping_mul(Self::K);
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The last `b.len() % 8` bytes of `b` as a little-endian word, zero above.
/// Read with loads from `b` itself: copying them into a zeroed array first
/// (a call to memcpy, then a wide load of narrow stores) stalled the hash on
/// every string.
fn tail_word(b: &[u8]) -> u64 {
    let len = b.len();
    let n = len % 8;
    let word = |at: usize| {
        b.get(at..at + 8)
            .and_then(|c| <[u8; 8]>::try_from(c).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let half = |at: usize| {
        b.get(at..at + 4)
            .and_then(|c| <[u8; 4]>::try_from(c).ok())
            .map_or(0, |c| u64::from(u32::from_le_bytes(c)))
    };
    let byte = |at: usize| b.get(at).map_or(0, |&x| u64::from(x));
    match n {
        0 => 0,
        // The last eight bytes, shifted down to the last n.
        _ if len >= 8 => word(len - 8) >> (8 * (8 - n)),
        // Two overlapping halves; the bytes they share are the same.
        4..=7 => half(0) | half(n - 4) << (8 * (n - 4)),
        // First, middle and last byte, which cover one to three.
        _ => byte(0) | byte(n / 2) << (8 * (n / 2)) | byte(n - 1) << (8 * (n - 1)),
    }
}

/// The target's fixed offset within the interval.
fn spread_offset(url: &str, interval: Duration) -> Duration {
    let mut h = DefaultHasher::new();
    url.hash(&mut h);
    let millis = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(h.finish() % millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_hashes_separate_names_labels_and_boundaries() {
        use super::super::parse::{Label, Sample};
        use std::borrow::Cow;
        let sample = |name, labels: &[(&'static str, &'static str)]| Sample {
            name,
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n,
                    value: Cow::Borrowed(*v),
                })
                .collect(),
            value: 0.0,
            timestamp_ms: None,
        };
        let a = series_hash(&sample("m", &[("a", "bc")]));
        assert_eq!(a, series_hash(&sample("m", &[("a", "bc")])));
        assert_ne!(a, series_hash(&sample("m", &[("ab", "c")])));
        assert_ne!(a, series_hash(&sample("m", &[("a", "bd")])));
        assert_ne!(a, series_hash(&sample("n", &[("a", "bc")])));
        let many: std::collections::HashSet<u64> = (0..100_000)
            .map(|i| {
                series_hash(&sample(
                    "m",
                    &[("i", Box::leak(i.to_string().into_boxed_str()))],
                ))
            })
            .collect();
        assert_eq!(many.len(), 100_000);
        // Series like a web service's, as the benchmark's synthetic exporter
        // has them: long shared prefixes, values differing in a byte or two.
        let methods = ["GET", "POST", "PUT", "DELETE"];
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000usize {
            let name = format!("bench_http_requests_{:04}_total", i / 100);
            let labels = [
                ("instance_id", format!("i-0a1b2c3d4e5f{:05}", i / 100 % 64)),
                ("path", format!("/api/v1/items/{}", i % 25)),
                ("method", methods[i / 25 % 4].to_string()),
                ("code", (200 + i % 100 / 100).to_string()),
            ];
            let s = Sample {
                name: &name,
                labels: labels
                    .iter()
                    .map(|(n, v)| Label {
                        name: n,
                        value: Cow::Borrowed(v.as_str()),
                    })
                    .collect(),
                value: 0.0,
                timestamp_ms: None,
            };
            assert!(seen.insert(series_hash(&s)), "collision at series {i}");
        }
    }

    #[test]
    fn tail_words_are_the_zero_padded_last_bytes() {
        let text: Vec<u8> = (1..=40).collect();
        for len in 0..=text.len() {
            let b = &text[..len];
            let mut padded = [0u8; 8];
            let rest = &b[len - len % 8..];
            padded[..rest.len()].copy_from_slice(rest);
            assert_eq!(tail_word(b), u64::from_le_bytes(padded), "len {len}");
        }
    }

    #[test]
    fn offsets_are_stable_and_within_the_interval() {
        let i = Duration::from_secs(15);
        let a = spread_offset("http://127.0.0.1:9100/metrics", i);
        assert_eq!(a, spread_offset("http://127.0.0.1:9100/metrics", i));
        assert!(a < i);
        let offsets: std::collections::BTreeSet<_> = (0..20)
            .map(|n| spread_offset(&format!("http://h{n}:9100/metrics"), i))
            .collect();
        assert!(
            offsets.len() > 15,
            "targets should not share a phase: {offsets:?}"
        );
    }
}
