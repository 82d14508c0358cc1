//! The child processes: tern, Prometheus in agent mode, vmagent and
//! node_exporter, each killed when its guard drops.
//!
//! All three agents get the same [`Job`]: the same targets, interval, timeout
//! and body size limit, and the bench's sink as their only upstream.
//!
//! vmagent (Debian's `victoria-metrics` package) runs with
//! `-promscrape.config` (the same scrape config as Prometheus, without
//! `body_size_limit`, which it takes as `-promscrape.maxScrapeSize`),
//! `-remoteWrite.url` (the sink, on a path of its own), `-remoteWrite.tmpDataPath`
//! in the temp dir (its on-disk queue), `-httpListenAddr=127.0.0.1:0` (self
//! metrics and `/-/ready`, on a free loopback port found through /proc) and
//! `-loggerLevel=WARN`. Version 1.79 has no usage reporting or update check, so
//! it needs no flag to stay off the network; its other defaults (caches up to
//! 60% of RAM, 2 x cores remote-write queues, stream parsing of bodies over
//! 1 MB) are left as a user gets them.
//!
//! Children are started through `setpriv --pdeathsig KILL` when util-linux has
//! it, so the kernel kills them even if the bench itself is killed or aborts
//! and no destructor runs. (The death signal fires when the spawning thread
//! exits, so spawn them from the main thread.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{http, procfs, wait_until};

/// Where Debian installs Prometheus.
pub(crate) const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
/// Where Debian's `victoria-metrics` package installs vmagent.
pub(crate) const VMAGENT_BIN: &str = "/usr/bin/vmagent";
/// The Debian package vmagent comes in (its binary does not print a version).
pub(crate) const VMAGENT_PACKAGE: &str = "victoria-metrics";
/// Where Debian installs node_exporter (older releases used /usr/sbin).
pub(crate) const NODE_EXPORTER_BINS: [&str; 2] = [
    "/usr/bin/prometheus-node-exporter",
    "/usr/sbin/prometheus-node-exporter",
];
/// util-linux's setpriv, for the parent-death signal.
const SETPRIV: &str = "/usr/bin/setpriv";

/// How long an agent gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process, killed (SIGKILL) and reaped on drop. Its stderr goes to a file.
#[derive(Debug)]
pub(crate) struct Process {
    /// What it is, for messages.
    pub(crate) name: &'static str,
    child: Child,
    /// The file its stderr is written to.
    pub(crate) stderr: PathBuf,
}

impl Process {
    /// Starts `program` with `args` in `dir`, stderr to `dir/<name>.stderr`.
    ///
    /// # Panics
    ///
    /// If the program cannot be started.
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        dir: &Path,
    ) -> Process {
        let stderr = dir.join(format!("{name}.stderr"));
        let file =
            std::fs::File::create(&stderr).expect("create a stderr file in the bench's temp dir");
        let mut cmd = if Path::new(SETPRIV).exists() {
            let mut c = Command::new(SETPRIV);
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let child = cmd
            .args(args)
            .current_dir(dir)
            .env_remove("TERN_LOG")
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Process {
            name,
            child,
            stderr,
        }
    }

    /// Its process id (setpriv execs the program, so this is the program's).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its stderr so far.
    pub(crate) fn stderr_text(&self) -> String {
        std::fs::read(&self.stderr)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of its stderr, for failure messages.
    pub(crate) fn stderr_tail(&self, n: usize) -> String {
        let text = self.stderr_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until it listens on a TCP port and returns that port's address.
    ///
    /// # Panics
    ///
    /// If it exits or does not listen within the start timeout.
    pub(crate) fn wait_listening(&mut self) -> SocketAddr {
        let pid = self.pid();
        let port = wait_until(START_TIMEOUT, &format!("{} listening", self.name), || {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited with {status} before listening:\n{}",
                    self.name,
                    self.stderr_tail(30)
                );
            }
            procfs::listening_port(pid)
        });
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Drop for Process {
    /// Kills the process (SIGKILL) and reaps it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node_exporter binary, if installed.
pub(crate) fn node_exporter_bin() -> Option<&'static str> {
    NODE_EXPORTER_BINS
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Starts a node_exporter on `127.0.0.1:0`; returns it and the address it bound.
pub(crate) fn node_exporter(dir: &Path) -> (Process, SocketAddr) {
    let bin = node_exporter_bin()
        .expect("prometheus-node-exporter is not installed: run scripts/bench, which installs it");
    let mut p = Process::spawn(
        "node_exporter",
        Path::new(bin),
        &["--web.listen-address=127.0.0.1:0".to_string()],
        dir,
    );
    let addr = p.wait_listening();
    (p, addr)
}

/// Which agent an [`Agent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// tern, the release binary.
    Tern,
    /// Prometheus 2.42 with `--enable-feature=agent`.
    Prometheus,
    /// vmagent 1.79 (VictoriaMetrics).
    Vmagent,
}

impl Kind {
    /// The products its scrapes name in `User-Agent`, as the exporters count
    /// them. vmagent's stream parsing (bodies over 1 MB) uses Go's HTTP client
    /// without setting one, so Go's default names it there.
    pub(crate) fn user_agents(self) -> &'static [&'static str] {
        match self {
            Kind::Tern => &["tern"],
            Kind::Prometheus => &["Prometheus"],
            Kind::Vmagent => &["vm_promscrape", "Go-http-client"],
        }
    }

    /// The sink path it sends to.
    pub(crate) fn sink_path(self) -> &'static str {
        match self {
            Kind::Tern => super::sink::OTLP_METRICS_PATH,
            Kind::Prometheus => super::sink::REMOTE_WRITE_PATH,
            Kind::Vmagent => super::sink::VMAGENT_WRITE_PATH,
        }
    }
}

/// What every agent scrapes, and how.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// The targets, `host:port`, each scraped at `/metrics`.
    pub(crate) targets: Vec<SocketAddr>,
    /// The scrape interval, in seconds.
    pub(crate) interval: u64,
    /// The scrape timeout, in seconds.
    pub(crate) timeout: u64,
    /// The largest body accepted, in MiB.
    pub(crate) body_limit_mib: u64,
}

/// `TERN_BENCH_RULES=typical`: five typical `metric_relabel_configs` rules
/// for every agent (a drop by name, a hashmod, a keep, a replace and a
/// labeldrop; one through a regex engine, the others simple shapes), as
/// YAML and as tern TOML. `TERN_BENCH_RULES=half` keeps the counters and
/// nine gauge families with one keep rule: 54.5k of 100k series.
fn rules() -> Option<(&'static str, &'static str)> {
    match std::env::var("TERN_BENCH_RULES").as_deref() {
        Ok("typical") => Some((
            r#"    metric_relabel_configs:
      - {source_labels: [__name__], regex: "go_.*|process_.*|bench_http_inflight_requests_00.*", action: drop}
      - {source_labels: [__name__, path], modulus: 4, target_label: __tmp_shard, action: hashmod}
      - {source_labels: [__tmp_shard], regex: "0|1|2|3", action: keep}
      - {source_labels: [path], regex: "/api/v1/(\\w+)/\\d+", target_label: resource, replacement: "$1"}
      - {regex: "instance_id|__tmp_shard", action: labeldrop}
"#,
            r#"metric_relabel_configs = [
  { source_labels = ["__name__"], regex = "go_.*|process_.*|bench_http_inflight_requests_00.*", action = "drop" },
  { source_labels = ["__name__", "path"], modulus = 4, target_label = "__tmp_shard", action = "hashmod" },
  { source_labels = ["__tmp_shard"], regex = "0|1|2|3", action = "keep" },
  { source_labels = ["path"], regex = "/api/v1/(\\w+)/\\d+", target_label = "resource", replacement = "$1" },
  { regex = "instance_id|__tmp_shard", action = "labeldrop" },
]
"#,
        )),
        Ok("half") => Some((
            r#"    metric_relabel_configs:
      - {source_labels: [__name__], regex: "bench_http_requests_0.*_total|bench_http_inflight_requests_00[0-8].*", action: keep}
"#,
            r#"metric_relabel_configs = [
  { source_labels = ["__name__"], regex = "bench_http_requests_0.*_total|bench_http_inflight_requests_00[0-8].*", action = "keep" },
]
"#,
        )),
        _ => None,
    }
}

impl Job {
    /// The targets as a YAML or TOML flow list of quoted `host:port`.
    fn target_list(&self) -> String {
        let quoted: Vec<String> = self.targets.iter().map(|t| format!("\"{t}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// The scrape config Prometheus and vmagent read. Prometheus gets
    /// `body_size_limit` in it; vmagent refuses that key and takes the limit
    /// as a flag.
    fn scrape_yaml(&self, body_size_limit: bool) -> String {
        let limit = if body_size_limit {
            // Base-2 units in Prometheus: 64MB is tern's 64MiB.
            format!("    body_size_limit: {}MB\n", self.body_limit_mib)
        } else {
            String::new()
        };
        format!(
            r#"# Written by agent/benches/scrape.rs.
global:
  scrape_interval: {interval}s
  scrape_timeout: {timeout}s
scrape_configs:
  - job_name: bench
{limit}    static_configs:
      - targets: {targets}
{rules}"#,
            interval = self.interval,
            timeout = self.timeout,
            targets = self.target_list(),
            rules = rules().map_or("", |r| r.0),
        )
    }
}

/// A running agent and the address of its self metrics.
#[derive(Debug)]
pub(crate) struct Agent {
    /// Which agent.
    pub(crate) kind: Kind,
    /// The process.
    pub(crate) process: Process,
    /// Where its `/metrics`, `/-/ready` are served.
    pub(crate) web: SocketAddr,
    /// Its disk buffer: tern's state dir, Prometheus's WAL dir, vmagent's
    /// `-remoteWrite.tmpDataPath`.
    pub(crate) data_dir: PathBuf,
}

impl Agent {
    /// Starts tern from `bin` running `job` and exporting to `sink`, with its
    /// state in `dir/tern-state`; waits until `/-/ready` answers 200.
    pub(crate) fn tern(bin: &Path, dir: &Path, job: &Job, sink: SocketAddr) -> Agent {
        let config = format!(
            r#"# Written by agent/benches/scrape.rs.
[agent]
state_dir = "{state}"
listen = "127.0.0.1:0"

[[scrape]]
job = "bench"
targets = {targets}
interval = "{interval}s"
timeout = "{timeout}s"
body_size_limit = "{limit}MiB"
{rules}
[export]
endpoints = ["http://{sink}"]
compression = "{compression}"

[export.queue]
fsync = true
mode = "{mode}"
"#,
            // TERN_BENCH_COMPRESSION=zstd measures the other codec.
            compression = std::env::var("TERN_BENCH_COMPRESSION").unwrap_or_else(|_| "gzip".into()),
            // TERN_BENCH_QUEUE_MODE=memory_first measures the other queueing.
            mode = std::env::var("TERN_BENCH_QUEUE_MODE").unwrap_or_else(|_| "disk".into()),
            state = dir.join("tern-state").display(),
            targets = job.target_list(),
            interval = job.interval,
            timeout = job.timeout,
            limit = job.body_limit_mib,
            rules = rules().map_or("", |r| r.1),
        );
        let path = dir.join("tern.toml");
        std::fs::write(&path, config).expect("write tern.toml in the bench's temp dir");
        let mut process = Process::spawn(
            "tern",
            bin,
            &["run".into(), "--config".into(), path.display().to_string()],
            dir,
        );
        // tern logs "Serving self metrics listen=ADDR" once its server is bound.
        let web = wait_until(
            START_TIMEOUT,
            "tern's 'Serving self metrics' log line",
            || {
                if let Some(status) = process.exited() {
                    panic!(
                        "tern exited with {status} at start:\n{}",
                        process.stderr_tail(30)
                    );
                }
                process
                    .stderr_text()
                    .lines()
                    .find_map(|l| l.split("Serving self metrics listen=").nth(1))
                    .and_then(|a| a.split_whitespace().next()?.parse().ok())
            },
        );
        let agent = Agent {
            kind: Kind::Tern,
            process,
            web,
            data_dir: dir.join("tern-state"),
        };
        agent.wait_ready();
        agent
    }

    /// Starts Prometheus in agent mode running `job` and remote-writing to
    /// `sink`, with its WAL in `dir/prometheus-wal`; waits until `/-/ready`
    /// answers 200.
    pub(crate) fn prometheus(dir: &Path, job: &Job, sink: SocketAddr) -> Agent {
        let config = format!(
            "{}remote_write:\n  - url: \"http://{sink}{}\"\n",
            job.scrape_yaml(true),
            super::sink::REMOTE_WRITE_PATH
        );
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, config).expect("write prometheus.yml in the bench's temp dir");
        let args = [
            "--enable-feature=agent".to_string(),
            format!("--config.file={}", path.display()),
            format!(
                "--storage.agent.path={}",
                dir.join("prometheus-wal").display()
            ),
            "--web.listen-address=127.0.0.1:0".to_string(),
        ];
        let mut process = Process::spawn("prometheus", Path::new(PROMETHEUS_BIN), &args, dir);
        let web = process.wait_listening();
        let agent = Agent {
            kind: Kind::Prometheus,
            process,
            web,
            data_dir: dir.join("prometheus-wal"),
        };
        agent.wait_ready();
        agent
    }

    /// Starts vmagent running `job` and remote-writing to `sink`, with its
    /// on-disk queue in `dir/vmagent-data`; waits until `/-/ready` answers 200.
    pub(crate) fn vmagent(dir: &Path, job: &Job, sink: SocketAddr) -> Agent {
        let path = dir.join("vmagent.yml");
        std::fs::write(&path, job.scrape_yaml(false))
            .expect("write vmagent.yml in the bench's temp dir");
        let data = dir.join("vmagent-data");
        let args = [
            format!("-promscrape.config={}", path.display()),
            format!("-promscrape.maxScrapeSize={}MiB", job.body_limit_mib),
            format!(
                "-remoteWrite.url=http://{sink}{}",
                super::sink::VMAGENT_WRITE_PATH
            ),
            format!("-remoteWrite.tmpDataPath={}", data.display()),
            "-httpListenAddr=127.0.0.1:0".to_string(),
            "-loggerLevel=WARN".to_string(),
        ];
        let mut process = Process::spawn("vmagent", Path::new(VMAGENT_BIN), &args, dir);
        let web = process.wait_listening();
        let agent = Agent {
            kind: Kind::Vmagent,
            process,
            web,
            data_dir: data,
        };
        agent.wait_ready();
        agent
    }

    /// A short name for tables and messages.
    pub(crate) fn name(&self) -> &'static str {
        self.process.name
    }

    /// Waits until `/-/ready` answers 200.
    fn wait_ready(&self) {
        wait_until(START_TIMEOUT, &format!("{} /-/ready", self.name()), || {
            http::get(self.web, "/-/ready")
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        });
    }

    /// Its self metrics now; empty if they cannot be fetched.
    pub(crate) fn metrics(&self) -> String {
        http::get(self.web, "/metrics")
            .filter(|(s, _)| *s == 200)
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}
