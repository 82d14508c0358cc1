//! The `[export]` section and its tables: the gateways (`endpoints` or
//! `dns`), routing, compression, headers, `[export.tls]`, `[export.retry]`
//! and `[export.queue]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::locate::{dotted, Cx};
use super::raw::{RawDns, RawExport, RawQueue, RawRetry, RawSize, RawTls};
use super::values::format_duration;
use super::{ConfigError, TlsConfig};
use crate::http::{Client, HttpError};

/// `export.timeout`: the OpenTelemetry Collector's default for its OTLP/HTTP
/// exporter; a send to a live gateway over a slow uplink fits in it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[export.retry]`: the Collector's `retry_on_failure` defaults, so that
/// settings carry over, except `max_elapsed_time` (see [`RetryConfig`]).
const DEFAULT_RETRY: RetryConfig = RetryConfig {
    initial_interval: Duration::from_secs(5),
    max_interval: Duration::from_secs(30),
    multiplier: 1.5,
    randomization_factor: 0.5,
    max_elapsed_time: Duration::ZERO,
};

/// `export.max_request_size`: a request a gateway takes whole (the
/// Collector's OTLP receiver has no limit by default, many proxies stop at a
/// few MiB), and about a minute of a 128 kbit/s uplink.
const DEFAULT_MAX_REQUEST_SIZE: u64 = 1 << 20;

/// `export.queue.max_size`: hours of a typical box's telemetry while the
/// uplink is down, and a small share of an SD card.
const DEFAULT_QUEUE_MAX_SIZE: u64 = 256 << 20;

/// `export.queue.memory_size`: a few of a busy box's batches, and what a power
/// cut may lose in memory_first.
const DEFAULT_QUEUE_MEMORY_SIZE: u64 = 4 << 20;

/// The smallest `export.queue.max_size`: the queue needs room for a few
/// segments and a batch of the largest allowed request.
const MIN_QUEUE_MAX_SIZE: u64 = 1 << 20;

/// `export.queue.fsync`: a batch counts as accepted only once it is on disk
/// (DESIGN.md), so a power cut loses nothing accepted.
const DEFAULT_FSYNC: bool = true;

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
    /// `max_bandwidth`: bytes a second sent to all gateways together, after
    /// compression, with a burst of one request. 0 (the default): no limit.
    pub max_bandwidth: u64,
    /// `max_request_size`: when a gateway's lane holds several batches, one
    /// request carries as many as fit in this many bytes (after
    /// compression). 0: one batch a request. Defaults to 1 MiB.
    pub max_request_size: u64,
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
    /// `Content-Encoding: zstd` at this level (1 to 19); the queue holds
    /// zstd. A gateway that answers 415 gets gzip from then on.
    Zstd(i32),
    /// Plain protobuf.
    None,
}

impl Compression {
    /// The codec batches are stored in for this setting.
    pub fn store_codec(self) -> crate::otlp::Codec {
        match self {
            Compression::Zstd(_) => crate::otlp::Codec::Zstd,
            Compression::Gzip | Compression::None => crate::otlp::Codec::Gzip,
        }
    }
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
    /// Where a batch waits while its gateway keeps up. Defaults to disk.
    pub mode: QueueMode,
    /// In memory_first, the most batch bytes kept in memory before the oldest
    /// go to disk: what a power cut can lose. Defaults to 4 MiB.
    pub memory_size: u64,
}

/// Where queued batches wait: `[export.queue] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMode {
    /// Every batch is written to disk when it is queued (the default).
    Disk,
    /// Batches stay in memory while the gateways keep up; they are written to
    /// disk when more than `memory_size` waits, and at shutdown.
    MemoryFirst,
}

/// Which batch goes when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Delete the oldest batches to make room.
    DropOldest,
    /// Refuse the new batch.
    DropNewest,
}

impl Cx<'_> {
    /// The `[export]` section with its `tls`, `retry`, `queue` and `dns`.
    pub(super) fn export(&self, export: RawExport) -> Result<ExportConfig, ConfigError> {
        let mut endpoints = Vec::new();
        for (i, e) in export.endpoints.iter().enumerate() {
            let url = e.get_ref().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() <= "https://".len()
            {
                return Err(self.err(
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
            Some(c) if c.get_ref() == "zstd" => {
                Compression::Zstd(self.zstd_level(export.compression_level.as_ref())?)
            }
            Some(c) if c.get_ref() == "none" || c.get_ref().is_empty() => Compression::None,
            Some(c) => {
                return Err(self.err(
                    c,
                    "export.compression",
                    format!(
                        "expected \"gzip\", \"zstd\" or \"none\", not {:?}",
                        c.get_ref()
                    ),
                ))
            }
        };
        if let (Some(level), false) = (
            &export.compression_level,
            matches!(compression, Compression::Zstd(_)),
        ) {
            return Err(self.err(
                level,
                "export.compression_level",
                "only zstd takes a level (gzip is level 1): set compression = \"zstd\" or remove it",
            ));
        }
        let timeout = self.duration(export.timeout.as_ref(), "export.timeout", DEFAULT_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(self.err_opt(
                export.timeout.as_ref(),
                "export.timeout",
                "must be more than 0: every request would time out",
            ));
        }
        let headers = self.headers(export.headers)?;
        let routing = self.routing(export.routing_key.as_ref())?;
        let dns = match &export.dns {
            None => None,
            Some(d) => Some(self.dns(d)?),
        };
        if let (Some(dns), Some(first)) = (&export.dns, export.endpoints.first()) {
            // Point at the later of the two, where the conflict shows.
            let (at, key) = if dns.hostname.span().start > first.span().start {
                (&dns.hostname, "export.dns")
            } else {
                (first, "export.endpoints")
            };
            return Err(self.err(
                at,
                key,
                "set either export.endpoints or export.dns, not both",
            ));
        }
        let failover_after = match &export.failover_after {
            None => None,
            Some(s) if s.get_ref().is_empty() || s.get_ref() == "off" => None,
            Some(s) => Some(self.duration(Some(s), "export.failover_after", Duration::ZERO)?),
        };
        let max_bandwidth = self.bandwidth(export.max_bandwidth.as_ref())?;
        let max_request_size = self.size(
            export.max_request_size.as_ref(),
            "export.max_request_size",
            DEFAULT_MAX_REQUEST_SIZE,
        )?;
        let tls = self.tls(export.tls, "export.tls")?;
        let retry = self.retry(export.retry.unwrap_or_default())?;
        let queue = self.queue(export.queue.unwrap_or_default())?;
        Ok(ExportConfig {
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
            max_bandwidth,
            max_request_size,
        })
    }

    /// `export.compression_level` for zstd: 1 (the default: fastest, and
    /// already smaller than gzip) to 19.
    fn zstd_level(&self, v: Option<&Spanned<i64>>) -> Result<i32, ConfigError> {
        let Some(level) = v else {
            return Ok(1);
        };
        match i32::try_from(*level.get_ref()) {
            Ok(l @ 1..=19) => Ok(l),
            _ => Err(self.err(
                level,
                "export.compression_level",
                format!(
                    "expected a zstd level from 1 to 19, not {}",
                    level.get_ref()
                ),
            )),
        }
    }

    /// `export.max_bandwidth`: a rate such as "32KiB/s", or 0 for none.
    fn bandwidth(&self, v: Option<&Spanned<RawSize>>) -> Result<u64, ConfigError> {
        const KEY: &str = "export.max_bandwidth";
        let Some(spanned) = v else {
            return Ok(0);
        };
        match spanned.get_ref() {
            RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| {
                self.err(
                    spanned,
                    KEY,
                    format!("invalid rate {n}: must not be negative"),
                )
            }),
            RawSize::Text(t) if t.trim() == "0" => Ok(0),
            RawSize::Text(t) => {
                let per_second = t.trim().strip_suffix("/s").ok_or_else(|| {
                    self.err(
                        spanned,
                        KEY,
                        format!("invalid rate {t:?}: expected a size per second, like \"32KiB/s\", or 0 for no limit"),
                    )
                })?;
                super::values::parse_size(per_second.trim())
                    .map_err(|r| self.err(spanned, KEY, format!("{r} per second (\"32KiB/s\")")))
            }
        }
    }

    /// The `[export.retry]` section.
    fn retry(&self, r: RawRetry) -> Result<RetryConfig, ConfigError> {
        let retry = RetryConfig {
            initial_interval: self.duration(
                r.initial_interval.as_ref(),
                "export.retry.initial_interval",
                DEFAULT_RETRY.initial_interval,
            )?,
            max_interval: self.duration(
                r.max_interval.as_ref(),
                "export.retry.max_interval",
                DEFAULT_RETRY.max_interval,
            )?,
            multiplier: self.float(
                r.multiplier.as_ref(),
                "export.retry.multiplier",
                DEFAULT_RETRY.multiplier,
                1.0..=100.0,
            )?,
            randomization_factor: self.float(
                r.randomization_factor.as_ref(),
                "export.retry.randomization_factor",
                DEFAULT_RETRY.randomization_factor,
                0.0..=1.0,
            )?,
            max_elapsed_time: self.duration(
                r.max_elapsed_time.as_ref(),
                "export.retry.max_elapsed_time",
                DEFAULT_RETRY.max_elapsed_time,
            )?,
        };
        if retry.initial_interval.is_zero() {
            return Err(self.err_opt(
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
            return Err(self.err_opt(
                at,
                key,
                format!(
                    "need initial_interval ({}) <= max_interval ({})",
                    format_duration(retry.initial_interval),
                    format_duration(retry.max_interval)
                ),
            ));
        }
        Ok(retry)
    }

    /// The `[export.queue]` section.
    fn queue(&self, q: RawQueue) -> Result<QueueConfig, ConfigError> {
        let mut queue = QueueConfig {
            max_size: self.size(
                q.max_size.as_ref(),
                "export.queue.max_size",
                DEFAULT_QUEUE_MAX_SIZE,
            )?,
            full_policy: match &q.full_policy {
                None => FullPolicy::DropOldest,
                Some(p) if p.get_ref() == "drop_oldest" => FullPolicy::DropOldest,
                Some(p) if p.get_ref() == "drop_newest" => FullPolicy::DropNewest,
                Some(p) => {
                    return Err(self.err(
                        p,
                        "export.queue.full_policy",
                        format!(
                            "expected \"drop_oldest\" or \"drop_newest\", not {:?}",
                            p.get_ref()
                        ),
                    ))
                }
            },
            fsync: q.fsync.unwrap_or(DEFAULT_FSYNC),
            mode: match &q.mode {
                None => QueueMode::Disk,
                Some(m) if m.get_ref() == "disk" => QueueMode::Disk,
                Some(m) if m.get_ref() == "memory_first" => QueueMode::MemoryFirst,
                Some(m) => {
                    return Err(self.err(
                        m,
                        "export.queue.mode",
                        format!(
                            "expected \"disk\" or \"memory_first\", not {:?}",
                            m.get_ref()
                        ),
                    ))
                }
            },
            memory_size: self.size(
                q.memory_size.as_ref(),
                "export.queue.memory_size",
                DEFAULT_QUEUE_MEMORY_SIZE,
            )?,
        };
        if q.memory_size.is_none() {
            // The default fits any queue: never more than the whole of it.
            queue.memory_size = queue.memory_size.min(queue.max_size);
        } else if queue.memory_size > queue.max_size {
            return Err(self.err_opt(
                q.memory_size.as_ref(),
                "export.queue.memory_size",
                format!("must be at most max_size ({} bytes)", queue.max_size),
            ));
        }
        if queue.max_size < MIN_QUEUE_MAX_SIZE {
            return Err(self.err_opt(
                q.max_size.as_ref(),
                "export.queue.max_size",
                "must be at least 1MiB",
            ));
        }
        Ok(queue)
    }

    pub(super) fn routing(&self, raw: Option<&Spanned<String>>) -> Result<Routing, ConfigError> {
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

    pub(super) fn dns(&self, raw: &RawDns) -> Result<DnsConfig, ConfigError> {
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

    pub(super) fn tls(&self, raw: Option<RawTls>, key: &str) -> Result<TlsConfig, ConfigError> {
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
}

/// The reason of a client's TLS setup error, without its "tls setup: "
/// prefix: the config error names the key instead.
fn tls_reason(e: HttpError) -> String {
    match e {
        HttpError::Tls(reason) => reason,
        other => other.to_string(),
    }
}

/// An RFC 9110 `tchar`, the characters of a header name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
