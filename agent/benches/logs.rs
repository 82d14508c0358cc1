//! Measures the log sources end to end, in the release binary: lines per
//! second and CPU per line from the socket (or file) to the gateway's 200, with
//! gzip and the disk queue's defaults (fsync on), and tern's RSS.
//!
//! ```text
//! cargo bench -p tern --bench logs -- [--lines N] [--scenario syslog|files|all]
//! ```
//!
//! - `syslog`: one TCP connection sends N newline-framed RFC 3164 lines of
//!   100 bytes, as BusyBox syslogd or `logger` write them, as fast as tern
//!   reads them.
//! - `files`: 100 files, each appended N/100 lines of 100 bytes by this
//!   process while tern follows them (`[[file]]` with a glob).
//!
//! CPU is tern's utime+stime (all threads) from /proc over the run, divided by
//! the lines; the run ends when the gateway (a counting sink on loopback) has
//! acknowledged every line. RSS is VmHWM at the end. Budgets (issue 17): at
//! most 1 us of CPU per line, and 10 MB RSS with 100 files followed. Under
//! `cargo test --benches` (no `--bench` argument) it does nothing.
//! `TERN_BIN=path` measures another binary (default: target/release/tern).

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "scrape/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "scrape/procfs.rs"]
#[allow(dead_code)]
mod procfs;
#[path = "scrape/sink.rs"]
#[allow(dead_code)]
mod sink;

use std::fmt::Write as _;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sink::Sink;

/// Bytes of each line, its newline included.
const LINE: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mut lines = 1_000_000usize;
    let mut scenario = "all".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--lines" => lines = it.next().and_then(|v| v.parse().ok()).expect("--lines N"),
            "--scenario" => scenario = it.next().cloned().expect("--scenario syslog|files|all"),
            _ => {}
        }
    }
    let target_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let tern =
        std::env::var_os("TERN_BIN").map_or_else(|| target_dir.join("release/tern"), PathBuf::from);
    let mut table = String::from(
        "| scenario | lines | wall | lines/s | CPU per line | peak RSS |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    if scenario == "syslog" || scenario == "all" {
        let r = syslog_tcp(&tern, lines);
        row(&mut table, "syslog over TCP, 100-byte lines", lines, &r);
    }
    if scenario == "files" || scenario == "all" {
        let r = files(&tern, lines, 100);
        row(&mut table, "100 files followed, 100-byte lines", lines, &r);
    }
    println!("{table}");
    let out = target_dir.join("bench/logs.md");
    let _ = std::fs::create_dir_all(out.parent().unwrap());
    std::fs::write(&out, &table).expect("write target/bench/logs.md");
    eprintln!("written to {}", out.display());
}

/// What one run measured.
struct Run {
    wall: Duration,
    cpu_seconds: f64,
    hwm: u64,
}

fn row(table: &mut String, name: &str, lines: usize, r: &Run) {
    let _ = writeln!(
        table,
        "| {name} | {lines} | {:.2} s | {:.0} | {:.2} us | {:.1} MB |",
        r.wall.as_secs_f64(),
        lines as f64 / r.wall.as_secs_f64(),
        r.cpu_seconds * 1e6 / lines as f64,
        r.hwm as f64 / 1e6
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// tern running with `sources` (TOML) and its self-metrics address.
struct Tern {
    child: Child,
    listen: SocketAddr,
    dir: PathBuf,
}

impl Tern {
    fn start(bin: &Path, name: &str, sources: &str, sink: &Sink) -> Tern {
        let dir = std::env::temp_dir().join(format!("tern-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "[agent]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\nlog_level = \"warn\"\n\n{sources}\n\n[export]\nendpoints = [\"http://{}\"]\n",
            dir.join("state").display(),
            sink.addr()
        );
        let path = dir.join("tern.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (build it: cargo build --release)", bin.display()));
        let t = Tern { child, listen, dir };
        t.wait(Duration::from_secs(20), "ready", || {
            http::get(listen, "/-/ready").is_some_and(|(s, _)| s == 200)
        });
        t
    }

    fn wait(&self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "tern not {what} after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Points (log records) the gateways acknowledged.
    fn sent(&self) -> f64 {
        http::get(self.listen, "/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with("tern_export_sent_points_total"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Line `i` of a stream: RFC 3164 as BusyBox writes it, 100 bytes.
fn line(i: usize, out: &mut Vec<u8>) {
    let start = out.len();
    let _ = write!(
        out,
        "<14>Dec  7 12:00:00 box app[{}]: message {i} ",
        1000 + i % 9000
    );
    while out.len() - start < LINE - 1 {
        out.push(b'x');
    }
    out.push(b'\n');
}

fn syslog_tcp(bin: &Path, lines: usize) -> Run {
    let sink = Sink::start();
    let port = free_port();
    let tern = Tern::start(
        bin,
        "syslog",
        &format!("[receiver.syslog]\ntcp = \"127.0.0.1:{port}\""),
        &sink,
    );
    let mut body = Vec::with_capacity(lines * LINE);
    for i in 0..lines {
        line(i, &mut body);
    }
    let before = procfs::read(tern.pid()).unwrap();
    let started = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&body).unwrap();
    drop(c);
    tern.wait(Duration::from_secs(600), "done", || {
        tern.sent() >= lines as f64
    });
    let wall = started.elapsed();
    let after = procfs::read(tern.pid()).unwrap();
    Run {
        wall,
        cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        hwm: after.hwm,
    }
}

fn files(bin: &Path, lines: usize, count: usize) -> Run {
    let sink = Sink::start();
    let logs = std::env::temp_dir().join(format!("tern-bench-logfiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| logs.join(format!("app{i}.log")))
        .collect();
    for p in &paths {
        std::fs::write(p, b"").unwrap();
    }
    let tern = Tern::start(
        bin,
        "files",
        &format!(
            "[[file]]\ninclude = [\"{}/*.log\"]\nread_from = \"head\"",
            logs.display()
        ),
        &sink,
    );
    // Give tern a moment to find the files (it reads them from the start anyway).
    std::thread::sleep(Duration::from_millis(500));
    let before = procfs::read(tern.pid()).unwrap();
    let started = Instant::now();
    let per_file = lines / count;
    let mut handles: Vec<std::fs::File> = paths
        .iter()
        .map(|p| std::fs::OpenOptions::new().append(true).open(p).unwrap())
        .collect();
    let mut buf = Vec::new();
    // Appends in rounds of 1000 lines per file, as busy applications do.
    let mut written = 0;
    while written < per_file {
        let n = 1000.min(per_file - written);
        for (f, h) in handles.iter_mut().enumerate() {
            buf.clear();
            for i in written..written + n {
                line(f * per_file + i, &mut buf);
            }
            h.write_all(&buf).unwrap();
        }
        written += n;
    }
    tern.wait(Duration::from_secs(600), "done", || {
        tern.sent() >= (per_file * count) as f64
    });
    let wall = started.elapsed();
    let after = procfs::read(tern.pid()).unwrap();
    drop(tern);
    let _ = std::fs::remove_dir_all(&logs);
    Run {
        wall,
        cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        hwm: after.hwm,
    }
}
