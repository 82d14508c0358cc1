//! The `tern-route` thread: owns the gateway set (a static list, or the
//! answers of the `tern-dns` resolver thread), starts and stops one sender
//! per gateway, publishes the routing table, re-splits the lanes of gateways
//! that left, and keeps the per-gateway gauges.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{DnsConfig, ExportConfig};
use crate::lifecycle::{RateLimit, Shutdown};
use crate::queue::Queue;
use crate::route::{Routes, Table};
use crate::telemetry::Metrics;

use super::bandwidth::Bandwidth;
use super::dns;
use super::gateway::{Gateway, Stop};
use super::resplit::resplit;
use super::sender::Sender;

/// How often the coordinator applies gateway set changes, looks for lanes to
/// re-split and updates the per-gateway gauges.
const TICK: Duration = Duration::from_millis(250);

pub(super) fn spawn_dns(
    config: DnsConfig,
    updates: mpsc::Sender<Vec<String>>,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    crate::lifecycle::spawn("tern-dns".into(), "the DNS watcher thread", move || {
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
pub(super) struct Running {
    stop: Arc<Stop>,
    handle: JoinHandle<()>,
}

/// The `tern-route` thread: owns the gateway set and the senders.
pub(super) struct Coordinator {
    pub(super) config: ExportConfig,
    pub(super) queue: Queue,
    pub(super) metrics: Arc<Metrics>,
    pub(super) routes: Routes,
    pub(super) senders: BTreeMap<String, Running>,
    pub(super) updates: mpsc::Receiver<Vec<String>>,
    pub(super) dns: Option<JoinHandle<()>>,
    pub(super) errors: RateLimit,
    /// `max_bandwidth`, shared by every sender.
    pub(super) bandwidth: Arc<Bandwidth>,
}

impl Coordinator {
    pub(super) fn run(mut self, shutdown: &Shutdown) {
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

    pub(super) fn start_sender(&mut self, destination: &str) {
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
            self.bandwidth.clone(),
        );
        let name = format!("tern-send-{}", host_port(destination));
        let thread_stop = stop.clone();
        let what = format!("the sender thread of {destination}");
        match crate::lifecycle::spawn(name, &what, move || gateway.run(&thread_stop)) {
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
