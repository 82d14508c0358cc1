//! Journal entries to OTLP log records, and the batch they are gathered in.
//!
//! The mapping follows the OpenTelemetry log data model (its appendix maps
//! systemd-journald and syslog severities) and the semantic conventions, with
//! the journal field name as the attribute key where no convention exists:
//!
//! | journal field | OTLP |
//! | --- | --- |
//! | `MESSAGE` | body: a string, bytes when not UTF-8 (a value cut inside a character keeps its whole characters) |
//! | `PRIORITY` | `severity_number` and `severity_text` (below) |
//! | `_SOURCE_REALTIME_TIMESTAMP`, else `__REALTIME_TIMESTAMP` | `time_unix_nano` |
//! | (when tern read it) | `observed_time_unix_nano` |
//! | `_HOSTNAME`, `_MACHINE_ID`, `_BOOT_ID` | resource `host.name`, `host.id`, `_BOOT_ID` |
//! | `_SYSTEMD_UNIT`, `SYSLOG_IDENTIFIER`, `_TRANSPORT` | attributes of the same name |
//! | `_PID` | `process.pid` (int) |
//! | `_COMM` | `process.executable.name` |
//! | `_EXE` | `process.executable.path` |
//! | `CODE_FILE`, `CODE_LINE`, `CODE_FUNC` | `code.file.path`, `code.line.number` (int), `code.function.name` |
//!
//! Severity, from the data model's syslog column (Appendix B):
//!
//! | PRIORITY | text | number |
//! | --- | --- | --- |
//! | 0 | emerg | FATAL (21) |
//! | 1 | alert | ERROR3 (19) |
//! | 2 | crit | ERROR2 (18) |
//! | 3 | err | ERROR (17) |
//! | 4 | warning | WARN (13) |
//! | 5 | notice | INFO2 (10) |
//! | 6 | info | INFO (9) |
//! | 7 | debug | DEBUG (5) |
//!
//! The text is the name journalctl and syslog use. Other fields are not sent.
//! A repeated field maps its first value. `[resource]` attributes are added
//! to every resource and win over the journal's.
//!
//! See: <https://opentelemetry.io/docs/specs/otel/logs/data-model-appendix/>

use std::time::Instant;

use crate::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use crate::otlp::proto::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use crate::otlp::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use crate::otlp::proto::resource::v1::Resource;

use super::export_format::Entry;

/// The severity of a syslog priority (0-7): number and text.
pub fn severity(priority: u8) -> Option<(SeverityNumber, &'static str)> {
    Some(match priority {
        0 => (SeverityNumber::Fatal, "emerg"),
        1 => (SeverityNumber::Error3, "alert"),
        2 => (SeverityNumber::Error2, "crit"),
        3 => (SeverityNumber::Error, "err"),
        4 => (SeverityNumber::Warn, "warning"),
        5 => (SeverityNumber::Info2, "notice"),
        6 => (SeverityNumber::Info, "info"),
        7 => (SeverityNumber::Debug, "debug"),
        _ => return None,
    })
}

/// Unit names and globs as journalctl `--unit` takes them: a name without a
/// unit suffix and without glob characters gets `.service`.
#[derive(Debug, Clone, Default)]
pub struct UnitFilter {
    patterns: Vec<String>,
}

/// The unit types systemd knows; a name ending in one needs no `.service`.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".target",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".timer",
    ".path",
    ".slice",
    ".scope",
];

impl UnitFilter {
    /// A filter matching any of `units`.
    pub fn new(units: &[String]) -> UnitFilter {
        UnitFilter {
            patterns: units.iter().map(|u| mangle(u)).collect(),
        }
    }

    /// Whether no unit is listed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `unit` (a `_SYSTEMD_UNIT` value) matches one of the units.
    pub fn matches(&self, unit: &[u8]) -> bool {
        self.patterns.iter().any(|p| glob(p.as_bytes(), unit))
    }
}

/// journalctl's `unit_name_mangle`, in short.
fn mangle(unit: &str) -> String {
    let globbing = unit.contains(['*', '?', '[']);
    if globbing || UNIT_SUFFIXES.iter().any(|s| unit.ends_with(s)) {
        unit.to_string()
    } else {
        format!("{unit}.service")
    }
}

/// Shell-style matching of `*` (any run) and `?` (one byte); other bytes,
/// `[` included, match themselves. Iterative, so no input can make it recurse.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == b'*')
}

/// Turns entries into log records.
#[derive(Debug, Clone)]
pub struct Converter {
    /// `[resource]` attributes, added to every resource.
    extra: Vec<(String, String)>,
    exclude: UnitFilter,
}

/// The host an entry came from: what its resource is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Host<'a> {
    /// `_HOSTNAME`.
    pub name: Option<&'a [u8]>,
    /// `_MACHINE_ID`.
    pub machine_id: Option<&'a [u8]>,
    /// `_BOOT_ID`.
    pub boot_id: Option<&'a [u8]>,
}

/// One converted entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted<'a> {
    /// Where it came from.
    pub host: Host<'a>,
    /// The record.
    pub record: LogRecord,
    /// About how many bytes the record adds to an encoded batch.
    pub size: usize,
}

impl Converter {
    /// A converter adding `extra` to every resource and dropping entries of
    /// the `exclude_units`.
    pub fn new(extra: &[(String, String)], exclude_units: &[String]) -> Converter {
        Converter {
            extra: extra.to_vec(),
            exclude: UnitFilter::new(exclude_units),
        }
    }

    /// Whether the entry's unit is excluded.
    pub fn excluded(&self, entry: &Entry<'_>) -> bool {
        !self.exclude.is_empty()
            && entry
                .get(b"_SYSTEMD_UNIT")
                .is_some_and(|u| self.exclude.matches(u))
    }

    /// The log record of `entry`, read at `observed_nanos` (ns since the epoch).
    pub fn convert<'a>(&self, entry: &Entry<'a>, observed_nanos: u64) -> Converted<'a> {
        let mut host = Host::default();
        let mut record = LogRecord {
            observed_time_unix_nano: observed_nanos,
            ..Default::default()
        };
        let mut source_time = None;
        let mut journal_time = None;
        let mut seen = 0u16;
        let mut size = 32;
        for field in entry.fields() {
            let (bit, key): (u16, &'static str) = match field.name {
                b"MESSAGE" => (1, ""),
                b"PRIORITY" => (1 << 1, ""),
                b"_SOURCE_REALTIME_TIMESTAMP" => (1 << 2, ""),
                b"__REALTIME_TIMESTAMP" => (1 << 3, ""),
                b"_HOSTNAME" => (1 << 4, ""),
                b"_MACHINE_ID" => (1 << 5, ""),
                b"_BOOT_ID" => (1 << 6, ""),
                b"_SYSTEMD_UNIT" => (1 << 7, "_SYSTEMD_UNIT"),
                b"SYSLOG_IDENTIFIER" => (1 << 8, "SYSLOG_IDENTIFIER"),
                b"_PID" => (1 << 9, "process.pid"),
                b"_COMM" => (1 << 10, "process.executable.name"),
                b"_EXE" => (1 << 11, "process.executable.path"),
                b"_TRANSPORT" => (1 << 12, "_TRANSPORT"),
                b"CODE_FILE" => (1 << 13, "code.file.path"),
                b"CODE_LINE" => (1 << 14, "code.line.number"),
                b"CODE_FUNC" => (1 << 15, "code.function.name"),
                _ => continue,
            };
            if seen & bit != 0 {
                continue;
            }
            seen |= bit;
            let value = field.value;
            match bit {
                1 => {
                    size += value.len();
                    record.body = Some(body(value, field.truncated));
                }
                2 => {
                    if let Some((number, text)) = parse_priority(value).and_then(severity) {
                        record.severity_number = number as i32;
                        record.severity_text = text.to_string();
                    }
                }
                4 => source_time = micros_to_nanos(value),
                8 => journal_time = micros_to_nanos(value),
                16 => host.name = Some(value),
                32 => host.machine_id = Some(value),
                64 => host.boot_id = Some(value),
                _ => {
                    size += key.len() + value.len() + 8;
                    let int = key == "process.pid" || key == "code.line.number";
                    record.attributes.push(attribute(key, value, int));
                }
            }
        }
        record.time_unix_nano = source_time.or(journal_time).unwrap_or(0);
        Converted { host, record, size }
    }

    /// The resource of `host`: its journal attributes, then `[resource]`.
    pub fn resource(&self, host: &Host<'_>) -> Resource {
        let mut attributes: Vec<KeyValue> = Vec::with_capacity(3 + self.extra.len());
        for (key, value) in [
            ("host.name", host.name),
            ("host.id", host.machine_id),
            ("_BOOT_ID", host.boot_id),
        ] {
            if let Some(v) = value {
                attributes.push(attribute(key, v, false));
            }
        }
        for (k, v) in &self.extra {
            attributes.retain(|a| a.key != *k);
            attributes.push(crate::otlp::kv(k.as_str(), v.as_str()));
        }
        Resource {
            attributes,
            ..Default::default()
        }
    }
}

/// The body: a string when the value is UTF-8 (or was cut inside a
/// character), else bytes.
fn body(value: &[u8], truncated: bool) -> AnyValue {
    let v = match crate::otlp::logs::text_or_bytes(value, truncated) {
        Ok(s) => any_value::Value::StringValue(s.to_string()),
        Err(b) => any_value::Value::BytesValue(b.to_vec()),
    };
    AnyValue { value: Some(v) }
}

/// An attribute: an int when asked and the value is a decimal number, else a
/// string (invalid UTF-8 replaced; attribute values that are not text are
/// not worth the bytes type here).
fn attribute(key: &str, value: &[u8], int: bool) -> KeyValue {
    let v = match int.then(|| parse_decimal(value)).flatten() {
        Some(n) => any_value::Value::IntValue(i64::try_from(n).unwrap_or(i64::MAX)),
        None => any_value::Value::StringValue(String::from_utf8_lossy(value).into_owned()),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn parse_priority(value: &[u8]) -> Option<u8> {
    match value {
        [d @ b'0'..=b'7'] => Some(d - b'0'),
        _ => None,
    }
}

/// A non-empty run of ASCII digits that fits in u64.
fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// A journal timestamp (microseconds, decimal) in nanoseconds; `None` when it
/// is not a number or is 0 (unknown in OTLP).
fn micros_to_nanos(value: &[u8]) -> Option<u64> {
    parse_decimal(value)
        .and_then(|us| us.checked_mul(1000))
        .filter(|&ns| ns > 0)
}

/// Records gathered for one request, grouped by host.
#[derive(Debug, Default)]
pub struct Batch {
    groups: Vec<Group>,
    records: usize,
    bytes: usize,
    started: Option<Instant>,
}

#[derive(Debug)]
struct Group {
    name: Option<Vec<u8>>,
    machine_id: Option<Vec<u8>>,
    boot_id: Option<Vec<u8>>,
    resource: Resource,
    records: Vec<LogRecord>,
}

impl Group {
    fn is(&self, host: &Host<'_>) -> bool {
        self.name.as_deref() == host.name
            && self.machine_id.as_deref() == host.machine_id
            && self.boot_id.as_deref() == host.boot_id
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a converted entry.
    pub fn add(&mut self, converted: Converted<'_>, converter: &Converter) {
        let Converted { host, record, size } = converted;
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
        // Entries of one host come in runs: look at the last group first.
        let found = self.groups.iter().rposition(|g| g.is(&host));
        let group = match found {
            Some(i) => self.groups.get_mut(i),
            None => {
                self.bytes += 64;
                self.groups.push(Group {
                    name: host.name.map(<[u8]>::to_vec),
                    machine_id: host.machine_id.map(<[u8]>::to_vec),
                    boot_id: host.boot_id.map(<[u8]>::to_vec),
                    resource: converter.resource(&host),
                    records: Vec::new(),
                });
                self.groups.last_mut()
            }
        };
        if let Some(g) = group {
            g.records.push(record);
        }
        self.records += 1;
        self.bytes += size;
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the batch has no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// About how many bytes the batch encodes to.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the first record was added.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// The request for everything in the batch, which is left empty.
    pub fn take(&mut self) -> ExportLogsServiceRequest {
        let scope = InstrumentationScope {
            name: "tern/journald".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let resource_logs = self
            .groups
            .drain(..)
            .map(|g| ResourceLogs {
                resource: Some(g.resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records: g.records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        self.records = 0;
        self.bytes = 0;
        self.started = None;
        ExportLogsServiceRequest { resource_logs }
    }
}

#[cfg(test)]
mod tests {
    use super::super::export_format::{Limits, Parser};
    use super::*;

    fn with_entry<T>(s: &[u8], f: impl FnOnce(&Entry<'_>) -> T) -> T {
        with_entry_limited(s, Limits::default(), f)
    }

    fn with_entry_limited<T>(s: &[u8], limits: Limits, f: impl FnOnce(&Entry<'_>) -> T) -> T {
        let mut p = Parser::new(limits);
        let mut f = Some(f);
        let mut out = None;
        p.feed(s, &mut |e| {
            if let Some(f) = f.take() {
                out = Some(f(e));
            }
        });
        p.finish(&mut |e| {
            if let Some(f) = f.take() {
                out = Some(f(e));
            }
        });
        out.unwrap()
    }

    fn string(v: &AnyValue) -> &str {
        match &v.value {
            Some(any_value::Value::StringValue(s)) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn maps_fields_to_the_data_model() {
        let c = Converter::new(&[("host.name".into(), "cfg".into())], &[]);
        let s = b"__CURSOR=c\n__REALTIME_TIMESTAMP=1700000000000002\n_SOURCE_REALTIME_TIMESTAMP=1700000000000001\nPRIORITY=3\nMESSAGE=boom\n_HOSTNAME=box\n_MACHINE_ID=m1\n_BOOT_ID=b1\n_SYSTEMD_UNIT=a.service\nSYSLOG_IDENTIFIER=app\n_PID=42\n_COMM=app\n_EXE=/bin/app\n_TRANSPORT=journal\nCODE_FILE=a.c\nCODE_LINE=7\nCODE_FUNC=main\n_UID=0\n\n";
        let (conv, resource) = with_entry(s, |e| {
            let conv = c.convert(e, 5);
            let resource = c.resource(&conv.host);
            (conv.record, resource)
        });
        let r = conv;
        assert_eq!(r.time_unix_nano, 1_700_000_000_000_001_000);
        assert_eq!(r.observed_time_unix_nano, 5);
        assert_eq!(r.severity_number, SeverityNumber::Error as i32);
        assert_eq!(r.severity_text, "err");
        assert_eq!(string(r.body.as_ref().unwrap()), "boom");
        let s = |k| match attr(&r, k) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("_SYSTEMD_UNIT"), "a.service");
        assert_eq!(s("SYSLOG_IDENTIFIER"), "app");
        assert_eq!(s("process.executable.name"), "app");
        assert_eq!(s("process.executable.path"), "/bin/app");
        assert_eq!(s("_TRANSPORT"), "journal");
        assert_eq!(s("code.file.path"), "a.c");
        assert_eq!(s("code.function.name"), "main");
        assert_eq!(
            attr(&r, "process.pid"),
            Some(&any_value::Value::IntValue(42))
        );
        assert_eq!(
            attr(&r, "code.line.number"),
            Some(&any_value::Value::IntValue(7))
        );
        assert_eq!(attr(&r, "_UID"), None);
        assert_eq!(r.attributes.len(), 9);
        let keys: Vec<_> = resource.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["host.id", "_BOOT_ID", "host.name"]);
        assert_eq!(
            string(resource.attributes[2].value.as_ref().unwrap()),
            "cfg"
        );
    }

    #[test]
    fn every_priority_maps() {
        let want = [21, 19, 18, 17, 13, 10, 9, 5];
        for (p, n) in want.iter().enumerate() {
            let s = format!("PRIORITY={p}\n\n");
            let r = with_entry(s.as_bytes(), |e| c().convert(e, 0).record);
            assert_eq!(r.severity_number, *n, "priority {p}");
            assert!(!r.severity_text.is_empty());
        }
        for bad in ["8", "x", "", "33"] {
            let s = format!("PRIORITY={bad}\n\n");
            let r = with_entry(s.as_bytes(), |e| c().convert(e, 0).record);
            assert_eq!(r.severity_number, 0, "{bad:?}");
            assert_eq!(r.severity_text, "");
        }
    }

    fn c() -> Converter {
        Converter::new(&[], &[])
    }

    #[test]
    fn body_is_bytes_when_not_utf8_and_whole_characters_when_cut() {
        let r = with_entry(b"MESSAGE\n\x03\0\0\0\0\0\0\0a\xffb\n\n", |e| {
            c().convert(e, 0).record
        });
        assert_eq!(
            r.body.unwrap().value,
            Some(any_value::Value::BytesValue(b"a\xffb".to_vec()))
        );
        // Cut at 8 bytes inside the 3-byte "€".
        let limits = Limits {
            max_field: 8,
            max_entry: 1 << 20,
        };
        let r = with_entry_limited("MESSAGE=1234567€\n\n".as_bytes(), limits, |e| {
            c().convert(e, 0).record
        });
        assert_eq!(string(&r.body.unwrap()), "1234567");
        // No MESSAGE: no body.
        let r = with_entry(b"A=1\n\n", |e| c().convert(e, 0).record);
        assert_eq!(r.body, None);
    }

    #[test]
    fn time_falls_back_to_the_journal_time() {
        let r = with_entry(
            b"_SOURCE_REALTIME_TIMESTAMP=x\n__REALTIME_TIMESTAMP=12\n\n",
            |e| c().convert(e, 0).record,
        );
        assert_eq!(r.time_unix_nano, 12_000);
        let r = with_entry(b"__REALTIME_TIMESTAMP=99999999999999999999\n\n", |e| {
            c().convert(e, 0).record
        });
        assert_eq!(r.time_unix_nano, 0);
    }

    #[test]
    fn repeated_fields_map_their_first_value() {
        let r = with_entry(b"MESSAGE=a\nMESSAGE=b\n_PID=1\n_PID=2\n\n", |e| {
            c().convert(e, 0).record
        });
        assert_eq!(string(&r.body.unwrap()), "a");
        assert_eq!(r.attributes.len(), 1);
    }

    #[test]
    fn units_are_mangled_and_globbed() {
        let f = UnitFilter::new(&["sshd".into(), "noisy-*".into(), "x.timer".into()]);
        assert!(f.matches(b"sshd.service"));
        assert!(!f.matches(b"sshd"));
        assert!(f.matches(b"noisy-1.service"));
        assert!(f.matches(b"noisy-.socket"));
        assert!(f.matches(b"x.timer"));
        assert!(!f.matches(b"x.timer.service"));
        assert!(glob(b"a*b?c", b"aXXbYc"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"a*b", b"aXXc"));
        assert!(glob(b"***a", b"a"));
        let exclude = Converter::new(&[], &["sshd".into()]);
        assert!(with_entry(b"_SYSTEMD_UNIT=sshd.service\n\n", |e| exclude.excluded(e)));
        assert!(!with_entry(b"_SYSTEMD_UNIT=cron.service\n\n", |e| exclude.excluded(e)));
        assert!(!with_entry(b"A=1\n\n", |e| exclude.excluded(e)));
    }

    #[test]
    fn batch_groups_by_host() {
        let conv = c();
        let mut b = Batch::new();
        for s in [
            &b"_HOSTNAME=a\nMESSAGE=1\n\n"[..],
            b"_HOSTNAME=a\nMESSAGE=2\n\n",
            b"_HOSTNAME=b\nMESSAGE=3\n\n",
            b"_HOSTNAME=a\nMESSAGE=4\n\n",
        ] {
            with_entry(s, |e| b.add(conv.convert(e, 0), &conv));
        }
        assert_eq!(b.len(), 4);
        assert!(b.bytes() > 0 && b.started().is_some());
        let req = b.take();
        assert!(b.is_empty() && b.started().is_none());
        assert_eq!(req.resource_logs.len(), 2);
        let counts: Vec<_> = req
            .resource_logs
            .iter()
            .map(|r| r.scope_logs[0].log_records.len())
            .collect();
        assert_eq!(counts, [3, 1]);
        assert_eq!(
            req.resource_logs[0].scope_logs[0]
                .scope
                .as_ref()
                .unwrap()
                .name,
            "tern/journald"
        );
    }
}
