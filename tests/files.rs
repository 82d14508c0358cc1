//! The `[[file]]` source: lines of files found before and after the start,
//! globs and excludes, long lines, bytes that are not UTF-8; rotation by
//! Debian's logrotate (create and copytruncate, compressed); and tern
//! SIGKILLed 20 times at random points while a writer appends and logrotate
//! rotates: every line arrives once, in order, per file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{attr, wait_for, Agent, FakeGateway, TempDir};
use tern::otlp::proto::common::v1::any_value;

fn config(gateway: &FakeGateway, files: &str) -> String {
    config_with(gateway, files, "")
}

/// The config, with `export` lines added to `[export]`.
fn config_with(gateway: &FakeGateway, files: &str, export: &str) -> String {
    format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

{files}

[export]
endpoints = ["{}"]
timeout = "2s"
{export}

[export.retry]
initial_interval = "100ms"
max_interval = "500ms"
"#,
        gateway.url()
    )
}

/// A delivered line: the file's name and path, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    name: String,
    path: String,
    body: String,
    host: Option<String>,
    /// The request it came in.
    digest: u64,
}

fn lines(gateway: &FakeGateway) -> Vec<Line> {
    let mut out = Vec::new();
    for (digest, req) in gateway.delivered_logs() {
        for rl in req.resource_logs {
            let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    let body = match r.body.and_then(|b| b.value) {
                        Some(any_value::Value::StringValue(s)) => s,
                        Some(any_value::Value::BytesValue(b)) => {
                            format!("bytes:{}", String::from_utf8_lossy(&b))
                        }
                        other => format!("{other:?}"),
                    };
                    out.push(Line {
                        name: attr(&r.attributes, "log.file.name").unwrap_or("").into(),
                        path: attr(&r.attributes, "log.file.path").unwrap_or("").into(),
                        body,
                        host: attr(&resource, "host.name").map(String::from),
                        digest,
                    });
                }
            }
        }
    }
    out
}

fn wait_lines(gateway: &FakeGateway, agent: &Agent, n: usize) -> Vec<Line> {
    wait_for(
        Duration::from_secs(30),
        || {
            let l = lines(gateway);
            (l.len() >= n).then_some(l)
        },
        || {
            format!(
                "{} lines: {:?}\n{}",
                lines(gateway).len(),
                lines(gateway).iter().rev().take(5).collect::<Vec<_>>(),
                agent.diagnostics()
            )
        },
    )
}

fn append(path: &Path, text: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text).unwrap();
}

#[test]
fn lines_of_files_found_before_and_after_the_start() {
    let gateway = FakeGateway::start();
    let dir = TempDir::new("files");
    let logs = dir.path();
    std::fs::create_dir_all(logs.join("sub")).unwrap();
    append(&logs.join("a.log"), b"a1\na2\r\n");
    append(&logs.join("skip.log"), b"excluded\n");
    append(&logs.join("old.log.gz"), b"\x1f\x8bcompressed\n");
    let agent = Agent::start(&config(
        &gateway,
        &format!(
            "[[file]]\ninclude = [\"{0}/*.log\", \"{0}/*.log.gz\", \"{0}/**/deep.txt\"]\nexclude = [\"{0}/skip.*\"]\nread_from = \"head\"\nmax_line_size = 64",
            logs.display()
        ),
    ));
    let got = wait_lines(&gateway, &agent, 2);
    assert_eq!(
        got.iter().map(|l| l.body.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert_eq!(got[0].name, "a.log");
    assert_eq!(got[0].path, logs.join("a.log").display().to_string());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(got[0].host.as_deref(), Some(host.trim()));
    // Appended lines, a line written in two parts, new files, a deep one.
    append(&logs.join("a.log"), b"a3\npart");
    std::thread::sleep(Duration::from_millis(600));
    append(&logs.join("a.log"), b"ial\n");
    append(&logs.join("b.log"), b"b1\n\xff\xfe not utf-8\n");
    std::fs::create_dir_all(logs.join("sub/deeper")).unwrap();
    append(&logs.join("sub/deeper/deep.txt"), b"d1\n");
    append(
        &logs.join("a.log"),
        format!("{}\n", "x".repeat(200)).as_bytes(),
    );
    append(&logs.join("a.log"), b"after long\n");
    let got = wait_lines(&gateway, &agent, 9);
    let by_file = |name: &str| -> Vec<String> {
        got.iter()
            .filter(|l| l.name == name)
            .map(|l| l.body.clone())
            .collect()
    };
    assert_eq!(
        by_file("a.log"),
        ["a1", "a2", "a3", "partial", &"x".repeat(64), "after long"]
    );
    assert_eq!(by_file("b.log"), ["b1", "bytes:\u{fffd}\u{fffd} not utf-8"]);
    assert_eq!(by_file("deep.txt"), ["d1"]);
    assert!(by_file("skip.log").is_empty() && by_file("old.log.gz").is_empty());
    assert_eq!(agent.metric("tern_file_cut_lines_total"), Some(1.0));
    assert_eq!(agent.metric("tern_file_followed"), Some(3.0));
}

#[test]
fn tail_skips_what_was_there_and_a_restart_misses_nothing() {
    let gateway = FakeGateway::start();
    let dir = TempDir::new("files-tail");
    let log = dir.path().join("app.log");
    append(&log, b"old 1\nold 2\n");
    let cfg = config(
        &gateway,
        &format!("[[file]]\ninclude = [\"{}\"]", log.display()),
    );
    let mut agent = Agent::start(&cfg);
    wait_for(
        Duration::from_secs(10),
        || agent.metric("tern_file_followed").filter(|&n| n == 1.0),
        || agent.diagnostics(),
    );
    append(&log, b"new 1\n");
    wait_lines(&gateway, &agent, 1);
    assert_eq!(agent.terminate(), Some(0));
    append(&log, b"while down 1\nwhile down 2\n");
    let other = dir.path().join("app.log");
    assert_eq!(other, log);
    agent.restart();
    append(&log, b"new 2\n");
    let got = wait_lines(&gateway, &agent, 4);
    std::thread::sleep(Duration::from_millis(1500));
    let got2 = lines(&gateway);
    assert_eq!(got.len(), got2.len(), "nothing more arrives");
    assert_eq!(
        got2.iter().map(|l| l.body.as_str()).collect::<Vec<_>>(),
        ["new 1", "while down 1", "while down 2", "new 2"]
    );
}

#[test]
fn a_deleted_file_is_read_to_its_end_and_a_truncated_one_again() {
    let gateway = FakeGateway::start();
    let dir = TempDir::new("files-del");
    let (del, trunc) = (dir.path().join("del.log"), dir.path().join("trunc.log"));
    append(&del, b"");
    append(&trunc, b"");
    let agent = Agent::start(&config(
        &gateway,
        &format!(
            "[[file]]\ninclude = [\"{}/*.log\"]\nrotate_wait = \"1s\"",
            dir.path().display()
        ),
    ));
    wait_for(
        Duration::from_secs(10),
        || agent.metric("tern_file_followed").filter(|&n| n == 2.0),
        || agent.diagnostics(),
    );
    // A writer that keeps its descriptor: its lines after the unlink still come.
    let mut writer = std::fs::OpenOptions::new().append(true).open(&del).unwrap();
    writer.write_all(b"before unlink\n").unwrap();
    std::fs::remove_file(&del).unwrap();
    writer.write_all(b"after unlink\n").unwrap();
    append(&trunc, b"t1 long enough to be told apart\nt2\n");
    wait_lines(&gateway, &agent, 4);
    std::fs::write(&trunc, b"").unwrap();
    append(&trunc, b"t3\n");
    let got = wait_lines(&gateway, &agent, 5);
    let bodies: Vec<&str> = got.iter().map(|l| l.body.as_str()).collect();
    for want in [
        "before unlink",
        "after unlink",
        "t1 long enough to be told apart",
        "t2",
        "t3",
    ] {
        assert_eq!(
            bodies.iter().filter(|b| **b == want).count(),
            1,
            "{want}: {bodies:?}"
        );
    }
    assert_eq!(agent.metric("tern_file_truncations_total"), Some(1.0));
    wait_for(
        Duration::from_secs(10),
        || agent.metric("tern_file_followed").filter(|&n| n == 1.0),
        || agent.diagnostics(),
    );
    assert_eq!(agent.metric("tern_file_rotations_total"), Some(1.0));
}

/// A 256 MiB line costs at most `max_line_size` of memory: it is cut,
/// counted, and the line after it arrives.
#[test]
fn a_huge_line_is_cut_without_holding_it() {
    let gateway = FakeGateway::start();
    let dir = TempDir::new("files-huge");
    let log = dir.path().join("huge.log");
    append(&log, b"before\n");
    let agent = Agent::start(&config(
        &gateway,
        &format!(
            "[[file]]\ninclude = [\"{}\"]\nread_from = \"head\"\nmax_line_size = \"4KiB\"",
            log.display()
        ),
    ));
    wait_lines(&gateway, &agent, 1);
    let before = agent.peak_rss();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    for _ in 0..256 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\nafter\n").unwrap();
    let got = wait_lines(&gateway, &agent, 3);
    let bodies: Vec<&str> = got.iter().map(|l| l.body.as_str()).collect();
    assert_eq!(bodies, ["before", &"z".repeat(4096), "after"]);
    assert_eq!(agent.metric("tern_file_cut_lines_total"), Some(1.0));
    let after = agent.peak_rss();
    assert!(
        after < before + (16 << 20),
        "peak RSS grew from {before} to {after} bytes over a 256 MiB line"
    );
}

/// Stack traces: lines that do not match the start pattern join the record
/// before them; the last record goes once no line came for a second; a
/// SIGKILL in the middle of a record loses and doubles nothing.
#[test]
fn multiline_records_join_their_lines() {
    let gateway = FakeGateway::start();
    let dir = TempDir::new("files-multiline");
    let log = dir.path().join("java.log");
    append(&log, b"");
    let mut agent = Agent::start(&config(
        &gateway,
        &format!(
            "[[file]]\ninclude = [\"{}\"]\nread_from = \"head\"\nmultiline = '^\\d{{4}}-'",
            log.display()
        ),
    ));
    wait_for(
        Duration::from_secs(10),
        || agent.metric("tern_file_followed").filter(|&n| n == 1.0),
        || agent.diagnostics(),
    );
    let trace = "2026-12-07 12:00:00 ERROR boom\njava.lang.RuntimeException: x\n    at a.b(C.java:1)\n    at d.e(F.java:2)";
    append(
        &log,
        format!("{trace}\n2026-12-07 12:00:01 INFO next\n").as_bytes(),
    );
    let got = wait_lines(&gateway, &agent, 2);
    assert_eq!(got[0].body, trace);
    assert_eq!(got[1].body, "2026-12-07 12:00:01 INFO next");
    // Half a record, a SIGKILL, the other half.
    append(&log, b"2026-12-07 12:00:02 ERROR again\n  at x\n");
    std::thread::sleep(Duration::from_millis(300));
    agent.kill();
    append(&log, b"  at y\n2026-12-07 12:00:03 INFO last\n");
    agent.restart();
    let got = wait_lines(&gateway, &agent, 4);
    std::thread::sleep(Duration::from_millis(1500));
    let bodies: Vec<String> = lines(&gateway).into_iter().map(|l| l.body).collect();
    assert_eq!(
        bodies,
        [
            trace,
            "2026-12-07 12:00:01 INFO next",
            "2026-12-07 12:00:02 ERROR again\n  at x\n  at y",
            "2026-12-07 12:00:03 INFO last"
        ],
        "{got:?}"
    );
}

fn logrotate(conf: &Path, state: &Path) {
    let out = Command::new("/usr/sbin/logrotate")
        .arg("-f")
        .arg("-s")
        .arg(state)
        .arg(conf)
        .output()
        .expect("logrotate is missing: apt-get install logrotate (scripts/test does)");
    assert!(
        out.status.success(),
        "logrotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lines delivered, a request sent again after a lost answer (the same
/// digest: at least once, by design) counted once; a line in two different
/// requests (queued twice) is kept twice.
fn once(gateway: &FakeGateway) -> Vec<Line> {
    let mut first: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    lines(gateway)
        .into_iter()
        .filter(|l| match first.get(&l.body) {
            Some(d) if *d == l.digest => false,
            Some(_) => true,
            None => {
                first.insert(l.body.clone(), l.digest);
                true
            }
        })
        .collect()
}

/// Waits until every line written so far was delivered.
fn caught_up(gateway: &FakeGateway, agent: &Agent, next: &BTreeMap<&str, u64>, seed: u64) {
    let written: u64 = next.values().sum();
    wait_for(
        Duration::from_secs(60),
        || (once(gateway).len() as u64 >= written).then_some(()),
        || {
            format!(
                "seed {seed}: {}\n{}",
                report(gateway, next),
                agent.diagnostics()
            )
        },
    );
}

/// Per file: lines delivered of those written, and the missing ones.
fn report(gateway: &FakeGateway, next: &BTreeMap<&str, u64>) -> String {
    let got = once(gateway);
    let summary: Vec<String> = next
        .iter()
        .map(|(name, n)| {
            let have: std::collections::BTreeSet<u64> = got
                .iter()
                .filter_map(|l| l.body.strip_prefix(&format!("{name} line "))?.parse().ok())
                .collect();
            let missing: Vec<u64> = (0..*n).filter(|i| !have.contains(i)).collect();
            format!(
                "{name}: {} of {n}, missing {} (first {:?}, last {:?})",
                have.len(),
                missing.len(),
                missing.first(),
                missing.last()
            )
        })
        .collect();
    let received = gateway.received();
    let answers: Vec<u16> = received.iter().map(|r| r.answered).collect();
    let undecoded = received.iter().filter(|r| r.logs.is_none()).count();
    format!(
        "{}; {} requests, answered {answers:?}, {undecoded} not decoded as logs",
        summary.join("; "),
        received.len()
    )
}

/// A small xorshift, seeded, for the kill points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Two files, one rotated by rename (`create`) and one by `copytruncate`,
/// both compressed (`delaycompress`, as Debian's own logrotate configs do), a
/// writer appending numbered lines, logrotate run every few rounds, and tern
/// SIGKILLed 20 times at random points: every line arrives once, in order.
#[test]
fn sigkill_during_rotation_loses_and_doubles_nothing() {
    let gateway = FakeGateway::start();
    let dir = TempDir::new("files-kill");
    let (created, copied) = (dir.path().join("create.log"), dir.path().join("copy.log"));
    append(&created, b"");
    append(&copied, b"");
    let conf = dir.path().join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{} {{\n  rotate 30\n  create\n  compress\n  delaycompress\n  missingok\n}}\n{} {{\n  rotate 30\n  copytruncate\n  compress\n  delaycompress\n  missingok\n}}\n",
            created.display(),
            copied.display()
        ),
    )
    .unwrap();
    let state = dir.path().join("logrotate.state");
    // One batch a request: a request sent again after a lost answer is then
    // the same request (at least once, by design), told apart by its digest
    // from a line queued twice.
    let mut agent = Agent::start(&config_with(
        &gateway,
        &format!(
            "[[file]]\ninclude = [\"{}\", \"{}\"]\nread_from = \"head\"\nrotate_wait = \"1s\"",
            created.display(),
            copied.display()
        ),
        "max_request_size = \"1KiB\"",
    ));
    // Kill points differ from run to run; a failure names its seed
    // (TERN_TEST_SEED=n runs it again).
    let seed = std::env::var("TERN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = Rng(seed);
    // A first line each, read before the first kill: a file tern saw only
    // empty, written and copied away (copytruncate) while tern is down, leaves
    // nothing to tell the copy by.
    append(&created, b"create.log line 000000\n");
    append(&copied, b"copy.log line 000000\n");
    wait_lines(&gateway, &agent, 2);
    let mut next = BTreeMap::from([("create.log", 1u64), ("copy.log", 1u64)]);
    // A rotated file is compressed at the next rotation (delaycompress): the
    // lines tern had not read by then are gone for any reader. So before a
    // rotation tern has had the chance to read the last one's file; kills
    // come anywhere.
    let mut safe_to_rotate = true;
    let mut kills = 0;
    let mut round = 0;
    while kills < 20 {
        round += 1;
        for (name, n) in next.iter_mut() {
            let path = dir.path().join(name);
            let mut text = String::new();
            for _ in 0..(1 + rng.below(300)) {
                text.push_str(&format!("{name} line {n:06}\n"));
                *n += 1;
            }
            append(&path, text.as_bytes());
        }
        if round % 3 == 0 {
            caught_up(&gateway, &agent, &next, seed);
            logrotate(&conf, &state);
            safe_to_rotate = false;
        }
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        if rng.below(2) == 0 {
            agent.kill();
            kills += 1;
            // Sometimes the rotation happens while tern is down.
            if safe_to_rotate && rng.below(2) == 0 {
                logrotate(&conf, &state);
            }
            safe_to_rotate = false;
            agent.restart();
        }
        if round % 3 == 2 {
            caught_up(&gateway, &agent, &next, seed);
            safe_to_rotate = true;
        }
    }
    caught_up(&gateway, &agent, &next, seed);
    std::thread::sleep(Duration::from_millis(1500));
    let got = once(&gateway);
    for (name, n) in &next {
        let bodies: Vec<String> = got
            .iter()
            .map(|l| l.body.clone())
            .filter(|b| b.starts_with(name))
            .collect();
        let want: Vec<String> = (0..*n).map(|i| format!("{name} line {i:06}")).collect();
        if bodies != want {
            let missing: Vec<&String> = want
                .iter()
                .filter(|w| !bodies.contains(w))
                .take(5)
                .collect();
            let mut seen = std::collections::HashSet::new();
            let doubled: Vec<&String> =
                bodies.iter().filter(|b| !seen.insert(*b)).take(5).collect();
            panic!(
                "seed {seed}: {name}: {} lines, want {n}; missing {missing:?}, doubled {doubled:?}\n{}",
                bodies.len(),
                agent.diagnostics()
            );
        }
    }
    let rotated: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .collect();
    assert!(rotated.len() >= 4, "logrotate compressed {rotated:?}");
}
