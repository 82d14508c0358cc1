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
//!
//! What is known about each name outlives the window of the body it was read
//! in, so it is owned. The family being built borrows its window; when a
//! window ends before the family does, [`TextState::rewind`] undoes what the
//! family changed and tells where it started, so that it is read again, whole,
//! from the next window.

use std::borrow::Cow;

use super::names::NameMap;
use super::number::{self, Grammar};
use super::scan::{unescape_help, Cursor};
use super::{ErrorKind, Family, Label, Limits, MetricType, ParseError, Sample};

/// What the metadata so far says about one name.
#[derive(Debug, Default)]
struct Known {
    kind: Option<MetricType>,
    /// Invariant: `Some` only when `help_seen` (both are set by the one HELP
    /// line a name may have).
    help: Option<Box<str>>,
    help_seen: bool,
    has_samples: bool,
}

/// Where the family being built started, and what its first line found in
/// `known`, so that [`TextState::rewind`] can undo the family.
#[derive(Debug, Default, Clone, Copy)]
struct Start {
    /// Offset in the window of the family's first line.
    offset: usize,
    /// Line number of that line.
    line: usize,
    /// The family's entry in `known`.
    known: usize,
    /// True when that line made the entry.
    made: bool,
    /// The entry's fields before that line (`help` follows `help_seen`).
    kind: Option<MetricType>,
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
    known: NameMap<Known>,
    /// The family being built; it may have metadata and no samples yet.
    current: Option<Current<'a>>,
    /// Where `current` started (stale while `current` is `None`).
    start: Start,
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
            start: Start::default(),
            spare: Vec::new(),
            label_pool: Vec::new(),
        }
    }

    /// Reads lines until a family is complete; `None` at the end of the body,
    /// or of a window that is not the last, or where the cursor says to pause.
    /// The family being built is finished only at the end of the body.
    pub(super) fn next_family(
        &mut self,
        cur: &mut Cursor<'a>,
        limits: &Limits,
        scratch: &mut Vec<Label<'a>>,
    ) -> Option<Result<Family<'a>, ParseError>> {
        loop {
            if cur.at_end() {
                if !cur.is_last() {
                    return None;
                }
                return self.current.take().and_then(Current::finished).map(Ok);
            }
            // Only right after a family's first line: then the next window
            // reads that one line again.
            // (The cursor's check first: it is false all along a whole body.)
            if cur.may_pause(self.start.offset)
                && self.current.is_some()
                && self.start.line + 1 == cur.line()
            {
                return None;
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

    /// Starts a family named `name` on the cursor's line: the index of its
    /// entry in `known`, made if new. Records what [`TextState::rewind`]
    /// needs, so it must come before the line changes the entry.
    fn start_family(&mut self, cur: &Cursor<'a>, name: &str) -> usize {
        let (index, made) = self.known.entry(name, Known::default);
        let before = self.known.value(index);
        self.start = Start {
            offset: cur.line_start(),
            line: cur.line(),
            known: index,
            made,
            kind: before.and_then(|k| k.kind),
            help_seen: before.is_some_and(|k| k.help_seen),
            has_samples: before.is_some_and(|k| k.has_samples),
        };
        index
    }

    /// The index of `name`'s metadata: that of the family being built when
    /// `same` (it has this name; no lookup), else that of a family started here.
    fn known_for(&mut self, cur: &Cursor<'a>, name: &'a str, same: bool) -> usize {
        match &self.current {
            Some(c) if same => c.known,
            _ => self.start_family(cur, name),
        }
    }

    /// Ends a window that is not the last, where [`TextState::next_family`]
    /// returned `None`: drops the family being built and undoes what it
    /// changed. Returns the offset in the window and the line number where
    /// the next window must start: that family's first line, or the cursor.
    pub(super) fn rewind(&mut self, cur: &Cursor<'a>) -> (usize, usize) {
        let Some(c) = self.current.take() else {
            return (cur.pos(), cur.line());
        };
        let s = self.start;
        if s.made {
            self.known.truncate(s.known);
        } else if let Some(k) = self.known.value_mut(s.known) {
            k.kind = s.kind;
            k.has_samples = s.has_samples;
            if !s.help_seen {
                k.help_seen = false;
                k.help = None;
            }
        }
        let mut samples = c.family.samples;
        recycle_samples(&mut samples, &mut self.label_pool);
        self.spare = samples;
        (s.offset, s.line)
    }

    /// The same state for another window. The family being built, if any,
    /// is dropped: call [`TextState::rewind`] first.
    pub(super) fn detach<'b>(mut self) -> TextState<'b> {
        self.give_back_current();
        TextState {
            known: self.known,
            current: None,
            start: self.start,
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

    /// Puts the vectors of the family being built, if any, with the spare ones.
    fn give_back_current(&mut self) {
        if let Some(c) = self.current.take() {
            let mut samples = c.family.samples;
            recycle_samples(&mut samples, &mut self.label_pool);
            if samples.capacity() > self.spare.capacity() {
                self.spare = samples;
            }
        }
    }

    /// A state for a new body that reuses `vectors` (from
    /// [`TextState::into_vectors`]).
    pub(super) fn with_vectors(
        len: usize,
        (spare, label_pool): (Vec<Sample<'a>>, Vec<Vec<Label<'a>>>),
    ) -> TextState<'a> {
        TextState {
            spare,
            label_pool,
            ..TextState::new(len)
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
        let index = self.known_for(cur, name, same);
        let Some(known) = self.known.value_mut(index) else {
            return Ok(None);
        };
        if known.help_seen {
            return Err(cur.error(ErrorKind::Metadata, "duplicate help line", Some(name)));
        }
        known.help_seen = true;
        // Owned: a family of this name may come back after this window.
        known.help = Some(help.as_ref().into());
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
        let index = self.known_for(cur, name, same);
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
        let help = owned_help(known);
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
                let index = self.start_family(cur, family_name);
                let help = self.known.value(index).and_then(owned_help);
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
        let known = |name: &'a str| self.known.get(name).and_then(|i| self.known.value(i));
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

/// The HELP text known for a name, for a family that starts without a HELP line.
fn owned_help<'a>(known: &Known) -> Option<Cow<'a, str>> {
    known.help.as_deref().map(|h| Cow::Owned(h.to_owned()))
}

/// An empty vector of another lifetime on the same allocation: a vector of
/// labels or samples of one window, emptied, for the next window. (Collecting
/// an emptied `into_iter` reuses its allocation when the element layouts are
/// equal, as here; a test holds that.)
pub(super) fn reuse<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// [`reuse`] for each vector of `pool` (whose vectors are empty) and the pool.
pub(super) fn reuse_all<T, U>(pool: Vec<Vec<T>>) -> Vec<Vec<U>> {
    pool.into_iter().map(reuse).collect()
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
