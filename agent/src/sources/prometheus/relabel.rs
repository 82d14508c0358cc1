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

use super::outcomes::{Outcome, Outcomes, Strings};
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

/// What a scrape worker keeps from one family to the next: the rules'
/// scratch, and emptied vectors, so that relabeling a family allocates
/// next to nothing (musl's allocator returns freed pages to the kernel
/// eagerly, which made a vector a sample cost more than the rules).
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    rules: relabel::Scratch,
    labels: Vec<Vec<Label<'static>>>,
    store: Vec<(&'static str, &'static str)>,
    samples: Vec<Vec<Sample<'static>>>,
    outcomes: Vec<Outcome>,
    pairs: Vec<u32>,
}

/// Most emptied label vectors kept.
const KEEP_VECTORS: usize = 4096;

/// `v`, emptied, as a vector of another lifetime, keeping its allocation:
/// collecting a vector's own iterator into a vector of a type of the same
/// size and alignment reuses its buffer (std's in-place collection; were
/// it not to, this would only allocate).
fn emptied<T, U>(v: Vec<T>, mut make: impl FnMut() -> U) -> Vec<U> {
    let mut v = v;
    v.clear();
    v.into_iter().map(|_| make()).collect()
}

/// A sample after relabeling: its labels are a range of the family's
/// flat label store.
struct Relabeled<'s> {
    name: &'s str,
    labels: std::ops::Range<usize>,
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

/// Whether a sample's labels must have the target's merged in before the
/// rules run: when a rule may read or change one of them, or a limit
/// counts them. Otherwise only a sample that has a label of the same name
/// needs it (for `exported_<name>`), and the rest skip the merge and the
/// filtering after.
pub(super) fn must_merge(config: &ScrapeConfig, target: &TargetLabels) -> bool {
    config.limits.any()
        || config
            .metric_relabel_configs
            .iter()
            .any(|r| target.iter().any(|(n, _)| r.may_touch(n)))
}

/// Relabels `family` and calls `emit` with each family that comes out;
/// `outcomes` are the target's (what the rules made of each series
/// before); `kept` counts the samples kept, for `sample_limit`; `merge` is
/// [`must_merge`].
#[allow(clippy::too_many_arguments)]
pub(super) fn family(
    config: &ScrapeConfig,
    target: &TargetLabels,
    family: &Family<'_>,
    buffers: &mut Buffers,
    outcomes: &mut Outcomes,
    kept: &mut usize,
    merge: bool,
    mut emit: impl FnMut(&Family<'_>),
) -> Result<(), Refused> {
    // What the rules make of each sample: remembered from the last
    // scrape, or worked out now.
    let mut results = std::mem::take(&mut buffers.outcomes);
    results.clear();
    let mut labels = Labels::new();
    for sample in &family.samples {
        let hash = super::scrape::series_hash;
        let outcome = outcomes.outcome(sample, hash, |strings| {
            let input = Input {
                config,
                target,
                sample,
                merge,
            };
            input.relabel(
                &mut labels,
                &mut buffers.rules,
                strings,
                &mut buffers.pairs,
                family.name,
            )
        })?;
        results.push(outcome);
    }
    let strings = outcomes.strings();
    let mut groups: Vec<Group<'_>> = vec![Group {
        name: Cow::Borrowed(family.name),
        kind: family.kind,
        same_meta: true,
    }];
    let mut out: Vec<Relabeled<'_>> = Vec::with_capacity(family.samples.len());
    // Every kept sample's labels back to back: a few allocations a family,
    // not a few a sample.
    let mut store = emptied(std::mem::take(&mut buffers.store), || ("", ""));
    for (sample, outcome) in family.samples.iter().zip(&results) {
        let Some(name) = outcome.name(sample, strings) else {
            continue;
        };
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
        let start = store.len();
        outcome.labels(sample, strings, &mut store);
        out.push(Relabeled {
            name,
            labels: start..store.len(),
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
        let mut samples = emptied(buffers.samples.pop().unwrap_or_default(), empty_sample);
        for s in out.iter().filter(|s| s.group == g) {
            let labels = emptied(buffers.labels.pop().unwrap_or_default(), empty_label);
            samples.push(to_sample(s, &store, labels));
        }
        if samples.is_empty() {
            continue;
        }
        let mut output = Family {
            name: &group.name,
            kind: group.kind,
            help: if group.same_meta {
                family.help.clone()
            } else {
                None
            },
            unit: if group.same_meta { family.unit } else { None },
            samples,
        };
        emit(&output);
        for s in output.samples.iter_mut() {
            if buffers.labels.len() < KEEP_VECTORS {
                buffers
                    .labels
                    .push(emptied(std::mem::take(&mut s.labels), empty_label));
            }
        }
        buffers
            .samples
            .push(emptied(std::mem::take(&mut output.samples), empty_sample));
    }
    buffers.store = emptied(store, || ("", ""));
    buffers.outcomes = results;
    Ok(())
}

/// A sample to run the rules over, with what they depend on.
struct Input<'a, 's> {
    config: &'a ScrapeConfig,
    target: &'a TargetLabels,
    sample: &'a Sample<'s>,
    merge: bool,
}

impl<'a> Input<'a, '_> {
    /// Runs the rules and the limits over the sample: its outcome, with
    /// the labels that go on its point (not those of the target, which are
    /// on the resource) in `strings`.
    fn relabel(
        &self,
        labels: &mut Labels<'a>,
        rules: &mut relabel::Scratch,
        strings: &mut Strings,
        pairs: &mut Vec<u32>,
        family: &str,
    ) -> Result<Outcome, Refused> {
        let Input {
            config,
            target,
            sample,
            merge,
        } = *self;
        labels.clear();
        labels.push("__name__", sample.name);
        for l in &sample.labels {
            labels.push(l.name, l.value.as_ref());
        }
        let merged = merge
            || sample
                .labels
                .iter()
                .any(|l| target.iter().any(|(n, _)| n == l.name));
        if merged {
            merge_target(labels, target, config.honor_labels);
        }
        if !relabel::process(&config.metric_relabel_configs, labels, rules) {
            return Ok(Outcome::dropped());
        }
        check_limits(labels, &config.limits)?;
        let name = labels.get("__name__");
        if name.is_empty() {
            return Err(Refused {
                reason: "relabel_error",
                detail: format!(
                    "metric_relabel_configs removed __name__ from a sample of {family}"
                ),
            });
        }
        let on_point = labels.iter().filter(|(n, v)| {
            *n != "__name__" && !(merged && target.iter().any(|(tn, tv)| tn == n && tv == v))
        });
        Ok(Outcome::kept(sample, name, on_point, strings, pairs))
    }
}

fn empty_label<'b>() -> Label<'b> {
    Label {
        name: "",
        value: Cow::Borrowed(""),
    }
}

fn empty_sample<'b>() -> Sample<'b> {
    Sample {
        name: "",
        labels: Vec::new(),
        value: 0.0,
        timestamp_ms: None,
    }
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
    // Shorter names first, as Prometheus resolves them (its stable sort of
    // conflicts found in name order).
    conflicts.sort_unstable_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
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

/// A relabeled sample as the converter takes it.
fn to_sample<'s>(
    s: &Relabeled<'s>,
    store: &[(&'s str, &'s str)],
    mut labels: Vec<Label<'s>>,
) -> Sample<'s> {
    let pairs = store.get(s.labels.clone()).unwrap_or(&[]);
    labels.extend(pairs.iter().map(|(name, value)| Label {
        name,
        value: Cow::Borrowed(value),
    }));
    Sample {
        name: s.name,
        labels,
        value: s.value,
        timestamp_ms: s.timestamp_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::sources::prometheus::parse::{Format, Limits, Parser};

    /// The job of a config that is `[[scrape]]` with `extra` lines.
    fn job(extra: &str) -> ScrapeConfig {
        let text = format!("[[scrape]]\njob = \"j\"\ntargets = [\"h:1\"]\n{extra}\n");
        let mut c = Config::parse(Path::new("t.toml"), &text).unwrap();
        c.scrape.remove(0)
    }

    fn target() -> TargetLabels {
        vec![
            ("instance".into(), "h:1".into()),
            ("job".into(), "j".into()),
        ]
    }

    /// Each family of `body` relabeled: its name, type and samples as text.
    fn run(config: &ScrapeConfig, body: &str) -> Result<Vec<String>, Refused> {
        let mut outcomes = Outcomes::new(true);
        let out = scrape(config, body, &mut outcomes);
        outcomes.finish(out.is_ok());
        out
    }

    /// [`run`] as one scrape of a target that remembers `outcomes`.
    fn scrape(
        config: &ScrapeConfig,
        body: &str,
        outcomes: &mut Outcomes,
    ) -> Result<Vec<String>, Refused> {
        let mut out = Vec::new();
        let mut scratch = Buffers::default();
        let mut kept = 0;
        let target = target();
        for f in Parser::new(body.as_bytes(), Format::PrometheusText, &Limits::default()) {
            let f = f.unwrap();
            let merge = must_merge(config, &target);
            let o = &mut *outcomes;
            family(
                config,
                &target,
                &f,
                &mut scratch,
                o,
                &mut kept,
                merge,
                |g| {
                    for s in &g.samples {
                        let labels: Vec<String> = s
                            .labels
                            .iter()
                            .map(|l| format!("{}={}", l.name, l.value))
                            .collect();
                        out.push(format!(
                            "{}:{} {}{{{}}} {:?}",
                            g.name,
                            g.kind.as_str(),
                            s.name,
                            labels.join(","),
                            s.timestamp_ms
                        ));
                    }
                },
            )?;
        }
        Ok(out)
    }

    #[test]
    fn target_labels_stay_off_points_and_scraped_ones_are_renamed() {
        let c = job("");
        let out = run(&c, "m{job=\"x\",instance=\"h:1\",a=\"1\"} 1\n").unwrap();
        // Renamed even when equal to the target's, as Prometheus does.
        assert_eq!(
            out,
            ["m:unknown m{a=1,exported_job=x,exported_instance=h:1} None"]
        );
        let honor = job("honor_labels = true");
        let out = run(&honor, "m{job=\"x\",a=\"1\"} 1\n").unwrap();
        assert_eq!(out, ["m:unknown m{job=x,a=1} None"]);
    }

    /// Five typical rules, and one that renames a family.
    const RULES: &str = r#"
[[scrape.metric_relabel_configs]]
source_labels = ["__name__"]
regex = "go_.*|drop_me"
action = "drop"
[[scrape.metric_relabel_configs]]
source_labels = ["__name__", "path"]
modulus = 4
target_label = "__tmp_shard"
action = "hashmod"
[[scrape.metric_relabel_configs]]
source_labels = ["__tmp_shard"]
regex = "0|1|2"
action = "keep"
[[scrape.metric_relabel_configs]]
source_labels = ["path"]
regex = "/api/v1/(\\w+)/\\d+"
target_label = "resource"
[[scrape.metric_relabel_configs]]
regex = "instance_id|__tmp_shard"
action = "labeldrop"
[[scrape.metric_relabel_configs]]
source_labels = ["__name__"]
regex = "old_(.*)"
target_label = "__name__"
replacement = "new_${1}"
"#;

    /// A body of `n` series per family in an order given by `order`.
    fn body(families: &[&str], paths: impl Iterator<Item = usize> + Clone) -> String {
        let mut b = String::new();
        for f in families {
            b.push_str(&format!("# TYPE {f} gauge\n"));
            for p in paths.clone() {
                b.push_str(&format!(
                    "{f}{{instance_id=\"i-{p}\",path=\"/api/v1/items/{p}\",method=\"GET\"}} {p}\n"
                ));
            }
        }
        b
    }

    #[test]
    fn remembered_outcomes_equal_the_rules_whatever_changes_between_scrapes() {
        let c = job(RULES);
        let families = ["m", "drop_me", "old_x", "go_gc"];
        let bodies = [
            body(&families, 0..40),
            // The same again: nothing to work out.
            body(&families, 0..40),
            // One series more in the middle, one gone at the end.
            body(&families, (0..20).chain(99..100).chain(20..39)),
            // Reversed.
            body(&families, (0..40).rev()),
            // Fewer families, some series new.
            body(&families[..2], 30..60),
            body(&families, 0..40),
        ];
        let mut outcomes = Outcomes::new(true);
        for (i, b) in bodies.iter().enumerate() {
            outcomes.reset_computed();
            let remembered = scrape(&c, b, &mut outcomes).unwrap();
            outcomes.finish(true);
            let fresh = run(&c, b).unwrap();
            assert_eq!(remembered, fresh, "body {i}");
            assert!(fresh.iter().any(|s| s.contains("resource=items")));
            assert_eq!(
                fresh.iter().any(|s| s.starts_with("new_x:gauge new_x{")),
                b.contains("old_x")
            );
            assert!(!fresh
                .iter()
                .any(|s| s.contains("instance_id") || s.contains("go_gc")));
            let series = b.lines().filter(|l| !l.starts_with('#')).count();
            assert_eq!(outcomes.remembered(), series, "body {i}");
            // A steady scrape runs no rule; a changed one only for the
            // series the last one lacked.
            let expected = match i {
                0 => series,
                1 => 0,
                2 | 3 => 4,
                4 => 2 * 20,
                _ => 2 * 30 + 2 * 40,
            };
            assert_eq!(outcomes.computed(), expected, "body {i}");
        }
    }

    #[test]
    fn a_failed_scrape_leaves_the_last_good_outcomes() {
        let c = job(&format!("sample_limit = 50\n{RULES}"));
        let mut outcomes = Outcomes::new(true);
        let good = body(&["m"], 0..40);
        scrape(&c, &good, &mut outcomes).unwrap();
        outcomes.finish(true);
        let e = scrape(&c, &body(&["m"], 0..80), &mut outcomes).unwrap_err();
        assert_eq!(e.reason, "sample_limit_exceeded");
        outcomes.finish(false);
        assert_eq!(outcomes.remembered(), 40);
        outcomes.reset_computed();
        assert_eq!(scrape(&c, &good, &mut outcomes), run(&c, &good));
        assert_eq!(outcomes.computed(), 0);
    }

    #[test]
    fn outcomes_of_many_labels_and_of_merged_target_labels_are_exact() {
        // Forty labels: past the first 32, kept labels go through the list.
        let labels: Vec<String> = (0..40).map(|i| format!("l{i:02}=\"v{i}\"")).collect();
        let b = format!("m{{{},job=\"x\"}} 1\n", labels.join(","));
        let c =
            job("[[scrape.metric_relabel_configs]]\nregex = \"l0[0-4]\"\naction = \"labeldrop\"");
        let mut outcomes = Outcomes::new(true);
        let first = scrape(&c, &b, &mut outcomes).unwrap();
        outcomes.finish(true);
        let second = scrape(&c, &b, &mut outcomes).unwrap();
        assert_eq!(first, second);
        let s = &first[0];
        assert!(
            !s.contains("l04=") && s.contains("l05=v5") && s.contains("l39=v39"),
            "{s}"
        );
        assert!(s.contains("exported_job=x") && !s.contains(",job="), "{s}");
        assert_eq!(s.matches('=').count(), 35 + 1, "{s}");
    }

    #[test]
    fn strings_of_vanished_series_are_let_go() {
        // Each scrape's series carry new values, which a rule copies.
        let c = job(
            "[[scrape.metric_relabel_configs]]\nsource_labels = [\"id\"]\ntarget_label = \"copy\"",
        );
        let mut outcomes = Outcomes::new(true);
        for round in 0..20 {
            let b: String = (0..200)
                .map(|i| format!("m{{id=\"{round}-{i}\"}} 1\n"))
                .collect();
            let out = scrape(&c, &b, &mut outcomes).unwrap();
            outcomes.finish(true);
            assert!(out[7].contains(&format!("copy={round}-7")), "{}", out[7]);
            assert!(
                outcomes.strings().len() <= 2 * 200 + 1024 + 400,
                "round {round}"
            );
        }
    }

    #[test]
    fn emptied_vectors_keep_their_buffers() {
        let text = String::from("v");
        let mut v: Vec<Label<'_>> = Vec::with_capacity(12);
        v.push(Label {
            name: "n",
            value: Cow::Borrowed(&text),
        });
        let ptr = v.as_ptr() as usize;
        let w: Vec<Label<'static>> = emptied(v, empty_label);
        assert!(w.is_empty());
        assert_eq!(w.capacity(), 12);
        assert_eq!(w.as_ptr() as usize, ptr);
    }

    #[test]
    fn honor_timestamps_off_uses_the_scrape_time() {
        let body = "m 1 1700000000000\n";
        assert_eq!(
            run(&job("honor_timestamps = false"), body).unwrap(),
            ["m:unknown m{} None"]
        );
        assert!(!relabel_needed(&job(""), body));
    }

    fn relabel_needed(c: &ScrapeConfig, body: &str) -> bool {
        Parser::new(body.as_bytes(), Format::PrometheusText, &Limits::default())
            .any(|f| needed(c, &target(), &f.unwrap()))
    }

    #[test]
    fn limits_refuse_the_scrape_as_prometheus_does() {
        let body = "a{x=\"1\"} 1\na{x=\"2\"} 1\nb 1\n";
        assert_eq!(run(&job("sample_limit = 3"), body).unwrap().len(), 3);
        let e = run(&job("sample_limit = 2"), body).unwrap_err();
        assert_eq!(e.reason, "sample_limit_exceeded");
        // Dropped samples do not count.
        let drop = "sample_limit = 2\n[[scrape.metric_relabel_configs]]\nsource_labels = [\"__name__\"]\nregex = \"b\"\naction = \"drop\"";
        assert_eq!(run(&job(drop), body).unwrap().len(), 2);
        // __name__, x, job and instance: 4 labels.
        assert!(run(&job("label_limit = 4"), body).is_ok());
        let e = run(&job("label_limit = 3"), body).unwrap_err();
        assert_eq!(e.reason, "label_limit_exceeded");
        assert!(e.detail.contains("number of labels: 4, limit: 3"), "{e:?}");
        let e = run(&job("label_name_length_limit = 7"), body).unwrap_err();
        assert_eq!(e.reason, "label_name_length_limit_exceeded");
        assert!(run(&job("label_name_length_limit = 8"), body).is_ok());
        // The metric name is a label value.
        let long = "a_rather_long_name 1\n";
        let e = run(&job("label_value_length_limit = 10"), long).unwrap_err();
        assert_eq!(e.reason, "label_value_length_limit_exceeded");
    }

    #[test]
    fn a_sample_left_without_a_name_fails_the_scrape() {
        let c =
            job("[[scrape.metric_relabel_configs]]\nregex = \"__name__\"\naction = \"labeldrop\"");
        assert_eq!(run(&c, "m 1\n").unwrap_err().reason, "relabel_error");
    }

    #[test]
    fn renamed_samples_keep_their_family_type_when_they_keep_its_suffixes() {
        let c = job(
            "[[scrape.metric_relabel_configs]]\nsource_labels = [\"__name__\"]\nregex = \"h_(.*)\"\ntarget_label = \"__name__\"\nreplacement = \"renamed_$1\"\n[[scrape.metric_relabel_configs]]\nsource_labels = [\"__name__\"]\nregex = \"g\"\ntarget_label = \"__name__\"\nreplacement = \"other\"",
        );
        let body = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n# TYPE g gauge\n# HELP g help\ng 1\n";
        assert_eq!(
            run(&c, body).unwrap(),
            [
                "renamed:histogram renamed_bucket{le=1} None",
                "renamed:histogram renamed_bucket{le=+Inf} None",
                "renamed:histogram renamed_sum{} None",
                "renamed:histogram renamed_count{} None",
                "other:gauge other{} None",
            ]
        );
    }
}

#[cfg(test)]
mod speed {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::sources::prometheus::parse::{Format, Limits, Parser};

    /// `cargo test --release --lib relabel_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn relabel_speed() {
        let rules = std::env::var("RULES").unwrap_or_default();
        let text = format!(
            "[[scrape]]\njob = \"j\"\ntargets = [\"h:1\"]\nmetric_relabel_configs = [{rules}]\n"
        );
        let config = Config::parse(Path::new("t.toml"), &text)
            .unwrap()
            .scrape
            .remove(0);
        let mut body = String::new();
        for f in 0..1000 {
            let name = if f % 2 == 0 {
                format!("bench_http_requests_{f:04}_total")
            } else {
                format!("bench_http_inflight_requests_{f:04}")
            };
            body.push_str(&format!("# TYPE {name} gauge\n"));
            for j in 0..100 {
                body.push_str(&format!("{name}{{instance_id=\"i-0a1b2c3d4e5f{:05}\",path=\"/api/v1/items/{}\",method=\"{}\",code=\"200\"}} 1\n", f % 64, j % 25, ["GET", "POST", "PUT", "DELETE"][j / 25 % 4]));
            }
        }
        let families: Vec<Family<'_>> =
            Parser::new(body.as_bytes(), Format::PrometheusText, &Limits::default())
                .map(|f| f.unwrap())
                .collect();
        let target: TargetLabels = vec![
            ("instance".into(), "h:1".into()),
            ("job".into(), "j".into()),
        ];
        let mut scratch = Buffers::default();
        let mut outcomes = Outcomes::new(true);
        let rounds = if cfg!(debug_assertions) { 1 } else { 3 };
        for round in 0..rounds {
            let start = std::time::Instant::now();
            let mut kept = 0;
            let mut points = 0;
            for f in &families {
                let merge = must_merge(&config, &target);
                let o = &mut outcomes;
                family(
                    &config,
                    &target,
                    f,
                    &mut scratch,
                    o,
                    &mut kept,
                    merge,
                    |g| points += g.samples.len(),
                )
                .unwrap();
            }
            outcomes.finish(true);
            let ns = start.elapsed().as_nanos() as f64 / 100_000.0;
            eprintln!("round {round}: {ns:.0} ns a sample, {points} kept");
        }
    }
}
