//! Fuzzes `tern convert` (`tern::config::convert`): the YAML reader for
//! Prometheus configurations and the TOML it prints.
//!
//! Run: `cargo +nightly fuzz run convert -- -max_total_time=120` (from
//! `fuzz/`; seed it with prometheus.yml files).
//!
//! Beyond "no panic, no hang": whatever it prints is TOML that parses (the
//! text of a config that may still be refused for its values, never a
//! syntax error).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(toml) = tern::config::convert(Path::new("p.yml"), text) {
        if let Err(e) = tern::Config::parse(Path::new("t.toml"), &toml) {
            assert!(
                e.key != "" || e.position.is_none(),
                "convert printed TOML that does not parse: {e}\n{toml}"
            );
        }
    }
});
