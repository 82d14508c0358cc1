//! Measures the journald source's CPU per entry (parse, convert, encode, queue)
//! next to the upper limit journalctl itself sets: the CPU `journalctl
//! --output=export` spends writing the same journal to /dev/null.
//!
//! ```text
//! cargo bench -p tern --bench journald -- [--entries N]... [--rounds R]
//! ```
//!
//! Needs systemd-journal-remote (`scripts/test` installs it) and journalctl.
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.
//!
//! # What runs
//!
//! For each scale (10k and 100k entries by default), in a temp dir:
//!
//! 1. an export stream of entries shaped like a real journald entry (the
//!    trusted fields of a systemd service, a 60 to 160 byte message, one in
//!    ten from a kernel-like transport without a unit), made into a journal
//!    file by systemd-journal-remote;
//! 2. `journalctl --directory=D --output=export --all --no-pager --merge >
//!    /dev/null`, `--rounds` times: its CPU (utime+stime of the reaped child,
//!    from this process's cutime/cstime) and wall time;
//! 3. the same command's output captured once, then fed to tern's pipeline
//!    in 64 KiB chunks (what the source reads from the pipe), `--rounds`
//!    times each, in four steps that add up: parse only; parse and convert;
//!    parse, convert and encode (protobuf + gzip); and the whole path into a
//!    disk queue with fsync on (the default) and off. CPU is this process's
//!    utime+stime (all threads, sled's included), divided by the entries.
//!
//! CPU times come in 10 ms ticks, so each round repeats its work until it
//! covers at least 200k entries (20 times at 10k); the best round counts.
//!
//! It prints a Markdown table and writes it to `target/bench/journald.md`.
//! The budget (issue 3): tern's whole path adds at most as much CPU per entry
//! as journalctl spends producing the stream.

// A benchmark is a test program: it stops with a clear `expect` message when
// its own setup fails (a missing tool, an unwritable temp dir).
#![allow(clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern::config::Config;
use tern::lifecycle::Shutdown;
use tern::queue::{Options, Queue};
use tern::sources::journald::convert::{Batch, Converter};
use tern::sources::journald::export_format::{Limits, Outcome, Parser};
use tern::sources::journald::Pipeline;
use tern::sources::Sink;
use tern::telemetry::Metrics;

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const CHUNK: usize = 64 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mut scales = Vec::new();
    let mut rounds = 3;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--entries" => {
                scales.push(it.next().and_then(|n| n.parse().ok()).expect("--entries N"))
            }
            "--rounds" => rounds = it.next().and_then(|n| n.parse().ok()).expect("--rounds R"),
            _ => {}
        }
    }
    if scales.is_empty() {
        scales = vec![10_000, 100_000];
    }
    assert!(
        Path::new(JOURNAL_REMOTE).exists(),
        "{JOURNAL_REMOTE} is missing: apt-get install systemd-journal-remote"
    );
    let mut report = String::from(
        "| entries | stream bytes/entry | journalctl CPU us/entry | tern parse | + convert | + encode (gzip) | + queue, fsync off | + queue, fsync on | tern / journalctl | tern entries/s (fsync on) | queued bytes/entry |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for n in scales {
        let row = measure(n, rounds);
        eprintln!("{row:?}");
        let us = |cpu: f64| format!("{:.2}", cpu * 1e6 / n as f64);
        let _ = writeln!(
            report,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.0} |",
            row.stream_bytes / n,
            us(row.journalctl_cpu),
            us(row.parse_cpu),
            us(row.convert_cpu),
            us(row.encode_cpu),
            us(row.queue_cpu_nosync),
            us(row.queue_cpu),
            row.queue_cpu / row.journalctl_cpu,
            n as f64 / row.queue_wall.as_secs_f64(),
            row.queued_bytes as f64 / n as f64,
        );
    }
    print!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("create target/bench");
    std::fs::write(out.join("journald.md"), &report).expect("write target/bench/journald.md");
}

/// CPU seconds (per entry figures are derived) of one scale.
#[derive(Debug)]
struct Row {
    stream_bytes: usize,
    journalctl_cpu: f64,
    #[allow(dead_code)] // Shown in the progress line.
    journalctl_wall: Duration,
    parse_cpu: f64,
    convert_cpu: f64,
    encode_cpu: f64,
    queue_cpu_nosync: f64,
    queue_cpu: f64,
    queue_wall: Duration,
    queued_bytes: u64,
}

fn measure(n: usize, rounds: usize) -> Row {
    let dir = TempDir::new(&format!("journald-bench-{n}"));
    let journal = dir.0.join("journal");
    std::fs::create_dir_all(&journal).expect("journal dir");
    eprintln!("writing a journal of {n} entries");
    let input = dir.0.join("input.export");
    std::fs::write(&input, stream(n)).expect("write the export stream");
    let status = Command::new(JOURNAL_REMOTE)
        .arg(format!(
            "--output={}",
            journal.join("remote.journal").display()
        ))
        .arg(&input)
        .stderr(Stdio::null())
        .status()
        .expect("run systemd-journal-remote");
    assert!(status.success(), "systemd-journal-remote failed");
    std::fs::remove_file(&input).expect("remove input");

    let journalctl = || {
        let mut c = Command::new("journalctl");
        c.arg(format!("--directory={}", journal.display())).args([
            "--output=export",
            "--all",
            "--no-pager",
            "--merge",
        ]);
        c
    };
    // Warm the page cache, then measure.
    let _ = journalctl().stdout(Stdio::null()).status();
    let reps = (200_000 / n).max(1);
    let (mut journalctl_cpu, mut journalctl_wall) = (f64::MAX, Duration::MAX);
    for _ in 0..rounds {
        let before = children_cpu();
        let started = Instant::now();
        for _ in 0..reps {
            let status = journalctl()
                .stdout(Stdio::null())
                .status()
                .expect("run journalctl");
            assert!(status.success());
        }
        journalctl_wall =
            journalctl_wall.min(started.elapsed() / u32::try_from(reps).expect("few reps"));
        journalctl_cpu = journalctl_cpu.min((children_cpu() - before) / reps as f64);
    }
    let exported = journalctl().output().expect("capture journalctl").stdout;
    eprintln!(
        "journalctl: {:.2} us/entry CPU, {:?} wall, {} bytes",
        journalctl_cpu * 1e6 / n as f64,
        journalctl_wall,
        exported.len()
    );

    let config = Config::parse(
        Path::new("bench.toml"),
        "[journald]\nmin_priority = \"debug\"\n",
    )
    .expect("config")
    .journald
    .expect("journald section");
    let limits = Limits {
        max_field: usize::try_from(config.max_field_size).expect("fits"),
        max_entry: usize::try_from(config.max_entry_size).expect("fits"),
    };
    let resource = [("deployment.environment".to_string(), "bench".to_string())];

    let parse_cpu = best(rounds, reps, || {
        let mut parser = Parser::new(limits);
        let mut complete = 0usize;
        for c in exported.chunks(CHUNK) {
            parser.feed(c, &mut |e| {
                complete += usize::from(e.outcome() == Outcome::Complete)
            });
        }
        assert_eq!(complete, n);
    });
    let convert_cpu = best(rounds, reps, || {
        let mut parser = Parser::new(limits);
        let converter = Converter::new(&resource, &[]);
        let mut batch = Batch::new();
        for c in exported.chunks(CHUNK) {
            parser.feed(c, &mut |e| {
                batch.add(converter.convert(e, 1), &converter);
                if batch.len() >= 1000 {
                    std::hint::black_box(batch.take());
                }
            });
        }
    });
    let encode_cpu = best(rounds, reps, || {
        let mut parser = Parser::new(limits);
        let converter = Converter::new(&resource, &[]);
        let mut batch = Batch::new();
        for c in exported.chunks(CHUNK) {
            parser.feed(c, &mut |e| {
                batch.add(converter.convert(e, 1), &converter);
                if batch.len() >= 1000 || batch.bytes() >= 512 << 10 {
                    std::hint::black_box(tern::otlp::encode(&batch.take()));
                }
            });
        }
    });
    let mut queue_wall = Duration::MAX;
    let mut queued_bytes = 0;
    let mut queue_run = |fsync: bool| {
        // One queue per scale and setting, big enough for every repetition.
        let state = dir.0.join(format!("state-{fsync}"));
        let options = Options {
            fsync,
            max_size: 4 << 30,
            ..Options::default()
        };
        let (queue, _) = Queue::open(&state, &options).expect("open the queue");
        let cpu = best(rounds, reps, || {
            let before = queue.stats().total();
            let metrics = Arc::new(Metrics::new());
            let sink = Sink::new(queue.clone(), metrics.clone(), false);
            let mut pipeline = Pipeline::new(&config, &resource, sink, metrics);
            let stop = Shutdown::new();
            let started = Instant::now();
            for c in exported.chunks(CHUNK) {
                pipeline.feed(c, &stop);
            }
            pipeline.flush(&stop);
            if fsync {
                queue_wall = queue_wall.min(started.elapsed());
            }
            let after = queue.stats().total();
            assert_eq!(after.items - before.items, n as u64);
            queued_bytes = after.bytes - before.bytes;
        });
        drop(queue);
        cpu
    };
    let queue_cpu_nosync = queue_run(false);
    let queue_cpu = queue_run(true);
    Row {
        stream_bytes: exported.len(),
        journalctl_cpu,
        journalctl_wall,
        parse_cpu,
        convert_cpu,
        encode_cpu,
        queue_cpu_nosync,
        queue_cpu,
        queue_wall,
        queued_bytes,
    }
}

/// The least CPU seconds (this process, all threads) of one run of `f`, over
/// `rounds` rounds of `reps` runs.
fn best(rounds: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    let mut least = f64::MAX;
    for _ in 0..rounds {
        let before = own_cpu();
        for _ in 0..reps {
            f();
        }
        least = least.min((own_cpu() - before) / reps as f64);
    }
    least
}

/// An export stream of `n` entries shaped like those of systemd services.
fn stream(n: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "connection",
        "from",
        "accepted",
        "session",
        "opened",
        "for",
        "user",
        "root",
        "closed",
        "timeout",
        "retrying",
        "request",
    ];
    let mut out = Vec::with_capacity(n * 1100);
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..n {
        let unit = i % 40;
        let pid = 300 + unit * 7;
        let ts = 1_700_000_000_000_000u64 + i as u64 * 1000;
        let mut message = String::new();
        while message.len() < 60 + rng.usize(0..100) {
            message.push_str(WORDS[rng.usize(0..WORDS.len())]);
            message.push(' ');
        }
        let _ = write!(message, "id={}", rng.u32(..));
        let kernel = i % 10 == 0;
        let mut e = String::new();
        let _ = write!(
            e,
            "__REALTIME_TIMESTAMP={ts}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=6c7c6013a26343b29e964691ff25d04c\n_MACHINE_ID=a91663387a90b89f185d4e860000001a\n_HOSTNAME=gateway-0042\nPRIORITY={}\nSYSLOG_FACILITY=3\n",
            1_000_000 + i,
            rng.u8(3..8)
        );
        if kernel {
            e.push_str("_TRANSPORT=kernel\nSYSLOG_IDENTIFIER=kernel\n");
        } else {
            let _ = write!(
                e,
                "_TRANSPORT=stdout\nSYSLOG_IDENTIFIER=svc{unit}\n_PID={pid}\n_UID=0\n_GID=0\n_COMM=svc{unit}\n_EXE=/usr/bin/svc{unit}\n_CMDLINE=/usr/bin/svc{unit} --config /etc/svc{unit}.conf\n_CAP_EFFECTIVE=1ffffffffff\n_SYSTEMD_CGROUP=/system.slice/svc{unit}.service\n_SYSTEMD_UNIT=svc{unit}.service\n_SYSTEMD_SLICE=system.slice\n_SYSTEMD_INVOCATION_ID=0b1f5c2d6e7a48b9a0c1d2e3f4a5b6c{}\n_STREAM_ID=9d8c7b6a5f4e3d2c1b0a99887766554{}\n",
                unit % 10,
                unit % 10
            );
        }
        let _ = writeln!(e, "MESSAGE={message}");
        e.push('\n');
        out.extend_from_slice(e.as_bytes());
    }
    out
}

/// utime+stime of this process, all threads, in seconds.
fn own_cpu() -> f64 {
    stat_ticks(&[11, 12])
}

/// cutime+cstime: the CPU of reaped children, in seconds.
fn children_cpu() -> f64 {
    stat_ticks(&[13, 14])
}

/// Sums fields of /proc/self/stat counted after the command name (utime is
/// the 14th field overall, index 11 here), in seconds (USER_HZ is 100).
fn stat_ticks(fields: &[usize]) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let parts: Vec<&str> = after.split_whitespace().collect();
    fields
        .iter()
        .map(|&i| {
            parts
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum::<f64>()
        / 100.0
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tern-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
