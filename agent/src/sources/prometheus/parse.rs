//! The exposition-format parser: turns one scrape body into metric families.
//!
//! The scrape loop hands each response body, as it arrives, to a [`Stream`],
//! with the [`Format`] picked from the response's Content-Type; the stream
//! holds a bounded window of the body and calls back with each [`Family`],
//! which the loop hands to the OTLP converter. A body already in memory can
//! be iterated with [`Parser::new`] instead; both give the same families and
//! errors. Families borrow the window or body (names and most label values
//! are `&str` slices of it); the parser allocates the per-family sample
//! vectors (reused from family to family), one label vector per labelled
//! sample, the few label values or HELP texts that contain escapes, and an
//! owned copy of each family name (and of its 0.0.4 HELP text), for the
//! checks of later families. It does not decide what a family becomes in OTLP; that is the
//! converter's job.
//!
//! # Formats and the rules enforced
//!
//! **Prometheus text format 0.0.4** (the parser of reference is Go's
//! `expfmt.TextParser`; where Prometheus's own scraper is more lenient the
//! difference is noted on the rule):
//!
//! - Lines end with `\n`, including the last one: a body cut short mid-line is
//!   an error, not a shorter value. (Prometheus's scraper tolerates a missing
//!   final newline; the spec and Go's parser do not, and it is the only
//!   truncation signal the format has.) Empty lines are ignored, and blanks and
//!   tabs may lead a line, surround label parts, and separate tokens.
//! - `# HELP name text` and `# TYPE name type` are metadata; any other comment is
//!   ignored, as are HELP and TYPE lines with no name or no text. A second HELP
//!   or TYPE for a name, or a TYPE after that name's samples, is an error.
//!   Types are `counter`, `gauge`, `histogram`, `summary` and `untyped`.
//! - Names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`;
//!   `__name__` is reserved and label names are unique within a sample. Label
//!   values escape `\\`, `\"` and `\n`; any other backslash is kept as written
//!   (Go's parser rejects it, Prometheus's scraper keeps it).
//! - Values are decimal floats or `[+-]Inf`/`NaN` (any case); timestamps are
//!   integer milliseconds. Hexadecimal floats are rejected.
//! - Histogram `_bucket` samples need a numeric `le`, summary quantile samples
//!   a numeric `quantile`.
//!
//! **OpenMetrics 1.0 text**, the whole grammar (no optional whitespace, `# EOF`
//! last, nothing after it) and the semantic rules: one metadata line of each
//! kind per family and only before its samples; families, metrics and metric
//! points not interleaved; family names that cannot clash through suffixes;
//! UNIT a suffix of the name and absent on info and stateset; per-type sample
//! suffixes and values (counters, bucket and count values non-negative and not
//! NaN, buckets in increasing `le` order, cumulative, ending in `+Inf`, `_count`
//! equal to the `+Inf` bucket, `_sum` and `_count` together; quantiles in
//! [0, 1]; info values 1; stateset values 0 or 1); timestamps that do not go
//! backwards within a metric; exemplars only on counter totals and buckets, at
//! most 128 characters of labels. Exemplars are checked and then dropped.
//!
//! By default three OpenMetrics value rules are relaxed, because Go's
//! `client_golang` (the most common OpenMetrics exposer) breaks them whenever
//! negative values are observed and Prometheus ingests the result: a histogram
//! with negative buckets may have a `_sum`, that `_sum` may be negative, and
//! summary `_sum` and quantile values may be negative. [`Parser::strict`] turns
//! them back on, for conformance testing.
//!
//! Families with no samples are checked but not yielded.
//!
//! # What a family looks like
//!
//! Sample names are kept as written; the suffix after [`Family::name`] tells
//! a sample's role:
//!
//! | type | samples |
//! | --- | --- |
//! | counter | 0.0.4: the family name itself (which usually ends in `_total`). OpenMetrics: `name_total`, and `name_created` whose *value* is the creation time in seconds since the epoch |
//! | gauge, unknown | the family name |
//! | histogram | `name_bucket` with an `le` label (`"+Inf"` for the last), `name_sum`, `name_count`; OpenMetrics also `name_created` (seconds) |
//! | gaugehistogram | `name_bucket` with `le`, `name_gsum`, `name_gcount` |
//! | summary | `name` with a `quantile` label, `name_sum`, `name_count`; OpenMetrics also `name_created` (seconds) |
//! | info | `name_info`, value 1; its labels are the information |
//! | stateset | `name`, one per state, with a label named `name` whose value is the state; value 1 when the state is on, 0 when off |
//!
//! In OpenMetrics the samples of one metric (one label set, `le`, `quantile`
//! and the stateset label aside) are contiguous, buckets ascend and end with
//! `+Inf`, and each family name occurs once. 0.0.4 exposers almost always do
//! the same, but the parser only checks that `le` and `quantile` are numbers
//! there, and a name can come back as another [`Family`]: when its samples
//! are interleaved with another family's, or as an untyped family for a bare
//! `foo` sample among histogram `foo`'s samples. `le` and `quantile`
//! stay label strings; parse them with `str::parse::<f64>` (both formats
//! write infinity as `+Inf`, which it accepts).
//!
//! # Hostile input
//!
//! Work is linear in the body size: every byte is looked at a bounded number of
//! times (a family larger than a [`Stream`]'s window is parsed again each time
//! the window doubles, which at most quadruples its cost), and sets (family names,
//! metrics of a family) are hashed with a randomly keyed hasher. [`Limits`]
//! bound the size of lines, names, label values and label sets. Nothing on the
//! input path can panic.
//!
//! # Errors
//!
//! An exposition with an error is erroneous as a whole (OpenMetrics says so;
//! for 0.0.4 it is what Prometheus does): the families yielded before the
//! error were well formed, but the caller should drop the whole scrape. After
//! the first error the iterator ends.
//!
//! The error is the first one in body order. A byte that is not UTF-8 is an
//! error ([`ErrorKind::Utf8`]) on its line once the lines before it have been
//! parsed: an error on an earlier line comes first, and the families those
//! lines complete are yielded first. (Before bodies were streamed, the whole
//! body was checked first, so a bad byte anywhere was the only error and no
//! family was yielded; a stream cannot look ahead, and [`Parser`] does as
//! [`Stream`] does, so that both agree.) Likewise anything after OpenMetrics'
//! `# EOF` is the [`ErrorKind::Eof`] error, even when it is not UTF-8.
//!
//! See: <https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>
//!
//! See: <https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md>

mod names;
mod number;
mod openmetrics;
mod scan;
mod stream;
mod text;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;

pub(crate) use names::HashKeyed;
pub(crate) use scan::same_bytes;
use scan::Cursor;
pub use stream::{Stream, StreamError};

/// Exposition format of a scrape body, chosen from the response Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), also the
    /// fallback for any other or missing Content-Type.
    PrometheusText,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// Picks the format for a response Content-Type header value.
    ///
    /// `application/openmetrics-text`, with any parameters and in any case, is
    /// [`Format::OpenMetrics`]; everything else is [`Format::PrometheusText`],
    /// which is what Prometheus does as well.
    pub fn from_content_type(ct: &str) -> Format {
        let media_type = ct.split(';').next().unwrap_or("").trim();
        if media_type.eq_ignore_ascii_case("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }
}

/// Type of a metric family, from its TYPE line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonic total (`_total`, and `_created` in OpenMetrics).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets (`_bucket` with `le`), `_sum`, `_count` (and `_created` in OpenMetrics).
    Histogram,
    /// OpenMetrics only: buckets of current values (`_bucket`, `_gsum`, `_gcount`).
    GaugeHistogram,
    /// Quantiles (samples with a `quantile` label), `_sum`, `_count` (and `_created` in OpenMetrics).
    Summary,
    /// OpenMetrics only: a `_info` sample with value 1 whose labels carry the information.
    Info,
    /// OpenMetrics only: one sample per state, with the family name as the state label, valued 0 or 1.
    StateSet,
    /// No TYPE line, `untyped` (0.0.4) or `unknown` (OpenMetrics).
    Unknown,
}

impl MetricType {
    /// The type's name as written on an OpenMetrics TYPE line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
            MetricType::Unknown => "unknown",
        }
    }
}

/// Bounds on the work and memory one exposition may cost, so that a hostile or
/// broken target cannot make the agent allocate without limit.
///
/// Lengths are in bytes as written in the body (before unescaping). Going over
/// a limit is an error ([`ErrorKind::Limit`]) naming the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most labels on one sample (or one exemplar).
    ///
    /// Real exporters stay well under 64 (kube-state-metrics' widest series
    /// carry a few dozen); past a few hundred a series is a bug or an attack,
    /// and each label costs memory in every batch. Defaults to 256.
    pub max_labels: usize,
    /// Longest line, newline excluded.
    ///
    /// node_exporter's longest lines are under 1 KiB; 64 KiB leaves room for
    /// info metrics with long label values while keeping one line's worth of
    /// labels small next to the agent's 8 MB budget. Defaults to 65536.
    pub max_line_bytes: usize,
    /// Longest metric or label name.
    ///
    /// Names are identifiers; none seen in the wild comes near 1 KiB, and every
    /// byte of a name is repeated in each batch. Defaults to 1024.
    pub max_name_bytes: usize,
    /// Longest label value.
    ///
    /// Values such as command lines, URLs or Kubernetes annotations can run to a
    /// few KiB; 16 KiB allows them, while bounding what one sample adds to a
    /// batch. Defaults to 16384.
    pub max_label_value_bytes: usize,
    /// Most samples in one family.
    ///
    /// A family is held in memory whole until the converter takes it, at
    /// about 64 bytes a sample plus its labels, while a sample line can be as
    /// short as 4 bytes; this bounds that amplification. The largest families
    /// seen in practice (kube-state-metrics on big clusters, wide histograms)
    /// have tens of thousands of samples. Defaults to 200000.
    pub max_family_samples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_labels: 256,
            max_line_bytes: 64 * 1024,
            max_name_bytes: 1024,
            max_label_value_bytes: 16 * 1024,
            max_family_samples: 200_000,
        }
    }
}

/// One metric family: its metadata and its samples, in exposition order.
#[derive(Debug, Clone, PartialEq)]
pub struct Family<'a> {
    /// Family name. For OpenMetrics, the name on the metadata lines (for
    /// counters, without `_total`); for 0.0.4, the TYPE or HELP name, or the
    /// sample name when there is no metadata.
    pub name: &'a str,
    /// Type from the TYPE line; [`MetricType::Unknown`] when there is none.
    pub kind: MetricType,
    /// HELP text, unescaped; `None` when absent or empty.
    pub help: Option<Cow<'a, str>>,
    /// OpenMetrics UNIT; `None` when absent or empty (always `None` for 0.0.4).
    pub unit: Option<&'a str>,
    /// The samples, in exposition order; never empty.
    pub samples: Vec<Sample<'a>>,
}

/// One sample line: a name, labels, a value and maybe a timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Full sample name as written: `foo_bucket`, `foo_sum`, `foo_count`,
    /// `foo_total`, `foo_created`, `foo_info`, `foo_gsum`, ...
    pub name: &'a str,
    /// Labels in exposition order, values unescaped. Includes `le` on buckets,
    /// `quantile` on summary quantiles and the state label on stateset samples.
    pub labels: Vec<Label<'a>>,
    /// The value.
    pub value: f64,
    /// Timestamp in milliseconds since the Unix epoch. 0.0.4 writes integer
    /// milliseconds; OpenMetrics writes seconds, which are converted exactly and
    /// truncated toward zero to whole milliseconds (saturating at the `i64`
    /// range).
    pub timestamp_ms: Option<i64>,
}

impl Sample<'_> {
    /// The value of the label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_ref())
    }
}

/// One label of a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label<'a> {
    /// Label name.
    pub name: &'a str,
    /// Label value, unescaped.
    pub value: Cow<'a, str>,
}

/// What kind of rule an exposition broke, for counting scrape failures by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The body is not valid UTF-8.
    Utf8,
    /// A line does not follow the format's grammar (names, labels, numbers, spacing).
    Syntax,
    /// A line, name, label value or label set is larger than [`Limits`] allows.
    Limit,
    /// A HELP, TYPE or UNIT line is repeated, misplaced or invalid, or two
    /// families' names clash.
    Metadata,
    /// A family, metric or metric point is interleaved with another, or
    /// timestamps go backwards (OpenMetrics).
    Order,
    /// A value or label breaks the rules of its metric type (OpenMetrics,
    /// and `le`/`quantile` in 0.0.4).
    Semantic,
    /// The OpenMetrics `# EOF` line is missing, or something follows it; or a
    /// 0.0.4 body ends in the middle of a line.
    Eof,
}

/// A parse error: the 1-based line and what was wrong with it.
///
/// Displays as `line 12: reason: detail`, with any quoted input cut to a few
/// dozen characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number of the offending line.
    pub line: usize,
    detail: Box<ErrorDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorDetail {
    kind: ErrorKind,
    message: String,
}

impl ParseError {
    fn new(line: usize, kind: ErrorKind, message: String) -> ParseError {
        ParseError {
            line,
            detail: Box::new(ErrorDetail { kind, message }),
        }
    }

    /// The kind of rule that was broken.
    pub fn kind(&self) -> ErrorKind {
        self.detail.kind
    }

    /// The reason, without the line number.
    pub fn message(&self) -> &str {
        &self.detail.message
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.detail.message)
    }
}

impl std::error::Error for ParseError {}

/// Parse state of one format.
#[derive(Debug)]
enum State<'a> {
    // Boxed, so that moving the state from one window to the next is cheap.
    Text(Box<text::TextState<'a>>),
    OpenMetrics(Box<openmetrics::OmState<'a>>),
}

/// An empty sample vector and empty label vectors, kept for the next families.
type Vectors<'a> = (Vec<Sample<'a>>, Vec<Vec<Label<'a>>>);

impl<'a> State<'a> {
    /// The state for a body of about `len` bytes that reuses `vectors`.
    fn new(format: Format, len: usize, vectors: Vectors<'a>) -> State<'a> {
        match format {
            Format::PrometheusText => {
                State::Text(Box::new(text::TextState::with_vectors(len, vectors)))
            }
            Format::OpenMetrics => {
                State::OpenMetrics(Box::new(openmetrics::OmState::with_vectors(vectors)))
            }
        }
    }

    /// The next family of the window; `None` at its end or where it pauses.
    fn next_family(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
        strict: bool,
        scratch: &mut Vec<Label<'a>>,
    ) -> Option<Result<Family<'a>, ParseError>> {
        match self {
            State::Text(st) => st.next_family(cur, limits, scratch),
            State::OpenMetrics(st) => st.next_family(cur, limits, strict, scratch),
        }
    }

    /// See [`Parser::recycle`].
    fn recycle(&mut self, mut samples: Vec<Sample<'a>>) {
        let (spare, pool) = match self {
            State::Text(st) => (&mut st.spare, &mut st.label_pool),
            State::OpenMetrics(st) => (&mut st.spare, &mut st.label_pool),
        };
        text::recycle_samples(&mut samples, pool);
        *spare = samples;
    }

    /// See [`text::TextState::rewind`].
    fn rewind(&mut self, cur: &Cursor<'a>) -> (usize, usize) {
        match self {
            State::Text(st) => st.rewind(cur),
            State::OpenMetrics(st) => st.rewind(cur),
        }
    }

    /// The same state for the next window (after [`State::rewind`]).
    fn detach<'b>(self) -> State<'b> {
        match self {
            State::Text(st) => State::Text(Box::new(st.detach())),
            State::OpenMetrics(st) => State::OpenMetrics(Box::new(st.detach())),
        }
    }

    /// Takes back the vectors for the next body.
    fn into_vectors<'b>(self) -> Vectors<'b> {
        match self {
            State::Text(st) => st.into_vectors(),
            State::OpenMetrics(st) => st.into_vectors(),
        }
    }
}

/// The error for a body that is not UTF-8 from line `line` on.
fn utf8_error(line: usize) -> ParseError {
    ParseError::new(
        line,
        ErrorKind::Utf8,
        "invalid utf-8: body is not text".to_owned(),
    )
}

/// Splits off the lines of `bytes` before the one with the first byte that
/// is not UTF-8: returns those lines as text, and the number of that line
/// counted from `first_line`, the number of the first. All text and `None`
/// when it is all UTF-8.
fn utf8_lines(bytes: &[u8], first_line: usize) -> (&str, Option<usize>) {
    let bad = match std::str::from_utf8(bytes) {
        Ok(text) => return (text, None),
        Err(e) => e.valid_up_to(),
    };
    let valid = bytes.get(..bad).unwrap_or(&[]);
    let cut = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = first_line + valid.iter().filter(|&&b| b == b'\n').count();
    let text = std::str::from_utf8(valid.get(..cut).unwrap_or(&[])).unwrap_or("");
    (text, Some(line))
}

/// Iterates the metric families of one exposition body.
///
/// Yields `Ok(family)` for each family as soon as its last sample is read, and
/// stops after the first `Err`.
#[derive(Debug)]
pub struct Parser<'a> {
    cur: Cursor<'a>,
    state: State<'a>,
    limits: Limits,
    strict: bool,
    done: bool,
    /// Reused for the labels of each sample before they get a vector of their own.
    scratch: Vec<Label<'a>>,
}

impl<'a> Parser<'a> {
    /// Starts parsing `body` as `format`, bounded by `limits`.
    ///
    /// When the body is not UTF-8, the lines before the one with the first
    /// bad byte are parsed as usual, and then, unless one of them was an
    /// error, the last item is an error naming that line.
    pub fn new(body: &'a [u8], format: Format, limits: &Limits) -> Parser<'a> {
        let (src, bad_line) = utf8_lines(body, 1);
        Parser {
            cur: Cursor::window(src, 1, bad_line.is_none(), usize::MAX),
            state: State::new(format, src.len(), Default::default()),
            limits: *limits,
            strict: false,
            done: false,
            scratch: Vec::new(),
        }
    }

    /// Enforces every OpenMetrics 1.0 value rule, including the three the
    /// default relaxes for `client_golang` (see the module docs): no `_sum` on a
    /// histogram with negative buckets, no negative histogram or summary `_sum`,
    /// no negative quantile values. No effect on 0.0.4.
    pub fn strict(mut self) -> Parser<'a> {
        self.strict = true;
        self
    }

    /// Gives back the sample vector of a family the caller is done with: it
    /// and its samples' label vectors hold the next families' samples. musl's
    /// allocator unmaps a page as soon as the blocks on it are freed, so a
    /// scrape that frees and allocates again every family's vectors made
    /// thousands of mmap/munmap calls (a fifth of the CPU at 100k series).
    pub fn recycle(&mut self, samples: Vec<Sample<'a>>) {
        self.state.recycle(samples);
    }
}

impl<'a> Iterator for Parser<'a> {
    type Item = Result<Family<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item =
            self.state
                .next_family(&mut self.cur, &self.limits, self.strict, &mut self.scratch);
        match item {
            Some(Ok(family)) => Some(Ok(family)),
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            None => {
                self.done = true;
                // The text ends before the body: at a line that is not UTF-8.
                (!self.cur.is_last()).then(|| Err(utf8_error(self.cur.line())))
            }
        }
    }
}
