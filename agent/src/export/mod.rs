//! The exporter: the load balancer over the gateways, and one sender per
//! gateway that takes batches from the queue, oldest first, and delivers them
//! over OTLP/HTTP with retry and backoff.
//!
//! ```text
//! Sink --split by routing key (`route::split`, `route`)--> lane (signal, gateway)
//! tern-route: gateway set (static list, or tern-dns) -> Routes; re-splits
//!             the lanes of gateways that left (and `default`, from before)
//! tern-send-<host:port>: one per gateway, one keep-alive connection
//! ```
//!
//! Each sender runs a blocking loop: read the oldest batch of each signal's
//! lane, post it, and delete it from the queue only after a 2xx. A retryable
//! failure (408, 429, 5xx, network, timeout, a redirect not followed) waits
//! per [`retry::Backoff`] and tries the same batch again, so order is kept
//! and nothing is skipped; a permanent failure (other 4xx) or
//! `max_elapsed_time` drops the batch with a counted reason. A retry is never
//! counted as a drop. A slow or dead gateway holds back only its own lanes.
//!
//! The sender keeps, per lane, what it knows of the head batch beyond the
//! queue ([`Delivery`]), so that each step is done once:
//!
//! - Redirects (301, 302, 307, 308) are followed by the [`sender`], at most
//!   [`sender::MAX_REDIRECTS`] hops, same scheme only, POST kept as POST with
//!   the same body and headers; each is counted in
//!   `tern_export_redirects_total`, and 301, 302 and 308 are logged (WARN,
//!   rate-limited) as an endpoint to update.
//! - A 413 splits the request in halves ([`split::halve`](crate::route::split::halve): by resource, then
//!   scope, then items) and sends each; a part holding a single item that
//!   still gets 413 is dropped as `too_large`, counted with its points. The
//!   batch leaves the queue once every part is delivered or dropped. The
//!   parts left to send are kept in memory while a part is retried, so parts
//!   already delivered are not sent again; after a restart (or if the batch
//!   is re-routed meanwhile) the whole batch is sent again, at least once as
//!   always.
//! - A stored batch that cannot be read (it does not gunzip for
//!   `compression = "none"`, or does not decode for a split) is a local
//!   fault: dropped as `corrupt`, logged once at ERROR, never retried.
//! - When the gateway took a batch but the queue cannot delete it (a full
//!   disk), the batch is not posted again: only the ack is retried, after a
//!   backoff, and the sent counters count the batch once.
//!
//! Every wait (backoff, ack retry, idle) ends at once when the sender is
//! stopped; a request in flight is bounded by `export.timeout`, redirects
//! included.
//!
//! The code: this file starts the exporter; `coordinator` is the
//! `tern-route` thread (and `tern-dns`, with `dns`); `gateway` is the
//! delivery loop of one sender thread; `sender` speaks OTLP/HTTP to one
//! gateway over `http::client`; `resplit` moves a lane's batches to other
//! gateways; `retry` is the backoff; `bandwidth` is `max_bandwidth`; `error` is [`ExportError`] and its
//! classes. It uses `route`, `http`, `queue` and `otlp`, never `sources`.

mod bandwidth;
pub(crate) mod dns;
mod error;
pub(crate) mod retry;
pub(crate) mod sender;

mod coordinator;
mod gateway;
mod resplit;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::ExportConfig;
use crate::lifecycle::{RateLimit, Shutdown};
use crate::queue::Queue;
use crate::route::{Routes, Table};
use crate::telemetry::Metrics;

use bandwidth::Bandwidth;
use coordinator::{spawn_dns, Coordinator};
pub(crate) use error::ExportError;

/// Starts the exporter: the coordinator thread (`tern-route`), which starts
/// one sender per gateway and, with `dns`, the resolver thread. Returns
/// `None` when no gateway is configured: batches then stay in the queue.
///
/// # Errors
///
/// A TLS setup error (unreadable CA or key file), or a thread that could not
/// be started.
pub(crate) fn spawn(
    config: &ExportConfig,
    queue: Queue,
    metrics: Arc<Metrics>,
    routes: Routes,
    shutdown: Arc<Shutdown>,
) -> Result<Option<JoinHandle<()>>, ExportError> {
    if config.endpoints.is_empty() && config.dns.is_none() {
        log::info!("No export endpoint configured: batches stay in the queue until one is");
        routes.set(Table::new(&[], config.routing));
        return Ok(None);
    }
    // Checks the TLS files once, so that a bad one fails the start or reload.
    crate::http::Client::new(&config.tls, config.timeout, false)?;
    let (updates, received) = mpsc::channel();
    let dns = match &config.dns {
        Some(d) => Some(spawn_dns(
            d.clone(),
            updates,
            shutdown.clone(),
            metrics.clone(),
        )?),
        None => {
            let _ = updates.send(config.endpoints.clone());
            None
        }
    };
    // Until the first answer, DNS keeps the set of the last config (if any):
    // batches routed to it are re-split once the answer differs.
    let current = routes.current();
    let kept: Vec<String> = if config.dns.is_some() {
        current
            .members
            .iter()
            .map(|m| m.destination.clone())
            .collect()
    } else {
        Vec::new()
    };
    routes.set(Table::new(&kept, config.routing));
    let mut coordinator = Coordinator {
        config: config.clone(),
        queue,
        metrics,
        routes,
        senders: BTreeMap::new(),
        updates: received,
        dns,
        errors: RateLimit::new(Duration::from_secs(30)),
        bandwidth: Arc::new(Bandwidth::new(config.max_bandwidth)),
    };
    for d in kept {
        coordinator.start_sender(&d);
    }
    let handle = crate::lifecycle::spawn("tern-route".into(), "the export thread", move || {
        coordinator.run(&shutdown)
    })?;
    Ok(Some(handle))
}

#[cfg(test)]
mod tests;
