//! A test OTLP/HTTP gateway: decodes what tern sends with the same prost types a
//! collector uses (metrics on /v1/metrics, logs on /v1/logs, traces on
//! /v1/traces), records it, and
//! answers from a script (200, 429 with Retry-After, 503, 400, slow answers,
//! connection resets, redirects), or 413 to any body over a size limit.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message;
use tern::otlp::proto::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tern::otlp::proto::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tern::otlp::proto::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// How the gateway answers one request.
#[derive(Debug, Clone)]
#[allow(dead_code)] // Each test uses a few of these.
pub enum Reply {
    /// 200 with an empty ExportMetricsServiceResponse.
    Ok,
    /// 200 with a partial_success rejecting this many points (or log records).
    Partial(i64),
    /// This status, with an optional Retry-After in seconds.
    Status(u16, Option<u64>),
    /// Wait this long, then answer 200 (a slow gateway).
    Slow(Duration),
    /// Close the connection without answering (a reset).
    Reset,
    /// This status (301, 302, 307, 308) with this Location; `{path}` in it
    /// becomes the request's path, so `format!("{}{{path}}", other.url())`
    /// sends every signal to another gateway.
    Redirect(u16, String),
}

/// One request the gateway received and decoded.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The metrics request; empty for a request to /v1/logs.
    pub request: ExportMetricsServiceRequest,
    /// The logs request, for a request to /v1/logs.
    pub logs: Option<ExportLogsServiceRequest>,
    /// The traces request, for a request to /v1/traces.
    pub traces: Option<ExportTraceServiceRequest>,
    /// A hash of the decompressed body: the same batch sent twice (a retry
    /// after a lost ack) has the same digest.
    pub digest: u64,
    /// What the gateway answered; only 200s count as delivered.
    pub answered: u16,
    /// When the request's body had been read.
    pub at: std::time::Instant,
    /// The body's length as sent (compressed or not).
    pub wire_len: usize,
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    received: Vec<Received>,
    /// Bodies (as sent, compressed or not) larger than this get 413.
    max_body: Option<usize>,
    /// Added before every answer: a link's round trip.
    latency: Duration,
    /// Answer 415 to zstd bodies, as a gateway without zstd does.
    refuse_zstd: bool,
}

/// A running test gateway on 127.0.0.1.
pub struct FakeGateway {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeGateway {
    /// Starts a gateway on a free port that answers 200.
    pub fn start() -> FakeGateway {
        FakeGateway::start_on("127.0.0.1:0".parse().unwrap(), Arc::default())
    }

    /// Starts a gateway on `addr` (another loopback address such as
    /// 127.0.0.3, and a port 0 or given), for DNS tests where every gateway
    /// shares one port. Panics if the address is taken.
    #[allow(dead_code)] // Used by the balance tests.
    pub fn start_at(addr: SocketAddr) -> FakeGateway {
        FakeGateway::start_on(addr, Arc::default())
    }

    /// Like [`FakeGateway::start_at`], but `None` when the address is taken.
    #[allow(dead_code)] // Used by the balance tests.
    pub fn try_start_at(addr: SocketAddr) -> Option<FakeGateway> {
        let listener = TcpListener::bind(addr).ok()?;
        drop(listener);
        Some(FakeGateway::start_on(addr, Arc::default()))
    }

    fn start_on(addr: SocketAddr, state: Arc<Mutex<State>>) -> FakeGateway {
        let (addr, stop, thread) = listen(addr, state.clone());
        FakeGateway {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The base URL for tern's `export.endpoints`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next requests with these replies, then with the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Answers every request not scripted with `reply`.
    #[allow(dead_code)] // For tests that need a lasting fault.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    /// Answers 413 to every request whose body, as sent, is larger than
    /// `limit` bytes (before the script is looked at); `None` lifts the limit.
    #[allow(dead_code)] // For the hostile gateway tests.
    pub fn set_max_body(&self, limit: Option<usize>) {
        self.state.lock().unwrap().max_body = limit;
    }

    /// Waits this long before every answer, as a slow link's round trip
    /// would (the answer still counts).
    #[allow(dead_code)] // For the uplink tests.
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency = latency;
    }

    /// Answers 415 Unsupported Media Type to `Content-Encoding: zstd`, as
    /// Prometheus's OTLP endpoint does.
    #[allow(dead_code)] // For the uplink tests.
    pub fn refuse_zstd(&self) {
        self.state.lock().unwrap().refuse_zstd = true;
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Metrics requests answered 200, in arrival order.
    pub fn delivered(&self) -> Vec<ExportMetricsServiceRequest> {
        self.received()
            .into_iter()
            .filter(|r| r.answered == 200 && r.logs.is_none() && r.traces.is_none())
            .map(|r| r.request)
            .collect()
    }

    /// Logs requests answered 200, in arrival order, with their digests.
    #[allow(dead_code)] // Used by the journald tests.
    pub fn delivered_logs(&self) -> Vec<(u64, ExportLogsServiceRequest)> {
        self.received()
            .into_iter()
            .filter(|r| r.answered == 200)
            .filter_map(|r| Some((r.digest, r.logs?)))
            .collect()
    }

    /// Traces requests answered 200, in arrival order.
    #[allow(dead_code)] // Used by the receiver tests.
    pub fn delivered_traces(&self) -> Vec<ExportTraceServiceRequest> {
        self.received()
            .into_iter()
            .filter(|r| r.answered == 200)
            .filter_map(|r| r.traces)
            .collect()
    }

    /// Stops listening: connections are refused until [`FakeGateway::restart`].
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Listens again on the same address, keeping what was received.
    pub fn restart(&mut self) {
        // std sets SO_REUSEADDR, so the old port is free again at once.
        let (_, stop, thread) = listen(self.addr, self.state.clone());
        self.stop = stop;
        self.thread = Some(thread);
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `addr` and serves it on a thread until the returned flag is set.
fn listen(
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
) -> (SocketAddr, Arc<AtomicBool>, JoinHandle<()>) {
    let listener = TcpListener::bind(addr).expect("bind the fake gateway");
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::Builder::new()
        .name("fake-gateway".into())
        .spawn(move || accept_loop(listener, state, st))
        .unwrap();
    (addr, stop, thread)
}

fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (s, st) = (state.clone(), stop.clone());
                connections.push(std::thread::spawn(move || serve(stream, s, st)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    drop(listener);
    for c in connections {
        let _ = c.join();
    }
}

/// Serves one keep-alive connection until the peer closes or the gateway stops.
fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    stream.set_nonblocking(false).unwrap();
    let mut buf = Vec::new();
    loop {
        // Read a head.
        let (head_len, path, headers, length) = loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let headers = super::header_pairs(req.headers);
                let length = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
                break (n, req.path.unwrap().to_string(), headers, length);
            }
            if !read_more(&mut stream, &mut buf) {
                return;
            }
        };
        while buf.len() < head_len + length {
            if stop.load(Ordering::SeqCst) || !read_more(&mut stream, &mut buf) {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..head_len + length).skip(head_len).collect();
        let wire_len = body.len();
        let read_at = std::time::Instant::now();
        let encoding = headers
            .iter()
            .find(|(k, _)| k == "content-encoding")
            .map(|(_, v)| v.as_str());
        let zstd = encoding == Some("zstd");
        if zstd && state.lock().unwrap().refuse_zstd {
            let _ = stream
                .write_all(b"HTTP/1.1 415 Unsupported Media Type\r\nContent-Length: 0\r\n\r\n");
            state.lock().unwrap().received.push(Received {
                path,
                headers,
                request: ExportMetricsServiceRequest::default(),
                logs: None,
                traces: None,
                digest: 0,
                answered: 415,
                at: read_at,
                wire_len,
            });
            continue;
        }
        let raw = match encoding {
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(body.as_slice())
                    .read_to_end(&mut out)
                    .expect("valid gzip from tern");
                out
            }
            Some("zstd") => {
                zstd::stream::decode_all(body.as_slice()).expect("valid zstd from tern")
            }
            _ => body,
        };
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            raw.hash(&mut h);
            h.finish()
        };
        let is_logs = path == "/v1/logs";
        let is_traces = path == "/v1/traces";
        let (request, logs) = if is_logs {
            let logs = ExportLogsServiceRequest::decode(raw.as_slice())
                .expect("valid OTLP logs protobuf from tern");
            (ExportMetricsServiceRequest::default(), Some(logs))
        } else if is_traces {
            (ExportMetricsServiceRequest::default(), None)
        } else {
            let request = ExportMetricsServiceRequest::decode(raw.as_slice())
                .expect("valid OTLP protobuf from tern");
            (request, None)
        };
        let traces = is_traces.then(|| {
            ExportTraceServiceRequest::decode(raw.as_slice())
                .expect("valid OTLP traces protobuf from tern")
        });
        let reply = {
            let mut s = state.lock().unwrap();
            if s.max_body.is_some_and(|limit| wire_len > limit) {
                Reply::Status(413, None)
            } else {
                s.script
                    .pop_front()
                    .or_else(|| s.default.clone())
                    .unwrap_or(Reply::Ok)
            }
        };
        let (status, extra, body) = match &reply {
            Reply::Ok | Reply::Slow(_) if is_traces => (
                200,
                String::new(),
                ExportTraceServiceResponse::default().encode_to_vec(),
            ),
            Reply::Partial(n) if is_traces => {
                let r = ExportTraceServiceResponse {
                    partial_success: Some(ExportTracePartialSuccess {
                        rejected_spans: *n,
                        error_message: "some spans were bad".into(),
                    }),
                };
                (200, String::new(), r.encode_to_vec())
            }
            Reply::Ok | Reply::Slow(_) if is_logs => (
                200,
                String::new(),
                ExportLogsServiceResponse::default().encode_to_vec(),
            ),
            Reply::Ok | Reply::Slow(_) => (
                200,
                String::new(),
                ExportMetricsServiceResponse::default().encode_to_vec(),
            ),
            Reply::Partial(n) if is_logs => {
                let r = ExportLogsServiceResponse {
                    partial_success: Some(ExportLogsPartialSuccess {
                        rejected_log_records: *n,
                        error_message: "some records were bad".into(),
                    }),
                };
                (200, String::new(), r.encode_to_vec())
            }
            Reply::Partial(n) => {
                let r = ExportMetricsServiceResponse {
                    partial_success: Some(
                        tern::otlp::proto::collector::metrics::v1::ExportMetricsPartialSuccess {
                            rejected_data_points: *n,
                            error_message: "some points were bad".into(),
                        },
                    ),
                };
                (200, String::new(), r.encode_to_vec())
            }
            Reply::Status(code, retry_after) => (
                *code,
                retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n")),
                b"scripted failure".to_vec(),
            ),
            Reply::Reset => (0, String::new(), Vec::new()),
            Reply::Redirect(code, location) => (
                *code,
                format!("Location: {}\r\n", location.replace("{path}", &path)),
                b"moved".to_vec(),
            ),
        };
        if let Reply::Slow(d) = reply {
            std::thread::sleep(d);
        }
        let latency = state.lock().unwrap().latency;
        std::thread::sleep(latency);
        // Record before answering, marking only answered 200s as delivered.
        state.lock().unwrap().received.push(Received {
            path,
            headers,
            request,
            logs,
            traces,
            digest,
            at: read_at,
            wire_len,
            answered: if matches!(reply, Reply::Slow(_)) {
                0
            } else {
                status
            },
        });
        if status == 0 {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        let ct = if status == 200 {
            "application/x-protobuf"
        } else {
            "text/plain"
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        if stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(&body))
            .is_err()
        {
            return;
        }
        if let Reply::Slow(_) = reply {
            // The client has given up by now; a late 200 must not count.
            return;
        }
    }
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    match stream.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            true
        }
        Err(_) => false,
    }
}
