//! The metered uplink: `[export] max_bandwidth` holds the bytes sent to the
//! gateways under the budget, with a burst of one request.

use std::time::Duration;

use tern::otlp::proto::trace::v1::Span;

use crate::harness::spans::{free_port, post, span_names, traces_request};
use crate::harness::{wait_for, Agent, FakeGateway};

/// A request of `count` spans whose names are pseudo-random hex, so that
/// gzip cannot shrink it much: about 40 bytes a span on the wire.
fn noisy_spans(seed: u64, count: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let spans = (0..count)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Span {
                trace_id: x.to_be_bytes().repeat(2),
                span_id: (seed * 10_000 + i).to_be_bytes().to_vec(),
                name: format!("s{seed}-{i}-{x:016x}"),
                ..Default::default()
            }
        })
        .collect();
    traces_request(spans)
}

/// A backlog of about 160 kB drains at 32 KiB/s: every request waits for the
/// bytes of the ones before it (the sum of what was sent before each is at
/// most the budget times the time since the first), the drain takes about
/// as long as the budget says, and the wait is in the self metrics.
#[test]
fn max_bandwidth_paces_a_draining_backlog() {
    const RATE: f64 = 32.0 * 1024.0;
    let receiver = free_port();
    let mut gateway = FakeGateway::start();
    gateway.stop();
    let agent = Agent::start(&format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[receiver.otlp]
listen = "{receiver}"

[export]
endpoints = ["{}"]
max_bandwidth = "32KiB/s"

[export.retry]
initial_interval = "100ms"
max_interval = "300ms"
"#,
        gateway.url()
    ));
    const REQUESTS: u64 = 20;
    const SPANS: u64 = 200;
    for seed in 0..REQUESTS {
        let mut status = None;
        for _ in 0..50 {
            status = post(receiver, &noisy_spans(seed, SPANS));
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(status, Some(200), "{}", agent.diagnostics());
    }
    gateway.restart();
    wait_for(
        Duration::from_secs(60),
        || (span_names(&gateway.received()).len() as u64 == REQUESTS * SPANS).then_some(()),
        || agent.diagnostics(),
    );
    let mut sent: Vec<_> = gateway
        .received()
        .into_iter()
        .filter(|r| r.answered == 200)
        .collect();
    sent.sort_by_key(|r| r.at);
    let first = sent[0].at;
    let mut before = 0usize;
    for r in &sent {
        let elapsed = r.at.duration_since(first).as_secs_f64();
        // 0.2 s of slack for the first request's own transfer and scheduling.
        assert!(
            before as f64 <= RATE * (elapsed + 0.2),
            "{before} bytes were sent within {elapsed:.2} s of the first request, over 32 KiB/s"
        );
        before += r.wire_len;
    }
    let total = before - sent.last().unwrap().wire_len;
    let drain = sent.last().unwrap().at.duration_since(first).as_secs_f64();
    assert!(
        total > 100_000 && drain >= 0.8 * total as f64 / RATE,
        "{total} bytes in {drain:.2} s: the budget did not hold them back"
    );
    let waited = agent
        .metric(&format!(
            "tern_export_bandwidth_wait_seconds_total{{endpoint=\"{}\"}}",
            gateway.url()
        ))
        .unwrap_or(0.0);
    assert!(waited > 1.0, "waited {waited} s\n{}", agent.metrics());
    eprintln!(
        "max_bandwidth: {} requests, {total} bytes after the first in {drain:.2} s ({:.1} KiB/s), waited {waited:.1} s",
        sent.len(),
        total as f64 / drain / 1024.0
    );
}
