//! OTLP v1 protobuf messages as prost types, generated from the opentelemetry-proto
//! v1.10.0 schema.
//!
//! The modules mirror the protobuf packages without their common
//! `opentelemetry.proto` prefix: `proto::metrics::v1::Metric` is
//! `opentelemetry.proto.metrics.v1.Metric`, and
//! `proto::collector::metrics::v1::ExportMetricsServiceRequest` is the body of an
//! OTLP/HTTP `POST /v1/metrics`. Encode and decode them with [`prost::Message`].
//! Only the messages of common, resource, metrics, logs, trace and the three
//! collector packages are here; there is no gRPC service code.
//!
//! The code lives in `generated.rs` beside this file. It is written by
//! `tools/otlp-codegen` and committed, so building tern needs neither protoc nor
//! prost-build. Do not edit it: to regenerate, run
//! `cargo run --manifest-path tools/otlp-codegen/Cargo.toml` from the repository
//! root (`-- --check` only verifies it is current). The vendored `.proto` files, their
//! licence and their provenance are in `tools/otlp-codegen/proto/`.
//!
//! Every message also implements `serde::Serialize` and `serde::Deserialize`
//! in the OTLP/JSON encoding (lowerCamelCase keys, hex trace and span ids,
//! 64-bit integers as strings, enums as numbers or names, unknown keys
//! ignored): the impls are generated too, from the same descriptors, and call
//! the wrappers in `json.rs`, which states the rules. Read a request body with
//! `serde_json::from_slice`.
//!
//! Fields the schema marks "Status: \[Development\]" (the profiling `*_strindex`
//! fields, `EntityRef`, `Resource::entity_refs`) are generated too, because whole
//! files are; tern does not set them.

// Everything in this module except `tests` is prost-build output, with doc
// comments copied verbatim from the .proto files. These lints are relaxed here
// because that text can't be fixed without editing upstream's schema:
// - missing_docs: messages, fields and enum values that have no comment in the
//   .proto (e.g. `ExportMetricsServiceRequest`) get no doc.
// - clippy::doc_lazy_continuation, clippy::doc_overindented_list_items: the
//   .proto comments indent their lists in ways clippy's Markdown checks reject.
// - rustdoc::invalid_html_tags: `schema_url` comments contain
//   "http[s]://server[:port]/path/<version>", which rustdoc reads as an HTML tag.
#![allow(
    missing_docs,
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    rustdoc::invalid_html_tags
)]

include!("generated.rs");

mod json;

#[cfg(test)]
mod tests;
