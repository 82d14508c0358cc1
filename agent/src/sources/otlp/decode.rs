//! From a request body to the protobuf bytes the queue stores: content type
//! and encoding, gzip within the size limit, decoding (protobuf or
//! OTLP/JSON), counting items, and the `[resource]` attributes.

use std::borrow::Cow;
use std::fmt;

use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost::Message;

use crate::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use crate::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::proto::common::v1::KeyValue;
use crate::otlp::proto::resource::v1::Resource;
use crate::otlp::request::Request;
use crate::otlp::{kv, GunzipError};
use crate::queue::Signal;

/// How a request body is encoded; responses use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`: OTLP/JSON.
    Json,
}

impl Format {
    /// The format of a Content-Type header value, if it is one OTLP/HTTP uses.
    /// Parameters (`; charset=utf-8`) and case do not matter.
    pub fn of(content_type: &str) -> Option<Format> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Format::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Format::Json)
        } else {
            None
        }
    }

    /// The Content-Type to answer with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// Why a request body was refused; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The Content-Type is missing or not one of OTLP/HTTP's (415).
    UnsupportedMediaType(String),
    /// The Content-Encoding is not gzip or identity (415).
    UnsupportedEncoding(String),
    /// The body, or what it decompressed to, is over `max_request_size` (413).
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body is not valid gzip: truncated, corrupt or trailing garbage (400).
    Gzip(String),
    /// The body is not a valid protobuf request of the route's signal (400).
    Protobuf(String),
    /// The body is not a valid OTLP/JSON request of the route's signal (400).
    Json(String),
}

impl RequestError {
    /// The HTTP status the OTLP/HTTP specification gives this error.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::UnsupportedMediaType(_) | RequestError::UnsupportedEncoding(_) => 415,
            RequestError::TooLarge { .. } => 413,
            RequestError::Gzip(_) | RequestError::Protobuf(_) | RequestError::Json(_) => 400,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::UnsupportedMediaType(t) if t.is_empty() => f.write_str(
                "unsupported media type: no content-type, expected application/x-protobuf or application/json",
            ),
            RequestError::UnsupportedMediaType(t) => write!(
                f,
                "unsupported media type: {t:?}, expected application/x-protobuf or application/json"
            ),
            RequestError::UnsupportedEncoding(e) => write!(
                f,
                "unsupported content-encoding: {e:?}, expected gzip or none"
            ),
            RequestError::TooLarge { limit } => write!(
                f,
                "request too large: more than {limit} bytes after decompression"
            ),
            RequestError::Gzip(e) => write!(f, "invalid gzip body: {e}"),
            RequestError::Protobuf(e) => write!(f, "invalid protobuf body: {e}"),
            RequestError::Json(e) => write!(f, "invalid json body: {e}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// A decoded, accepted request, ready to be compressed and queued.
#[derive(Debug)]
pub struct Prepared<'a> {
    /// How the request was encoded.
    pub format: Format,
    /// The `Export*ServiceRequest` as protobuf: the body itself when it was
    /// protobuf (unknown fields kept), with the `[resource]` attributes added.
    pub raw: Cow<'a, [u8]>,
    /// Spans, log records or data points in it.
    pub items: usize,
}

/// Decodes one request body for `signal` and adds `resource` attributes to
/// each of its resources, without overwriting any the application set.
///
/// `content_type` and `content_encoding` are the header values (`None` when
/// absent); bodies and decompressed bodies over `max_size` are refused.
///
/// # Errors
///
/// A [`RequestError`] saying what is wrong with the request, for a 4xx.
pub fn prepare<'a>(
    signal: Signal,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &'a [u8],
    max_size: usize,
    resource: &[(String, String)],
) -> Result<Prepared<'a>, RequestError> {
    let format = Format::of(content_type.unwrap_or("")).ok_or_else(|| {
        RequestError::UnsupportedMediaType(content_type.unwrap_or("").chars().take(100).collect())
    })?;
    if body.len() > max_size {
        return Err(RequestError::TooLarge { limit: max_size });
    }
    let body: Cow<'a, [u8]> = match content_encoding.map(str::trim) {
        None | Some("") => Cow::Borrowed(body),
        Some(e) if e.eq_ignore_ascii_case("identity") => Cow::Borrowed(body),
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
            Cow::Owned(gunzip(body, max_size)?)
        }
        Some(e) => {
            return Err(RequestError::UnsupportedEncoding(
                e.chars().take(100).collect(),
            ))
        }
    };
    let (items, raw) = match signal {
        Signal::Traces => with_resource::<ExportTraceServiceRequest>(format, body, resource)?,
        Signal::Logs => with_resource::<ExportLogsServiceRequest>(format, body, resource)?,
        Signal::Metrics => with_resource::<ExportMetricsServiceRequest>(format, body, resource)?,
    };
    Ok(Prepared { format, raw, items })
}

/// Longest decoder message passed on to the client.
const MAX_DETAIL: usize = 300;

fn detail(e: impl fmt::Display) -> String {
    let mut s = e.to_string();
    if s.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn decode<T>(format: Format, body: &[u8]) -> Result<T, RequestError>
where
    T: Message + Default + for<'de> serde::Deserialize<'de>,
{
    match format {
        Format::Protobuf => T::decode(body).map_err(|e| RequestError::Protobuf(detail(e))),
        Format::Json => serde_json::from_slice(body).map_err(|e| RequestError::Json(detail(e))),
    }
}

/// Decompresses a gzip body of at most `max_size` bytes.
fn gunzip(body: &[u8], max_size: usize) -> Result<Vec<u8>, RequestError> {
    crate::otlp::gunzip(body, max_size).map_err(|e| match e {
        GunzipError::TooLarge { .. } => RequestError::TooLarge { limit: max_size },
        GunzipError::Invalid(e) => RequestError::Gzip(detail(e)),
    })
}

/// Decodes the request and counts its items, then makes the protobuf to
/// store: for a protobuf body, the body
/// itself with the missing `resource` attributes spliced in (so fields this
/// tern does not know reach the gateway too); for JSON, the request encoded
/// after adding them.
fn with_resource<'a, T>(
    format: Format,
    body: Cow<'a, [u8]>,
    resource: &[(String, String)],
) -> Result<(usize, Cow<'a, [u8]>), RequestError>
where
    T: Request + for<'de> serde::Deserialize<'de>,
{
    let mut request: T = decode(format, &body)?;
    let items = request.count();
    if format == Format::Protobuf {
        if resource.is_empty() {
            return Ok((items, body));
        }
        let missing: Vec<Vec<KeyValue>> = request
            .entries()
            .iter()
            .map(|e| missing_attributes(T::resource(e).as_ref(), resource))
            .collect();
        if missing.iter().all(Vec::is_empty) {
            return Ok((items, body));
        }
        if let Some(spliced) = splice_resources(&body, &missing) {
            return Ok((items, Cow::Owned(spliced)));
        }
    }
    for e in request.entries_mut() {
        let r = T::resource_mut(e);
        let add = missing_attributes(r.as_ref(), resource);
        if !add.is_empty() {
            r.get_or_insert_with(Resource::default)
                .attributes
                .extend(add);
        }
    }
    Ok((items, Cow::Owned(request.encode_to_vec())))
}

/// The `resource` attributes whose keys `r` does not have.
fn missing_attributes(r: Option<&Resource>, resource: &[(String, String)]) -> Vec<KeyValue> {
    resource
        .iter()
        .filter(|(k, _)| !r.is_some_and(|r| r.attributes.iter().any(|a| &a.key == k)))
        .map(|(k, v)| kv(k.as_str(), v.as_str()))
        .collect()
}

/// Appends `missing[i]` to the resource of the i-th `resource_*` entry (field
/// 1 of every `Export*ServiceRequest`) of an encoded request, leaving every
/// other byte as it was. Protobuf merges a repeated embedded message field
/// into the one before it, so an appended `Resource { attributes }` adds
/// those attributes to the entry's resource (or creates it).
///
/// `None` if the encoding is not what decoding just accepted (groups, or a
/// different number of entries); the caller then re-encodes instead.
///
/// See: <https://protobuf.dev/programming-guides/encoding/#last-one-wins>
fn splice_resources(raw: &[u8], missing: &[Vec<KeyValue>]) -> Option<Vec<u8>> {
    let extra: usize = missing.iter().flatten().map(|a| a.encoded_len() + 8).sum();
    let mut out = Vec::with_capacity(raw.len() + extra + 16 * missing.len());
    let mut input = raw;
    let mut entry = 0;
    while !input.is_empty() {
        let start = input;
        let (tag, wire_type) = decode_key(&mut input).ok()?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut input).ok()?;
            }
            WireType::SixtyFourBit => input = input.get(8..)?,
            WireType::ThirtyTwoBit => input = input.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut input).ok()?).ok()?;
                let payload = input.get(..len)?;
                input = input.get(len..)?;
                if tag == 1 {
                    let add = missing.get(entry)?;
                    entry += 1;
                    if !add.is_empty() {
                        let resource = Resource {
                            attributes: add.clone(),
                            ..Resource::default()
                        };
                        let mut appended = Vec::with_capacity(resource.encoded_len() + 8);
                        encode_key(1, WireType::LengthDelimited, &mut appended);
                        encode_varint(resource.encoded_len() as u64, &mut appended);
                        // Encoding into a Vec that grows cannot fail.
                        let _ = resource.encode(&mut appended);
                        encode_key(1, WireType::LengthDelimited, &mut out);
                        encode_varint((payload.len() + appended.len()) as u64, &mut out);
                        out.extend_from_slice(payload);
                        out.extend_from_slice(&appended);
                        continue;
                    }
                }
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        }
        let used = start.len() - input.len();
        out.extend_from_slice(start.get(..used)?);
    }
    (entry == missing.len()).then_some(out)
}
