//! Log records written straight to OTLP protobuf, for sources that read many
//! lines a second (files, syslog): no prost structs, so no allocation per
//! record and no length computed twice; each record is written once into its
//! resource's buffer, and a batch is assembled with lengths known in advance.
//!
//! The output decodes as an `ExportLogsServiceRequest` (the tests check it).

use super::proto::resource::v1::Resource;
use super::wire::{varint_len, Mark, Writer};

/// `ExportLogsServiceRequest.resource_logs`.
const RESOURCE_LOGS: u32 = 1;
/// `ResourceLogs.resource`, `ResourceLogs.scope_logs`.
const RESOURCE: u32 = 1;
const SCOPE_LOGS: u32 = 2;
/// `ScopeLogs.scope`, `ScopeLogs.log_records`.
const SCOPE: u32 = 1;
const LOG_RECORDS: u32 = 2;
/// `LogRecord` fields.
const TIME: u32 = 1;
const SEVERITY_NUMBER: u32 = 2;
const SEVERITY_TEXT: u32 = 3;
const BODY: u32 = 5;
const ATTRIBUTES: u32 = 6;
const OBSERVED_TIME: u32 = 11;
/// `KeyValue.key`, `KeyValue.value`; `KeyValueList.values`.
const KEY: u32 = 1;
const VALUE: u32 = 2;
const VALUES: u32 = 1;
/// `AnyValue` members.
const STRING_VALUE: u32 = 1;
const KVLIST_VALUE: u32 = 6;
const BYTES_VALUE: u32 = 7;

/// Records of one resource.
#[derive(Debug)]
struct Group {
    /// What tells the resource apart (the host name).
    key: Vec<u8>,
    /// The encoded `Resource`.
    resource: Vec<u8>,
    /// Encoded `log_records` fields, each with its tag.
    records: Writer,
}

/// Log records gathered for one request, grouped by resource.
#[derive(Debug)]
pub struct LogBatch {
    scope: &'static str,
    groups: Vec<Group>,
    /// Record buffers of groups gone, and the request's: kept, so that a
    /// batch after batch reuses them instead of mapping fresh memory (musl
    /// maps and unmaps allocations of 128 KiB and more each time).
    spare: Vec<Writer>,
    out: Writer,
    records: usize,
    bytes: usize,
    started: Option<std::time::Instant>,
}

impl LogBatch {
    /// An empty batch of records from the instrumentation scope `scope`.
    pub fn new(scope: &'static str) -> LogBatch {
        LogBatch {
            scope,
            groups: Vec::new(),
            spare: Vec::new(),
            out: Writer::default(),
            records: 0,
            bytes: 0,
            started: None,
        }
    }

    /// Starts a record of the resource told by `key`, made by `resource` the
    /// first time; write its fields, then [`LogBatch::end`] it.
    pub fn begin(&mut self, key: &[u8], resource: impl FnOnce() -> Resource) -> Record<'_> {
        if self.started.is_none() {
            self.started = Some(std::time::Instant::now());
        }
        // Records of one resource come in runs: look at the last group first.
        let i = match self.groups.iter().rposition(|g| g.key == key) {
            Some(i) => i,
            None => {
                let resource = prost::Message::encode_to_vec(&resource());
                self.bytes += resource.len() + 64;
                let mut records = self.spare.pop().unwrap_or_default();
                records.clear();
                self.groups.push(Group {
                    key: key.to_vec(),
                    resource,
                    records,
                });
                self.groups.len() - 1
            }
        };
        let (records, bytes) = (&mut self.records, &mut self.bytes);
        // `i` was found or pushed above.
        let w = &mut self.groups[i].records;
        let before = w.len();
        let mark = w.begin(LOG_RECORDS);
        Record {
            w,
            mark,
            before,
            records,
            bytes,
        }
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the batch has no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes the batch encodes to, about (exact but for a few bytes a group).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the first record was added.
    pub fn started(&self) -> Option<std::time::Instant> {
        self.started
    }

    /// The encoded `ExportLogsServiceRequest` of everything in the batch,
    /// which is left empty; the bytes stay until the next record.
    pub fn finish(&mut self) -> &[u8] {
        let mut scope = Writer::default();
        scope.string(1, self.scope);
        scope.string(2, env!("CARGO_PKG_VERSION"));
        let scope = scope.take();
        let out = &mut self.out;
        out.clear();
        for mut g in self.groups.drain(..) {
            let scope_field = 1 + varint_len(scope.len() as u64) + scope.len();
            let scope_logs = scope_field + g.records.len();
            let resource_field = 1 + varint_len(g.resource.len() as u64) + g.resource.len();
            let resource_logs = resource_field + 1 + varint_len(scope_logs as u64) + scope_logs;
            out.head(RESOURCE_LOGS, resource_logs);
            out.head(RESOURCE, g.resource.len());
            out.raw(&g.resource);
            out.head(SCOPE_LOGS, scope_logs);
            out.head(SCOPE, scope.len());
            out.raw(&scope);
            out.raw(g.records.as_bytes());
            g.records.clear();
            self.spare.push(g.records);
        }
        self.records = 0;
        self.bytes = 0;
        self.started = None;
        self.out.as_bytes()
    }
}

/// A log body as OTLP takes it: text when `value` is UTF-8, or was `cut`
/// inside a character (then the whole characters before the cut), else bytes.
pub fn text_or_bytes(value: &[u8], cut: bool) -> Result<&str, &[u8]> {
    match std::str::from_utf8(value) {
        Ok(s) => Ok(s),
        Err(e) if cut && e.error_len().is_none() => {
            let whole = value.get(..e.valid_up_to()).unwrap_or_default();
            Ok(std::str::from_utf8(whole).unwrap_or_default())
        }
        Err(_) => Err(value),
    }
}

/// One record being written; its fields must come in any order but each once.
#[derive(Debug)]
#[must_use = "a record must be ended"]
pub struct Record<'a> {
    w: &'a mut Writer,
    mark: Mark,
    before: usize,
    records: &'a mut usize,
    bytes: &'a mut usize,
}

impl Record<'_> {
    /// `time_unix_nano` (left out when 0: unknown).
    pub fn time(&mut self, nanos: u64) -> &mut Self {
        self.w.fixed64(TIME, nanos);
        self
    }

    /// `observed_time_unix_nano`.
    pub fn observed_time(&mut self, nanos: u64) -> &mut Self {
        self.w.fixed64(OBSERVED_TIME, nanos);
        self
    }

    /// `severity_number` and `severity_text`.
    pub fn severity(&mut self, number: i32, text: &str) -> &mut Self {
        self.w.int(SEVERITY_NUMBER, i64::from(number));
        self.w.string(SEVERITY_TEXT, text);
        self
    }

    /// The body: a string when `value` is UTF-8 (or was cut inside a
    /// character, then up to it), else bytes.
    pub fn body(&mut self, value: &[u8], cut: bool) -> &mut Self {
        let (member, bytes) = match text_or_bytes(value, cut) {
            Ok(s) => (STRING_VALUE, s.as_bytes()),
            Err(b) => (BYTES_VALUE, b),
        };
        // The length is known: no move.
        self.w
            .head(BODY, 1 + varint_len(bytes.len() as u64) + bytes.len());
        self.w.bytes_always(member, bytes);
        self
    }

    /// A string attribute (invalid UTF-8 replaced).
    pub fn string(&mut self, key: &str, value: &[u8]) -> &mut Self {
        match std::str::from_utf8(value) {
            Ok(v) => self.w.string_attribute(ATTRIBUTES, key, v),
            Err(_) => self
                .w
                .string_attribute(ATTRIBUTES, key, &String::from_utf8_lossy(value)),
        }
        self
    }

    /// An int attribute.
    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        self.w.int_attribute(ATTRIBUTES, key, value);
        self
    }

    /// A map attribute: `key` to a map of maps, as syslog's structured data
    /// is (`{id: {name: value}}`); values are strings (invalid UTF-8 replaced).
    pub fn map_of_maps<'e>(
        &mut self,
        key: &str,
        entries: impl Iterator<Item = (&'e [u8], Vec<(&'e [u8], &'e [u8])>)>,
    ) -> &mut Self {
        let kv = self.w.begin(ATTRIBUTES);
        self.w.string(KEY, key);
        let any = self.w.begin(VALUE);
        let list = self.w.begin(KVLIST_VALUE);
        for (id, params) in entries {
            let inner_kv = self.w.begin(VALUES);
            self.w.string(KEY, &String::from_utf8_lossy(id));
            let inner_any = self.w.begin(VALUE);
            let inner_list = self.w.begin(KVLIST_VALUE);
            for (name, value) in params {
                self.w.string_attribute(
                    VALUES,
                    &String::from_utf8_lossy(name),
                    &String::from_utf8_lossy(value),
                );
            }
            self.w.end(inner_list);
            self.w.end(inner_any);
            self.w.end(inner_kv);
        }
        self.w.end(list);
        self.w.end(any);
        self.w.end(kv);
        self
    }

    /// Ends the record: it is in the batch. Call it once, last.
    pub fn end(&mut self) {
        self.w.end(self.mark);
        *self.records += 1;
        *self.bytes += self.w.len() - self.before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
    use crate::otlp::proto::common::v1::{any_value::Value, KeyValue};
    use prost::Message;

    fn resource(host: &str) -> Resource {
        Resource {
            attributes: vec![crate::otlp::kv("host.name", host)],
            ..Default::default()
        }
    }

    fn value(attrs: &[KeyValue], key: &str) -> Option<Value> {
        attrs
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    }

    #[test]
    fn records_decode_as_written() {
        let mut b = LogBatch::new("tern/test");
        assert!(b.is_empty());
        let mut r = b.begin(b"a", || resource("a"));
        r.time(5)
            .observed_time(7)
            .severity(17, "err")
            .body(b"hello", false)
            .string("appname", b"sshd")
            .string("bad", b"\xff")
            .int("priority", 0)
            .int("facility", 23)
            .map_of_maps(
                "structured_data",
                vec![(&b"id@1"[..], vec![(&b"k"[..], &b"v"[..])])].into_iter(),
            );
        r.end();
        b.begin(b"b", || resource("b"))
            .body(b"\xff\x00", false)
            .end();
        b.begin(b"a", || panic!("made once")).body(b"", false).end();
        b.begin(b"a", || resource("a")).body(b"caf\xc3", true).end();
        assert_eq!(b.len(), 4);
        let raw = b.finish().to_vec();
        assert!(b.is_empty() && b.started().is_none());
        let req = ExportLogsServiceRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.resource_logs.len(), 2);
        let a = &req.resource_logs[0];
        assert_eq!(a.resource.as_ref().unwrap(), &resource("a"));
        let scope = a.scope_logs[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "tern/test");
        let records = &a.scope_logs[0].log_records;
        assert_eq!(records.len(), 3);
        let r = &records[0];
        assert_eq!((r.time_unix_nano, r.observed_time_unix_nano), (5, 7));
        assert_eq!((r.severity_number, r.severity_text.as_str()), (17, "err"));
        assert_eq!(
            r.body.clone().unwrap().value,
            Some(Value::StringValue("hello".into()))
        );
        assert_eq!(
            value(&r.attributes, "appname"),
            Some(Value::StringValue("sshd".into()))
        );
        assert_eq!(
            value(&r.attributes, "bad"),
            Some(Value::StringValue("\u{fffd}".into()))
        );
        assert_eq!(value(&r.attributes, "priority"), Some(Value::IntValue(0)));
        assert_eq!(value(&r.attributes, "facility"), Some(Value::IntValue(23)));
        let Some(Value::KvlistValue(sd)) = value(&r.attributes, "structured_data") else {
            panic!("{r:?}");
        };
        assert_eq!(sd.values[0].key, "id@1");
        assert_eq!(
            records[1].body.clone().unwrap().value,
            Some(Value::StringValue(String::new()))
        );
        assert_eq!(
            records[2].body.clone().unwrap().value,
            Some(Value::StringValue("caf".into()))
        );
        let b_records = &req.resource_logs[1].scope_logs[0].log_records;
        assert_eq!(
            b_records[0].body.clone().unwrap().value,
            Some(Value::BytesValue(vec![0xff, 0]))
        );
    }

    #[test]
    fn the_size_is_what_is_written() {
        let mut b = LogBatch::new("tern/test");
        for i in 0..100u64 {
            b.begin(b"host", || resource("host"))
                .observed_time(i)
                .body(format!("line {i}").as_bytes(), false)
                .string("log.file.name", b"app.log")
                .end();
        }
        let estimate = b.bytes();
        let raw = b.finish().to_vec();
        assert!(
            raw.len() <= estimate + 64 && estimate <= raw.len() + 64,
            "{estimate} vs {}",
            raw.len()
        );
    }
}
