//! Exponential backoff with jitter, with the OpenTelemetry Collector's settings
//! (`initial_interval`, `max_interval`, `multiplier`, `randomization_factor`,
//! `max_elapsed_time`), so that configurations carry over.
//!
//! See: <https://github.com/open-telemetry/opentelemetry-collector/blob/main/config/configretry/backoff.go>

use std::time::Duration;

use crate::config::RetryConfig;

/// The longest Retry-After tern honours; a gateway asking for more is probably
/// misconfigured, and the batch would sit idle for longer than most outages.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The shortest wait tern makes before trying again, whatever the settings
/// (`initial_interval = "0s"`, a jitter near 1) or the gateway
/// (`Retry-After: 0`) say: a send that fails at once must never turn into a
/// loop of requests without a pause.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(100);

/// The backoff state of one batch: how long to wait before the next attempt.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: RetryConfig,
    /// The interval before jitter. Invariant: within initial..=max interval.
    interval: Duration,
    /// Time waited so far, for `max_elapsed_time`.
    elapsed: Duration,
}

impl Backoff {
    /// A fresh backoff for a new batch.
    pub(crate) fn new(config: RetryConfig) -> Backoff {
        Backoff {
            config,
            // From MIN_DELAY at least, so that a zero interval still grows.
            interval: config
                .initial_interval
                .max(MIN_DELAY)
                .min(config.max_interval.max(MIN_DELAY)),
            elapsed: Duration::ZERO,
        }
    }

    /// The wait before the next attempt, or `None` when `max_elapsed_time` is
    /// set and would be passed. A gateway's Retry-After replaces the computed
    /// wait (capped at [`MAX_RETRY_AFTER`]), as the Collector does. Never less
    /// than [`MIN_DELAY`].
    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let delay = match retry_after {
            Some(d) => d.min(MAX_RETRY_AFTER),
            None => {
                let f = self.config.randomization_factor;
                let base = self.interval.as_secs_f64();
                // Uniform in [base * (1 - f), base * (1 + f)].
                let jittered = base * (1.0 - f + 2.0 * f * fastrand::f64());
                Duration::try_from_secs_f64(jittered).unwrap_or(self.config.max_interval)
            }
        }
        .max(MIN_DELAY);
        let grown = self.interval.as_secs_f64() * self.config.multiplier;
        self.interval = Duration::try_from_secs_f64(grown)
            .unwrap_or(self.config.max_interval)
            .min(self.config.max_interval)
            .max(MIN_DELAY);
        let max = self.config.max_elapsed_time;
        if !max.is_zero() && self.elapsed + delay > max {
            return None;
        }
        self.elapsed += delay;
        Some(delay)
    }
}

/// Parses a Retry-After header: delay-seconds, or an HTTP date relative to now.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_to_unix(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// Parses the IMF-fixdate form, "Sun, 06 Nov 1994 08:49:37 GMT", the only form
/// RFC 9110 lets servers send.
fn httpdate_to_unix(s: &str) -> Option<u64> {
    let mut parts = s.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT"
        || !(1..=31).contains(&day)
        || year < 1970
        || h > 23
        || m > 59
        || sec > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), all in u64 since year >= 1970.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            multiplier: 1.5,
            randomization_factor: 0.5,
            max_elapsed_time: Duration::ZERO,
        }
    }

    #[test]
    fn grows_by_the_multiplier_within_jitter_and_caps() {
        let mut b = Backoff::new(config());
        let expected_bases = [5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0];
        for base in expected_bases {
            let d = b.next_delay(None).unwrap().as_secs_f64();
            assert!(
                d >= base * 0.5 - 1e-9 && d <= base * 1.5 + 1e-9,
                "{d} not around {base}"
            );
        }
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let mut b = Backoff::new(config());
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(9999))),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn max_elapsed_time_gives_up() {
        let mut c = config();
        c.max_elapsed_time = Duration::from_secs(10);
        c.randomization_factor = 0.0;
        let mut b = Backoff::new(c);
        assert_eq!(b.next_delay(None), Some(Duration::from_secs(5)));
        assert_eq!(b.next_delay(None), None, "5 + 7.5 passes 10");
    }

    #[test]
    fn never_waits_less_than_the_floor() {
        let mut c = config();
        c.initial_interval = Duration::ZERO;
        c.randomization_factor = 1.0;
        let mut b = Backoff::new(c);
        for _ in 0..50 {
            assert!(b.next_delay(None).unwrap() >= MIN_DELAY);
        }
        assert_eq!(b.next_delay(Some(Duration::ZERO)), Some(MIN_DELAY));
        // A zero interval grows like any other, from the floor.
        let mut c = config();
        c.initial_interval = Duration::ZERO;
        c.randomization_factor = 0.0;
        let mut b = Backoff::new(c);
        assert_eq!(b.next_delay(None), Some(MIN_DELAY));
        assert_eq!(b.next_delay(None), Some(MIN_DELAY.mul_f64(1.5)));
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("Sun, 99 Nov 1994 08:49:37 GMT"), None);
    }
}
