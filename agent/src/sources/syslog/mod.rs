//! The syslog receiver (`[receiver.syslog]`): messages from syslogd, libc's
//! `syslog()`, `logger` and devices, over UDP, TCP or a unix datagram socket,
//! forwarded as OTLP log records through the queue.
//!
//! ```text
//! udp / unix datagram --------------------------------\
//! tcp --> frame::Deframer (octet counting, newline) ---+--> parse --> record --> Batch --> Sink::push
//! ```
//!
//! One thread (`tern-syslog`) reads every socket, with async I/O, and queues
//! the batches itself. While a queue write is behind, nothing is read: TCP
//! senders wait in the kernel's flow control (a message read counts as
//! accepted once queued; syslog over TCP has no acknowledgement, so what is
//! in flight when tern is killed is lost, as with any syslog receiver), and
//! datagrams wait in the socket buffer, which drops when full: UDP and unix
//! datagrams are best effort, as the protocol is.
//!
//! # Mapping
//!
//! As the OpenTelemetry Collector's syslog receiver maps them, with the
//! message text as the body (the Collector keeps the raw line there and the
//! text in a `message` attribute: the same text twice on a metered link):
//!
//! | syslog | OTLP |
//! | --- | --- |
//! | MSG (a UTF-8 BOM dropped) | body: a string, bytes when not UTF-8 |
//! | PRI | `severity_number`, `severity_text` (as journald's PRIORITY), attributes `priority` and `facility` (ints) |
//! | TIMESTAMP | `time_unix_nano` (0 when absent); `observed_time_unix_nano` is when tern read it |
//! | HOSTNAME | resource `host.name`; the box's own name for local messages without one, else the peer's address |
//! | APP-NAME or TAG, PROCID or `[PID]`, MSGID, VERSION | attributes `appname`, `proc_id`, `msg_id`, `version` (int) |
//! | STRUCTURED-DATA | attribute `structured_data`: a map of SD-IDs to maps of parameters |
//!
//! A message whose header does not parse is forwarded whole as the body
//! (user.notice without a priority) and counted malformed; one longer than
//! `max_message_size` is dropped and counted, never held in memory.

pub mod frame;
pub mod parse;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use smol::{Async, LocalExecutor, Task, Timer};

use crate::config::SyslogReceiverConfig;
use crate::lifecycle::{RateLimit, Shutdown};
use crate::otlp;
use crate::otlp::logs::{LogBatch, Record};
use crate::queue::Signal;
use crate::sources::journald::convert::{severity, Converter, Host};
use crate::sources::Sink;
use crate::telemetry::Metrics;

use frame::{Deframer, Frame};
use parse::{Message, Protocol, DEFAULT_PRIORITY};

/// The source's name in logs.
pub const SOURCE: &str = "syslog";

/// A batch is queued once it has this many records.
const MAX_BATCH_RECORDS: usize = 1000;
/// A batch is queued once its records are estimated at this many bytes.
const MAX_BATCH_BYTES: usize = 512 << 10;
/// A batch is queued at the latest this long after its first record.
const MAX_BATCH_AGE: Duration = Duration::from_secs(1);
/// How often the batch's age and the stop signal are looked at.
const TICK: Duration = Duration::from_millis(100);
/// Bytes read from a TCP connection at once.
const READ_SIZE: usize = 16 << 10;

/// How a message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// A TCP stream.
    Tcp,
    /// A unix datagram socket.
    Unix,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Unix];

    /// The `transport` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

/// The sockets of a receiver, bound.
#[derive(Debug)]
struct Sockets {
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
    unix: Option<(UnixDatagram, PathBuf)>,
}

/// Binds the configured sockets and starts the receiver on a thread named
/// `tern-syslog`; it stops, queueing what it holds, when `shutdown` fires.
///
/// # Errors
///
/// A socket that cannot be bound (named in the message), or the thread.
pub fn spawn(
    config: &SyslogReceiverConfig,
    resource: &[(String, String)],
    sink: Sink,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
) -> io::Result<JoinHandle<()>> {
    let context =
        |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let udp = config
        .udp
        .map(|a| UdpSocket::bind(a).map_err(context(format!("syslog: cannot listen on udp {a}"))))
        .transpose()?;
    let tcp = config
        .tcp
        .map(|a| TcpListener::bind(a).map_err(context(format!("syslog: cannot listen on tcp {a}"))))
        .transpose()?;
    let unix = config
        .unix
        .as_ref()
        .map(|p| {
            bind_unix(p)
                .map(|s| (s, p.clone()))
                .map_err(context(format!(
                    "syslog: cannot listen on unix {}",
                    p.display()
                )))
        })
        .transpose()?;
    let bound = |a: Option<io::Result<SocketAddr>>| match a {
        Some(Ok(a)) => a.to_string(),
        Some(Err(e)) => format!("unknown({e})"),
        None => "-".into(),
    };
    log::info!(
        "Syslog receiver listening udp={} tcp={} unix={} protocol={:?}",
        bound(udp.as_ref().map(UdpSocket::local_addr)),
        bound(tcp.as_ref().map(TcpListener::local_addr)),
        config
            .unix
            .as_ref()
            .map_or_else(|| "-".into(), |p| p.display().to_string()),
        config.protocol
    );
    let sockets = Sockets { udp, tcp, unix };
    let pipeline = Pipeline::new(config, resource, sink, metrics, shutdown.clone());
    let config = config.clone();
    crate::lifecycle::spawn("tern-syslog".into(), "the syslog receiver", move || {
        run(&config, sockets, pipeline, &shutdown);
    })
}

/// Creates the unix datagram socket at `path`, replacing a stale one (a
/// socket file nobody listens on), and lets every user write to it.
fn bind_unix(path: &Path) -> io::Result<UnixDatagram> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        let probe = UnixDatagram::unbound()?;
        if probe.connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process listens on it (a syslogd?)",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let socket = UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(socket)
}

fn run(config: &SyslogReceiverConfig, sockets: Sockets, pipeline: Pipeline, shutdown: &Shutdown) {
    let pipeline = Rc::new(RefCell::new(pipeline));
    // The executor owns the tasks: dropping it closes every socket. The
    // accept task holds it weakly, or it would own itself.
    let ex = Rc::new(LocalExecutor::new());
    let unix_path = sockets.unix.as_ref().map(|(_, p)| p.clone());
    let started = (|| -> io::Result<()> {
        if let Some(s) = sockets.udp {
            let s = Async::new(s)?;
            let p = pipeline.clone();
            let max = config.max_message_size;
            ex.spawn(async move {
                let mut buf = vec![0u8; max + 1];
                loop {
                    let got = s.recv_from(&mut buf).await;
                    let got = got.map(|(n, peer)| (n, Some(peer)));
                    datagram(&p, Transport::Udp, &buf, got).await;
                }
            })
            .detach();
        }
        if let Some((s, _)) = sockets.unix {
            let s = Async::new(s)?;
            let p = pipeline.clone();
            let max = config.max_message_size;
            ex.spawn(async move {
                let mut buf = vec![0u8; max + 1];
                loop {
                    let got = s.recv(&mut buf).await.map(|n| (n, None));
                    datagram(&p, Transport::Unix, &buf, got).await;
                }
            })
            .detach();
        }
        if let Some(l) = sockets.tcp {
            let l = Async::new(l)?;
            let weak = Rc::downgrade(&ex);
            ex.spawn(accept(
                weak,
                l,
                pipeline.clone(),
                config.max_connections,
                config.max_message_size,
            ))
            .detach();
        }
        Ok(())
    })();
    if let Err(e) = started {
        log::error!("Syslog receiver failed to start error={e}");
    } else {
        smol::block_on(ex.run(async {
            loop {
                Timer::after(TICK).await;
                if shutdown.is_triggered() {
                    break;
                }
                pipeline.borrow_mut().tick();
            }
        }));
    }
    // Every connection and socket closes with the executor.
    drop(ex);
    pipeline.borrow_mut().push();
    if let Some(p) = unix_path {
        let _ = std::fs::remove_file(p);
    }
    log::info!("Syslog receiver stopped");
}

/// Handles one datagram read (a failed read waits a tick: it may be
/// passing, such as ENOBUFS).
async fn datagram(
    p: &RefCell<Pipeline>,
    transport: Transport,
    buf: &[u8],
    got: io::Result<(usize, Option<SocketAddr>)>,
) {
    match got {
        Ok((n, peer)) => {
            let mut p = p.borrow_mut();
            p.stamp();
            if n >= buf.len() {
                p.too_large(transport);
            } else {
                let host = remote_name(peer);
                p.message(transport, buf.get(..n).unwrap_or_default(), host.as_deref());
            }
        }
        Err(e) => {
            if let Some(suppressed) = p.borrow().read_errors.check() {
                log::warn!(
                    "Syslog read failed transport={} error={e} suppressed={suppressed}",
                    transport.as_str()
                );
            }
            Timer::after(TICK).await;
        }
    }
}

/// Accepts TCP connections, at most `max` at once: one more closes the one
/// idle longest (no partial message lost but its own).
async fn accept(
    ex: Weak<LocalExecutor<'static>>,
    listener: Async<TcpListener>,
    p: Rc<RefCell<Pipeline>>,
    max: usize,
    max_message: usize,
) {
    let mut next_id = 0u64;
    let mut held: HashMap<u64, (Task<()>, Rc<Cell<Instant>>)> = HashMap::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                if let Some(suppressed) = p.borrow().read_errors.check() {
                    log::warn!("Syslog accept failed error={e} suppressed={suppressed}");
                }
                Timer::after(TICK).await;
                continue;
            }
        };
        held.retain(|_, (task, _)| !task.is_finished());
        if held.len() >= max {
            let idlest = held
                .iter()
                .min_by_key(|(_, (_, last))| last.get())
                .map(|(id, _)| *id);
            if let Some(id) = idlest {
                held.remove(&id);
                p.borrow()
                    .metrics
                    .inc("tern_syslog_connections_shed_total", &[]);
            }
        }
        let last = Rc::new(Cell::new(Instant::now()));
        let host = remote_name(Some(peer));
        let Some(ex) = ex.upgrade() else {
            return;
        };
        let task = ex.spawn(connection(
            stream,
            p.clone(),
            last.clone(),
            host,
            max_message,
        ));
        held.insert(next_id, (task, last));
        next_id += 1;
    }
}

/// Reads one TCP connection to its end.
async fn connection(
    mut stream: Async<std::net::TcpStream>,
    p: Rc<RefCell<Pipeline>>,
    last: Rc<Cell<Instant>>,
    peer: Option<Vec<u8>>,
    max_message: usize,
) {
    use smol::io::AsyncReadExt;
    let mut deframer = Deframer::new(max_message);
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        last.set(Instant::now());
        let mut pipeline = p.borrow_mut();
        pipeline.stamp();
        deframer.feed(buf.get(..n).unwrap_or_default(), &mut |f| {
            pipeline.frame(f, peer.as_deref());
        });
    }
    let mut pipeline = p.borrow_mut();
    pipeline.stamp();
    deframer.finish(&mut |f| pipeline.frame(f, peer.as_deref()));
}

/// The address of a remote sender, the host of its messages without a
/// hostname; `None` for loopback (this box) and unix sockets.
fn remote_name(peer: Option<SocketAddr>) -> Option<Vec<u8>> {
    peer.filter(|a| !a.ip().is_loopback())
        .map(|a| a.ip().to_string().into_bytes())
}

/// Counts of one transport since they were last published.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    messages: u64,
    malformed: u64,
    too_large: u64,
    bad_frame: u64,
}

/// Messages to records to batches to the queue.
#[derive(Debug)]
struct Pipeline {
    protocol: Protocol,
    converter: Converter,
    batch: LogBatch,
    sink: Sink,
    metrics: Arc<Metrics>,
    /// This box's name, for local messages without a hostname.
    hostname: Option<Vec<u8>>,
    counts: [Counts; 3],
    read_errors: RateLimit,
    queue_errors: RateLimit,
    shutdown: Arc<Shutdown>,
    /// When the bytes being handled were read, ns since the epoch.
    now: u64,
    /// The agent is stopping and the queue refused the batch: no more tries.
    halted: bool,
}

impl Pipeline {
    fn new(
        config: &SyslogReceiverConfig,
        resource: &[(String, String)],
        sink: Sink,
        metrics: Arc<Metrics>,
        shutdown: Arc<Shutdown>,
    ) -> Pipeline {
        Pipeline {
            shutdown,
            now: 0,
            protocol: config.protocol,
            converter: Converter::new(resource, &[]),
            batch: LogBatch::new("tern/syslog"),
            sink,
            metrics,
            hostname: crate::sources::local_hostname(),
            counts: [Counts::default(); 3],
            read_errors: RateLimit::new(Duration::from_secs(60)),
            queue_errors: RateLimit::new(Duration::from_secs(30)),
            halted: false,
        }
    }

    fn counts(&mut self, transport: Transport) -> &mut Counts {
        let [udp, tcp, unix] = &mut self.counts;
        match transport {
            Transport::Udp => udp,
            Transport::Tcp => tcp,
            Transport::Unix => unix,
        }
    }

    fn frame(&mut self, frame: Frame<'_>, peer: Option<&[u8]>) {
        match frame {
            Frame::Message(m) => self.message(Transport::Tcp, m, peer),
            Frame::TooLarge => self.too_large(Transport::Tcp),
            Frame::Malformed => self.counts(Transport::Tcp).bad_frame += 1,
        }
    }

    fn too_large(&mut self, transport: Transport) {
        self.counts(transport).too_large += 1;
        if let Some(suppressed) = self.read_errors.check() {
            log::warn!(
                "Syslog message dropped: longer than max_message_size transport={} suppressed={suppressed}",
                transport.as_str()
            );
        }
    }

    /// Notes the time of a read: the observed time of the messages in it.
    fn stamp(&mut self) {
        self.now = crate::sources::unix_nanos(SystemTime::now());
    }

    /// One message from `transport`; `peer` is its sender's address when
    /// remote.
    fn message(&mut self, transport: Transport, bytes: &[u8], peer: Option<&[u8]>) {
        let now = self.now;
        let m = parse::parse(bytes, self.protocol, now);
        let c = self.counts(transport);
        c.messages += 1;
        c.malformed += u64::from(m.malformed);
        let name = m.hostname.or(peer).or(self.hostname.as_deref());
        let converter = &self.converter;
        let host = Host {
            name,
            machine_id: None,
            boot_id: None,
        };
        let mut r = self
            .batch
            .begin(name.unwrap_or_default(), || converter.resource(&host));
        write_record(&m, now, &mut r);
        r.end();
        if self.batch.len() >= MAX_BATCH_RECORDS || self.batch.bytes() >= MAX_BATCH_BYTES {
            self.push();
        }
    }

    /// Queues the batch once it is [`MAX_BATCH_AGE`] old.
    fn tick(&mut self) {
        if self
            .batch
            .started()
            .is_some_and(|s| s.elapsed() >= MAX_BATCH_AGE)
        {
            self.push();
        } else {
            self.publish();
        }
    }

    /// Queues the batch, retrying a failing queue (reading nothing
    /// meanwhile) until it is stored or the agent stops.
    fn push(&mut self) {
        self.publish();
        if self.batch.is_empty() || self.halted {
            return;
        }
        let items = self.batch.len();
        let encoded = otlp::compress(self.batch.finish());
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.sink.push(Signal::Logs, &encoded, items, None, SOURCE) {
                Ok(()) => return,
                Err(e) => {
                    if let Some(suppressed) = self.queue_errors.check() {
                        log::error!(
                            "Queueing syslog messages failed; retrying without reading more records={items} error={e} suppressed={suppressed}"
                        );
                    }
                    if self.shutdown.sleep(backoff) {
                        log::error!(
                            "Syslog messages lost: stopping while the queue refuses them records={items}"
                        );
                        self.halted = true;
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Adds the counts to the self metrics.
    fn publish(&mut self) {
        for (t, c) in Transport::ALL.iter().zip(std::mem::take(&mut self.counts)) {
            let labels = [("transport", t.as_str())];
            let m = &self.metrics;
            if c.messages > 0 {
                m.add("tern_syslog_messages_total", &labels, c.messages as f64);
            }
            if c.malformed > 0 {
                m.add(
                    "tern_syslog_malformed_messages_total",
                    &labels,
                    c.malformed as f64,
                );
            }
            for (reason, n) in [("too_large", c.too_large), ("bad_frame", c.bad_frame)] {
                if n > 0 {
                    m.add(
                        "tern_syslog_dropped_messages_total",
                        &[("transport", t.as_str()), ("reason", reason)],
                        n as f64,
                    );
                }
            }
        }
    }
}

/// Writes the log record of `m`, read at `observed` (ns since the epoch).
pub fn write_record(m: &Message<'_>, observed: u64, r: &mut Record<'_>) {
    let priority = m.priority.unwrap_or(DEFAULT_PRIORITY);
    r.time(m.timestamp.unwrap_or(0)).observed_time(observed);
    if let Some((number, text)) = severity(priority & 7) {
        r.severity(number as i32, text);
    }
    r.body(m.message, false);
    for (key, value) in [
        ("appname", m.appname),
        ("proc_id", m.procid),
        ("msg_id", m.msgid),
    ] {
        if let Some(v) = value {
            r.string(key, v);
        }
    }
    r.int("priority", i64::from(priority))
        .int("facility", i64::from(priority >> 3));
    if let Some(v) = m.version {
        r.int("version", i64::from(v));
    }
    if !m.structured_data.is_empty() {
        r.map_of_maps(
            "structured_data",
            m.structured_data.iter().map(|e| {
                let params = e.params.iter().map(|(k, v)| (*k, v.as_ref())).collect();
                (e.id, params)
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
    use crate::otlp::proto::common::v1::{any_value, AnyValue};
    use crate::otlp::proto::logs::v1::LogRecord;
    use crate::otlp::proto::resource::v1::Resource;

    /// The record of `m` as a gateway decodes it.
    fn record(m: &Message<'_>, observed: u64) -> LogRecord {
        let mut batch = LogBatch::new("tern/syslog");
        let mut r = batch.begin(b"", Resource::default);
        write_record(m, observed, &mut r);
        r.end();
        let req = <ExportLogsServiceRequest as prost::Message>::decode(batch.finish()).unwrap();
        req.resource_logs[0].scope_logs[0].log_records[0].clone()
    }

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn records_map_as_the_collector_maps_them() {
        let m = parse::parse(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 12 ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\"] \xEF\xBB\xBFAn application event", Protocol::Auto, 5);
        let r = record(&m, 5);
        assert_eq!(r.time_unix_nano, 1_065_910_455_003_000_000);
        assert_eq!(r.observed_time_unix_nano, 5);
        assert_eq!(r.severity_number, 10); // notice: INFO2
        assert_eq!(r.severity_text, "notice");
        assert_eq!(
            r.body.as_ref().and_then(|b| b.value.as_ref()),
            Some(&any_value::Value::StringValue(
                "An application event".into()
            ))
        );
        let s = |v: &str| Some(any_value::Value::StringValue(v.into()));
        assert_eq!(attr(&r, "appname").cloned(), s("evntslog"));
        assert_eq!(attr(&r, "proc_id").cloned(), s("12"));
        assert_eq!(attr(&r, "msg_id").cloned(), s("ID47"));
        assert_eq!(attr(&r, "priority"), Some(&any_value::Value::IntValue(165)));
        assert_eq!(attr(&r, "facility"), Some(&any_value::Value::IntValue(20)));
        assert_eq!(attr(&r, "version"), Some(&any_value::Value::IntValue(1)));
        let Some(any_value::Value::KvlistValue(sd)) = attr(&r, "structured_data") else {
            panic!("no structured_data");
        };
        assert_eq!(sd.values[0].key, "exampleSDID@32473");
        let Some(AnyValue {
            value: Some(any_value::Value::KvlistValue(params)),
        }) = &sd.values[0].value
        else {
            panic!("params")
        };
        assert_eq!(params.values.len(), 2);
        assert_eq!(params.values[1].key, "eventSource");
    }

    #[test]
    fn no_priority_is_user_notice_and_bytes_stay_bytes() {
        let m = parse::parse(b"caf\xE9 latin-1", Protocol::Auto, 5);
        let r = record(&m, 5);
        assert_eq!(r.severity_text, "notice");
        assert_eq!(attr(&r, "facility"), Some(&any_value::Value::IntValue(1)));
        assert_eq!(
            r.body.as_ref().and_then(|b| b.value.as_ref()),
            Some(&any_value::Value::BytesValue(b"caf\xE9 latin-1".to_vec()))
        );
        assert_eq!(r.time_unix_nano, 0);
    }
}
