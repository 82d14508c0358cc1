//! One OTLP/HTTP sender per gateway: ureq with rustls, one keep-alive
//! connection, and the classification of every answer into success, retry or
//! permanent failure.
//!
//! No `ureq::` type leaves this file.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::Message;

use crate::config::{Compression, ExportConfig, TlsConfig};
use crate::otlp::proto::collector;
use crate::queue::Signal;

use super::retry::parse_retry_after;

/// Largest response body read from a gateway; OTLP responses are tiny, a huge
/// one is a misbehaving peer.
const MAX_RESPONSE_BYTES: u64 = 64 << 10;

/// Why a request to a gateway failed, classed by whose fault it was so that
/// retry code matches on the class and never on strings.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExportError {
    /// The gateway answered 408, 429, 502, 503, 504 or another 5xx: try again
    /// later, after `retry_after` when it said so.
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// The gateway's Retry-After, if any.
        retry_after: Option<Duration>,
    },
    /// No answer within `export.timeout`.
    Timeout,
    /// The connection could not be made or broke (refused, reset, DNS, TLS
    /// handshake). Retried.
    Network(String),
    /// The gateway refused the batch for good (a 4xx other than 408 and 429):
    /// sending it again cannot help, so it is dropped and counted.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The first part of the gateway's message.
        message: String,
    },
}

impl ExportError {
    /// Whether sending the same batch again may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ExportError::Rejected { .. })
    }

    /// The Retry-After the gateway asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExportError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for the `reason` of self metrics: `http_503`, `timeout`, `network`.
    pub fn reason(&self) -> String {
        match self {
            ExportError::Unavailable { status, .. } | ExportError::Rejected { status, .. } => {
                format!("http_{status}")
            }
            ExportError::Timeout => "timeout".into(),
            ExportError::Network(_) => "network".into(),
        }
    }
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Unavailable { status, .. } => {
                write!(f, "gateway unavailable: status {status}")
            }
            ExportError::Timeout => write!(f, "timeout"),
            ExportError::Network(e) => write!(f, "network: {e}"),
            ExportError::Rejected { status, message } => {
                write!(f, "rejected: status {status}: {message}")
            }
        }
    }
}

impl std::error::Error for ExportError {}

/// A batch the gateway took, with what it rejected inside it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Points, records or spans the gateway reported as rejected in its
    /// `partial_success`.
    pub rejected: u64,
    /// The gateway's `partial_success.error_message`.
    pub message: String,
}

/// A sender to one gateway.
#[derive(Debug)]
pub struct Sender {
    /// The gateway's base URL, as configured.
    endpoint: String,
    client: Client,
    compression: Compression,
    headers: Vec<(String, String)>,
}

/// An HTTP client with tern's TLS settings (system roots plus `ca_file`,
/// client certificates) and one keep-alive connection per host. Scrapes use it
/// too, so that ureq stays inside this file.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
}

/// A body fetched with [`Client::get`].
#[derive(Debug)]
pub struct Fetched {
    /// The HTTP status.
    pub status: u16,
    /// The Content-Type header, if any.
    pub content_type: Option<String>,
    /// The body, decompressed when the server sent gzip.
    pub body: Vec<u8>,
}

/// Why [`Client::get`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchError {
    /// The server could not be reached, or the exchange failed or timed out.
    Http(String),
    /// The body, after decompression, is larger than the limit given.
    TooLarge(u64),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Http(e) => write!(f, "http: {e}"),
            FetchError::TooLarge(limit) => write!(f, "body exceeds the limit of {limit} bytes"),
        }
    }
}

impl std::error::Error for FetchError {}

impl Client {
    /// A client whose requests take at most `timeout` each. `https`: whether
    /// it will talk TLS at all; a plain-HTTP client does not load the system's
    /// root certificates (about 200 KB of heap on a Debian box).
    pub fn new(tls: &TlsConfig, timeout: Duration, https: bool) -> Result<Client, TlsSetupError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections(4)
            .max_idle_connections_per_host(1)
            .max_redirects(0)
            .user_agent(concat!("tern/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(tls, https)?)
            .build()
            .into();
        Ok(Client { agent })
    }

    /// GETs `url`, reading at most `limit` bytes of (decompressed) body.
    pub fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        limit: u64,
    ) -> Result<Fetched, FetchError> {
        self.get_into(url, headers, limit, Vec::new())
    }

    /// Like [`Client::get`], reading the body into `buffer` (cleared first), so
    /// that a caller fetching the same large body again and again reuses one
    /// allocation instead of growing a new one each time.
    pub fn get_into(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        limit: u64,
        mut buffer: Vec<u8>,
    ) -> Result<Fetched, FetchError> {
        use std::io::Read;
        let mut request = self.agent.get(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut response = request
            .call()
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        buffer.clear();
        let mut body = buffer;
        // Read one byte past the limit to tell "at the limit" from "over it".
        response
            .body_mut()
            .as_reader()
            .take(limit.saturating_add(1))
            .read_to_end(&mut body)
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if u64::try_from(body.len()).unwrap_or(u64::MAX) > limit {
            return Err(FetchError::TooLarge(limit));
        }
        Ok(Fetched {
            status,
            content_type,
            body,
        })
    }
}

/// A problem with the local TLS setup (unreadable CA or key file).
#[derive(Debug)]
pub struct TlsSetupError(pub String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls setup: {}", self.0)
    }
}

impl std::error::Error for TlsSetupError {}

impl Sender {
    /// A sender for `endpoint` with the `[export]` settings.
    pub fn new(endpoint: &str, config: &ExportConfig) -> Result<Sender, TlsSetupError> {
        Ok(Sender {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            client: Client::new(&config.tls, config.timeout, is_https(endpoint))?,
            compression: config.compression,
            headers: config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The gateway's base URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Posts one gzip-compressed OTLP request body of `signal` and classifies the answer.
    pub fn send(&self, signal: Signal, gzip_body: &[u8]) -> Result<Accepted, ExportError> {
        let url = format!("{}{}", self.endpoint, path_of(signal));
        let plain;
        let mut request = self
            .client
            .agent
            .post(&url)
            .header("Content-Type", "application/x-protobuf");
        let body: &[u8] = match self.compression {
            Compression::Gzip => {
                request = request.header("Content-Encoding", "gzip");
                gzip_body
            }
            Compression::None => {
                plain = gunzip(gzip_body)
                    .map_err(|e| ExportError::Network(format!("stored batch: {e}")))?;
                &plain
            }
        };
        for (k, v) in &self.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let mut response = match request.send(body) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => return Err(ExportError::Timeout),
            Err(e) => return Err(ExportError::Network(e.to_string())),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let is_protobuf = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-protobuf"));
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .unwrap_or_default();
        match status {
            200..=299 => Ok(if is_protobuf {
                partial_success(signal, &body)
            } else {
                Accepted::default()
            }),
            408 | 429 | 500..=599 => Err(ExportError::Unavailable {
                status,
                retry_after,
            }),
            _ => Err(ExportError::Rejected {
                status,
                message: rejection_message(&body, is_protobuf),
            }),
        }
    }
}

/// The OTLP/HTTP path of each signal.
pub fn path_of(signal: Signal) -> &'static str {
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

/// Whether `url` needs TLS.
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

/// The system's root certificates, read once per process and shared by every
/// client that talks TLS; `None` when the system has none.
fn system_roots() -> Option<Arc<Vec<ureq::tls::Certificate<'static>>>> {
    static ROOTS: OnceLock<Option<Arc<Vec<ureq::tls::Certificate<'static>>>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let native = rustls_native_certs::load_native_certs();
            let roots: Vec<_> = native
                .certs
                .iter()
                .map(|cert| ureq::tls::Certificate::from_der(cert.as_ref()).to_owned())
                .collect();
            (!roots.is_empty()).then(|| Arc::new(roots))
        })
        .clone()
}

fn tls_config(tls: &TlsConfig, https: bool) -> Result<ureq::tls::TlsConfig, TlsSetupError> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts};
    let mut builder =
        ureq::tls::TlsConfig::builder().disable_verification(tls.insecure_skip_verify);
    let mut extra: Vec<Certificate<'static>> = Vec::new();
    if let Some(path) = &tls.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| TlsSetupError(format!("{}: {e}", path.display())))?;
        for item in ureq::tls::parse_pem(&pem) {
            if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                extra.push(c);
            }
        }
        if extra.is_empty() {
            return Err(TlsSetupError(format!(
                "{}: no PEM certificate found",
                path.display()
            )));
        }
    }
    // The compiled-in webpki roots cost no heap until a TLS connection: what a
    // plain-HTTP client gets, and the fallback on a system without roots.
    let system = if https { system_roots() } else { None };
    builder = builder.root_certs(match (system, extra.is_empty()) {
        (None, true) => RootCerts::WebPki,
        (Some(system), true) => RootCerts::Specific(system),
        (system, false) => {
            let mut roots = system.map(|s| s.to_vec()).unwrap_or_default();
            roots.extend(extra);
            RootCerts::new_with_certs(&roots)
        }
    });
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| TlsSetupError(format!("{}: {e}", p.display())))
        };
        let cert_pem = read(cert)?;
        let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&cert_pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if chain.is_empty() {
            return Err(TlsSetupError(format!(
                "{}: no PEM certificate found",
                cert.display()
            )));
        }
        let key = PrivateKey::from_pem(&read(key)?)
            .map_err(|e| TlsSetupError(format!("{}: {e}", key.display())))?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_fault() {
        assert!(ExportError::Unavailable {
            status: 503,
            retry_after: None
        }
        .is_retryable());
        assert!(ExportError::Timeout.is_retryable());
        assert!(ExportError::Network("reset".into()).is_retryable());
        assert!(!ExportError::Rejected {
            status: 400,
            message: String::new()
        }
        .is_retryable());
        assert_eq!(
            ExportError::Rejected {
                status: 400,
                message: String::new()
            }
            .reason(),
            "http_400"
        );
        assert!(std::mem::size_of::<ExportError>() <= 64);
    }

    #[test]
    fn reads_google_rpc_status_messages() {
        // Status{code: 3, message: "bad"}
        let body = [0x08, 0x03, 0x12, 0x03, b'b', b'a', b'd'];
        assert_eq!(rejection_message(&body, true), "bad");
        assert_eq!(rejection_message(b"oops\nmore", false), "oops");
    }
}
