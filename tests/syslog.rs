//! The syslog receiver against real senders: util-linux `logger` (RFC 5424
//! and 3164; UDP, TCP with and without octet counting, a unix socket),
//! BusyBox syslogd forwarding with `-R`, and rsyslog's `omfwd` (octet-counted
//! TCP); the test gateway decodes every record. Then what must never harm:
//! garbage, oversized and malformed messages, a 1 GiB line.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{attr, wait_for, Agent, FakeGateway, TempDir};
use tern::otlp::proto::common::v1::{any_value, KeyValue};
use tern::otlp::proto::logs::v1::LogRecord;

fn config(gateway: &FakeGateway, syslog: &str) -> String {
    format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[receiver.syslog]
{syslog}

[export]
endpoints = ["{}"]
timeout = "2s"

[export.retry]
initial_interval = "100ms"
max_interval = "500ms"
"#,
        gateway.url()
    )
}

/// The UDP and TCP addresses tern logged (it listens on port 0).
fn addresses(agent: &Agent) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let line = wait_for(
        Duration::from_secs(10),
        || {
            agent
                .stderr()
                .lines()
                .find(|l| l.contains("Syslog receiver listening"))
                .map(str::to_string)
        },
        || agent.diagnostics(),
    );
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|a| a.parse().ok())
    };
    (field("udp="), field("tcp="))
}

/// A delivered record with its resource's attributes.
#[derive(Debug, Clone)]
struct Rec {
    resource: Vec<KeyValue>,
    record: LogRecord,
}

impl Rec {
    fn body(&self) -> String {
        match self.record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            Some(any_value::Value::BytesValue(b)) => {
                format!("bytes:{}", String::from_utf8_lossy(b))
            }
            other => format!("{other:?}"),
        }
    }

    fn attr(&self, key: &str) -> Option<&any_value::Value> {
        self.record
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn text(&self, key: &str) -> Option<&str> {
        attr(&self.record.attributes, key)
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key) {
            Some(any_value::Value::IntValue(n)) => Some(*n),
            _ => None,
        }
    }

    /// A structured-data parameter: `structured_data[id][name]`.
    fn sd_param(&self, id: &str, name: &str) -> Option<String> {
        let Some(any_value::Value::KvlistValue(sd)) = self.attr("structured_data") else {
            return None;
        };
        let element = sd.values.iter().find(|e| e.key == id)?;
        match element.value.as_ref()?.value.as_ref()? {
            any_value::Value::KvlistValue(params) => attr(&params.values, name).map(String::from),
            _ => None,
        }
    }

    fn host(&self) -> Option<&str> {
        attr(&self.resource, "host.name")
    }
}

fn records(gateway: &FakeGateway) -> Vec<Rec> {
    let mut out = Vec::new();
    for (_, req) in gateway.delivered_logs() {
        for rl in req.resource_logs {
            let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
            for sl in rl.scope_logs {
                assert_eq!(
                    sl.scope.as_ref().map(|s| s.name.as_str()),
                    Some("tern/syslog")
                );
                for record in sl.log_records {
                    out.push(Rec {
                        resource: resource.clone(),
                        record,
                    });
                }
            }
        }
    }
    out
}

/// Waits until `n` records arrived, and gives them back.
fn wait_records(gateway: &FakeGateway, agent: &Agent, n: usize) -> Vec<Rec> {
    wait_for(
        Duration::from_secs(20),
        || {
            let r = records(gateway);
            (r.len() >= n).then_some(r)
        },
        || {
            format!(
                "records: {:?}\n{}",
                records(gateway).iter().map(Rec::body).collect::<Vec<_>>(),
                agent.diagnostics()
            )
        },
    )
}

fn find<'a>(records: &'a [Rec], body: &str) -> &'a Rec {
    records
        .iter()
        .find(|r| r.body() == body)
        .unwrap_or_else(|| {
            panic!(
                "no record {body:?} in {:?}",
                records.iter().map(Rec::body).collect::<Vec<_>>()
            )
        })
}

fn logger(args: &[&str]) {
    let out = Command::new("logger")
        .args(args)
        .output()
        .expect("util-linux logger");
    assert!(
        out.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Every transport and format logger has, each message checked field by field.
#[test]
fn logger_messages_arrive_with_their_fields() {
    let gateway = FakeGateway::start();
    let sock_dir = TempDir::new("syslog-sock");
    let sock = sock_dir.path().join("log");
    let agent = Agent::start(&config(
        &gateway,
        &format!(
            "udp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\nunix = \"{}\"",
            sock.display()
        ),
    ));
    let (udp, tcp) = addresses(&agent);
    let (udp, tcp) = (udp.unwrap(), tcp.unwrap());
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o666
    );
    let before = now_nanos();
    let (up, tp) = (udp.port().to_string(), tcp.port().to_string());
    logger(&[
        "--udp",
        "-n",
        "127.0.0.1",
        "-P",
        &up,
        "--rfc5424",
        "-t",
        "app5424",
        "-p",
        "local3.warning",
        "--msgid",
        "ID47",
        "--sd-id",
        "zoo@123",
        "--sd-param",
        "tiger=\"hungry\"",
        "udp five four two four",
    ]);
    logger(&[
        "--udp",
        "-n",
        "127.0.0.1",
        "-P",
        &up,
        "--rfc3164",
        "-t",
        "app3164",
        "-p",
        "user.err",
        "-i",
        "udp three one six four",
    ]);
    logger(&[
        "--tcp",
        "-n",
        "127.0.0.1",
        "-P",
        &tp,
        "--octet-count",
        "--rfc5424",
        "-t",
        "counted",
        "-p",
        "daemon.info",
        "tcp octet counted",
    ]);
    logger(&[
        "--tcp",
        "-n",
        "127.0.0.1",
        "-P",
        &tp,
        "--rfc3164",
        "-t",
        "newline",
        "-p",
        "auth.crit",
        "tcp newline framed",
    ]);
    logger(&[
        "-u",
        &sock.display().to_string(),
        "-t",
        "local",
        "-p",
        "mail.debug",
        "unix datagram",
    ]);
    logger(&[
        "-u",
        &sock.display().to_string(),
        "-t",
        "multi",
        "line one\nline two",
    ]);
    let got = wait_records(&gateway, &agent, 6);
    let after = now_nanos();
    assert_eq!(
        got.len(),
        6,
        "{:?}",
        got.iter().map(Rec::body).collect::<Vec<_>>()
    );
    let host = local_hostname();

    let r = find(&got, "udp five four two four");
    assert_eq!(r.record.severity_text, "warning");
    assert_eq!(r.record.severity_number, 13);
    assert_eq!(r.int("facility"), Some(19));
    assert_eq!(r.int("priority"), Some(19 * 8 + 4));
    assert_eq!(r.int("version"), Some(1));
    assert_eq!(r.text("appname"), Some("app5424"));
    assert_eq!(r.text("msg_id"), Some("ID47"));
    assert_eq!(r.host(), Some(host.as_str()));
    assert_eq!(r.sd_param("zoo@123", "tiger").as_deref(), Some("hungry"));
    // logger's RFC 5424 timestamps have microseconds.
    assert!(
        (before - 1_000_000..=after).contains(&r.record.time_unix_nano),
        "time {} not in [{before}, {after}]",
        r.record.time_unix_nano
    );
    assert!(r.record.observed_time_unix_nano >= r.record.time_unix_nano);

    let r = find(&got, "udp three one six four");
    assert_eq!(
        (r.record.severity_text.as_str(), r.int("facility")),
        ("err", Some(1))
    );
    assert_eq!(r.text("appname"), Some("app3164"));
    assert!(r.text("proc_id").is_some(), "logger -i gives a PID: {r:?}");
    assert_eq!(r.int("version"), None);
    assert_eq!(r.host(), Some(host.as_str()));
    // RFC 3164 times have whole seconds, read as UTC.
    assert!(
        (before - 2_000_000_000..=after).contains(&r.record.time_unix_nano),
        "time {} not in [{before}, {after}]",
        r.record.time_unix_nano
    );

    let r = find(&got, "tcp octet counted");
    assert_eq!(
        (r.record.severity_text.as_str(), r.int("facility")),
        ("info", Some(3))
    );
    assert_eq!(r.text("appname"), Some("counted"));
    let r = find(&got, "tcp newline framed");
    assert_eq!(
        (r.record.severity_text.as_str(), r.int("facility")),
        ("crit", Some(4))
    );
    assert_eq!(r.text("appname"), Some("newline"));
    let r = find(&got, "unix datagram");
    assert_eq!(
        (r.record.severity_text.as_str(), r.int("facility")),
        ("debug", Some(2))
    );
    assert_eq!(
        (r.text("appname"), r.host()),
        (Some("local"), Some(host.as_str()))
    );
    // A datagram is one message, newlines and all.
    find(&got, "line one\nline two");

    let m = |s: &str| agent.metric(s).unwrap_or(0.0);
    assert_eq!(m("tern_syslog_messages_total{transport=\"udp\"}"), 2.0);
    assert_eq!(m("tern_syslog_messages_total{transport=\"tcp\"}"), 2.0);
    assert_eq!(m("tern_syslog_messages_total{transport=\"unix\"}"), 2.0);
    assert_eq!(
        m("tern_syslog_malformed_messages_total{transport=\"udp\"}"),
        0.0
    );
}

/// Whether this process may make a mount namespace (root, unconfined).
fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// BusyBox syslogd owns /dev/log (in a mount namespace of its own, with a
/// fresh /dev) and forwards with `-R` to tern's UDP port, as on Buildroot
/// and OpenWrt; BusyBox logger and util-linux logger write to /dev/log.
#[test]
fn busybox_syslogd_forwards_to_tern() {
    assert!(
        can_unshare(),
        "this test needs root and mount namespaces (unshare -m), to give BusyBox syslogd a /dev/log of its own"
    );
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(&gateway, "udp = \"127.0.0.1:0\""));
    let (udp, _) = addresses(&agent);
    let udp = udp.unwrap();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && \
         (busybox syslogd -n -R {udp} & \
          for i in 1 2 3 4 5 6 7 8 9 10; do [ -S /dev/log ] && break; sleep 0.1; done; \
          busybox logger -t bbtag -p daemon.warn 'from busybox logger'; \
          logger -t utiltag -p local0.notice 'from util-linux logger'; \
          for i in $(seq 1 50); do busybox logger -t seq \"line $i\"; done; \
          sleep 0.5; kill $!)"
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = wait_records(&gateway, &agent, 52);
    let r = find(&got, "from busybox logger");
    assert_eq!(
        (r.record.severity_text.as_str(), r.int("facility")),
        ("warning", Some(3))
    );
    assert_eq!(r.text("appname"), Some("bbtag"));
    assert_eq!(r.host(), Some(local_hostname().as_str()));
    assert!(r.record.time_unix_nano > 0);
    let r = find(&got, "from util-linux logger");
    assert_eq!(
        (r.record.severity_text.as_str(), r.text("appname")),
        ("notice", Some("utiltag"))
    );
    // UDP on loopback with a reader keeping up: every line, in order.
    let seq: Vec<String> = got
        .iter()
        .filter(|r| r.text("appname") == Some("seq"))
        .map(Rec::body)
        .collect();
    let want: Vec<String> = (1..=50).map(|i| format!("line {i}")).collect();
    assert_eq!(seq, want);
    assert_eq!(
        agent.metric("tern_syslog_malformed_messages_total{transport=\"udp\"}"),
        None
    );
}

/// rsyslog's omfwd forwarding octet-counted RFC 5424 over TCP, as a box
/// with rsyslog sends to a collector.
#[test]
fn rsyslog_forwards_octet_counted_tcp() {
    assert!(
        Path::new("/usr/sbin/rsyslogd").exists(),
        "rsyslogd is missing: apt-get install rsyslog (scripts/test does)"
    );
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(&gateway, "tcp = \"127.0.0.1:0\""));
    let (_, tcp) = addresses(&agent);
    let tcp = tcp.unwrap();
    let dir = TempDir::new("rsyslog");
    let input = UdpSocket::bind("127.0.0.1:0").unwrap();
    let input_port = input.local_addr().unwrap().port();
    drop(input);
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{}\")\nmodule(load=\"imudp\")\ninput(type=\"imudp\" address=\"127.0.0.1\" port=\"{input_port}\")\naction(type=\"omfwd\" target=\"127.0.0.1\" port=\"{}\" protocol=\"tcp\" TCP_Framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\")\n",
            dir.path().display(),
            tcp.port()
        ),
    )
    .unwrap();
    let mut rsyslog = Command::new("/usr/sbin/rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let port = input_port.to_string();
    logger(&[
        "--udp",
        "-n",
        "127.0.0.1",
        "-P",
        &port,
        "--rfc5424",
        "-t",
        "viarsyslog",
        "-p",
        "local7.err",
        "--sd-id",
        "zoo@123",
        "--sd-param",
        "tiger=\"a \\\"quoted\\\" \\]\"",
        "through rsyslog",
    ]);
    for i in 0..200 {
        logger(&[
            "--udp",
            "-n",
            "127.0.0.1",
            "-P",
            &port,
            "--rfc3164",
            "-t",
            "bulk",
            &format!("bulk {i}"),
        ]);
    }
    let got = wait_records(&gateway, &agent, 201);
    let _ = rsyslog.kill();
    let _ = rsyslog.wait();
    let r = find(&got, "through rsyslog");
    assert_eq!(
        (r.record.severity_text.as_str(), r.int("facility")),
        ("err", Some(23))
    );
    assert_eq!(r.text("appname"), Some("viarsyslog"));
    assert_eq!(
        r.sd_param("zoo@123", "tiger").as_deref(),
        Some("a \"quoted\" ]")
    );
    // rsyslog keeps the space that followed the RFC 3164 tag in MSG.
    let bulk: Vec<String> = got
        .iter()
        .filter(|r| r.text("appname") == Some("bulk"))
        .map(|r| r.body().trim_start().to_string())
        .collect();
    assert_eq!(
        bulk,
        (0..200).map(|i| format!("bulk {i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        agent.metric("tern_syslog_malformed_messages_total{transport=\"tcp\"}"),
        None
    );
}

/// Garbage, oversized and malformed input is counted, forwarded whole where
/// it can be, and never stops the receiver; a 1 GiB line costs at most one
/// message of memory.
#[test]
fn bad_input_is_counted_and_never_harms() {
    let gateway = FakeGateway::start();
    let agent = Agent::start(&config(
        &gateway,
        "udp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\nmax_message_size = \"1KiB\"",
    ));
    let (udp, tcp) = addresses(&agent);
    let (udp, tcp) = (udp.unwrap(), tcp.unwrap());
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(b"no priority here", udp).unwrap();
    s.send_to(b"<13>1 2026-13-45T99:00:00Z host app - - - bad time", udp)
        .unwrap();
    s.send_to(&[0xff, 0x00, 0x80, b'<', b'9', b'>'], udp)
        .unwrap();
    s.send_to(&vec![b'x'; 4000], udp).unwrap();
    s.send_to(b"<14>udp ok", udp).unwrap();
    let mut c = TcpStream::connect(tcp).unwrap();
    c.write_all(b"12x <13>bad count\n").unwrap();
    c.write_all(b"5000 ").unwrap();
    c.write_all(&vec![b'y'; 5000]).unwrap();
    c.write_all(b"10 <14>tcp ok").unwrap();
    // A 1 GiB line, then a good one.
    let rss_before = agent.peak_rss();
    let chunk = vec![b'z'; 1 << 20];
    for _ in 0..1024 {
        c.write_all(&chunk).unwrap();
    }
    c.write_all(b"\n<14>after the huge line\n").unwrap();
    c.write_all(b"<14>partial at the end").unwrap();
    drop(c);
    let got = wait_records(&gateway, &agent, 7);
    let bodies: Vec<String> = got.iter().map(Rec::body).collect();
    for want in [
        "no priority here",
        "<13>1 2026-13-45T99:00:00Z host app - - - bad time"[4..].as_ref(),
        "udp ok",
        "tcp ok",
        "after the huge line",
        "partial at the end",
    ] {
        assert!(
            bodies.iter().any(|b| b == want),
            "{want:?} not in {bodies:?}"
        );
    }
    assert!(bodies.iter().any(|b| b.starts_with("bytes:")), "{bodies:?}");
    let m = |s: &str| agent.metric(s).unwrap_or(0.0);
    assert_eq!(
        m("tern_syslog_malformed_messages_total{transport=\"udp\"}"),
        3.0
    );
    assert_eq!(
        m("tern_syslog_dropped_messages_total{transport=\"udp\",reason=\"too_large\"}"),
        1.0
    );
    assert_eq!(
        m("tern_syslog_dropped_messages_total{transport=\"tcp\",reason=\"too_large\"}"),
        2.0
    );
    assert_eq!(
        m("tern_syslog_dropped_messages_total{transport=\"tcp\",reason=\"bad_frame\"}"),
        1.0
    );
    let rss_after = agent.peak_rss();
    assert!(
        rss_after < rss_before + (8 << 20),
        "peak RSS grew from {rss_before} to {rss_after} bytes over a 1 GiB line"
    );
}

/// What TCP senders wrote before SIGTERM is queued and arrives after the
/// restart: nothing read is lost at a stop.
#[test]
fn messages_read_before_sigterm_arrive_after_restart() {
    let mut gateway = FakeGateway::start();
    gateway.stop();
    let mut agent = Agent::start(&config(&gateway, "tcp = \"127.0.0.1:0\""));
    let (_, tcp) = addresses(&agent);
    let mut c = TcpStream::connect(tcp.unwrap()).unwrap();
    let mut all = Vec::new();
    for i in 0..3000 {
        let m = format!("<14>1 - - app - - - message {i}");
        all.extend_from_slice(format!("{} {m}", m.len()).as_bytes());
    }
    c.write_all(&all).unwrap();
    drop(c);
    // Read whole (the counter moves once a batch is queued or at a tick).
    wait_for(
        Duration::from_secs(10),
        || {
            (agent.metric("tern_syslog_messages_total{transport=\"tcp\"}") == Some(3000.0))
                .then_some(())
        },
        || agent.diagnostics(),
    );
    assert_eq!(agent.terminate(), Some(0));
    gateway.restart();
    agent.restart();
    let got = wait_records(&gateway, &agent, 3000);
    let bodies: Vec<String> = got.iter().map(Rec::body).collect();
    assert_eq!(
        bodies,
        (0..3000)
            .map(|i| format!("message {i}"))
            .collect::<Vec<_>>()
    );
}
