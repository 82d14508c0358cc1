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

use std::collections::BTreeMap;

use crate::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::otlp::proto::common::v1::{InstrumentationScope, KeyValue};
use crate::otlp::proto::metrics::v1::{
    metric, number_data_point, summary_data_point, AggregationTemporality, DataPointFlags, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint,
};
use crate::otlp::proto::resource::v1::Resource;
use crate::otlp::{encode, kv, Encoded};

use super::parse::{Family, Label, MetricType, Sample};

/// Most data points in one request; about 100 KiB of protobuf for typical
/// label sets, small enough for any gateway's default request limit.
pub const MAX_POINTS_PER_BATCH: usize = 2000;

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

/// Builds the OTLP requests of one scrape, encoding each as soon as it is full
/// so that only compressed batches accumulate.
#[derive(Debug)]
pub struct Builder {
    resource: Resource,
    scope: InstrumentationScope,
    metrics: Vec<Metric>,
    points: usize,
    /// Scrape time, the timestamp of samples that carry none.
    now_nanos: u64,
    /// Full batches, encoded, with their point counts.
    done: Vec<(Encoded, usize)>,
}

impl Builder {
    /// A builder for one scrape of a target whose resource is `resource`.
    pub fn new(resource: Resource, now_nanos: u64) -> Builder {
        Builder {
            resource,
            scope: InstrumentationScope {
                name: "tern/prometheus".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            },
            metrics: Vec::new(),
            points: 0,
            now_nanos,
            done: Vec::new(),
        }
    }

    /// Forgets everything built so far (a scrape that failed half way).
    pub fn discard(&mut self) {
        self.metrics.clear();
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
        let point = NumberDataPoint {
            time_unix_nano: self.now_nanos,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        };
        self.push_metric(
            name,
            help,
            "",
            metric::Data::Gauge(Gauge {
                data_points: vec![point],
            }),
            1,
        );
    }

    /// Encodes what is left and returns every batch with its point count.
    pub fn finish(mut self) -> Vec<(Encoded, usize)> {
        self.flush();
        self.done
    }

    fn numbers(&mut self, family: &Family<'_>, stale: bool, shape: Shape) {
        // `_created` samples give the start time of the series with the same labels.
        let created: Vec<(&[Label<'_>], f64)> = family
            .samples
            .iter()
            .filter(|s| s.name.ends_with("_created") && shape == Shape::Counter)
            .map(|s| (s.labels.as_slice(), s.value))
            .collect();
        let mut current: Option<(&str, Vec<NumberDataPoint>)> = None;
        for sample in &family.samples {
            if shape == Shape::Counter && sample.name.ends_with("_created") {
                continue;
            }
            let start = created
                .iter()
                .find(|(labels, _)| same_labels(labels, &sample.labels, None))
                .map_or(0, |(_, secs)| seconds_to_nanos(*secs));
            let point = NumberDataPoint {
                attributes: attributes(&sample.labels, None),
                start_time_unix_nano: start,
                time_unix_nano: self.time_of(sample),
                flags: flags(stale),
                value: Some(number_data_point::Value::AsDouble(if stale {
                    f64::NAN
                } else {
                    sample.value
                })),
                ..Default::default()
            };
            match &mut current {
                Some((name, points)) if *name == sample.name => points.push(point),
                _ => {
                    if let Some((name, points)) = current.take() {
                        self.push_numbers(family, name, shape, points);
                    }
                    current = Some((sample.name, vec![point]));
                }
            }
            if current.as_ref().map_or(0, |c| c.1.len()) >= MAX_POINTS_PER_BATCH {
                if let Some((name, points)) = current.take() {
                    self.push_numbers(family, name, shape, points);
                }
            }
        }
        if let Some((name, points)) = current {
            self.push_numbers(family, name, shape, points);
        }
    }

    fn push_numbers(
        &mut self,
        family: &Family<'_>,
        name: &str,
        shape: Shape,
        data_points: Vec<NumberDataPoint>,
    ) {
        let n = data_points.len();
        let data = match shape {
            Shape::Gauge => metric::Data::Gauge(Gauge { data_points }),
            Shape::Counter | Shape::UpDown => metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: shape == Shape::Counter,
            }),
        };
        let help = family.help.as_deref().unwrap_or("");
        self.push_metric(name, help, family.unit.unwrap_or(""), data, n);
    }

    fn histogram(&mut self, family: &Family<'_>, stale: bool) {
        let mut series: Vec<HistogramSeries<'_, '_>> = Vec::new();
        for sample in &family.samples {
            let suffix = sample.name.strip_prefix(family.name).unwrap_or("");
            let index = match series
                .iter()
                .position(|s| same_labels(s.labels, &sample.labels, Some("le")))
            {
                Some(i) => i,
                None => {
                    series.push(HistogramSeries::new(&sample.labels, sample));
                    series.len() - 1
                }
            };
            let Some(s) = series.get_mut(index) else {
                continue;
            };
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
        let mut points = Vec::with_capacity(series.len());
        for mut s in series {
            s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut bounds = Vec::with_capacity(s.buckets.len());
            let mut counts = Vec::with_capacity(s.buckets.len() + 1);
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
            points.push(HistogramDataPoint {
                attributes: attributes(s.labels, Some("le")),
                start_time_unix_nano: s.created.map_or(0, seconds_to_nanos),
                time_unix_nano: self.time_of(s.first),
                count: to_count(total),
                sum: if stale { None } else { s.sum },
                bucket_counts: if stale { Vec::new() } else { counts },
                explicit_bounds: if stale { Vec::new() } else { bounds },
                flags: flags(stale),
                ..Default::default()
            });
        }
        for chunk in chunks(points) {
            let n = chunk.len();
            let data = metric::Data::Histogram(Histogram {
                data_points: chunk,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            });
            let help = family.help.as_deref().unwrap_or("");
            self.push_metric(family.name, help, family.unit.unwrap_or(""), data, n);
        }
    }

    fn summary(&mut self, family: &Family<'_>, stale: bool) {
        let mut series: Vec<(&[Label<'_>], &Sample<'_>, SummaryDataPoint)> = Vec::new();
        for sample in &family.samples {
            let suffix = sample.name.strip_prefix(family.name).unwrap_or("");
            let index = match series
                .iter()
                .position(|s| same_labels(s.0, &sample.labels, Some("quantile")))
            {
                Some(i) => i,
                None => {
                    let point = SummaryDataPoint {
                        attributes: attributes(&sample.labels, Some("quantile")),
                        time_unix_nano: self.time_of(sample),
                        flags: flags(stale),
                        ..Default::default()
                    };
                    series.push((&sample.labels, sample, point));
                    series.len() - 1
                }
            };
            let Some((_, _, point)) = series.get_mut(index) else {
                continue;
            };
            match suffix {
                "_sum" => point.sum = sample.value,
                "_count" => point.count = to_count(sample.value),
                "_created" => point.start_time_unix_nano = seconds_to_nanos(sample.value),
                _ => {
                    let q = sample
                        .labels
                        .iter()
                        .find(|l| l.name == "quantile")
                        .and_then(|l| parse_le(&l.value));
                    if let (Some(quantile), false) = (q, stale) {
                        point
                            .quantile_values
                            .push(summary_data_point::ValueAtQuantile {
                                quantile,
                                value: sample.value,
                            });
                    }
                }
            }
        }
        let points: Vec<SummaryDataPoint> = series.into_iter().map(|s| s.2).collect();
        for chunk in chunks(points) {
            let n = chunk.len();
            let help = family.help.as_deref().unwrap_or("");
            self.push_metric(
                family.name,
                help,
                family.unit.unwrap_or(""),
                metric::Data::Summary(Summary { data_points: chunk }),
                n,
            );
        }
    }

    fn push_metric(
        &mut self,
        name: &str,
        help: &str,
        unit: &str,
        data: metric::Data,
        points: usize,
    ) {
        if self.points + points > MAX_POINTS_PER_BATCH {
            self.flush();
        }
        self.metrics.push(Metric {
            name: name.to_string(),
            description: help.to_string(),
            unit: unit.to_string(),
            data: Some(data),
            ..Default::default()
        });
        self.points += points;
    }

    fn flush(&mut self) {
        if self.metrics.is_empty() {
            return;
        }
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(self.scope.clone()),
                    metrics: std::mem::take(&mut self.metrics),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        self.done.push((encode(&request), self.points));
        self.points = 0;
    }

    fn time_of(&self, sample: &Sample<'_>) -> u64 {
        match sample.timestamp_ms {
            Some(ms) if ms >= 0 => u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000),
            _ => self.now_nanos,
        }
    }
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

/// Splits points into chunks of at most [`MAX_POINTS_PER_BATCH`].
fn chunks<T>(mut points: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    while points.len() > MAX_POINTS_PER_BATCH {
        let rest = points.split_off(MAX_POINTS_PER_BATCH);
        out.push(points);
        points = rest;
    }
    if !points.is_empty() {
        out.push(points);
    }
    out
}

/// The point's attributes: every label but `job`, `instance` and `skip`.
fn attributes(labels: &[Label<'_>], skip: Option<&str>) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|l| l.name != "job" && l.name != "instance" && Some(l.name) != skip)
        .map(|l| kv(l.name, l.value.as_ref()))
        .collect()
}

/// Whether two label sets are equal, ignoring `skip` (`le` or `quantile`).
fn same_labels(a: &[Label<'_>], b: &[Label<'_>], skip: Option<&str>) -> bool {
    let mut a = a.iter().filter(|l| Some(l.name) != skip);
    let mut b = b.iter().filter(|l| Some(l.name) != skip);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.name == y.name && x.value == y.value => {}
            _ => return false,
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
    use crate::sources::prometheus::parse::{Format, Limits, Parser};
    use prost::Message;
    use std::io::Read;

    fn decode(e: &Encoded) -> ExportMetricsServiceRequest {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(e.gzip.as_slice())
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
        for i in 0..5000 {
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
        assert_eq!(sizes, vec![2000, 2000, 1000]);
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
