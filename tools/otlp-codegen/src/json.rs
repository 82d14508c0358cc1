//! Emits OTLP/JSON support for the generated prost types: one
//! `serde::Serialize` and one `serde::Deserialize` impl per message, written
//! from the protobuf descriptors.
//!
//! The rules are OTLP's (opentelemetry-proto `docs/specification.md`, "JSON
//! Protobuf Encoding"), which are proto3's JSON mapping with three changes:
//!
//! - `trace_id`, `span_id` and `parent_span_id` are hex strings, not base64;
//! - enum values are written as integers (and read as integers or names);
//! - keys are lowerCamelCase (the descriptor's `json_name`); readers also take
//!   the original snake_case name, and ignore keys they do not know.
//!
//! Other proto3 rules kept: 64-bit integers are written as decimal strings and
//! read from strings or numbers, other bytes are base64, `null` reads as the
//! field's default, fields at their default are not written, and the members
//! of a `oneof` appear inline in their message.
//!
//! The impls call small wrapper types in `agent/src/otlp/proto/json.rs`
//! (hand-written, `super::json` from the generated module), so the generated
//! code stays a flat list of field names and wrapper choices.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

/// Bytes fields written as hex instead of base64 (OTLP's rule), by field name.
const HEX_FIELDS: &[&str] = &["trace_id", "span_id", "parent_span_id"];

/// One message to emit impls for.
struct Message<'a> {
    /// The Rust path below `proto`, e.g. `trace::v1::span::Event`.
    path: String,
    /// The Rust module path of its nested items (oneof enums), e.g. `trace::v1::span`.
    nested: String,
    descriptor: &'a DescriptorProto,
}

/// The serde impls for every message in `fds`, as one private module to be
/// placed inside `proto` (beside the package modules). `prefix` is the package
/// prefix dropped from the Rust paths (`opentelemetry.proto`).
pub fn emit(fds: &FileDescriptorSet, prefix: &str) -> Result<String, Box<dyn Error>> {
    // Full protobuf type name (".opentelemetry.proto.trace.v1.Span.SpanKind")
    // to its Rust path below `proto` ("trace::v1::span::SpanKind").
    let mut enums: BTreeMap<String, String> = BTreeMap::new();
    let mut messages: Vec<Message<'_>> = Vec::new();
    for file in &fds.file {
        let package = file.package();
        let module = package
            .strip_prefix(prefix)
            .and_then(|p| p.strip_prefix('.'))
            .ok_or_else(|| format!("package {package} is outside {prefix}"))?
            .replace('.', "::");
        for e in &file.enum_type {
            enums.insert(
                format!(".{package}.{}", e.name()),
                format!("{module}::{}", upper_camel(e.name())),
            );
        }
        for m in &file.message_type {
            collect(
                m,
                &format!(".{package}"),
                &module,
                &mut messages,
                &mut enums,
            );
        }
    }

    let mut out = String::new();
    out.push_str(
        "/// OTLP/JSON for every message: `serde` impls written by tools/otlp-codegen\n\
         /// from the descriptors (rules in `json.rs` beside this file).\n\
         mod serde_impls {\n\
         use super::json;\n",
    );
    for m in &messages {
        emit_serialize(m, &enums, &mut out)?;
        emit_deserialize(m, &enums, &mut out)?;
    }
    out.push_str("}\n");
    Ok(out)
}

/// Adds `m` and its nested messages and enums, depth first.
fn collect<'a>(
    m: &'a DescriptorProto,
    scope: &str,
    module: &str,
    messages: &mut Vec<Message<'a>>,
    enums: &mut BTreeMap<String, String>,
) {
    let full = format!("{scope}.{}", m.name());
    let nested = format!("{module}::{}", snake(m.name()));
    messages.push(Message {
        path: format!("{module}::{}", upper_camel(m.name())),
        nested: nested.clone(),
        descriptor: m,
    });
    for e in &m.enum_type {
        enums.insert(
            format!("{full}.{}", e.name()),
            format!("{nested}::{}", upper_camel(e.name())),
        );
    }
    for n in &m.nested_type {
        collect(n, &full, &nested, messages, enums);
    }
}

/// What a field is, for choosing its wrapper.
enum Kind {
    /// A message, singular (`Option<T>`) or repeated (`Vec<T>`).
    Message,
    /// An enum, stored as `i32`; the Rust path of its type.
    Enum(String),
    /// A scalar, read and written through this wrapper in `json`.
    Scalar(&'static str),
}

fn kind(
    field: &prost_types::FieldDescriptorProto,
    enums: &BTreeMap<String, String>,
) -> Result<Kind, Box<dyn Error>> {
    Ok(match field.r#type() {
        Type::Message => Kind::Message,
        Type::Group => {
            return Err(format!("field {}: groups are not supported", field.name()).into())
        }
        Type::Enum => Kind::Enum(enums.get(field.type_name()).cloned().ok_or_else(|| {
            format!("field {}: unknown enum {}", field.name(), field.type_name())
        })?),
        Type::Double | Type::Float => Kind::Scalar("F64"),
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => Kind::Scalar("I64"),
        Type::Uint64 | Type::Fixed64 => Kind::Scalar("U64"),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => Kind::Scalar("I32"),
        Type::Uint32 | Type::Fixed32 => Kind::Scalar("U32"),
        Type::Bool => Kind::Scalar("Bool"),
        Type::String => Kind::Scalar("Str"),
        Type::Bytes if HEX_FIELDS.contains(&field.name()) => Kind::Scalar("Hex"),
        Type::Bytes => Kind::Scalar("Base64"),
    })
}

/// How a field is stored in the prost struct.
#[derive(PartialEq)]
enum Shape {
    /// A plain field (`T`, or `Option<T>` for a message).
    Single,
    /// `Vec<T>`.
    Repeated,
    /// `optional` in proto3: `Option<T>`.
    Optional,
    /// A member of a real oneof: a variant of the oneof's enum.
    OneOf { field: String, variant: String },
}

fn shape(m: &Message<'_>, field: &prost_types::FieldDescriptorProto) -> Shape {
    if field.label() == Label::Repeated {
        return Shape::Repeated;
    }
    if field.proto3_optional() {
        return Shape::Optional;
    }
    match field.oneof_index {
        Some(i) => {
            let oneof = usize::try_from(i)
                .ok()
                .and_then(|i| m.descriptor.oneof_decl.get(i))
                .map_or("", |o| o.name());
            Shape::OneOf {
                field: rust_field(oneof),
                variant: format!(
                    "{}::{}::{}",
                    m.nested,
                    upper_camel(oneof),
                    upper_camel(field.name())
                ),
            }
        }
        None => Shape::Single,
    }
}

fn emit_serialize(
    m: &Message<'_>,
    enums: &BTreeMap<String, String>,
    out: &mut String,
) -> Result<(), Box<dyn Error>> {
    writeln!(out, "impl ::serde::Serialize for super::{} {{", m.path)?;
    out.push_str(
        "fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> ::core::result::Result<S::Ok, S::Error> {\n\
         use ::serde::ser::SerializeMap;\n\
         #[allow(unused_mut)]\n\
         let mut map = serializer.serialize_map(None)?;\n",
    );
    // Oneof members are written from one match per oneof, after the fields.
    let mut oneofs: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for field in &m.descriptor.field {
        let name = rust_field(field.name());
        let key = field.json_name();
        let kind = kind(field, enums)?;
        // `v` is a reference to the value; a number wrapper takes the value.
        let wrap = |v: &str| match &kind {
            Kind::Message => v.to_string(),
            Kind::Enum(_) => v.to_string(),
            Kind::Scalar("Hex") => format!("&json::HexRef({v})"),
            Kind::Scalar("Base64") => format!("&json::Base64Ref({v})"),
            Kind::Scalar("Str") => v.to_string(),
            Kind::Scalar("Bool") => v.to_string(),
            Kind::Scalar(w) => match v.strip_prefix('&') {
                Some(place) => format!("&json::{w}({place})"),
                None => format!("&json::{w}(*{v})"),
            },
        };
        match shape(m, field) {
            Shape::Repeated => match &kind {
                Kind::Message | Kind::Enum(_) | Kind::Scalar("Str" | "Bool") => writeln!(
                    out,
                    "if !self.{name}.is_empty() {{ map.serialize_entry(\"{key}\", &self.{name})?; }}"
                )?,
                Kind::Scalar(w) => writeln!(
                    out,
                    "if !self.{name}.is_empty() {{ map.serialize_entry(\"{key}\", &json::Each(&self.{name}, json::{w}::of))?; }}"
                )?,
            },
            Shape::Optional => writeln!(
                out,
                "if let ::core::option::Option::Some(v) = &self.{name} {{ map.serialize_entry(\"{key}\", {})?; }}",
                wrap("v")
            )?,
            Shape::Single => {
                let empty = match &kind {
                    Kind::Message => {
                        writeln!(
                            out,
                            "if let ::core::option::Option::Some(v) = &self.{name} {{ map.serialize_entry(\"{key}\", v)?; }}"
                        )?;
                        continue;
                    }
                    Kind::Enum(_) | Kind::Scalar("I64" | "U64" | "I32" | "U32") => format!("self.{name} != 0"),
                    Kind::Scalar("F64") => format!("self.{name} != 0.0"),
                    Kind::Scalar("Bool") => format!("self.{name}"),
                    Kind::Scalar(_) => format!("!self.{name}.is_empty()"),
                };
                writeln!(
                    out,
                    "if {empty} {{ map.serialize_entry(\"{key}\", {})?; }}",
                    wrap(&format!("&self.{name}"))
                )?;
            }
            Shape::OneOf { field: f, variant } => {
                let value = match &kind {
                    Kind::Message | Kind::Enum(_) | Kind::Scalar("Str" | "Bool") => "v".to_string(),
                    Kind::Scalar("Hex") => "&json::HexRef(v)".to_string(),
                    Kind::Scalar("Base64") => "&json::Base64Ref(v)".to_string(),
                    Kind::Scalar(w) => format!("&json::{w}(*v)"),
                };
                oneofs
                    .entry(f)
                    .or_default()
                    .push((variant, key.to_string(), value));
            }
        }
    }
    for (field, variants) in &oneofs {
        writeln!(out, "match &self.{field} {{")?;
        for (variant, key, value) in variants {
            writeln!(
                out,
                "::core::option::Option::Some(super::{variant}(v)) => map.serialize_entry(\"{key}\", {value})?,"
            )?;
        }
        out.push_str("::core::option::Option::None => {}\n}\n");
    }
    out.push_str("map.end()\n}\n}\n");
    Ok(())
}

fn emit_deserialize(
    m: &Message<'_>,
    enums: &BTreeMap<String, String>,
    out: &mut String,
) -> Result<(), Box<dyn Error>> {
    let name = m.descriptor.name();
    writeln!(
        out,
        "impl<'de> ::serde::Deserialize<'de> for super::{path} {{\n\
         fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> ::core::result::Result<Self, D::Error> {{\n\
         struct Visitor;\n\
         impl<'de> ::serde::de::Visitor<'de> for Visitor {{\n\
         type Value = super::{path};\n\
         fn expecting(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {{ f.write_str(\"an OTLP {name} object\") }}\n\
         fn visit_map<A: ::serde::de::MapAccess<'de>>(self, mut map: A) -> ::core::result::Result<Self::Value, A::Error> {{\n\
         #[allow(unused_mut)]\n\
         let mut message = super::{path}::default();\n\
         while let ::core::option::Option::Some(key) = map.next_key::<json::Key<'de>>()? {{\n\
         match key.as_str() {{",
        path = m.path
    )?;
    for field in &m.descriptor.field {
        let rust = rust_field(field.name());
        let keys = if field.json_name() == field.name() {
            format!("\"{}\"", field.name())
        } else {
            format!("\"{}\" | \"{}\"", field.json_name(), field.name())
        };
        let kind = kind(field, enums)?;
        // An expression reading the value as the field's element type.
        let read = |optional: bool| -> String {
            let opt = |t: &str| {
                if optional {
                    format!("::core::option::Option<{t}>")
                } else {
                    t.to_string()
                }
            };
            match &kind {
                Kind::Message if optional => "map.next_value::<::core::option::Option<_>>()?".to_string(),
                Kind::Message => "map.next_value::<_>()?".to_string(),
                Kind::Enum(path) => format!(
                    "map.next_value_seed(json::EnumSeed(|name| super::{path}::from_str_name(name).map(|e| e as i32)))?"
                ),
                Kind::Scalar(w) if optional => format!("map.next_value::<{}>()?.map(|v| v.0)", opt(&format!("json::{w}"))),
                Kind::Scalar(w) => format!("map.next_value::<json::{w}>()?.0"),
            }
        };
        let assign = match shape(m, field) {
            Shape::Repeated => match &kind {
                Kind::Message => format!("message.{rust} = map.next_value::<json::Seq<_>>()?.0"),
                Kind::Enum(_) => {
                    return Err(format!("field {}: repeated enums are not supported", field.name()).into())
                }
                Kind::Scalar(w) => format!(
                    "message.{rust} = map.next_value::<json::Seq<json::{w}>>()?.0.into_iter().map(|v| v.0).collect()"
                ),
            },
            Shape::Optional => format!("message.{rust} = {}", read(true)),
            Shape::Single => match &kind {
                // `null` is the default for a singular message too: None.
                Kind::Message => format!("message.{rust} = {}", read(true)),
                Kind::Enum(_) => format!("message.{rust} = {}.unwrap_or_default()", read(false)),
                _ => format!("message.{rust} = {}", read(false)),
            },
            Shape::OneOf { field: f, variant } => {
                // `null` leaves the oneof as it was.
                format!(
                    "if let ::core::option::Option::Some(v) = {} {{ message.{f} = ::core::option::Option::Some(super::{variant}(v)); }}",
                    read(true)
                )
            }
        };
        writeln!(out, "{keys} => {{ {assign}; }}")?;
    }
    out.push_str(
        "_ => { map.next_value::<::serde::de::IgnoredAny>()?; }\n\
         }\n}\n\
         ::core::result::Result::Ok(message)\n\
         }\n}\n\
         deserializer.deserialize_map(Visitor)\n\
         }\n}\n",
    );
    Ok(())
}

/// The Rust name prost gives a field: the proto name, with `r#` for keywords.
fn rust_field(name: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn",
        "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref",
        "return", "static", "struct", "trait", "true", "type", "unsafe", "use", "where", "while",
        "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro", "override",
        "priv", "typeof", "unsized", "virtual", "yield", "try",
    ];
    let snake = snake(name);
    if KEYWORDS.contains(&snake.as_str()) {
        format!("r#{snake}")
    } else {
        snake
    }
}

/// `SpanKind` -> `span_kind`, `ExponentialHistogramDataPoint` ->
/// `exponential_histogram_data_point`; snake_case names stay as they are.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_ascii_uppercase() => next.is_some_and(|n| n.is_ascii_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `string_value` -> `StringValue`, `SpanKind` -> `SpanKind`.
fn upper_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for part in snake(name).split('_').filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_convert_like_prost() {
        assert_eq!(
            snake("ExponentialHistogramDataPoint"),
            "exponential_histogram_data_point"
        );
        assert_eq!(snake("AnyValue"), "any_value");
        assert_eq!(snake("trace_id"), "trace_id");
        assert_eq!(upper_camel("string_value"), "StringValue");
        assert_eq!(upper_camel("SpanKind"), "SpanKind");
        assert_eq!(upper_camel("kvlist_value"), "KvlistValue");
    }
}
