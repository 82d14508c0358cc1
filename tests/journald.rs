//! The `[journald]` source against real journal files: the tests write export
//! streams, turn them into journal files with systemd-journal-remote (Debian's
//! systemd-journal-remote package), and run tern with `directory` pointing at
//! them and the real journalctl; the test gateway decodes every log record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{attr, wait_for, Agent, FakeGateway, TempDir};
use tern::otlp::proto::common::v1::{any_value, KeyValue};
use tern::otlp::proto::logs::v1::LogRecord;

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const BOOT_ID: &str = "6c7c6013a26343b29e964691ff25d04c";
const MACHINE_ID: &str = "a91663387a90b89f185d4e860000001a";
/// __REALTIME_TIMESTAMP of entry 0, in microseconds.
const BASE_US: u64 = 1_700_000_000_000_000;

/// One journal entry: its fields in order.
#[derive(Clone)]
struct Entry {
    fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// Entry `seq`: journal timestamps from `seq`, host `box`, `_PID` = seq + 1
    /// (how the tests recognize a record), PRIORITY 6 (info, tern's default
    /// `min_priority`) and `MESSAGE`.
    fn new(seq: u64, message: &[u8]) -> Entry {
        let mut e = Entry { fields: Vec::new() };
        e.set("__REALTIME_TIMESTAMP", (BASE_US + seq * 1000).to_string())
            .set("__MONOTONIC_TIMESTAMP", (1_000_000 + seq).to_string())
            .set("_BOOT_ID", BOOT_ID)
            .set("_MACHINE_ID", MACHINE_ID)
            .set("_HOSTNAME", "box")
            .set("_PID", (seq + 1).to_string())
            .set("PRIORITY", "6")
            .set("MESSAGE", message);
        e
    }

    /// Sets `name` to one value, replacing any it had.
    fn replace(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Entry {
        self.fields.retain(|(n, _)| n != name);
        self.set(name, value)
    }

    fn set(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Entry {
        self.fields
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    fn without(mut self, name: &str) -> Entry {
        self.fields.retain(|(n, _)| n != name);
        self
    }
}

/// The Journal Export Format of `entries`: text fields where the value allows
/// it, binary ones (64-bit little-endian length) otherwise.
fn export(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        for (name, value) in &e.fields {
            let text = std::str::from_utf8(value)
                .is_ok_and(|s| s.chars().all(|c| c == '\t' || !c.is_control()));
            out.extend_from_slice(name.as_bytes());
            if text {
                out.push(b'=');
                out.extend_from_slice(value);
            } else {
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// A directory of journal files written by systemd-journal-remote.
struct Journal {
    dir: TempDir,
    /// The file new entries are appended to.
    file: String,
    written: usize,
}

impl Journal {
    fn new(name: &str) -> Journal {
        assert!(
            Path::new(JOURNAL_REMOTE).exists(),
            "{JOURNAL_REMOTE} is missing: apt-get install systemd-journal-remote (scripts/test does)"
        );
        Journal {
            dir: TempDir::new(name),
            file: "remote.journal".into(),
            written: 0,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Appends `entries` to the journal file (while tern may be reading it).
    fn append(&mut self, entries: &[Entry]) {
        let input = self.path().join(format!("input-{}.export", self.written));
        self.written += 1;
        std::fs::File::create(&input)
            .and_then(|mut f| f.write_all(&export(entries)))
            .unwrap();
        let out = Command::new(JOURNAL_REMOTE)
            .arg(format!(
                "--output={}",
                self.path().join(&self.file).display()
            ))
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-journal-remote failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&input).unwrap();
    }

    /// The journal files, for deleting some (a vacuum).
    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "journal"))
            .collect();
        v.sort();
        v
    }
}

fn config(gateway: &FakeGateway, journal: &Path, read_from: &str, extra: &str) -> String {
    format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[resource]
"deployment.environment" = "test"

[journald]
directory = "{}"
read_from = "{read_from}"
{extra}

[export]
endpoints = ["{}"]
timeout = "2s"

[export.retry]
initial_interval = "100ms"
max_interval = "500ms"
"#,
        journal.display(),
        gateway.url()
    )
}

/// One delivered record with its resource attributes and request digest.
#[derive(Clone, Debug)]
struct Rec {
    resource: Vec<KeyValue>,
    record: LogRecord,
    digest: u64,
}

fn records(gateway: &FakeGateway) -> Vec<Rec> {
    let mut out = Vec::new();
    for (digest, req) in gateway.delivered_logs() {
        for rl in req.resource_logs {
            let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
            for sl in rl.scope_logs {
                for record in sl.log_records {
                    out.push(Rec {
                        resource: resource.clone(),
                        record,
                        digest,
                    });
                }
            }
        }
    }
    out
}

fn value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

/// The entry number of a record: `process.pid` - 1.
fn seq(r: &Rec) -> u64 {
    match value(&r.record.attributes, "process.pid") {
        Some(any_value::Value::IntValue(pid)) => (*pid - 1) as u64,
        other => panic!("record without process.pid: {other:?} {:?}", r.record),
    }
}

fn body(r: &LogRecord) -> Option<&any_value::Value> {
    r.body.as_ref().and_then(|b| b.value.as_ref())
}

/// Records by entry number; panics on an entry delivered twice in different
/// requests (a source duplicate). The same request delivered twice (an
/// export retry after a lost ack, at-least-once by design) counts once.
fn exactly_once(gateway: &FakeGateway) -> BTreeMap<u64, Rec> {
    let mut seen_digests = HashSet::new();
    let mut by_seq: BTreeMap<u64, Rec> = BTreeMap::new();
    let mut first_digest = HashMap::new();
    for r in records(gateway) {
        let s = seq(&r);
        match first_digest.get(&s) {
            Some(d) if *d == r.digest => continue,
            Some(d) => panic!(
                "entry {s} delivered in two different requests ({d:x} and {:x})",
                r.digest
            ),
            None => {
                first_digest.insert(s, r.digest);
                seen_digests.insert(r.digest);
                by_seq.insert(s, r);
            }
        }
    }
    by_seq
}

fn wait_for_seqs(gateway: &FakeGateway, agent: &Agent, want: usize, timeout: Duration) {
    wait_for(
        timeout,
        || (exactly_once(gateway).len() >= want).then_some(()),
        || {
            format!(
                "{} of {want} entries delivered\n{}",
                exactly_once(gateway).len(),
                agent.diagnostics()
            )
        },
    );
}

#[test]
fn journald_forwards_every_kind_of_entry() {
    let mut journal = Journal::new("journal-kinds");
    let mut entries = Vec::new();
    let mut seq = 0u64;
    fn next(seq: &mut u64, message: &[u8]) -> Entry {
        let e = Entry::new(*seq, message);
        *seq += 1;
        e
    }
    // Every priority in many units, with the common trusted fields.
    for unit in 0..20u64 {
        for priority in 0..8u64 {
            let mut e = next(
                &mut seq,
                format!("unit {unit} priority {priority}").as_bytes(),
            );
            e.replace("PRIORITY", priority.to_string())
                .set("_SYSTEMD_UNIT", format!("unit-{unit:02}.service"))
                .set("SYSLOG_IDENTIFIER", format!("app{unit}"))
                .set("_COMM", format!("app{unit}"))
                .set("_EXE", format!("/usr/bin/app{unit}"))
                .set("_TRANSPORT", "journal")
                .set("CODE_FILE", "src/main.c")
                .set("CODE_LINE", (100 + priority).to_string())
                .set("CODE_FUNC", "main")
                .set(
                    "_SOURCE_REALTIME_TIMESTAMP",
                    (BASE_US - 5_000_000 + unit).to_string(),
                );
            entries.push(e);
        }
    }
    let special_start = seq;
    let big = "x".repeat(64 << 10);
    let big_lines = format!("{}\n{}", "a".repeat(32 << 10), "b".repeat((32 << 10) - 1));
    let specials: Vec<(Vec<u8>, &str)> = vec![
        (b"first line\nsecond line\n\tthird".to_vec(), "multi-line"),
        (b"not \xff\xfe utf-8 \x00 at all".to_vec(), "non-utf8"),
        (big.clone().into_bytes(), "64k"),
        (big_lines.clone().into_bytes(), "64k multi-line"),
        ("ünïcødé ✓".as_bytes().to_vec(), "unicode"),
    ];
    for (message, _) in &specials {
        entries.push(next(&mut seq, message));
    }
    // A binary field that is not forwarded, repeated fields, no MESSAGE, and
    // another host.
    let mut e = next(&mut seq, b"first message");
    e.set("BLOB", [0u8, 1, 2, b'\n', 255])
        .set("MESSAGE", "second message")
        .set("_SYSTEMD_UNIT", "a.service")
        .set("_SYSTEMD_UNIT", "b.service");
    entries.push(e);
    let repeated = seq - 1;
    entries.push(next(&mut seq, b"").without("MESSAGE").without("PRIORITY"));
    let no_message = seq - 1;
    let mut e = next(&mut seq, b"from another host");
    e.fields.retain(|(n, _)| n != "_HOSTNAME");
    e.set("_HOSTNAME", "other");
    entries.push(e);
    let other_host = seq - 1;
    let total = seq;
    journal.append(&entries);

    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(
        &gateway,
        journal.path(),
        "head",
        "min_priority = \"debug\"",
    ));
    wait_for_seqs(&gateway, &agent, total as usize, Duration::from_secs(60));
    let got = exactly_once(&gateway);
    assert_eq!(got.len(), total as usize);

    for (s, r) in &got {
        let rec = &r.record;
        let res = &r.resource;
        let host = if *s == other_host { "other" } else { "box" };
        assert_eq!(attr(res, "host.name"), Some(host), "entry {s}");
        assert_eq!(attr(res, "host.id"), Some(MACHINE_ID));
        assert_eq!(attr(res, "_BOOT_ID"), Some(BOOT_ID));
        assert_eq!(attr(res, "deployment.environment"), Some("test"));
        assert!(rec.observed_time_unix_nano > 1_700_000_000_000_000_000);
        if *s < special_start {
            let (unit, priority) = (s / 8, s % 8);
            assert_eq!(
                body(rec),
                Some(&any_value::Value::StringValue(format!(
                    "unit {unit} priority {priority}"
                )))
            );
            let (number, text) = [
                (21, "emerg"),
                (19, "alert"),
                (18, "crit"),
                (17, "err"),
                (13, "warning"),
                (10, "notice"),
                (9, "info"),
                (5, "debug"),
            ][priority as usize];
            assert_eq!(rec.severity_number, number, "entry {s}");
            assert_eq!(rec.severity_text, text);
            // _SOURCE_REALTIME_TIMESTAMP wins over the journal's time.
            assert_eq!(rec.time_unix_nano, (BASE_US - 5_000_000 + unit) * 1000);
            let a = &rec.attributes;
            assert_eq!(
                attr(a, "_SYSTEMD_UNIT"),
                Some(format!("unit-{unit:02}.service").as_str())
            );
            assert_eq!(
                attr(a, "SYSLOG_IDENTIFIER"),
                Some(format!("app{unit}").as_str())
            );
            assert_eq!(
                attr(a, "process.executable.name"),
                Some(format!("app{unit}").as_str())
            );
            assert_eq!(
                attr(a, "process.executable.path"),
                Some(format!("/usr/bin/app{unit}").as_str())
            );
            assert_eq!(attr(a, "_TRANSPORT"), Some("journal"));
            assert_eq!(attr(a, "code.file.path"), Some("src/main.c"));
            assert_eq!(attr(a, "code.function.name"), Some("main"));
            assert_eq!(
                value(a, "code.line.number"),
                Some(&any_value::Value::IntValue(100 + priority as i64))
            );
            assert_eq!(a.len(), 9, "{a:?}");
        } else {
            assert_eq!(rec.time_unix_nano, (BASE_US + s * 1000) * 1000, "entry {s}");
        }
    }
    for (i, (message, what)) in specials.iter().enumerate() {
        let rec = &got[&(special_start + i as u64)].record;
        let want = match std::str::from_utf8(message) {
            Ok(s) => any_value::Value::StringValue(s.to_string()),
            Err(_) => any_value::Value::BytesValue(message.clone()),
        };
        assert_eq!(body(rec), Some(&want), "{what}");
        assert_eq!(rec.severity_number, 9);
    }
    let rec = &got[&repeated].record;
    assert_eq!(
        body(rec),
        Some(&any_value::Value::StringValue("first message".into()))
    );
    assert_eq!(attr(&rec.attributes, "_SYSTEMD_UNIT"), Some("a.service"));
    assert_eq!(body(&got[&no_message].record), None);
    assert_eq!(got[&no_message].record.severity_number, 0);

    // Entries appended while tern runs arrive too, each once.
    let more: Vec<Entry> = (total..total + 50)
        .map(|s| Entry::new(s, format!("appended {s}").as_bytes()))
        .collect();
    journal.append(&more);
    wait_for_seqs(
        &gateway,
        &agent,
        total as usize + 50,
        Duration::from_secs(30),
    );
    assert_eq!(exactly_once(&gateway).len(), total as usize + 50);
    assert_eq!(
        agent.metric("tern_journald_entries_total"),
        Some(total as f64 + 50.0)
    );
}

#[test]
fn journald_filters_units_priorities_and_matches() {
    let mut journal = Journal::new("journal-filters");
    let mut entries = Vec::new();
    for s in 0..400u64 {
        let mut e = Entry::new(s, format!("entry {s}").as_bytes());
        e.replace("PRIORITY", (s % 8).to_string())
            .set("_SYSTEMD_UNIT", format!("u{}.service", s % 5))
            .set("TEAM", if s % 3 == 0 { "red" } else { "blue" });
        entries.push(e);
    }
    journal.append(&entries);
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(
        &gateway,
        journal.path(),
        "head",
        r#"units = ["u0", "u1.service", "u2.service"]
exclude_units = ["u1*"]
min_priority = "warning"
matches = ["TEAM=red"]"#,
    ));
    let want: Vec<u64> = (0..400u64)
        .filter(|s| [0, 2].contains(&(s % 5)) && s % 8 <= 4 && s % 3 == 0)
        .collect();
    // Entries of u1 reach tern (journalctl matches them) and are dropped there.
    let excluded = (0..400u64)
        .filter(|s| s % 5 == 1 && s % 8 <= 4 && s % 3 == 0)
        .count();
    wait_for(
        Duration::from_secs(30),
        || {
            (agent.metric("tern_journald_entries_total") == Some((want.len() + excluded) as f64))
                .then_some(())
        },
        || agent.diagnostics(),
    );
    wait_for_seqs(&gateway, &agent, want.len(), Duration::from_secs(30));
    let got: Vec<u64> = exactly_once(&gateway).keys().copied().collect();
    assert_eq!(got, want);
    assert_eq!(
        agent.metric(r#"tern_journald_skipped_entries_total{reason="excluded"}"#),
        Some(excluded as f64)
    );
}

#[test]
fn journald_delivers_each_entry_once_across_sigkill() {
    const N: u64 = 20_000;
    let mut journal = Journal::new("journal-sigkill");
    let filler = "f".repeat(900);
    let entries: Vec<Entry> = (0..N)
        .map(|s| Entry::new(s, format!("entry {s} {filler}").as_bytes()))
        .collect();
    journal.append(&entries);
    let gateway = FakeGateway::start();
    let mut agent = Agent::start(&config(&gateway, journal.path(), "head", ""));
    let mut kills = 0;
    let mut delivered_at_kill = Vec::new();
    while kills < 12 {
        std::thread::sleep(Duration::from_millis(fastrand::u64(20..700)));
        agent.kill();
        kills += 1;
        let n = exactly_once(&gateway).len();
        delivered_at_kill.push(n);
        // Start again on the same state (also after the last kill, to finish).
        agent.restart();
        if n as u64 == N {
            break;
        }
    }
    wait_for_seqs(&gateway, &agent, N as usize, Duration::from_secs(180));
    let got = exactly_once(&gateway);
    assert_eq!(got.len() as u64, N);
    assert_eq!(got.keys().next_back(), Some(&(N - 1)));
    let requests = gateway.delivered_logs().len();
    let distinct: HashSet<u64> = gateway.delivered_logs().iter().map(|(d, _)| *d).collect();
    eprintln!(
        "killed {kills} times; entries delivered at each kill: {delivered_at_kill:?}; \
         {requests} requests, {} distinct (the rest were export retries of unacked batches)",
        distinct.len()
    );
    assert!(kills >= 2, "{delivered_at_kill:?}");
}

/// A journalctl stand-in: `mode` in its directory says what it does.
fn fake_journalctl(dir: &Path) -> PathBuf {
    let script = dir.join("journalctl");
    let mode = dir.join("mode");
    std::fs::write(&mode, "exit").unwrap();
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
mode=$(cat "{}")
case "$*" in *--follow*) follow=1 ;; *) follow= ;; esac
if [ "$mode" = exit ]; then echo "fake journalctl: failing on purpose" >&2; exit 3; fi
if [ "$mode" = hang ] && [ -n "$follow" ]; then exec sleep 30; fi
exec /usr/bin/journalctl "$@"
"#,
            mode.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    script
}

#[test]
fn journald_restarts_journalctl_that_exits_hangs_or_is_missing() {
    let mut journal = Journal::new("journal-restarts");
    journal.append(
        &(0..100)
            .map(|s| Entry::new(s, format!("entry {s}").as_bytes()))
            .collect::<Vec<_>>(),
    );
    let bin = TempDir::new("fake-journalctl");
    let script = fake_journalctl(bin.path());
    let set_mode = |m: &str| std::fs::write(bin.path().join("mode"), m).unwrap();
    let gateway = FakeGateway::start();
    let extra = format!(
        "journalctl = \"{}\"\nhang_timeout = \"1s\"",
        script.display()
    );
    let agent = Agent::start(&config(&gateway, journal.path(), "head", &extra));
    let metric = |reason: &str| {
        agent.metric(&format!(
            r#"tern_journald_restarts_total{{reason="{reason}"}}"#
        ))
    };

    // Exiting: one WARN line with the reason and journalctl's stderr.
    wait_for(
        Duration::from_secs(20),
        || metric("exited").filter(|n| *n >= 1.0),
        || agent.diagnostics(),
    );
    let log = agent.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("reason=exited"))
        .unwrap_or_else(|| panic!("no restart line:\n{log}"));
    assert!(line.starts_with("WARN"), "{line}");
    assert!(
        line.contains("fake journalctl: failing on purpose"),
        "{line}"
    );
    assert!(line.contains("exit status: 3"), "{line}");

    // Hanging: silent while the journal has entries.
    set_mode("hang");
    wait_for(
        Duration::from_secs(60),
        || metric("hang").filter(|n| *n >= 1.0),
        || agent.diagnostics(),
    );
    assert!(agent.stderr().contains("reason=hang"));
    assert!(gateway.delivered_logs().is_empty());

    // Working again: everything arrives once.
    set_mode("ok");
    wait_for_seqs(&gateway, &agent, 100, Duration::from_secs(60));
    assert_eq!(exactly_once(&gateway).len(), 100);

    // Missing: a clear line, then a reload with a working path recovers.
    let gateway2 = FakeGateway::start();
    let mut agent2 = Agent::start(&config(
        &gateway2,
        journal.path(),
        "head",
        "journalctl = \"/nonexistent/bin/journalctl\"",
    ));
    wait_for(
        Duration::from_secs(20),
        || {
            agent2
                .metric(r#"tern_journald_restarts_total{reason="spawn_failed"}"#)
                .filter(|n| *n >= 1.0)
        },
        || agent2.diagnostics(),
    );
    let log = agent2.stderr();
    assert!(
        log.lines().any(|l| l.starts_with("WARN")
            && l.contains("reason=spawn_failed")
            && l.contains("program=/nonexistent/bin/journalctl")),
        "{log}"
    );
    agent2.rewrite_config(&config(&gateway2, journal.path(), "head", ""));
    agent2.signal("HUP");
    wait_for_seqs(&gateway2, &agent2, 100, Duration::from_secs(60));
}

#[test]
fn journald_goes_on_from_the_oldest_entry_left_when_its_cursor_is_gone() {
    let mut journal = Journal::new("journal-vacuum");
    journal.file = "a.journal".into();
    journal.append(
        &(0..100)
            .map(|s| Entry::new(s, format!("entry {s}").as_bytes()))
            .collect::<Vec<_>>(),
    );
    let gateway = FakeGateway::start();
    let cfg = config(&gateway, journal.path(), "head", "");
    let mut agent = Agent::start(&cfg);
    wait_for_seqs(&gateway, &agent, 100, Duration::from_secs(30));
    assert_eq!(agent.terminate(), Some(0));

    // While tern is stopped, newer entries go to another file and the one
    // holding the saved cursor is vacuumed.
    journal.file = "b.journal".into();
    journal.append(
        &(100..200)
            .map(|s| Entry::new(s, format!("entry {s}").as_bytes()))
            .collect::<Vec<_>>(),
    );
    let old = journal.path().join("a.journal");
    assert!(journal.files().contains(&old));
    std::fs::remove_file(&old).unwrap();

    let dir = agent.into_dir();
    let agent = Agent::start_in(dir, &cfg);
    // Entry 100, the oldest left, is not skipped (journalctl's --after-cursor
    // would drop it).
    wait_for_seqs(&gateway, &agent, 200, Duration::from_secs(30));
    let got = exactly_once(&gateway);
    assert_eq!(got.len(), 200);
    assert_eq!(agent.metric("tern_journald_gaps_total"), Some(1.0));
    let log = agent.stderr();
    assert!(
        log.lines()
            .any(|l| l.starts_with("ERROR") && l.contains("saved cursor is gone")),
        "{log}"
    );
}

#[test]
fn journald_read_from_tail_keeps_its_place_across_restarts() {
    let mut journal = Journal::new("journal-tail");
    let batch = |r: std::ops::Range<u64>| -> Vec<Entry> {
        r.map(|s| Entry::new(s, format!("entry {s}").as_bytes()))
            .collect()
    };
    journal.append(&batch(0..10));
    let gateway = FakeGateway::start();
    let mut agent = Agent::start(&config(&gateway, journal.path(), "tail", ""));
    wait_for(
        Duration::from_secs(20),
        || {
            agent
                .stderr()
                .contains("Following the journal")
                .then_some(())
        },
        || agent.diagnostics(),
    );
    journal.append(&batch(10..15));
    wait_for_seqs(&gateway, &agent, 5, Duration::from_secs(30));
    // Killed before anything else is logged; entries logged while it is down
    // arrive after the restart, and nothing comes twice.
    agent.kill();
    journal.append(&batch(15..20));
    agent.restart();
    wait_for_seqs(&gateway, &agent, 10, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    let got: Vec<u64> = exactly_once(&gateway).keys().copied().collect();
    assert_eq!(got, (10..20).collect::<Vec<_>>());
}

#[test]
fn journald_burst_of_100k_entries_keeps_memory_bounded() {
    const N: u64 = 100_000;
    let mut journal = Journal::new("journal-burst");
    let filler = "m".repeat(1200);
    let entries: Vec<Entry> = (0..N)
        .map(|s| {
            let mut e = Entry::new(s, format!("entry {s} {filler}").as_bytes());
            e.set("_SYSTEMD_UNIT", format!("u{}.service", s % 50));
            e
        })
        .collect();
    journal.append(&entries);
    let stream_bytes = export(&entries).len();
    drop(entries);
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(&gateway, journal.path(), "head", ""));
    let started = Instant::now();
    let mut peak = 0.0f64;
    wait_for(
        Duration::from_secs(240),
        || {
            if let Some(rss) = agent.metric("process_resident_memory_bytes") {
                peak = peak.max(rss);
            }
            (agent.metric("tern_journald_entries_total") == Some(N as f64)).then_some(())
        },
        || agent.diagnostics(),
    );
    let took = started.elapsed();
    wait_for_seqs(&gateway, &agent, N as usize, Duration::from_secs(240));
    eprintln!(
        "read {N} entries ({} MB of export format) in {took:?}; peak RSS sampled {:.1} MiB",
        stream_bytes / 1_000_000,
        peak / (1 << 20) as f64
    );
    // The stream is ~140 MB: holding it would show. tern holds at most 512
    // KiB of pipe chunks, one batch and one entry, on top of its baseline
    // (about 33 MiB for a debug build with its queue open).
    assert!(stream_bytes > 130_000_000, "{stream_bytes}");
    assert!(
        peak > 0.0 && peak < 64.0 * (1 << 20) as f64,
        "peak RSS {peak}"
    );
}
