//! The Prometheus text format 0.0.4: lines, metadata and grouping into families.
//!
//! Consecutive samples of one family form one [`Family`]. A sample joins the
//! family being built when its name fits that family's type (`_bucket`,
//! `_sum`, `_count` for histograms; the bare name, `_sum`, `_count` for
//! summaries; the bare name otherwise). Otherwise it starts a new family,
//! found as Go's parser finds it: a family of exactly that name (from an
//! earlier TYPE or HELP line), else a histogram or summary it is a suffix of,
//! else a new untyped family named after the sample. A family that comes back
//! after another one is yielded again, with the same type and help.

use std::borrow::Cow;

use super::names::{Name, NameMap};
use super::number::{self, Grammar};
use super::scan::{unescape_help, Cursor};
use super::{ErrorKind, Family, Label, Limits, MetricType, ParseError, Sample};

/// What the metadata so far says about one name.
#[derive(Debug, Default)]
struct Known<'a> {
    kind: Option<MetricType>,
    help: Option<Cow<'a, str>>,
    help_seen: bool,
    has_samples: bool,
}

/// What a sample is within its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Value,
    Bucket,
    Quantile,
    Sum,
    Count,
}

/// The family being built, with the index of its name's [`Known`] entry.
#[derive(Debug)]
struct Current<'a> {
    family: Family<'a>,
    known: usize,
}

/// Parse state across the lines of one 0.0.4 body.
#[derive(Debug)]
pub(super) struct TextState<'a> {
    /// Metadata and sample presence per family name, for the whole body.
    /// One lookup per family start; the family being built keeps its index.
    known: NameMap<'a, Known<'a>>,
    /// The family being built; it may have metadata and no samples yet.
    current: Option<Current<'a>>,
    /// An empty sample vector given back by the caller, for the next family.
    pub(super) spare: Vec<Sample<'a>>,
    /// Empty label vectors given back by the caller, for the next samples.
    pub(super) label_pool: Vec<Vec<Label<'a>>>,
}

impl<'a> TextState<'a> {
    /// State for a body of `len` bytes.
    pub(super) fn new(len: usize) -> TextState<'a> {
        // Room for the families a typical exposition of this size has (a few
        // hundred bytes each: HELP, TYPE and a few samples), so that the map
        // rarely grows; capped, so that a large body does not reserve much.
        const BYTES_PER_FAMILY: usize = 512;
        const MAX_RESERVED: usize = 4096;
        TextState {
            known: NameMap::with_capacity((len / BYTES_PER_FAMILY).min(MAX_RESERVED)),
            current: None,
            spare: Vec::new(),
            label_pool: Vec::new(),
        }
    }

    /// Reads lines until a family is complete; `None` at the end of the body.
    pub(super) fn next_family(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
        scratch: &mut Vec<Label<'a>>,
    ) -> Option<Result<Family<'a>, ParseError>> {
        loop {
            if cur.at_end() {
                return self.current.take().and_then(Current::finished).map(Ok);
            }
            match self.line(cur, limits, scratch) {
                Ok(Some(family)) => return Some(Ok(family)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Reads one line; returns the family it completed, if any.
    fn line(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
        scratch: &mut Vec<Label<'a>>,
    ) -> Result<Option<Family<'a>>, ParseError> {
        cur.skip_blanks();
        match cur.peek() {
            // Blanks and then the end of the body: nothing is lost.
            None => Ok(None),
            Some(b'\n') => cur.end_line(limits, "end of line").map(|()| None),
            Some(b'#') => self.comment(cur, limits),
            Some(_) => self.sample(cur, limits, scratch),
        }
    }

    /// Replaces the family being built; returns the old one if it has samples.
    fn replace_current(&mut self, mut family: Family<'a>, known: usize) -> Option<Family<'a>> {
        if family.samples.capacity() == 0 {
            family.samples = std::mem::take(&mut self.spare);
        }
        self.current
            .replace(Current { family, known })
            .and_then(Current::finished)
    }

    /// The index of `name`'s entry in `known`, made if new.
    fn known_index(&mut self, name: &'a str) -> usize {
        self.known.entry(Name(name), Known::default).0
    }

    /// The index of `name`'s metadata: that of the family being built when
    /// `same` (it has this name; no lookup), else from the index.
    fn known_for(&mut self, name: &'a str, same: bool) -> usize {
        match &self.current {
            Some(c) if same => c.known,
            _ => self.known_index(name),
        }
    }

    fn comment(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
    ) -> Result<Option<Family<'a>>, ParseError> {
        cur.eat(b'#');
        cur.skip_blanks();
        let keyword = cur.token(true);
        let is_help = keyword == "HELP";
        if !is_help && keyword != "TYPE" {
            cur.take_line();
            return cur.end_line(limits, "end of line").map(|()| None);
        }
        cur.skip_blanks();
        // HELP or TYPE lines without a name or without text say nothing: Go's
        // parser ignores them, and so do we.
        if matches!(cur.peek(), None | Some(b'\n')) {
            return cur.end_line(limits, "end of line").map(|()| None);
        }
        let prefix = self.current.as_ref().map(|c| c.family.name);
        let (name, rest) = cur.metric_name_after(prefix, limits)?;
        // Same name as the family being built.
        let same = rest == Some("");
        match cur.peek() {
            None | Some(b'\n') => return cur.end_line(limits, "end of line").map(|()| None),
            Some(b' ' | b'\t') => {}
            Some(_) => {
                return Err(cur.expected("a blank after the metric name"));
            }
        }
        cur.skip_blanks();
        if matches!(cur.peek(), None | Some(b'\n')) {
            return cur.end_line(limits, "end of line").map(|()| None);
        }
        let done = if is_help {
            let (text, escaped) = cur.take_line_escaped();
            let help = if escaped {
                unescape_help(text, false)
            } else {
                Cow::Borrowed(text)
            };
            self.help(cur, name, same, help)?
        } else {
            let word = cur.token(true);
            let kind = match word {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                "untyped" => MetricType::Unknown,
                _ => {
                    return Err(cur.error(ErrorKind::Metadata, "invalid metric type", Some(word)));
                }
            };
            cur.skip_blanks();
            if cur.peek() != Some(b'\n') && !cur.at_end() {
                return Err(cur.expected("end of line after the metric type"));
            }
            self.set_type(cur, name, same, kind)?
        };
        cur.end_line(limits, "end of line")?;
        Ok(done)
    }

    fn help(
        &mut self,
        cur: &Cursor<'a>,
        name: &'a str,
        same: bool,
        help: Cow<'a, str>,
    ) -> Result<Option<Family<'a>>, ParseError> {
        let index = self.known_for(name, same);
        let Some(known) = self.known.value_mut(index) else {
            return Ok(None);
        };
        if known.help_seen {
            return Err(cur.error(ErrorKind::Metadata, "duplicate help line", Some(name)));
        }
        known.help_seen = true;
        known.help = Some(help.clone());
        let kind = known.kind.unwrap_or(MetricType::Unknown);
        match self.current.as_mut() {
            Some(c) if same => {
                c.family.help = Some(help);
                Ok(None)
            }
            _ => Ok(self.replace_current(
                Family {
                    name,
                    kind,
                    help: Some(help),
                    unit: None,
                    samples: Vec::new(),
                },
                index,
            )),
        }
    }

    fn set_type(
        &mut self,
        cur: &Cursor<'a>,
        name: &'a str,
        same: bool,
        kind: MetricType,
    ) -> Result<Option<Family<'a>>, ParseError> {
        let index = self.known_for(name, same);
        let Some(known) = self.known.value_mut(index) else {
            return Ok(None);
        };
        if known.kind.is_some() {
            return Err(cur.error(ErrorKind::Metadata, "duplicate type line", Some(name)));
        }
        if known.has_samples {
            return Err(cur.error(ErrorKind::Metadata, "type line after samples", Some(name)));
        }
        known.kind = Some(kind);
        let help = known.help.clone();
        match self.current.as_mut() {
            Some(c) if same => {
                c.family.kind = kind;
                Ok(None)
            }
            _ => Ok(self.replace_current(
                Family {
                    name,
                    kind,
                    help,
                    unit: None,
                    samples: Vec::new(),
                },
                index,
            )),
        }
    }

    fn sample(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
        scratch: &mut Vec<Label<'a>>,
    ) -> Result<Option<Family<'a>>, ParseError> {
        let prefix = self.current.as_ref().map(|c| c.family.name);
        let (name, rest) = cur.metric_name_after(prefix, limits)?;
        let blanks = cur.skip_blanks();
        if cur.eat(b'{') {
            cur.labels::<true>(scratch, limits)?;
            cur.skip_blanks();
        } else {
            scratch.clear();
            if blanks == 0 {
                return Err(cur.expected("a blank or '{' after the metric name"));
            }
        }
        let token = cur.token(true);
        if token.is_empty() {
            return Err(cur.expected("a value"));
        }
        let value = number::value(token, Grammar::Text)
            .ok_or_else(|| cur.error(ErrorKind::Syntax, "invalid value", Some(token)))?;
        cur.skip_blanks();
        let timestamp_ms = match cur.peek() {
            None | Some(b'\n') => None,
            Some(_) => {
                let token = cur.token(true);
                let ts = number::text_timestamp(token).ok_or_else(|| {
                    cur.error(ErrorKind::Syntax, "invalid timestamp", Some(token))
                })?;
                cur.skip_blanks();
                if cur.peek().is_some_and(|b| b != b'\n') {
                    return Err(cur.expected("end of line after the timestamp"));
                }
                Some(ts)
            }
        };
        if cur.at_end() {
            return Err(cur.error(
                ErrorKind::Eof,
                "unexpected end of input: last line has no newline",
                None,
            ));
        }

        let joined = match (&self.current, rest) {
            (Some(c), Some(rest)) => role(c.family.kind, rest),
            _ => None,
        };
        let (done, role) = match joined {
            Some(role) => (None, role),
            None => {
                let (family_name, kind, role) = self.resolve(name);
                let index = self.known_index(family_name);
                let help = self.known.value(index).and_then(|k| k.help.clone());
                let family = Family {
                    name: family_name,
                    kind,
                    help,
                    unit: None,
                    samples: Vec::new(),
                };
                (self.replace_current(family, index), role)
            }
        };
        check_role(cur, role, scratch)?;
        let labels = take_labels(scratch, &mut self.label_pool);
        if let Some(c) = self.current.as_mut() {
            if c.family.samples.len() >= limits.max_family_samples {
                return Err(cur.limit_error(
                    "too many samples in one family",
                    c.family.samples.len() + 1,
                    limits.max_family_samples,
                ));
            }
            if c.family.samples.is_empty() {
                if let Some(known) = self.known.value_mut(c.known) {
                    known.has_samples = true;
                }
            }
            c.family.samples.push(Sample {
                name,
                labels,
                value,
                timestamp_ms,
            });
        }
        cur.end_line(limits, "end of line")?;
        Ok(done)
    }

    /// Finds the family a sample starts, as Go's parser does.
    fn resolve(&self, name: &'a str) -> (&'a str, MetricType, Role) {
        let known = |name: &'a str| {
            self.known
                .get(&Name(name))
                .and_then(|i| self.known.value(i))
        };
        if let Some(known) = known(name) {
            let kind = known.kind.unwrap_or(MetricType::Unknown);
            if let Some(role) = role(kind, "") {
                return (name, kind, role);
            }
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            let Some(kind) = known(base).and_then(|k| k.kind) else {
                continue;
            };
            if let Some(role) = role(kind, suffix) {
                return (base, kind, role);
            }
        }
        (name, MetricType::Unknown, Role::Value)
    }
}

impl<'a> Current<'a> {
    /// The family, if it has samples (one with only metadata is dropped).
    fn finished(self) -> Option<Family<'a>> {
        (!self.family.samples.is_empty()).then_some(self.family)
    }
}

/// Moves the labels out of `scratch` into a vector of their own: one from
/// `pool` (given back through `Parser::recycle`) when there is one, else one
/// sized exactly.
pub(super) fn take_labels<'a>(
    scratch: &mut Vec<Label<'a>>,
    pool: &mut Vec<Vec<Label<'a>>>,
) -> Vec<Label<'a>> {
    if scratch.is_empty() {
        return Vec::new();
    }
    let mut labels = match pool.pop() {
        Some(reused) => reused,
        None => Vec::with_capacity(scratch.len()),
    };
    labels.append(scratch);
    labels
}

/// The most label vectors kept for reuse: a family's worth for typical
/// exporters, bounded so that one huge family does not pin its memory.
pub(super) const LABEL_POOL_MAX: usize = 4096;

/// Takes the label vectors out of `samples` into `pool` (emptied, up to
/// [`LABEL_POOL_MAX`]), then empties `samples`.
pub(super) fn recycle_samples<'a>(samples: &mut Vec<Sample<'a>>, pool: &mut Vec<Vec<Label<'a>>>) {
    for sample in samples.iter_mut() {
        if pool.len() >= LABEL_POOL_MAX {
            break;
        }
        if sample.labels.capacity() > 0 {
            let mut labels = std::mem::take(&mut sample.labels);
            labels.clear();
            pool.push(labels);
        }
    }
    samples.clear();
}

/// The role of a sample named the family's name plus `rest`, in a family of
/// type `kind`, if it belongs.
fn role(kind: MetricType, rest: &str) -> Option<Role> {
    if rest.is_empty() {
        return match kind {
            MetricType::Histogram => None,
            MetricType::Summary => Some(Role::Quantile),
            _ => Some(Role::Value),
        };
    }
    match (kind, rest) {
        (MetricType::Histogram | MetricType::Summary, "_sum") => Some(Role::Sum),
        (MetricType::Histogram | MetricType::Summary, "_count") => Some(Role::Count),
        (MetricType::Histogram, "_bucket") => Some(Role::Bucket),
        _ => None,
    }
}

/// Checks the labels a histogram bucket or summary quantile needs.
fn check_role(cur: &Cursor<'_>, role: Role, labels: &[Label<'_>]) -> Result<(), ParseError> {
    let (label, what) = match role {
        Role::Bucket => ("le", "histogram bucket"),
        Role::Quantile => ("quantile", "summary quantile"),
        Role::Value | Role::Sum | Role::Count => return Ok(()),
    };
    let Some(l) = labels.iter().find(|l| l.name == label) else {
        let message = format!("{what} without {label} label");
        return Err(cur.error(ErrorKind::Semantic, &message, None));
    };
    if number::value(&l.value, Grammar::Text).is_none() {
        let message = format!("invalid {label} label value");
        return Err(cur.error(ErrorKind::Semantic, &message, Some(&l.value)));
    }
    Ok(())
}
