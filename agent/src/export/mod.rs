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
pub mod dns;
pub mod retry;
pub mod sender;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{DnsConfig, ExportConfig, RetryConfig};
use crate::lifecycle::{RateLimit, Shutdown};
use crate::queue::{
    Batch, BatchId, DropReason, Dropped, Lane, NewBatch, PushListener, Queue, QueueError, Signal,
};
use crate::route::split::{self, Halved, Split};
use crate::route::{Routes, Table};
use crate::telemetry::Metrics;

use retry::Backoff;
use sender::{ExportError, Sender};

/// How often the coordinator applies gateway set changes, looks for lanes to
/// re-split and updates the per-gateway gauges.
const TICK: Duration = Duration::from_millis(250);

/// How long an idle sender waits for a push before it reads its lanes again
/// anyway (a batch moved into them by a re-split does not wake it).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Longest wait between two tries to acknowledge (or drop) a batch the queue
/// could not delete: a full disk that frees up should be noticed soon.
const SETTLE_MAX_INTERVAL: Duration = Duration::from_secs(5);

/// Starts the exporter: the coordinator thread (`tern-route`), which starts
/// one sender per gateway and, with `dns`, the resolver thread. Returns
/// `None` when no gateway is configured: batches then stay in the queue.
///
/// # Errors
///
/// A TLS setup error (unreadable CA or key file), or a thread that could not
/// be started.
pub fn spawn(
    config: &ExportConfig,
    queue: Queue,
    metrics: Arc<Metrics>,
    routes: Routes,
    shutdown: Arc<Shutdown>,
) -> Result<Option<JoinHandle<()>>, Box<dyn std::error::Error + Send + Sync>> {
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
    };
    for d in kept {
        coordinator.start_sender(&d);
    }
    let handle = std::thread::Builder::new()
        .name("tern-route".into())
        .spawn(move || coordinator.run(&shutdown))?;
    Ok(Some(handle))
}

fn spawn_dns(
    config: DnsConfig,
    updates: mpsc::Sender<Vec<String>>,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tern-dns".into())
        .spawn(move || {
            let errors = RateLimit::new(Duration::from_secs(60));
            let mut last: Option<Vec<String>> = None;
            loop {
                let server = config.resolver.or_else(dns::system_nameserver);
                let result = match server {
                    Some(s) => dns::resolve(&config.hostname, s, config.timeout),
                    None => Err(dns::DnsError::NoServer),
                };
                match result {
                    Ok(ips) if !ips.is_empty() => {
                        let set: Vec<String> = ips
                            .iter()
                            .map(|ip| {
                                format!(
                                    "{}://{}",
                                    config.scheme,
                                    std::net::SocketAddr::new(*ip, config.port)
                                )
                            })
                            .collect();
                        if last.as_ref() != Some(&set) {
                            last = Some(set.clone());
                            if updates.send(set).is_err() {
                                break;
                            }
                        }
                    }
                    // An empty answer keeps the last set: with nowhere to send,
                    // batches would only wait.
                    Ok(_) => {
                        metrics.inc("tern_export_resolve_failures_total", &[("reason", "empty")]);
                        if let Some(suppressed) = errors.check() {
                            log::warn!(
                                "DNS answer has no address, keeping the gateway set hostname={} suppressed={suppressed}",
                                config.hostname
                            );
                        }
                    }
                    Err(e) => {
                        metrics.inc("tern_export_resolve_failures_total", &[("reason", "error")]);
                        if let Some(suppressed) = errors.check() {
                            log::warn!(
                                "Resolving the gateways failed, keeping the gateway set hostname={} error={e} suppressed={suppressed}",
                                config.hostname
                            );
                        }
                    }
                }
                if shutdown.sleep(config.interval) {
                    break;
                }
            }
        })
}

/// A running sender and its own stop signal.
struct Running {
    stop: Arc<Stop>,
    handle: JoinHandle<()>,
}

/// A sender's stop signal. Unlike [`Shutdown`] it also ends a wait for the
/// queue's next push, so a stopped sender leaves its loop at once, not after
/// its idle wait.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: AtomicBool,
    wake: event_listener::Event,
}

impl Stop {
    /// A signal that has not fired.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Fires the signal and wakes the waiting sender.
    pub fn trigger(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify(usize::MAX);
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` or until the signal fires; returns whether it fired.
    pub fn sleep(&self, d: Duration) -> bool {
        self.wait(None, d)
    }

    /// Waits for `d`, the next push (when `push` is given) or the signal,
    /// whichever comes first; returns whether the signal fired.
    pub fn wait(&self, push: Option<PushListener>, d: Duration) -> bool {
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

/// The `tern-route` thread: owns the gateway set and the senders.
struct Coordinator {
    config: ExportConfig,
    queue: Queue,
    metrics: Arc<Metrics>,
    routes: Routes,
    senders: BTreeMap<String, Running>,
    updates: mpsc::Receiver<Vec<String>>,
    dns: Option<JoinHandle<()>>,
    errors: RateLimit,
}

impl Coordinator {
    fn run(mut self, shutdown: &Shutdown) {
        let mut gauges_at = Instant::now();
        loop {
            // Sleeping on the shutdown rather than on the channel lets a stop
            // end the loop at once; a new gateway set waits at most one tick.
            while let Ok(set) = self.updates.try_recv() {
                self.apply(set);
            }
            self.reconcile();
            if gauges_at.elapsed() >= Duration::from_secs(1) {
                self.gauges();
                gauges_at = Instant::now();
            }
            if shutdown.sleep(TICK) {
                break;
            }
        }
        for r in self.senders.values() {
            r.stop.trigger();
        }
        for (_, r) in std::mem::take(&mut self.senders) {
            let _ = r.handle.join();
        }
        if let Some(h) = self.dns.take() {
            let _ = h.join();
        }
    }

    /// Makes `set` the gateway set.
    fn apply(&mut self, mut set: Vec<String>) {
        set.dedup();
        let old = self.routes.current();
        let old_set: Vec<&str> = old.members.iter().map(|m| m.destination.as_str()).collect();
        let same = old_set.len() == set.len() && set.iter().all(|d| old.contains(d));
        let mut table = Table::new(&set, self.config.routing);
        for m in &mut table.members {
            m.down = old
                .members
                .iter()
                .any(|o| o.destination == m.destination && o.down);
        }
        self.routes.set(table);
        let added: Vec<&String> = set.iter().filter(|d| !old.contains(d)).collect();
        let removed: Vec<&str> = old_set
            .iter()
            .copied()
            .filter(|d| !set.contains(&d.to_string()))
            .collect();
        if !same {
            log::info!(
                "Gateway set changed size={} added={added:?} removed={removed:?}",
                set.len()
            );
            self.metrics.inc("tern_export_gateway_changes_total", &[]);
        }
        self.metrics
            .set("tern_export_gateways", &[], set.len() as f64);
        for d in &set {
            if !self.senders.contains_key(d) {
                self.start_sender(d);
            }
        }
        let gone: Vec<String> = self
            .senders
            .keys()
            .filter(|d| !set.contains(d))
            .cloned()
            .collect();
        let stopped: Vec<Running> = gone.iter().filter_map(|d| self.senders.remove(d)).collect();
        for r in &stopped {
            r.stop.trigger();
        }
        for r in stopped {
            let _ = r.handle.join();
        }
        for d in &gone {
            for name in [
                "tern_export_queued_batches",
                "tern_export_queued_bytes",
                "tern_export_gateway_up",
            ] {
                self.metrics.remove_matching(name, "endpoint", d);
            }
        }
        self.reconcile();
    }

    fn start_sender(&mut self, destination: &str) {
        let sender = match Sender::new(destination, &self.config) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("Sender not started endpoint={destination} error={e}");
                return;
            }
        };
        let stop = Arc::new(Stop::new());
        let gateway = Gateway::new(
            sender,
            destination,
            self.queue.clone(),
            self.metrics.clone(),
            self.routes.clone(),
            &self.config,
        );
        let name = format!("tern-send-{}", host_port(destination));
        let thread_stop = stop.clone();
        match std::thread::Builder::new()
            .name(name)
            .spawn(move || gateway.run(&thread_stop))
        {
            Ok(handle) => {
                self.senders
                    .insert(destination.to_string(), Running { stop, handle });
            }
            Err(e) => log::error!("Sender thread not started endpoint={destination} error={e}"),
        }
    }

    /// Re-splits every lane with batches whose gateway is not in the set (a
    /// gateway that left, or `default` from before load balancing).
    fn reconcile(&mut self) {
        let table = self.routes.current();
        if table.members.is_empty() {
            return;
        }
        for lane in self.queue.stats().lanes {
            let dest = lane.lane.destination();
            if lane.backlog.batches == 0 || table.contains(dest) || self.senders.contains_key(dest)
            {
                continue;
            }
            if let Err(e) = resplit(&self.queue, &self.routes, &self.metrics, &lane.lane, "left") {
                if let Some(suppressed) = self.errors.check() {
                    log::error!(
                        "Re-routing a lane failed lane={} error={e} suppressed={suppressed}",
                        lane.lane
                    );
                }
            }
        }
    }

    fn gauges(&self) {
        let table = self.routes.current();
        let stats = self.queue.stats();
        for m in &table.members {
            let (mut batches, mut bytes) = (0u64, 0u64);
            for l in stats
                .lanes
                .iter()
                .filter(|l| l.lane.destination() == m.destination)
            {
                batches += l.backlog.batches;
                bytes += l.backlog.bytes;
            }
            let labels = [("endpoint", m.destination.as_str())];
            self.metrics
                .set("tern_export_queued_batches", &labels, batches as f64);
            self.metrics
                .set("tern_export_queued_bytes", &labels, bytes as f64);
            self.metrics.set(
                "tern_export_gateway_up",
                &labels,
                if m.down { 0.0 } else { 1.0 },
            );
        }
        self.metrics
            .set("tern_export_gateways", &[], table.members.len() as f64);
    }
}

/// `host:port` of a base URL, for thread names and logs.
fn host_port(url: &str) -> &str {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// Routes every batch of `lane` again over the current table and moves or
/// pushes it there, deleting it from `lane`. Stops at a batch that would stay
/// in `lane` (its gateway is the only one up). Returns the batches moved.
///
/// # Errors
///
/// The queue's; what was moved stays moved.
pub fn resplit(
    queue: &Queue,
    routes: &Routes,
    metrics: &Metrics,
    lane: &Lane,
    reason: &str,
) -> Result<u64, QueueError> {
    let table = routes.current();
    let signal = lane.signal();
    let mut moved = 0u64;
    let labels = [("endpoint", lane.destination()), ("reason", reason)];
    loop {
        let peeked = queue.peek(lane, 64)?;
        count_drops(metrics, &peeked.dropped);
        if peeked.batches.is_empty() {
            break;
        }
        for batch in peeked.batches {
            let dest_of = |g: usize| table.members.get(g).map(|m| m.destination.as_str());
            match split::split(&table, signal, &batch.payload) {
                Split::Whole(g) => {
                    let Some(dest) = dest_of(g) else {
                        return Ok(moved);
                    };
                    if dest == lane.destination() {
                        return Ok(moved);
                    }
                    queue.move_batch(batch.id, dest)?;
                }
                Split::Parts(parts) => {
                    if parts
                        .iter()
                        .any(|p| dest_of(p.gateway) == Some(lane.destination()))
                    {
                        return Ok(moved);
                    }
                    for p in &parts {
                        let Some(dest) = dest_of(p.gateway) else {
                            continue;
                        };
                        let pushed = queue.push(
                            &Lane::new(signal, dest),
                            NewBatch {
                                payload: &p.encoded.gzip,
                                items: p.items as u64,
                                created: batch.created,
                                checkpoint: None,
                            },
                        )?;
                        count_drops(metrics, &pushed.dropped);
                    }
                    queue.ack(batch.id)?;
                }
            }
            moved += 1;
            metrics.inc("tern_export_rerouted_batches_total", &labels);
            metrics.add(
                "tern_export_rerouted_points_total",
                &labels,
                batch.items as f64,
            );
        }
    }
    if moved > 0 {
        log::info!(
            "Queued batches re-routed lane={lane} reason={reason} batches={moved} gateways={}",
            table.up()
        );
    }
    Ok(moved)
}

fn count_drops(metrics: &Metrics, dropped: &[Dropped]) {
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
        metrics.inc("tern_dropped_batches_total", &labels);
        metrics.add("tern_dropped_points_total", &labels, d.items as f64);
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
    /// The part, gzip-compressed as the queue stores batches.
    gzip: Vec<u8>,
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

    /// The next request: the payload and its items, whole or the next part.
    /// `None` when the batch is split and no part is left.
    fn next<'a>(&'a self, batch: &'a Batch) -> Option<(&'a [u8], u64)> {
        match &self.pieces {
            None => Some((&batch.payload, batch.items)),
            Some(pieces) => pieces.last().map(|p| (p.gzip.as_slice(), p.items)),
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
    /// The gateway failed: try again after this wait.
    Retry(Duration),
    /// The gateway is done with the batch but the queue could not record it:
    /// try the queue again after this wait, without sending.
    Unsettled(Duration),
    /// The sender was stopped.
    Stopped,
}

/// The delivery loop of one gateway.
struct Gateway {
    sender: Sender,
    /// The gateway's lane destination (its base URL).
    destination: String,
    queue: Queue,
    metrics: Arc<Metrics>,
    routes: Routes,
    retry: RetryConfig,
    failover_after: Option<Duration>,
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
    failing_acks: std::sync::atomic::AtomicU32,
}

impl Gateway {
    fn new(
        sender: Sender,
        destination: &str,
        queue: Queue,
        metrics: Arc<Metrics>,
        routes: Routes,
        config: &ExportConfig,
    ) -> Gateway {
        Gateway {
            sender,
            destination: destination.to_string(),
            queue,
            metrics,
            routes,
            retry: config.retry,
            failover_after: config.failover_after,
            errors: RateLimit::new(Duration::from_secs(30)),
            redirects: RateLimit::new(Duration::from_secs(300)),
            settle_errors: RateLimit::new(Duration::from_secs(30)),
            part_drops: RateLimit::new(Duration::from_secs(30)),
            #[cfg(test)]
            failing_acks: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn run(self, stop: &Stop) {
        log::info!("Sender started endpoint={}", self.sender.endpoint());
        // Per signal, the delivery of the lane's head batch. The queue is read
        // again after each wait, so that a batch the size policy deleted
        // meanwhile is not sent; a delivery whose batch is no longer the head
        // is forgotten.
        let mut deliveries: [Option<Delivery>; 3] = [None, None, None];
        // Since when every attempt failed, for failover.
        let mut failing_since: Option<Instant> = None;
        let mut probe = Backoff::new(self.retry);
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
                    _ => Delivery::new(batch.id, self.retry),
                };
                match self.deliver(&lane, &batch, &mut delivery, stop) {
                    Step::Done => failing_since = None,
                    Step::Unsettled(delay) => {
                        // The gateway is fine; the local disk is not.
                        failing_since = None;
                        *slot = Some(delivery);
                        wait = Some(delay);
                        break;
                    }
                    Step::Retry(delay) => {
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
                        break;
                    }
                    Step::Stopped => break,
                }
            }
            match wait {
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
            static EMPTY: Vec<u8> = crate::otlp::compress(&[]).gzip;
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
            let started = Instant::now();
            let result = self
                .sender
                .send_observed(signal, payload, &mut |r| self.redirected(r));
            self.metrics.add(
                "tern_export_request_duration_seconds_total",
                &[("endpoint", endpoint)],
                started.elapsed().as_secs_f64(),
            );
            let error = match result {
                Ok(accepted) => {
                    self.metrics
                        .add("tern_export_sent_points_total", &labels, items as f64);
                    self.metrics.add(
                        "tern_export_sent_bytes_total",
                        &labels,
                        payload.len() as f64,
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
                    d.delivered = true;
                    if d.done_with_current() {
                        self.finished(lane, batch, d);
                    }
                    continue;
                }
                Err(e) => e,
            };
            if !matches!(error, ExportError::Corrupt(_)) {
                self.metrics.inc(
                    "tern_export_failed_requests_total",
                    &[
                        ("endpoint", endpoint),
                        ("signal", signal.as_str()),
                        ("reason", &error.reason()),
                    ],
                );
            }
            match error {
                ExportError::TooLarge { .. } => match split::halve(signal, payload) {
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
                                gzip: half.encoded.gzip,
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
                ExportError::Corrupt(_) => {
                    self.drop_current(lane, batch, d, DropReason::Corrupt, &error);
                }
                _ if !error.is_retryable() => {
                    self.drop_current(lane, batch, d, DropReason::Permanent, &error);
                }
                _ => {
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
                        continue;
                    };
                    self.metrics
                        .inc("tern_export_retried_batches_total", &labels);
                    if let Some(suppressed) = self.errors.check() {
                        log::warn!(
                            "Send failed, will retry endpoint={endpoint} signal={signal} error={error} retry_in={:.1}s suppressed={suppressed}",
                            delay.as_secs_f64()
                        );
                    }
                    return Step::Retry(delay);
                }
            }
        }
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
        count_drops(&self.metrics, dropped);
    }
}

#[cfg(test)]
mod tests;
