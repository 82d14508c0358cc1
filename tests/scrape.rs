//! A real node_exporter, scraped every second and forwarded to the test gateway.

use std::collections::BTreeMap;
use std::time::Duration;

use tern::otlp::proto::metrics::v1::{metric, AggregationTemporality};

use crate::harness::exporter::NodeExporter;
use crate::harness::{attr, config, flatten, http_get, wait_for, Agent, FakeGateway};

#[test]
fn node_exporter_families_arrive_with_type_unit_and_attributes() {
    let node = NodeExporter::start();
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config("node", node.addr, "1s", &gateway.url()));

    // What node_exporter exposes, by family name and type, read from its own text.
    let (_, text) = http_get(node.addr, "/metrics").unwrap();
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            families.insert(
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            );
        }
    }
    assert!(
        families.len() > 100,
        "node_exporter should expose many families: {}",
        families.len()
    );

    let metrics = wait_for(
        Duration::from_secs(20),
        || {
            let m = flatten(&gateway.delivered());
            let names: std::collections::BTreeSet<_> =
                m.iter().map(|(_, m)| m.name.clone()).collect();
            (names.contains("node_cpu_seconds_total") && names.contains("up")).then_some(m)
        },
        || agent.diagnostics(),
    );
    let by_name: BTreeMap<&str, _> = metrics
        .iter()
        .map(|(r, m)| (m.name.as_str(), (r, m)))
        .collect();

    let mut missing = Vec::new();
    for (name, kind) in &families {
        let Some((resource, m)) = by_name.get(name.as_str()) else {
            missing.push(name.clone());
            continue;
        };
        assert_eq!(attr(resource, "service.name"), Some("node"), "{name}");
        assert_eq!(
            attr(resource, "service.instance.id"),
            Some(node.addr.to_string().as_str()),
            "{name}"
        );
        match (kind.as_str(), &m.data) {
            ("counter", Some(metric::Data::Sum(s))) => {
                assert!(s.is_monotonic, "{name}");
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32,
                    "{name}"
                );
            }
            ("gauge" | "untyped", Some(metric::Data::Gauge(_))) => {}
            ("histogram", Some(metric::Data::Histogram(h))) => {
                let p = &h.data_points[0];
                assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1, "{name}");
            }
            ("summary", Some(metric::Data::Summary(_))) => {}
            (k, d) => panic!("{name}: exposed as {k}, arrived as {d:?}"),
        }
        assert!(!m.description.is_empty(), "{name} lost its HELP");
    }
    // A family can appear between two scrapes (node_exporter adds some lazily);
    // what matters is that nothing systematic is missing.
    assert!(
        missing.len() <= 3,
        "families that never arrived: {missing:?}"
    );

    // Attributes: every CPU time series carries cpu and mode, and not job/instance.
    let (_, cpu) = by_name["node_cpu_seconds_total"];
    let Some(metric::Data::Sum(s)) = &cpu.data else {
        panic!()
    };
    for p in &s.data_points {
        assert!(
            attr(&p.attributes, "cpu").is_some() && attr(&p.attributes, "mode").is_some(),
            "{p:?}"
        );
        assert!(attr(&p.attributes, "job").is_none() && attr(&p.attributes, "instance").is_none());
    }
    // Synthetic series, as Prometheus has them.
    let up = crate::harness::values(by_name["up"].1);
    assert_eq!(up, vec![1.0]);
    assert!(by_name.contains_key("scrape_duration_seconds"));
    assert!(by_name.contains_key("scrape_samples_scraped"));

    // Self metrics report the target and the deliveries.
    let labels = format!("{{job=\"node\",instance=\"{}\"}}", node.addr);
    assert_eq!(agent.metric(&format!("tern_scrape_up{labels}")), Some(1.0));
    let sent = agent.metric(&format!(
        "tern_export_sent_batches_total{{endpoint=\"{}\",signal=\"metrics\"}}",
        gateway.url()
    ));
    assert!(sent.unwrap_or(0.0) >= 1.0, "{}", agent.metrics());
    // Wire format: gzip protobuf to /v1/metrics.
    let r = &gateway.received()[0];
    assert_eq!(r.path, "/v1/metrics");
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v == "gzip"));
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/x-protobuf"));
}

use crate::harness::exporter::ScriptedExporter;
use crate::harness::tls::TlsProxy;
use crate::harness::values;
use tern::otlp::proto::metrics::v1::DataPointFlags;

#[test]
fn https_targets_and_gateways_with_a_private_ca() {
    let exporter =
        ScriptedExporter::start(|n| (200, "text/plain", format!("over_tls {n}\n").into_bytes()));
    let gateway = FakeGateway::start();
    let (scrape_tls, export_tls) = (
        TlsProxy::start(exporter.addr),
        TlsProxy::start(gateway.addr),
    );
    let dir = crate::harness::TempDir::new("tls");
    let ca = dir.path().join("ca.pem");
    let ca2 = dir.path().join("ca2.pem");
    std::fs::write(&ca, &scrape_tls.ca_pem).unwrap();
    std::fs::write(&ca2, &export_tls.ca_pem).unwrap();
    let cfg = format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[[scrape]]
job = "tls"
targets = ["https://localhost:{}/metrics"]
interval = "500ms"
tls = {{ ca_file = "{}" }}

[[scrape]]
job = "untrusted"
targets = ["localhost:{}"]
scheme = "https"
interval = "500ms"

[export]
endpoints = ["https://localhost:{}"]
tls = {{ ca_file = "{}" }}
"#,
        scrape_tls.addr.port(),
        ca.display(),
        scrape_tls.addr.port(),
        export_tls.addr.port(),
        ca2.display()
    );
    let agent = Agent::start_in(dir, &cfg);
    wait_for(
        Duration::from_secs(20),
        || {
            flatten(&gateway.delivered())
                .iter()
                .any(|(_, m)| m.name == "over_tls")
                .then_some(())
        },
        || agent.diagnostics(),
    );
    // Without the CA, the certificate is refused: the scrape fails, it does not skip verification.
    let untrusted = format!(
        "tern_scrapes_total{{job=\"untrusted\",instance=\"localhost:{}\",result=\"http_error\"}}",
        scrape_tls.addr.port()
    );
    wait_for(
        Duration::from_secs(10),
        || agent.metric(&untrusted),
        || agent.metrics(),
    );
    assert!(
        agent.stderr().contains("job=untrusted"),
        "{}",
        agent.stderr()
    );
}

#[test]
fn gzip_bodies_are_accepted_and_vanished_series_get_a_stale_point() {
    use std::io::Write;
    // Scrapes 0-2 expose two series; from scrape 3 on `b` is gone; scrape 6 fails.
    let exporter = ScriptedExporter::start(|n| {
        let text = if n < 3 {
            "# TYPE g gauge\ng{s=\"a\"} 1\ng{s=\"b\"} 2\n"
        } else {
            "# TYPE g gauge\ng{s=\"a\"} 1\n"
        };
        if n == 6 {
            return (500, "text/plain", Vec::new());
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        (
            200,
            "text/plain; version=0.0.4\r\nContent-Encoding: gzip",
            gz.finish().unwrap(),
        )
    });
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config("stale", exporter.addr, "300ms", &gateway.url()));
    let points = || -> Vec<(String, u32, Vec<f64>)> {
        let mut out = Vec::new();
        for (_, m) in flatten(&gateway.delivered())
            .iter()
            .filter(|(_, m)| m.name == "g")
        {
            let Some(metric::Data::Gauge(g)) = &m.data else {
                panic!("{m:?}")
            };
            for p in &g.data_points {
                out.push((
                    attr(&p.attributes, "s").unwrap().to_string(),
                    p.flags,
                    values(&tern::otlp::proto::metrics::v1::Metric {
                        data: Some(metric::Data::Gauge(tern::otlp::proto::metrics::v1::Gauge {
                            data_points: vec![p.clone()],
                        })),
                        ..Default::default()
                    }),
                ));
            }
        }
        out
    };
    let got = wait_for(
        Duration::from_secs(20),
        || {
            let p = points();
            (p.iter().filter(|(s, f, _)| s == "a" && *f != 0).count() >= 1).then_some(p)
        },
        || format!("{:?}\n{}", points(), agent.diagnostics()),
    );
    let stale = DataPointFlags::NoRecordedValueMask as u32;
    let b_stale: Vec<_> = got
        .iter()
        .filter(|(s, f, _)| s == "b" && *f == stale)
        .collect();
    assert_eq!(
        b_stale.len(),
        1,
        "series b vanished once and is marked stale once: {got:?}"
    );
    let a_stale: Vec<_> = got
        .iter()
        .filter(|(s, f, _)| s == "a" && *f == stale)
        .collect();
    assert_eq!(a_stale.len(), 1, "the failed scrape marks a stale: {got:?}");
    assert!(got
        .iter()
        .filter(|(_, f, _)| *f == 0)
        .all(|(_, _, v)| v == &vec![1.0] || v == &vec![2.0]));
}

/// `target_info` labels become resource attributes of every batch of the
/// scrape, also when the family comes after others and after the first
/// batch was cut (the body is parsed as it arrives, not read ahead).
#[test]
fn target_info_after_many_series_still_labels_every_batch() {
    let mut body = String::from("# TYPE a_metric gauge\n");
    for i in 0..12_000 {
        body.push_str(&format!("a_metric{{i=\"{i}\"}} {i}\n"));
    }
    body.push_str("# TYPE target_info gauge\ntarget_info{job=\"x\",instance=\"y\",service_version=\"1.2.3\",deployment=\"lab\"} 1\n");
    let body = body.into_bytes();
    let exporter =
        ScriptedExporter::start(move |_| (200, "text/plain; version=0.0.4", body.clone()));
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config("info", exporter.addr, "1s", &gateway.url()));
    let delivered = wait_for(
        Duration::from_secs(20),
        || {
            let d = gateway.delivered();
            let points: usize = flatten(&d)
                .iter()
                .filter(|(_, m)| m.name == "a_metric")
                .map(|(_, m)| values(m).len())
                .sum();
            (points >= 12_000).then_some(d)
        },
        || agent.diagnostics(),
    );
    // Batches may share a request (a coalesced backlog): each keeps its
    // resource, so count those.
    let batches: Vec<_> = delivered
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .filter(|rm| {
            rm.scope_metrics
                .iter()
                .flat_map(|s| &s.metrics)
                .any(|m| m.name == "a_metric")
        })
        .collect();
    assert!(batches.len() >= 2, "12,000 points make two batches or more");
    for rm in &batches {
        {
            let attrs = &rm.resource.as_ref().unwrap().attributes;
            assert_eq!(attr(attrs, "service_version"), Some("1.2.3"), "{attrs:?}");
            assert_eq!(attr(attrs, "deployment"), Some("lab"));
            assert_eq!(
                attr(attrs, "service.name"),
                Some("info"),
                "job stays the job"
            );
        }
    }
    assert!(
        !flatten(&delivered)
            .iter()
            .any(|(_, m)| m.name == "target_info"),
        "target_info is no metric of its own"
    );
}
