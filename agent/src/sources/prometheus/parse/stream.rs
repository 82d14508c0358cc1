//! Parsing a body as it is read, holding a bounded window of it.
//!
//! [`Stream::parse`] reads the body into a window buffer and parses the whole
//! lines in it with the same state machine as [`Parser`](super::Parser); the
//! families it yields borrow the window. What one family leaves for the later
//! ones (the names seen, their metadata) is owned, so the parse state outlives
//! each window.
//!
//! # Cuts
//!
//! A window is parsed up to its last whole line. The parser stops early,
//! right after the first line of a family that starts in the last half
//! window (a HELP, TYPE or UNIT line for a new name, or a sample that starts
//! a family): the family before it was then yielded, and only that one line
//! is read twice. If no family starts there, it reads to the end of the
//! window. Either way, the family being read when it stops is *rewound*: the
//! state forgets it (its entries in the name sets, what its metadata lines
//! set), and the bytes from its first line on move to the front of the
//! buffer, to be read again, whole, with what is read next. The families
//! yielded are therefore those of the whole body, in order, wherever the
//! reads end; a family is never cut.
//!
//! The end-of-input rules (the 0.0.4 last newline, OpenMetrics `# EOF` last)
//! apply at the end of the body only: a window that is not the last ends
//! after a newline, so the parser only ever runs out of input there between
//! lines, where it stops instead. When an OpenMetrics window ends with
//! `# EOF`, the stream reads one more byte first, to tell the parser whether
//! the body ends there (else that line is an error, and the family before it
//! must not be yielded).
//!
//! # Memory
//!
//! The buffer holds `window` bytes as long as each family and line fits in
//! it (a family larger than half of it may cost a second parse of its first
//! part, when a window ends inside it). One that does not fit doubles the
//! buffer until it does, with a rewind and a new parse of that family each
//! time, so the work stays linear; after the body, a buffer that grew past
//! twice `window` shrinks back to `window`. So the bytes held are at most
//! about twice the largest family or line, or `window`; the body itself
//! bounds that: the caller limits how many bytes the reader gives (the
//! scrape's `body_size_limit`). Besides the buffer, the parse holds the
//! family being read (its samples and labels) and an owned copy of each
//! family name seen (for OpenMetrics, with its type's sample names), as
//! `Parser` does.
//!
//! # UTF-8
//!
//! Each window is checked before it is parsed. A byte that is not UTF-8 ends
//! the text at the start of its line: the lines before are parsed as usual,
//! and then, unless one of them was an error, the error names that line
//! (`Parser` does the same, so both give the same first error).

use std::fmt;
use std::io::{self, Read};

use super::scan::Cursor;
use super::text::reuse;
use super::{utf8_error, utf8_lines, Family, Format, Label, Limits, ParseError, State, Vectors};

/// Most samples the spare sample vector keeps between bodies.
const KEEP_SAMPLES: usize = 1024;

/// Most label vectors kept between bodies: a few families' worth, so that
/// an idle worker does not hold a large body's.
const KEEP_LABEL_VECTORS: usize = 256;

/// Parses an exposition that arrives in pieces, holding a bounded window of
/// it.
///
/// It parses the whole lines it holds and stops between families; a family
/// that the end of a window cuts off is read again, whole, with the next
/// window, so the families and the error are those [`Parser`](super::Parser)
/// gives for the whole body. A family or line larger than the window makes
/// the buffer grow, and it shrinks back after the body.
///
/// One `Stream` is reused for the bodies of one scrape worker: it keeps its
/// buffer and some vectors between them.
#[derive(Debug)]
pub struct Stream {
    /// The bytes of body held at once in the normal case. Invariant: at least 1.
    window: usize,
    strict: bool,
    /// `buf[..filled]` (see `parse`) is body not parsed yet; the rest is room
    /// to read into. Zeroed once, when it grows.
    buf: Vec<u8>,
    /// Kept from one body to the next, for the next families' samples.
    vectors: Vectors<'static>,
    /// Reused for the labels of each sample before they get a vector of their own.
    scratch: Vec<Label<'static>>,
    /// The largest `buf` was during the last body.
    peak: usize,
    /// How many windows the last body was parsed in (for tests of the work
    /// done).
    windows: usize,
}

/// Why [`Stream::parse`] stopped before the end of the body.
#[derive(Debug)]
pub enum StreamError {
    /// Reading the body failed.
    Read(io::Error),
    /// The body is not a valid exposition; see [`ParseError`].
    Parse(ParseError),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Read(e) => write!(f, "read: {e}"),
            StreamError::Parse(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StreamError::Read(e) => Some(e),
            StreamError::Parse(e) => Some(e),
        }
    }
}

impl Stream {
    /// A parser that holds `window` bytes of body at once in the normal case
    /// (256 KiB suits scrapes: a few hundred families of node_exporter's
    /// size; at least 1).
    pub fn new(window: usize) -> Stream {
        Stream {
            window: window.max(1),
            strict: false,
            buf: Vec::new(),
            vectors: Vectors::default(),
            scratch: Vec::new(),
            peak: 0,
            windows: 0,
        }
    }

    /// Enforces every OpenMetrics 1.0 value rule, as [`Parser::strict`](super::Parser::strict)
    /// does. For conformance tests.
    pub fn strict(mut self) -> Stream {
        self.strict = true;
        self
    }

    /// The most bytes the window buffer held during the last body: `window`,
    /// unless a family or line larger than about half of it made it grow.
    pub fn peak_window(&self) -> usize {
        self.peak
    }

    /// Reads `reader` to its end, calling `each` for every family in order:
    /// exactly the families `Parser::new(whole_body, format, limits)` yields.
    /// Stops at the first error (read or parse) and returns it; families
    /// before it were well formed, but the caller should drop the whole body
    /// (see the [parser's docs](super#errors)). Returns the number of body
    /// bytes read.
    ///
    /// Each family's vectors are reused for the next families once `each`
    /// returns.
    pub fn parse<R: Read>(
        &mut self,
        mut reader: R,
        format: Format,
        limits: &Limits,
        mut each: impl FnMut(&Family<'_>),
    ) -> Result<u64, StreamError> {
        self.peak = 0;
        self.windows = 0;
        let vectors = std::mem::take(&mut self.vectors);
        let state = State::new(format, self.window, vectors);
        let scratch = std::mem::take(&mut self.scratch);
        let (result, state, scratch) =
            self.run(&mut reader, format, limits, state, scratch, &mut each);
        let (mut spare, mut pool) = state.into_vectors();
        if spare.capacity() > KEEP_SAMPLES {
            spare = Vec::new();
        }
        pool.truncate(KEEP_LABEL_VECTORS);
        self.vectors = (spare, pool);
        self.scratch = scratch;
        if self.buf.len() > self.window.saturating_mul(2) {
            self.buf = vec![0; self.window];
        }
        result
    }

    /// The loop of [`Stream::parse`]: a window at a time. Returns the state
    /// and the scratch vector, for their vectors.
    fn run(
        &mut self,
        reader: &mut dyn Read,
        format: Format,
        limits: &Limits,
        mut state: State<'static>,
        mut scratch: Vec<Label<'static>>,
        each: &mut dyn FnMut(&Family<'_>),
    ) -> (
        Result<u64, StreamError>,
        State<'static>,
        Vec<Label<'static>>,
    ) {
        // The body is `buf[..filled]`, from line `line` on, then what is
        // still to read.
        let mut filled = 0;
        let mut line = 1;
        let mut read = 0u64;
        let mut at_eof = false;
        // Bytes to hold before parsing: `window`, doubled while a family
        // does not fit.
        let mut target = self.window;
        loop {
            if let Err(e) = self.fill(reader, &mut filled, target, &mut at_eof, &mut read) {
                return (Err(StreamError::Read(e)), state, scratch);
            }
            self.peak = self.peak.max(self.buf.len());
            let body = self.buf.get(..filled).unwrap_or(&[]);
            // Whole lines only, unless the body ends here.
            let end = if at_eof {
                filled
            } else {
                match body.iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None => {
                        target = filled.saturating_mul(2);
                        continue;
                    }
                }
            };
            let (text, bad_line) = utf8_lines(body.get(..end).unwrap_or(&[]), line);
            // Whether an OpenMetrics body ends with the `# EOF` that ends
            // this window decides whether that line is an error: find out.
            if format == Format::OpenMetrics
                && !at_eof
                && filled == end
                && bad_line.is_none()
                && ends_with_eof(text)
            {
                match more(reader, &mut read) {
                    Ok(more) => at_eof = !more,
                    Err(e) => return (Err(StreamError::Read(e)), state, scratch),
                }
            }
            let last = at_eof && bad_line.is_none();
            // Stop at a family that starts in the last half window (or the
            // last half of what there is to parse, so that each window moves
            // on by at least half when a long line follows), unless the window
            // ends the text (where it must be read whole).
            let pause_at = if at_eof || bad_line.is_some() {
                usize::MAX
            } else {
                end - (self.window / 2).min(end / 2)
            };
            let mut cur = Cursor::window(text, line, last, pause_at);
            self.windows += 1;
            // The state and scratch vector borrow this window until it ends.
            let mut st: State<'_> = state;
            let mut scr: Vec<Label<'_>> = scratch;
            let failed = loop {
                match st.next_family(&mut cur, limits, self.strict, &mut scr) {
                    Some(Ok(family)) => {
                        each(&family);
                        st.recycle(family.samples);
                    }
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            };
            let error = if let Some(e) = failed {
                Some(e)
            } else if last {
                None
            } else if bad_line.is_some() {
                // The text ends before the body, at a line that is not UTF-8.
                Some(utf8_error(cur.line()))
            } else {
                // Paused, or at the end of the window: rewind the family
                // being read, keep the body from its first line on.
                let (keep, next_line) = st.rewind(&cur);
                state = st.detach();
                scratch = reuse(scr);
                if keep == 0 {
                    // Nothing parsed for good: the family does not fit.
                    target = filled.saturating_mul(2);
                } else {
                    self.buf.copy_within(keep..filled, 0);
                    filled -= keep;
                    line = next_line;
                    // What is left is at most half a window and a line,
                    // unless a family larger than a window did not fit:
                    // then room for twice as much.
                    target = if filled < self.window {
                        self.window
                    } else {
                        filled.saturating_mul(2)
                    };
                }
                continue;
            };
            let result = match error {
                Some(e) => Err(StreamError::Parse(e)),
                None => Ok(read),
            };
            return (result, st.detach(), reuse(scr));
        }
    }

    /// Reads until `buf[..filled]` holds `target` bytes or the body ends.
    fn fill(
        &mut self,
        reader: &mut dyn Read,
        filled: &mut usize,
        target: usize,
        at_eof: &mut bool,
        read: &mut u64,
    ) -> io::Result<()> {
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        while *filled < target && !*at_eof {
            let room = self.buf.get_mut(*filled..target).unwrap_or(&mut []);
            match reader.read(room) {
                Ok(0) => *at_eof = true,
                Ok(n) => {
                    *filled += n;
                    *read += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// True when `text` ends with an OpenMetrics `# EOF` line.
fn ends_with_eof(text: &str) -> bool {
    text.strip_suffix("# EOF\n")
        .is_some_and(|before| before.is_empty() || before.ends_with('\n'))
}

/// True when the reader has more bytes (it reads one).
fn more(reader: &mut dyn Read, read: &mut u64) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    loop {
        match reader.read(&mut byte) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                *read += n as u64;
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
