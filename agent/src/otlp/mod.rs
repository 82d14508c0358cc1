//! OTLP encoding: the OTLP v1 protobuf messages every source produces and the
//! exporter sends (see [`proto`]), and the step that turns a request into the
//! compressed bytes the queue stores.
//!
//! Sources build `Export*ServiceRequest` messages in bounded chunks; [`encode`]
//! turns each into one compressed batch, in the codec the exporter sends
//! ([`set_store_codec`]: gzip, or zstd with `[export] compression = "zstd"`).
//! The queue stores the compressed form so that the disk, the SD card's wear
//! and the uplink all see it small, and the sender posts the stored bytes as
//! they are. A stored batch says its own codec by its first bytes (the gzip
//! and zstd magic numbers), so batches queued before a change of codec are
//! still read right.

pub mod logs;
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

/// An encoded, compressed OTLP request, ready for the queue.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The compressed protobuf (gzip or zstd: see [`Codec::of`]).
    pub payload: Vec<u8>,
    /// The protobuf size before compression.
    pub raw_len: usize,
}

/// How a stored batch is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// One gzip member or more (RFC 1952).
    Gzip,
    /// One zstd frame or more (RFC 8878).
    Zstd,
}

/// The first bytes of a gzip member: ID1, ID2, deflate.
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 8];
/// The first bytes of a zstd frame (RFC 8878, section 3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Codec {
    /// The codec of a stored batch, from its first bytes; `None` for
    /// neither (damage).
    pub fn of(payload: &[u8]) -> Option<Codec> {
        if payload.starts_with(&GZIP_MAGIC) {
            Some(Codec::Gzip)
        } else if payload.starts_with(&ZSTD_MAGIC) {
            Some(Codec::Zstd)
        } else {
            None
        }
    }

    /// Its `Content-Encoding`.
    pub fn content_encoding(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

/// The codec and level new batches are compressed with: set from `[export]`
/// at start and reload ([`set_store_codec`]). Process-wide because every
/// source compresses for the one exporter, and none of them knows it.
static STORE_CODEC: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Sets the codec (and zstd level, 1 to 19) of the batches compressed from
/// now on; gzip always uses [`GZIP_LEVEL`].
pub fn set_store_codec(codec: Codec, zstd_level: i32) {
    let value = match codec {
        Codec::Gzip => 0,
        Codec::Zstd => u32::try_from(zstd_level.clamp(1, 19)).unwrap_or(1),
    };
    STORE_CODEC.store(value, std::sync::atomic::Ordering::Relaxed);
}

/// The codec and zstd level of new batches.
fn store_codec() -> (Codec, i32) {
    match STORE_CODEC.load(std::sync::atomic::Ordering::Relaxed) {
        0 => (Codec::Gzip, 0),
        level => (Codec::Zstd, i32::try_from(level).unwrap_or(1)),
    }
}

/// gzip level for batches: level 1 keeps compression far below the 0.5 us per
/// sample budget and still shrinks OTLP metrics about 10x (repeated attribute
/// keys and values compress well even at the fastest level).
const GZIP_LEVEL: u32 = 1;

/// Encodes `message` and compresses it in the store codec.
pub fn encode(message: &impl prost::Message) -> Encoded {
    let mut raw = Vec::with_capacity(message.encoded_len());
    // Encoding into a Vec that grows cannot fail.
    let _ = message.encode(&mut raw);
    compress(&raw)
}

/// Compresses an already encoded request in the store codec, as [`encode`]
/// does; the OTLP receiver stores what applications sent this way, unknown
/// fields and all.
pub fn compress(raw: &[u8]) -> Encoded {
    match store_codec() {
        (Codec::Gzip, _) => gzip(raw),
        (Codec::Zstd, level) => zstd(raw, level),
    }
}

/// Compresses `raw` with `codec` (zstd at level 1).
pub fn compress_with(codec: Codec, raw: &[u8]) -> Encoded {
    match codec {
        Codec::Gzip => gzip(raw),
        Codec::Zstd => zstd(raw, 1),
    }
}

/// A zstd frame of `raw` at `level`, with its content size.
fn zstd(raw: &[u8], level: i32) -> Encoded {
    // A compression context holds its tables (about 1 MiB at level 1 for
    // large inputs); each thread keeps one, as for gzip.
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let fresh = |level| zstd::bulk::Compressor::new(level).ok();
    let out = CONTEXT.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, fresh(level)?));
        }
        let (_, compressor) = slot.as_mut()?;
        compressor.compress(raw).ok()
    });
    // Only a context that cannot be made (no memory) ends here: gzip still
    // stores the batch, and says so by its magic.
    match out {
        Some(payload) => Encoded {
            payload,
            raw_len: raw.len(),
        },
        None => gzip(raw),
    }
}

/// A gzip member of `raw` at [`GZIP_LEVEL`].
fn gzip(raw: &[u8]) -> Encoded {
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
        payload: out,
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

/// Decompresses a stored batch of either codec (by its magic; several gzip
/// members or zstd frames in a row too) of at most `limit` bytes once
/// decompressed: the router's split and the sender.
///
/// # Errors
///
/// [`GunzipError`]: neither codec, damaged, or larger than `limit`.
pub fn decompress(payload: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    match Codec::of(payload) {
        Some(Codec::Zstd) => unzstd(payload, limit),
        // gzip, or damage that gunzip names.
        _ => gunzip(payload, limit),
    }
}

/// Decompresses one zstd frame or more, of at most `limit` bytes.
fn unzstd(payload: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let decoder =
        zstd::stream::read::Decoder::with_buffer(payload).map_err(GunzipError::Invalid)?;
    read_bounded(decoder, payload.len(), limit)
}

/// Decompresses a gzip body (one member or more, as RFC 1952 allows) of at
/// most `limit` bytes once decompressed: the one gunzip of the OTLP
/// receiver's request bodies.
///
/// # Errors
///
/// [`GunzipError`]: not gzip, or larger than `limit`.
pub fn gunzip(gzip: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    read_bounded(flate2::read::MultiGzDecoder::new(gzip), gzip.len(), limit)
}

/// Reads a decoder of `input_len` compressed bytes to its end, refusing more
/// than `limit` bytes out (a decompression bomb stops at `limit + 1`).
fn read_bounded(
    decoder: impl std::io::Read,
    input_len: usize,
    limit: usize,
) -> Result<Vec<u8>, GunzipError> {
    use std::io::Read;
    // The input's own size is a fair first guess; the limit caps it.
    let mut out = Vec::with_capacity(input_len.saturating_mul(4).min(limit));
    let most = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
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
        flate2::read::GzDecoder::new(e.payload.as_slice())
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
                flate2::read::GzDecoder::new(e.payload.as_slice())
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, raw, "len {len}");
                assert_eq!(e.raw_len, len);
            }
        }
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7 % 251) ^ (i / 1000 % 256)).to_le_bytes()[0])
            .collect()
    }

    #[test]
    fn zstd_frames_round_trip_and_say_their_codec() {
        for len in [0usize, 1, 1000, 70_000, 1 << 20] {
            let raw = sample(len);
            let z = compress_with(Codec::Zstd, &raw);
            assert_eq!(Codec::of(&z.payload), Some(Codec::Zstd), "len {len}");
            assert_eq!(decompress(&z.payload, MAX_STORED_RAW).unwrap(), raw);
            let g = compress_with(Codec::Gzip, &raw);
            assert_eq!(Codec::of(&g.payload), Some(Codec::Gzip));
            assert_eq!(decompress(&g.payload, MAX_STORED_RAW).unwrap(), raw);
        }
    }

    #[test]
    fn concatenated_frames_and_members_decompress_to_the_concatenation() {
        let (a, b) = (sample(5000), sample(300));
        for codec in [Codec::Gzip, Codec::Zstd] {
            let mut joined = compress_with(codec, &a).payload;
            joined.extend_from_slice(&compress_with(codec, &b).payload);
            let back = decompress(&joined, MAX_STORED_RAW).unwrap();
            assert_eq!(back, [a.clone(), b.clone()].concat(), "{codec:?}");
        }
    }

    #[test]
    fn damage_and_bombs_are_errors_not_panics() {
        let z = compress_with(Codec::Zstd, &sample(100_000)).payload;
        assert!(matches!(
            decompress(&z, 1000),
            Err(GunzipError::TooLarge { limit: 1000 })
        ));
        let mut cut = z.clone();
        cut.truncate(z.len() / 2);
        assert!(decompress(&cut, MAX_STORED_RAW).is_err());
        let mut flipped = z;
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        // Damage inside a frame either fails or yields something else; it
        // never panics.
        let _ = decompress(&flipped, MAX_STORED_RAW);
        assert_eq!(Codec::of(b"not compressed"), None);
        assert!(decompress(b"not compressed", 100).is_err());
    }
}
