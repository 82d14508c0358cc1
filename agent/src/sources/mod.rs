//! Sources: turn what the box knows into OTLP batches in bounded chunks, and
//! put them into the queue through a [`Sink`].
//!
//! A batch counts as accepted once [`Sink`] has it in the queue (on disk, with
//! fsync on). Every batch the queue's size policy drops on the way is counted
//! in `tern_dropped_batches_total`.

pub mod files;
pub mod journald;
pub mod otlp;
pub mod prometheus;
pub mod syslog;

use std::fmt;
use std::sync::Arc;

use crate::otlp::Encoded;
use crate::queue::{
    Checkpoint, Dropped, FullPolicy, Lane, NewBatch, Pushed, Queue, QueueError, Signal,
};
use crate::route::split::{split, Split};
use crate::route::Routes;
use crate::telemetry::{self, Metrics};

/// The lane destination of batches queued while no gateway is known (and of
/// every batch before load balancing): the exporter routes them once one is.
pub const DEFAULT_DESTINATION: &str = "default";

/// Where sources put their batches: the queue, plus the counting and the
/// optional one-line summary of each batch (`export.debug`).
#[derive(Debug, Clone)]
pub struct Sink {
    queue: Queue,
    metrics: Arc<Metrics>,
    debug: bool,
    routes: Routes,
}

impl Sink {
    /// A sink into `queue`.
    pub fn new(queue: Queue, metrics: Arc<Metrics>, debug: bool) -> Sink {
        Sink {
            queue,
            metrics,
            debug,
            routes: Routes::default(),
        }
    }

    /// The same sink, splitting each batch by routing key over the gateways
    /// of `routes`, one part per gateway lane. Without it (or with no gateway
    /// known) batches go to the [`DEFAULT_DESTINATION`] lane.
    pub fn with_routes(mut self, routes: Routes) -> Sink {
        self.routes = routes;
        self
    }

    /// Splits `batch` by routing key and stores each part in its gateway's
    /// lane under `policy`; the checkpoint goes with the last part. The result
    /// has the last part's id (`None` if the policy refused it) and every
    /// drop. A part stored before a later one fails stays stored: the source
    /// sends it again on retry (at least once, never lost).
    fn store(
        &self,
        signal: Signal,
        batch: &Encoded,
        items: usize,
        checkpoint: Option<Checkpoint<'_>>,
        policy: FullPolicy,
    ) -> Result<Pushed, QueueError> {
        let table = self.routes.current();
        let created = std::time::SystemTime::now();
        let destination = |g: usize| {
            table
                .members
                .get(g)
                .map_or(DEFAULT_DESTINATION, |m| m.destination.as_str())
        };
        let parts = match split(&table, signal, &batch.payload) {
            Split::Whole(g) => {
                let new = NewBatch {
                    payload: &batch.payload,
                    items: items as u64,
                    created,
                    checkpoint,
                };
                return self.queue.push_with_policy(
                    &Lane::new(signal, destination(g)),
                    new,
                    policy,
                );
            }
            Split::Parts(parts) => parts,
        };
        let mut dropped = Vec::new();
        let mut id = None;
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.iter().enumerate() {
            let new = NewBatch {
                payload: &part.encoded.payload,
                items: part.items as u64,
                created,
                checkpoint: if i == last { checkpoint } else { None },
            };
            let pushed = self.queue.push_with_policy(
                &Lane::new(signal, destination(part.gateway)),
                new,
                policy,
            )?;
            dropped.extend(pushed.dropped);
            id = pushed.id;
        }
        Ok(Pushed { id, dropped })
    }

    /// Queues one metrics batch from a scrape of `job`/`instance`. Returns
    /// whether it was accepted; a failure is logged and counted here.
    pub fn push_metrics(&self, batch: Encoded, points: usize, job: &str, instance: &str) -> bool {
        let signal = Signal::Metrics;
        match self.store(signal, &batch, points, None, self.queue.full_policy()) {
            Ok(pushed) => {
                self.count_drops(&pushed.dropped);
                self.queued(
                    signal,
                    &batch,
                    points,
                    format_args!("job={job} instance={instance} points={points}"),
                );
                true
            }
            Err(e) => {
                log::error!("Batch lost: the queue refused it signal=metrics job={job} instance={instance} points={points} error={e}");
                self.metrics.count_drop(
                    signal.as_str(),
                    DEFAULT_DESTINATION,
                    "queue_error",
                    points as u64,
                );
                false
            }
        }
    }

    /// Queues one batch of `signal` from the source `origin`, with the
    /// source's `checkpoint` (its position after the batch) in the same atomic
    /// write: after a crash both are stored or neither.
    ///
    /// Batches the size policy drops on the way are counted here, and so is
    /// the new batch when the policy refuses it (its checkpoint is stored all
    /// the same). An error is returned, not counted: nothing was stored, so a
    /// source that can read its input again keeps the batch and retries.
    ///
    /// # Errors
    ///
    /// The queue's, when neither the batch nor the checkpoint was stored.
    pub fn push(
        &self,
        signal: Signal,
        batch: &Encoded,
        items: usize,
        checkpoint: Option<Checkpoint<'_>>,
        origin: &str,
    ) -> Result<(), QueueError> {
        let pushed = self.store(signal, batch, items, checkpoint, self.queue.full_policy())?;
        self.count_drops(&pushed.dropped);
        if pushed.id.is_some() {
            self.count_pushed(signal, batch, items);
        }
        self.log_queued(signal, batch, format_args!("source={origin} items={items}"));
        Ok(())
    }

    /// Queues one batch of `signal` from a source that can push back (the
    /// OTLP receiver), handling a full queue with `policy` instead of the
    /// queue's own: under [`FullPolicy::Reject`] a batch that does not fit is
    /// refused with [`QueueError::Full`] and nothing is dropped or counted.
    /// Batches dropped to make room under another policy are counted here, and
    /// so is the new batch if the policy drops it; returns whether it was stored.
    ///
    /// # Errors
    ///
    /// The queue's, when the batch was not stored.
    pub fn push_with_policy(
        &self,
        signal: Signal,
        batch: &Encoded,
        items: usize,
        origin: &str,
        policy: FullPolicy,
    ) -> Result<bool, QueueError> {
        let pushed = self.store(signal, batch, items, None, policy)?;
        self.count_drops(&pushed.dropped);
        if pushed.id.is_none() {
            return Ok(false);
        }
        self.queued(
            signal,
            batch,
            items,
            format_args!("source={origin} items={items}"),
        );
        Ok(true)
    }

    /// The newest checkpoint stored for `source`, if any.
    ///
    /// # Errors
    ///
    /// The queue's, if it cannot be read.
    pub fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, QueueError> {
        self.queue.checkpoint(source)
    }

    /// Stores a checkpoint without a batch, for input that produced nothing to
    /// send (entries filtered out, say).
    ///
    /// # Errors
    ///
    /// The queue's, if it cannot be written.
    pub fn set_checkpoint(&self, source: &str, value: &[u8]) -> Result<(), QueueError> {
        self.queue.set_checkpoint(source, value)
    }

    /// Counts batches the queue's size policy dropped, and logs each: data
    /// was lost.
    pub fn count_drops(&self, dropped: &[Dropped]) {
        for d in dropped {
            let lane = d
                .lane
                .as_ref()
                .map_or_else(|| "unknown".to_string(), Lane::to_string);
            log::error!(
                "Batch dropped lane={lane} reason={} points={} bytes={}",
                d.reason.as_str(),
                d.items,
                d.bytes
            );
        }
        telemetry::count_drops(&self.metrics, dropped);
    }

    /// Counts a batch that went into the queue and logs it (`what` names its
    /// origin and size): at INFO with its sizes under `export.debug`, else
    /// at DEBUG.
    fn queued(&self, signal: Signal, batch: &Encoded, items: usize, what: fmt::Arguments<'_>) {
        self.count_pushed(signal, batch, items);
        self.log_queued(signal, batch, what);
    }

    fn count_pushed(&self, signal: Signal, batch: &Encoded, items: usize) {
        let labels = [("signal", signal.as_str())];
        self.metrics.inc("tern_queue_pushed_batches_total", &labels);
        self.metrics
            .add("tern_queue_pushed_points_total", &labels, items as f64);
        self.metrics.add(
            "tern_queue_pushed_bytes_total",
            &labels,
            batch.payload.len() as f64,
        );
        self.metrics.add(
            "tern_queue_pushed_uncompressed_bytes_total",
            &labels,
            batch.raw_len as f64,
        );
    }

    fn log_queued(&self, signal: Signal, batch: &Encoded, what: fmt::Arguments<'_>) {
        if self.debug {
            log::info!(
                "Batch queued signal={signal} {what} bytes={} compressed={}",
                batch.raw_len,
                batch.payload.len()
            );
        } else {
            log::debug!("Batch queued signal={signal} {what}");
        }
    }
}

/// Nanoseconds since the Unix epoch, as OTLP times are written (0 before it).
pub fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The box's host name, as the kernel has it.
pub fn local_hostname() -> Option<Vec<u8>> {
    let mut name = std::fs::read("/proc/sys/kernel/hostname").ok()?;
    while name.last().is_some_and(u8::is_ascii_whitespace) {
        name.pop();
    }
    (!name.is_empty()).then_some(name)
}
