//! The journald source's unit tests: the parser against every file of the
//! public corpora in `../shared/testdata/journal-export` (fuzz reproducers
//! included), and the pipeline against a real queue.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use super::export_format::{Limits, Outcome, Parser};
use super::*;
use crate::config::Config;
use crate::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use crate::otlp::proto::common::v1::any_value;
use crate::queue::{Lane, Options, Queue};
use crate::sources::DEFAULT_DESTINATION;
use crate::tempdir::TempDir;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/journal-export")
}

fn corpus() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![testdata()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Entries of `input` fed in chunks of `chunk` bytes: (outcome, cursor, fields).
type Summary = Vec<(Outcome, Option<Vec<u8>>, usize)>;

fn summarize(input: &[u8], limits: Limits, chunk: usize) -> Summary {
    let mut parser = Parser::new(limits);
    let mut out = Vec::new();
    let mut on = |e: &Entry<'_>| {
        assert!(e.size() <= limits.max_entry);
        for f in e.fields() {
            assert!(f.value.len() <= limits.max_field);
            assert!(!f.name.is_empty() && f.name.len() <= export_format::MAX_NAME_LEN);
        }
        out.push((
            e.outcome(),
            e.cursor().map(<[u8]>::to_vec),
            e.fields().count(),
        ));
    };
    for c in input.chunks(chunk.max(1)) {
        parser.feed(c, &mut on);
    }
    parser.finish(&mut on);
    out
}

#[test]
fn every_corpus_file_parses_or_is_rejected_without_harm() {
    let files = corpus();
    assert!(files.len() >= 15, "corpus missing: {files:?}");
    let mut complete = 0;
    let mut rejected = 0;
    for path in &files {
        let input = std::fs::read(path).unwrap();
        for limits in [
            Limits::default(),
            Limits {
                max_field: 16,
                max_entry: 256,
            },
        ] {
            let started = Instant::now();
            let whole = summarize(&input, limits, usize::MAX);
            // Chunking never changes the result.
            for chunk in [1, 7, 4096] {
                assert_eq!(
                    summarize(&input, limits, chunk),
                    whole,
                    "{} in chunks of {chunk}",
                    path.display()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} took {:?}",
                path.display(),
                started.elapsed()
            );
            for (outcome, _, _) in &whole {
                match outcome {
                    Outcome::Complete => complete += 1,
                    _ => rejected += 1,
                }
            }
        }
    }
    assert!(complete > 0 && rejected > 0, "{complete} {rejected}");
}

#[test]
fn known_corpus_files_parse_as_expected() {
    let read = |p: &str| std::fs::read(testdata().join(p)).unwrap();
    // systemd's sample: every entry whole, each with a cursor.
    let got = summarize(
        &read("systemd-fuzz-journal-remote/sample.txt"),
        Limits::default(),
        usize::MAX,
    );
    assert!(got.len() > 3, "{got:?}");
    assert!(got
        .iter()
        .all(|(o, c, _)| *o == Outcome::Complete && c.is_some()));
    // kjournald's binary example: a binary MESSAGE with a newline in it.
    let input = read("kde-kjournald/journalexportformat_binary_example.export");
    let mut messages = Vec::new();
    let mut p = Parser::new(Limits::default());
    let mut on = |e: &Entry<'_>| {
        assert_eq!(e.outcome(), Outcome::Complete);
        messages.extend(e.get(b"MESSAGE").map(<[u8]>::to_vec));
    };
    p.feed(&input, &mut on);
    p.finish(&mut on);
    assert!(
        messages.iter().any(|m| m.contains(&b'\n')),
        "{:?}",
        messages
            .iter()
            .map(|m| String::from_utf8_lossy(m))
            .collect::<Vec<_>>()
    );
}

#[test]
fn cursors_compare_by_identity() {
    let a = "s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece7;b=6c7c6013a26343b29e964691ff25d04c;m=4fc72436e;t=4c508a72423d9;x=d3e5610681098c10";
    let b = "s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece8;b=6c7c6013a26343b29e964691ff25d04c;m=4fc72572f;t=4c508a7243799;x=68597058a89b7246";
    assert!(valid_cursor(a) && valid_cursor(b));
    assert!(same_entry(a, a));
    assert!(!same_entry(a, b));
    assert!(same_entry(a, &format!("{a};p=system.journal")));
    assert!(!valid_cursor(""));
    assert!(!valid_cursor("garbage"));
    assert!(!valid_cursor("s=1;i=2 x"));
    assert!(!valid_cursor("t=1"));
    assert_eq!(lost_between(a, b), Some(0));
    let later = b.replace("i=4ece8", "i=4ecf0");
    assert_eq!(lost_between(a, &later), Some(8));
    assert_eq!(lost_between(a, &b.replace("s=739", "s=000")), None);
}

fn journald_config(extra: &str) -> JournaldConfig {
    Config::parse(Path::new("t.toml"), &format!("[journald]\n{extra}"))
        .unwrap()
        .journald
        .unwrap()
}

fn setup(extra: &str) -> (TempDir, Queue, Pipeline, Arc<Metrics>) {
    let dir = TempDir::new("pipeline");
    let (queue, _) = Queue::open(
        dir.path(),
        &Options {
            fsync: false,
            ..Options::default()
        },
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let sink = Sink::new(queue.clone(), metrics.clone(), false);
    let pipeline = Pipeline::new(
        &journald_config(extra),
        &[("deployment.environment".into(), "test".into())],
        sink,
        metrics.clone(),
    );
    (dir, queue, pipeline, metrics)
}

fn queued(queue: &Queue) -> Vec<ExportLogsServiceRequest> {
    let lane = Lane::new(Signal::Logs, DEFAULT_DESTINATION);
    let peeked = queue.peek(&lane, 10_000).unwrap();
    peeked
        .batches
        .iter()
        .map(|b| {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(b.payload.as_slice())
                .read_to_end(&mut raw)
                .unwrap();
            ExportLogsServiceRequest::decode(raw.as_slice()).unwrap()
        })
        .collect()
}

fn bodies(requests: &[ExportLogsServiceRequest]) -> Vec<String> {
    requests
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .map(|l| match l.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn stream(range: std::ops::Range<usize>, unit: impl Fn(usize) -> &'static str) -> Vec<u8> {
    let mut s = Vec::new();
    for i in range {
        s.extend_from_slice(
            format!(
                "__CURSOR=s=aa;i={i:x};b=bb;m={i:x};t={i:x};x={i:x}\n_HOSTNAME=box\nMESSAGE=m{i}\n_SYSTEMD_UNIT={}\n\n",
                unit(i)
            )
            .as_bytes(),
        );
    }
    s
}

#[test]
fn batches_carry_the_cursor_of_their_last_entry() {
    let (_dir, queue, mut p, metrics) = setup("");
    let stop = Shutdown::new();
    let input = stream(0..2500, |_| "a.service");
    for c in input.chunks(1000) {
        p.feed(c, &stop);
    }
    // Two full batches went on their own; the rest waits for the clock.
    assert_eq!(queued(&queue).len(), 2);
    p.flush(&stop);
    let requests = queued(&queue);
    assert_eq!(requests.len(), 3);
    let got = bodies(&requests);
    assert_eq!(got.len(), 2500);
    assert!(got.iter().enumerate().all(|(i, b)| *b == format!("m{i}")));
    let last = format!(
        "s=aa;i={:x};b=bb;m={:x};t={:x};x={:x}",
        2499, 2499, 2499, 2499
    );
    assert_eq!(queue.checkpoint(SOURCE).unwrap(), Some(last.into_bytes()));
    assert_eq!(
        metrics.get("tern_journald_entries_total", &[]),
        Some(2500.0)
    );
    let resource = requests[0].resource_logs[0].resource.as_ref().unwrap();
    let keys: Vec<_> = resource.attributes.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["host.name", "deployment.environment"]);
}

#[test]
fn the_resumed_at_entry_is_skipped_once() {
    let (_dir, queue, mut p, _) = setup("");
    let stop = Shutdown::new();
    p.start_stream(Some("s=aa;i=0;b=bb;m=0;t=0;x=0".into()));
    p.feed(&stream(0..3, |_| "a.service"), &stop);
    // A second stream that starts at an entry that is not the saved one
    // (the saved one was vacuumed): nothing is skipped.
    p.start_stream(Some("s=aa;i=9;b=bb;m=9;t=9;x=9".into()));
    p.feed(&stream(3..5, |_| "a.service"), &stop);
    p.flush(&stop);
    assert_eq!(bodies(&queued(&queue)), ["m1", "m2", "m3", "m4"]);
}

#[test]
fn a_partial_entry_is_dropped_when_the_stream_restarts() {
    let (_dir, queue, mut p, _) = setup("");
    let stop = Shutdown::new();
    let s = stream(0..2, |_| "a.service");
    let cut = s.len() - 10;
    p.feed(&s[..cut], &stop);
    assert_eq!(p.consumed(), Some("s=aa;i=0;b=bb;m=0;t=0;x=0"));
    p.start_stream(Some(p.consumed().unwrap().to_string()));
    p.feed(&s, &stop);
    p.flush(&stop);
    assert_eq!(bodies(&queued(&queue)), ["m0", "m1"]);
}

#[test]
fn filtered_entries_move_the_cursor_without_a_batch() {
    let (_dir, queue, mut p, metrics) = setup("exclude_units = [\"noisy\"]");
    let stop = Shutdown::new();
    p.feed(
        &stream(0..10, |i| if i < 2 { "a.service" } else { "noisy.service" }),
        &stop,
    );
    p.flush(&stop);
    assert_eq!(bodies(&queued(&queue)), ["m0", "m1"]);
    assert_eq!(
        queue.checkpoint(SOURCE).unwrap(),
        Some(b"s=aa;i=9;b=bb;m=9;t=9;x=9".to_vec())
    );
    p.feed(&stream(10..12, |_| "noisy.service"), &stop);
    p.flush(&stop);
    assert_eq!(queued(&queue).len(), 1);
    assert_eq!(
        queue.checkpoint(SOURCE).unwrap(),
        Some(b"s=aa;i=b;b=bb;m=b;t=b;x=b".to_vec())
    );
    assert_eq!(
        metrics.get(
            "tern_journald_skipped_entries_total",
            &[("reason", "excluded")]
        ),
        Some(10.0)
    );
}

#[test]
fn oversized_and_damaged_entries_are_counted_and_skipped() {
    let (_dir, queue, mut p, metrics) =
        setup("max_field_size = \"1KiB\"\nmax_entry_size = \"2KiB\"");
    let stop = Shutdown::new();
    let mut s = stream(0..1, |_| "a.service");
    s.extend_from_slice(b"__CURSOR=s=aa;i=1;b=bb;m=1;t=1;x=1\n");
    for _ in 0..3 {
        s.extend_from_slice(format!("F={}\n", "x".repeat(1000)).as_bytes());
    }
    s.extend_from_slice(b"\n__CURSOR=s=aa;i=2;b=bb;m=2;t=2;x=2\nbad name=1\n\n");
    s.extend_from_slice(
        format!(
            "__CURSOR=s=aa;i=3;b=bb;m=3;t=3;x=3\nMESSAGE={}\n\n",
            "y".repeat(1500)
        )
        .as_bytes(),
    );
    p.feed(&s, &stop);
    p.flush(&stop);
    let got = bodies(&queued(&queue));
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].len(), 1024);
    assert_eq!(p.consumed(), Some("s=aa;i=3;b=bb;m=3;t=3;x=3"));
    let skipped = |r| metrics.get("tern_journald_skipped_entries_total", &[("reason", r)]);
    assert_eq!(skipped("too_large"), Some(1.0));
    assert_eq!(skipped("malformed"), Some(1.0));
    assert_eq!(
        metrics.get("tern_journald_truncated_fields_total", &[]),
        Some(1.0)
    );
}

#[test]
fn memory_stays_bounded_on_a_long_stream() {
    // 100k entries through the pipeline: the parser's buffer and the batch
    // never grow past their limits.
    let (_dir, queue, mut p, _) = setup("");
    let stop = Shutdown::new();
    let input = stream(0..100_000, |i| {
        if i % 2 == 0 {
            "a.service"
        } else {
            "b.service"
        }
    });
    for c in input.chunks(64 << 10) {
        p.feed(c, &stop);
        assert!(p.handler.batch.len() <= MAX_BATCH_RECORDS);
        assert!(p.parser.memory() <= 128 << 10, "{}", p.parser.memory());
    }
    p.flush(&stop);
    assert_eq!(queue.stats().signal(Signal::Logs).items, 100_000);
}
