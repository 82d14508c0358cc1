//! Signals: SIGTERM stops and flushes, SIGHUP reloads the config while the
//! queue stays, and a bad config on reload is refused.

use std::time::Duration;

use crate::harness::exporter::ScriptedExporter;
use crate::harness::{config, flatten, wait_for, Agent, FakeGateway};

fn exporter(name: &'static str) -> ScriptedExporter {
    ScriptedExporter::start(move |n| (200, "text/plain", format!("{name} {n}\n").into_bytes()))
}

#[test]
fn sighup_reloads_and_sigterm_flushes_and_exits_zero() {
    let (a, b) = (exporter("from_a"), exporter("from_b"));
    let gateway = FakeGateway::start();
    let mut agent = Agent::start(&config("a", a.addr, "300ms", &gateway.url()));
    let names = |g: &FakeGateway| -> Vec<String> {
        flatten(&g.delivered())
            .into_iter()
            .map(|(_, m)| m.name)
            .collect()
    };
    wait_for(
        Duration::from_secs(10),
        || {
            names(&gateway)
                .contains(&"from_a".to_string())
                .then_some(())
        },
        || agent.diagnostics(),
    );

    // A broken config on reload is refused; the agent keeps going.
    agent.rewrite_config("[[scrape]]\njob = 1\n");
    agent.signal("HUP");
    wait_for(
        Duration::from_secs(10),
        || {
            agent
                .metric("tern_config_reloads_total{result=\"failure\"}")
                .filter(|n| *n == 1.0)
        },
        || agent.diagnostics(),
    );
    assert!(
        agent
            .stderr()
            .contains("Reload refused, keeping the running config"),
        "{}",
        agent.stderr()
    );

    // A good config switches the target.
    agent.rewrite_config(&config("b", b.addr, "300ms", &gateway.url()));
    agent.signal("HUP");
    wait_for(
        Duration::from_secs(10),
        || {
            names(&gateway)
                .contains(&"from_b".to_string())
                .then_some(())
        },
        || agent.diagnostics(),
    );
    assert_eq!(
        agent.metric("tern_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(
        agent.metric(&format!(
            "tern_scrape_up{{job=\"a\",instance=\"{}\"}}",
            a.addr
        )),
        None,
        "old target's gauges go"
    );

    // SIGTERM: the agent stops, flushes and exits 0; the queue is readable after.
    assert_eq!(agent.terminate(), Some(0), "{}", agent.diagnostics());
    assert!(
        agent.stderr().contains("Stopped; queue flushed"),
        "{}",
        agent.stderr()
    );
    assert!(agent.state_dir().join("queue").exists());
}
