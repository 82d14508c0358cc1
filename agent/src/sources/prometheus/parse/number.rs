//! Numbers: sample values, `le` and `quantile` label values, and timestamps.
//!
//! Decimal numbers are checked against the grammar here, then converted: the
//! common short forms exactly by a fast path (an integer mantissa below 2^53
//! scaled by an exact power of ten is correctly rounded by one multiplication
//! or division), everything else by the standard library's correctly rounded
//! parser. A finite number too large for `f64` is rejected rather than read as
//! infinity.

/// Exact powers of ten representable in `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Largest mantissa the fast path takes: every integer up to 2^53 is exact.
const EXACT_MANTISSA: u64 = 1 << 53;

/// Exponents are clamped here while reading: far beyond any `f64` exponent,
/// yet far from overflowing `i64` arithmetic on them.
const EXPONENT_CLAMP: i64 = 1 << 40;

/// The grammar of a sample value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grammar {
    /// OpenMetrics `number`: a decimal, `[+-]inf`/`infinity` or unsigned `nan`,
    /// words in any case.
    OpenMetrics,
    /// 0.0.4: what Go's `strconv.ParseFloat` takes in decimal form, so also a
    /// sign on `nan`.
    Text,
}

/// Parses a sample value; `None` when it is not a number in `grammar`.
pub(super) fn value(tok: &str, grammar: Grammar) -> Option<f64> {
    let bytes = tok.as_bytes();
    let (signed, negative) = match bytes.first() {
        Some(b'+') => (true, false),
        Some(b'-') => (true, true),
        _ => (false, false),
    };
    let unsigned = bytes.get(usize::from(signed)..).unwrap_or(&[]);
    if unsigned.first().is_some_and(u8::is_ascii_alphabetic) {
        let word = unsigned;
        let v = if word.eq_ignore_ascii_case(b"inf") || word.eq_ignore_ascii_case(b"infinity") {
            f64::INFINITY
        } else if word.eq_ignore_ascii_case(b"nan") && (!signed || grammar == Grammar::Text) {
            return Some(f64::NAN);
        } else {
            return None;
        };
        return Some(if negative { -v } else { v });
    }
    real(tok)
}

/// Parses an OpenMetrics `realnumber` (a decimal: no infinities, no NaN):
/// `[+-]? digits* (. digits*)? ([eE] [+-]? digits+)?` with at least one
/// mantissa digit.
pub(super) fn real(tok: &str) -> Option<f64> {
    let b = tok.as_bytes();
    let mut i = 0;
    let negative = match b.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    // Digits wrap silently here; the fast path is only taken when there are
    // at most 19 of them, which fit in a u64.
    let mut mantissa: u64 = 0;
    let int_start = i;
    while let Some(d) = digit(b, i) {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    let mut digits = i - int_start;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while let Some(d) = digit(b, i) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        frac_digits = i - frac_start;
        digits += frac_digits;
    }
    if digits == 0 {
        return None;
    }
    let mut exponent: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_negative = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let exp_start = i;
        while let Some(d) = digit(b, i) {
            exponent = (exponent * 10 + i64::from(d)).min(EXPONENT_CLAMP);
            i += 1;
        }
        if i == exp_start {
            return None;
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if i != b.len() {
        return None;
    }
    let v = match fast_path(mantissa, digits, frac_digits, exponent) {
        Some(v) if negative => -v,
        Some(v) => v,
        // Checked above to be a decimal, which `f64::from_str` reads
        // correctly rounded.
        None => tok.parse::<f64>().ok()?,
    };
    // A decimal that rounds to infinity does not fit in f64.
    v.is_finite().then_some(v)
}

/// The value of `mantissa * 10^(exponent - frac_digits)` when it can be
/// computed exactly rounded with one operation.
fn fast_path(mantissa: u64, digits: usize, frac_digits: usize, exponent: i64) -> Option<f64> {
    const MAX_DIGITS: usize = 19;
    if digits > MAX_DIGITS || mantissa > EXACT_MANTISSA {
        return None;
    }
    if mantissa == 0 {
        return Some(0.0);
    }
    let scale = exponent - i64::try_from(frac_digits).ok()?;
    let pow = *POW10.get(usize::try_from(scale.unsigned_abs()).ok()?)?;
    // The mantissa is at most 2^53, so this conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let m = mantissa as f64;
    Some(if scale >= 0 { m * pow } else { m / pow })
}

/// The digit at `b[i]`, if it is one.
fn digit(b: &[u8], i: usize) -> Option<u8> {
    let d = b.get(i)?.wrapping_sub(b'0');
    (d < 10).then_some(d)
}

/// Parses an OpenMetrics `le` value: `+Inf` exactly, or a decimal.
pub(super) fn openmetrics_le(tok: &str) -> Option<f64> {
    if tok == "+Inf" {
        Some(f64::INFINITY)
    } else {
        real(tok)
    }
}

/// Parses a 0.0.4 timestamp: integer milliseconds.
pub(super) fn text_timestamp(tok: &str) -> Option<i64> {
    // `i64::from_str` takes exactly `[+-]?[0-9]+`, as Go's `ParseInt` does.
    tok.parse().ok()
}

/// Converts an OpenMetrics timestamp (seconds, already checked by [`real`])
/// to whole milliseconds, exactly from the decimal digits, truncating toward
/// zero and saturating at the `i64` range.
pub(super) fn seconds_to_millis(tok: &str) -> i64 {
    let b = tok.as_bytes();
    let negative = b.first() == Some(&b'-');
    let body = match b.first() {
        Some(b'-' | b'+') => b.get(1..).unwrap_or(&[]),
        _ => b,
    };
    let (mantissa, exp) = match body.iter().position(|&c| c == b'e' || c == b'E') {
        Some(at) => (
            body.get(..at).unwrap_or(&[]),
            body.get(at + 1..).unwrap_or(&[]),
        ),
        None => (body, &[][..]),
    };
    let exponent = parse_clamped_exponent(exp);
    let int_len = mantissa
        .iter()
        .position(|&c| c == b'.')
        .unwrap_or(mantissa.len());
    // Digits of the mantissa (the point skipped); the first `int_len` are the
    // integer part. Milliseconds keep the digits down to 10^-3.
    let keep = i64::try_from(int_len)
        .unwrap_or(i64::MAX)
        .saturating_add(exponent)
        .saturating_add(3);
    let mut millis: i64 = 0;
    let mut taken: i64 = 0;
    for &c in mantissa.iter().filter(|c| c.is_ascii_digit()) {
        if taken >= keep {
            break;
        }
        match millis
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(c - b'0')))
        {
            Some(m) => millis = m,
            None => return saturated(negative),
        }
        taken += 1;
    }
    // Fewer digits than the scale needs: pad with zeros.
    while taken < keep && millis != 0 {
        match millis.checked_mul(10) {
            Some(m) => millis = m,
            None => return saturated(negative),
        }
        taken += 1;
    }
    if negative {
        -millis
    } else {
        millis
    }
}

fn saturated(negative: bool) -> i64 {
    if negative {
        i64::MIN
    } else {
        i64::MAX
    }
}

/// Reads `[+-]?digits` as a clamped exponent; 0 when empty.
fn parse_clamped_exponent(b: &[u8]) -> i64 {
    let (negative, digits) = match b.first() {
        Some(b'-') => (true, b.get(1..).unwrap_or(&[])),
        Some(b'+') => (false, b.get(1..).unwrap_or(&[])),
        _ => (false, b),
    };
    let mut e: i64 = 0;
    for &c in digits {
        e = (e * 10 + i64::from(c.wrapping_sub(b'0'))).min(EXPONENT_CLAMP);
    }
    if negative {
        -e
    } else {
        e
    }
}
