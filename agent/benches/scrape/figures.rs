//! Each agent's figures over the measured window, from two snapshots of its
//! /proc entry and self metrics (one at each end of the window) and the
//! once-a-second readings in between. The crate docs say what each figure
//! counts; this module says where each agent keeps it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::agents::{Agent, Kind};
use super::procfs::{self, ProcStats};
use super::sink::Count;
use super::{expo, wait_until};

/// Series Prometheus 2.42 appends per scrape besides the target's: `up`,
/// `scrape_duration_seconds`, `scrape_samples_scraped`,
/// `scrape_samples_post_metric_relabeling` and `scrape_series_added`.
const PROMETHEUS_SYNTHETIC_SERIES: f64 = 5.0;

/// An agent's counters at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// From /proc.
    proc: ProcStats,
    /// Its self metrics text.
    metrics: String,
}

impl Snapshot {
    /// Reads `agent` now.
    ///
    /// # Panics
    ///
    /// If its /proc entry is gone (it died between checks), or its self
    /// metrics do not answer within 20 s.
    pub(crate) fn take(agent: &Agent) -> Snapshot {
        let proc = procfs::read(agent.process.pid()).unwrap_or_else(|| {
            panic!(
                "{} is gone:\n{}",
                agent.name(),
                agent.process.stderr_tail(30)
            )
        });
        // The self metrics are the other half of every figure: wait for them
        // rather than compute from an empty page.
        let metrics = wait_until(
            Duration::from_secs(20),
            &format!("{}'s /metrics", agent.name()),
            || Some(agent.metrics()).filter(|m| !m.is_empty()),
        );
        Snapshot { proc, metrics }
    }

    /// The sum of the series `name` with `labels` (0 when absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        expo::sum(&self.metrics, name, labels).unwrap_or(0.0)
    }

    /// The series `name` with `labels`, by the value of their label `key`.
    fn by_label(&self, name: &str, labels: &[(&str, &str)], key: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (series_labels, value) in expo::series(&self.metrics, name, labels) {
            let k = expo::label(&series_labels, key).unwrap_or("").to_string();
            *out.entry(k).or_insert(0.0) += value;
        }
        out
    }
}

/// What was read once a second through the window.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// VmRSS, in bytes.
    pub(crate) rss: Vec<u64>,
    /// Threads.
    pub(crate) threads: Vec<u64>,
}

/// Everything measured for one agent in one scenario.
#[derive(Debug)]
pub(crate) struct Figures {
    /// Which agent.
    pub(crate) kind: Kind,
    /// VmRSS at the start and end of the window, the largest VmRSS seen in it,
    /// and VmHWM at its end; bytes.
    pub(crate) rss_start: u64,
    pub(crate) rss_end: u64,
    pub(crate) rss_window_max: u64,
    pub(crate) hwm: u64,
    /// VmRSS read about once a second through the window, in bytes.
    pub(crate) rss_trace: Vec<u64>,
    /// Threads at the end of the window, and the most seen in it.
    pub(crate) threads_end: u64,
    pub(crate) threads_max: u64,
    /// Apparent size of its disk buffer at the end of the window, in bytes.
    pub(crate) buffer_size: u64,
    /// CPU seconds spent in the window.
    pub(crate) cpu_seconds: f64,
    /// Successful scrapes in the window (over all targets).
    pub(crate) scrapes: f64,
    /// Target samples scraped in the window, without the agent's own series.
    pub(crate) samples: f64,
    /// `write_bytes` increase in the window.
    pub(crate) disk_written: u64,
    /// Bytes accepted in the window (see the crate docs for each agent's meaning).
    pub(crate) accepted_bytes: f64,
    /// What the sink received from this agent in the window.
    pub(crate) sent: Count,
    /// Observations worth a line under the table (errors, mismatches, backlog).
    pub(crate) notes: Vec<String>,
}

impl Figures {
    /// The common part of every agent's figures, from /proc; then the agent's
    /// own counters from its self metrics.
    pub(crate) fn measure(
        agent: &Agent,
        before: &Snapshot,
        after: &Snapshot,
        trace: Trace,
        sent: Count,
        series_per_target: Option<usize>,
    ) -> Figures {
        let mut f = Figures {
            kind: agent.kind,
            rss_start: before.proc.rss,
            rss_end: after.proc.rss,
            rss_window_max: trace.rss.iter().copied().fold(after.proc.rss, u64::max),
            hwm: after.proc.hwm,
            rss_trace: trace.rss,
            threads_end: after.proc.threads,
            threads_max: trace
                .threads
                .iter()
                .copied()
                .fold(after.proc.threads.max(before.proc.threads), u64::max),
            buffer_size: super::dir_size(&agent.data_dir),
            cpu_seconds: after.proc.cpu_seconds - before.proc.cpu_seconds,
            scrapes: 0.0,
            samples: 0.0,
            disk_written: after
                .proc
                .write_bytes
                .saturating_sub(before.proc.write_bytes),
            accepted_bytes: 0.0,
            sent,
            notes: Vec::new(),
        };
        match agent.kind {
            Kind::Tern => f.tern(before, after),
            Kind::Prometheus => f.prometheus(before, after, series_per_target),
            Kind::Vmagent => f.vmagent(before, after),
        }
        f.log_notes(agent);
        f
    }

    /// Target samples per successful scrape.
    pub(crate) fn samples_per_scrape(&self) -> f64 {
        if self.scrapes > 0.0 {
            self.samples / self.scrapes
        } else {
            0.0
        }
    }

    /// CPU microseconds per scraped sample.
    pub(crate) fn cpu_us_per_sample(&self) -> Option<f64> {
        (self.samples > 0.0).then(|| self.cpu_seconds * 1e6 / self.samples)
    }

    /// Disk bytes written per byte accepted.
    pub(crate) fn disk_per_accepted(&self) -> Option<f64> {
        (self.accepted_bytes > 0.0).then(|| self.disk_written as f64 / self.accepted_bytes)
    }

    /// Disk bytes written per scraped sample.
    pub(crate) fn disk_per_sample(&self) -> Option<f64> {
        (self.samples > 0.0).then(|| self.disk_written as f64 / self.samples)
    }

    /// tern: for each target, the increase of `tern_scrapes_total{result="ok"}`
    /// times its `tern_scrape_samples`; accepted bytes from
    /// `tern_queue_pushed_bytes_total`.
    fn tern(&mut self, before: &Snapshot, after: &Snapshot) {
        let delta = |name: &str, labels: &[(&str, &str)]| {
            after.value(name, labels) - before.value(name, labels)
        };
        let job = ("job", "bench");
        let ok_before = before.by_label("tern_scrapes_total", &[job, ("result", "ok")], "instance");
        let ok_after = after.by_label("tern_scrapes_total", &[job, ("result", "ok")], "instance");
        let per_scrape = after.by_label("tern_scrape_samples", &[job], "instance");
        for (instance, ok) in &ok_after {
            let scrapes = ok - ok_before.get(instance).copied().unwrap_or(0.0);
            self.scrapes += scrapes;
            self.samples += scrapes * per_scrape.get(instance).copied().unwrap_or(0.0);
        }
        self.accepted_bytes = delta("tern_queue_pushed_bytes_total", &[("signal", "metrics")]);
        let failed = delta("tern_scrapes_total", &[job]) - self.scrapes;
        if failed > 0.0 {
            self.notes
                .push(format!("{failed} failed scrapes in the window"));
        }
        let pushed = delta("tern_queue_pushed_points_total", &[("signal", "metrics")]);
        let exported = delta("tern_export_sent_points_total", &[("signal", "metrics")]);
        let dropped = delta("tern_dropped_points_total", &[]);
        let backlog = after.value("tern_queue_batches", &[("signal", "metrics")]);
        self.notes.push(format!(
            "in the window it queued {pushed} points and the sink acknowledged {exported}; {backlog} batches queued at the end"
        ));
        if dropped > 0.0 {
            self.notes.push(format!(
                "{dropped} points dropped in the window (tern_dropped_points_total)"
            ));
        }
        if self.scrapes > 0.0 && self.sent.requests == 0 {
            self.notes
                .push("nothing reached the sink in the window".into());
        }
    }

    /// Prometheus: samples from `prometheus_remote_storage_samples_in_total`
    /// less its own series. Scrapes, when every target serves
    /// `series_per_target`, are what it appended divided by that plus its own
    /// series (a commit appends them all at once, so this counts the scrapes
    /// whose samples arrived in the window); else the increase of
    /// `prometheus_target_interval_length_seconds_count` (all intervals: every
    /// target of the bench has the same), which counts scrapes as they start,
    /// from each target's second.
    fn prometheus(
        &mut self,
        before: &Snapshot,
        after: &Snapshot,
        series_per_target: Option<usize>,
    ) {
        let delta = |name: &str, labels: &[(&str, &str)]| {
            after.value(name, labels) - before.value(name, labels)
        };
        let appended = delta("prometheus_remote_storage_samples_in_total", &[]);
        self.scrapes = match series_per_target {
            Some(series) => (appended / (series as f64 + PROMETHEUS_SYNTHETIC_SERIES)).round(),
            None => delta("prometheus_target_interval_length_seconds_count", &[]),
        };
        self.samples = (appended - self.scrapes * PROMETHEUS_SYNTHETIC_SERIES).max(0.0);
        self.accepted_bytes = self.sent.bytes as f64;
        let pending = after.value("prometheus_remote_storage_samples_pending", &[]);
        let failed = delta("prometheus_remote_storage_samples_failed_total", &[]);
        let scrape_failed = delta(
            "prometheus_target_scrapes_exceeded_body_size_limit_total",
            &[],
        ) + delta("prometheus_target_scrapes_sample_out_of_order_total", &[]);
        self.notes.push(format!(
            "{pending} samples pending for remote write at the end"
        ));
        if failed > 0.0 {
            self.notes
                .push(format!("{failed} samples failed to send in the window"));
        }
        if scrape_failed > 0.0 {
            self.notes.push(format!(
                "{scrape_failed} scrapes over the body size limit or out of order in the window"
            ));
        }
    }

    /// vmagent: samples from `vm_promscrape_scraped_samples_sum` (a histogram
    /// of the samples each scrape parsed from its target, its own `up`-style
    /// series not included; a failed scrape adds 0), scrapes from its `_count`
    /// less `vm_promscrape_scrapes_failed_total`; accepted bytes from the
    /// sink's count of its remote-write bodies.
    fn vmagent(&mut self, before: &Snapshot, after: &Snapshot) {
        let delta = |name: &str, labels: &[(&str, &str)]| {
            after.value(name, labels) - before.value(name, labels)
        };
        let failed = delta("vm_promscrape_scrapes_failed_total", &[]);
        self.scrapes = delta("vm_promscrape_scraped_samples_count", &[]) - failed;
        self.samples = delta("vm_promscrape_scraped_samples_sum", &[]);
        self.accepted_bytes = self.sent.bytes as f64;
        let pending = after.value("vmagent_remotewrite_pending_data_bytes", &[]);
        let errors = delta("vmagent_remotewrite_errors_total", &[]);
        let dropped = delta("vmagent_remotewrite_packets_dropped_total", &[]);
        self.notes.push(format!(
            "{pending} bytes pending for remote write at the end"
        ));
        if failed > 0.0 {
            self.notes
                .push(format!("{failed} failed scrapes in the window"));
        }
        if errors > 0.0 || dropped > 0.0 {
            self.notes.push(format!(
                "{errors} remote-write errors and {dropped} blocks dropped in the window"
            ));
        }
    }

    /// Adds a note with the number of warning and error lines in the agent's
    /// stderr, and the first few of them.
    fn log_notes(&mut self, agent: &Agent) {
        let is_problem = |l: &str| match agent.kind {
            Kind::Tern => l.starts_with("WARN") || l.starts_with("ERROR"),
            Kind::Prometheus => l.contains("level=warn") || l.contains("level=error"),
            // vmagent runs with -loggerLevel=WARN: every line is one.
            Kind::Vmagent => ["\twarn\t", "\terror\t", "\tfatal\t", "\tpanic\t"]
                .iter()
                .any(|level| l.contains(level)),
        };
        let text = agent.process.stderr_text();
        let lines: Vec<&str> = text.lines().filter(|l| is_problem(l)).collect();
        if lines.is_empty() {
            return;
        }
        let mut note = format!(
            "{} warning or error lines in its log over the whole run, first:",
            lines.len()
        );
        for l in lines.iter().take(3) {
            let _ = write!(
                note,
                " `{}`",
                l.chars().take(200).collect::<String>().replace('`', "'")
            );
        }
        self.notes.push(note);
    }
}
