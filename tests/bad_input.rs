//! Bad scrape bodies: the scrape fails with a clear reason, tern keeps running.

use std::time::Duration;

use crate::harness::exporter::{Body, ScriptedExporter};
use crate::harness::{config, flatten, http_get, values, wait_for, Agent, FakeGateway};

/// Scrapes `body` once a second and checks the scrape fails with `reason`
/// (the `result` label) and `log` in the log line, while tern stays healthy.
fn check_rejected(body: impl Fn(u64) -> Body + Send + Sync + 'static, result: &str, log: &str) {
    let exporter = ScriptedExporter::start(body);
    let gateway = FakeGateway::start();
    let cfg = config("bad", exporter.addr, "1s", &gateway.url()) + "";
    let cfg = cfg.replace(
        "interval = \"1s\"",
        "interval = \"1s\"\nbody_size_limit = \"20MiB\"",
    );
    let agent = Agent::start(&cfg);
    let series = format!(
        "tern_scrapes_total{{job=\"bad\",instance=\"{}\",result=\"{result}\"}}",
        exporter.addr
    );
    wait_for(
        Duration::from_secs(30),
        || agent.metric(&series).filter(|n| *n >= 1.0),
        || agent.diagnostics() + &agent.metrics(),
    );
    let up = format!(
        "tern_scrape_up{{job=\"bad\",instance=\"{}\"}}",
        exporter.addr
    );
    assert_eq!(agent.metric(&up), Some(0.0));
    assert!(
        agent.stderr().contains(log),
        "log should say {log:?}:\n{}",
        agent.stderr()
    );
    assert_eq!(
        http_get(agent.listen.unwrap(), "/-/healthy").map(|r| r.0),
        Some(200)
    );
    // The gateway sees up = 0 for the target, and no samples from the bad body.
    let ups = wait_for(
        Duration::from_secs(20),
        || {
            let m = flatten(&gateway.delivered());
            let ups: Vec<f64> = m
                .iter()
                .filter(|(_, m)| m.name == "up")
                .flat_map(|(_, m)| values(m))
                .collect();
            (!ups.is_empty()).then_some((ups, m))
        },
        || agent.diagnostics(),
    );
    assert!(ups.0.iter().all(|v| *v == 0.0), "{:?}", ups.0);
    assert!(ups.1.iter().all(
        |(_, m)| ["up", "scrape_duration_seconds", "scrape_samples_scraped"]
            .contains(&m.name.as_str())
    ));
}

#[test]
fn garbage_is_a_parse_error() {
    check_rejected(
        |_| {
            (
                200,
                "text/plain",
                b"\x00\x01 this is not { exposition\n".to_vec(),
            )
        },
        "parse_error",
        "parse: line 1",
    );
}

#[test]
fn invalid_utf8_is_a_parse_error() {
    check_rejected(
        |_| (200, "text/plain", b"m{l=\"\xff\xfe\"} 1\n".to_vec()),
        "parse_error",
        "parse: line 1",
    );
}

#[test]
fn a_body_over_the_limit_is_refused() {
    check_rejected(
        |_| (200, "text/plain", vec![b'#'; 50 << 20]),
        "body_too_large",
        "body exceeds body_size_limit",
    );
}

#[test]
fn a_one_megabyte_line_is_refused() {
    check_rejected(
        |_| {
            (
                200,
                "text/plain",
                format!("m{{l=\"{}\"}} 1\n", "a".repeat(1 << 20)).into_bytes(),
            )
        },
        "parse_error",
        "parse: line 1",
    );
}

#[test]
fn ten_thousand_labels_are_refused() {
    let labels: Vec<String> = (0..10_000).map(|i| format!("l{i}=\"v\"")).collect();
    let body = format!("m{{{}}} 1\n", labels.join(","));
    check_rejected(
        move |_| (200, "text/plain", body.clone().into_bytes()),
        "parse_error",
        "parse: line 1",
    );
}

#[test]
fn a_target_that_answers_500_is_down() {
    check_rejected(
        |_| (500, "text/plain", b"oops".to_vec()),
        "http_status",
        "server returned status 500",
    );
}
