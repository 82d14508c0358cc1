//! Measures the OTLP receiver end to end: requests and spans per second that
//! the release tern accepts (answered 200, so in its disk queue) while it
//! forwards them to a local sink, and its CPU and RSS under that load.
//!
//! ```text
//! cargo build --release -p tern
//! cargo bench -p tern --bench receiver -- [--seconds N] [--clients N] [--spans N]
//! ```
//!
//! Each scenario starts `target/release/tern run` (`TERN_BIN=path` for another
//! binary) in a temp dir with `[receiver.otlp]` on loopback and one
//! `[export] endpoints` entry: a sink in this process that answers 200 to every
//! POST. `--clients` threads (default 4) post `ExportTraceServiceRequest`s of
//! `--spans` spans each (default 100, about 27 KiB of protobuf: ids, timestamps,
//! five attributes and a status per span) on keep-alive connections, as fast
//! as tern answers, for a 3 s warm-up and then the `--seconds` window (default
//! 20). Scenarios: protobuf with `fsync` on (tern's default: each 200 waits for
//! the disk), protobuf with `fsync` off, and OTLP/JSON with `fsync` off.
//!
//! - requests/s and spans/s: 200 answers in the window, divided by its length;
//! - CPU: tern's utime+stime from /proc/PID/stat over the window, as a share
//!   of one core (the clients and the sink run on the same two cores);
//! - RSS: VmRSS at the end of the window and VmHWM (peak, warm-up included),
//!   and tern's thread count then;
//! - queued at end: batches in tern's disk queue at the end of the window (the
//!   exporter sends one batch per request, so it falls behind this load).
//!
//! It prints a Markdown table and writes it to `target/bench/receiver.md`.
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

// A benchmark is a test program: it stops with a clear message when its own
// setup fails (a missing binary, an unbindable loopback socket).
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tern::otlp::kv;
use tern::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tern::otlp::proto::resource::v1::Resource;
use tern::otlp::proto::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};

const WARMUP: Duration = Duration::from_secs(3);

struct Args {
    seconds: u64,
    clients: usize,
    spans: usize,
    bench: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 20,
        clients: 4,
        spans: 100,
        bench: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match a.as_str() {
            "--bench" => args.bench = true,
            "--seconds" => args.seconds = num("--seconds"),
            "--clients" => args.clients = usize::try_from(num("--clients")).unwrap(),
            "--spans" => args.spans = usize::try_from(num("--spans")).unwrap(),
            _ => {}
        }
    }
    args
}

/// One request of `spans` spans; `seed` makes ids differ between requests.
fn request(spans: usize, seed: u64) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "bench-app"), kv("host.name", "box-1")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans as u64)
                    .map(|i| Span {
                        trace_id: [seed.to_be_bytes(), i.to_be_bytes()].concat(),
                        span_id: (seed ^ i.rotate_left(32)).to_be_bytes().to_vec(),
                        parent_span_id: seed.to_be_bytes().to_vec(),
                        name: format!("GET /api/orders/{}", i % 7),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_000_000_000 + i * 1000,
                        end_time_unix_nano: 1_700_000_000_000_500_000 + i * 1000,
                        attributes: vec![
                            kv("http.request.method", "GET"),
                            kv("http.route", "/api/orders/{id}"),
                            kv("url.path", format!("/api/orders/{}", seed % 1000 + i)),
                            kv("server.address", "orders.internal"),
                            kv("user_agent.original", "bench/1.0"),
                        ],
                        status: Some(Status {
                            code: status::StatusCode::Ok as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A sink that answers 200 to every POST, one thread per connection.
fn sink(stop: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Some(n) = read_request(&mut s, &mut buf) else {
                        return;
                    };
                    buf.drain(..n);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads one request (head and Content-Length body) into `buf`; its length.
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            while buf.len() < head + len {
                let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(head + len);
        }
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one response head; whether it was a 200 (bodies here are small and
/// announced, and read too).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(buf) {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            let ok = resp.code == Some(200);
            while buf.len() < head + len {
                let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..head + len);
            return Some(ok);
        }
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Tern {
    child: Child,
    dir: PathBuf,
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tern_bin() -> PathBuf {
    std::env::var_os("TERN_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tern"),
        PathBuf::from,
    )
}

/// Starts tern with the receiver; returns it with the receiver's address and
/// the self-metrics address.
fn start_tern(name: &str, sink: SocketAddr, fsync: bool) -> (Tern, SocketAddr, SocketAddr) {
    let dir =
        std::env::temp_dir().join(format!("tern-bench-receiver-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "[agent]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[receiver.otlp]\nlisten = \"127.0.0.1:0\"\n\n[export]\nendpoints = [\"http://{sink}\"]\n\n[export.queue]\nfsync = {fsync}\n",
        dir.join("state").display()
    );
    std::fs::write(dir.join("tern.toml"), config).unwrap();
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let bin = tern_bin();
    let child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(dir.join("tern.toml"))
        .env_remove("TERN_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (cargo build --release -p tern)",
                bin.display()
            )
        });
    let tern = Tern { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(tern.dir.join("stderr.log")).unwrap_or_default();
        let find = |prefix: &str| -> Option<SocketAddr> {
            log.lines()
                .find_map(|l| l.split(prefix).nth(1))
                .and_then(|a| a.trim().parse().ok())
        };
        if let (Some(addr), Some(metrics)) = (
            find("Receiving OTLP/HTTP listen="),
            find("Serving self metrics listen="),
        ) {
            return (tern, addr, metrics);
        }
        assert!(Instant::now() < deadline, "tern did not start:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// utime+stime of `pid` in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

/// A field of /proc/PID/status in MiB (VmRSS, VmHWM).
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A plain number field of /proc/PID/status (Threads).
fn status_count(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

struct Outcome {
    requests_per_s: f64,
    spans_per_s: f64,
    cpu_share: f64,
    rss: f64,
    hwm: f64,
    threads: f64,
    backlog: f64,
    refused: u64,
}

/// Batches waiting in tern's queue, from its /metrics.
fn queued_batches(metrics: SocketAddr) -> f64 {
    let Ok(mut s) = TcpStream::connect(metrics) else {
        return f64::NAN;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("tern_queue_batches{signal=\"traces\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn run(name: &str, json: bool, fsync: bool, args: &Args) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let sink_addr = sink(stop.clone());
    let (tern, addr, metrics) = start_tern(name, sink_addr, fsync);
    let pid = tern.child.id();
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let bodies: Vec<Vec<u8>> = (0..16u64)
        .map(|seed| {
            let r = request(args.spans, seed);
            if json {
                serde_json::to_vec(&r).unwrap()
            } else {
                r.encode_to_vec()
            }
        })
        .collect();
    let bodies = Arc::new(bodies);
    let content_type = if json {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let (stop, ok, refused, bodies) = (stop.clone(), ok.clone(), refused.clone(), bodies.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let body = &bodies[i % bodies.len()];
                    i += 1;
                    let head = format!(
                        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).is_err() {
                        return;
                    }
                    match read_response(&mut s, &mut buf) {
                        Some(true) => ok.fetch_add(1, Ordering::Relaxed),
                        Some(false) => refused.fetch_add(1, Ordering::Relaxed),
                        None => return,
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(WARMUP);
    let (ok0, cpu0, t0) = (ok.load(Ordering::Relaxed), cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(args.seconds));
    let (ok1, cpu1, elapsed) = (
        ok.load(Ordering::Relaxed),
        cpu_seconds(pid),
        t0.elapsed().as_secs_f64(),
    );
    let (rss, hwm) = (status_mib(pid, "VmRSS:"), status_mib(pid, "VmHWM:"));
    // A count, not a size: undo status_mib's kB-to-MiB division.
    let threads = status_count(pid, "Threads:");
    let backlog = queued_batches(metrics);
    stop.store(true, Ordering::Relaxed);
    drop(tern);
    for c in clients {
        let _ = c.join();
    }
    let requests = (ok1 - ok0) as f64;
    Outcome {
        requests_per_s: requests / elapsed,
        spans_per_s: requests * args.spans as f64 / elapsed,
        cpu_share: (cpu1 - cpu0) / elapsed,
        rss,
        hwm,
        threads,
        backlog,
        refused: refused.load(Ordering::Relaxed),
    }
}

fn main() {
    let args = parse_args();
    if !args.bench {
        return;
    }
    let size = request(args.spans, 1).encoded_len();
    let json_size = serde_json::to_vec(&request(args.spans, 1)).unwrap().len();
    let mut report = format!(
        "OTLP receiver, {} clients, {} spans per request ({size} bytes protobuf, {json_size} bytes JSON), {} s window, {} cores\n\n\
         | scenario | requests/s | spans/s | tern CPU (share of one core) | RSS end | RSS peak | threads | queued at end | refused |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        args.clients,
        args.spans,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for (name, json, fsync) in [
        ("protobuf, fsync on", false, true),
        ("protobuf, fsync off", false, false),
        ("json, fsync off", true, false),
    ] {
        eprintln!("running: {name}");
        let o = run(&name.replace([',', ' '], "-"), json, fsync, &args);
        report.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:.0}% | {:.1} MiB | {:.1} MiB | {:.0} | {:.0} | {} |\n",
            o.requests_per_s,
            o.spans_per_s,
            o.cpu_share * 100.0,
            o.rss,
            o.hwm,
            o.threads,
            o.backlog,
            o.refused
        ));
    }
    print!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("receiver.md"), &report);
}
