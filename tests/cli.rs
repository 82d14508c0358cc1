//! The command line: --version, check, queue.

use std::process::Command;

use crate::harness::agent::tern_bin;
use crate::harness::{Agent, TempDir};

fn tern(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tern_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, _) = tern(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("tern {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_the_example_config_and_names_bad_keys() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/tern.toml");
    let (code, out, err) = tern(&["check", "--config", example]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok: "), "{out}");

    let dir = TempDir::new("cli");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[agent]\nstate_dir = \"/tmp/x\"\n\n[[scrape]]\njob = \"node\"\ntargets = [\"127.0.0.1:9100\"]\nintervall = \"5s\"\n").unwrap();
    let (code, _, err) = tern(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 78, "config errors exit with EX_CONFIG: {err}");
    let expected = format!(
        "tern: {}:7:1: intervall: unknown field `intervall`",
        bad.display()
    );
    assert!(err.starts_with(&expected), "got: {err}\nwanted: {expected}");

    std::fs::write(&bad, "[export.retry]\ninitial_interval = \"fast\"\n").unwrap();
    let (code, _, err) = tern(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 78);
    assert!(
        err.contains(":2:20: export.retry.initial_interval: invalid duration \"fast\""),
        "{err}"
    );

    let (code, _, err) = tern(&["check", "--config", "/nonexistent/tern.toml"]);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/tern.toml: cannot read"), "{err}");
}

#[test]
fn queue_shows_the_backlog_of_a_stopped_and_a_running_agent() {
    let config = "[agent]\nstate_dir = \"{state_dir}\"\nlisten = \"127.0.0.1:0\"\n\n[[scrape]]\njob = \"self\"\ntargets = [\"127.0.0.1:9\"]\ninterval = \"200ms\"\ntimeout = \"100ms\"\n";
    let agent = Agent::start(config);
    // Nothing listens on port 9: each scrape fails and queues up=0, with no gateway to send to.
    crate::harness::wait_for(
        std::time::Duration::from_secs(10),
        || {
            agent
                .metric("tern_queue_batches{signal=\"metrics\"}")
                .filter(|n| *n >= 3.0)
        },
        || agent.diagnostics(),
    );
    // While it runs, the queue is locked and `tern queue` asks the agent; it
    // needs the real listen address, so write it into a copy of the config.
    let running_cfg = agent.dir.path().join("running.toml");
    std::fs::write(
        &running_cfg,
        agent
            .config
            .replace("127.0.0.1:0", &agent.listen.unwrap().to_string()),
    )
    .unwrap();
    let (code, out, err) = tern(&["queue", "--config", running_cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("metrics@default"), "{out}");

    let cfg = agent.config_file();
    let _dir = agent.into_dir();
    let (code, out, err) = tern(&["queue", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("total")).unwrap();
    let batches: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(batches >= 3, "{out}");
}
