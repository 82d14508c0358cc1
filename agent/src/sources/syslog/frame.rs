//! Syslog over a byte stream (TCP): messages framed by octet counting
//! (`LEN SP MSG`, RFC 6587 3.4.1, as rsyslog's `omfwd` and `logger
//! --octet-count` send) or ended by a newline (3.4.2, the older practice).
//! Each frame says which: one that starts with a digit is octet-counted, as
//! RFC 6587 tells receivers to decide (a message starts with `<`).
//!
//! Memory is bounded by `max_message_size`: a longer message is skipped as it
//! arrives, never held, and counted.

/// What the deframer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole message.
    Message(&'a [u8]),
    /// A message longer than `max_message_size`, skipped.
    TooLarge,
    /// An octet count that is not a number: the rest of its line is skipped.
    Malformed,
}

/// Splits a stream into messages.
#[derive(Debug)]
pub struct Deframer {
    max: usize,
    buf: Vec<u8>,
    /// Bytes of an oversized octet-counted message still to skip.
    skip_bytes: usize,
    /// Skipping to the end of an oversized or malformed line.
    skip_line: bool,
}

/// Digits an octet count may have: `max_message_size` is at most 1 GiB.
const MAX_COUNT_DIGITS: usize = 10;

impl Deframer {
    /// A deframer for messages of at most `max` bytes.
    pub fn new(max: usize) -> Deframer {
        Deframer {
            max,
            buf: Vec::new(),
            skip_bytes: 0,
            skip_line: false,
        }
    }

    /// Bytes held for a message not yet whole.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds the next bytes; calls `out` for each frame they complete.
    pub fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(Frame<'_>)) {
        loop {
            if self.skip_bytes > 0 {
                let n = self.skip_bytes.min(data.len());
                self.skip_bytes -= n;
                data = data.get(n..).unwrap_or_default();
            }
            if self.skip_line {
                match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.skip_line = false;
                        data = data.get(i + 1..).unwrap_or_default();
                    }
                    None => return,
                }
            }
            if data.is_empty() {
                return;
            }
            // Take what may complete a frame, at most one frame's worth
            // beyond what is held, so the buffer stays bounded.
            let room = (self.max + MAX_COUNT_DIGITS + 1).saturating_sub(self.buf.len());
            let take = data.len().min(room.max(1));
            self.buf
                .extend_from_slice(data.get(..take).unwrap_or_default());
            data = data.get(take..).unwrap_or_default();
            self.drain(out);
        }
    }

    /// The stream ended: a last line without its newline is a message; a
    /// partial octet-counted one is lost (counted malformed).
    pub fn finish(&mut self, out: &mut dyn FnMut(Frame<'_>)) {
        let held = std::mem::take(&mut self.buf);
        let rest = skip_blank(&held);
        if rest.is_empty() || self.skip_bytes > 0 || self.skip_line {
            return;
        }
        if rest.first().is_some_and(u8::is_ascii_digit) {
            out(Frame::Malformed);
        } else {
            out(Frame::Message(rest));
        }
    }

    /// Emits every whole frame in the buffer and keeps the rest.
    fn drain(&mut self, out: &mut dyn FnMut(Frame<'_>)) {
        let mut at = 0;
        while let Some(rest) = self.buf.get(at..) {
            let blank = rest.len() - skip_blank(rest).len();
            at += blank;
            let rest = skip_blank(rest);
            if rest.is_empty() {
                break;
            }
            if rest.first().is_some_and(u8::is_ascii_digit) {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                if digits == rest.len() && digits <= MAX_COUNT_DIGITS {
                    break; // the count is still arriving
                }
                let count = (digits <= MAX_COUNT_DIGITS && rest.get(digits) == Some(&b' '))
                    .then(|| rest.get(..digits))
                    .flatten()
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| d.parse::<usize>().ok());
                let Some(count) = count else {
                    out(Frame::Malformed);
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            at += i + 1;
                            continue;
                        }
                        None => {
                            self.skip_line = true;
                            at = self.buf.len();
                            break;
                        }
                    }
                };
                let body = rest.get(digits + 1..).unwrap_or_default();
                if count > self.max {
                    out(Frame::TooLarge);
                    let have = body.len().min(count);
                    self.skip_bytes = count - have;
                    at += digits + 1 + have;
                    continue;
                }
                match body.get(..count) {
                    Some(msg) => {
                        out(Frame::Message(msg));
                        at += digits + 1 + count;
                    }
                    None => break,
                }
            } else {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) if i > self.max => {
                        out(Frame::TooLarge);
                        at += i + 1;
                    }
                    Some(i) => {
                        let line = rest.get(..i).unwrap_or_default();
                        out(Frame::Message(line.strip_suffix(b"\r").unwrap_or(line)));
                        at += i + 1;
                    }
                    None if rest.len() > self.max => {
                        out(Frame::TooLarge);
                        self.skip_line = true;
                        at = self.buf.len();
                        break;
                    }
                    None => break,
                }
            }
        }
        self.buf.drain(..at.min(self.buf.len()));
    }
}

/// Skips line ends and NULs between frames.
fn skip_blank(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .take_while(|&&b| matches!(b, b'\n' | b'\r' | 0))
        .count();
    s.get(n..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of `chunks` fed in order, as strings ("!large", "!bad").
    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut d = Deframer::new(max);
        let mut got = Vec::new();
        let mut out = |f: Frame<'_>| {
            got.push(match f {
                Frame::Message(m) => String::from_utf8_lossy(m).into_owned(),
                Frame::TooLarge => "!large".into(),
                Frame::Malformed => "!bad".into(),
            });
        };
        for c in chunks {
            d.feed(c, &mut out);
            assert!(d.pending() <= max + MAX_COUNT_DIGITS + 1);
        }
        d.finish(&mut out);
        got
    }

    #[test]
    fn octet_counted_and_newline_framed_messages_mix() {
        let stream = b"11 <13>1 - - x\n<13>plain line\r\n\n5 <1>ab15 <14>has\nnewline\n";
        let want = ["<13>1 - - x", "<13>plain line", "<1>ab", "<14>has\nnewline"];
        assert_eq!(frames(100, &[stream]), want);
        // A byte at a time, the same frames.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames(100, &bytes), want);
    }

    #[test]
    fn a_last_line_without_newline_is_a_message_a_partial_count_is_not() {
        assert_eq!(frames(100, &[b"<13>a\n<13>b"]), ["<13>a", "<13>b"]);
        assert_eq!(frames(100, &[b"<13>a\n20 <13>short"]), ["<13>a", "!bad"]);
    }

    #[test]
    fn oversized_messages_are_skipped_without_holding_them() {
        let mut stream = b"30 ".to_vec();
        stream.extend_from_slice(&[b'x'; 30]);
        stream.extend_from_slice(b"4 <1>a");
        let chunks: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(frames(10, &chunks), ["!large", "<1>a"]);
        let mut stream = vec![b'<'; 1000];
        stream.extend_from_slice(b"\n<2>ok\n");
        let chunks: Vec<&[u8]> = stream.chunks(64).collect();
        assert_eq!(frames(10, &chunks), ["!large", "<2>ok"]);
        // Exactly max is fine, one more is not.
        assert_eq!(frames(4, &[b"<1>a\n<1>ab\n"]), ["<1>a", "!large"]);
        assert_eq!(frames(4, &[b"4 <1>a5 <1>ab"]), ["<1>a", "!large"]);
    }

    #[test]
    fn bad_counts_skip_their_line() {
        assert_eq!(
            frames(100, &[b"12x <13>bad\n<13>next\n"]),
            ["!bad", "<13>next"]
        );
        assert_eq!(
            frames(100, &[b"99999999999 x\n<13>next\n"]),
            ["!bad", "<13>next"]
        );
    }

    #[test]
    fn a_huge_line_costs_at_most_one_message_of_memory() {
        let mut d = Deframer::new(1024);
        let chunk = vec![b'a'; 64 << 10];
        let mut n = 0;
        for _ in 0..32 {
            // 2 MiB in one line (light enough for the emulated ARM runs)
            d.feed(&chunk, &mut |f| {
                assert_eq!(f, Frame::TooLarge);
                n += 1;
            });
            assert!(d.pending() <= 1024 + 11);
        }
        d.feed(b"\n<1>x\n", &mut |f| assert_eq!(f, Frame::Message(b"<1>x")));
        assert_eq!(n, 1);
    }
}
