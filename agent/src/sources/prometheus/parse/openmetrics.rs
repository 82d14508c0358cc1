//! OpenMetrics 1.0 text: the strict grammar, metadata, and the semantic rules
//! of families, metrics and metric points.
//!
//! A family starts at its first metadata line, or at a sample that does not
//! fit the family before it (then it is `unknown`, named after the sample). It
//! takes the samples whose names are its name plus a suffix its type allows.
//! Within a family, a *metric* is a label set (without `le`, `quantile` or the
//! stateset label), and a *metric point* is one value of each kind for it,
//! e.g. the buckets, `_count`, `_sum` and `_created` of a histogram. A new
//! point starts when the timestamp moves forward, or when a value repeats
//! under the same timestamp.
//!
//! Interleaving is found with hash sets: every family name, every sample name a
//! family's type lets it use (so that a gauge `a_total` clashes with a counter
//! `a`), and per family, every metric's label set. Label sets are hashed in
//! exposition order, so a metric that comes back with its labels in another
//! order is not noticed; that errs on the side of accepting.
//!
//! The name sets outlive the window of the body they were read in, so they
//! own their names. The family being read borrows its window; when a window
//! ends before the family does, [`OmState::rewind`] takes its names back out
//! of the sets and tells where it started, so that it is read again, whole,
//! from the next window.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use super::names::{HashKeyed, NameMap};
use super::number::{self, Grammar};
use super::scan::{is_metric_name_chars, unescape_help, Cursor};
use super::text::{recycle_samples, reuse, reuse_all, take_labels};
use super::{ErrorKind, Family, Label, Limits, MetricType, ParseError, Sample};

/// Most characters (code points) in the labels of one exemplar.
/// See: OpenMetrics 1.0, "Exemplars".
const EXEMPLAR_MAX_CHARS: usize = 128;

/// What a sample is within its family, from its name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// No suffix: gauge, unknown, stateset, summary quantile.
    Value,
    Total,
    Created,
    Bucket,
    Count,
    Sum,
    GCount,
    GSum,
    Info,
}

impl Role {
    fn from_suffix(s: &str) -> Option<Role> {
        Some(match s {
            "" => Role::Value,
            "_total" => Role::Total,
            "_created" => Role::Created,
            "_bucket" => Role::Bucket,
            "_count" => Role::Count,
            "_sum" => Role::Sum,
            "_gcount" => Role::GCount,
            "_gsum" => Role::GSum,
            "_info" => Role::Info,
            _ => return None,
        })
    }

    /// The bit recording that a point has this value (buckets and quantiles
    /// are tracked apart).
    fn bit(self) -> u16 {
        match self {
            Role::Value => 1,
            Role::Total => 2,
            Role::Created => 4,
            Role::Bucket => 8,
            Role::Count => 16,
            Role::Sum => 32,
            Role::GCount => 64,
            Role::GSum => 128,
            Role::Info => 256,
        }
    }
}

/// The role of a sample named the family's name plus `rest`, in a family of
/// type `kind`, if it belongs.
fn role(kind: MetricType, rest: &str) -> Option<Role> {
    let role = Role::from_suffix(rest)?;
    let fits = match kind {
        MetricType::Counter => matches!(role, Role::Total | Role::Created),
        MetricType::Gauge | MetricType::StateSet | MetricType::Unknown => role == Role::Value,
        MetricType::Histogram => {
            matches!(role, Role::Bucket | Role::Count | Role::Sum | Role::Created)
        }
        MetricType::GaugeHistogram => matches!(role, Role::Bucket | Role::GCount | Role::GSum),
        MetricType::Summary => {
            matches!(role, Role::Value | Role::Count | Role::Sum | Role::Created)
        }
        MetricType::Info => role == Role::Info,
    };
    fits.then_some(role)
}

/// The sample-name suffixes a family of type `kind` may use.
fn suffixes(kind: MetricType) -> &'static [&'static str] {
    match kind {
        MetricType::Counter => &["_total", "_created"],
        MetricType::Gauge | MetricType::StateSet | MetricType::Unknown => &[""],
        MetricType::Histogram => &["_bucket", "_count", "_sum", "_created"],
        MetricType::GaugeHistogram => &["_bucket", "_gcount", "_gsum"],
        MetricType::Summary => &["", "_count", "_sum", "_created"],
        MetricType::Info => &["_info"],
    }
}

fn parse_type(word: &str) -> Option<MetricType> {
    Some(match word {
        "counter" => MetricType::Counter,
        "gauge" => MetricType::Gauge,
        "histogram" => MetricType::Histogram,
        "gaugehistogram" => MetricType::GaugeHistogram,
        "summary" => MetricType::Summary,
        "info" => MetricType::Info,
        "stateset" => MetricType::StateSet,
        "unknown" => MetricType::Unknown,
        _ => return None,
    })
}

/// Label-set hash of each metric of a family → index of its first sample.
type MetricIndex = HashKeyed<usize>;

/// What one metric point has so far.
#[derive(Debug, Default)]
struct Point {
    started: bool,
    /// Seconds timestamp of the last sample, if it had one.
    ts: Option<f64>,
    /// [`Role::bit`]s of the values seen.
    seen: u16,
    has_bucket: bool,
    last_le: f64,
    last_bucket: f64,
    negative_le: bool,
    inf_bucket: Option<f64>,
    count: Option<f64>,
    sum: Option<f64>,
}

impl Point {
    /// True when a sample with `role` (and `le`, for a bucket) would be a
    /// second value of a kind this point already has.
    fn repeats(&self, kind: MetricType, role: Role, le: f64) -> bool {
        match role {
            Role::Bucket => self.has_bucket && le <= self.last_le,
            // Quantiles and states may come in any order; repeats of them are
            // not tracked.
            Role::Value if matches!(kind, MetricType::Summary | MetricType::StateSet) => false,
            _ => self.seen & role.bit() != 0,
        }
    }
}

/// A family being read.
#[derive(Debug)]
struct Builder<'a> {
    family: Family<'a>,
    type_seen: bool,
    help_seen: bool,
    unit_seen: bool,
    /// True once the type is final: at the first sample or the end of the family.
    sealed: bool,
    /// True when the family was started by a sample, not by metadata.
    from_sample: bool,
    metrics: MetricIndex,
    point: Point,
    /// Where the family started, and the sizes of the name sets before it,
    /// for [`OmState::rewind`].
    start: Start,
}

/// Where a family started: its first line, and the sizes of the name sets
/// before that line added the family's names.
#[derive(Debug, Clone, Copy)]
struct Start {
    /// Offset in the window of the family's first line.
    offset: usize,
    /// Line number of that line.
    line: usize,
    names: usize,
    claims: usize,
}

impl<'a> Builder<'a> {
    /// `samples`: an empty vector to fill (one given back, or new).
    fn new(
        name: &'a str,
        from_sample: bool,
        samples: Vec<Sample<'a>>,
        start: Start,
    ) -> Builder<'a> {
        Builder {
            family: Family {
                name,
                kind: MetricType::Unknown,
                help: None,
                unit: None,
                samples,
            },
            type_seen: false,
            help_seen: false,
            unit_seen: false,
            sealed: false,
            from_sample,
            metrics: MetricIndex::default(),
            point: Point::default(),
            start,
        }
    }

    /// The label that tells the values of one metric apart, left out of its
    /// label set.
    fn point_label(&self) -> Option<&'a str> {
        match self.family.kind {
            MetricType::Histogram | MetricType::GaugeHistogram => Some("le"),
            MetricType::Summary => Some("quantile"),
            MetricType::StateSet => Some(self.family.name),
            _ => None,
        }
    }

    /// Checks the finished point; every point ends here.
    fn finish_point(&mut self, cur: &Cursor<'_>, strict: bool) -> Result<(), ParseError> {
        let p = std::mem::take(&mut self.point);
        if !p.started {
            return Ok(());
        }
        let semantic =
            |what: &str| Err(cur.error(ErrorKind::Semantic, what, Some(self.family.name)));
        match self.family.kind {
            MetricType::Histogram | MetricType::GaugeHistogram => {
                let gauge = self.family.kind == MetricType::GaugeHistogram;
                let Some(inf) = p.inf_bucket else {
                    return semantic("histogram point has no +Inf bucket");
                };
                if p.count.is_some() != p.sum.is_some() {
                    return semantic(if gauge {
                        "gaugehistogram point needs both _gsum and _gcount, or neither"
                    } else {
                        "histogram point needs both _sum and _count, or neither"
                    });
                }
                if p.count.is_some_and(|c| c != inf) {
                    return semantic("histogram count differs from its +Inf bucket");
                }
                if !gauge && strict && p.negative_le && p.sum.is_some() {
                    return semantic("histogram with negative buckets has a _sum");
                }
                if gauge && !p.negative_le && p.sum.is_some_and(|s| s < 0.0) {
                    return semantic("gaugehistogram _gsum is negative without negative buckets");
                }
            }
            MetricType::Counter if p.seen & Role::Total.bit() == 0 => {
                return semantic("counter point has no _total sample");
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks a sample against its family's type and the metrics and points
    /// before it, then adds it.
    #[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
    fn add(
        &mut self,
        cur: &Cursor<'_>,
        sample: Sample<'a>,
        role: Role,
        ts: Option<f64>,
        exemplar: bool,
        hasher: &RandomState,
        strict: bool,
    ) -> Result<(), ParseError> {
        let kind = self.family.kind;
        let le = check_values(cur, kind, self.family.name, role, &sample, exemplar, strict)?;
        let skip = self.point_label();
        let same_metric = self
            .family
            .samples
            .last()
            .is_some_and(|prev| same_label_set(&prev.labels, &sample.labels, skip));
        if same_metric {
            let repeat = self.point.repeats(kind, role, le);
            let new_point = match (self.point.ts, ts) {
                (Some(prev), Some(now)) if now < prev => {
                    return Err(cur.error(
                        ErrorKind::Order,
                        "timestamp goes backwards within a metric",
                        Some(sample.name),
                    ));
                }
                (Some(prev), Some(now)) => now > prev || repeat,
                _ if repeat && role == Role::Bucket => {
                    return Err(cur.error(
                        ErrorKind::Semantic,
                        "histogram buckets not in increasing le order",
                        Some(sample.name),
                    ));
                }
                _ if repeat => {
                    return Err(cur.error(
                        ErrorKind::Order,
                        "metric point repeated without timestamps",
                        Some(sample.name),
                    ));
                }
                _ => false,
            };
            if new_point {
                self.finish_point(cur, strict)?;
            }
        } else {
            self.finish_point(cur, strict)?;
            let key = hash_label_set(hasher, &sample.labels, skip);
            let index = self.family.samples.len();
            match self.metrics.get(&key) {
                None => {
                    self.metrics.insert(key, index);
                }
                Some(_) => {
                    // Same hash: a metric seen before, unless it is a collision.
                    let seen = self
                        .family
                        .samples
                        .iter()
                        .any(|s| same_label_set(&s.labels, &sample.labels, skip));
                    if seen {
                        return Err(cur.error(
                            ErrorKind::Order,
                            "metric interleaved with another metric of its family",
                            Some(sample.name),
                        ));
                    }
                }
            }
        }
        self.record(cur, role, le, sample.value, ts)?;
        self.family.samples.push(sample);
        Ok(())
    }

    /// Adds a sample's value to the current point.
    fn record(
        &mut self,
        cur: &Cursor<'_>,
        role: Role,
        le: f64,
        value: f64,
        ts: Option<f64>,
    ) -> Result<(), ParseError> {
        let p = &mut self.point;
        p.started = true;
        p.ts = ts;
        p.seen |= role.bit();
        match role {
            Role::Bucket => {
                if p.has_bucket && value < p.last_bucket {
                    return Err(cur.error(
                        ErrorKind::Semantic,
                        "histogram buckets are not cumulative",
                        Some(self.family.name),
                    ));
                }
                p.has_bucket = true;
                p.last_le = le;
                p.last_bucket = value;
                p.negative_le |= le < 0.0;
                if le == f64::INFINITY {
                    p.inf_bucket = Some(value);
                }
            }
            Role::Count | Role::GCount => p.count = Some(value),
            Role::Sum | Role::GSum => p.sum = Some(value),
            _ => {}
        }
        Ok(())
    }
}

/// Checks a sample's labels and value against its type and role; returns the
/// bucket's `le` (0 for other samples).
fn check_values(
    cur: &Cursor<'_>,
    kind: MetricType,
    family: &str,
    role: Role,
    sample: &Sample<'_>,
    exemplar: bool,
    strict: bool,
) -> Result<f64, ParseError> {
    let semantic = |what: &str| Err(cur.error(ErrorKind::Semantic, what, Some(sample.name)));
    let label = |name: &str| sample.labels.iter().find(|l| l.name == name);
    let v = sample.value;
    let exemplar_ok = match kind {
        MetricType::Counter => role == Role::Total,
        MetricType::Histogram | MetricType::GaugeHistogram => role == Role::Bucket,
        _ => false,
    };
    if exemplar && !exemplar_ok {
        return semantic("exemplar not allowed on this sample");
    }
    let histogram = matches!(kind, MetricType::Histogram | MetricType::GaugeHistogram);
    if histogram && role != Role::Bucket && label("le").is_some() {
        return semantic("le label on a histogram sample that is not a bucket");
    }
    if kind == MetricType::Summary && role != Role::Value && label("quantile").is_some() {
        return semantic("quantile label on a summary sample that is not a quantile");
    }
    // Counts are counters and must be whole numbers.
    let count_ok = |v: f64| v >= 0.0 && v.fract() == 0.0;
    match (kind, role) {
        (MetricType::Counter, Role::Total) if v.is_nan() || v < 0.0 => {
            semantic("counter total is negative or NaN")
        }
        (_, Role::Bucket) => {
            let Some(le) = label("le") else {
                return semantic("histogram bucket without le label");
            };
            let Some(bound) = number::openmetrics_le(&le.value) else {
                return Err(cur.error(
                    ErrorKind::Semantic,
                    "invalid le label value",
                    Some(&le.value),
                ));
            };
            if !count_ok(v) {
                return semantic("histogram bucket value is not a non-negative integer");
            }
            Ok(bound)
        }
        (_, Role::Count | Role::GCount) if !count_ok(v) => {
            semantic("count is not a non-negative integer")
        }
        (_, Role::Sum | Role::GSum) if v.is_nan() => semantic("sum is NaN"),
        (MetricType::Histogram | MetricType::Summary, Role::Sum) if strict && v < 0.0 => {
            semantic("sum is negative")
        }
        (MetricType::Summary, Role::Value) => {
            let Some(q) = label("quantile") else {
                return semantic("summary quantile without quantile label");
            };
            if !number::real(&q.value).is_some_and(|q| (0.0..=1.0).contains(&q)) {
                return Err(cur.error(
                    ErrorKind::Semantic,
                    "quantile label value not a number from 0 to 1",
                    Some(&q.value),
                ));
            }
            if strict && v < 0.0 {
                return semantic("quantile value is negative");
            }
            Ok(0.0)
        }
        (MetricType::Info, _) if v != 1.0 => semantic("info value is not 1"),
        (MetricType::StateSet, _) => {
            if label(family).is_none() {
                return semantic("stateset sample without a label named after the family");
            }
            if v != 0.0 && v != 1.0 {
                return semantic("stateset value is not 0 or 1");
            }
            Ok(0.0)
        }
        _ => Ok(0.0),
    }
}

/// True when two label sets, without labels named `skip`, are equal in any order.
fn same_label_set(a: &[Label<'_>], b: &[Label<'_>], skip: Option<&str>) -> bool {
    let keep = |l: &&Label<'_>| Some(l.name) != skip;
    let mut x = a.iter().filter(keep);
    let mut y = b.iter().filter(keep);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(l), Some(r)) if l == r => {}
            // Names are unique within a set: same name, other value, other set.
            (Some(l), Some(r)) if l.name == r.name => return false,
            (Some(_), Some(_)) => break,
            _ => return false,
        }
    }
    // The orders differ: compare as sets.
    let count = |s: &[Label<'_>]| s.iter().filter(keep).count();
    count(a) == count(b)
        && a.iter()
            .filter(keep)
            .all(|l| b.iter().any(|r| r.name == l.name && r.value == l.value))
}

/// A keyed hash of a label set, without labels named `skip`, in exposition order.
fn hash_label_set(hasher: &RandomState, labels: &[Label<'_>], skip: Option<&str>) -> u64 {
    let mut h = hasher.build_hasher();
    for l in labels.iter().filter(|l| Some(l.name) != skip) {
        // 0xff never occurs in UTF-8, so it separates names and values unambiguously.
        h.write(l.name.as_bytes());
        h.write_u8(0xff);
        h.write(l.value.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

/// The error for anything after `# EOF`, on line `line`.
fn text_after_eof(line: usize) -> ParseError {
    ParseError::new(line, ErrorKind::Eof, "text after # EOF".to_owned())
}

/// Which metadata line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    Type,
    Help,
    Unit,
}

/// Parse state across the lines of one OpenMetrics body.
#[derive(Debug, Default)]
pub(super) struct OmState<'a> {
    /// Names of all families so far, including those without samples.
    names: NameMap<()>,
    /// Sample names all families so far may use: each family's name and one
    /// of its type's suffixes, so that a gauge `a_total` clashes with a
    /// counter `a`.
    claims: NameMap<()>,
    /// Room to write a claim in.
    claim: String,
    current: Option<Builder<'a>>,
    /// Keys the metric label-set hashes.
    hasher: RandomState,
    /// Set once `# EOF` is read.
    eof: bool,
    /// Reused for exemplar labels, which are checked and dropped.
    exemplar_labels: Vec<Label<'a>>,
    /// An empty sample vector given back by the caller, for the next family.
    pub(super) spare: Vec<Sample<'a>>,
    /// Empty label vectors given back by the caller, for the next samples.
    pub(super) label_pool: Vec<Vec<Label<'a>>>,
}

impl<'a> OmState<'a> {
    /// Reads lines until a family is complete; `None` after `# EOF`.
    pub(super) fn next_family(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
        strict: bool,
        scratch: &mut Vec<Label<'a>>,
    ) -> Option<Result<Family<'a>, ParseError>> {
        loop {
            if self.eof {
                return None;
            }
            if cur.at_end() {
                if !cur.is_last() {
                    return None;
                }
                return Some(Err(cur.error(
                    ErrorKind::Eof,
                    "missing # EOF at end of input",
                    None,
                )));
            }
            // Only right after a family's first line: then the next window
            // reads that one line again.
            if let Some(b) = &self.current {
                if cur.may_pause(b.start.offset) && b.start.line + 1 == cur.line() {
                    return None;
                }
            }
            let line = match cur.peek() {
                Some(b'#') => self.metadata(cur, limits, strict),
                Some(b'\n') => Err(cur.error(ErrorKind::Syntax, "blank line", None)),
                _ => self.sample(cur, limits, strict, scratch),
            };
            match line {
                Ok(Some(family)) => return Some(Ok(family)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// A family starting on the cursor's line, before it adds its names.
    fn start(&self, cur: &Cursor<'_>) -> Start {
        Start {
            offset: cur.line_start(),
            line: cur.line(),
            names: self.names.len(),
            claims: self.claims.len(),
        }
    }

    /// Ends a window that is not the last, where [`OmState::next_family`]
    /// returned `None` before `# EOF`: drops the family being read and takes
    /// its names back out of the sets. Returns the offset in the window and
    /// the line number where the next window must start: that family's first
    /// line, or the cursor.
    pub(super) fn rewind(&mut self, cur: &Cursor<'a>) -> (usize, usize) {
        let Some(b) = self.current.take() else {
            return (cur.pos(), cur.line());
        };
        self.names.truncate(b.start.names);
        self.claims.truncate(b.start.claims);
        let mut samples = b.family.samples;
        recycle_samples(&mut samples, &mut self.label_pool);
        self.spare = samples;
        (b.start.offset, b.start.line)
    }

    /// The same state for another window. The family being read, if any, is
    /// dropped: call [`OmState::rewind`] first.
    pub(super) fn detach<'b>(mut self) -> OmState<'b> {
        self.give_back_current();
        OmState {
            names: self.names,
            claims: self.claims,
            claim: self.claim,
            current: None,
            hasher: self.hasher,
            eof: self.eof,
            exemplar_labels: reuse(self.exemplar_labels),
            spare: reuse(self.spare),
            label_pool: reuse_all(self.label_pool),
        }
    }

    /// Takes back the vectors for reuse: the spare sample vector (emptied)
    /// and the label vectors.
    pub(super) fn into_vectors<'b>(mut self) -> (Vec<Sample<'b>>, Vec<Vec<Label<'b>>>) {
        self.give_back_current();
        (reuse(self.spare), reuse_all(self.label_pool))
    }

    /// Puts the vectors of the family being read, if any, with the spare ones.
    fn give_back_current(&mut self) {
        if let Some(b) = self.current.take() {
            let mut samples = b.family.samples;
            recycle_samples(&mut samples, &mut self.label_pool);
            if samples.capacity() > self.spare.capacity() {
                self.spare = samples;
            }
        }
    }

    /// A state for a new body that reuses `vectors` (from
    /// [`OmState::into_vectors`]).
    pub(super) fn with_vectors(
        (spare, label_pool): (Vec<Sample<'a>>, Vec<Vec<Label<'a>>>),
    ) -> OmState<'a> {
        OmState {
            spare,
            label_pool,
            ..OmState::default()
        }
    }

    /// Ends the family being read: checks it, then returns it if it has samples.
    fn finish_current(
        &mut self,
        cur: &Cursor<'_>,
        strict: bool,
    ) -> Result<Option<Family<'a>>, ParseError> {
        let Some(mut b) = self.current.take() else {
            return Ok(None);
        };
        if !b.sealed {
            self.seal(cur, &mut b)?;
        }
        b.finish_point(cur, strict)?;
        Ok((!b.family.samples.is_empty()).then_some(b.family))
    }

    /// Fixes a family's type: checks its unit and claims its sample names.
    fn seal(&mut self, cur: &Cursor<'_>, b: &mut Builder<'a>) -> Result<(), ParseError> {
        let name = b.family.name;
        let kind = b.family.kind;
        if b.family.unit.is_some() && matches!(kind, MetricType::Info | MetricType::StateSet) {
            return Err(cur.error(
                ErrorKind::Metadata,
                "unit not allowed on info or stateset families",
                Some(name),
            ));
        }
        for &suffix in suffixes(kind) {
            self.claim.clear();
            self.claim.push_str(name);
            self.claim.push_str(suffix);
            if !self.claims.entry(&self.claim, || ()).1 {
                let (kind, what) = if b.from_sample {
                    (ErrorKind::Order, "sample belongs to an earlier family")
                } else {
                    (
                        ErrorKind::Metadata,
                        "family name clashes with an earlier family",
                    )
                };
                return Err(cur.error(kind, what, Some(&self.claim)));
            }
        }
        b.sealed = true;
        Ok(())
    }

    fn metadata(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
        strict: bool,
    ) -> Result<Option<Family<'a>>, ParseError> {
        if cur.eat_str("# EOF") {
            match cur.peek() {
                None => {}
                Some(b'\n') => {
                    cur.end_line(limits, "end of line")?;
                    // A window that is not the last is followed by more of
                    // the body (see `Stream`).
                    if !cur.at_end() || !cur.is_last() {
                        return Err(text_after_eof(cur.line()));
                    }
                }
                Some(_) => return Err(text_after_eof(cur.line())),
            }
            self.eof = true;
            return self.finish_current(cur, strict);
        }
        let meta = if cur.eat_str("# TYPE ") {
            Meta::Type
        } else if cur.eat_str("# HELP ") {
            Meta::Help
        } else if cur.eat_str("# UNIT ") {
            Meta::Unit
        } else {
            return Err(cur.error(
                ErrorKind::Syntax,
                "invalid comment: only TYPE, HELP, UNIT and EOF lines may start with #",
                Some(cur.rest_of_line()),
            ));
        };
        let prefix = self.current.as_ref().map(|b| b.family.name);
        let (name, rest) = cur.metric_name_after(prefix, limits)?;
        if !cur.eat(b' ') {
            return Err(cur.expected("' ' after the metric name"));
        }
        let text = cur.take_line();
        cur.check_line_length(limits)?;
        let done = self.apply(cur, strict, name, rest == Some(""), meta, text)?;
        cur.end_line(limits, "end of line")?;
        Ok(done)
    }

    /// Applies one metadata line to its family, starting the family if needed.
    fn apply(
        &mut self,
        cur: &Cursor<'a>,
        strict: bool,
        name: &'a str,
        same: bool,
        meta: Meta,
        text: &'a str,
    ) -> Result<Option<Family<'a>>, ParseError> {
        let metadata =
            |what: &str, detail: &str| Err(cur.error(ErrorKind::Metadata, what, Some(detail)));
        let done = if same {
            None
        } else {
            let done = self.finish_current(cur, strict)?;
            let start = self.start(cur);
            if !self.names.entry(name, || ()).1 {
                return metadata("metric family appears twice", name);
            }
            let samples = std::mem::take(&mut self.spare);
            self.current = Some(Builder::new(name, false, samples, start));
            done
        };
        let Some(b) = self.current.as_mut() else {
            return Ok(done);
        };
        if b.sealed {
            return metadata("metadata after the family's samples", name);
        }
        match meta {
            Meta::Type => {
                if b.type_seen {
                    return metadata("duplicate type line", name);
                }
                b.type_seen = true;
                let Some(kind) = parse_type(text) else {
                    return metadata("invalid metric type", text);
                };
                b.family.kind = kind;
            }
            Meta::Help => {
                if b.help_seen {
                    return metadata("duplicate help line", name);
                }
                b.help_seen = true;
                if !text.is_empty() {
                    b.family.help = Some(unescape_help(text, true));
                }
            }
            Meta::Unit => {
                if b.unit_seen {
                    return metadata("duplicate unit line", name);
                }
                b.unit_seen = true;
                if !is_metric_name_chars(text) {
                    return metadata("invalid unit", text);
                }
                if !text.is_empty() {
                    let suffix_ok = name
                        .strip_suffix(text)
                        .is_some_and(|base| base.ends_with('_'));
                    if !suffix_ok {
                        return metadata("unit is not a suffix of the family name", text);
                    }
                    b.family.unit = Some(text);
                }
            }
        }
        Ok(done)
    }

    fn sample(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
        strict: bool,
        scratch: &mut Vec<Label<'a>>,
    ) -> Result<Option<Family<'a>>, ParseError> {
        let prefix = self.current.as_ref().map(|b| b.family.name);
        let (name, rest) = cur.metric_name_after(prefix, limits)?;
        if cur.eat(b'{') {
            cur.labels::<false>(scratch, limits)?;
        } else {
            scratch.clear();
        }
        if !cur.eat(b' ') {
            return Err(cur.expected("' ' and a value after the metric name and labels"));
        }
        let token = cur.token(false);
        let value = number::value(token, Grammar::OpenMetrics)
            .ok_or_else(|| cur.error(ErrorKind::Syntax, "invalid value", Some(token)))?;
        let mut ts = None;
        let mut exemplar = false;
        if cur.eat(b' ') {
            if cur.peek() == Some(b'#') {
                exemplar = true;
            } else {
                let token = cur.token(false);
                let secs = number::real(token).ok_or_else(|| {
                    cur.error(ErrorKind::Syntax, "invalid timestamp", Some(token))
                })?;
                ts = Some((secs, number::seconds_to_millis(token)));
                if cur.eat(b' ') {
                    if cur.peek() != Some(b'#') {
                        return Err(cur.expected("an exemplar or end of line after the timestamp"));
                    }
                    exemplar = true;
                }
            }
        }
        if exemplar {
            self.exemplar(cur, limits)?;
        }
        if cur.at_end() {
            return Err(cur.error(ErrorKind::Eof, "missing # EOF at end of input", None));
        }
        if cur.peek() != Some(b'\n') {
            return Err(cur.expected("end of line"));
        }
        cur.check_line_length(limits)?;

        let joined = match (&self.current, rest) {
            (Some(b), Some(rest)) => role(b.family.kind, rest),
            _ => None,
        };
        let (done, role) = match joined {
            Some(role) => (None, role),
            None => {
                let done = self.finish_current(cur, strict)?;
                let start = self.start(cur);
                if !self.names.entry(name, || ()).1 {
                    return Err(cur.error(
                        ErrorKind::Order,
                        "family interleaved with another family",
                        Some(name),
                    ));
                }
                let samples = std::mem::take(&mut self.spare);
                self.current = Some(Builder::new(name, true, samples, start));
                (done, Role::Value)
            }
        };
        let Some(mut b) = self.current.take() else {
            return Ok(done);
        };
        if !b.sealed {
            self.seal(cur, &mut b)?;
        }
        if b.family.samples.len() >= limits.max_family_samples {
            return Err(cur.limit_error(
                "too many samples in one family",
                b.family.samples.len() + 1,
                limits.max_family_samples,
            ));
        }
        let labels = take_labels(scratch, &mut self.label_pool);
        let sample = Sample {
            name,
            labels,
            value,
            timestamp_ms: ts.map(|(_, ms)| ms),
        };
        b.add(
            cur,
            sample,
            role,
            ts.map(|(secs, _)| secs),
            exemplar,
            &self.hasher,
            strict,
        )?;
        self.current = Some(b);
        cur.end_line(limits, "end of line")?;
        Ok(done)
    }

    /// Checks an exemplar (`# {labels} value [timestamp]`) and drops it.
    fn exemplar(&mut self, cur: &mut Cursor<'a>, limits: &Limits) -> Result<(), ParseError> {
        if !cur.eat_str("# {") {
            return Err(cur.expected("'# {' to start an exemplar"));
        }
        cur.labels::<false>(&mut self.exemplar_labels, limits)?;
        let chars: usize = self
            .exemplar_labels
            .iter()
            .map(|l| l.name.chars().count() + l.value.chars().count())
            .sum();
        if chars > EXEMPLAR_MAX_CHARS {
            return Err(cur.limit_error(
                "exemplar labels too long (characters)",
                chars,
                EXEMPLAR_MAX_CHARS,
            ));
        }
        if !cur.eat(b' ') {
            return Err(cur.expected("' ' and a value after the exemplar labels"));
        }
        let token = cur.token(false);
        if number::value(token, Grammar::OpenMetrics).is_none() {
            return Err(cur.error(ErrorKind::Syntax, "invalid exemplar value", Some(token)));
        }
        if cur.eat(b' ') {
            let token = cur.token(false);
            if number::real(token).is_none() {
                return Err(cur.error(
                    ErrorKind::Syntax,
                    "invalid exemplar timestamp",
                    Some(token),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn label_sets_compare_in_any_order() {
        let l = |name, value| Label {
            name,
            value: Cow::Borrowed(value),
        };
        let a = [l("a", "1"), l("b", "2"), l("le", "1")];
        let b = [l("b", "2"), l("a", "1")];
        assert!(same_label_set(&a, &b, Some("le")));
        assert!(!same_label_set(&a, &b, None));
        let c = [l("a", "1"), l("b", "3")];
        assert!(!same_label_set(&a, &c, Some("le")));
    }
}
