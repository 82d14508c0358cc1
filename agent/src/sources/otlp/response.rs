//! The receiver's answers, as the OTLP/HTTP specification has them: 200 with
//! an empty `Export*ServiceResponse`, and every failure with a
//! `google.rpc.Status` saying what was wrong, each in the request's encoding
//! (protobuf unless the request was JSON).
//!
//! See: <https://opentelemetry.io/docs/specs/otlp/#otlphttp-response>

use prost::Message;

use super::decode::Format;
use crate::http::server::Response;

/// `google.rpc.Status`, the body of every failed OTLP/HTTP response; only
/// the fields tern sets (no `details`).
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct Status {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What was wrong, for the developer of the client.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The `google.rpc.Code` closest to an HTTP status.
fn rpc_code(status: u16) -> i32 {
    match status {
        400 | 413 | 415 | 431 => 3, // INVALID_ARGUMENT
        408 => 4,                   // DEADLINE_EXCEEDED
        404 => 5,                   // NOT_FOUND
        429 => 8,                   // RESOURCE_EXHAUSTED
        405 | 501 => 12,            // UNIMPLEMENTED
        503 => 14,                  // UNAVAILABLE
        _ => 2,                     // UNKNOWN
    }
}

/// Seconds a client is asked to wait when the queue is full or failing.
pub(super) const RETRY_AFTER_SECONDS: u64 = 5;

/// 200 with an empty `Export*ServiceResponse`: encoded, that is no bytes in
/// protobuf and `{}` in JSON, for any signal.
pub(super) fn success(format: Format) -> Response {
    Response {
        status: 200,
        content_type: format.content_type(),
        headers: Vec::new(),
        body: match format {
            Format::Protobuf => Vec::new(),
            Format::Json => b"{}".to_vec(),
        },
    }
}

/// A failure with a `google.rpc.Status` body; 429 and 503 carry Retry-After.
pub(super) fn failure(format: Format, status: u16, message: &str) -> Response {
    let body = Status {
        code: rpc_code(status),
        message: message.to_string(),
    };
    let mut headers = Vec::new();
    if status == 429 || status == 503 {
        headers.push(("Retry-After", RETRY_AFTER_SECONDS.to_string()));
    }
    if status == 405 {
        headers.push(("Allow", "POST".to_string()));
    }
    Response {
        status,
        content_type: format.content_type(),
        headers,
        body: match format {
            Format::Protobuf => body.encode_to_vec(),
            // Serializing two plain fields cannot fail.
            Format::Json => serde_json::to_vec(&body).unwrap_or_default(),
        },
    }
}
