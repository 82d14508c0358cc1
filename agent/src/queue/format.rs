//! The on-disk encoding of keys and values: the layout described in the module docs.
//!
//! Everything here is pure byte shuffling, so that the rest of the queue never
//! indexes a slice read back from disk. Decoders return `None` on anything they
//! do not recognise; the caller turns that into a `Corrupt` drop.

use super::lane::{Lane, Signal};

/// The version of the layout below. Stored under [`FORMAT_KEY`]; a directory with
/// a larger number is refused, never guessed at.
pub(super) const FORMAT_VERSION: u32 = 1;

/// Key of the format version (`u32` big-endian).
pub(super) const FORMAT_KEY: &[u8] = b"\x00format";
/// Key of the next sequence number to hand out (`u64` big-endian).
pub(super) const NEXT_SEQ_KEY: &[u8] = b"\x00next_seq";

/// First byte of a source checkpoint key.
const CHECKPOINT: u8 = 0x01;
/// First byte of a lane index key.
pub(super) const INDEX: u8 = 0x02;
/// First byte of a payload key.
pub(super) const PAYLOAD: u8 = 0x03;

/// The version byte that opens every index and payload value.
const RECORD_VERSION: u8 = 1;

/// Length of an encoded [`IndexRecord`].
const INDEX_RECORD_LEN: usize = 1 + 8 + 8 + 8;
/// Length of the header in front of a payload.
const PAYLOAD_HEADER_LEN: usize = 1 + 8;

/// Creation times after this (year 3000, in ms since the epoch) are taken as garbage.
pub(super) const MAX_CREATED_MS: u64 = 32_503_680_000_000;

/// The key of a source's checkpoint.
pub(super) fn checkpoint_key(source: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + source.len());
    key.push(CHECKPOINT);
    key.extend_from_slice(source.as_bytes());
    key
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

/// The key of batch `seq`'s payload.
pub(super) fn payload_key(seq: u64) -> [u8; 9] {
    let mut key = [PAYLOAD; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// What the index keeps about a batch, so that counters can be rebuilt without
/// reading payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IndexRecord {
    /// When the batch was made, in milliseconds since the Unix epoch.
    pub(super) created_ms: u64,
    /// Data points, log records or spans in the batch.
    pub(super) items: u64,
    /// Length of the payload in bytes.
    pub(super) len: u64,
}

impl IndexRecord {
    /// `[version: u8][created_ms: u64 BE][items: u64 BE][len: u64 BE]`.
    pub(super) fn encode(&self) -> [u8; INDEX_RECORD_LEN] {
        let mut out = [0; INDEX_RECORD_LEN];
        out[0] = RECORD_VERSION;
        out[1..9].copy_from_slice(&self.created_ms.to_be_bytes());
        out[9..17].copy_from_slice(&self.items.to_be_bytes());
        out[17..25].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Decodes and checks an index value: exact length, known version, sane time.
    pub(super) fn decode(value: &[u8]) -> Option<IndexRecord> {
        let (version, rest) = value.split_first()?;
        if *version != RECORD_VERSION || rest.len() != INDEX_RECORD_LEN - 1 {
            return None;
        }
        let (created, rest) = split_array::<8>(rest)?;
        let (items, rest) = split_array::<8>(rest)?;
        let (len, _) = split_array::<8>(rest)?;
        let record = IndexRecord {
            created_ms: u64::from_be_bytes(created),
            items: u64::from_be_bytes(items),
            len: u64::from_be_bytes(len),
        };
        (record.created_ms <= MAX_CREATED_MS).then_some(record)
    }
}

/// `[version: u8][seq: u64 BE][payload]`: the sequence number is repeated so that
/// a value found under the wrong key is recognised as stale.
pub(super) fn encode_payload(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAYLOAD_HEADER_LEN + payload.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload in a stored value, if its header matches `seq` and the index's length.
pub(super) fn decode_payload(value: &[u8], seq: u64, len: u64) -> Option<&[u8]> {
    let (version, rest) = value.split_first()?;
    if *version != RECORD_VERSION {
        return None;
    }
    let (stored_seq, payload) = split_array::<8>(rest)?;
    let matches = u64::from_be_bytes(stored_seq) == seq
        && u64::try_from(payload.len()).is_ok_and(|n| n == len);
    matches.then_some(payload)
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
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let rec = IndexRecord {
            created_ms: 1_700_000_000_000,
            items: 7,
            len: 3,
        };
        assert_eq!(IndexRecord::decode(&rec.encode()), Some(rec));
        assert_eq!(IndexRecord::decode(&rec.encode()[..24]), None);
        assert_eq!(IndexRecord::decode(b""), None);
        let mut bad = rec.encode();
        bad[0] = 9;
        assert_eq!(IndexRecord::decode(&bad), None);

        let value = encode_payload(5, b"abc");
        assert_eq!(decode_payload(&value, 5, 3), Some(&b"abc"[..]));
        assert_eq!(decode_payload(&value, 6, 3), None);
        assert_eq!(decode_payload(&value, 5, 4), None);
        assert_eq!(decode_payload(&value[..4], 5, 3), None);
        assert_eq!(decode_lane_prefix(b"\x02\x09\x00\x00"), None);
        assert_eq!(decode_lane_prefix(b"\x02\x01\x00\x05ab"), None);
    }
}
