//! Checks that the generated types round-trip and use OTLP's field numbers.
//!
//! The byte strings below are written by hand from the .proto files, not produced
//! by prost, so a generation from the wrong schema (or with renumbered fields)
//! fails to decode them into the expected values.

use prost::Message;

use super::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use super::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use super::logs::v1::{LogRecord, SeverityNumber};
use super::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use super::resource::v1::Resource;
use super::trace::v1::{span, Span};

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn sum_metric() -> Metric {
    Metric {
        name: "m".to_owned(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                time_unix_nano: 1000,
                value: Some(number_data_point::Value::AsInt(42)),
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn histogram_metric() -> Metric {
    Metric {
        name: "h".to_owned(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                count: 3,
                sum: Some(1.5),
                bucket_counts: vec![1, 2],
                explicit_bounds: vec![1.0],
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    }
}

/// KeyValue { key: "a", value: AnyValue { string_value: "b" } }: key is field 1,
/// value field 2, AnyValue.string_value field 1, all length-delimited.
const KEY_VALUE_A_B: &[u8] = &[0x0a, 0x01, b'a', 0x12, 0x03, 0x0a, 0x01, b'b'];

#[test]
fn key_value_matches_hand_encoding() -> Result<(), prost::DecodeError> {
    let kv = string_attr("a", "b");
    assert_eq!(kv.encode_to_vec(), KEY_VALUE_A_B);
    assert_eq!(KeyValue::decode(KEY_VALUE_A_B)?, kv);
    Ok(())
}

#[test]
fn export_metrics_request_nests_resource_at_field_one() -> Result<(), prost::DecodeError> {
    // ExportMetricsServiceRequest.resource_metrics (1) -> ResourceMetrics.resource (1)
    // -> Resource.attributes (1) -> KeyValue a=b.
    let bytes = [&[0x0a, 0x0c, 0x0a, 0x0a, 0x0a, 0x08][..], KEY_VALUE_A_B].concat();
    let expected = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![string_attr("a", "b")],
                ..Default::default()
            }),
            ..Default::default()
        }],
    };
    assert_eq!(ExportMetricsServiceRequest::decode(&bytes[..])?, expected);
    Ok(())
}

#[test]
fn sum_metric_matches_hand_encoding() -> Result<(), prost::DecodeError> {
    let data_point = [
        &[0x19][..], // NumberDataPoint.time_unix_nano: field 3, fixed64
        &1000u64.to_le_bytes(),
        &[0x31], // NumberDataPoint.as_int: field 6, sfixed64
        &42i64.to_le_bytes(),
    ]
    .concat();
    let sum = [
        &[0x0a, 18][..], // Sum.data_points: field 1
        &data_point,
        &[0x10, 0x02], // Sum.aggregation_temporality: field 2, CUMULATIVE = 2
        &[0x18, 0x01], // Sum.is_monotonic: field 3
    ]
    .concat();
    let metric = [
        &[0x0a, 0x01, b'm'][..], // Metric.name: field 1
        &[0x3a, 24],             // Metric.sum: field 7
        &sum,
    ]
    .concat();
    assert_eq!(data_point.len(), 18);
    assert_eq!(sum.len(), 24);
    assert_eq!(Metric::decode(&metric[..])?, sum_metric());
    Ok(())
}

#[test]
fn histogram_metric_matches_hand_encoding() -> Result<(), prost::DecodeError> {
    let data_point = [
        &[0x21][..], // HistogramDataPoint.count: field 4, fixed64
        &3u64.to_le_bytes(),
        &[0x29], // HistogramDataPoint.sum: field 5, double
        &1.5f64.to_le_bytes(),
        &[0x32, 16], // HistogramDataPoint.bucket_counts: field 6, packed fixed64
        &1u64.to_le_bytes(),
        &2u64.to_le_bytes(),
        &[0x3a, 8], // HistogramDataPoint.explicit_bounds: field 7, packed double
        &1.0f64.to_le_bytes(),
    ]
    .concat();
    let histogram = [
        &[0x0a, 46][..], // Histogram.data_points: field 1
        &data_point,
        &[0x10, 0x01], // Histogram.aggregation_temporality: field 2, DELTA = 1
    ]
    .concat();
    let metric = [
        &[0x0a, 0x01, b'h'][..], // Metric.name: field 1
        &[0x4a, 50],             // Metric.histogram: field 9
        &histogram,
    ]
    .concat();
    assert_eq!(data_point.len(), 46);
    assert_eq!(histogram.len(), 50);
    assert_eq!(Metric::decode(&metric[..])?, histogram_metric());
    Ok(())
}

#[test]
fn partial_success_matches_hand_encoding() -> Result<(), prost::DecodeError> {
    // ExportMetricsServiceResponse.partial_success (1) -> rejected_data_points (1) = 5,
    // error_message (2) = "x".
    let bytes: &[u8] = &[0x0a, 0x05, 0x08, 0x05, 0x12, 0x01, b'x'];
    let response = ExportMetricsServiceResponse {
        partial_success: Some(ExportMetricsPartialSuccess {
            rejected_data_points: 5,
            error_message: "x".to_owned(),
        }),
    };
    assert_eq!(response.encode_to_vec(), bytes);
    assert_eq!(ExportMetricsServiceResponse::decode(bytes)?, response);
    Ok(())
}

#[test]
fn log_record_matches_hand_encoding() -> Result<(), prost::DecodeError> {
    // LogRecord.severity_number (2) = INFO (9); LogRecord.body (5) = string "hi".
    let bytes: &[u8] = &[0x10, 0x09, 0x2a, 0x04, 0x0a, 0x02, b'h', b'i'];
    let record = LogRecord {
        severity_number: SeverityNumber::Info as i32,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue("hi".to_owned())),
        }),
        ..Default::default()
    };
    assert_eq!(LogRecord::decode(bytes)?, record);
    Ok(())
}

#[test]
fn span_matches_hand_encoding() -> Result<(), prost::DecodeError> {
    let bytes = [
        &[0x0a, 16][..], // Span.trace_id: field 1, bytes
        &[0x11; 16],
        &[0x12, 8], // Span.span_id: field 2, bytes
        &[0x22; 8],
        &[0x2a, 0x01, b's'], // Span.name: field 5
        &[0x30, 0x02],       // Span.kind: field 6, SPAN_KIND_SERVER = 2
    ]
    .concat();
    let expected = Span {
        trace_id: vec![0x11; 16],
        span_id: vec![0x22; 8],
        name: "s".to_owned(),
        kind: span::SpanKind::Server as i32,
        ..Default::default()
    };
    assert_eq!(Span::decode(&bytes[..])?, expected);
    Ok(())
}

#[test]
fn export_metrics_request_round_trips() -> Result<(), prost::DecodeError> {
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    string_attr("service.name", "tern"),
                    string_attr("host.name", "gw-1"),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tern".to_owned(),
                    version: "0.1.0".to_owned(),
                    ..Default::default()
                }),
                metrics: vec![sum_metric(), histogram_metric()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let bytes = request.encode_to_vec();
    assert_eq!(bytes.len(), request.encoded_len());
    assert_eq!(ExportMetricsServiceRequest::decode(&bytes[..])?, request);
    Ok(())
}
