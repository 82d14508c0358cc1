//! Fuzzes the syslog receiver's parsers: the TCP deframer
//! (`tern::sources::syslog::frame`), the RFC 5424 / RFC 3164 message parser
//! (`parse`) and the conversion into an OTLP log record.
//!
//! Run: `cargo +nightly fuzz run syslog -- -max_total_time=120` (from
//! `fuzz/`; seed `corpus/syslog/` with the RFC 5424 examples, and lines of
//! `logger` and BusyBox syslogd, as in the unit tests).
//!
//! The first input byte picks the protocol, the largest message and how the
//! rest is cut into chunks. Beyond "no panic, no hang, no large allocation":
//! the frames must not depend on where the stream is cut, the deframer must
//! hold at most one message, every field must be a part of the input, and the
//! record written straight to protobuf must decode.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tern::config::SyslogProtocol;
use tern::otlp::logs::LogBatch;
use tern::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use tern::otlp::proto::resource::v1::Resource;
use tern::sources::syslog::frame::{Deframer, Frame};
use tern::sources::syslog::parse::parse;
use tern::sources::syslog::write_record;

/// 2026-12-07T12:00:00Z, the year RFC 3164 timestamps get.
const NOW: u64 = 1_796_644_800 * 1_000_000_000;

/// The frames of `data` cut into chunks of `sizes` (cycled), comparable.
fn frames(data: &[u8], max: usize, sizes: &[usize]) -> Vec<Option<Vec<u8>>> {
    let mut d = Deframer::new(max);
    let mut out = Vec::new();
    let mut push = |f: Frame<'_>| {
        out.push(match f {
            Frame::Message(m) => {
                assert!(m.len() <= max);
                Some(m.to_vec())
            }
            Frame::TooLarge => None,
            Frame::Malformed => Some(b"!malformed".to_vec()),
        })
    };
    let mut rest = data;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(n.clamp(1, rest.len()));
        d.feed(chunk, &mut push);
        assert!(d.pending() <= max + 11, "held {} bytes", d.pending());
        rest = tail;
    }
    d.finish(&mut push);
    out
}

fn within(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let protocol = match selector % 3 {
        0 => SyslogProtocol::Auto,
        1 => SyslogProtocol::Rfc5424,
        _ => SyslogProtocol::Rfc3164,
    };
    let max = if selector & 0x80 == 0 { 8192 } else { 16 };
    let whole = frames(body, max, &[body.len().max(1)]);
    let sizes = [1 + usize::from(selector >> 4 & 7), 1, 3];
    assert_eq!(frames(body, max, &sizes), whole, "frames depend on the chunking");

    let m = parse(body, protocol, NOW);
    assert!(m.priority.map_or(true, |p| p <= 191));
    for field in [m.hostname, m.appname, m.procid, m.msgid].into_iter().flatten() {
        assert!(within(field, body));
    }
    assert!(within(m.message, body));
    // A header that did not parse leaves no structured data behind (a
    // message is malformed without a priority too, its header parsed).
    if m.malformed && m.priority.is_some() {
        assert!(m.structured_data.is_empty());
    }
    // The record written straight to protobuf decodes, with the whole text.
    let mut batch = LogBatch::new("fuzz");
    let mut r = batch.begin(b"", Resource::default);
    write_record(&m, NOW, &mut r);
    r.end();
    let estimate = batch.bytes();
    let raw = batch.finish();
    assert!(raw.len() <= estimate + 64, "size {} > estimate {estimate}", raw.len());
    let req = ExportLogsServiceRequest::decode(raw).expect("decodes");
    let record = &req.resource_logs[0].scope_logs[0].log_records[0];
    assert!(record.body.is_some());
});
