//! What a job's `metric_relabel_configs` made of each series of a target's
//! last good scrape, so that a steady target runs its rules once per
//! series, not once per sample: the rules see only a sample's name and
//! labels and the target's labels, so the same series gets the same
//! outcome every time (Prometheus's scrape cache does the same).
//!
//! Kept compactly: per series its input hash and a 24-byte [`Outcome`] (which
//! input labels stay, and ids of what the rules made, interned once in
//! [`Strings`]), about 2.4 MB at 100k series. Exporters write their series in
//! the same order every scrape, so a series is first looked for where it was
//! last time (one comparison, memory read in order) and only then by its hash;
//! nothing is copied until the scrape first differs (as `stale.rs` does).

use super::parse::{HashKeyed, Sample};
use super::stale::to_u32;

/// Ids or positions by hash.
type ByHash = HashKeyed<u32>;

/// What the rules did to one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    /// The input series' hash (`series_hash`).
    hash: u64,
    /// Which of its first 32 labels go on the point as they are.
    kept: u32,
    /// The name it goes out under: [`SAME`] for its own, else a string id.
    name: u32,
    /// Its other labels: a list id in [`Strings`] ([`EMPTY`]: none).
    extra: u32,
    /// Its label count (at most 255), a check beside the hash.
    labels: u8,
    dropped: bool,
}

/// [`Outcome::name`] for a series that keeps its name.
const SAME: u32 = u32::MAX;
/// The empty label list: always list 0.
const EMPTY: u32 = 0;

/// Input labels past this many go on the point through the interned list.
const MASKED: usize = 32;

impl Outcome {
    /// A series the rules dropped.
    pub(super) fn dropped() -> Outcome {
        Outcome {
            hash: 0,
            kept: 0,
            name: SAME,
            extra: EMPTY,
            labels: 0,
            dropped: true,
        }
    }

    /// A kept series, built from the labels the rules left on its point
    /// (the target's own, which go on the resource, left out already) and
    /// its name; ids from `strings`, `pairs` a buffer.
    pub(super) fn kept<'a>(
        sample: &Sample<'_>,
        name: &str,
        labels: impl Iterator<Item = (&'a str, &'a str)>,
        strings: &mut Strings,
        pairs: &mut Vec<u32>,
    ) -> Outcome {
        let mut kept = 0u32;
        pairs.clear();
        for (n, v) in labels {
            let at = sample
                .labels
                .iter()
                .take(MASKED)
                .position(|l| l.name == n && l.value == v);
            match at {
                Some(i) => kept |= 1 << i,
                None => {
                    pairs.push(strings.intern(n));
                    pairs.push(strings.intern(v));
                }
            }
        }
        Outcome {
            hash: 0,
            kept,
            name: if name == sample.name {
                SAME
            } else {
                strings.intern(name)
            },
            extra: strings.list(pairs),
            labels: 0,
            dropped: false,
        }
    }

    /// The name `sample` goes out under; None when it was dropped.
    pub(super) fn name<'s>(&self, sample: &Sample<'s>, strings: &'s Strings) -> Option<&'s str> {
        match (self.dropped, self.name) {
            (true, _) => None,
            (false, SAME) => Some(sample.name),
            (false, id) => Some(strings.get(id)),
        }
    }

    /// Appends the labels that go on `sample`'s point to `out`: its own
    /// that stay, in their order, then those the rules made.
    pub(super) fn labels<'s>(
        &self,
        sample: &'s Sample<'_>,
        strings: &'s Strings,
        out: &mut Vec<(&'s str, &'s str)>,
    ) {
        let mut kept = self.kept;
        while kept != 0 {
            let i = kept.trailing_zeros() as usize;
            kept &= kept - 1;
            if let Some(l) = sample.labels.get(i) {
                out.push((l.name, l.value.as_ref()));
            }
        }
        out.extend(strings.pairs(self.extra));
    }
}

/// Strings the rules made (names, values, new label names) and lists of
/// labels, each stored once.
#[derive(Debug)]
pub(super) struct Strings {
    text: String,
    spans: Vec<(u32, u32)>,
    ids: ByHash,
    /// Label lists: string ids, a name then its value, back to back.
    items: Vec<u32>,
    lists: Vec<(u32, u32)>,
    list_ids: ByHash,
}

impl Default for Strings {
    fn default() -> Strings {
        Strings {
            text: String::new(),
            spans: Vec::new(),
            ids: ByHash::default(),
            items: Vec::new(),
            // List 0 is the empty one.
            lists: vec![(0, 0)],
            list_ids: ByHash::default(),
        }
    }
}

impl Strings {
    /// The id of `s`, stored when new. Two strings with one hash are both
    /// stored, the second without an entry in the map (it is stored again
    /// each time: the bound in [`Outcomes::finish`] covers that).
    fn intern(&mut self, s: &str) -> u32 {
        let hash = crate::relabel::hash(s.as_bytes());
        if let Some(&id) = self.ids.get(&hash) {
            if self.get(id) == s {
                return id;
            }
        }
        let id = to_u32(self.spans.len());
        self.spans.push((to_u32(self.text.len()), to_u32(s.len())));
        self.text.push_str(s);
        self.ids.entry(hash).or_insert(id);
        id
    }

    fn list(&mut self, ids: &[u32]) -> u32 {
        if ids.is_empty() {
            return EMPTY;
        }
        let mut key = Vec::with_capacity(ids.len() * 4);
        for id in ids {
            key.extend_from_slice(&id.to_le_bytes());
        }
        let hash = crate::relabel::hash(&key);
        if let Some(&list) = self.list_ids.get(&hash) {
            if self.list_items(list) == ids {
                return list;
            }
        }
        let list = to_u32(self.lists.len());
        self.lists
            .push((to_u32(self.items.len()), to_u32(ids.len())));
        self.items.extend_from_slice(ids);
        self.list_ids.entry(hash).or_insert(list);
        list
    }

    fn get(&self, id: u32) -> &str {
        let (at, len) = self.spans.get(id as usize).copied().unwrap_or((0, 0));
        self.text
            .get(at as usize..(at as usize + len as usize))
            .unwrap_or("")
    }

    fn list_items(&self, list: u32) -> &[u32] {
        let (at, len) = self.lists.get(list as usize).copied().unwrap_or((0, 0));
        self.items
            .get(at as usize..(at as usize + len as usize))
            .unwrap_or(&[])
    }

    fn pairs(&self, list: u32) -> impl Iterator<Item = (&str, &str)> {
        self.list_items(list)
            .chunks_exact(2)
            .map(|p| (self.get(p[0]), self.get(p[1])))
    }

    /// How many strings and lists are stored.
    pub(super) fn len(&self) -> usize {
        self.spans.len() + self.lists.len()
    }
}

/// The outcomes of one target's series: those of its last good scrape, and
/// the scrape going on.
#[derive(Debug, Default)]
pub(super) struct Outcomes {
    /// Whether outcomes are kept from one scrape to the next (jobs with
    /// rules); otherwise each is worked out and forgotten.
    keep: bool,
    /// The last good scrape's, in exposition order.
    last: Vec<Outcome>,
    /// This scrape's, from its first series once it differs from `last`.
    next: Vec<Outcome>,
    /// Whether this scrape has differed from `last` yet.
    diverged: bool,
    /// Series seen so far in this scrape.
    seen: usize,
    /// Where in `last` the next series is expected.
    cursor: usize,
    /// Positions in `last` by hash, made when a series is not where expected.
    index: Option<ByHash>,
    strings: Strings,
    /// Series whose rules ran in this scrape (the rest were remembered).
    computed: usize,
}

impl Outcomes {
    /// Outcomes for a target of a job with rules (`keep`) or without.
    pub(super) fn new(keep: bool) -> Outcomes {
        Outcomes {
            keep,
            ..Outcomes::default()
        }
    }

    /// The outcome of the series `sample`, hashed by `hash`: the one
    /// remembered, or `compute`'s, which is remembered. Targets that keep
    /// nothing do not hash.
    pub(super) fn outcome<E>(
        &mut self,
        sample: &Sample<'_>,
        hash: impl FnOnce(&Sample<'_>) -> u64,
        compute: impl FnOnce(&mut Strings) -> Result<Outcome, E>,
    ) -> Result<Outcome, E> {
        let labels = u8::try_from(sample.labels.len()).unwrap_or(u8::MAX);
        let at = self.seen;
        self.seen += 1;
        let hash = if self.keep { hash(sample) } else { 0 };
        let found = if self.keep {
            self.find(hash, labels)
        } else {
            None
        };
        let outcome = match found {
            // Where it was, and everything before it too: nothing to note.
            Some((pos, outcome)) if pos == at && !self.diverged => return Ok(outcome),
            Some((_, outcome)) => outcome,
            None => {
                self.computed += 1;
                let mut outcome = compute(&mut self.strings)?;
                outcome.hash = hash;
                outcome.labels = labels;
                outcome
            }
        };
        if self.keep {
            if !self.diverged {
                self.diverged = true;
                self.next.clear();
                self.next
                    .extend_from_slice(self.last.get(..at).unwrap_or(&self.last));
            }
            self.next.push(outcome);
        }
        Ok(outcome)
    }

    /// Where `hash` was in the last good scrape, and its outcome.
    fn find(&mut self, hash: u64, labels: u8) -> Option<(usize, Outcome)> {
        let is = |o: &Outcome| o.hash == hash && o.labels == labels;
        let pos = match self.last.get(self.cursor) {
            Some(o) if is(o) => self.cursor,
            _ => {
                let last = &self.last;
                let index = self.index.get_or_insert_with(|| {
                    let mut index = ByHash::default();
                    index.reserve(last.len());
                    for (i, o) in last.iter().enumerate() {
                        index.entry(o.hash).or_insert(to_u32(i));
                    }
                    index
                });
                let pos = *index.get(&hash)? as usize;
                self.last.get(pos).filter(|o| is(o))?;
                pos
            }
        };
        // The next series is most likely the one after it.
        self.cursor = pos + 1;
        self.last.get(pos).map(|o| (pos, *o))
    }

    /// The strings outcomes refer to.
    pub(super) fn strings(&self) -> &Strings {
        &self.strings
    }

    /// Ends a scrape: a good one's outcomes are remembered, a failed one's
    /// forgotten. Strings no outcome needs any more are let go by starting
    /// over when there are more than twice as many as series (plus 1024).
    pub(super) fn finish(&mut self, good: bool) {
        if good && self.keep {
            if self.diverged {
                std::mem::swap(&mut self.last, &mut self.next);
            } else {
                self.last.truncate(self.seen);
            }
        }
        self.next = Vec::new();
        self.index = None;
        self.diverged = false;
        self.seen = 0;
        self.cursor = 0;
        if !self.keep || self.strings.len() > 2 * self.last.len() + 1024 {
            self.last.clear();
            self.strings = Strings::default();
        }
    }

    /// Series whose rules ran in the scrape going on (or the last one
    /// after [`Outcomes::finish`] until the next starts).
    #[cfg(test)]
    pub(super) fn computed(&self) -> usize {
        self.computed
    }

    /// Starts counting [`Outcomes::computed`] again.
    #[cfg(test)]
    pub(super) fn reset_computed(&mut self) {
        self.computed = 0;
    }

    /// The outcomes remembered.
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.last.len()
    }
}
