//! The `[receiver.*]` sections: OTLP/HTTP from applications on the box
//! (`[receiver.otlp]`), syslog from daemons and devices (`[receiver.syslog]`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use super::export::{FullPolicy, QueueConfig};
use super::locate::Cx;
use super::raw::{RawOtlpReceiver, RawSyslogReceiver};
use super::ConfigError;

/// `listen`: the OTLP/HTTP port SDKs send to by default, on loopback so that
/// only local applications reach it.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 4318));

/// `max_request_size`: the SDKs' default batch of 512 spans is far below it,
/// and each of the (at most 32) bodies read at once may take that much memory.
const DEFAULT_MAX_REQUEST_SIZE: u64 = 4 << 20;

/// `max_connections`: room for many applications' keep-alive connections
/// (one per signal each), so that they are not shed in normal use. A slot
/// costs little: an idle connection holds no buffer, and all 256 held by
/// request heads arriving a byte at a time took 1.4 MiB more RSS (5 MiB with
/// 15 KiB heads; see `http::server`); bodies, the costly part, are bounded
/// apart.
const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// `read_timeout`: a whole body over loopback takes far less; a client that
/// takes longer is stuck and must not hold its slot.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// SDKs' default batch of 512 spans is far below it, and each of the
    /// (at most 32) bodies read at once may take that much memory.
    pub max_request_size: u64,
    /// Connections held at once. When every one is taken, a new connection
    /// sheds the one that has waited longest for its request (idle, or its
    /// head still arriving), so idle and slow clients cannot keep others
    /// out; only while all are in the middle of a request do new ones wait
    /// in the kernel's backlog. Request bodies in memory are bounded apart:
    /// at most 32 at once (fewer if `max_connections` is smaller). Defaults
    /// to 256: a slot costs little (an idle connection holds no buffer).
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

impl Cx<'_> {
    pub(super) fn otlp_receiver(
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
            None => DEFAULT_LISTEN,
        };
        let max_request_size = self.size(
            raw.max_request_size.as_ref(),
            "receiver.otlp.max_request_size",
            DEFAULT_MAX_REQUEST_SIZE,
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
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if (1..=4096).contains(n.get_ref()) => {
                usize::try_from(*n.get_ref()).unwrap_or(DEFAULT_MAX_CONNECTIONS)
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
            DEFAULT_READ_TIMEOUT,
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
}

/// Syslog `max_message_size`: the OpenTelemetry Collector's and rsyslog's
/// default (8 KiB); RFC 5424 asks receivers for at least 2 KiB.
const DEFAULT_SYSLOG_MAX_MESSAGE_SIZE: u64 = 8 << 10;

/// Syslog `max_connections`: far more than the senders of one box (a
/// syslogd, a few `logger` runs) hold at once; each holds at most one
/// message in memory.
const DEFAULT_SYSLOG_MAX_CONNECTIONS: usize = 64;

/// The `[receiver.syslog]` section: syslog messages over UDP, TCP or a unix
/// datagram socket, for boxes without systemd (BusyBox, OpenWrt), forwarded
/// as OTLP log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogReceiverConfig {
    /// UDP address to listen on (RFC 5426: one message per datagram; best
    /// effort, as UDP is). Optional.
    pub udp: Option<SocketAddr>,
    /// TCP address to listen on (RFC 6587: octet counting or newline
    /// framing, told apart per message). Optional.
    pub tcp: Option<SocketAddr>,
    /// A unix datagram socket to create and read, such as `/dev/log` when no
    /// syslogd runs (mode 0666, as syslogd makes it). Optional; at least one
    /// of `udp`, `tcp` and `unix` is required.
    pub unix: Option<PathBuf>,
    /// How messages are read. Defaults to `auto`.
    pub protocol: SyslogProtocol,
    /// Longest message; a longer one is dropped and counted. Defaults to 8 KiB.
    pub max_message_size: usize,
    /// TCP connections held at once; when all are taken, a new one closes
    /// the one idle longest. Defaults to 64.
    pub max_connections: usize,
}

/// How the syslog receiver reads messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyslogProtocol {
    /// RFC 5424 when the priority is followed by a version, else RFC 3164.
    #[default]
    Auto,
    /// RFC 5424 only; anything else is forwarded whole, counted malformed.
    Rfc5424,
    /// RFC 3164 (BSD) only.
    Rfc3164,
}

impl Cx<'_> {
    pub(super) fn syslog_receiver(
        &self,
        raw: RawSyslogReceiver,
    ) -> Result<SyslogReceiverConfig, ConfigError> {
        let address = |v: &Option<toml::Spanned<String>>, key: &str| {
            v.as_ref()
                .filter(|s| !s.get_ref().is_empty())
                .map(|s| {
                    s.get_ref().parse::<SocketAddr>().map_err(|_| {
                        self.err(
                            s,
                            key,
                            format!(
                                "invalid address {:?}: expected ip:port, like \"127.0.0.1:5514\"",
                                s.get_ref()
                            ),
                        )
                    })
                })
                .transpose()
        };
        let udp = address(&raw.udp, "receiver.syslog.udp")?;
        let tcp = address(&raw.tcp, "receiver.syslog.tcp")?;
        let unix = match &raw.unix {
            Some(p) if p.get_ref().is_empty() => None,
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().len() > 100 => {
                return Err(self.err(
                    p,
                    "receiver.syslog.unix",
                    "must be an absolute path of at most 100 bytes (a unix socket address), like \"/dev/log\"",
                ))
            }
            Some(p) => Some(PathBuf::from(p.get_ref())),
            None => None,
        };
        if udp.is_none() && tcp.is_none() && unix.is_none() {
            return Err(self.err_opt::<String>(
                None,
                "receiver.syslog",
                "set at least one of udp, tcp and unix",
            ));
        }
        let protocol = match raw.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "auto")) => SyslogProtocol::Auto,
            Some((_, "rfc5424")) => SyslogProtocol::Rfc5424,
            Some((_, "rfc3164")) => SyslogProtocol::Rfc3164,
            Some((p, other)) => {
                return Err(self.err(
                    p,
                    "receiver.syslog.protocol",
                    format!("expected \"auto\", \"rfc5424\" or \"rfc3164\", not {other:?}"),
                ))
            }
        };
        let max_message_size = self.size(
            raw.max_message_size.as_ref(),
            "receiver.syslog.max_message_size",
            DEFAULT_SYSLOG_MAX_MESSAGE_SIZE,
        )?;
        if !(480..=1 << 20).contains(&max_message_size) {
            return Err(self.err_opt(
                raw.max_message_size.as_ref(),
                "receiver.syslog.max_message_size",
                "must be between 480 bytes (RFC 5424's least) and 1MiB",
            ));
        }
        let max_connections = match &raw.max_connections {
            None => DEFAULT_SYSLOG_MAX_CONNECTIONS,
            Some(n) if (1..=4096).contains(n.get_ref()) => {
                usize::try_from(*n.get_ref()).unwrap_or(DEFAULT_SYSLOG_MAX_CONNECTIONS)
            }
            Some(n) => {
                return Err(self.err(
                    n,
                    "receiver.syslog.max_connections",
                    "must be between 1 and 4096",
                ))
            }
        };
        Ok(SyslogReceiverConfig {
            udp,
            tcp,
            unix,
            protocol,
            max_message_size: usize::try_from(max_message_size).unwrap_or(usize::MAX),
            max_connections,
        })
    }
}
