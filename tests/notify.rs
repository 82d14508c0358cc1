//! systemd's `Type=notify` protocol, as the unit in systemd/tern.service runs
//! tern: the test plays the service manager. It listens on a datagram socket,
//! starts tern with the environment systemd gives a service (NOTIFY_SOCKET,
//! WATCHDOG_USEC, WATCHDOG_PID, STATE_DIRECTORY) and reads what tern says.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tern::queue::{Queue, QueueError};

use crate::harness::agent::tern_bin;
use crate::harness::exporter::ScriptedExporter;
use crate::harness::{http_get, wait_for, TempDir};

/// What the watchdog interval is in these tests: tern pings at half of it.
const WATCHDOG: Duration = Duration::from_secs(1);

/// tern started the way systemd starts it, and the socket it notifies.
struct Service {
    dir: TempDir,
    child: Option<Child>,
    socket: UnixDatagram,
    /// Every message received so far, in order.
    received: Vec<(Instant, String)>,
}

impl Service {
    /// Starts tern on a config without `state_dir`, so that it takes the
    /// state directory from STATE_DIRECTORY as under `StateDirectory=`.
    /// `extra_env` adds variables (the test-only stall).
    fn start(target: SocketAddr, extra_env: &[(&str, &str)]) -> Service {
        let dir = TempDir::new("notify");
        let config = dir.path().join("tern.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nlisten = \"127.0.0.1:0\"\n\n\
                 [[scrape]]\njob = \"app\"\ntargets = [\"{target}\"]\ninterval = \"1s\"\n\n\
                 [export]\nendpoints = []\n"
            ),
        )
        .unwrap();
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        // systemd sets WATCHDOG_PID to the service's own pid; a shell that
        // execs tern keeps its pid, so it can set the same.
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
            .arg(tern_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .env("STATE_DIRECTORY", dir.path().join("state"))
            .env_remove("TERN_LOG")
            .env_remove("TERN_TEST_STALL_AFTER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn tern");
        Service {
            dir,
            child: Some(child),
            socket,
            received: Vec::new(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- received on NOTIFY_SOCKET ---\n{:#?}\n--- tern stderr ---\n{}",
            self.received.iter().map(|(_, m)| m).collect::<Vec<_>>(),
            self.stderr()
        )
    }

    /// Reads one datagram, waiting up to the socket's read timeout.
    fn recv(&mut self) -> Option<String> {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.received.push((Instant::now(), msg.clone()));
        Some(msg)
    }

    /// Reads datagrams until one has the line `line`, which it returns, or
    /// panics after `timeout`.
    fn recv_until(&mut self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(msg) = self.recv() {
                if msg.lines().any(|l| l == line) {
                    return msg;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "tern exited ({status}) before {line}\n{}",
                    self.diagnostics()
                );
            }
        }
        panic!("no {line} within {timeout:?}\n{}", self.diagnostics());
    }

    /// Every message received in `d` from now.
    fn recv_for(&mut self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            out.extend(self.recv());
        }
        out
    }

    /// The self-telemetry address tern logged.
    fn listen(&self) -> SocketAddr {
        self.stderr()
            .lines()
            .find_map(|l| l.split("Serving self metrics listen=").nth(1))
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no listen address logged\n{}", self.diagnostics()))
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for tern to exit and returns its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tern did not exit within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
    }
}

fn exporter() -> ScriptedExporter {
    ScriptedExporter::start(|n| (200, "text/plain", format!("app_up {n}\n").into_bytes()))
}

fn count(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

#[test]
fn ready_comes_once_the_queue_is_open_then_the_watchdog_pings_and_stop_is_announced() {
    let target = exporter();
    let mut service = Service::start(target.addr, &[]);

    let ready = service.recv_until("READY=1", Duration::from_secs(30));
    // Checked right when READY=1 arrives: the queue is open in the directory
    // systemd named (held by tern, so a second opener is refused), the
    // sources were started and /-/ready answers 200.
    match Queue::inspect(&service.state_dir()) {
        Err(QueueError::Locked { .. }) => {}
        other => panic!(
            "READY=1 came before the queue was open in {}: inspect gave {other:?}\n{}",
            service.state_dir().display(),
            service.diagnostics()
        ),
    }
    let log = service.stderr();
    assert!(log.contains("Queue opened"), "{}", service.diagnostics());
    assert!(
        log.contains("Started scrape_jobs=1"),
        "READY=1 before the sources started\n{}",
        service.diagnostics()
    );
    let ready_status = http_get(service.listen(), "/-/ready").map(|(s, _)| s);
    assert_eq!(ready_status, Some(200), "{}", service.diagnostics());
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=")),
        "READY=1 carries a STATUS= line for systemctl status: {ready:?}"
    );

    // The watchdog pings at half of WATCHDOG_USEC: about 6 in 3 s.
    let messages = service.recv_for(3 * WATCHDOG);
    let pings = count(&messages, "WATCHDOG=1");
    assert!(
        (3..=9).contains(&pings),
        "{pings} WATCHDOG=1 in 3 s with WATCHDOG_USEC=1s\n{}",
        service.diagnostics()
    );
    assert_eq!(count(&messages, "READY=1"), 0, "READY=1 is sent once");

    // SIGTERM: STOPPING=1, then a clean exit.
    service.signal("TERM");
    service.recv_until("STOPPING=1", Duration::from_secs(10));
    assert_eq!(
        service.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        service.diagnostics()
    );
}

#[test]
fn the_watchdog_stops_when_the_main_loop_is_stuck() {
    let target = exporter();
    // Debug builds only: blocks the main loop's thread 3 s after start.
    let mut service = Service::start(target.addr, &[("TERN_TEST_STALL_AFTER", "3")]);
    service.recv_until("READY=1", Duration::from_secs(30));
    service.recv_until("WATCHDOG=1", Duration::from_secs(5));

    wait_for(
        Duration::from_secs(20),
        || {
            service
                .stderr()
                .contains("Stalling the main loop")
                .then_some(())
        },
        || service.diagnostics(),
    );
    // What was sent before the stall may still be queued on the socket.
    let _ = service.recv_for(Duration::from_millis(300));

    // Stuck, not dead: tern is still running and sends nothing for three
    // watchdog intervals, so systemd would kill and restart it.
    let after_stall = service.recv_for(3 * WATCHDOG);
    assert_eq!(
        count(&after_stall, "WATCHDOG=1"),
        0,
        "pings went on while the main loop was stuck\n{}",
        service.diagnostics()
    );
    assert!(
        service
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "tern exited instead of hanging\n{}",
        service.diagnostics()
    );
}
