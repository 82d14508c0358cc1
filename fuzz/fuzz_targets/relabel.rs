//! Fuzzes the relabeling engine (`tern::relabel`): rules as a config would
//! give them (any pattern, template, action, separator and modulus) run
//! over label sets as a scrape would give them.
//!
//! Run: `cargo +nightly fuzz run relabel -- -max_total_time=120` (from
//! `fuzz/`).
//!
//! The input is split at `\n` into fields: the action, the regex, the
//! replacement, the target label, the separator, then label pairs
//! (`name=value`). Beyond "no panic, no hang, no large allocation": a rule
//! that compiles gives the same matches and groups through its string fast
//! paths as through the regex engine, and what `process` leaves is a set
//! of unique names with no empty value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::relabel::{process, Labels, Pattern, Rule, RuleSpec, Scratch};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\n');
    let action = fields.next().unwrap_or("").to_string();
    let regex = fields.next().unwrap_or("(.*)").to_string();
    let replacement = fields.next().unwrap_or("$1").to_string();
    let target = fields.next().unwrap_or("t").to_string();
    let separator = fields.next().unwrap_or(";").to_string();
    let pairs: Vec<(&str, &str)> = fields
        .map(|f| f.split_once('=').unwrap_or((f, "")))
        .collect();

    // The pattern alone: fast paths agree with the engine on every value.
    if let Ok(pattern) = Pattern::new(&regex) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut locs = None;
        for (n, v) in &pairs {
            for s in [*n, *v] {
                let fast = pattern.captures(s, &mut a, &mut locs);
                let slow = pattern.regex_captures(s, &mut b, &mut locs);
                assert_eq!(fast, slow, "{regex:?} on {s:?}");
                assert_eq!(pattern.is_match(s), slow, "{regex:?} on {s:?}");
                if fast {
                    assert_eq!(a, b, "{regex:?} on {s:?}");
                }
            }
        }
    }

    let sources: Vec<String> = pairs.iter().take(3).map(|(n, _)| n.to_string()).collect();
    let spec = RuleSpec {
        source_labels: Some(sources).filter(|s| !s.is_empty()),
        separator: Some(separator),
        regex: Some(regex),
        modulus: Some(data.len() as u64 % 7),
        target_label: Some(target),
        replacement: Some(replacement),
        action: Some(action),
    };
    let Ok(rule) = Rule::new(&spec) else {
        return;
    };
    let rules = [rule.clone(), rule];
    let mut scratch = Scratch::default();
    // Twice, so the second pass goes through the memos.
    for _ in 0..2 {
        let mut labels = Labels::new();
        for (n, v) in &pairs {
            labels.set(*n, *v);
        }
        if process(&rules, &mut labels, &mut scratch) {
            let mut names: Vec<&str> = labels.iter().map(|(n, _)| n).collect();
            let count = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), count, "duplicate names");
            assert!(labels.iter().all(|(_, v)| !v.is_empty()), "an empty value");
        }
    }
});
