//! Sources: turn what the box knows into OTLP batches in bounded chunks, and
//! put them into the queue through a [`Sink`].
//!
//! A batch counts as accepted once [`Sink`] has it in the queue (on disk, with
//! fsync on). Every batch the queue's size policy drops on the way is counted
//! in `tern_dropped_batches_total`.

pub mod prometheus;

use std::sync::Arc;

use crate::otlp::Encoded;
use crate::queue::{Dropped, Lane, NewBatch, Queue, Signal};
use crate::telemetry::Metrics;

/// The lane destination used while tern sends to one gateway; the load
/// balancer will add one lane per gateway.
pub const DEFAULT_DESTINATION: &str = "default";

/// Where sources put their batches: the queue, plus the counting and the
/// optional one-line summary of each batch (`export.debug`).
#[derive(Debug, Clone)]
pub struct Sink {
    queue: Queue,
    metrics: Arc<Metrics>,
    debug: bool,
}

impl Sink {
    /// A sink into `queue`.
    pub fn new(queue: Queue, metrics: Arc<Metrics>, debug: bool) -> Sink {
        Sink {
            queue,
            metrics,
            debug,
        }
    }

    /// Queues one metrics batch from a scrape of `job`/`instance`. Returns
    /// whether it was accepted; a failure is logged and counted here.
    pub fn push_metrics(&self, batch: Encoded, points: usize, job: &str, instance: &str) -> bool {
        let signal = Signal::Metrics;
        let lane = Lane::new(signal, DEFAULT_DESTINATION);
        let new = NewBatch {
            payload: &batch.gzip,
            items: points as u64,
            created: std::time::SystemTime::now(),
            checkpoint: None,
        };
        match self.queue.push(&lane, new) {
            Ok(pushed) => {
                self.count_drops(&pushed.dropped);
                let labels = [("signal", signal.as_str())];
                self.metrics.inc("tern_queue_pushed_batches_total", &labels);
                self.metrics
                    .add("tern_queue_pushed_points_total", &labels, points as f64);
                self.metrics.add(
                    "tern_queue_pushed_bytes_total",
                    &labels,
                    batch.gzip.len() as f64,
                );
                if self.debug {
                    log::info!(
                        "Batch queued signal=metrics job={job} instance={instance} points={points} bytes={} compressed={}",
                        batch.raw_len,
                        batch.gzip.len()
                    );
                } else {
                    log::debug!(
                        "Batch queued signal=metrics job={job} instance={instance} points={points}"
                    );
                }
                true
            }
            Err(e) => {
                log::error!("Batch lost: the queue refused it signal=metrics job={job} instance={instance} points={points} error={e}");
                self.count_drop(signal, DEFAULT_DESTINATION, "queue_error", points as f64);
                false
            }
        }
    }

    /// Counts batches the queue's size policy dropped.
    pub fn count_drops(&self, dropped: &[Dropped]) {
        for d in dropped {
            let lane = d
                .lane
                .clone()
                .unwrap_or_else(|| Lane::new(Signal::Metrics, "unknown"));
            log::error!(
                "Batch dropped lane={lane} reason={} points={} bytes={}",
                d.reason.as_str(),
                d.items,
                d.bytes
            );
            self.count_drop(
                lane.signal(),
                lane.destination(),
                d.reason.as_str(),
                d.items as f64,
            );
        }
    }

    fn count_drop(&self, signal: Signal, destination: &str, reason: &str, points: f64) {
        let labels = [
            ("signal", signal.as_str()),
            ("destination", destination),
            ("reason", reason),
        ];
        self.metrics.inc("tern_dropped_batches_total", &labels);
        self.metrics
            .add("tern_dropped_points_total", &labels, points);
    }
}
