//! What the three `Export*ServiceRequest` messages share: resource entries,
//! each with its scopes, each with its items (spans, log records, metrics).
//! The receiver, the router's split and the 413 halving walk all three
//! through [`Request`] instead of writing each walk three times.

use super::proto::collector::logs::v1::ExportLogsServiceRequest;
use super::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use super::proto::collector::trace::v1::ExportTraceServiceRequest;
use super::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use super::proto::metrics::v1::{metric::Data, Metric, ResourceMetrics, ScopeMetrics};
use super::proto::resource::v1::Resource;
use super::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// An OTLP export request: resource entries of scopes of items.
pub trait Request: prost::Message + Default {
    /// A resource entry (`ResourceSpans`, `ResourceLogs`, `ResourceMetrics`).
    type Entry: prost::Message + Clone + Default;
    /// A scope (`ScopeSpans`, `ScopeLogs`, `ScopeMetrics`).
    type Scope: prost::Message + Clone + Default;
    /// An item (`Span`, `LogRecord`, `Metric`).
    type Item: prost::Message + Clone;

    /// The resource entries.
    fn entries(&self) -> &Vec<Self::Entry>;
    /// The resource entries, to change.
    fn entries_mut(&mut self) -> &mut Vec<Self::Entry>;
    /// A request of these entries.
    fn of_entries(entries: Vec<Self::Entry>) -> Self;
    /// An entry's resource.
    fn resource(entry: &Self::Entry) -> &Option<Resource>;
    /// An entry's resource, to change.
    fn resource_mut(entry: &mut Self::Entry) -> &mut Option<Resource>;
    /// An entry's scopes.
    fn scopes(entry: &Self::Entry) -> &Vec<Self::Scope>;
    /// An entry's scopes, to change.
    fn scopes_mut(entry: &mut Self::Entry) -> &mut Vec<Self::Scope>;
    /// A scope's items.
    fn items(scope: &Self::Scope) -> &Vec<Self::Item>;
    /// A scope's items, to change.
    fn items_mut(scope: &mut Self::Scope) -> &mut Vec<Self::Item>;

    /// What one item counts for: 1, or a metric's data points.
    fn weight(_item: &Self::Item) -> usize {
        1
    }

    /// Moves the second half of what is inside one item into a copy of it,
    /// for an item too large to send whole; `None` when it cannot be split
    /// (spans and log records never can; a metric with one data point).
    fn halve_item(_item: &mut Self::Item) -> Option<Self::Item> {
        None
    }

    /// Spans, log records or data points in the request.
    fn count(&self) -> usize {
        self.entries()
            .iter()
            .flat_map(Self::scopes)
            .flat_map(Self::items)
            .map(Self::weight)
            .sum()
    }
}

impl Request for ExportTraceServiceRequest {
    type Entry = ResourceSpans;
    type Scope = ScopeSpans;
    type Item = Span;

    fn entries(&self) -> &Vec<ResourceSpans> {
        &self.resource_spans
    }
    fn entries_mut(&mut self) -> &mut Vec<ResourceSpans> {
        &mut self.resource_spans
    }
    fn of_entries(resource_spans: Vec<ResourceSpans>) -> Self {
        ExportTraceServiceRequest { resource_spans }
    }
    fn resource(entry: &ResourceSpans) -> &Option<Resource> {
        &entry.resource
    }
    fn resource_mut(entry: &mut ResourceSpans) -> &mut Option<Resource> {
        &mut entry.resource
    }
    fn scopes(entry: &ResourceSpans) -> &Vec<ScopeSpans> {
        &entry.scope_spans
    }
    fn scopes_mut(entry: &mut ResourceSpans) -> &mut Vec<ScopeSpans> {
        &mut entry.scope_spans
    }
    fn items(scope: &ScopeSpans) -> &Vec<Span> {
        &scope.spans
    }
    fn items_mut(scope: &mut ScopeSpans) -> &mut Vec<Span> {
        &mut scope.spans
    }
}

impl Request for ExportLogsServiceRequest {
    type Entry = ResourceLogs;
    type Scope = ScopeLogs;
    type Item = LogRecord;

    fn entries(&self) -> &Vec<ResourceLogs> {
        &self.resource_logs
    }
    fn entries_mut(&mut self) -> &mut Vec<ResourceLogs> {
        &mut self.resource_logs
    }
    fn of_entries(resource_logs: Vec<ResourceLogs>) -> Self {
        ExportLogsServiceRequest { resource_logs }
    }
    fn resource(entry: &ResourceLogs) -> &Option<Resource> {
        &entry.resource
    }
    fn resource_mut(entry: &mut ResourceLogs) -> &mut Option<Resource> {
        &mut entry.resource
    }
    fn scopes(entry: &ResourceLogs) -> &Vec<ScopeLogs> {
        &entry.scope_logs
    }
    fn scopes_mut(entry: &mut ResourceLogs) -> &mut Vec<ScopeLogs> {
        &mut entry.scope_logs
    }
    fn items(scope: &ScopeLogs) -> &Vec<LogRecord> {
        &scope.log_records
    }
    fn items_mut(scope: &mut ScopeLogs) -> &mut Vec<LogRecord> {
        &mut scope.log_records
    }
}

impl Request for ExportMetricsServiceRequest {
    type Entry = ResourceMetrics;
    type Scope = ScopeMetrics;
    type Item = Metric;

    fn entries(&self) -> &Vec<ResourceMetrics> {
        &self.resource_metrics
    }
    fn entries_mut(&mut self) -> &mut Vec<ResourceMetrics> {
        &mut self.resource_metrics
    }
    fn of_entries(resource_metrics: Vec<ResourceMetrics>) -> Self {
        ExportMetricsServiceRequest { resource_metrics }
    }
    fn resource(entry: &ResourceMetrics) -> &Option<Resource> {
        &entry.resource
    }
    fn resource_mut(entry: &mut ResourceMetrics) -> &mut Option<Resource> {
        &mut entry.resource
    }
    fn scopes(entry: &ResourceMetrics) -> &Vec<ScopeMetrics> {
        &entry.scope_metrics
    }
    fn scopes_mut(entry: &mut ResourceMetrics) -> &mut Vec<ScopeMetrics> {
        &mut entry.scope_metrics
    }
    fn items(scope: &ScopeMetrics) -> &Vec<Metric> {
        &scope.metrics
    }
    fn items_mut(scope: &mut ScopeMetrics) -> &mut Vec<Metric> {
        &mut scope.metrics
    }

    fn weight(metric: &Metric) -> usize {
        points(metric)
    }

    fn halve_item(metric: &mut Metric) -> Option<Metric> {
        halve_points(metric)
    }
}

/// The data points of a metric, whatever its type.
pub fn points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Moves the second half of a metric's data points into a copy of it;
/// `None` when it has one point or none.
fn halve_points(m: &mut Metric) -> Option<Metric> {
    macro_rules! half {
        ($inner:expr) => {{
            let inner = $inner;
            if inner.data_points.len() <= 1 {
                return None;
            }
            let second = second_half(&mut inner.data_points);
            let mut copy = clone_without(inner, |i| &mut i.data_points);
            copy.data_points = second;
            copy
        }};
    }
    let data = match m.data.as_mut()? {
        Data::Gauge(inner) => Data::Gauge(half!(inner)),
        Data::Sum(inner) => Data::Sum(half!(inner)),
        Data::Histogram(inner) => Data::Histogram(half!(inner)),
        Data::ExponentialHistogram(inner) => Data::ExponentialHistogram(half!(inner)),
        Data::Summary(inner) => Data::Summary(half!(inner)),
    };
    let mut copy = clone_without(m, |m| &mut m.data);
    copy.data = Some(data);
    Some(copy)
}

/// Moves the second half of `v` out (the shorter half when odd).
pub fn second_half<T>(v: &mut Vec<T>) -> Vec<T> {
    v.split_off(v.len().div_ceil(2))
}

/// A clone of a message without one of its (large) fields, which the clone
/// leaves empty: the copies the halves need of a resource, a scope or a
/// metric, without copying what is being split.
pub fn clone_without<T: Clone, F: Default>(message: &mut T, field: impl Fn(&mut T) -> &mut F) -> T {
    let taken = std::mem::take(field(message));
    let copy = message.clone();
    *field(message) = taken;
    copy
}

/// Splits `a` in two: by resource entries when there are several, else by
/// the scopes of the one entry, else by the items of the one scope, else
/// inside the one item ([`Request::halve_item`]). Each half keeps its
/// resource and scope. `None` when nothing can be split.
pub fn halve<R: Request>(mut a: R) -> Option<(R, R)> {
    if a.entries().len() > 1 {
        let b = R::of_entries(second_half(a.entries_mut()));
        return Some((a, b));
    }
    let entry = a.entries_mut().first_mut()?;
    let mut entry_b = clone_without(entry, R::scopes_mut);
    if R::scopes(entry).len() > 1 {
        *R::scopes_mut(&mut entry_b) = second_half(R::scopes_mut(entry));
    } else {
        let scope = R::scopes_mut(entry).first_mut()?;
        let mut scope_b = clone_without(scope, R::items_mut);
        let items = R::items_mut(scope);
        if items.len() > 1 {
            *R::items_mut(&mut scope_b) = second_half(items);
        } else {
            let item_b = R::halve_item(items.first_mut()?)?;
            *R::items_mut(&mut scope_b) = vec![item_b];
        }
        *R::scopes_mut(&mut entry_b) = vec![scope_b];
    }
    Some((a, R::of_entries(vec![entry_b])))
}
