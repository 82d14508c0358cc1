//! Gateway faults: each is handled as the contract says, and the counters say so.

use std::time::Duration;

use crate::harness::exporter::ScriptedExporter;
use crate::harness::{config, wait_for, Agent, FakeGateway, Reply};

fn gauge_exporter() -> ScriptedExporter {
    ScriptedExporter::start(|n| {
        (
            200,
            "text/plain",
            format!("# TYPE g gauge\ng {n}\n").into_bytes(),
        )
    })
}

fn counter(agent: &Agent, gateway: &FakeGateway, name: &str, extra: &str) -> f64 {
    agent
        .metric(&format!(
            "{name}{{endpoint=\"{}\",signal=\"metrics\"{extra}}}",
            gateway.url()
        ))
        .unwrap_or(0.0)
}

#[test]
fn retryable_answers_are_retried_and_counted() {
    let exporter = gauge_exporter();
    let gateway = FakeGateway::start();
    gateway.script([
        Reply::Status(503, Some(1)),
        Reply::Status(429, None),
        Reply::Status(502, None),
        Reply::Reset,
    ]);
    let mut cfg = config("faults", exporter.addr, "1s", &gateway.url());
    cfg = cfg.replace("timeout = \"2s\"", "timeout = \"1s\"");
    let agent = Agent::start(&cfg);
    wait_for(
        Duration::from_secs(30),
        || (counter(&agent, &gateway, "tern_export_sent_batches_total", "") >= 4.0).then_some(()),
        || agent.diagnostics(),
    );
    for reason in ["http_503", "http_429", "http_502", "network"] {
        let n = counter(
            &agent,
            &gateway,
            "tern_export_failed_requests_total",
            &format!(",reason=\"{reason}\""),
        );
        assert_eq!(n, 1.0, "{reason}\n{}", agent.metrics());
    }
    assert!(counter(&agent, &gateway, "tern_export_retried_batches_total", "") >= 4.0);
    // A retry is not a drop.
    assert!(
        !agent.metrics().contains("tern_dropped_batches_total"),
        "{}",
        agent.metrics()
    );
    // The first batch, retried four times, arrived once and first. A retry
    // may carry the batches queued meanwhile after it (a coalesced backlog).
    let received = gateway.received();
    let first = &received[0].request.resource_metrics;
    let starts_with_first =
        |r: &crate::harness::gateway::Received| r.request.resource_metrics.starts_with(first);
    assert!(
        received[1..5].iter().all(starts_with_first),
        "the same batch is retried until it goes through"
    );
    assert_eq!(received[4].answered, 200);
    assert!(
        !received[5..].iter().any(|r| r
            .request
            .resource_metrics
            .iter()
            .any(|rm| first.contains(rm))),
        "delivered once"
    );

    // Retry-After: 1 was honoured: the second attempt came about a second later (not the 100ms backoff).
    // (Timing is checked loosely through the log rather than asserted on the clock.)
    assert!(
        agent.stderr().contains("retry_in=1.0s"),
        "{}",
        agent.stderr()
    );
}

#[test]
fn slow_answers_past_the_timeout_are_retried() {
    let exporter = gauge_exporter();
    let gateway = FakeGateway::start();
    gateway.script([Reply::Slow(Duration::from_secs(3))]);
    let cfg = config("slow", exporter.addr, "1s", &gateway.url())
        .replace("timeout = \"2s\"", "timeout = \"1s\"");
    let agent = Agent::start(&cfg);
    wait_for(
        Duration::from_secs(30),
        || (counter(&agent, &gateway, "tern_export_sent_batches_total", "") >= 2.0).then_some(()),
        || agent.diagnostics(),
    );
    assert_eq!(
        counter(
            &agent,
            &gateway,
            "tern_export_failed_requests_total",
            ",reason=\"timeout\""
        ),
        1.0
    );
}

#[test]
fn permanent_rejections_drop_the_batch_log_and_count() {
    let exporter = gauge_exporter();
    let gateway = FakeGateway::start();
    gateway.script([Reply::Status(400, None), Reply::Partial(3)]);
    let agent = Agent::start(&config("bad", exporter.addr, "1s", &gateway.url()));
    wait_for(
        Duration::from_secs(30),
        || (counter(&agent, &gateway, "tern_export_sent_batches_total", "") >= 3.0).then_some(()),
        || agent.diagnostics(),
    );
    // Each gateway has its own lanes, so the drop names the gateway.
    let dropped = agent.metric(&format!(
        "tern_dropped_batches_total{{signal=\"metrics\",destination=\"{}\",reason=\"permanent\"}}",
        gateway.url()
    ));
    assert_eq!(dropped, Some(1.0), "{}", agent.metrics());
    let log = agent.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("gateway refused it"))
        .expect("one log line for the drop");
    assert!(
        line.contains(&gateway.url()) && line.contains("status 400"),
        "{line}"
    );
    assert_eq!(
        counter(&agent, &gateway, "tern_export_rejected_points_total", ""),
        3.0
    );
    assert!(log.contains("Gateway rejected part of a batch"), "{log}");
    // The rejected batch was not retried: the next request carries another batch.
    let received = gateway.received();
    assert_ne!(received[1].request, received[0].request);
}
