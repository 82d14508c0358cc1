//! Splitting one encoded OTLP request into one part per gateway, by the
//! signal's routing key; and into halves, for a gateway that answered 413
//! ([`halve`]).
//!
//! The most common batches have a single key (a scrape under `resource`, a
//! receiver request from one service), so the split first finds out whether
//! a batch needs splitting at all and then keeps it whole: nothing is
//! re-encoded or re-compressed. Under `resource` the top-level resource
//! entries are grouped as raw protobuf bytes (no decoding of the data
//! inside); the other keys decode with prost, group, and re-encode each part.

use prost::Message;

use crate::config::RoutingKey;
use crate::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use crate::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::proto::common::v1::{any_value, KeyValue};
use crate::otlp::proto::metrics::v1::{metric::Data, Metric};
use crate::otlp::proto::resource::v1::Resource;
use crate::otlp::request::{self, points, Request};
use crate::otlp::{compress, encode, Encoded, MAX_STORED_RAW};
use crate::queue::Signal;

use super::{fnv1a, key_hash, mix, Table, SEED};

/// Where a batch goes.
#[derive(Debug)]
pub enum Split {
    /// All of it to the gateway at this index of the table.
    Whole(usize),
    /// One part per gateway, in gateway order.
    Parts(Vec<Part>),
}

/// The share of a batch bound for one gateway.
#[derive(Debug)]
pub struct Part {
    /// The gateway's index in the table.
    pub gateway: usize,
    /// The part, encoded and compressed.
    pub encoded: Encoded,
    /// Spans, log records or data points in it.
    pub items: usize,
}

/// Routes the compressed request `gzip` (as stored: gzip or zstd) of `signal` over `table`.
/// A table of one gateway keeps every batch whole without looking inside;
/// an empty table gives `Whole(0)`, which the caller must not index.
pub fn split(table: &Table, signal: Signal, gzip: &[u8]) -> Split {
    if table.members.len() <= 1 {
        return Split::Whole(0);
    }
    let whole_fallback = || Split::Whole(table.pick(key_hash(gzip)).unwrap_or(0));
    let Some(raw) = decompressed(gzip) else {
        return whole_fallback();
    };
    split_raw(table, signal, &raw).unwrap_or_else(whole_fallback)
}

/// Routes an uncompressed request; `None` when it does not decode.
pub fn split_raw(table: &Table, signal: Signal, raw: &[u8]) -> Option<Split> {
    let n = table.members.len();
    if n <= 1 {
        return Some(Split::Whole(0));
    }
    let pick = |key: u64| table.pick(key).unwrap_or(0);
    match table.key_of(signal) {
        RoutingKey::Resource | RoutingKey::Metric | RoutingKey::StreamId
            if table.key_of(signal) == RoutingKey::Resource =>
        {
            split_by_resource(signal, raw, n, pick)
        }
        key => match signal {
            Signal::Traces => {
                split_items::<ExportTraceServiceRequest>(raw, key, n, &pick, |span| {
                    pick(key_hash(&span.trace_id))
                })
            }
            // Records without a trace id spread evenly.
            Signal::Logs => split_items::<ExportLogsServiceRequest>(raw, key, n, &pick, |record| {
                if record.trace_id.is_empty() {
                    pick(fastrand::u64(..))
                } else {
                    pick(key_hash(&record.trace_id))
                }
            }),
            Signal::Metrics => split_metrics(raw, key, n, pick),
        },
    }
}

/// A stored batch decompressed, whichever its codec.
fn decompressed(payload: &[u8]) -> Option<Vec<u8>> {
    crate::otlp::decompress(payload, MAX_STORED_RAW).ok()
}

/// Items grouped by gateway index, or all of them with the one gateway they
/// all go to.
type Grouped<T> = Result<Vec<(usize, Vec<T>)>, (usize, Vec<T>)>;

/// A top-level protobuf field: number, whole encoding, body.
type Field<'a> = (u64, &'a [u8], &'a [u8]);

/// Groups `items` by gateway, keeping their order. Returns `Err(items)` when
/// they all go to one gateway, with that gateway, so nothing is copied.
fn group<T>(items: Vec<T>, n: usize, mut gateway: impl FnMut(&T) -> usize) -> Grouped<T> {
    let gateways: Vec<usize> = items.iter().map(&mut gateway).collect();
    let first = gateways.first().copied().unwrap_or(0);
    if gateways.iter().all(|g| *g == first) {
        return Err((first, items));
    }
    let mut groups: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (item, g) in items.into_iter().zip(gateways) {
        if let Some(v) = groups.get_mut(g) {
            v.push(item);
        }
    }
    Ok(groups
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .collect())
}

/// Puts each group into its gateway's slot.
fn scatter<T>(grouped: Grouped<T>, mut put: impl FnMut(usize, Vec<T>)) {
    match grouped {
        Ok(groups) => {
            for (g, v) in groups {
                put(g, v);
            }
        }
        Err((g, v)) => put(g, v),
    }
}

/// The parts, or `Whole` when only one gateway got anything.
fn finish<R: Message>(parts: Vec<(R, usize)>, nonempty: impl Fn(&R) -> bool) -> Split {
    let mut out: Vec<Part> = Vec::new();
    for (gateway, (request, items)) in parts.into_iter().enumerate() {
        if nonempty(&request) {
            out.push(Part {
                gateway,
                encoded: encode(&request),
                items,
            });
        }
    }
    if out.len() == 1 {
        if let Some(p) = out.first() {
            return Split::Whole(p.gateway);
        }
    }
    Split::Parts(out)
}

/// The string value of `key` among `attrs`, or "".
fn attribute<'a>(attrs: &'a [KeyValue], key: &str) -> &'a str {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

fn service_key(resource: Option<&Resource>) -> u64 {
    let attrs = resource.map_or(&[][..], |r| &r.attributes[..]);
    key_hash(attribute(attrs, "service.name").as_bytes())
}

fn resource_key(resource: Option<&Resource>) -> u64 {
    key_hash(&resource.map(Message::encode_to_vec).unwrap_or_default())
}

/// A hash of attributes that does not depend on their order.
fn attributes_hash(mut state: u64, attrs: &[KeyValue]) -> u64 {
    let mut sorted: Vec<&KeyValue> = attrs.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for kv in sorted {
        state = fnv1a(state, kv.key.as_bytes());
        state = fnv1a(state, &[0xff]);
        state = fnv1a(
            state,
            &kv.value
                .as_ref()
                .map(Message::encode_to_vec)
                .unwrap_or_default(),
        );
        state = fnv1a(state, &[0xfe]);
    }
    state
}

/// One top-level field of a request as raw bytes: its number and its whole
/// encoding (tag, length and body).
fn top_level_fields(raw: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let start = rest;
        let mut cursor = rest;
        let tag = prost::encoding::decode_varint(&mut cursor).ok()?;
        let field = tag >> 3;
        let body: &[u8] = match tag & 7 {
            0 => {
                prost::encoding::decode_varint(&mut cursor).ok()?;
                &[]
            }
            1 => cursor.get(8..).map(|_| &[][..]).and_then(|b| {
                cursor = cursor.get(8..)?;
                Some(b)
            })?,
            2 => {
                let len =
                    usize::try_from(prost::encoding::decode_varint(&mut cursor).ok()?).ok()?;
                let body = cursor.get(..len)?;
                cursor = cursor.get(len..)?;
                body
            }
            5 => {
                cursor = cursor.get(4..)?;
                &[]
            }
            _ => return None,
        };
        let used = start.len() - cursor.len();
        out.push((field, start.get(..used)?, body));
        rest = cursor;
    }
    Some(out)
}

/// The raw bytes of field 1 (the resource) inside a Resource* message, or "".
fn resource_bytes(body: &[u8]) -> Option<&[u8]> {
    Some(
        top_level_fields(body)?
            .into_iter()
            .find(|(f, _, _)| *f == 1)
            .map_or(&[][..], |(_, _, b)| b),
    )
}

/// Under `resource`: groups the top-level Resource* entries by the hash of
/// their resource's bytes, as raw protobuf, and counts items only when the
/// batch really splits.
fn split_by_resource(
    signal: Signal,
    raw: &[u8],
    n: usize,
    pick: impl Fn(u64) -> usize,
) -> Option<Split> {
    let fields = top_level_fields(raw)?;
    let mut parts: Vec<Vec<u8>> = (0..n).map(|_| Vec::new()).collect();
    let mut first: Option<usize> = None;
    let mut several = false;
    for (field, whole, body) in fields {
        // Field 1 is resource_metrics, resource_logs or resource_spans; others
        // (none today) go with the first gateway's part.
        let g = if field == 1 {
            pick(key_hash(resource_bytes(body)?))
        } else {
            first.unwrap_or(0)
        };
        several |= first.is_some_and(|f| f != g);
        first.get_or_insert(g);
        parts.get_mut(g)?.extend_from_slice(whole);
    }
    if !several {
        return Some(Split::Whole(first.unwrap_or(0)));
    }
    let mut out = Vec::new();
    for (gateway, bytes) in parts.into_iter().enumerate() {
        if bytes.is_empty() {
            continue;
        }
        let items = count_items(signal, &bytes)?;
        out.push(Part {
            gateway,
            encoded: compress(&bytes),
            items,
        });
    }
    Some(Split::Parts(out))
}

/// Spans, log records or data points in an uncompressed request.
pub fn count_items(signal: Signal, raw: &[u8]) -> Option<usize> {
    Some(match signal {
        Signal::Traces => ExportTraceServiceRequest::decode(raw).ok()?.count(),
        Signal::Logs => ExportLogsServiceRequest::decode(raw).ok()?.count(),
        Signal::Metrics => ExportMetricsServiceRequest::decode(raw).ok()?.count(),
    })
}

/// One half of a request that a gateway found too large (413).
#[derive(Debug)]
pub struct Half {
    /// The half, encoded and compressed as the queue stores batches.
    pub encoded: Encoded,
    /// Spans, log records or data points in it.
    pub items: usize,
}

/// What [`halve`] made of a request.
#[derive(Debug)]
pub enum Halved {
    /// Two requests that together hold everything, in the original order.
    Two(Half, Half),
    /// The request holds a single item (or none): it cannot be split.
    Single,
}

/// Splits the compressed request `gzip` (as stored) of `signal` in two, for a
/// gateway that answered 413: by resource entries when there are several,
/// else by the scopes of the one resource, else by the items of the one
/// scope (for metrics: by metrics, then by the data points of the one
/// metric). Each half keeps its resource and scope.
///
/// # Errors
///
/// The stored request does not decompress or decode: a local fault, the
/// batch is to be dropped as corrupt.
pub fn halve(signal: Signal, gzip: &[u8]) -> Result<Halved, &'static str> {
    let raw = decompressed(gzip).ok_or("does not decompress")?;
    match signal {
        Signal::Traces => halve_decoded::<ExportTraceServiceRequest>(&raw),
        Signal::Logs => halve_decoded::<ExportLogsServiceRequest>(&raw),
        Signal::Metrics => halve_decoded::<ExportMetricsServiceRequest>(&raw),
    }
}

fn halve_decoded<R: Request>(raw: &[u8]) -> Result<Halved, &'static str> {
    let request = R::decode(raw).map_err(|_| "does not decode")?;
    let Some((a, b)) = request::halve(request) else {
        return Ok(Halved::Single);
    };
    let half = |r: R| Half {
        items: r.count(),
        encoded: encode(&r),
    };
    Ok(Halved::Two(half(a), half(b)))
}

/// Splits a traces or logs request: each resource entry whole under the
/// `service` and `resource` keys, else each span or record by
/// `item_gateway` (its trace id), keeping its resource and scope.
fn split_items<R: Request>(
    raw: &[u8],
    key: RoutingKey,
    n: usize,
    pick: &impl Fn(u64) -> usize,
    item_gateway: impl Fn(&R::Item) -> usize,
) -> Option<Split> {
    let mut request = R::decode(raw).ok()?;
    let mut parts: Vec<(R, usize)> = (0..n).map(|_| Default::default()).collect();
    for mut entry in std::mem::take(request.entries_mut()) {
        let resource_gw = match key {
            RoutingKey::Service => Some(pick(service_key(R::resource(&entry).as_ref()))),
            RoutingKey::Resource => Some(pick(resource_key(R::resource(&entry).as_ref()))),
            _ => None,
        };
        if let Some(g) = resource_gw {
            let items = R::scopes(&entry)
                .iter()
                .map(|s| R::items(s).len())
                .sum::<usize>();
            let slot = parts.get_mut(g)?;
            slot.0.entries_mut().push(entry);
            slot.1 += items;
            continue;
        }
        let scopes = std::mem::take(R::scopes_mut(&mut entry));
        let mut per: Vec<Vec<R::Scope>> = (0..n).map(|_| Vec::new()).collect();
        for mut scope in scopes {
            let items = std::mem::take(R::items_mut(&mut scope));
            scatter(group(items, n, &item_gateway), |g, items| {
                if let Some(slot) = per.get_mut(g) {
                    let mut part = scope.clone();
                    *R::items_mut(&mut part) = items;
                    slot.push(part);
                }
            });
        }
        for (g, scopes) in per.into_iter().enumerate() {
            if scopes.is_empty() {
                continue;
            }
            let items = scopes.iter().map(|s| R::items(s).len()).sum::<usize>();
            let mut part = entry.clone();
            *R::scopes_mut(&mut part) = scopes;
            let slot = parts.get_mut(g)?;
            slot.0.entries_mut().push(part);
            slot.1 += items;
        }
    }
    Some(finish(parts, |r| !r.entries().is_empty()))
}

/// Splits one metric's data points by stream (name and point attributes).
fn split_streams(mut m: Metric, n: usize, pick: &impl Fn(u64) -> usize) -> Vec<(usize, Metric)> {
    let name = fnv1a(SEED, m.name.as_bytes());
    let gw = |attrs: &[KeyValue]| pick(mix(attributes_hash(name, attrs)));
    let mut out = Vec::new();
    macro_rules! by_points {
        ($variant:ident, $inner:expr) => {{
            let mut inner = $inner;
            let pts = std::mem::take(&mut inner.data_points);
            scatter(group(pts, n, |p| gw(&p.attributes)), |g, pts| {
                let mut part = m.clone();
                let mut data = inner.clone();
                data.data_points = pts;
                part.data = Some(Data::$variant(data));
                out.push((g, part));
            });
        }};
    }
    match m.data.take() {
        Some(Data::Gauge(x)) => by_points!(Gauge, x),
        Some(Data::Sum(x)) => by_points!(Sum, x),
        Some(Data::Histogram(x)) => by_points!(Histogram, x),
        Some(Data::ExponentialHistogram(x)) => by_points!(ExponentialHistogram, x),
        Some(Data::Summary(x)) => by_points!(Summary, x),
        None => out.push((pick(mix(name)), m)),
    }
    out
}

fn split_metrics(
    raw: &[u8],
    key: RoutingKey,
    n: usize,
    pick: impl Fn(u64) -> usize,
) -> Option<Split> {
    let request = ExportMetricsServiceRequest::decode(raw).ok()?;
    let mut parts: Vec<(ExportMetricsServiceRequest, usize)> =
        (0..n).map(|_| Default::default()).collect();
    for mut rm in request.resource_metrics {
        let resource_gw = match key {
            RoutingKey::Service => Some(pick(service_key(rm.resource.as_ref()))),
            RoutingKey::Resource | RoutingKey::TraceId => {
                Some(pick(resource_key(rm.resource.as_ref())))
            }
            RoutingKey::Metric | RoutingKey::StreamId => None,
        };
        if let Some(g) = resource_gw {
            let items = rm
                .scope_metrics
                .iter()
                .flat_map(|s| &s.metrics)
                .map(points)
                .sum::<usize>();
            let slot = parts.get_mut(g)?;
            slot.0.resource_metrics.push(rm);
            slot.1 += items;
            continue;
        }
        let scopes = std::mem::take(&mut rm.scope_metrics);
        let mut per: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
        for mut sm in scopes {
            let metrics = std::mem::take(&mut sm.metrics);
            let mut by_gateway: Vec<Vec<Metric>> = (0..n).map(|_| Vec::new()).collect();
            for m in metrics {
                if key == RoutingKey::StreamId {
                    for (g, part) in split_streams(m, n, &pick) {
                        by_gateway.get_mut(g)?.push(part);
                    }
                } else {
                    let g = pick(key_hash(m.name.as_bytes()));
                    by_gateway.get_mut(g)?.push(m);
                }
            }
            for (g, metrics) in by_gateway.into_iter().enumerate() {
                if metrics.is_empty() {
                    continue;
                }
                let mut part = sm.clone();
                part.metrics = metrics;
                per.get_mut(g)?.push(part);
            }
        }
        for (g, scopes) in per.into_iter().enumerate() {
            if scopes.is_empty() {
                continue;
            }
            let items = scopes
                .iter()
                .flat_map(|s| &s.metrics)
                .map(points)
                .sum::<usize>();
            let mut part = rm.clone();
            part.scope_metrics = scopes;
            let slot = parts.get_mut(g)?;
            slot.0.resource_metrics.push(part);
            slot.1 += items;
        }
    }
    Some(finish(parts, |r| !r.resource_metrics.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Routing;
    use crate::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn table(n: usize, routing: Routing) -> Table {
        let d: Vec<String> = (0..n).map(|i| format!("http://10.0.0.{i}:4318")).collect();
        Table::new(&d, routing)
    }

    fn traces(ids: impl Iterator<Item = u64>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![crate::otlp::kv("service.name", "a")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: ids
                        .map(|i| Span {
                            trace_id: i.to_be_bytes().repeat(2),
                            name: format!("s{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn splits_spans_by_trace_and_keeps_single_keys_whole() {
        let t = table(3, Routing::default());
        // Two spans per trace, 300 traces.
        let req = traces((0..300u64).chain(0..300u64));
        let Split::Parts(parts) = split(&t, Signal::Traces, &encode(&req).payload) else {
            panic!("expected parts");
        };
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(|p| p.items).sum::<usize>(), 600);
        let mut seen = std::collections::HashMap::new();
        for p in &parts {
            let raw = decompressed(&p.encoded.payload).unwrap();
            let r = ExportTraceServiceRequest::decode(&raw[..]).unwrap();
            for s in &r.resource_spans[0].scope_spans[0].spans {
                let g = seen.entry(s.trace_id.clone()).or_insert(p.gateway);
                assert_eq!(*g, p.gateway, "a trace was split");
            }
        }
        assert_eq!(seen.len(), 300);
        // One trace: whole.
        let one = traces([7u64, 7, 7].into_iter());
        assert!(matches!(
            split(&t, Signal::Traces, &encode(&one).payload),
            Split::Whole(_)
        ));
        // Under service: whole.
        let by_service = Routing {
            traces: RoutingKey::Service,
            ..Routing::default()
        };
        let t = table(3, by_service);
        assert!(matches!(
            split(&t, Signal::Traces, &encode(&req).payload),
            Split::Whole(_)
        ));
    }

    #[test]
    fn resource_split_works_on_raw_entries() {
        let t = table(4, Routing::default());
        let mut req = ExportMetricsServiceRequest::default();
        for i in 0..40 {
            req.resource_metrics
                .push(crate::otlp::proto::metrics::v1::ResourceMetrics {
                    resource: Some(Resource {
                        attributes: vec![crate::otlp::kv("instance", format!("h{i}"))],
                        ..Default::default()
                    }),
                    ..Default::default()
                });
        }
        let Split::Parts(parts) = split(&t, Signal::Metrics, &encode(&req).payload) else {
            panic!("expected parts");
        };
        let mut total = 0;
        for p in parts {
            let raw = decompressed(&p.encoded.payload).unwrap();
            let r = ExportMetricsServiceRequest::decode(&raw[..]).unwrap();
            for rm in &r.resource_metrics {
                assert_eq!(t.pick(resource_key(rm.resource.as_ref())), Some(p.gateway));
            }
            total += r.resource_metrics.len();
        }
        assert_eq!(total, 40);
        // Garbage is routed whole, never lost.
        assert!(matches!(
            split(&t, Signal::Metrics, b"not gzip"),
            Split::Whole(_)
        ));
    }

    fn halves(signal: Signal, gzip: &[u8]) -> (Vec<u8>, usize, Vec<u8>, usize) {
        match halve(signal, gzip) {
            Ok(Halved::Two(a, b)) => (
                decompressed(&a.encoded.payload).unwrap(),
                a.items,
                decompressed(&b.encoded.payload).unwrap(),
                b.items,
            ),
            other => panic!("expected two halves, got {other:?}"),
        }
    }

    #[test]
    fn halves_by_resource_then_scope_then_items() {
        // Three spans in one scope: 2 + 1, resource and scope kept in each.
        let req = traces(0..3u64);
        let (a, na, b, nb) = halves(Signal::Traces, &encode(&req).payload);
        let (a, b) = (
            ExportTraceServiceRequest::decode(&a[..]).unwrap(),
            ExportTraceServiceRequest::decode(&b[..]).unwrap(),
        );
        assert_eq!((na, nb), (2, 1));
        assert_eq!(a.resource_spans[0].resource, req.resource_spans[0].resource);
        assert_eq!(b.resource_spans[0].resource, req.resource_spans[0].resource);
        let names = |r: &ExportTraceServiceRequest| -> Vec<String> {
            r.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(names(&a), ["s0", "s1"]);
        assert_eq!(names(&b), ["s2"]);

        // Two scopes: one each.
        let mut two_scopes = traces(0..4u64);
        let mut second = two_scopes.resource_spans[0].scope_spans[0].clone();
        second.spans.truncate(1);
        two_scopes.resource_spans[0].scope_spans.push(second);
        let (_, na, b, nb) = halves(Signal::Traces, &encode(&two_scopes).payload);
        assert_eq!((na, nb), (4, 1));
        let b = ExportTraceServiceRequest::decode(&b[..]).unwrap();
        assert_eq!(b.resource_spans[0].scope_spans.len(), 1);

        // Two resources: one each, whatever their sizes.
        let mut two_resources = traces(0..5u64);
        two_resources
            .resource_spans
            .push(traces(9..10u64).resource_spans.remove(0));
        let (_, na, _, nb) = halves(Signal::Traces, &encode(&two_resources).payload);
        assert_eq!((na, nb), (5, 1));

        // One span, or none: nothing to split.
        assert!(matches!(
            halve(Signal::Traces, &encode(&traces(0..1u64)).payload),
            Ok(Halved::Single)
        ));
        assert!(matches!(
            halve(
                Signal::Traces,
                &encode(&ExportTraceServiceRequest::default()).payload
            ),
            Ok(Halved::Single)
        ));
        // What does not decompress or decode is the batch's fault.
        assert!(halve(Signal::Traces, b"not gzip").is_err());
        assert!(halve(Signal::Metrics, &compress(&[0xff, 0xff, 0xff]).payload).is_err());
    }

    #[test]
    fn halves_metrics_down_to_data_points() {
        use crate::otlp::proto::metrics::v1::{
            Gauge, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        };
        let point = |v: f64| NumberDataPoint {
            value: Some(crate::otlp::proto::metrics::v1::number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let metric = |name: &str, n: usize| Metric {
            name: name.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: (0..n).map(|i| point(i as f64)).collect(),
            })),
            ..Default::default()
        };
        let request = |metrics: Vec<Metric>| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        // Two metrics: one each.
        let (_, na, _, nb) = halves(
            Signal::Metrics,
            &encode(&request(vec![metric("a", 3), metric("b", 4)])).payload,
        );
        assert_eq!((na, nb), (3, 4));
        // One metric of five points: 3 + 2, the metric's name in both.
        let (a, na, b, nb) = halves(
            Signal::Metrics,
            &encode(&request(vec![metric("a", 5)])).payload,
        );
        assert_eq!((na, nb), (3, 2));
        for half in [a, b] {
            let r = ExportMetricsServiceRequest::decode(&half[..]).unwrap();
            assert_eq!(r.resource_metrics[0].scope_metrics[0].metrics[0].name, "a");
        }
        assert!(matches!(
            halve(
                Signal::Metrics,
                &encode(&request(vec![metric("a", 1)])).payload
            ),
            Ok(Halved::Single)
        ));
    }
}
