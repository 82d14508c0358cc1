//! The OTLP/HTTP receiver (`[receiver.otlp]`): applications on the box post
//! traces, metrics and logs, and tern queues them with everything else.
//!
//! ```text
//! POST /v1/{traces,metrics,logs} --> http (framing, limits) --> decode --> Sink --> queue
//!            200 / 4xx / 503 <------------------------------------------------'
//! ```
//!
//! One request becomes one batch. The receiver answers 200 only once the batch
//! is in the queue (on disk, with `[export.queue] fsync` on), so a client that
//! got 200 may forget the data. What it does, per the OTLP/HTTP specification:
//!
//! - bodies in `application/x-protobuf` or `application/json` (OTLP/JSON),
//!   plain or `Content-Encoding: gzip`, `Content-Length` or chunked;
//! - 200 with an empty `Export*ServiceResponse` in the request's encoding;
//! - 400 with a `google.rpc.Status` naming the problem for bodies that do not
//!   decode, 413 past `max_request_size` (on the wire, and again after
//!   decompression), 415 for other content types and encodings, 404 for other
//!   paths, 405 for other methods;
//! - 503 with `Retry-After` when the batch does not fit in the queue and
//!   `full_policy` is `push_back`, or when the queue fails: the client keeps
//!   the data and retries, and tern counts no drop.
//!
//! Protobuf bodies are stored as they came, after validation, so fields that
//! this tern's schema does not know still reach the gateway; `[resource]`
//! attributes are spliced in without re-encoding (see `decode.rs`), and never
//! replace an attribute the application set. JSON bodies are stored as the
//! protobuf they decode to.
//!
//! # Caveats
//!
//! A request is held whole in memory, compressed and decompressed, and
//! decoded into prost structs, which can be several times larger than the
//! protobuf (a few bytes of input per empty span). Decoding runs on at most
//! [`DECODERS`] requests at once, so memory is bounded by that many decoded
//! requests plus `MAX_BODIES` (32) bodies of `max_request_size` (fewer with a
//! smaller `max_connections`). Connections themselves cost a few KiB each
//! (see `http::server`), and idle or slow ones are shed for new ones.
//!
//! See: <https://opentelemetry.io/docs/specs/otlp/#otlphttp>

mod decode;
mod response;
#[cfg(test)]
mod tests;

pub use decode::{prepare, Format, Prepared, RequestError};
pub use response::Status;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{Config, OtlpReceiverConfig, ReceiverFullPolicy};
use crate::http::server::{self as http, Refusal, Request, Response};
use crate::lifecycle::RateLimit;
use crate::otlp::compress;
use crate::queue::{FullPolicy, QueueError, Signal};
use crate::sources::Sink;
use crate::telemetry::Metrics;

/// Requests decoded and queued at once: one per core of the small boxes tern
/// runs on. Each holds a decoded request in memory while it runs.
pub const DECODERS: usize = 2;

/// Request bodies read and decoded at once, at most: the old default of
/// `max_connections` (32), when each connection could hold one, so that more
/// connection slots do not raise the memory bodies may take (32 times
/// `max_request_size`).
const MAX_BODIES: usize = 32;

/// The source name in logs.
const ORIGIN: &str = "otlp";

/// What the receiver needs from the config; replaced on reload.
#[derive(Debug)]
struct Settings {
    sink: Sink,
    resource: Vec<(String, String)>,
    policy: FullPolicy,
    max_request_size: usize,
}

impl Settings {
    fn new(config: &Config, receiver: &OtlpReceiverConfig, sink: Sink) -> Settings {
        Settings {
            sink,
            resource: config
                .resource
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            policy: match receiver.full_policy {
                ReceiverFullPolicy::PushBack => FullPolicy::Reject,
                ReceiverFullPolicy::DropOldest => FullPolicy::DropOldest,
            },
            max_request_size: usize::try_from(receiver.max_request_size).unwrap_or(usize::MAX),
        }
    }
}

#[derive(Debug)]
struct Shared {
    settings: RwLock<Arc<Settings>>,
    metrics: Arc<Metrics>,
    decoders: smol::lock::Semaphore,
    full_log: RateLimit,
}

/// A running OTLP/HTTP receiver; cheap to clone.
#[derive(Debug, Clone)]
pub struct Receiver {
    shared: Arc<Shared>,
    listen: SocketAddr,
}

impl Receiver {
    /// Binds `[receiver.otlp] listen` and serves it on `executor` until the
    /// executor stops. Batches go into `sink`.
    ///
    /// # Errors
    ///
    /// When the config has no `[receiver.otlp]`, or the address cannot be bound.
    pub fn start(
        executor: &Arc<smol::Executor<'static>>,
        config: &Config,
        sink: Sink,
        metrics: Arc<Metrics>,
    ) -> Result<Receiver, Box<dyn std::error::Error + Send + Sync>> {
        let receiver = config
            .otlp_receiver
            .as_ref()
            .ok_or("receiver.otlp: not configured")?;
        let listener = std::net::TcpListener::bind(receiver.listen).map_err(|e| {
            format!(
                "receiver.otlp.listen: cannot listen on {}: {e}",
                receiver.listen
            )
        })?;
        let listen = listener.local_addr()?;
        let listener = smol::net::TcpListener::try_from(listener)?;
        let this = Receiver {
            shared: Arc::new(Shared {
                settings: RwLock::new(Arc::new(Settings::new(config, receiver, sink))),
                metrics,
                decoders: smol::lock::Semaphore::new(DECODERS),
                full_log: RateLimit::new(Duration::from_secs(60)),
            }),
            listen,
        };
        executor
            .spawn(http::serve_with(
                executor.clone(),
                listener,
                this.handler(),
                this.refuse(),
                this.on_shed(),
                limits(receiver),
            ))
            .detach();
        log::info!("Receiving OTLP/HTTP listen={listen}");
        Ok(this)
    }

    /// The address it listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Applies a reloaded config: `[resource]`, `full_policy`,
    /// `max_request_size` up to the size the server was started with, and
    /// the sink. The address and connection limits need a restart.
    pub fn reconfigure(&self, config: &Config, sink: Sink) {
        let Some(receiver) = &config.otlp_receiver else {
            return;
        };
        let settings = Arc::new(Settings::new(config, receiver, sink));
        match self.shared.settings.write() {
            Ok(mut s) => *s = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
    }

    /// Answers one request: what the HTTP server calls.
    pub(crate) async fn handle(&self, request: Request) -> Response {
        let shared = &self.shared;
        let signal = match request.path.as_str() {
            "/v1/traces" => Signal::Traces,
            "/v1/metrics" => Signal::Metrics,
            "/v1/logs" => Signal::Logs,
            _ => {
                let format = reply_format(request.header("content-type"));
                count_request(&shared.metrics, "unknown", 404);
                return response::failure(
                    format,
                    404,
                    "not found: OTLP/HTTP paths are /v1/traces, /v1/metrics and /v1/logs",
                );
            }
        };
        let labels = [("signal", signal.as_str())];
        shared.metrics.add(
            "tern_receiver_request_bytes_total",
            &labels,
            request.body.len() as f64,
        );
        if request.method != "POST" {
            let format = reply_format(request.header("content-type"));
            count_request(&shared.metrics, signal.as_str(), 405);
            return response::failure(format, 405, "method not allowed: use POST");
        }
        let _permit = shared.decoders.acquire().await;
        let settings = match shared.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let (format, outcome) = smol::unblock(move || accept(&settings, signal, &request)).await;
        let response = match outcome {
            Outcome::Accepted { items } => {
                shared
                    .metrics
                    .add("tern_receiver_items_total", &labels, items as f64);
                response::success(format)
            }
            Outcome::Invalid(e) => {
                log::debug!("OTLP request refused signal={signal} error={e}");
                response::failure(format, e.status(), &e.to_string())
            }
            Outcome::Refused { items, error } => {
                let reason = match error {
                    QueueError::Full { .. } | QueueError::TooLarge { .. } => "queue_full",
                    _ => "queue_error",
                };
                shared.metrics.add(
                    "tern_receiver_refused_items_total",
                    &[("signal", signal.as_str()), ("reason", reason)],
                    items as f64,
                );
                if let Some(suppressed) = shared.full_log.check() {
                    log::warn!(
                        "OTLP request refused with 503, the client may retry signal={signal} items={items} suppressed={suppressed} error={error}"
                    );
                }
                let message = match reason {
                    "queue_full" => format!("{error}: the queue is full, retry later"),
                    _ => format!("{error}: retry later"),
                };
                response::failure(format, 503, &message)
            }
        };
        count_request(&shared.metrics, signal.as_str(), response.status);
        response
    }

    fn handler(&self) -> http::Handler {
        let this = self.clone();
        Arc::new(move |request: Request| {
            let this = this.clone();
            Box::pin(async move { this.handle(request).await })
        })
    }

    /// Counts the connections the HTTP server sheds to admit new ones.
    fn on_shed(&self) -> http::OnShed {
        let metrics = self.shared.metrics.clone();
        Arc::new(move |reason: http::Shed| {
            metrics.inc(
                "tern_receiver_connections_shed_total",
                &[("reason", reason.as_str())],
            );
        })
    }

    /// Answers what the HTTP server refuses itself (413 on the wire, 408,
    /// bad framing) with a `google.rpc.Status`, and counts it.
    fn refuse(&self) -> http::Refuse {
        let metrics = self.shared.metrics.clone();
        Arc::new(move |r: Refusal<'_>| {
            let signal = match r.path {
                Some("/v1/traces") => "traces",
                Some("/v1/metrics") => "metrics",
                Some("/v1/logs") => "logs",
                _ => "unknown",
            };
            count_request(&metrics, signal, r.status);
            response::failure(reply_format(r.content_type), r.status, r.reason)
        })
    }
}

/// The server limits for a `[receiver.otlp]` config.
pub(crate) fn limits(config: &OtlpReceiverConfig) -> http::Limits {
    http::Limits {
        max_body: usize::try_from(config.max_request_size).unwrap_or(usize::MAX),
        body_timeout: config.read_timeout,
        max_connections: config.max_connections,
        max_bodies: config.max_connections.min(MAX_BODIES),
        ..http::Limits::default()
    }
}

/// The encoding of error answers: JSON for JSON requests, else protobuf.
fn reply_format(content_type: Option<&str>) -> Format {
    content_type
        .and_then(Format::of)
        .unwrap_or(Format::Protobuf)
}

fn count_request(metrics: &Metrics, signal: &str, status: u16) {
    let code = status.to_string();
    metrics.inc(
        "tern_receiver_requests_total",
        &[("signal", signal), ("code", code.as_str())],
    );
}

/// What became of one request.
enum Outcome {
    /// In the queue (or empty: nothing to queue).
    Accepted { items: usize },
    /// The request is at fault: 4xx.
    Invalid(RequestError),
    /// The queue refused the batch: 503, the client may retry.
    Refused { items: usize, error: QueueError },
}

/// Decodes, compresses and queues one request; blocking (decoding, fsync).
fn accept(settings: &Settings, signal: Signal, request: &Request) -> (Format, Outcome) {
    let content_type = request.header("content-type");
    let prepared = match prepare(
        signal,
        content_type,
        request.header("content-encoding"),
        &request.body,
        settings.max_request_size,
        &settings.resource,
    ) {
        Ok(p) => p,
        Err(e) => return (reply_format(content_type), Outcome::Invalid(e)),
    };
    let format = prepared.format;
    let items = prepared.items;
    if items == 0 {
        return (format, Outcome::Accepted { items });
    }
    let batch = compress(&prepared.raw);
    drop(prepared);
    let outcome =
        match settings
            .sink
            .push_with_policy(signal, &batch, items, ORIGIN, settings.policy)
        {
            Ok(true) => Outcome::Accepted { items },
            // Only a drop policy that refuses the newest batch gets here, and the
            // receiver never asks for one; the sink has counted the drop.
            Ok(false) => Outcome::Refused {
                items,
                error: QueueError::Full {
                    bytes: batch.payload.len() as u64,
                    free: 0,
                },
            },
            Err(error) => Outcome::Refused { items, error },
        };
    (format, outcome)
}

/// Whether going from `old` to `new` changes what only a restart applies:
/// the receiver's presence, address, connection limit or read timeout.
pub fn needs_restart(old: &Config, new: &Config) -> bool {
    match (&old.otlp_receiver, &new.otlp_receiver) {
        (None, None) => false,
        (Some(a), Some(b)) => {
            a.listen != b.listen
                || a.max_connections != b.max_connections
                || a.read_timeout != b.read_timeout
                || b.max_request_size > a.max_request_size
        }
        _ => true,
    }
}
