//! The `[[scrape]]` jobs: Prometheus targets, with Prometheus's own names
//! and defaults so that scrape configs carry over.

use std::collections::BTreeMap;
use std::time::Duration;

use super::locate::Cx;
use super::raw::RawScrape;
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
}

/// One scrape target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// The URL scraped, for example `http://127.0.0.1:9100/metrics`.
    pub url: String,
    /// The `instance` label: `host:port` as written, like Prometheus.
    pub instance: String,
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
            let mut targets = Vec::new();
            for (t, target) in job.targets.get_ref().iter().enumerate() {
                let parsed =
                    parse_target(target.get_ref(), &scheme, &metrics_path).map_err(|reason| {
                        self.err(target, &format!("scrape[{i}].targets[{t}]"), reason)
                    })?;
                targets.push(parsed);
            }
            let tls = self.tls(job.tls, &key("tls"))?;
            let labels = self.attributes(job.labels, &key("labels"))?;
            scrape.push(ScrapeConfig {
                job: job.job.into_inner(),
                targets,
                interval,
                timeout,
                body_size_limit,
                labels,
                tls,
            });
        }

        Ok(scrape)
    }
}

fn parse_target(t: &str, scheme: &str, metrics_path: &str) -> Result<ScrapeTarget, String> {
    let (url, hostport) = if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        let hostport = rest.split('/').next().unwrap_or("");
        let url = if rest.contains('/') {
            t.to_string()
        } else {
            format!("{t}{metrics_path}")
        };
        (url, hostport.to_string())
    } else {
        if t.contains('/') || t.contains("://") {
            return Err(format!("expected host:port or an http(s) URL, not {t:?}"));
        }
        (format!("{scheme}://{t}{metrics_path}"), t.to_string())
    };
    let port_ok = hostport
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!(
            "expected host:port, like \"127.0.0.1:9100\", not {t:?}"
        ));
    }
    Ok(ScrapeTarget {
        url,
        instance: hostport,
    })
}
