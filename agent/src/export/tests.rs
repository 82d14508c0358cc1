//! The sender and the delivery loop against a small scripted HTTP server on
//! loopback: redirects, 413 splits, corrupt payloads, acks that fail, stops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;

use super::sender::Sender;
use super::*;
use crate::config::Config;
use crate::http::client::resolve_location;
use crate::otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::proto::common::v1::InstrumentationScope;
use crate::otlp::proto::resource::v1::Resource;
use crate::otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use crate::queue::{Lane, NewBatch, Options, Signal};
use crate::route::{Routes, Table};
use crate::tempdir::TempDir;
use gateway::{Gateway, Stop};

/// One request the server got.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The span names of a traces request (gzip, zstd or plain).
    fn spans(&self) -> Vec<String> {
        let raw = match self.header("content-encoding") {
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(self.body.as_slice())
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Some("zstd") => zstd::stream::decode_all(self.body.as_slice()).unwrap(),
            _ => self.body.clone(),
        };
        ExportTraceServiceRequest::decode(raw.as_slice())
            .unwrap()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect()
    }
}

/// What the server answers: status and extra header lines.
struct Reply(u16, Vec<(&'static str, String)>);

type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

/// A keep-alive HTTP/1.1 server that answers each request from a handler
/// (given the request and its index) and records what it got.
struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (r, st) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut connections = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (r, st, h) = (r.clone(), st.clone(), handler.clone());
                        connections.push(std::thread::spawn(move || serve(stream, &r, &st, &*h)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for c in connections {
                let _ = c.join();
            }
        });
        Server {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    requests: &Mutex<Vec<Request>>,
    stop: &AtomicBool,
    handler: &Handler,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let parsed = {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let length: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    Some((n, req.path.unwrap_or("").to_string(), headers, length))
                }
                _ => None,
            }
        };
        if let Some((n, path, headers, length)) = parsed {
            if buf.len() >= n + length {
                let body = buf[n..n + length].to_vec();
                buf.drain(..n + length);
                let request = Request {
                    path,
                    headers,
                    body,
                };
                let index = {
                    let mut r = requests.lock().unwrap();
                    r.push(request.clone());
                    r.len() - 1
                };
                let Reply(status, extra) = handler(&request, index);
                let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n");
                for (k, v) in extra {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// The `[export]` settings for `endpoint`, with `extra` lines in `[export]`.
fn export_config(endpoint: &str, extra: &str) -> ExportConfig {
    let text = format!(
        r#"[agent]
state_dir = "/nonexistent"

[export]
endpoints = ["{endpoint}"]
timeout = "2s"
headers = {{ "X-Scope-OrgID" = "edge" }}
{extra}

[export.retry]
initial_interval = "10ms"
max_interval = "200ms"
"#
    );
    Config::parse(Path::new("test.toml"), &text).unwrap().export
}

/// A traces request of `n` spans named s0, s1, ..., each with `pad` bytes of
/// attribute, in one resource and one scope.
fn spans(n: usize, pad: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![crate::otlp::kv("service.name", "test")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "scope".into(),
                    ..Default::default()
                }),
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("s{i}"),
                        trace_id: vec![7; 16],
                        attributes: vec![crate::otlp::kv("pad", pseudo_random(i, pad))],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `len` hex digits that gzip cannot shrink much, different for each `seed`.
fn pseudo_random(seed: usize, len: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(seed as u64);
    (0..len)
        .map(|_| char::from_digit(rng.u32(..16), 16).unwrap_or('0'))
        .collect()
}

/// A queue in `dir` holding `payloads` (with their items) in the traces lane
/// bound for `destination`.
fn queue_with(dir: &TempDir, destination: &str, payloads: &[(Vec<u8>, u64)]) -> (Queue, Lane) {
    let options = Options {
        fsync: false,
        ..Options::default()
    };
    let (queue, _) = Queue::open(dir.path(), &options).unwrap();
    let lane = Lane::new(Signal::Traces, destination);
    for (payload, items) in payloads {
        let pushed = queue
            .push(
                &lane,
                NewBatch {
                    payload,
                    items: *items,
                    created: SystemTime::now(),
                    checkpoint: None,
                },
            )
            .unwrap();
        assert!(pushed.dropped.is_empty());
    }
    (queue, lane)
}

/// A sender loop running on its own thread, stopped on drop.
struct Running {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn stop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn gateway(config: &ExportConfig, queue: &Queue, metrics: &Arc<Metrics>) -> Gateway {
    let endpoint = &config.endpoints[0];
    Gateway::new(
        Sender::new(endpoint, config).unwrap(),
        endpoint,
        queue.clone(),
        metrics.clone(),
        Routes::default(),
        config,
        Arc::new(super::bandwidth::Bandwidth::new(config.max_bandwidth)),
    )
}

fn run(gateway: Gateway) -> Running {
    let stop = Arc::new(Stop::new());
    let s = stop.clone();
    let thread = std::thread::spawn(move || gateway.run(&s));
    Running {
        stop,
        thread: Some(thread),
    }
}

/// Polls `check` until it holds, or panics after `timeout` with `why()`.
fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "condition not met: {}", why());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `gateway` until `lane` is empty, then stops it.
fn deliver_all(gateway: Gateway, queue: &Queue, lane: &Lane, server: &Server) {
    let mut running = run(gateway);
    wait_for(
        Duration::from_secs(20),
        || is_empty(queue, lane),
        || format!("{} requests", server.requests().len()),
    );
    running.stop();
}

fn is_empty(queue: &Queue, lane: &Lane) -> bool {
    queue.peek(lane, 1).unwrap().batches.is_empty()
}

/// The labels `endpoint` and `signal="traces"` of `url`, for counters.
fn traces_of(url: &str) -> [(&str, &str); 2] {
    [("endpoint", url), ("signal", "traces")]
}

fn counter(metrics: &Metrics, name: &'static str, labels: &[(&str, &str)]) -> f64 {
    metrics.get(name, labels).unwrap_or(0.0)
}

#[test]
fn redirects_keep_the_post_its_body_and_headers() {
    let target = Server::start(|_, _| Reply(200, vec![]));
    let location = format!("{}/moved/v1/traces", target.url());
    let gateway = Server::start(move |r, _| match r.path.as_str() {
        // A relative hop first, then an absolute one to the other server.
        "/v1/traces" => Reply(307, vec![("Location", "relay/../hop?x=1".into())]),
        _ => Reply(308, vec![("Location", location.clone())]),
    });
    let config = export_config(&gateway.url(), "");
    let sender = Sender::new(&gateway.url(), &config).unwrap();
    let body = crate::otlp::encode(&spans(3, 10)).payload;
    let mut hops = Vec::new();
    sender
        .send_observed(Signal::Traces, &body, &mut |r| {
            hops.push((r.status, r.to.to_string()))
        })
        .unwrap();
    assert_eq!(
        hops,
        [
            (307, format!("{}/v1/hop?x=1", gateway.url())),
            (308, format!("{}/moved/v1/traces", target.url())),
        ]
    );
    let got = target.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/moved/v1/traces");
    assert_eq!(got[0].body, body, "the same body");
    assert_eq!(got[0].header("x-scope-orgid"), Some("edge"));
    assert_eq!(got[0].header("content-encoding"), Some("gzip"));
    assert_eq!(gateway.requests().len(), 2);
    assert!(gateway.requests().iter().all(|r| r.body == body));
}

#[test]
fn unusable_redirects_are_retryable_errors() {
    let looping = Server::start(|_, _| Reply(302, vec![("Location", "/v1/traces".into())]));
    let config = export_config(&looping.url(), "");
    let sender = Sender::new(&looping.url(), &config).unwrap();
    let body = crate::otlp::encode(&spans(1, 1)).payload;
    let e = sender.send(Signal::Traces, &body).unwrap_err();
    assert!(
        matches!(e, ExportError::Redirect { status: 302, .. }),
        "{e}"
    );
    assert!(e.is_retryable());
    assert_eq!(e.reason(), "redirect");
    assert_eq!(looping.requests().len(), sender::MAX_REDIRECTS + 1);

    let downgrade = Server::start(|_, _| {
        Reply(
            301,
            vec![("Location", "https://127.0.0.1:1/v1/traces".into())],
        )
    });
    let sender = Sender::new(&downgrade.url(), &config).unwrap();
    let e = sender.send(Signal::Traces, &body).unwrap_err();
    assert!(e.to_string().contains("scheme"), "{e}");
    assert!(e.is_retryable());
    assert_eq!(downgrade.requests().len(), 1);

    let nowhere = Server::start(|_, _| Reply(308, vec![]));
    let sender = Sender::new(&nowhere.url(), &config).unwrap();
    let e = sender.send(Signal::Traces, &body).unwrap_err();
    assert!(e.to_string().contains("no Location"), "{e}");
    assert!(e.is_retryable());
}

#[test]
fn locations_resolve_against_the_request() {
    let base = "https://gw:4318/otlp/v1/traces?a=b";
    for (location, want) in [
        (
            "https://other:1/v1/traces",
            Some("https://other:1/v1/traces"),
        ),
        ("HTTPS://other/x#frag", Some("https://other/x")),
        ("//other:2/v1/traces", Some("https://other:2/v1/traces")),
        ("/v1/traces", Some("https://gw:4318/v1/traces")),
        ("traces2", Some("https://gw:4318/otlp/v1/traces2")),
        ("../x/./y", Some("https://gw:4318/otlp/x/y")),
        ("../../../../z", Some("https://gw:4318/z")),
        ("?c=d", Some("https://gw:4318/otlp/v1/traces?c=d")),
        ("", None),
        ("ftp://gw/x", None),
        ("https:///nohost", None),
        ("http://bad host/", None),
    ] {
        assert_eq!(
            resolve_location(base, location).as_deref(),
            want,
            "{location:?}"
        );
    }
}

#[test]
fn classes_413_and_unreadable_payloads() {
    let server = Server::start(|_, _| Reply(413, vec![]));
    let config = export_config(&server.url(), "");
    let sender = Sender::new(&server.url(), &config).unwrap();
    let body = crate::otlp::encode(&spans(1, 1)).payload;
    let e = sender.send(Signal::Traces, &body).unwrap_err();
    assert!(matches!(e, ExportError::TooLarge { .. }), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(e.reason(), "http_413");

    // Plain protobuf on the wire: a stored batch that does not gunzip is a
    // local fault, found before anything is sent.
    let config = export_config(&server.url(), "compression = \"none\"");
    let sender = Sender::new(&server.url(), &config).unwrap();
    let e = sender.send(Signal::Traces, b"not gzip").unwrap_err();
    assert!(matches!(e, ExportError::Corrupt(_)), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(server.requests().len(), 1, "the corrupt batch was not sent");
}

#[test]
fn a_failed_ack_is_retried_without_posting_again() {
    let server = Server::start(|_, _| Reply(200, vec![]));
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("ack");
    let payload = crate::otlp::encode(&spans(4, 10)).payload;
    let (queue, lane) = queue_with(&dir, &server.url(), &[(payload.clone(), 4)]);
    let metrics = Arc::new(Metrics::new());
    let g = gateway(&config, &queue, &metrics);
    g.failing_acks.store(3, Ordering::SeqCst);
    deliver_all(g, &queue, &lane, &server);
    assert_eq!(server.requests().len(), 1, "posted once");
    let url = server.url();
    let labels = traces_of(&url);
    assert_eq!(
        counter(&metrics, "tern_export_ack_failures_total", &labels),
        3.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_batches_total", &labels),
        1.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_points_total", &labels),
        4.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_bytes_total", &labels),
        payload.len() as f64
    );
}

#[test]
fn a_413_splits_until_the_gateway_takes_each_part() {
    // About 300 bytes per span after gzip; the gateway takes at most 1000.
    let server = Server::start(|r, _| {
        let status = if r.body.len() > 1000 { 413 } else { 200 };
        Reply(status, vec![])
    });
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("split");
    let mut request = spans(20, 500);
    // One span alone is larger than the gateway takes.
    request.resource_spans[0].scope_spans[0].spans[13].attributes =
        vec![crate::otlp::kv("pad", pseudo_random(99, 6000))];
    let payload = crate::otlp::encode(&request).payload;
    // A batch behind it goes out once the first is done with.
    let mut behind = spans(1, 1);
    behind.resource_spans[0].scope_spans[0].spans[0].name = "behind".into();
    let behind = crate::otlp::encode(&behind).payload;
    let (queue, lane) = queue_with(&dir, &server.url(), &[(payload, 20), (behind, 1)]);
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    let delivered: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.body.len() <= 1000)
        .flat_map(Request::spans)
        .collect();
    let want: Vec<String> = (0..20)
        .filter(|i| *i != 13)
        .map(|i| format!("s{i}"))
        .chain(["behind".to_string()])
        .collect();
    // Every span but the one too large, each once, in order.
    assert_eq!(delivered, want);
    let url = server.url();
    let drop_labels = [
        ("signal", "traces"),
        ("destination", url.as_str()),
        ("reason", "too_large"),
    ];
    assert_eq!(
        counter(&metrics, "tern_dropped_batches_total", &drop_labels),
        1.0
    );
    assert_eq!(
        counter(&metrics, "tern_dropped_points_total", &drop_labels),
        1.0
    );
    let url = server.url();
    let labels = traces_of(&url);
    assert_eq!(
        counter(&metrics, "tern_export_sent_batches_total", &labels),
        2.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_points_total", &labels),
        20.0
    );
    // Nothing else was dropped.
    assert!(!metrics.render().contains("reason=\"permanent\""));
    assert!(counter(&metrics, "tern_export_split_requests_total", &labels) >= 5.0);
}

#[test]
fn parts_delivered_are_not_sent_again_when_a_later_part_fails() {
    // The whole batch gets 413; its first half goes through; the second half
    // fails twice (503), then goes through.
    let server = Server::start(|r, i| match i {
        0 => Reply(413, vec![]),
        1 => Reply(200, vec![]),
        2 | 3 => Reply(503, vec![]),
        _ if r.body.is_empty() => Reply(400, vec![]),
        _ => Reply(200, vec![]),
    });
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("resume");
    let payload = crate::otlp::encode(&spans(6, 10)).payload;
    let (queue, lane) = queue_with(&dir, &server.url(), &[(payload, 6)]);
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    let names: Vec<Vec<String>> = server.requests().iter().map(Request::spans).collect();
    let first_half: Vec<String> = (0..3).map(|i| format!("s{i}")).collect();
    let second_half: Vec<String> = (3..6).map(|i| format!("s{i}")).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(names[1], first_half);
    assert!(names[2..].iter().all(|n| n == &second_half), "{names:?}");
    let url = server.url();
    let labels = traces_of(&url);
    assert_eq!(
        counter(&metrics, "tern_export_sent_batches_total", &labels),
        1.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_points_total", &labels),
        6.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_retried_batches_total", &labels),
        2.0
    );
}

#[test]
fn a_stored_batch_that_cannot_be_read_is_dropped_as_corrupt() {
    let server = Server::start(|_, _| Reply(200, vec![]));
    let config = export_config(&server.url(), "compression = \"none\"");
    let dir = TempDir::new("corrupt");
    let good = crate::otlp::encode(&spans(2, 10)).payload;
    let (queue, lane) = queue_with(
        &dir,
        &server.url(),
        &[(b"\x1f\x8bdamaged".to_vec(), 7), (good, 2)],
    );
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    assert_eq!(server.requests().len(), 1, "only the good batch was sent");
    assert_eq!(server.requests()[0].spans(), ["s0", "s1"]);
    let url = server.url();
    let drop_labels = [
        ("signal", "traces"),
        ("destination", url.as_str()),
        ("reason", "corrupt"),
    ];
    assert_eq!(
        counter(&metrics, "tern_dropped_batches_total", &drop_labels),
        1.0
    );
    assert_eq!(
        counter(&metrics, "tern_dropped_points_total", &drop_labels),
        7.0
    );
}

#[test]
fn a_send_that_fails_at_once_waits_between_attempts() {
    // Nothing listens on this port: every attempt fails at once, and
    // initial_interval = 0 must not turn that into a busy loop.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut config = export_config(&url, "");
    config.retry.initial_interval = Duration::ZERO;
    config.retry.randomization_factor = 1.0;
    let dir = TempDir::new("hot");
    let payload = crate::otlp::encode(&spans(1, 1)).payload;
    let (queue, _lane) = queue_with(&dir, &url, &[(payload, 1)]);
    let metrics = Arc::new(Metrics::new());
    let labels = [
        ("endpoint", url.as_str()),
        ("signal", "traces"),
        ("reason", "network"),
    ];
    let started = Instant::now();
    let mut running = run(gateway(&config, &queue, &metrics));
    wait_for(
        Duration::from_secs(20),
        || counter(&metrics, "tern_export_failed_requests_total", &labels) >= 3.0,
        || metrics.render(),
    );
    let took = started.elapsed();
    running.stop();
    // Two waits of at least retry::MIN_DELAY (100 ms) between three
    // attempts; a loop without a wait makes them in about a millisecond.
    assert!(
        took >= Duration::from_millis(150),
        "three attempts in {took:?}"
    );
}

#[test]
fn a_stop_ends_a_wait_for_a_push_at_once() {
    let dir = TempDir::new("stop");
    let (queue, lane) = queue_with(&dir, "http://127.0.0.1:1", &[]);
    let stop = Arc::new(Stop::new());
    let waiting = Arc::new(AtomicBool::new(false));
    let (s, w, q) = (stop.clone(), waiting.clone(), queue.clone());
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        w.store(true, Ordering::SeqCst);
        s.wait(Some(q.listen()), Duration::from_secs(60))
    });
    wait_for(
        Duration::from_secs(10),
        || waiting.load(Ordering::SeqCst),
        || "the waiter did not start".into(),
    );
    stop.trigger();
    assert!(waiter.join().unwrap(), "woken by the stop");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not by the timeout"
    );

    // A push ends the wait too, without a stop.
    let stop = Arc::new(Stop::new());
    let (s, q) = (stop.clone(), queue.clone());
    let started = Instant::now();
    let waiter = std::thread::spawn(move || s.wait(Some(q.listen()), Duration::from_secs(60)));
    let payload = crate::otlp::encode(&spans(1, 1)).payload;
    // Push until the waiter has seen one (it may start listening after the first).
    wait_for(
        Duration::from_secs(30),
        || {
            let _ = queue
                .push(
                    &lane,
                    NewBatch {
                        payload: &payload,
                        items: 1,
                        created: SystemTime::now(),
                        checkpoint: None,
                    },
                )
                .unwrap();
            waiter.is_finished()
        },
        || "the push did not wake the waiter".into(),
    );
    assert!(!waiter.join().unwrap(), "not stopped");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not by the timeout"
    );
    // And a sleep through a backoff.
    let stop = Arc::new(Stop::new());
    let s = stop.clone();
    let sleeper = std::thread::spawn(move || s.sleep(Duration::from_secs(60)));
    stop.trigger();
    assert!(sleeper.join().unwrap(), "woken by the stop");
}

#[test]
fn a_stopped_sender_leaves_its_loop() {
    let server = Server::start(|_, _| Reply(200, vec![]));
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("idle");
    let payload = crate::otlp::encode(&spans(1, 1)).payload;
    let (queue, lane) = queue_with(&dir, &server.url(), &[(payload, 1)]);
    let metrics = Arc::new(Metrics::new());
    let mut running = run(gateway(&config, &queue, &metrics));
    // Once the batch is delivered the sender waits for the next push.
    wait_for(
        Duration::from_secs(20),
        || is_empty(&queue, &lane),
        || "not delivered".into(),
    );
    running.stop();
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn a_503_is_retried_until_the_gateway_takes_the_batch() {
    let server = Server::start(|_, i| Reply(if i < 2 { 503 } else { 200 }, vec![]));
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("retry");
    let payload = crate::otlp::encode(&spans(3, 10)).payload;
    let (queue, lane) = queue_with(&dir, &server.url(), &[(payload, 3)]);
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    let url = server.url();
    let labels = traces_of(&url);
    assert_eq!(server.requests().len(), 3, "two 503s, then the 200");
    let names: Vec<Vec<String>> = server.requests().iter().map(Request::spans).collect();
    assert!(
        names.iter().all(|n| n == &names[0]),
        "the same batch each time"
    );
    assert_eq!(
        counter(&metrics, "tern_export_retried_batches_total", &labels),
        2.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_batches_total", &labels),
        1.0
    );
    assert!(
        !metrics.render().contains("tern_dropped_batches_total{"),
        "a retry is not a drop"
    );
}

#[test]
fn a_permanent_refusal_drops_the_batch_and_the_next_is_delivered() {
    let server = Server::start(|_, i| Reply(if i == 0 { 400 } else { 200 }, vec![]));
    // One batch a request: the server refuses the first request.
    let config = export_config(&server.url(), "max_request_size = 0");
    let dir = TempDir::new("permanent");
    let first = crate::otlp::encode(&spans(2, 10)).payload;
    let second = crate::otlp::encode(&spans(5, 10)).payload;
    let (queue, lane) = queue_with(&dir, &server.url(), &[(first, 2), (second, 5)]);
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    let url = server.url();
    assert_eq!(server.requests().len(), 2, "each batch posted once");
    assert_eq!(server.requests()[1].spans().len(), 5);
    let dropped = [
        ("signal", "traces"),
        ("destination", url.as_str()),
        ("reason", "permanent"),
    ];
    assert_eq!(
        counter(&metrics, "tern_dropped_batches_total", &dropped),
        1.0
    );
    assert_eq!(
        counter(&metrics, "tern_dropped_points_total", &dropped),
        2.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_batches_total", &traces_of(&url)),
        1.0
    );
    assert_eq!(
        counter(
            &metrics,
            "tern_export_retried_batches_total",
            &traces_of(&url)
        ),
        0.0
    );
}

#[test]
fn a_gateway_failing_past_failover_after_hands_its_lanes_to_the_next() {
    let down = Server::start(|_, _| Reply(503, vec![]));
    let up = Server::start(|_, _| Reply(200, vec![]));
    let mut config = export_config(&down.url(), "");
    config.endpoints.push(up.url());
    config.failover_after = Some(Duration::from_millis(200));
    let dir = TempDir::new("failover");
    let payload = crate::otlp::encode(&spans(3, 10)).payload;
    let (queue, lane) = queue_with(&dir, &down.url(), &[(payload, 3)]);
    let routes = Routes::default();
    routes.set(Table::new(&config.endpoints, config.routing));
    let metrics = Arc::new(Metrics::new());
    let g = Gateway::new(
        Sender::new(&down.url(), &config).unwrap(),
        &down.url(),
        queue.clone(),
        metrics.clone(),
        routes.clone(),
        &config,
        Arc::new(super::bandwidth::Bandwidth::new(config.max_bandwidth)),
    );
    let mut running = run(g);
    let next = Lane::new(Signal::Traces, &up.url());
    wait_for(
        Duration::from_secs(20),
        || is_empty(&queue, &lane) && !is_empty(&queue, &next),
        || metrics.render(),
    );
    running.stop();
    assert!(
        routes
            .current()
            .members
            .iter()
            .any(|m| m.destination == down.url() && m.down),
        "the failing gateway is marked down"
    );
    let url = down.url();
    let moved = [("endpoint", url.as_str()), ("reason", "failover")];
    assert_eq!(
        counter(&metrics, "tern_export_rerouted_batches_total", &moved),
        1.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_rerouted_points_total", &moved),
        3.0
    );
    assert!(
        !metrics.render().contains("tern_dropped_batches_total{"),
        "failing over drops nothing"
    );
}

/// Delivered span names of every request answered 200, in order.
fn delivered_spans(server: &Server, ok: impl Fn(&Request) -> bool) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|r| ok(r))
        .flat_map(Request::spans)
        .collect()
}

/// Batches of 1 to `n` spans, each span named after its batch (`b<k>-s<i>`).
fn numbered_batches(n: usize, pad: usize) -> Vec<(Vec<u8>, u64)> {
    (1..=n)
        .map(|k| {
            let mut r = spans(k, pad);
            for (i, span) in r.resource_spans[0].scope_spans[0]
                .spans
                .iter_mut()
                .enumerate()
            {
                span.name = format!("b{k}-s{i}");
            }
            (crate::otlp::encode(&r).payload, k as u64)
        })
        .collect()
}

#[test]
fn a_backlog_goes_in_one_request_and_every_batch_is_acked() {
    let server = Server::start(|_, _| Reply(200, vec![]));
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("coalesce");
    let (queue, lane) = queue_with(&dir, &server.url(), &numbered_batches(10, 20));
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    assert_eq!(server.requests().len(), 1, "ten batches, one request");
    let names = delivered_spans(&server, |_| true);
    let want: Vec<String> = (1..=10)
        .flat_map(|k| (0..k).map(move |i| format!("b{k}-s{i}")))
        .collect();
    assert_eq!(names, want, "every span once, in queue order");
    let url = server.url();
    let labels = traces_of(&url);
    assert_eq!(
        counter(&metrics, "tern_export_sent_batches_total", &labels),
        10.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_coalesced_batches_total", &labels),
        10.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_points_total", &labels),
        55.0
    );
}

#[test]
fn a_413_halves_the_batches_a_request_carries() {
    // 16 batches of about the same size; the gateway takes five of them at
    // most: they go 16 (413), 8 (413), then 4 a request.
    let batches: Vec<(Vec<u8>, u64)> = (0..16)
        .map(|k| {
            let mut r = spans(1, 600);
            r.resource_spans[0].scope_spans[0].spans[0].name = format!("b{k}");
            (crate::otlp::encode(&r).payload, 1)
        })
        .collect();
    let largest = batches.iter().map(|(b, _)| b.len()).max().unwrap();
    let smallest = batches.iter().map(|(b, _)| b.len()).min().unwrap();
    assert!(8 * smallest > 5 * largest, "{smallest}..{largest}");
    let limit = 5 * largest;
    let server =
        Server::start(move |r, _| Reply(if r.body.len() > limit { 413 } else { 200 }, vec![]));
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("coalesce-413");
    let (queue, lane) = queue_with(&dir, &server.url(), &batches);
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    let sizes: Vec<usize> = server.requests().iter().map(|r| r.spans().len()).collect();
    assert_eq!(sizes, [16, 8, 4, 4, 4, 4], "batches per request");
    let names = delivered_spans(&server, |r| r.body.len() <= limit);
    let want: Vec<String> = (0..16).map(|k| format!("b{k}")).collect();
    assert_eq!(names, want, "each batch delivered once");
    assert!(!metrics.render().contains("tern_dropped_batches_total{"));
}

#[test]
fn a_refused_request_of_several_batches_drops_only_the_bad_one() {
    let server = Server::start(|r, _| {
        Reply(
            if r.spans().iter().any(|s| s == "b3-s1") {
                400
            } else {
                200
            },
            vec![],
        )
    });
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("coalesce-400");
    let (queue, lane) = queue_with(&dir, &server.url(), &numbered_batches(5, 20));
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    let sizes: Vec<usize> = server.requests().iter().map(|r| r.spans().len()).collect();
    assert_eq!(
        sizes,
        [15, 1, 2, 3, 4, 5],
        "the five together, then one by one"
    );
    let names = delivered_spans(&server, |r| !r.spans().iter().any(|s| s == "b3-s1"));
    let want: Vec<String> = [1, 2, 4, 5]
        .into_iter()
        .flat_map(|k| (0..k).map(move |i| format!("b{k}-s{i}")))
        .collect();
    assert_eq!(names, want);
    let url = server.url();
    let dropped = [
        ("signal", "traces"),
        ("destination", url.as_str()),
        ("reason", "permanent"),
    ];
    assert_eq!(
        counter(&metrics, "tern_dropped_batches_total", &dropped),
        1.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_batches_total", &traces_of(&url)),
        4.0
    );
}

#[test]
fn failed_acks_of_a_request_of_several_batches_are_retried_without_posting_again() {
    let server = Server::start(|_, _| Reply(200, vec![]));
    let config = export_config(&server.url(), "");
    let dir = TempDir::new("coalesce-ack");
    let (queue, lane) = queue_with(&dir, &server.url(), &numbered_batches(5, 20));
    let metrics = Arc::new(Metrics::new());
    let g = gateway(&config, &queue, &metrics);
    g.failing_acks.store(3, Ordering::SeqCst);
    deliver_all(g, &queue, &lane, &server);
    assert_eq!(server.requests().len(), 1, "posted once");
    let url = server.url();
    let labels = traces_of(&url);
    assert_eq!(
        counter(&metrics, "tern_export_ack_failures_total", &labels),
        3.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_batches_total", &labels),
        5.0
    );
    assert_eq!(
        counter(&metrics, "tern_export_sent_points_total", &labels),
        15.0
    );
}

/// Batches of `numbered_batches`, stored as zstd.
fn zstd_batches(n: usize) -> Vec<(Vec<u8>, u64)> {
    numbered_batches(n, 20)
        .into_iter()
        .map(|(gzip, items)| {
            let raw = crate::otlp::decompress(&gzip, 1 << 20).unwrap();
            (
                crate::otlp::compress_with(crate::otlp::Codec::Zstd, &raw).payload,
                items,
            )
        })
        .collect()
}

#[test]
fn zstd_batches_go_as_stored_and_join_in_one_request() {
    let server = Server::start(|_, _| Reply(200, vec![]));
    let config = export_config(&server.url(), "compression = \"zstd\"");
    let dir = TempDir::new("zstd");
    let (queue, lane) = queue_with(&dir, &server.url(), &zstd_batches(4));
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "four zstd frames, one request");
    assert_eq!(requests[0].header("content-encoding"), Some("zstd"));
    assert_eq!(requests[0].spans().len(), 10);
}

#[test]
fn a_gateway_answering_415_to_zstd_gets_gzip_from_then_on() {
    let server = Server::start(|r, _| {
        Reply(
            if r.header("content-encoding") == Some("zstd") {
                415
            } else {
                200
            },
            vec![],
        )
    });
    let config = export_config(
        &server.url(),
        "compression = \"zstd\"\nmax_request_size = 0",
    );
    let dir = TempDir::new("zstd-415");
    let (queue, lane) = queue_with(&dir, &server.url(), &zstd_batches(3));
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    let encodings: Vec<Option<String>> = server
        .requests()
        .iter()
        .map(|r| r.header("content-encoding").map(str::to_string))
        .collect();
    let (z, g) = (Some("zstd".to_string()), Some("gzip".to_string()));
    assert_eq!(
        encodings,
        [z, g.clone(), g.clone(), g],
        "one 415, then gzip"
    );
    let names = delivered_spans(&server, |r| r.header("content-encoding") == Some("gzip"));
    assert_eq!(
        names.len(),
        1 + 2 + 3,
        "every batch delivered, none dropped"
    );
    assert!(!metrics.render().contains("tern_dropped_batches_total{"));
}

#[test]
fn batches_stored_in_the_other_codec_still_go() {
    // Stored gzip, sent with zstd configured: as gzip, not compressed again.
    let server = Server::start(|_, _| Reply(200, vec![]));
    let config = export_config(
        &server.url(),
        "compression = \"zstd\"\nmax_request_size = 0",
    );
    let dir = TempDir::new("gzip-under-zstd");
    let (queue, lane) = queue_with(&dir, &server.url(), &numbered_batches(2, 20));
    let metrics = Arc::new(Metrics::new());
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    assert!(server
        .requests()
        .iter()
        .all(|r| r.header("content-encoding") == Some("gzip")));
    // Stored zstd, sent with gzip configured (a switch back): compressed as gzip.
    let server = Server::start(|_, _| Reply(200, vec![]));
    let config = export_config(&server.url(), "max_request_size = 0");
    let dir = TempDir::new("zstd-under-gzip");
    let (queue, lane) = queue_with(&dir, &server.url(), &zstd_batches(2));
    deliver_all(gateway(&config, &queue, &metrics), &queue, &lane, &server);
    assert!(server
        .requests()
        .iter()
        .all(|r| r.header("content-encoding") == Some("gzip")));
    assert_eq!(delivered_spans(&server, |_| true).len(), 3);
}
