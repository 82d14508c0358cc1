//! A small HTTP/1.1 server on smol, for the self telemetry endpoints
//! (`/metrics`, health, `/api/v1/queue`) and the OTLP receiver
//! (`sources::otlp`).
//!
//! httparse reads the request head; this module only frames bodies
//! (`Content-Length` and `Transfer-Encoding: chunked`), answers
//! `Expect: 100-continue`, keeps connections alive and enforces limits, so
//! that a slow or hostile local client cannot hold memory or connections
//! forever. Handlers get the whole body in memory, at most
//! [`Limits::max_body`] bytes.
//!
//! # Why not hyper
//!
//! hyper is the well-kept Rust HTTP server, and it can run over async-io; but
//! its server needs tokio's I/O traits and, through them, the tokio crate,
//! which tern keeps out of its tree (DESIGN.md: no tokio). What tern serves is
//! small: a few GET routes and three POST routes on loopback, HTTP/1.1 only.
//! So this module does the framing by hand, about 400 lines, on httparse (the
//! parser hyper itself uses), and is tested and fuzzed through the receiver.
//!
//! # Limits
//!
//! Each [`Limits`] timeout is a deadline for a whole phase, fixed when the
//! phase starts, not a timeout per read: a client that sends one byte a second
//! gets 408 when the head (or the body) deadline passes, however steadily it
//! sends. Writing a response has a deadline too, so a client that never reads
//! cannot hold its connection either. At most [`Limits::max_connections`]
//! connections are served at once; more wait in the kernel's backlog.
//!
//! Requests the server refuses itself (408, 413, 431, bad framing) are
//! answered through a [`Refuse`] callback, so the OTLP receiver can answer
//! them in its own format; after such an answer the server reads and discards
//! what the client is still sending for a moment before closing (a "lingering
//! close"), so that the client reads the answer instead of a reset.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};

/// A parsed request with its whole body.
#[derive(Debug)]
pub(crate) struct Request {
    /// The method, for example `GET`.
    pub(crate) method: String,
    /// The path without the query string.
    pub(crate) path: String,
    /// Header names (lowercase) and values.
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    /// The body, at most [`Limits::max_body`] bytes.
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// The first header of that (lowercase) name, as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A response to send.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The Content-Type header.
    pub(crate) content_type: &'static str,
    /// More headers, for example Retry-After.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// A plain-text response.
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }
}

/// A boxed future returning a response.
pub(crate) type ResponseFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

/// What answers requests.
pub(crate) type Handler = Arc<dyn Fn(Request) -> ResponseFuture + Send + Sync>;

/// Bounds on what one client can make the server hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest request body (after chunked decoding). Larger requests get 413.
    /// Defaults to 1 MiB.
    pub(crate) max_body: usize,
    /// Largest request head (request line and headers), and largest chunked
    /// trailer section. Larger heads get 431. Defaults to 16 KiB.
    pub(crate) max_head: usize,
    /// Deadline to receive a whole request head, counted from the end of the
    /// previous request (so it is also an idle keep-alive connection's life).
    /// Defaults to 10 s.
    pub(crate) head_timeout: Duration,
    /// Deadline to receive a whole body once the head is in, however it is
    /// framed. Defaults to 30 s.
    pub(crate) body_timeout: Duration,
    /// Deadline to write a whole response. Defaults to 30 s.
    pub(crate) write_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    /// Defaults to 64.
    pub(crate) max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 1 << 20,
            max_head: 16 << 10,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// A request the server answers itself, without calling the handler: a
/// timeout, a body or head over its limit, or framing it cannot read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal<'a> {
    /// The status: 400, 408, 413, 431 or 501.
    pub(crate) status: u16,
    /// What was wrong, lowercase, like `payload too large: 5000000 bytes, the limit is 4194304`.
    pub(crate) reason: &'a str,
    /// The request's path, when its head was read.
    pub(crate) path: Option<&'a str>,
    /// The request's Content-Type, when its head was read and had one.
    pub(crate) content_type: Option<&'a str>,
}

/// Builds the response to a [`Refusal`].
pub(crate) type Refuse = Arc<dyn Fn(Refusal<'_>) -> Response + Send + Sync>;

/// The default [`Refuse`]: the reason as plain text.
pub(crate) fn refuse_as_text() -> Refuse {
    Arc::new(|r: Refusal<'_>| Response::text(r.status, format!("{}\n", r.reason)))
}

/// Accepts connections on `listener` and serves them on `executor` until the
/// returned future is dropped. Refusals are answered in plain text.
pub(crate) async fn serve(
    executor: Arc<smol::Executor<'static>>,
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
) {
    serve_with(executor, listener, handler, refuse_as_text(), limits).await;
}

/// As [`serve`], with the responses to refused requests built by `refuse`.
pub(crate) async fn serve_with(
    executor: Arc<smol::Executor<'static>>,
    listener: TcpListener,
    handler: Handler,
    refuse: Refuse,
    limits: Limits,
) {
    let permits = Arc::new(smol::lock::Semaphore::new(limits.max_connections));
    loop {
        let permit = permits.acquire_arc().await;
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("Accept failed error={e}");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Responses go out in one write, but a client's delayed ACK must not
        // hold back the end of a larger one (Nagle), on loopback least of all.
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let refuse = refuse.clone();
        executor
            .spawn(async move {
                serve_connection(stream, peer, handler, refuse, limits).await;
                drop(permit);
            })
            .detach();
    }
}

/// Why a request was not read.
enum Stop {
    /// The peer closed, or went quiet between requests: close without answering.
    Closed,
    /// Answer with a refusal, then close.
    Refuse {
        status: u16,
        reason: String,
        path: Option<String>,
        content_type: Option<String>,
    },
}

impl Stop {
    fn refuse(status: u16, reason: impl Into<String>) -> Stop {
        Stop::Refuse {
            status,
            reason: reason.into(),
            path: None,
            content_type: None,
        }
    }

    /// Adds what is known of the request once its head is in.
    fn about(self, head: &Head) -> Stop {
        match self {
            Stop::Refuse { status, reason, .. } => Stop::Refuse {
                status,
                reason,
                path: Some(head.path.clone()),
                content_type: head.header("content-type").map(str::to_owned),
            },
            closed => closed,
        }
    }
}

/// How long, and how much, a refused client may go on sending before the
/// connection is closed under it.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Handler,
    refuse: Refuse,
    limits: Limits,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let (request, keep_alive) = match read_request(&mut stream, &mut buf, &limits).await {
            Ok(r) => r,
            Err(Stop::Closed) => return,
            Err(Stop::Refuse {
                status,
                reason,
                path,
                content_type,
            }) => {
                log::debug!("HTTP request refused peer={peer} status={status} reason={reason}");
                let response = refuse(Refusal {
                    status,
                    reason: &reason,
                    path: path.as_deref(),
                    content_type: content_type.as_deref(),
                });
                if write_response(&mut stream, response, false, &limits)
                    .await
                    .is_ok()
                {
                    linger(&mut stream).await;
                }
                return;
            }
        };
        log::trace!(
            "HTTP request peer={peer} method={} path={} body={}",
            request.method,
            request.path,
            request.body.len()
        );
        let response = handler(request).await;
        if write_response(&mut stream, response, keep_alive, &limits)
            .await
            .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    }
}

/// Parses a complete head at the start of `buf`: `Ok(None)` while partial.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad request: {e}")),
    };
    let path = req.path.unwrap_or("/");
    let head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: path.split('?').next().unwrap_or(path).to_string(),
        version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    };
    Ok(Some((head, len)))
}

/// Reads one request, and whether the connection stays open after it. `buf`
/// carries bytes read past the previous request.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<(Request, bool), Stop> {
    let deadline = Instant::now() + limits.head_timeout;
    let (head, head_len) = loop {
        match parse_head(buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(reason) => return Err(Stop::refuse(400, reason)),
        }
        if buf.len() >= limits.max_head {
            return Err(Stop::refuse(431, "request header fields too large"));
        }
        match fill(stream, buf, deadline).await {
            Ok(()) => {}
            // Nothing of a request yet: an idle keep-alive connection ends.
            Err(_) if buf.is_empty() => return Err(Stop::Closed),
            Err(Ended::TimedOut) => return Err(Stop::refuse(408, "request timeout")),
            Err(Ended::Closed) => return Err(Stop::Closed),
        }
    };
    buf.drain(..head_len);
    let keep_alive = match head.header("connection") {
        Some(c) if c.eq_ignore_ascii_case("close") => false,
        Some(c) if c.eq_ignore_ascii_case("keep-alive") => true,
        _ => head.version >= 1,
    };
    let body = read_body(stream, buf, &head, limits)
        .await
        .map_err(|stop| stop.about(&head))?;
    let Head {
        method,
        path,
        headers,
        ..
    } = head;
    let request = Request {
        method,
        path,
        headers,
        body,
    };
    Ok((request, keep_alive))
}

/// Reads the body that `head` announces, whole.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &Head,
    limits: &Limits,
) -> Result<Vec<u8>, Stop> {
    let deadline = Instant::now() + limits.body_timeout;
    let expects_continue = head
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        && head.version >= 1;
    match (
        head.header("transfer-encoding"),
        head.header_bytes("content-length"),
    ) {
        (Some(_), Some(_)) => Err(Stop::refuse(
            400,
            "bad request: both transfer-encoding and content-length",
        )),
        (Some(te), None) if te.eq_ignore_ascii_case("chunked") => {
            if expects_continue {
                send_continue(stream, deadline).await?;
            }
            read_chunked(stream, buf, limits, deadline).await
        }
        (Some(te), None) => Err(Stop::refuse(
            501,
            format!("not implemented: transfer-encoding {te:?}, only chunked"),
        )),
        (None, Some(v)) => {
            let length = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| Stop::refuse(400, "bad request: invalid content-length"))?;
            if length > limits.max_body {
                return Err(Stop::refuse(
                    413,
                    format!(
                        "payload too large: {length} bytes, the limit is {}",
                        limits.max_body
                    ),
                ));
            }
            if length > buf.len() && expects_continue {
                send_continue(stream, deadline).await?;
            }
            buf.reserve(length.saturating_sub(buf.len()));
            while buf.len() < length {
                fill(stream, buf, deadline).await.map_err(Ended::in_body)?;
            }
            Ok(take_front(buf, length))
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// Longest chunk-size line (with extensions) read before giving up.
const MAX_CHUNK_LINE: usize = 4096;

/// Reads a `Transfer-Encoding: chunked` body; trailers are read and ignored.
///
/// See: RFC 9112, section 7.1.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
    deadline: Instant,
) -> Result<Vec<u8>, Stop> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, buf, MAX_CHUNK_LINE, deadline).await?;
        let size = chunk_size(&line).ok_or_else(|| {
            Stop::refuse(
                400,
                format!(
                    "bad request: invalid chunk size line {:?}",
                    String::from_utf8_lossy(line.get(..line.len().min(40)).unwrap_or(&[]))
                ),
            )
        })?;
        if size == 0 {
            // Trailer fields until an empty line, bounded like a head.
            let mut trailers = 0;
            loop {
                let line = read_line(stream, buf, limits.max_head, deadline).await?;
                if line.is_empty() {
                    return Ok(body);
                }
                trailers += line.len() + 2;
                if trailers > limits.max_head {
                    return Err(Stop::refuse(431, "request trailer fields too large"));
                }
            }
        }
        let total = body.len().saturating_add(size);
        if total > limits.max_body {
            return Err(Stop::refuse(
                413,
                format!(
                    "payload too large: more than {} bytes, the limit is {}",
                    limits.max_body, limits.max_body
                ),
            ));
        }
        // `size` fits in `max_body`, so adding 2 cannot overflow.
        let framed = size + 2;
        body.reserve(size);
        while buf.len() < framed {
            fill(stream, buf, deadline).await.map_err(Ended::in_body)?;
        }
        if buf.get(size..framed) != Some(b"\r\n".as_slice()) {
            return Err(Stop::refuse(400, "bad request: chunk not followed by CRLF"));
        }
        body.extend_from_slice(buf.get(..size).unwrap_or(&[]));
        buf.drain(..framed);
    }
}

/// The size of a chunk from its size line (hex digits, then optional
/// extensions after `;`), if valid.
fn chunk_size(line: &[u8]) -> Option<usize> {
    let digits = line.split(|&b| b == b';').next()?;
    let digits = std::str::from_utf8(digits).ok()?.trim_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    usize::from_str_radix(digits, 16).ok()
}

/// Reads one CRLF-terminated line of at most `max` bytes, without its CRLF.
async fn read_line(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
) -> Result<Vec<u8>, Stop> {
    let mut searched = 0;
    loop {
        if let Some(i) = memchr::memmem::find(buf.get(searched..).unwrap_or(&[]), b"\r\n") {
            let end = searched + i;
            let line = take_front(buf, end + 2);
            return Ok(line.get(..end).unwrap_or(&[]).to_vec());
        }
        // A CR at the very end may be the start of the CRLF.
        searched = buf.len().saturating_sub(1);
        if buf.len() > max {
            return Err(Stop::refuse(
                400,
                "bad request: line too long in chunked body",
            ));
        }
        fill(stream, buf, deadline).await.map_err(Ended::in_body)?;
    }
}

/// Removes and returns the first `n` bytes of `buf` (at most all of it),
/// moving whichever part is smaller.
fn take_front(buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    let n = n.min(buf.len());
    let rest = buf.split_off(n);
    std::mem::replace(buf, rest)
}

async fn send_continue(stream: &mut TcpStream, deadline: Instant) -> Result<(), Stop> {
    let write = async {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        stream.flush().await
    };
    match with_deadline(write, deadline).await {
        Some(Ok(())) => Ok(()),
        _ => Err(Stop::Closed),
    }
}

/// Why reading stopped.
enum Ended {
    /// The peer closed or the read failed.
    Closed,
    /// The phase's deadline passed.
    TimedOut,
}

impl Ended {
    /// The stop for a body that did not arrive in full.
    fn in_body(self) -> Stop {
        match self {
            Ended::Closed => Stop::Closed,
            Ended::TimedOut => {
                Stop::refuse(408, "request timeout: the body did not arrive in time")
            }
        }
    }
}

/// Largest single read, so that reading into spare capacity stays cheap.
const READ_SIZE: usize = 64 << 10;

/// Reads once into `buf`, by `deadline`.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), Ended> {
    let old = buf.len();
    let spare = buf.capacity() - old;
    buf.resize(old + spare.clamp(8 << 10, READ_SIZE), 0);
    let read = with_deadline(stream.read(buf.get_mut(old..).unwrap_or(&mut [])), deadline).await;
    let n = match read {
        Some(Ok(n)) => n,
        Some(Err(_)) => 0,
        None => {
            buf.truncate(old);
            return Err(Ended::TimedOut);
        }
    };
    buf.truncate(old + n);
    if n == 0 {
        return Err(Ended::Closed);
    }
    Ok(())
}

/// Runs `f` until `deadline`: `None` if the deadline came first.
async fn with_deadline<T>(f: impl Future<Output = T>, deadline: Instant) -> Option<T> {
    smol::future::or(async { Some(f.await) }, async {
        smol::Timer::at(deadline).await;
        None
    })
    .await
}

/// After a refusal: stop writing, then read and discard what the client is
/// still sending, for a moment, so that it reads the answer before the close.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + LINGER_TIME;
    let mut sink = vec![0u8; 16 << 10];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match with_deadline(stream.read(&mut sink), deadline).await {
            Some(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
    limits: &Limits,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    // One write for head and body: two small writes would wait on the
    // client's delayed ACK (Nagle) for tens of milliseconds each response.
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    drop(resp);
    let write = async {
        stream.write_all(&out).await?;
        stream.flush().await
    };
    with_deadline(write, Instant::now() + limits.write_timeout)
        .await
        .unwrap_or_else(|| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "response write timed out",
            ))
        })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn start(limits: Limits) -> SocketAddr {
        let ex = Arc::new(smol::Executor::new());
        let listener = smol::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(|req: Request| {
            Box::pin(async move {
                Response::text(
                    200,
                    format!("{} {} {}", req.method, req.path, req.body.len()),
                )
            })
        });
        let ex2 = ex.clone();
        std::thread::spawn(move || {
            smol::block_on(ex2.run(serve(ex2.clone(), listener, handler, limits)))
        });
        addr
    }

    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_keep_alive_requests_in_order() {
        let addr = start(Limits::default());
        let out = exchange(
            addr,
            b"POST /a?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("POST /a 3"), "{out}");
        assert!(out.ends_with("GET /b 0"), "{out}");
    }

    #[test]
    fn rejects_large_bodies_and_garbage_and_slow_heads() {
        let limits = Limits {
            max_body: 10,
            head_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let addr = start(limits);
        let out = exchange(addr, b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
        let out = exchange(addr, b"\x00\x01garbage\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        let out = exchange(addr, b"GET / HTTP/1.1\r\n");
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let out = exchange(addr, big.as_bytes());
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[test]
    fn reads_chunked_bodies_with_extensions_and_trailers() {
        let addr = start(Limits::default());
        let out = exchange(
            addr,
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nGET /d HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(out.contains("POST /c 13"), "{out}");
        assert!(out.ends_with("GET /d 0"), "{out}");
    }

    #[test]
    fn refuses_bad_and_oversized_chunked_bodies() {
        let limits = Limits {
            max_body: 10,
            ..Limits::default()
        };
        let addr = start(limits);
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let out = exchange(
            addr,
            format!("{chunked}6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n").as_bytes(),
        );
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
        let out = exchange(addr, format!("{chunked}zz\r\nabc\r\n0\r\n\r\n").as_bytes());
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        let out = exchange(addr, format!("{chunked}3\r\nabcd\r\n0\r\n\r\n").as_bytes());
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        let out = exchange(addr, format!("{chunked}ffffffffffffffffff\r\n").as_bytes());
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        let out = exchange(addr, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 501 "), "{out}");
        let out = exchange(
            addr,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    }

    /// One byte every 50 ms never times out a read, yet the whole-phase
    /// deadlines end the request: the head's, then (with a quick head) the body's.
    #[test]
    fn a_trickling_client_meets_the_deadline() {
        let limits = Limits {
            head_timeout: Duration::from_millis(400),
            body_timeout: Duration::from_millis(400),
            ..Limits::default()
        };
        let addr = start(limits);
        for (prefix, trickle) in [
            ("", "POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n"),
            (
                "POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
                "x".repeat(100).leak() as &str,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "1\r\nx\r\n".repeat(100).leak() as &str,
            ),
        ] {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let begun = std::time::Instant::now();
            s.write_all(prefix.as_bytes()).unwrap();
            let mut out = Vec::new();
            for b in trickle.bytes() {
                if s.write_all(&[b]).is_err() {
                    break;
                }
                let mut chunk = [0u8; 256];
                match s.read(&mut chunk) {
                    Ok(n) if n > 0 => {
                        out.extend_from_slice(&chunk[..n]);
                        break;
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.read_to_end(&mut out);
            let out = String::from_utf8_lossy(&out);
            assert!(out.starts_with("HTTP/1.1 408 "), "{prefix:?}: {out}");
            assert!(
                begun.elapsed() < Duration::from_secs(4),
                "{:?}",
                begun.elapsed()
            );
        }
    }

    #[test]
    fn answers_expect_continue_before_the_body() {
        let addr = start(Limits::default());
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"body").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            out.starts_with("HTTP/1.1 200 ") && out.ends_with("POST /e 4"),
            "{out}"
        );
    }

    /// A client that sends a body over the limit reads the 413, not a reset.
    #[test]
    fn a_refused_client_reads_the_answer() {
        let limits = Limits {
            max_body: 1000,
            ..Limits::default()
        };
        let addr = start(limits);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let body = vec![b'x'; 4 << 20];
        s.write_all(
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    }

    #[test]
    fn http_1_0_closes_after_the_response() {
        let addr = start(Limits::default());
        let out = exchange(addr, b"GET /a HTTP/1.0\r\n\r\n");
        assert!(
            out.contains("Connection: close") && out.ends_with("GET /a 0"),
            "{out}"
        );
    }

    /// A client that never reads does not hold its connection past the
    /// write deadline.
    #[test]
    fn a_client_that_never_reads_is_dropped() {
        let ex = Arc::new(smol::Executor::new());
        let listener = smol::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(|_req: Request| {
            Box::pin(async move { Response::text(200, "x".repeat(64 << 20)) })
        });
        let limits = Limits {
            write_timeout: Duration::from_millis(300),
            max_connections: 1,
            ..Limits::default()
        };
        let ex2 = ex.clone();
        std::thread::spawn(move || {
            smol::block_on(ex2.run(serve(ex2.clone(), listener, handler, limits)))
        });
        let mut stuck = std::net::TcpStream::connect(addr).unwrap();
        stuck.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // With one connection allowed, a second client is served only once
        // the stuck one is dropped.
        std::thread::sleep(Duration::from_millis(100));
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 15];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200 OK");
        drop(stuck);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1f"), Some(31));
        assert_eq!(chunk_size(b"A ; name=value"), Some(10));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"-1"), None);
        assert_eq!(chunk_size(b"0x10"), None);
        assert_eq!(chunk_size(b"11111111111111111"), None);
    }
}
