//! An incremental parser for the Journal Export Format, the stream
//! `journalctl --output=export` writes.
//!
//! See: ../shared/testdata/journal-export/JOURNAL_EXPORT_FORMATS.md (systemd's
//! `docs/JOURNAL_EXPORT_FORMATS.md`).
//!
//! ```text
//! entry  = field* "\n"                      // a blank line ends an entry
//! field  = NAME "=" text "\n"               // text: no newline in it
//!        | NAME "\n" len:u64le data "\n"    // binary: any bytes, len of them
//! NAME   = [A-Z_][A-Z0-9_]{0,63}
//! ```
//!
//! The parser is fed the stream in chunks of any size (an entry, a field, a
//! name or a length may be split anywhere) and calls back once per entry,
//! with borrowed fields: nothing is allocated per field.
//!
//! # Bounded memory
//!
//! A value longer than [`Limits::max_field`] is cut to it (the field is marked
//! truncated); an entry whose kept names and values exceed
//! [`Limits::max_entry`], or with more than [`MAX_FIELDS`] fields, is reported
//! [`Outcome::TooLarge`] with nothing but its cursor. Binary lengths are only
//! counted down, never allocated: a stream claiming a 700 MiB field costs
//! `max_field` bytes. Memory is at most `max_entry` plus the field table.
//!
//! # Bad input
//!
//! A stream that breaks the grammar (a bad name, a binary length above
//! systemd's 768 MiB `DATA_SIZE_MAX`, binary data not followed by a newline)
//! loses only the entry it is in: the parser skips to the next blank line and
//! reports the entry [`Outcome::Malformed`], with its cursor when that came
//! before the damage. A stream that ends inside an entry is completed by
//! [`Parser::finish`]; a stream that ends without the final blank line after a
//! whole field yields that last entry.

use std::fmt;

/// Largest binary field systemd accepts (`DATA_SIZE_MAX` in journald and
/// journal-remote); a larger length means the stream is not export format.
pub const MAX_DATA_LEN: u64 = 768 << 20;

/// Longest field name journald accepts (`JOURNAL_FIELD_NAME_MAX`... in
/// practice `journal_field_valid` caps names at 64 bytes).
pub const MAX_NAME_LEN: usize = 64;

/// Most fields kept per entry (journald's `ENTRY_FIELD_COUNT_MAX`); an entry
/// with more is [`Outcome::TooLarge`]. Bounds the field table's memory.
pub const MAX_FIELDS: usize = 1024;

/// Longest cursor kept. Real cursors are about 150 bytes; an entry whose
/// `__CURSOR` is longer is reported without one.
pub const MAX_CURSOR_LEN: usize = 512;

/// Buffer capacity kept between entries; a larger entry's buffer is shrunk
/// back after it, so one big entry does not pin memory.
const RETAINED_CAPACITY: usize = 64 << 10;

/// How much of one entry the parser keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest value kept, in bytes; longer values are cut. Invariant: at
    /// least 1 (enforced by the config's 1 KiB minimum).
    pub max_field: usize,
    /// Most name and value bytes kept per entry; a larger entry is skipped.
    pub max_entry: usize,
}

impl Default for Limits {
    /// The config's defaults: 128 KiB per field, 512 KiB per entry.
    fn default() -> Self {
        Limits {
            max_field: 128 << 10,
            max_entry: 512 << 10,
        }
    }
}

/// Why an entry was not parsed whole. Display is short and lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// A field name is empty, has a byte other than A-Z, 0-9 and `_`, or
    /// starts with a digit.
    InvalidName,
    /// A field name is longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong,
    /// A binary field claims more than [`MAX_DATA_LEN`] bytes.
    DataTooLong(u64),
    /// A binary field's data is not followed by a newline.
    MissingNewline,
    /// The stream ended inside a field.
    UnexpectedEnd,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::InvalidName => f.write_str("invalid field name"),
            ParseError::NameTooLong => {
                write!(f, "field name longer than {MAX_NAME_LEN} bytes")
            }
            ParseError::DataTooLong(n) => {
                write!(f, "binary field of {n} bytes exceeds 768 MiB")
            }
            ParseError::MissingNewline => f.write_str("binary field not followed by a newline"),
            ParseError::UnexpectedEnd => f.write_str("stream ended inside a field"),
        }
    }
}

impl std::error::Error for ParseError {}

/// What became of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Parsed; some values may be cut (see [`Entry::truncated_fields`]).
    Complete,
    /// Over [`Limits::max_entry`] or [`MAX_FIELDS`]: no fields, only the cursor.
    TooLarge,
    /// The stream broke the grammar inside this entry; the fields before the
    /// damage are kept, and the parser went on at the next blank line.
    Malformed(ParseError),
}

/// One parsed entry, borrowed from the parser until the callback returns.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    data: &'a [u8],
    fields: &'a [Span],
    cursor: Option<&'a [u8]>,
    truncated: u32,
    outcome: Outcome,
}

/// One field of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field name, such as `MESSAGE`: A-Z, 0-9 and `_`.
    pub name: &'a [u8],
    /// The value, cut to [`Limits::max_field`].
    pub value: &'a [u8],
    /// Whether the value was cut.
    pub truncated: bool,
}

impl<'a> Entry<'a> {
    /// The fields in stream order; a repeated field appears once per value.
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let data = self.data;
        self.fields.iter().map(move |s| Field {
            name: data.get(s.start..s.name_end).unwrap_or_default(),
            value: data.get(s.name_end..s.end).unwrap_or_default(),
            truncated: s.truncated,
        })
    }

    /// The first value of field `name`.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.fields().find(|f| f.name == name).map(|f| f.value)
    }

    /// The entry's `__CURSOR` (its first one), kept even when the entry is
    /// too large; `None` if it had none, or it was damaged or too long.
    pub fn cursor(&self) -> Option<&'a [u8]> {
        self.cursor
    }

    /// How many values were cut to [`Limits::max_field`].
    pub fn truncated_fields(&self) -> u32 {
        self.truncated
    }

    /// Whether the entry is whole, too large or malformed.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Bytes of names and values kept.
    pub fn size(&self) -> usize {
        self.data.len()
    }
}

/// Where one field's bytes are in the entry buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    name_end: usize,
    end: usize,
    truncated: bool,
}

/// Where the parser is in the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: a name, or the blank line that ends an entry.
    LineStart,
    /// Inside a name (its bytes so far are in `name`).
    Name,
    /// Inside a text value.
    Text,
    /// Reading a binary field's 8-byte length.
    BinLen { got: u8, bytes: [u8; 8] },
    /// Inside binary data, with this many bytes to go.
    BinData { remaining: u64 },
    /// After binary data: the newline must come next.
    BinEnd,
    /// After damage: skipping to a blank line. `newline`: the last byte
    /// skipped was a newline.
    Resync { newline: bool },
}

/// The incremental parser. Feed it chunks with [`Parser::feed`] and end the
/// stream with [`Parser::finish`].
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    state: State,
    /// Names and values of the entry being read. Invariant: at most
    /// `limits.max_entry` bytes.
    data: Vec<u8>,
    /// Invariant: at most [`MAX_FIELDS`] spans, each inside `data`.
    fields: Vec<Span>,
    /// The current name. Invariant: `name_len <= MAX_NAME_LEN`.
    name: [u8; MAX_NAME_LEN],
    name_len: usize,
    /// Where the current field starts in `data`, and its value.
    field_start: usize,
    value_start: usize,
    field_truncated: bool,
    /// Whether the current field is the entry's first `__CURSOR`.
    in_cursor: bool,
    /// The entry's cursor. Invariant: at most [`MAX_CURSOR_LEN`] bytes.
    cursor: Vec<u8>,
    /// The entry had a `__CURSOR` field, and it was whole.
    cursor_state: CursorState,
    /// Some byte of an entry has been read since the last blank line.
    in_entry: bool,
    /// The entry outgrew the limits: values are no longer kept.
    too_large: bool,
    truncated: u32,
    error: Option<ParseError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CursorState {
    None,
    Reading,
    Whole,
    Bad,
}

impl Parser {
    /// A parser keeping at most `limits` of each entry.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits: Limits {
                max_field: limits.max_field.max(1),
                max_entry: limits.max_entry,
            },
            state: State::LineStart,
            data: Vec::new(),
            fields: Vec::new(),
            name: [0; MAX_NAME_LEN],
            name_len: 0,
            field_start: 0,
            value_start: 0,
            field_truncated: false,
            in_cursor: false,
            cursor: Vec::new(),
            cursor_state: CursorState::None,
            in_entry: false,
            too_large: false,
            truncated: 0,
            error: None,
        }
    }

    /// Parses `input`, the next bytes of the stream, calling `on_entry` for
    /// every entry that ends in it.
    pub fn feed(&mut self, mut input: &[u8], on_entry: &mut impl FnMut(&Entry<'_>)) {
        while !input.is_empty() {
            input = match self.state {
                State::LineStart => self.line_start(input, on_entry),
                State::Name => self.name(input),
                State::Text => self.text(input),
                State::BinLen { got, bytes } => self.bin_len(input, got, bytes),
                State::BinData { remaining } => self.bin_data(input, remaining),
                State::BinEnd => self.bin_end(input),
                State::Resync { newline } => self.resync(input, newline, on_entry),
            };
        }
    }

    /// Ends the stream: an entry in progress is reported (whole if the stream
    /// stopped after a complete field, else [`Outcome::Malformed`] with
    /// [`ParseError::UnexpectedEnd`]), and the parser is ready for a new stream.
    pub fn finish(&mut self, on_entry: &mut impl FnMut(&Entry<'_>)) {
        if self.in_entry {
            match self.state {
                State::LineStart | State::Resync { .. } => {}
                _ => {
                    self.error.get_or_insert(ParseError::UnexpectedEnd);
                }
            }
            self.emit(on_entry);
        }
        self.reset();
    }

    /// Forgets any entry in progress, for a new stream.
    pub fn reset(&mut self) {
        self.clear_entry();
        self.state = State::LineStart;
    }

    /// Bytes the parser holds on the heap (its buffers' capacity).
    pub fn memory(&self) -> usize {
        self.data.capacity()
            + self.fields.capacity() * std::mem::size_of::<Span>()
            + self.cursor.capacity()
    }

    /// Whether part of an entry has been read and not yet reported.
    pub fn in_entry(&self) -> bool {
        self.in_entry
    }

    fn line_start<'i>(
        &mut self,
        input: &'i [u8],
        on_entry: &mut impl FnMut(&Entry<'_>),
    ) -> &'i [u8] {
        match input.split_first() {
            Some((b'\n', rest)) => {
                if self.in_entry {
                    self.emit(on_entry);
                }
                rest
            }
            _ => {
                self.in_entry = true;
                self.name_len = 0;
                self.state = State::Name;
                input
            }
        }
    }

    fn name<'i>(&mut self, input: &'i [u8]) -> &'i [u8] {
        let end = memchr::memchr2(b'=', b'\n', input).unwrap_or(input.len());
        let (part, rest) = split(input, end);
        for &b in part {
            let ok =
                b.is_ascii_uppercase() || b == b'_' || (b.is_ascii_digit() && self.name_len > 0);
            if !ok {
                return self.fail(ParseError::InvalidName, rest);
            }
            match self.name.get_mut(self.name_len) {
                Some(slot) => *slot = b,
                None => return self.fail(ParseError::NameTooLong, rest),
            }
            self.name_len += 1;
        }
        let Some((&delimiter, rest)) = rest.split_first() else {
            return rest;
        };
        if self.name_len == 0 {
            // "=value": `rest` skips the '=' (never a newline here).
            return self.fail(ParseError::InvalidName, rest);
        }
        self.begin_field();
        self.state = if delimiter == b'=' {
            State::Text
        } else {
            State::BinLen {
                got: 0,
                bytes: [0; 8],
            }
        };
        rest
    }

    fn text<'i>(&mut self, input: &'i [u8]) -> &'i [u8] {
        match memchr::memchr(b'\n', input) {
            Some(i) => {
                let (value, rest) = split(input, i);
                self.value(value);
                self.end_field();
                self.state = State::LineStart;
                rest.get(1..).unwrap_or_default()
            }
            None => {
                self.value(input);
                &[]
            }
        }
    }

    fn bin_len<'i>(&mut self, input: &'i [u8], got: u8, mut bytes: [u8; 8]) -> &'i [u8] {
        let mut got = usize::from(got);
        let mut rest = input;
        while got < 8 {
            let Some((&b, r)) = rest.split_first() else {
                break;
            };
            if let Some(slot) = bytes.get_mut(got) {
                *slot = b;
            }
            got += 1;
            rest = r;
        }
        if got < 8 {
            self.state = State::BinLen {
                got: u8::try_from(got).unwrap_or(8),
                bytes,
            };
            return rest;
        }
        let len = u64::from_le_bytes(bytes);
        if len > MAX_DATA_LEN {
            return self.fail(ParseError::DataTooLong(len), rest);
        }
        self.state = if len == 0 {
            State::BinEnd
        } else {
            State::BinData { remaining: len }
        };
        rest
    }

    fn bin_data<'i>(&mut self, input: &'i [u8], remaining: u64) -> &'i [u8] {
        let take = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
        let (data, rest) = split(input, take);
        self.value(data);
        let left = remaining.saturating_sub(data.len() as u64);
        self.state = if left == 0 {
            State::BinEnd
        } else {
            State::BinData { remaining: left }
        };
        rest
    }

    fn bin_end<'i>(&mut self, input: &'i [u8]) -> &'i [u8] {
        match input.split_first() {
            Some((b'\n', rest)) => {
                self.end_field();
                self.state = State::LineStart;
                rest
            }
            // The byte is not consumed: if it starts a blank line, resync sees it.
            _ => self.fail(ParseError::MissingNewline, input),
        }
    }

    fn resync<'i>(
        &mut self,
        input: &'i [u8],
        newline: bool,
        on_entry: &mut impl FnMut(&Entry<'_>),
    ) -> &'i [u8] {
        if newline {
            if let Some((b'\n', rest)) = input.split_first() {
                self.emit(on_entry);
                self.state = State::LineStart;
                return rest;
            }
        }
        match memchr::memchr(b'\n', input) {
            Some(i) => {
                self.state = State::Resync { newline: true };
                input.get(i + 1..).unwrap_or_default()
            }
            None => {
                self.state = State::Resync { newline: false };
                &[]
            }
        }
    }

    /// Marks the entry damaged and skips to its end. `rest` is the input after
    /// the bytes looked at; the newline that may follow is left to resync.
    fn fail<'i>(&mut self, error: ParseError, rest: &'i [u8]) -> &'i [u8] {
        self.error.get_or_insert(error);
        if self.in_cursor {
            // A cursor cut short by damage is not a cursor.
            self.cursor_state = CursorState::Bad;
            self.in_cursor = false;
        }
        self.state = State::Resync { newline: false };
        rest
    }

    fn begin_field(&mut self) {
        let len = self.name_len;
        let name = self.name.get(..len).unwrap_or_default();
        self.in_cursor = name == b"__CURSOR" && self.cursor_state == CursorState::None;
        if self.in_cursor {
            self.cursor_state = CursorState::Reading;
        }
        self.field_truncated = false;
        if !self.too_large
            && (self.fields.len() >= MAX_FIELDS
                || self.data.len().saturating_add(len) > self.limits.max_entry)
        {
            self.overflow();
        }
        self.field_start = self.data.len();
        if !self.too_large {
            self.data
                .extend_from_slice(self.name.get(..len).unwrap_or_default());
        }
        self.value_start = self.data.len();
    }

    /// Keeps what fits of the next bytes of the current value.
    fn value(&mut self, bytes: &[u8]) {
        if self.in_cursor {
            if self.cursor.len() + bytes.len() <= MAX_CURSOR_LEN {
                self.cursor.extend_from_slice(bytes);
            } else {
                self.cursor_state = CursorState::Bad;
                self.in_cursor = false;
            }
        }
        if self.too_large {
            return;
        }
        let kept = self.data.len() - self.value_start;
        let room = self.limits.max_field.saturating_sub(kept);
        let (keep, cut) = split(bytes, room.min(bytes.len()));
        if !cut.is_empty() {
            self.field_truncated = true;
        }
        if self.data.len().saturating_add(keep.len()) > self.limits.max_entry {
            self.overflow();
            return;
        }
        self.data.extend_from_slice(keep);
    }

    fn end_field(&mut self) {
        if self.in_cursor {
            self.cursor_state = CursorState::Whole;
            self.in_cursor = false;
        }
        if self.too_large {
            return;
        }
        if self.field_truncated {
            self.truncated = self.truncated.saturating_add(1);
        }
        self.fields.push(Span {
            start: self.field_start,
            name_end: self.value_start,
            end: self.data.len(),
            truncated: self.field_truncated,
        });
    }

    /// The entry is over the limits: drop what it holds, keep reading it.
    fn overflow(&mut self) {
        self.too_large = true;
        self.data.clear();
        self.fields.clear();
        self.truncated = 0;
    }

    fn emit(&mut self, on_entry: &mut impl FnMut(&Entry<'_>)) {
        let outcome = match (self.error, self.too_large) {
            (Some(e), _) => Outcome::Malformed(e),
            (None, true) => Outcome::TooLarge,
            (None, false) => Outcome::Complete,
        };
        let cursor = (self.cursor_state == CursorState::Whole).then_some(self.cursor.as_slice());
        on_entry(&Entry {
            data: &self.data,
            fields: &self.fields,
            cursor,
            truncated: self.truncated,
            outcome,
        });
        self.clear_entry();
    }

    fn clear_entry(&mut self) {
        self.data.clear();
        if self.data.capacity() > RETAINED_CAPACITY {
            self.data.shrink_to(RETAINED_CAPACITY);
        }
        self.fields.clear();
        if self.fields.capacity() > MAX_FIELDS / 4 {
            self.fields.shrink_to(MAX_FIELDS / 4);
        }
        self.cursor.clear();
        self.cursor_state = CursorState::None;
        self.in_cursor = false;
        self.in_entry = false;
        self.too_large = false;
        self.truncated = 0;
        self.error = None;
        self.name_len = 0;
    }
}

/// `input` split at `at`, or all of it and nothing when `at` is past its end.
fn split(input: &[u8], at: usize) -> (&[u8], &[u8]) {
    match (input.get(..at), input.get(at..)) {
        (Some(a), Some(b)) => (a, b),
        _ => (input, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of what the parser reported for one entry.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Got {
        fields: Vec<(String, Vec<u8>, bool)>,
        cursor: Option<Vec<u8>>,
        outcome: Outcome,
        truncated: u32,
    }

    fn collect(parser: &mut Parser, chunks: &[&[u8]], finish: bool) -> Vec<Got> {
        let mut out = Vec::new();
        let mut on = |e: &Entry<'_>| {
            out.push(Got {
                fields: e
                    .fields()
                    .map(|f| {
                        (
                            String::from_utf8(f.name.to_vec()).unwrap(),
                            f.value.to_vec(),
                            f.truncated,
                        )
                    })
                    .collect(),
                cursor: e.cursor().map(<[u8]>::to_vec),
                outcome: e.outcome(),
                truncated: e.truncated_fields(),
            })
        };
        for c in chunks {
            parser.feed(c, &mut on);
        }
        if finish {
            parser.finish(&mut on);
        }
        out
    }

    fn parse(input: &[u8]) -> Vec<Got> {
        collect(&mut Parser::new(Limits::default()), &[input], true)
    }

    fn binary(name: &str, value: &[u8]) -> Vec<u8> {
        let mut v = name.as_bytes().to_vec();
        v.push(b'\n');
        v.extend_from_slice(&(value.len() as u64).to_le_bytes());
        v.extend_from_slice(value);
        v.push(b'\n');
        v
    }

    #[test]
    fn text_binary_and_repeated_fields() {
        let mut s = b"__CURSOR=s=1;i=2\nMESSAGE=hello world\nA=1\nA=2\n".to_vec();
        s.extend(binary("BIN", b"foo\nbar\0\n"));
        s.extend_from_slice(b"EMPTY=\n\n__CURSOR=c2\nMESSAGE=two\n\n");
        let got = parse(&s);
        assert_eq!(got.len(), 2);
        let e = &got[0];
        assert_eq!(e.outcome, Outcome::Complete);
        assert_eq!(e.cursor.as_deref(), Some(&b"s=1;i=2"[..]));
        let names: Vec<_> = e.fields.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["__CURSOR", "MESSAGE", "A", "A", "BIN", "EMPTY"]);
        assert_eq!(e.fields[4].1, b"foo\nbar\0\n");
        assert_eq!(e.fields[5].1, b"");
        assert_eq!(got[1].cursor.as_deref(), Some(&b"c2"[..]));
    }

    #[test]
    fn every_split_point_gives_the_same_entries() {
        let mut s = b"__CURSOR=x\nMESSAGE=hi\n".to_vec();
        s.extend(binary("MESSAGE", &[0xff, b'\n', 0, 1, 2]));
        s.extend_from_slice(b"\n\nB=2\n\n");
        let whole = parse(&s);
        assert_eq!(whole.len(), 2);
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let mut p = Parser::new(Limits::default());
                let got = collect(&mut p, &[&s[..i], &s[i..j], &s[j..]], true);
                assert_eq!(got, whole, "split at {i} and {j}");
            }
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(
            collect(&mut Parser::new(Limits::default()), &bytes, true),
            whole
        );
    }

    #[test]
    fn stream_without_final_blank_line() {
        let got = parse(b"A=1\n\nB=2\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].fields[0].1, b"2");
        assert_eq!(got[1].outcome, Outcome::Complete);
        // Without finish, the last entry stays pending.
        let mut p = Parser::new(Limits::default());
        assert_eq!(collect(&mut p, &[b"A=1\n\nB=2\n"], false).len(), 1);
        assert!(p.in_entry());
    }

    #[test]
    fn stream_ending_inside_a_field_is_malformed() {
        for s in [
            &b"A=1\n\nB=2"[..],
            b"A=1\n\nB",
            b"A=1\n\nB\n\x05\0",
            b"A=1\n\nB\n\x05\0\0\0\0\0\0\0ab",
        ] {
            let got = parse(s);
            assert_eq!(got.len(), 2, "{s:?}");
            assert_eq!(
                got[1].outcome,
                Outcome::Malformed(ParseError::UnexpectedEnd),
                "{s:?}"
            );
        }
    }

    #[test]
    fn blank_lines_between_entries_are_ignored() {
        let got = parse(b"\n\n\nA=1\n\n\n\nB=2\n\n\n");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn damage_loses_only_its_entry() {
        let cases: &[(&[u8], ParseError)] = &[
            (
                b"__CURSOR=c\nbad name=1\nX=1\n\nA=2\n\n",
                ParseError::InvalidName,
            ),
            (b"__CURSOR=c\n=1\n\nA=2\n\n", ParseError::InvalidName),
            (b"__CURSOR=c\n1A=1\n\nA=2\n\n", ParseError::InvalidName),
            (
                b"__CURSOR=c\nN\n\x03\0\0\0\0\0\0\0abcX\n\nA=2\n\n",
                ParseError::MissingNewline,
            ),
            (
                b"__CURSOR=c\nN\n\xff\xff\xff\xff\xff\xff\xff\xff\n\nA=2\n\n",
                ParseError::DataTooLong(u64::MAX),
            ),
        ];
        for (s, err) in cases {
            let got = parse(s);
            assert_eq!(got.len(), 2, "{s:?}: {got:?}");
            assert_eq!(got[0].outcome, Outcome::Malformed(*err), "{s:?}");
            assert_eq!(got[0].cursor.as_deref(), Some(&b"c"[..]), "{s:?}");
            assert_eq!(got[1].outcome, Outcome::Complete, "{s:?}");
            assert_eq!(got[1].fields, [("A".into(), b"2".to_vec(), false)]);
        }
        let long = format!("{}=1\n\nA=2\n\n", "N".repeat(65));
        let got = parse(long.as_bytes());
        assert_eq!(got[0].outcome, Outcome::Malformed(ParseError::NameTooLong));
        assert_eq!(got[1].outcome, Outcome::Complete);
        // 64 bytes is allowed.
        let ok = format!("{}=1\n\n", "N".repeat(64));
        assert_eq!(parse(ok.as_bytes())[0].outcome, Outcome::Complete);
    }

    #[test]
    fn long_values_are_cut_and_counted() {
        let limits = Limits {
            max_field: 4,
            max_entry: 64,
        };
        let mut s = b"__CURSOR=a-cursor-longer-than-the-field-limit\nMESSAGE=123456789\n".to_vec();
        s.extend(binary("B", b"abcdefgh"));
        s.extend_from_slice(b"C=1234\n\n");
        let got = collect(&mut Parser::new(limits), &[&s], true);
        let e = &got[0];
        assert_eq!(e.outcome, Outcome::Complete);
        assert_eq!(
            e.cursor.as_deref(),
            Some(&b"a-cursor-longer-than-the-field-limit"[..])
        );
        assert_eq!(e.fields[1], ("MESSAGE".into(), b"1234".to_vec(), true));
        assert_eq!(e.fields[2], ("B".into(), b"abcd".to_vec(), true));
        assert_eq!(e.fields[3], ("C".into(), b"1234".to_vec(), false));
        assert_eq!(e.truncated, 3);
    }

    #[test]
    fn large_entries_keep_only_the_cursor() {
        let limits = Limits {
            max_field: 8,
            max_entry: 24,
        };
        let s = b"__CURSOR=cur\nA=1234567\nB=1234567\nC=1234567\n\nA=1\n\n";
        let got = collect(&mut Parser::new(limits), &[s], true);
        assert_eq!(got[0].outcome, Outcome::TooLarge);
        assert_eq!(got[0].cursor.as_deref(), Some(&b"cur"[..]));
        assert!(got[0].fields.is_empty());
        assert_eq!(got[1].outcome, Outcome::Complete);
        // The cursor survives even when it comes after the overflow.
        let s = b"A=12345678\nB=12345678\nC=12345678\n__CURSOR=late\n\n";
        let got = collect(&mut Parser::new(limits), &[s], true);
        assert_eq!(got[0].outcome, Outcome::TooLarge);
        assert_eq!(got[0].cursor.as_deref(), Some(&b"late"[..]));
    }

    #[test]
    fn too_many_fields_is_too_large() {
        let mut s = Vec::new();
        for _ in 0..=MAX_FIELDS {
            s.extend_from_slice(b"A=\n");
        }
        s.push(b'\n');
        let got = parse(&s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].outcome, Outcome::TooLarge);
    }

    #[test]
    fn huge_claimed_length_is_counted_down_not_allocated() {
        let mut s = b"B\n".to_vec();
        s.extend_from_slice(&(MAX_DATA_LEN).to_le_bytes());
        s.extend_from_slice(&[b'x'; 1000]);
        let mut p = Parser::new(Limits::default());
        let got = collect(&mut p, &[&s], false);
        assert!(got.is_empty());
        assert!(p.data.capacity() < 4096, "{}", p.data.capacity());
        let got = collect(&mut p, &[], true);
        assert_eq!(
            got[0].outcome,
            Outcome::Malformed(ParseError::UnexpectedEnd)
        );
    }

    #[test]
    fn a_bad_or_overlong_cursor_is_no_cursor() {
        let long = format!("__CURSOR={}\nA=1\n\n", "c".repeat(MAX_CURSOR_LEN + 1));
        assert_eq!(parse(long.as_bytes())[0].cursor, None);
        let got = parse(b"__CURSOR=first\n__CURSOR=second\n\n");
        assert_eq!(got[0].cursor.as_deref(), Some(&b"first"[..]));
        assert_eq!(parse(b"A=1\n\n")[0].cursor, None);
    }

    #[test]
    fn parse_error_is_small() {
        assert!(std::mem::size_of::<ParseError>() <= 16);
    }
}
