//! Scrape targets for the tests: a real node_exporter (Debian's
//! prometheus-node-exporter), and a scripted exporter that serves whatever body
//! a test wants (garbage, huge bodies, a counter that counts scrapes).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::wait_for;

/// A running prometheus-node-exporter on 127.0.0.1.
pub struct NodeExporter {
    child: Child,
    pub addr: SocketAddr,
}

impl NodeExporter {
    /// Starts node_exporter on port 0 and reads the port it bound from /proc,
    /// so no port is guessed.
    pub fn start() -> NodeExporter {
        let bin = ["/usr/bin/prometheus-node-exporter", "/usr/sbin/prometheus-node-exporter"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus-node-exporter is not installed: run the README's test command (scripts/test), which installs it");
        let child = Command::new(bin)
            .args([
                "--web.listen-address=127.0.0.1:0",
                // Collectors that need hardware or privileges only add noise here.
                "--no-collector.hwmon",
                "--no-collector.thermal_zone",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node_exporter");
        let pid = child.id();
        let port = wait_for(
            Duration::from_secs(15),
            || listening_port(pid),
            || "node_exporter did not listen".into(),
        );
        NodeExporter {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TCP port a process listens on, from /proc/PID/fd and /proc/net/tcp.
pub fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let link = link.to_string_lossy().into_owned();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.push(inode.to_string());
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address is f[1] (hex ip:port), st is f[3] (0A = LISTEN), inode is f[9].
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            let port = f[1].split(':').nth(1)?;
            return u16::from_str_radix(port, 16).ok();
        }
    }
    None
}

/// What a scripted exporter answers: status, content type and body.
pub type Body = (u16, &'static str, Vec<u8>);

/// A scripted scrape target: calls `respond(n)` for the n-th scrape (from 0).
pub struct ScriptedExporter {
    pub addr: SocketAddr,
    pub scrapes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedExporter {
    pub fn start(respond: impl Fn(u64) -> Body + Send + Sync + 'static) -> ScriptedExporter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let scrapes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, st) = (scrapes.clone(), stop.clone());
        let respond = Arc::new(respond);
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let i = n.fetch_add(1, Ordering::SeqCst);
                let (status, ct, body) = respond(i);
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream
                    .write_all(head.as_bytes())
                    .and_then(|_| stream.write_all(&body));
            }
        });
        ScriptedExporter {
            addr,
            scrapes,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ScriptedExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
