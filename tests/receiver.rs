//! The OTLP receiver (`[receiver.otlp]`): the OpenTelemetry Python SDK and raw
//! HTTP clients send to the built tern, which forwards to the test gateway.
//!
//! The Python tests need the SDK in `target/otel-venv` (scripts/test installs
//! it; `TERN_TEST_PYTHON` names another interpreter that has it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tern::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use tern::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tern::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tern::otlp::proto::common::v1::{any_value, KeyValue};
use tern::otlp::proto::metrics::v1::metric;
use tern::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tern::sources::otlp::Status;

use crate::harness::{attr, header_pairs, receiver_config, wait_for, Agent, FakeGateway, Reply};

/// A config with the receiver on a free port, sending to `gateway`.
fn config(gateway: &str, receiver: &str, resource: &str) -> String {
    receiver_config(
        &format!("\n[resource]\n{resource}\n"),
        receiver,
        &format!("endpoints = [\"{gateway}\"]"),
    )
}

const RESOURCE: &str = "\"deployment.environment\" = \"prod\"\n\"host.name\" = \"box-1\"";

/// One HTTP/1.1 exchange on a new connection: status, headers, body.
fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut hs);
    let n = match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "no response ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    let headers = header_pairs(resp.headers);
    (resp.code.unwrap(), headers, out[n..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

/// The Python with the OpenTelemetry SDK: `$TERN_TEST_PYTHON`, else the venv
/// scripts/test installs. `None` (and a line on stderr) when there is none,
/// so that a plain `cargo test` skips the tests that need it, as ripgrep
/// skips a test whose tool is missing; scripts/test always installs it.
fn python(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TERN_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/otel-venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    eprintln!(
        "skipped {test}: {} is missing; scripts/test installs the OpenTelemetry Python SDK there",
        venv.display()
    );
    None
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/receiver")
        .join(name)
}

fn run_python(python: &std::path::Path, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "python {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn resource_attrs(r: &Option<tern::otlp::proto::resource::v1::Resource>) -> Vec<KeyValue> {
    r.as_ref().map(|r| r.attributes.clone()).unwrap_or_default()
}

fn value(attrs: &[KeyValue], key: &str) -> Option<any_value::Value> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone()?.value)
}

/// The official Python SDK sends spans (gzip), a log record and metrics;
/// they reach the gateway with ids, timestamps, attributes and resource
/// intact, plus the `[resource]` attributes the application did not set.
#[test]
fn the_python_sdk_reaches_the_gateway_intact() {
    let Some(python) = python("the_python_sdk_reaches_the_gateway_intact") else {
        return;
    };
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(&gateway.url(), "", RESOURCE));
    let addr = agent.receiver_addr();
    let out = run_python(
        &python,
        &[
            script("sdk.py").as_os_str(),
            format!("http://{addr}").as_ref(),
        ],
    );
    let sent: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        sent["flushed"],
        serde_json::json!({"traces": true, "logs": true, "metrics": true}),
        "{out}"
    );

    let traces = wait_for(
        Duration::from_secs(20),
        || {
            let t = gateway.delivered_traces();
            let spans: usize = t
                .iter()
                .flat_map(|r| &r.resource_spans)
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            (spans >= 2).then_some(t)
        },
        || agent.diagnostics(),
    );
    let mut got = Vec::new();
    for rs in traces.iter().flat_map(|r| &r.resource_spans) {
        let res = resource_attrs(&rs.resource);
        assert_eq!(attr(&res, "service.name"), Some("py-app"));
        // Set by the application: kept. Not set: added from [resource].
        assert_eq!(attr(&res, "deployment.environment"), Some("staging"));
        assert_eq!(attr(&res, "host.name"), Some("box-1"));
        assert_eq!(attr(&res, "telemetry.sdk.language"), Some("python"));
        for ss in &rs.scope_spans {
            let scope = ss.scope.as_ref().unwrap();
            assert_eq!(
                (scope.name.as_str(), scope.version.as_str()),
                ("sdk-test", "1.2.3")
            );
            got.extend(ss.spans.iter().cloned());
        }
    }
    for want in sent["spans"].as_array().unwrap() {
        let name = want["name"].as_str().unwrap();
        let span = got
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name}: {got:?}"));
        assert_eq!(hex(&span.trace_id), want["trace_id"].as_str().unwrap());
        assert_eq!(hex(&span.span_id), want["span_id"].as_str().unwrap());
        assert_eq!(
            hex(&span.parent_span_id),
            want["parent_span_id"].as_str().unwrap()
        );
        assert_eq!(span.start_time_unix_nano, want["start"].as_u64().unwrap());
        assert_eq!(span.end_time_unix_nano, want["end"].as_u64().unwrap());
    }
    let child = got.iter().find(|s| s.name == "child").unwrap();
    assert_eq!(child.kind, 3, "client");
    assert_eq!(
        value(&child.attributes, "retries"),
        Some(any_value::Value::IntValue(3))
    );
    assert_eq!(
        value(&child.attributes, "ok"),
        Some(any_value::Value::BoolValue(false))
    );
    assert_eq!(
        value(&child.attributes, "ratio"),
        Some(any_value::Value::DoubleValue(0.5))
    );
    let Some(any_value::Value::ArrayValue(tags)) = value(&child.attributes, "tags") else {
        panic!("{child:?}")
    };
    assert_eq!(tags.values.len(), 2);
    assert_eq!(child.events[0].name, "retrying");
    let child_sent = sent["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "child")
        .unwrap();
    assert_eq!(
        child.events[0].time_unix_nano,
        child_sent["event_time"].as_u64().unwrap()
    );
    let status = child.status.as_ref().unwrap();
    assert_eq!(
        (status.code, status.message.as_str()),
        (2, "upstream timed out")
    );
    let parent = got.iter().find(|s| s.name == "parent").unwrap();
    assert_eq!(attr(&parent.attributes, "http.route"), Some("/orders"));

    let logs = wait_for(
        Duration::from_secs(20),
        || {
            let l = gateway.delivered_logs();
            (!l.is_empty()).then_some(l)
        },
        || agent.diagnostics(),
    );
    let rl = &logs[0].1.resource_logs[0];
    let res = resource_attrs(&rl.resource);
    assert_eq!(attr(&res, "deployment.environment"), Some("staging"));
    assert_eq!(attr(&res, "host.name"), Some("box-1"));
    let record = &rl.scope_logs[0].log_records[0];
    let want = &sent["log"];
    assert_eq!(hex(&record.trace_id), want["trace_id"].as_str().unwrap());
    assert_eq!(hex(&record.span_id), want["span_id"].as_str().unwrap());
    assert_eq!(
        hex(&record.span_id),
        child_sent["span_id"].as_str().unwrap()
    );
    assert_eq!(record.time_unix_nano, 1_700_000_000_123_456_789);
    assert_eq!(
        record.observed_time_unix_nano,
        want["observed_timestamp"].as_u64().unwrap()
    );
    assert_eq!(
        (record.severity_number, record.severity_text.as_str()),
        (13, "WARN")
    );
    assert_eq!(
        record.body.clone().and_then(|b| b.value),
        Some(any_value::Value::StringValue("hello from python".into()))
    );
    assert_eq!(
        value(&record.attributes, "user.id"),
        Some(any_value::Value::IntValue(42))
    );

    let metrics = wait_for(
        Duration::from_secs(20),
        || {
            let m = gateway.delivered();
            (!m.is_empty()).then_some(m)
        },
        || agent.diagnostics(),
    );
    let rm = &metrics[0].resource_metrics[0];
    assert_eq!(
        attr(&resource_attrs(&rm.resource), "host.name"),
        Some("box-1")
    );
    let all: Vec<_> = rm.scope_metrics.iter().flat_map(|s| &s.metrics).collect();
    let orders = all.iter().find(|m| m.name == "orders").unwrap();
    assert_eq!(
        (orders.unit.as_str(), orders.description.as_str()),
        ("1", "orders taken")
    );
    let Some(metric::Data::Sum(sum)) = &orders.data else {
        panic!("{orders:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(crate::harness::values(orders), [5.0]);
    assert_eq!(
        attr(&sum.data_points[0].attributes, "route"),
        Some("/orders")
    );
    let latency = all.iter().find(|m| m.name == "latency").unwrap();
    let Some(metric::Data::Histogram(h)) = &latency.data else {
        panic!("{latency:?}")
    };
    let p = &h.data_points[0];
    assert_eq!(
        (p.count, p.sum, p.min, p.max),
        (2, Some(42.0), Some(2.0), Some(40.0))
    );
    assert_eq!(p.bucket_counts.iter().sum::<u64>(), 2);

    let m = agent.metrics();
    for signal in ["traces", "logs", "metrics"] {
        let series = format!("tern_receiver_requests_total{{signal=\"{signal}\",code=\"200\"}}");
        assert!(
            crate::harness::agent::metric_value(&m, &series).unwrap_or(0.0) >= 1.0,
            "{series}\n{m}"
        );
    }
    assert_eq!(
        crate::harness::agent::metric_value(&m, "tern_receiver_items_total{signal=\"traces\"}"),
        Some(2.0),
        "{m}"
    );
}

/// The upstream OTLP/JSON examples are accepted and reach the gateway equal
/// to their protobuf form, as the Python protobuf library makes it; the
/// protobuf form itself, posted as such, arrives the same.
#[test]
fn the_json_examples_arrive_as_their_protobuf_form() {
    let Some(python) = python("the_json_examples_arrive_as_their_protobuf_form") else {
        return;
    };
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(&gateway.url(), "", ""));
    let addr = agent.receiver_addr();
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/otlp-json");
    let cases = [
        ("traces", "/v1/traces", "trace.json"),
        ("metrics", "/v1/metrics", "metrics.json"),
        ("logs", "/v1/logs", "logs.json"),
        ("logs", "/v1/logs", "events.json"),
    ];
    for (signal, path, file) in cases {
        let json = std::fs::read(data.join(file)).unwrap();
        let hex_pb = run_python(
            &python,
            &[
                script("json_to_protobuf.py").as_os_str(),
                signal.as_ref(),
                data.join(file).as_os_str(),
            ],
        );
        let pb: Vec<u8> = (0..hex_pb.trim().len() / 2)
            .map(|i| u8::from_str_radix(&hex_pb.trim()[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let before = gateway.received().iter().filter(|r| r.path == path).count();
        let (status, headers, body) =
            post(addr, path, &[("Content-Type", "application/json")], &json);
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()), "{file}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        let (status, headers, body) = post(
            addr,
            path,
            &[("Content-Type", "application/x-protobuf")],
            &pb,
        );
        assert_eq!((status, body.len()), (200, 0), "{file}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/x-protobuf")
        );

        let received = wait_for(
            Duration::from_secs(20),
            || {
                let r: Vec<_> = gateway
                    .received()
                    .into_iter()
                    .filter(|r| r.answered == 200 && r.path == path)
                    .skip(before)
                    .collect();
                (r.len() >= 2).then_some(r)
            },
            || agent.diagnostics(),
        );
        let check = |got: &dyn Fn(usize) -> bool| {
            assert!(
                got(0) && got(1),
                "{file}: what arrived differs from the protobuf form"
            );
        };
        match signal {
            "traces" => {
                let want = ExportTraceServiceRequest::decode(pb.as_slice()).unwrap();
                check(&|i| received[i].traces.as_ref() == Some(&want));
            }
            "logs" => {
                let want = ExportLogsServiceRequest::decode(pb.as_slice()).unwrap();
                check(&|i| received[i].logs.as_ref() == Some(&want));
            }
            _ => {
                let want = ExportMetricsServiceRequest::decode(pb.as_slice()).unwrap();
                check(&|i| received[i].request == want);
            }
        }
    }
}

fn span_request(id: u64) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: [id.to_be_bytes(), [7; 8]].concat(),
                    span_id: id.to_be_bytes().to_vec(),
                    name: format!("request {id}"),
                    start_time_unix_nano: 1_700_000_000_000_000_000 + id,
                    end_time_unix_nano: 1_700_000_000_000_000_100 + id,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn status_message(body: &[u8]) -> String {
    Status::decode(body).map(|s| s.message).unwrap_or_default()
}

/// Malformed protobuf, truncated gzip, wrong content types, huge bodies
/// (announced, chunked, or inflating), slow clients: each gets its 4xx with a
/// reason, and tern goes on serving.
#[test]
fn bad_requests_get_their_4xx_and_tern_keeps_serving() {
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(
        &gateway.url(),
        "max_request_size = \"64KiB\"\nread_timeout = \"1s\"",
        "",
    ));
    let addr = agent.receiver_addr();
    let pb = span_request(1).encode_to_vec();
    let protobuf = [("Content-Type", "application/x-protobuf")];

    let (status, _, body) = post(addr, "/v1/traces", &protobuf, &pb[..pb.len() - 4]);
    assert_eq!(status, 400);
    assert!(
        status_message(&body).starts_with("invalid protobuf body: "),
        "{:?}",
        status_message(&body)
    );

    let zipped = gzip(&pb);
    let gz = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "gzip"),
    ];
    let (status, _, body) = post(addr, "/v1/traces", &gz, &zipped[..zipped.len() / 2]);
    assert_eq!(status, 400);
    assert!(
        status_message(&body).starts_with("invalid gzip body: "),
        "{:?}",
        status_message(&body)
    );

    let (status, _, body) = post(
        addr,
        "/v1/logs",
        &[("Content-Type", "application/json")],
        b"{\"resourceLogs\": [}",
    );
    assert_eq!(status, 400);
    let s: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(s["code"], 3);
    assert!(
        s["message"].as_str().unwrap().contains("line 1 column"),
        "{s}"
    );

    for ct in ["text/plain", "application/grpc", "application/protobuf"] {
        let (status, _, body) = post(addr, "/v1/traces", &[("Content-Type", ct)], &pb);
        assert_eq!(status, 415, "{ct}");
        assert!(
            status_message(&body).starts_with("unsupported media type"),
            "{ct}"
        );
    }
    let (status, _, _) = post(addr, "/v1/traces", &[], &pb);
    assert_eq!(status, 415);
    let (status, _, _) = post(
        addr,
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "zstd"),
        ],
        &pb,
    );
    assert_eq!(status, 415);
    let (status, _, _) = post(addr, "/v2/traces", &protobuf, &pb);
    assert_eq!(status, 404);

    // Huge bodies: announced, inflating, chunked. The client reads the 413.
    let huge = vec![0x0a; 1 << 20];
    let (status, _, body) = post(addr, "/v1/traces", &protobuf, &huge);
    assert_eq!(status, 413);
    assert!(
        status_message(&body).contains("payload too large"),
        "{:?}",
        status_message(&body)
    );
    let (status, _, _) = post(addr, "/v1/traces", &gz, &gzip(&vec![0u8; 8 << 20]));
    assert_eq!(status, 413);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    for _ in 0..40 {
        if s.write_all(format!("{:x}\r\n{}\r\n", 4096, "x".repeat(4096)).as_bytes())
            .is_err()
        {
            break;
        }
    }
    assert_eq!(read_response(&mut s).0, 413);

    // A client that sends one byte every 100 ms: refused when the 1 s read
    // deadline passes, however steadily it sends.
    let begun = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n").unwrap();
    s.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    while begun.elapsed() < Duration::from_secs(15) {
        if s.write_all(b"x").is_err() {
            break;
        }
        let mut chunk = [0u8; 512];
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
        if answer.ends_with(b"\r\n\r\n") || answer.len() > 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        begun.elapsed() < Duration::from_secs(10),
        "{:?}",
        begun.elapsed()
    );

    // Still serving: a good request is answered and delivered.
    let (status, _, _) = post(addr, "/v1/traces", &gz, &zipped);
    assert_eq!(status, 200);
    let delivered = wait_for(
        Duration::from_secs(20),
        || {
            let t = gateway.delivered_traces();
            (!t.is_empty()).then_some(t)
        },
        || agent.diagnostics(),
    );
    assert_eq!(delivered, [span_request(1)]);
    let m = agent.metrics();
    for (signal, code) in [
        ("traces", "400"),
        ("logs", "400"),
        ("traces", "413"),
        ("traces", "415"),
        ("unknown", "404"),
        ("traces", "408"),
    ] {
        let series = format!("tern_receiver_requests_total{{signal=\"{signal}\",code=\"{code}\"}}");
        assert!(
            crate::harness::agent::metric_value(&m, &series).is_some(),
            "{series}\n{m}"
        );
    }
}

/// A steady stream of requests on several connections; tern is killed with
/// SIGKILL in the middle. After a restart, every request that was answered
/// 200 reaches the gateway.
#[test]
fn every_request_answered_200_survives_sigkill() {
    let gateway = FakeGateway::start();
    // Nothing is acknowledged before the kill: everything waits in the queue.
    gateway.set_default(Reply::Status(503, Some(1)));
    let mut agent = Agent::start(&config(&gateway.url(), "", ""));
    let addr = agent.receiver_addr();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3u64)
        .map(|c| {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut id = c << 32;
                'connections: while !stop.load(Ordering::SeqCst) {
                    let Ok(mut s) = TcpStream::connect(addr) else { return };
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    loop {
                        id += 1;
                        let body = span_request(id).encode_to_vec();
                        let head = format!("POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n", body.len());
                        if s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body)).is_err() {
                            continue 'connections;
                        }
                        // Read exactly one response head (bodies of 200s are empty).
                        let mut buf = Vec::new();
                        let mut byte = [0u8; 1];
                        while !buf.ends_with(b"\r\n\r\n") {
                            match s.read(&mut byte) {
                                Ok(1) => buf.push(byte[0]),
                                _ => continue 'connections,
                            }
                        }
                        if buf.starts_with(b"HTTP/1.1 200 ") {
                            accepted.lock().unwrap().push(id);
                        }
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    wait_for(
        Duration::from_secs(30),
        || (accepted.lock().unwrap().len() >= 150).then_some(()),
        || agent.diagnostics(),
    );
    agent.kill();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    gateway.set_default(Reply::Ok);
    agent.restart();
    let missing = wait_for(
        Duration::from_secs(60),
        || {
            let got: std::collections::HashSet<u64> = gateway
                .delivered_traces()
                .iter()
                .flat_map(|r| &r.resource_spans)
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| u64::from_be_bytes(s.span_id.clone().try_into().unwrap()))
                .collect();
            let missing: Vec<u64> = accepted
                .iter()
                .copied()
                .filter(|id| !got.contains(id))
                .collect();
            missing.is_empty().then_some(missing)
        },
        || {
            format!(
                "{} accepted, {} delivered\n{}",
                accepted.len(),
                gateway.delivered_traces().len(),
                agent.diagnostics()
            )
        },
    );
    assert!(missing.is_empty());
    assert!(accepted.len() >= 150);
}
