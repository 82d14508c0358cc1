//! A client of the OTLP receiver that posts numbered spans, and the count of
//! what a gateway received of them: for crash and damage tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use prost::Message;
use tern::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tern::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::gateway::Received;

/// A port that was free a moment ago: the receiver keeps it across restarts.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A request of five spans named `span-<first>` to `span-<first+4>`.
pub fn spans(first: u64) -> Vec<u8> {
    let spans = (first..first + 5)
        .map(|n| Span {
            trace_id: n.to_be_bytes().repeat(2),
            span_id: n.to_be_bytes().to_vec(),
            name: format!("span-{n}"),
            start_time_unix_nano: 1_700_000_000_000_000_000 + n,
            end_time_unix_nano: 1_700_000_000_000_000_001 + n,
            ..Default::default()
        })
        .collect();
    traces_request(spans)
}

/// An encoded traces request of `spans` under one resource and scope.
pub fn traces_request(spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Posts `body` once; the status, or `None` when the agent was not there.
pub fn post(addr: SocketAddr, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// How often each span name arrived in requests the gateway answered 200.
pub fn span_names(received: &[Received]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in received.iter().filter(|r| r.answered == 200) {
        for rs in r.traces.iter().flat_map(|t| &t.resource_spans) {
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                *seen.entry(span.name.clone()).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// A config with the receiver on `receiver` (kept across restarts), sending
/// to `gateway` with fast retries.
pub fn receiver_config_at(receiver: SocketAddr, gateway: &str) -> String {
    format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[receiver.otlp]
listen = "{receiver}"

[export]
endpoints = ["{gateway}"]
timeout = "2s"

[export.retry]
initial_interval = "50ms"
max_interval = "200ms"
"#
    )
}
