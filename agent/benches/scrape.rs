//! Measures tern side by side with Prometheus 2.42 in agent mode and vmagent
//! 1.79, all three scraping the same targets at the same time: RSS, threads,
//! CPU per scraped sample and bytes written to disk per byte accepted, next to
//! tern's figures before issue 13 and its budgets (DESIGN.md, issue 13).
//!
//! Run it with `scripts/bench` (installs Prometheus, vmagent and node_exporter
//! if missing, builds tern in release, then runs this), or by hand:
//!
//! ```text
//! cargo build --release -p tern
//! cargo bench -p tern --bench scrape -- [--scenario node|100k|targets|1m|all] [--seconds N] [--warmup N]
//!     [--series N] [--targets N] [--per-target N] [--big-series N] [--agents LIST]
//! ```
//!
//! It prints a Markdown report (paste it into README.md) and writes it to
//! `target/bench/scrape.md`. Progress goes to stderr. `TERN_BIN=path` measures
//! another tern binary; `TERN_BENCH_COMPRESSION=zstd` sets tern's export codec
//! and `TERN_BENCH_QUEUE_MODE=memory_first` its queueing; `TERN_BENCH_RULES=typical`
//! (or `half`) gives all three agents the same `metric_relabel_configs` (see `agents`).
//! Under `cargo test --benches` (no `--bench` argument) it
//! does nothing, as it takes minutes.
//!
//! # What runs
//!
//! For each scenario, in a temp dir under `std::env::temp_dir()`, all on loopback:
//!
//! - the targets (`exporter`):
//!   - `node`: one real node_exporter (about 500 series), every 5 s;
//!   - `100k`: one synthetic target with 100k series in families of 100,
//!     counters and gauges whose values change on every scrape, every 5 s;
//!   - `targets`: 2,000 synthetic targets of 100 series each, one loopback port
//!     each (so each is its own `instance`), every series labelled with its
//!     target's number, every 15 s; all in one job of each agent (tern's
//!     `[[scrape]] targets`, the others' `static_configs`);
//!   - `1m`: one synthetic target with 1,000,000 series (a body of about
//!     110 MB), every 15 s, with the body size limit raised to 256 MiB in
//!     all three (tern `body_size_limit = "256MiB"`, Prometheus
//!     `body_size_limit: 256MB`, which it reads in base 2, vmagent
//!     `-promscrape.maxScrapeSize=256MiB`); the other scenarios use 64 MiB;
//! - a sink that answers 200 to every POST and counts requests and bytes per path;
//! - tern (`target/release/tern run`, fsync on), Prometheus
//!   (`--enable-feature=agent`) and vmagent (flags in `agents`), the last two
//!   Debian's packages, scraping the targets with a timeout of 4 s at a 5 s
//!   interval and 10 s at 15 s, and sending to the sink (OTLP/HTTP gzip, and
//!   remote-write snappy).
//!
//! The agents run for a warm-up (default 20 s after each has scraped once, and
//! at least an interval and 3 s, so that every target has been scraped), then
//! a measured window (default 60 s, 120 s for `100k`). Every child is
//! killed when the bench ends, panics, or is killed (see `agents`).
//!
//! # How each figure is measured
//!
//! - RSS: VmRSS from /proc/PID/status at the end of the window, and VmHWM (peak
//!   since start, warm-up included).
//! - Threads: the `Threads` line of /proc/PID/status, read once a second; the
//!   most seen in the window (and at its ends), and the count at its end.
//! - CPU per scraped sample: utime+stime from /proc/PID/stat over the window (all
//!   threads; 10 ms resolution), divided by the samples scraped in the window:
//!   what the targets exposed in successful scrapes, not counting the agents'
//!   own synthetic series (`up` and friends) (see `figures`):
//!   - tern: for each target, the increase of `tern_scrapes_total{result="ok"}`
//!     x its `tern_scrape_samples`;
//!   - Prometheus: the increase of `prometheus_remote_storage_samples_in_total`
//!     (samples appended to its WAL) minus its 5 synthetic series per scrape.
//!     Scrapes are that increase divided by (series per target + 5) when the
//!     bench serves the targets, all alike; for node_exporter they are the
//!     increase of `prometheus_target_interval_length_seconds_count`, which
//!     counts the start of a target's every scrape but its first, so it can
//!     differ by one from the scrapes whose samples were appended in the
//!     window (which matters at 1M series, with a few scrapes a window);
//!   - vmagent: the increase of `vm_promscrape_scraped_samples_sum`, the sum of
//!     its histogram of samples parsed per scrape: target samples only (its
//!     own `up`-style series are added after it is updated), 0 for a failed
//!     scrape; scrapes are the increase of its `_count` less
//!     `vm_promscrape_scrapes_failed_total`. (`vmagent_remotewrite_*` counts
//!     rows after the auto series are added, and blocks, not scrapes.)
//!
//!   The figure is end to end: it includes the agent's idle costs, which
//!   dominate at the node_exporter scale.
//! - Bytes written to disk per byte accepted: the increase of `write_bytes` in
//!   /proc/PID/io over the window, divided by the bytes accepted in it: for tern
//!   `tern_queue_pushed_bytes_total` (compressed batches accepted into its disk
//!   queue); for Prometheus and vmagent the remote-write bodies the sink
//!   received (snappy), neither having a counter of what it accepted into its
//!   WAL or queue. The kernel counts a page in `write_bytes` each time the
//!   process turns it from clean to dirty, so a page fsynced and written again
//!   counts twice, while unsynced rewrites coalesce until writeback: what the
//!   storage device sees.

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
#[path = "scrape/figures.rs"]
mod figures;
#[path = "scrape/http.rs"]
mod http;
#[path = "scrape/procfs.rs"]
mod procfs;
#[path = "scrape/report.rs"]
mod report;
#[path = "scrape/sink.rs"]
mod sink;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agents::{Agent, Job, Kind};
use exporter::{Fleet, Served, Synthetic};
use figures::{Figures, Snapshot, Trace};
use sink::{Count, Sink};

/// How long the agents get to complete a first successful scrape.
const FIRST_SCRAPE_TIMEOUT: Duration = Duration::from_secs(120);

/// The usage text.
const USAGE: &str = "usage: cargo bench -p tern --bench scrape -- [--scenario node|100k|targets|1m|all] [--seconds N] [--warmup N]
    [--series N] [--targets N] [--per-target N] [--big-series N] [--agents LIST]

  --scenario    node: one node_exporter; 100k: one synthetic target (5 s interval);
                targets: many synthetic targets; 1m: one large synthetic target (15 s);
                all (default): the four in that order
  --seconds     the measured window, for every scenario (default: 60, 100k 120)
  --warmup      seconds the agents run before the window, after a first scrape
                (default 20; at least the interval + 3)
  --series      series of the 100k scenario's target (default 100000)
  --targets     targets of the targets scenario (default 2000)
  --per-target  series of each of them (default 100)
  --big-series  series of the 1m scenario's target (default 1000000)
  --agents      the agents to run, comma-separated: tern, prometheus, vmagent
                (default all three; tern alone is quick while tuning it)";

/// What the bench is asked to do.
#[derive(Debug)]
struct Args {
    /// The scenarios to run, in order.
    scenarios: Vec<Scenario>,
    /// The measured window, overriding each scenario's default.
    seconds: Option<u64>,
    /// The warm-up before the window.
    warmup: u64,
    /// Series of the `100k` target.
    series: usize,
    /// Targets of the `targets` scenario, and series of each.
    targets: usize,
    per_target: usize,
    /// Series of the `1m` target.
    big_series: usize,
    /// The agents to run.
    agents: Vec<Kind>,
    /// Whether cargo ran us as a benchmark (`--bench`) rather than as a test
    /// (`cargo test --benches`), where the bench does nothing.
    bench: bool,
}

impl Args {
    /// Parses the arguments after the program name.
    fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            scenarios: Scenario::ALL.to_vec(),
            seconds: None,
            warmup: 20,
            series: 100_000,
            targets: 2_000,
            per_target: 100,
            big_series: 1_000_000,
            agents: vec![Kind::Prometheus, Kind::Vmagent, Kind::Tern],
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
                        "targets" => vec![Scenario::Targets],
                        "1m" => vec![Scenario::Million],
                        "all" => Scenario::ALL.to_vec(),
                        other => {
                            return Err(format!(
                                "--scenario: expected node, 100k, targets, 1m or all, got {other:?}"
                            ))
                        }
                    }
                }
                "--seconds" => parsed.seconds = Some(number(&value("--seconds")?, "--seconds")?),
                "--warmup" => parsed.warmup = number(&value("--warmup")?, "--warmup")?,
                "--series" => parsed.series = number(&value("--series")?, "--series")?,
                "--targets" => parsed.targets = number(&value("--targets")?, "--targets")?,
                "--per-target" => {
                    parsed.per_target = number(&value("--per-target")?, "--per-target")?;
                }
                "--big-series" => {
                    parsed.big_series = number(&value("--big-series")?, "--big-series")?;
                }
                "--agents" => {
                    let mut agents = Vec::new();
                    for name in value("--agents")?.split(',') {
                        agents.push(match name.trim() {
                            "tern" => Kind::Tern,
                            "prometheus" => Kind::Prometheus,
                            "vmagent" => Kind::Vmagent,
                            other => {
                                return Err(format!(
                                    "--agents: expected tern, prometheus or vmagent, got {other:?}"
                                ))
                            }
                        });
                    }
                    parsed.agents = agents;
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if parsed.seconds == Some(0)
            || [
                parsed.series,
                parsed.targets,
                parsed.per_target,
                parsed.big_series,
            ]
            .contains(&0)
        {
            return Err(
                "--seconds, --series, --targets, --per-target and --big-series must be at least 1"
                    .into(),
            );
        }
        Ok(parsed)
    }
}

/// Parses a positive integer argument.
fn number<T: std::str::FromStr>(v: &str, flag: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: expected a whole number, got {v:?}"))
}

/// A benchmark scenario: what the agents scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// One real node_exporter.
    Node,
    /// One synthetic target (100k series unless `--series` says otherwise).
    Series,
    /// Many synthetic targets (2,000 of 100 series unless told otherwise).
    Targets,
    /// One synthetic target of 1M series (unless `--big-series` says otherwise).
    Million,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    const ALL: [Scenario; 4] = [
        Scenario::Node,
        Scenario::Series,
        Scenario::Targets,
        Scenario::Million,
    ];

    /// The default measured window.
    fn default_seconds(self) -> u64 {
        match self {
            Scenario::Series => 120,
            Scenario::Node | Scenario::Targets | Scenario::Million => 60,
        }
    }

    /// A short name for temp dirs and progress lines.
    fn slug(self) -> &'static str {
        match self {
            Scenario::Node => "node",
            Scenario::Series => "100k",
            Scenario::Targets => "targets",
            Scenario::Million => "1m",
        }
    }

    /// The scrape interval, in seconds.
    fn interval(self) -> u64 {
        match self {
            Scenario::Node | Scenario::Series => 5,
            Scenario::Targets | Scenario::Million => 15,
        }
    }

    /// The scrape timeout, in seconds: 4 at a 5 s interval, Prometheus's
    /// default of 10 at 15 s.
    fn timeout(self) -> u64 {
        if self.interval() <= 5 {
            4
        } else {
            10
        }
    }

    /// The largest body the agents accept, in MiB.
    fn body_limit_mib(self) -> u64 {
        match self {
            Scenario::Million => 256,
            _ => 64,
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
            !args.agents.contains(&Kind::Prometheus) || Path::new(agents::PROMETHEUS_BIN).exists(),
            format!("{} (apt-get install prometheus)", agents::PROMETHEUS_BIN),
        ),
        (
            !args.agents.contains(&Kind::Vmagent) || Path::new(agents::VMAGENT_BIN).exists(),
            format!(
                "{} (apt-get install {})",
                agents::VMAGENT_BIN,
                agents::VMAGENT_PACKAGE
            ),
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
    let run = report::Run {
        cmdline: std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect(),
        tern_bin: &tern_bin,
    };
    let report = report::render(&run, &sections);
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

/// The results of one scenario.
#[derive(Debug)]
struct Section {
    scenario: Scenario,
    /// A one-line description of the targets.
    target: String,
    /// Warm-up and window lengths actually used, in seconds.
    warmup: u64,
    window: f64,
    /// Each agent's figures, in the order they ran: Prometheus, vmagent, tern.
    figures: Vec<Figures>,
}

/// What the agents scrape in one scenario; each part stops when dropped.
#[derive(Debug)]
enum Targets {
    /// A node_exporter child process, killed on drop.
    Node { _process: agents::Process },
    /// One synthetic target.
    Synthetic(Synthetic),
    /// Many synthetic targets.
    Fleet(Fleet),
}

impl Targets {
    /// Starts the targets of `scenario`.
    fn start(scenario: Scenario, args: &Args, dir: &Path) -> (Targets, Vec<std::net::SocketAddr>) {
        match scenario {
            Scenario::Node => {
                let (process, addr) = agents::node_exporter(dir);
                (Targets::Node { _process: process }, vec![addr])
            }
            Scenario::Series | Scenario::Million => {
                let series = if scenario == Scenario::Series {
                    args.series
                } else {
                    args.big_series
                };
                let s = Synthetic::start(series);
                let addr = s.addr();
                (Targets::Synthetic(s), vec![addr])
            }
            Scenario::Targets => {
                let fleet = Fleet::start(args.targets, args.per_target);
                let addrs = fleet.addrs.clone();
                (Targets::Fleet(fleet), addrs)
            }
        }
    }

    /// Series per target, when the bench serves them.
    fn series(&self) -> Option<usize> {
        match self {
            Targets::Node { .. } => None,
            Targets::Synthetic(s) => Some(s.series),
            Targets::Fleet(f) => Some(f.series),
        }
    }

    /// What `kind` has been served so far, when the bench serves the targets.
    fn served(&self, kind: Kind) -> Option<Served> {
        let one = |client: &str| match self {
            Targets::Node { .. } => None,
            Targets::Synthetic(s) => Some(s.served(client)),
            Targets::Fleet(f) => Some(f.served(client)),
        };
        kind.user_agents()
            .iter()
            .map(|c| one(c))
            .try_fold(Served::default(), |sum, s| {
                s.map(|s| Served {
                    scrapes: sum.scrapes + s.scrapes,
                    bytes: sum.bytes + s.bytes,
                })
            })
    }
}

/// Runs one scenario: targets, sink, the three agents, warm-up, window;
/// returns the figures.
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
    let (targets, addrs) = Targets::start(scenario, args, dir.path());
    let job = Job {
        targets: addrs,
        interval: scenario.interval(),
        timeout: scenario.timeout(),
        body_limit_mib: scenario.body_limit_mib(),
    };
    // In the order the report lists them: Prometheus, vmagent, tern.
    let mut agents = Vec::new();
    for kind in [Kind::Prometheus, Kind::Vmagent, Kind::Tern] {
        if args.agents.contains(&kind) {
            agents.push(match kind {
                Kind::Prometheus => Agent::prometheus(dir.path(), &job, sink.addr()),
                Kind::Vmagent => Agent::vmagent(dir.path(), &job, sink.addr()),
                Kind::Tern => Agent::tern(tern_bin, dir.path(), &job, sink.addr()),
            });
        }
    }
    eprintln!(
        "bench: {} target(s) from {}, sink {}",
        job.targets.len(),
        job.targets
            .first()
            .map_or_else(String::new, ToString::to_string),
        sink.addr()
    );
    for a in &agents {
        eprintln!("bench: {} pid {} web {}", a.name(), a.process.pid(), a.web);
    }

    wait_first_scrapes(&mut agents);
    // At least an interval and a bit, so that every target has been scraped
    // once before the window: Prometheus counts a target's scrapes from its
    // second (prometheus_target_interval_length_seconds).
    let warmup = args.warmup.max(scenario.interval() + 3);
    eprintln!("bench: every agent scraped once; warming up for {warmup}s");
    watch(&mut agents, Duration::from_secs(warmup));

    let before: Vec<Snapshot> = agents.iter().map(Snapshot::take).collect();
    let sink_before: Vec<Count> = agents
        .iter()
        .map(|a| sink.count(a.kind.sink_path()))
        .collect();
    let served_before: Vec<Option<Served>> =
        agents.iter().map(|a| targets.served(a.kind)).collect();
    let started = Instant::now();
    eprintln!("bench: measuring for {}s", window.as_secs());
    let traces = watch(&mut agents, window);
    let after: Vec<Snapshot> = agents.iter().map(Snapshot::take).collect();
    let elapsed = started.elapsed().as_secs_f64();

    let mut figures = Vec::new();
    for (i, (agent, trace)) in agents.iter().zip(traces).enumerate() {
        let now = sink.count(agent.kind.sink_path());
        let sent = Count {
            requests: now.requests - sink_before[i].requests,
            bytes: now.bytes - sink_before[i].bytes,
        };
        let mut f = Figures::measure(agent, &before[i], &after[i], trace, sent, targets.series());
        if let (Some(b), Some(a)) = (served_before[i], targets.served(agent.kind)) {
            f.notes.push(format!(
                "the targets served it {} scrapes ({:.1} MB) in the window; it counted {} successful",
                a.scrapes - b.scrapes,
                (a.bytes - b.bytes) as f64 / 1e6,
                f.scrapes
            ));
        }
        figures.push(f);
    }

    // Cross-check: every agent should count what the bench's targets serve
    // per scrape, or, for node_exporter, what Prometheus counted.
    let reference = targets
        .series()
        .map(|s| (s as f64, "the target served"))
        .or_else(|| {
            figures
                .iter()
                .find(|f| f.kind == Kind::Prometheus)
                .map(|f| (f.samples_per_scrape(), "Prometheus counted"))
        });
    if let Some((reference, whose)) = reference {
        for f in &mut figures {
            let counted = f.samples_per_scrape();
            if reference > 0.0 && (counted - reference).abs() > reference * 0.02 {
                f.notes.push(format!(
                    "it counted {counted:.0} samples per scrape, {whose} {reference:.0}"
                ));
            }
        }
    }

    let prometheus_per_scrape = figures
        .iter()
        .find(|f| f.kind == Kind::Prometheus)
        .map_or(0.0, Figures::samples_per_scrape);
    let target = match scenario {
        Scenario::Node => {
            format!("one node_exporter ({prometheus_per_scrape:.0} samples per scrape)")
        }
        Scenario::Series | Scenario::Million => format!(
            "one synthetic target ({} series, values change every scrape)",
            targets.series().unwrap_or(0)
        ),
        Scenario::Targets => format!(
            "{} synthetic targets x {} series (one port each, values change every scrape)",
            job.targets.len(),
            targets.series().unwrap_or(0)
        ),
    };
    Section {
        scenario,
        target,
        warmup,
        window: elapsed,
        figures,
    }
}

/// Waits until every agent has completed a successful scrape.
///
/// # Panics
///
/// If an agent exits, or one has not scraped within [`FIRST_SCRAPE_TIMEOUT`];
/// the message carries every agent's stderr.
fn wait_first_scrapes(agents: &mut [Agent]) {
    let deadline = Instant::now() + FIRST_SCRAPE_TIMEOUT;
    loop {
        check_alive(agents);
        let scraped = agents.iter().all(|a| {
            let m = a.metrics();
            let counted = |name: &str, labels: &[(&str, &str)]| {
                expo::sum(&m, name, labels).unwrap_or(0.0) > 0.0
            };
            match a.kind {
                Kind::Tern => counted("tern_scrapes_total", &[("result", "ok")]),
                Kind::Prometheus => counted("prometheus_remote_storage_samples_in_total", &[]),
                Kind::Vmagent => counted("vm_promscrape_scraped_samples_sum", &[]),
            }
        });
        if scraped {
            return;
        }
        if Instant::now() >= deadline {
            let mut message = format!(
                "bench: no successful scrape by every agent within {FIRST_SCRAPE_TIMEOUT:?}"
            );
            for a in agents.iter() {
                message.push_str(&format!(
                    "\n--- {} ---\n{}",
                    a.name(),
                    a.process.stderr_tail(20)
                ));
            }
            panic!("{message}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Lets the agents run for `duration`, checking once a second that each is
/// alive; returns each one's VmRSS and threads, read once a second.
fn watch(agents: &mut [Agent], duration: Duration) -> Vec<Trace> {
    let end = Instant::now() + duration;
    let mut traces: Vec<Trace> = agents.iter().map(|_| Trace::default()).collect();
    loop {
        check_alive(agents);
        for (a, t) in agents.iter().zip(traces.iter_mut()) {
            if let Some(p) = procfs::read(a.process.pid()) {
                t.rss.push(p.rss);
                t.threads.push(p.threads);
            }
        }
        let now = Instant::now();
        if now >= end {
            return traces;
        }
        std::thread::sleep((end - now).min(Duration::from_secs(1)));
    }
}

/// Panics, with its stderr, if an agent has exited.
fn check_alive(agents: &mut [Agent]) {
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
