//! Power cuts of a virtual machine: tern runs as /init's child in a qemu-system
//! guest (a Debian kernel, a busybox initramfs, an ext4 disk image), a host
//! client posts numbered spans to its receiver through qemu's user network,
//! the gateway on the host is mostly down, and the host kills qemu at random
//! moments: the guest loses its page cache as in a real power cut.
//!
//! Ignored: scripts/test-vm builds the images and runs these with
//! `TERN_VM_*` set (see `Vm::from_env`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::agent::metric_value;
use crate::harness::exporter::ScriptedExporter;
use crate::harness::spans::{free_port, post, span_names, spans};
use crate::harness::{http_get, FakeGateway, Reply, TempDir};

/// How to boot one guest, from the environment scripts/test-vm sets.
struct Vm {
    qemu: String,
    /// Machine arguments: `-M`, `-cpu`, the devices' flavour.
    machine: Vec<String>,
    kernel: PathBuf,
    initrd: PathBuf,
    /// An empty ext4 image to copy for each run.
    disk: PathBuf,
    /// The kernel's console device (`ttyS0`, `ttyAMA0`).
    console: String,
    /// `pci` or `device`: the virtio transport of the machine.
    virtio: String,
}

impl Vm {
    fn from_env() -> Option<Vm> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Vm {
            qemu: var("TERN_VM_QEMU")?,
            machine: var("TERN_VM_MACHINE")?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            kernel: var("TERN_VM_KERNEL")?.into(),
            initrd: var("TERN_VM_INITRD")?.into(),
            disk: var("TERN_VM_DISK")?.into(),
            console: var("TERN_VM_CONSOLE")?,
            virtio: var("TERN_VM_VIRTIO").unwrap_or_else(|| "pci".into()),
        })
    }

    /// Boots the guest on `disk` with its receiver and self metrics forwarded
    /// to `receiver` and `metrics` on the host's loopback.
    fn boot(
        &self,
        disk: &Path,
        gateway: u16,
        queue: Queue,
        ports: (u16, u16),
        log: &Path,
    ) -> Child {
        let (receiver, metrics) = ports;
        let memory = queue
            .memory
            .map_or_else(String::new, |bytes| format!(" tern.memory={bytes}"));
        self.qemu(
            "256",
            &format!(
                "tern.gw={gateway} tern.fsync={}{memory}",
                u8::from(queue.fsync)
            ),
            &[disk],
            &format!(
                ",hostfwd=tcp:127.0.0.1:{receiver}-:4318,hostfwd=tcp:127.0.0.1:{metrics}-:12345"
            ),
            log,
        )
    }

    /// Starts qemu with `memory` MiB, the `tern.*` words `append` on the
    /// kernel command line, `disks` as /dev/vda, /dev/vdb..., and qemu's
    /// user network with `hostfwd` after it; the console goes to `log`.
    fn qemu(
        &self,
        memory: &str,
        append: &str,
        disks: &[&Path],
        hostfwd: &str,
        log: &Path,
    ) -> Child {
        let console = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new(&self.qemu);
        cmd.args(&self.machine)
            .args(["-m", memory, "-nographic", "-no-reboot", "-accel", "tcg"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(format!(
                "console={} panic=-1 edd=off quiet {append}",
                self.console
            ));
        for (i, disk) in disks.iter().enumerate() {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=d{i},cache=writeback",
                    disk.display()
                ))
                .args(["-device", &format!("virtio-blk-{},drive=d{i}", self.virtio)]);
        }
        cmd.args(["-netdev", &format!("user,id=n0{hostfwd}")])
            // No option ROM: iPXE would add seconds to every boot.
            .args([
                "-device",
                &format!(
                    "virtio-net-{},netdev=n0{}",
                    self.virtio,
                    if self.virtio == "pci" {
                        ",romfile="
                    } else {
                        ""
                    }
                ),
            ])
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu")
    }
}

/// What one boot saw.
/// The guest's `[export.queue]`: `fsync`, and `memory_size` in memory_first.
#[derive(Clone, Copy)]
struct Queue {
    fsync: bool,
    memory: Option<u64>,
}

struct Boot {
    /// From qemu's start to the receiver's first 200.
    ready: Duration,
    /// Batches dropped as corrupt on open (damaged records).
    corrupt: f64,
    /// tern's RSS once ready (its self metrics), in bytes.
    rss: f64,
}

/// Waits until the guest's receiver answers; posts nothing that counts.
fn wait_ready(receiver: std::net::SocketAddr, qemu: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if qemu.try_wait().unwrap().is_some() {
            return false;
        }
        // An empty request: accepted with nothing to queue.
        if post(receiver, &[]) == Some(200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn power_cuts(queue: Queue) {
    let fsync = queue.fsync;
    let Some(vm) = Vm::from_env() else {
        eprintln!("skipped: run by scripts/test-vm (TERN_VM_* not set)");
        return;
    };
    let cuts: usize = std::env::var("TERN_VM_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("vm");
    let disk = dir.path().join("disk.img");
    // The guests' consoles (tern's log included), kept for a look afterwards.
    let logs = std::env::var_os("TERN_VM_LOGS")
        .map_or_else(|| dir.path().to_path_buf(), PathBuf::from)
        .join(match queue {
            Queue {
                memory: Some(_), ..
            } => "memory-first",
            Queue { fsync: true, .. } => "fsync-on",
            Queue { fsync: false, .. } => "fsync-off",
        });
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::copy(&vm.disk, &disk).unwrap();
    let gateway = Arc::new(FakeGateway::start());
    gateway.set_default(Reply::Status(503, None));
    let receiver = free_port();
    let metrics = free_port();
    let ports = (receiver.port(), metrics.port());

    // span number -> when its request got 200
    let acked: Arc<Mutex<BTreeMap<u64, (Instant, usize)>>> = Arc::default();
    let mut next = 0u64;
    let mut boots = Vec::new();
    let mut cut_times = Vec::new();
    // Per cut: the mean batch size and the bytes spilled to disk in that boot.
    let mut held: Vec<(f64, f64)> = Vec::new();
    for cut in 0..=cuts {
        let last = cut == cuts;
        let log = logs.join(format!("console-{cut}.log"));
        if std::env::var_os("TERN_VM_KEEP_DISK").is_some() {
            std::fs::copy(&disk, logs.join(format!("disk-before-boot-{cut}.img"))).unwrap();
        }
        let started = Instant::now();
        let mut qemu = vm.boot(&disk, gateway.addr.port(), queue, ports, &log);
        assert!(
            wait_ready(receiver, &mut qemu),
            "boot {cut}: the guest's receiver never answered\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let text = http_get(metrics, "/metrics").map_or_else(String::new, |(_, t)| t);
        let corrupt = text
            .lines()
            .filter(|l| l.starts_with("tern_dropped_batches_total") && l.contains("corrupt"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let rss = crate::harness::agent::metric_value(&text, "process_resident_memory_bytes")
            .unwrap_or(0.0);
        boots.push(Boot {
            ready: started.elapsed(),
            corrupt,
            rss,
        });
        if last {
            // Drain: the gateway stays up.
            gateway.set_default(Reply::Ok);
            let want: Vec<u64> = acked.lock().unwrap().keys().copied().collect();
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                let seen = span_names(&gateway.received());
                if want.iter().all(|n| seen.contains_key(&format!("span-{n}"))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            let _ = qemu.kill();
            let _ = qemu.wait();
            break;
        }
        // The gateway is mostly down: up for a moment now and then.
        let stop = Arc::new(AtomicBool::new(false));
        let flapper = {
            let (stop, gateway) = (stop.clone(), gateway.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let up = fastrand::u8(..5) == 0;
                    gateway.set_default(if up {
                        Reply::Ok
                    } else {
                        Reply::Status(503, None)
                    });
                    std::thread::sleep(Duration::from_millis(fastrand::u64(200..700)));
                }
            })
        };
        let client = {
            let (stop, acked) = (stop.clone(), acked.clone());
            let first = next;
            let boot = cut;
            std::thread::spawn(move || {
                let mut n = first;
                while !stop.load(Ordering::Relaxed) {
                    if post(receiver, &spans(n)) == Some(200) {
                        let now = Instant::now();
                        acked
                            .lock()
                            .unwrap()
                            .extend((n..n + 5).map(|k| (k, (now, boot))));
                    }
                    n += 5;
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(fastrand::u64(500..4000)));
        // The size of a batch, and what memory holds, a moment before the cut.
        let text = http_get(metrics, "/metrics").map_or_else(String::new, |(_, t)| t);
        let value = |series: &str| metric_value(&text, series).unwrap_or(0.0);
        let batch = value("tern_queue_pushed_bytes_total{signal=\"traces\"}")
            / value("tern_queue_pushed_batches_total{signal=\"traces\"}").max(1.0);
        held.push((batch, value("tern_queue_written_bytes_total")));
        // The power cut.
        let _ = qemu.kill();
        cut_times.push(Instant::now());
        let _ = qemu.wait();
        stop.store(true, Ordering::Relaxed);
        next = client.join().unwrap();
        flapper.join().unwrap();
        gateway.set_default(Reply::Status(503, None));
    }

    let acked = acked.lock().unwrap().clone();
    let received = gateway.received();
    let seen = span_names(&received);
    let lost: Vec<(u64, Instant)> = acked
        .iter()
        .filter(|(n, _)| !seen.contains_key(&format!("span-{n}")))
        .map(|(&n, &(at, _))| (n, at))
        .collect();
    // Per boot: spans acked, lost, and the oldest loss's age at its own cut.
    let mut most_lost_bytes = 0.0f64;
    for (boot, &cut_at) in cut_times.iter().enumerate() {
        let of_boot: Vec<_> = acked.iter().filter(|(_, (_, b))| *b == boot).collect();
        let lost_here: Vec<Duration> = of_boot
            .iter()
            .filter(|(n, _)| !seen.contains_key(&format!("span-{n}")))
            .map(|(_, (at, _))| cut_at.saturating_duration_since(*at))
            .collect();
        // One request, one batch of five spans.
        let (batch, spilled) = held.get(boot).copied().unwrap_or_default();
        let lost_bytes = lost_here.len() as f64 / 5.0 * batch;
        most_lost_bytes = most_lost_bytes.max(lost_bytes);
        eprintln!(
            "  boot {boot}: {} acked, {} lost (about {lost_bytes:.0} bytes; {spilled} bytes written to the queue), oldest lost acked {:.2} s before the cut",
            of_boot.len(),
            lost_here.len(),
            lost_here
                .iter()
                .max()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
        );
    }
    // How long before its boot's cut each lost span had been acknowledged. A
    // 200 read just after the kill was sent before it (qemu had passed it
    // on): that counts as 0, not as a span of the next boot.
    let window = acked
        .iter()
        .filter(|(n, _)| !seen.contains_key(&format!("span-{n}")))
        .filter_map(|(_, &(at, boot))| {
            cut_times
                .get(boot)
                .map(|&cut| cut.saturating_duration_since(at))
        })
        .max()
        .unwrap_or_default();
    let mut digests: HashMap<u64, usize> = HashMap::new();
    for r in received.iter().filter(|r| r.answered == 200) {
        *digests.entry(r.digest).or_insert(0) += 1;
    }
    let doubled: usize = digests.values().map(|n| n - 1).sum();
    // Requests carry several batches when a backlog drains, and not always
    // the same ones again: spans say what arrived twice.
    let spans_twice = seen.values().filter(|&&n| n > 1).count();
    let ready: Vec<f64> = boots.iter().map(|b| b.ready.as_secs_f64()).collect();
    // + 0.0: a float sum starts at -0.0.
    let corrupt: f64 = boots.iter().map(|b| b.corrupt).sum::<f64>() + 0.0;
    let corrupt_max = boots.iter().map(|b| b.corrupt).fold(0.0, f64::max);
    let rss: Vec<f64> = boots.iter().map(|b| b.rss / 1e6).collect();
    let mode = match queue.memory {
        Some(bytes) => format!("memory_first, memory_size = {bytes}, fsync = {fsync}"),
        None => format!("fsync = {fsync}"),
    };
    eprintln!(
        "vm power cuts ({mode}): {cuts} cuts, {} spans acked, {} arrived, {} lost (acked at most {:.1} s before their cut), {doubled} requests and {spans_twice} spans received twice, {corrupt} damaged batches dropped ({corrupt_max} at most in one boot), boot to ready {:.1} to {:.1} s, RSS when ready {:.1} to {:.1} MB",
        acked.len(),
        acked.keys().filter(|n| seen.contains_key(&format!("span-{n}"))).count(),
        lost.len(),
        window.as_secs_f64(),
        ready.iter().copied().fold(f64::MAX, f64::min),
        ready.iter().copied().fold(0.0, f64::max),
        rss.iter().copied().fold(f64::MAX, f64::min),
        rss.iter().copied().fold(0.0, f64::max),
    );
    assert!(acked.len() > 50, "too few spans accepted: {}", acked.len());
    if let Some(memory) = queue.memory {
        // What memory_first promises: a cut loses what memory held, at most
        // memory_size (10% for the mean batch size that estimates it).
        eprintln!("  most lost in one cut: about {most_lost_bytes:.0} bytes of {memory}");
        assert!(
            most_lost_bytes <= memory as f64 * 1.1,
            "a cut lost about {most_lost_bytes:.0} bytes, over memory_size {memory}"
        );
        assert!(
            held.iter().any(|&(_, spilled)| spilled > 0.0),
            "no boot spilled to disk: the run did not fill memory"
        );
    } else if fsync {
        assert!(
            lost.is_empty(),
            "acknowledged spans lost: {:?}",
            &lost[..lost.len().min(20)]
        );
    } else {
        // What fsync = false promises: about the last flush interval (1 s).
        assert!(
            window <= Duration::from_secs(3),
            "spans acked {window:?} before a cut were lost"
        );
    }
}

#[test]
#[ignore = "needs the VM images: scripts/test-vm"]
fn vm_power_cuts_fsync_on_lose_nothing_acknowledged() {
    power_cuts(Queue {
        fsync: true,
        memory: None,
    });
}

#[test]
#[ignore = "needs the VM images: scripts/test-vm"]
fn vm_power_cuts_fsync_off_lose_at_most_the_last_interval() {
    power_cuts(Queue {
        fsync: false,
        memory: None,
    });
}

/// memory_first with 16 KiB of memory (about a hundred requests) and
/// `fsync` on: a cut loses what memory held and nothing that had spilled.
#[test]
#[ignore = "needs the VM images: scripts/test-vm"]
fn vm_power_cuts_memory_first_lose_at_most_memory_size() {
    power_cuts(Queue {
        fsync: true,
        memory: Some(16 * 1024),
    });
}

/// Waits for qemu to exit on its own (the guest powers off or reboots:
/// `-no-reboot`), for at most `timeout`; kills it then. Gives the console.
fn run_to_end(mut qemu: Child, timeout: Duration, log: &Path) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    let exited = loop {
        if qemu.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    (exited, std::fs::read_to_string(log).unwrap_or_default())
}

/// The `key=value` words of the console's `LAB` lines (scripts/vm/lab); a
/// key said twice keeps its last value.
fn lab_words(console: &str) -> HashMap<String, String> {
    let mut words = HashMap::new();
    for line in console.lines() {
        let Some(rest) = line.split("LAB ").nth(1) else {
            continue;
        };
        if rest.starts_with("tern-log:") || rest.starts_with("tern-warning:") {
            continue;
        }
        for word in rest.split_whitespace() {
            if let Some((k, v)) = word.split_once('=') {
                words.insert(k.to_string(), v.to_string());
            }
        }
    }
    words
}

/// The Debian package under systemd as PID 1, as a user runs it: scripts/vm/lab
/// installs the .deb, enables it with a config that scrapes Debian's
/// node_exporter and reads the journal from the boot, writes journal entries
/// of every kind, reloads, stops and reboots; tern starts on its own after the
/// reboot. The host checks what the guest saw and what reached the gateway.
#[test]
#[ignore = "needs the VM images: scripts/test-vm"]
fn vm_systemd_package_journal_reload_stop_reboot() {
    use tern::otlp::proto::common::v1::any_value::Value;
    if std::env::var_os("TERN_VM_QEMU").is_none() {
        eprintln!("skipped: run by scripts/test-vm (TERN_VM_* not set)");
        return;
    }
    let vm = Vm::from_env().expect("TERN_VM_* incomplete");
    let image = |var: &str| PathBuf::from(std::env::var_os(var).expect(var));
    let (root, lab) = (image("TERN_VM_SYSTEMD_DISK"), image("TERN_VM_LAB_DISK"));
    let dir = TempDir::new("vm-systemd");
    let disk = dir.path().join("root.img");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(&root)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(copied.success(), "cp {}", root.display());
    let logs = std::env::var_os("TERN_VM_LOGS")
        .map_or_else(|| dir.path().to_path_buf(), PathBuf::from)
        .join("systemd");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let gateway = FakeGateway::start();
    let run = format!("r{:08x}", fastrand::u32(..));
    let boot = |phase: u8| {
        let log = logs.join(format!("console-{phase}.log"));
        let started = Instant::now();
        let qemu = vm.qemu(
            "512",
            &format!(
                "tern.root=/dev/vda tern.lab={phase} tern.gw={} tern.run={run}",
                gateway.addr.port()
            ),
            &[&disk, &lab],
            "",
            &log,
        );
        let (exited, console) = run_to_end(qemu, Duration::from_secs(600), &log);
        let words = lab_words(&console);
        eprintln!(
            "systemd boot {phase}: {:.0} s, lab saw {words:?}",
            started.elapsed().as_secs_f64()
        );
        assert!(
            exited && words.get("done") == Some(&phase.to_string()),
            "boot {phase} did not finish its checks (console in {}):\n{}",
            log.display(),
            console
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        words
    };

    let first = boot(1);
    let want = |key: &str, value: &str| {
        assert_eq!(
            first.get(key).map(String::as_str),
            Some(value),
            "{key} in the first boot: {first:?}"
        );
    };
    want("install", "0");
    want("enable_now", "0");
    want("state", "active");
    want("reload", "0");
    want("reload_state", "active");
    want("stop", "0");
    want("Result", "success");
    want("ExecMainStatus", "0");
    // tern's own warnings reach the journal as warnings: the broken config's
    // refusal, and nothing else.
    want("broken_reload", "0");
    want("broken_state", "active");
    want("refused_logged", "1");
    want("journal_tern_warnings", "0");
    let number = |key: &str| -> f64 {
        first
            .get(key)
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .unwrap_or_else(|| panic!("{key} in the first boot: {first:?}"))
    };
    assert!(number("NRestarts") == 0.0, "{first:?}");
    assert!(
        number("watchdog_after") > number("watchdog_before") && number("watchdog_before") > 0.0,
        "no watchdog ping in 32 s: {first:?}"
    );
    let security = number("security");
    assert!(security <= 1.5, "systemd-analyze security: {security}");
    let stop_ms = number("stop_ms");
    assert!(stop_ms < 5_000.0, "systemctl stop took {stop_ms} ms");

    let second = boot(2);
    assert_eq!(
        second.get("state").map(String::as_str),
        Some("active"),
        "{second:?}"
    );
    assert_eq!(
        second.get("NRestarts").map(String::as_str),
        Some("0"),
        "{second:?}"
    );

    // node_exporter's series under the job before and after the reload.
    let deadline = Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        let jobs: std::collections::BTreeSet<String> =
            crate::harness::flatten(&gateway.delivered())
                .into_iter()
                .filter(|(_, m)| m.name == "node_load1")
                .filter_map(|(res, _)| {
                    crate::harness::attr(&res, "service.name").map(str::to_string)
                })
                .collect();
        if jobs.contains("node-reloaded") || Instant::now() > deadline {
            break jobs;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        jobs.contains("node") && jobs.contains("node-reloaded"),
        "node_load1 came under the jobs {jobs:?}"
    );

    // Each lab entry exactly once (the same request twice is an export retry).
    let mut seen: HashMap<String, (u64, i32, Value)> = HashMap::new();
    let mut doubled = Vec::new();
    for (digest, request) in gateway.delivered_logs() {
        for rl in request.resource_logs {
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    let Some(body) = r.body.and_then(|b| b.value) else {
                        continue;
                    };
                    let text = match &body {
                        Value::StringValue(s) => s.clone(),
                        Value::BytesValue(b) => String::from_utf8_lossy(b).into_owned(),
                        _ => continue,
                    };
                    if !text.starts_with(&format!("lab {run} ")) {
                        continue;
                    }
                    match seen.get(&text) {
                        Some((d, _, _)) if *d != digest => doubled.push(text),
                        Some(_) => {}
                        None => {
                            seen.insert(text, (digest, r.severity_number, body));
                        }
                    }
                }
            }
        }
    }
    assert!(doubled.is_empty(), "entries delivered twice: {doubled:?}");
    let mut missing = Vec::new();
    for moment in ["boot1", "reloaded", "stopped", "boot2"] {
        for (prio, number) in [
            ("emerg", 21),
            ("alert", 19),
            ("crit", 18),
            ("err", 17),
            ("warning", 13),
            ("notice", 10),
            ("info", 9),
        ] {
            match seen.get(&format!("lab {run} {moment} prio {prio}")) {
                Some((_, severity, _)) => assert_eq!(*severity, number, "{moment} {prio}"),
                None => missing.push(format!("{moment} prio {prio}")),
            }
        }
        // min_priority's default, info: debug stays on the box.
        assert!(
            !seen.contains_key(&format!("lab {run} {moment} prio debug")),
            "{moment}: a debug entry was sent"
        );
        match seen.get(&format!("lab {run} {moment} multi first\nsecond line")) {
            Some((_, _, Value::StringValue(_))) => {}
            other => missing.push(format!("{moment} multi-line: {other:?}")),
        }
        let bytes = format!("lab {run} {moment} bytes \u{fffd}\u{fffd} end");
        match seen.get(&bytes) {
            Some((_, _, Value::BytesValue(b))) => {
                assert!(b.windows(2).any(|w| w == [0xff, 0xfe]), "{moment}: {b:?}")
            }
            other => missing.push(format!("{moment} non-UTF-8: {other:?}")),
        }
        if !seen.contains_key(&format!("lab {run} {moment} cat")) {
            missing.push(format!("{moment} systemd-cat"));
        }
    }
    assert!(
        missing.is_empty(),
        "entries that did not arrive (or not as written): {missing:?}; arrived: {:?}",
        seen.keys().collect::<Vec<_>>()
    );
    eprintln!(
        "vm systemd: {} lab entries arrived once each, jobs {jobs:?}, security {security}, stop {stop_ms} ms",
        seen.len()
    );
}

/// The Buildroot case: BusyBox init, syslogd, no systemd and no journalctl.
/// scripts/vm/busybox-lab drives buildroot's S99tern (start, status,
/// restart, reload, stop, a start with a broken config) with a config that
/// scrapes tern's own metrics and has a `[journald]` source.
#[test]
#[ignore = "needs the VM images: scripts/test-vm"]
fn vm_busybox_init_script_starts_stops_and_forwards() {
    if std::env::var_os("TERN_VM_QEMU").is_none() {
        eprintln!("skipped: run by scripts/test-vm (TERN_VM_* not set)");
        return;
    }
    let vm = Vm::from_env().expect("TERN_VM_* incomplete");
    let dir = TempDir::new("vm-busybox");
    let disk = dir.path().join("disk.img");
    std::fs::copy(&vm.disk, &disk).unwrap();
    let logs = std::env::var_os("TERN_VM_LOGS")
        .map_or_else(|| dir.path().to_path_buf(), PathBuf::from)
        .join("busybox");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("console.log");
    let gateway = FakeGateway::start();
    let qemu = vm.qemu(
        "256",
        &format!("tern.init=busybox tern.gw={}", gateway.addr.port()),
        &[&disk],
        "",
        &log,
    );
    let (exited, console) = run_to_end(qemu, Duration::from_secs(300), &log);
    let words = lab_words(&console);
    eprintln!("busybox lab saw {words:?}");
    assert!(
        exited && words.get("done").map(String::as_str) == Some("1"),
        "the lab did not finish (console in {}):\n{console}",
        log.display()
    );
    let want = |key: &str, value: &str| {
        assert_eq!(
            words.get(key).map(String::as_str),
            Some(value),
            "{key}: {words:?}\n{console}"
        );
    };
    want("start", "0");
    want("restart", "0");
    want("reload", "0");
    want("stop", "0");
    want("broken_start", "78");
    // status: 0 and a pid while running, 3 and none when stopped.
    for key in ["status_started", "status_restarted", "status_reloaded"] {
        let v = &words[key];
        assert!(v.starts_with("0:") && v.len() > 2, "{key}={v}");
    }
    want("status_stopped", "3:");
    want("status_broken", "3:");
    want("pid_changed", "yes");
    // Without journalctl: one warning each time the source starts (start,
    // restart, reload), with the hint; then it backs off, rate-limited, and
    // tern runs on.
    want("journalctl_warnings", "3");
    assert!(
        console.contains("hint=\"no journalctl on this box"),
        "{console}"
    );
    let jobs: std::collections::BTreeSet<String> = crate::harness::flatten(&gateway.delivered())
        .into_iter()
        .filter(|(_, m)| m.name.starts_with("tern_"))
        .filter_map(|(res, _)| crate::harness::attr(&res, "service.name").map(str::to_string))
        .collect();
    assert!(
        jobs.contains("busybox"),
        "no scraped series arrived: {jobs:?}"
    );
}

/// Sums the values of the series of `name` whose labels contain every one of
/// `labels` (such as `job="lab"`).
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU per scraped sample of the guest's own binary on its own kernel: the
/// guest scrapes a host exporter of `TERN_VM_SERIES` series (default 10,000,
/// values changing every scrape) every 5 s and forwards to the host gateway;
/// over a window of `TERN_VM_CPU_SECONDS` (default 60) after a warm-up, CPU
/// is the increase of its `process_cpu_seconds_total`, samples the increase
/// of its ok scrapes times the series per scrape. Under TCG the absolute
/// figure is the emulator's; the ratio between architectures and the RSS are
/// what it tells. The figures go to stderr and to `$TERN_VM_LOGS/cpu.txt`.
#[test]
#[ignore = "needs the VM images: scripts/test-vm"]
fn vm_scrape_cpu_per_sample() {
    if std::env::var_os("TERN_VM_QEMU").is_none() {
        eprintln!("skipped: run by scripts/test-vm (TERN_VM_* not set)");
        return;
    }
    let vm = Vm::from_env().expect("TERN_VM_* incomplete");
    let env_number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let series = env_number("TERN_VM_SERIES", 10_000);
    let window = Duration::from_secs(env_number("TERN_VM_CPU_SECONDS", 60));
    let exporter = ScriptedExporter::start(move |n| {
        let mut body = String::with_capacity(series as usize * 48);
        body.push_str("# TYPE lab_metric gauge\n");
        for i in 0..series {
            body.push_str(&format!(
                "lab_metric{{series=\"{i}\",box=\"lab\"}} {}\n",
                (n * 7 + i) % 1000
            ));
        }
        (200, "text/plain; version=0.0.4", body.into_bytes())
    });
    let dir = TempDir::new("vm-cpu");
    let disk = dir.path().join("disk.img");
    std::fs::copy(&vm.disk, &disk).unwrap();
    let logs =
        std::env::var_os("TERN_VM_LOGS").map_or_else(|| dir.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("cpu-console.log");
    let gateway = FakeGateway::start();
    let (receiver, metrics) = (free_port(), free_port());
    let started = Instant::now();
    let mut qemu = vm.qemu(
        "256",
        &format!(
            "tern.gw={} tern.scrape={}",
            gateway.addr.port(),
            exporter.addr.port()
        ),
        &[&disk],
        &format!(
            ",hostfwd=tcp:127.0.0.1:{}-:4318,hostfwd=tcp:127.0.0.1:{}-:12345",
            receiver.port(),
            metrics.port()
        ),
        &log,
    );
    let ready = wait_ready(receiver, &mut qemu);
    let ready_after = started.elapsed();
    let read = || http_get(metrics, "/metrics").map_or_else(String::new, |(_, t)| t);
    let ok_scrapes = |text: &str| {
        metric_sum(
            text,
            "tern_scrapes_total",
            &["job=\"lab\"", "result=\"ok\""],
        )
    };
    // Warm-up: two scrapes done, so the window starts with tern's series
    // table and buffers at their steady size.
    let warm = Instant::now() + Duration::from_secs(120);
    while ready && ok_scrapes(&read()) < 2.0 && Instant::now() < warm {
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = read();
    std::thread::sleep(window);
    let after = read();
    let _ = qemu.kill();
    let _ = qemu.wait();
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready, "the guest's receiver never answered\n{console}");
    let scrapes = ok_scrapes(&after) - ok_scrapes(&before);
    let failed = metric_sum(&after, "tern_scrapes_total", &["job=\"lab\""]) - ok_scrapes(&after);
    let per_scrape = metric_sum(&after, "tern_scrape_samples", &["job=\"lab\""]);
    let cpu = metric_value(&after, "process_cpu_seconds_total").unwrap_or(0.0)
        - metric_value(&before, "process_cpu_seconds_total").unwrap_or(0.0);
    let rss = metric_value(&after, "process_resident_memory_bytes").unwrap_or(0.0);
    assert!(
        scrapes >= 2.0 && failed == 0.0,
        "the guest scraped {scrapes} times in the window, {failed} failed:\n{after}\n{console}"
    );
    assert_eq!(per_scrape, series as f64, "series per scrape:\n{after}");
    let arrived = crate::harness::flatten(&gateway.delivered())
        .into_iter()
        .filter(|(_, m)| m.name == "lab_metric")
        .count();
    assert!(arrived > 0, "no lab_metric arrived at the gateway");
    let samples = scrapes * per_scrape;
    let line = format!(
        "{}: {:.2} us per sample ({cpu:.2} s CPU, {scrapes} scrapes of {per_scrape} series in {} s), RSS {:.1} MB, ready after {:.1} s",
        vm.qemu,
        cpu * 1e6 / samples,
        window.as_secs(),
        rss / 1e6,
        ready_after.as_secs_f64()
    );
    eprintln!("vm cpu {line}");
    std::fs::write(logs.join("cpu.txt"), format!("{line}\n")).unwrap();
}
