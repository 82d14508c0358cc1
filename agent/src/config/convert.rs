//! `tern convert`: a Prometheus configuration's `scrape_configs` as tern
//! TOML, setting by setting, and a `# not carried over:` line for each
//! setting tern has no equivalent for, so that nothing is dropped quietly.

use std::fmt::Write as _;
use std::path::Path;

use super::yaml::{self, Node, Value};
use super::ConfigError;

/// The fields of a relabel rule, in the order they are written out.
const RULE_FIELDS: [&str; 7] = [
    "source_labels",
    "separator",
    "regex",
    "modulus",
    "target_label",
    "replacement",
    "action",
];

/// Scrape settings with the same name and meaning in tern, and their kind.
const SAME: [(&str, Kind); 11] = [
    ("metrics_path", Kind::Text),
    ("scheme", Kind::Text),
    ("honor_labels", Kind::Bool),
    ("honor_timestamps", Kind::Bool),
    ("sample_limit", Kind::Int),
    ("label_limit", Kind::Int),
    ("label_name_length_limit", Kind::Int),
    ("label_value_length_limit", Kind::Int),
    ("body_size_limit", Kind::Size),
    ("scrape_interval", Kind::Text),
    ("scrape_timeout", Kind::Text),
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Bool,
    Int,
    /// Prometheus's sizes are base 2 whatever the unit says ("16MB").
    Size,
}

/// The TOML for the Prometheus configuration `text` (read from `path`).
pub fn convert(path: &Path, text: &str) -> Result<String, ConfigError> {
    let located = |line: usize, column: usize, key: &str, reason: String| ConfigError {
        path: path.to_owned(),
        position: Some((line, column)),
        key: key.to_string(),
        reason,
    };
    let doc = yaml::parse(text).map_err(|e| located(e.line, e.column, "", e.reason))?;
    let mut c = Converter {
        out: String::new(),
        skipped: Vec::new(),
    };
    let _ = writeln!(
        c.out,
        "# Converted by tern convert from {}; add [export] endpoints.",
        comment(&path.display().to_string())
    );
    let global = doc.get("global");
    if let Some(Value::Map(entries)) = global.map(|g| &g.value) {
        for (key, node) in entries {
            match key.as_str() {
                "scrape_interval" | "scrape_timeout" | "external_labels" => {}
                other => c.skip(&format!("global.{other}"), node, "not a scrape setting"),
            }
        }
    }
    if let Some(labels) = global.and_then(|g| g.get("external_labels")) {
        let _ = writeln!(
            c.out,
            "\n[resource]                  # global.external_labels"
        );
        if let Value::Map(m) = &labels.value {
            for (k, v) in m {
                let _ = writeln!(c.out, "{} = {}", key(k), string(v.text().unwrap_or("")));
            }
        }
    }
    if let Value::Map(entries) = &doc.value {
        for (k, node) in entries {
            if k != "global" && k != "scrape_configs" {
                let why = match k.as_str() {
                    "remote_write" => "tern sends OTLP: set [export] endpoints",
                    "rule_files" | "alerting" => "tern evaluates no rules",
                    _ => "not a scrape setting",
                };
                c.skip(k, node, why);
            }
        }
    }
    let default = |name: &str| {
        global
            .and_then(|g| g.get(name))
            .and_then(Node::text)
            .map(str::to_string)
    };
    let jobs = match doc.get("scrape_configs").map(|n| &n.value) {
        Some(Value::Seq(jobs)) => jobs.as_slice(),
        _ => &[],
    };
    for (i, job) in jobs.iter().enumerate() {
        c.job(
            i,
            job,
            default("scrape_interval"),
            default("scrape_timeout"),
        )
        .map_err(|(node, key, reason)| located(node.at.0, node.at.1, &key, reason))?;
    }
    if jobs.is_empty() {
        c.out.push_str("\n# no scrape_configs\n");
    }
    if !c.skipped.is_empty() {
        c.out.push('\n');
        for line in &c.skipped {
            let _ = writeln!(c.out, "# not carried over: {line}");
        }
    }
    Ok(c.out)
}

struct Converter {
    out: String,
    skipped: Vec<String>,
}

type Failure<'a> = (&'a Node, String, String);

/// A `static_configs` entry's labels, in the order written.
type Labels = Vec<(String, String)>;

impl Converter {
    fn skip(&mut self, key: &str, node: &Node, why: &str) {
        self.skipped
            .push(format!("{} (line {}): {why}", comment(key), node.at.0));
    }

    fn job<'a>(
        &mut self,
        i: usize,
        job: &'a Node,
        interval: Option<String>,
        timeout: Option<String>,
    ) -> Result<(), Failure<'a>> {
        let at = |field: &str| format!("scrape_configs[{i}].{field}");
        let Value::Map(fields) = &job.value else {
            return Err((job, at(""), "expected a mapping".into()));
        };
        let name = job
            .get("job_name")
            .and_then(Node::text)
            .ok_or_else(|| (job, at("job_name"), "a job needs job_name".to_string()))?;
        // Each static_configs entry: its targets and labels. tern's labels
        // are per job, so entries with other labels become jobs of their
        // own whose target rules give back the job name.
        let mut groups: Vec<(Vec<String>, Labels)> = Vec::new();
        if let Some(Value::Seq(statics)) = job.get("static_configs").map(|n| &n.value) {
            for s in statics {
                let targets: Vec<String> = match s.get("targets").map(|n| &n.value) {
                    Some(Value::Seq(t)) => {
                        t.iter().filter_map(Node::text).map(String::from).collect()
                    }
                    _ => Vec::new(),
                };
                let labels: Labels = match s.get("labels").map(|n| &n.value) {
                    Some(Value::Map(m)) => m
                        .iter()
                        .map(|(k, v)| (k.clone(), v.text().unwrap_or("").to_string()))
                        .collect(),
                    _ => Vec::new(),
                };
                match groups.iter_mut().find(|(_, l)| *l == labels) {
                    Some((t, _)) => t.extend(targets),
                    None => groups.push((targets, labels)),
                }
            }
        }
        if groups.is_empty() {
            groups.push((Vec::new(), Vec::new()));
        }
        for (g, (targets, labels)) in groups.iter().enumerate() {
            let job_name = if g == 0 {
                name.to_string()
            } else {
                format!("{name}-{}", g + 1)
            };
            let _ = writeln!(self.out, "\n[[scrape]]\njob = {}", string(&job_name));
            let list: Vec<String> = targets.iter().map(|t| string(t)).collect();
            let _ = writeln!(self.out, "targets = [{}]", list.join(", "));
            if targets.is_empty() {
                self.skipped.push(format!(
                    "{} (line {}): no static_configs targets; tern needs at least one",
                    comment(&at("static_configs")),
                    job.at.0
                ));
            }
            for (field, kind) in SAME {
                // Prometheus's own defaults where tern's differ: a 1m interval.
                let value = job
                    .get(field)
                    .and_then(Node::text)
                    .map(str::to_string)
                    .or_else(|| match field {
                        "scrape_interval" => interval.clone().or_else(|| Some("1m".into())),
                        "scrape_timeout" => timeout.clone(),
                        _ => None,
                    });
                let Some(value) = value else { continue };
                let tern_name = match field {
                    "scrape_interval" => "interval",
                    "scrape_timeout" => "timeout",
                    other => other,
                };
                let written = match kind {
                    Kind::Text => string(&value),
                    Kind::Bool => boolean(&value),
                    Kind::Int => integer(&value),
                    Kind::Size => string(&base2(&value)),
                };
                let _ = writeln!(self.out, "{tern_name} = {written}");
            }
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{} = {}", key(k), string(v)))
                    .collect();
                let _ = writeln!(self.out, "labels = {{ {} }}", pairs.join(", "));
            }
            if let Some(Value::Map(params)) = job.get("params").map(|n| &n.value) {
                let pairs: Vec<String> = params
                    .iter()
                    .map(|(k, v)| {
                        let values: Vec<String> = match &v.value {
                            Value::Seq(items) => {
                                items.iter().filter_map(Node::text).map(string).collect()
                            }
                            Value::Text(t) => vec![string(t)],
                            _ => Vec::new(),
                        };
                        format!("{} = [{}]", key(k), values.join(", "))
                    })
                    .collect();
                let _ = writeln!(self.out, "params = {{ {} }}", pairs.join(", "));
            }
            if let Some(tls) = job.get("tls_config") {
                self.tls(tls, &at("tls_config"));
            }
            if g > 0 {
                let _ = writeln!(
                    self.out,
                    "\n[[scrape.relabel_configs]]    # the job label stays {}\ntarget_label = \"job\"\nreplacement = {}",
                    string(name),
                    string(name)
                );
            }
            for list in ["relabel_configs", "metric_relabel_configs"] {
                if let Some(Value::Seq(rules)) = job.get(list).map(|n| &n.value) {
                    for rule in rules {
                        self.rule(list, rule);
                    }
                }
            }
        }
        for (field, node) in fields {
            let known = field == "job_name"
                || field == "static_configs"
                || field == "params"
                || field == "tls_config"
                || field == "relabel_configs"
                || field == "metric_relabel_configs"
                || SAME.iter().any(|(f, _)| f == field);
            if !known {
                let why = if field.ends_with("_sd_configs") {
                    "tern scrapes static targets only"
                } else if matches!(
                    field.as_str(),
                    "basic_auth"
                        | "authorization"
                        | "bearer_token"
                        | "bearer_token_file"
                        | "oauth2"
                ) {
                    "tern does not authenticate to targets"
                } else {
                    "no tern equivalent"
                };
                self.skip(&at(field), node, why);
            }
        }
        Ok(())
    }

    fn tls(&mut self, tls: &Node, at: &str) {
        let Value::Map(fields) = &tls.value else {
            return;
        };
        let _ = writeln!(self.out, "\n[scrape.tls]");
        for (k, v) in fields {
            match k.as_str() {
                "ca_file" | "cert_file" | "key_file" => {
                    let _ = writeln!(self.out, "{k} = {}", string(v.text().unwrap_or("")));
                }
                "insecure_skip_verify" => {
                    let _ = writeln!(self.out, "{k} = {}", boolean(v.text().unwrap_or("false")));
                }
                other => self.skip(&format!("{at}.{other}"), v, "no tern equivalent"),
            }
        }
    }

    fn rule(&mut self, list: &str, rule: &Node) {
        let _ = writeln!(self.out, "\n[[scrape.{list}]]");
        let Value::Map(fields) = &rule.value else {
            return;
        };
        for name in RULE_FIELDS {
            let Some(node) = rule.get(name) else { continue };
            let value = match (&node.value, name) {
                (Value::Seq(items), _) => {
                    let items: Vec<String> =
                        items.iter().filter_map(Node::text).map(string).collect();
                    format!("[{}]", items.join(", "))
                }
                (Value::Text(t), "modulus") => integer(t),
                (Value::Text(t), "source_labels") => format!("[{}]", string(t)),
                (Value::Text(t), _) => string(t),
                (Value::Null, _) => continue,
                (Value::Map(_), _) => string(""),
            };
            let _ = writeln!(self.out, "{name} = {value}");
        }
        for (k, v) in fields {
            if !RULE_FIELDS.contains(&k.as_str()) {
                self.skip(&format!("{list}.{k}"), v, "not a relabel field");
            }
        }
    }
}

/// `s` fit for a TOML comment, which may hold no control character (a
/// newline in a YAML key would otherwise end the comment and start TOML).
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A TOML basic string.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A YAML boolean as TOML; anything else as a string, which `tern check`
/// then refuses with its place, rather than text that breaks the TOML.
fn boolean(v: &str) -> String {
    match v {
        "true" | "True" | "TRUE" => "true".into(),
        "false" | "False" | "FALSE" => "false".into(),
        other => string(other),
    }
}

/// A YAML integer as TOML; anything else as a string (see [`boolean`]).
fn integer(v: &str) -> String {
    v.parse::<i64>()
        .map_or_else(|_| string(v), |n| n.to_string())
}

/// A TOML key: bare when it can be.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        string(k)
    }
}

/// Prometheus's "16MB" (base 2) as tern's "16MiB".
fn base2(size: &str) -> String {
    for (prom, tern) in [("KB", "KiB"), ("MB", "MiB"), ("GB", "GiB"), ("TB", "TiB")] {
        if let Some(n) = size.strip_suffix(prom) {
            return format!("{n}{tern}");
        }
    }
    size.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prometheus_config_becomes_tern_toml_that_checks() {
        let yml = r#"
global:
  scrape_interval: 30s
  evaluation_interval: 15s
  external_labels:
    site: plant-7
rule_files: ["rules.yml"]
scrape_configs:
  - job_name: node
    scrape_timeout: 10s
    body_size_limit: 16MB
    sample_limit: 5000
    static_configs:
      - targets: ["127.0.0.1:9100"]
      - targets: ["10.0.0.2:9100"]
        labels: {rack: "b"}
    basic_auth: {username: u, password: p}
    metric_relabel_configs:
      - source_labels: [__name__, mode]
        regex: 'node_cpu_seconds_total;(idle|user)|[^;]*;'
        action: keep
      - source_labels: __name__
        regex: "go_.*"
        action: drop
  - job_name: snmp
    metrics_path: /snmp
    params:
      module: [if_mib]
    static_configs:
      - targets: [10.0.0.1]
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: 127.0.0.1:9116
    kubernetes_sd_configs: [{role: pod}]
"#;
        let toml = convert(Path::new("prometheus.yml"), yml).unwrap();
        for line in [
            "# not carried over: global.evaluation_interval (line 4): not a scrape setting",
            "# not carried over: rule_files (line 7): tern evaluates no rules",
            "# not carried over: scrape_configs[0].basic_auth (line 17): tern does not authenticate to targets",
            "# not carried over: scrape_configs[1].kubernetes_sd_configs (line 38): tern scrapes static targets only",
            "body_size_limit = \"16MiB\"",
            "interval = \"30s\"",
            "job = \"node-2\"",
            "labels = { rack = \"b\" }",
            "params = { module = [\"if_mib\"] }",
            "regex = \"node_cpu_seconds_total;(idle|user)|[^;]*;\"",
            "source_labels = [\"__name__\"]",
        ] {
            assert!(toml.contains(line), "{line:?} missing from:\n{toml}");
        }
        let config = super::super::Config::parse(Path::new("tern.toml"), &toml)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(config.scrape.len(), 3);
        let node2 = &config.scrape[1];
        assert_eq!(node2.targets[0].job, "node", "{toml}");
        assert_eq!(node2.interval, std::time::Duration::from_secs(30));
        assert_eq!(config.scrape[0].limits.sample_limit, 5000);
        assert_eq!(config.scrape[0].metric_relabel_configs.len(), 2);
        let snmp = &config.scrape[2];
        assert_eq!(
            snmp.targets[0].url,
            "http://127.0.0.1:9116/snmp?module=if_mib&target=10.0.0.1"
        );
        assert_eq!(
            config.resource.get("site").map(String::as_str),
            Some("plant-7")
        );
    }

    #[test]
    fn keys_with_control_characters_stay_inside_their_comment() {
        // Found by the convert fuzz target: a NUL in a key.
        let toml = convert(
            Path::new("p.yml"),
            "scrape_confi\0gs:\n  - a\n\"x\\ny\": 1\n",
        )
        .unwrap();
        super::super::Config::parse(Path::new("t.toml"), &toml)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert!(toml.contains("scrape_confi\\u{0}gs"), "{toml}");
    }

    #[test]
    fn values_of_the_wrong_kind_are_quoted_for_check_to_refuse() {
        // Found by the convert fuzz target: text after `label_limit:`.
        let toml = convert(
            Path::new("p.yml"),
            "scrape_configs:\n- job_name: a\n  label_limit: ` x: y\n  honor_labels: yes\n",
        )
        .unwrap();
        assert!(toml.contains("label_limit = \"` x: y\""), "{toml}");
        let e = super::super::Config::parse(Path::new("t.toml"), &toml).unwrap_err();
        assert!(!e.key.is_empty(), "{e}\n{toml}");
    }

    #[test]
    fn yaml_errors_name_the_file_line_and_column() {
        let e = convert(Path::new("p.yml"), "scrape_configs:\n  - job_name: &a x\n").unwrap_err();
        assert_eq!(e.to_string().split(": ").next(), Some("p.yml:2:15"));
    }
}
