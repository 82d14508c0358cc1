//! OTLP encoding: the OTLP v1 protobuf messages every source produces and the
//! exporter sends (see [`proto`]), and the step that turns a request into the
//! compressed bytes the queue stores.
//!
//! Sources build `Export*ServiceRequest` messages in bounded chunks; [`encode`]
//! turns each into one gzip-compressed batch. The queue stores gzip so that
//! the disk, the SD card's wear and the uplink all see the small form, and the
//! sender posts the stored bytes as they are (`Content-Encoding: gzip`).

pub mod proto;
pub mod request;
pub mod wire;

use proto::common::v1::{any_value, AnyValue, KeyValue};

/// A string attribute.
pub fn kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// An encoded, gzip-compressed OTLP request, ready for the queue.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The gzip-compressed protobuf.
    pub gzip: Vec<u8>,
    /// The protobuf size before compression.
    pub raw_len: usize,
}

/// gzip level for batches: level 1 keeps compression far below the 0.5 us per
/// sample budget and still shrinks OTLP metrics about 10x (repeated attribute
/// keys and values compress well even at the fastest level).
const GZIP_LEVEL: u32 = 1;

/// Encodes `message` and compresses it with gzip.
pub fn encode(message: &impl prost::Message) -> Encoded {
    let mut raw = Vec::with_capacity(message.encoded_len());
    // Encoding into a Vec that grows cannot fail.
    let _ = message.encode(&mut raw);
    compress(&raw)
}

/// Compresses an already encoded request with gzip, as [`encode`] does; the
/// OTLP receiver stores what applications sent this way, unknown fields and all.
pub fn compress(raw: &[u8]) -> Encoded {
    // A deflate state holds about 300 KiB of tables; making one per batch cost
    // more than compressing a 2000-point batch, so each thread keeps its own.
    thread_local! {
        static DEFLATE: std::cell::RefCell<Option<flate2::Compress>> = const { std::cell::RefCell::new(None) };
    }
    DEFLATE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            let deflate = slot.get_or_insert_with(|| {
                flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL), false)
            });
            deflate.reset();
            gzip_with(deflate, raw)
        }
        // Only reachable if compress re-entered itself on this thread.
        Err(_) => gzip_with(
            &mut flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL), false),
            raw,
        ),
    })
}

/// The fixed gzip member header: deflate, no flags, no time, unknown OS.
/// See: RFC 1952, section 2.3.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Wraps raw deflate output of `raw` in a gzip member (RFC 1952).
fn gzip_with(deflate: &mut flate2::Compress, raw: &[u8]) -> Encoded {
    let mut out = Vec::with_capacity(raw.len() / 4 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    loop {
        let before_in = deflate.total_in();
        let consumed = usize::try_from(before_in)
            .unwrap_or(usize::MAX)
            .min(raw.len());
        let input = raw.get(consumed..).unwrap_or(&[]);
        if out.capacity() - out.len() < 64 {
            out.reserve(out.len().max(1024));
        }
        match deflate.compress_vec(input, &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => break,
            Ok(_) => continue,
            // Deflating into a Vec with room cannot fail; stop rather than loop.
            Err(_) => break,
        }
    }
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    // ISIZE is the length modulo 2^32, by definition (RFC 1952, 2.3.1).
    let isize = u32::try_from(raw.len() as u64 % (1 << 32)).unwrap_or(0);
    out.extend_from_slice(&isize.to_le_bytes());
    // The guess above is often three times what deflate made, and a large
    // scrape holds its batches until it is complete.
    out.shrink_to_fit();
    Encoded {
        gzip: out,
        raw_len: raw.len(),
    }
}

/// Largest decompressed batch tern reads back from the queue: a stored batch
/// is at most a few MiB (`max_request_size`, a scrape's bounded chunks), so
/// more is damage.
pub const MAX_STORED_RAW: usize = 256 << 20;

/// Why a gzip body could not be decompressed.
#[derive(Debug)]
#[non_exhaustive]
pub enum GunzipError {
    /// The body is not gzip, or is cut short.
    Invalid(std::io::Error),
    /// The body decompresses to more than the limit given.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

impl std::fmt::Display for GunzipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GunzipError::Invalid(e) => write!(f, "{e}"),
            GunzipError::TooLarge { limit } => {
                write!(f, "decompresses to more than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for GunzipError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GunzipError::Invalid(e) => Some(e),
            GunzipError::TooLarge { .. } => None,
        }
    }
}

/// Decompresses a gzip body (one member or more, as RFC 1952 allows) of at
/// most `limit` bytes once decompressed: the one gunzip of the OTLP
/// receiver's request bodies, the router's split and the sender.
///
/// # Errors
///
/// [`GunzipError`]: not gzip, or larger than `limit`.
pub fn gunzip(gzip: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    use std::io::Read;
    // The input's own size is a fair first guess; the limit caps it.
    let mut out = Vec::with_capacity(gzip.len().saturating_mul(4).min(limit));
    let most = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(gzip)
        .take(most)
        .read_to_end(&mut out)
        .map_err(GunzipError::Invalid)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod encode_tests {
    use super::*;
    use prost::Message;
    use std::io::Read;

    #[test]
    fn encode_round_trips_through_gzip() {
        let msg = kv("service.name", "node");
        let e = encode(&msg);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(e.gzip.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), e.raw_len);
        assert_eq!(KeyValue::decode(raw.as_slice()).unwrap(), msg);
    }
}

#[cfg(test)]
mod compress_tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_members_round_trip_at_every_size() {
        for len in [0usize, 1, 10, 100, 1000, 70_000, 1 << 20] {
            let raw: Vec<u8> = (0..len)
                .map(|i| ((i * 7 % 251) ^ (i / 1000 % 256)).to_le_bytes()[0])
                .collect();
            for _ in 0..2 {
                let e = compress(&raw);
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(e.gzip.as_slice())
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, raw, "len {len}");
                assert_eq!(e.raw_len, len);
            }
        }
    }
}
