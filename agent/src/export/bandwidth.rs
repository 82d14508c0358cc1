//! `[export] max_bandwidth`: a byte budget for a metered uplink. One token
//! bucket over the bytes of the requests sent (after compression), shared by
//! every gateway's sender, with a burst of one request: a request goes at
//! once when the budget is paid up, and the next waits until the bytes of
//! the ones before it have been paid for at the configured rate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::gateway::Stop;

/// The shared budget. A rate of 0 is no limit.
#[derive(Debug)]
pub(crate) struct Bandwidth {
    /// Bytes a second; 0: unlimited.
    rate: u64,
    /// When the requests sent so far are paid for: the next one waits until
    /// then. Never earlier than now by more than nothing: an idle uplink
    /// saves no credit beyond the one request.
    paid_at: Mutex<Instant>,
}

impl Bandwidth {
    /// A budget of `rate` bytes a second (0: unlimited).
    pub(crate) fn new(rate: u64) -> Bandwidth {
        Bandwidth {
            rate,
            paid_at: Mutex::new(Instant::now()),
        }
    }

    /// Waits until a request of `bytes` fits the budget and charges it.
    /// Returns the time waited, or `None` when `stop` fired meanwhile (the
    /// request is then not sent).
    pub(crate) fn take(&self, bytes: usize, stop: &Stop) -> Option<Duration> {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() && stop.sleep(wait) {
            return None;
        }
        Some(wait)
    }

    /// Gives back the charge of a request of `bytes` that never left (its
    /// connection was refused), so a gateway that is down costs no budget.
    pub(crate) fn refund(&self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        let mut paid_at = self.paid_at.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        *paid_at = paid_at.checked_sub(cost).unwrap_or(now).max(now);
    }

    /// Charges `bytes` at `now`: returns how long to wait before sending.
    /// Charged before the wait, so senders of several gateways queue up in
    /// turn instead of all going when the budget frees.
    fn reserve(&self, bytes: usize, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let mut paid_at = self.paid_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*paid_at).max(now);
        *paid_at = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let b = Bandwidth::new(0);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.reserve(1 << 20, now), Duration::ZERO);
        }
    }

    #[test]
    fn one_request_bursts_then_the_rate_holds() {
        let b = Bandwidth::new(1000);
        let t0 = Instant::now();
        // The first goes at once; each next waits for the bytes before it.
        assert_eq!(b.reserve(500, t0), Duration::ZERO);
        assert_eq!(b.reserve(2000, t0), Duration::from_millis(500));
        assert_eq!(b.reserve(10, t0), Duration::from_millis(2500));
        // Later, part of that is paid.
        assert_eq!(
            b.reserve(10, t0 + Duration::from_millis(2000)),
            Duration::from_millis(510)
        );
    }

    #[test]
    fn a_refused_request_costs_nothing() {
        let b = Bandwidth::new(1000);
        let t0 = Instant::now();
        assert_eq!(b.reserve(5000, t0), Duration::ZERO);
        b.refund(5000);
        assert!(b.reserve(10, Instant::now()) < Duration::from_millis(100));
    }

    #[test]
    fn idle_time_saves_no_credit_beyond_one_request() {
        let b = Bandwidth::new(1000);
        let t0 = Instant::now();
        assert_eq!(b.reserve(1000, t0), Duration::ZERO);
        // An hour idle: the next goes at once, the one after waits its due.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.reserve(4000, later), Duration::ZERO);
        assert_eq!(b.reserve(1, later), Duration::from_secs(4));
    }
}
