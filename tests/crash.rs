//! SIGKILL at random moments while a client posts numbered spans to the
//! receiver and the gateway flaps: every span whose request got 200 arrives,
//! and a kill sends again at most the batch that was in flight.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tern::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tern::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::harness::{wait_for, Agent, FakeGateway, Reply};

/// A port that was free a moment ago: the receiver keeps it across restarts.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A request of five spans named `span-<first>` to `span-<first+4>`.
fn spans(first: u64) -> Vec<u8> {
    let spans = (first..first + 5)
        .map(|n| Span {
            trace_id: n.to_be_bytes().repeat(2),
            span_id: n.to_be_bytes().to_vec(),
            name: format!("span-{n}"),
            start_time_unix_nano: 1_700_000_000_000_000_000 + n,
            end_time_unix_nano: 1_700_000_000_000_000_001 + n,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Posts `body` once; the status, or `None` when the agent was not there.
fn post(addr: SocketAddr, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn a_sigkill_storm_loses_no_acknowledged_span() {
    const KILLS: usize = 20;
    let receiver = free_port();
    let gateway = Arc::new(FakeGateway::start());
    let config = format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[receiver.otlp]
listen = "{receiver}"

[export]
endpoints = ["{}"]
timeout = "2s"

[export.retry]
initial_interval = "50ms"
max_interval = "200ms"
"#,
        gateway.url()
    );
    let mut agent = Agent::start(&config);

    // The gateway flaps: up and down in turns of 150 to 600 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (stop, gateway) = (stop.clone(), gateway.clone());
        std::thread::spawn(move || {
            let mut up = true;
            while !stop.load(Ordering::Relaxed) {
                gateway.set_default(if up {
                    Reply::Ok
                } else {
                    Reply::Status(503, None)
                });
                up = !up;
                std::thread::sleep(Duration::from_millis(fastrand::u64(150..600)));
            }
            gateway.set_default(Reply::Ok);
        })
    };
    // The client: numbered spans, five a request; a 200 means accepted.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let client = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match post(receiver, &spans(next)) {
                    Some(200) => acked.lock().unwrap().extend(next..next + 5),
                    Some(_) => {}
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
                next += 5;
            }
        })
    };
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(fastrand::u64(200..900)));
        agent.restart();
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    flapper.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "too few spans accepted: {}", acked.len());
    let arrived = |g: &FakeGateway| -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for r in g.received().iter().filter(|r| r.answered == 200) {
            for rs in r.traces.iter().flat_map(|t| &t.resource_spans) {
                for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                    *seen.entry(span.name.clone()).or_insert(0) += 1;
                }
            }
        }
        seen
    };
    wait_for(
        Duration::from_secs(60),
        || {
            let seen = arrived(&gateway);
            acked
                .iter()
                .all(|n| seen.contains_key(&format!("span-{n}")))
                .then_some(())
        },
        || {
            let seen = arrived(&gateway);
            let missing: Vec<_> = acked
                .iter()
                .filter(|n| !seen.contains_key(&format!("span-{n}")))
                .take(20)
                .collect();
            format!("missing spans {missing:?}\n{}", agent.diagnostics())
        },
    );
    // Requests the gateway took twice: a kill between its 200 and the ack.
    let mut digests: HashMap<u64, usize> = HashMap::new();
    for r in gateway.received().iter().filter(|r| r.answered == 200) {
        *digests.entry(r.digest).or_insert(0) += 1;
    }
    let doubled: usize = digests.values().map(|n| n - 1).sum();
    let spans_doubled: usize = arrived(&gateway).values().map(|n| n - 1).sum();
    eprintln!(
        "SIGKILL storm: {KILLS} kills, {} spans acked, all arrived; {doubled} batches sent twice ({spans_doubled} spans)",
        acked.len()
    );
    assert!(
        doubled <= KILLS,
        "{doubled} batches sent twice over {KILLS} kills (one lane: at most one a kill)"
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.diagnostics());
}
