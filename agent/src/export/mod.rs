//! The exporter: the load balancer over the gateways, and one sender per
//! gateway that takes batches from the queue, oldest first, and delivers them
//! over OTLP/HTTP with retry and backoff.
//!
//! ```text
//! Sink --split by routing key ([`split`], [`route`])--> lane (signal, gateway)
//! tern-route: gateway set (static list, or tern-dns) -> Routes; re-splits
//!             the lanes of gateways that left (and `default`, from before)
//! tern-send-<host:port>: one per gateway, one keep-alive connection
//! ```
//!
//! Each sender runs a blocking loop: read the oldest batch of each signal's
//! lane, post it, and delete it from the queue only after a 2xx. A retryable
//! failure (408, 429, 5xx, network, timeout) waits per [`retry::Backoff`] and
//! tries the same batch again, so order is kept and nothing is skipped; a
//! permanent failure (other 4xx) or `max_elapsed_time` drops the batch with a
//! counted reason. A retry is never counted as a drop. A slow or dead gateway
//! holds back only its own lanes.
//!
//! When the set changes, the coordinator (`tern-route`) swaps the routing
//! table first (new batches go to the new set at once), stops the senders of
//! gateways that left, and then re-splits what was queued for them onto the
//! current set: each batch is decoded, routed and pushed again, then deleted
//! (or moved whole, atomically, when all of it goes to one gateway). A crash
//! in between may send a part twice, never lose one. With `failover_after`,
//! a sender whose gateway has failed that long marks it down (its keys go to
//! the next gateway in hash order), re-splits its own lanes, and probes the
//! gateway with an empty request until it answers.

pub mod dns;
pub mod retry;
pub mod route;
pub mod sender;
pub mod split;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{DnsConfig, ExportConfig, RetryConfig};
use crate::queue::{
    Batch, BatchId, DropReason, Dropped, Lane, NewBatch, Queue, QueueError, Signal,
};
use crate::telemetry::{Metrics, RateLimit, Shutdown};

use retry::Backoff;
use route::{Routes, Table};
use sender::Sender;
use split::Split;

/// How often the coordinator looks for lanes to re-split and updates the
/// per-gateway gauges.
const TICK: Duration = Duration::from_millis(250);

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
    sender::Client::new(&config.tls, config.timeout, false)?;
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
    stop: Arc<Shutdown>,
    handle: JoinHandle<()>,
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
        while !shutdown.is_triggered() {
            match self.updates.recv_timeout(TICK) {
                Ok(set) => self.apply(set),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    shutdown.sleep(TICK);
                }
            }
            self.reconcile();
            if gauges_at.elapsed() >= Duration::from_secs(1) {
                self.gauges();
                gauges_at = Instant::now();
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
        let stop = Arc::new(Shutdown::new());
        let gateway = Gateway {
            sender,
            destination: destination.to_string(),
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
            routes: self.routes.clone(),
            retry: self.config.retry,
            failover_after: self.config.failover_after,
            errors: RateLimit::new(Duration::from_secs(30)),
        };
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
    errors: RateLimit,
}

impl Gateway {
    fn run(self, shutdown: &Shutdown) {
        log::info!("Sender started endpoint={}", self.sender.endpoint());
        // The batch being retried and its backoff. A batch keeps its backoff
        // across waits; the queue is read again after each wait so that a batch
        // the size policy deleted meanwhile is not sent.
        let mut retrying: Option<(BatchId, Backoff)> = None;
        // Since when every attempt failed, for failover.
        let mut failing_since: Option<Instant> = None;
        let mut probe = Backoff::new(self.retry);
        while !shutdown.is_triggered() {
            if self.is_down() {
                // Failed over: keep the lanes empty (a push may have raced the
                // switch) and probe until the gateway answers.
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
                shutdown.sleep(delay);
                continue;
            }
            let listener = self.queue.listen();
            let mut busy = false;
            for signal in Signal::ALL {
                let lane = Lane::new(signal, &self.destination);
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
                        retrying = None;
                        break;
                    }
                    retrying = Some((batch.id, backoff));
                    // A failing gateway holds every signal back: they share it.
                    shutdown.sleep(delay);
                    break;
                }
                failing_since = None;
            }
            if !busy {
                // Wake on the next push, or check the stop flag every second.
                listener.wait_timeout(Duration::from_secs(1));
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
