//! Self telemetry: tern's own metrics, its log and systemd notification
//! (READY, WATCHDOG, STOPPING). The HTTP endpoints that serve the metrics are
//! wired in `agent` on the shared `http::server`.
//!
//! Every other part reports into it; it depends only on `lifecycle` and on
//! the queue, whose drops it counts ([`count_drops`]).
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
//! errors from one target are rate-limited by the caller
//! ([`RateLimit`](crate::lifecycle::RateLimit)). Secrets
//! and auth headers are never logged, at any level.

pub mod metrics;
pub mod notify;

use std::io::Write;

pub use metrics::Metrics;

use crate::queue::Dropped;

/// A logger that writes one line per record to stderr, which systemd's journal
/// stamps with time and unit; so no timestamp of our own.
#[derive(Debug)]
struct StderrLogger {
    level: log::LevelFilter,
    /// stderr is the journal's stream: each line starts with its syslog
    /// priority (`<4>`), which journald takes off and stores as PRIORITY, so
    /// `journalctl -p warning -u tern` finds tern's warnings.
    journal: bool,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("tern")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // Nothing useful can be done if stderr is gone.
            let _ = write_line(&mut std::io::stderr().lock(), record, self.journal);
        }
    }

    fn flush(&self) {}
}

/// Writes one log line: the level and the message, after the syslog
/// priority when writing to the journal.
fn write_line(
    out: &mut impl Write,
    record: &log::Record<'_>,
    journal: bool,
) -> std::io::Result<()> {
    let level = record.level();
    if journal {
        let priority = match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        write!(out, "<{priority}>")?;
    }
    writeln!(out, "{level:<5} {}", record.args())
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM` to
/// that stream's device and inode (systemd.exec(5)), and a child whose stderr
/// was redirected keeps the variable, hence the comparison.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    // dev_t and ino_t are 64 bits on every Linux target (rustix's stat64).
    dev.parse().ok() == Some(stat.st_dev) && ino.parse().ok() == Some(stat.st_ino)
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
        journal: stderr_is_journal(),
    }));
    log::set_max_level(level);
}

/// Counts every batch in `dropped` (from the queue's size policy, its
/// recovery, or a delivery that gave up) in the drop counters. A drop whose
/// lane is unknown (a damaged record whose key did not decode) is counted
/// under signal and destination `unknown`.
pub fn count_drops(metrics: &Metrics, dropped: &[Dropped]) {
    for d in dropped {
        let (signal, destination) = d.lane.as_ref().map_or(("unknown", "unknown"), |l| {
            (l.signal().as_str(), l.destination())
        });
        metrics.count_drop(signal, destination, d.reason.as_str(), d.items);
    }
}

/// Sets `process_resident_memory_bytes` and `process_cpu_seconds_total` from
/// /proc/self, the names every Prometheus client uses, so existing dashboards work.
pub fn update_process_gauges(metrics: &Metrics) {
    let rss_kib = crate::lifecycle::process_status("VmRSS")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok());
    if let Some(kib) = rss_kib {
        metrics.set("process_resident_memory_bytes", &[], kib * 1024.0);
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

#[cfg(test)]
mod tests {
    use super::write_line;

    /// The line `write_line` writes, without its newline.
    fn line(record: &log::Record<'_>, journal: bool) -> String {
        let mut out = Vec::new();
        write_line(&mut out, record, journal).unwrap();
        String::from_utf8(out)
            .unwrap()
            .trim_end_matches('\n')
            .to_string()
    }

    #[test]
    fn journal_lines_carry_the_syslog_priority() {
        let args = format_args!("Gateway refused key=v");
        let record = |level| {
            log::Record::builder()
                .level(level)
                .target("tern")
                .args(args)
                .build()
        };
        assert_eq!(
            line(&record(log::Level::Warn), true),
            "<4>WARN  Gateway refused key=v"
        );
        assert_eq!(
            line(&record(log::Level::Error), true),
            "<3>ERROR Gateway refused key=v"
        );
        assert_eq!(
            line(&record(log::Level::Info), true),
            "<6>INFO  Gateway refused key=v"
        );
        assert_eq!(
            line(&record(log::Level::Trace), true),
            "<7>TRACE Gateway refused key=v"
        );
        assert_eq!(
            line(&record(log::Level::Warn), false),
            "WARN  Gateway refused key=v"
        );
    }
}
