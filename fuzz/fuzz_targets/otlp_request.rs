//! Fuzzes the OTLP receiver's request decoding (`tern::sources::otlp::prepare`):
//! content type, gzip, protobuf and OTLP/JSON decoding, item counting and the
//! splicing of `[resource]` attributes into protobuf bodies.
//!
//! Run: `cargo +nightly fuzz run otlp_request -- -max_total_time=60` (from
//! `fuzz/`; seed `corpus/otlp_request/` with a selector byte followed by the
//! files of `../../shared/testdata/otlp-json`, or by protobuf requests).
//!
//! The first input byte picks the signal, the format, gzip or not, and whether
//! resource attributes are added; the rest is the body. Beyond "no panic, no
//! hang, bounded memory", an accepted body must decode as its signal's request
//! with every resource holding the added attributes, and a refusal must carry
//! a 4xx status and a short message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tern::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use tern::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tern::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tern::otlp::proto::resource::v1::Resource;
use tern::queue::Signal;
use tern::sources::otlp::prepare;

/// Small, so that the size checks are reached too.
const MAX_SIZE: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let signal = match selector % 3 {
        0 => Signal::Traces,
        1 => Signal::Metrics,
        _ => Signal::Logs,
    };
    let content_type = if selector & 4 == 0 {
        "application/x-protobuf"
    } else {
        "application/json"
    };
    let gzip = selector & 8 != 0;
    let resource = if selector & 16 != 0 {
        vec![("host.name".to_string(), "fuzz".to_string())]
    } else {
        Vec::new()
    };
    let encoding = gzip.then_some("gzip");
    match prepare(
        signal,
        Some(content_type),
        encoding,
        body,
        MAX_SIZE,
        &resource,
    ) {
        Ok(prepared) => {
            let resources: Vec<Option<Resource>> = match signal {
                Signal::Traces => ExportTraceServiceRequest::decode(&*prepared.raw)
                    .expect("accepted traces decode")
                    .resource_spans
                    .into_iter()
                    .map(|r| r.resource)
                    .collect(),
                Signal::Metrics => ExportMetricsServiceRequest::decode(&*prepared.raw)
                    .expect("accepted metrics decode")
                    .resource_metrics
                    .into_iter()
                    .map(|r| r.resource)
                    .collect(),
                Signal::Logs => ExportLogsServiceRequest::decode(&*prepared.raw)
                    .expect("accepted logs decode")
                    .resource_logs
                    .into_iter()
                    .map(|r| r.resource)
                    .collect(),
            };
            for (key, _) in &resource {
                for r in &resources {
                    let has = r
                        .as_ref()
                        .is_some_and(|r| r.attributes.iter().any(|a| &a.key == key));
                    assert!(has, "resource without {key}: {r:?}");
                }
            }
            if resource.is_empty() && content_type == "application/x-protobuf" && !gzip {
                assert_eq!(&*prepared.raw, body, "protobuf is stored as sent");
            }
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 413 | 415), "{e}");
            assert!(e.to_string().len() < 600, "message too long: {e}");
        }
    }
});
