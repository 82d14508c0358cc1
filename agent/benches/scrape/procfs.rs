//! What the bench reads from /proc about a process: memory, threads, CPU time,
//! disk writes, and the TCP port it listens on.

/// Clock ticks per second in /proc/PID/stat. Linux fixes USER_HZ at 100 on every
/// architecture tern targets, so the bench need not ask `sysconf`.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcStats {
    /// Resident set size now (VmRSS), in bytes.
    pub(crate) rss: u64,
    /// Peak resident set size since start (VmHWM), in bytes.
    pub(crate) hwm: u64,
    /// Threads now (`Threads` in /proc/PID/status).
    pub(crate) threads: u64,
    /// User plus system CPU time of all its threads, living and exited, in seconds.
    /// Resolution: one tick, 10 ms.
    pub(crate) cpu_seconds: f64,
    /// Bytes it caused to be written to storage (`write_bytes` in /proc/PID/io):
    /// counted when it dirties page-cache pages or writes directly, whoever flushes them later.
    pub(crate) write_bytes: u64,
}

/// Reads `pid`'s counters. None if the process is gone or /proc is unreadable.
pub(crate) fn read(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesized command name start at field 3 (state), so
    // utime (14) and stime (15) are at 11 and 12 here.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let write_bytes = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    Some(ProcStats {
        rss: kib("VmRSS:")?,
        hwm: kib("VmHWM:")?,
        threads: status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())?,
        cpu_seconds: (ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SECOND,
        write_bytes,
    })
}

/// The TCP port `pid` listens on, found from its socket inodes in /proc/PID/fd
/// and the LISTEN entries of /proc/net/tcp, so that no port is ever guessed.
pub(crate) fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let link = link.to_string_lossy();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.push(inode.to_string());
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address is f[1] (hex ip:port), st is f[3] (0A is LISTEN), inode is f[9].
        let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
        if *state == "0A" && inodes.iter().any(|i| i == inode) {
            u16::from_str_radix(local.split(':').nth(1)?, 16).ok()
        } else {
            None
        }
    })
}
