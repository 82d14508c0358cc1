//! Configuration: the TOML file users write, parsed in two stages.
//!
//! `Raw*` structs mirror the file exactly and reject unknown keys
//! (`deny_unknown_fields`). [`Config::from_raw`] then validates and converts them
//! ("15s" to a [`Duration`], "256MiB" to bytes) into the types the runtime uses.
//! Every error names the file, line, column and key, as `tern check` prints it:
//!
//! ```text
//! /etc/tern/tern.toml:7:12: scrape[0].interval: invalid duration "15x": expected a number and a unit (ms, s, m, h), like "15s"
//! ```
//!
//! Everything else in tern reads [`Config`]; nothing reads the raw structs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The `[export.tls]` and `[scrape.tls]` sections (the HTTP client's settings).
pub use crate::http::TlsConfig;
use crate::http::{Client, HttpError};

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config was read from, for messages.
    pub path: PathBuf,
    /// The `[agent]` section.
    pub agent: AgentConfig,
    /// The `[resource]` attributes added to every resource tern sends.
    pub resource: BTreeMap<String, String>,
    /// One entry per `[[scrape]]` job.
    pub scrape: Vec<ScrapeConfig>,
    /// The `[export]` section.
    pub export: ExportConfig,
    /// The `[journald]` section; `None` when absent (no journal reading).
    pub journald: Option<JournaldConfig>,
    /// The `[receiver.otlp]` section; `None` when absent (no OTLP receiver).
    pub otlp_receiver: Option<OtlpReceiverConfig>,
}

/// The `[agent]` section: where tern keeps state and serves its own telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The directory for the disk queue. Defaults to `/var/lib/tern`, or the
    /// `STATE_DIRECTORY` that systemd sets for `StateDirectory=`.
    pub state_dir: PathBuf,
    /// Address for self metrics (`/metrics`) and health (`/-/healthy`,
    /// `/-/ready`). Defaults to `127.0.0.1:12345`, Alloy's port, so dashboards
    /// and firewall rules carry over.
    pub listen: SocketAddr,
    /// Log level: error, warn, info, debug or trace. Defaults to `info`.
    pub log_level: log::LevelFilter,
}

/// One `[[scrape]]` job: a set of Prometheus targets scraped on one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    /// The job name; becomes `service.name` on each target's resource.
    pub job: String,
    /// The targets, each a full URL built from `scheme`, the `host:port` given
    /// and `metrics_path` (or the full URL the user wrote).
    pub targets: Vec<ScrapeTarget>,
    /// Time between scrapes of one target. Defaults to 15 s.
    pub interval: Duration,
    /// Time one scrape may take, at most `interval`. Defaults to 10 s (or the
    /// interval when that is shorter).
    pub timeout: Duration,
    /// Largest body accepted, after decompression. Defaults to 16 MiB: about
    /// 150k series of node_exporter-like text, and bounded memory on a 256 MB box.
    pub body_size_limit: u64,
    /// Extra attributes for the resources of this job's targets.
    pub labels: BTreeMap<String, String>,
    /// TLS settings for https targets (`[scrape.tls]`, same keys as `[export.tls]`).
    pub tls: TlsConfig,
}

/// One scrape target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// The URL scraped, for example `http://127.0.0.1:9100/metrics`.
    pub url: String,
    /// The `instance` label: `host:port` as written, like Prometheus.
    pub instance: String,
}

/// The `[journald]` section: follow the systemd journal through `journalctl`
/// and forward its entries as OTLP logs.
#[derive(Debug, Clone, PartialEq)]
pub struct JournaldConfig {
    /// Units to read (journalctl `--unit`, globs allowed; a name without a
    /// suffix gets `.service`). Empty: every unit. Defaults to empty.
    pub units: Vec<String>,
    /// Units whose entries are dropped, matched against `_SYSTEMD_UNIT` with the
    /// same rules as `units`. Defaults to empty.
    pub exclude_units: Vec<String>,
    /// The least important syslog priority read, 0 (emerg) to 7 (debug); below
    /// 7 it is passed to journalctl as `--priority`, which also skips entries
    /// without a PRIORITY field. Defaults to 6 (info), as in DESIGN.md.
    pub min_priority: u8,
    /// journalctl matches, `FIELD=value` or `+` (or), passed as journalctl takes
    /// them. Defaults to empty.
    pub matches: Vec<String>,
    /// Read the journal files in this directory (journalctl `--directory`)
    /// instead of the system journal. Defaults to none.
    pub directory: Option<PathBuf>,
    /// Where the first start (no saved cursor) begins. Defaults to tail.
    pub read_from: ReadFrom,
    /// The journalctl program, a path or a name looked up in `PATH`. Defaults to
    /// `journalctl`.
    pub journalctl: PathBuf,
    /// Largest field value kept, in bytes; a longer value is cut to it and
    /// counted. Defaults to 128 KiB: twice journald's default `LineMax`, so
    /// real log lines pass whole while a stray core dump does not.
    pub max_field_size: u64,
    /// Largest entry kept (all fields), in bytes; a larger entry is skipped and
    /// counted. Defaults to 512 KiB, a bound on the source's memory.
    pub max_entry_size: u64,
    /// How long journalctl may stay silent before tern checks that the journal
    /// has nothing newer; if it has, journalctl is hung and is restarted.
    /// Defaults to 60 s.
    pub hang_timeout: Duration,
}

/// The `[receiver.otlp]` section: OTLP/HTTP from applications on the box
/// (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`), stored and forwarded with
/// everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpReceiverConfig {
    /// Address to listen on. Defaults to `127.0.0.1:4318`, the OTLP/HTTP port
    /// that SDKs send to by default; loopback, so only local applications reach it.
    pub listen: SocketAddr,
    /// Largest request body in bytes, checked on the wire and again after
    /// gzip decompression; larger requests get 413. Defaults to 4 MiB: the
    /// SDKs' default batch of 512 spans is far below it, and each connection
    /// may hold one such body in memory.
    pub max_request_size: u64,
    /// Connections served at once; more wait in the kernel's backlog.
    /// Defaults to 32: a few applications with one connection per signal.
    pub max_connections: usize,
    /// Time to receive one request body, whole. Defaults to 30 s.
    pub read_timeout: Duration,
    /// What a request gets when its batch does not fit in the queue.
    /// Defaults to `drop_oldest` when `[export.queue] full_policy` is
    /// `drop_oldest`, and to `push_back` when it is `drop_newest`.
    pub full_policy: ReceiverFullPolicy,
}

/// What the OTLP receiver does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverFullPolicy {
    /// Answer 503 with Retry-After and store nothing: the client keeps the
    /// data and retries, and nothing in the queue is dropped.
    PushBack,
    /// Delete the oldest batches of the queue to make room, as
    /// `[export.queue] full_policy = "drop_oldest"` does, and answer 200.
    DropOldest,
}

/// Where the journald source starts when it has no saved cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// After the newest entry: only what is logged from now on.
    Tail,
    /// At the oldest entry in the journal.
    Head,
    /// At the first entry of the current boot.
    Boot,
}

/// The `[export]` section: where batches go and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// Base URLs of the OTLP/HTTP gateways; tern appends `/v1/metrics` and so
    /// on. Empty: nothing is sent, batches stay on disk (see `debug`).
    pub endpoints: Vec<String>,
    /// Compression on the wire. Defaults to gzip.
    pub compression: Compression,
    /// Time one request may take. Defaults to 10 s.
    pub timeout: Duration,
    /// Extra request headers, for example `X-Scope-OrgID`. Never logged.
    pub headers: BTreeMap<String, String>,
    /// TLS settings for https endpoints.
    pub tls: TlsConfig,
    /// Retry and backoff.
    pub retry: RetryConfig,
    /// The disk queue.
    pub queue: QueueConfig,
    /// Print a one-line summary of each batch as it is queued, like the
    /// Collector's debug exporter. Defaults to false.
    pub debug: bool,
    /// What each signal's data is split and routed by over the gateways
    /// (`routing_key`). Defaults to traceID for traces and logs, resource for
    /// metrics.
    pub routing: Routing,
    /// Gateways found by DNS instead of `endpoints` (`dns = { ... }`).
    /// Defaults to none.
    pub dns: Option<DnsConfig>,
    /// Move a gateway's keys and backlog to the next gateway in hash order
    /// once it has failed for this long, until it answers again. Defaults to
    /// none (off): moving a trace breaks tail sampling upstream.
    pub failover_after: Option<Duration>,
}

/// The key data is routed by, per the `routing_key` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingKey {
    /// `traceID`: spans and log records by trace id; log records without one
    /// spread evenly.
    TraceId,
    /// `service`: by the resource's `service.name`.
    Service,
    /// `resource`: by the whole resource (all its attributes).
    Resource,
    /// `metric`: by metric name (metrics only).
    Metric,
    /// `streamID`: by metric name and data point attributes (metrics only).
    StreamId,
}

/// The routing key of each signal. `routing_key` sets the signals it fits;
/// the others keep their default: `metric` and `streamID` fit only metrics,
/// `traceID` only traces and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    /// Defaults to [`RoutingKey::Resource`].
    pub metrics: RoutingKey,
    /// Defaults to [`RoutingKey::TraceId`].
    pub logs: RoutingKey,
    /// Defaults to [`RoutingKey::TraceId`].
    pub traces: RoutingKey,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing {
            metrics: RoutingKey::Resource,
            logs: RoutingKey::TraceId,
            traces: RoutingKey::TraceId,
        }
    }
}

/// The `[export] dns` setting: gateways are the A and AAAA records of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The name to resolve.
    pub hostname: String,
    /// The gateways' OTLP/HTTP port. Defaults to 4318.
    pub port: u16,
    /// Time between resolutions. Defaults to 5 s.
    pub interval: Duration,
    /// Time one query may take. Defaults to 1 s.
    pub timeout: Duration,
    /// The DNS server asked; defaults to the first nameserver of
    /// /etc/resolv.conf, port 53.
    pub resolver: Option<SocketAddr>,
    /// `http` or `https`, for the gateways' URLs. Defaults to http.
    pub scheme: String,
}

/// Compression of request bodies sent to gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `Content-Encoding: gzip`; the queue already holds gzip, so it costs nothing.
    Gzip,
    /// Plain protobuf.
    None,
}

/// The `[export.retry]` section, with the OpenTelemetry Collector's names and
/// defaults so that settings carry over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// First wait after a failure. Defaults to 5 s.
    pub initial_interval: Duration,
    /// Longest wait between attempts. Defaults to 30 s.
    pub max_interval: Duration,
    /// Growth of the wait per attempt. Defaults to 1.5.
    pub multiplier: f64,
    /// Jitter: the wait is drawn from interval × [1 − f, 1 + f]. Defaults to 0.5.
    pub randomization_factor: f64,
    /// Give up on a batch after this long. Defaults to 0, meaning never: unlike
    /// the Collector's 5 minutes, tern keeps a batch until a gateway takes it or
    /// the queue's size policy drops it, because outages on the edge last hours.
    pub max_elapsed_time: Duration,
}

/// The `[export.queue]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most bytes kept on disk. Defaults to 256 MiB: days of one node_exporter
    /// at a 15 s interval, and a small share of an SD card.
    pub max_size: u64,
    /// What to drop when full. Defaults to drop_oldest: fresh data matters more
    /// after a long outage.
    pub full_policy: FullPolicy,
    /// A batch counts as accepted only once it is on disk. Defaults to true.
    pub fsync: bool,
}

/// Which batch goes when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Delete the oldest batches to make room.
    DropOldest,
    /// Refuse the new batch.
    DropNewest,
}

/// A configuration error, located in its file.
#[derive(Debug)]
pub struct ConfigError {
    /// The file the error is in.
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// The dotted key, for example `scrape[0].interval`, when known.
    pub key: String,
    /// What is wrong, lowercase.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The default path of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/tern/tern.toml";

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let error = |position, reason| ConfigError {
            path: path.to_owned(),
            position,
            key: String::new(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| error(None, format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let bytes = e.as_bytes();
            let valid = e.utf8_error().valid_up_to();
            let before = bytes
                .get(..valid)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or("");
            let byte = bytes.get(valid).copied().unwrap_or(0);
            error(
                Some(line_col(before, before.len())),
                format!("invalid UTF-8 (byte 0x{byte:02x}): a config file must be UTF-8 text"),
            )
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` is only used in
    /// messages. The TLS files the configuration names are read too, so that
    /// a missing or non-PEM file is a configuration error.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        Config::from_raw(path, text, raw)
    }

    /// Validates the raw structs and converts them to runtime types.
    fn from_raw(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
        let cx = Cx {
            path,
            text,
            keys: std::cell::OnceCell::new(),
        };
        let agent = raw.agent.unwrap_or_default();
        let state_dir = match agent.state_dir {
            Some(dir) if dir.get_ref().is_empty() => {
                return Err(cx.err(&dir, "agent.state_dir", "must not be empty"))
            }
            Some(dir) => PathBuf::from(dir.into_inner()),
            None => std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/tern")),
        };
        let listen = match agent.listen {
            Some(s) => s.get_ref().parse().map_err(|_| {
                cx.err(
                    &s,
                    "agent.listen",
                    format!(
                        "invalid address {:?}: expected ip:port, like \"127.0.0.1:12345\"",
                        s.get_ref()
                    ),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 12345)),
        };
        let log_level = match agent.log_level {
            Some(s) => s.get_ref().parse().map_err(|_| {
                cx.err(
                    &s,
                    "agent.log_level",
                    format!(
                        "invalid level {:?}: expected error, warn, info, debug or trace",
                        s.get_ref()
                    ),
                )
            })?,
            None => log::LevelFilter::Info,
        };

        let mut scrape = Vec::new();
        let mut jobs = std::collections::BTreeSet::new();
        for (i, job) in raw.scrape.into_iter().enumerate() {
            let key = |field: &str| format!("scrape[{i}].{field}");
            if job.job.get_ref().is_empty() {
                return Err(cx.err(&job.job, &key("job"), "must not be empty"));
            }
            if !jobs.insert(job.job.get_ref().clone()) {
                return Err(cx.err(
                    &job.job,
                    &key("job"),
                    format!("duplicate job name {:?}", job.job.get_ref()),
                ));
            }
            let interval = cx.duration(
                job.interval.as_ref(),
                &key("interval"),
                Duration::from_secs(15),
            )?;
            if interval < Duration::from_millis(100) {
                return Err(cx.err_opt(
                    job.interval.as_ref(),
                    &key("interval"),
                    "must be at least 100ms",
                ));
            }
            let timeout = cx.duration(
                job.timeout.as_ref(),
                &key("timeout"),
                interval.min(Duration::from_secs(10)),
            )?;
            if timeout > interval || timeout.is_zero() {
                return Err(cx.err_opt(
                    job.timeout.as_ref(),
                    &key("timeout"),
                    format!(
                        "must be above 0 and at most the interval ({})",
                        format_duration(interval)
                    ),
                ));
            }
            let metrics_path = match &job.metrics_path {
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(cx.err(
                        p,
                        &key("metrics_path"),
                        format!(
                            "must start with '/', like \"/metrics\", not {:?}",
                            p.get_ref()
                        ),
                    ))
                }
                Some(p) => p.get_ref().clone(),
                None => "/metrics".to_string(),
            };
            let scheme = match &job.scheme {
                Some(s) if s.get_ref() == "http" || s.get_ref() == "https" => s.get_ref().clone(),
                Some(s) => {
                    return Err(cx.err(
                        s,
                        &key("scheme"),
                        format!("expected \"http\" or \"https\", not {:?}", s.get_ref()),
                    ))
                }
                None => "http".to_string(),
            };
            let body_size_limit = cx.size(
                job.body_size_limit.as_ref(),
                &key("body_size_limit"),
                16 << 20,
            )?;
            if job.targets.get_ref().is_empty() {
                return Err(cx.err(
                    &job.targets,
                    &key("targets"),
                    "must list at least one target, like [\"127.0.0.1:9100\"]",
                ));
            }
            let mut targets = Vec::new();
            for (t, target) in job.targets.get_ref().iter().enumerate() {
                let parsed =
                    parse_target(target.get_ref(), &scheme, &metrics_path).map_err(|reason| {
                        cx.err(target, &format!("scrape[{i}].targets[{t}]"), reason)
                    })?;
                targets.push(parsed);
            }
            let tls = cx.tls(job.tls, &key("tls"))?;
            let labels = cx.attributes(job.labels, &key("labels"))?;
            scrape.push(ScrapeConfig {
                job: job.job.into_inner(),
                targets,
                interval,
                timeout,
                body_size_limit,
                labels,
                tls,
            });
        }

        let export = raw.export.unwrap_or_default();
        let mut endpoints = Vec::new();
        for (i, e) in export.endpoints.iter().enumerate() {
            let url = e.get_ref().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() <= "https://".len()
            {
                return Err(cx.err(
                    e,
                    &format!("export.endpoints[{i}]"),
                    format!(
                        "expected a base URL like \"https://gw1:4318\", not {:?}",
                        e.get_ref()
                    ),
                ));
            }
            endpoints.push(url.to_string());
        }
        let compression = match &export.compression {
            None => Compression::Gzip,
            Some(c) if c.get_ref() == "gzip" => Compression::Gzip,
            Some(c) if c.get_ref() == "none" || c.get_ref().is_empty() => Compression::None,
            Some(c) => {
                return Err(cx.err(
                    c,
                    "export.compression",
                    format!("expected \"gzip\" or \"none\", not {:?}", c.get_ref()),
                ))
            }
        };
        let timeout = cx.duration(
            export.timeout.as_ref(),
            "export.timeout",
            Duration::from_secs(10),
        )?;
        if timeout.is_zero() {
            return Err(cx.err_opt(
                export.timeout.as_ref(),
                "export.timeout",
                "must be more than 0: every request would time out",
            ));
        }
        let headers = cx.headers(export.headers)?;
        let routing = cx.routing(export.routing_key.as_ref())?;
        let dns = match &export.dns {
            None => None,
            Some(d) => Some(cx.dns(d)?),
        };
        if let (Some(dns), Some(first)) = (&export.dns, export.endpoints.first()) {
            // Point at the later of the two, where the conflict shows.
            let (at, key) = if dns.hostname.span().start > first.span().start {
                (&dns.hostname, "export.dns")
            } else {
                (first, "export.endpoints")
            };
            return Err(cx.err(
                at,
                key,
                "set either export.endpoints or export.dns, not both",
            ));
        }
        let failover_after = match &export.failover_after {
            None => None,
            Some(s) if s.get_ref().is_empty() || s.get_ref() == "off" => None,
            Some(s) => Some(cx.duration(Some(s), "export.failover_after", Duration::ZERO)?),
        };
        let tls = cx.tls(export.tls, "export.tls")?;
        let r = export.retry.unwrap_or_default();
        let retry = RetryConfig {
            initial_interval: cx.duration(
                r.initial_interval.as_ref(),
                "export.retry.initial_interval",
                Duration::from_secs(5),
            )?,
            max_interval: cx.duration(
                r.max_interval.as_ref(),
                "export.retry.max_interval",
                Duration::from_secs(30),
            )?,
            multiplier: cx.float(
                r.multiplier.as_ref(),
                "export.retry.multiplier",
                1.5,
                1.0..=100.0,
            )?,
            randomization_factor: cx.float(
                r.randomization_factor.as_ref(),
                "export.retry.randomization_factor",
                0.5,
                0.0..=1.0,
            )?,
            max_elapsed_time: cx.duration(
                r.max_elapsed_time.as_ref(),
                "export.retry.max_elapsed_time",
                Duration::ZERO,
            )?,
        };
        if retry.initial_interval.is_zero() {
            return Err(cx.err_opt(
                r.initial_interval.as_ref(),
                "export.retry.initial_interval",
                "must be more than 0: a failed request would be sent again at once, without end",
            ));
        }
        if retry.max_interval < retry.initial_interval {
            // Name the key that was written; both may be.
            let (at, key) = match (&r.max_interval, &r.initial_interval) {
                (Some(m), _) => (Some(m), "export.retry.max_interval"),
                (None, i) => (i.as_ref(), "export.retry.initial_interval"),
            };
            return Err(cx.err_opt(
                at,
                key,
                format!(
                    "need initial_interval ({}) <= max_interval ({})",
                    format_duration(retry.initial_interval),
                    format_duration(retry.max_interval)
                ),
            ));
        }
        let q = export.queue.unwrap_or_default();
        let queue = QueueConfig {
            max_size: cx.size(q.max_size.as_ref(), "export.queue.max_size", 256 << 20)?,
            full_policy: match &q.full_policy {
                None => FullPolicy::DropOldest,
                Some(p) if p.get_ref() == "drop_oldest" => FullPolicy::DropOldest,
                Some(p) if p.get_ref() == "drop_newest" => FullPolicy::DropNewest,
                Some(p) => {
                    return Err(cx.err(
                        p,
                        "export.queue.full_policy",
                        format!(
                            "expected \"drop_oldest\" or \"drop_newest\", not {:?}",
                            p.get_ref()
                        ),
                    ))
                }
            },
            fsync: q.fsync.unwrap_or(true),
        };
        if queue.max_size < 1 << 20 {
            return Err(cx.err_opt(
                q.max_size.as_ref(),
                "export.queue.max_size",
                "must be at least 1MiB",
            ));
        }
        let journald = raw.journald.map(|j| cx.journald(j)).transpose()?;
        let otlp_receiver = raw
            .receiver
            .and_then(|r| r.otlp)
            .map(|r| cx.otlp_receiver(r, &queue))
            .transpose()?;
        Ok(Config {
            path: path.to_owned(),
            agent: AgentConfig {
                state_dir,
                listen,
                log_level,
            },
            resource: cx.attributes(raw.resource, "resource")?,
            scrape,
            export: ExportConfig {
                endpoints,
                compression,
                timeout,
                headers,
                tls,
                retry,
                queue,
                debug: export.debug.unwrap_or(false),
                routing,
                dns,
                failover_after,
            },
            journald,
            otlp_receiver,
        })
    }
}

/// Context for building located errors while validating.
struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Where each key is written, built on the first error that has no span
    /// of its own (a missing key, or a rule between two keys).
    keys: std::cell::OnceCell<Option<KeyMap>>,
}

impl Cx<'_> {
    fn err<T>(&self, at: &Spanned<T>, key: &str, reason: impl Into<String>) -> ConfigError {
        self.err_at(Some(at.span()), key, reason)
    }

    fn err_opt<T>(
        &self,
        at: Option<&Spanned<T>>,
        key: &str,
        reason: impl Into<String>,
    ) -> ConfigError {
        self.err_at(at.map(|s| s.span()), key, reason)
    }

    fn err_at(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        reason: impl Into<String>,
    ) -> ConfigError {
        // Without a span of its own, point at the key, or at the nearest
        // of its parents that is written (the section of a missing key).
        let span = span.or_else(|| {
            self.keys
                .get_or_init(|| KeyMap::of(self.text))
                .as_ref()
                .and_then(|k| k.span_of(key))
        });
        ConfigError {
            path: self.path.to_owned(),
            position: span.map(|s| line_col(self.text, s.start)),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn routing(&self, raw: Option<&Spanned<String>>) -> Result<Routing, ConfigError> {
        let mut routing = Routing::default();
        let Some(raw) = raw else {
            return Ok(routing);
        };
        match raw.get_ref().as_str() {
            "traceID" => {}
            "service" => {
                routing = Routing {
                    metrics: RoutingKey::Service,
                    logs: RoutingKey::Service,
                    traces: RoutingKey::Service,
                }
            }
            "resource" => {
                routing = Routing {
                    metrics: RoutingKey::Resource,
                    logs: RoutingKey::Resource,
                    traces: RoutingKey::Resource,
                }
            }
            "metric" => routing.metrics = RoutingKey::Metric,
            "streamID" => routing.metrics = RoutingKey::StreamId,
            other => {
                return Err(self.err(
                    raw,
                    "export.routing_key",
                    format!(
                        "expected \"traceID\", \"service\", \"resource\", \"metric\" or \"streamID\", not {other:?}"
                    ),
                ))
            }
        }
        Ok(routing)
    }

    fn dns(&self, raw: &RawDns) -> Result<DnsConfig, ConfigError> {
        let hostname = raw.hostname.get_ref().trim_end_matches('.').to_string();
        if hostname.is_empty() || hostname.len() > 253 {
            return Err(self.err(&raw.hostname, "export.dns.hostname", "expected a host name"));
        }
        let port = match &raw.port {
            None => 4318,
            Some(p) => u16::try_from(*p.get_ref())
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| self.err(p, "export.dns.port", "expected a port from 1 to 65535"))?,
        };
        let resolver = match &raw.resolver {
            None => None,
            Some(r) if r.get_ref().is_empty() => None,
            Some(r) => {
                let text = r.get_ref();
                let addr = text.parse::<SocketAddr>().ok().or_else(|| {
                    text.parse::<std::net::IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, 53))
                });
                Some(addr.ok_or_else(|| {
                    self.err(
                        r,
                        "export.dns.resolver",
                        format!("expected an address like \"10.0.0.53\" or \"10.0.0.53:53\", not {text:?}"),
                    )
                })?)
            }
        };
        let scheme = match &raw.scheme {
            None => "http".to_string(),
            Some(s) if s.get_ref() == "http" || s.get_ref() == "https" => s.get_ref().clone(),
            Some(s) => {
                return Err(self.err(
                    s,
                    "export.dns.scheme",
                    format!("expected \"http\" or \"https\", not {:?}", s.get_ref()),
                ))
            }
        };
        let interval = self.duration(
            raw.interval.as_ref(),
            "export.dns.interval",
            Duration::from_secs(5),
        )?;
        if interval.is_zero() {
            return Err(self.err_opt(
                raw.interval.as_ref(),
                "export.dns.interval",
                "must be more than 0",
            ));
        }
        let timeout = self.duration(
            raw.timeout.as_ref(),
            "export.dns.timeout",
            Duration::from_secs(1),
        )?;
        if timeout.is_zero() {
            return Err(self.err_opt(
                raw.timeout.as_ref(),
                "export.dns.timeout",
                "must be more than 0: every query would time out",
            ));
        }
        Ok(DnsConfig {
            hostname,
            port,
            interval,
            timeout,
            resolver,
            scheme,
        })
    }

    fn tls(&self, raw: Option<RawTls>, key: &str) -> Result<TlsConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        // An empty path means unset, so the README can show every key.
        let set = |p: &Option<Spanned<String>>| {
            p.as_ref()
                .filter(|p| !p.get_ref().is_empty())
                .map(|p| PathBuf::from(p.get_ref()))
        };
        let tls = TlsConfig {
            ca_file: set(&raw.ca_file),
            cert_file: set(&raw.cert_file),
            key_file: set(&raw.key_file),
            server_name: raw.server_name.as_ref().map(|s| s.get_ref().clone()),
            insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
        };
        if let Some(name) = &raw.server_name {
            // ureq takes the TLS name from the URL; overriding it needs a custom
            // rustls verifier, which is not written yet. Refuse rather than ignore.
            return Err(self.err(
                name,
                &format!("{key}.server_name"),
                "not supported yet: put the certificate's name in the URL",
            ));
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                return Err(self.err_opt(
                    raw.cert_file.as_ref(),
                    &format!("{key}.cert_file"),
                    "needs key_file too: a client certificate goes with its private key",
                ))
            }
            (None, Some(_)) => {
                return Err(self.err_opt(
                    raw.key_file.as_ref(),
                    &format!("{key}.key_file"),
                    "needs cert_file too: a private key goes with its client certificate",
                ))
            }
            _ => {}
        }
        self.tls_files(&tls, &raw, key)?;
        Ok(tls)
    }

    /// Reads the PEM files of `tls` the way the HTTP client will, so that a
    /// file that is missing, unreadable or not PEM is refused here, with its
    /// key, rather than failing `tern run` after `tern check` said ok. A
    /// plain-HTTP client: loading the system roots proves nothing about the
    /// files and would keep 200 KB of heap.
    fn tls_files(&self, tls: &TlsConfig, raw: &RawTls, key: &str) -> Result<(), ConfigError> {
        let timeout = Duration::from_secs(1);
        let ca = TlsConfig {
            ca_file: tls.ca_file.clone(),
            ..TlsConfig::default()
        };
        if let Err(e) = Client::new(&ca, timeout, false) {
            return Err(self.err_opt(
                raw.ca_file.as_ref(),
                &format!("{key}.ca_file"),
                tls_reason(e),
            ));
        }
        let pair = TlsConfig {
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            ..TlsConfig::default()
        };
        if let Err(e) = Client::new(&pair, timeout, false) {
            let e = tls_reason(e);
            // The client's reason starts with the file's path; a combined PEM
            // file (the same path twice) is named as cert_file.
            let in_key = tls.key_file != tls.cert_file
                && tls
                    .key_file
                    .as_ref()
                    .is_some_and(|k| e.starts_with(&format!("{}: ", k.display())));
            let (at, field) = if in_key {
                (raw.key_file.as_ref(), "key_file")
            } else {
                (raw.cert_file.as_ref(), "cert_file")
            };
            return Err(self.err_opt(at, &format!("{key}.{field}"), e));
        }
        Ok(())
    }

    /// Resource attributes (`[resource]`, a job's `labels`): a key must not
    /// be empty, since OTLP attributes need a name.
    fn attributes(
        &self,
        raw: BTreeMap<Spanned<String>, String>,
        key: &str,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, value) in raw {
            if name.get_ref().is_empty() {
                return Err(self.err(
                    &name,
                    &dotted(key, ""),
                    "an attribute needs a name, not \"\"",
                ));
            }
            out.insert(name.into_inner(), value);
        }
        Ok(out)
    }

    /// `[export] headers`: names are HTTP tokens (RFC 9110 section 5.6.2),
    /// values hold no control characters (section 5.5: no CR, LF or NUL), and
    /// the headers tern writes itself are left to it. Any of these would fail
    /// every request, which is retried without end. Values are never echoed:
    /// they may be secrets.
    fn headers(
        &self,
        raw: BTreeMap<Spanned<String>, Spanned<String>>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        /// Set per request by tern (or by ureq for it); a second value would
        /// contradict the body.
        const OWN: [&str; 5] = [
            "content-type",
            "content-encoding",
            "content-length",
            "transfer-encoding",
            "host",
        ];
        let mut out = BTreeMap::new();
        for (name, value) in raw {
            let n = name.get_ref();
            let key = dotted("export.headers", n);
            if n.is_empty() || !n.bytes().all(is_tchar) {
                return Err(self.err(
                    &name,
                    &key,
                    "not a header name: use letters, digits and !#$%&'*+-.^_`|~ (an RFC 9110 token)",
                ));
            }
            if OWN.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                return Err(self.err(&name, &key, "tern sets this header itself; remove it"));
            }
            if let Some(c) = value
                .get_ref()
                .chars()
                .find(|c| c.is_ascii_control() && *c != '\t')
            {
                return Err(self.err(
                    &value,
                    &key,
                    format!(
                        "the value holds the control character U+{:04X}: header values allow no CR, LF or other control characters",
                        u32::from(c)
                    ),
                ));
            }
            out.insert(name.into_inner(), value.into_inner());
        }
        Ok(out)
    }

    fn journald(&self, raw: RawJournald) -> Result<JournaldConfig, ConfigError> {
        let units = self.units(raw.units, "journald.units")?;
        let exclude_units = self.units(raw.exclude_units, "journald.exclude_units")?;
        let min_priority = match &raw.min_priority {
            None => 6,
            Some(p) => parse_priority(p.get_ref()).ok_or_else(|| {
                self.err(
                    p,
                    "journald.min_priority",
                    format!(
                        "expected emerg, alert, crit, err, warning, notice, info, debug or 0-7, not {:?}",
                        p.get_ref()
                    ),
                )
            })?,
        };
        let mut matches = Vec::new();
        for (i, m) in raw.matches.into_iter().enumerate() {
            if !valid_match(m.get_ref()) {
                return Err(self.err(
                    &m,
                    &format!("journald.matches[{i}]"),
                    format!(
                        "expected FIELD=value with FIELD in A-Z, 0-9 and _, like \"_TRANSPORT=kernel\", or \"+\", not {:?}",
                        m.get_ref()
                    ),
                ));
            }
            matches.push(m.into_inner());
        }
        let read_from = match &raw.read_from {
            None => ReadFrom::Tail,
            Some(r) if r.get_ref() == "tail" => ReadFrom::Tail,
            Some(r) if r.get_ref() == "head" => ReadFrom::Head,
            Some(r) if r.get_ref() == "boot" => ReadFrom::Boot,
            Some(r) => {
                return Err(self.err(
                    r,
                    "journald.read_from",
                    format!(
                        "expected \"tail\", \"head\" or \"boot\", not {:?}",
                        r.get_ref()
                    ),
                ))
            }
        };
        let journalctl = match &raw.journalctl {
            None => PathBuf::from("journalctl"),
            Some(j) if j.get_ref().is_empty() => {
                return Err(self.err(j, "journald.journalctl", "must not be empty"))
            }
            Some(j) => PathBuf::from(j.get_ref()),
        };
        let max_field_size = self.size(
            raw.max_field_size.as_ref(),
            "journald.max_field_size",
            128 << 10,
        )?;
        let max_entry_size = self.size(
            raw.max_entry_size.as_ref(),
            "journald.max_entry_size",
            512 << 10,
        )?;
        if !(1 << 10..=1 << 30).contains(&max_field_size) {
            return Err(self.err_opt(
                raw.max_field_size.as_ref(),
                "journald.max_field_size",
                "must be between 1KiB and 1GiB",
            ));
        }
        if max_entry_size < max_field_size || max_entry_size > 1 << 30 {
            return Err(self.err_opt(
                raw.max_entry_size.as_ref(),
                "journald.max_entry_size",
                format!(
                    "must be at least max_field_size ({max_field_size} bytes) and at most 1GiB"
                ),
            ));
        }
        let hang_timeout = self.duration(
            raw.hang_timeout.as_ref(),
            "journald.hang_timeout",
            Duration::from_secs(60),
        )?;
        if hang_timeout < Duration::from_secs(1) {
            return Err(self.err_opt(
                raw.hang_timeout.as_ref(),
                "journald.hang_timeout",
                "must be at least 1s",
            ));
        }
        Ok(JournaldConfig {
            units,
            exclude_units,
            min_priority,
            matches,
            // An empty path means unset, so the README can show every key.
            directory: raw.directory.filter(|d| !d.is_empty()).map(PathBuf::from),
            read_from,
            journalctl,
            max_field_size,
            max_entry_size,
            hang_timeout,
        })
    }

    fn otlp_receiver(
        &self,
        raw: RawOtlpReceiver,
        queue: &QueueConfig,
    ) -> Result<OtlpReceiverConfig, ConfigError> {
        let listen = match &raw.listen {
            Some(s) => s.get_ref().parse().map_err(|_| {
                self.err(
                    s,
                    "receiver.otlp.listen",
                    format!(
                        "invalid address {:?}: expected ip:port, like \"127.0.0.1:4318\"",
                        s.get_ref()
                    ),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 4318)),
        };
        let max_request_size = self.size(
            raw.max_request_size.as_ref(),
            "receiver.otlp.max_request_size",
            4 << 20,
        )?;
        // A request becomes one batch: it must fit in the queue.
        let most = queue.max_size.min(1 << 30);
        if !(1 << 10..=most).contains(&max_request_size) {
            return Err(self.err_opt(
                raw.max_request_size.as_ref(),
                "receiver.otlp.max_request_size",
                format!(
                    "must be between 1KiB and export.queue.max_size ({most} bytes), at most 1GiB"
                ),
            ));
        }
        let max_connections = match &raw.max_connections {
            None => 32,
            Some(n) if (1..=4096).contains(n.get_ref()) => {
                usize::try_from(*n.get_ref()).unwrap_or(32)
            }
            Some(n) => {
                return Err(self.err(
                    n,
                    "receiver.otlp.max_connections",
                    "must be between 1 and 4096",
                ))
            }
        };
        let read_timeout = self.duration(
            raw.read_timeout.as_ref(),
            "receiver.otlp.read_timeout",
            Duration::from_secs(30),
        )?;
        if read_timeout < Duration::from_millis(100) {
            return Err(self.err_opt(
                raw.read_timeout.as_ref(),
                "receiver.otlp.read_timeout",
                "must be at least 100ms",
            ));
        }
        let full_policy = match &raw.full_policy {
            None => match queue.full_policy {
                FullPolicy::DropOldest => ReceiverFullPolicy::DropOldest,
                FullPolicy::DropNewest => ReceiverFullPolicy::PushBack,
            },
            Some(p) if p.get_ref() == "push_back" => ReceiverFullPolicy::PushBack,
            Some(p) if p.get_ref() == "drop_oldest" => ReceiverFullPolicy::DropOldest,
            Some(p) => {
                return Err(self.err(
                    p,
                    "receiver.otlp.full_policy",
                    format!(
                        "expected \"push_back\" or \"drop_oldest\", not {:?}",
                        p.get_ref()
                    ),
                ))
            }
        };
        Ok(OtlpReceiverConfig {
            listen,
            max_request_size,
            max_connections,
            read_timeout,
            full_policy,
        })
    }

    /// Unit names or globs: not empty, no whitespace or control characters
    /// (journalctl would refuse them, and tern would restart it in a loop).
    fn units(&self, raw: Vec<Spanned<String>>, key: &str) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let name = u.get_ref();
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.err(
                    &u,
                    &format!("{key}[{i}]"),
                    format!("expected a unit name like \"sshd.service\", not {name:?}"),
                ));
            }
            out.push(u.into_inner());
        }
        Ok(out)
    }

    fn duration(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref()).map_err(|r| self.err(s, key, r)),
        }
    }

    fn size(
        &self,
        v: Option<&Spanned<RawSize>>,
        key: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match v.map(|s| (s, s.get_ref())) {
            None => Ok(default),
            Some((s, RawSize::Text(t))) => parse_size(t).map_err(|r| self.err(s, key, r)),
            Some((s, RawSize::Bytes(n))) => u64::try_from(*n)
                .map_err(|_| self.err(s, key, format!("invalid size {n}: must not be negative"))),
        }
    }

    fn float(
        &self,
        v: Option<&Spanned<f64>>,
        key: &str,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<f64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if range.contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(self.err(
                s,
                key,
                format!("must be between {} and {}", range.start(), range.end()),
            )),
        }
    }
}

/// A located error from the TOML parser or deserializer, with its whole
/// reason on one line and the key its span falls on. toml knows only the span
/// (of a key, a value or a table header), so the key comes from a [`KeyMap`]
/// of the text; when the text is not TOML at all, only a table header can be
/// named, and otherwise the key is left out rather than guessed.
/// The reason of a client's TLS setup error, without its "tls setup: "
/// prefix: the config error names the key instead.
fn tls_reason(e: HttpError) -> String {
    match e {
        HttpError::Tls(reason) => reason,
        other => other.to_string(),
    }
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    // The message can run over lines ("invalid table header" then "duplicate
    // key `agent` in document root"); each line is part of the reason.
    let reason = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let span = e.span();
    let key = span.as_ref().and_then(|span| match KeyMap::of(text) {
        Some(keys) => keys.path_at(span).map(str::to_owned),
        None => header_at(text, span.start),
    });
    ConfigError {
        path: path.to_owned(),
        position: span.map(|s| line_col(text, s.start)),
        key: key.unwrap_or_default(),
        reason,
    }
}

/// The key `name` under `parent` as messages write it: `export.headers.X-A`,
/// and quoted when it is not a bare TOML key: `resource."deployment.environment"`.
fn dotted(parent: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), bare) {
        (true, true) => name.to_owned(),
        (true, false) => format!("{name:?}"),
        (false, true) => format!("{parent}.{name}"),
        (false, false) => format!("{parent}.{name:?}"),
    }
}

/// The dotted name of the table header on the line holding `offset`, like
/// `export.retry` for `[export.retry]` (an array of tables without its
/// index): the key of a parse error such as a duplicate table.
fn header_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next()?.trim();
    if !line.starts_with('[') {
        return None;
    }
    let keys = KeyMap::of(line)?;
    let path = keys.0.iter().map(|(_, p)| p).max_by_key(|p| p.len())?;
    Some(path.strip_suffix("[0]").unwrap_or(path).to_owned())
}

/// Every key and value of a TOML document with its byte span and its dotted
/// path (`scrape[0].targets[1]`, `resource."deployment.environment"`), so
/// that an error located only by a span can name its key, and an error about
/// a key can point at where it is written.
struct KeyMap(Vec<(Range<usize>, String)>);

impl KeyMap {
    /// Maps `text`; `None` when it is not TOML.
    fn of(text: &str) -> Option<KeyMap> {
        let protocol = SpannedProtocol::probe()?;
        let mut spans = Vec::new();
        let root = Node {
            path: String::new(),
            spans: &mut spans,
            protocol,
            spanned: false,
        };
        serde::de::DeserializeSeed::deserialize(root, toml::de::Deserializer::new(text)).ok()?;
        Some(KeyMap(spans))
    }

    /// The path of the smallest key or value whose span holds `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        self.0
            .iter()
            .filter(|(s, _)| s.start <= span.start && span.end <= s.end)
            .min_by_key(|(s, p)| (s.len(), std::cmp::Reverse(p.len())))
            .map(|(_, p)| p.as_str())
    }

    /// Where `key` is first written, or else the nearest of its parents.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let mut key = key;
        loop {
            let found = self
                .0
                .iter()
                .filter(|(_, p)| p == key)
                .map(|(s, _)| s.clone())
                .min_by_key(|s| s.start);
            if found.is_some() {
                return found;
            }
            key = key.get(..key.rfind(['.', '['])?)?;
        }
    }
}

/// How [`Spanned`] asks a deserializer for a span: serde_spanned's private
/// struct name and its three fields (start, end, value). Learned by letting
/// `Spanned` ask a probe, so that they cannot drift from the crate's.
#[derive(Debug, Clone, Copy)]
struct SpannedProtocol {
    name: &'static str,
    fields: &'static [&'static str],
}

impl SpannedProtocol {
    fn probe() -> Option<SpannedProtocol> {
        struct Probe(std::cell::Cell<Option<SpannedProtocol>>);
        impl<'de> serde::Deserializer<'de> for &Probe {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not a request for a span"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                name: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.set(Some(SpannedProtocol { name, fields }));
                Err(serde::de::Error::custom("probed"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let probe = Probe(std::cell::Cell::new(None));
        let _ = Spanned::<serde::de::IgnoredAny>::deserialize(&probe);
        probe.0.get().filter(|p| p.fields.len() == 3)
    }

    /// Whether `key` is the span field `i` (0 start, 1 end, 2 value).
    fn is_field(&self, i: usize, key: &str) -> bool {
        self.fields.get(i).is_some_and(|f| *f == key)
    }
}

/// One value of the document being mapped, at `path`. With `spanned`, it asks
/// toml for the value's span (tables made implicit by a dotted header have
/// none, and arrive as plain tables).
struct Node<'a> {
    path: String,
    spans: &'a mut Vec<(Range<usize>, String)>,
    protocol: SpannedProtocol,
    spanned: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.spanned {
            let SpannedProtocol { name, fields } = self.protocol;
            d.deserialize_struct(name, fields, self)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for i in 0.. {
            let element = Node {
                path: format!("{}[{i}]", self.path),
                spans: &mut *self.spans,
                protocol: self.protocol,
                spanned: true,
            };
            if seq.next_element_seed(element)?.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Node {
            path,
            spans,
            protocol,
            ..
        } = self;
        let mut start = None;
        let mut end = None;
        while let Some((key_span, key)) = map.next_key_seed(KeySeed(protocol))? {
            // A spanned value arrives as the map {start, end, value}; its
            // keys, unlike a table's, have no span of their own.
            if key_span.is_none() && protocol.is_field(0, &key) {
                start = Some(map.next_value::<usize>()?);
            } else if key_span.is_none() && protocol.is_field(1, &key) {
                end = Some(map.next_value::<usize>()?);
            } else if key_span.is_none() && protocol.is_field(2, &key) {
                if let (Some(start), Some(end)) = (start, end) {
                    spans.push((start..end, path.clone()));
                }
                map.next_value_seed(Node {
                    path: path.clone(),
                    spans: &mut *spans,
                    protocol,
                    spanned: false,
                })?;
            } else {
                let child = dotted(&path, &key);
                if let Some(span) = key_span {
                    spans.push((span, child.clone()));
                }
                map.next_value_seed(Node {
                    path: child,
                    spans: &mut *spans,
                    protocol,
                    spanned: true,
                })?;
            }
        }
        Ok(())
    }
}

/// A table key with its span when toml has one.
struct KeySeed(SpannedProtocol);

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = (Option<Range<usize>>, String);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let SpannedProtocol { name, fields } = self.0;
        d.deserialize_struct(name, fields, self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = (Option<Range<usize>>, String);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok((None, v.to_owned()))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut start, mut end, mut value) = (None, None, None);
        while let Some(k) = map.next_key::<String>()? {
            if self.0.is_field(0, &k) {
                start = Some(map.next_value::<usize>()?);
            } else if self.0.is_field(1, &k) {
                end = Some(map.next_value::<usize>()?);
            } else {
                value = Some(map.next_value::<String>()?);
            }
        }
        let value = value.ok_or_else(|| serde::de::Error::custom("a key without a name"))?;
        Ok((start.zip(end).map(|(s, e)| s..e), value))
    }
}

/// Turns a byte offset into a 1-based line and column (in characters).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn parse_target(t: &str, scheme: &str, metrics_path: &str) -> Result<ScrapeTarget, String> {
    let (url, hostport) = if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        let hostport = rest.split('/').next().unwrap_or("");
        let url = if rest.contains('/') {
            t.to_string()
        } else {
            format!("{t}{metrics_path}")
        };
        (url, hostport.to_string())
    } else {
        if t.contains('/') || t.contains("://") {
            return Err(format!("expected host:port or an http(s) URL, not {t:?}"));
        }
        (format!("{scheme}://{t}{metrics_path}"), t.to_string())
    };
    let port_ok = hostport
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!(
            "expected host:port, like \"127.0.0.1:9100\", not {t:?}"
        ));
    }
    Ok(ScrapeTarget {
        url,
        instance: hostport,
    })
}

/// An RFC 9110 `tchar`, the characters of a header name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A syslog priority as journalctl `--priority` takes it: a name or 0-7.
fn parse_priority(s: &str) -> Option<u8> {
    const NAMES: [&str; 8] = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    match s.parse::<u8>() {
        Ok(n) if n <= 7 => Some(n),
        Ok(_) => None,
        Err(_) => NAMES
            .iter()
            .position(|n| *n == s)
            .and_then(|i| u8::try_from(i).ok()),
    }
}

/// A journalctl match: `FIELD=value` with a journal field name (A-Z, 0-9, _,
/// not starting with a digit, at most 64 bytes), or `+` between alternatives.
fn valid_match(m: &str) -> bool {
    if m == "+" {
        return true;
    }
    let Some((field, _)) = m.split_once('=') else {
        return false;
    };
    !field.is_empty()
        && field.len() <= 64
        && !field.starts_with(|c: char| c.is_ascii_digit())
        && field
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses durations such as "15s", "500ms", "5m", "1h30m" or "0".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h), like \"15s\"")
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
        rest = next;
    }
    Ok(total)
}

/// Formats a duration the way the config writes it ("15s", "500ms").
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.is_zero() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Parses sizes such as "256MiB", "16MB", "512KiB" or "1048576" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size {s:?}: expected a number and a unit (B, KiB, MiB, GiB, KB, MB, GB), like \"256MiB\"")
    };
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: Option<RawAgent>,
    #[serde(default)]
    resource: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    scrape: Vec<RawScrape>,
    export: Option<RawExport>,
    journald: Option<RawJournald>,
    receiver: Option<RawReceiver>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    otlp: Option<RawOtlpReceiver>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOtlpReceiver {
    listen: Option<Spanned<String>>,
    max_request_size: Option<Spanned<RawSize>>,
    max_connections: Option<Spanned<i64>>,
    read_timeout: Option<Spanned<String>>,
    full_policy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    state_dir: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScrape {
    job: Spanned<String>,
    targets: Spanned<Vec<Spanned<String>>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    metrics_path: Option<Spanned<String>>,
    scheme: Option<Spanned<String>>,
    body_size_limit: Option<Spanned<RawSize>>,
    #[serde(default)]
    labels: BTreeMap<Spanned<String>, String>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExport {
    #[serde(default)]
    endpoints: Vec<Spanned<String>>,
    compression: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    tls: Option<RawTls>,
    retry: Option<RawRetry>,
    queue: Option<RawQueue>,
    debug: Option<bool>,
    routing_key: Option<Spanned<String>>,
    dns: Option<RawDns>,
    failover_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    hostname: Spanned<String>,
    port: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    resolver: Option<Spanned<String>>,
    scheme: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJournald {
    #[serde(default)]
    units: Vec<Spanned<String>>,
    #[serde(default)]
    exclude_units: Vec<Spanned<String>>,
    min_priority: Option<Spanned<String>>,
    #[serde(default)]
    matches: Vec<Spanned<String>>,
    directory: Option<String>,
    read_from: Option<Spanned<String>>,
    journalctl: Option<Spanned<String>>,
    max_field_size: Option<Spanned<RawSize>>,
    max_entry_size: Option<Spanned<RawSize>>,
    hang_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial_interval: Option<Spanned<String>>,
    max_interval: Option<Spanned<String>>,
    multiplier: Option<Spanned<f64>>,
    randomization_factor: Option<Spanned<f64>>,
    max_elapsed_time: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    max_size: Option<Spanned<RawSize>>,
    full_policy: Option<Spanned<String>>,
    fsync: Option<bool>,
}

/// A size as written: a string like "256MiB" or "1048576", or a TOML integer
/// of bytes (`max_size = 1048576`), as the README allows.
#[derive(Debug)]
enum RawSize {
    Text(String),
    Bytes(i64),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawSize, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"256MiB\" or a number of bytes")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text)
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml example") + 8;
        let len = readme[start..].find("```").expect("closed");
        let c = parse(&readme[start..start + len]).unwrap();
        assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/tern"));
        assert_eq!(c.scrape[0].targets[0].url, "http://127.0.0.1:9100/metrics");
        assert_eq!(c.scrape[0].body_size_limit, 16 << 20);
        assert_eq!(
            c.scrape[0].labels.get("site").map(String::as_str),
            Some("plant-7")
        );
        assert_eq!(
            c.resource.get("deployment.environment").map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            c.export.headers.get("X-Scope-OrgID").map(String::as_str),
            Some("edge")
        );
        assert_eq!(c.export.tls, TlsConfig::default());
        assert_eq!(c.export.queue.max_size, 256 << 20);
    }

    #[test]
    fn the_readme_journald_example_parses_to_the_defaults() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\n[journald]")
            .expect("README has a [journald] example")
            + 8;
        let len = readme[start..].find("```").expect("closed");
        let example = parse(&readme[start..start + len])
            .unwrap()
            .journald
            .unwrap();
        assert_eq!(example, parse("[journald]\n").unwrap().journald.unwrap());
    }

    #[test]
    fn defaults_from_an_empty_file() {
        let c = parse("[agent]\nstate_dir = \"/tmp/x\"\n").unwrap();
        assert_eq!(c.agent.listen.to_string(), "127.0.0.1:12345");
        assert_eq!(c.export.retry.initial_interval, Duration::from_secs(5));
        assert_eq!(c.export.retry.max_interval, Duration::from_secs(30));
        assert_eq!(c.export.retry.multiplier, 1.5);
        assert_eq!(c.export.retry.randomization_factor, 0.5);
        assert_eq!(c.export.retry.max_elapsed_time, Duration::ZERO);
        assert_eq!(c.export.queue.full_policy, FullPolicy::DropOldest);
        assert!(c.export.queue.fsync);
        assert_eq!(c.export.compression, Compression::Gzip);
    }

    #[test]
    fn scrape_targets_become_urls() {
        let c = parse(
            "[[scrape]]\njob = \"node\"\ntargets = [\"127.0.0.1:9100\", \"https://h:1/x\"]\ninterval = \"5s\"\n",
        )
        .unwrap();
        let s = &c.scrape[0];
        assert_eq!(s.targets[0].url, "http://127.0.0.1:9100/metrics");
        assert_eq!(s.targets[0].instance, "127.0.0.1:9100");
        assert_eq!(s.targets[1].url, "https://h:1/x");
        assert_eq!(s.targets[1].instance, "h:1");
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_key_names_line_column_and_key() {
        let e = parse("[agent]\nstate_dir = \"/x\"\nlisten_addr = \"1\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("t.toml:3:1: agent.listen_addr: unknown field `listen_addr`"),
            "{msg}"
        );
    }

    #[test]
    fn bad_duration_names_line_column_and_key() {
        let e = parse("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\ninterval = \"15x\"\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml:4:12: scrape[0].interval: invalid duration \"15x\": expected a number and a unit (ms, s, m, h), like \"15s\""
        );
    }

    #[test]
    fn timeout_above_interval_is_an_error() {
        let e = parse(
            "[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\ninterval = \"5s\"\ntimeout = \"6s\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("scrape[0].timeout: must be above 0 and at most the interval (5s)"),
            "{e}"
        );
    }

    #[test]
    fn bad_target_is_located() {
        let e = parse("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\", \"nope\"]\n").unwrap_err();
        assert_eq!(e.position, Some((3, 19)));
        assert_eq!(e.key, "scrape[0].targets[1]");
    }

    #[test]
    fn journald_is_off_unless_present() {
        let c = parse("[agent]\nstate_dir = \"/tmp/x\"\n").unwrap();
        assert_eq!(c.journald, None);
    }

    #[test]
    fn journald_defaults() {
        let c = parse("[journald]\n").unwrap();
        let j = c.journald.unwrap();
        assert!(j.units.is_empty() && j.exclude_units.is_empty() && j.matches.is_empty());
        assert_eq!(j.min_priority, 6);
        assert_eq!(j.directory, None);
        assert_eq!(j.read_from, ReadFrom::Tail);
        assert_eq!(j.journalctl, PathBuf::from("journalctl"));
        assert_eq!(j.max_field_size, 128 << 10);
        assert_eq!(j.max_entry_size, 512 << 10);
        assert_eq!(j.hang_timeout, Duration::from_secs(60));
    }

    #[test]
    fn journald_every_key() {
        let c = parse(
            r#"[journald]
units = ["sshd", "tern.service"]
exclude_units = ["noisy-*.service"]
min_priority = "warning"
matches = ["_TRANSPORT=kernel", "+", "SYSLOG_IDENTIFIER=app"]
directory = "/var/log/journal/remote"
read_from = "boot"
journalctl = "/usr/bin/journalctl"
max_field_size = "4KiB"
max_entry_size = "64KiB"
hang_timeout = "5s"
"#,
        )
        .unwrap();
        let j = c.journald.unwrap();
        assert_eq!(j.units, ["sshd", "tern.service"]);
        assert_eq!(j.exclude_units, ["noisy-*.service"]);
        assert_eq!(j.min_priority, 4);
        assert_eq!(j.matches.len(), 3);
        assert_eq!(j.directory, Some(PathBuf::from("/var/log/journal/remote")));
        assert_eq!(j.read_from, ReadFrom::Boot);
        assert_eq!(j.max_field_size, 4096);
        assert_eq!(j.max_entry_size, 65536);
        assert_eq!(j.hang_timeout, Duration::from_secs(5));
        let c = parse("[journald]\nmin_priority = \"3\"\ndirectory = \"\"\n").unwrap();
        let j = c.journald.unwrap();
        assert_eq!(j.min_priority, 3);
        assert_eq!(j.directory, None);
    }

    #[test]
    fn journald_errors_are_located() {
        let e = parse("[journald]\nmin_priority = \"loud\"\n").unwrap_err();
        assert_eq!(e.position, Some((2, 16)));
        assert_eq!(e.key, "journald.min_priority");
        let e = parse("[journald]\nmatches = [\"A=1\", \"lower=x\"]\n").unwrap_err();
        assert_eq!(e.key, "journald.matches[1]");
        assert!(e.reason.contains("FIELD=value"), "{e}");
        let e = parse("[journald]\nread_from = \"start\"\n").unwrap_err();
        assert_eq!(e.key, "journald.read_from");
        let e = parse("[journald]\nunits = [\"a b\"]\n").unwrap_err();
        assert_eq!(e.key, "journald.units[0]");
        let e = parse("[journald]\nmax_field_size = \"1MiB\"\nmax_entry_size = \"64KiB\"\n")
            .unwrap_err();
        assert_eq!(e.key, "journald.max_entry_size");
        let e = parse("[journald]\nhang_timeout = \"10ms\"\n").unwrap_err();
        assert_eq!(e.key, "journald.hang_timeout");
        let e = parse("[journald]\nfollow = true\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `follow`"), "{e}");
    }

    #[test]
    fn otlp_receiver_is_off_unless_present_and_has_defaults() {
        assert_eq!(parse("").unwrap().otlp_receiver, None);
        let r = parse("[receiver.otlp]\n").unwrap().otlp_receiver.unwrap();
        assert_eq!(r.listen.to_string(), "127.0.0.1:4318");
        assert_eq!(r.max_request_size, 4 << 20);
        assert_eq!(r.max_connections, 32);
        assert_eq!(r.read_timeout, Duration::from_secs(30));
        assert_eq!(r.full_policy, ReceiverFullPolicy::DropOldest);
        let c = parse("[receiver.otlp]\n[export.queue]\nfull_policy = \"drop_newest\"\n").unwrap();
        assert_eq!(
            c.otlp_receiver.unwrap().full_policy,
            ReceiverFullPolicy::PushBack
        );
        let r = parse(
            "[receiver.otlp]\nlisten = \"0.0.0.0:4319\"\nmax_request_size = \"1MiB\"\nmax_connections = 4\nread_timeout = \"5s\"\nfull_policy = \"push_back\"\n",
        )
        .unwrap()
        .otlp_receiver
        .unwrap();
        assert_eq!(r.listen.to_string(), "0.0.0.0:4319");
        assert_eq!(r.max_request_size, 1 << 20);
        assert_eq!(r.max_connections, 4);
        assert_eq!(r.read_timeout, Duration::from_secs(5));
        assert_eq!(r.full_policy, ReceiverFullPolicy::PushBack);
    }

    #[test]
    fn otlp_receiver_errors_are_located() {
        let e = parse("[receiver.otlp]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.position),
            ("receiver.otlp.listen", Some((2, 10)))
        );
        let e = parse("[receiver.otlp]\nmax_request_size = \"2GiB\"\n").unwrap_err();
        assert_eq!(e.key, "receiver.otlp.max_request_size");
        let e = parse(
            "[receiver.otlp]\nmax_request_size = \"8MiB\"\n[export.queue]\nmax_size = \"4MiB\"\n",
        )
        .unwrap_err();
        assert!(e.reason.contains("export.queue.max_size"), "{e}");
        let e = parse("[receiver.otlp]\nmax_connections = 0\n").unwrap_err();
        assert_eq!(e.key, "receiver.otlp.max_connections");
        let e = parse("[receiver.otlp]\nfull_policy = \"drop_newest\"\n").unwrap_err();
        assert_eq!(e.key, "receiver.otlp.full_policy");
        let e = parse("[receiver.otlp]\nread_timeout = \"1ms\"\n").unwrap_err();
        assert_eq!(e.key, "receiver.otlp.read_timeout");
        let e = parse("[receiver.otlp]\nendpoint = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `endpoint`"), "{e}");
        let e = parse("[receiver.grpc]\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `grpc`"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1e400s").is_err());
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("1.5GiB").is_err());
    }

    /// A directory of files for one test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "tern-config-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The message of the error `text` gets.
    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn zero_durations_that_cannot_work_are_refused() {
        assert_eq!(
            error("[export]\ntimeout = \"0s\"\n"),
            "t.toml:2:11: export.timeout: must be more than 0: every request would time out"
        );
        assert_eq!(
            error("[export.retry]\ninitial_interval = \"0s\"\n"),
            "t.toml:2:20: export.retry.initial_interval: must be more than 0: a failed request would be sent again at once, without end"
        );
        assert_eq!(
            error("[export.retry]\nmax_interval = \"0\"\n"),
            "t.toml:2:16: export.retry.max_interval: need initial_interval (5s) <= max_interval (0ms)"
        );
        assert_eq!(
            error("[export.retry]\ninitial_interval = \"1m\"\n"),
            "t.toml:2:20: export.retry.initial_interval: need initial_interval (60s) <= max_interval (30s)"
        );
        assert_eq!(
            error("[export.retry]\nmultiplier = 0.5\n"),
            "t.toml:2:14: export.retry.multiplier: must be between 1 and 100"
        );
        assert_eq!(
            error("[export.retry]\nrandomization_factor = 1.5\n"),
            "t.toml:2:24: export.retry.randomization_factor: must be between 0 and 1"
        );
        assert_eq!(
            error("[export]\ndns = { hostname = \"gw\", timeout = \"0s\" }\n"),
            "t.toml:2:36: export.dns.timeout: must be more than 0: every query would time out"
        );
        // max_elapsed_time 0 means never give up: still fine.
        let c = parse("[export.retry]\nmax_elapsed_time = \"0s\"\n").unwrap();
        assert_eq!(c.export.retry.max_elapsed_time, Duration::ZERO);
    }

    #[test]
    fn headers_that_http_cannot_carry_are_refused() {
        assert_eq!(
            error("[export]\nheaders = { \"X-A\" = \"a\\r\\nb\" }\n"),
            "t.toml:2:21: export.headers.X-A: the value holds the control character U+000D: header values allow no CR, LF or other control characters"
        );
        let e = error("[export]\nheaders = { \"X-A\" = \"a\\u0000\" }\n");
        assert!(e.contains("U+0000"), "{e}");
        assert_eq!(
            error("[export]\nheaders = { \"X Org\" = \"v\" }\n"),
            "t.toml:2:13: export.headers.\"X Org\": not a header name: use letters, digits and !#$%&'*+-.^_`|~ (an RFC 9110 token)"
        );
        let e = error("[export.headers]\n\"\" = \"v\"\n");
        assert!(
            e.starts_with("t.toml:2:1: export.headers.\"\": not a header name"),
            "{e}"
        );
        let e = error("[export.headers]\n\"X-Ä\" = \"v\"\n");
        assert!(e.contains("not a header name"), "{e}");
        assert_eq!(
            error("[export.headers]\ncontent-type = \"application/json\"\n"),
            "t.toml:2:1: export.headers.content-type: tern sets this header itself; remove it"
        );
        // A secret in a bad value is never echoed.
        let e = error("[export]\nheaders = { Authorization = \"Bearer s3cret\\n\" }\n");
        assert!(!e.contains("s3cret"), "{e}");
        // Tabs, spaces and non-ASCII text are allowed in values.
        let c = parse(
            "[export]\nheaders = { \"X-Scope-OrgID\" = \"a\\tb c ü\", \"x_y.z~\" = \"1\" }\n",
        )
        .unwrap();
        assert_eq!(c.export.headers.len(), 2);
    }

    #[test]
    fn settings_that_cannot_go_together_are_located() {
        assert_eq!(
            error("[[scrape]]\njob = \"n\"\ntargets = []\n"),
            "t.toml:3:11: scrape[0].targets: must list at least one target, like [\"127.0.0.1:9100\"]"
        );
        assert_eq!(
            error("[export]\nendpoints = [\"http://a:1\"]\ndns = { hostname = \"gw\" }\n"),
            "t.toml:3:20: export.dns: set either export.endpoints or export.dns, not both"
        );
        assert_eq!(
            error("[export.dns]\nhostname = \"gw\"\n[export]\nendpoints = [\"http://a:1\"]\n"),
            "t.toml:4:14: export.endpoints: set either export.endpoints or export.dns, not both"
        );
        assert_eq!(
            error("[export.tls]\ncert_file = \"/c.pem\"\n"),
            "t.toml:2:13: export.tls.cert_file: needs key_file too: a client certificate goes with its private key"
        );
        assert_eq!(
            error("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\ntls = { key_file = \"/k.pem\" }\n"),
            "t.toml:4:20: scrape[0].tls.key_file: needs cert_file too: a private key goes with its client certificate"
        );
        assert_eq!(
            error("[export.tls]\nserver_name = \"gw\"\n"),
            "t.toml:2:15: export.tls.server_name: not supported yet: put the certificate's name in the URL"
        );
    }

    #[test]
    fn attributes_need_a_name() {
        assert_eq!(
            error("[resource]\n\"\" = \"x\"\n"),
            "t.toml:2:1: resource.\"\": an attribute needs a name, not \"\""
        );
        assert_eq!(
            error("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\nlabels = { \"\" = \"x\" }\n"),
            "t.toml:4:12: scrape[0].labels.\"\": an attribute needs a name, not \"\""
        );
    }

    #[test]
    fn tls_files_are_read_at_check_time() {
        let dir = TempDir::new("tls");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = dir.write("cert.pem", certified.cert.pem());
        let key = dir.write("key.pem", certified.key_pair.serialize_pem());
        let both = dir.write(
            "both.pem",
            format!(
                "{}{}",
                certified.cert.pem(),
                certified.key_pair.serialize_pem()
            ),
        );
        let text = dir.write("text.pem", "not a certificate\n");
        let missing = dir.0.join("missing.pem");
        let tls = |body: String| parse(&format!("[export.tls]\n{body}"));

        let c = tls(format!(
            "ca_file = {cert:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n"
        ))
        .unwrap();
        assert_eq!(c.export.tls.ca_file.as_ref(), Some(&cert));
        tls(format!("cert_file = {both:?}\nkey_file = {both:?}\n")).unwrap();

        let e = tls(format!("ca_file = {missing:?}\n")).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.position),
            ("export.tls.ca_file", Some((2, 11)))
        );
        assert!(
            e.reason.starts_with(&format!("{}: ", missing.display()))
                && e.reason.contains("No such file"),
            "{e}"
        );
        let e = tls(format!("ca_file = {text:?}\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "t.toml:2:11: export.tls.ca_file: {}: no PEM certificate found",
                text.display()
            )
        );
        let e = tls(format!("cert_file = {text:?}\nkey_file = {key:?}\n")).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.position),
            ("export.tls.cert_file", Some((2, 13)))
        );
        assert!(e.reason.contains("no PEM certificate found"), "{e}");
        let e = tls(format!("cert_file = {cert:?}\nkey_file = {cert:?}\n")).unwrap_err();
        assert_eq!(e.key, "export.tls.cert_file", "{e}");
        let e = tls(format!("cert_file = {cert:?}\nkey_file = {text:?}\n")).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.position),
            ("export.tls.key_file", Some((3, 12)))
        );
        let e = tls(format!("cert_file = {cert:?}\nkey_file = {missing:?}\n")).unwrap_err();
        assert_eq!(e.key, "export.tls.key_file", "{e}");
        let e = parse(&format!(
            "[[scrape]]\njob = \"n\"\ntargets = [\"https://a:1/m\"]\ntls = {{ ca_file = {missing:?} }}\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "scrape[0].tls.ca_file", "{e}");
    }

    #[test]
    fn a_file_that_is_not_utf8_names_the_first_bad_byte() {
        let dir = TempDir::new("utf8");
        let path = dir.write("t.toml", b"[agent]\nstate_dir = \"/tmp/\xc3\xa9\xff\"\n");
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.position, Some((2, 20)));
        assert_eq!(
            e.reason,
            "invalid UTF-8 (byte 0xff): a config file must be UTF-8 text"
        );
    }

    #[test]
    fn parser_errors_keep_their_whole_reason_and_name_no_value() {
        assert_eq!(
            error("[agent]\nstate_dir = \"/x\"\n[agent]\nlisten = \"127.0.0.1:1\"\n"),
            "t.toml:3:1: agent: invalid table header: duplicate key `agent` in document root"
        );
        let e = error("[export.retry]\n[export.retry]\n");
        assert!(
            e.starts_with("t.toml:2:1: export.retry: invalid table header"),
            "{e}"
        );
        // A type error names the key, not the value where the key belongs.
        assert_eq!(
            error("[agent]\nstate_dir = 12345\n"),
            "t.toml:2:13: agent.state_dir: invalid type: integer `12345`, expected a string"
        );
        assert_eq!(
            error("[[scrape]]\njob = \"a\"\ntargets = [\"a:1\"]\n[[scrape]]\njob = \"b\"\ntargets = [\"b:1\", 2]\n"),
            "t.toml:6:19: scrape[1].targets[1]: invalid type: integer `2`, expected a string"
        );
        let e = error("[export.retry]\nmultiplier = \"x\"\n");
        assert!(
            e.starts_with("t.toml:2:14: export.retry.multiplier: invalid type"),
            "{e}"
        );
        let e = error("export.retry.multiplier = \"x\"\n");
        assert!(
            e.starts_with("t.toml:1:27: export.retry.multiplier: invalid type"),
            "{e}"
        );
        let e = error("[resource]\n\"a.b\" = 1\n");
        assert!(
            e.starts_with("t.toml:2:9: resource.\"a.b\": invalid type"),
            "{e}"
        );
        let e = error("[[scrape]]\ntargets = [\"a:1\"]\n");
        assert!(
            e.starts_with("t.toml:1:1: scrape[0]: missing field `job`"),
            "{e}"
        );
        let e = error("[export]\ndns = { port = 1 }\n");
        assert!(e.contains(": export.dns: missing field `hostname`"), "{e}");
        // Syntax errors: the position and the parser's reason, no key.
        let e = error("[agent]\nstate_dir = \n");
        assert!(e.starts_with("t.toml:2:13: invalid string: "), "{e}");
        assert_eq!(
            error("[agent]\nstate_dir = \"x\" y\n"),
            "t.toml:2:17: expected newline, `#`"
        );
        let e = error("[agent]\nstate_dir = \"a\"\nstate_dir = \"b\"\n");
        assert!(
            e.starts_with("t.toml:3:1: duplicate key `state_dir`"),
            "{e}"
        );
    }

    #[test]
    fn sizes_may_be_a_number_of_bytes() {
        let c = parse("[export.queue]\nmax_size = 1048576\n").unwrap();
        assert_eq!(c.export.queue.max_size, 1 << 20);
        let c = parse("[export.queue]\nmax_size = \"2097152\"\n").unwrap();
        assert_eq!(c.export.queue.max_size, 2 << 20);
        let c = parse(
            "[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\nbody_size_limit = 4096\n[journald]\nmax_field_size = 2048\nmax_entry_size = 8192\n[receiver.otlp]\nmax_request_size = 65536\n",
        )
        .unwrap();
        assert_eq!(c.scrape[0].body_size_limit, 4096);
        let j = c.journald.unwrap();
        assert_eq!((j.max_field_size, j.max_entry_size), (2048, 8192));
        assert_eq!(c.otlp_receiver.unwrap().max_request_size, 65536);
        assert_eq!(
            error("[export.queue]\nmax_size = -1\n"),
            "t.toml:2:12: export.queue.max_size: invalid size -1: must not be negative"
        );
        let e = error("[export.queue]\nmax_size = 1.5\n");
        assert!(
            e.starts_with("t.toml:2:12: export.queue.max_size: invalid type: floating point `1.5`, expected a size like \"256MiB\" or a number of bytes"),
            "{e}"
        );
    }

    #[test]
    fn rules_between_keys_point_at_the_section_when_a_key_is_unset() {
        // max_entry_size keeps its default (512KiB), below max_field_size.
        let e = parse("\n[journald]\nmax_field_size = \"1MiB\"\n").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.position),
            ("journald.max_entry_size", Some((2, 1)))
        );
    }
}
