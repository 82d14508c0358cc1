//! Many targets on a few workers: 500 targets served by one exporter on a
//! few ports and many paths, and one that hangs, scraped by tern's fixed
//! pool of scrape workers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::agent::metric_value;
use crate::harness::{attr, flatten, wait_for, Agent, FakeGateway};

const PORTS: usize = 10;
const PATHS: usize = 50;
const SERIES: usize = 10;

/// One exporter for the whole fleet: `PORTS` listeners, each answering
/// `/metrics/<n>` for `n < PATHS` with `SERIES` series that name the target.
struct Fleet {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Fleet {
    fn start() -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..PORTS {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            addrs.push(listener.local_addr().unwrap());
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => answer(stream),
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        Fleet {
            addrs,
            stop,
            threads,
        }
    }

    fn target(&self, port: usize, path: usize) -> String {
        format!("http://{}/metrics/{path}", self.addrs[port])
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn answer(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(k) => head.extend_from_slice(&chunk[..k]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split(' ').nth(1).unwrap_or("");
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut body =
        String::from("# HELP fleet_value A series of the fleet.\n# TYPE fleet_value gauge\n");
    for k in 0..SERIES {
        body.push_str(&format!(
            "fleet_value{{target=\"{port}{path}\",series=\"{k}\"}} {k}\n"
        ));
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

/// A target that accepts connections and never answers.
fn hanging() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (h, s) = (held.clone(), stop.clone());
    std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => h.lock().unwrap().push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (addr, held, stop)
}

/// tern's threads by name. sled keeps 7 I/O threads waiting and starts a
/// short-lived one for a moment whenever one of those is busy (its pool is
/// not configurable); those extra ones are counted apart.
fn threads_of(pid: u32) -> (usize, Vec<String>) {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    let sled = names.iter().filter(|n| n.starts_with("sled-io")).count();
    (names.len() - sled.saturating_sub(7), names)
}

/// Every target's `tern_scrapes_total{result="ok"}`, by self-metrics instance.
fn ok_scrapes(text: &str, labels: &[String]) -> HashMap<String, f64> {
    labels
        .iter()
        .map(|l| {
            let series =
                format!("tern_scrapes_total{{job=\"fleet\",instance=\"{l}\",result=\"ok\"}}");
            (l.clone(), metric_value(text, &series).unwrap_or(0.0))
        })
        .collect()
}

#[test]
fn five_hundred_targets_share_a_few_workers_and_a_hanging_one_delays_none() {
    let fleet = Fleet::start();
    let (stuck, _held, stop_stuck) = hanging();
    let gateway = FakeGateway::start();
    let mut targets = Vec::new();
    let mut labels = Vec::new();
    for port in 0..PORTS {
        for path in 0..PATHS {
            targets.push(format!("\"{}\"", fleet.target(port, path)));
            labels.push(format!("{}/metrics/{path}", fleet.addrs[port]));
        }
    }
    targets.insert(targets.len() / 2, format!("\"{stuck}\""));
    let interval = 6.0;
    let config = format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[[scrape]]
job = "fleet"
targets = [{}]
interval = "6s"
timeout = "4s"

[export]
endpoints = ["{}"]

# Each push with fsync on costs an fdatasync under the queue's lock (3 ms
# here, far more under a parallel build): 125 a second would measure the
# disk, not the scheduler.
[export.queue]
fsync = false
"#,
        targets.join(", "),
        gateway.url()
    );
    let agent = Agent::start(&config);
    let pid = agent.pid().unwrap();

    // Every target up, each with its own self metrics.
    let first = wait_for(
        Duration::from_secs(30),
        || {
            let text = agent.metrics();
            let up = labels
                .iter()
                .filter(|l| {
                    metric_value(
                        &text,
                        &format!("tern_scrape_up{{job=\"fleet\",instance=\"{l}\"}}"),
                    ) == Some(1.0)
                })
                .count();
            (up == labels.len()).then_some(text)
        },
        || agent.diagnostics(),
    );
    let started = Instant::now();
    let before = ok_scrapes(&first, &labels);
    let (threads, names) = threads_of(pid);
    assert!(threads <= 16, "threads: {names:?}");

    std::thread::sleep(Duration::from_secs(18));
    let text = agent.metrics();
    let elapsed = started.elapsed().as_secs_f64();
    let after = ok_scrapes(&text, &labels);
    let (threads, names) = threads_of(pid);
    assert!(
        threads <= 16,
        "tern runs {threads} threads for 501 targets: {names:?}"
    );

    // Each target kept its interval: the hanging one held a worker for its
    // timeout on every tick and delayed no one.
    let expected = elapsed / interval;
    let mut lagging: Vec<(String, f64)> = labels
        .iter()
        .map(|l| (l.clone(), after[l] - before[l]))
        .filter(|(_, n)| *n < expected.floor() - 1.0 || *n > expected.ceil() + 1.0)
        .collect();
    lagging.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        lagging.is_empty(),
        "{} of {} targets off their {interval} s interval in {elapsed:.1} s (scrapes): {:?}",
        lagging.len(),
        labels.len(),
        &lagging[..lagging.len().min(20)]
    );
    let stuck_up = metric_value(
        &text,
        &format!("tern_scrape_up{{job=\"fleet\",instance=\"{stuck}\"}}"),
    );
    assert_eq!(stuck_up, Some(0.0), "the hanging target is down");
    let failed = metric_value(
        &text,
        &format!("tern_scrapes_total{{job=\"fleet\",instance=\"{stuck}\",result=\"http_error\"}}"),
    )
    .unwrap_or(0.0);
    assert!(
        failed >= expected.floor() - 1.0,
        "hanging target tried {failed} times"
    );
    // The log names the reason once: "error=http: timeout...", not "http: http:".
    let log = agent.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("Scrape failed") && l.contains(&stuck.to_string()))
        .unwrap_or_else(|| panic!("no Scrape failed line for {stuck}:\n{log}"));
    assert!(
        line.contains("error=http: timeout") && !line.contains("http: http:"),
        "{line}"
    );

    // And every target's series reached the gateway, under its own label.
    let seen: std::collections::HashSet<String> = flatten(&gateway.delivered())
        .iter()
        .filter(|(_, m)| m.name == "fleet_value")
        .flat_map(|(_, m)| match &m.data {
            Some(tern::otlp::proto::metrics::v1::metric::Data::Gauge(g)) => g
                .data_points
                .iter()
                .filter_map(|p| attr(&p.attributes, "target").map(str::to_string))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    for port in 0..PORTS {
        for path in 0..PATHS {
            let t = format!("{}/metrics/{path}", fleet.addrs[port].port());
            assert!(seen.contains(&t), "no series of {t} arrived");
        }
    }
    stop_stuck.store(true, Ordering::SeqCst);
}

/// The `target` label and NoRecordedValue flag of every `fleet_value` point.
fn fleet_points(gateway: &FakeGateway) -> Vec<(String, bool)> {
    flatten(&gateway.delivered())
        .iter()
        .filter(|(_, m)| m.name == "fleet_value")
        .flat_map(|(_, m)| match &m.data {
            Some(tern::otlp::proto::metrics::v1::metric::Data::Gauge(g)) => g
                .data_points
                .iter()
                .filter_map(|p| {
                    let target = attr(&p.attributes, "target")?.to_string();
                    Some((target, p.flags & 1 == 1))
                })
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn sighup_starts_added_targets_and_marks_removed_ones_stale() {
    let fleet = Fleet::start();
    let gateway = FakeGateway::start();
    let config = |paths: &[usize]| {
        let targets: Vec<String> = paths
            .iter()
            .map(|p| format!("\"{}\"", fleet.target(0, *p)))
            .collect();
        format!(
            "[agent]\nstate_dir = \"{{state_dir}}\"\nlisten = \"127.0.0.1:0\"\n\n[[scrape]]\njob = \"fleet\"\ntargets = [{}]\ninterval = \"300ms\"\n\n[export]\nendpoints = [\"{}\"]\n",
            targets.join(", "),
            gateway.url()
        )
    };
    let port = fleet.addrs[0].port();
    let name = |p: usize| format!("{port}/metrics/{p}");
    let mut agent = Agent::start(&config(&[0, 1]));
    wait_for(
        Duration::from_secs(10),
        || {
            let points = fleet_points(&gateway);
            (points.iter().any(|(t, _)| *t == name(0)) && points.iter().any(|(t, _)| *t == name(1)))
                .then_some(())
        },
        || agent.diagnostics(),
    );

    agent.rewrite_config(&config(&[1, 2]));
    agent.signal("HUP");
    let points = wait_for(
        Duration::from_secs(10),
        || {
            let points = fleet_points(&gateway);
            let stale_0 = points.iter().filter(|(t, s)| *t == name(0) && *s).count();
            let fresh_2 = points.iter().any(|(t, s)| *t == name(2) && !s);
            (stale_0 == SERIES && fresh_2).then_some(points)
        },
        || agent.diagnostics(),
    );
    assert!(
        !points.iter().any(|(t, s)| *t == name(1) && *s),
        "a target kept across the reload gets no staleness markers"
    );
    assert_eq!(
        agent.metric("tern_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    // Target 0 gets its markers once, and is no longer scraped.
    std::thread::sleep(Duration::from_secs(1));
    let points = fleet_points(&gateway);
    let stale_0 = points.iter().filter(|(t, s)| *t == name(0) && *s).count();
    assert_eq!(
        stale_0, SERIES,
        "one marker per series of the removed target"
    );
    let up = |p: usize| {
        agent.metric(&format!(
            "tern_scrape_up{{job=\"fleet\",instance=\"{}/metrics/{p}\"}}",
            fleet.addrs[0]
        ))
    };
    assert_eq!(up(1), Some(1.0));
    assert_eq!(up(2), Some(1.0));
    assert_eq!(up(0), None, "the removed target's self metrics go");
}
