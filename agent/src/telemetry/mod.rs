//! Self telemetry: tern's own metrics, its log, and the small HTTP server that
//! serves `/metrics`, `/-/healthy` and `/-/ready`.
//!
//! This is the rightmost module of the data flow: every other part reports into
//! it, and it depends on none of them.
//!
//! # Log levels
//!
//! tern logs through the `log` facade. What goes at each level is a contract:
//!
//! - ERROR: data was lost, or the agent cannot go on.
//! - WARN: the config or a gateway needs attention.
//! - INFO: lifecycle events and changes to the gateway set.
//! - DEBUG: per-batch state.
//! - TRACE: wire detail.
//!
//! Messages are a capitalized sentence followed by `key=value` pairs. Repeated
//! errors from one target are rate-limited by the caller ([`RateLimit`]). Secrets
//! and auth headers are never logged, at any level.

pub mod http;
pub mod metrics;
pub mod notify;

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use metrics::Metrics;

/// A logger that writes one line per record to stderr, which systemd's journal
/// stamps with time and unit; so no timestamp of our own.
#[derive(Debug)]
struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("tern")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let mut err = std::io::stderr().lock();
            // Nothing useful can be done if stderr is gone.
            let _ = writeln!(err, "{:<5} {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the stderr logger at `level`; `TERN_LOG` overrides it. Only the first
/// call takes effect (later calls, such as on reload, just change the level).
pub fn init_logging(level: log::LevelFilter) {
    let level = std::env::var("TERN_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(level);
    let _ = log::set_boxed_logger(Box::new(StderrLogger {
        level: log::LevelFilter::Trace,
    }));
    log::set_max_level(level);
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

/// Sets `process_resident_memory_bytes` and `process_cpu_seconds_total` from
/// /proc/self, the names every Prometheus client uses, so existing dashboards work.
pub fn update_process_gauges(metrics: &Metrics) {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            metrics.set("process_resident_memory_bytes", &[], kib * 1024.0);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesized command name; utime and stime are the
        // 14th and 15th fields, in USER_HZ ticks, which Linux fixes at 100.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        metrics.set("process_cpu_seconds_total", &[], ticks / 100.0);
    }
}
