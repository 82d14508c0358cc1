//! Prometheus relabeling: the rules of `relabel_configs` and
//! `metric_relabel_configs`, with Prometheus's names, defaults, checks and
//! semantics (its `model/relabel` package, as in 2.42), so that a block
//! copied from prometheus.yml does here what it does there.
//!
//! A [`Rule`] is checked and compiled once, when the config loads;
//! [`process`] runs a list of rules over one label set. Each rule sees the
//! labels the rules before it left; a label set to the empty string is
//! removed, as in Prometheus.

mod md5;
mod pattern;

use std::borrow::Cow;

pub use pattern::{Pattern, Spans, Template};

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sets `target_label` to `replacement`, expanded with the groups of
    /// `regex` matched against the joined source values; nothing when it
    /// does not match.
    Replace,
    /// Drops the label set unless `regex` matches the source values.
    Keep,
    /// Drops the label set when `regex` matches the source values.
    Drop,
    /// Drops the label set unless `target_label`'s value is the source values.
    KeepEqual,
    /// Drops the label set when `target_label`'s value is the source values.
    DropEqual,
    /// Sets `target_label` to the MD5 of the source values modulo `modulus`.
    HashMod,
    /// Copies each label whose name matches `regex` to the name `replacement`
    /// expands to.
    LabelMap,
    /// Removes each label whose name matches `regex`.
    LabelDrop,
    /// Removes each label whose name does not match `regex`.
    LabelKeep,
    /// Sets `target_label` to the source values in lower case.
    Lowercase,
    /// Sets `target_label` to the source values in upper case.
    Uppercase,
}

impl Action {
    const ALL: [Action; 11] = [
        Action::Replace,
        Action::Keep,
        Action::Drop,
        Action::KeepEqual,
        Action::DropEqual,
        Action::HashMod,
        Action::LabelMap,
        Action::LabelDrop,
        Action::LabelKeep,
        Action::Lowercase,
        Action::Uppercase,
    ];

    /// The action named `s`, in any case (Prometheus lowercases it).
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }

    /// The name as written in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }
}

/// Prometheus's defaults.
const DEFAULT_SEPARATOR: &str = ";";
const DEFAULT_REGEX: &str = "(.*)";
const DEFAULT_REPLACEMENT: &str = "$1";

/// A rule as written: every field optional, defaults applied by [`Rule::new`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSpec {
    /// `source_labels`.
    pub source_labels: Option<Vec<String>>,
    /// `separator`, `;` by default.
    pub separator: Option<String>,
    /// `regex`, `(.*)` by default.
    pub regex: Option<String>,
    /// `modulus`, for `hashmod`.
    pub modulus: Option<u64>,
    /// `target_label`.
    pub target_label: Option<String>,
    /// `replacement`, `$1` by default.
    pub replacement: Option<String>,
    /// `action`, `replace` by default.
    pub action: Option<String>,
}

/// Why a rule was refused: the field at fault and the reason, in
/// Prometheus's words where it has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The field to point at (`regex`, `target_label`, ...).
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// A checked, compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    action: Action,
    source_labels: Vec<String>,
    separator: String,
    regex: Pattern,
    modulus: u64,
    target_label: String,
    /// `target_label` as a template (`replace` may write `$1` in it).
    target: Template,
    replacement: Template,
    /// `hashmod`'s results as text, for moduli up to [`SHARD_NAMES`].
    shards: Vec<String>,
    serial: Serial,
}

/// Shards named in advance for `hashmod`: "0" to "255".
const SHARD_NAMES: u64 = 256;

/// A rule's identity for the memos of a [`Scratch`] (rules of a reloaded
/// config are new rules). Equal whatever the numbers: rules compare by what
/// they do.
#[derive(Debug, Clone)]
struct Serial(u64);

impl PartialEq for Serial {
    fn eq(&self, _: &Serial) -> bool {
        true
    }
}

impl Serial {
    fn next() -> Serial {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Serial(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// `^[a-zA-Z_][a-zA-Z0-9_]*$`: a label name before Prometheus 3's UTF-8 names.
pub fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Prometheus's `relabelTarget`: a label name in which `$1`, `$name` or
/// `${name}` references may stand for parts.
fn is_name_template(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    let mut first = true;
    while i < b.len() {
        let c = b[i];
        if c == b'$' {
            let rest = &b[i + 1..];
            let len = if rest.first() == Some(&b'{') {
                let name = rest[1..].iter().take_while(|c| is_word(**c)).count();
                if name == 0 || rest.get(1 + name) != Some(&b'}') {
                    return false;
                }
                name + 2
            } else {
                let name = rest.iter().take_while(|c| is_word(**c)).count();
                if name == 0 {
                    return false;
                }
                name
            };
            i += 1 + len;
        } else if c.is_ascii_alphabetic() || c == b'_' || (!first && c.is_ascii_digit()) {
            i += 1;
        } else {
            return false;
        }
        first = false;
    }
    true
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl Rule {
    /// Checks `spec` as Prometheus does and compiles it.
    pub fn new(spec: &RuleSpec) -> Result<Rule, RuleError> {
        let err = |field, reason: String| RuleError { field, reason };
        let action = match &spec.action {
            None => Action::Replace,
            Some(a) => Action::parse(a).ok_or_else(|| {
                let all: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                err(
                    "action",
                    format!(
                        "unknown relabel action {a:?}, expected one of {}",
                        all.join(", ")
                    ),
                )
            })?,
        };
        let regex_text = spec.regex.as_deref().unwrap_or(DEFAULT_REGEX);
        let regex = Pattern::new(regex_text)
            .map_err(|e| err("regex", format!("invalid regular expression: {e}")))?;
        let separator = spec.separator.as_deref().unwrap_or(DEFAULT_SEPARATOR);
        let replacement_text = spec.replacement.as_deref().unwrap_or(DEFAULT_REPLACEMENT);
        let target_label = spec.target_label.clone().unwrap_or_default();
        let modulus = spec.modulus.unwrap_or(0);
        let source_labels = spec.source_labels.clone().unwrap_or_default();
        if let Some(bad) = source_labels.iter().find(|l| !is_label_name(l)) {
            return Err(err(
                "source_labels",
                format!("{bad:?} is not a valid label name"),
            ));
        }
        let name = action.as_str();
        if action == Action::HashMod && modulus == 0 {
            return Err(err(
                "modulus",
                "relabel configuration for hashmod requires non-zero modulus".into(),
            ));
        }
        let needs_target = matches!(
            action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if needs_target && target_label.is_empty() {
            return Err(err(
                "target_label",
                format!("relabel configuration for {name} action requires 'target_label' value"),
            ));
        }
        let plain_target = matches!(
            action,
            Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if (action == Action::Replace && !is_name_template(&target_label))
            || (plain_target && !is_label_name(&target_label))
        {
            return Err(err(
                "target_label",
                format!("{target_label:?} is invalid 'target_label' for {name} action"),
            ));
        }
        if action == Action::LabelMap && !is_name_template(replacement_text) {
            return Err(err(
                "replacement",
                format!("{replacement_text:?} is invalid 'replacement' for {name} action"),
            ));
        }
        if matches!(action, Action::KeepEqual | Action::DropEqual) {
            let extra = [
                ("regex", regex_text != DEFAULT_REGEX),
                ("modulus", modulus != 0),
                ("separator", separator != DEFAULT_SEPARATOR),
                ("replacement", replacement_text != DEFAULT_REPLACEMENT),
            ];
            if let Some((field, _)) = extra.iter().find(|(_, set)| *set) {
                return Err(err(
                    field,
                    format!("{name} action requires only 'source_labels' and 'target_label', and no other fields"),
                ));
            }
        }
        if matches!(action, Action::LabelDrop | Action::LabelKeep) {
            let extra = [
                ("source_labels", spec.source_labels.is_some()),
                ("target_label", !target_label.is_empty()),
                ("modulus", modulus != 0),
                ("separator", separator != DEFAULT_SEPARATOR),
                ("replacement", replacement_text != DEFAULT_REPLACEMENT),
            ];
            if let Some((field, _)) = extra.iter().find(|(_, set)| *set) {
                return Err(err(
                    field,
                    format!("{name} action requires only 'regex', and no other fields"),
                ));
            }
        }
        let shards = if action == Action::HashMod {
            (0..modulus.min(SHARD_NAMES))
                .map(|n| n.to_string())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Rule {
            shards,
            serial: Serial::next(),
            action,
            target: Template::new(&target_label, &regex),
            replacement: Template::new(replacement_text, &regex),
            source_labels,
            separator: separator.to_string(),
            regex,
            modulus,
            target_label,
        })
    }

    /// The rule's action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Whether the rule may read or change the label called `name`: when
    /// no rule of a list may for a target's labels, a scrape need not merge
    /// them into every sample.
    pub fn may_touch(&self, name: &str) -> bool {
        self.source_labels.iter().any(|s| s == name)
            || match self.action {
                Action::Keep | Action::Drop => false,
                Action::KeepEqual
                | Action::DropEqual
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase => self.target_label == name,
                Action::LabelDrop => self.regex.is_match(name),
                Action::LabelKeep => !self.regex.is_match(name),
                Action::LabelMap => true,
                Action::Replace => self.target.as_literal().map_or(true, |t| t == name),
            }
    }
}

/// A label set being relabeled: names unique, no empty values, in no
/// particular order. Values borrowed from the input until a rule changes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels<'a> {
    items: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Labels<'a> {
    /// An empty set.
    pub fn new() -> Labels<'a> {
        Labels { items: Vec::new() }
    }

    /// Removes every label, keeping the allocation.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// The value of `name`; empty when it is not set, as in Prometheus.
    pub fn get(&self, name: &str) -> &str {
        self.items
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v)
    }

    /// Sets `name` to `value`, or removes it when `value` is empty.
    pub fn set(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        let name = name.into();
        let value = value.into();
        let at = self.items.iter().position(|(n, _)| *n == name);
        match (at, value.is_empty()) {
            (Some(i), true) => {
                self.items.swap_remove(i);
            }
            (Some(i), false) => {
                if let Some(item) = self.items.get_mut(i) {
                    item.1 = value;
                }
            }
            (None, true) => {}
            (None, false) => self.items.push((name, value)),
        }
    }

    /// Adds a label known not to be set yet (the caller's promise; a
    /// second one with the same name would shadow nothing and be kept).
    pub fn push(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        let value = value.into();
        if !value.is_empty() {
            self.items.push((name.into(), value));
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.items.retain(|(n, _)| n != name);
    }

    /// Moves every label to the end of `out`, leaving the set empty.
    pub fn drain_into(&mut self, out: &mut Vec<(Cow<'a, str>, Cow<'a, str>)>) {
        out.append(&mut self.items);
    }

    /// The labels, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The labels sorted by name, as Prometheus keeps them.
    #[cfg(test)]
    pub(crate) fn sorted(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        v.sort_unstable();
        v
    }
}

/// Buffers [`process`] reuses from one label set to the next, and what it
/// remembers of the costly steps (see [`Memo`]).
#[derive(Debug, Default)]
pub struct Scratch {
    joined: String,
    spans: Spans,
    locs: Option<regex_lite::CaptureLocations>,
    /// Label indices in name order, for `labelmap`.
    order: Vec<usize>,
    /// The serials of the rules `memos` belong to.
    rules: Vec<u64>,
    memos: Vec<Memo>,
}

/// Sets of a rule's memo, two slots each: the distinct values of a label
/// in one scrape usually number a few dozen (a family's names, paths,
/// modes), which fit with room to spare.
const MEMO_SETS: usize = 128;

/// What a rule computed for its recent inputs, by a hash of the input:
/// regex-engine matches (with their groups) and `hashmod` digests cost
/// hundreds of nanoseconds, and samples repeat the same values (a family's
/// name, a handful of paths) scrape after scrape. Two-way set associative,
/// least recently used out: a miss overwrites a slot, reusing its buffers.
#[derive(Debug, Default)]
struct Memo {
    slots: Vec<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    hash: u64,
    key: String,
    filled: bool,
    matched: bool,
    spans: Spans,
    shard: u64,
}

impl Slot {
    fn holds(&self, hash: u64, key: &str) -> bool {
        self.filled && self.hash == hash && self.key == key
    }
}

impl Memo {
    /// The slot for `key`, and whether it holds `key`'s result already.
    fn slot(&mut self, key: &str) -> (&mut Slot, bool) {
        if self.slots.is_empty() {
            self.slots.resize_with(2 * MEMO_SETS, Slot::default);
        }
        let hash = hash(key.as_bytes());
        // The remainder is below MEMO_SETS: it fits any usize.
        #[allow(clippy::cast_possible_truncation)]
        let set = (hash % MEMO_SETS as u64) as usize * 2;
        // In bounds: `set` is even and below 2 * MEMO_SETS.
        let pair = &mut self.slots[set..set + 2];
        // The first slot of a set is its most recently used.
        let hit = if pair[0].holds(hash, key) {
            true
        } else {
            pair.swap(0, 1);
            pair[0].holds(hash, key)
        };
        let slot = &mut pair[0];
        if !hit {
            slot.hash = hash;
            slot.key.clear();
            slot.key.push_str(key);
            slot.filled = true;
        }
        (slot, hit)
    }
}

/// FxHash's multiply-rotate over eight bytes at a time, then murmur3's
/// finalizer: without it, values that differ only in their last bytes
/// (`/api/v1/items/12`, `/api/v1/items/13`) share their low bits, and the
/// memo's sets. Also the outcome memory's string hash.
pub(crate) fn hash(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    for &byte in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Scratch {
    /// Makes the memos those of `rules`.
    fn prepare(&mut self, rules: &[Rule]) {
        let same = self.rules.len() == rules.len()
            && self.rules.iter().zip(rules).all(|(s, r)| *s == r.serial.0);
        if !same {
            self.rules.clear();
            self.rules.extend(rules.iter().map(|r| r.serial.0));
            self.memos.clear();
            self.memos.resize_with(rules.len(), Memo::default);
        }
    }
}

/// Runs `rules` over `labels` in order; false when a rule drops the set
/// (what is left in `labels` is then unspecified).
pub fn process<'l>(rules: &'l [Rule], labels: &mut Labels<'l>, scratch: &mut Scratch) -> bool {
    scratch.prepare(rules);
    for (i, rule) in rules.iter().enumerate() {
        if !apply(rule, i, labels, scratch) {
            return false;
        }
    }
    true
}

/// Whether `rule`'s regex matches `s`, with the groups in `spans`; through
/// the memo when the regex engine would run.
fn captures<'s>(
    rule: &Rule,
    memo: &'s mut Memo,
    s: &str,
    spans: &'s mut Spans,
    locs: &mut Option<regex_lite::CaptureLocations>,
) -> (bool, &'s Spans) {
    if rule.regex.is_fast() {
        let matched = rule.regex.captures(s, spans, locs);
        return (matched, spans);
    }
    let (slot, hit) = memo.slot(s);
    if !hit {
        slot.matched = rule.regex.captures(s, &mut slot.spans, locs);
    }
    (slot.matched, &slot.spans)
}

/// Whether `rule`'s regex matches `s`, through the memo when the regex
/// engine would run.
fn is_match(rule: &Rule, memo: &mut Memo, s: &str) -> bool {
    if rule.regex.is_fast() {
        return rule.regex.is_match(s);
    }
    let (slot, hit) = memo.slot(s);
    if !hit {
        slot.matched = rule.regex.is_match(s);
    }
    slot.matched
}

fn apply<'l>(rule: &'l Rule, i: usize, labels: &mut Labels<'l>, scratch: &mut Scratch) -> bool {
    let Scratch {
        joined,
        spans,
        locs,
        order,
        memos,
        ..
    } = scratch;
    let Some(memo) = memos.get_mut(i) else {
        return true;
    };
    // The source values joined; one source is borrowed as it is.
    let val: &str = match rule.source_labels.as_slice() {
        [one] => labels.get(one),
        many => {
            joined.clear();
            for (i, name) in many.iter().enumerate() {
                if i > 0 {
                    joined.push_str(&rule.separator);
                }
                joined.push_str(labels.get(name));
            }
            joined.as_str()
        }
    };
    match rule.action {
        Action::Drop => return !is_match(rule, memo, val),
        Action::Keep => return is_match(rule, memo, val),
        Action::DropEqual => return labels.get(&rule.target_label) != val,
        Action::KeepEqual => return labels.get(&rule.target_label) == val,
        Action::Replace => {
            let (matched, spans) = captures(rule, memo, val, spans, locs);
            if !matched {
                return true;
            }
            // A literal target was checked when the rule was made.
            let target: Cow<'l, str> = match rule.target.as_literal() {
                Some(t) => Cow::Borrowed(t),
                None => {
                    let mut t = String::new();
                    rule.target.expand(val, spans, &mut t);
                    if !is_label_name(&t) {
                        return true;
                    }
                    Cow::Owned(t)
                }
            };
            let value: Cow<'l, str> = match rule.replacement.as_literal() {
                Some(v) => Cow::Borrowed(v),
                None => {
                    let mut v = String::new();
                    rule.replacement.expand(val, spans, &mut v);
                    Cow::Owned(v)
                }
            };
            labels.set(target, value);
        }
        Action::Lowercase => {
            let value = val.to_lowercase();
            labels.set(rule.target_label.as_str(), value);
        }
        Action::Uppercase => {
            let value = val.to_uppercase();
            labels.set(rule.target_label.as_str(), value);
        }
        Action::HashMod => {
            let (slot, hit) = memo.slot(val);
            if !hit {
                let digest = md5::digest(val.as_bytes());
                let mut low = [0u8; 8];
                low.copy_from_slice(&digest[8..]);
                slot.shard = u64::from_be_bytes(low) % rule.modulus;
            }
            let shard = slot.shard;
            let value: Cow<'l, str> =
                match usize::try_from(shard).ok().and_then(|s| rule.shards.get(s)) {
                    Some(s) => Cow::Borrowed(s),
                    None => Cow::Owned(shard.to_string()),
                };
            labels.set(rule.target_label.as_str(), value);
        }
        Action::LabelMap => {
            // In name order, as Prometheus ranges over its sorted set: when
            // two labels map to one name, the later wins. By index: a label
            // set here replaces a value in place or is pushed at the end
            // (values are never empty), so the indices sorted stay valid.
            order.clear();
            order.extend(0..labels.items.len());
            order.sort_unstable_by(|a, b| labels.items[*a].0.cmp(&labels.items[*b].0));
            for &i in order.iter() {
                // Borrowed names and values are copied without allocating.
                let (name, value) = labels.items[i].clone();
                let (matched, spans) = captures(rule, memo, &name, spans, locs);
                if !matched {
                    continue;
                }
                let mut target = String::new();
                rule.replacement.expand(&name, spans, &mut target);
                labels.set(target, value);
            }
        }
        Action::LabelDrop => labels.items.retain(|(n, _)| !is_match(rule, memo, n)),
        Action::LabelKeep => labels.items.retain(|(n, _)| is_match(rule, memo, n)),
    }
    true
}

#[cfg(test)]
mod tests;
