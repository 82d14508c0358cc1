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
            },
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
