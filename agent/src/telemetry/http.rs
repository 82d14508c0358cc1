//! A small HTTP/1.1 server on smol for `/metrics`, health, and (later) the OTLP
//! receiver.
//!
//! httparse reads the request head; this module only frames bodies
//! (`Content-Length`), keeps connections alive and enforces limits, so that a
//! slow or hostile local client cannot hold memory or connections forever.
//! hyper would do this too, but it depends on tokio, which tern keeps out of its
//! dependency tree.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};

/// A parsed request with its whole body.
#[derive(Debug)]
pub struct Request {
    /// The method, for example `GET`.
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, at most [`Limits::max_body`] bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that (lowercase) name, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A response to send.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The Content-Type header.
    pub content_type: &'static str,
    /// More headers, for example Retry-After.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }
}

/// A boxed future returning a response.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

/// What answers requests.
pub type Handler = Arc<dyn Fn(Request) -> ResponseFuture + Send + Sync>;

/// Bounds on what one client can make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body. Larger requests get 413.
    pub max_body: usize,
    /// Largest request head (request line and headers). Larger heads get 431.
    pub max_head: usize,
    /// Time to receive a whole request head, and an idle keep-alive connection's
    /// life. Defaults to 10 s.
    pub head_timeout: Duration,
    /// Time to receive a whole body once the head is in. Defaults to 30 s.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 1 << 20,
            max_head: 16 << 10,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// Accepts connections on `listener` and serves them on `executor` until the
/// returned future is dropped.
pub async fn serve(
    executor: Arc<smol::Executor<'static>>,
    listener: TcpListener,
    handler: Handler,
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
        let handler = handler.clone();
        executor
            .spawn(async move {
                serve_connection(stream, peer, handler, limits).await;
                drop(permit);
            })
            .detach();
    }
}

/// Why a connection ends without a response.
enum Stop {
    Closed,
    Respond(Response),
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Handler,
    limits: Limits,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let request = match read_request(&mut stream, &mut buf, &limits).await {
            Ok(r) => r,
            Err(Stop::Closed) => return,
            Err(Stop::Respond(resp)) => {
                let _ = write_response(&mut stream, resp, false).await;
                return;
            }
        };
        let keep_alive = !request
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        log::trace!(
            "HTTP request peer={peer} method={} path={}",
            request.method,
            request.path
        );
        let response = handler(request).await;
        if write_response(&mut stream, response, keep_alive)
            .await
            .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// Reads one request. `buf` carries bytes read past the previous request.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Request, Stop> {
    let deadline = smol::Timer::after(limits.head_timeout);
    let head = read_until(stream, buf, limits.max_head, deadline, |b| {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(b) {
            Ok(httparse::Status::Complete(n)) => Some(Ok(n)),
            Ok(httparse::Status::Partial) => None,
            Err(e) => Some(Err(e)),
        }
    })
    .await?;
    let head_len = match head {
        Ok(n) => n,
        Err(e) => {
            return Err(Stop::Respond(Response::text(
                400,
                format!("bad request: {e}\n"),
            )))
        }
    };
    let mut headers_buf = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers_buf);
    if req.parse(&buf[..head_len]).is_err() {
        return Err(Stop::Respond(Response::text(400, "bad request\n")));
    }
    let method = req.method.unwrap_or("").to_string();
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path).to_string();
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    buf.drain(..head_len);

    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    };
    if find("transfer-encoding").is_some() {
        return Err(Stop::Respond(Response::text(
            411,
            "length required: chunked bodies are not supported\n",
        )));
    }
    let length = match find("content-length") {
        None => 0,
        Some(v) => match std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        {
            Some(n) => n,
            None => {
                return Err(Stop::Respond(Response::text(
                    400,
                    "bad request: invalid content-length\n",
                )))
            }
        },
    };
    if length > limits.max_body {
        return Err(Stop::Respond(Response::text(
            413,
            format!(
                "payload too large: {length} bytes, the limit is {}\n",
                limits.max_body
            ),
        )));
    }
    let deadline = smol::Timer::after(limits.body_timeout);
    read_until(stream, buf, length, deadline, |b| {
        (b.len() >= length).then_some(())
    })
    .await?;
    let body = buf.drain(..length).collect();
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Reads into `buf` until `done` says so, `max` bytes are buffered, the peer
/// closes, or `deadline` passes.
async fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: smol::Timer,
    mut done: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, Stop> {
    let mut deadline = deadline;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(t) = done(buf) {
            return Ok(t);
        }
        if buf.len() >= max.max(1) && max > 0 {
            return Err(Stop::Respond(Response::text(
                431,
                "request header fields too large\n",
            )));
        }
        let read = smol::future::or(async { Some(stream.read(&mut chunk).await) }, async {
            (&mut deadline).await;
            None
        })
        .await;
        match read {
            None => {
                return Err(if buf.is_empty() {
                    Stop::Closed
                } else {
                    Stop::Respond(Response::text(408, "request timeout\n"))
                })
            }
            Some(Ok(0)) | Some(Err(_)) => return Err(Stop::Closed),
            Some(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
        }
    }
}

async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
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
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&resp.body).await?;
    stream.flush().await
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
}
