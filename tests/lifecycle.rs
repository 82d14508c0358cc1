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

/// Sends SIGTERM and measures how long tern takes to exit.
fn time_to_exit(agent: &mut Agent) -> (Option<i32>, Duration) {
    let started = std::time::Instant::now();
    let code = agent.terminate();
    (code, started.elapsed())
}

#[test]
fn sigterm_is_quick_idle_and_with_a_scrape_in_flight() {
    // Idle: a scrape every minute, nothing to send.
    let quiet = exporter("quiet");
    let gateway = FakeGateway::start();
    let mut agent = Agent::start(&config("idle", quiet.addr, "60s", &gateway.url()));
    // Every thread settled in its wait.
    std::thread::sleep(Duration::from_millis(500));
    let (code, idle) = time_to_exit(&mut agent);
    assert_eq!(code, Some(0), "{}", agent.diagnostics());

    // A target that answers its head and then trickles an endless body.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endless = listener.local_addr().unwrap();
    let (accepted, scraping) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = accepted.send(());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000000\r\n\r\n",
                );
                for n in 0.. {
                    if stream.write_all(format!("slow {n}\n").as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    let cfg = config("endless", endless, "1s", &gateway.url())
        .replace("interval = \"1s\"", "interval = \"5s\"\ntimeout = \"5s\"");
    let mut agent = Agent::start(&cfg);
    // The scrape has started and hangs in the body.
    scraping
        .recv_timeout(Duration::from_secs(10))
        .expect("the scrape never came");
    std::thread::sleep(Duration::from_millis(300));
    let (code, busy) = time_to_exit(&mut agent);
    assert_eq!(code, Some(0), "{}", agent.diagnostics());
    eprintln!(
        "SIGTERM to exit: idle {} ms, with a scrape reading an endless body {} ms",
        idle.as_millis(),
        busy.as_millis()
    );
    // Not a benchmark: bounds far above the targets (200 ms and 1 s) that
    // still fail on the old behaviour (1 s idle, 5.7 s busy).
    assert!(idle < Duration::from_millis(900), "idle exit took {idle:?}");
    assert!(
        busy < Duration::from_millis(3000),
        "busy exit took {busy:?}"
    );
}
