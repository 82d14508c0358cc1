//! The `Agent` harness: runs the built `tern` binary with a config in its own
//! temp directory, waits for `/-/ready`, and kills it on drop. On a failed
//! test it prints the config and tern's stderr.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{http_get, wait_for, TempDir};

/// The tern binary under test: `$TERN_BIN` when set (a cross-compiled release
/// binary, see scripts/test-cross), else the one cargo built for this test.
pub fn tern_bin() -> PathBuf {
    match std::env::var_os("TERN_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_tern")),
    }
}

/// A command that runs [`tern_bin`]: through `$TERN_BIN_RUNNER` when set (an
/// emulator such as `qemu-aarch64-static`, for a foreign binary on a host
/// without binfmt_misc), else directly.
pub fn tern_command() -> Command {
    match std::env::var_os("TERN_BIN_RUNNER") {
        Some(runner) if !runner.is_empty() => {
            let mut c = Command::new(runner);
            c.arg(tern_bin());
            c
        }
        _ => Command::new(tern_bin()),
    }
}

/// A running tern.
pub struct Agent {
    pub dir: TempDir,
    pub config: String,
    child: Option<Child>,
    /// The self-telemetry address, read from tern's log.
    pub listen: Option<SocketAddr>,
    /// The user id tern runs as, when not the test's own.
    uid: Option<u32>,
}

impl Agent {
    /// Writes `config` (with `state_dir` and `listen` filled in when the
    /// placeholders `{state_dir}` appear) and starts tern, waiting until ready.
    pub fn start(config: &str) -> Agent {
        let dir = TempDir::new("agent");
        Agent::start_in(dir, config)
    }

    /// Starts tern with `config` in an existing directory (to restart on the
    /// same state).
    pub fn start_in(dir: TempDir, config: &str) -> Agent {
        Agent::start_in_as(dir, config, None)
    }

    /// Starts tern as user `uid` (and the group of the same number), for
    /// tests of what an unprivileged agent cannot read; the test must give
    /// that user its state directory.
    pub fn start_in_as(dir: TempDir, config: &str, uid: Option<u32>) -> Agent {
        let config = config.replace(
            "{state_dir}",
            &dir.path().join("state").display().to_string(),
        );
        let mut agent = Agent {
            dir,
            config,
            child: None,
            listen: None,
            uid,
        };
        agent.spawn();
        agent
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("tern.toml")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn spawn(&mut self) {
        // A fixed port (the receiver's, kept across restarts) may be taken
        // for a moment as the source port of another test's connection
        // while tern is down: start again, as systemd's Restart= would.
        for _ in 0..5 {
            if self.try_spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("tern found its ports taken 5 times\n{}", self.diagnostics());
    }

    /// Starts tern and waits until it is ready; `false` if it exited because
    /// a port it listens on was in use.
    fn try_spawn(&mut self) -> bool {
        std::fs::write(self.config_path(), &self.config).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .unwrap();
        let log_start = self.stderr().len();
        let mut command = tern_command();
        if let Some(uid) = self.uid {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(uid);
        }
        let child = command
            .args(["run", "--config"])
            .arg(self.config_path())
            .env_remove("TERN_LOG")
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn tern");
        self.child = Some(child);
        let started = wait_for(
            Duration::from_secs(20),
            || {
                if self.port_in_use(log_start) {
                    return Some(None);
                }
                self.listen_from_log(log_start).map(Some)
            },
            || self.diagnostics(),
        );
        let Some(listen) = started else {
            self.kill();
            return false;
        };
        self.listen = Some(listen);
        let ready = wait_for(
            Duration::from_secs(20),
            || {
                if self.port_in_use(log_start) {
                    return Some(false);
                }
                http_get(listen, "/-/ready")
                    .filter(|(s, _)| *s == 200)
                    .map(|_| true)
            },
            || self.diagnostics(),
        );
        if !ready {
            self.kill();
        }
        ready
    }

    /// Whether tern said, since byte `from` of its log, that a port it
    /// listens on was in use (it exits then).
    fn port_in_use(&self, from: usize) -> bool {
        self.stderr().get(from..).is_some_and(|log| {
            log.contains("cannot listen on") && log.contains("Address already in use")
        })
    }

    /// The "Serving self metrics listen=..." address logged after byte `from`.
    fn listen_from_log(&self, from: usize) -> Option<SocketAddr> {
        self.stderr()
            .get(from..)?
            .lines()
            .rev()
            .find_map(|l| l.split("Serving self metrics listen=").nth(1))
            .and_then(|a| a.trim().parse().ok())
    }

    /// The OTLP receiver's address, from tern's log (it listens on port 0).
    pub fn receiver_addr(&self) -> SocketAddr {
        wait_for(
            Duration::from_secs(10),
            || {
                self.stderr()
                    .lines()
                    .rev()
                    .find_map(|l| l.split("Receiving OTLP/HTTP listen=").nth(1))
                    .and_then(|a| a.trim().parse().ok())
            },
            || self.diagnostics(),
        )
    }

    /// tern's stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.stderr_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The config, the stderr and the exit status, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- config ({}) ---\n{}\n--- tern stderr ---\n{}",
            self.config_path().display(),
            self.config,
            self.stderr()
        )
    }

    /// The self-metrics text.
    pub fn metrics(&self) -> String {
        let listen = self.listen.expect("agent is running");
        http_get(listen, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The value of one self-metrics series, by its exact rendered name and labels.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }

    /// tern's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.pid().expect("agent is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/PID/status")
            * 1024
    }

    /// tern's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (by name, as `kill -s` takes it) to tern.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills tern with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops tern with SIGTERM and returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tern did not stop on SIGTERM\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts tern again on the same directory and config.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Rewrites the config file (placeholders filled) without restarting.
    pub fn rewrite_config(&mut self, config: &str) {
        self.config = config.replace(
            "{state_dir}",
            &self.dir.path().join("state").display().to_string(),
        );
        std::fs::write(self.config_path(), &self.config).unwrap();
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The config file.
    pub fn config_file(&self) -> PathBuf {
        self.config_path()
    }

    /// Gives the directory back, killing tern (to restart on the same state).
    pub fn into_dir(mut self) -> TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, TempDir::detached())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
    }
}

/// The value of `series` (name with labels, exactly as rendered) in a metrics text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a path exists, for readability in tests.
#[allow(dead_code)]
pub fn exists(p: &Path) -> bool {
    p.exists()
}
