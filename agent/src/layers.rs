//! Holds the dependency order written in the crate docs (lib.rs): reads every
//! `crate::` path in every file under `src/` and fails on one that points at
//! a module on the same line of that order or below its own; and keeps ureq
//! inside the HTTP client.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The order of lib.rs, bottom first: a module may use the modules of the
/// lines before its own, never those of its own line or after it.
const LAYERS: &[&[&str]] = &[
    &["tempdir"],
    &["lifecycle", "otlp", "relabel"],
    &["queue"],
    &["telemetry"],
    &["http"],
    &["config"],
    &["route"],
    &["sources", "export"],
    &["agent"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names through `crate::`, in
/// `crate::a::b` and `crate::{a, b::c}` forms.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        // `$crate::` and `super::crate` do not occur; a longer identifier
        // ending in "crate" (`my_crate::`) is not a crate path.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            let mut depth = 0usize;
            let mut start = 0usize;
            for (j, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth = depth.saturating_sub(1),
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            out.insert(ident(group[start..end].trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

#[test]
fn modules_import_only_the_layers_below_their_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("a file under src/");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a path of UTF-8 names");
        let module = first.trim_end_matches(".rs");
        // The crate root, the binary and the unit tests' own helpers.
        if matches!(module, "lib" | "main" | "layers" | "tempdir") {
            continue;
        }
        let own = layer_of(module).unwrap_or_else(|| {
            panic!("{module}: a new top-level module: give it a line in LAYERS and lib.rs")
        });
        let text = std::fs::read_to_string(file).expect("a readable source file");
        for used in crate_paths(&text) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(layer) if layer < own => {}
                _ => wrong.push(format!("{}: uses crate::{used}", relative.display())),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the order of lib.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn ureq_is_named_in_the_http_client_alone() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let naming: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .expect("a readable source file")
                .contains(concat!("ureq", "::"))
        })
        .map(|f| f.strip_prefix(&src).unwrap_or(f).display().to_string())
        .collect();
    assert_eq!(naming, ["http/client.rs"]);
}

#[test]
fn finds_every_form_of_crate_path() {
    let text = "use crate::queue::{Lane, Signal};\nuse crate::{config::Config, otlp};\n\
                let x = crate::route::split(a); // my_crate::nope\n";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["config", "otlp", "queue", "route"]);
}
