//! The on-disk encoding of keys, values and segment records: the layout described
//! in the module docs.
//!
//! Everything here is pure byte shuffling, so that the rest of the queue never
//! indexes a slice read back from disk. Decoders return `None` on anything they
//! do not recognise; the caller turns that into a `Corrupt` drop.

use super::lane::{Lane, Signal};

/// The version of the layout below. Stored under [`FORMAT_KEY`]; a directory with
/// a larger number is refused, never guessed at.
///
/// 2: segment records carry their index record in a trailer ("TQP2"), so the
/// index can be rebuilt from them. Version 1 directories ("TQP1" records) are
/// read as they are and marked 2 on open.
pub(super) const FORMAT_VERSION: u32 = 2;

/// Key of the format version (`u32` big-endian).
pub(super) const FORMAT_KEY: &[u8] = b"\x00format";
/// Key of the next sequence number to hand out (`u64` big-endian).
pub(super) const NEXT_SEQ_KEY: &[u8] = b"\x00next_seq";

/// First byte of a source checkpoint key.
pub(super) const CHECKPOINT: u8 = 0x01;
/// First byte of a lane index key.
pub(super) const INDEX: u8 = 0x02;
/// The byte after [`INDEX`]: the end of the index key range.
pub(super) const INDEX_END: u8 = INDEX + 1;

/// The version byte that opens every index record.
const RECORD_VERSION: u8 = 1;
/// Length of an encoded [`IndexRecord`] without a checkpoint.
const INDEX_RECORD_LEN: usize = 1 + 8 * 5;

/// The longest checkpoint source name, in bytes (stored with a 16-bit length).
pub(super) const MAX_SOURCE_LEN: usize = u16::MAX as usize;

/// Opens every record written now: "tern queue payload, version 2", followed
/// by a trailer with its index record.
pub(super) const SEGMENT_MAGIC: [u8; 4] = *b"TQP2";
/// Opens records written by format version 1: no trailer.
const SEGMENT_MAGIC_V1: [u8; 4] = *b"TQP1";
/// Length of the header in front of each payload in a segment file.
pub(super) const SEGMENT_HEADER_LEN: usize = 4 + 8 + 8 + 4;
/// Length of a trailer's fixed part: `[meta_len: u32 BE][crc32 of meta: u32 BE]`.
pub(super) const TRAILER_HEAD_LEN: usize = 4 + 4;
/// The longest trailer meta accepted when reading: a lane prefix and an index
/// record with a checkpoint, all bounded by 16-bit lengths.
pub(super) const MAX_TRAILER_META: u64 = 4 * 65_536;

/// Creation times after this (year 3000, in ms since the epoch) are taken as garbage.
pub(super) const MAX_CREATED_MS: u64 = 32_503_680_000_000;

/// The key of a source's checkpoint.
pub(super) fn checkpoint_key(source: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + source.len());
    key.push(CHECKPOINT);
    key.extend_from_slice(source.as_bytes());
    key
}

/// The source a checkpoint key names.
pub(super) fn checkpoint_source(key: &[u8]) -> Option<&str> {
    match key.split_first() {
        Some((&CHECKPOINT, source)) => std::str::from_utf8(source).ok(),
        _ => None,
    }
}

/// A checkpoint key's value: `[seq: u64 BE][checkpoint]`. `seq` orders it
/// against the checkpoints that index records carry.
pub(super) fn encode_checkpoint_value(seq: u64, checkpoint: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + checkpoint.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(checkpoint);
    out
}

/// Splits a checkpoint key's value into its sequence number and checkpoint.
pub(super) fn decode_checkpoint_value(value: &[u8]) -> Option<(u64, &[u8])> {
    let (seq, checkpoint) = split_array::<8>(value)?;
    Some((u64::from_be_bytes(seq), checkpoint))
}

/// The common prefix of all index keys of `lane`, or `None` if its destination is
/// longer than [`Lane::MAX_DESTINATION_LEN`].
///
/// The length field makes the prefixes of two lanes never prefixes of each other.
pub(super) fn lane_prefix(lane: &Lane) -> Option<Vec<u8>> {
    let dest = lane.destination().as_bytes();
    let len = u16::try_from(dest.len()).ok()?;
    let mut key = Vec::with_capacity(4 + dest.len());
    key.push(INDEX);
    key.push(lane.signal().code());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(dest);
    Some(key)
}

/// The index key of batch `seq` in the lane whose prefix is `prefix`.
pub(super) fn index_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Splits an index key into its lane prefix and sequence number.
pub(super) fn split_index_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let split = key.len().checked_sub(8)?;
    let (prefix, seq) = key.split_at(split);
    Some((prefix, u64::from_be_bytes(seq.try_into().ok()?)))
}

/// The lane a prefix (as made by [`lane_prefix`]) stands for.
pub(super) fn decode_lane_prefix(prefix: &[u8]) -> Option<Lane> {
    let (&tag, rest) = prefix.split_first()?;
    if tag != INDEX {
        return None;
    }
    let (&code, rest) = rest.split_first()?;
    let signal = Signal::from_code(code)?;
    let (len, dest) = split_array::<2>(rest)?;
    if usize::from(u16::from_be_bytes(len)) != dest.len() {
        return None;
    }
    let dest = std::str::from_utf8(dest).ok()?;
    Some(Lane::new(signal, dest))
}

/// A source checkpoint as stored: the source's name and its opaque value.
pub(super) type StoredCheckpoint<'a> = (&'a str, &'a [u8]);

/// What the index keeps about a batch: enough to count it without reading its
/// payload, and where the payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IndexRecord {
    /// When the batch was made, in milliseconds since the Unix epoch.
    pub(super) created_ms: u64,
    /// Data points, log records or spans in the batch.
    pub(super) items: u64,
    /// Length of the payload in bytes.
    pub(super) len: u64,
    /// The segment file holding the payload (its name, as a number).
    pub(super) segment: u64,
    /// Where the payload's segment header starts in that file.
    pub(super) offset: u64,
}

impl IndexRecord {
    /// `[version: u8][created_ms][items][len][segment][offset]`, each `u64`
    /// big-endian, then, if the batch came with one, the source checkpoint:
    /// `[source length: u16 BE][source][checkpoint]`.
    ///
    /// # Panics
    ///
    /// If the source name is longer than [`MAX_SOURCE_LEN`]; callers check.
    pub(super) fn encode(&self, checkpoint: Option<StoredCheckpoint<'_>>) -> Vec<u8> {
        let tail = checkpoint.map_or(0, |(source, value)| 2 + source.len() + value.len());
        let mut out = Vec::with_capacity(INDEX_RECORD_LEN + tail);
        out.push(RECORD_VERSION);
        for field in [
            self.created_ms,
            self.items,
            self.len,
            self.segment,
            self.offset,
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        if let Some((source, value)) = checkpoint {
            #[allow(clippy::expect_used)] // A broken invariant, not bad input.
            let len = u16::try_from(source.len())
                .expect("invariant: source names are checked against MAX_SOURCE_LEN");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(source.as_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// Decodes and checks an index value (known version, complete fields, sane
    /// time), with the checkpoint it carries, if any.
    pub(super) fn decode_with_checkpoint(
        value: &[u8],
    ) -> Option<(IndexRecord, Option<StoredCheckpoint<'_>>)> {
        let (version, rest) = value.split_first()?;
        if *version != RECORD_VERSION {
            return None;
        }
        let (created, rest) = split_array::<8>(rest)?;
        let (items, rest) = split_array::<8>(rest)?;
        let (len, rest) = split_array::<8>(rest)?;
        let (segment, rest) = split_array::<8>(rest)?;
        let (offset, rest) = split_array::<8>(rest)?;
        let record = IndexRecord {
            created_ms: u64::from_be_bytes(created),
            items: u64::from_be_bytes(items),
            len: u64::from_be_bytes(len),
            segment: u64::from_be_bytes(segment),
            offset: u64::from_be_bytes(offset),
        };
        if record.created_ms > MAX_CREATED_MS {
            return None;
        }
        if rest.is_empty() {
            return Some((record, None));
        }
        let (source_len, rest) = split_array::<2>(rest)?;
        let source_len = usize::from(u16::from_be_bytes(source_len));
        if rest.len() < source_len {
            return None;
        }
        let (source, checkpoint) = rest.split_at(source_len);
        let source = std::str::from_utf8(source).ok()?;
        Some((record, Some((source, checkpoint))))
    }

    /// Decodes and checks an index value, leaving out its checkpoint.
    pub(super) fn decode(value: &[u8]) -> Option<IndexRecord> {
        Self::decode_with_checkpoint(value).map(|(record, _)| record)
    }

    /// Where this batch's record ends in its segment file, if that fits in a `u64`.
    pub(super) fn end(&self) -> Option<u64> {
        let header = u64::try_from(SEGMENT_HEADER_LEN).ok()?;
        self.offset.checked_add(header)?.checked_add(self.len)
    }
}

/// The header written in front of a payload in a segment file:
/// `[magic "TQP2"][seq: u64 BE][len: u64 BE][crc32 of payload: u32 BE]`.
///
/// The sequence number and length tie the record to its index entry; the CRC
/// catches data that never reached the disk (power cut with `fsync` off).
pub(super) fn segment_header(seq: u64, payload: &[u8]) -> [u8; SEGMENT_HEADER_LEN] {
    let len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
    let mut out = [0; SEGMENT_HEADER_LEN];
    out[..4].copy_from_slice(&SEGMENT_MAGIC);
    out[4..12].copy_from_slice(&seq.to_be_bytes());
    out[12..20].copy_from_slice(&len.to_be_bytes());
    out[20..].copy_from_slice(&crc32(payload).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// A segment record's header, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    /// Whether a trailer follows the payload (format 2).
    pub(super) has_trailer: bool,
    pub(super) seq: u64,
    /// Payload length.
    pub(super) len: u64,
    /// CRC-32 of the payload.
    pub(super) crc: u32,
}

/// Decodes a segment record header; `None` if it is not one.
pub(super) fn parse_segment_header(bytes: &[u8]) -> Option<SegmentHeader> {
    let (magic, rest) = split_array::<4>(bytes)?;
    let (seq, rest) = split_array::<8>(rest)?;
    let (len, rest) = split_array::<8>(rest)?;
    let (crc, _) = split_array::<4>(rest)?;
    let has_trailer = match magic {
        SEGMENT_MAGIC => true,
        SEGMENT_MAGIC_V1 => false,
        _ => return None,
    };
    Some(SegmentHeader {
        has_trailer,
        seq: u64::from_be_bytes(seq),
        len: u64::from_be_bytes(len),
        crc: u32::from_be_bytes(crc),
    })
}

/// The payload in a segment record read back from disk (header and payload), if
/// the header names `seq` and `len` and the CRC matches.
pub(super) fn check_segment_record(record: &[u8], seq: u64, len: u64) -> Option<&[u8]> {
    let header = parse_segment_header(record)?;
    let payload = record.get(SEGMENT_HEADER_LEN..)?;
    let valid = header.seq == seq
        && header.len == len
        && u64::try_from(payload.len()).is_ok_and(|n| n == len)
        && header.crc == crc32(payload);
    valid.then_some(payload)
}

/// Whether `payload` is the one `header` was written for.
pub(super) fn payload_matches(header: &SegmentHeader, payload: &[u8]) -> bool {
    u64::try_from(payload.len()).is_ok_and(|n| n == header.len) && header.crc == crc32(payload)
}

/// The trailer written after a payload: the batch's lane prefix and its index
/// record value, exactly as sled gets them, so that a batch whose index write
/// was lost in a crash can be indexed again from its segment alone:
/// `[meta_len: u32 BE][crc32 of meta: u32 BE]` then meta,
/// `[prefix_len: u16 BE][prefix][index value]`.
pub(super) fn segment_trailer(prefix: &[u8], value: &[u8]) -> Vec<u8> {
    let mut meta = Vec::with_capacity(2 + prefix.len() + value.len());
    // Lane prefixes are bounded by `Lane::MAX_DESTINATION_LEN`, far below u16.
    let prefix_len = u16::try_from(prefix.len()).unwrap_or(u16::MAX);
    meta.extend_from_slice(&prefix_len.to_be_bytes());
    meta.extend_from_slice(prefix);
    meta.extend_from_slice(value);
    let meta_len = u32::try_from(meta.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(TRAILER_HEAD_LEN + meta.len());
    out.extend_from_slice(&meta_len.to_be_bytes());
    out.extend_from_slice(&crc32(&meta).to_be_bytes());
    out.extend_from_slice(&meta);
    out
}

/// Decodes a trailer's fixed part: the meta's length and CRC.
pub(super) fn parse_trailer_head(bytes: &[u8]) -> Option<(u64, u32)> {
    let (len, rest) = split_array::<4>(bytes)?;
    let (crc, _) = split_array::<4>(rest)?;
    Some((u64::from(u32::from_be_bytes(len)), u32::from_be_bytes(crc)))
}

/// Checks a trailer's meta against its CRC and splits it into the lane prefix
/// and the index value.
pub(super) fn decode_trailer_meta(meta: &[u8], crc: u32) -> Option<(&[u8], &[u8])> {
    if crc32(meta) != crc {
        return None;
    }
    let (len, rest) = split_array::<2>(meta)?;
    let len = usize::from(u16::from_be_bytes(len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The file name of segment `id`: 16 hex digits, so names sort by age.
pub(super) fn segment_file_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// The segment id a file name stands for, if it is a segment's name.
pub(super) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Decodes a `u64` big-endian value (the next sequence number).
pub(super) fn decode_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// Decodes a `u32` big-endian value (the format version).
pub(super) fn decode_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

/// Splits `N` bytes off the front of `bytes`.
fn split_array<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    if bytes.len() < N {
        return None;
    }
    let (head, tail) = bytes.split_at(N);
    Some((head.try_into().ok()?, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_prefix_round_trips_and_is_prefix_free() {
        let a = Lane::new(Signal::Logs, "gw");
        let b = Lane::new(Signal::Logs, "gw2");
        let pa = lane_prefix(&a).unwrap();
        let pb = lane_prefix(&b).unwrap();
        assert!(!pb.starts_with(&pa));
        assert_eq!(decode_lane_prefix(&pa), Some(a));
        let key = index_key(&pb, 42);
        let (prefix, seq) = split_index_key(&key).unwrap();
        assert_eq!((decode_lane_prefix(prefix), seq), (Some(b), 42));
        let long = "x".repeat(Lane::MAX_DESTINATION_LEN + 1);
        assert_eq!(lane_prefix(&Lane::new(Signal::Traces, &long)), None);
        assert_eq!(decode_lane_prefix(b"\x02\x09\x00\x00"), None);
        assert_eq!(decode_lane_prefix(b"\x02\x01\x00\x05ab"), None);
    }

    #[test]
    fn index_records_round_trip_and_reject_garbage() {
        let rec = IndexRecord {
            created_ms: 1_700_000_000_000,
            items: 7,
            len: 3,
            segment: 9,
            offset: 4096,
        };
        let plain = rec.encode(None);
        assert_eq!(
            IndexRecord::decode_with_checkpoint(&plain),
            Some((rec, None))
        );
        assert_eq!(IndexRecord::decode(&plain[..40]), None);
        assert_eq!(IndexRecord::decode(b""), None);
        let mut bad = plain.clone();
        bad[0] = 9;
        assert_eq!(IndexRecord::decode(&bad), None);
        assert_eq!(rec.end(), Some(4096 + 24 + 3));

        let with = rec.encode(Some(("journald", b"s=abc;i=42")));
        let checkpoint = Some(("journald", &b"s=abc;i=42"[..]));
        assert_eq!(
            IndexRecord::decode_with_checkpoint(&with),
            Some((rec, checkpoint))
        );
        assert_eq!(IndexRecord::decode(&with[..42]), None);
        assert_eq!(IndexRecord::decode(&with[..45]), None);
        let empty = rec.encode(Some(("", b"")));
        let checkpoint = Some(("", &b""[..]));
        assert_eq!(
            IndexRecord::decode_with_checkpoint(&empty),
            Some((rec, checkpoint))
        );

        let value = encode_checkpoint_value(7, b"cursor");
        assert_eq!(decode_checkpoint_value(&value), Some((7, &b"cursor"[..])));
        assert_eq!(decode_checkpoint_value(b"short"), None);
        assert_eq!(
            checkpoint_source(&checkpoint_key("journald")),
            Some("journald")
        );
        assert_eq!(checkpoint_source(b"\x02x"), None);
    }

    #[test]
    fn segment_records_are_checked() {
        let mut record = segment_header(5, b"abc").to_vec();
        record.extend_from_slice(b"abc");
        assert_eq!(check_segment_record(&record, 5, 3), Some(&b"abc"[..]));
        // Version 1 records read the same.
        let mut v1 = record.clone();
        v1[..4].copy_from_slice(b"TQP1");
        assert_eq!(check_segment_record(&v1, 5, 3), Some(&b"abc"[..]));
        assert!(!parse_segment_header(&v1).unwrap().has_trailer);
        assert!(parse_segment_header(&record).unwrap().has_trailer);
        assert_eq!(check_segment_record(&record, 6, 3), None);
        assert_eq!(check_segment_record(&record[..25], 5, 3), None);
        let mut flipped = record.clone();
        flipped[25] ^= 1;
        assert_eq!(check_segment_record(&flipped, 5, 3), None);
        assert_eq!(check_segment_record(&[0; 27], 5, 3), None);
        assert_eq!(
            parse_segment_file_name(&segment_file_name(0xabc)),
            Some(0xabc)
        );
        assert_eq!(parse_segment_file_name("conf"), None);
    }

    #[test]
    fn trailers_round_trip_and_reject_damage() {
        let trailer = segment_trailer(b"\x02\x01\x00\x02gw", b"value");
        let (len, crc) = parse_trailer_head(&trailer).unwrap();
        let meta = &trailer[TRAILER_HEAD_LEN..];
        assert_eq!(len, u64::try_from(meta.len()).unwrap());
        assert_eq!(
            decode_trailer_meta(meta, crc),
            Some((&b"\x02\x01\x00\x02gw"[..], &b"value"[..]))
        );
        let mut flipped = meta.to_vec();
        flipped[3] ^= 1;
        assert_eq!(decode_trailer_meta(&flipped, crc), None);
        assert_eq!(parse_trailer_head(&trailer[..7]), None);
        // A prefix length past the end of the meta.
        let bad = [0xff, 0xff, 1];
        assert_eq!(decode_trailer_meta(&bad, crc32(&bad)), None);
    }
}
