//! The runtime half of OTLP/JSON: wrapper types that the generated `serde`
//! impls (tools/otlp-codegen, `serde_impls` in `generated.rs`) read and write
//! field values through.
//!
//! OTLP/JSON is proto3's JSON mapping with OTLP's changes (opentelemetry-proto
//! `docs/specification.md`, "JSON Protobuf Encoding"):
//!
//! | field type | written as | read from |
//! | --- | --- | --- |
//! | `trace_id`, `span_id`, `parent_span_id` | lowercase hex string | hex string, either case |
//! | other bytes | base64 string | base64, standard or URL-safe alphabet, padded or not |
//! | 64-bit integers | decimal string | string or number |
//! | 32-bit integers | number | number or string |
//! | double | number; `"NaN"`, `"Infinity"`, `"-Infinity"` | number or string |
//! | enum | number | number or value name (`"SPAN_KIND_SERVER"`) |
//!
//! `null` reads as the field's default. A number given for an integer field
//! must be integral and in range; anything else is an error naming the
//! expected form, which serde_json places at its line and column.
//!
//! See: <https://github.com/open-telemetry/opentelemetry-proto/blob/main/docs/specification.md#json-protobuf-encoding>

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// An object key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'de>(Cow<'de, str>);

impl Key<'_> {
    /// The key's text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A repeated field: a JSON array, or `null` for none.
pub(crate) struct Seq<T>(pub(crate) Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Seq<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Seq<T>, E> {
                Ok(Seq(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T>, A::Error> {
                // The size hint comes from the input: cap what it may reserve.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Seq(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Writes a slice of scalars through a wrapper (`json::U64` for fixed64, say).
pub(crate) struct Each<'a, T, F>(pub(crate) &'a [T], pub(crate) F);

impl<T, W: Serialize, F: Fn(&T) -> W> Serialize for Each<'_, T, F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in self.0 {
            seq.serialize_element(&(self.1)(v))?;
        }
        seq.end()
    }
}

/// Defines a wrapper for an integer type: written as `$write`, read from a
/// number or a decimal string.
macro_rules! integer {
    ($name:ident, $t:ty, $what:literal, $as_string:literal) => {
        #[doc = concat!("A ", $what, " field.")]
        pub(crate) struct $name(pub(crate) $t);

        // Only the widths that OTLP repeats (fixed64, double) use `of`.
        #[allow(dead_code)]
        impl $name {
            /// Wraps an element of a repeated field, for [`Each`].
            pub(crate) fn of(v: &$t) -> $name {
                $name(*v)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if $as_string {
                    s.collect_str(&self.0)
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl V {
                    fn fit<E: de::Error, N: TryInto<$t> + Copy + fmt::Display>(
                        n: N,
                    ) -> Result<$name, E> {
                        n.try_into().map($name).map_err(|_| {
                            E::custom(format_args!(concat!("{} is out of range for ", $what), n))
                        })
                    }
                }
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!($what, " as a number or a decimal string"))
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<$name, E> {
                        Ok($name(0))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        V::fit(v)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        V::fit(v)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$name, E> {
                        integral(v)
                            .ok_or_else(|| {
                                E::custom(format_args!(concat!("{} is not a valid ", $what), v))
                            })
                            .and_then(V::fit)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        if let Ok(n) = v.parse::<$t>() {
                            return Ok($name(n));
                        }
                        // proto3 also allows exponent notation ("1e3") for integers.
                        match v.parse::<f64>().ok().and_then(integral) {
                            Some(n) => V::fit(n),
                            None => Err(E::custom(format_args!(
                                concat!("{:?} is not a valid ", $what),
                                truncate(v)
                            ))),
                        }
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

integer!(I64, i64, "64-bit integer", true);
integer!(U64, u64, "unsigned 64-bit integer", true);
integer!(I32, i32, "32-bit integer", false);
integer!(U32, u32, "unsigned 32-bit integer", false);

/// `v` as an integer, if it is one and fits an `i128` exactly.
fn integral(v: f64) -> Option<i128> {
    // Beyond 2^63 an f64 is still integral; i128 holds every u64 and i64.
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 1.8e19).then(|| {
        // In range by the check above, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let n = v as i128;
        n
    })
}

/// A long input string, cut for an error message.
fn truncate(v: &str) -> &str {
    match v.char_indices().nth(64) {
        Some((i, _)) => v.get(..i).unwrap_or(v),
        None => v,
    }
}

/// A double field.
pub(crate) struct F64(pub(crate) f64);

impl F64 {
    /// Wraps an element of a repeated field, for [`Each`].
    pub(crate) fn of(v: &f64) -> F64 {
        F64(*v)
    }
}

impl Serialize for F64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_nan() {
            s.serialize_str("NaN")
        } else if v.is_infinite() {
            s.serialize_str(if v > 0.0 { "Infinity" } else { "-Infinity" })
        } else {
            s.serialize_f64(v)
        }
    }
}

impl<'de> Deserialize<'de> for F64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = F64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
            }
            fn visit_unit<E: de::Error>(self) -> Result<F64, E> {
                Ok(F64(0.0))
            }
            // Integers in JSON are read as doubles; precision above 2^53 is
            // lost, as in every proto3 JSON reader.
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<F64, E> {
                Ok(F64(v as f64))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<F64, E> {
                Ok(F64(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<F64, E> {
                Ok(F64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<F64, E> {
                match v {
                    "NaN" => Ok(F64(f64::NAN)),
                    "Infinity" => Ok(F64(f64::INFINITY)),
                    "-Infinity" => Ok(F64(f64::NEG_INFINITY)),
                    _ => v
                        .parse::<f64>()
                        .ok()
                        .filter(|n| n.is_finite())
                        .map(F64)
                        .ok_or_else(|| {
                            E::custom(format_args!("{:?} is not a valid double", truncate(v)))
                        }),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A bool field; `null` is false.
pub(crate) struct Bool(pub(crate) bool);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Bool(Option::<bool>::deserialize(d)?.unwrap_or(false)))
    }
}

/// A string field; `null` is empty.
pub(crate) struct Str(pub(crate) String);

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Str(Option::<String>::deserialize(d)?.unwrap_or_default()))
    }
}

/// A bytes field in base64 (standard or URL-safe alphabet, padding optional).
pub(crate) struct Base64(pub(crate) Vec<u8>);

/// Writes bytes as standard, padded base64.
pub(crate) struct Base64Ref<'a>(pub(crate) &'a [u8]);

impl Serialize for Base64Ref<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::alphabet;
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        const LENIENT: GeneralPurposeConfig =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
        const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
        let Some(text) = Option::<Cow<'de, str>>::deserialize(d)? else {
            return Ok(Base64(Vec::new()));
        };
        let engine = if text.contains(['-', '_']) {
            &URL_SAFE
        } else {
            &STANDARD
        };
        engine
            .decode(text.as_bytes())
            .map(Base64)
            .map_err(|e| de::Error::custom(format_args!("invalid base64: {e}")))
    }
}

/// A trace or span id in hex (either case); `""` and `null` are empty.
pub(crate) struct Hex(pub(crate) Vec<u8>);

/// Writes bytes as lowercase hex.
pub(crate) struct HexRef<'a>(pub(crate) &'a [u8]);

impl Serialize for HexRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let digit = |n: u8| char::from_digit(u32::from(n), 16).unwrap_or('0');
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in self.0 {
            out.push(digit(b >> 4));
            out.push(digit(b & 0xf));
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(text) = Option::<Cow<'de, str>>::deserialize(d)? else {
            return Ok(Hex(Vec::new()));
        };
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let bad = || {
            de::Error::custom(format_args!(
                "invalid id {:?}: expected hex digits, two per byte",
                truncate(&text)
            ))
        };
        let bytes = text.as_bytes();
        if bytes.len() % 2 != 0 {
            return Err(bad());
        }
        let mut out = Vec::with_capacity(bytes.len() / 2);
        for pair in bytes.chunks_exact(2) {
            match (
                pair.first().copied().and_then(digit),
                pair.get(1).copied().and_then(digit),
            ) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(bad()),
            }
        }
        Ok(Hex(out))
    }
}

/// Reads an enum field from its number or its value name; `None` for `null`.
pub(crate) struct EnumSeed(pub(crate) fn(&str) -> Option<i32>);

impl<'de> DeserializeSeed<'de> for EnumSeed {
    type Value = Option<i32>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<i32>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for EnumSeed {
    type Value = Option<i32>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an enum value as a number or a name")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<i32>, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<i32>, E> {
        i32::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format_args!("enum value {v} is out of range")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<i32>, E> {
        i32::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format_args!("enum value {v} is out of range")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<i32>, E> {
        (self.0)(v)
            .map(Some)
            .ok_or_else(|| E::custom(format_args!("unknown enum value {:?}", truncate(v))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::collector::logs::v1::ExportLogsServiceRequest;
    use super::super::collector::metrics::v1::ExportMetricsServiceRequest;
    use super::super::collector::trace::v1::ExportTraceServiceRequest;
    use super::super::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
    use super::super::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use super::super::metrics::v1::{metric, number_data_point, Metric};
    use super::super::resource::v1::Resource;
    use super::super::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
    use std::path::PathBuf;

    fn example(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/otlp-json")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn value(v: any_value::Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    fn string(key: &str, v: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value(any_value::Value::StringValue(v.into())),
            ..Default::default()
        }
    }

    fn scope() -> Option<InstrumentationScope> {
        Some(InstrumentationScope {
            name: "my.library".into(),
            version: "1.0.0".into(),
            attributes: vec![string("my.scope.attribute", "some scope attribute")],
            ..Default::default()
        })
    }

    fn resource() -> Option<Resource> {
        Some(Resource {
            attributes: vec![string("service.name", "my.service")],
            ..Default::default()
        })
    }

    /// The upstream trace example, field by field as the protobuf it stands for.
    #[test]
    fn the_trace_example_reads_as_its_protobuf() {
        let got: ExportTraceServiceRequest =
            serde_json::from_slice(&example("trace.json")).unwrap();
        let want = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(),
                scope_spans: vec![ScopeSpans {
                    scope: scope(),
                    spans: vec![Span {
                        trace_id: vec![
                            0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33,
                            0x81, 0x3f, 0xc6, 0x0c,
                        ],
                        span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
                        parent_span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x73],
                        name: "I'm a server span".into(),
                        start_time_unix_nano: 1_544_712_660_000_000_000,
                        end_time_unix_nano: 1_544_712_661_000_000_000,
                        kind: span::SpanKind::Server as i32,
                        attributes: vec![string("my.span.attr", "some value")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(got, want);
    }

    #[test]
    fn the_logs_example_reads_as_its_protobuf() {
        let got: ExportLogsServiceRequest = serde_json::from_slice(&example("logs.json")).unwrap();
        let record = LogRecord {
            time_unix_nano: 1_544_712_660_300_000_000,
            observed_time_unix_nano: 1_544_712_660_300_000_000,
            severity_number: 10,
            severity_text: "Information".into(),
            trace_id: vec![
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c,
            ],
            span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
            body: value(any_value::Value::StringValue("Example log record".into())),
            attributes: vec![
                string("string.attribute", "some string"),
                KeyValue {
                    key: "boolean.attribute".into(),
                    value: value(any_value::Value::BoolValue(true)),
                    ..Default::default()
                },
                KeyValue {
                    key: "int.attribute".into(),
                    value: value(any_value::Value::IntValue(10)),
                    ..Default::default()
                },
                KeyValue {
                    key: "double.attribute".into(),
                    value: value(any_value::Value::DoubleValue(637.704)),
                    ..Default::default()
                },
                KeyValue {
                    key: "array.attribute".into(),
                    value: value(any_value::Value::ArrayValue(
                        super::super::common::v1::ArrayValue {
                            values: vec![
                                AnyValue {
                                    value: Some(any_value::Value::StringValue("many".into())),
                                },
                                AnyValue {
                                    value: Some(any_value::Value::StringValue("values".into())),
                                },
                            ],
                        },
                    )),
                    ..Default::default()
                },
                KeyValue {
                    key: "map.attribute".into(),
                    value: value(any_value::Value::KvlistValue(
                        super::super::common::v1::KeyValueList {
                            values: vec![string("some.map.key", "some value")],
                        },
                    )),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let want = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(),
                scope_logs: vec![ScopeLogs {
                    scope: scope(),
                    log_records: vec![record],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(got, want);
    }

    #[test]
    fn the_metrics_example_reads_every_kind() {
        use super::super::metrics::v1::exponential_histogram_data_point::Buckets;
        let got: ExportMetricsServiceRequest =
            serde_json::from_slice(&example("metrics.json")).unwrap();
        let metrics = &got.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "my.counter",
                "my.gauge",
                "my.histogram",
                "my.exponential.histogram",
            ]
        );
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("{:?}", metrics[0]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, 1);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(5.0))
        );
        assert_eq!(
            sum.data_points[0].start_time_unix_nano,
            1_544_712_660_300_000_000
        );
        let Some(metric::Data::Histogram(h)) = &metrics[2].data else {
            panic!("{:?}", metrics[2]);
        };
        let p = &h.data_points[0];
        assert_eq!(
            (p.count, p.sum, p.min, p.max),
            (2, Some(2.0), Some(0.0), Some(2.0))
        );
        assert_eq!(
            (p.bucket_counts.as_slice(), p.explicit_bounds.as_slice()),
            ([1, 1].as_slice(), [1.0].as_slice())
        );
        let Some(metric::Data::ExponentialHistogram(h)) = &metrics[3].data else {
            panic!("{:?}", metrics[3]);
        };
        let p = &h.data_points[0];
        assert_eq!((p.count, p.zero_count, p.scale), (3, 1, 0));
        assert_eq!(
            p.positive,
            Some(Buckets {
                offset: 1,
                bucket_counts: vec![0, 2]
            })
        );
    }

    /// Every example survives JSON -> protobuf -> JSON -> protobuf unchanged,
    /// and what tern writes uses OTLP's forms.
    #[test]
    fn every_example_round_trips() {
        fn round_trip<T>(name: &str)
        where
            T: prost::Message
                + Default
                + PartialEq
                + serde::Serialize
                + for<'de> serde::Deserialize<'de>,
        {
            let first: T = serde_json::from_slice(&example(name)).unwrap();
            let bytes = first.encode_to_vec();
            let decoded = T::decode(bytes.as_slice()).unwrap();
            let json = serde_json::to_string(&decoded).unwrap();
            let second: T = serde_json::from_str(&json).unwrap();
            assert!(first == second, "{name}: {json}");
        }
        round_trip::<ExportTraceServiceRequest>("trace.json");
        round_trip::<ExportMetricsServiceRequest>("metrics.json");
        round_trip::<ExportLogsServiceRequest>("logs.json");
        round_trip::<ExportLogsServiceRequest>("events.json");

        let trace: ExportTraceServiceRequest =
            serde_json::from_slice(&example("trace.json")).unwrap();
        let json = serde_json::to_string(&trace).unwrap();
        assert!(
            json.contains(r#""traceId":"5b8efff798038103d269b633813fc60c""#),
            "{json}"
        );
        assert!(
            json.contains(r#""startTimeUnixNano":"1544712660000000000""#),
            "{json}"
        );
        assert!(json.contains(r#""kind":2"#), "{json}");
        assert!(
            !json.contains("droppedAttributesCount"),
            "defaults are left out: {json}"
        );
    }

    #[test]
    fn reads_the_other_forms_the_rules_allow() {
        let json = r#"{"resource_spans": [{"scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "span_id": "eee19b7ec3c1b174",
            "kind": "SPAN_KIND_CLIENT",
            "startTimeUnixNano": 1544712660000000000,
            "endTimeUnixNano": "1.5e18",
            "droppedAttributesCount": "3",
            "traceState": null,
            "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
            "links": null,
            "attributes": [{"key": "b", "value": {"bytesValue": "aGk_"}},
                           {"key": "d", "value": {"doubleValue": "NaN"}},
                           {"key": "e", "value": {"doubleValue": "-Infinity"}},
                           {"key": "n", "value": null}],
            "someFutureField": {"nested": [1, 2, {"x": null}]}
        }]}]}], "extra": true}"#;
        let got: ExportTraceServiceRequest = serde_json::from_str(json).unwrap();
        let span = &got.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            span.span_id,
            [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
        );
        assert_eq!(span.kind, span::SpanKind::Client as i32);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_500_000_000_000_000_000);
        assert_eq!(span.dropped_attributes_count, 3);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        let value = |i: usize| span.attributes[i].value.clone().and_then(|v| v.value);
        assert_eq!(
            value(0),
            Some(any_value::Value::BytesValue(b"hi?".to_vec()))
        );
        assert!(matches!(value(1), Some(any_value::Value::DoubleValue(v)) if v.is_nan()));
        assert_eq!(
            value(2),
            Some(any_value::Value::DoubleValue(f64::NEG_INFINITY))
        );
        assert_eq!(value(3), None);
    }

    #[test]
    fn refuses_what_the_rules_do_not_allow() {
        let span = |fields: &str| {
            format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{{fields}}}]}}]}}]}}"#)
        };
        for (fields, expect) in [
            (r#""traceId": "5b8e0""#, "invalid id"),
            (r#""traceId": "zz""#, "invalid id"),
            (r#""traceId": 5"#, "invalid type"),
            (r#""kind": "SPAN_KIND_NOPE""#, "unknown enum value"),
            (r#""kind": 4294967296"#, "out of range"),
            (r#""droppedAttributesCount": -1"#, "out of range"),
            (r#""droppedAttributesCount": 1.5"#, "not a valid"),
            (r#""startTimeUnixNano": "soon""#, "not a valid"),
            (r#""startTimeUnixNano": "-1""#, "out of range"),
            (r#""attributes": {"key": "x"}"#, "invalid type"),
            (r#""name": 7"#, "invalid type"),
        ] {
            let err = serde_json::from_str::<ExportTraceServiceRequest>(&span(fields))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{fields}: {err}");
            assert!(err.contains("line 1 column"), "{err}");
        }
        // Nesting deeper than serde_json's limit is an error, not a stack overflow.
        let deep = format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{}"x"{}}}]}}]}}]}}"#,
            r#"{"arrayValue":{"values":["#.repeat(200),
            "]}}".repeat(200)
        );
        assert!(serde_json::from_str::<ExportLogsServiceRequest>(&deep).is_err());
        let _ = Metric::default();
    }
}
