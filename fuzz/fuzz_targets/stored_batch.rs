//! Fuzzes the reading of stored batches (`tern::otlp::decompress`, the codec
//! told by the first bytes: gzip members or zstd frames, several in a row) and
//! the 413 split that decodes them (`tern::route::split::halve`).
//!
//! Run: `cargo +nightly fuzz run stored_batch -- -max_total_time=60` (from
//! `fuzz/`; seed `corpus/stored_batch/` with batches from a queue directory,
//! or gzip and zstd files of OTLP protobuf requests).
//!
//! The first input byte picks the signal; the rest is the stored payload.
//! Beyond "no panic, no hang, bounded memory": what decompresses is within the
//! limit, and a payload that does not decompress is refused by `halve` too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::otlp::{decompress, GunzipError};
use tern::queue::Signal;
use tern::route::split::{halve, Halved};

/// Small, so that the limit is reached too.
const LIMIT: usize = 256 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    match decompress(payload, LIMIT) {
        Ok(raw) => assert!(raw.len() <= LIMIT),
        Err(GunzipError::TooLarge { limit }) => assert_eq!(limit, LIMIT),
        Err(_) => {}
    }
    let signal = match selector % 3 {
        0 => Signal::Traces,
        1 => Signal::Logs,
        _ => Signal::Metrics,
    };
    if let Ok(Halved::Two(a, b)) = halve(signal, payload) {
        for half in [a, b] {
            assert!(decompress(&half.encoded.payload, usize::MAX).is_ok());
        }
    }
});
