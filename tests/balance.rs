//! Load balancing across gateways ([export] with several endpoints or dns):
//! traces sent through the OTLP receiver split by trace id over three test
//! gateways, membership changes by SIGHUP and by DNS, a gateway down with and
//! without failover, and metrics routed by resource and by stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tern::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tern::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tern::otlp::proto::common::v1::KeyValue;
use tern::otlp::proto::metrics::v1::{
    metric, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use tern::otlp::proto::resource::v1::Resource;
use tern::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::harness::{receiver_config, wait_for, Agent, FakeGateway};

/// A config with the receiver on a free port and `export` lines.
fn config(export: &str) -> String {
    receiver_config("", "", export)
}

fn endpoints(gateways: &[&FakeGateway]) -> String {
    let urls: Vec<String> = gateways
        .iter()
        .map(|g| format!("\"{}\"", g.url()))
        .collect();
    format!("endpoints = [{}]", urls.join(", "))
}

/// POSTs a protobuf body; returns the status.
fn post(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn trace_id(i: u64) -> Vec<u8> {
    let mut id = i.to_be_bytes().to_vec();
    id.extend_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
    id
}

/// Sends traces `ids`, two spans each, named `<round>/<i>/<j>`, 500 traces
/// per request, from a few services.
fn send_traces(addr: SocketAddr, round: &str, ids: std::ops::Range<u64>) {
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(500) {
        let mut resource_spans = Vec::new();
        for service in 0..3u64 {
            let spans: Vec<Span> = chunk
                .iter()
                .filter(|i| *i % 3 == service)
                .flat_map(|i| {
                    (0..2).map(move |j| Span {
                        trace_id: trace_id(*i),
                        span_id: vec![1, 2, 3, 4, 5, 6, 7, j],
                        name: format!("{round}/{i}/{j}"),
                        ..Default::default()
                    })
                })
                .collect();
            resource_spans.push(ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![tern::otlp::kv("service.name", format!("svc-{service}"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let body = ExportTraceServiceRequest { resource_spans }.encode_to_vec();
        assert_eq!(post(addr, "/v1/traces", &body), 200);
    }
}

/// Span names and trace ids a gateway got, per round: round -> trace index ->
/// span count.
fn spans_of(g: &FakeGateway) -> Vec<(String, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for r in g.delivered_traces() {
        for rs in r.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let mut parts = s.name.split('/');
                    let round = parts.next().unwrap_or("").to_string();
                    let i: u64 = parts
                        .next()
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(u64::MAX);
                    out.push((round, i, s.trace_id));
                }
            }
        }
    }
    out
}

/// Waits until the gateways hold `want` spans of `round` in total, then
/// checks: no span twice, every trace on one gateway. Returns the gateway
/// index of each trace.
fn collect(
    gateways: &[&FakeGateway],
    round: &str,
    want: usize,
    agent: &Agent,
) -> HashMap<u64, usize> {
    let count = || {
        gateways
            .iter()
            .map(|g| spans_of(g).iter().filter(|s| s.0 == round).count())
            .sum::<usize>()
    };
    wait_for(
        Duration::from_secs(40),
        || (count() >= want).then_some(()),
        || {
            format!(
                "{} of {want} spans of {round}\n{}",
                count(),
                agent.diagnostics()
            )
        },
    );
    let mut owner: HashMap<u64, usize> = HashMap::new();
    let mut seen: HashSet<(u64, usize)> = HashSet::new();
    let mut total = 0;
    for (gi, g) in gateways.iter().enumerate() {
        let mut names = HashSet::new();
        for (r, i, _) in spans_of(g).into_iter().filter(|s| s.0 == round) {
            total += 1;
            names.insert(i);
            let o = *owner.entry(i).or_insert(gi);
            assert_eq!(
                o, gi,
                "trace {i} of {round} split over gateways {o} and {gi}"
            );
            let _ = r;
        }
        for i in names {
            seen.insert((i, gi));
        }
    }
    assert_eq!(total, want, "spans of {round} lost or duplicated");
    owner
}

fn shares(owner: &HashMap<u64, usize>, n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for g in owner.values() {
        c[*g] += 1;
    }
    c
}

#[test]
fn traces_balance_over_three_gateways() {
    let gws = [
        FakeGateway::start(),
        FakeGateway::start(),
        FakeGateway::start(),
    ];
    let refs: Vec<&FakeGateway> = gws.iter().collect();
    let agent = Agent::start(&config(&endpoints(&refs)));
    let addr = agent.receiver_addr();
    let n = 20_000u64;
    send_traces(addr, "a", 0..n);
    let owner = collect(&refs, "a", 2 * n as usize, &agent);
    let c = shares(&owner, 3);
    let mean = n as f64 / 3.0;
    let worst = c
        .iter()
        .map(|x| (*x as f64 - mean).abs() / mean)
        .fold(0.0, f64::max);
    println!(
        "traces per gateway over {n} trace ids: {c:?}, worst deviation from the mean {:.2}%",
        worst * 100.0
    );
    assert!(worst < 0.05, "{c:?}");
    // Every gateway has its own sender thread and connection.
    for g in &gws {
        let conns: HashSet<_> = g.received().iter().map(|r| r.path.clone()).collect();
        assert!(!conns.is_empty());
    }
}

/// Common to the SIGHUP and DNS membership tests: `gone` is down (refusing
/// connections) while round a is sent, then leaves the set by `leave`; its
/// queued share must reach the others, and only its keys move.
fn membership_change(gws: &mut [FakeGateway], agent: &mut Agent, leave: impl FnOnce(&mut Agent)) {
    let addr = agent.receiver_addr();
    let n = 6_000u64;
    // Round 0 with all three up: where each trace belongs.
    send_traces(addr, "r0", 0..n);
    let before = {
        let refs: Vec<&FakeGateway> = gws.iter().collect();
        collect(&refs, "r0", 2 * n as usize, agent)
    };
    // The last gateway goes down; round a waits on disk for its share.
    gws[2].stop();
    send_traces(addr, "a", 0..n);
    let mine = before.values().filter(|g| **g == 2).count();
    leave(agent);
    let refs: Vec<&FakeGateway> = gws.iter().collect();
    let after = collect(&refs[..2], "a", 2 * n as usize, agent);
    let moved = before
        .iter()
        .filter(|(i, g)| after.get(i) != Some(g))
        .count();
    println!(
        "membership change: moved {moved} of {n} traces ({:.1}%, 1/N = 33.3%), the removed gateway had {mine}",
        moved as f64 * 100.0 / n as f64
    );
    assert_eq!(moved, mine, "only the removed gateway's keys move");
    assert!((moved as f64 / n as f64 - 1.0 / 3.0).abs() < 0.03);
    // After the change new data follows the same routes.
    send_traces(addr, "b", 0..n);
    let later = collect(&refs[..2], "b", 2 * n as usize, agent);
    assert_eq!(later, after);
}

#[test]
fn removed_by_reload_its_queue_goes_to_the_others() {
    let mut gws = vec![
        FakeGateway::start(),
        FakeGateway::start(),
        FakeGateway::start(),
    ];
    let all = endpoints(&gws.iter().collect::<Vec<_>>());
    let two = endpoints(&gws.iter().take(2).collect::<Vec<_>>());
    let mut agent = Agent::start(&config(&all));
    membership_change(&mut gws, &mut agent, |agent| {
        let cfg = agent.config.replace(&all, &two);
        agent.rewrite_config(&cfg);
        agent.signal("HUP");
    });
    let m = agent.metrics();
    assert!(m.contains("tern_export_rerouted_batches_total"), "{m}");
    assert!(m.contains("tern_export_gateways 2"), "{m}");
}

/// A DNS server on 127.0.0.1 answering A queries with the addresses it holds.
struct DnsServer {
    addr: SocketAddr,
    answers: Arc<Mutex<Vec<[u8; 4]>>>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    fn start(answers: Vec<[u8; 4]>) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let answers = Arc::new(Mutex::new(answers));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st) = (answers.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !st.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let q = &buf[..n];
                // Question: name from byte 12 to its zero, then type and class.
                let Some(zero) = q[12..].iter().position(|b| *b == 0) else {
                    continue;
                };
                let end = 12 + zero + 5;
                let qtype = u16::from_be_bytes([q[end - 4], q[end - 3]]);
                let mut r = q[..end].to_vec();
                r[2] = 0x81;
                r[3] = 0x80;
                let ips = if qtype == 1 {
                    a.lock().unwrap().clone()
                } else {
                    Vec::new()
                };
                r[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
                for ip in ips {
                    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                    r.extend_from_slice(&ip);
                }
                let _ = socket.send_to(&r, peer);
            }
        });
        DnsServer {
            addr,
            answers,
            stop,
        }
    }

    fn set(&self, answers: Vec<[u8; 4]>) {
        *self.answers.lock().unwrap() = answers;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Three gateways on 127.0.0.2, .3 and .4, all on one port.
fn gateways_on_one_port() -> Vec<FakeGateway> {
    for _ in 0..20 {
        let first = FakeGateway::start_at("127.0.0.2:0".parse().unwrap());
        let port = first.addr.port();
        let rest: Vec<Option<FakeGateway>> = [3u8, 4]
            .iter()
            .map(|i| FakeGateway::try_start_at(SocketAddr::from(([127, 0, 0, *i], port))))
            .collect();
        if rest.iter().all(Option::is_some) {
            let mut v = vec![first];
            v.extend(rest.into_iter().flatten());
            return v;
        }
    }
    panic!("no port free on 127.0.0.2-4");
}

#[test]
fn removed_from_dns_its_queue_goes_to_the_others() {
    let mut gws = gateways_on_one_port();
    let port = gws[0].addr.port();
    let dns = DnsServer::start(vec![[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]]);
    let export = format!(
        "dns = {{ hostname = \"gateways.test\", port = {port}, interval = \"500ms\", resolver = \"{}\" }}",
        dns.addr
    );
    let mut agent = Agent::start(&config(&export));
    wait_for(
        Duration::from_secs(10),
        || agent.metric("tern_export_gateways").filter(|v| *v == 3.0),
        || agent.diagnostics(),
    );
    membership_change(&mut gws, &mut agent, |_| {
        dns.set(vec![[127, 0, 0, 2], [127, 0, 0, 3]])
    });
    assert!(agent.stderr().contains("Gateway set changed"));
}

#[test]
fn down_gateway_share_waits_without_failover() {
    // Down for two minutes, as the issue asks: long enough for the backoff to
    // reach its ceiling and for queued batches to age.
    let mut gws = [
        FakeGateway::start(),
        FakeGateway::start(),
        FakeGateway::start(),
    ];
    let agent = Agent::start(&config(&endpoints(&gws.iter().collect::<Vec<_>>())));
    let addr = agent.receiver_addr();
    let n = 3_000u64;
    gws[2].stop();
    let started = Instant::now();
    send_traces(addr, "a", 0..n);
    // The two others get their shares at once.
    let partial = |g: &FakeGateway| spans_of(g).len();
    wait_for(
        Duration::from_secs(10),
        || (partial(&gws[0]) + partial(&gws[1]) > n as usize).then_some(()),
        || agent.diagnostics(),
    );
    println!("others received within {:?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(120).saturating_sub(started.elapsed()));
    let queued = agent.metric(&format!(
        "tern_export_queued_batches{{endpoint=\"{}\"}}",
        gws[2].url()
    ));
    assert!(queued.unwrap_or(0.0) > 0.0, "{}", agent.metrics());
    assert_eq!(spans_of(&gws[2]).len(), 0);
    gws[2].restart();
    let refs: Vec<&FakeGateway> = gws.iter().collect();
    let owner = collect(&refs, "a", 2 * n as usize, &agent);
    let c = shares(&owner, 3);
    println!("shares after the outage: {c:?}");
    assert!(c[2] > 0);
}

#[test]
fn down_gateway_fails_over_after_failover_after_and_comes_back() {
    let mut gws = [
        FakeGateway::start(),
        FakeGateway::start(),
        FakeGateway::start(),
    ];
    let export = format!(
        "{}\nfailover_after = \"10s\"",
        endpoints(&gws.iter().collect::<Vec<_>>())
    );
    let agent = Agent::start(&config(&export));
    let addr = agent.receiver_addr();
    let n = 3_000u64;
    send_traces(addr, "r0", 0..n);
    let home = {
        let refs: Vec<&FakeGateway> = gws.iter().collect();
        collect(&refs, "r0", 2 * n as usize, &agent)
    };
    gws[2].stop();
    let down_at = Instant::now();
    send_traces(addr, "a", 0..n);
    // Its share moves to the others after about 10 s, queued data included.
    let moved = collect(&[&gws[0], &gws[1]], "a", 2 * n as usize, &agent);
    let took = down_at.elapsed();
    println!("failed over after {took:?}");
    assert!(took >= Duration::from_secs(9), "{took:?}");
    for (i, g) in &home {
        if *g != 2 {
            assert_eq!(moved.get(i), Some(g), "a key of a healthy gateway moved");
        }
    }
    wait_for(
        Duration::from_secs(5),
        || {
            agent
                .metric(&format!(
                    "tern_export_gateway_up{{endpoint=\"{}\"}}",
                    gws[2].url()
                ))
                .filter(|v| *v == 0.0)
        },
        || agent.diagnostics(),
    );
    // Back: the probe sees it and its keys return.
    gws[2].restart();
    wait_for(
        Duration::from_secs(20),
        || {
            agent
                .metric(&format!(
                    "tern_export_gateway_up{{endpoint=\"{}\"}}",
                    gws[2].url()
                ))
                .filter(|v| *v == 1.0)
        },
        || agent.diagnostics(),
    );
    send_traces(addr, "b", 0..n);
    let refs: Vec<&FakeGateway> = gws.iter().collect();
    let back = collect(&refs, "b", 2 * n as usize, &agent);
    assert_eq!(back, home, "keys went back to their gateway");
}

/// A metrics request: `resources` hosts, each with `metrics` gauges of
/// `streams` data points (attribute `cpu`).
fn metrics_request(round: u64, resources: u64, metrics: u64, streams: u64) -> Vec<u8> {
    let mut request = ExportMetricsServiceRequest::default();
    for r in 0..resources {
        let ms: Vec<Metric> = (0..metrics)
            .map(|m| Metric {
                name: format!("m{m}"),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: (0..streams)
                        .map(|s| NumberDataPoint {
                            attributes: vec![tern::otlp::kv("cpu", s.to_string())],
                            time_unix_nano: round,
                            value: Some(
                                tern::otlp::proto::metrics::v1::number_data_point::Value::AsDouble(
                                    r as f64,
                                ),
                            ),
                            ..Default::default()
                        })
                        .collect(),
                })),
                ..Default::default()
            })
            .collect();
        request.resource_metrics.push(ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![tern::otlp::kv("host.name", format!("h{r}"))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: ms,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    request.encode_to_vec()
}

fn attr(kvs: &[KeyValue], key: &str) -> String {
    crate::harness::attr(kvs, key).unwrap_or("").to_string()
}

/// Sends 3 rounds and returns, for each series key, the set of gateways that
/// got it, and the points received.
fn metric_routes(
    routing_key: &str,
    key: impl Fn(&str, &str, &str) -> String,
) -> (BTreeMap<String, HashSet<usize>>, usize) {
    let gws = [
        FakeGateway::start(),
        FakeGateway::start(),
        FakeGateway::start(),
    ];
    let refs: Vec<&FakeGateway> = gws.iter().collect();
    let export = format!("{}\nrouting_key = \"{routing_key}\"", endpoints(&refs));
    let agent = Agent::start(&config(&export));
    let addr = agent.receiver_addr();
    for round in 0..3 {
        assert_eq!(
            post(addr, "/v1/metrics", &metrics_request(round, 30, 5, 4)),
            200
        );
    }
    let want = 3 * 30 * 5 * 4;
    let points = || {
        let mut out = Vec::new();
        for (gi, g) in gws.iter().enumerate() {
            for (res, m) in crate::harness::flatten(&g.delivered()) {
                for v in crate::harness::values(&m) {
                    let _ = v;
                }
                if let Some(metric::Data::Gauge(gauge)) = &m.data {
                    for p in &gauge.data_points {
                        out.push((
                            gi,
                            attr(&res, "host.name"),
                            m.name.clone(),
                            attr(&p.attributes, "cpu"),
                        ));
                    }
                }
            }
        }
        out
    };
    wait_for(
        Duration::from_secs(30),
        || (points().len() >= want).then_some(()),
        || {
            format!(
                "{} of {want} points\n{}",
                points().len(),
                agent.diagnostics()
            )
        },
    );
    let all = points();
    let mut routes: BTreeMap<String, HashSet<usize>> = BTreeMap::new();
    for (g, host, name, cpu) in &all {
        routes.entry(key(host, name, cpu)).or_default().insert(*g);
    }
    (routes, all.len())
}

#[test]
fn metrics_by_resource_and_stream_stay_on_one_gateway() {
    let (by_resource, points) = metric_routes("resource", |host, _, _| host.to_string());
    assert_eq!(points, 1800);
    assert_eq!(by_resource.len(), 30);
    assert!(
        by_resource.values().all(|g| g.len() == 1),
        "{by_resource:?}"
    );
    let used: HashSet<usize> = by_resource.values().flatten().copied().collect();
    assert_eq!(used.len(), 3, "resources spread over every gateway");

    let (by_stream, points) =
        metric_routes("streamID", |host, name, cpu| format!("{host} {name} {cpu}"));
    assert_eq!(points, 1800);
    assert!(by_stream.values().all(|g| g.len() == 1), "{by_stream:?}");
    // Streams are name and point attributes: 20 of them, each on one gateway
    // whatever the host.
    let (streams, _) = metric_routes("streamID", |_, name, cpu| format!("{name} {cpu}"));
    assert_eq!(streams.len(), 20);
    assert!(streams.values().all(|g| g.len() == 1), "{streams:?}");
}
