//! Conversion of parsed exposition families to OTLP metrics, following the
//! OpenTelemetry specification "Prometheus and OpenMetrics Compatibility".
//!
//! - One resource per target: `service.name` from the job, `service.instance.id`
//!   from the instance, `server.address`, `server.port` and `url.scheme` from
//!   the target URL, `target_info` labels as resource attributes (and no
//!   `target_info` metric), plus the configured `[resource]` and job labels.
//! - Counters become monotonic cumulative Sums (start time from `_created` when
//!   present, else unset); gauges and unknown-typed metrics become Gauges; info
//!   and stateset become non-monotonic cumulative Sums; histograms and gauge
//!   histograms become Histograms (cumulative `le` buckets to explicit bounds
//!   and per-bucket counts); summaries become Summaries. UNIT becomes the unit,
//!   HELP the description. Metric names are kept as scraped.
//!
//! Output is cut into requests of at most [`MAX_POINTS_PER_BATCH`] points, so a
//! 100k-series scrape never sits in memory as one OTLP message.
//!
//! See: <https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/>

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use prost::Message;

use crate::otlp::proto::common::v1::InstrumentationScope;
use crate::otlp::proto::metrics::v1::{AggregationTemporality, DataPointFlags};
use crate::otlp::proto::resource::v1::Resource;
use crate::otlp::wire::{Mark, Writer};
use crate::otlp::{compress, kv, Encoded};

use super::parse::{same_bytes, Family, Label, MetricType, Sample};

/// Most data points in one request; about 400 KiB to 1 MiB of protobuf for
/// typical label sets (60 to 120 KiB gzip), under any gateway's default
/// request limit (the Collector's is 20 MiB). Fewer, larger batches cost
/// fewer fsyncs and requests: 2000 measured 10% more CPU at 100k series.
pub const MAX_POINTS_PER_BATCH: usize = 8000;

/// The target a scrape came from, for the resource.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// The job name.
    pub job: String,
    /// The instance, `host:port`.
    pub instance: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Attributes added to the resource (config `[resource]` and job `labels`).
    pub extra: Vec<(String, String)>,
}

impl TargetInfo {
    /// The resource of this target, with `target_info` labels added.
    pub fn resource(&self, target_info: &[(String, String)]) -> Resource {
        let mut attrs: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in &self.extra {
            attrs.insert(k, v);
        }
        for (k, v) in target_info {
            attrs.insert(k, v);
        }
        attrs.insert("service.name", &self.job);
        attrs.insert("service.instance.id", &self.instance);
        let (host, port) = self
            .instance
            .rsplit_once(':')
            .unwrap_or((&self.instance, ""));
        attrs.insert(
            "server.address",
            host.trim_start_matches('[').trim_end_matches(']'),
        );
        if !port.is_empty() {
            attrs.insert("server.port", port);
        }
        attrs.insert("url.scheme", &self.scheme);
        Resource {
            attributes: attrs.into_iter().map(|(k, v)| kv(k, v)).collect(),
            ..Default::default()
        }
    }
}

/// Builds the OTLP requests of one scrape, writing protobuf directly (see
/// [`crate::otlp::wire`]) and encoding each batch as soon as it is full, so
/// that only compressed batches accumulate.
#[derive(Debug)]
pub struct Builder {
    /// The encoded `Resource` message, the same for every batch of the scrape.
    resource: Vec<u8>,
    /// The encoded `InstrumentationScope` message.
    scope: Vec<u8>,
    /// The batch being written: an `ExportMetricsServiceRequest` whose
    /// ResourceMetrics and ScopeMetrics are still open (see `open`).
    out: Writer,
    /// The open ResourceMetrics and ScopeMetrics of `out`, if a batch is started.
    open: Option<(Mark, Mark)>,
    /// Points in the batch being written.
    points: usize,
    /// Scrape time, the timestamp of samples that carry none.
    now_nanos: u64,
    /// Full batches, encoded, with their point counts.
    done: Vec<(Encoded, usize)>,
    /// A resource set after batches began with the one before (see
    /// [`Builder::set_resource`]), for [`Builder::finish`] to put on them.
    late_resource: Option<Resource>,
}

/// OTLP field numbers used below, from opentelemetry/proto/metrics/v1/metrics.proto.
mod field {
    pub(super) const SCOPE_METRICS_METRICS: u32 = 2;
    pub(super) const METRIC_NAME: u32 = 1;
    pub(super) const METRIC_DESCRIPTION: u32 = 2;
    pub(super) const METRIC_UNIT: u32 = 3;
    pub(super) const METRIC_GAUGE: u32 = 5;
    pub(super) const METRIC_SUM: u32 = 7;
    pub(super) const METRIC_HISTOGRAM: u32 = 9;
    pub(super) const METRIC_SUMMARY: u32 = 11;
    /// `data_points` in Gauge, Sum, Histogram and Summary.
    pub(super) const DATA_POINTS: u32 = 1;
    pub(super) const AGGREGATION_TEMPORALITY: u32 = 2;
    pub(super) const SUM_IS_MONOTONIC: u32 = 3;
    pub(super) const NUMBER_ATTRIBUTES: u32 = 7;
    pub(super) const NUMBER_AS_DOUBLE: u32 = 4;
    pub(super) const NUMBER_FLAGS: u32 = 8;
    /// `start_time_unix_nano` and `time_unix_nano` in every data point.
    pub(super) const START_TIME: u32 = 2;
    pub(super) const TIME: u32 = 3;
    pub(super) const HISTOGRAM_ATTRIBUTES: u32 = 9;
    pub(super) const HISTOGRAM_COUNT: u32 = 4;
    pub(super) const HISTOGRAM_SUM: u32 = 5;
    pub(super) const HISTOGRAM_BUCKET_COUNTS: u32 = 6;
    pub(super) const HISTOGRAM_EXPLICIT_BOUNDS: u32 = 7;
    pub(super) const HISTOGRAM_FLAGS: u32 = 10;
    pub(super) const SUMMARY_ATTRIBUTES: u32 = 7;
    pub(super) const SUMMARY_COUNT: u32 = 4;
    pub(super) const SUMMARY_SUM: u32 = 5;
    pub(super) const SUMMARY_QUANTILES: u32 = 6;
    pub(super) const SUMMARY_FLAGS: u32 = 8;
    pub(super) const QUANTILE: u32 = 1;
    pub(super) const QUANTILE_VALUE: u32 = 2;
}

/// The header of a metric, repeated when a metric is split over batches.
struct MetricHead<'a> {
    name: &'a str,
    help: &'a str,
    unit: &'a str,
    /// The Metric oneof field: gauge, sum, histogram or summary.
    data_field: u32,
    /// For sums: monotonic or not. None for other kinds.
    monotonic: Option<bool>,
    cumulative: bool,
}

impl Builder {
    /// A builder for one scrape of a target whose resource is `resource`.
    pub fn new(resource: Resource, now_nanos: u64) -> Builder {
        Builder::with_buffer(resource, now_nanos, Vec::with_capacity(64 << 10))
    }

    /// As [`Builder::new`], writing batches in `buffer` (cleared first): the
    /// one [`Builder::finish_with_buffer`] gave back last time, so that a
    /// target's megabyte-sized batch buffer is allocated once, not per scrape.
    pub fn with_buffer(resource: Resource, now_nanos: u64, buffer: Vec<u8>) -> Builder {
        let scope = InstrumentationScope {
            name: "tern/prometheus".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        Builder {
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
            out: Writer::from_vec(buffer),
            open: None,
            points: 0,
            now_nanos,
            done: Vec::new(),
            late_resource: None,
        }
    }

    /// Sets the resource of the scrape's batches, those begun already
    /// included: a `target_info` family is read where it stands in the body,
    /// usually after other families were converted. The batches begun before
    /// get it when the builder finishes (decoded and encoded again, which
    /// costs a millisecond or so for a batch; only scrapes of apps exposing
    /// `target_info` take that path).
    pub fn set_resource(&mut self, resource: Resource) {
        let encoded = resource.encode_to_vec();
        if encoded == self.resource {
            return;
        }
        self.resource = encoded;
        let begun = !self.done.is_empty() || self.open.is_some();
        if begun {
            self.late_resource = Some(resource);
        }
    }

    /// Forgets everything built so far (a scrape that failed half way).
    pub fn discard(&mut self) {
        self.out.clear();
        self.open = None;
        self.points = 0;
        self.done.clear();
    }

    /// Converts one family. `stale` marks every point with NoRecordedValue (a
    /// series that disappeared).
    pub fn family(&mut self, family: &Family<'_>, stale: bool) {
        if family.name == "target_info" && family.kind != MetricType::Counter {
            return;
        }
        match family.kind {
            MetricType::Histogram | MetricType::GaugeHistogram => self.histogram(family, stale),
            MetricType::Summary => self.summary(family, stale),
            MetricType::Counter => self.numbers(family, stale, Shape::Counter),
            MetricType::Info | MetricType::StateSet => self.numbers(family, stale, Shape::UpDown),
            MetricType::Gauge | MetricType::Unknown => self.numbers(family, stale, Shape::Gauge),
        }
    }

    /// Adds a gauge with one point and no attributes (`up` and the other
    /// synthetic series).
    pub fn synthetic_gauge(&mut self, name: &str, help: &str, value: f64) {
        let head = MetricHead {
            name,
            help,
            unit: "",
            data_field: field::METRIC_GAUGE,
            monotonic: None,
            cumulative: false,
        };
        let mut metric = self.begin_metric(&head, 1);
        let p = self.out.begin(field::DATA_POINTS);
        self.out.fixed64(field::TIME, self.now_nanos);
        self.out.double_always(field::NUMBER_AS_DOUBLE, value);
        self.out.end(p);
        metric = self.point_done(&head, metric);
        self.end_metric(&head, metric);
    }

    /// Encodes what is left and returns every batch with its point count.
    pub fn finish(self) -> Vec<(Encoded, usize)> {
        self.finish_with_buffer().0
    }

    /// As [`Builder::finish`], also giving back the batch buffer.
    pub fn finish_with_buffer(mut self) -> (Vec<(Encoded, usize)>, Vec<u8>) {
        self.flush();
        if let Some(resource) = self.late_resource.take() {
            for (batch, _) in &mut self.done {
                if let Some(rewritten) = with_resource(batch, &resource) {
                    *batch = rewritten;
                }
            }
        }
        (self.done, self.out.take())
    }

    fn numbers(&mut self, family: &Family<'_>, stale: bool, shape: Shape) {
        // `_created` samples give the start time of the series with the same labels.
        let created: HashMap<u64, f64> = if shape == Shape::Counter {
            family
                .samples
                .iter()
                .filter(|s| s.name.ends_with("_created"))
                .map(|s| (labels_hash(&s.labels), s.value))
                .collect()
        } else {
            HashMap::new()
        };
        let help = family.help.as_deref().unwrap_or("");
        let unit = family.unit.unwrap_or("");
        let (data_field, monotonic) = match shape {
            Shape::Gauge => (field::METRIC_GAUGE, None),
            Shape::Counter => (field::METRIC_SUM, Some(true)),
            Shape::UpDown => (field::METRIC_SUM, Some(false)),
        };
        let mut open: Option<(MetricHead<'_>, (Mark, Mark))> = None;
        for sample in &family.samples {
            if shape == Shape::Counter && sample.name.ends_with("_created") {
                continue;
            }
            // A metric per sample name: histogram-like suffixes of untyped
            // families and counters keep their own names.
            let same = open
                .as_ref()
                .is_some_and(|(h, _)| same_bytes(h.name.as_bytes(), sample.name.as_bytes()));
            if !same {
                if let Some((head, marks)) = open.take() {
                    self.end_metric(&head, marks);
                }
                let head = MetricHead {
                    name: sample.name,
                    help,
                    unit,
                    data_field,
                    monotonic,
                    cumulative: true,
                };
                let marks = self.begin_metric(&head, 1);
                open = Some((head, marks));
            }
            let start = if created.is_empty() {
                0
            } else {
                created
                    .get(&labels_hash(&sample.labels))
                    .map_or(0, |s| seconds_to_nanos(*s))
            };
            let time = self.time_of(sample);
            let p = self.out.begin(field::DATA_POINTS);
            write_attributes(
                &mut self.out,
                field::NUMBER_ATTRIBUTES,
                &sample.labels,
                None,
            );
            self.out.fixed64(field::START_TIME, start);
            self.out.fixed64(field::TIME, time);
            self.out.double_always(
                field::NUMBER_AS_DOUBLE,
                if stale { f64::NAN } else { sample.value },
            );
            self.out.uint(field::NUMBER_FLAGS, u64::from(flags(stale)));
            self.out.end(p);
            if let Some((head, marks)) = open.take() {
                let marks = self.point_done(&head, marks);
                open = Some((head, marks));
            }
        }
        if let Some((head, marks)) = open {
            self.end_metric(&head, marks);
        }
    }

    fn histogram(&mut self, family: &Family<'_>, stale: bool) {
        let mut series: Vec<HistogramSeries<'_, '_>> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for sample in &family.samples {
            let suffix = sample.name.strip_prefix(family.name).unwrap_or("");
            let key = labels_hash_without(&sample.labels, "le");
            let i = *index.entry(key).or_insert_with(|| {
                series.push(HistogramSeries::new(&sample.labels, sample));
                series.len() - 1
            });
            let Some(s) = series.get_mut(i) else { continue };
            match suffix {
                "_bucket" | "_gbucket" => {
                    let le = sample
                        .labels
                        .iter()
                        .find(|l| l.name == "le")
                        .and_then(|l| parse_le(&l.value));
                    if let Some(le) = le {
                        s.buckets.push((le, sample.value));
                    }
                }
                "_sum" | "_gsum" => s.sum = Some(sample.value),
                "_count" | "_gcount" => s.count = Some(sample.value),
                "_created" => s.created = Some(sample.value),
                _ => {}
            }
        }
        let head = MetricHead {
            name: family.name,
            help: family.help.as_deref().unwrap_or(""),
            unit: family.unit.unwrap_or(""),
            data_field: field::METRIC_HISTOGRAM,
            monotonic: None,
            cumulative: true,
        };
        let mut marks = self.begin_metric(&head, series.len());
        let mut bounds = Vec::new();
        let mut counts = Vec::new();
        for mut s in series {
            s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            bounds.clear();
            counts.clear();
            let mut previous = 0.0;
            let mut inf_count = None;
            for (le, cumulative) in &s.buckets {
                if le.is_infinite() && *le > 0.0 {
                    inf_count = Some(*cumulative);
                    continue;
                }
                bounds.push(*le);
                counts.push(to_count(cumulative - previous));
                previous = *cumulative;
            }
            let total = s.count.or(inf_count).unwrap_or(previous);
            counts.push(to_count(total - previous));
            let time = self.time_of(s.first);
            let p = self.out.begin(field::DATA_POINTS);
            write_attributes(
                &mut self.out,
                field::HISTOGRAM_ATTRIBUTES,
                s.labels,
                Some("le"),
            );
            self.out
                .fixed64(field::START_TIME, s.created.map_or(0, seconds_to_nanos));
            self.out.fixed64(field::TIME, time);
            self.out.fixed64(field::HISTOGRAM_COUNT, to_count(total));
            if !stale {
                if let Some(sum) = s.sum {
                    self.out.double_always(field::HISTOGRAM_SUM, sum);
                }
                self.out
                    .packed_fixed64(field::HISTOGRAM_BUCKET_COUNTS, &counts);
                self.out
                    .packed_double(field::HISTOGRAM_EXPLICIT_BOUNDS, &bounds);
            }
            self.out
                .uint(field::HISTOGRAM_FLAGS, u64::from(flags(stale)));
            self.out.end(p);
            marks = self.point_done(&head, marks);
        }
        self.end_metric(&head, marks);
    }

    fn summary(&mut self, family: &Family<'_>, stale: bool) {
        struct Point<'f, 's> {
            labels: &'f [Label<'s>],
            first: &'f Sample<'s>,
            count: u64,
            sum: f64,
            start: u64,
            quantiles: Vec<(f64, f64)>,
        }
        let mut series: Vec<Point<'_, '_>> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for sample in &family.samples {
            let suffix = sample.name.strip_prefix(family.name).unwrap_or("");
            let key = labels_hash_without(&sample.labels, "quantile");
            let i = *index.entry(key).or_insert_with(|| {
                series.push(Point {
                    labels: &sample.labels,
                    first: sample,
                    count: 0,
                    sum: 0.0,
                    start: 0,
                    quantiles: Vec::new(),
                });
                series.len() - 1
            });
            let Some(point) = series.get_mut(i) else {
                continue;
            };
            match suffix {
                "_sum" => point.sum = sample.value,
                "_count" => point.count = to_count(sample.value),
                "_created" => point.start = seconds_to_nanos(sample.value),
                _ => {
                    let q = sample
                        .labels
                        .iter()
                        .find(|l| l.name == "quantile")
                        .and_then(|l| parse_le(&l.value));
                    if let Some(q) = q {
                        point.quantiles.push((q, sample.value));
                    }
                }
            }
        }
        let head = MetricHead {
            name: family.name,
            help: family.help.as_deref().unwrap_or(""),
            unit: family.unit.unwrap_or(""),
            data_field: field::METRIC_SUMMARY,
            monotonic: None,
            cumulative: false,
        };
        let mut marks = self.begin_metric(&head, series.len());
        for point in series {
            let time = self.time_of(point.first);
            let p = self.out.begin(field::DATA_POINTS);
            write_attributes(
                &mut self.out,
                field::SUMMARY_ATTRIBUTES,
                point.labels,
                Some("quantile"),
            );
            self.out.fixed64(field::START_TIME, point.start);
            self.out.fixed64(field::TIME, time);
            self.out.fixed64(field::SUMMARY_COUNT, point.count);
            if !stale {
                self.out.double(field::SUMMARY_SUM, point.sum);
                for (quantile, value) in &point.quantiles {
                    let q = self.out.begin(field::SUMMARY_QUANTILES);
                    self.out.double(field::QUANTILE, *quantile);
                    self.out.double(field::QUANTILE_VALUE, *value);
                    self.out.end(q);
                }
            }
            self.out.uint(field::SUMMARY_FLAGS, u64::from(flags(stale)));
            self.out.end(p);
            marks = self.point_done(&head, marks);
        }
        self.end_metric(&head, marks);
    }

    /// Opens a Metric with `head`, starting a new batch first when `points`
    /// more would not fit. Returns the marks of the Metric and its data field.
    fn begin_metric(&mut self, head: &MetricHead<'_>, points: usize) -> (Mark, Mark) {
        if self.points > 0 && self.points + points.min(MAX_POINTS_PER_BATCH) > MAX_POINTS_PER_BATCH
        {
            self.flush();
        }
        self.start_batch();
        let metric = self.out.begin(field::SCOPE_METRICS_METRICS);
        self.out.string(field::METRIC_NAME, head.name);
        self.out.string(field::METRIC_DESCRIPTION, head.help);
        self.out.string(field::METRIC_UNIT, head.unit);
        let data = self.out.begin(head.data_field);
        (metric, data)
    }

    /// Counts a point written; when the batch is full, closes the metric,
    /// flushes, and reopens the same metric in a new batch.
    fn point_done(&mut self, head: &MetricHead<'_>, marks: (Mark, Mark)) -> (Mark, Mark) {
        self.points += 1;
        if self.points < MAX_POINTS_PER_BATCH {
            return marks;
        }
        self.end_metric(head, marks);
        self.flush();
        self.begin_metric(head, 1)
    }

    /// Closes a Metric opened with [`Builder::begin_metric`].
    fn end_metric(&mut self, head: &MetricHead<'_>, (metric, data): (Mark, Mark)) {
        if head.cumulative && head.data_field != field::METRIC_GAUGE {
            self.out.uint(
                field::AGGREGATION_TEMPORALITY,
                AggregationTemporality::Cumulative as u64,
            );
        }
        if let Some(monotonic) = head.monotonic {
            self.out.uint(field::SUM_IS_MONOTONIC, u64::from(monotonic));
        }
        self.out.end(data);
        self.out.end(metric);
    }

    /// Starts the request, resource and scope of a batch unless one is open.
    fn start_batch(&mut self) {
        if self.open.is_some() {
            return;
        }
        // ExportMetricsServiceRequest.resource_metrics = 1, ResourceMetrics.resource = 1,
        // ResourceMetrics.scope_metrics = 2, ScopeMetrics.scope = 1.
        let resource_metrics = self.out.begin(1);
        let resource = self.out.begin(1);
        self.out.raw(&self.resource);
        self.out.end(resource);
        let scope_metrics = self.out.begin(2);
        let scope = self.out.begin(1);
        self.out.raw(&self.scope);
        self.out.end(scope);
        self.open = Some((resource_metrics, scope_metrics));
    }

    fn flush(&mut self) {
        let Some((resource_metrics, scope_metrics)) = self.open.take() else {
            return;
        };
        self.out.end(scope_metrics);
        self.out.end(resource_metrics);
        self.done.push((compress(self.out.as_bytes()), self.points));
        self.out.clear();
        self.points = 0;
    }

    fn time_of(&self, sample: &Sample<'_>) -> u64 {
        match sample.timestamp_ms {
            Some(ms) if ms >= 0 => u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000),
            _ => self.now_nanos,
        }
    }
}

/// `batch` with `resource` on each of its ResourceMetrics; None if it does
/// not decode (it was encoded here, so that would be a bug: it keeps its own).
fn with_resource(batch: &Encoded, resource: &Resource) -> Option<Encoded> {
    use crate::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    let raw = crate::otlp::decompress(&batch.payload, crate::otlp::MAX_STORED_RAW).ok()?;
    let mut request = ExportMetricsServiceRequest::decode(raw.as_slice()).ok()?;
    for rm in &mut request.resource_metrics {
        rm.resource = Some(resource.clone());
    }
    Some(crate::otlp::encode(&request))
}

/// A sample's labels as attributes. A scraped `job` or `instance` is one
/// the job's `honor_labels` kept (without it, it arrives renamed
/// `exported_job`, see relabel.rs); it stays on the point, next to the
/// resource's `service.name` and `service.instance.id`.
fn write_attributes(out: &mut Writer, field: u32, labels: &[Label<'_>], skip: Option<&str>) {
    for l in labels {
        if Some(l.name) != skip {
            out.string_attribute(field, l.name, &l.value);
        }
    }
}

/// A hash of a label set, to match `_created` samples to their series.
fn labels_hash(labels: &[Label<'_>]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for l in labels {
        l.name.hash(&mut h);
        l.value.as_ref().hash(&mut h);
    }
    h.finish()
}

/// A hash of a label set without `skip` (`le` or `quantile`), to group the
/// samples of one histogram or summary series.
fn labels_hash_without(labels: &[Label<'_>], skip: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for l in labels.iter().filter(|l| l.name != skip) {
        l.name.hash(&mut h);
        l.value.as_ref().hash(&mut h);
    }
    h.finish()
}

/// How a family of plain numbers maps to OTLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Gauge,
    Counter,
    UpDown,
}

struct HistogramSeries<'f, 's> {
    labels: &'f [Label<'s>],
    first: &'f Sample<'s>,
    buckets: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
    created: Option<f64>,
}

impl<'f, 's> HistogramSeries<'f, 's> {
    fn new(labels: &'f [Label<'s>], first: &'f Sample<'s>) -> Self {
        HistogramSeries {
            labels,
            first,
            buckets: Vec::new(),
            sum: None,
            count: None,
            created: None,
        }
    }
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        _ => s.parse().ok(),
    }
}

fn flags(stale: bool) -> u32 {
    if stale {
        DataPointFlags::NoRecordedValueMask as u32
    } else {
        0
    }
}

/// A count from a float sample; negative, NaN or huge values saturate.
fn to_count(v: f64) -> u64 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        // In range and non-negative: the cast only drops the fraction.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = v as u64;
        n
    }
}

fn seconds_to_nanos(secs: f64) -> u64 {
    to_count(secs * 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use crate::otlp::proto::metrics::v1::{metric, Metric};
    use crate::sources::prometheus::parse::{Format, Limits, Parser};
    use std::io::Read;

    fn decode(e: &Encoded) -> ExportMetricsServiceRequest {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(e.payload.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        ExportMetricsServiceRequest::decode(raw.as_slice()).unwrap()
    }

    fn convert(body: &str, format: Format) -> Vec<Metric> {
        let target = TargetInfo {
            job: "node".into(),
            instance: "127.0.0.1:9100".into(),
            scheme: "http".into(),
            extra: vec![],
        };
        let mut b = Builder::new(target.resource(&[]), 42);
        for f in Parser::new(body.as_bytes(), format, &Limits::default()) {
            b.family(&f.unwrap(), false);
        }
        b.finish()
            .into_iter()
            .map(|(e, _)| decode(&e))
            .flat_map(|r| r.resource_metrics)
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .collect()
    }

    #[test]
    fn counter_with_created_is_a_monotonic_sum_with_start_time() {
        let m = convert(
            "# TYPE a counter\n# HELP a Some help.\na_total{x=\"1\"} 5\na_created{x=\"1\"} 1.5\n# EOF\n",
            Format::OpenMetrics,
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "a_total");
        assert_eq!(m[0].description, "Some help.");
        let Some(metric::Data::Sum(s)) = &m[0].data else {
            panic!("{m:?}")
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(s.data_points[0].start_time_unix_nano, 1_500_000_000);
        assert_eq!(s.data_points[0].time_unix_nano, 42);
        assert_eq!(s.data_points[0].attributes, vec![kv("x", "1")]);
    }

    #[test]
    fn histogram_buckets_become_bounds_and_counts() {
        let m = convert(
            "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_sum 2.5\nh_count 4\n",
            Format::PrometheusText,
        );
        let Some(metric::Data::Histogram(h)) = &m[0].data else {
            panic!("{m:?}")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);
        assert_eq!(p.count, 4);
        assert_eq!(p.sum, Some(2.5));
        assert!(p.attributes.is_empty());
    }

    #[test]
    fn summary_quantiles_and_unknown_as_gauge() {
        let m = convert(
            "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns{quantile=\"0.9\"} 2\ns_sum 10\ns_count 5\nu 3\n",
            Format::PrometheusText,
        );
        let Some(metric::Data::Summary(s)) = &m[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(s.data_points[0].quantile_values.len(), 2);
        assert_eq!(s.data_points[0].count, 5);
        assert_eq!(s.data_points[0].sum, 10.0);
        assert_eq!(m[1].name, "u");
        assert!(matches!(m[1].data, Some(metric::Data::Gauge(_))));
    }

    #[test]
    fn units_are_kept_and_batches_are_bounded() {
        let m = convert(
            "# TYPE d_seconds gauge\n# UNIT d_seconds seconds\nd_seconds 1\n# EOF\n",
            Format::OpenMetrics,
        );
        assert_eq!(m[0].unit, "seconds");

        let mut body = String::from("# TYPE g gauge\n");
        for i in 0..2 * MAX_POINTS_PER_BATCH + MAX_POINTS_PER_BATCH / 2 {
            body.push_str(&format!("g{{i=\"{i}\"}} {i}\n"));
        }
        let target = TargetInfo {
            job: "j".into(),
            instance: "h:1".into(),
            scheme: "http".into(),
            extra: vec![],
        };
        let mut b = Builder::new(target.resource(&[]), 1);
        for f in Parser::new(body.as_bytes(), Format::PrometheusText, &Limits::default()) {
            b.family(&f.unwrap(), false);
        }
        let sizes: Vec<usize> = b.finish().into_iter().map(|(_, n)| n).collect();
        let (full, half) = (MAX_POINTS_PER_BATCH, MAX_POINTS_PER_BATCH / 2);
        assert_eq!(sizes, vec![full, full, half]);
    }

    #[test]
    fn real_node_exporter_output_decodes_with_prost_point_for_point() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/prometheus-text/node_exporter/e2e-output.txt"
        );
        let body = std::fs::read_to_string(path).unwrap();
        let target = TargetInfo {
            job: "node".into(),
            instance: "h:9100".into(),
            scheme: "http".into(),
            extra: vec![],
        };
        let mut b = Builder::new(target.resource(&[]), 7);
        let mut expected = 0;
        for f in Parser::new(body.as_bytes(), Format::PrometheusText, &Limits::default()) {
            let f = f.unwrap();
            expected += match f.kind {
                MetricType::Histogram | MetricType::GaugeHistogram => f
                    .samples
                    .iter()
                    .filter(|s| s.name.ends_with("_count"))
                    .count(),
                MetricType::Summary => f
                    .samples
                    .iter()
                    .filter(|s| s.name.ends_with("_count"))
                    .count(),
                _ => f.samples.len(),
            };
            b.family(&f, false);
        }
        let batches = b.finish();
        let mut points = 0;
        for (e, n) in &batches {
            let request = decode(e);
            let mut in_batch = 0;
            for m in request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
            {
                assert!(!m.name.is_empty());
                in_batch += match &m.data {
                    Some(metric::Data::Gauge(g)) => g.data_points.len(),
                    Some(metric::Data::Sum(s)) => s.data_points.len(),
                    Some(metric::Data::Histogram(h)) => h.data_points.len(),
                    Some(metric::Data::Summary(s)) => s.data_points.len(),
                    other => panic!("{other:?}"),
                };
            }
            assert_eq!(in_batch, *n, "a batch's point count is what it holds");
            points += in_batch;
        }
        assert_eq!(points, expected);
        assert!(expected > 1000, "{expected}");
    }

    #[test]
    fn resource_has_job_instance_and_target_info() {
        let target = TargetInfo {
            job: "node".into(),
            instance: "127.0.0.1:9100".into(),
            scheme: "http".into(),
            extra: vec![("deployment.environment".into(), "prod".into())],
        };
        let r = target.resource(&[("region".into(), "eu".into())]);
        let get = |k: &str| r.attributes.iter().find(|a| a.key == k).cloned();
        assert_eq!(get("service.name"), Some(kv("service.name", "node")));
        assert_eq!(
            get("service.instance.id"),
            Some(kv("service.instance.id", "127.0.0.1:9100"))
        );
        assert_eq!(get("server.port"), Some(kv("server.port", "9100")));
        assert_eq!(get("region"), Some(kv("region", "eu")));
        assert_eq!(
            get("deployment.environment"),
            Some(kv("deployment.environment", "prod"))
        );
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;
    use crate::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use crate::otlp::proto::metrics::v1::ResourceMetrics;
    use crate::otlp::Codec;

    #[test]
    fn target_info_reaches_batches_stored_as_zstd() {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics::default(), ResourceMetrics::default()],
        };
        let raw = request.encode_to_vec();
        let batch = crate::otlp::compress_with(Codec::Zstd, &raw);
        let resource = Resource {
            attributes: vec![crate::otlp::kv("deployment", "lab")],
            ..Default::default()
        };
        let out = with_resource(&batch, &resource).expect("a zstd batch decodes");
        let back = crate::otlp::decompress(&out.payload, 1 << 20).unwrap();
        let back = ExportMetricsServiceRequest::decode(back.as_slice()).unwrap();
        assert_eq!(back.resource_metrics.len(), 2);
        assert!(back
            .resource_metrics
            .iter()
            .all(|rm| rm.resource.as_ref() == Some(&resource)));
    }
}
