//! Measures tern side by side with Prometheus 2.42 in agent mode, both scraping
//! the same targets at the same time: RSS, CPU per scraped sample and bytes
//! written to disk per byte accepted, next to the budgets in DESIGN.md.
//!
//! Run it with `scripts/bench` (installs Prometheus and node_exporter if missing,
//! builds tern in release, then runs this), or by hand:
//!
//! ```text
//! cargo build --release -p tern
//! cargo bench -p tern --bench scrape -- [--scenario node|100k|all] [--seconds N] [--warmup N] [--series N]
//! ```
//!
//! It prints a Markdown report (paste it into README.md) and writes it to
//! `target/bench/scrape.md`. Progress goes to stderr. `TERN_BIN=path` measures
//! another tern binary. Under `cargo test --benches` (no `--bench` argument) it
//! does nothing, as it takes minutes.
//!
//! # What runs
//!
//! For each scenario, in a temp dir under `std::env::temp_dir()`, all on loopback:
//!
//! - a target: `node` is one real node_exporter (about 500 series); `100k` is a
//!   synthetic exporter in this process with 100k series in families of 100,
//!   counters and gauges whose values change on every scrape;
//! - a sink that answers 200 to every POST and counts requests and bytes per path;
//! - tern (`target/release/tern run`, fsync on) and Prometheus
//!   (`--enable-feature=agent`, Debian's package), both scraping the target every
//!   5 s and sending to the sink (OTLP/HTTP gzip and remote-write snappy).
//!
//! Both agents run for a warm-up (default 20 s after each has scraped once), then
//! a measured window (default 60 s for `node`, 120 s for `100k`). Every child is
//! killed when the bench ends, panics, or is killed (see `agents`).
//!
//! # How each figure is measured
//!
//! - RSS: VmRSS from /proc/PID/status at the end of the window, and VmHWM (peak
//!   since start, warm-up included).
//! - CPU per scraped sample: utime+stime from /proc/PID/stat over the window (all
//!   threads; 10 ms resolution), divided by the samples scraped in the window.
//!   Samples scraped are successful scrapes x samples the target exposed per
//!   scrape, not counting the agents' own synthetic series (`up` and friends):
//!   for tern, the increase of `tern_scrapes_total{result="ok"}` x
//!   `tern_scrape_samples`; for Prometheus, the increase of
//!   `prometheus_remote_storage_samples_in_total` (samples appended to its WAL)
//!   minus its 5 synthetic series per scrape, with scrapes counted by
//!   `prometheus_target_interval_length_seconds_count{interval="5s"}`. The figure
//!   is end to end: it includes the agent's idle costs, which dominate at the
//!   node_exporter scale.
//! - Bytes written to disk per byte accepted: the increase of `write_bytes` in
//!   /proc/PID/io over the window, divided by the bytes accepted in it: for tern
//!   `tern_queue_pushed_bytes_total` (compressed batches accepted into its disk
//!   queue); for Prometheus the remote-write bodies the sink received (snappy),
//!   Prometheus having no counter of what it accepted into its WAL. The kernel
//!   counts a page in `write_bytes` each time the process turns it from clean to
//!   dirty, so a page fsynced and written again counts twice, while unsynced
//!   rewrites coalesce until writeback: what the storage device sees.

// A benchmark is a test program: it stops with a clear `expect` message when its
// own setup fails (a missing binary, an unbindable loopback socket).
#![allow(clippy::expect_used)]

// The parts live in benches/scrape/; a crate root looks for modules beside
// itself, so each gets its path.
#[path = "scrape/agents.rs"]
mod agents;
#[path = "scrape/expo.rs"]
mod expo;
#[path = "scrape/exporter.rs"]
mod exporter;
#[path = "scrape/http.rs"]
mod http;
#[path = "scrape/procfs.rs"]
mod procfs;
#[path = "scrape/sink.rs"]
mod sink;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agents::{Agent, Kind};
use exporter::Synthetic;
use procfs::ProcStats;
use sink::{Count, Sink};

/// The scrape interval both agents use, as Prometheus labels its interval metric.
const INTERVAL_LABEL: &str = "5s";
/// Series Prometheus 2.42 appends per scrape besides the target's: `up`,
/// `scrape_duration_seconds`, `scrape_samples_scraped`,
/// `scrape_samples_post_metric_relabeling` and `scrape_series_added`.
const PROMETHEUS_SYNTHETIC_SERIES: f64 = 5.0;
/// DESIGN.md budget: CPU per scraped sample, in microseconds.
const BUDGET_CPU_US: f64 = 0.5;
/// DESIGN.md budget: bytes written to disk per byte accepted.
const BUDGET_DISK_RATIO: f64 = 2.0;
/// How long both agents get to complete a first successful scrape.
const FIRST_SCRAPE_TIMEOUT: Duration = Duration::from_secs(120);

/// The usage text.
const USAGE: &str = "usage: cargo bench -p tern --bench scrape -- [--scenario node|100k|all] [--seconds N] [--warmup N] [--series N]

  --scenario  node: one node_exporter; 100k: the synthetic exporter; all (default): both
  --seconds   the measured window, for every scenario (default: node 60, 100k 120)
  --warmup    seconds both agents run before the window, after a first scrape (default 20)
  --series    series in the synthetic exporter (default 100000)";

/// What the bench is asked to do.
#[derive(Debug)]
struct Args {
    /// The scenarios to run, in order.
    scenarios: Vec<Scenario>,
    /// The measured window, overriding each scenario's default.
    seconds: Option<u64>,
    /// The warm-up before the window.
    warmup: u64,
    /// Series in the synthetic exporter.
    series: usize,
    /// Whether cargo ran us as a benchmark (`--bench`) rather than as a test
    /// (`cargo test --benches`), where the bench does nothing.
    bench: bool,
}

impl Args {
    /// Parses the arguments after the program name.
    fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            scenarios: vec![Scenario::Node, Scenario::Series],
            seconds: None,
            warmup: 20,
            series: 100_000,
            bench: false,
        };
        let mut args = args;
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |what: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or(format!("{what} needs a value"))
            };
            match flag.as_str() {
                "--bench" => parsed.bench = true,
                "--scenario" => {
                    parsed.scenarios = match value("--scenario")?.as_str() {
                        "node" => vec![Scenario::Node],
                        "100k" | "series" => vec![Scenario::Series],
                        "all" => vec![Scenario::Node, Scenario::Series],
                        other => {
                            return Err(format!(
                                "--scenario: expected node, 100k or all, got {other:?}"
                            ))
                        }
                    }
                }
                "--seconds" => parsed.seconds = Some(number(&value("--seconds")?, "--seconds")?),
                "--warmup" => parsed.warmup = number(&value("--warmup")?, "--warmup")?,
                "--series" => parsed.series = number(&value("--series")?, "--series")?,
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if parsed.seconds == Some(0) || parsed.series == 0 {
            return Err("--seconds and --series must be at least 1".into());
        }
        Ok(parsed)
    }
}

/// Parses a positive integer argument.
fn number<T: std::str::FromStr>(v: &str, flag: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: expected a whole number, got {v:?}"))
}

/// A benchmark scenario: what both agents scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// One real node_exporter.
    Node,
    /// The synthetic exporter (100k series unless `--series` says otherwise).
    Series,
}

impl Scenario {
    /// The default measured window.
    fn default_seconds(self) -> u64 {
        match self {
            Scenario::Node => 60,
            Scenario::Series => 120,
        }
    }

    /// A short name for temp dirs.
    fn slug(self) -> &'static str {
        match self {
            Scenario::Node => "node",
            Scenario::Series => "series",
        }
    }

    /// The DESIGN.md RSS budget for this scenario, in bytes, and how it reads there.
    fn rss_budget(self) -> (f64, &'static str) {
        match self {
            Scenario::Node => (8e6, "8 MB"),
            Scenario::Series => (32e6, "32 MB"),
        }
    }
}

/// Entry point: parses arguments, runs each scenario, prints and saves the report.
fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if !args.bench {
        // `cargo test --benches` runs bench binaries without --bench; this one
        // takes minutes, so it only runs under `cargo bench`.
        println!("scrape bench: skipped (run it with `cargo bench -p tern --bench scrape` or scripts/bench)");
        return;
    }
    let target_dir = target_dir();
    let tern_bin =
        std::env::var_os("TERN_BIN").map_or_else(|| target_dir.join("release/tern"), PathBuf::from);
    let missing = [
        (
            tern_bin.exists(),
            format!(
                "{} (build it: cargo build --release -p tern)",
                tern_bin.display()
            ),
        ),
        (
            Path::new(agents::PROMETHEUS_BIN).exists(),
            format!("{} (apt-get install prometheus)", agents::PROMETHEUS_BIN),
        ),
        (
            agents::node_exporter_bin().is_some(),
            "prometheus-node-exporter (apt-get install prometheus-node-exporter)".into(),
        ),
    ];
    for (present, what) in &missing {
        if !present {
            eprintln!("bench: missing {what}; scripts/bench installs and builds everything");
        }
    }
    if missing.iter().any(|(present, _)| !present) {
        std::process::exit(1);
    }

    let mut sections = Vec::new();
    for &scenario in &args.scenarios {
        sections.push(run(scenario, &args, &tern_bin));
    }
    let report = render_report(&args, &tern_bin, &sections);
    println!("{report}");
    let out = target_dir.join("bench/scrape.md");
    match std::fs::create_dir_all(target_dir.join("bench"))
        .and_then(|()| std::fs::write(&out, &report))
    {
        Ok(()) => eprintln!("bench: report written to {}", out.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", out.display()),
    }
}

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        },
        PathBuf::from,
    )
}

/// Polls `check` every 100 ms until it returns Some, for at most `timeout`.
///
/// # Panics
///
/// When `timeout` passes first, naming `what` it waited for.
fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "bench: timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory under `std::env::temp_dir()`, removed on drop (kept, and
/// named, when the bench panics).
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory for `name`.
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tern-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the bench's temp dir");
        TempDir(dir)
    }

    /// Its path.
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    /// Removes the directory, or keeps it and says where when panicking.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("bench: kept {} for a look", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// An agent's counters at one moment.
#[derive(Debug)]
struct Snapshot {
    /// From /proc.
    proc: ProcStats,
    /// Its self metrics text.
    metrics: String,
}

impl Snapshot {
    /// Reads `agent` now.
    ///
    /// # Panics
    ///
    /// If its /proc entry is gone (it died between checks), or its self
    /// metrics do not answer within 20 s.
    fn take(agent: &Agent) -> Snapshot {
        let proc = procfs::read(agent.process.pid()).unwrap_or_else(|| {
            panic!(
                "{} is gone:\n{}",
                agent.name(),
                agent.process.stderr_tail(30)
            )
        });
        // The self metrics are the other half of every figure: wait for them
        // rather than compute from an empty page.
        let metrics = wait_until(
            Duration::from_secs(20),
            &format!("{}'s /metrics", agent.name()),
            || Some(agent.metrics()).filter(|m| !m.is_empty()),
        );
        Snapshot { proc, metrics }
    }

    /// The sum of the series `name` with `labels` (0 when absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        expo::sum(&self.metrics, name, labels).unwrap_or(0.0)
    }
}

/// Everything measured for one agent in one scenario.
#[derive(Debug)]
struct Figures {
    /// Which agent.
    kind: Kind,
    /// VmRSS at the start and end of the window, the largest VmRSS seen in it,
    /// and VmHWM at its end; bytes.
    rss_start: u64,
    rss_end: u64,
    rss_window_max: u64,
    hwm: u64,
    /// VmRSS read about once a second through the window, in bytes.
    rss_trace: Vec<u64>,
    /// Apparent size of its disk buffer (tern's state dir, Prometheus's WAL
    /// dir) at the end of the window, in bytes.
    buffer_size: u64,
    /// CPU seconds spent in the window.
    cpu_seconds: f64,
    /// Successful scrapes in the window.
    scrapes: f64,
    /// Samples the target exposed per scrape, as this agent counted them.
    samples_per_scrape: f64,
    /// `write_bytes` increase in the window.
    disk_written: u64,
    /// Bytes accepted in the window (see the crate docs for each agent's meaning).
    accepted_bytes: f64,
    /// What the sink received from this agent in the window.
    sent: Count,
    /// Observations worth a line under the table (errors, mismatches, backlog).
    notes: Vec<String>,
}

impl Figures {
    /// Samples scraped in the window.
    fn samples(&self) -> f64 {
        self.scrapes * self.samples_per_scrape
    }

    /// CPU microseconds per scraped sample.
    fn cpu_us_per_sample(&self) -> Option<f64> {
        (self.samples() > 0.0).then(|| self.cpu_seconds * 1e6 / self.samples())
    }

    /// Disk bytes written per byte accepted.
    fn disk_per_accepted(&self) -> Option<f64> {
        (self.accepted_bytes > 0.0).then(|| self.disk_written as f64 / self.accepted_bytes)
    }

    /// Disk bytes written per scraped sample.
    fn disk_per_sample(&self) -> Option<f64> {
        (self.samples() > 0.0).then(|| self.disk_written as f64 / self.samples())
    }
}

/// The results of one scenario.
#[derive(Debug)]
struct Section {
    scenario: Scenario,
    /// A one-line description of the target.
    target: String,
    /// Warm-up and window lengths actually used, in seconds.
    warmup: u64,
    window: f64,
    /// Prometheus first, then tern.
    prometheus: Figures,
    tern: Figures,
}

/// Runs one scenario: target, sink, both agents, warm-up, window; returns the figures.
fn run(scenario: Scenario, args: &Args, tern_bin: &Path) -> Section {
    let window = Duration::from_secs(args.seconds.unwrap_or_else(|| scenario.default_seconds()));
    eprintln!(
        "bench: scenario {} ({}s window after {}s warm-up)",
        scenario.slug(),
        window.as_secs(),
        args.warmup
    );
    // Declaration order is drop order reversed: the agents go first, the
    // targets and sink next, the temp dir last.
    let dir = TempDir::new(scenario.slug());
    let sink = Sink::start();
    let (_node, synthetic, target) = match scenario {
        Scenario::Node => {
            let (process, addr) = agents::node_exporter(dir.path());
            (Some(process), None, addr)
        }
        Scenario::Series => {
            let s = Synthetic::start(args.series);
            let addr = s.addr();
            (None, Some(s), addr)
        }
    };
    let mut agents = [
        Agent::prometheus(dir.path(), target, sink.addr()),
        Agent::tern(tern_bin, dir.path(), target, sink.addr()),
    ];
    eprintln!(
        "bench: target {target}, sink {}, prometheus pid {} web {}, tern pid {} web {}",
        sink.addr(),
        agents[0].process.pid(),
        agents[0].web,
        agents[1].process.pid(),
        agents[1].web
    );

    wait_first_scrapes(&mut agents);
    eprintln!(
        "bench: both agents scraped once; warming up for {}s",
        args.warmup
    );
    watch(&mut agents, Duration::from_secs(args.warmup));

    let before = [Snapshot::take(&agents[0]), Snapshot::take(&agents[1])];
    let sink_before = [
        sink.count(sink::REMOTE_WRITE_PATH),
        sink.count(sink::OTLP_METRICS_PATH),
    ];
    let served_before = synthetic
        .as_ref()
        .map(|s| [s.served("Prometheus"), s.served("tern")]);
    let started = Instant::now();
    eprintln!("bench: measuring for {}s", window.as_secs());
    let [prometheus_rss, tern_rss] = watch(&mut agents, window);
    let after = [Snapshot::take(&agents[0]), Snapshot::take(&agents[1])];
    let elapsed = started.elapsed().as_secs_f64();
    let sink_after = [
        sink.count(sink::REMOTE_WRITE_PATH),
        sink.count(sink::OTLP_METRICS_PATH),
    ];
    let served_after = synthetic
        .as_ref()
        .map(|s| [s.served("Prometheus"), s.served("tern")]);

    let sent = |i: usize| Count {
        requests: sink_after[i].requests - sink_before[i].requests,
        bytes: sink_after[i].bytes - sink_before[i].bytes,
    };
    let mut prometheus = prometheus_figures(&before[0], &after[0], prometheus_rss, sent(0));
    let mut tern = tern_figures(&before[1], &after[1], tern_rss, sent(1));
    prometheus.buffer_size = dir_size(&agents[0].data_dir);
    tern.buffer_size = dir_size(&agents[1].data_dir);

    // Cross-checks: both agents should count the same samples per scrape, and,
    // for the synthetic target, exactly what it served.
    let expected = synthetic.as_ref().map(|s| s.series as f64);
    let reference = expected.unwrap_or(prometheus.samples_per_scrape);
    if reference > 0.0 && (tern.samples_per_scrape - reference).abs() > reference * 0.02 {
        tern.notes.push(format!(
            "tern counted {} samples per scrape, {} {}",
            tern.samples_per_scrape,
            if expected.is_some() {
                "the exporter served"
            } else {
                "Prometheus counted"
            },
            reference
        ));
    }
    if let Some(expected) = expected {
        if (prometheus.samples_per_scrape - expected).abs() > expected * 0.02 {
            prometheus.notes.push(format!(
                "Prometheus counted {:.0} samples per scrape, the exporter served {expected}",
                prometheus.samples_per_scrape
            ));
        }
    }
    if let (Some(b), Some(a)) = (served_before, served_after) {
        for (i, figures) in [&mut prometheus, &mut tern].into_iter().enumerate() {
            let served = a[i].scrapes - b[i].scrapes;
            figures.notes.push(format!(
                "exporter served it {served} scrapes ({:.1} MB) in the window; it counted {} successful",
                (a[i].bytes - b[i].bytes) as f64 / 1e6,
                figures.scrapes
            ));
        }
    }
    log_notes(&agents[0], &mut prometheus.notes, |l| {
        l.contains("level=warn") || l.contains("level=error")
    });
    log_notes(&agents[1], &mut tern.notes, |l| {
        l.starts_with("WARN") || l.starts_with("ERROR")
    });

    let target = match &synthetic {
        Some(s) => format!(
            "the synthetic exporter ({} series, values change every scrape)",
            s.series
        ),
        None => format!(
            "one node_exporter ({:.0} samples per scrape)",
            prometheus.samples_per_scrape
        ),
    };
    Section {
        scenario,
        target,
        warmup: args.warmup,
        window: elapsed,
        prometheus,
        tern,
    }
}

/// Waits until both agents have completed a successful scrape.
///
/// # Panics
///
/// If an agent exits, or either has not scraped within [`FIRST_SCRAPE_TIMEOUT`];
/// the message carries both agents' stderr.
fn wait_first_scrapes(agents: &mut [Agent; 2]) {
    let deadline = Instant::now() + FIRST_SCRAPE_TIMEOUT;
    loop {
        check_alive(agents);
        let scraped = agents.iter().all(|a| {
            let m = a.metrics();
            match a.kind {
                Kind::Tern => {
                    expo::sum(&m, "tern_scrapes_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0
                }
                Kind::Prometheus => {
                    expo::sum(&m, "prometheus_remote_storage_samples_in_total", &[]).unwrap_or(0.0)
                        > 0.0
                }
            }
        });
        if scraped {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bench: no successful scrape by both agents within {FIRST_SCRAPE_TIMEOUT:?}\n--- prometheus ---\n{}\n--- tern ---\n{}\n--- tern metrics ---\n{}",
            agents[0].process.stderr_tail(20),
            agents[1].process.stderr_tail(20),
            agents[1].metrics()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Lets the agents run for `duration`, checking once a second that both are
/// alive; returns each one's VmRSS, read once a second.
fn watch(agents: &mut [Agent; 2], duration: Duration) -> [Vec<u64>; 2] {
    let end = Instant::now() + duration;
    let mut trace = [Vec::new(), Vec::new()];
    loop {
        check_alive(agents);
        for (i, a) in agents.iter().enumerate() {
            if let Some(p) = procfs::read(a.process.pid()) {
                trace[i].push(p.rss);
            }
        }
        let now = Instant::now();
        if now >= end {
            return trace;
        }
        std::thread::sleep((end - now).min(Duration::from_secs(1)));
    }
}

/// Panics, with its stderr, if either agent has exited.
fn check_alive(agents: &mut [Agent; 2]) {
    for a in agents.iter_mut() {
        if let Some(status) = a.process.exited() {
            panic!(
                "bench: {} exited with {status}:\n{}",
                a.name(),
                a.process.stderr_tail(40)
            );
        }
    }
}

/// Adds a note with the number of warning and error lines in the agent's
/// stderr, and the first few of them.
fn log_notes(agent: &Agent, notes: &mut Vec<String>, is_problem: impl Fn(&str) -> bool) {
    let text = agent.process.stderr_text();
    let lines: Vec<&str> = text.lines().filter(|l| is_problem(l)).collect();
    if lines.is_empty() {
        return;
    }
    let mut note = format!(
        "{} warning or error lines in its log over the whole run, first:",
        lines.len()
    );
    for l in lines.iter().take(3) {
        let _ = write!(
            note,
            " `{}`",
            l.chars().take(200).collect::<String>().replace('`', "'")
        );
    }
    notes.push(note);
}

/// The common part of both agents' figures, from /proc.
fn proc_figures(
    kind: Kind,
    before: &Snapshot,
    after: &Snapshot,
    rss_trace: Vec<u64>,
    sent: Count,
) -> Figures {
    Figures {
        kind,
        rss_start: before.proc.rss,
        rss_end: after.proc.rss,
        rss_window_max: rss_trace.iter().copied().fold(after.proc.rss, u64::max),
        hwm: after.proc.hwm,
        rss_trace,
        buffer_size: 0,
        cpu_seconds: after.proc.cpu_seconds - before.proc.cpu_seconds,
        scrapes: 0.0,
        samples_per_scrape: 0.0,
        disk_written: after
            .proc
            .write_bytes
            .saturating_sub(before.proc.write_bytes),
        accepted_bytes: 0.0,
        sent,
        notes: Vec::new(),
    }
}

/// tern's figures: scrapes and samples from `tern_scrapes_total` and
/// `tern_scrape_samples`, accepted bytes from `tern_queue_pushed_bytes_total`.
fn tern_figures(before: &Snapshot, after: &Snapshot, rss_trace: Vec<u64>, sent: Count) -> Figures {
    let mut f = proc_figures(Kind::Tern, before, after, rss_trace, sent);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let job = ("job", "bench");
    f.scrapes = delta("tern_scrapes_total", &[job, ("result", "ok")]);
    f.samples_per_scrape = after.value("tern_scrape_samples", &[job]);
    f.accepted_bytes = delta("tern_queue_pushed_bytes_total", &[("signal", "metrics")]);
    let failed = delta("tern_scrapes_total", &[job]) - f.scrapes;
    if failed > 0.0 {
        f.notes
            .push(format!("{failed} failed scrapes in the window"));
    }
    let pushed = delta("tern_queue_pushed_points_total", &[("signal", "metrics")]);
    let exported = delta("tern_export_sent_points_total", &[("signal", "metrics")]);
    let dropped = delta("tern_dropped_points_total", &[]);
    let backlog = after.value("tern_queue_batches", &[("signal", "metrics")]);
    f.notes.push(format!(
        "in the window it queued {pushed} points and the sink acknowledged {exported}; {backlog} batches queued at the end"
    ));
    if dropped > 0.0 {
        f.notes.push(format!(
            "{dropped} points dropped in the window (tern_dropped_points_total)"
        ));
    }
    if f.scrapes > 0.0 && f.sent.requests == 0 {
        f.notes
            .push("nothing reached the sink in the window".into());
    }
    f
}

/// Prometheus's figures: scrapes from `prometheus_target_interval_length_seconds_count`,
/// samples from `prometheus_remote_storage_samples_in_total`, accepted bytes
/// from the sink's count of remote-write bodies.
fn prometheus_figures(
    before: &Snapshot,
    after: &Snapshot,
    rss_trace: Vec<u64>,
    sent: Count,
) -> Figures {
    let mut f = proc_figures(Kind::Prometheus, before, after, rss_trace, sent);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    f.scrapes = delta(
        "prometheus_target_interval_length_seconds_count",
        &[("interval", INTERVAL_LABEL)],
    );
    let appended = delta("prometheus_remote_storage_samples_in_total", &[]);
    if f.scrapes > 0.0 {
        f.samples_per_scrape = appended / f.scrapes - PROMETHEUS_SYNTHETIC_SERIES;
    }
    f.accepted_bytes = f.sent.bytes as f64;
    let pending = after.value("prometheus_remote_storage_samples_pending", &[]);
    let failed = delta("prometheus_remote_storage_samples_failed_total", &[]);
    f.notes.push(format!(
        "{pending} samples pending for remote write at the end"
    ));
    if failed > 0.0 {
        f.notes
            .push(format!("{failed} samples failed to send in the window"));
    }
    f
}

/// The whole Markdown report: a header saying where and how it was measured,
/// then one section per scenario.
fn render_report(args: &Args, tern_bin: &Path, sections: &[Section]) -> String {
    let mut out = String::new();
    let prometheus_version = version_of(agents::PROMETHEUS_BIN, &["--version"]);
    let cmdline: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let _ = writeln!(out, "## tern vs Prometheus agent: scrape benchmark\n");
    let _ = writeln!(
        out,
        "Measured by `agent/benches/scrape.rs` (`scripts/bench{}{}`) on {}: {}, {} CPUs, Linux {}. \
         tern {} ({}), Prometheus {} in agent mode and node_exporter {} (Debian packages). \
         Both agents run at the same time, scrape the same target every 5 s and send to the same \
         loopback sink (tern: OTLP/HTTP gzip with `fsync = true`; Prometheus: remote-write). \
         Figures cover the measured window, after a {} s warm-up.\n",
        if cmdline.is_empty() { "" } else { " " },
        cmdline.join(" "),
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "an unknown date".into()),
        cpu_model(),
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |s| s.trim().to_string()),
        version_of(tern_bin.to_str().unwrap_or("tern"), &["--version"]),
        if tern_bin.ends_with("release/tern") {
            "release build".to_string()
        } else {
            format!("`{}`", tern_bin.display())
        },
        prometheus_version,
        agents::node_exporter_bin().map_or_else(|| "?".into(), |b| version_of(b, &["--version"])),
        args.warmup,
    );
    for s in sections {
        render_section(&mut out, s, &prometheus_version);
    }
    let _ = writeln!(
        out,
        "How measured: RSS from /proc/PID/status (VmRSS at the end of the window; VmHWM is the peak \
         since start). CPU is utime+stime from /proc/PID/stat over the window (10 ms resolution) divided \
         by the samples scraped in it: successful scrapes x samples the target exposed, without each \
         agent's own `up`-style series (tern: `tern_scrapes_total{{result=\"ok\"}}` x `tern_scrape_samples`; \
         Prometheus: `prometheus_remote_storage_samples_in_total` less 5 per scrape, scrapes from \
         `prometheus_target_interval_length_seconds_count`). It is end to end and includes idle costs. \
         Disk is the growth of `write_bytes` in /proc/PID/io, which counts a page each time the \
         process turns it from clean to dirty: an fsynced page written again counts again, while \
         unsynced rewrites of a page coalesce until writeback, as they do on the device. Bytes accepted are, for tern, \
         `tern_queue_pushed_bytes_total` (gzip batches into its queue), and for Prometheus the \
         remote-write bodies (snappy) the sink received, as it has no counter for its WAL input."
    );
    out
}

/// Appends one scenario's table and notes.
fn render_section(out: &mut String, s: &Section, prometheus_version: &str) {
    let (p, t) = (&s.prometheus, &s.tern);
    let (rss_budget, rss_budget_text) = s.scenario.rss_budget();
    let _ = writeln!(
        out,
        "### {}, 5 s interval\n\n{:.0} s window after {} s warm-up.\n",
        capitalize(&s.target),
        s.window,
        s.warmup
    );
    let _ = writeln!(
        out,
        "| figure | Prometheus {prometheus_version} agent | tern | tern budget (DESIGN.md) |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | --- |");
    let mut row = |figure: &str, prom: String, tern: String, budget: String| {
        let _ = writeln!(out, "| {figure} | {prom} | {tern} | {budget} |");
    };
    row(
        "RSS at end of window (VmRSS)",
        mb(p.rss_end as f64),
        mb(t.rss_end as f64),
        verdict(rss_budget_text, t.rss_end as f64 <= rss_budget),
    );
    row(
        "peak RSS since start (VmHWM)",
        mb(p.hwm as f64),
        mb(t.hwm as f64),
        verdict(rss_budget_text, t.hwm as f64 <= rss_budget),
    );
    row(
        "RSS change over the window (max seen)",
        growth(p),
        growth(t),
        String::new(),
    );
    row(
        "CPU per scraped sample, end to end",
        opt(p.cpu_us_per_sample(), |v| format!("{v:.2} us")),
        opt(t.cpu_us_per_sample(), |v| format!("{v:.2} us")),
        t.cpu_us_per_sample().map_or_else(
            || "0.5 us".into(),
            |v| verdict("0.5 us", v <= BUDGET_CPU_US),
        ),
    );
    row(
        "CPU time in window",
        format!("{:.2} s", p.cpu_seconds),
        format!("{:.2} s", t.cpu_seconds),
        String::new(),
    );
    row(
        "samples scraped in window",
        samples(p),
        samples(t),
        String::new(),
    );
    row(
        "disk written in window (write_bytes)",
        bytes(p.disk_written as f64),
        bytes(t.disk_written as f64),
        String::new(),
    );
    row(
        "bytes accepted in window",
        format!("{} (remote-write bodies)", bytes(p.accepted_bytes)),
        format!("{} (into the queue, gzip)", bytes(t.accepted_bytes)),
        String::new(),
    );
    row(
        "disk bytes written per byte accepted",
        opt(p.disk_per_accepted(), |v| format!("{v:.2}")),
        opt(t.disk_per_accepted(), |v| format!("{v:.2}")),
        t.disk_per_accepted().map_or_else(
            || "at most 2".into(),
            |v| verdict("at most 2", v <= BUDGET_DISK_RATIO),
        ),
    );
    row(
        "disk bytes written per sample",
        opt(p.disk_per_sample(), |v| format!("{v:.1} B")),
        opt(t.disk_per_sample(), |v| format!("{v:.1} B")),
        String::new(),
    );
    row(
        "size of its disk buffer at the end",
        bytes(p.buffer_size as f64),
        bytes(t.buffer_size as f64),
        String::new(),
    );
    row(
        "sent to the sink in window",
        format!(
            "{} in {} requests",
            bytes(p.sent.bytes as f64),
            p.sent.requests
        ),
        format!(
            "{} in {} requests",
            bytes(t.sent.bytes as f64),
            t.sent.requests
        ),
        String::new(),
    );
    let _ = writeln!(out);
    for f in [p, t] {
        let who = match f.kind {
            Kind::Prometheus => "Prometheus",
            Kind::Tern => "tern",
        };
        let _ = writeln!(
            out,
            "- {who}: VmRSS through the window: {}",
            trace(&f.rss_trace)
        );
        for note in &f.notes {
            let _ = writeln!(out, "- {who}: {note}");
        }
    }
    let _ = writeln!(out);
}

/// "8 MB: met" or "8 MB: missed".
fn verdict(budget: &str, met: bool) -> String {
    format!("{budget}: {}", if met { "met" } else { "**missed**" })
}

/// Bytes as decimal megabytes, as DESIGN.md writes them.
fn mb(b: f64) -> String {
    format!("{:.1} MB", b / 1e6)
}

/// Bytes in B, kB or MB (decimal).
fn bytes(b: f64) -> String {
    if b >= 1e6 {
        mb(b)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// VmRSS start to end of the window, and the largest seen in it.
fn growth(f: &Figures) -> String {
    let change = (f.rss_end as f64 - f.rss_start as f64) / 1e6;
    format!("{change:+.1} MB (max {})", mb(f.rss_window_max as f64))
}

/// About eight evenly spaced readings of an RSS trace, in MB.
fn trace(rss: &[u64]) -> String {
    let Some(&last) = rss.last() else {
        return "n/a".into();
    };
    let step = (rss.len() / 8).max(1);
    let mut picked: Vec<u64> = rss.iter().copied().step_by(step).collect();
    // step_by took indices 0, step, 2 step...; add the last reading if it was skipped.
    if (picked.len() - 1) * step != rss.len() - 1 {
        picked.push(last);
    }
    let text: Vec<String> = picked
        .iter()
        .map(|&b| format!("{:.1}", b as f64 / 1e6))
        .collect();
    format!("{} MB (about every {} s)", text.join(", "), step)
}

/// The apparent size of the files under `dir`, recursively; 0 if unreadable.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// "24 x 100000 = 2400000".
fn samples(f: &Figures) -> String {
    format!(
        "{:.0} x {:.0} = {:.0}",
        f.scrapes,
        f.samples_per_scrape,
        f.samples()
    )
}

/// Formats a figure that may be undefined (nothing scraped or accepted).
fn opt(v: Option<f64>, show: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".into(), show)
}

/// `s` with its first letter in upper case.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// The CPU model from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The first line `program args` prints (stdout, else stderr), if it runs.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// The version a program reports: the first token that starts with a digit in
/// the first line of `program --version`.
fn version_of(program: &str, args: &[&str]) -> String {
    command_line(program, args)
        .and_then(|l| {
            l.split(|c: char| c.is_whitespace() || c == ',')
                .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}
