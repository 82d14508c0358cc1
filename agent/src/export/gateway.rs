//! The delivery loop of one gateway (a `tern-send-<host:port>` thread):
//! per signal, the head batch of the gateway's lane is sent, whole or in
//! parts after a 413, retried with backoff, and settled with the queue
//! (acknowledged or dropped), each step once (see the module docs of
//! `export`). A gateway that fails for `failover_after` is marked down and
//! its lanes re-split onto the others ([`resplit`](super::resplit::resplit))
//! until it answers a probe again.

use std::cell::{Cell, RefCell};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Compression, ExportConfig, RetryConfig};
use crate::lifecycle::RateLimit;
use crate::queue::{
    Batch, BatchId, DropReason, Dropped, Lane, PushListener, Queue, QueueError, Signal,
};
use crate::route::split::{self, Halved};
use crate::route::Routes;
use crate::telemetry::{self, Metrics};

use super::bandwidth::Bandwidth;
use super::error::{ExportError, Fault};
use super::resplit::resplit;
use super::retry::Backoff;
use super::sender::{self, Sender};

/// How long an idle sender waits for a push before it reads its lanes again
/// anyway (a batch moved into them by a re-split does not wake it).
mod coalesce;

const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Longest wait between two tries to acknowledge (or drop) a batch the queue
/// could not delete: a full disk that frees up should be noticed soon.
const SETTLE_MAX_INTERVAL: Duration = Duration::from_secs(5);

/// How often, at most, an unreachable gateway is probed (a TCP connect, no
/// request) during a backoff; jittered down to half of it.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How long a probe's connect may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A sender's stop signal. Unlike [`Shutdown`] it also ends a wait for the
/// queue's next push, so a stopped sender leaves its loop at once, not after
/// its idle wait.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    stopped: AtomicBool,
    wake: event_listener::Event,
}

impl Stop {
    /// A signal that has not fired.
    pub(crate) fn new() -> Stop {
        Stop::default()
    }

    /// Fires the signal and wakes the waiting sender.
    pub(crate) fn trigger(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify(usize::MAX);
    }

    /// Whether the signal has fired.
    pub(crate) fn is_triggered(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` or until the signal fires; returns whether it fired.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        self.wait(None, d)
    }

    /// Waits for `d`, the next push (when `push` is given) or the signal,
    /// whichever comes first; returns whether the signal fired.
    pub(crate) fn wait(&self, push: Option<PushListener>, d: Duration) -> bool {
        // Listen before looking at the flag, so a trigger in between wakes us.
        let stopped = self.wake.listen();
        if self.is_triggered() {
            return true;
        }
        let pushed = async {
            match push {
                Some(p) => p.await,
                None => smol::future::pending().await,
            }
        };
        let timer = async {
            smol::Timer::after(d).await;
        };
        smol::block_on(smol::future::or(stopped, smol::future::or(pushed, timer)));
        self.is_triggered()
    }
}

/// What the queue must still do with a batch once nothing is left to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Delete it: delivered, or every part of it delivered or dropped (and
    /// each dropped part already counted).
    Ack,
    /// Drop it whole for this reason, counting it.
    Drop(DropReason),
}

/// One part of a split batch still to send.
#[derive(Debug)]
struct Piece {
    /// The part, compressed as the queue stores batches.
    payload: Vec<u8>,
    /// Spans, log records or data points in it.
    items: u64,
}

/// What a sender knows about the head batch of one lane beyond the queue:
/// what is left to send and what the queue must still be told. Kept across
/// waits while the batch stays the head of its lane, so that no step is done
/// twice.
#[derive(Debug)]
struct Delivery {
    /// The batch this is about.
    id: BatchId,
    /// The parts left after a 413, the next one last; `None` while the
    /// batch goes whole.
    pieces: Option<Vec<Piece>>,
    /// Whether anything of the batch reached the gateway.
    delivered: bool,
    /// Set once nothing is left to send (or the batch is to be dropped
    /// whole): then only the queue is asked again, never the gateway.
    settle: Option<Settle>,
    /// The wait between sends, for the batch as a whole.
    send_backoff: Backoff,
    /// The wait between tries to settle, when the queue fails.
    settle_backoff: Backoff,
}

impl Delivery {
    fn new(id: BatchId, retry: RetryConfig) -> Delivery {
        // Settling never gives up (it would lose or resend the batch), and
        // retries at least every SETTLE_MAX_INTERVAL.
        let settle_retry = RetryConfig {
            max_elapsed_time: Duration::ZERO,
            max_interval: retry.max_interval.min(SETTLE_MAX_INTERVAL),
            initial_interval: retry.initial_interval.min(SETTLE_MAX_INTERVAL),
            ..retry
        };
        Delivery {
            id,
            pieces: None,
            delivered: false,
            settle: None,
            send_backoff: Backoff::new(retry),
            settle_backoff: Backoff::new(settle_retry),
        }
    }

    /// Whether nothing has happened to the batch yet: no part sent, split
    /// or settled, no failed try. Only then may it go with others.
    fn is_fresh(&self) -> bool {
        self.pieces.is_none() && !self.delivered && self.settle.is_none()
    }

    /// The next request: the payload and its items, whole or the next part.
    /// `None` when the batch is split and no part is left.
    fn next<'a>(&'a self, batch: &'a Batch) -> Option<(&'a [u8], u64)> {
        match &self.pieces {
            None => Some((&batch.payload, batch.items)),
            Some(pieces) => pieces.last().map(|p| (p.payload.as_slice(), p.items)),
        }
    }

    /// The request just sent is done with (delivered or dropped as a part).
    /// Returns whether nothing is left to send.
    fn done_with_current(&mut self) -> bool {
        match &mut self.pieces {
            None => true,
            Some(pieces) => {
                pieces.pop();
                pieces.is_empty()
            }
        }
    }
}

/// How one delivery step ended.
#[derive(Debug, PartialEq)]
enum Step {
    /// The batch left the queue (acknowledged or dropped).
    Done,
    /// The gateway failed: try again after this wait. When it could not be
    /// reached (`unreachable`), the wait ends as soon as it is back.
    Retry {
        delay: Duration,
        unreachable: bool,
        refused: bool,
    },
    /// The gateway is done with the batch but the queue could not record it:
    /// try the queue again after this wait, without sending.
    Unsettled(Duration),
    /// Look at the lane again at once (a request of several batches was
    /// too large: fewer go next).
    Again,
    /// The sender was stopped.
    Stopped,
}

/// The delivery loop of one gateway.
pub(super) struct Gateway {
    sender: Sender,
    /// The gateway's lane destination (its base URL).
    destination: String,
    queue: Queue,
    metrics: Arc<Metrics>,
    routes: Routes,
    retry: RetryConfig,
    failover_after: Option<Duration>,
    /// `max_bandwidth`, shared by every gateway's sender.
    bandwidth: Arc<Bandwidth>,
    /// Whether several batches may go in one request (compressed on the wire).
    coalesce: bool,
    /// `max_request_size`: the most bytes one request of several batches
    /// carries.
    max_request_size: usize,
    /// The most batches a request carries: halved by each 413.
    coalesce_limit: Cell<usize>,
    /// Batches up to this one go one by one (a request holding them was
    /// refused).
    single_until: Cell<Option<BatchId>>,
    /// Batches delivered in one request whose deletes the queue could not
    /// all record: only their acks are left.
    pending_acks: RefCell<Vec<BatchId>>,
    /// Failed sends.
    errors: RateLimit,
    /// Redirects that ask for a new endpoint.
    redirects: RateLimit,
    /// Acks and drops the queue could not do.
    settle_errors: RateLimit,
    /// Parts of batches dropped after a 413.
    part_drops: RateLimit,
    /// Acks to fail before calling the queue, to test the ack-failure path.
    #[cfg(test)]
    pub(super) failing_acks: std::sync::atomic::AtomicU32,
}

impl Gateway {
    pub(super) fn new(
        sender: Sender,
        destination: &str,
        queue: Queue,
        metrics: Arc<Metrics>,
        routes: Routes,
        config: &ExportConfig,
        bandwidth: Arc<Bandwidth>,
    ) -> Gateway {
        Gateway {
            sender,
            destination: destination.to_string(),
            queue,
            metrics,
            routes,
            retry: config.retry,
            failover_after: config.failover_after,
            bandwidth,
            coalesce: config.compression != Compression::None && config.max_request_size > 0,
            max_request_size: usize::try_from(config.max_request_size).unwrap_or(usize::MAX),
            coalesce_limit: Cell::new(coalesce::MAX_BATCHES),
            single_until: Cell::new(None),
            pending_acks: RefCell::new(Vec::new()),
            errors: RateLimit::new(Duration::from_secs(30)),
            redirects: RateLimit::new(Duration::from_secs(300)),
            settle_errors: RateLimit::new(Duration::from_secs(30)),
            part_drops: RateLimit::new(Duration::from_secs(30)),
            #[cfg(test)]
            failing_acks: std::sync::atomic::AtomicU32::new(0),
        }
    }

    pub(super) fn run(self, stop: &Stop) {
        log::info!("Sender started endpoint={}", self.sender.endpoint());
        // Per signal, the delivery of the lane's head batch. The queue is read
        // again after each wait, so that a batch the size policy deleted
        // meanwhile is not sent; a delivery whose batch is no longer the head
        // is forgotten.
        let mut deliveries: [Option<Delivery>; 3] = [None, None, None];
        // Since when every attempt failed, for failover.
        let mut failing_since: Option<Instant> = None;
        let mut probe = Backoff::new(self.retry);
        // Whether a probe (or a refused connection) found the gateway down
        // since the last delivery: its return then ends the backoff.
        let mut down_seen = false;
        while !stop.is_triggered() {
            if self.is_down() {
                // Failed over: keep the lanes empty (a push may have raced the
                // switch) and probe until the gateway answers.
                deliveries = [None, None, None];
                self.move_away("failover");
                if self.probe() {
                    if self.routes.set_down(&self.destination, false) {
                        log::info!(
                            "Gateway answers again, taking its keys back endpoint={}",
                            self.destination
                        );
                    }
                    failing_since = None;
                    probe = Backoff::new(self.retry);
                    continue;
                }
                let delay = probe.next_delay(None).unwrap_or(self.retry.max_interval);
                stop.sleep(delay);
                continue;
            }
            let listener = self.queue.listen();
            let mut busy = false;
            let mut wait = None;
            let mut probe_wait = false;
            for (signal, slot) in Signal::ALL.into_iter().zip(deliveries.iter_mut()) {
                let lane = Lane::new(signal, &self.destination);
                let batch = match self.queue.peek(&lane, 1) {
                    Ok(peeked) => {
                        self.count_drops(&peeked.dropped);
                        peeked.batches.into_iter().next()
                    }
                    Err(e) => {
                        log::error!("Reading the queue failed lane={lane} error={e}");
                        wait = Some(Duration::from_secs(1));
                        break;
                    }
                };
                let Some(batch) = batch else {
                    *slot = None;
                    continue;
                };
                busy = true;
                let mut delivery = match slot.take() {
                    Some(d) if d.id == batch.id => d,
                    _ => self.delivery(batch.id),
                };
                let step = if delivery.is_fresh() {
                    let group = self.gather(&lane, batch);
                    match group.len() {
                        1 => self.deliver(&lane, &group[0], &mut delivery, stop),
                        _ => match self.deliver_group(&lane, &group, &mut delivery, stop) {
                            Some(step) => step,
                            None => self.deliver(&lane, &group[0], &mut delivery, stop),
                        },
                    }
                } else {
                    self.deliver(&lane, &batch, &mut delivery, stop)
                };
                match step {
                    Step::Again => *slot = Some(delivery),
                    Step::Done => {
                        failing_since = None;
                        down_seen = false;
                    }
                    Step::Unsettled(delay) => {
                        // The gateway is fine; the local disk is not.
                        failing_since = None;
                        *slot = Some(delivery);
                        wait = Some(delay);
                        break;
                    }
                    Step::Retry {
                        delay,
                        unreachable,
                        refused,
                    } => {
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if self
                            .failover_after
                            .is_some_and(|after| since.elapsed() >= after)
                            && self.routes.set_down(&self.destination, true)
                        {
                            log::warn!(
                                "Gateway failed over: its keys go to the next gateway until it answers endpoint={} failing_for={:.0}s",
                                self.destination,
                                since.elapsed().as_secs_f64()
                            );
                            probe = Backoff::new(self.retry);
                            break;
                        }
                        *slot = Some(delivery);
                        // A failing gateway holds every signal back: they share it.
                        wait = Some(delay);
                        probe_wait = unreachable;
                        down_seen |= refused;
                        break;
                    }
                    Step::Stopped => break,
                }
            }
            match wait {
                Some(delay) if probe_wait => self.wait_for_return(delay, &mut down_seen, stop),
                Some(delay) => {
                    stop.sleep(delay);
                }
                // Wake on the next push or the stop, or look again after a while.
                None if !busy => {
                    stop.wait(Some(listener), IDLE_WAIT);
                }
                None => {}
            }
        }
        log::info!("Sender stopped endpoint={}", self.sender.endpoint());
    }

    /// Waits out the backoff after the gateway could not be reached, but
    /// sends again as soon as it is back: it is probed with a TCP connect
    /// (no request, nothing to pay for but a handshake) every 1 to 2 s, and
    /// the wait ends when it accepts one after being found down. A gateway
    /// that accepts connections but failed the request (a reset, a stall)
    /// keeps its backoff: probing stops once it is found up.
    fn wait_for_return(&self, delay: Duration, down_seen: &mut bool, stop: &Stop) {
        let deadline = Instant::now() + delay;
        let endpoint = self.sender.endpoint();
        // Resolved once a wait: a name is not looked up every 2 s.
        let addrs: Vec<std::net::SocketAddr> = crate::http::host_port(endpoint)
            .and_then(|(host, port)| (host.as_str(), port).to_socket_addrs().ok())
            .map(Iterator::collect)
            .unwrap_or_default();
        loop {
            let up = addrs
                .iter()
                .any(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok());
            self.metrics.inc(
                "tern_export_probes_total",
                &[
                    ("endpoint", endpoint),
                    ("result", if up { "up" } else { "down" }),
                ],
            );
            if up && *down_seen {
                *down_seen = false;
                log::info!("Gateway reachable again, sending now endpoint={endpoint}");
                return;
            }
            *down_seen |= !up;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || addrs.is_empty() {
                stop.sleep(left);
                return;
            }
            if up {
                // Up, yet the request failed: the backoff stands.
                stop.sleep(left);
                return;
            }
            let nap = PROBE_INTERVAL
                .mul_f64(0.5 + 0.5 * fastrand::f64())
                .min(left);
            if stop.sleep(nap) {
                return;
            }
        }
    }

    fn is_down(&self) -> bool {
        self.routes
            .current()
            .members
            .iter()
            .any(|m| m.destination == self.destination && m.down)
    }

    /// Re-splits this gateway's lanes onto the gateways that are up.
    fn move_away(&self, reason: &str) {
        for signal in Signal::ALL {
            let lane = Lane::new(signal, &self.destination);
            if let Err(e) = resplit(&self.queue, &self.routes, &self.metrics, &lane, reason) {
                log::error!("Re-routing a lane failed lane={lane} error={e}");
            }
        }
    }

    /// Whether the gateway answers an empty request (any answer but a
    /// retryable failure counts).
    fn probe(&self) -> bool {
        thread_local! {
            static EMPTY: Vec<u8> = crate::otlp::compress(&[]).payload;
        }
        let result = EMPTY.with(|empty| self.sender.send(Signal::Traces, empty));
        match result {
            Ok(_) => true,
            Err(e) => !e.is_retryable(),
        }
    }

    /// Takes the head batch of `lane` as far as it goes now: sends it (or its
    /// parts after a 413) until it is done with or a send fails retryably,
    /// then has the queue delete or drop it.
    fn deliver(&self, lane: &Lane, batch: &Batch, d: &mut Delivery, stop: &Stop) -> Step {
        let endpoint = self.sender.endpoint();
        let signal = lane.signal();
        let labels = [("endpoint", endpoint), ("signal", signal.as_str())];
        loop {
            if let Some(settle) = d.settle {
                return self.settle(lane, batch, d, settle);
            }
            if stop.is_triggered() {
                return Step::Stopped;
            }
            let Some((payload, items)) = d.next(batch) else {
                self.finished(lane, batch, d);
                continue;
            };
            let Some(result) = self.send_counted(signal, payload, items, stop) else {
                return Step::Stopped;
            };
            let error = match result {
                Ok(()) => {
                    d.delivered = true;
                    if d.done_with_current() {
                        self.finished(lane, batch, d);
                    }
                    continue;
                }
                Err(e) => e,
            };
            self.count_failed(lane, &error, payload.len());
            match (error.fault(), &error) {
                (_, ExportError::TooLarge { .. }) => match split::halve(signal, payload) {
                    Ok(Halved::Two(a, b)) => {
                        self.metrics
                            .inc("tern_export_split_requests_total", &labels);
                        log::debug!(
                            "Request too large, sending it in halves endpoint={endpoint} signal={signal} points={items} bytes={}",
                            payload.len()
                        );
                        let pieces = d.pieces.get_or_insert_with(Vec::new);
                        pieces.pop();
                        // The next part is the last: `a` goes first.
                        for half in [b, a] {
                            pieces.push(Piece {
                                payload: half.encoded.payload,
                                items: half.items as u64,
                            });
                        }
                    }
                    Ok(Halved::Single) => {
                        self.drop_current(lane, batch, d, DropReason::TooLarge, &error);
                    }
                    Err(e) => {
                        let corrupt = ExportError::Corrupt(format!("split after 413: {e}"));
                        self.drop_current(lane, batch, d, DropReason::Corrupt, &corrupt);
                    }
                },
                (Fault::Local, _) => {
                    self.drop_current(lane, batch, d, DropReason::Corrupt, &error);
                }
                (Fault::Permanent, _) => {
                    self.drop_current(lane, batch, d, DropReason::Permanent, &error);
                }
                (Fault::Retryable, _) => match self.retry_later(lane, batch, d, &error) {
                    Some(step) => return step,
                    None => continue,
                },
            }
        }
    }

    /// After a retryable failure: the wait before the batch (`d`, the head
    /// of `lane`) is sent again, or `None` when `max_elapsed_time` has
    /// passed and the batch (or what is left of it) is set to be dropped.
    fn retry_later(
        &self,
        lane: &Lane,
        batch: &Batch,
        d: &mut Delivery,
        error: &ExportError,
    ) -> Option<Step> {
        let endpoint = self.sender.endpoint();
        let signal = lane.signal();
        let Some(delay) = d.send_backoff.next_delay(error.retry_after()) else {
            log::error!(
                "Batch dropped: max_elapsed_time passed endpoint={endpoint} signal={signal} points={} error={error}",
                d.pieces.as_ref().map_or(batch.items, |p| p.iter().map(|p| p.items).sum())
            );
            match d.pieces.as_mut() {
                None => d.settle = Some(Settle::Drop(DropReason::Expired)),
                Some(rest) => {
                    for piece in rest.drain(..) {
                        self.count_part_drop(lane, piece.items, DropReason::Expired);
                    }
                    self.finished(lane, batch, d);
                }
            }
            return None;
        };
        self.metrics.inc(
            "tern_export_retried_batches_total",
            &[("endpoint", endpoint), ("signal", signal.as_str())],
        );
        if let Some(suppressed) = self.errors.check() {
            log::warn!(
                "Send failed, will retry endpoint={endpoint} signal={signal} error={error} retry_in={:.1}s suppressed={suppressed}",
                delay.as_secs_f64()
            );
        }
        Some(Step::Retry {
            delay,
            unreachable: error.is_unreachable(),
            refused: error.is_refused(),
        })
    }

    /// One request of `body` (holding `items`) within `max_bandwidth`,
    /// counted: its time, and when the gateway took it its points, bytes and
    /// any points it rejected. `None` when stopped while waiting.
    fn send_counted(
        &self,
        signal: Signal,
        body: &[u8],
        items: u64,
        stop: &Stop,
    ) -> Option<Result<(), ExportError>> {
        let endpoint = self.sender.endpoint();
        let waited = self.bandwidth.take(body.len(), stop)?;
        if !waited.is_zero() {
            self.metrics.add(
                "tern_export_bandwidth_wait_seconds_total",
                &[("endpoint", endpoint)],
                waited.as_secs_f64(),
            );
        }
        let started = Instant::now();
        let result = self
            .sender
            .send_observed(signal, body, &mut |r| self.redirected(r));
        self.metrics.add(
            "tern_export_request_duration_seconds_total",
            &[("endpoint", endpoint)],
            started.elapsed().as_secs_f64(),
        );
        let accepted = match result {
            Ok(accepted) => accepted,
            Err(e) => return Some(Err(e)),
        };
        let labels = [("endpoint", endpoint), ("signal", signal.as_str())];
        self.metrics
            .add("tern_export_sent_points_total", &labels, items as f64);
        self.metrics
            .add("tern_export_sent_bytes_total", &labels, body.len() as f64);
        self.count_rejected(signal, &accepted);
        Some(Ok(()))
    }

    /// Counts and logs the points a gateway's partial_success rejected.
    fn count_rejected(&self, signal: Signal, accepted: &sender::Accepted) {
        if accepted.rejected == 0 {
            return;
        }
        let endpoint = self.sender.endpoint();
        self.metrics.add(
            "tern_export_rejected_points_total",
            &[("endpoint", endpoint), ("signal", signal.as_str())],
            accepted.rejected as f64,
        );
        log::warn!(
            "Gateway rejected part of a batch endpoint={endpoint} signal={signal} rejected={} message={:?}",
            accepted.rejected,
            accepted.message
        );
    }

    /// Counts a failed request of `bytes`; one that never left (refused)
    /// costs no bandwidth budget.
    fn count_failed(&self, lane: &Lane, error: &ExportError, bytes: usize) {
        if error.is_refused() {
            self.bandwidth.refund(bytes);
        }
        // A local fault is no failed request: nothing reached the gateway.
        if error.fault() != Fault::Local {
            self.metrics.inc(
                "tern_export_failed_requests_total",
                &[
                    ("endpoint", self.sender.endpoint()),
                    ("signal", lane.signal().as_str()),
                    ("reason", &error.reason()),
                ],
            );
        }
    }

    /// A delivery for the batch `id`: fresh, or with only its ack left when
    /// it went out in a request whose acks the queue could not all record.
    fn delivery(&self, id: BatchId) -> Delivery {
        let mut d = Delivery::new(id, self.retry);
        let mut pending = self.pending_acks.borrow_mut();
        if let Some(i) = pending.iter().position(|p| *p == id) {
            pending.remove(i);
            d.delivered = true;
            d.settle = Some(Settle::Ack);
        }
        d
    }

    /// Gives up on the request just sent: the whole batch when it went whole
    /// (dropped through the queue, which counts it), or the one part, counted
    /// here, while the rest of the batch goes on.
    fn drop_current(
        &self,
        lane: &Lane,
        batch: &Batch,
        d: &mut Delivery,
        reason: DropReason,
        error: &ExportError,
    ) {
        let endpoint = self.sender.endpoint();
        let signal = lane.signal();
        let why = match reason {
            DropReason::TooLarge => "a single item is larger than the gateway takes",
            DropReason::Corrupt => "its stored payload cannot be read",
            _ => "gateway refused it",
        };
        if d.pieces.is_none() {
            // Logged once: the drop is decided once per batch, and only the
            // queue's part of it is retried.
            log::error!(
                "Batch dropped: {why} endpoint={endpoint} signal={signal} points={} bytes={} error={error}",
                batch.items,
                batch.payload.len()
            );
            d.settle = Some(Settle::Drop(reason));
            return;
        }
        let (items, bytes) = d
            .next(batch)
            .map_or((0, 0), |(payload, items)| (items, payload.len()));
        if let Some(suppressed) = self.part_drops.check() {
            log::error!(
                "Part of a batch dropped: {why} endpoint={endpoint} signal={signal} points={items} bytes={bytes} error={error} suppressed={suppressed}"
            );
        }
        self.count_part_drop(lane, items, reason);
        if d.done_with_current() {
            self.finished(lane, batch, d);
        }
    }

    /// Nothing of the batch is left to send: it is to be deleted, and counted
    /// as sent if any of it was delivered. Counted here, once per batch: an
    /// ack that fails is retried without sending again.
    fn finished(&self, lane: &Lane, batch: &Batch, d: &mut Delivery) {
        if d.delivered {
            let endpoint = self.sender.endpoint();
            let signal = lane.signal().as_str();
            self.metrics.inc(
                "tern_export_sent_batches_total",
                &[("endpoint", endpoint), ("signal", signal)],
            );
            log::debug!(
                "Batch sent endpoint={endpoint} signal={signal} points={} parts={}",
                batch.items,
                if d.pieces.is_some() { "split" } else { "whole" }
            );
        }
        d.settle = Some(Settle::Ack);
    }

    /// Has the queue delete or drop a batch the gateway is done with.
    fn settle(&self, lane: &Lane, batch: &Batch, d: &mut Delivery, settle: Settle) -> Step {
        let result = match settle {
            Settle::Ack => self.ack(batch.id).map(|_| ()),
            Settle::Drop(reason) => self
                .queue
                .drop_batch(batch.id, reason)
                .map(|dropped| self.count_drops(dropped.as_slice())),
        };
        let Err(e) = result else {
            return Step::Done;
        };
        let endpoint = self.sender.endpoint();
        self.metrics.inc(
            "tern_export_ack_failures_total",
            &[("endpoint", endpoint), ("signal", lane.signal().as_str())],
        );
        let delay = d
            .settle_backoff
            .next_delay(None)
            .unwrap_or(SETTLE_MAX_INTERVAL);
        if let Some(suppressed) = self.settle_errors.check() {
            let what = match settle {
                Settle::Ack => "Deleting a delivered batch from the queue failed, retrying the delete without sending again",
                Settle::Drop(_) => "Deleting a dropped batch from the queue failed, retrying the delete",
            };
            log::warn!(
                "{what} lane={lane} error={e} retry_in={:.1}s suppressed={suppressed}",
                delay.as_secs_f64()
            );
        }
        Step::Unsettled(delay)
    }

    fn ack(&self, id: BatchId) -> Result<bool, QueueError> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::SeqCst;
            let fail = self
                .failing_acks
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err(QueueError::Storage {
                    path: self.queue.path().into(),
                    source: std::io::Error::other("No space left on device (injected)"),
                });
            }
        }
        self.queue.ack(id)
    }

    /// Counts and logs one redirect the sender followed.
    fn redirected(&self, r: &sender::Redirect<'_>) {
        let endpoint = self.sender.endpoint();
        self.metrics.inc(
            "tern_export_redirects_total",
            &[("endpoint", endpoint), ("status", &r.status.to_string())],
        );
        if !r.wants_new_endpoint() {
            log::debug!(
                "Following a temporary redirect endpoint={endpoint} status={} from={} location={}",
                r.status,
                r.from,
                r.to
            );
        } else if let Some(suppressed) = self.redirects.check() {
            log::warn!(
                "Gateway redirects the endpoint for good, update the endpoint endpoint={endpoint} status={} from={} location={} suppressed={suppressed}",
                r.status,
                r.from,
                r.to
            );
        }
    }

    /// Counts one dropped part of a batch in the drop counters.
    fn count_part_drop(&self, lane: &Lane, items: u64, reason: DropReason) {
        self.count_drops(&[Dropped {
            id: None,
            lane: Some(lane.clone()),
            items,
            bytes: 0,
            reason,
        }]);
    }

    fn count_drops(&self, dropped: &[Dropped]) {
        telemetry::count_drops(&self.metrics, dropped);
    }
}
