//! Gateways that redirect, refuse large requests, or are handed batches that
//! cannot be read: what tern accepted still arrives, once, and what cannot
//! arrive is dropped with a counted reason, never retried forever. See: issue
//! 12, points 4 and 10.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use prost::Message;
use tern::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tern::otlp::proto::resource::v1::Resource;
use tern::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tern::queue::{Lane, NewBatch, Options, Queue, Signal};

use crate::harness::{receiver_config, wait_for, Agent, FakeGateway, Reply, TempDir};

/// A config with the OTLP receiver on a free port, sending to `gateway`
/// with `extra` lines in `[export]`.
fn config(gateway: &str, extra: &str) -> String {
    receiver_config(
        "",
        "",
        &format!(
            "endpoints = [\"{gateway}\"]\nheaders = {{ \"X-Scope-OrgID\" = \"edge\" }}\n{extra}"
        ),
    )
}

/// `len` hex digits that gzip cannot shrink much, different for each `seed`.
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect()
}

/// One request of spans named `{prefix}{i}`, each with `pad(i)` bytes of
/// attribute.
fn spans(prefix: &str, n: usize, pad: impl Fn(usize) -> usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![tern::otlp::kv("service.name", "hostile")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("{prefix}{i}"),
                        trace_id: vec![1; 16],
                        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                        attributes: vec![tern::otlp::kv("pad", noise(i as u64, pad(i)))],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Posts `request` to tern's receiver; panics unless tern answers 200.
fn post(addr: SocketAddr, request: &ExportTraceServiceRequest) {
    let body = request.encode_to_vec();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// How many times each span name arrived at `gateway` in a request it
/// answered 200.
fn arrived(gateway: &FakeGateway) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for request in gateway.delivered_traces() {
        for rs in &request.resource_spans {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    *seen.entry(span.name.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    seen
}

/// Waits until every one of `names` has arrived at `gateway`, then checks
/// that none arrived twice and nothing else arrived.
fn all_arrive_once(agent: &Agent, gateway: &FakeGateway, names: &[String]) {
    wait_for(
        Duration::from_secs(30),
        || {
            let seen = arrived(gateway);
            names.iter().all(|n| seen.contains_key(n)).then_some(())
        },
        || format!("{:?}\n{}", arrived(gateway), agent.diagnostics()),
    );
    let seen = arrived(gateway);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "arrived more than once: {twice:?}");
    assert_eq!(seen.len(), names.len(), "{seen:?}");
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn follows_redirect(status: u16) {
    let target = FakeGateway::start();
    let gateway = FakeGateway::start();
    gateway.set_default(Reply::Redirect(status, format!("{}{{path}}", target.url())));
    let agent = Agent::start(&config(&gateway.url(), ""));
    post(agent.receiver_addr(), &spans("r", 10, |_| 10));
    all_arrive_once(&agent, &target, &names("r", 10));

    // Posted again with the same body and headers, to the Location.
    let redirected = gateway.received();
    assert!(!redirected.is_empty());
    assert!(redirected.iter().all(|r| r.answered == status));
    let delivered = target.received();
    assert_eq!(delivered[0].path, "/v1/traces");
    assert_eq!(delivered[0].digest, redirected[0].digest, "the same body");
    assert!(
        delivered[0]
            .headers
            .iter()
            .any(|(k, v)| k == "x-scope-orgid" && v == "edge"),
        "{:?}",
        delivered[0].headers
    );
    let redirects = agent.metric(&format!(
        "tern_export_redirects_total{{endpoint=\"{}\",status=\"{status}\"}}",
        gateway.url()
    ));
    assert!(redirects >= Some(1.0), "{}", agent.metrics());
    let sent = agent.metric(&format!(
        "tern_export_sent_batches_total{{endpoint=\"{}\",signal=\"traces\"}}",
        gateway.url()
    ));
    assert_eq!(sent, Some(1.0), "{}", agent.metrics());
    assert!(
        !agent.metrics().contains("tern_dropped_batches_total"),
        "{}",
        agent.metrics()
    );
    // 301, 302 and 308 say the endpoint should change: one WARN naming both.
    let log = agent.stderr();
    let warned = log.lines().find(|l| l.contains("update the endpoint"));
    if status == 307 {
        assert!(warned.is_none(), "{log}");
    } else {
        let line = warned.unwrap_or_else(|| panic!("no WARN for {status}\n{log}"));
        assert!(line.starts_with("WARN"), "{line}");
        assert!(
            line.contains(&format!("endpoint={}", gateway.url()))
                && line.contains(&format!("location={}/v1/traces", target.url())),
            "{line}"
        );
    }
}

#[test]
fn a_301_delivers_to_the_location() {
    follows_redirect(301);
}

#[test]
fn a_302_delivers_to_the_location() {
    follows_redirect(302);
}

#[test]
fn a_307_delivers_to_the_location() {
    follows_redirect(307);
}

#[test]
fn a_308_delivers_to_the_location() {
    follows_redirect(308);
}

#[test]
fn a_redirect_loop_is_retried_not_dropped() {
    let gateway = FakeGateway::start();
    // A relative Location back to the same URL, for ever.
    gateway.set_default(Reply::Redirect(308, "{path}".into()));
    let agent = Agent::start(&config(&gateway.url(), ""));
    post(agent.receiver_addr(), &spans("l", 5, |_| 10));
    let failed = format!(
        "tern_export_failed_requests_total{{endpoint=\"{}\",signal=\"traces\",reason=\"redirect\"}}",
        gateway.url()
    );
    wait_for(
        Duration::from_secs(30),
        || (agent.metric(&failed) >= Some(2.0)).then_some(()),
        || agent.diagnostics(),
    );
    assert!(
        !agent.metrics().contains("tern_dropped_batches_total"),
        "{}",
        agent.metrics()
    );
    assert!(
        agent.stderr().contains("more than 5 redirects"),
        "{}",
        agent.stderr()
    );
    // Once the gateway is fixed, the batch arrives, once.
    gateway.set_default(Reply::Ok);
    all_arrive_once(&agent, &gateway, &names("l", 5));
}

/// The gateway's size limit, in bytes on the wire (gzip): a request of 64
/// spans takes about four times as much.
const LIMIT: usize = 3000;

#[test]
fn a_413_sends_the_batch_in_parts_that_fit() {
    let gateway = FakeGateway::start();
    gateway.set_max_body(Some(LIMIT));
    let agent = Agent::start(&config(&gateway.url(), ""));
    post(agent.receiver_addr(), &spans("p", 64, |_| 300));
    all_arrive_once(&agent, &gateway, &names("p", 64));
    let received = gateway.received();
    assert!(
        received.iter().any(|r| r.answered == 413),
        "the whole batch was too large for the test to mean anything"
    );
    let metrics = agent.metrics();
    let splits = agent.metric(&format!(
        "tern_export_split_requests_total{{endpoint=\"{}\",signal=\"traces\"}}",
        gateway.url()
    ));
    assert!(splits >= Some(1.0), "{metrics}");
    assert!(!metrics.contains("tern_dropped_batches_total"), "{metrics}");
    let sent = agent.metric(&format!(
        "tern_export_sent_points_total{{endpoint=\"{}\",signal=\"traces\"}}",
        gateway.url()
    ));
    assert_eq!(sent, Some(64.0), "{metrics}");
}

#[test]
fn a_single_item_too_large_is_dropped_and_counted() {
    let gateway = FakeGateway::start();
    gateway.set_max_body(Some(LIMIT));
    let agent = Agent::start(&config(&gateway.url(), ""));
    // Span 5 alone is about three times the limit.
    post(
        agent.receiver_addr(),
        &spans("t", 16, |i| if i == 5 { 20_000 } else { 100 }),
    );
    let kept: Vec<String> = names("t", 16).into_iter().filter(|n| n != "t5").collect();
    let dropped = |what: &str| {
        agent.metric(&format!(
            "tern_dropped_{what}_total{{signal=\"traces\",destination=\"{}\",reason=\"too_large\"}}",
            gateway.url()
        ))
    };
    wait_for(
        Duration::from_secs(30),
        || dropped("batches").map(|_| ()),
        || agent.diagnostics(),
    );
    all_arrive_once(&agent, &gateway, &kept);
    assert_eq!(dropped("batches"), Some(1.0), "{}", agent.metrics());
    assert_eq!(dropped("points"), Some(1.0), "{}", agent.metrics());
    let log = agent.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("larger than the gateway takes"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].starts_with("ERROR") && lines[0].contains("points=1"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_stored_batch_that_cannot_be_read_is_dropped_once() {
    let gateway = FakeGateway::start();
    // Before tern starts, store a batch that does not gunzip (the queue's own
    // checks pass: the damage is inside the payload), and a good one behind.
    let dir = TempDir::new("corrupt");
    {
        let options = Options {
            fsync: true,
            ..Options::default()
        };
        let (queue, _) = Queue::open(&dir.path().join("state"), &options).unwrap();
        let lane = Lane::new(Signal::Traces, &gateway.url());
        let good = tern::otlp::encode(&spans("g", 3, |_| 10)).payload;
        for (payload, items) in [(b"\x1f\x8bnot really gzip".to_vec(), 7), (good, 3)] {
            let pushed = queue
                .push(
                    &lane,
                    NewBatch {
                        payload: &payload,
                        items,
                        created: SystemTime::now(),
                        checkpoint: None,
                    },
                )
                .unwrap();
            assert!(pushed.dropped.is_empty());
        }
        queue.flush().unwrap();
    }
    // Uncompressed on the wire: the sender has to gunzip what it stored.
    let agent = Agent::start_in(dir, &config(&gateway.url(), "compression = \"none\""));
    all_arrive_once(&agent, &gateway, &names("g", 3));
    let dropped = |what: &str| {
        agent.metric(&format!(
            "tern_dropped_{what}_total{{signal=\"traces\",destination=\"{}\",reason=\"corrupt\"}}",
            gateway.url()
        ))
    };
    assert_eq!(dropped("batches"), Some(1.0), "{}", agent.metrics());
    assert_eq!(dropped("points"), Some(7.0), "{}", agent.metrics());
    assert_eq!(
        gateway.received().len(),
        1,
        "the damaged batch was never sent"
    );
    let log = agent.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stored payload cannot be read"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].starts_with("ERROR"), "{}", lines[0]);
    // Not retried: no failed request, no retry.
    assert!(!log.contains("Send failed"), "{log}");
}
