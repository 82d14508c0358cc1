//! systemd integration: the sd_notify(3) protocol of a `Type=notify` unit.
//!
//! systemd starts tern with `NOTIFY_SOCKET` in its environment and, when the
//! unit sets `WatchdogSec=`, with `WATCHDOG_USEC` and `WATCHDOG_PID`. tern tells
//! it three things:
//!
//! - `READY=1` ([`ready`]) once the queue is open, the self-telemetry server
//!   listens and the sources run: `systemctl start tern` returns then, and units
//!   ordered after tern start then.
//! - `WATCHDOG=1` ([`Watchdog::run`]) every half of `WATCHDOG_USEC`, and only
//!   while the agent really works. The pinging task runs on the main loop's
//!   executor, so a blocked main loop sends nothing; and it checks every
//!   [`Heartbeat`] a worker loop registered, so a worker that stopped going
//!   round stops the pings too. systemd then kills tern (SIGABRT) after
//!   `WatchdogSec=` and `Restart=on-failure` starts it again.
//! - `STOPPING=1` ([`stopping`]) when a stop signal arrives, before the
//!   sources are stopped and the queue is flushed.
//!
//! Outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`) every call does
//! nothing. The datagrams are sent by the `sd-notify` crate: no libsystemd.
//!
//! # Testing
//!
//! Debug builds honour `TERN_TEST_STALL_AFTER=SECONDS` ([`test_stall`]): after
//! that long, a task blocks the main loop's thread for good, as a deadlocked
//! main loop would. Release builds ignore the variable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::lifecycle::RateLimit;

/// Tells systemd that tern is up: the queue is open and the sources run.
/// `status` is shown by `systemctl status tern`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd that tern is stopping (flushing the queue may take a moment).
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: flushing the queue"),
    ]);
}

/// Sends `states`; a failure is logged, never fatal: tern works without its
/// service manager, which at worst times the start out or restarts it.
fn send(states: &[NotifyState<'_>]) {
    // Keep NOTIFY_SOCKET set: unsetting an environment variable races with
    // other threads reading the environment, and later messages need it.
    if let Err(e) = sd_notify::notify(false, states) {
        log::warn!("Notifying systemd failed error={e}");
    }
}

/// Milliseconds since the first call in this process: a monotonic clock that
/// fits in an atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// A liveness mark that one loop updates each time round. Clones share the
/// mark. The [`Watchdog`] that handed it out watches it while any clone lives,
/// so a loop that ends simply drops its heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Beat>);

#[derive(Debug)]
struct Beat {
    name: &'static str,
    max_silence: Duration,
    /// [`now_ms`] at the last [`Heartbeat::beat`].
    last_ms: AtomicU64,
}

impl Heartbeat {
    /// Records that the loop went round just now.
    pub fn beat(&self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// The systemd watchdog: pings `WATCHDOG=1` at half the interval systemd
/// asked for, while the main loop runs and every heartbeat is fresh. Clones
/// share the heartbeats.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// Half of `WATCHDOG_USEC`; `None` when systemd asked for no watchdog.
    period: Option<Duration>,
    hearts: Arc<Mutex<Vec<Weak<Beat>>>>,
}

impl Watchdog {
    /// The watchdog systemd asked for in `WATCHDOG_USEC` (for this process,
    /// when `WATCHDOG_PID` is set), or a disabled one.
    pub fn from_env() -> Watchdog {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Watchdog::with_interval(watchdog_interval(
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        ))
    }

    /// A watchdog for a systemd `WatchdogSec=` of `interval`; `None` disables it.
    pub fn with_interval(interval: Option<Duration>) -> Watchdog {
        Watchdog {
            period: interval.map(|i| i / 2),
            hearts: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// How often [`Watchdog::run`] pings; `None` when the watchdog is off.
    pub fn period(&self) -> Option<Duration> {
        self.period
    }

    /// A heartbeat for a worker loop that goes round at least every
    /// `max_silence` (say, its interval plus its timeout). It counts as fresh
    /// from now; while any clone of it lives, a beat older than `max_silence`
    /// stops the pings.
    pub fn heartbeat(&self, name: &'static str, max_silence: Duration) -> Heartbeat {
        let beat = Arc::new(Beat {
            name,
            max_silence,
            last_ms: AtomicU64::new(now_ms()),
        });
        let mut hearts = self.lock();
        hearts.retain(|w| w.strong_count() > 0);
        hearts.push(Arc::downgrade(&beat));
        Heartbeat(beat)
    }

    /// The first live heartbeat that is older than its `max_silence` at
    /// `now_ms`, with how long it has been silent. Forgets dropped ones.
    fn stale(&self, now_ms: u64) -> Option<(&'static str, Duration)> {
        let mut hearts = self.lock();
        hearts.retain(|w| w.strong_count() > 0);
        hearts.iter().filter_map(Weak::upgrade).find_map(|b| {
            let silent =
                Duration::from_millis(now_ms.saturating_sub(b.last_ms.load(Ordering::Relaxed)));
            (silent > b.max_silence).then_some((b.name, silent))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Beat>>> {
        match self.hearts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Pings systemd at once and then every [`Watchdog::period`], forever;
    /// returns at once when the watchdog is off. Spawn it on the main loop's
    /// executor: it must not run when that loop is blocked.
    pub async fn run(self) {
        let Some(period) = self.period else { return };
        log::info!(
            "Watchdog on, pinging systemd period={}ms",
            period.as_millis()
        );
        let errors = RateLimit::new(Duration::from_secs(300));
        let mut stuck = false;
        loop {
            match self.stale(now_ms()) {
                None => {
                    if stuck {
                        log::info!("Watchdog: every loop is going round again, pinging systemd");
                        stuck = false;
                    }
                    if let Err(e) = sd_notify::notify(false, &[NotifyState::Watchdog]) {
                        if let Some(suppressed) = errors.check() {
                            log::warn!("Pinging the systemd watchdog failed error={e} suppressed={suppressed}");
                        }
                    }
                }
                Some((name, silent)) if !stuck => {
                    log::error!(
                        "Watchdog: a loop is stuck, no longer pinging systemd loop={name} silent_for={}s",
                        silent.as_secs()
                    );
                    stuck = true;
                }
                Some(_) => {}
            }
            smol::Timer::after(period).await;
        }
    }
}

/// The watchdog interval from `WATCHDOG_USEC` and `WATCHDOG_PID`, as
/// sd_watchdog_enabled(3) reads them: none when the interval is missing, zero
/// or malformed, or when `WATCHDOG_PID` names another process.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Debug builds only: when `TERN_TEST_STALL_AFTER=SECONDS` is set, waits that
/// long and then blocks the thread that polls it, for good. Spawned on the
/// main loop's executor it makes that loop stuck for real, which is how the
/// system tests check that the watchdog stops. Returns at once otherwise, and
/// always in release builds.
pub async fn test_stall() {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(after) = std::env::var("TERN_TEST_STALL_AFTER")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
    else {
        return;
    };
    smol::Timer::after(Duration::from_secs_f64(after)).await;
    log::warn!("Stalling the main loop for the tests TERN_TEST_STALL_AFTER={after}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_reads_the_environment_as_libsystemd_does() {
        let s = Some;
        assert_eq!(
            watchdog_interval(s("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(s("500000"), s("7"), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            watchdog_interval(s("500000"), s("8"), 7),
            None,
            "another pid"
        );
        assert_eq!(watchdog_interval(s("500000"), s("x"), 7), None);
        assert_eq!(watchdog_interval(s("0"), None, 7), None);
        assert_eq!(watchdog_interval(s("-1"), None, 7), None);
        assert_eq!(watchdog_interval(s("30s"), None, 7), None);
        assert_eq!(watchdog_interval(None, s("7"), 7), None);
    }

    #[test]
    fn pings_at_half_the_interval() {
        let w = Watchdog::with_interval(Some(Duration::from_secs(60)));
        assert_eq!(w.period(), Some(Duration::from_secs(30)));
        assert_eq!(Watchdog::with_interval(None).period(), None);
    }

    #[test]
    fn a_silent_heartbeat_is_stale_until_it_beats_or_is_dropped() {
        let w = Watchdog::with_interval(Some(Duration::from_secs(2)));
        let start = now_ms();
        let scrape = w.heartbeat("scrape", Duration::from_secs(10));
        let export = w.heartbeat("export", Duration::from_secs(60));
        assert_eq!(w.stale(start), None);
        assert_eq!(w.stale(start + 5_000), None);
        let (name, silent) = w.stale(start + 11_000).unwrap();
        assert_eq!(name, "scrape");
        assert!(silent >= Duration::from_secs(10), "{silent:?}");

        // A clone shares the mark: the loop may hold its own copy.
        let held_by_loop = scrape.clone();
        drop(scrape);
        assert!(w.stale(start + 11_000).is_some());
        held_by_loop.beat();
        assert_eq!(w.stale(now_ms() + 5_000), None);

        // A loop that ended drops its heartbeat: no longer watched.
        drop(held_by_loop);
        assert_eq!(w.stale(now_ms() + 30_000), None);
        assert_eq!(w.stale(now_ms() + 61_000).map(|s| s.0), Some("export"));
        drop(export);
        assert_eq!(w.stale(now_ms() + 61_000), None);
        assert!(w.lock().is_empty());
    }

    #[test]
    fn clones_share_heartbeats() {
        let w = Watchdog::with_interval(Some(Duration::from_secs(2)));
        let c = w.clone();
        let _h = c.heartbeat("exporter", Duration::ZERO);
        assert_eq!(w.stale(now_ms() + 1_000).map(|s| s.0), Some("exporter"));
    }
}
