//! One OTLP/HTTP sender per gateway, on the shared HTTP client, one keep-alive
//! connection, and the classification of every answer into success, retry,
//! split (413), permanent failure or local fault.
//!
//! Redirects are followed here, by hand rather than by ureq, so that every
//! hop is seen and checked: at most [`MAX_REDIRECTS`] of them, a relative
//! `Location` resolved against the URL of the request, the scheme never
//! changed (an https endpoint is never redirected to plain http), and the
//! request kept a POST with the same body and headers for 301, 302, 307 and
//! 308 alike: an OTLP endpoint never wants a GET. The whole chain shares one
//! `export.timeout`.
//!
//! The connection itself (ureq, rustls, TLS setup) is `http::client`'s.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message;

use crate::config::{Compression, ExportConfig};
use crate::http::client::{resolve_location, scheme_of};
use crate::http::{is_https, Client, HttpError};
use crate::otlp::proto::collector;
use crate::otlp::{Codec, MAX_STORED_RAW};
use crate::queue::Signal;

use super::error::ExportError;
use super::retry::parse_retry_after;

/// Largest response body read from a gateway; OTLP responses are tiny, a huge
/// one is a misbehaving peer.
const MAX_RESPONSE_BYTES: u64 = 64 << 10;

/// Most redirects followed for one request. A chain longer than this is a
/// loop or a misconfiguration; the request then fails as retryable
/// ([`ExportError::Redirect`]) and the batch stays queued.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// A batch the gateway took, with what it rejected inside it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// Points, records or spans the gateway reported as rejected in its
    /// `partial_success`.
    pub(crate) rejected: u64,
    /// The gateway's `partial_success.error_message`.
    pub(crate) message: String,
}

/// A redirect the sender followed, for the caller to count and log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Redirect<'a> {
    /// 301, 302, 307 or 308.
    pub(crate) status: u16,
    /// The URL of the request that was redirected.
    pub(crate) from: &'a str,
    /// Where it went: the Location, resolved against `from`.
    pub(crate) to: &'a str,
}

impl Redirect<'_> {
    /// Whether the gateway said the move is for good (301, 308) or used 302,
    /// which clients have long treated like 301: either way the configured
    /// endpoint should be updated. 307 is a temporary detour.
    pub(crate) fn wants_new_endpoint(&self) -> bool {
        matches!(self.status, 301 | 302 | 308)
    }
}

/// A sender to one gateway.
#[derive(Debug)]
pub(crate) struct Sender {
    /// The gateway's base URL, as configured.
    endpoint: String,
    client: Client,
    compression: Compression,
    headers: Vec<(String, String)>,
    /// `export.timeout`: the most one send may take, redirects included.
    timeout: Duration,
    /// The gateway answered 415 to zstd: it gets gzip.
    zstd_refused: AtomicBool,
}

impl Sender {
    /// A sender for `endpoint` with the `[export]` settings.
    pub(crate) fn new(endpoint: &str, config: &ExportConfig) -> Result<Sender, HttpError> {
        Ok(Sender {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            client: Client::new(&config.tls, config.timeout, is_https(endpoint))?,
            compression: config.compression,
            headers: config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: config.timeout,
            zstd_refused: AtomicBool::new(false),
        })
    }

    /// The gateway's base URL.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Posts one stored OTLP request of `signal` (gzip or zstd, as the queue
    /// holds it) and classifies the answer, following redirects.
    pub(crate) fn send(&self, signal: Signal, payload: &[u8]) -> Result<Accepted, ExportError> {
        self.send_observed(signal, payload, &mut |_| {})
    }

    /// The body to post for a stored `payload`, and its `Content-Encoding`:
    /// the stored bytes as they are when the gateway takes their codec (a
    /// gzip batch goes as gzip even with `compression = "zstd"`), else
    /// decompressed, and compressed again with gzip only for a gateway that
    /// refused zstd or a batch stored in zstd before a switch back to gzip.
    fn wire_body<'a>(
        &self,
        payload: &'a [u8],
    ) -> Result<(Cow<'a, [u8]>, Option<&'static str>), ExportError> {
        let stored = Codec::of(payload);
        let gzip_only = match self.compression {
            Compression::None => {
                let plain = crate::otlp::decompress(payload, MAX_STORED_RAW)
                    .map_err(|e| ExportError::Corrupt(format!("decompress: {e}")))?;
                return Ok((Cow::Owned(plain), None));
            }
            Compression::Gzip => true,
            Compression::Zstd(_) => self.zstd_refused.load(Ordering::Relaxed),
        };
        match stored {
            Some(Codec::Zstd) if gzip_only => {
                let plain = crate::otlp::decompress(payload, MAX_STORED_RAW)
                    .map_err(|e| ExportError::Corrupt(format!("decompress: {e}")))?;
                let gzip = crate::otlp::compress_with(Codec::Gzip, &plain).payload;
                Ok((Cow::Owned(gzip), Some("gzip")))
            }
            Some(codec) => Ok((Cow::Borrowed(payload), Some(codec.content_encoding()))),
            // Damage the gateway will refuse; sent as the gzip it should be.
            None => Ok((Cow::Borrowed(payload), Some("gzip"))),
        }
    }

    /// Like [`Sender::send`], calling `on_redirect` for each redirect followed.
    ///
    /// # Errors
    ///
    /// [`ExportError::Corrupt`] before anything is sent when the body must go
    /// uncompressed and does not gunzip; otherwise the answer's class.
    pub(crate) fn send_observed(
        &self,
        signal: Signal,
        payload: &[u8],
        on_redirect: &mut dyn FnMut(&Redirect<'_>),
    ) -> Result<Accepted, ExportError> {
        let (body, encoding) = self.wire_body(payload)?;
        match self.post_following(signal, &body, encoding, on_redirect) {
            // A gateway without zstd (Prometheus's OTLP endpoint takes only
            // gzip): gzip from now on, and this request again at once.
            Err(ExportError::Rejected { status: 415, .. }) if encoding == Some("zstd") => {
                if !self.zstd_refused.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "Gateway refused zstd (415 Unsupported Media Type): sending it gzip from now on endpoint={}",
                        self.endpoint
                    );
                }
                let (body, encoding) = self.wire_body(payload)?;
                self.post_following(signal, &body, encoding, on_redirect)
            }
            other => other,
        }
    }

    /// Posts `body` with `encoding`, following redirects within the timeout.
    fn post_following(
        &self,
        signal: Signal,
        body: &[u8],
        encoding: Option<&'static str>,
        on_redirect: &mut dyn FnMut(&Redirect<'_>),
    ) -> Result<Accepted, ExportError> {
        let deadline = Instant::now() + self.timeout;
        let mut url = format!("{}{}", self.endpoint, path_of(signal));
        let mut hops = 0usize;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ExportError::Timeout);
            }
            match self.post(&url, signal, body, encoding, remaining)? {
                Answer::Done(accepted) => return Ok(accepted),
                Answer::Redirect { status, location } => {
                    let problem = |reason: String| ExportError::Redirect { status, reason };
                    let location = location.ok_or_else(|| problem("no Location header".into()))?;
                    let next = resolve_location(&url, &location)
                        .ok_or_else(|| problem(format!("bad Location header {location:?}")))?;
                    if scheme_of(&next) != scheme_of(&url) {
                        return Err(problem(format!(
                            "refused to change scheme from {} to {}: location={next}",
                            scheme_of(&url),
                            scheme_of(&next)
                        )));
                    }
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        return Err(problem(format!(
                            "more than {MAX_REDIRECTS} redirects: location={next}"
                        )));
                    }
                    on_redirect(&Redirect {
                        status,
                        from: &url,
                        to: &next,
                    });
                    url = next;
                }
            }
        }
    }

    /// One POST of `body` to `url`, taking at most `timeout`.
    fn post(
        &self,
        url: &str,
        signal: Signal,
        body: &[u8],
        encoding: Option<&'static str>,
        timeout: Duration,
    ) -> Result<Answer, ExportError> {
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(self.headers.len() + 2);
        headers.push(("Content-Type", "application/x-protobuf"));
        if let Some(encoding) = encoding {
            headers.push(("Content-Encoding", encoding));
        }
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let answer = match self
            .client
            .post(url, &headers, body, timeout, MAX_RESPONSE_BYTES)
        {
            Ok(a) => a,
            Err(HttpError::Timeout(_)) => return Err(ExportError::Timeout),
            Err(HttpError::Http(e)) => return Err(ExportError::Network(e)),
            Err(e) => return Err(ExportError::Network(Box::new(e))),
        };
        let status = answer.status;
        let retry_after = answer.retry_after.as_deref().and_then(parse_retry_after);
        let is_protobuf = answer
            .content_type
            .is_some_and(|ct| ct.starts_with("application/x-protobuf"));
        let body = answer.body;
        match status {
            200..=299 => Ok(Answer::Done(if is_protobuf {
                partial_success(signal, &body)
            } else {
                Accepted::default()
            })),
            301 | 302 | 307 | 308 => Ok(Answer::Redirect {
                status,
                location: answer.location,
            }),
            408 | 429 | 500..=599 => Err(ExportError::Unavailable {
                status,
                retry_after,
            }),
            413 => Err(ExportError::TooLarge {
                message: rejection_message(&body, is_protobuf),
            }),
            _ => Err(ExportError::Rejected {
                status,
                message: rejection_message(&body, is_protobuf),
            }),
        }
    }
}

/// A gateway's answer to one POST, before redirects are followed.
enum Answer {
    /// 2xx.
    Done(Accepted),
    /// 301, 302, 307 or 308, with the Location header if any.
    Redirect {
        status: u16,
        location: Option<String>,
    },
}

/// The OTLP/HTTP path of each signal.
pub(crate) fn path_of(signal: Signal) -> &'static str {
    match signal {
        Signal::Metrics => "/v1/metrics",
        Signal::Logs => "/v1/logs",
        Signal::Traces => "/v1/traces",
    }
}

fn partial_success(signal: Signal, body: &[u8]) -> Accepted {
    let (rejected, message) = match signal {
        Signal::Metrics => collector::metrics::v1::ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| {
                (
                    u64::try_from(p.rejected_data_points).unwrap_or(0),
                    p.error_message,
                )
            }),
        Signal::Logs => collector::logs::v1::ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| {
                (
                    u64::try_from(p.rejected_log_records).unwrap_or(0),
                    p.error_message,
                )
            }),
        Signal::Traces => collector::trace::v1::ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| {
                (
                    u64::try_from(p.rejected_spans).unwrap_or(0),
                    p.error_message,
                )
            }),
    }
    .unwrap_or_default();
    Accepted { rejected, message }
}

/// The gateway's error text: the google.rpc.Status message of a protobuf body,
/// else the start of a text body, cut to one short line for the log.
fn rejection_message(body: &[u8], is_protobuf: bool) -> String {
    let text = if is_protobuf {
        // google.rpc.Status: field 2 is the message.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Status {
            #[prost(int32, tag = "1")]
            code: i32,
            #[prost(string, tag = "2")]
            message: String,
        }
        Status::decode(body).map(|s| s.message).unwrap_or_default()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    let line: String = text
        .split('\n')
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    line.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_google_rpc_status_messages() {
        // Status{code: 3, message: "bad"}
        let body = [0x08, 0x03, 0x12, 0x03, b'b', b'a', b'd'];
        assert_eq!(rejection_message(&body, true), "bad");
        assert_eq!(rejection_message(b"oops\nmore", false), "oops");
    }
}
