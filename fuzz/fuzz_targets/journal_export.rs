//! Fuzzes the Journal Export Format parser
//! (`tern::sources::journald::export_format`) and the conversion of what it
//! parses into OTLP log records.
//!
//! Run: `cargo +nightly fuzz run journal_export -- -max_total_time=120`
//! (from `fuzz/`; seed `corpus/journal_export/` with the files of
//! `../../shared/testdata/journal-export`).
//!
//! The first input byte picks the limits (default or tiny, to reach every
//! limit check) and how the rest is cut into chunks. Beyond "no panic, no
//! hang, no large allocation": the entries must not depend on where the
//! stream is cut, every kept name and value must respect the grammar and the
//! limits, and the parser's memory must stay within `max_entry` and its
//! fixed tables.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::sources::journald::convert::{Batch, Converter};
use tern::sources::journald::export_format::{
    Entry, Limits, Outcome, Parser, MAX_CURSOR_LEN, MAX_FIELDS, MAX_NAME_LEN,
};

/// One entry as reported, comparable across chunkings.
type Summary = (Outcome, Option<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>, bool)>, u32);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let limits = if selector & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_field: 1 + usize::from(selector >> 4),
            max_entry: 64,
        }
    };
    let whole = run(body, limits, &[body.len()]);
    // Chunk sizes from the selector: 1..=8 bytes, or a mix.
    let step = usize::from((selector >> 1) & 7) + 1;
    let sizes: Vec<usize> = if selector & 0x80 == 0 {
        vec![step]
    } else {
        vec![step, 1, 3 * step, 2]
    };
    let chunked = run(body, limits, &sizes);
    assert_eq!(whole, chunked, "chunking changed the entries");
});

fn run(body: &[u8], limits: Limits, sizes: &[usize]) -> Vec<Summary> {
    let mut parser = Parser::new(limits);
    let converter = Converter::new(&[("k".into(), "v".into())], &["x*".into()]);
    let mut batch = Batch::new();
    let mut out = Vec::new();
    let mut on = |e: &Entry<'_>| {
        check(e, &limits);
        if e.outcome() == Outcome::Complete && !converter.excluded(e) {
            batch.add(converter.convert(e, 1), &converter);
        }
        out.push((
            e.outcome(),
            e.cursor().map(<[u8]>::to_vec),
            e.fields()
                .map(|f| (f.name.to_vec(), f.value.to_vec(), f.truncated))
                .collect(),
            e.truncated_fields(),
        ));
    };
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].max(1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        parser.feed(chunk, &mut on);
        let bound = 2 * limits.max_entry.max(64 << 10) + MAX_FIELDS * 64 + MAX_CURSOR_LEN;
        assert!(
            parser.memory() <= bound,
            "parser holds {} bytes",
            parser.memory()
        );
        rest = tail;
        i += 1;
    }
    parser.finish(&mut on);
    assert!(!parser.in_entry());
    // Encoding what was converted must not panic either.
    let request = batch.take();
    let _ = tern::otlp::encode(&request);
    out
}

fn check(e: &Entry<'_>, limits: &Limits) {
    assert!(e.size() <= limits.max_entry, "entry of {} bytes", e.size());
    if let Some(c) = e.cursor() {
        assert!(c.len() <= MAX_CURSOR_LEN);
    }
    let mut fields = 0;
    let mut truncated = 0;
    for f in e.fields() {
        fields += 1;
        assert!(!f.name.is_empty() && f.name.len() <= MAX_NAME_LEN);
        assert!(!f.name[0].is_ascii_digit());
        assert!(f
            .name
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_'));
        assert!(f.value.len() <= limits.max_field);
        if f.truncated {
            truncated += 1;
            assert_eq!(f.value.len(), limits.max_field);
        }
    }
    assert!(fields <= MAX_FIELDS);
    match e.outcome() {
        Outcome::TooLarge => assert_eq!(fields, 0),
        _ => assert_eq!(truncated, e.truncated_fields()),
    }
}
