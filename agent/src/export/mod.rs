//! The exporter: takes batches from the queue, oldest first, and delivers them
//! to a gateway over OTLP/HTTP, with retry and backoff.
//!
//! One named thread per gateway (`tern-send-<n>`) runs a blocking loop: read the
//! oldest batch of each signal's lane, post it, and delete it from the queue
//! only after a 2xx. A retryable failure (408, 429, 5xx, network, timeout)
//! waits per [`retry::Backoff`] and tries the same batch again, so order is kept
//! and nothing is skipped; a permanent failure (other 4xx) or `max_elapsed_time`
//! drops the batch with a counted reason. A retry is never counted as a drop.
//!
//! Load balancing over several gateways is not here yet: tern sends to the
//! first endpoint and warns when more are listed.

pub mod retry;
pub mod sender;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{ExportConfig, RetryConfig};
use crate::queue::{Batch, BatchId, DropReason, Dropped, Lane, Queue, Signal};
use crate::sources::DEFAULT_DESTINATION;
use crate::telemetry::{Metrics, RateLimit, Shutdown};

use retry::Backoff;
use sender::Sender;

/// Starts the sender thread for the configured gateway, if any.
pub fn spawn(
    config: &ExportConfig,
    queue: Queue,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
) -> Result<Option<JoinHandle<()>>, Box<dyn std::error::Error + Send + Sync>> {
    let Some(endpoint) = config.endpoints.first() else {
        log::info!("No export endpoint configured: batches stay in the queue until one is");
        return Ok(None);
    };
    if config.endpoints.len() > 1 {
        log::warn!(
            "Several endpoints listed but load balancing is not built yet: sending to the first endpoint={endpoint} ignored={}",
            config.endpoints.len() - 1
        );
    }
    let sender = Sender::new(endpoint, config)?;
    let gateway = Gateway {
        sender,
        queue,
        metrics,
        retry: config.retry,
        errors: RateLimit::new(Duration::from_secs(30)),
    };
    let handle = std::thread::Builder::new()
        .name("tern-send-0".into())
        .spawn(move || gateway.run(&shutdown))?;
    Ok(Some(handle))
}

/// The delivery loop of one gateway.
struct Gateway {
    sender: Sender,
    queue: Queue,
    metrics: Arc<Metrics>,
    retry: RetryConfig,
    errors: RateLimit,
}

impl Gateway {
    fn run(self, shutdown: &Shutdown) {
        log::info!("Sender started endpoint={}", self.sender.endpoint());
        // The batch being retried and its backoff. A batch keeps its backoff
        // across waits; the queue is read again after each wait so that a batch
        // the size policy deleted meanwhile is not sent.
        let mut retrying: Option<(BatchId, Backoff)> = None;
        while !shutdown.is_triggered() {
            let listener = self.queue.listen();
            let mut busy = false;
            for signal in Signal::ALL {
                let lane = Lane::new(signal, DEFAULT_DESTINATION);
                let batch = match self.queue.peek(&lane, 1) {
                    Ok(peeked) => {
                        self.count_drops(&peeked.dropped);
                        peeked.batches.into_iter().next()
                    }
                    Err(e) => {
                        log::error!("Reading the queue failed lane={lane} error={e}");
                        shutdown.sleep(Duration::from_secs(1));
                        None
                    }
                };
                let Some(batch) = batch else { continue };
                busy = true;
                let mut backoff = match retrying.take() {
                    Some((id, b)) if id == batch.id => b,
                    _ => Backoff::new(self.retry),
                };
                if let Some(delay) = self.attempt(&lane, &batch, &mut backoff) {
                    retrying = Some((batch.id, backoff));
                    // A failing gateway holds every signal back: they share it.
                    shutdown.sleep(delay);
                    break;
                }
            }
            if !busy {
                // Wake on the next push, or check the stop flag every second.
                listener.wait_timeout(Duration::from_secs(1));
            }
        }
        log::info!("Sender stopped endpoint={}", self.sender.endpoint());
    }

    /// Sends one batch once. Returns the wait before the next attempt when it
    /// is to be retried; None when it is done (acknowledged or dropped).
    fn attempt(&self, lane: &Lane, batch: &Batch, backoff: &mut Backoff) -> Option<Duration> {
        let endpoint = self.sender.endpoint();
        let signal = lane.signal().as_str();
        let started = Instant::now();
        let result = self.sender.send(lane.signal(), &batch.payload);
        self.metrics.add(
            "tern_export_request_duration_seconds_total",
            &[("endpoint", endpoint)],
            started.elapsed().as_secs_f64(),
        );
        let labels = [("endpoint", endpoint), ("signal", signal)];
        let error = match result {
            Ok(accepted) => {
                if let Err(e) = self.queue.ack(batch.id) {
                    log::error!("Acknowledging a sent batch failed lane={lane} error={e}");
                }
                self.metrics.inc("tern_export_sent_batches_total", &labels);
                self.metrics
                    .add("tern_export_sent_points_total", &labels, batch.items as f64);
                self.metrics.add(
                    "tern_export_sent_bytes_total",
                    &labels,
                    batch.payload.len() as f64,
                );
                if accepted.rejected > 0 {
                    self.metrics.add(
                        "tern_export_rejected_points_total",
                        &labels,
                        accepted.rejected as f64,
                    );
                    log::warn!(
                        "Gateway rejected part of a batch endpoint={endpoint} signal={signal} rejected={} message={:?}",
                        accepted.rejected,
                        accepted.message
                    );
                }
                log::debug!(
                    "Batch sent endpoint={endpoint} signal={signal} points={}",
                    batch.items
                );
                return None;
            }
            Err(e) => e,
        };
        let reason = error.reason();
        self.metrics.inc(
            "tern_export_failed_requests_total",
            &[
                ("endpoint", endpoint),
                ("signal", signal),
                ("reason", &reason),
            ],
        );
        if !error.is_retryable() {
            log::error!(
                "Batch dropped: gateway refused it endpoint={endpoint} signal={signal} points={} error={error}",
                batch.items
            );
            self.drop_batch(batch, DropReason::Permanent);
            return None;
        }
        let Some(delay) = backoff.next_delay(error.retry_after()) else {
            log::error!(
                "Batch dropped: max_elapsed_time passed endpoint={endpoint} signal={signal} points={} error={error}",
                batch.items
            );
            self.drop_batch(batch, DropReason::Expired);
            return None;
        };
        self.metrics
            .inc("tern_export_retried_batches_total", &labels);
        if let Some(suppressed) = self.errors.check() {
            log::warn!(
                "Send failed, will retry endpoint={endpoint} signal={signal} error={error} retry_in={:.1}s suppressed={suppressed}",
                delay.as_secs_f64()
            );
        }
        Some(delay)
    }

    fn drop_batch(&self, batch: &Batch, reason: DropReason) {
        match self.queue.drop_batch(batch.id, reason) {
            Ok(Some(d)) => self.count_drops(&[d]),
            Ok(None) => {}
            Err(e) => log::error!("Dropping a batch failed lane={} error={e}", batch.lane),
        }
    }

    fn count_drops(&self, dropped: &[Dropped]) {
        for d in dropped {
            let (signal, destination) = d
                .lane
                .as_ref()
                .map_or(("unknown", ""), |l| (l.signal().as_str(), l.destination()));
            let labels = [
                ("signal", signal),
                ("destination", destination),
                ("reason", d.reason.as_str()),
            ];
            self.metrics.inc("tern_dropped_batches_total", &labels);
            self.metrics
                .add("tern_dropped_points_total", &labels, d.items as f64);
        }
    }
}
