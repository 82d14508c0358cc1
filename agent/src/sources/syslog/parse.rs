//! Syslog messages: RFC 5424 and RFC 3164 (BSD), as senders write them.
//!
//! The parser never fails: a message whose header does not fit the protocol
//! is [`Message::malformed`] and keeps everything after its priority as the
//! message text, so nothing a sender wrote is lost. RFC 3164 is a description
//! of practice, not a grammar; what is read here is what BusyBox syslogd,
//! libc's `syslog()` (glibc, musl), util-linux `logger` and rsyslog send:
//!
//! ```text
//! <PRI>Mmm dd hh:mm:ss [HOSTNAME ]TAG[PID]: MSG       libc, BusyBox, logger --rfc3164
//! <PRI>Mmm dd yyyy hh:mm:ss ...                       with a year (some devices)
//! <PRI>2026-12-07T10:00:00.123+01:00 HOST TAG: MSG    rsyslog's high-precision forwarding
//! <PRI>TAG: MSG                                       no timestamp (RFC 3164 4.3.2)
//! ```
//!
//! A token after the timestamp is the hostname unless it is the tag itself
//! (it ends in `:` or has a `[PID]`), as rsyslog decides. Timestamps without
//! a zone are read as UTC, as the OpenTelemetry Collector reads them by
//! default; the year of a timestamp without one is the current year, or the
//! previous one when that would put the message more than a month ahead.
//!
//! See: <https://www.rfc-editor.org/rfc/rfc5424>, <https://www.rfc-editor.org/rfc/rfc3164>

use std::borrow::Cow;

pub use crate::config::SyslogProtocol as Protocol;

/// The format a message was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 5424.
    Rfc5424,
    /// RFC 3164 (BSD).
    Rfc3164,
}

/// One structured-data element of RFC 5424: `[id name="value" ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element<'a> {
    /// The SD-ID.
    pub id: &'a [u8],
    /// Its parameters, values unescaped (`\"`, `\\`, `\]`).
    pub params: Vec<(&'a [u8], Cow<'a, [u8]>)>,
}

/// A parsed message; its fields borrow the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The format it was read as.
    pub format: Format,
    /// The priority, facility * 8 + severity; `None` without a valid `<PRI>`
    /// (RFC 3164 says to read that as 13, user.notice).
    pub priority: Option<u8>,
    /// The RFC 5424 version.
    pub version: Option<u16>,
    /// The time the sender gave, in ns since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The sender's host name.
    pub hostname: Option<&'a [u8]>,
    /// APP-NAME, or the RFC 3164 tag.
    pub appname: Option<&'a [u8]>,
    /// PROCID, or the RFC 3164 `[PID]`.
    pub procid: Option<&'a [u8]>,
    /// MSGID (RFC 5424).
    pub msgid: Option<&'a [u8]>,
    /// Structured data (RFC 5424).
    pub structured_data: Vec<Element<'a>>,
    /// The message text, without a UTF-8 BOM and trailing line ends.
    pub message: &'a [u8],
    /// Whether the header did not fit the protocol: then `message` is all
    /// that followed the priority.
    pub malformed: bool,
}

impl<'a> Message<'a> {
    /// A message of `format` with no header field: all of it is `message`.
    fn unparsed(format: Format, message: &'a [u8]) -> Message<'a> {
        Message {
            format,
            priority: None,
            version: None,
            timestamp: None,
            hostname: None,
            appname: None,
            procid: None,
            msgid: None,
            structured_data: Vec::new(),
            message,
            malformed: false,
        }
    }
}

/// The priority a message without one is read as: user.notice.
pub const DEFAULT_PRIORITY: u8 = 13;

/// Parses one message. `now` (ns since the epoch) gives RFC 3164 timestamps
/// their year.
pub fn parse(input: &[u8], protocol: Protocol, now: u64) -> Message<'_> {
    let input = trim_end(input);
    let (priority, rest) = match pri(input) {
        Some((p, rest)) => (Some(p), rest),
        None => (None, input),
    };
    let is_5424 = match protocol {
        Protocol::Rfc5424 => true,
        Protocol::Rfc3164 => false,
        Protocol::Auto => priority.is_some() && version(rest).is_some(),
    };
    let parsed = if is_5424 {
        rfc5424(rest)
    } else {
        Some(rfc3164(rest, now))
    };
    match parsed {
        Some(mut m) => {
            m.priority = priority;
            m.malformed |= priority.is_none();
            m
        }
        None => Message {
            priority,
            malformed: true,
            ..Message::unparsed(
                if is_5424 {
                    Format::Rfc5424
                } else {
                    Format::Rfc3164
                },
                rest,
            )
        },
    }
}

/// Strips trailing line ends and NULs, which some senders add.
fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [head @ .., b'\n' | b'\r' | 0] = s {
        s = head;
    }
    s
}

/// `<PRI>`: 1 to 3 digits, no leading zero, at most 191.
fn pri(s: &[u8]) -> Option<(u8, &[u8])> {
    let rest = s.strip_prefix(b"<")?;
    let end = rest.iter().position(|&b| b == b'>')?;
    let digits = rest.get(..end)?;
    if digits.is_empty() || digits.len() > 3 || (digits.len() > 1 && digits.first() == Some(&b'0'))
    {
        return None;
    }
    let n = number(digits)?;
    let p = u8::try_from(n).ok().filter(|&p| p <= 191)?;
    Some((p, rest.get(end + 1..)?))
}

/// The RFC 5424 VERSION and what follows its space.
fn version(s: &[u8]) -> Option<(u16, &[u8])> {
    let end = s.iter().position(|&b| b == b' ')?;
    let digits = s.get(..end)?;
    if digits.is_empty() || digits.len() > 3 || digits.first() == Some(&b'0') {
        return None;
    }
    let v = u16::try_from(number(digits)?).ok()?;
    Some((v, s.get(end + 1..)?))
}

/// A run of ASCII digits (at most 19) as a number.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// The next space-delimited field and what follows its space (`None` at the
/// end of input, or if the field is empty).
fn field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    match s.iter().position(|&b| b == b' ') {
        Some(0) => None,
        Some(i) => Some((s.get(..i)?, s.get(i + 1..)?)),
        None if s.is_empty() => None,
        None => Some((s, &[])),
    }
}

/// `-` is RFC 5424's NILVALUE.
fn nil(v: &[u8]) -> Option<&[u8]> {
    (v != b"-").then_some(v)
}

/// `VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]`
fn rfc5424(s: &[u8]) -> Option<Message<'_>> {
    let (version, s) = version(s)?;
    let (ts, s) = field(s)?;
    let timestamp = match ts {
        b"-" => None,
        t => Some(rfc3339(t)?),
    };
    let (hostname, s) = field(s)?;
    let (appname, s) = field(s)?;
    let (procid, s) = field(s)?;
    let (msgid, s) = field(s)?;
    let (structured_data, s) = if let Some(rest) = s.strip_prefix(b"-") {
        (Vec::new(), rest)
    } else {
        structured(s)?
    };
    let message = match s {
        [] => s,
        [b' ', rest @ ..] => rest.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(rest),
        _ => return None,
    };
    Some(Message {
        format: Format::Rfc5424,
        priority: None,
        version: Some(version),
        timestamp,
        hostname: nil(hostname),
        appname: nil(appname),
        procid: nil(procid),
        msgid: nil(msgid),
        structured_data,
        message,
        malformed: false,
    })
}

/// One or more `[id param="value" ...]` elements.
fn structured(mut s: &[u8]) -> Option<(Vec<Element<'_>>, &[u8])> {
    let mut elements = Vec::new();
    while let Some(rest) = s.strip_prefix(b"[") {
        let end = rest.iter().position(|&b| b == b' ' || b == b']')?;
        let id = rest.get(..end).filter(|id| !id.is_empty())?;
        let mut p = rest.get(end..)?;
        let mut params = Vec::new();
        loop {
            match p {
                [b']', rest @ ..] => {
                    s = rest;
                    break;
                }
                [b' ', rest @ ..] => {
                    let eq = rest.iter().position(|&b| b == b'=')?;
                    let name = rest
                        .get(..eq)
                        .filter(|n| !n.is_empty() && !n.contains(&b' '))?;
                    let quoted = rest.get(eq + 1..)?.strip_prefix(b"\"")?;
                    let (value, after) = param_value(quoted)?;
                    params.push((name, value));
                    p = after;
                }
                _ => return None,
            }
        }
        elements.push(Element { id, params });
    }
    (!elements.is_empty()).then_some((elements, s))
}

/// A PARAM-VALUE after its opening quote: the value, unescaped, and what
/// follows the closing quote.
fn param_value(s: &[u8]) -> Option<(Cow<'_, [u8]>, &[u8])> {
    let mut escaped = false;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'"' => break,
            _ => i += 1,
        }
    }
    let raw = s.get(..i)?;
    let after = s.get(i + 1..)?;
    if !escaped {
        return Some((Cow::Borrowed(raw), after));
    }
    // RFC 5424 6.3.3: only \" \\ \] are escapes; a backslash before anything
    // else is kept.
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b == b'\\' {
            if let Some(&next @ (b'"' | b'\\' | b']')) = bytes.peek() {
                out.push(next);
                bytes.next();
                continue;
            }
        }
        out.push(b);
    }
    Some((Cow::Owned(out), after))
}

/// An RFC 3164 message; always succeeds (the content is what is left).
fn rfc3164(s: &[u8], now: u64) -> Message<'_> {
    let mut m = Message::unparsed(Format::Rfc3164, s);
    let mut rest = s;
    if let Some((t, after)) = bsd_timestamp(s, now) {
        m.timestamp = Some(t);
        rest = after;
    } else if let Some((t, after)) = field(s).and_then(|(f, after)| Some((rfc3339(f)?, after))) {
        m.timestamp = Some(t);
        rest = after;
    }
    let had_timestamp = m.timestamp.is_some();
    // After a timestamp: HOSTNAME, unless the token is the tag itself.
    if had_timestamp {
        if let Some((token, after)) = field(rest) {
            if tag(rest).is_none() && !after.is_empty() {
                m.hostname = Some(token);
                rest = after;
            }
        }
    }
    if let Some((name, pid, after)) = tag(rest) {
        m.appname = Some(name);
        m.procid = pid;
        rest = after;
    }
    m.message = rest;
    m
}

/// A tag, its PID, and the content after them.
type Tagged<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8]);

/// `TAG[PID]: ` or `TAG: `: the tag, the PID and the content after them.
fn tag(s: &[u8]) -> Option<Tagged<'_>> {
    let end = s
        .iter()
        .position(|&b| b == b':' || b == b'[' || b == b' ')?;
    let name = s.get(..end).filter(|n| !n.is_empty() && n.len() <= 64)?;
    let (pid, after) = match s.get(end)? {
        b'[' => {
            let rest = s.get(end + 1..)?;
            let close = rest.iter().position(|&b| b == b']')?;
            let pid = rest.get(..close).filter(|p| !p.contains(&b' '))?;
            let after = rest.get(close + 1..)?;
            (Some(pid), after.strip_prefix(b":").unwrap_or(after))
        }
        b':' => (None, s.get(end + 1..)?),
        _ => return None,
    };
    Some((name, pid, after.strip_prefix(b" ").unwrap_or(after)))
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Mmm dd hh:mm:ss` or `Mmm dd yyyy hh:mm:ss` (day space- or zero-padded),
/// and what follows its space; read as UTC.
fn bsd_timestamp(s: &[u8], now: u64) -> Option<(u64, &[u8])> {
    let month = MONTHS.iter().position(|m| s.get(..3) == Some(&m[..]))?;
    let rest = s.get(3..)?.strip_prefix(b" ")?;
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let day_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if !(1..=2).contains(&day_len) {
        return None;
    }
    let day = number(rest.get(..day_len)?)?;
    let mut rest = rest.get(day_len..)?.strip_prefix(b" ")?;
    let mut year = None;
    if rest.get(4) == Some(&b' ') {
        year = Some(i64::try_from(number(rest.get(..4)?)?).ok()?);
        rest = rest.get(5..)?;
    }
    let (seconds, rest) = clock(rest)?;
    let month = month as u64 + 1;
    let now_s = i64::try_from(now / 1_000_000_000).unwrap_or(i64::MAX);
    let year = year.unwrap_or_else(|| {
        let (y, m, _) = civil_from_days(now_s.div_euclid(86_400));
        // December's messages read in January are last year's.
        if month > m + 1 {
            y - 1
        } else {
            y
        }
    });
    let days = days_from_civil(year, month, day)?;
    let t = nanos(days, seconds, 0, 0)?;
    let rest = match rest {
        [] => rest,
        [b' ', after @ ..] => after,
        _ => return None,
    };
    Some((t, rest))
}

/// `hh:mm:ss` as seconds of the day, and what follows it.
fn clock(s: &[u8]) -> Option<(u64, &[u8])> {
    let part = |i: usize, max: u64| -> Option<u64> {
        let d = s.get(i..i + 2)?;
        number(d).filter(|&n| n <= max)
    };
    if s.get(2) != Some(&b':') || s.get(5) != Some(&b':') {
        return None;
    }
    // 60: a leap second, as RFC 3339 allows.
    let seconds = part(0, 23)? * 3600 + part(3, 59)? * 60 + part(6, 60)?;
    Some((seconds, s.get(8..)?))
}

/// An RFC 3339 timestamp (`2026-12-07T10:00:00.123456+01:00`, `...Z`) in ns
/// since the epoch.
pub fn rfc3339(s: &[u8]) -> Option<u64> {
    if s.get(4) != Some(&b'-') || s.get(7) != Some(&b'-') {
        return None;
    }
    let year = i64::try_from(number(s.get(..4)?)?).ok()?;
    let month = number(s.get(5..7)?)?;
    let day = number(s.get(8..10)?)?;
    if !matches!(s.get(10), Some(b'T' | b't')) {
        return None;
    }
    let (seconds, mut rest) = clock(s.get(11..)?)?;
    let mut frac = 0u64;
    if let Some(r) = rest.strip_prefix(b".") {
        let n = r.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for i in 0..9 {
            let d = if i < n { r.get(i).copied()? - b'0' } else { 0 };
            frac = frac * 10 + u64::from(d);
        }
        rest = r.get(n..)?;
    }
    let offset: i64 = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), hh1, hh2, b':', mm1, mm2] => {
            let h = i64::try_from(number(&[*hh1, *hh2])?).ok()?;
            let m = i64::try_from(number(&[*mm1, *mm2])?).ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    nanos(days_from_civil(year, month, day)?, seconds, frac, offset)
}

/// Days, seconds of the day, nanoseconds and a zone offset (seconds east of
/// UTC) as ns since the epoch; `None` before 1970.
fn nanos(days: i64, seconds: u64, frac: u64, offset: i64) -> Option<u64> {
    let s = days
        .checked_mul(86_400)?
        .checked_add(i64::try_from(seconds).ok()?)?
        .checked_sub(offset)?;
    u64::try_from(s)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`); `None` for a month or day out of range.
fn days_from_civil(year: i64, month: u64, day: u64) -> Option<i64> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let last = *month_days.get(usize::try_from(month).ok()?.checked_sub(1)?)?;
    if day == 0 || day > last {
        return None;
    }
    let (m, d) = (i64::try_from(month).ok()?, i64::try_from(day).ok()?);
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The year, month (1-12) and day of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u64::try_from(m).unwrap_or(1),
        u64::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T12:00:00Z.
    const NOW: u64 = 1_796_644_800 * 1_000_000_000;

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn dates_convert_both_ways() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 2, 29), Some(11_016));
        assert_eq!(days_from_civil(2001, 2, 29), None);
        assert_eq!(days_from_civil(2026, 13, 1), None);
        for day in [0, 1, 59, 365, 11_016, 20_000, 20_794, 100_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), Some(day), "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
        assert_eq!(NOW / 1_000_000_000 / 86_400, 20_794);
    }

    #[test]
    fn rfc3339_timestamps_with_zones_and_fractions() {
        assert_eq!(rfc3339(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339(b"1985-04-12T23:20:50.52Z"),
            Some(482_196_050_520_000_000)
        );
        assert_eq!(
            rfc3339(b"1985-04-12T19:20:50.52-04:00"),
            Some(482_196_050_520_000_000)
        );
        assert_eq!(
            rfc3339(b"2003-10-11T22:14:15.003Z"),
            Some(1_065_910_455_003_000_000)
        );
        assert_eq!(
            rfc3339(b"2003-08-24T05:14:15.000003-07:00"),
            Some(1_061_727_255_000_003_000)
        );
        for bad in [
            &b"2003-10-11 22:14:15Z"[..],
            b"2003-10-11T22:14:15",
            b"2003-13-11T22:14:15Z",
            b"2003-10-11T24:14:15Z",
            b"2003-10-11T22:14:15.Z",
            b"2003-10-11T22:14:15+0100",
            b"1969-12-31T23:59:59Z",
            b"",
        ] {
            assert_eq!(rfc3339(bad), None, "{}", s(bad));
        }
    }

    /// RFC 5424 section 6.5, its four examples.
    #[test]
    fn rfc5424_examples() {
        let m = parse(b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xEF\xBB\xBF'su root' failed for lonvick on /dev/pts/8", Protocol::Auto, NOW);
        assert_eq!(m.format, Format::Rfc5424);
        assert!(!m.malformed);
        assert_eq!(m.priority, Some(34));
        assert_eq!(m.version, Some(1));
        assert_eq!(m.timestamp, Some(1_065_910_455_003_000_000));
        assert_eq!(m.hostname, Some(&b"mymachine.example.com"[..]));
        assert_eq!(m.appname, Some(&b"su"[..]));
        assert_eq!(m.procid, None);
        assert_eq!(m.msgid, Some(&b"ID47"[..]));
        assert_eq!(s(m.message), "'su root' failed for lonvick on /dev/pts/8");

        let m = parse(b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.", Protocol::Auto, NOW);
        assert_eq!((m.priority, m.malformed), (Some(165), false));
        assert_eq!(m.procid, Some(&b"8710"[..]));
        assert_eq!(m.msgid, None);
        assert_eq!(s(m.message), "%% It's time to make the do-nuts.");

        let m = parse(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \xEF\xBB\xBFAn application event log entry...", Protocol::Rfc5424, NOW);
        assert!(!m.malformed);
        assert_eq!(m.structured_data.len(), 1);
        let e = &m.structured_data[0];
        assert_eq!(s(e.id), "exampleSDID@32473");
        let params: Vec<(&str, &str)> = e.params.iter().map(|(k, v)| (s(k), s(v))).collect();
        assert_eq!(
            params,
            [
                ("iut", "3"),
                ("eventSource", "Application"),
                ("eventID", "1011")
            ]
        );
        assert_eq!(s(m.message), "An application event log entry...");

        let m = parse(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"][examplePriority@32473 class=\"high\"]", Protocol::Auto, NOW);
        assert!(!m.malformed);
        assert_eq!(m.structured_data.len(), 2);
        assert_eq!(s(m.structured_data[1].id), "examplePriority@32473");
        assert_eq!(m.message, b"");
    }

    #[test]
    fn rfc5424_escapes_nil_values_and_logger_output() {
        let m = parse(
            br#"<13>1 - - - - - [a@1 x="q\"b\\s\]e\n"]"#,
            Protocol::Auto,
            NOW,
        );
        assert!(!m.malformed);
        assert_eq!((m.timestamp, m.hostname, m.appname), (None, None, None));
        assert_eq!(s(&m.structured_data[0].params[0].1), r#"q"b\s]e\n"#);
        // util-linux logger --rfc5424, as it writes to a socket.
        let m = parse(b"<13>1 2026-12-07T11:59:58.123456+00:00 box tern-test 4242 - [timeQuality tzKnown=\"1\" isSynced=\"0\"] hello world\n", Protocol::Auto, NOW);
        assert!(!m.malformed);
        assert_eq!(m.timestamp, Some(NOW - 2_000_000_000 + 123_456_000));
        assert_eq!(s(m.appname.unwrap()), "tern-test");
        assert_eq!(s(m.message), "hello world");
    }

    #[test]
    fn rfc5424_damaged_headers_are_malformed_and_keep_their_text() {
        for bad in [
            &b"<13>1 2003-10-11T22:14:15Z host"[..],
            b"<13>1 2003-10-11T22:14:15Z host app - - [broken",
            b"<13>1 2003-10-11T22:14:15Z host app - - [id a=\"1\"]x",
            b"<13>1 not-a-time host app - - - msg",
            b"<13>1 2003-10-11T22:14:15Z host app - -  - msg",
            b"<13>1 2003-10-11T22:14:15Z host app - - [id a=1] msg",
        ] {
            let m = parse(bad, Protocol::Auto, NOW);
            assert!(m.malformed, "{}", s(bad));
            assert_eq!(m.priority, Some(13));
            assert_eq!(m.message, &bad[4..]);
        }
        // An RFC 3164 message read as RFC 5424.
        let m = parse(b"<13>Dec  7 12:00:00 app: hi", Protocol::Rfc5424, NOW);
        assert!(m.malformed);
        assert_eq!(s(m.message), "Dec  7 12:00:00 app: hi");
    }

    #[test]
    fn rfc3164_as_libc_busybox_and_logger_send_it() {
        let t = NOW - 3600 * 1_000_000_000;
        // libc syslog() to /dev/log: no hostname.
        let m = parse(
            b"<30>Dec  7 11:00:00 sshd[881]: Accepted key\n",
            Protocol::Auto,
            NOW,
        );
        assert_eq!(m.format, Format::Rfc3164);
        assert!(!m.malformed);
        assert_eq!(m.priority, Some(30));
        assert_eq!(m.timestamp, Some(t));
        assert_eq!(m.hostname, None);
        assert_eq!(s(m.appname.unwrap()), "sshd");
        assert_eq!(s(m.procid.unwrap()), "881");
        assert_eq!(s(m.message), "Accepted key");
        // logger --rfc3164 over the network: with the hostname.
        let m = parse(
            b"<13>Dec 07 11:00:00 box tern-test[12]: a: b",
            Protocol::Auto,
            NOW,
        );
        assert_eq!(m.timestamp, Some(t));
        assert_eq!(m.hostname, Some(&b"box"[..]));
        assert_eq!(s(m.appname.unwrap()), "tern-test");
        assert_eq!(s(m.message), "a: b");
        // A tag without a PID, and a hostname with a tag.
        let m = parse(
            b"<6>Dec  7 11:00:00 kernel: eth0 up",
            Protocol::Rfc3164,
            NOW,
        );
        assert_eq!((m.hostname, m.procid), (None, None));
        assert_eq!(s(m.appname.unwrap()), "kernel");
        assert_eq!(s(m.message), "eth0 up");
        let m = parse(
            b"<6>Dec  7 11:00:00 router dnsmasq: query",
            Protocol::Auto,
            NOW,
        );
        assert_eq!(m.hostname, Some(&b"router"[..]));
        assert_eq!(s(m.appname.unwrap()), "dnsmasq");
        // With a year, and with an RFC 3339 timestamp (rsyslog).
        let m = parse(b"<6>Dec  7 2025 11:00:00 box app: x", Protocol::Auto, NOW);
        assert_eq!(m.timestamp, Some(t - 365 * 86_400 * 1_000_000_000));
        let m = parse(
            b"<6>2026-12-07T12:00:00+01:00 box app: x",
            Protocol::Auto,
            NOW,
        );
        assert_eq!((m.timestamp, m.hostname), (Some(t), Some(&b"box"[..])));
        assert_eq!(s(m.message), "x");
        // No timestamp: tag and content (RFC 3164 4.3.2).
        let m = parse(b"<14>app: plain", Protocol::Auto, NOW);
        assert_eq!(
            (m.timestamp, s(m.appname.unwrap()), s(m.message)),
            (None, "app", "plain")
        );
        // Neither tag nor timestamp: all content.
        let m = parse(b"<14>just text here", Protocol::Auto, NOW);
        assert_eq!((m.appname, s(m.message)), (None, "just text here"));
        assert!(!m.malformed);
    }

    #[test]
    fn rfc3164_december_read_in_january_is_last_year() {
        // 2027-01-01T00:10:00Z
        let jan = (days_from_civil(2027, 1, 1).unwrap() as u64 * 86_400 + 600) * 1_000_000_000;
        let m = parse(b"<13>Dec 31 23:59:00 app: x", Protocol::Auto, jan);
        let dec31 =
            (days_from_civil(2026, 12, 31).unwrap() as u64 * 86_400 + 86_340) * 1_000_000_000;
        assert_eq!(m.timestamp, Some(dec31));
    }

    #[test]
    fn missing_or_invalid_priorities_are_malformed_but_kept() {
        for (input, message) in [
            (&b"no priority at all"[..], "no priority at all"),
            (
                b"<192>Dec  7 11:00:00 app: x",
                "<192>Dec  7 11:00:00 app: x",
            ),
            (b"<013>x", "<013>x"),
            (b"<>x", "<>x"),
            (b"<13", "<13"),
            (b"", ""),
        ] {
            let m = parse(input, Protocol::Auto, NOW);
            assert!(m.malformed, "{}", s(input));
            assert_eq!(m.priority, None);
            // Everything is kept; a leading tag-like word may become the tag.
            let text = m.appname.map_or(String::new(), |a| format!("{}: ", s(a))) + s(m.message);
            assert!(message.ends_with(s(m.message)), "{} -> {}", message, text);
        }
        assert_eq!(parse(b"<0>x", Protocol::Auto, NOW).priority, Some(0));
        assert_eq!(parse(b"<191>x", Protocol::Auto, NOW).priority, Some(191));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 7u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    b"<>1234567890 -[]=\"\\:TZ.+abc\xEF\xBB\xBF"[(seed >> 33) as usize % 29]
                })
                .collect();
            for p in [Protocol::Auto, Protocol::Rfc5424, Protocol::Rfc3164] {
                let _ = parse(&bytes, p, NOW);
            }
        }
    }
}
