//! Lifecycle tools every long-running part shares: the stop signal
//! ([`Shutdown`]) that blocking loops sleep on, and the [`RateLimit`] that
//! keeps a failing target from flooding the log, and [`spawn`], which starts
//! every thread tern runs and says which limit to raise when the system
//! refuses one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Starts a named thread for `what` (for example "scrape worker 3 of 4").
///
/// When the system refuses the thread (EAGAIN: the process or user is at its
/// task limit, `ulimit -u` or systemd's `TasksMax=`; ENOMEM: at its memory
/// limit), the error names what tern was starting and the limit to raise,
/// instead of a bare "Resource temporarily unavailable".
pub fn spawn<T: Send + 'static>(
    name: String,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| refused(what, e))
}

fn refused(what: &str, e: std::io::Error) -> std::io::Error {
    let threads = thread_count().map_or(String::new(), |n| format!(" (tern runs {n} now)"));
    let limits = set_limits();
    let hint = match e.raw_os_error() {
        // pthread_create says EAGAIN both at the task limit and when the
        // stack cannot be mapped under a memory limit.
        Some(11) | Some(12) => format!(
            "the system refused a new thread{threads}{limits}: raise the task limit \
             (systemd TasksMax=, ulimit -u, or pids.max of the cgroup) or the memory \
             limit (MemoryMax=, ulimit -v, memory.max), or lower agent.scrape_workers"
        ),
        _ => format!("the system refused a new thread{threads}{limits}"),
    };
    std::io::Error::new(e.kind(), format!("starting {what}: {e}; {hint}"))
}

/// The task and address-space limits of this process that are set, as
/// `; limits: Max processes 12, Max address space 104857600 bytes`.
fn set_limits() -> String {
    let Ok(text) = std::fs::read_to_string("/proc/self/limits") else {
        return String::new();
    };
    let set: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("Max processes") || l.starts_with("Max address space"))
        .filter_map(|l| {
            // "Max processes    12    12    processes": name, soft, hard, unit.
            let (name, rest) = l.split_at(l.find(char::is_numeric).or(l.find("unlimited"))?);
            let soft = rest.split_whitespace().next()?;
            let unit = rest.split_whitespace().nth(2).unwrap_or("");
            (soft != "unlimited").then(|| format!("{} {soft} {unit}", name.trim()))
        })
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("; limits: {}", set.join(", "))
    }
}

/// Threads of this process, from /proc (None where there is no /proc).
fn thread_count() -> Option<usize> {
    process_status("Threads")?.parse().ok()
}

/// The value of one field of /proc/self/status (`Threads`, `VmRSS`, ...),
/// trimmed; None where there is no /proc or no such field.
pub fn process_status(field: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        (name == field).then(|| value.trim().to_string())
    })
}

/// Lets one message through per period and counts what it held back, so a
/// target that fails every second does not flood the journal.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    /// A limiter that lets one message through per `period`.
    pub fn new(period: Duration) -> RateLimit {
        RateLimit {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Returns `Some(suppressed)` when a message may be logged now, with the
    /// number held back since the last one; `None` when it must be held back.
    pub fn check(&self) -> Option<u64> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.period => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// The agent-wide stop signal: set once on SIGTERM or SIGINT; blocking loops
/// sleep on it so they wake at once instead of finishing a long backoff.
#[derive(Debug, Default)]
pub struct Shutdown {
    stopped: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Fires the signal and wakes every sleeper.
    pub fn trigger(&self) {
        *self.lock() = true;
        self.wake.notify_all();
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        *self.lock()
    }

    /// Sleeps for `d` or until the signal fires; returns whether it fired.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stopped = self.lock();
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = match self.wake.wait_timeout(stopped, deadline - now) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        match self.stopped.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through_per_period() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        let r = RateLimit::new(Duration::ZERO);
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), Some(0));
    }
}
