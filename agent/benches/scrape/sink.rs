//! The upstream the agents send to: answers 200 to every POST and counts
//! requests and body bytes per path. tern POSTs gzip OTLP to `/v1/metrics`,
//! Prometheus POSTs snappy remote-write to `/api/v1/write`, vmagent the same
//! to `/vmagent/api/v1/write`; nothing is decoded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::http::{Response, Server};

/// The path Prometheus is told to remote-write to.
pub(crate) const REMOTE_WRITE_PATH: &str = "/api/v1/write";
/// The path vmagent is told to remote-write to (its own, to count it apart).
pub(crate) const VMAGENT_WRITE_PATH: &str = "/vmagent/api/v1/write";
/// The path tern exports metrics to (it appends it to the endpoint's base URL).
pub(crate) const OTLP_METRICS_PATH: &str = "/v1/metrics";

/// Requests and body bytes received on one path.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Count {
    /// POST requests answered.
    pub(crate) requests: u64,
    /// Body bytes received (as sent: compressed).
    pub(crate) bytes: u64,
}

/// A counting sink on `127.0.0.1:0`.
#[derive(Debug)]
pub(crate) struct Sink {
    server: Server,
    counts: Arc<Mutex<BTreeMap<String, Count>>>,
}

impl Sink {
    /// Starts the sink.
    pub(crate) fn start() -> Sink {
        let counts: Arc<Mutex<BTreeMap<String, Count>>> = Arc::default();
        let handler_counts = counts.clone();
        let server = Server::start("bench-sink", move |req| {
            if req.method != "POST" {
                return Response::empty(405, "text/plain");
            }
            {
                let mut counts = lock(&handler_counts);
                let count = counts.entry(req.path.clone()).or_default();
                count.requests += 1;
                count.bytes += req.body_len;
            }
            if req.path.starts_with("/v1/") {
                // An OTLP/HTTP success: an empty ExportMetricsServiceResponse.
                Response::empty(200, "application/x-protobuf")
            } else {
                Response::empty(200, "text/plain")
            }
        });
        Sink { server, counts }
    }

    /// The address the agents send to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// What arrived on `path` so far.
    pub(crate) fn count(&self, path: &str) -> Count {
        lock(&self.counts).get(path).copied().unwrap_or_default()
    }
}

/// Locks the counts; a panicked handler thread leaves them usable.
fn lock(m: &Mutex<BTreeMap<String, Count>>) -> MutexGuard<'_, BTreeMap<String, Count>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
