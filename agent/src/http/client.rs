//! The HTTP client: ureq with rustls, tern's TLS settings, and the errors of
//! a request, for the scrapes (GET), the exporter's senders (POST) and
//! `tern queue` (GET from a running agent).
//!
//! One keep-alive connection per host, no redirect followed by ureq (the
//! exporter follows them by hand, see `export::sender`), `http_status_as_error`
//! off so that every status reaches the caller. A plain-HTTP client loads no
//! root certificates; a TLS one shares the system roots read once per process.
//!
//! No `ureq::` type leaves this file.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The `[export.tls]` and `[scrape.tls]` sections: the TLS settings of the
/// HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// PEM file of CA certificates trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name checked in the gateway's certificate instead of the URL's host.
    pub server_name: Option<String>,
    /// Skip certificate checks. For tests only. Defaults to false.
    pub insecure_skip_verify: bool,
}

/// Why a request failed, or a client could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum HttpError {
    /// A problem with the local TLS setup (an unreadable or empty CA,
    /// certificate or key file): the reason starts with the file's path.
    /// Fix the file named, or `tls.*` in the config.
    Tls(String),
    /// No answer within the client's (or the request's) timeout.
    Timeout(Box<dyn std::error::Error + Send + Sync>),
    /// The server could not be reached, or the exchange failed (refused,
    /// reset, DNS, TLS handshake, a broken body).
    Http(Box<dyn std::error::Error + Send + Sync>),
    /// The body, after decompression, is larger than the limit given.
    TooLarge(u64),
}

impl HttpError {
    fn from_ureq(e: ureq::Error) -> HttpError {
        match e {
            ureq::Error::Timeout(_) => HttpError::Timeout(Box::new(e)),
            e => HttpError::Http(Box::new(e)),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Tls(reason) => write!(f, "tls setup: {reason}"),
            HttpError::Timeout(e) | HttpError::Http(e) => write!(f, "http: {e}"),
            HttpError::TooLarge(limit) => write!(f, "body exceeds the limit of {limit} bytes"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Timeout(e) | HttpError::Http(e) => Some(e.as_ref()),
            HttpError::Tls(_) | HttpError::TooLarge(_) => None,
        }
    }
}

/// An answer to [`Client::post`], with the headers tern reads.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The Content-Type header, if any.
    pub(crate) content_type: Option<String>,
    /// The Location header, if any.
    pub(crate) location: Option<String>,
    /// The Retry-After header, if any.
    pub(crate) retry_after: Option<String>,
    /// The body, cut at the limit given.
    pub(crate) body: Vec<u8>,
}

/// An HTTP client with tern's TLS settings (system roots plus `ca_file`,
/// client certificates) and one keep-alive connection per host. Scrapes use it
/// too, and `tern queue`, so that ureq stays inside this file.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    agent: ureq::Agent,
}

/// A body fetched with [`Client::get`].
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The body, decompressed when the server sent gzip.
    pub(crate) body: Vec<u8>,
}

impl Client {
    /// A client whose requests take at most `timeout` each. `https`: whether
    /// it will talk TLS at all; a plain-HTTP client does not load the system's
    /// root certificates (about 200 KB of heap on a Debian box).
    pub(crate) fn new(
        tls: &TlsConfig,
        timeout: Duration,
        https: bool,
    ) -> Result<Client, HttpError> {
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
    pub(crate) fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        limit: u64,
    ) -> Result<Fetched, HttpError> {
        self.get_with(url, headers, limit, |status, _, reader| {
            let mut body = Vec::new();
            reader
                .read_to_end(&mut body)
                .map(|_| Fetched { status, body })
        })?
        .map_err(|e| HttpError::Http(Box::new(e)))
    }

    /// GETs `url` and gives the answer's status and Content-Type, and a
    /// reader of its (decompressed) body, to `read`, which reads as much as
    /// it wants as the body arrives: a scrape parses it from there, and
    /// never holds it whole. Reading more than `limit` bytes fails, and the
    /// result is then [`HttpError::TooLarge`]. The client's timeout covers
    /// the whole exchange, reading included.
    pub(crate) fn get_with<T>(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        limit: u64,
        read: impl FnOnce(u16, Option<&str>, &mut dyn std::io::Read) -> T,
    ) -> Result<T, HttpError> {
        let mut request = self.agent.get(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut response = request.call().map_err(HttpError::from_ureq)?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Limited {
            inner: response.body_mut().as_reader(),
            left: limit,
            over: false,
        };
        let result = read(status, content_type.as_deref(), &mut body);
        if body.over {
            return Err(HttpError::TooLarge(limit));
        }
        Ok(result)
    }

    /// POSTs `body` to `url` with `headers`, taking at most `timeout`, and
    /// reads at most `limit` bytes of the answer's body (the rest is cut).
    /// Redirects are not followed: the caller sees them and decides.
    ///
    /// # Errors
    ///
    /// [`HttpError::Timeout`] when no answer came in time, [`HttpError::Http`]
    /// when the connection could not be made or broke.
    pub(crate) fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
        limit: u64,
    ) -> Result<Reply, HttpError> {
        let mut request = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(timeout))
            .build();
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut response = request.send(body).map_err(HttpError::from_ureq)?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after");
        let location = header("location");
        let content_type = header("content-type");
        // Read to the end even when unused, so the connection can be reused.
        let body = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .unwrap_or_default();
        Ok(Reply {
            status,
            content_type,
            location,
            retry_after,
            body,
        })
    }
}

/// A body reader that fails once more than its limit has come.
struct Limited<R> {
    inner: R,
    left: u64,
    /// Set when the body went past the limit.
    over: bool,
}

impl<R: std::io::Read> std::io::Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the limit: one more byte means over it.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.over = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "body exceeds the size limit",
            ));
        }
        let room = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, _) = buf.split_at_mut(room);
        let n = self.inner.read(head)?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Whether `url` needs TLS.
pub(crate) fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// Whether a request failed before it had a connection: refused, no route,
/// or a name that does not resolve (the server was not there to answer).
pub(crate) fn is_connect_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            // By errno: the ErrorKinds of the last two need Rust 1.83.
            let unreachable = [
                rustix::io::Errno::HOSTUNREACH,
                rustix::io::Errno::NETUNREACH,
            ]
            .map(|e| Some(e.raw_os_error()));
            if io.kind() == std::io::ErrorKind::ConnectionRefused
                || unreachable.contains(&io.raw_os_error())
            {
                return true;
            }
        }
        if matches!(
            c.downcast_ref::<ureq::Error>(),
            Some(ureq::Error::ConnectionFailed | ureq::Error::HostNotFound)
        ) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The host and port an absolute http(s) URL connects to (80 or 443 when it
/// names none), for a TCP-level reachability check. `None` when it has none.
pub(crate) fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let host = uri.host().filter(|h| !h.is_empty())?;
    // An IPv6 literal comes bracketed; connecting wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if is_https(url) { 443 } else { 80 });
    Some((host.to_string(), port))
}

/// The scheme of an absolute URL, lowercased for comparison; "" when none.
pub(crate) fn scheme_of(url: &str) -> String {
    url.split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Resolves a redirect's `location` against the URL `base` of the request
/// (RFC 3986, section 5.2, for the forms servers send: absolute, scheme
/// relative, absolute path, relative path, query only), without its
/// fragment. `None` when the result is not a usable http or https URL.
pub(crate) fn resolve_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    let location = location.split('#').next().unwrap_or("");
    if location.is_empty() {
        return None;
    }
    let (base_scheme, base_rest) = base.split_once("://")?;
    let base_authority_end = base_rest.find(['/', '?']).unwrap_or(base_rest.len());
    let (authority, base_path_query) = base_rest.split_at(base_authority_end);
    let base_path = base_path_query.split('?').next().unwrap_or("");
    let has_scheme = location.find(':').is_some_and(|i| {
        location.get(..i).is_some_and(|s| {
            !s.is_empty()
                && s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
    });
    let resolved = if has_scheme {
        let (scheme, rest) = location.split_once(':')?;
        let rest = rest.strip_prefix("//")?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (auth, path_query) = rest.split_at(end);
        format!(
            "{}://{auth}{}",
            scheme.to_ascii_lowercase(),
            normalize(path_query)
        )
    } else if let Some(rest) = location.strip_prefix("//") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (auth, path_query) = rest.split_at(end);
        format!("{base_scheme}://{auth}{}", normalize(path_query))
    } else if location.starts_with('/') {
        format!("{base_scheme}://{authority}{}", normalize(location))
    } else if location.starts_with('?') {
        format!("{base_scheme}://{authority}{base_path}{location}")
    } else {
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!(
            "{base_scheme}://{authority}{}",
            normalize(&format!("{dir}{location}"))
        )
    };
    let uri: ureq::http::Uri = resolved.parse().ok()?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    (scheme_ok && uri.host().is_some_and(|h| !h.is_empty())).then_some(resolved)
}

/// A path (with its query) with `.` and `..` segments removed (RFC 3986,
/// section 5.2.4), and "/" for an empty path.
fn normalize(path_query: &str) -> String {
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // A trailing dot segment leaves a directory: keep its slash.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path_query.len() + 1);
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() {
        result.push('/');
    }
    if let Some(q) = query {
        result.push('?');
        result.push_str(q);
    }
    result
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

fn tls_config(tls: &TlsConfig, https: bool) -> Result<ureq::tls::TlsConfig, HttpError> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts};
    let mut builder =
        ureq::tls::TlsConfig::builder().disable_verification(tls.insecure_skip_verify);
    let mut extra: Vec<Certificate<'static>> = Vec::new();
    if let Some(path) = &tls.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| HttpError::Tls(format!("{}: {e}", path.display())))?;
        for item in ureq::tls::parse_pem(&pem) {
            if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                extra.push(c);
            }
        }
        if extra.is_empty() {
            return Err(HttpError::Tls(format!(
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
            std::fs::read(p).map_err(|e| HttpError::Tls(format!("{}: {e}", p.display())))
        };
        let cert_pem = read(cert)?;
        let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&cert_pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if chain.is_empty() {
            return Err(HttpError::Tls(format!(
                "{}: no PEM certificate found",
                cert.display()
            )));
        }
        let key = PrivateKey::from_pem(&read(key)?)
            .map_err(|e| HttpError::Tls(format!("{}: {e}", key.display())))?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_defaults_by_scheme_and_unbrackets_ipv6() {
        let hp = |u: &str| host_port(u).map(|(h, p)| format!("{h} {p}"));
        assert_eq!(
            hp("http://gw.example:4318").as_deref(),
            Some("gw.example 4318")
        );
        assert_eq!(
            hp("https://gw.example/otlp").as_deref(),
            Some("gw.example 443")
        );
        assert_eq!(hp("http://10.0.0.1").as_deref(), Some("10.0.0.1 80"));
        assert_eq!(hp("http://[::1]:4318").as_deref(), Some("::1 4318"));
        assert_eq!(hp("not a url"), None);
    }

    #[test]
    fn errors_keep_their_cause_and_stay_small() {
        use std::error::Error;
        let e = HttpError::Http("connection refused".into());
        assert_eq!(e.to_string(), "http: connection refused");
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("connection refused")
        );
        assert_eq!(
            HttpError::Tls("/x: no PEM certificate found".into()).to_string(),
            "tls setup: /x: no PEM certificate found"
        );
        assert!(std::mem::size_of::<HttpError>() <= 32);
    }
}
