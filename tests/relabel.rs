//! Relabeling with Prometheus as the oracle: Debian's Prometheus (server
//! mode) and tern scrape the same exporters (a real node_exporter and a
//! scripted one) with the same rules, written once as data and rendered as
//! prometheus.yml (JSON, which YAML reads) and as tern TOML. The series
//! Prometheus stored (its /api/v1/series) must be the series tern sent,
//! name and labels, exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tern::otlp::proto::metrics::v1::metric::Data;

use crate::harness::agent::Agent;
use crate::harness::exporter::{NodeExporter, ScriptedExporter};
use crate::harness::gateway::FakeGateway;
use crate::harness::spans::free_port;
use crate::harness::{attr, flatten, http_get, wait_for, TempDir};

/// A series: its labels, `__name__` included, sorted.
type Series = BTreeSet<(String, String)>;

/// The scripted exporter's body: every metric type, labels to rename,
/// exposed `job`/`instance` labels, an empty label value, 40 series to shard.
fn synthetic_body() -> Vec<u8> {
    let mut b = String::from(
        r#"# HELP app_requests_total Requests.
# TYPE app_requests_total counter
app_requests_total{method="GET",code="200",path="/api/v1/items"} 10
app_requests_total{method="POST",code="500",path="/api/v1/users"} 1
app_requests_total{method="get",code="404",path="/Health"} 3
# TYPE app_temperature_celsius gauge
app_temperature_celsius{sensor="cpu",zone="A"} 40
app_temperature_celsius{sensor="gpu",zone="b"} 50
app_temperature_celsius{sensor="disk",zone=""} 30
# TYPE app_latency_seconds histogram
app_latency_seconds_bucket{route="/a",le="0.5"} 1
app_latency_seconds_bucket{route="/a",le="1"} 2
app_latency_seconds_bucket{route="/a",le="+Inf"} 3
app_latency_seconds_sum{route="/a"} 2.5
app_latency_seconds_count{route="/a"} 3
app_latency_seconds_bucket{route="/b",le="0.5"} 0
app_latency_seconds_bucket{route="/b",le="1"} 0
app_latency_seconds_bucket{route="/b",le="+Inf"} 1
app_latency_seconds_sum{route="/b"} 4
app_latency_seconds_count{route="/b"} 1
# TYPE app_rpc_seconds summary
app_rpc_seconds{quantile="0.5"} 0.1
app_rpc_seconds{quantile="0.9"} 0.2
app_rpc_seconds_sum 5
app_rpc_seconds_count 20
# TYPE federated_up gauge
federated_up{job="remote",instance="10.0.0.9:9100"} 1
federated_up{job="remote",instance="10.0.0.8:9100",exported_instance="x"} 1
# TYPE app_info gauge
app_info{version="1.2.3",commit="abc"} 1
# TYPE app_pod gauge
app_pod{pod_label_app="web",pod_label_tier="front",pod="p1"} 1
# TYPE app_shard_items gauge
"#,
    );
    for i in 0..40 {
        b.push_str(&format!("app_shard_items{{item=\"item-{i}\"}} {i}\n"));
    }
    b.into_bytes()
}

/// One job, as data: its name, targets, and the settings and rules both
/// configs get.
struct Job {
    name: &'static str,
    targets: Vec<String>,
    labels: Option<Value>,
    honor_labels: bool,
    relabel: Vec<Value>,
    metric_relabel: Vec<Value>,
}

fn jobs(synthetic: SocketAddr, node: SocketAddr) -> Vec<Job> {
    let s = synthetic.to_string();
    vec![
        // Every action on samples, honor_labels off (exported_job, ...).
        Job {
            name: "rules",
            targets: vec![s.clone()],
            labels: None,
            honor_labels: false,
            relabel: vec![],
            metric_relabel: vec![
                json!({"source_labels": ["__name__"], "regex": "app_info", "action": "drop"}),
                json!({"source_labels": ["__name__"], "regex": "app_.*|federated_up", "action": "keep"}),
                json!({"source_labels": ["path"], "regex": "/api/v1/(.*)", "target_label": "resource", "replacement": "$1"}),
                json!({"source_labels": ["sensor"], "regex": "(.+)", "target_label": "sensor_${1}", "replacement": "yes"}),
                json!({"source_labels": ["method"], "target_label": "method", "action": "lowercase"}),
                json!({"source_labels": ["zone"], "target_label": "zone_upper", "action": "uppercase"}),
                json!({"source_labels": ["sensor"], "regex": "gpu", "target_label": "tag", "replacement": "B;gpu"}),
                json!({"source_labels": ["zone_upper", "sensor"], "target_label": "tag", "action": "dropequal"}),
                json!({"source_labels": ["code"], "target_label": "code2"}),
                json!({"source_labels": ["path"], "regex": "/Health", "target_label": "code2", "replacement": "other"}),
                json!({"source_labels": ["code"], "target_label": "code2", "action": "keepequal"}),
                json!({"regex": "pod_label_(.+)", "replacement": "k8s_$1", "action": "labelmap"}),
                json!({"regex": "pod_label_.*|route|code2", "action": "labeldrop"}),
                json!({"source_labels": ["__name__"], "regex": "app_latency_seconds_(.*)", "target_label": "__name__", "replacement": "app_lat_$1"}),
                json!({"source_labels": ["code"], "regex": "(\\d)\\d\\d", "target_label": "class", "replacement": "${1}xx"}),
                json!({"source_labels": ["nothing"], "regex": "x(.*)", "target_label": "never", "replacement": "$1"}),
            ],
        },
        // honor_labels: the exposed job and instance win.
        Job {
            name: "honor",
            targets: vec![s.clone()],
            labels: None,
            honor_labels: true,
            relabel: vec![],
            metric_relabel: vec![
                json!({"source_labels": ["__name__"], "regex": "federated_up|app_rpc_seconds.*", "action": "keep"}),
            ],
        },
        // hashmod sharding, then labelkeep to drop the shard label.
        Job {
            name: "shard",
            targets: vec![s.clone()],
            labels: None,
            honor_labels: false,
            relabel: vec![],
            metric_relabel: vec![
                json!({"source_labels": ["__name__"], "regex": "app_shard_items", "action": "keep"}),
                json!({"source_labels": ["item"], "modulus": 4, "target_label": "__tmp_shard", "action": "hashmod"}),
                json!({"source_labels": ["__tmp_shard"], "regex": "1|2", "action": "keep"}),
                json!({"regex": "__name__|job|instance|item", "action": "labelkeep"}),
            ],
        },
        // Target relabeling: one target dropped, the other renamed, a
        // label and a URL parameter added, the job's static label kept;
        // metric rules reading the target's labels.
        Job {
            name: "targets",
            targets: vec![s.clone(), "127.0.0.1:1".to_string()],
            labels: Some(json!({"site": "b"})),
            honor_labels: false,
            relabel: vec![
                json!({"source_labels": ["__address__"], "regex": "127\\.0\\.0\\.1:1", "action": "drop"}),
                json!({"source_labels": ["__address__"], "regex": "127\\.0\\.0\\.1:(\\d+)", "target_label": "instance", "replacement": "box-$1"}),
                json!({"target_label": "env", "replacement": "lab"}),
                json!({"target_label": "__param_module", "replacement": "if_mib"}),
                json!({"source_labels": ["job"], "target_label": "team", "replacement": "edge-$1"}),
            ],
            metric_relabel: vec![
                json!({"source_labels": ["__name__"], "regex": "app_temperature_celsius|app_rpc_seconds.*", "action": "keep"}),
                json!({"source_labels": ["env", "instance"], "separator": "/", "target_label": "where"}),
            ],
        },
        // node_exporter with five typical rules.
        Job {
            name: "node",
            targets: vec![node.to_string()],
            labels: None,
            honor_labels: false,
            relabel: vec![],
            metric_relabel: vec![
                json!({"source_labels": ["__name__"], "regex": "go_.*|promhttp_.*|process_.*", "action": "drop"}),
                json!({"source_labels": ["__name__", "mode"], "regex": "node_cpu_seconds_total;(idle|user)|[^;]*;", "action": "keep"}),
                json!({"regex": "machine|release|version", "action": "labeldrop"}),
                json!({"source_labels": ["__name__"], "regex": "node_(.*)_bytes", "target_label": "unit", "replacement": "bytes"}),
                json!({"source_labels": ["__name__"], "modulus": 2, "target_label": "shard", "action": "hashmod"}),
            ],
        },
    ]
}

fn prometheus_config(jobs: &[Job]) -> String {
    let scrape_configs: Vec<Value> = jobs
        .iter()
        .map(|j| {
            let mut static_config = json!({"targets": j.targets});
            if let Some(l) = &j.labels {
                static_config["labels"] = l.clone();
            }
            json!({
                "job_name": j.name,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "honor_labels": j.honor_labels,
                "static_configs": [static_config],
                "relabel_configs": j.relabel,
                "metric_relabel_configs": j.metric_relabel,
            })
        })
        .collect();
    json!({"scrape_configs": scrape_configs}).to_string()
}

/// A JSON value as TOML (inline tables and arrays).
fn toml_value(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

fn tern_config(jobs: &[Job], gateway: &str) -> String {
    let mut c = String::from("[agent]\nstate_dir = \"{state_dir}\"\nlisten = \"127.0.0.1:0\"\n\n");
    for j in jobs {
        c.push_str(&format!(
            "[[scrape]]\njob = \"{}\"\ntargets = {}\ninterval = \"1s\"\ntimeout = \"1s\"\nhonor_labels = {}\n",
            j.name,
            toml_value(&json!(j.targets)),
            j.honor_labels
        ));
        if let Some(l) = &j.labels {
            c.push_str(&format!("labels = {}\n", toml_value(l)));
        }
        c.push_str(&format!(
            "relabel_configs = {}\n",
            toml_value(&json!(j.relabel))
        ));
        c.push_str(&format!(
            "metric_relabel_configs = {}\n\n",
            toml_value(&json!(j.metric_relabel))
        ));
    }
    c.push_str(&format!(
        "[export]\nendpoints = [\"{gateway}\"]\n\n[export.retry]\ninitial_interval = \"100ms\"\nmax_interval = \"500ms\"\n"
    ));
    c
}

/// Series Prometheus adds itself, which tern names differently or not at all.
fn is_synthetic(series: &Series) -> bool {
    series
        .iter()
        .any(|(n, v)| n == "__name__" && (v == "up" || v.starts_with("scrape_")))
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(config: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let addr = free_port();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is not installed: run the README's test command (scripts/test), which installs it");
        wait_for(
            Duration::from_secs(30),
            || http_get(addr, "/-/ready").filter(|(s, _)| *s == 200),
            || "prometheus did not get ready".into(),
        );
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Every series Prometheus stored.
    fn series(&self) -> BTreeSet<Series> {
        let (status, body) = http_get(
            self.addr,
            "/api/v1/series?match%5B%5D=%7B__name__%3D~%22.%2B%22%7D",
        )
        .expect("query prometheus");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s.as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .filter(|s| !is_synthetic(s))
            .collect()
    }

    /// The jobs Prometheus has scraped at least `n` times, from its own
    /// `prometheus_target_interval_length_seconds_count`... simpler: from
    /// the `up` series it holds.
    fn scraped_jobs(&self) -> BTreeSet<String> {
        let (_, body) = http_get(self.addr, "/api/v1/query?query=up%3D%3D1").unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|s| s["metric"]["job"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The series tern sent, as Prometheus would name them: a point's
/// attributes, `job` and `instance` from the resource (a point's own win),
/// the target's labels from the resource; histograms and summaries as their
/// `_bucket`/quantile, `_sum` and `_count` series.
fn tern_series(gateway: &FakeGateway) -> BTreeSet<Series> {
    let mut out = BTreeSet::new();
    for (resource, metric) in flatten(&gateway.delivered()) {
        let mut base: BTreeMap<String, String> = BTreeMap::new();
        for kv in &resource {
            let skip = [
                "service.name",
                "service.instance.id",
                "server.address",
                "server.port",
                "url.scheme",
            ];
            if !skip.contains(&kv.key.as_str()) {
                base.insert(kv.key.clone(), attr(&resource, &kv.key).unwrap().into());
            }
        }
        base.insert(
            "job".into(),
            attr(&resource, "service.name").unwrap().into(),
        );
        base.insert(
            "instance".into(),
            attr(&resource, "service.instance.id").unwrap().into(),
        );
        let with = |attrs: &[tern::otlp::proto::common::v1::KeyValue],
                    name: String,
                    extra: Option<(&str, String)>| {
            let mut labels = base.clone();
            for kv in attrs {
                labels.insert(kv.key.clone(), attr(attrs, &kv.key).unwrap().into());
            }
            labels.insert("__name__".into(), name);
            if let Some((k, v)) = extra {
                labels.insert(k.into(), v);
            }
            labels.into_iter().collect::<Series>()
        };
        let name = metric.name.clone();
        match &metric.data {
            Some(Data::Gauge(g)) => {
                for p in &g.data_points {
                    out.insert(with(&p.attributes, name.clone(), None));
                }
            }
            Some(Data::Sum(s)) => {
                for p in &s.data_points {
                    out.insert(with(&p.attributes, name.clone(), None));
                }
            }
            Some(Data::Histogram(h)) => {
                for p in &h.data_points {
                    for b in &p.explicit_bounds {
                        out.insert(with(
                            &p.attributes,
                            format!("{name}_bucket"),
                            Some(("le", b.to_string())),
                        ));
                    }
                    out.insert(with(
                        &p.attributes,
                        format!("{name}_bucket"),
                        Some(("le", "+Inf".into())),
                    ));
                    out.insert(with(&p.attributes, format!("{name}_sum"), None));
                    out.insert(with(&p.attributes, format!("{name}_count"), None));
                }
            }
            Some(Data::Summary(s)) => {
                for p in &s.data_points {
                    for q in &p.quantile_values {
                        out.insert(with(
                            &p.attributes,
                            name.clone(),
                            Some(("quantile", q.quantile.to_string())),
                        ));
                    }
                    out.insert(with(&p.attributes, format!("{name}_sum"), None));
                    out.insert(with(&p.attributes, format!("{name}_count"), None));
                }
            }
            _ => {}
        }
    }
    out.into_iter().filter(|s| !is_synthetic(s)).collect()
}

fn show(set: &BTreeSet<Series>) -> String {
    set.iter()
        .map(|s| {
            let labels: Vec<String> = s.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("  {{{}}}", labels.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn relabeled_series_are_the_series_prometheus_stores() {
    oracle(|jobs, _, gateway| tern_config(jobs, gateway));
}

/// The same, with tern's config made by `tern convert` from Prometheus's.
#[test]
fn a_converted_prometheus_config_stores_the_same_series() {
    oracle(|_, prometheus_yml, gateway| {
        let dir = TempDir::new("convert");
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, prometheus_yml).unwrap();
        let out = crate::harness::agent::tern_command()
            .arg("convert")
            .arg(&file)
            .output()
            .unwrap();
        let converted = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!converted.contains("not carried over"), "{converted}");
        format!(
            "{converted}\n[agent]\nstate_dir = \"{{state_dir}}\"\nlisten = \"127.0.0.1:0\"\n\n[export]\nendpoints = [\"{gateway}\"]\n"
        )
    });
}

/// Runs Prometheus and tern (with the config `tern_config` makes from the
/// jobs, prometheus.yml and the gateway's URL) and compares their series.
fn oracle(tern_config: impl Fn(&[Job], &str, &str) -> String) {
    let body = synthetic_body();
    let synthetic =
        ScriptedExporter::start(move |_| (200, "text/plain; version=0.0.4", body.clone()));
    let node = NodeExporter::start();
    let jobs = jobs(synthetic.addr, node.addr);
    let gateway = FakeGateway::start();
    let prometheus_yml = prometheus_config(&jobs);
    let prometheus = Prometheus::start(&prometheus_yml);
    let agent = Agent::start(&tern_config(&jobs, &prometheus_yml, &gateway.url()));

    // Both have scraped every job a few times (the target tern and
    // Prometheus drop is never scraped: not in `up`).
    let names: BTreeSet<String> = jobs.iter().map(|j| j.name.to_string()).collect();
    wait_for(
        Duration::from_secs(30),
        || (prometheus.scraped_jobs() == names).then_some(()),
        || format!("prometheus scraped only {:?}", prometheus.scraped_jobs()),
    );
    std::thread::sleep(Duration::from_secs(3));
    let want = prometheus.series();
    let got = wait_for(
        Duration::from_secs(20),
        || {
            let got = tern_series(&gateway);
            (got == want).then_some(got)
        },
        || {
            let got = tern_series(&gateway);
            format!(
                "tern sent but Prometheus did not store:\n{}\nPrometheus stored but tern did not send:\n{}\n\ntern:\n{}",
                show(&got.difference(&want).cloned().collect()),
                show(&want.difference(&got).cloned().collect()),
                agent.stderr()
            )
        },
    );
    // What the rules were for, in case both agreed on nothing.
    let has = |name: &str, label: (&str, &str)| {
        got.iter().any(|s| {
            (s.contains(&("job".into(), "rules".into())) || name == "federated_up")
                && s.contains(&("__name__".into(), name.into()))
                && s.contains(&(label.0.into(), label.1.into()))
        })
    };
    assert!(has("app_lat_bucket", ("le", "+Inf")), "renamed histogram");
    assert!(
        has("app_requests_total", ("class", "5xx")),
        "replace with groups"
    );
    assert!(has("app_requests_total", ("method", "post")), "lowercase");
    assert!(
        has("app_temperature_celsius", ("zone_upper", "A")),
        "uppercase"
    );
    assert!(
        has("app_temperature_celsius", ("sensor_cpu", "yes")),
        "templated target"
    );
    assert!(
        !has("app_temperature_celsius", ("sensor", "gpu")),
        "dropequal"
    );
    assert!(!has("app_requests_total", ("path", "/Health")), "keepequal");
    assert!(has("app_rpc_seconds", ("quantile", "0.9")), "summary");
    // The scraped instance, renamed past the scraped exported_instance.
    assert!(has(
        "federated_up",
        ("exported_exported_instance", "10.0.0.8:9100")
    ));
    assert!(
        has("federated_up", ("instance", "10.0.0.9:9100")),
        "honor_labels"
    );
    assert!(has("app_pod", ("k8s_app", "web")), "labelmap");
    let place = format!("lab/box-{}", synthetic.addr.port());
    assert!(
        got.iter()
            .any(|s| s.contains(&("where".into(), place.clone()))
                && s.contains(&("site".into(), "b".into()))
                && s.contains(&("team".into(), "edge-targets".into()))),
        "target relabeling"
    );
    let shards = got
        .iter()
        .filter(|s| s.contains(&("job".into(), "shard".into())))
        .count();
    assert!(shards > 5 && shards < 35, "hashmod kept {shards} of 40");
    assert!(got
        .iter()
        .any(|s| s.contains(&("job".into(), "node".into()))
            && s.contains(&("__name__".into(), "node_cpu_seconds_total".into()))));
}

#[test]
fn a_scrape_over_sample_limit_fails_whole_with_its_reason() {
    let exporter = ScriptedExporter::start(|n| {
        // Two samples, then three from the third scrape on.
        let body = if n < 2 {
            "a 1\nb 1\n"
        } else {
            "a 1\nb 1\nc 1\n"
        };
        (200, "text/plain; version=0.0.4", body.as_bytes().to_vec())
    });
    let gateway = FakeGateway::start();
    let config = format!(
        "[agent]\nstate_dir = \"{{state_dir}}\"\nlisten = \"127.0.0.1:0\"\n\n[[scrape]]\njob = \"limited\"\ntargets = [\"{}\"]\ninterval = \"200ms\"\nsample_limit = 2\n\n[export]\nendpoints = [\"{}\"]\n",
        exporter.addr,
        gateway.url()
    );
    let agent = Agent::start(&config);
    let series =
        r#"tern_scrapes_total{job="limited",instance="ADDR",result="sample_limit_exceeded"}"#
            .replace("ADDR", &exporter.addr.to_string());
    wait_for(
        Duration::from_secs(20),
        || agent.metric(&series).filter(|v| *v >= 2.0),
        || agent.metrics(),
    );
    let ok = r#"tern_scrapes_total{job="limited",instance="ADDR",result="ok"}"#
        .replace("ADDR", &exporter.addr.to_string());
    assert_eq!(agent.metric(&ok), Some(2.0), "{}", agent.metrics());
    // The refused scrapes sent `up` 0 and no samples; the good ones `up` 1.
    let ups = wait_for(
        Duration::from_secs(10),
        || {
            let ups: Vec<f64> = flatten(&gateway.delivered())
                .iter()
                .filter(|(_, m)| m.name == "up")
                .flat_map(|(_, m)| crate::harness::values(m))
                .collect();
            (ups.len() >= 4).then_some(ups)
        },
        || "no up series".into(),
    );
    assert_eq!(&ups[..2], &[1.0, 1.0]);
    assert!(ups[2..].iter().all(|v| *v == 0.0), "{ups:?}");
    let c_sent = flatten(&gateway.delivered())
        .iter()
        .any(|(_, m)| m.name == "c" && crate::harness::values(m).iter().any(|v| !v.is_nan()));
    assert!(!c_sent, "a sample of a refused scrape was sent");
    assert!(
        agent.stderr().contains("more than sample_limit 2"),
        "{}",
        agent.stderr()
    );
}
