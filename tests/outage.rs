//! The gateway goes away for a minute: every scrape taken meanwhile arrives, in
//! order, none twice, even though tern is killed with SIGKILL during the outage.

use std::time::Duration;

use crate::harness::exporter::ScriptedExporter;
use crate::harness::{config, flatten, values, wait_for, Agent, FakeGateway};

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
