//! The metered uplink: `[export] max_bandwidth` holds the bytes sent to the
//! gateways under the budget, with a burst of one request; a backlog goes as
//! few requests of at most `max_request_size` over a link with slow round
//! trips.

use std::time::{Duration, Instant};

use tern::otlp::proto::trace::v1::Span;

use crate::harness::spans::{free_port, post, receiver_config_at, span_names, traces_request};
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
    // Requests of a few batches, so that the pacing between them shows.
    let agent = Agent::start(&uplink_config(
        receiver,
        &gateway.url(),
        "max_bandwidth = \"32KiB/s\"\nmax_request_size = \"16KiB\"",
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

/// The receiver on `receiver` sending to `gateway` with fast retries, and
/// `export` lines added to `[export]`.
fn uplink_config(receiver: std::net::SocketAddr, gateway: &str, export: &str) -> String {
    receiver_config_at(receiver, gateway)
        .replace("timeout = \"2s\"", &format!("timeout = \"2s\"\n{export}"))
}

/// Posts `batches` requests of `spans` noisy spans each (about 40 bytes a
/// span gzipped) while the gateway is down, then brings it back with a
/// `rtt` delay on every answer, and waits until every span arrived.
/// Returns the drain time, the requests answered 200 and the bytes sent.
fn drain_backlog(
    export: &str,
    batches: u64,
    spans: u64,
    rtt: Duration,
) -> (Duration, usize, usize) {
    let receiver = free_port();
    let mut gateway = FakeGateway::start();
    gateway.stop();
    let agent = Agent::start(&uplink_config(receiver, &gateway.url(), export));
    for seed in 0..batches {
        let body = noisy_spans(seed, spans);
        let ok = (0..50).any(|_| {
            post(receiver, &body) == Some(200) || {
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        });
        assert!(ok, "post {seed} failed\n{}", agent.diagnostics());
    }
    gateway.set_latency(rtt);
    gateway.restart();
    let back = Instant::now();
    let names = wait_for(
        Duration::from_secs(600),
        || {
            let names = span_names(&gateway.received());
            (names.len() as u64 == batches * spans).then_some(names)
        },
        || agent.diagnostics(),
    );
    let drain = back.elapsed();
    assert!(
        names.values().all(|&n| n == 1),
        "a span arrived twice: {:?}",
        names
            .iter()
            .filter(|(_, &n)| n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    let sent: Vec<_> = gateway
        .received()
        .into_iter()
        .filter(|r| r.answered == 200)
        .collect();
    let bytes = sent.iter().map(|r| r.wire_len).sum();
    (drain, sent.len(), bytes)
}

/// 200 batches of about 11 kB (a node_exporter scrape's size) wait while the
/// gateway is down; over a link with 300 ms round trips they drain in a few
/// requests of at most 1 MiB, every span once.
#[test]
fn a_backlog_drains_in_few_requests_over_a_slow_link() {
    let (drain, requests, bytes) = drain_backlog("", 200, 275, Duration::from_millis(300));
    let most = bytes.div_ceil(1 << 20) + 2;
    assert!(
        requests <= most,
        "{requests} requests for {bytes} bytes: at most {most} of 1 MiB expected"
    );
    assert!(
        drain < Duration::from_secs(20),
        "{bytes} bytes in {requests} requests took {drain:?}"
    );
    eprintln!(
        "coalesced: 200 batches, {bytes} bytes in {requests} requests, drained in {:.1} s at 300 ms a round trip",
        drain.as_secs_f64()
    );
}

/// The figures for the README: a backlog over 300 ms round trips, one batch
/// a request against coalesced. Slow (about a minute); run by hand:
/// `cargo test -p tern --test system -- uplink::drain_time --ignored --nocapture`.
#[test]
#[ignore = "a measurement, about a minute"]
fn drain_time_of_a_backlog_one_batch_a_request_against_coalesced() {
    let rtt = Duration::from_millis(300);
    for (name, export) in [
        ("coalesced", ""),
        ("one batch a request", "max_request_size = 0"),
    ] {
        let (drain, requests, bytes) = drain_backlog(export, 200, 275, rtt);
        eprintln!(
            "{name}: 200 batches, {bytes} bytes in {requests} requests, drained in {:.1} s ({:.0} ms a batch)",
            drain.as_secs_f64(),
            drain.as_secs_f64() * 1000.0 / 200.0
        );
    }
}

/// `compression = "zstd"`: the same scrapes arrive whole in zstd, fewer
/// bytes than gzip; a gateway that answers 415 to zstd (as Prometheus's OTLP
/// endpoint does) gets gzip from then on, logged once, nothing lost.
#[test]
fn zstd_is_smaller_on_the_wire_and_a_gateway_without_it_gets_gzip() {
    use crate::harness::exporter::ScriptedExporter;
    use crate::harness::{config, flatten, values};
    // node_exporter-like series, values changing every scrape.
    let exporter = ScriptedExporter::start(|n| {
        let mut body = String::from("# TYPE lab_bytes gauge\n");
        for i in 0..2000u64 {
            body.push_str(&format!(
                "lab_bytes{{device=\"sd{}\",mode=\"m{}\",cpu=\"{}\"}} {}\n",
                i % 13,
                i % 7,
                i,
                (n * 7919 + i * 104_729) % 1_000_003
            ));
        }
        (200, "text/plain; version=0.0.4", body.into_bytes())
    });
    let mut per_point = Vec::new();
    for (codec, refuse) in [("gzip", false), ("zstd", false), ("zstd", true)] {
        let gateway = FakeGateway::start();
        if refuse {
            gateway.refuse_zstd();
        }
        let cfg = config("z", exporter.addr, "1s", &gateway.url()).replace(
            "timeout = \"2s\"",
            &format!("timeout = \"2s\"\ncompression = \"{codec}\"\nmax_request_size = 0"),
        );
        let agent = Agent::start(&cfg);
        let delivered = wait_for(
            Duration::from_secs(30),
            || {
                let d = gateway.delivered();
                let points: usize = flatten(&d)
                    .iter()
                    .filter(|(_, m)| m.name == "lab_bytes")
                    .map(|(_, m)| values(m).len())
                    .sum();
                (points >= 6000).then_some(d)
            },
            || agent.diagnostics(),
        );
        let ok: Vec<_> = gateway
            .received()
            .into_iter()
            .filter(|r| r.answered == 200)
            .collect();
        let want = if codec == "zstd" && !refuse {
            "zstd"
        } else {
            "gzip"
        };
        assert!(
            ok.iter().all(|r| r
                .headers
                .iter()
                .any(|(k, v)| k == "content-encoding" && v == want)),
            "{codec} (refused: {refuse}): every delivery in {want}"
        );
        let points: usize = flatten(&delivered)
            .iter()
            .map(|(_, m)| values(m).len())
            .sum();
        let bytes: usize = ok.iter().map(|r| r.wire_len).sum();
        if refuse {
            let log = agent.stderr();
            assert_eq!(
                log.matches("Gateway refused zstd (415").count(),
                1,
                "logged once:\n{log}"
            );
            assert!(!agent.metrics().contains("tern_dropped_batches_total{"));
        } else {
            per_point.push((codec, bytes as f64 / points as f64));
        }
    }
    eprintln!("bytes a point on the wire: {per_point:?}");
    assert!(
        per_point[1].1 < per_point[0].1,
        "zstd is not smaller than gzip: {per_point:?}"
    );
}
