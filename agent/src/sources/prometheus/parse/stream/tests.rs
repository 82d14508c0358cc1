//! Tests of the streaming parser: the same families and errors as the
//! whole-body parser, wherever the reads and windows end, in a window that
//! stays bounded.

use std::io::{self, Read};

use super::super::tests::{files, read, testdata};
use super::super::{ErrorKind, Family, Format, Limits, MetricType, ParseError, Parser};
use super::{Stream, StreamError};

/// A family with everything it holds, owned, and values as bits (so that
/// NaNs compare, payload and sign included).
#[derive(Debug, Clone, PartialEq)]
struct Owned {
    name: String,
    kind: MetricType,
    help: Option<String>,
    unit: Option<String>,
    samples: Vec<OwnedSample>,
}

/// Name, labels, value bits and timestamp.
type OwnedSample = (String, Vec<(String, String)>, u64, Option<i64>);

impl Owned {
    fn of(f: &Family<'_>) -> Owned {
        Owned {
            name: f.name.to_owned(),
            kind: f.kind,
            help: f.help.as_deref().map(str::to_owned),
            unit: f.unit.map(str::to_owned),
            samples: f
                .samples
                .iter()
                .map(|s| {
                    let labels = s
                        .labels
                        .iter()
                        .map(|l| (l.name.to_owned(), l.value.to_string()))
                        .collect();
                    (s.name.to_owned(), labels, s.value.to_bits(), s.timestamp_ms)
                })
                .collect(),
        }
    }
}

/// What a parse gives: the families, then the error if there is one.
type Outcome = (Vec<Owned>, Option<ParseError>);

fn whole(body: &[u8], format: Format, limits: &Limits, strict: bool) -> Outcome {
    let mut parser = Parser::new(body, format, limits);
    if strict {
        parser = parser.strict();
    }
    let mut families = Vec::new();
    for item in parser {
        match item {
            Ok(f) => families.push(Owned::of(&f)),
            Err(e) => return (families, Some(e)),
        }
    }
    (families, None)
}

/// Gives the bytes of a body in pieces of the sizes in `sizes`, in turn.
struct Pieces<'a> {
    rest: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl<'a> Pieces<'a> {
    fn new(body: &'a [u8], sizes: &[usize]) -> Pieces<'a> {
        Pieces {
            rest: body,
            sizes: sizes.to_vec(),
            next: 0,
        }
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.len()).min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

fn streamed(
    stream: &mut Stream,
    body: &[u8],
    format: Format,
    limits: &Limits,
    sizes: &[usize],
) -> Outcome {
    let mut families = Vec::new();
    match stream.parse(Pieces::new(body, sizes), format, limits, |f| {
        families.push(Owned::of(f))
    }) {
        Ok(n) => {
            assert_eq!(n, body.len() as u64, "bytes read");
            (families, None)
        }
        Err(StreamError::Parse(e)) => (families, Some(e)),
        Err(StreamError::Read(e)) => panic!("read error from a slice: {e}"),
    }
}

/// Streams `body` with every window in `windows` and every piece size in
/// `pieces`, and checks each outcome against the whole-body parse. Returns
/// how many families that parse gave.
fn check_body(
    body: &[u8],
    format: Format,
    limits: &Limits,
    strict: bool,
    windows: &[usize],
    pieces: &[&[usize]],
    what: &dyn std::fmt::Display,
) -> usize {
    let want = whole(body, format, limits, strict);
    for &window in windows {
        let mut stream = Stream::new(window);
        if strict {
            stream = stream.strict();
        }
        for &sizes in pieces {
            let got = streamed(&mut stream, body, format, limits, sizes);
            if got != want {
                let first = got.0.iter().zip(&want.0).position(|(g, w)| g != w);
                panic!(
                    "{what} ({format:?}, strict {strict}): window {window}, pieces {sizes:?}: \
                     {} families and {:?}, want {} and {:?}; first difference at family {first:?}",
                    got.0.len(),
                    got.1,
                    want.0.len(),
                    want.1
                );
            }
        }
    }
    want.0.len()
}

const WINDOWS: [usize; 3] = [64, 1024, 256 * 1024];
const PIECES: [&[usize]; 4] = [&[1], &[7], &[64 * 1024], &[3, 1, 4096, 9, 26, 5, 358, 97]];

/// Every file of the Prometheus corpus, in both formats (most are errors in
/// one of them, which tests errors), and every case of the OpenMetrics
/// conformance suite, strict and relaxed: the same families and the same
/// first error, with cuts everywhere.
#[test]
fn corpus_streams_like_the_whole_body() {
    let limits = Limits::default();
    let mut families = 0;
    let mut errors = 0;
    let prometheus = files(&testdata().join("prometheus-text"), &|_| true);
    for path in &prometheus {
        let body = read(path);
        for format in [Format::PrometheusText, Format::OpenMetrics] {
            let what = path.display();
            families += check_body(&body, format, &limits, false, &WINDOWS, &PIECES, &what);
            errors += usize::from(whole(&body, format, &limits, false).1.is_some());
        }
    }
    let openmetrics = files(&testdata().join("openmetrics/parsers"), &|n| n == "metrics");
    for path in &openmetrics {
        let body = read(path);
        for strict in [false, true] {
            let what = path.display();
            families += check_body(
                &body,
                Format::OpenMetrics,
                &limits,
                strict,
                &WINDOWS,
                &PIECES,
                &what,
            );
            errors += usize::from(
                whole(&body, Format::OpenMetrics, &limits, strict)
                    .1
                    .is_some(),
            );
        }
    }
    assert!(
        prometheus.len() > 80 && openmetrics.len() > 200,
        "{} and {} files",
        prometheus.len(),
        openmetrics.len()
    );
    assert!(
        families > 3000 && errors > 300,
        "{families} families, {errors} errors"
    );
}

/// The corpus with tiny limits, to stream the limit errors too.
#[test]
fn corpus_streams_like_the_whole_body_at_tiny_limits() {
    let limits = Limits {
        max_labels: 3,
        max_line_bytes: 96,
        max_name_bytes: 24,
        max_label_value_bytes: 16,
        max_family_samples: 8,
    };
    for path in files(&testdata().join("prometheus-text"), &|_| true) {
        let body = read(&path);
        for format in [Format::PrometheusText, Format::OpenMetrics] {
            check_body(
                &body,
                format,
                &limits,
                false,
                &[64, 300],
                &[&[1], &[5, 11]],
                &path.display(),
            );
        }
    }
}

/// Small bodies at the edges: metadata-only families, families that come
/// back, HELP after samples, errors on the line that ends a family, `# EOF`
/// and bytes that are not UTF-8 at window ends. Every window size and a few
/// piece sizes, so that every line boundary is a cut.
#[test]
fn edge_cases_stream_like_the_whole_body_at_every_cut() {
    let text: &[&[u8]] = &[
        b"",
        b"\n\n",
        b"a 1",
        b"a 1\n",
        b"a 1\nb 2\nc 3\n",
        b"# HELP a x\n# TYPE a counter\na 1\na{b=\"c\"} 2\n# HELP b y\nb 3\n",
        b"# TYPE a summary\na_sum 1\n# HELP b x\na_sum 2\n# HELP a late\n",
        b"# TYPE a summary\na_sum 1\n# HELP a late\na_sum 2\n# TYPE b gauge\nb 1\n",
        b"# HELP s Help of s.\n# TYPE s summary\ns{quantile=\"0.5\"} 1\nother 1\ns_count 2\n",
        b"# TYPE h histogram\nh 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        b"# HELP a x\na 1\n# HELP a y\n",
        b"a 1\nb 2\n# TYPE b gauge\n",
        b"a 1\n# TYPE b counter\nb 1\n# TYPE c gauge\nc 1\n",
        b"# HELP b x\na 1\n# TYPE b gauge\nb 1\nb{x=\"y\"} 2\nb{x=\"z\"} 3\n# TYPE c gauge\nc 1\n",
        b"# TYPE b gauge\na 1\n# HELP b x\nb 1\nb{x=\"y\"} 2\nb{x=\"z\"} 3\n# TYPE c gauge\nc 1\n",
        b"# HELP b x\na 1\nb 1\nb{x=\"y\"} 2\nb{x=\"z\"} 3\n# TYPE b gauge\nc 1\n",
        b"a 1\n# TYPE b gauge\nb 1\nb{x=\"y\"} 2\nb{x=\"z\"} 3\n# TYPE c gauge\nc 1\n",
        b"a 1\nb 2\n# TYPE c gauge\n# TYPE c gauge\n",
        b"a 1\nb 2\n# HELP c gauge\nc 1 2 3\n",
        b"a 1\n  # comment\n\n\t\nb 2\n# HELP\n# TYPE c\nc 3\nc",
        b"a 1\nb 2\nc{d=\"\xff\"} 1\nd 4\n",
        b"a 1\nb x\nc{d=\"\xff\"} 1\n",
        b"a 1\n\xc3",
        b"# TYPE a gauge\na NaN\na -NaN\na 1 -5\n",
    ];
    let om: &[&[u8]] = &[
        b"",
        b"# EOF",
        b"# EOF\n",
        b"# EOF\n\n",
        b"# EOF\nx",
        // Found by fuzzing: `a` must not be yielded before the error.
        b"a 1\n# EOF\nblah",
        b"a 1\n# EOF\n",
        b"a 1\n# EOF\n# EOF\n",
        b"# TYPE a gauge\na 1\n# EOF\n\n",
        b"a 1\n# EOF\n\xc3",
        b"a 1\nb 2\nc \xc3\n# EOF\n",
        b"a 1\nb 2\n# EOF\n",
        b"a 1\nb 2\n",
        b"# TYPE a counter\n# HELP a x\na_total 1\na_created 2\n# TYPE b gauge\n# UNIT b_s s\n# EOF\n",
        b"# TYPE a counter\na_total 1\n# TYPE a_total gauge\na_total 2\n# EOF\n",
        b"# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n# EOF\n",
        b"a 1\nb 1\na 1\n# EOF\n",
        b"# TYPE a gauge\n# TYPE b gauge\n# TYPE a gauge\n# EOF\n",
        b"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n# TYPE g gauge\ng 1\n# EOF\n",
        b"# TYPE h histogram\nh_bucket{le=\"1\"} 1\n# TYPE g gauge\ng 1\n# EOF\n",
        b"# TYPE s stateset\ns{s=\"a\"} 1\ns{s=\"b\"} 0\n# TYPE i info\ni_info{v=\"1\"} 1\n# EOF\n",
        b"a 1 1\na 2 0\n# EOF\n",
        b"a NaN\nb 1\n# EOF\n",
    ];
    let limits = Limits::default();
    let pieces: [&[usize]; 4] = [&[1], &[2], &[3, 5], &[1000]];
    for (bodies, format) in [(text, Format::PrometheusText), (om, Format::OpenMetrics)] {
        for body in bodies {
            let windows: Vec<usize> = (1..=body.len() + 2).collect();
            let what = String::from_utf8_lossy(body);
            check_body(body, format, &limits, false, &windows, &pieces, &what);
        }
    }
}

/// A body like the pipeline bench's: `series` series in families of 100,
/// each family with HELP and TYPE, counters and gauges alternating.
fn generated(series: usize, format: Format) -> Vec<u8> {
    let mut out = String::with_capacity(series * 140);
    let om = format == Format::OpenMetrics;
    write_series(0..series, om, &mut out);
    if om {
        out.push_str("# EOF\n");
    }
    out.into_bytes()
}

/// The series of [`generated`] numbered `range`, to `out`.
fn write_series(range: std::ops::Range<usize>, om: bool, out: &mut String) {
    for i in range {
        let f = i / 100;
        let counter = f % 2 == 0;
        let name = if counter {
            format!("bench_http_requests_{f:04}")
        } else {
            format!("bench_http_inflight_requests_{f:04}")
        };
        if i % 100 == 0 {
            let kind = if counter { "counter" } else { "gauge" };
            let help = format!("# HELP {name} Requests of the synthetic service.\n");
            out.push_str(&format!("{help}# TYPE {name} {kind}\n"));
        }
        let suffix = if counter && om { "_total" } else { "" };
        out.push_str(&format!(
            "{name}{suffix}{{instance_id=\"i-0a1b2c3d4e5f{:05}\",path=\"/api/v1/items/{}\",code=\"200\"}} {}\n",
            f % 64,
            i % 100,
            i * 7
        ));
    }
}

/// 100k series in families of 100, in both formats, read in odd pieces: the
/// same families as the whole body, in a buffer that never grows past the
/// window.
#[test]
fn large_bodies_stream_in_a_bounded_window() {
    let limits = Limits::default();
    for format in [Format::PrometheusText, Format::OpenMetrics] {
        let body = generated(100_000, format);
        assert!(body.len() > 10_000_000, "{} bytes", body.len());
        let want = whole(&body, format, &limits, false);
        assert_eq!((want.0.len(), &want.1), (1000, &None));
        for (window, sizes) in [
            (256 * 1024, &[4093, 65521, 17][..]),
            (16 * 1024, &[1 << 20][..]),
        ] {
            let mut stream = Stream::new(window);
            let got = streamed(&mut stream, &body, format, &limits, sizes);
            assert!(
                got == want,
                "{format:?}, window {window}: {} families, {:?}",
                got.0.len(),
                got.1
            );
            assert_eq!(stream.peak_window(), window, "{format:?}");
            // Each window moves on by about half of it.
            let most = 2 * body.len() / window + 2;
            assert!(stream.windows <= most, "{} windows", stream.windows);
        }
    }
}

/// A family larger than the window makes it grow, by doubling, and it
/// shrinks back after the body; families of many names without any metadata
/// (each sample name starts one) need no growth.
#[test]
fn window_grows_for_a_large_family_and_shrinks_back() {
    let limits = Limits::default();
    let window = 1024;
    let one_family: String = (0..10_000)
        .map(|i| format!("big{{i=\"{i}\"}} {i}\n"))
        .collect();
    let many_names: String = (0..10_000)
        .map(|i| format!("n{}{{i=\"{i}\"}} {i}\n", i / 3))
        .collect();
    let mut stream = Stream::new(window);
    for _ in 0..2 {
        let body = one_family.as_bytes();
        let got = streamed(&mut stream, body, Format::PrometheusText, &limits, &[4096]);
        assert!(got == whole(body, Format::PrometheusText, &limits, false));
        assert!(
            stream.peak_window() >= body.len(),
            "peak {}",
            stream.peak_window()
        );
        assert!(
            stream.peak_window() <= 2 * body.len(),
            "peak {}",
            stream.peak_window()
        );
        assert_eq!(stream.buf.len(), window, "buffer after the body");

        let body = many_names.as_bytes();
        let got = streamed(&mut stream, body, Format::PrometheusText, &limits, &[4096]);
        assert_eq!(got.0.len(), 3334);
        assert!(got == whole(body, Format::PrometheusText, &limits, false));
        assert_eq!(stream.peak_window(), window);
    }
    // A line longer than the window grows it the same way.
    let long = format!("a 1\nb{{c=\"{}\"}} 2\nc 3\n", "x".repeat(10_000));
    let got = streamed(
        &mut stream,
        long.as_bytes(),
        Format::PrometheusText,
        &limits,
        &[100],
    );
    assert_eq!(got.0.len(), 3);
    assert!(stream.peak_window() > 10_000 && stream.peak_window() <= 4 * 10_000);
}

/// One stream parses bodies of both formats in turn, each from a fresh state.
#[test]
fn a_stream_is_reused_across_bodies() {
    let limits = Limits::default();
    let mut stream = Stream::new(64);
    let bodies: [(&[u8], Format); 4] = [
        (b"# TYPE a counter\na 1\nb 2\n", Format::PrometheusText),
        (
            b"# TYPE a counter\na_total 1\nb 2\n# EOF\n",
            Format::OpenMetrics,
        ),
        // A second TYPE for `a` would be an error in the same body.
        (b"# TYPE a gauge\na 1\n", Format::PrometheusText),
        (b"a 1\nb x\n", Format::PrometheusText),
    ];
    for _ in 0..3 {
        for (body, format) in bodies {
            let got = streamed(&mut stream, body, format, &limits, &[5]);
            assert!(got == whole(body, format, &limits, false), "{body:?}");
        }
    }
}

/// Fails with `kind` after giving `ok` bytes; `Interrupted` only once.
struct Failing<'a> {
    body: &'a [u8],
    ok: usize,
    kind: io::ErrorKind,
}

impl Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok == 0 {
            let kind = self.kind;
            if kind == io::ErrorKind::Interrupted {
                self.ok = usize::MAX;
            }
            return Err(io::Error::new(kind, "connection reset by test"));
        }
        let n = buf.len().min(self.ok).min(self.body.len()).min(10);
        buf[..n].copy_from_slice(&self.body[..n]);
        self.body = &self.body[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn read_errors_surface_as_read() {
    let body = b"a 1\nb 2\nc 3\nd 4\n";
    let mut stream = Stream::new(8);
    let mut names = Vec::new();
    let failing = Failing {
        body,
        ok: 12,
        kind: io::ErrorKind::ConnectionReset,
    };
    let e = stream
        .parse(failing, Format::PrometheusText, &Limits::default(), |f| {
            names.push(f.name.to_owned())
        })
        .expect_err("read error");
    assert!(matches!(&e, StreamError::Read(io) if io.kind() == io::ErrorKind::ConnectionReset));
    assert_eq!(e.to_string(), "read: connection reset by test");
    let source = std::error::Error::source(&e).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("connection reset by test"));
    // The families read before the error were given.
    assert_eq!(names, ["a", "b"]);

    // An interrupted read is tried again.
    let interrupted = Failing {
        body,
        ok: 5,
        kind: io::ErrorKind::Interrupted,
    };
    let n = stream
        .parse(
            interrupted,
            Format::PrometheusText,
            &Limits::default(),
            |_| {},
        )
        .expect("parses");
    assert_eq!(n, body.len() as u64);
}

#[test]
fn parse_errors_display_as_the_parser_does() {
    let mut stream = Stream::new(4);
    let e = stream
        .parse(
            &b"a 1\nb blubb\n"[..],
            Format::PrometheusText,
            &Limits::default(),
            |_| {},
        )
        .expect_err("syntax");
    assert_eq!(e.to_string(), "line 2: invalid value: \"blubb\"");
    assert!(matches!(&e, StreamError::Parse(p) if p.kind() == ErrorKind::Syntax));
    assert!(std::mem::size_of::<StreamError>() <= 16);
}

/// The vectors of one window are reused in the next on the same allocation.
#[test]
fn reused_vectors_keep_their_allocation() {
    use super::super::text::reuse;
    use super::super::Label;
    let text = String::from("abc");
    let mut labels: Vec<Label<'_>> = Vec::with_capacity(37);
    labels.push(Label {
        name: &text,
        value: text.as_str().into(),
    });
    let at = labels.as_ptr() as usize;
    let again: Vec<Label<'static>> = reuse(labels);
    drop(text);
    assert_eq!((again.len(), again.capacity()), (0, 37));
    assert_eq!(again.as_ptr() as usize, at);
}

/// Many small families before a line longer than the window: the windows
/// before the line is whole each move on by at least half of what they
/// parse, so there are few of them.
#[test]
fn few_windows_before_a_long_line() {
    let limits = Limits {
        max_line_bytes: 1 << 20,
        max_label_value_bytes: 1 << 20,
        ..Limits::default()
    };
    let window = 64 * 1024;
    let mut body: String = (0..400).map(|i| format!("f{i} {i}\n")).collect();
    body.push_str(&format!("long{{l=\"{}\"}} 1\n", "x".repeat(60_000)));
    body.push_str("after 1\n");
    let mut stream = Stream::new(window);
    let got = streamed(
        &mut stream,
        body.as_bytes(),
        Format::PrometheusText,
        &limits,
        &[1 << 20],
    );
    assert!(got == whole(body.as_bytes(), Format::PrometheusText, &limits, false));
    assert_eq!(got.0.len(), 402);
    assert!(stream.windows <= 20, "{} windows", stream.windows);
}

/// Generates the body of [`generated`] as it is read, never whole.
struct Generator {
    format: Format,
    series: usize,
    next: usize,
    pending: Vec<u8>,
    at: usize,
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.pending.len() && self.next < self.series {
            // One family at a time.
            let end = (self.next + 100).min(self.series);
            let mut text = String::new();
            write_series(
                self.next..end,
                self.format == Format::OpenMetrics,
                &mut text,
            );
            if self.format == Format::OpenMetrics && end == self.series {
                text.push_str("# EOF\n");
            }
            self.pending = text.into_bytes();
            self.at = 0;
            self.next = end;
        }
        let rest = &self.pending[self.at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

/// Peak resident memory of this process, from /proc (Linux), in KiB.
fn peak_rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Prints the memory a million series cost when streamed. Run with
/// `cargo test --release -p tern --lib sources::prometheus::parse::stream::tests::memory -- --ignored --nocapture`.
#[test]
#[ignore]
fn memory_of_a_million_series() {
    let mut stream = Stream::new(256 * 1024);
    for format in [Format::PrometheusText, Format::OpenMetrics] {
        let before = peak_rss_kib();
        let mut samples = 0;
        let reader = Generator {
            format,
            series: 1_000_000,
            next: 0,
            pending: Vec::new(),
            at: 0,
        };
        let read = stream
            .parse(reader, format, &Limits::default(), |f| {
                samples += f.samples.len()
            })
            .expect("parses");
        assert_eq!(samples, 1_000_000);
        println!(
            "{format:?}: {read} bytes, {samples} samples: peak RSS {before} KiB before, {} KiB after; window peak {} KiB",
            peak_rss_kib(),
            stream.peak_window() / 1024
        );
    }
}
