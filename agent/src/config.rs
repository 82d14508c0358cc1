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

/// The `[export.tls]` and `[scrape.tls]` sections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// PEM file of CA certificates trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name checked in the gateway's certificate instead of the URL's host.
    pub server_name: Option<String>,
    /// Skip certificate checks. For tests only. Defaults to false.
    pub insecure_skip_verify: bool,
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
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            position: None,
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let position = e.span().map(|s| line_col(text, s.start));
            // toml's message can span lines with a source excerpt; keep the first.
            let reason = e.message().lines().next().unwrap_or("").to_string();
            let key = e
                .span()
                .and_then(|s| text.get(s))
                .filter(|k| !k.contains('\n') && k.len() < 80)
                .map(|k| k.trim_matches('"').to_string())
                .unwrap_or_default();
            ConfigError {
                path: path.to_owned(),
                position,
                key,
                reason,
            }
        })?;
        Config::from_raw(path, text, raw)
    }

    /// Validates the raw structs and converts them to runtime types.
    fn from_raw(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
        let cx = Cx { path, text };
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
            if job.targets.is_empty() {
                return Err(cx.err_key(
                    &key("targets"),
                    "must list at least one target, like [\"127.0.0.1:9100\"]",
                ));
            }
            let mut targets = Vec::new();
            for (t, target) in job.targets.iter().enumerate() {
                let parsed =
                    parse_target(target.get_ref(), &scheme, &metrics_path).map_err(|reason| {
                        cx.err(target, &format!("scrape[{i}].targets[{t}]"), reason)
                    })?;
                targets.push(parsed);
            }
            let tls = cx.tls(job.tls, &key("tls"))?;
            scrape.push(ScrapeConfig {
                job: job.job.into_inner(),
                targets,
                interval,
                timeout,
                body_size_limit,
                labels: job.labels,
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
        let routing = cx.routing(export.routing_key.as_ref())?;
        let dns = match export.dns {
            None => None,
            Some(d) => Some(cx.dns(d)?),
        };
        if dns.is_some() && !endpoints.is_empty() {
            return Err(cx.err_key(
                "export.dns",
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
        if retry.initial_interval.is_zero() || retry.max_interval < retry.initial_interval {
            return Err(cx.err_opt(
                r.max_interval.as_ref(),
                "export.retry",
                "need 0 < initial_interval <= max_interval",
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
            resource: raw.resource,
            scrape,
            export: ExportConfig {
                endpoints,
                compression,
                timeout,
                headers: export.headers,
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

    fn err_key(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        self.err_at(None, key, reason)
    }

    fn err_at(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        reason: impl Into<String>,
    ) -> ConfigError {
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

    fn dns(&self, raw: RawDns) -> Result<DnsConfig, ConfigError> {
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
        Ok(DnsConfig {
            hostname,
            port,
            interval,
            timeout: self.duration(
                raw.timeout.as_ref(),
                "export.dns.timeout",
                Duration::from_secs(1),
            )?,
            resolver,
            scheme,
        })
    }

    fn tls(&self, raw: Option<RawTls>, key: &str) -> Result<TlsConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        // An empty path means unset, so the README can show every key.
        let set = |p: Option<String>| p.filter(|p| !p.is_empty()).map(PathBuf::from);
        let tls = TlsConfig {
            ca_file: set(raw.ca_file),
            cert_file: set(raw.cert_file),
            key_file: set(raw.key_file),
            server_name: raw.server_name,
            insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
        };
        if tls.server_name.is_some() {
            // ureq takes the TLS name from the URL; overriding it needs a custom
            // rustls verifier, which is not written yet. Refuse rather than ignore.
            return Err(self.err_key(
                &format!("{key}.server_name"),
                "not supported yet: put the certificate's name in the URL",
            ));
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(self.err_key(key, "cert_file and key_file go together"));
        }
        Ok(tls)
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
        v: Option<&Spanned<String>>,
        key: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_size(s.get_ref()).map_err(|r| self.err(s, key, r)),
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
    resource: BTreeMap<String, String>,
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
    max_request_size: Option<Spanned<String>>,
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
    targets: Vec<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    metrics_path: Option<Spanned<String>>,
    scheme: Option<Spanned<String>>,
    body_size_limit: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
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
    headers: BTreeMap<String, String>,
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
    max_field_size: Option<Spanned<String>>,
    max_entry_size: Option<Spanned<String>>,
    hang_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    server_name: Option<String>,
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
    max_size: Option<Spanned<String>>,
    full_policy: Option<Spanned<String>>,
    fsync: Option<bool>,
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
            msg.starts_with("t.toml:3:1: listen_addr: unknown field `listen_addr`"),
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
}
