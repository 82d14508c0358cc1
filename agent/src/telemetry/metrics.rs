//! tern's self metrics, rendered in the Prometheus text format on `/metrics`.
//!
//! Names follow `tern_<noun>_<unit>[_total]` with plural base units. Everything is
//! counted per batch or per scrape, never per sample, so one mutex is cheap enough.
//! Every drop is counted in `tern_dropped_batches_total` with a reason from a
//! fixed set; a retry is not a drop.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Whether a series only goes up, or is set to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// Every metric tern exposes: name, kind and help. Keeping them in one table
/// makes the set reviewable and keeps HELP and TYPE right.
const DESCRIPTORS: &[(&str, Kind, &str)] = &[
    (
        "tern_build_info",
        Kind::Gauge,
        "Always 1; labels say which tern runs.",
    ),
    (
        "tern_ready",
        Kind::Gauge,
        "1 once the queue is open and the sources run.",
    ),
    (
        "tern_queue_batches",
        Kind::Gauge,
        "Batches waiting in the disk queue.",
    ),
    (
        "tern_queue_bytes",
        Kind::Gauge,
        "Bytes of batches waiting in the disk queue (compressed).",
    ),
    (
        "tern_queue_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest batch in the disk queue.",
    ),
    (
        "tern_queue_memory_bytes",
        Kind::Gauge,
        "Bytes of queued batches held in memory, not yet on disk (mode = memory_first).",
    ),
    (
        "tern_queue_written_bytes_total",
        Kind::Counter,
        "Batch bytes written to the disk queue's files: every batch in disk mode, only those spilled from memory in memory_first.",
    ),
    (
        "tern_queue_pushed_batches_total",
        Kind::Counter,
        "Batches accepted into the disk queue.",
    ),
    (
        "tern_queue_pushed_points_total",
        Kind::Counter,
        "Points or records accepted into the disk queue.",
    ),
    (
        "tern_queue_pushed_bytes_total",
        Kind::Counter,
        "Compressed bytes accepted into the disk queue.",
    ),
    (
        "tern_queue_pushed_uncompressed_bytes_total",
        Kind::Counter,
        "Bytes of the accepted batches before compression (encoded OTLP).",
    ),
    (
        "tern_queue_compression_ratio",
        Kind::Gauge,
        "Bytes before compression per byte after, over the batches accepted since start.",
    ),
    (
        "tern_dropped_batches_total",
        Kind::Counter,
        "Batches dropped, by reason: queue_full, disk_full, permanent, expired, corrupt, too_large.",
    ),
    (
        "tern_dropped_points_total",
        Kind::Counter,
        "Points or records dropped, by reason.",
    ),
    (
        "tern_export_sent_batches_total",
        Kind::Counter,
        "Batches a gateway acknowledged with 2xx.",
    ),
    (
        "tern_export_sent_points_total",
        Kind::Counter,
        "Points or records a gateway acknowledged with 2xx.",
    ),
    (
        "tern_export_sent_bytes_total",
        Kind::Counter,
        "Request body bytes a gateway acknowledged.",
    ),
    (
        "tern_export_failed_requests_total",
        Kind::Counter,
        "Requests to a gateway that failed, by reason.",
    ),
    (
        "tern_export_retried_batches_total",
        Kind::Counter,
        "Times a batch was scheduled again after a retryable failure.",
    ),
    (
        "tern_export_bandwidth_wait_seconds_total",
        Kind::Counter,
        "Time senders waited for export.max_bandwidth before a request.",
    ),
    (
        "tern_export_coalesced_batches_total",
        Kind::Counter,
        "Batches sent together with others in one request (export.max_request_size).",
    ),
    (
        "tern_export_probes_total",
        Kind::Counter,
        "TCP connects to an unreachable gateway during a backoff, by result (up, down).",
    ),
    (
        "tern_export_rejected_points_total",
        Kind::Counter,
        "Points or records a gateway rejected in an OTLP partial_success.",
    ),
    (
        "tern_export_redirects_total",
        Kind::Counter,
        "Redirects (301, 302, 307, 308) a gateway answered and the exporter followed, by status.",
    ),
    (
        "tern_export_split_requests_total",
        Kind::Counter,
        "Requests a gateway refused as too large (413) and the exporter sent again in halves.",
    ),
    (
        "tern_export_ack_failures_total",
        Kind::Counter,
        "Times the queue could not delete a batch a gateway took (or one dropped); retried without sending again.",
    ),
    (
        "tern_export_request_duration_seconds_total",
        Kind::Counter,
        "Time spent in requests to a gateway.",
    ),
    (
        "tern_export_queued_batches",
        Kind::Gauge,
        "Batches waiting in the disk queue for each gateway.",
    ),
    (
        "tern_export_queued_bytes",
        Kind::Gauge,
        "Bytes of batches waiting in the disk queue for each gateway (compressed).",
    ),
    (
        "tern_export_rerouted_batches_total",
        Kind::Counter,
        "Queued batches routed again to the current gateways, by the gateway they left and why (left, failover).",
    ),
    (
        "tern_export_rerouted_points_total",
        Kind::Counter,
        "Points, records or spans in re-routed batches.",
    ),
    (
        "tern_export_gateways",
        Kind::Gauge,
        "Gateways in the resolved set.",
    ),
    (
        "tern_export_gateway_up",
        Kind::Gauge,
        "0 while a gateway is failed over (its keys go to the next gateway), else 1.",
    ),
    (
        "tern_export_gateway_changes_total",
        Kind::Counter,
        "Changes of the gateway set (reload or DNS answer).",
    ),
    (
        "tern_export_resolve_failures_total",
        Kind::Counter,
        "DNS resolutions of the gateways that failed or came back empty; the set was kept.",
    ),
    (
        "tern_scrape_up",
        Kind::Gauge,
        "1 if the last scrape of the target succeeded, else 0.",
    ),
    (
        "tern_scrape_duration_seconds",
        Kind::Gauge,
        "Duration of the last scrape of the target.",
    ),
    (
        "tern_scrape_samples",
        Kind::Gauge,
        "Samples in the last scrape of the target.",
    ),
    (
        "tern_scrapes_total",
        Kind::Counter,
        "Scrapes of the target, by result.",
    ),
    (
        "tern_journald_entries_total",
        Kind::Counter,
        "Journal entries read from journalctl (filtered and skipped ones included).",
    ),
    (
        "tern_journald_skipped_entries_total",
        Kind::Counter,
        "Journal entries not sent, by reason: excluded (exclude_units), too_large (max_entry_size), malformed.",
    ),
    (
        "tern_journald_truncated_fields_total",
        Kind::Counter,
        "Journal field values cut to max_field_size.",
    ),
    (
        "tern_journald_restarts_total",
        Kind::Counter,
        "journalctl restarts, by reason: spawn_failed, exited, hang.",
    ),
    (
        "tern_journald_gaps_total",
        Kind::Counter,
        "Times the saved journal cursor was gone (journal vacuumed past it); reading went on from the oldest entry left.",
    ),
    (
        "tern_journald_lost_entries_total",
        Kind::Counter,
        "Journal entries known lost in those gaps, from sequence numbers.",
    ),
    (
        "tern_file_lines_total",
        Kind::Counter,
        "Lines read from followed files ([[file]]), each a log record.",
    ),
    (
        "tern_file_cut_lines_total",
        Kind::Counter,
        "Lines longer than max_line_size: cut to it, the rest skipped.",
    ),
    (
        "tern_file_truncations_total",
        Kind::Counter,
        "Followed files that shrank or were rewritten from their start (copytruncate): read again from the start.",
    ),
    (
        "tern_file_rotations_total",
        Kind::Counter,
        "Followed files renamed or deleted away, read to their end and closed.",
    ),
    (
        "tern_file_errors_total",
        Kind::Counter,
        "Followed files that could not be opened or read.",
    ),
    (
        "tern_file_followed",
        Kind::Gauge,
        "Files followed now, rotated ones still being read included.",
    ),
    (
        "tern_syslog_messages_total",
        Kind::Counter,
        "Syslog messages received, by transport (udp, tcp, unix); malformed ones included, too large ones not.",
    ),
    (
        "tern_syslog_malformed_messages_total",
        Kind::Counter,
        "Syslog messages whose header did not parse, by transport: forwarded whole as the body, with priority user.notice when it had none.",
    ),
    (
        "tern_syslog_dropped_messages_total",
        Kind::Counter,
        "Syslog messages not forwarded, by transport and reason: too_large (max_message_size), bad_frame (a TCP octet count that is not a number, or a partial message at the end of a connection).",
    ),
    (
        "tern_syslog_connections_shed_total",
        Kind::Counter,
        "TCP connections closed because max_connections were held: the one idle longest goes.",
    ),
    (
        "tern_receiver_requests_total",
        Kind::Counter,
        "OTLP/HTTP requests the receiver answered, by signal and status code.",
    ),
    (
        "tern_receiver_request_bytes_total",
        Kind::Counter,
        "Request body bytes the OTLP receiver read, as sent (compressed or not), by signal.",
    ),
    (
        "tern_receiver_items_total",
        Kind::Counter,
        "Spans, log records or data points the OTLP receiver accepted into the queue, by signal.",
    ),
    (
        "tern_receiver_refused_items_total",
        Kind::Counter,
        "Items the OTLP receiver answered 503 for (the client keeps them and may retry), by reason: queue_full, queue_error.",
    ),
    (
        "tern_receiver_connections_shed_total",
        Kind::Counter,
        "Connections to the OTLP receiver closed to admit a new one when every slot was taken, by reason: idle (no request in progress), slow_head (its request head was the oldest still arriving).",
    ),
    (
        "tern_agent_connections_shed_total",
        Kind::Counter,
        "Connections to [agent] listen (self metrics, health) closed to admit a new one when every slot was taken, by reason: idle, slow_head.",
    ),
    (
        "tern_config_reloads_total",
        Kind::Counter,
        "Config reloads, by result.",
    ),
    (
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes.",
    ),
    (
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time spent in seconds.",
    ),
];

/// One series: the metric name and its rendered label set, `{a="b",c="d"}`.
type SeriesKey = (&'static str, String);

/// The self-metrics registry. Shared by reference (`Arc<Metrics>`) among all parts.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<SeriesKey, f64>>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds `v` to a counter.
    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], v: f64) {
        debug_assert!(
            kind_of(name) == Some(Kind::Counter),
            "{name} is not a counter"
        );
        let key = (name, render_labels(labels));
        *self.lock().entry(key).or_insert(0.0) += v;
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }

    /// Counts one dropped batch of `points` items in `tern_dropped_batches_total`
    /// and `tern_dropped_points_total`, labelled with its lane and `reason`.
    pub fn count_drop(&self, signal: &str, destination: &str, reason: &str, points: u64) {
        let labels = [
            ("signal", signal),
            ("destination", destination),
            ("reason", reason),
        ];
        self.inc("tern_dropped_batches_total", &labels);
        self.add("tern_dropped_points_total", &labels, points as f64);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, labels: &[(&str, &str)], v: f64) {
        debug_assert!(kind_of(name).is_some(), "{name} has no descriptor");
        self.lock().insert((name, render_labels(labels)), v);
    }

    /// Removes every series of `name` whose labels include `label=value`; used
    /// when a target or gateway goes away so its gauges do not linger.
    pub fn remove_matching(&self, name: &'static str, label: &str, value: &str) {
        let needle = render_labels(&[(label, value)]);
        let needle = needle.trim_start_matches('{').trim_end_matches('}');
        self.lock()
            .retain(|(n, l), _| *n != name || !l.contains(needle));
    }

    /// The current value of one series, for tests and the CLI.
    pub fn get(&self, name: &'static str, labels: &[(&str, &str)]) -> Option<f64> {
        self.lock().get(&(name, render_labels(labels))).copied()
    }

    /// Renders every series in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let series = self.lock();
        for (name, kind, help) in DESCRIPTORS {
            let mut first = true;
            let of_name = series
                .range((*name, String::new())..)
                .take_while(|((n, _), _)| n == name);
            for ((_, labels), v) in of_name {
                if first {
                    let t = if *kind == Kind::Counter {
                        "counter"
                    } else {
                        "gauge"
                    };
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {t}");
                    first = false;
                }
                let _ = writeln!(out, "{name}{labels} {}", format_value(*v));
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SeriesKey, f64>> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        match self.series.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

fn kind_of(name: &str) -> Option<Kind> {
    DESCRIPTORS.iter().find(|d| d.0 == name).map(|d| d.1)
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_escaped_labels() {
        let m = Metrics::new();
        m.inc("tern_scrapes_total", &[("job", "node"), ("result", "ok")]);
        m.add(
            "tern_scrapes_total",
            &[("job", "node"), ("result", "ok")],
            2.0,
        );
        m.set("tern_scrape_up", &[("instance", "a\"b")], 1.0);
        let text = m.render();
        assert!(text.contains("# TYPE tern_scrapes_total counter\ntern_scrapes_total{job=\"node\",result=\"ok\"} 3\n"), "{text}");
        assert!(
            text.contains("tern_scrape_up{instance=\"a\\\"b\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("tern_queue_bytes"), "{text}");
    }

    #[test]
    fn remove_matching_drops_only_that_target() {
        let m = Metrics::new();
        m.set("tern_scrape_up", &[("instance", "a:1")], 1.0);
        m.set("tern_scrape_up", &[("instance", "b:1")], 1.0);
        m.remove_matching("tern_scrape_up", "instance", "a:1");
        assert_eq!(m.get("tern_scrape_up", &[("instance", "a:1")]), None);
        assert_eq!(m.get("tern_scrape_up", &[("instance", "b:1")]), Some(1.0));
    }
}
