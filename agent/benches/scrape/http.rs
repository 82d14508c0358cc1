//! A small HTTP/1.1 server (for the synthetic exporter and the sink) and a
//! one-shot GET client (for the agents' self metrics). Loopback only.
//!
//! The server runs one thread per connection and keeps connections alive, as
//! both agents reuse theirs. It reads `Content-Length` and chunked bodies and
//! hands the handler only their length: nothing here decodes a payload.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The most header bytes read for one request before the connection is dropped.
const MAX_HEAD: usize = 64 << 10;

/// What the handler sees of a request.
#[derive(Debug)]
pub(crate) struct Request {
    /// The method, such as `GET` or `POST`.
    pub(crate) method: String,
    /// The request target, such as `/v1/metrics`.
    pub(crate) path: String,
    /// The `User-Agent` header, empty when absent.
    pub(crate) user_agent: String,
    /// The body's length in bytes (after de-chunking, before any decompression).
    pub(crate) body_len: u64,
}

/// What the handler answers.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The `Content-Type` header.
    pub(crate) content_type: &'static str,
    /// The body; shared so a large body is not copied per request.
    pub(crate) body: Arc<Vec<u8>>,
}

impl Response {
    /// An empty response with `status` and `content_type`.
    pub(crate) fn empty(status: u16, content_type: &'static str) -> Response {
        Response {
            status,
            content_type,
            body: Arc::new(Vec::new()),
        }
    }
}

/// The request handler a [`Server`] calls for every request.
type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// An HTTP server on `127.0.0.1:0`; stops accepting on drop.
#[derive(Debug)]
pub(crate) struct Server {
    /// The bound address.
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `127.0.0.1:0` and serves every request with `handler`. `name`
    /// names the threads.
    ///
    /// # Panics
    ///
    /// If the loopback socket cannot be bound.
    pub(crate) fn start(
        name: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        // Non-blocking accept, so the thread notices `stop` without a wake-up connection.
        listener
            .set_nonblocking(true)
            .expect("set the listener non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (thread_stop, conn_name) = (stop.clone(), format!("{name}-conn"));
        let accept = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(&listener, &thread_stop, &handler, &conn_name))
            .expect("spawn the accept thread");
        Server {
            addr,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Server {
    /// Stops accepting and joins the accept thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Connection threads see `stop` within one read timeout and end on their own.
    }
}

/// Accepts connections until `stop`, one thread each.
fn accept_loop(listener: &TcpListener, stop: &Arc<AtomicBool>, handler: &Arc<Handler>, name: &str) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (stop, handler) = (stop.clone(), handler.clone());
                let spawned = std::thread::Builder::new()
                    .name(name.to_string())
                    .spawn(move || serve_connection(stream, &stop, &*handler));
                if let Err(e) = spawned {
                    eprintln!("bench: cannot spawn a connection thread: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                eprintln!("bench: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves requests on one connection until the peer closes it, asks to close,
/// sends something unparsable, or the server stops.
fn serve_connection(stream: TcpStream, stop: &AtomicBool, handler: &Handler) {
    // The accepted socket inherits non-blocking mode on some platforms; we want
    // blocking reads with a timeout, so `stop` is checked at least once a second.
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(16 << 10),
        stop,
    };
    loop {
        let Some(head_len) = conn.head() else { return };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if !matches!(
            parsed.parse(&conn.buf[..head_len]),
            Ok(httparse::Status::Complete(_))
        ) {
            return;
        }
        let header = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let content_length = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let chunked =
            header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || parsed.version == Some(0);
        let mut request = Request {
            method: parsed.method.unwrap_or("").to_string(),
            path: parsed.path.unwrap_or("").to_string(),
            user_agent: header("user-agent").unwrap_or_default(),
            body_len: 0,
        };
        conn.buf.drain(..head_len);
        let body_len = if chunked {
            conn.chunked_body()
        } else {
            conn.body(content_length.unwrap_or(0))
        };
        let Some(body_len) = body_len else { return };
        request.body_len = body_len;
        let response = handler(&request);
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
            response.status,
            if response.status < 300 { "OK" } else { "Error" },
            response.content_type,
            response.body.len(),
            if close { "Connection: close\r\n" } else { "" },
        );
        let written = conn
            .stream
            .write_all(head.as_bytes())
            .and_then(|()| conn.stream.write_all(&response.body))
            .and_then(|()| conn.stream.flush());
        if written.is_err() || close {
            return;
        }
    }
}

/// One server-side connection: the stream and the bytes read but not consumed.
struct Conn<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    stop: &'a AtomicBool,
}

impl Conn<'_> {
    /// Reads more bytes into `buf`. False on EOF, error or stop.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 << 10];
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return false,
            }
        }
    }

    /// Reads until `buf` holds a whole request head; returns its length.
    fn head(&mut self) -> Option<usize> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                return Some(i + 4);
            }
            if self.buf.len() > MAX_HEAD || !self.fill() {
                return None;
            }
        }
    }

    /// Consumes a body of `len` bytes; returns its length.
    fn body(&mut self, len: usize) -> Option<u64> {
        while self.buf.len() < len {
            if !self.fill() {
                return None;
            }
        }
        self.buf.drain(..len);
        Some(len as u64)
    }

    /// Consumes one CRLF-terminated line and returns it without the CRLF.
    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if self.buf.len() > MAX_HEAD || !self.fill() {
                return None;
            }
        }
    }

    /// Consumes a chunked body and its trailer; returns the de-chunked length.
    fn chunked_body(&mut self) -> Option<u64> {
        let mut total = 0u64;
        loop {
            let size_line = self.line()?;
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailer fields, if any, end with an empty line.
                while !self.line()?.is_empty() {}
                return Some(total);
            }
            self.body(size)?;
            total += size as u64;
            if !self.line()?.is_empty() {
                return None;
            }
        }
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A one-shot HTTP/1.0 GET to `addr`; returns the status and the body. None on
/// any connection or protocol error (the caller polls or reports).
pub(crate) fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
