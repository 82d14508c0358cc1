//! Running journalctl: its command lines, the child process, the named
//! threads that read its stdout and stderr, and the short "probe" runs that
//! answer one question about the journal.
//!
//! Every command reads the export format (`--output=export --no-pager --all`),
//! and all but the first start of `read_from = "boot"` pass `--merge`:
//! journalctl's `--follow` implies `--boot` (the current boot only) unless
//! `--merge` or `--boot` is given, which would skip the end of the previous
//! boot when tern resumes after a reboot. With the system journal, `--merge`
//! also reads journals of other machines kept on this one (written by
//! systemd-journal-remote); `matches = ["_MACHINE_ID=..."]` keeps them out.
//!
//! See: systemd v252 `src/journal/journalctl.c`, `parse_argv`:
//! `if (arg_follow && !arg_merge && !arg_boot) arg_boot = true;`

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::JournaldConfig;

use super::export_format::{Limits, Parser};

/// Bytes read from the pipe at once: the default pipe capacity.
const CHUNK: usize = 64 << 10;

/// Chunks read ahead of the pipeline. With [`CHUNK`], at most 512 KiB wait
/// in memory; beyond that the reader blocks, journalctl blocks on the full
/// pipe, and nothing more is read until the queue write catches up.
const READ_AHEAD: usize = 8;

/// Longest stderr line kept for the log.
const MAX_STDERR_LINE: usize = 512;

/// How long a child gets to exit by itself after closing its stdout, and how
/// long its reader threads get to finish after it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Where a follower starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Position {
    /// At the oldest entry.
    Head,
    /// At the first entry of the current boot.
    Boot,
    /// At the entry of this cursor, or the first one after where it was:
    /// `--cursor`, not `--after-cursor` (see the module docs of `journald`).
    Cursor(String),
}

/// The journalctl command lines for one `[journald]` config.
#[derive(Debug, Clone)]
pub(super) struct Journalctl {
    program: PathBuf,
    directory: Option<PathBuf>,
    units: Vec<String>,
    min_priority: u8,
    matches: Vec<String>,
}

impl Journalctl {
    pub(super) fn new(config: &JournaldConfig) -> Journalctl {
        Journalctl {
            program: config.journalctl.clone(),
            directory: config.directory.clone(),
            units: config.units.clone(),
            min_priority: config.min_priority,
            matches: config.matches.clone(),
        }
    }

    /// The program, for messages.
    pub(super) fn program(&self) -> String {
        self.program.display().to_string()
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(["--output=export", "--no-pager", "--all"]);
        if let Some(dir) = &self.directory {
            cmd.arg("--directory").arg(dir);
        }
        cmd
    }

    fn position(cmd: &mut Command, position: &Position) {
        match position {
            Position::Head => {
                cmd.arg("--merge");
            }
            // `--boot` alone: with `--merge` it would mean this machine's
            // boot even in a `directory` of another machine's journal.
            Position::Boot => {
                cmd.arg("--boot");
            }
            Position::Cursor(c) => {
                cmd.arg("--merge").arg(format!("--cursor={c}"));
            }
        }
    }

    /// Filters last: matches are positional, after `--`.
    fn filters(&self, cmd: &mut Command) {
        for u in &self.units {
            cmd.arg(format!("--unit={u}"));
        }
        if self.min_priority < 7 {
            cmd.arg(format!("--priority=0..{}", self.min_priority));
        }
        if !self.matches.is_empty() {
            cmd.arg("--").args(&self.matches);
        }
    }

    /// Follows the journal from `position`, filtered. `--lines=all`: with
    /// `--follow` journalctl would otherwise start 10 entries from the end.
    pub(super) fn follow(&self, position: &Position) -> Command {
        let mut cmd = self.base();
        cmd.args(["--follow", "--lines=all"]);
        Journalctl::position(&mut cmd, position);
        self.filters(&mut cmd);
        cmd
    }

    /// What the follower would print from `position` now, without following.
    pub(super) fn probe(&self, position: &Position) -> Command {
        let mut cmd = self.base();
        Journalctl::position(&mut cmd, position);
        self.filters(&mut cmd);
        cmd
    }

    /// The entry at `cursor` or the first after where it was, unfiltered.
    pub(super) fn at_cursor(&self, cursor: &str) -> Command {
        let mut cmd = self.base();
        Journalctl::position(&mut cmd, &Position::Cursor(cursor.to_string()));
        cmd
    }

    /// The newest entry of the journal, unfiltered.
    pub(super) fn newest(&self) -> Command {
        let mut cmd = self.base();
        cmd.args(["--merge", "--lines=1"]);
        cmd
    }
}

/// Why journalctl stopped or could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    /// The `reason` label of `tern_journald_restarts_total`: `spawn_failed`,
    /// `exited` or `hang`.
    pub(super) reason: &'static str,
    /// What happened, for the log: `key=value` pairs.
    pub(super) detail: String,
}

impl Failure {
    pub(super) fn spawn(program: &str, e: &std::io::Error) -> Failure {
        // The box without systemd (BusyBox init, OpenWrt): say what to change.
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " hint=\"no journalctl on this box: remove [journald], or set journald.journalctl to its path\""
        } else {
            ""
        };
        Failure {
            reason: "spawn_failed",
            detail: format!("program={program} error={:?}{hint}", e.to_string()),
        }
    }

    pub(super) fn exited(status: Option<ExitStatus>, stderr: &str) -> Failure {
        let status = status.map_or_else(|| "unknown".to_string(), |s| s.to_string());
        Failure {
            reason: "exited",
            detail: format!("status={status:?} stderr={stderr:?}"),
        }
    }

    pub(super) fn hang(what: &str) -> Failure {
        Failure {
            reason: "hang",
            detail: what.to_string(),
        }
    }
}

/// What the reader thread sends.
enum Chunk {
    Data(Vec<u8>),
    End,
}

/// What [`Child::recv`] got.
pub(super) enum Recv {
    /// The next bytes of stdout.
    Data(Vec<u8>),
    /// stdout closed: journalctl exited (or closed it).
    End,
    /// Nothing within the timeout.
    Timeout,
}

/// A running journalctl with its reader threads. Dropping it kills the
/// process and reaps it.
#[derive(Debug)]
pub(super) struct Child {
    process: std::process::Child,
    chunks: Option<Receiver<Chunk>>,
    threads: Vec<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Chunk::Data(d) => write!(f, "Data({} bytes)", d.len()),
            Chunk::End => f.write_str("End"),
        }
    }
}

impl Child {
    /// Starts `cmd` with its stdout and stderr read by threads
    /// `tern-journald-out` and `tern-journald-err`.
    pub(super) fn spawn(mut cmd: Command) -> std::io::Result<Child> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = cmd.spawn()?;
        let stdout = process.stdout.take();
        let stderr = process.stderr.take();
        // From here `Child` owns the process: an error below kills it on drop.
        Child::with_pipes(process, stdout, stderr)
    }

    fn with_pipes(
        process: std::process::Child,
        stdout: Option<std::process::ChildStdout>,
        stderr: Option<std::process::ChildStderr>,
    ) -> std::io::Result<Child> {
        let (tx, rx) = sync_channel(READ_AHEAD);
        let mut child = Child {
            process,
            chunks: Some(rx),
            threads: Vec::new(),
            stderr: Arc::new(Mutex::new(String::new())),
        };
        if let Some(out) = stdout {
            child.threads.push(crate::lifecycle::spawn(
                "tern-journald-out".into(),
                "the journalctl reader",
                move || read_stdout(out, &tx),
            )?);
        }
        if let Some(err) = stderr {
            let last = child.stderr.clone();
            child.threads.push(crate::lifecycle::spawn(
                "tern-journald-err".into(),
                "the journalctl error reader",
                move || read_stderr(err, &last),
            )?);
        }
        Ok(child)
    }

    /// The next chunk of stdout, waiting at most `timeout`.
    pub(super) fn recv(&self, timeout: Duration) -> Recv {
        let Some(rx) = &self.chunks else {
            return Recv::End;
        };
        match rx.recv_timeout(timeout) {
            Ok(Chunk::Data(d)) => Recv::Data(d),
            Ok(Chunk::End) | Err(RecvTimeoutError::Disconnected) => Recv::End,
            Err(RecvTimeoutError::Timeout) => Recv::Timeout,
        }
    }

    /// The last line journalctl wrote to stderr (so far).
    fn last_stderr(&self) -> String {
        match self.stderr.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// After [`Recv::End`]: waits a moment for the exit status, then stops
    /// the process. Returns the status if it exited by itself, and the last
    /// line of its stderr.
    pub(super) fn finish(mut self) -> (Option<ExitStatus>, String) {
        let deadline = Instant::now() + EXIT_WAIT;
        let status = loop {
            match self.process.try_wait() {
                Ok(Some(status)) => {
                    self.join_threads();
                    break Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    self.kill();
                    break None;
                }
            }
        };
        (status, self.last_stderr())
    }

    /// Kills the process (if it still runs), reaps it and lets the reader
    /// threads end.
    pub(super) fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        self.join_threads();
    }

    fn join_threads(&mut self) {
        // Dropping the receiver wakes a reader blocked on a full channel.
        self.chunks = None;
        let deadline = Instant::now() + EXIT_WAIT;
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                // Something else holds the pipe open (a grandchild): the
                // thread ends when it closes; it holds no lock.
                log::debug!("journalctl reader thread still blocked; leaving it");
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.chunks.is_some() {
            self.kill();
        } else {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

fn read_stdout(mut out: std::process::ChildStdout, tx: &SyncSender<Chunk>) {
    loop {
        let mut buf = vec![0u8; CHUNK];
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Chunk::Data(buf)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("Reading journalctl's output failed error={e}");
                break;
            }
        }
    }
    let _ = tx.send(Chunk::End);
}

/// Logs journalctl's stderr at DEBUG and keeps its last line for the WARN
/// line that reports a restart.
fn read_stderr(mut err: std::process::ChildStderr, last: &Mutex<String>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match err.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(buf.get(..n).unwrap_or_default());
        while let Some(i) = memchr::memchr(b'\n', &pending) {
            let line: Vec<u8> = pending.drain(..=i).collect();
            keep_line(&line, last);
        }
        if pending.len() > MAX_STDERR_LINE {
            let line: Vec<u8> = std::mem::take(&mut pending);
            keep_line(&line, last);
        }
    }
    if !pending.is_empty() {
        keep_line(&pending, last);
    }
}

fn keep_line(line: &[u8], last: &Mutex<String>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    log::debug!("journalctl: {text}");
    let mut cut: String = text.chars().take(MAX_STDERR_LINE).collect();
    let mut guard = match last.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    std::mem::swap(&mut *guard, &mut cut);
}

/// Runs `cmd` (not following) and returns the cursors of its first `want`
/// entries, reading for at most `timeout`.
///
/// # Errors
///
/// A [`Failure`] when journalctl cannot start, exits with an error before
/// printing an entry, or does not finish within `timeout` (`hang`).
pub(super) fn probe(
    cmd: Command,
    program: &str,
    want: usize,
    timeout: Duration,
) -> Result<Vec<String>, Failure> {
    let mut child = Child::spawn(cmd).map_err(|e| Failure::spawn(program, &e))?;
    // Small limits: only cursors matter, and they survive "too large".
    let mut parser = Parser::new(Limits {
        max_field: 1 << 10,
        max_entry: 16 << 10,
    });
    let mut cursors: Vec<String> = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            child.kill();
            return Err(Failure::hang(&format!(
                "probe={program:?} waited={:.1}s",
                timeout.as_secs_f64()
            )));
        }
        match child.recv(left) {
            Recv::Data(bytes) => {
                parser.feed(&bytes, &mut |e| {
                    if let Some(c) = e.cursor().and_then(|c| std::str::from_utf8(c).ok()) {
                        cursors.push(c.to_string());
                    }
                });
                if cursors.len() >= want {
                    cursors.truncate(want);
                    child.kill();
                    return Ok(cursors);
                }
            }
            Recv::End => {
                let (status, stderr) = child.finish();
                return match status {
                    Some(s) if !s.success() && cursors.is_empty() => {
                        Err(Failure::exited(Some(s), &stderr))
                    }
                    _ => Ok(cursors),
                };
            }
            Recv::Timeout => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn journalctl(units: &[&str], min_priority: u8, matches: &[&str]) -> Journalctl {
        Journalctl {
            program: "journalctl".into(),
            directory: Some("/j".into()),
            units: units.iter().map(|s| s.to_string()).collect(),
            min_priority,
            matches: matches.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn follow_command_lines() {
        let j = journalctl(&["a.service"], 4, &["_TRANSPORT=kernel", "+", "X=1"]);
        assert_eq!(
            args(&j.follow(&Position::Cursor("s=1;i=2".into()))),
            [
                "--output=export",
                "--no-pager",
                "--all",
                "--directory",
                "/j",
                "--follow",
                "--lines=all",
                "--merge",
                "--cursor=s=1;i=2",
                "--unit=a.service",
                "--priority=0..4",
                "--",
                "_TRANSPORT=kernel",
                "+",
                "X=1"
            ]
        );
        let j = journalctl(&[], 7, &[]);
        let a = args(&j.follow(&Position::Boot));
        assert!(
            a.ends_with(&["--follow".into(), "--lines=all".into(), "--boot".into()]),
            "{a:?}"
        );
        assert!(!a.contains(&"--merge".to_string()));
        assert!(args(&j.follow(&Position::Head)).contains(&"--merge".to_string()));
        assert!(!args(&j.follow(&Position::Head))
            .iter()
            .any(|a| a.contains("cursor")));
        assert!(!args(&j.follow(&Position::Head))
            .iter()
            .any(|a| a == "--show-cursor"));
    }

    #[test]
    fn probe_command_lines() {
        let j = journalctl(&["a.service"], 6, &[]);
        let a = args(&j.probe(&Position::Cursor("c".into())));
        assert!(!a.contains(&"--follow".to_string()));
        assert!(a.contains(&"--unit=a.service".to_string()));
        let a = args(&j.at_cursor("c"));
        assert!(a.contains(&"--cursor=c".to_string()));
        assert!(
            !a.iter().any(|a| a.starts_with("--unit")),
            "unfiltered: {a:?}"
        );
        assert!(args(&j.newest()).contains(&"--lines=1".to_string()));
    }

    #[test]
    fn a_missing_program_is_a_spawn_failure() {
        let j = Journalctl {
            program: "/nonexistent/journalctl".into(),
            ..journalctl(&[], 7, &[])
        };
        let err = probe(j.newest(), &j.program(), 1, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.reason, "spawn_failed");
        assert!(
            err.detail.contains("/nonexistent/journalctl")
                && err.detail.contains("hint=\"no journalctl on this box"),
            "{}",
            err.detail
        );
    }

    #[test]
    fn probe_reads_cursors_and_reports_exits_and_hangs() {
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        let got = probe(
            sh("printf '__CURSOR=a\\nX=1\\n\\n__CURSOR=b\\n\\n__CURSOR=c\\n\\n'"),
            "sh",
            2,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(got, ["a", "b"]);
        let got = probe(sh("true"), "sh", 2, Duration::from_secs(10)).unwrap();
        assert!(got.is_empty());
        let err = probe(
            sh("echo 'Failed to seek to cursor' >&2; exit 1"),
            "sh",
            1,
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert_eq!(err.reason, "exited");
        assert!(
            err.detail.contains("Failed to seek to cursor"),
            "{}",
            err.detail
        );
        let started = Instant::now();
        let err = probe(sh("exec sleep 30"), "sh", 1, Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.reason, "hang");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
