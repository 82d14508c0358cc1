//! When the system refuses tern a thread (a task limit, or a memory limit
//! that leaves no room for a stack), tern exits with an error that names
//! what it was starting and the limit to raise, not a bare EAGAIN.

use std::process::{Command, Stdio};

use crate::harness::agent::tern_bin;
use crate::harness::TempDir;

/// A user id no other process uses: RLIMIT_NPROC counts a user's tasks
/// across the whole system.
const UID: u32 = 64_123;

/// Runs tern as `UID` under `prlimit` with `limit`; gives its exit status and
/// stderr. None when the test cannot run here (not root, no prlimit).
fn run_limited(limit: &str) -> Option<(Option<i32>, String)> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| o.stdout.starts_with(b"0"));
    if !root || Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: needs root (to run tern as another user) and prlimit");
        return None;
    }
    let dir = TempDir::new("limits");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let status = Command::new("chown")
        .args(["-R", &format!("{UID}:{UID}")])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nscrape_workers = 4\n\n[[scrape]]\njob = \"a\"\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\"]\n\n[export]\nendpoints = [\"http://127.0.0.1:9\"]\n",
            state.display()
        ),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
            "prlimit",
            limit,
        ])
        .arg(tern_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Some((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn a_refused_thread_names_what_was_starting_and_the_limit() {
    // 10 tasks: the queue, the self-metrics server and a few threads start;
    // the rest cannot.
    let Some((code, stderr)) = run_limited("--nproc=10") else {
        return;
    };
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("tern: "), "{stderr}");
    assert!(
        stderr.contains("starting "),
        "names what was starting: {stderr}"
    );
    assert!(stderr.contains("TasksMax="), "names the limit: {stderr}");
    assert!(
        stderr.contains("Max processes 10"),
        "shows the limit in force: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_memory_limit_that_leaves_no_stack_is_named_too() {
    // 60 MiB of address space: tern starts, and a thread's stack no longer fits.
    let Some((code, stderr)) = run_limited("--as=62914560") else {
        return;
    };
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("starting "), "{stderr}");
    assert!(stderr.contains("memory limit (MemoryMax="), "{stderr}");
    assert!(stderr.contains("Max address space 62914560"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
