//! The agent's lifecycle: open the queue, serve self telemetry, start the
//! sources and the exporter, and handle signals (SIGTERM/SIGINT stop, SIGHUP
//! reloads the config while the queue stays open).
//!
//! This is the wiring `tern run` calls; it lives in the library so that tests
//! reach it.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use smol::stream::StreamExt;

use crate::config::{Config, FullPolicy, QueueMode};
use crate::http::server::{self as http, Request, Response};
use crate::http::{Client, HttpError, TlsConfig};
use crate::lifecycle::Shutdown;
use crate::queue::{self, Queue, QueueError, Stats};
use crate::route::Routes;
use crate::sources::prometheus::schedule::{self, Scheduler, Targets};
use crate::sources::{files, journald, otlp, syslog, Sink};
use crate::telemetry::notify;
use crate::telemetry::{self, Metrics};

/// Any error that ends the agent, shown as one line on stderr.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A one-line summary of what a config will do, for `tern check`.
pub fn summary(config: &Config) -> String {
    let targets: usize = config.scrape.iter().map(|s| s.targets.len()).sum();
    let export = match (&config.export.dns, config.export.endpoints.as_slice()) {
        (Some(d), _) => format!("export to the gateways of {}", d.hostname),
        (None, [one]) => format!("export to {one}"),
        (None, []) => "no export endpoint (batches stay on disk)".to_string(),
        (None, many) => format!("export to {} gateways", many.len()),
    };
    let dropped: usize = config.scrape.iter().map(|s| s.dropped_targets).sum();
    let dropped = if dropped > 0 {
        format!(" ({dropped} dropped by relabel_configs)")
    } else {
        String::new()
    };
    format!(
        "{} scrape jobs, {targets} targets{dropped}, {export}, queue in {}",
        config.scrape.len(),
        config.agent.state_dir.display()
    )
}

fn queue_options(config: &Config) -> queue::Options {
    queue::Options {
        max_size: config.export.queue.max_size,
        full_policy: match config.export.queue.full_policy {
            FullPolicy::DropOldest => queue::FullPolicy::DropOldest,
            FullPolicy::DropNewest => queue::FullPolicy::DropNewest,
        },
        fsync: config.export.queue.fsync,
        memory_size: match config.export.queue.mode {
            QueueMode::Disk => None,
            QueueMode::MemoryFirst => Some(config.export.queue.memory_size),
        },
        ..queue::Options::default()
    }
}

/// Largest answer read from a running agent's `/api/v1/queue`: a table of
/// one line per lane.
const MAX_QUEUE_ANSWER: u64 = 1 << 20;

/// Prints the queue's backlog, for `tern queue`. A running agent holds the
/// queue's lock, so then the numbers come from its HTTP endpoint.
pub fn print_queue(config: &Config, out: &mut dyn Write) -> Result<(), Error> {
    match Queue::inspect(&config.agent.state_dir) {
        Ok(stats) => {
            out.write_all(render_stats(&stats).as_bytes())?;
            Ok(())
        }
        Err(QueueError::Locked { .. }) => {
            let url = format!("http://{}/api/v1/queue", config.agent.listen);
            let client = Client::new(&TlsConfig::default(), Duration::from_secs(5), false)?;
            let text = client
                .get(&url, &[], MAX_QUEUE_ANSWER)
                .and_then(|r| match r.status {
                    200..=299 => Ok(String::from_utf8_lossy(&r.body).into_owned()),
                    status => Err(HttpError::Http(format!("http status: {status}").into())),
                })
                .map_err(|e| format!("the queue is locked by a running agent, and asking it at {url} failed: {e}"))?;
            out.write_all(text.as_bytes())?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The backlog as a table: one line per lane and a total.
pub(crate) fn render_stats(stats: &Stats) -> String {
    let now = SystemTime::now();
    let mut out = format!(
        "{:<32} {:>10} {:>14} {:>12}\n",
        "LANE", "BATCHES", "BYTES", "OLDEST"
    );
    let age = |b: &queue::Backlog| {
        b.oldest_age(now)
            .map_or("-".to_string(), |a| format!("{}s", a.as_secs()))
    };
    for lane in &stats.lanes {
        let b = &lane.backlog;
        out.push_str(&format!(
            "{:<32} {:>10} {:>14} {:>12}\n",
            lane.lane.to_string(),
            b.batches,
            b.bytes,
            age(b)
        ));
    }
    let total = stats.total();
    out.push_str(&format!(
        "{:<32} {:>10} {:>14} {:>12}\n",
        "total",
        total.batches,
        total.bytes,
        age(&total)
    ));
    out
}

/// What `tern run` runs: until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), Error> {
    telemetry::init_logging(config.agent.log_level);
    // smol's reactor thread starts on first use and aborts the process if
    // the system refuses it; starting it first means a task or memory limit
    // stops tern at one of its own threads, with an error that says which.
    smol::block_on(async {});
    log::info!(
        "Starting tern version={} config={}",
        env!("CARGO_PKG_VERSION"),
        config.path.display()
    );
    let metrics = Arc::new(Metrics::new());
    metrics.set(
        "tern_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    std::fs::create_dir_all(&config.agent.state_dir).map_err(|e| {
        format!(
            "agent.state_dir: cannot create {}: {e}",
            config.agent.state_dir.display()
        )
    })?;
    let (queue, dropped) = Queue::open(&config.agent.state_dir, &queue_options(&config))?;
    Sink::new(queue.clone(), metrics.clone(), false).count_drops(&dropped);
    let stats = queue.stats();
    log::info!(
        "Queue opened state_dir={} batches={} bytes={}",
        config.agent.state_dir.display(),
        stats.total().batches,
        stats.total().bytes
    );
    let listener = std::net::TcpListener::bind(config.agent.listen).map_err(|e| {
        format!(
            "agent.listen: cannot listen on {}: {e}",
            config.agent.listen
        )
    })?;
    let listen: SocketAddr = listener.local_addr()?;
    let listener = smol::net::TcpListener::try_from(listener)?;

    let executor = Arc::new(smol::Executor::new());
    let ready = Arc::new(AtomicBool::new(false));
    let handler = telemetry_handler(queue.clone(), metrics.clone(), ready.clone());
    let shed_metrics = metrics.clone();
    let on_shed: http::OnShed = Arc::new(move |reason: http::Shed| {
        shed_metrics.inc(
            "tern_agent_connections_shed_total",
            &[("reason", reason.as_str())],
        );
    });
    executor
        .spawn(http::serve(
            executor.clone(),
            listener,
            handler,
            on_shed,
            http::Limits::default(),
        ))
        .detach();
    log::info!("Serving self metrics listen={listen}");
    // One routing table for every sink and the exporter, across reloads.
    let routes = Routes::default();
    let receiver_sink = |c: &Config| {
        Sink::new(queue.clone(), metrics.clone(), c.export.debug).with_routes(routes.clone())
    };
    let receiver = match &config.otlp_receiver {
        Some(_) => Some(otlp::Receiver::start(
            &executor,
            &config,
            receiver_sink(&config),
            metrics.clone(),
        )?),
        None => None,
    };

    let mut running = Some(Running::start(
        &config,
        queue.clone(),
        metrics.clone(),
        &routes,
        Targets::default(),
    )?);
    ready.store(true, Ordering::SeqCst);
    metrics.set("tern_ready", &[], 1.0);
    notify::ready(&summary(&config));
    // On the main loop's executor, so that a blocked main loop stops the pings.
    executor.spawn(notify::Watchdog::from_env().run()).detach();
    executor.spawn(notify::test_stall()).detach();

    let mut config = config;
    let signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])?;
    smol::block_on(executor.run(async {
        let mut signals = signals;
        while let Some(signal) = signals.next().await {
            match signal {
                Ok(async_signal::Signal::Hup) => {
                    let old = config.clone();
                    let (next, now_running) =
                        reload(&config, running.take(), &queue, &metrics, &routes);
                    config = next;
                    running = now_running;
                    if let Some(r) = &receiver {
                        r.reconfigure(&config, receiver_sink(&config));
                    }
                    if otlp::needs_restart(&old, &config) {
                        log::warn!("Reload: [receiver.otlp] listen, max_connections, read_timeout and adding or removing the section take effect after a restart");
                    }
                }
                Ok(s) => {
                    log::info!("Stopping signal={s:?}");
                    notify::stopping();
                    break;
                }
                Err(e) => log::warn!("Reading signals failed error={e}"),
            }
        }
    }));
    ready.store(false, Ordering::SeqCst);
    let started = Instant::now();
    // What was accepted is in the queue already; a scrape or a send still in
    // flight after these deadlines is abandoned (its data was not accepted,
    // or is sent again after the restart), so that stopping is quick.
    if let Some(mut running) = running {
        running.stop_within(SOURCES_STOP_WAIT, EXPORT_STOP_WAIT);
    }
    queue.flush()?;
    log::info!(
        "Stopped; queue flushed batches={} took_ms={}",
        queue.stats().total().batches,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// How long SIGTERM waits for the sources to put what they hold into the
/// queue: a scrape in flight is abandoned after it (its samples were never
/// accepted; the next start scrapes again).
const SOURCES_STOP_WAIT: Duration = Duration::from_millis(500);

/// How long SIGTERM waits for the senders: a request in flight is abandoned
/// after it and its batch sent again after the restart (at least once).
const EXPORT_STOP_WAIT: Duration = Duration::from_millis(250);

/// Waits for `handles` to finish until `deadline`; returns how many did not.
fn join_until(handles: Vec<JoinHandle<()>>, deadline: Instant) -> usize {
    let mut left = handles;
    loop {
        let (done, running): (Vec<_>, Vec<_>) = left.into_iter().partition(|h| h.is_finished());
        for h in done {
            let _ = h.join();
        }
        left = running;
        if left.is_empty() || Instant::now() >= deadline {
            return left.len();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Applies a new config on SIGHUP: sources and the exporter restart with it,
/// the queue stays open (its settings need a restart), scrape targets that
/// stay keep their staleness memory and removed ones get their markers. A
/// bad config is refused and the running one kept. Gives back the config in
/// force and what runs (nothing only if neither config could start).
fn reload(
    old: &Config,
    running: Option<Running>,
    queue: &Queue,
    metrics: &Arc<Metrics>,
    routes: &Routes,
) -> (Config, Option<Running>) {
    let new = match Config::load(&old.path) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("Reload refused, keeping the running config error={e}");
            metrics.inc("tern_config_reloads_total", &[("result", "failure")]);
            return (old.clone(), running);
        }
    };
    if new.agent.state_dir != old.agent.state_dir
        || new.agent.listen != old.agent.listen
        || new.export.queue != old.export.queue
    {
        log::warn!("Reload: agent.state_dir, agent.listen and [export.queue] changes take effect after a restart");
    }
    log::info!("Reloading config={}", new.path.display());
    let targets = running.map(Running::stop).unwrap_or_default();
    for job in &old.scrape {
        for label in schedule::self_metric_labels(job) {
            metrics.remove_matching("tern_scrape_up", "instance", &label);
        }
    }
    log::set_max_level(new.agent.log_level);
    match Running::start(&new, queue.clone(), metrics.clone(), routes, targets) {
        Ok(r) => {
            metrics.inc("tern_config_reloads_total", &[("result", "success")]);
            (new, Some(r))
        }
        Err(e) => {
            log::error!("Reload failed to start, restarting the old config error={e}");
            metrics.inc("tern_config_reloads_total", &[("result", "failure")]);
            let r = Running::start(
                old,
                queue.clone(),
                metrics.clone(),
                routes,
                Targets::default(),
            )
            .map_err(|e| log::error!("Restarting the old config failed error={e}"))
            .ok();
            (old.clone(), r)
        }
    }
}

/// The threads of one config generation: sources first, exporter second, so
/// that stopping sources first puts everything they hold into the queue.
struct Running {
    sources_stop: Arc<Shutdown>,
    scrapes: Scheduler,
    sources: Vec<JoinHandle<()>>,
    export_stop: Arc<Shutdown>,
    exporter: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts `config`'s sources and exporter; scrape targets that were in
    /// `previous` keep their staleness memory, removed ones get markers.
    fn start(
        config: &Config,
        queue: Queue,
        metrics: Arc<Metrics>,
        routes: &Routes,
        previous: Targets,
    ) -> Result<Running, Error> {
        let sources_stop = Arc::new(Shutdown::new());
        let export_stop = Arc::new(Shutdown::new());
        // Batches are stored in the codec they are sent in (start and reload).
        let zstd_level = match config.export.compression {
            crate::config::Compression::Zstd(level) => level,
            _ => 1,
        };
        crate::otlp::set_store_codec(config.export.compression.store_codec(), zstd_level);
        let sink = Sink::new(queue.clone(), metrics.clone(), config.export.debug)
            .with_routes(routes.clone());
        let resource: Vec<(String, String)> = config
            .resource
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut scrapes = Scheduler::start(
            &config.scrape,
            &resource,
            config.agent.scrape_worker_count(),
            sink.clone(),
            metrics.clone(),
            previous,
        )?;
        let mut sources = Vec::new();
        let mut spawned = Vec::new();
        if let Some(j) = &config.journald {
            spawned.push(journald::spawn(
                j,
                &resource,
                sink.clone(),
                metrics.clone(),
                sources_stop.clone(),
            ));
        }
        if !config.files.is_empty() {
            spawned.push(files::spawn(
                &config.files,
                &resource,
                sink.clone(),
                metrics.clone(),
                sources_stop.clone(),
            ));
        }
        if let Some(s) = &config.syslog_receiver {
            spawned.push(syslog::spawn(
                s,
                &resource,
                sink.clone(),
                metrics.clone(),
                sources_stop.clone(),
            ));
        }
        for h in spawned {
            match h {
                Ok(h) => sources.push(h),
                Err(e) => {
                    sources_stop.trigger();
                    scrapes.stop();
                    return Err(e.into());
                }
            }
        }
        let exporter = match crate::export::spawn(
            &config.export,
            queue,
            metrics,
            routes.clone(),
            export_stop.clone(),
        ) {
            Ok(e) => e,
            Err(e) => {
                sources_stop.trigger();
                scrapes.stop();
                return Err(e.into());
            }
        };
        let targets: usize = config.scrape.iter().map(|s| s.targets.len()).sum();
        log::info!(
            "Started scrape_jobs={} targets={targets} scrape_workers={}",
            config.scrape.len(),
            scrapes.workers()
        );
        Ok(Running {
            sources_stop,
            scrapes,
            sources,
            export_stop,
            exporter,
        })
    }

    /// Stops like [`Running::stop`], waiting at most `sources` for the
    /// sources and then `export` for the exporter; threads still busy after
    /// that are left to the process's exit.
    fn stop_within(&mut self, sources: Duration, export: Duration) {
        self.sources_stop.trigger();
        let mut threads = self.scrapes.stop();
        threads.append(&mut self.sources);
        let left = join_until(threads, Instant::now() + sources);
        if left > 0 {
            log::info!("Stopping without waiting for sources still busy threads={left}");
        }
        self.export_stop.trigger();
        let exporter = self.exporter.take().into_iter().collect();
        if join_until(exporter, Instant::now() + export) > 0 {
            log::info!("Stopping without waiting for requests in flight");
        }
    }

    /// Stops everything and waits for it; gives back the scrape targets for
    /// the next generation (a reload).
    fn stop(mut self) -> Targets {
        self.sources_stop.trigger();
        for h in self
            .scrapes
            .stop()
            .into_iter()
            .chain(self.sources.drain(..))
        {
            let _ = h.join();
        }
        self.export_stop.trigger();
        if let Some(h) = self.exporter.take() {
            let _ = h.join();
        }
        self.scrapes.into_targets()
    }
}

fn telemetry_handler(queue: Queue, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> http::Handler {
    Arc::new(move |req: Request| {
        let queue = queue.clone();
        let metrics = metrics.clone();
        let ready = ready.clone();
        Box::pin(async move {
            if req.method != "GET" && req.method != "HEAD" {
                return Response::text(405, "method not allowed\n");
            }
            match req.path.as_str() {
                "/metrics" => {
                    let stats = smol::unblock(move || queue.stats()).await;
                    update_queue_gauges(&metrics, &stats);
                    telemetry::update_process_gauges(&metrics);
                    Response {
                        status: 200,
                        content_type: "text/plain; version=0.0.4; charset=utf-8",
                        headers: Vec::new(),
                        body: metrics.render().into_bytes(),
                    }
                }
                "/-/healthy" => Response::text(200, "tern is healthy.\n"),
                "/-/ready" if ready.load(Ordering::SeqCst) => {
                    Response::text(200, "tern is ready.\n")
                }
                "/-/ready" => Response::text(503, "tern is not ready.\n"),
                "/api/v1/queue" => {
                    let stats = smol::unblock(move || queue.stats()).await;
                    Response::text(200, render_stats(&stats))
                }
                _ => Response::text(404, "not found\n"),
            }
        })
    })
}

fn update_queue_gauges(metrics: &Metrics, stats: &Stats) {
    let now = SystemTime::now();
    metrics.set("tern_queue_memory_bytes", &[], stats.memory_bytes as f64);
    metrics.set(
        "tern_queue_written_bytes_total",
        &[],
        stats.written_bytes as f64,
    );
    for signal in queue::Signal::ALL {
        let b = stats.signal(signal);
        let labels = [("signal", signal.as_str())];
        metrics.set("tern_queue_batches", &labels, b.batches as f64);
        metrics.set("tern_queue_bytes", &labels, b.bytes as f64);
        let raw = metrics.get("tern_queue_pushed_uncompressed_bytes_total", &labels);
        let compressed = metrics.get("tern_queue_pushed_bytes_total", &labels);
        if let (Some(raw), Some(compressed)) = (raw, compressed.filter(|&c| c > 0.0)) {
            metrics.set("tern_queue_compression_ratio", &labels, raw / compressed);
        }
        metrics.set(
            "tern_queue_oldest_age_seconds",
            &labels,
            b.oldest_age(now).map_or(0.0, |a| a.as_secs_f64()),
        );
    }
}
