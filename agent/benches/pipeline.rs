//! CPU per sample of tern's scrape pipeline without the network: parse,
//! convert to OTLP, encode and compress one body of synthetic series, many times;
//! with the body whole in memory (`Parser`) and streamed through a 256 KiB
//! window in 16 KiB reads, as a socket gives it (`Stream`).
//!
//! Run: `cargo bench -p tern --bench pipeline -- [SERIES] [ROUNDS]` (default
//! 100000 series, 20 rounds); `TERN_BENCH_COMPRESSION=zstd` compresses with
//! zstd level 1 instead of gzip. Profile with
//! `perf record -e cpu-clock -g target/release/deps/pipeline-* 100000 20`.

use std::io::Read;
use std::time::Instant;

use tern::sources::prometheus::convert::{Builder, TargetInfo};
use tern::sources::prometheus::parse::{Format, Limits, Parser, Stream};

/// The window of the streamed passes.
const WINDOW: usize = 256 * 1024;

/// Gives a body in reads of at most 16 KiB.
struct Pieces<'a>(&'a [u8]);

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len()).min(16 * 1024);
        let (piece, rest) = self.0.split_at(n);
        buf.get_mut(..n).unwrap_or(&mut []).copy_from_slice(piece);
        self.0 = rest;
        Ok(n)
    }
}

/// A body like the side-by-side benchmark's synthetic exporter: families of
/// 100 series with four labels, counters and gauges alternating.
fn body(series: usize) -> Vec<u8> {
    let methods = ["GET", "POST", "PUT", "DELETE"];
    let mut out = String::with_capacity(series * 130);
    for i in 0..series {
        let f = i / 100;
        let j = i % 100;
        let counter = f % 2 == 0;
        let name = if counter {
            format!("bench_http_requests_{f:04}_total")
        } else {
            format!("bench_http_inflight_requests_{f:04}")
        };
        if j == 0 {
            let kind = if counter { "counter" } else { "gauge" };
            out.push_str(&format!(
                "# HELP {name} Requests of the synthetic service.\n# TYPE {name} {kind}\n"
            ));
        }
        out.push_str(&format!(
            "{name}{{instance_id=\"i-0a1b2c3d4e5f{:05}\",path=\"/api/v1/items/{}\",method=\"{}\",code=\"200\"}} {}\n",
            f % 64,
            j % 25,
            methods[(j / 25) % 4],
            i * 7
        ));
    }
    out.into_bytes()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let series = args.first().copied().unwrap_or(100_000);
    let rounds = args.get(1).copied().unwrap_or(20);
    if std::env::var("TERN_BENCH_COMPRESSION").as_deref() == Ok("zstd") {
        tern::otlp::set_store_codec(tern::otlp::Codec::Zstd, 1);
    }
    let body = body(series);
    let limits = Limits::default();
    let target = TargetInfo {
        job: "bench".into(),
        instance: "127.0.0.1:9100".into(),
        scheme: "http".into(),
        extra: Vec::new(),
    };

    let started = Instant::now();
    let mut samples = 0usize;
    for _ in 0..rounds {
        for family in Parser::new(&body, Format::PrometheusText, &limits) {
            samples += family.map_or(0, |f| f.samples.len());
        }
    }
    let parse = started.elapsed().as_secs_f64() / samples as f64;

    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..rounds {
        let mut builder = Builder::new(target.resource(&[]), 1);
        for family in Parser::new(&body, Format::PrometheusText, &limits).flatten() {
            builder.family(&family, false);
        }
        bytes += builder
            .finish()
            .iter()
            .map(|(e, _)| e.payload.len())
            .sum::<usize>();
    }
    let full = started.elapsed().as_secs_f64() / samples as f64;
    println!(
        "{series} series x {rounds} rounds, body {} bytes: parse {:.0} ns/sample, parse+convert+encode+compress {:.0} ns/sample, {:.1} compressed bytes/sample",
        body.len(),
        parse * 1e9,
        full * 1e9,
        bytes as f64 / samples as f64
    );

    let mut stream = Stream::new(WINDOW);
    let started = Instant::now();
    let mut streamed = 0usize;
    for _ in 0..rounds {
        let result = stream.parse(Pieces(&body), Format::PrometheusText, &limits, |f| {
            streamed += f.samples.len();
        });
        if let Err(e) = result {
            panic!("the synthetic body does not parse: {e}");
        }
    }
    assert_eq!(streamed, samples, "samples streamed");
    let stream_parse = started.elapsed().as_secs_f64() / samples as f64;

    let started = Instant::now();
    let mut stream_bytes = 0usize;
    for _ in 0..rounds {
        let mut builder = Builder::new(target.resource(&[]), 1);
        let result = stream.parse(Pieces(&body), Format::PrometheusText, &limits, |f| {
            builder.family(f, false);
        });
        if let Err(e) = result {
            panic!("the synthetic body does not parse: {e}");
        }
        stream_bytes += builder
            .finish()
            .iter()
            .map(|(e, _)| e.payload.len())
            .sum::<usize>();
    }
    assert_eq!(stream_bytes, bytes, "compressed bytes streamed");
    let stream_full = started.elapsed().as_secs_f64() / samples as f64;
    println!(
        "streamed through a {} KiB window (peak {} KiB): parse {:.0} ns/sample, parse+convert+encode+compress {:.0} ns/sample",
        WINDOW / 1024,
        stream.peak_window() / 1024,
        stream_parse * 1e9,
        stream_full * 1e9,
    );
}
