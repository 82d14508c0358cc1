//! Helpers for the system tests: temp dirs, waiting on conditions, tiny HTTP
//! clients and servers, a real node_exporter, the `Agent` and `FakeGateway`.

pub mod agent;
pub mod exporter;
pub mod gateway;
pub mod spans;
pub mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use agent::Agent;
pub use gateway::{FakeGateway, Reply};

/// A directory removed on drop (kept when the test fails, for a look).
pub struct TempDir(Option<PathBuf>);

impl TempDir {
    /// A fresh directory under the target's temp dir.
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir().join("tern-tests");
        let dir = base.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(Some(dir))
    }

    /// A placeholder that owns nothing.
    pub fn detached() -> TempDir {
        TempDir(None)
    }

    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("temp dir in use")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(dir);
            } else {
                eprintln!("kept test dir {}", dir.display());
            }
        }
    }
}

/// Polls `check` until it returns Some, or panics after `timeout` with `why()`.
pub fn wait_for<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    why: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("condition not met within {timeout:?}\n{}", why());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.0 GET; returns the status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

use tern::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tern::otlp::proto::common::v1::{any_value, KeyValue};
use tern::otlp::proto::metrics::v1::{metric, Metric};

/// Every metric in `requests`, with its resource's attributes.
pub fn flatten(requests: &[ExportMetricsServiceRequest]) -> Vec<(Vec<KeyValue>, Metric)> {
    let mut out = Vec::new();
    for r in requests {
        for rm in &r.resource_metrics {
            let attrs = rm
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    out.push((attrs.clone(), m.clone()));
                }
            }
        }
    }
    out
}

/// The string value of attribute `key`.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// The double values of a Gauge or Sum metric's points, in order.
pub fn values(m: &Metric) -> Vec<f64> {
    use tern::otlp::proto::metrics::v1::number_data_point::Value;
    let points = match &m.data {
        Some(metric::Data::Gauge(g)) => &g.data_points,
        Some(metric::Data::Sum(s)) => &s.data_points,
        _ => return Vec::new(),
    };
    points
        .iter()
        .filter_map(|p| match p.value {
            Some(Value::AsDouble(v)) => Some(v),
            Some(Value::AsInt(v)) => Some(v as f64),
            None => None,
        })
        .collect()
}

/// Header names (lowercased) and values of a parsed HTTP head.
pub fn header_pairs(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// A config with the OTLP receiver on a free port and fast retries: `tables`
/// (such as `[resource]`) before the receiver's, `receiver` lines in
/// `[receiver.otlp]` and `export` lines in `[export]`.
pub fn receiver_config(tables: &str, receiver: &str, export: &str) -> String {
    format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"
{tables}
[receiver.otlp]
listen = "127.0.0.1:0"
{receiver}

[export]
timeout = "2s"
{export}

[export.retry]
initial_interval = "100ms"
max_interval = "500ms"
"#
    )
}

/// A config for one scrape job sending to `gateway`, with fast retries.
pub fn config(job: &str, target: SocketAddr, interval: &str, gateway: &str) -> String {
    format!(
        r#"[agent]
state_dir = "{{state_dir}}"
listen = "127.0.0.1:0"

[[scrape]]
job = "{job}"
targets = ["{target}"]
interval = "{interval}"

[export]
endpoints = ["{gateway}"]
timeout = "2s"

[export.retry]
initial_interval = "100ms"
max_interval = "500ms"
"#
    )
}
