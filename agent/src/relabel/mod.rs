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
        Ok(Rule {
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

    /// Whether the rule may change the label called `name` (or any label).
    pub fn may_write(&self, name: &str) -> bool {
        match self.action {
            Action::Keep | Action::Drop | Action::KeepEqual | Action::DropEqual => false,
            Action::LabelMap | Action::LabelDrop | Action::LabelKeep => true,
            Action::Replace => self.target.as_literal().map_or(true, |t| t == name),
            Action::HashMod | Action::Lowercase | Action::Uppercase => self.target_label == name,
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
    pub fn sorted(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }
}

/// Buffers [`process`] reuses from one label set to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    joined: String,
    spans: Spans,
    locs: Option<regex_lite::CaptureLocations>,
    names: Vec<String>,
}

/// Runs `rules` over `labels` in order; false when a rule drops the set
/// (what is left in `labels` is then unspecified).
pub fn process(rules: &[Rule], labels: &mut Labels<'_>, scratch: &mut Scratch) -> bool {
    rules.iter().all(|rule| apply(rule, labels, scratch))
}

fn apply(rule: &Rule, labels: &mut Labels<'_>, scratch: &mut Scratch) -> bool {
    let Scratch {
        joined,
        spans,
        locs,
        names,
    } = scratch;
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
        Action::Drop => return !rule.regex.is_match(val),
        Action::Keep => return rule.regex.is_match(val),
        Action::DropEqual => return labels.get(&rule.target_label) != val,
        Action::KeepEqual => return labels.get(&rule.target_label) == val,
        Action::Replace => {
            if !rule.regex.captures(val, spans, locs) {
                return true;
            }
            let mut target = String::new();
            rule.target.expand(val, spans, &mut target);
            if !is_label_name(&target) {
                return true;
            }
            let mut value = String::new();
            rule.replacement.expand(val, spans, &mut value);
            labels.set(target, value);
        }
        Action::Lowercase => {
            let value = val.to_lowercase();
            labels.set(rule.target_label.clone(), value);
        }
        Action::Uppercase => {
            let value = val.to_uppercase();
            labels.set(rule.target_label.clone(), value);
        }
        Action::HashMod => {
            let digest = md5::digest(val.as_bytes());
            let mut low = [0u8; 8];
            low.copy_from_slice(&digest[8..]);
            let shard = u64::from_be_bytes(low) % rule.modulus;
            labels.set(rule.target_label.clone(), shard.to_string());
        }
        Action::LabelMap => {
            // Over a sorted copy of the names, as Prometheus ranges over its
            // sorted set: when two labels map to one name, the later wins.
            names.clear();
            names.extend(labels.iter().map(|(n, _)| n.to_string()));
            names.sort();
            for name in names.iter() {
                if !rule.regex.captures(name, spans, locs) {
                    continue;
                }
                let mut target = String::new();
                rule.replacement.expand(name, spans, &mut target);
                let value = labels.get(name).to_string();
                labels.set(target, value);
            }
        }
        Action::LabelDrop => labels.items.retain(|(n, _)| !rule.regex.is_match(n)),
        Action::LabelKeep => labels.items.retain(|(n, _)| rule.regex.is_match(n)),
    }
    true
}

#[cfg(test)]
mod tests;
