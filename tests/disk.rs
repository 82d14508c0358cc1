//! The disk queue against its filesystem and its files: a disk tern fills
//! itself, a disk another program fills, damaged and unreadable segments, and
//! restarts on all of them. Needs root for the small tmpfs (CI runs as root);
//! skipped with a message otherwise.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::agent::tern_command;
use crate::harness::exporter::ScriptedExporter;
use crate::harness::spans::{free_port, post, receiver_config_at, span_names, spans};
use crate::harness::{config, wait_for, Agent, FakeGateway, Reply, TempDir};

/// A tmpfs of a fixed size mounted on a directory, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .ok()?;
        if !status.success() {
            eprintln!("skipped: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(SmallFs(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An exporter whose every scrape is about 400 KB of series with random
/// label values: about 200 KB a batch after gzip, so a 20 MB disk fills in
/// seconds.
fn bulky_exporter() -> ScriptedExporter {
    ScriptedExporter::start(|n| {
        let mut body = String::from("# TYPE bulk gauge\n");
        for i in 0..6000 {
            body.push_str(&format!(
                "bulk{{id=\"{:016x}{:016x}\",i=\"{i}\"}} {n}\n",
                fastrand::u64(..),
                fastrand::u64(..)
            ));
        }
        (200, "text/plain", body.into_bytes())
    })
}

fn sum_metric(agent: &Agent, name: &str, label: &str) -> f64 {
    agent
        .metrics()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes zeros to `path` until the filesystem refuses more.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_disk_tern_fills_itself_stays_deliverable() {
    let dir = TempDir::new("disk-full");
    let Some(_fs) = SmallFs::mount(&dir.path().join("state"), "20m") else {
        return;
    };
    let exporter = bulky_exporter();
    let gateway = FakeGateway::start();
    gateway.set_default(Reply::Status(503, None));
    // One batch a request, so that each delivery's digest is one batch's.
    let cfg = config("bulk", exporter.addr, "200ms", &gateway.url())
        .replace("timeout = \"2s\"", "timeout = \"2s\"\nmax_request_size = 0");
    let mut agent = Agent::start_in(dir, &cfg);
    assert!(
        agent
            .stderr()
            .contains("The disk queue is limited by the free space of its filesystem"),
        "{}",
        agent.diagnostics()
    );
    // The gateway is down: tern fills its share of the disk and then drops
    // the oldest batches, counted as disk_full.
    wait_for(
        Duration::from_secs(90),
        || {
            (sum_metric(&agent, "tern_dropped_batches_total", "reason=\"disk_full\"") > 0.0)
                .then_some(())
        },
        || agent.diagnostics(),
    );
    // Another program takes the rest of the disk.
    let filler = agent.state_dir().join("filler");
    fill(&filler);

    // The gateway comes back: batches are delivered and acked, none posted
    // again and again.
    gateway.set_default(Reply::Ok);
    wait_for(
        Duration::from_secs(60),
        || {
            (gateway
                .received()
                .iter()
                .filter(|r| r.answered == 200)
                .count()
                >= 30)
                .then_some(())
        },
        || agent.diagnostics(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let received = gateway.received();
    let ok: Vec<_> = received.iter().filter(|r| r.answered == 200).collect();
    let distinct: HashSet<u64> = ok.iter().map(|r| r.digest).collect();
    assert!(
        ok.len() <= distinct.len() + 1,
        "{} deliveries of {} distinct batches",
        ok.len(),
        distinct.len()
    );
    let stderr = agent.stderr();
    assert!(
        !stderr.contains("Acknowledging a sent batch failed"),
        "{}",
        agent.diagnostics()
    );
    let sent = sum_metric(
        &agent,
        "tern_export_sent_batches_total",
        "signal=\"metrics\"",
    );
    eprintln!(
        "disk full: {} requests answered 200, {} distinct batches, sent counter {sent}, disk_full drops {}",
        ok.len(),
        distinct.len(),
        sum_metric(&agent, "tern_dropped_batches_total", "reason=\"disk_full\"")
    );
    assert!(
        sent <= distinct.len() as f64 + 1.0,
        "sent counter {sent} for {} distinct batches",
        distinct.len()
    );

    // Stop and start again on the full disk; `tern queue` reads it.
    gateway.set_default(Reply::Status(503, None));
    assert_eq!(agent.terminate(), Some(0), "{}", agent.diagnostics());
    let queue = tern_command()
        .args(["queue", "--config"])
        .arg(agent.config_file())
        .output()
        .unwrap();
    assert!(
        queue.status.success(),
        "tern queue on a full disk: {}",
        String::from_utf8_lossy(&queue.stderr)
    );
    agent.restart();
    gateway.set_default(Reply::Ok);
    let before = gateway.received().len();
    wait_for(
        Duration::from_secs(30),
        || (gateway.received().len() > before + 5).then_some(()),
        || agent.diagnostics(),
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(agent.terminate(), Some(0), "{}", agent.diagnostics());
}

/// Posts 120 requests of five numbered spans while the gateway is down, stops
/// tern, damages its queue with `damage`, starts it with the gateway up, and
/// returns (spans arrived once, spans arrived more than once, corrupt points
/// counted).
fn damaged_run(name: &str, damage: impl FnOnce(&Path)) -> (usize, usize, f64) {
    let receiver = free_port();
    let gateway = FakeGateway::start();
    gateway.set_default(Reply::Status(503, None));
    let dir = TempDir::new(name);
    let mut agent = Agent::start_in(dir, &receiver_config_at(receiver, &gateway.url()));
    for i in 0..120u64 {
        assert_eq!(post(receiver, &spans(i * 5)), Some(200));
    }
    assert_eq!(agent.terminate(), Some(0), "{}", agent.diagnostics());
    damage(&agent.state_dir().join("queue"));
    gateway.set_default(Reply::Ok);
    agent.restart();
    let corrupt = || sum_metric(&agent, "tern_dropped_points_total", "reason=\"corrupt\"");
    wait_for(
        Duration::from_secs(30),
        || {
            let seen = span_names(&gateway.received());
            (seen.len() as f64 + corrupt() >= 600.0).then_some(())
        },
        || agent.diagnostics(),
    );
    let seen = span_names(&gateway.received());
    let twice = seen.values().filter(|&&n| n > 1).count();
    (seen.len(), twice, corrupt())
}

/// The segment files of a queue directory, oldest first.
fn segments(queue: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(queue.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn damaged_segments_lose_only_the_damaged_batch_and_count_it() {
    // The index lost, one byte flipped in the middle of the segment: only
    // the batch holding it is lost, and its five spans are counted.
    let (arrived, twice, corrupt) = damaged_run("flip-no-index", |queue| {
        std::fs::remove_dir_all(queue.join("index")).unwrap();
        let file = segments(queue).remove(0);
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&file, bytes).unwrap();
    });
    assert_eq!((arrived, twice, corrupt), (595, 0, 5.0));

    // The segment cut in half, index kept: what the index knew is counted.
    let (arrived, twice, corrupt) = damaged_run("truncated", |queue| {
        let file = segments(queue).remove(0);
        let len = std::fs::metadata(&file).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(len / 2).unwrap();
    });
    assert_eq!(twice, 0);
    assert!(arrived > 200 && arrived < 400, "{arrived} arrived");
    assert_eq!(arrived as f64 + corrupt, 600.0);

    // The segment deleted: every span it held is counted.
    let (arrived, _, corrupt) = damaged_run("deleted", |queue| {
        std::fs::remove_file(segments(queue).remove(0)).unwrap();
    });
    assert_eq!((arrived, corrupt), (0, 600.0));
}

#[test]
fn an_unreadable_segment_is_named_set_aside_and_the_rest_delivered() {
    // Two lanes, two segments: traces from the receiver first (segment 0),
    // then metrics from a scrape (segment 1), all queued, the gateway down.
    let receiver = free_port();
    let gateway = FakeGateway::start();
    gateway.set_default(Reply::Status(503, None));
    let dir = TempDir::new("unreadable");
    let mut agent = Agent::start_in(dir, &receiver_config_at(receiver, &gateway.url()));
    for i in 0..20u64 {
        assert_eq!(post(receiver, &spans(i * 5)), Some(200));
    }
    assert_eq!(agent.terminate(), Some(0), "{}", agent.diagnostics());
    let exporter =
        ScriptedExporter::start(|n| (200, "text/plain", format!("g {n}\n").into_bytes()));
    let cfg = receiver_config_at(receiver, &gateway.url())
        + &format!(
            "\n[[scrape]]\njob = \"g\"\ntargets = [\"{}\"]\ninterval = \"200ms\"\n",
            exporter.addr
        );
    agent.rewrite_config(&cfg);
    agent.restart();
    wait_for(
        Duration::from_secs(20),
        || {
            agent
                .metric("tern_queue_batches{signal=\"metrics\"}")
                .filter(|&n| n >= 3.0)
        },
        || agent.diagnostics(),
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.diagnostics());
    let queue = agent.state_dir().join("queue");
    let file = segments(&queue).remove(0);
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // Root reads a mode-000 file: run tern as nobody then, as the packaged
    // unit runs it as a user of its own.
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let uid = root.then_some(65534);
    if root {
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(agent.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    gateway.set_default(Reply::Ok);
    let dir = agent.into_dir();
    let agent = Agent::start_in_as(dir, &cfg, uid);
    // The metrics queued before arrive; the traces are counted as lost.
    wait_for(
        Duration::from_secs(20),
        || (gateway.delivered().len() >= 3).then_some(()),
        || agent.diagnostics(),
    );
    let stderr = agent.stderr();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains("Set aside an unreadable queue segment") && stderr.contains(&name),
        "{}",
        agent.diagnostics()
    );
    assert_eq!(
        sum_metric(&agent, "tern_dropped_points_total", "reason=\"corrupt\""),
        100.0,
        "{}",
        agent.diagnostics()
    );
    assert!(queue
        .join("data")
        .join(format!("{name}.unreadable"))
        .exists());
    assert!(span_names(&gateway.received()).is_empty());
}
