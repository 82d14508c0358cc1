//! The `[receiver.otlp]` section: OTLP/HTTP from applications on the box.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::export::{FullPolicy, QueueConfig};
use super::locate::Cx;
use super::raw::RawOtlpReceiver;
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
