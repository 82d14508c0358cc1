//! A minimal protobuf writer for the hot path: sources that convert many
//! points per second (the scrape converter) write OTLP bytes directly instead
//! of building prost structs, which would cost about ten allocations per point.
//!
//! The output is ordinary protobuf, decoded by the prost types in
//! [`super::proto`] (the tests of each writer check exactly that).
//! Length-delimited fields are written with [`Writer::begin`] and
//! [`Writer::end`]: the body is written first, then its length is inserted in
//! front of it, which moves the body once per nesting level. Callers keep the
//! moved bodies small (a data point, a metric of at most a few thousand points).
//!
//! See: <https://protobuf.dev/programming-guides/encoding/>

/// Wire type of varint fields (int, uint, bool, enum).
const VARINT: u32 = 0;
/// Wire type of 64-bit fields (fixed64, double).
const I64: u32 = 1;
/// Wire type of length-delimited fields (string, bytes, messages, packed).
const LEN: u32 = 2;

/// A growable protobuf output buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

/// Where a length-delimited field's body starts; returned by [`Writer::begin`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a begun field must be ended"]
pub struct Mark {
    field: u32,
    start: usize,
}

impl Writer {
    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// An empty writer that writes into `buf` (cleared), keeping its allocation.
    pub fn from_vec(mut buf: Vec<u8>) -> Writer {
        buf.clear();
        Writer { buf }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forgets everything written, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Takes the bytes out, leaving the writer empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Writes a bytes field, even when empty (a oneof member must be present
    /// to be set).
    pub fn bytes_always(&mut self, field: u32, b: &[u8]) {
        self.tag(field, LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// Writes the head of a length-delimited field whose body of `len` bytes
    /// the caller writes next: no move, as the length is known.
    pub fn head(&mut self, field: u32, len: usize) {
        self.tag(field, LEN);
        self.varint(len as u64);
    }

    /// Writes a `KeyValue` whose value is an int `AnyValue`, lengths worked
    /// out first so nothing moves (a 0 is written: a oneof member is kept).
    pub fn int_attribute(&mut self, field: u32, key: &str, v: i64) {
        let any_len = 1 + varint_len(v as u64);
        let kv_len = 1 + varint_len(key.len() as u64) + key.len() + 1 + 1 + any_len;
        self.tag(field, LEN);
        self.varint(kv_len as u64);
        self.tag(1, LEN);
        self.varint(key.len() as u64);
        self.buf.extend_from_slice(key.as_bytes());
        self.tag(2, LEN);
        self.varint(any_len as u64);
        self.tag(3, VARINT);
        self.varint(v as u64);
    }

    /// Writes an int64 field (proto3: left out when 0).
    pub fn int(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.tag(field, VARINT);
            // Two's complement, as int64 is written.
            self.varint(v as u64);
        }
    }

    /// Appends raw bytes that are already encoded fields.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(low7(v) | 0x80);
            v >>= 7;
        }
        self.buf.push(low7(v));
    }

    fn tag(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// A string field, skipped when empty (the proto3 default).
    pub fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.tag(field, LEN);
            self.varint(s.len() as u64);
            self.buf.extend_from_slice(s.as_bytes());
        }
    }

    /// A fixed64 field, skipped when 0.
    pub fn fixed64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, I64);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A double field that is written even when 0 (a oneof member or an
    /// `optional` field, where presence matters).
    pub fn double_always(&mut self, field: u32, v: f64) {
        self.tag(field, I64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A double field, skipped when 0.
    pub fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 || v.is_sign_negative() {
            self.double_always(field, v);
        }
    }

    /// A varint field (uint32, uint64, enum, bool), skipped when 0.
    pub fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, VARINT);
            self.varint(v);
        }
    }

    /// A packed repeated fixed64 field, skipped when empty.
    pub fn packed_fixed64(&mut self, field: u32, values: &[u64]) {
        if !values.is_empty() {
            self.tag(field, LEN);
            self.varint(values.len() as u64 * 8);
            for v in values {
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// A packed repeated double field, skipped when empty.
    pub fn packed_double(&mut self, field: u32, values: &[f64]) {
        if !values.is_empty() {
            self.tag(field, LEN);
            self.varint(values.len() as u64 * 8);
            for v in values {
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// A `KeyValue` with a string value, as field `field` of the enclosing message.
    pub fn string_attribute(&mut self, field: u32, key: &str, value: &str) {
        // Almost every label is short: every tag and length is one byte, known
        // up front, and three copies write the lot (the general path below
        // pushes ten bytes one by one).
        let short_any = 2 + value.len();
        let short_kv = 2 + key.len() + 2 + short_any;
        if field < 16 && !key.is_empty() && short_kv < 128 {
            // All below 128, so each fits its byte (and the casts keep it).
            #[allow(clippy::cast_possible_truncation)]
            let (tag, kv, k, any, v) = (
                (field << 3 | LEN) as u8,
                short_kv as u8,
                key.len() as u8,
                short_any as u8,
                value.len() as u8,
            );
            // Tags of fields 1 and 2 with wire type LEN: KeyValue.key and
            // .value, then AnyValue.string_value.
            const FIELD_1: u8 = 1 << 3 | 2;
            const FIELD_2: u8 = 2 << 3 | 2;
            self.buf.reserve(2 + short_kv);
            self.buf.extend_from_slice(&[tag, kv, FIELD_1, k]);
            self.buf.extend_from_slice(key.as_bytes());
            self.buf.extend_from_slice(&[FIELD_2, any, FIELD_1, v]);
            self.buf.extend_from_slice(value.as_bytes());
            return;
        }
        // AnyValue { string_value = 1 } always carries its oneof member, even "".
        let any_len = 1 + varint_len(value.len() as u64) + value.len();
        let key_len = if key.is_empty() {
            0
        } else {
            1 + varint_len(key.len() as u64) + key.len()
        };
        let kv_len = key_len + 1 + varint_len(any_len as u64) + any_len;
        self.tag(field, LEN);
        self.varint(kv_len as u64);
        self.string(1, key);
        self.tag(2, LEN);
        self.varint(any_len as u64);
        self.tag(1, LEN);
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value.as_bytes());
    }

    /// Starts a length-delimited field (a nested message); write its body, then
    /// call [`Writer::end`].
    pub fn begin(&mut self, field: u32) -> Mark {
        Mark {
            field,
            start: self.buf.len(),
        }
    }

    /// Ends a field begun with [`Writer::begin`]: puts its tag and length in
    /// front of the body written since.
    pub fn end(&mut self, mark: Mark) {
        let start = mark.start.min(self.buf.len());
        let body_len = self.buf.len() - start;
        // At most 5 bytes of tag and 10 of length.
        let mut head: heapless::Vec<u8, 16> = heapless::Vec::new();
        push_varint(&mut head, u64::from(mark.field << 3 | LEN));
        push_varint(&mut head, body_len as u64);
        self.buf.splice(start..start, head.iter().copied());
    }
}

fn push_varint(out: &mut heapless::Vec<u8, 16>, mut v: u64) {
    while v >= 0x80 {
        let _ = out.push(low7(v) | 0x80);
        v >>= 7;
    }
    let _ = out.push(low7(v));
}

/// The low seven bits of `v`.
#[inline]
#[allow(clippy::cast_possible_truncation)] // Masked to 7 bits, so it always fits.
fn low7(v: u64) -> u8 {
    (v & 0x7f) as u8
}

/// Bytes the varint encoding of `v` takes.
pub fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::kv;
    use crate::otlp::proto::common::v1::KeyValue;
    use crate::otlp::proto::metrics::v1::{number_data_point, NumberDataPoint};
    use prost::Message;

    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn a_string_attribute_decodes_as_a_key_value() {
        let long_key = "k".repeat(200);
        let longest_short = "v".repeat(127 - 4 - 3 - 2);
        for (k, v) in [
            ("a", "b"),
            ("", ""),
            ("", "b"),
            ("a", ""),
            ("key", &"x".repeat(300) as &str),
            ("key", &longest_short),
            ("key", &(longest_short.clone() + "v")),
            (&long_key, "v"),
        ] {
            let mut w = Writer::default();
            w.string_attribute(1, k, v);
            // Field 1 of a wrapper: skip its tag and length to get the KeyValue.
            let wrapper = WrapperKv::decode(w.as_bytes()).unwrap();
            assert_eq!(wrapper.kv, Some(kv(k, v)));
        }
    }

    #[test]
    fn nested_messages_decode_with_prost() {
        let mut w = Writer::default();
        let m = w.begin(1);
        w.string_attribute(7, "cpu", "0");
        w.fixed64(3, 42);
        w.double_always(4, 0.0);
        w.uint(8, 1);
        w.end(m);
        let wrapper = WrapperPoint::decode(w.as_bytes()).unwrap();
        assert_eq!(
            wrapper.point,
            Some(NumberDataPoint {
                attributes: vec![kv("cpu", "0")],
                time_unix_nano: 42,
                flags: 1,
                value: Some(number_data_point::Value::AsDouble(0.0)),
                ..Default::default()
            })
        );
        // A body longer than 127 bytes needs a two-byte length.
        let mut w = Writer::default();
        let m = w.begin(1);
        w.string_attribute(7, "k", &"v".repeat(200));
        w.end(m);
        assert_eq!(
            WrapperPoint::decode(w.as_bytes())
                .unwrap()
                .point
                .unwrap()
                .attributes[0]
                .key,
            "k"
        );
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct WrapperKv {
        #[prost(message, optional, tag = "1")]
        kv: Option<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct WrapperPoint {
        #[prost(message, optional, tag = "1")]
        point: Option<NumberDataPoint>,
    }
}
