//! Load balancing: the balance of rendezvous hashing next to a ring with
//! virtual nodes (standard deviation of the gateways' shares over the mean,
//! and the worst share) for N = 2 to 16 gateways over 10k and 100k keys, the
//! fraction of keys that move when a gateway joins or leaves, and the routing
//! cost per span and per point on the sink's path.
//!
//! Run: `cargo bench -p tern --bench balance`.

use std::time::Instant;

use prost::Message;
use tern::config::{Routing, RoutingKey};
use tern::otlp::encode;
use tern::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tern::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tern::otlp::proto::metrics::v1::{
    metric, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use tern::otlp::proto::resource::v1::Resource;
use tern::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tern::queue::Signal;
use tern::route::split::{split, Split};
use tern::route::{key_hash, mix, Table};

fn gateways(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://10.0.{}.{}:4318", i / 250, i % 250 + 1))
        .collect()
}

/// A ring with `vnodes` points per gateway, the upstream loadbalancing
/// exporter's structure, for comparison.
struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn new(gws: &[String], vnodes: usize) -> Ring {
        let mut points = Vec::new();
        for (g, name) in gws.iter().enumerate() {
            for v in 0..vnodes {
                points.push((key_hash(format!("{name}#{v}").as_bytes()), g));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    fn pick(&self, key: u64) -> usize {
        let i = self.points.partition_point(|(p, _)| *p < key);
        self.points
            .get(i)
            .or(self.points.first())
            .map_or(0, |(_, g)| *g)
    }
}

fn stats(counts: &[usize]) -> (f64, f64) {
    let n = counts.len() as f64;
    let mean = counts.iter().sum::<usize>() as f64 / n;
    let var = counts
        .iter()
        .map(|c| (*c as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let worst = counts
        .iter()
        .map(|c| (*c as f64 - mean).abs() / mean)
        .fold(0.0, f64::max);
    (var.sqrt() / mean, worst)
}

fn balance(keys: &[u64]) {
    println!(
        "\n## balance over {} keys: stddev/mean (worst share off the mean)",
        keys.len()
    );
    println!("| N | rendezvous | ring 100 vnodes | ring 1000 vnodes |");
    println!("| --- | --- | --- | --- |");
    for n in 2..=16 {
        let gws = gateways(n);
        let table = Table::new(&gws, Routing::default());
        let mut hrw = vec![0usize; n];
        for k in keys {
            hrw[table.pick(*k).unwrap_or(0)] += 1;
        }
        let mut cells = vec![stats(&hrw)];
        for v in [100, 1000] {
            let ring = Ring::new(&gws, v);
            let mut c = vec![0usize; n];
            for k in keys {
                c[ring.pick(*k)] += 1;
            }
            cells.push(stats(&c));
        }
        let cells: Vec<String> = cells
            .iter()
            .map(|(sd, w)| format!("{:.2}% ({:.2}%)", sd * 100.0, w * 100.0))
            .collect();
        println!("| {n} | {} |", cells.join(" | "));
    }
}

fn moved(keys: &[u64]) {
    println!("\n## keys moved when one gateway joins (N-1 -> N) or leaves (N -> N-1), rendezvous");
    println!("| N | joins | leaves | 1/N |");
    println!("| --- | --- | --- | --- |");
    for n in 2..=16 {
        let all = Table::new(&gateways(n), Routing::default());
        let less = Table::new(&gateways(n - 1), Routing::default());
        // Leaving: the middle gateway, so the order of the list is no help.
        let mut without_mid = gateways(n);
        without_mid.remove(n / 2);
        let left = Table::new(&without_mid, Routing::default());
        let joins = keys
            .iter()
            .filter(|k| {
                let a = less.pick(**k).map(|g| &less.members[g].destination);
                let b = all.pick(**k).map(|g| &all.members[g].destination);
                a != b
            })
            .count();
        let leaves = keys
            .iter()
            .filter(|k| {
                let a = all.pick(**k).map(|g| &all.members[g].destination);
                let b = left.pick(**k).map(|g| &left.members[g].destination);
                a != b
            })
            .count();
        let f = |c: usize| c as f64 * 100.0 / keys.len() as f64;
        println!(
            "| {n} | {:.2}% | {:.2}% | {:.2}% |",
            f(joins),
            f(leaves),
            100.0 / n as f64
        );
    }
}

fn traces(spans: u64, traces: u64) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![tern::otlp::kv("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: mix(i % traces).to_be_bytes().repeat(2),
                        span_id: i.to_be_bytes().to_vec(),
                        name: "GET /api/v1/items".into(),
                        start_time_unix_nano: 1_700_000_000_000_000_000 + i,
                        end_time_unix_nano: 1_700_000_000_000_100_000 + i,
                        attributes: vec![tern::otlp::kv("http.route", "/api/v1/items")],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn scrape(points: u64) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    tern::otlp::kv("service.name", "node"),
                    tern::otlp::kv("service.instance.id", "127.0.0.1:9100"),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: (0..points / 10)
                    .map(|m| Metric {
                        name: format!("node_metric_{m}"),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: (0..10)
                                .map(|c| NumberDataPoint {
                                    attributes: vec![tern::otlp::kv("cpu", c.to_string())],
                                    ..Default::default()
                                })
                                .collect(),
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn time(label: &str, items: u64, rounds: u32, f: impl Fn() -> Split) {
    let started = Instant::now();
    let mut parts = 0;
    for _ in 0..rounds {
        parts = match f() {
            Split::Whole(_) => 1,
            Split::Parts(p) => p.len(),
        };
    }
    let per = started.elapsed().as_secs_f64() / f64::from(rounds) / items as f64;
    println!("| {label} | {parts} | {:.3} us |", per * 1e6);
}

fn cost() {
    println!("\n## routing cost on the sink's path (gunzip, decode, group, re-encode, gzip)");
    println!("| batch | parts | per item |");
    println!("| --- | --- | --- |");
    let three = Table::new(&gateways(3), Routing::default());
    let one = Table::new(&gateways(1), Routing::default());
    let t = encode(&traces(1000, 500)).payload;
    time("1000 spans of 500 traces, 1 gateway", 1000, 50, || {
        split(&one, Signal::Traces, &t)
    });
    time(
        "1000 spans of 500 traces, traceID, 3 gateways",
        1000,
        50,
        || split(&three, Signal::Traces, &t),
    );
    let t1 = encode(&traces(1000, 1)).payload;
    time(
        "1000 spans of 1 trace, traceID, 3 gateways",
        1000,
        50,
        || split(&three, Signal::Traces, &t1),
    );
    let m = encode(&scrape(2000)).payload;
    time(
        "scrape of 2000 points, resource, 3 gateways",
        2000,
        50,
        || split(&three, Signal::Metrics, &m),
    );
    let stream = Table::new(
        &gateways(3),
        Routing {
            metrics: RoutingKey::StreamId,
            ..Routing::default()
        },
    );
    time(
        "scrape of 2000 points, streamID, 3 gateways",
        2000,
        20,
        || split(&stream, Signal::Metrics, &m),
    );
    let started = Instant::now();
    for _ in 0..50 {
        let _ = encode(&traces(1000, 500)).payload.len();
    }
    println!(
        "\nfor scale: building, encoding and gzipping the 1000-span batch itself: {:.3} us per span",
        started.elapsed().as_secs_f64() / 50.0 / 1000.0 * 1e6
    );
    let _ = traces(1, 1).encoded_len();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for n in [10_000u64, 100_000] {
        let keys: Vec<u64> = (0..n)
            .map(|i| key_hash(&mix(i).to_be_bytes().repeat(2)))
            .collect();
        balance(&keys);
        if n == 100_000 {
            moved(&keys);
        }
    }
    cost();
}
