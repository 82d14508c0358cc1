//! What Prometheus does to each scraped sample before storing it, done
//! before the OTLP conversion so that what is sent follows the result:
//! the target's labels merged in (`honor_labels`), `metric_relabel_configs`,
//! the label limits and `honor_timestamps`. A family comes out as one or
//! more families (a rule may rename samples), or none.
//!
//! The target's own labels (`job`, `instance`, the job's `labels`) travel on
//! the resource, not on each point: after the rules, a label that still
//! holds the target's value is left off the point. One that a rule changed
//! goes on the point with its new value; one a rule removed stays on the
//! resource (the README says so).

use std::borrow::Cow;

use crate::config::{ScrapeConfig, ScrapeLimits};
use crate::relabel::{self, Labels};

use super::parse::{Family, Label, MetricType, Sample};

/// The target labels Prometheus merges into each sample, sorted by name.
pub(super) type TargetLabels = Vec<(String, String)>;

/// Why a scrape's samples were refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    /// The self-metrics reason.
    pub(super) reason: &'static str,
    /// What was over which limit, for the log.
    pub(super) detail: String,
}

/// A sample after relabeling, borrowing what no rule changed.
struct Relabeled<'f> {
    labels: Labels<'f>,
    value: f64,
    timestamp_ms: Option<i64>,
    /// Where the sample goes: an index into the output families.
    group: usize,
}

/// An output family: its name and type (those of the input family unless
/// a rule renamed its samples).
struct Group<'f> {
    name: Cow<'f, str>,
    kind: MetricType,
    same_meta: bool,
}

/// Whether `config` asks for anything beyond the plain conversion for a
/// family whose label names are `names`.
pub(super) fn needed(config: &ScrapeConfig, target: &TargetLabels, family: &Family<'_>) -> bool {
    if !config.metric_relabel_configs.is_empty() || !config.honor_timestamps || config.limits.any()
    {
        return true;
    }
    // A scraped label named as a target label is renamed `exported_...`.
    !config.honor_labels
        && family.samples.iter().any(|s| {
            s.labels
                .iter()
                .any(|l| target.iter().any(|(n, _)| n == l.name))
        })
}

/// Relabels `family` and calls `emit` with each family that comes out;
/// `kept` counts the samples kept, for `sample_limit`.
pub(super) fn family(
    config: &ScrapeConfig,
    target: &TargetLabels,
    family: &Family<'_>,
    scratch: &mut relabel::Scratch,
    kept: &mut usize,
    mut emit: impl FnMut(&Family<'_>),
) -> Result<(), Refused> {
    let mut groups: Vec<Group<'_>> = vec![Group {
        name: Cow::Borrowed(family.name),
        kind: family.kind,
        same_meta: true,
    }];
    let mut out: Vec<Relabeled<'_>> = Vec::with_capacity(family.samples.len());
    for sample in &family.samples {
        let mut labels = Labels::new();
        labels.push("__name__", sample.name);
        for l in &sample.labels {
            labels.push(l.name, l.value.as_ref());
        }
        merge_target(&mut labels, target, config.honor_labels);
        if !relabel::process(&config.metric_relabel_configs, &mut labels, scratch) {
            continue;
        }
        check_limits(&labels, &config.limits)?;
        let name = labels.get("__name__");
        if name.is_empty() {
            return Err(Refused {
                reason: "relabel_error",
                detail: format!(
                    "metric_relabel_configs removed __name__ from a sample of {}",
                    family.name
                ),
            });
        }
        let group = group_of(&mut groups, family, sample.name, name);
        *kept += 1;
        if config.limits.sample_limit > 0 && *kept > config.limits.sample_limit {
            return Err(Refused {
                reason: "sample_limit_exceeded",
                detail: format!(
                    "more than sample_limit {} samples after metric_relabel_configs",
                    config.limits.sample_limit
                ),
            });
        }
        out.push(Relabeled {
            labels,
            value: sample.value,
            timestamp_ms: if config.honor_timestamps {
                sample.timestamp_ms
            } else {
                None
            },
            group,
        });
    }
    for (g, group) in groups.iter().enumerate() {
        let samples: Vec<Sample<'_>> = out
            .iter()
            .filter(|s| s.group == g)
            .map(|s| to_sample(s, target))
            .collect();
        if samples.is_empty() {
            continue;
        }
        emit(&Family {
            name: &group.name,
            kind: group.kind,
            help: if group.same_meta {
                family.help.clone()
            } else {
                None
            },
            unit: if group.same_meta { family.unit } else { None },
            samples,
        });
    }
    Ok(())
}

/// Merges the target's labels into a sample's as Prometheus does: with
/// `honor_labels` a scraped label wins; without, the target's wins and the
/// scraped one is kept as `exported_<name>` (`exported_exported_<name>`
/// when that is taken, and so on).
fn merge_target<'t>(labels: &mut Labels<'t>, target: &'t TargetLabels, honor: bool) {
    if honor {
        for (n, v) in target {
            if labels.get(n).is_empty() {
                labels.push(n.as_str(), v.as_str());
            }
        }
        return;
    }
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for (n, v) in target {
        let exposed = labels.get(n);
        if !exposed.is_empty() {
            conflicts.push((n.clone(), exposed.to_string()));
        }
        labels.set(n.as_str(), v.as_str());
    }
    if conflicts.is_empty() {
        return;
    }
    // Shorter names first, as Prometheus resolves them.
    conflicts.sort_by_key(|(n, _)| n.len());
    let exposed_before: Vec<String> = labels.iter().map(|(n, _)| n.to_string()).collect();
    for i in 0..conflicts.len() {
        let mut name = conflicts[i].0.clone();
        loop {
            name = format!("exported_{name}");
            let taken = exposed_before.contains(&name)
                || target.iter().any(|(n, _)| *n == name)
                || conflicts[..i].iter().any(|(n, _)| *n == name);
            if !taken {
                break;
            }
        }
        conflicts[i].0 = name;
    }
    for (n, v) in conflicts {
        labels.set(n, v);
    }
}

fn check_limits(labels: &Labels<'_>, limits: &ScrapeLimits) -> Result<(), Refused> {
    if !limits.any() {
        return Ok(());
    }
    let metric = labels.get("__name__");
    if limits.label_limit > 0 && labels.len() > limits.label_limit {
        return Err(Refused {
            reason: "label_limit_exceeded",
            detail: format!(
                "label_limit exceeded (metric: {metric:.50}, number of labels: {}, limit: {})",
                labels.len(),
                limits.label_limit
            ),
        });
    }
    for (name, value) in labels.iter() {
        if limits.label_name_length_limit > 0 && name.len() > limits.label_name_length_limit {
            return Err(Refused {
                reason: "label_name_length_limit_exceeded",
                detail: format!(
                    "label_name_length_limit exceeded (metric: {metric:.50}, label name: {name:.50}, length: {}, limit: {})",
                    name.len(),
                    limits.label_name_length_limit
                ),
            });
        }
        if limits.label_value_length_limit > 0 && value.len() > limits.label_value_length_limit {
            return Err(Refused {
                reason: "label_value_length_limit_exceeded",
                detail: format!(
                    "label_value_length_limit exceeded (metric: {metric:.50}, label name: {name:.50}, value: {value:.50}, length: {}, limit: {})",
                    value.len(),
                    limits.label_value_length_limit
                ),
            });
        }
    }
    Ok(())
}

/// The output family of a sample first named `old` and now `new`.
fn group_of<'f>(groups: &mut Vec<Group<'f>>, family: &Family<'_>, old: &str, new: &str) -> usize {
    if old == new {
        return 0;
    }
    // A renamed sample keeps its family's type when it keeps its role's
    // suffix (`foo_bucket` to `bar_bucket`: histogram `bar`).
    let suffix = old.strip_prefix(family.name).unwrap_or("");
    let (name, kind, same_meta) = match new.strip_suffix(suffix) {
        Some(base) if !base.is_empty() => (base, family.kind, true),
        _ => (new, MetricType::Unknown, false),
    };
    if let Some(i) = groups.iter().position(|g| g.name == name && g.kind == kind) {
        return i;
    }
    groups.push(Group {
        name: Cow::Owned(name.to_string()),
        kind,
        same_meta,
    });
    groups.len() - 1
}

/// A relabeled sample as the converter takes it: its name, and the labels
/// that are not the target's own (those are on the resource).
fn to_sample<'s>(s: &'s Relabeled<'_>, target: &TargetLabels) -> Sample<'s> {
    let mut name = "";
    let mut labels = Vec::with_capacity(s.labels.len());
    for (n, v) in s.labels.iter() {
        if n == "__name__" {
            name = v;
        } else if !target.iter().any(|(tn, tv)| tn == n && tv == v) {
            labels.push(Label {
                name: n,
                value: Cow::Borrowed(v),
            });
        }
    }
    Sample {
        name,
        labels,
        value: s.value,
        timestamp_ms: s.timestamp_ms,
    }
}
