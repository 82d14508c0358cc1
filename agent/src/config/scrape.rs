//! The `[[scrape]]` jobs: Prometheus targets, with Prometheus's own names
//! and defaults so that scrape configs carry over.

use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

use crate::relabel::{self, Labels, Rule, RuleSpec};

use super::locate::Cx;
use super::raw::{RawRule, RawScrape};
use super::values::format_duration;
use super::{ConfigError, TlsConfig};

/// `interval`: Prometheus's default `scrape_interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// The shortest `interval`: below it a scrape loop would mostly wait on its
/// own timeouts, and a typo ("15ms" for "15s") would hammer the target.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// `timeout`, capped by the interval: Prometheus's default `scrape_timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `metrics_path`: where exporters serve, as Prometheus assumes.
const DEFAULT_METRICS_PATH: &str = "/metrics";

/// `body_size_limit`: 16 MiB, about 100k series of exposition text; a larger
/// body is usually a misconfigured exporter. A scrape parses its body as it
/// arrives and never holds it whole, so a larger limit costs memory only for
/// the series themselves (their staleness identities and compressed batches).
const DEFAULT_BODY_SIZE_LIMIT: u64 = 16 << 20;

/// One `[[scrape]]` job: a set of Prometheus targets scraped on one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    /// The job name; becomes `service.name` on each target's resource.
    pub job: String,
    /// The targets, each a full URL built from `scheme`, the `host:port` given
    /// and `metrics_path` (or the full URL the user wrote).
    pub targets: Vec<ScrapeTarget>,
    /// Time between scrapes of one target. Defaults to 15 s.
    pub interval: Duration,
    /// Time one scrape may take, at most `interval`. Defaults to 10 s (or the
    /// interval when that is shorter).
    pub timeout: Duration,
    /// Largest body accepted, after decompression. Defaults to 16 MiB: about
    /// 150k series of node_exporter-like text, and bounded memory on a 256 MB box.
    pub body_size_limit: u64,
    /// Extra attributes for the resources of this job's targets.
    pub labels: BTreeMap<String, String>,
    /// TLS settings for https targets (`[scrape.tls]`, same keys as `[export.tls]`).
    pub tls: TlsConfig,
    /// `metric_relabel_configs`: run over every sample's labels (its name
    /// as `__name__`, the target's `job`, `instance` and labels included)
    /// before it is converted.
    pub metric_relabel_configs: Vec<Rule>,
    /// Targets the job's `relabel_configs` dropped (not scraped).
    pub dropped_targets: usize,
    /// `honor_labels`: when a scraped label has the name of a target label
    /// (`job`, `instance`, `labels`), keep the scraped value; otherwise
    /// (the default) the scraped one is renamed `exported_<name>`.
    pub honor_labels: bool,
    /// `honor_timestamps`: use the timestamps the target exposes (the
    /// default), or the scrape time for every sample.
    pub honor_timestamps: bool,
    /// Prometheus's per-scrape limits; 0 is no limit. A scrape over one
    /// fails as a whole.
    pub limits: ScrapeLimits,
}

/// `sample_limit`, `label_limit`, `label_name_length_limit` and
/// `label_value_length_limit`, checked after `metric_relabel_configs` as
/// Prometheus checks them; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrapeLimits {
    /// Most samples a scrape may keep after relabeling.
    pub sample_limit: usize,
    /// Most labels on one series, its name, `job` and `instance` included.
    pub label_limit: usize,
    /// Longest label name.
    pub label_name_length_limit: usize,
    /// Longest label value (the metric name included).
    pub label_value_length_limit: usize,
}

impl ScrapeLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        *self != ScrapeLimits::default()
    }
}

/// One scrape target, after the job's `relabel_configs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// The URL scraped, for example `http://127.0.0.1:9100/metrics`.
    pub url: String,
    /// The `instance` label: `host:port` as written, like Prometheus
    /// (or what `relabel_configs` made of it).
    pub instance: String,
    /// The `job` label: the job name, unless `relabel_configs` changed it.
    pub job: String,
    /// The target's other labels: the job's `labels` and those
    /// `relabel_configs` added; they go on the target's resource.
    pub labels: BTreeMap<String, String>,
}

impl Cx<'_> {
    /// The `[[scrape]]` jobs.
    pub(super) fn scrape(&self, raw: Vec<RawScrape>) -> Result<Vec<ScrapeConfig>, ConfigError> {
        let mut scrape = Vec::new();
        let mut jobs = std::collections::BTreeSet::new();
        for (i, job) in raw.into_iter().enumerate() {
            let key = |field: &str| format!("scrape[{i}].{field}");
            if job.job.get_ref().is_empty() {
                return Err(self.err(&job.job, &key("job"), "must not be empty"));
            }
            if !jobs.insert(job.job.get_ref().clone()) {
                return Err(self.err(
                    &job.job,
                    &key("job"),
                    format!("duplicate job name {:?}", job.job.get_ref()),
                ));
            }
            let interval =
                self.duration(job.interval.as_ref(), &key("interval"), DEFAULT_INTERVAL)?;
            if interval < MIN_INTERVAL {
                return Err(self.err_opt(
                    job.interval.as_ref(),
                    &key("interval"),
                    "must be at least 100ms",
                ));
            }
            let timeout = self.duration(
                job.timeout.as_ref(),
                &key("timeout"),
                interval.min(DEFAULT_TIMEOUT),
            )?;
            if timeout > interval || timeout.is_zero() {
                return Err(self.err_opt(
                    job.timeout.as_ref(),
                    &key("timeout"),
                    format!(
                        "must be above 0 and at most the interval ({})",
                        format_duration(interval)
                    ),
                ));
            }
            let metrics_path = match &job.metrics_path {
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(self.err(
                        p,
                        &key("metrics_path"),
                        format!(
                            "must start with '/', like \"/metrics\", not {:?}",
                            p.get_ref()
                        ),
                    ))
                }
                Some(p) => p.get_ref().clone(),
                None => DEFAULT_METRICS_PATH.to_string(),
            };
            let scheme = match &job.scheme {
                Some(s) if s.get_ref() == "http" || s.get_ref() == "https" => s.get_ref().clone(),
                Some(s) => {
                    return Err(self.err(
                        s,
                        &key("scheme"),
                        format!("expected \"http\" or \"https\", not {:?}", s.get_ref()),
                    ))
                }
                None => "http".to_string(),
            };
            let body_size_limit = self.size(
                job.body_size_limit.as_ref(),
                &key("body_size_limit"),
                DEFAULT_BODY_SIZE_LIMIT,
            )?;
            if job.targets.get_ref().is_empty() {
                return Err(self.err(
                    &job.targets,
                    &key("targets"),
                    "must list at least one target, like [\"127.0.0.1:9100\"]",
                ));
            }
            let tls = self.tls(job.tls, &key("tls"))?;
            let labels = self.attributes(job.labels, &key("labels"))?;
            let relabel_configs = self.rules(&job.relabel_configs, &key("relabel_configs"))?;
            let metric_relabel_configs =
                self.rules(&job.metric_relabel_configs, &key("metric_relabel_configs"))?;
            let limits = ScrapeLimits {
                sample_limit: self.limit(job.sample_limit.as_ref(), &key("sample_limit"))?,
                label_limit: self.limit(job.label_limit.as_ref(), &key("label_limit"))?,
                label_name_length_limit: self.limit(
                    job.label_name_length_limit.as_ref(),
                    &key("label_name_length_limit"),
                )?,
                label_value_length_limit: self.limit(
                    job.label_value_length_limit.as_ref(),
                    &key("label_value_length_limit"),
                )?,
            };
            let settings = TargetSettings {
                job: job.job.get_ref(),
                scheme: &scheme,
                metrics_path: &metrics_path,
                interval,
                timeout,
                params: &job.params,
                labels: &labels,
                rules: &relabel_configs,
            };
            let mut targets = Vec::new();
            let mut dropped_targets = 0;
            for (t, target) in job.targets.get_ref().iter().enumerate() {
                let parsed = settings.target(target.get_ref()).map_err(|reason| {
                    self.err(target, &format!("scrape[{i}].targets[{t}]"), reason)
                })?;
                match parsed {
                    None => dropped_targets += 1,
                    // Two targets that relabeling made one are scraped once.
                    Some(p) if targets.contains(&p) => {}
                    Some(p) => targets.push(p),
                }
            }
            scrape.push(ScrapeConfig {
                job: job.job.into_inner(),
                targets,
                interval,
                timeout,
                body_size_limit,
                labels,
                tls,
                metric_relabel_configs,
                dropped_targets,
                honor_labels: job.honor_labels.unwrap_or(false),
                honor_timestamps: job.honor_timestamps.unwrap_or(true),
                limits,
            });
        }

        Ok(scrape)
    }
}

impl Cx<'_> {
    /// A list of relabel rules, each checked as Prometheus checks it; an
    /// error points at the field at fault.
    fn rules(&self, raw: &[RawRule], key: &str) -> Result<Vec<Rule>, ConfigError> {
        let mut rules = Vec::new();
        for (r, rule) in raw.iter().enumerate() {
            let field_key = |field: &str| format!("{key}[{r}].{field}");
            let text = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.get_ref().clone());
            let modulus = match &rule.modulus {
                None => None,
                Some(m) => Some(u64::try_from(*m.get_ref()).map_err(|_| {
                    self.err(m, &field_key("modulus"), "must be a positive number")
                })?),
            };
            let spec = RuleSpec {
                source_labels: rule.source_labels.as_ref().map(|s| s.get_ref().clone()),
                separator: text(&rule.separator),
                regex: text(&rule.regex),
                modulus,
                target_label: text(&rule.target_label),
                replacement: text(&rule.replacement),
                action: text(&rule.action),
            };
            let compiled = Rule::new(&spec).map_err(|e| {
                let span = match e.field {
                    "source_labels" => rule.source_labels.as_ref().map(Spanned::span),
                    "separator" => rule.separator.as_ref().map(Spanned::span),
                    "regex" => rule.regex.as_ref().map(Spanned::span),
                    "modulus" => rule.modulus.as_ref().map(Spanned::span),
                    "target_label" => rule.target_label.as_ref().map(Spanned::span),
                    "replacement" => rule.replacement.as_ref().map(Spanned::span),
                    _ => rule.action.as_ref().map(Spanned::span),
                };
                self.err_at(span, &field_key(e.field), e.reason)
            })?;
            rules.push(compiled);
        }
        Ok(rules)
    }

    /// A Prometheus limit: a count, 0 for none.
    fn limit(&self, raw: Option<&Spanned<i64>>, key: &str) -> Result<usize, ConfigError> {
        match raw {
            None => Ok(0),
            Some(v) => usize::try_from(*v.get_ref())
                .map_err(|_| self.err(v, key, "must be 0 (no limit) or a positive number")),
        }
    }
}

/// What a job's targets are built from.
struct TargetSettings<'a> {
    job: &'a str,
    scheme: &'a str,
    metrics_path: &'a str,
    interval: Duration,
    timeout: Duration,
    params: &'a BTreeMap<String, Vec<String>>,
    labels: &'a BTreeMap<String, String>,
    rules: &'a [Rule],
}

impl TargetSettings<'_> {
    /// The target `t` as written (`host:port` or a URL), after the job's
    /// `relabel_configs`; None when they drop it.
    fn target(&self, t: &str) -> Result<Option<ScrapeTarget>, String> {
        // A target without a port is fine when rules may give it one (a
        // blackbox or SNMP exporter's targets); Prometheus adds the scheme's.
        let written = parse_target(t, self.scheme, self.metrics_path, self.rules.is_empty())?;
        if self.rules.is_empty() && self.params.is_empty() {
            return Ok(Some(ScrapeTarget {
                url: written.url,
                instance: written.address,
                job: self.job.to_string(),
                labels: self.labels.clone(),
            }));
        }
        // The labels Prometheus gives a target before relabeling.
        let mut labels = Labels::new();
        labels.push("__address__", written.address.as_str());
        labels.push("__scheme__", written.scheme.as_str());
        labels.push("__metrics_path__", written.path.as_str());
        labels.push("__scrape_interval__", format_duration(self.interval));
        labels.push("__scrape_timeout__", format_duration(self.timeout));
        labels.push("job", self.job);
        let mut params = self.params.clone();
        for (name, value) in &written.query {
            params.entry(name.clone()).or_default().push(value.clone());
        }
        for (name, values) in &params {
            if let Some(first) = values.first() {
                labels.set(format!("__param_{name}"), first.clone());
            }
        }
        for (name, value) in self.labels {
            labels.set(name.as_str(), value.as_str());
        }
        let mut scratch = relabel::Scratch::default();
        if !relabel::process(self.rules, &mut labels, &mut scratch) {
            return Ok(None);
        }
        let scheme = labels.get("__scheme__");
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "relabel_configs made __scheme__ {scheme:?}, expected \"http\" or \"https\""
            ));
        }
        let mut address = labels.get("__address__").to_string();
        if address.is_empty() {
            return Err("relabel_configs left no __address__".into());
        }
        if address.contains('/') {
            return Err(format!(
                "relabel_configs made __address__ {address:?}, expected host:port"
            ));
        }
        // As Prometheus 2: an address without a port gets the scheme's.
        let has_port = address.rsplit_once(':').is_some_and(|(host, port)| {
            (!host.contains(':') || host.ends_with(']')) && port.parse::<u16>().is_ok()
        });
        if !has_port {
            address.push_str(if scheme == "https" { ":443" } else { ":80" });
        }
        let path = labels.get("__metrics_path__");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        // The query: the job's params, the first value of each replaced by
        // its `__param_` label, sorted by name as Go's url.Values encodes.
        let mut query: BTreeMap<String, Vec<String>> = params;
        for (name, value) in labels.iter() {
            if let Some(param) = name.strip_prefix("__param_") {
                match query.get_mut(param).and_then(|v| v.first_mut()) {
                    Some(first) => *first = value.to_string(),
                    None => {
                        query.insert(param.to_string(), vec![value.to_string()]);
                    }
                }
            }
        }
        let mut url = format!("{scheme}://{address}{path}");
        let mut sep = '?';
        for (name, values) in &query {
            for value in values {
                url.push(sep);
                sep = '&';
                url.push_str(&query_escape(name));
                url.push('=');
                url.push_str(&query_escape(value));
            }
        }
        let instance = match labels.get("instance") {
            "" => address.clone(),
            i => i.to_string(),
        };
        let job = match labels.get("job") {
            "" => self.job.to_string(),
            j => j.to_string(),
        };
        let labels = labels
            .iter()
            .filter(|(n, _)| !n.starts_with("__") && *n != "job" && *n != "instance")
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Ok(Some(ScrapeTarget {
            url,
            instance,
            job,
            labels,
        }))
    }
}

/// A target as written, in parts.
struct WrittenTarget {
    url: String,
    scheme: String,
    address: String,
    /// The path, without the query.
    path: String,
    query: Vec<(String, String)>,
}

fn parse_target(
    t: &str,
    scheme: &str,
    metrics_path: &str,
    needs_port: bool,
) -> Result<WrittenTarget, String> {
    let (url, scheme, hostport, path) = if let Some((written_scheme, rest)) = t
        .strip_prefix("http://")
        .map(|r| ("http", r))
        .or_else(|| t.strip_prefix("https://").map(|r| ("https", r)))
    {
        let (hostport, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, metrics_path),
        };
        let url = if rest.contains('/') {
            t.to_string()
        } else {
            format!("{t}{metrics_path}")
        };
        (url, written_scheme, hostport, path)
    } else {
        if t.contains('/') || t.contains("://") {
            return Err(format!("expected host:port or an http(s) URL, not {t:?}"));
        }
        (
            format!("{scheme}://{t}{metrics_path}"),
            scheme,
            t,
            metrics_path,
        )
    };
    let port_ok = hostport
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if needs_port && !port_ok {
        return Err(format!(
            "expected host:port, like \"127.0.0.1:9100\", not {t:?}"
        ));
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    // Decoded, as Go's url.ParseQuery does: `__param_` labels hold values,
    // and the URL is encoded again from them.
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            match (query_unescape(n), query_unescape(v)) {
                (Some(n), Some(v)) => Ok((n, v)),
                _ => Err(format!(
                    "{t:?}: the query part {p:?} is not valid percent-encoded UTF-8"
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(WrittenTarget {
        url,
        scheme: scheme.to_string(),
        address: hostport.to_string(),
        path: path.to_string(),
        query,
    })
}

/// Decodes a query name or value as Go's `url.QueryUnescape` does (`+` is
/// a space); None for a bad `%` escape or bytes that are not UTF-8.
fn query_unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a query name or value as Go's `url.QueryEscape` does.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
