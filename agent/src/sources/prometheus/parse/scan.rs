//! Byte-level scanning shared by both formats: the cursor, names, label sets,
//! quoted strings and escapes.
//!
//! The text scanned is valid UTF-8 (each window of the body is checked before
//! it is parsed) and every position the scanner cuts at sits next to an ASCII
//! delimiter, so each cut is a char boundary; `Cursor::slice` still goes
//! through `str::get`, which cannot panic.
//!
//! A cursor scans one *window* of the body: the whole body, or (when it is
//! streamed) a run of whole lines of it. Line numbers count from the start of
//! the body. A window that is not the last ends right after a `\n`, so within
//! a line, running out of input always means the body ended there.

use std::borrow::Cow;
use std::fmt;

use super::{ErrorKind, Label, Limits, ParseError};

/// Character class bits, one byte per input byte value.
const METRIC_START: u8 = 1;
const METRIC_CONT: u8 = 2;
const LABEL_START: u8 = 4;
const LABEL_CONT: u8 = 8;

static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c: u8 = 0;
    loop {
        let alpha = c.is_ascii_alphabetic() || c == b'_';
        let digit = c.is_ascii_digit();
        let mut bits = 0;
        if alpha || c == b':' {
            bits |= METRIC_START | METRIC_CONT;
        }
        if digit {
            bits |= METRIC_CONT | LABEL_CONT;
        }
        if alpha {
            bits |= LABEL_START | LABEL_CONT;
        }
        t[c as usize] = bits;
        if c == 255 {
            break;
        }
        c += 1;
    }
    t
}

fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

/// Bytes of a word, each `0x01`.
const LO: u64 = 0x0101_0101_0101_0101;
/// Bytes of a word, each `0x80`.
const HI: u64 = 0x8080_8080_8080_8080;

/// Finds the first of up to three bytes in `hay` from `from` on; returns its
/// index, or `hay.len()`. Eight bytes at a time: most label values and help
/// texts are long enough for that to pay.
fn find_any(hay: &[u8], from: usize, needles: [u8; 3]) -> usize {
    let [a, b, c] = needles.map(|n| LO * u64::from(n));
    let mut i = from;
    while let Some(chunk) = hay.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(bytes);
        // A byte of `x` is zero where `word` has the needle; this sets the
        // high bit of the lowest such byte exactly (higher ones may be
        // spurious, which does not matter).
        let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
        let hits = zero(word ^ a) | zero(word ^ b) | zero(word ^ c);
        if hits != 0 {
            return i + usize::try_from(hits.trailing_zeros() / 8).unwrap_or(0);
        }
        i += 8;
    }
    while let Some(&x) = hay.get(i) {
        if needles.contains(&x) {
            return i;
        }
        i += 1;
    }
    hay.len()
}

/// `a == b`, eight bytes at a time. Slice equality calls `memcmp`, which musl
/// runs a byte at a time, and names are compared for every sample (a sample
/// against its family, a point against its metric), mostly equal and 20 to 60
/// bytes long.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|c| <[u8; 8]>::try_from(c).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let last = a.len() - 8;
    // Whole words, then the last eight bytes (which may overlap the last word).
    (0..last).step_by(8).all(|i| word(a, i) == word(b, i)) && word(a, last) == word(b, last)
}

/// True when every byte of `s` may appear in a metric name (an OpenMetrics UNIT).
pub(super) fn is_metric_name_chars(s: &str) -> bool {
    s.bytes().all(|b| class(b) & METRIC_CONT != 0)
}

/// Quotes a piece of input for an error message, cut to a few dozen characters.
pub(super) fn excerpt(s: &str) -> String {
    const MAX: usize = 40;
    let mut end = s.len().min(MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.get(..end).unwrap_or("");
    if end < s.len() {
        format!("\"{}\"...", cut.escape_debug())
    } else {
        format!("\"{}\"", cut.escape_debug())
    }
}

/// The end of the run of identifier bytes from `i` on: letters, digits, `_`,
/// and `:` when `colon`. (Byte by byte: identifiers are short, and a
/// word-at-a-time version measured slower.)
fn ident_end(hay: &[u8], mut i: usize, colon: bool) -> usize {
    let cont = if colon { METRIC_CONT } else { LABEL_CONT };
    while hay.get(i).is_some_and(|&b| class(b) & cont != 0) {
        i += 1;
    }
    i
}

/// A position in a window of the body, with the line it is on.
pub(super) struct Cursor<'a> {
    src: &'a str,
    /// Invariant: `pos <= src.len()`.
    pos: usize,
    /// 1-based number, in the whole body, of the line `pos` is on.
    line: usize,
    /// Byte offset (in `src`) where the current line starts.
    line_start: usize,
    /// True when the window ends the body; else it ends right after a `\n`,
    /// and when it ends with an OpenMetrics `# EOF` line, more of the body
    /// follows.
    last: bool,
    /// The parser stops after the first line of a family that starts at this
    /// offset or later (see `Stream`); `usize::MAX` when it reads to the end.
    /// Invariant: at least 1.
    pause_at: usize,
}

impl fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the body: it can be megabytes.
        f.debug_struct("Cursor")
            .field("len", &self.src.len())
            .field("pos", &self.pos)
            .field("line", &self.line)
            .field("last", &self.last)
            .finish()
    }
}

impl<'a> Cursor<'a> {
    /// A cursor over a window of a body that starts on line `line`; `last`
    /// when the body ends with it, else `src` ends with `\n`.
    pub(super) fn window(src: &'a str, line: usize, last: bool, pause_at: usize) -> Cursor<'a> {
        debug_assert!(last || src.is_empty() || src.ends_with('\n'));
        Cursor {
            src,
            pos: 0,
            line,
            line_start: 0,
            last,
            pause_at: pause_at.max(1),
        }
    }

    /// True at the end of the window (which may not be the end of the body).
    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    /// True when the window ends the body.
    pub(super) fn is_last(&self) -> bool {
        self.last
    }

    /// True when the parser may stop after a family's first line, which
    /// starts at `start`: at or past `pause_at`. Never at the window's first
    /// line, so that a window that stops has made progress.
    pub(super) fn may_pause(&self, start: usize) -> bool {
        start >= self.pause_at
    }

    /// The offset in the window.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// The 1-based line number, in the whole body, of the current line.
    pub(super) fn line(&self) -> usize {
        self.line
    }

    /// The offset in the window where the current line starts.
    pub(super) fn line_start(&self) -> usize {
        self.line_start
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    /// Consumes `b` if it is next.
    pub(super) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `s` if it is next.
    pub(super) fn eat_str(&mut self, s: &str) -> bool {
        let rest = self.src.as_bytes().get(self.pos..).unwrap_or(&[]);
        if rest
            .get(..s.len())
            .is_some_and(|r| same_bytes(r, s.as_bytes()))
        {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// Skips spaces and tabs; returns how many.
    pub(super) fn skip_blanks(&mut self) -> usize {
        // Scanning loops work on a local index and store it once: stores to
        // `self.pos` inside a loop are not hoisted.
        let bytes = self.src.as_bytes();
        let start = self.pos;
        let mut i = start;
        while matches!(bytes.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        self.pos = i;
        i - start
    }

    /// The text between two positions this cursor produced.
    fn slice(&self, start: usize, end: usize) -> &'a str {
        let s = self.src.get(start..end);
        debug_assert!(s.is_some(), "scanner cut at a non-char boundary");
        s.unwrap_or("")
    }

    /// The rest of the line, without consuming it (for error messages).
    pub(super) fn rest_of_line(&self) -> &'a str {
        let end = find_any(self.src.as_bytes(), self.pos, [b'\n'; 3]);
        self.slice(self.pos, end)
    }

    /// Consumes and returns the rest of the line, up to (not including) `\n`.
    pub(super) fn take_line(&mut self) -> &'a str {
        self.take_line_escaped().0
    }

    /// Consumes and returns the rest of the line, up to (not including) `\n`,
    /// and whether it holds a backslash.
    pub(super) fn take_line_escaped(&mut self) -> (&'a str, bool) {
        let begin = self.pos;
        let bytes = self.src.as_bytes();
        let first = find_any(bytes, begin, [b'\n', b'\\', b'\n']);
        let escaped = bytes.get(first) == Some(&b'\\');
        self.pos = if escaped {
            find_any(bytes, first, [b'\n'; 3])
        } else {
            first
        };
        (self.slice(begin, self.pos), escaped)
    }

    /// Consumes a metric name's bytes; empty when the next byte cannot start one.
    fn take_ident(&mut self) -> &'a str {
        let begin = self.pos;
        if self.peek().is_some_and(|b| class(b) & METRIC_START != 0) {
            self.pos = ident_end(self.src.as_bytes(), begin + 1, true);
        }
        self.slice(begin, self.pos)
    }

    /// Consumes a metric name, like [`Cursor::metric_name`], faster when it
    /// starts with `prefix` (the name of the family being read, if any); also
    /// returns what follows `prefix` when it does start with it.
    pub(super) fn metric_name_after(
        &mut self,
        prefix: Option<&str>,
        limits: &Limits,
    ) -> Result<(&'a str, Option<&'a str>), ParseError> {
        let begin = self.pos;
        let Some(prefix) = prefix.filter(|p| !p.is_empty() && self.eat_str(p)) else {
            return Ok((self.metric_name(limits)?, None));
        };
        let rest = self.pos;
        self.pos = ident_end(self.src.as_bytes(), rest, true);
        debug_assert_eq!(rest - begin, prefix.len());
        let name = self.check_name(self.slice(begin, self.pos), limits)?;
        Ok((name, Some(self.slice(rest, self.pos))))
    }

    /// Consumes a metric name; an error when none is next or it is too long.
    pub(super) fn metric_name(&mut self, limits: &Limits) -> Result<&'a str, ParseError> {
        let name = self.take_ident();
        self.check_name(name, limits)
    }

    fn check_name(&self, name: &'a str, limits: &Limits) -> Result<&'a str, ParseError> {
        if name.is_empty() {
            return Err(self.error(
                ErrorKind::Syntax,
                "invalid metric name",
                Some(self.token_excerpt()),
            ));
        }
        if name.len() > limits.max_name_bytes {
            return Err(self.limit_error(
                "metric name too long",
                name.len(),
                limits.max_name_bytes,
            ));
        }
        Ok(name)
    }

    /// The next few bytes of the line, for an error message.
    fn token_excerpt(&self) -> &'a str {
        let rest = self.rest_of_line();
        let end = rest
            .bytes()
            .position(|b| b == b' ' || b == b'\t')
            .unwrap_or(rest.len());
        rest.get(..end).unwrap_or(rest)
    }

    /// Consumes a token that ends before a space, a tab (when `tabs`), a
    /// newline or the end of the body.
    pub(super) fn token(&mut self, tabs: bool) -> &'a str {
        let begin = self.pos;
        let tab = if tabs { b'\t' } else { b' ' };
        self.pos = find_any(self.src.as_bytes(), begin, [b' ', b'\n', tab]);
        self.slice(begin, self.pos)
    }

    /// Consumes a quoted label value; the opening `"` is already consumed.
    /// `\\`, `\"` and `\n` are unescaped; any other backslash is kept.
    pub(super) fn quoted(&mut self, limits: &Limits) -> Result<Cow<'a, str>, ParseError> {
        let begin = self.pos;
        let bytes = self.src.as_bytes();
        // Fast path: no escapes, so the value borrows the body.
        self.pos = find_any(bytes, self.pos, [b'"', b'\\', b'\n']);
        let value = match bytes.get(self.pos) {
            Some(b'"') => {
                let v = Cow::Borrowed(self.slice(begin, self.pos));
                self.pos += 1;
                v
            }
            Some(b'\\') => {
                let mut owned = String::from(self.slice(begin, self.pos));
                loop {
                    let run = self.pos;
                    self.pos = find_any(bytes, self.pos, [b'"', b'\\', b'\n']);
                    owned.push_str(self.slice(run, self.pos));
                    match bytes.get(self.pos) {
                        Some(b'"') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'\\') => {
                            self.pos += 1;
                            match bytes.get(self.pos) {
                                Some(b'\\') => owned.push('\\'),
                                Some(b'"') => owned.push('"'),
                                Some(b'n') => owned.push('\n'),
                                // Unknown escape: keep the backslash; the next
                                // character is then read as plain text.
                                Some(_) => {
                                    owned.push('\\');
                                    continue;
                                }
                                None => return Err(self.unterminated()),
                            }
                            self.pos += 1;
                        }
                        _ => return Err(self.unterminated()),
                    }
                }
                Cow::Owned(owned)
            }
            _ => return Err(self.unterminated()),
        };
        let written = self.pos - begin - 1;
        if written > limits.max_label_value_bytes {
            return Err(self.limit_error(
                "label value too long",
                written,
                limits.max_label_value_bytes,
            ));
        }
        Ok(value)
    }

    fn unterminated(&self) -> ParseError {
        self.error(ErrorKind::Syntax, "unterminated label value", None)
    }

    /// Consumes a label set; the opening `{` is already consumed. Labels go to
    /// `out` (cleared first). `LENIENT` is the 0.0.4 grammar: blanks around
    /// every part and a trailing comma are allowed. `__name__` is reserved.
    pub(super) fn labels<const LENIENT: bool>(
        &mut self,
        out: &mut Vec<Label<'a>>,
        limits: &Limits,
    ) -> Result<(), ParseError> {
        // A local index throughout: this is the innermost loop of the parser.
        let bytes = self.src.as_bytes();
        let mut i = self.pos;
        macro_rules! blanks {
            () => {
                if LENIENT {
                    while matches!(bytes.get(i), Some(b' ' | b'\t')) {
                        i += 1;
                    }
                }
            };
        }
        macro_rules! fail {
            ($e:expr) => {{
                self.pos = i;
                return Err($e);
            }};
        }
        out.clear();
        blanks!();
        if bytes.get(i) == Some(&b'}') {
            self.pos = i + 1;
            return Ok(());
        }
        loop {
            let start = i;
            if !bytes.get(i).is_some_and(|&b| class(b) & LABEL_START != 0) {
                fail!(self.error(
                    ErrorKind::Syntax,
                    "invalid label name",
                    Some(self.token_excerpt())
                ));
            }
            i = ident_end(bytes, i + 1, false);
            let name = self.slice(start, i);
            if name.len() > limits.max_name_bytes {
                fail!(self.limit_error("label name too long", name.len(), limits.max_name_bytes));
            }
            if name == "__name__" {
                fail!(self.error(ErrorKind::Syntax, "reserved label name", Some(name)));
            }
            blanks!();
            if bytes.get(i) != Some(&b'=') {
                fail!(self.expected_at(i, "'=' after label name"));
            }
            i += 1;
            blanks!();
            if bytes.get(i) != Some(&b'"') {
                fail!(self.expected_at(i, "'\"' to open label value"));
            }
            self.pos = i + 1;
            let value = self.quoted(limits)?;
            i = self.pos;
            if out.len() >= limits.max_labels {
                fail!(self.limit_error("too many labels", out.len() + 1, limits.max_labels));
            }
            out.push(Label { name, value });
            blanks!();
            match bytes.get(i) {
                Some(b'}') => {
                    i += 1;
                    break;
                }
                Some(b',') => {
                    i += 1;
                    blanks!();
                    if LENIENT && bytes.get(i) == Some(&b'}') {
                        i += 1;
                        break;
                    }
                }
                _ => fail!(self.expected_at(i, "',' or '}' after label value")),
            }
        }
        self.pos = i;
        check_unique_labels(out)
            .map_err(|name| self.error(ErrorKind::Syntax, "duplicate label name", Some(name)))
    }

    /// [`Cursor::expected`] at position `at` of the current line.
    fn expected_at(&mut self, at: usize, what: &str) -> ParseError {
        self.pos = at;
        self.expected(what)
    }

    /// An error for a missing piece of syntax, quoting what is there instead.
    pub(super) fn expected(&self, what: &str) -> ParseError {
        let rest = self.rest_of_line();
        let found = if rest.is_empty() {
            if self.at_end() {
                "end of input".to_owned()
            } else {
                "end of line".to_owned()
            }
        } else {
            excerpt(rest)
        };
        ParseError::new(
            self.line,
            ErrorKind::Syntax,
            format!("expected {what}: found {found}"),
        )
    }

    /// An error on the current line: "what" or "what: \"detail\"".
    pub(super) fn error(&self, kind: ErrorKind, what: &str, detail: Option<&str>) -> ParseError {
        let message = match detail {
            Some(d) => format!("{what}: {}", excerpt(d)),
            None => what.to_owned(),
        };
        ParseError::new(self.line, kind, message)
    }

    pub(super) fn limit_error(&self, what: &str, got: usize, max: usize) -> ParseError {
        ParseError::new(
            self.line,
            ErrorKind::Limit,
            format!("{what}: {got} over the limit of {max}"),
        )
    }

    /// Consumes the `\n` that ends a line and checks the line's length.
    /// `missing` names the error when something else comes first.
    pub(super) fn end_line(&mut self, limits: &Limits, missing: &str) -> Result<(), ParseError> {
        match self.peek() {
            Some(b'\n') => {}
            Some(_) => return Err(self.expected(missing)),
            None => {
                return Err(self.error(
                    ErrorKind::Eof,
                    "unexpected end of input: line has no newline",
                    None,
                ));
            }
        }
        self.check_line_length(limits)?;
        self.pos += 1;
        self.line += 1;
        self.line_start = self.pos;
        Ok(())
    }

    /// An error when the current line, up to `pos`, is longer than allowed.
    pub(super) fn check_line_length(&self, limits: &Limits) -> Result<(), ParseError> {
        let len = self.pos - self.line_start;
        if len > limits.max_line_bytes {
            return Err(self.limit_error("line too long", len, limits.max_line_bytes));
        }
        Ok(())
    }
}

/// Unescapes HELP text. `\\` and `\n` always; `\"` too when `quote` (OpenMetrics).
/// Any other backslash is kept as written.
pub(super) fn unescape_help(s: &str, quote: bool) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let mut rest = chars.clone();
        match rest.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quote => out.push('"'),
            _ => {
                out.push('\\');
                continue;
            }
        }
        chars = rest;
    }
    Cow::Owned(out)
}

/// Checks that label names are unique; returns a repeated name.
pub(super) fn check_unique_labels<'a>(labels: &[Label<'a>]) -> Result<(), &'a str> {
    // Quadratic on the handful of labels real series carry; sorted beyond that,
    // so that a hostile label set costs n log n.
    const QUADRATIC_MAX: usize = 16;
    if labels.len() <= QUADRATIC_MAX {
        for (i, a) in labels.iter().enumerate() {
            if labels
                .iter()
                .skip(i + 1)
                .any(|b| same_bytes(b.name.as_bytes(), a.name.as_bytes()))
            {
                return Err(a.name);
            }
        }
        return Ok(());
    }
    let mut names: Vec<&'a str> = labels.iter().map(|l| l.name).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w.first() == w.get(1)) {
        Some(w) => Err(w.first().copied().unwrap_or("")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_slice_equality() {
        let base: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..=base.len() {
            let a = &base[..len];
            assert!(same_bytes(a, a), "len {len}");
            assert!(!same_bytes(a, &base[..len.saturating_sub(1)]) || len == 0);
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!same_bytes(a, &b), "len {len}, differs at {at}");
            }
        }
    }

    /// The word-at-a-time scanners agree with byte-at-a-time definitions on
    /// every byte value in every position.
    #[test]
    fn swar_scanners_match_bytewise() {
        let mut rng = fastrand::Rng::with_seed(3);
        let alphabet: Vec<u8> = (0..=255).collect();
        for _ in 0..20_000 {
            let len = rng.usize(0..24);
            let hay: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.bool() {
                        *rng.choice(b"aZ09_:{ \t\n\"\\".iter()).unwrap_or(&b'a')
                    } else {
                        alphabet[rng.usize(0..256)]
                    }
                })
                .collect();
            let from = rng.usize(0..=len);
            for colon in [false, true] {
                let want = (from..len)
                    .find(|&i| {
                        let b = hay[i];
                        !(b.is_ascii_alphanumeric() || b == b'_' || (colon && b == b':'))
                    })
                    .unwrap_or(len);
                assert_eq!(ident_end(&hay, from, colon), want, "{hay:?} from {from}");
            }
            let needles = [b'"', b'\\', b'\n'];
            let want = (from..len)
                .find(|&i| needles.contains(&hay[i]))
                .unwrap_or(len);
            assert_eq!(find_any(&hay, from, needles), want, "{hay:?} from {from}");
        }
    }
}
