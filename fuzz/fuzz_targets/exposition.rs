//! Fuzzes the exposition parser (`tern::sources::prometheus::parse`) with
//! arbitrary bytes, in both formats, and checks what it returns.
//!
//! Run: `cargo +nightly fuzz run exposition -- -dict=exposition.dict -max_total_time=60`
//! (from `fuzz/`; seed `corpus/exposition/` with the files of
//! `../../shared/testdata/prometheus-text` and `../../shared/testdata/openmetrics`).
//!
//! The first input byte picks the limits (default or tiny, to reach every
//! limit check; bit 0), a stream window (bits 1-3) and the read sizes (bits
//! 4-7, with the body's bytes); the rest is the body. Beyond "no panic, no
//! hang", a parse that succeeds must hold to what the converter relies on,
//! strict mode must only ever reject more, a 0.0.4 parse rendered back to text
//! must parse to the same families, and the body streamed through that window
//! in those reads must give exactly the families and error of the whole-body
//! parse, in a window that grows only as far as the body.

#![no_main]

use std::collections::HashSet;
use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use tern::sources::prometheus::parse::{
    Family, Format, Limits, MetricType, ParseError, Parser, Stream, StreamError,
};

fuzz_target!(|data: &[u8]| {
    check(data);
});

fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let limits = if selector & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_labels: 3,
            max_line_bytes: 96,
            max_name_bytes: 24,
            max_label_value_bytes: 16,
            max_family_samples: 8,
        }
    };
    for format in [Format::PrometheusText, Format::OpenMetrics] {
        let relaxed = run(Parser::new(body, format, &limits), body, format, &limits);
        let strict = run(
            Parser::new(body, format, &limits).strict(),
            body,
            format,
            &limits,
        );
        // Strict mode only adds rules.
        if let Ok(strict) = &strict {
            match &relaxed {
                Ok(relaxed) => assert_eq!(strict, relaxed, "strict and relaxed disagree"),
                Err(e) => panic!("strict accepts what relaxed rejects: {e}"),
            }
        }
    }
    round_trip(body, &limits);
    streamed(body, selector, &limits);
}

/// A family with everything it holds, owned, values as bits.
type Owned = (
    String,
    MetricType,
    Option<String>,
    Option<String>,
    Vec<(String, Vec<(String, String)>, u64, Option<i64>)>,
);

fn owned(f: &Family<'_>) -> Owned {
    let samples = f
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
        .collect();
    (
        f.name.to_owned(),
        f.kind,
        f.help.as_deref().map(str::to_owned),
        f.unit.map(str::to_owned),
        samples,
    )
}

/// Gives a body in reads whose sizes come from the body's own bytes.
struct Pieces<'a> {
    body: &'a [u8],
    at: usize,
    seed: u8,
    reads: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.body.get(self.at..).unwrap_or(&[]);
        let pick = self
            .body
            .get(self.reads % self.body.len().max(1))
            .copied()
            .unwrap_or(0);
        self.reads += 1;
        let size = match (pick ^ self.seed) % 5 {
            0 => 1,
            1 => 2,
            2 => 7,
            3 => 64,
            _ => 4096,
        };
        let n = size.min(buf.len()).min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

/// Streams the body through the window and reads the selector picks, in both
/// formats, relaxed and strict, and compares with the whole-body parse.
fn streamed(body: &[u8], selector: u8, limits: &Limits) {
    const WINDOWS: [usize; 8] = [1, 2, 5, 16, 64, 300, 4096, 256 * 1024];
    let window = WINDOWS[usize::from(selector >> 1) & 7];
    for format in [Format::PrometheusText, Format::OpenMetrics] {
        for strict in [false, true] {
            let mut parser = Parser::new(body, format, limits);
            if strict {
                parser = parser.strict();
            }
            let mut want = Vec::new();
            let mut want_error = None;
            for item in parser {
                match item {
                    Ok(f) => want.push(owned(&f)),
                    Err(e) => want_error = Some(e),
                }
            }
            let mut stream = Stream::new(window);
            if strict {
                stream = stream.strict();
            }
            let mut got = Vec::new();
            let reader = Pieces {
                body,
                at: 0,
                seed: selector >> 4,
                reads: 0,
            };
            let got_error = match stream.parse(reader, format, limits, |f| got.push(owned(f))) {
                Ok(n) => {
                    assert_eq!(n, body.len() as u64, "bytes read");
                    None
                }
                Err(StreamError::Parse(e)) => Some(e),
                Err(StreamError::Read(e)) => panic!("read error from a slice: {e}"),
            };
            assert_eq!(
                got_error, want_error,
                "{format:?} strict {strict}, window {window}"
            );
            assert!(
                got == want,
                "{format:?} strict {strict}, window {window}: families differ"
            );
            let peak = stream.peak_window();
            assert!(
                peak <= window.max(2 * body.len()),
                "window {window} grew to {peak} for {} bytes",
                body.len()
            );
        }
    }
}

/// Renders a successful 0.0.4 parse back to text and checks that it parses
/// to the same families.
fn round_trip(body: &[u8], limits: &Limits) {
    let Ok(families) =
        Parser::new(body, Format::PrometheusText, limits).collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let text = render(&families);
    // Escapes can make lines and values longer than the original limits.
    let roomy = Limits {
        max_line_bytes: usize::MAX,
        max_label_value_bytes: usize::MAX,
        ..*limits
    };
    let again = Parser::new(text.as_bytes(), Format::PrometheusText, &roomy)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("rendered text does not parse: {e}\n{text}"));
    assert_eq!(families.len(), again.len(), "family count\n{text}");
    for (a, b) in families.iter().zip(&again) {
        assert_eq!(
            (a.name, a.kind, &a.help),
            (b.name, b.kind, &b.help),
            "\n{text}"
        );
        assert_eq!(a.samples.len(), b.samples.len(), "\n{text}");
        for (x, y) in a.samples.iter().zip(&b.samples) {
            assert_eq!(
                (x.name, &x.labels, x.timestamp_ms),
                (y.name, &y.labels, y.timestamp_ms)
            );
            assert!(
                x.value.to_bits() == y.value.to_bits() || (x.value.is_nan() && y.value.is_nan()),
                "{} vs {}",
                x.value,
                y.value
            );
        }
    }
}

fn escape(s: &str, out: &mut String, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// 0.0.4 text for `families`. A name's TYPE goes before its first family (a
/// name can have an untyped family, e.g. a bare `a` among histogram `a`'s
/// samples, before its typed one); its HELP after the samples of the first
/// family that has it (0.0.4 allows HELP after samples, and it then belongs
/// to that family and the later ones of the name). Two families of one name
/// in a row are kept apart by a HELP line for a name no input uses, as the
/// metadata-only family that separated them in the input was.
fn render(families: &[Family<'_>]) -> String {
    let mut out = String::new();
    let mut typed = HashSet::new();
    let mut helped = HashSet::new();
    let mut previous = None;
    for (n, f) in families.iter().enumerate() {
        if previous == Some(f.name) {
            out.push_str(&format!("# HELP zq_separator_{n}_zq -\n"));
        }
        previous = Some(f.name);
        if typed.insert(f.name) {
            let kind = families
                .iter()
                .filter(|g| g.name == f.name)
                .find_map(|g| match g.kind {
                    MetricType::Counter => Some("counter"),
                    MetricType::Gauge => Some("gauge"),
                    MetricType::Histogram => Some("histogram"),
                    MetricType::Summary => Some("summary"),
                    _ => None,
                });
            if let Some(kind) = kind {
                out.push_str(&format!("# TYPE {} {kind}\n", f.name));
            }
        }
        for s in &f.samples {
            out.push_str(s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, l) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(l.name);
                    out.push_str("=\"");
                    escape(&l.value, &mut out, true);
                    out.push('"');
                }
                out.push('}');
            }
            out.push_str(&format!(" {}", s.value));
            if let Some(ts) = s.timestamp_ms {
                out.push_str(&format!(" {ts}"));
            }
            out.push('\n');
        }
        if let Some(help) = &f.help {
            if helped.insert(f.name) {
                out.push_str("# HELP ");
                out.push_str(f.name);
                out.push(' ');
                escape(help, &mut out, false);
                out.push('\n');
            }
        }
    }
    out
}

/// Parses to the end, checks every family and the error, and returns a
/// comparable summary: per family its name, type and sample count.
fn run(
    mut parser: Parser<'_>,
    body: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<Vec<(String, MetricType, usize)>, ParseError> {
    let mut seen = HashSet::new();
    let mut summary = Vec::new();
    while let Some(item) = parser.next() {
        match item {
            Ok(family) => {
                check_family(&family, format, limits);
                if format == Format::OpenMetrics {
                    assert!(
                        seen.insert(family.name.to_owned()),
                        "family {} twice",
                        family.name
                    );
                }
                summary.push((family.name.to_owned(), family.kind, family.samples.len()));
            }
            Err(e) => {
                let lines = body.iter().filter(|&&b| b == b'\n').count() + 1;
                assert!(
                    e.line >= 1 && e.line <= lines,
                    "error line {} of {lines}: {e}",
                    e.line
                );
                let shown = e.to_string();
                assert!(shown.starts_with(&format!("line {}: ", e.line)), "{shown}");
                assert!(shown.len() < 400, "error message too long: {shown}");
                assert!(parser.next().is_none(), "items after an error");
                return Err(e);
            }
        }
    }
    assert!(parser.next().is_none(), "items after the end");
    Ok(summary)
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut bytes = s.bytes();
    let first = bytes.next();
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || (colon && b == b':');
    first.is_some_and(|b| ok(b) && !b.is_ascii_digit()) && bytes.all(ok)
}

fn check_family(family: &Family<'_>, format: Format, limits: &Limits) {
    assert!(!family.samples.is_empty(), "empty family {}", family.name);
    assert!(family.samples.len() <= limits.max_family_samples);
    assert!(is_name(family.name, true), "family name {:?}", family.name);
    if format == Format::PrometheusText {
        assert!(family.unit.is_none());
    }
    if let Some(unit) = family.unit {
        assert!(
            family.name.ends_with(&format!("_{unit}")),
            "unit {unit} of {}",
            family.name
        );
    }
    for sample in &family.samples {
        assert!(
            sample.name.starts_with(family.name),
            "{} in {}",
            sample.name,
            family.name
        );
        assert!(is_name(sample.name, true), "sample name {:?}", sample.name);
        assert!(sample.name.len() <= limits.max_name_bytes);
        assert!(sample.labels.len() <= limits.max_labels);
        let mut names = HashSet::new();
        for label in &sample.labels {
            assert!(is_name(label.name, false), "label name {:?}", label.name);
            assert_ne!(label.name, "__name__");
            assert!(names.insert(label.name), "duplicate label {}", label.name);
            assert!(label.value.len() <= limits.max_label_value_bytes);
        }
        let label = |name: &str| sample.labels.iter().find(|l| l.name == name);
        let suffix = &sample.name[family.name.len()..];
        match (family.kind, suffix) {
            (MetricType::Histogram | MetricType::GaugeHistogram, "_bucket") => {
                assert!(label("le").is_some(), "bucket without le");
            }
            (MetricType::Summary, "") => assert!(label("quantile").is_some()),
            _ => {}
        }
        if format == Format::OpenMetrics {
            let v = sample.value;
            match (family.kind, suffix) {
                (MetricType::Counter, "_total") => assert!(v >= 0.0, "counter {v}"),
                (MetricType::Info, _) => assert_eq!(v, 1.0),
                (MetricType::StateSet, _) => {
                    assert!(v == 0.0 || v == 1.0);
                    assert!(label(family.name).is_some());
                }
                (MetricType::Histogram | MetricType::GaugeHistogram, "_bucket") => {
                    assert!(v >= 0.0 && v.fract() == 0.0, "bucket {v}");
                }
                _ => {}
            }
        }
    }
}
