//! Unit tests of the receiver: decoding, limits, resource attributes and the
//! answers, against a real queue in a temp directory. The system tests in
//! `tests/receiver.rs` drive the built binary with the OpenTelemetry SDK.

use std::io::Write;
use std::sync::Arc;

use prost::Message;

use super::*;
use crate::config::Config;
use crate::otlp::kv;
use crate::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use crate::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::proto::resource::v1::Resource;
use crate::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use crate::queue::{Lane, Options, Queue};
use crate::sources::DEFAULT_DESTINATION;
use crate::tempdir::TempDir;

fn traces(spans: usize, service: Option<&str>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service.map(|s| Resource {
                attributes: vec![kv("service.name", s), kv("deployment.environment", "dev")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: vec![1; 16],
                        span_id: vec![u8::try_from(i % 256).unwrap(); 8],
                        name: format!("span {i}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

const PB: Option<&str> = Some("application/x-protobuf");
const MAX: usize = 1 << 20;

#[test]
fn protobuf_is_stored_as_sent_and_counted() {
    let raw = traces(3, Some("app")).encode_to_vec();
    let p = prepare(Signal::Traces, PB, None, &raw, MAX, &[]).unwrap();
    assert_eq!(
        (p.format, p.items, &*p.raw),
        (Format::Protobuf, 3, raw.as_slice())
    );
    let zipped = gzip(&raw);
    let p = prepare(Signal::Traces, PB, Some("gzip"), &zipped, MAX, &[]).unwrap();
    assert_eq!(&*p.raw, raw.as_slice());
}

#[test]
fn content_types_and_encodings() {
    let raw = traces(1, None).encode_to_vec();
    for ct in [
        "application/x-protobuf",
        "Application/X-Protobuf; charset=binary",
    ] {
        assert!(
            prepare(Signal::Traces, Some(ct), None, &raw, MAX, &[]).is_ok(),
            "{ct}"
        );
    }
    let json = br#"{"resourceSpans":[]}"#;
    let p = prepare(
        Signal::Traces,
        Some("application/json; charset=utf-8"),
        None,
        json,
        MAX,
        &[],
    )
    .unwrap();
    assert_eq!((p.format, p.items), (Format::Json, 0));
    for ct in [
        None,
        Some("text/plain"),
        Some("application/protobuf"),
        Some(""),
    ] {
        let e = prepare(Signal::Traces, ct, None, &raw, MAX, &[]).unwrap_err();
        assert_eq!(e.status(), 415, "{ct:?}: {e}");
        assert!(e.to_string().starts_with("unsupported media type: "), "{e}");
    }
    let e = prepare(Signal::Traces, PB, Some("br"), &raw, MAX, &[]).unwrap_err();
    assert_eq!(
        (e.status(), e.to_string().as_str()),
        (
            415,
            "unsupported content-encoding: \"br\", expected gzip or none"
        )
    );
    assert!(prepare(Signal::Traces, PB, Some("identity"), &raw, MAX, &[]).is_ok());
}

#[test]
fn malformed_bodies_are_400_with_a_reason() {
    let raw = traces(2, Some("app")).encode_to_vec();
    let e = prepare(
        Signal::Traces,
        PB,
        None,
        raw.get(..raw.len() - 3).unwrap(),
        MAX,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().starts_with("invalid protobuf body: "), "{e}");
    let zipped = gzip(&raw);
    let e = prepare(
        Signal::Traces,
        PB,
        Some("gzip"),
        zipped.get(..zipped.len() - 10).unwrap(),
        MAX,
        &[],
    )
    .unwrap_err();
    assert!(matches!(e, RequestError::Gzip(_)), "{e}");
    let mut trailing = zipped.clone();
    trailing.extend_from_slice(b"garbage");
    let e = prepare(Signal::Traces, PB, Some("gzip"), &trailing, MAX, &[]).unwrap_err();
    assert!(matches!(e, RequestError::Gzip(_)), "{e}");
    let e = prepare(Signal::Traces, PB, Some("gzip"), &raw, MAX, &[]).unwrap_err();
    assert!(matches!(e, RequestError::Gzip(_)), "{e}");
    let e = prepare(
        Signal::Logs,
        Some("application/json"),
        None,
        b"{\"resourceLogs\": 5}",
        MAX,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("line 1 column"), "{e}");
    let long = format!("{{\"resourceLogs\": [{{\"x\": \"{}", "a".repeat(10_000));
    let e = prepare(
        Signal::Logs,
        Some("application/json"),
        None,
        long.as_bytes(),
        MAX,
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().len() < 400, "{e}");
}

#[test]
fn size_limits_apply_on_the_wire_and_after_gzip() {
    let raw = traces(1, None).encode_to_vec();
    let e = prepare(Signal::Traces, PB, None, &raw, raw.len() - 1, &[]).unwrap_err();
    assert_eq!(e.status(), 413);
    // 100 MiB of zeros in about 100 KiB: refused without inflating it all.
    let bomb = gzip(&vec![0u8; 100 << 20]);
    let e = prepare(Signal::Traces, PB, Some("gzip"), &bomb, MAX, &[]).unwrap_err();
    assert_eq!(e, RequestError::TooLarge { limit: MAX });
}

#[test]
fn resource_attributes_are_added_without_overwriting() {
    let resource = vec![
        ("deployment.environment".to_string(), "prod".to_string()),
        ("host.name".to_string(), "box-1".to_string()),
    ];
    let mut request = traces(1, Some("app"));
    let mut bare = traces(1, None).resource_spans;
    request.resource_spans.append(&mut bare);
    let raw = request.encode_to_vec();
    let json = serde_json::to_vec(&request).unwrap();
    for (ct, body) in [
        (PB, raw.as_slice()),
        (Some("application/json"), json.as_slice()),
    ] {
        let p = prepare(Signal::Traces, ct, None, body, MAX, &resource).unwrap();
        let got = ExportTraceServiceRequest::decode(&*p.raw).unwrap();
        let attrs = |i: usize| {
            got.resource_spans[i]
                .resource
                .clone()
                .unwrap()
                .attributes
                .into_iter()
                .map(|a| a.key + "=" + &format!("{:?}", a.value.unwrap().value.unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            attrs(0),
            [
                "service.name=StringValue(\"app\")",
                "deployment.environment=StringValue(\"dev\")",
                "host.name=StringValue(\"box-1\")"
            ],
            "{ct:?}"
        );
        assert_eq!(
            attrs(1),
            [
                "deployment.environment=StringValue(\"prod\")",
                "host.name=StringValue(\"box-1\")"
            ]
        );
        assert_eq!(
            got.resource_spans[0].scope_spans,
            request.resource_spans[0].scope_spans
        );
    }
}

/// Fields this tern's schema does not know pass through to the gateway,
/// resource attributes and all.
#[test]
fn unknown_protobuf_fields_survive() {
    let mut raw = traces(1, Some("app")).encode_to_vec();
    // Field 99 (varint 7) at the top level, and field 98 (bytes) in the entry.
    raw.extend_from_slice(&[0x98, 0x06, 0x07]);
    let mut entry = Vec::new();
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut entry);
    let inner = [0x92u8, 0x06, 0x02, b'h', b'i'];
    prost::encoding::encode_varint(inner.len() as u64, &mut entry);
    entry.extend_from_slice(&inner);
    raw.extend_from_slice(&entry);
    let resource = vec![("host.name".to_string(), "box-1".to_string())];
    let p = prepare(Signal::Traces, PB, None, &raw, MAX, &resource).unwrap();
    assert!(memchr::memmem::find(&p.raw, &[0x98, 0x06, 0x07]).is_some());
    assert!(memchr::memmem::find(&p.raw, &inner).is_some());
    let got = ExportTraceServiceRequest::decode(&*p.raw).unwrap();
    assert_eq!(got.resource_spans.len(), 2);
    for rs in &got.resource_spans {
        let keys: Vec<&str> = rs
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|a| a.key.as_str())
            .collect();
        assert!(keys.contains(&"host.name"), "{keys:?}");
    }
}

/// A receiver on a real queue, without its server running.
fn receiver(dir: &TempDir, extra: &str, queue_size: u64) -> (Receiver, Queue, Arc<Metrics>) {
    let text = format!("[receiver.otlp]\nlisten = \"127.0.0.1:0\"\n{extra}\n[resource]\n\"host.name\" = \"box-1\"\n");
    let config = Config::parse(&dir.path().join("t.toml"), &text).unwrap();
    let options = Options {
        max_size: queue_size,
        fsync: false,
        ..Options::default()
    };
    let (queue, _) = Queue::open(dir.path(), &options).unwrap();
    let metrics = Arc::new(Metrics::new());
    let sink = Sink::new(queue.clone(), metrics.clone(), false);
    let executor = Arc::new(smol::Executor::new());
    let r = Receiver::start(&executor, &config, sink, metrics.clone()).unwrap();
    (r, queue, metrics)
}

fn post(path: &str, content_type: &str, body: Vec<u8>) -> Request {
    Request {
        method: "POST".into(),
        path: path.into(),
        headers: vec![("content-type".into(), content_type.as_bytes().to_vec())],
        body,
    }
}

#[test]
fn answers_as_the_specification_says() {
    let dir = TempDir::new("answers");
    let (r, queue, metrics) = receiver(&dir, "", 64 << 20);
    let raw = traces(2, Some("app")).encode_to_vec();
    let ok = smol::block_on(r.handle(post("/v1/traces", "application/x-protobuf", raw)));
    assert_eq!(
        (ok.status, ok.content_type, ok.body.len()),
        (200, "application/x-protobuf", 0)
    );
    let lane = Lane::new(Signal::Traces, DEFAULT_DESTINATION);
    let batch = queue.peek(&lane, 10).unwrap().batches.remove(0);
    assert_eq!(batch.items, 2);
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(batch.payload.as_slice()),
        &mut raw,
    )
    .unwrap();
    let stored = ExportTraceServiceRequest::decode(raw.as_slice()).unwrap();
    assert!(stored.resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .any(|a| a.key == "host.name"));

    let json = smol::block_on(
        r.handle(post(
            "/v1/logs",
            "application/json",
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"hi"}}]}]}]}"#
                .to_vec(),
        )),
    );
    assert_eq!(
        (json.status, json.content_type, json.body.as_slice()),
        (200, "application/json", b"{}".as_slice())
    );
    let logs = queue
        .peek(&Lane::new(Signal::Logs, DEFAULT_DESTINATION), 10)
        .unwrap();
    assert_eq!(logs.batches.len(), 1);

    let bad = smol::block_on(r.handle(post("/v1/metrics", "application/json", b"{".to_vec())));
    assert_eq!((bad.status, bad.content_type), (400, "application/json"));
    let status: serde_json::Value = serde_json::from_slice(&bad.body).unwrap();
    assert_eq!(status["code"], 3);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid json body: "),
        "{status}"
    );

    let bad =
        smol::block_on(r.handle(post("/v1/metrics", "application/x-protobuf", vec![0xff; 3])));
    assert_eq!(bad.status, 400);
    let status = Status::decode(bad.body.as_slice()).unwrap();
    assert!(
        status.message.starts_with("invalid protobuf body: "),
        "{status:?}"
    );

    let wrong = smol::block_on(r.handle(post("/v1/traces", "text/plain", b"x".to_vec())));
    assert_eq!(
        (wrong.status, wrong.content_type),
        (415, "application/x-protobuf")
    );
    let missing = smol::block_on(r.handle(post("/v1/trace", "application/x-protobuf", Vec::new())));
    assert_eq!(missing.status, 404);
    let mut get = post("/v1/traces", "application/json", Vec::new());
    get.method = "GET".into();
    let get = smol::block_on(r.handle(get));
    assert_eq!(get.status, 405);
    assert!(get.headers.contains(&("Allow", "POST".to_string())));

    assert_eq!(
        metrics.get(
            "tern_receiver_requests_total",
            &[("signal", "traces"), ("code", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.get(
            "tern_receiver_requests_total",
            &[("signal", "metrics"), ("code", "400")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metrics.get("tern_receiver_items_total", &[("signal", "traces")]),
        Some(2.0)
    );
    assert_eq!(
        metrics.get("tern_receiver_items_total", &[("signal", "logs")]),
        Some(1.0)
    );
}

fn incompressible_logs(bytes: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let body: String = (0..bytes).map(|_| rng.alphanumeric()).collect();
    let request: ExportLogsServiceRequest = serde_json::from_value(serde_json::json!({
        "resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": body}}]}]}]
    }))
    .unwrap();
    request.encode_to_vec()
}

#[test]
fn a_full_queue_pushes_back_with_retry_after() {
    let dir = TempDir::new("full");
    let (r, queue, metrics) = receiver(&dir, "full_policy = \"push_back\"", 1 << 20);
    let mut answers = Vec::new();
    for seed in 0..4 {
        let body = incompressible_logs(600 << 10, seed);
        answers.push(smol::block_on(r.handle(post(
            "/v1/logs",
            "application/x-protobuf",
            body,
        ))));
    }
    let codes: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(codes, [200, 200, 503, 503]);
    assert!(answers[2]
        .headers
        .contains(&("Retry-After", "5".to_string())));
    let status = Status::decode(answers[2].body.as_slice()).unwrap();
    assert_eq!(status.code, 14);
    assert!(status.message.contains("queue full"), "{status:?}");
    assert_eq!(queue.stats().total().batches, 2);
    assert_eq!(
        metrics.get(
            "tern_receiver_refused_items_total",
            &[("signal", "logs"), ("reason", "queue_full")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metrics.get(
            "tern_dropped_batches_total",
            &[
                ("signal", "logs"),
                ("destination", DEFAULT_DESTINATION),
                ("reason", "queue_full")
            ]
        ),
        None
    );
}

#[test]
fn a_full_queue_drops_the_oldest_when_told_to() {
    let dir = TempDir::new("drop");
    let (r, queue, metrics) = receiver(&dir, "full_policy = \"drop_oldest\"", 1 << 20);
    for seed in 0..4 {
        let body = incompressible_logs(600 << 10, seed);
        let a = smol::block_on(r.handle(post("/v1/logs", "application/x-protobuf", body)));
        assert_eq!(a.status, 200);
    }
    assert_eq!(queue.stats().total().batches, 2);
    assert_eq!(
        metrics.get(
            "tern_dropped_batches_total",
            &[
                ("signal", "logs"),
                ("destination", DEFAULT_DESTINATION),
                ("reason", "queue_full")
            ]
        ),
        Some(2.0)
    );
}

#[test]
fn error_enum_stays_small() {
    assert!(
        std::mem::size_of::<RequestError>() <= 32,
        "{}",
        std::mem::size_of::<RequestError>()
    );
}
