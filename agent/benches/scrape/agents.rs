//! The child processes: tern, Prometheus in agent mode and node_exporter, each
//! killed when its guard drops.
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
    /// Its disk buffer: tern's state dir, Prometheus's WAL dir.
    pub(crate) data_dir: PathBuf,
}

impl Agent {
    /// Starts tern from `bin` scraping `target` every 5 s and exporting to `sink`,
    /// with its state in `dir/tern-state`; waits until `/-/ready` answers 200.
    pub(crate) fn tern(bin: &Path, dir: &Path, target: SocketAddr, sink: SocketAddr) -> Agent {
        let config = format!(
            r#"# Written by agent/benches/scrape.rs.
[agent]
state_dir = "{state}"
listen = "127.0.0.1:0"

[[scrape]]
job = "bench"
targets = ["{target}"]
interval = "5s"
timeout = "4s"
body_size_limit = "64MiB"

[export]
endpoints = ["http://{sink}"]

[export.queue]
fsync = true
"#,
            state = dir.join("tern-state").display(),
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

    /// Starts Prometheus in agent mode scraping `target` every 5 s and
    /// remote-writing to `sink`, with its WAL in `dir/prometheus-wal`; waits
    /// until `/-/ready` answers 200.
    pub(crate) fn prometheus(dir: &Path, target: SocketAddr, sink: SocketAddr) -> Agent {
        // body_size_limit is in base-2 units here: 64MB is tern's 64MiB.
        let config = format!(
            r#"# Written by agent/benches/scrape.rs.
global:
  scrape_interval: 5s
  scrape_timeout: 4s
scrape_configs:
  - job_name: bench
    body_size_limit: 64MB
    static_configs:
      - targets: ["{target}"]
remote_write:
  - url: "http://{sink}{path}"
"#,
            path = super::sink::REMOTE_WRITE_PATH,
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
