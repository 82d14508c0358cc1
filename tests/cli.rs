//! The command line: --version, check, queue, and configs that `tern check`
//! and `tern run` must refuse.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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
        "tern: {}:7:1: scrape[0].intervall: unknown field `intervall`",
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

/// `tern check` on `config` (bytes, which may not be UTF-8).
fn check(dir: &Path, config: &[u8]) -> (i32, String, String) {
    let file = dir.join("tern.toml");
    std::fs::write(&file, config).unwrap();
    tern(&["check", "--config", file.to_str().unwrap()])
}

/// Configs that can never deliver, or that the parser refuses, each as
/// `tern check` must report it: exit 78 and one line, `tern: FILE:LINE:COL:
/// KEY: reason`, with the key (never a value in its place) and the parser's
/// whole reason. See: issue 12, point 5.
#[test]
fn check_refuses_every_config_that_cannot_work() {
    let dir = TempDir::new("cli-refuse");
    let text_pem = dir.path().join("text.pem");
    std::fs::write(&text_pem, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "a zero export timeout",
            b"[export]\nendpoints = [\"http://127.0.0.1:4318\"]\ntimeout = \"0s\"\n".to_vec(),
            ":3:11: export.timeout: must be more than 0".into(),
        ),
        (
            "a zero first retry interval",
            b"[export.retry]\ninitial_interval = \"0s\"\n".to_vec(),
            ":2:20: export.retry.initial_interval: must be more than 0".into(),
        ),
        (
            "a zero longest retry interval",
            b"[export.retry]\nmax_interval = \"0s\"\n".to_vec(),
            ":2:16: export.retry.max_interval: need initial_interval (5s) <= max_interval (0ms)"
                .into(),
        ),
        (
            "a retry multiplier below 1",
            b"[export.retry]\nmultiplier = 0.5\n".to_vec(),
            ":2:14: export.retry.multiplier: must be between 1 and 100".into(),
        ),
        (
            "a randomization factor above 1",
            b"[export.retry]\nrandomization_factor = 2.0\n".to_vec(),
            ":2:24: export.retry.randomization_factor: must be between 0 and 1".into(),
        ),
        (
            "CR LF in a header value",
            b"[export]\nheaders = { \"X-Scope-OrgID\" = \"edge\\r\\nX-Evil: 1\" }\n".to_vec(),
            ":2:31: export.headers.X-Scope-OrgID: the value holds the control character U+000D"
                .into(),
        ),
        (
            "a header name that is not a token",
            b"[export]\nheaders = { \"X Scope\" = \"edge\" }\n".to_vec(),
            ":2:13: export.headers.\"X Scope\": not a header name".into(),
        ),
        (
            "a job without targets",
            b"[[scrape]]\njob = \"node\"\ntargets = []\n".to_vec(),
            ":3:11: scrape[0].targets: must list at least one target".into(),
        ),
        (
            "endpoints and dns",
            b"[export]\nendpoints = [\"http://127.0.0.1:4318\"]\ndns = { hostname = \"gw.example\" }\n"
                .to_vec(),
            ":3:20: export.dns: set either export.endpoints or export.dns, not both".into(),
        ),
        (
            "cert_file without key_file",
            b"[export.tls]\ncert_file = \"/etc/tern/client.pem\"\n".to_vec(),
            ":2:13: export.tls.cert_file: needs key_file too".into(),
        ),
        (
            "key_file without cert_file",
            b"[export.tls]\nkey_file = \"/etc/tern/client.key\"\n".to_vec(),
            ":2:12: export.tls.key_file: needs cert_file too".into(),
        ),
        (
            "an empty resource key",
            b"[resource]\n\"\" = \"prod\"\n".to_vec(),
            ":2:1: resource.\"\": an attribute needs a name".into(),
        ),
        (
            "a missing ca_file",
            format!("[export.tls]\nca_file = {missing:?}\n").into_bytes(),
            format!(":2:11: export.tls.ca_file: {}: No such file", missing.display()),
        ),
        (
            "a ca_file that is not PEM",
            format!("[export.tls]\nca_file = {text_pem:?}\n").into_bytes(),
            format!(
                ":2:11: export.tls.ca_file: {}: no PEM certificate found",
                text_pem.display()
            ),
        ),
        (
            "a file that is not UTF-8",
            b"[agent]\nlog_level = \"info\"\n# caf\xe9\n".to_vec(),
            ":3:6: invalid UTF-8 (byte 0xe9): a config file must be UTF-8 text".into(),
        ),
        (
            "a duplicate table",
            b"[agent]\nlog_level = \"info\"\n\n[agent]\nlisten = \"127.0.0.1:12345\"\n".to_vec(),
            ":4:1: agent: invalid table header: duplicate key `agent` in document root".into(),
        ),
        (
            "a number where a string belongs",
            b"[agent]\nlisten = 12345\n".to_vec(),
            ":2:10: agent.listen: invalid type: integer `12345`, expected a string".into(),
        ),
        (
            "a number in a list of strings",
            b"[[scrape]]\njob = \"node\"\ntargets = [\"127.0.0.1:9100\", 9101]\n".to_vec(),
            ":3:30: scrape[0].targets[1]: invalid type: integer `9101`, expected a string".into(),
        ),
    ];
    for (name, config, expected) in &cases {
        let (code, out, err) = check(dir.path(), config);
        let file = dir.path().join("tern.toml");
        let wanted = format!("tern: {}{expected}", file.display());
        assert_eq!(code, 78, "{name}: exit {code}\n{out}{err}");
        assert!(
            err.starts_with(&wanted),
            "{name}:\n   got: {err}\nwanted: {wanted}"
        );
        assert_eq!(err.lines().count(), 1, "{name}: one line\n{err}");
    }
}

/// A size written as a number of bytes, as the README allows, is a size.
#[test]
fn check_accepts_sizes_in_bytes() {
    let dir = TempDir::new("cli-sizes");
    for config in [
        "[export.queue]\nmax_size = 1048576\n",
        "[export.queue]\nmax_size = \"1048576\"\n",
    ] {
        let (code, out, err) = check(dir.path(), config.as_bytes());
        assert_eq!(code, 0, "{config}\n{out}{err}");
    }
}

/// Every shipped config passes `tern check`: the installed default and the examples.
#[test]
fn check_accepts_the_shipped_configs() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut configs = vec![Path::new(root).join("systemd/tern.toml")];
    for entry in std::fs::read_dir(Path::new(root).join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            configs.push(path);
        }
    }
    assert!(configs.len() >= 2, "{configs:?}");
    for config in configs {
        let (code, out, err) = tern(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}{err}", config.display());
    }
}

/// `tern run` refuses a config whose ca_file is missing as a config error
/// (78, so systemd does not restart it in a loop), before it starts anything.
#[test]
fn run_refuses_a_missing_ca_file_with_exit_78() {
    let dir = TempDir::new("cli-run-ca");
    let missing = dir.path().join("missing.pem");
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = {:?}\nlisten = \"127.0.0.1:0\"\n\n[export]\nendpoints = [\"https://127.0.0.1:9\"]\n\n[export.tls]\nca_file = {missing:?}\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let mut child = Command::new(tern_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tern run kept running with a missing ca_file\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(78), "{err}");
    let wanted = format!(
        "tern: {}:9:11: export.tls.ca_file: {}: No such file",
        config.display(),
        missing.display()
    );
    assert!(err.starts_with(&wanted), "got: {err}\nwanted: {wanted}");
    assert!(!dir.path().join("state").exists(), "nothing started");
}

#[test]
fn convert_prints_toml_that_checks_and_refuses_yaml_it_cannot_read() {
    let dir = TempDir::new("cli-convert");
    let yml = dir.path().join("prometheus.yml");
    std::fs::write(
        &yml,
        "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:9100']\n    file_sd_configs: [{files: [a.json]}]\n    metric_relabel_configs:\n      - {source_labels: [__name__], regex: 'go_.*', action: drop}\n",
    )
    .unwrap();
    let (code, out, err) = tern(&["convert", yml.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("# not carried over: scrape_configs[0].file_sd_configs (line 7): tern scrapes static targets only"),
        "{out}"
    );
    // What it prints, with a state directory, is a config tern accepts.
    let toml = dir.path().join("tern.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &toml,
        format!("{out}\n[agent]\nstate_dir = \"{}\"\n", state.display()),
    )
    .unwrap();
    let (code, checked, err) = tern(&["check", "--config", toml.to_str().unwrap()]);
    assert_eq!(code, 0, "{checked}{err}\n{out}");
    assert!(checked.contains("1 scrape jobs, 1 targets"), "{checked}");

    std::fs::write(&yml, "scrape_configs:\n  - job_name: &a node\n").unwrap();
    let (code, _, err) = tern(&["convert", yml.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.starts_with(&format!(
            "tern: {}:2:15: anchors, aliases and tags",
            yml.display()
        )),
        "{err}"
    );
    let (code, _, err) = tern(&["convert", "/nonexistent/prometheus.yml"]);
    assert_eq!(code, 78, "{err}");
}
