//! The gateway goes away for a minute: every scrape taken meanwhile arrives, in
//! order, none twice, even though tern is killed with SIGKILL during the outage.

use std::time::Duration;

use crate::harness::exporter::ScriptedExporter;
use crate::harness::{config, flatten, values, wait_for, Agent, FakeGateway, Reply};

/// A target whose `scrape_seq` gauge is the number of the scrape (0, 1, 2, ...).
fn counting_exporter() -> ScriptedExporter {
    ScriptedExporter::start(|n| {
        let body = format!("# TYPE scrape_seq gauge\nscrape_seq {n}\n");
        (200, "text/plain; version=0.0.4", body.into_bytes())
    })
}

/// The `scrape_seq` values the gateway received, in arrival order.
fn seqs(gateway: &FakeGateway) -> Vec<u64> {
    flatten(&gateway.delivered())
        .iter()
        .filter(|(_, m)| m.name == "scrape_seq")
        .flat_map(|(_, m)| values(m))
        .map(|v| v as u64)
        .collect()
}

#[test]
fn a_minute_of_outage_and_a_sigkill_lose_nothing_that_was_queued() {
    let exporter = counting_exporter();
    let mut gateway = FakeGateway::start();
    let mut agent = Agent::start(&config("seq", exporter.addr, "500ms", &gateway.url()));
    wait_for(
        Duration::from_secs(10),
        || (seqs(&gateway).len() >= 3).then_some(()),
        || agent.diagnostics(),
    );

    gateway.stop();
    let outage = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    // Kill tern mid-outage; what it queued must survive.
    let queued = agent
        .metric("tern_queue_batches{signal=\"metrics\"}")
        .unwrap_or(0.0);
    assert!(
        queued >= 30.0,
        "about two batches per scrape should wait on disk: {queued}\n{}",
        agent.metrics()
    );
    let served_before_kill = exporter.scrapes.load(std::sync::atomic::Ordering::SeqCst);
    agent.kill();
    agent.restart();
    let remaining = Duration::from_secs(60).saturating_sub(outage.elapsed());
    std::thread::sleep(remaining);
    gateway.restart();

    // Wait until the gateway has caught up with what the exporter served.
    let got = wait_for(
        Duration::from_secs(60),
        || {
            let s = seqs(&gateway);
            let served = exporter.scrapes.load(std::sync::atomic::Ordering::SeqCst);
            (s.last().copied().unwrap_or(0) + 3 >= served).then_some(s)
        },
        || format!("{:?}\n{}", seqs(&gateway), agent.diagnostics()),
    );
    // In order and none twice.
    for w in got.windows(2) {
        assert!(w[0] < w[1], "out of order or duplicated: {w:?} in {got:?}");
    }
    // Nothing missing, except at most the one scrape in flight when SIGKILL hit
    // (never accepted into the queue, so never promised).
    let missing: Vec<u64> = (got[0]..=*got.last().unwrap())
        .filter(|n| got.binary_search(n).is_err())
        .collect();
    assert!(
        missing.len() <= 1,
        "lost scrapes {missing:?} (killed after scrape {served_before_kill})"
    );
    if let Some(m) = missing.first() {
        assert!(
            m + 2 >= served_before_kill && *m <= served_before_kill,
            "lost scrape {m} was not the one in flight at the kill ({served_before_kill})"
        );
    }
    assert!(
        got.len() >= 100,
        "a minute at 500ms is over 100 scrapes: {}",
        got.len()
    );
}

/// A scrape job of `counting_exporter` every 500 ms sending to `gateway`,
/// with a backoff of `interval` between tries (no growth, jitter `jitter`).
fn backoff_config(
    target: std::net::SocketAddr,
    gateway: &str,
    interval: &str,
    jitter: f64,
) -> String {
    format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[[scrape]]
job = "seq"
targets = ["{target}"]
interval = "500ms"

[export]
endpoints = ["{gateway}"]
timeout = "2s"

[export.retry]
initial_interval = "{interval}"
max_interval = "{interval}"
multiplier = 1.0
randomization_factor = {jitter}
"#
    )
}

/// A backoff of 5 to 15 s is under way when the gateway comes back: the
/// reachability probe (a TCP connect every 1 to 2 s) ends it, and the first
/// delivery follows within 3 s of the return, three outages in a row.
#[test]
fn after_an_outage_the_first_delivery_follows_the_gateways_return_within_3s() {
    let exporter = counting_exporter();
    let mut gateway = FakeGateway::start();
    let agent = Agent::start(&backoff_config(exporter.addr, &gateway.url(), "10s", 0.5));
    wait_for(
        Duration::from_secs(10),
        || (!seqs(&gateway).is_empty()).then_some(()),
        || agent.diagnostics(),
    );
    for outage in [12u64, 17, 23] {
        gateway.stop();
        std::thread::sleep(Duration::from_secs(outage));
        let before = seqs(&gateway).len();
        gateway.restart();
        let back = std::time::Instant::now();
        wait_for(
            Duration::from_secs(20),
            || (seqs(&gateway).len() > before).then_some(()),
            || agent.diagnostics(),
        );
        let first = back.elapsed();
        assert!(
            first < Duration::from_secs(3),
            "after a {outage} s outage the first delivery came {first:?} after the gateway's return\n{}",
            agent.metrics()
        );
    }
    let probes = |result: &str| {
        agent
            .metric(&format!(
                "tern_export_probes_total{{endpoint=\"{}\",result=\"{result}\"}}",
                gateway.url()
            ))
            .unwrap_or(0.0)
    };
    assert!(
        probes("down") >= 3.0 && probes("up") >= 3.0,
        "{}",
        agent.metrics()
    );
    assert!(
        agent
            .stderr()
            .contains("Gateway reachable again, sending now"),
        "{}",
        agent.stderr()
    );
}

/// The issue's case, with the default retry settings (5 s growing to 30 s):
/// a 120 s outage, after which the backoff is at its longest. Slow (about
/// 2.5 minutes); run by hand:
/// `cargo test -p tern --test system -- outage::first_delivery_after_120s --ignored --nocapture`.
#[test]
#[ignore = "a measurement, about 2.5 minutes"]
fn first_delivery_after_120s_of_outage_with_the_default_retry() {
    let exporter = counting_exporter();
    let mut gateway = FakeGateway::start();
    let config = format!(
        "[agent]\nstate_dir = \"{{state_dir}}\"\nlisten = \"127.0.0.1:0\"\n\n[[scrape]]\njob = \"seq\"\ntargets = [\"{}\"]\ninterval = \"1s\"\n\n[export]\nendpoints = [\"{}\"]\n",
        exporter.addr,
        gateway.url()
    );
    let agent = Agent::start(&config);
    wait_for(
        Duration::from_secs(10),
        || (!seqs(&gateway).is_empty()).then_some(()),
        || agent.diagnostics(),
    );
    gateway.stop();
    std::thread::sleep(Duration::from_secs(120));
    let before = seqs(&gateway).len();
    gateway.restart();
    let back = std::time::Instant::now();
    wait_for(
        Duration::from_secs(60),
        || (seqs(&gateway).len() > before).then_some(()),
        || agent.diagnostics(),
    );
    let first = back.elapsed();
    eprintln!("after a 120 s outage, first delivery {first:?} after the gateway's return");
    assert!(first < Duration::from_secs(3), "{first:?}");
}

/// A gateway that answers (503, or accepts and resets) is not helped by a
/// probe: the backoff stands, so it is not sent a request every 2 s.
#[test]
fn a_gateway_that_answers_503_or_resets_keeps_its_backoff() {
    for (fault, reply) in [("503", Reply::Status(503, None)), ("reset", Reply::Reset)] {
        let exporter = counting_exporter();
        let gateway = FakeGateway::start();
        let agent = Agent::start(&backoff_config(exporter.addr, &gateway.url(), "4s", 0.0));
        wait_for(
            Duration::from_secs(10),
            || (!seqs(&gateway).is_empty()).then_some(()),
            || agent.diagnostics(),
        );
        gateway.set_default(reply.clone());
        let before = gateway.received().len();
        std::thread::sleep(Duration::from_secs(13));
        let tries = gateway.received().len() - before;
        // One try now, then one each 4 s: at most 5 in 13 s (a probe-driven
        // retry would make about 7 to 13).
        assert!(
            (2..=5).contains(&tries),
            "{fault}: {tries} requests in 13 s with a 4 s backoff\n{}",
            agent.metrics()
        );
        let down = agent
            .metric(&format!(
                "tern_export_probes_total{{endpoint=\"{}\",result=\"down\"}}",
                gateway.url()
            ))
            .unwrap_or(0.0);
        assert_eq!(
            down,
            0.0,
            "{fault}: the gateway was never down\n{}",
            agent.metrics()
        );
        gateway.set_default(Reply::Ok);
    }
}
