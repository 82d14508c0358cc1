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
//! cannot hold its connection either. A new connection must send the first
//! byte of its request within [`Limits::first_byte_timeout`] (1 s); a
//! keep-alive connection waits for its next request until the head deadline.
//!
//! Requests the server refuses itself (408, 413, 431, bad framing) are
//! answered through a [`Refuse`] callback, so the OTLP receiver can answer
//! them in its own format; after such an answer the server reads and discards
//! what the client is still sending for a moment before closing (a "lingering
//! close"), so that the client reads the answer instead of a reset.
//!
//! # Connection slots and shedding
//!
//! At most [`Limits::max_connections`] connections are held at once. When
//! every slot is taken, the acceptor sheds (closes, unanswered) the
//! connection that has waited longest for its request to admit the new one:
//! one that has sent nothing yet, a keep-alive connection between requests,
//! one lingering after a refusal, or one whose head is still arriving, the
//! oldest first, since its wait began (its accept or the end of its previous
//! request). A well-behaved client sends its head at once and is past that
//! phase within one read, so idle and trickling clients cannot keep it out:
//! 1,000 of them delay a request by milliseconds. A connection reading a
//! body, in its handler or writing its answer is never shed; only when every
//! slot is in that state do new connections wait in the kernel's backlog.
//! Each shed is told to an [`OnShed`] callback, which counts it.
//!
//! A slot costs little: a connection waiting for its request holds no
//! buffer, and one whose head arrives reads it 1 KiB at a time. Measured
//! (release build, x86_64): 256 slots held by heads trickling in a byte at a
//! time added 1.4 MiB of RSS (5.6 to 7.0 MiB), about 5 KiB a slot; 256 heads
//! of 15 KiB (the limit is 16 KiB) added 5.2 MiB; 4,096 slots, the most the
//! receiver's config allows, 20 MiB with small heads and 78 MiB with 15 KiB
//! heads. Bodies, the costly part, are bounded apart: at most
//! [`Limits::max_bodies`] are read and handled at once, each at most
//! [`Limits::max_body`]; a request with a body waits for its turn within its
//! body deadline, else gets 503.

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
    /// Deadline for the first byte of a new connection's first request.
    /// Defaults to 1 s: a client connects when it has a request to send.
    pub(crate) first_byte_timeout: Duration,
    /// Deadline to receive a whole request head, counted from the end of the
    /// previous request (so it is also an idle keep-alive connection's life)
    /// or from the accept. Defaults to 10 s.
    pub(crate) head_timeout: Duration,
    /// Deadline to receive a whole body once the head is in, however it is
    /// framed. Defaults to 30 s.
    pub(crate) body_timeout: Duration,
    /// Deadline to write a whole response. Defaults to 30 s.
    pub(crate) write_timeout: Duration,
    /// Connections held at once. When every one is taken, a new connection
    /// sheds the one that has waited longest for its request (idle, or with
    /// its head still arriving); only while all are in the middle of a
    /// request (body, handler, answer) do new ones wait in the kernel's
    /// backlog. Defaults to 64.
    pub(crate) max_connections: usize,
    /// Request bodies read and handled at once, each at most `max_body`:
    /// what bounds the bodies' memory. A request with a body waits for one
    /// within its body deadline, else gets 503. Defaults to 16.
    pub(crate) max_bodies: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 1 << 20,
            max_head: 16 << 10,
            first_byte_timeout: Duration::from_secs(1),
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 64,
            max_bodies: 16,
        }
    }
}

/// A request the server answers itself, without calling the handler: a
/// timeout, a body or head over its limit, or framing it cannot read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal<'a> {
    /// The status: 400, 408, 413, 431, 501 or 503.
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

/// Why a connection was closed to admit a new one when every slot was
/// taken (see "Limits" in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// It had no request in progress: a new connection that had sent
    /// nothing yet, a keep-alive connection between requests, or one
    /// lingering after a refusal.
    Idle,
    /// Its request head was still arriving, the oldest of all.
    SlowHead,
}

impl Shed {
    /// The label value: `idle` or `slow_head`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Shed::Idle => "idle",
            Shed::SlowHead => "slow_head",
        }
    }
}

/// Told of each connection shed, to count it.
pub(crate) type OnShed = Arc<dyn Fn(Shed) + Send + Sync>;

/// Accepts connections on `listener` and serves them on `executor` until the
/// returned future is dropped. Refusals are answered in plain text; each
/// connection shed is told to `on_shed`.
pub(crate) async fn serve(
    executor: Arc<smol::Executor<'static>>,
    listener: TcpListener,
    handler: Handler,
    on_shed: OnShed,
    limits: Limits,
) {
    serve_with(
        executor,
        listener,
        handler,
        refuse_as_text(),
        on_shed,
        limits,
    )
    .await;
}

/// As [`serve`], with the responses to refused requests built by `refuse`.
pub(crate) async fn serve_with(
    executor: Arc<smol::Executor<'static>>,
    listener: TcpListener,
    handler: Handler,
    refuse: Refuse,
    on_shed: OnShed,
    limits: Limits,
) {
    let server = Arc::new(Server {
        handler,
        refuse,
        limits,
        slots: Slots::new(limits.max_connections),
        bodies: smol::lock::Semaphore::new(limits.max_bodies.max(1)),
    });
    loop {
        // While every connection is in the middle of a request, new ones
        // wait in the kernel's backlog.
        server.slots.until_admissible().await;
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("Accept failed error={e}");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The state may have changed while accepting: wait again if need be.
        let Admitted {
            id,
            shed_signal,
            shed,
        } = loop {
            let changed = server.slots.changed.listen();
            if let Some(admitted) = server.slots.admit(Instant::now()) {
                break admitted;
            }
            changed.await;
        };
        if let Some(reason) = shed {
            log::debug!(
                "HTTP connection shed to admit a new one peer={peer} reason={}",
                reason.as_str()
            );
            on_shed(reason);
        }
        // Responses go out in one write, but a client's delayed ACK must not
        // hold back the end of a larger one (Nagle), on loopback least of all.
        let _ = stream.set_nodelay(true);
        let server2 = server.clone();
        executor
            .spawn(async move {
                let conn = Conn {
                    slots: &server2.slots,
                    id,
                };
                // Shedding drops the sender: the connection stops at once,
                // wherever it waits, and its socket closes.
                smol::future::or(serve_connection(stream, peer, &server2, &conn), async {
                    let _ = shed_signal.recv().await;
                })
                .await;
                server2.slots.release(id);
            })
            .detach();
        // Let the new connection read what it has sent before the next
        // accept can pick a victim.
        smol::future::yield_now().await;
    }
}

/// What every connection of one server shares.
struct Server {
    handler: Handler,
    refuse: Refuse,
    limits: Limits,
    slots: Slots,
    /// One permit per request body being read or handled.
    bodies: smol::lock::Semaphore,
}

/// What a connection is doing, as far as shedding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in progress: waiting for the first byte of one, or
    /// lingering after a refusal. Sheddable.
    Idle,
    /// Part of a request head is in. Sheddable.
    Head,
    /// Reading a body, in the handler, or writing the answer: never shed.
    Busy,
}

/// One connection's entry in [`Slots`].
#[derive(Debug)]
struct Slot {
    phase: Phase,
    /// When the connection began to wait for its current request: its
    /// accept, or the end of the previous request (so a head in progress
    /// counts its idle time before it too, as the head deadline does).
    since: Instant,
    /// Dropped to shed the connection: its task waits on the receiver.
    _signal: smol::channel::Sender<()>,
}

/// The connections a server holds, at most `max`, and what each is doing.
#[derive(Debug)]
struct Slots {
    max: usize,
    table: std::sync::Mutex<SlotTable>,
    /// Notified when a slot frees or a connection becomes sheddable.
    changed: event_listener::Event,
}

#[derive(Debug, Default)]
struct SlotTable {
    slots: std::collections::BTreeMap<u64, Slot>,
    next_id: u64,
}

impl SlotTable {
    /// The sheddable connection that has waited longest for its request.
    fn victim(&self) -> Option<(u64, Shed)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.phase != Phase::Busy)
            .min_by_key(|(_, s)| s.since)
            .map(|(id, s)| {
                let reason = match s.phase {
                    Phase::Head => Shed::SlowHead,
                    _ => Shed::Idle,
                };
                (*id, reason)
            })
    }
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            table: std::sync::Mutex::new(SlotTable::default()),
            changed: event_listener::Event::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        // The table holds no invariant a panic could break halfway.
        match self.table.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether a new connection can be admitted: a slot is free or one is
    /// sheddable.
    fn admissible(&self) -> bool {
        let table = self.lock();
        table.slots.len() < self.max || table.victim().is_some()
    }

    async fn until_admissible(&self) {
        loop {
            let changed = self.changed.listen();
            if self.admissible() {
                return;
            }
            changed.await;
        }
    }

    /// Takes a slot for a new connection, idle since `now`, shedding the
    /// sheddable connection that has waited longest when every slot is
    /// taken. `None` while every connection is in the middle of a request.
    fn admit(&self, now: Instant) -> Option<Admitted> {
        let mut table = self.lock();
        let mut shed = None;
        if table.slots.len() >= self.max {
            let (victim, reason) = table.victim()?;
            // Dropping the entry drops its sender, which stops that task.
            table.slots.remove(&victim);
            shed = Some(reason);
        }
        let (signal, wait) = smol::channel::bounded(1);
        let id = table.next_id;
        table.next_id += 1;
        table.slots.insert(
            id,
            Slot {
                phase: Phase::Idle,
                since: now,
                _signal: signal,
            },
        );
        Some(Admitted {
            id,
            shed_signal: wait,
            shed,
        })
    }

    /// Sets connection `id`'s phase: false when it was shed meanwhile.
    fn set(&self, id: u64, phase: Phase, since: Instant) -> bool {
        let mut table = self.lock();
        let Some(slot) = table.slots.get_mut(&id) else {
            return false;
        };
        slot.phase = phase;
        slot.since = since;
        drop(table);
        if phase != Phase::Busy {
            self.changed.notify(1);
        }
        true
    }

    /// Frees connection `id`'s slot, if it still has one.
    fn release(&self, id: u64) {
        let removed = self.lock().slots.remove(&id);
        if removed.is_some() {
            self.changed.notify(1);
        }
    }
}

/// A connection given a slot.
struct Admitted {
    id: u64,
    /// Ends (closed) when the connection is shed in turn.
    shed_signal: smol::channel::Receiver<()>,
    /// Why a connection was shed to make room for it, if one was.
    shed: Option<Shed>,
}

/// A connection's handle on its slot.
struct Conn<'a> {
    slots: &'a Slots,
    id: u64,
}

impl Conn<'_> {
    /// Enters `phase`, waiting for a request since `since`; `Stop::Closed`
    /// when the connection was shed meanwhile.
    fn enter(&self, phase: Phase, since: Instant) -> Result<(), Stop> {
        if self.slots.set(self.id, phase, since) {
            Ok(())
        } else {
            Err(Stop::Closed)
        }
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
    server: &Server,
    conn: &Conn<'_>,
) {
    let limits = &server.limits;
    // Empty until the first byte of a request arrives: an idle connection
    // holds no buffer.
    let mut buf: Vec<u8> = Vec::new();
    let mut fresh = true;
    loop {
        let read = read_request(&mut stream, &mut buf, server, conn, fresh).await;
        fresh = false;
        let (request, keep_alive, permit) = match read {
            Ok(r) => r,
            Err(Stop::Closed) => return,
            Err(Stop::Refuse {
                status,
                reason,
                path,
                content_type,
            }) => {
                log::debug!("HTTP request refused peer={peer} status={status} reason={reason}");
                let response = (server.refuse)(Refusal {
                    status,
                    reason: &reason,
                    path: path.as_deref(),
                    content_type: content_type.as_deref(),
                });
                if write_response(&mut stream, response, false, limits)
                    .await
                    .is_ok()
                    && conn.enter(Phase::Idle, Instant::now()).is_ok()
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
        let response = (server.handler)(request).await;
        // The body is gone with the request.
        drop(permit);
        if write_response(&mut stream, response, keep_alive, limits)
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

/// Reads one request, whether the connection stays open after it, and the
/// permit its body holds (none without a body). `buf` carries bytes read
/// past the previous request; `fresh` says this is the connection's first.
async fn read_request<'s>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    server: &'s Server,
    conn: &Conn<'_>,
    fresh: bool,
) -> Result<(Request, bool, Option<BodyPermit<'s>>), Stop> {
    let limits = &server.limits;
    let start = Instant::now();
    let deadline = start + limits.head_timeout;
    conn.enter(Phase::Idle, start)?;
    if buf.is_empty() {
        // Waiting for a request holds no buffer, whatever the last one took.
        *buf = Vec::new();
        let first = if fresh {
            deadline.min(start + limits.first_byte_timeout)
        } else {
            deadline
        };
        // Nothing of a request in time: the connection ends, unanswered.
        match with_deadline(stream.peek(&mut [0u8; 1]), first).await {
            Some(Ok(n)) if n > 0 => {}
            _ => return Err(Stop::Closed),
        }
    }
    conn.enter(Phase::Head, start)?;
    let (head, head_len) = loop {
        match parse_head(buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(reason) => return Err(Stop::refuse(400, reason)),
        }
        if buf.len() >= limits.max_head {
            return Err(Stop::refuse(431, "request header fields too large"));
        }
        // Exact, so that a head's buffer stays near what was sent.
        let room = (limits.max_head - buf.len()).clamp(1, HEAD_READ);
        buf.reserve_exact(room);
        match fill(stream, buf, deadline, room..=room).await {
            Ok(()) => {}
            Err(_) if buf.is_empty() => return Err(Stop::Closed),
            Err(Ended::TimedOut) => return Err(Stop::refuse(408, "request timeout")),
            Err(Ended::Closed) => return Err(Stop::Closed),
        }
    };
    conn.enter(Phase::Busy, start)?;
    buf.drain(..head_len);
    let keep_alive = match head.header("connection") {
        Some(c) if c.eq_ignore_ascii_case("close") => false,
        Some(c) if c.eq_ignore_ascii_case("keep-alive") => true,
        _ => head.version >= 1,
    };
    let (body, permit) = read_body(stream, buf, &head, server)
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
    Ok((request, keep_alive, permit))
}

/// What a request with a body holds until its handler is done.
type BodyPermit<'s> = smol::lock::SemaphoreGuard<'s>;

/// Takes a permit to read a body by `deadline`: 503 when the bodies in
/// progress hold them all until then.
async fn body_permit<'s>(server: &'s Server, deadline: Instant) -> Result<BodyPermit<'s>, Stop> {
    with_deadline(server.bodies.acquire(), deadline)
        .await
        .ok_or_else(|| {
            Stop::refuse(
                503,
                "service unavailable: too many requests in progress, retry later",
            )
        })
}

/// Reads the body that `head` announces, whole, with the permit it holds
/// (none without a body).
async fn read_body<'s>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &Head,
    server: &'s Server,
) -> Result<(Vec<u8>, Option<BodyPermit<'s>>), Stop> {
    let limits = &server.limits;
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
            let permit = body_permit(server, deadline).await?;
            if expects_continue {
                send_continue(stream, deadline).await?;
            }
            let body = read_chunked(stream, buf, limits, deadline).await?;
            Ok((body, Some(permit)))
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
            if length == 0 {
                return Ok((Vec::new(), None));
            }
            let permit = body_permit(server, deadline).await?;
            if length > buf.len() && expects_continue {
                send_continue(stream, deadline).await?;
            }
            buf.reserve(length.saturating_sub(buf.len()));
            while buf.len() < length {
                fill(stream, buf, deadline, BODY_READ)
                    .await
                    .map_err(Ended::in_body)?;
            }
            Ok((take_front(buf, length), Some(permit)))
        }
        (None, None) => Ok((Vec::new(), None)),
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
            fill(stream, buf, deadline, BODY_READ)
                .await
                .map_err(Ended::in_body)?;
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
        fill(stream, buf, deadline, BODY_READ)
            .await
            .map_err(Ended::in_body)?;
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

/// Bytes read at once into a body: from 8 KiB, so that a small read does
/// not cost a call each, up to 64 KiB, so that reading into spare capacity
/// stays cheap.
const BODY_READ: std::ops::RangeInclusive<usize> = (8 << 10)..=(64 << 10);

/// Bytes read at once into a request head: heads are a few hundred bytes,
/// and a connection whose head trickles in holds no more than it was sent,
/// rounded up to this.
const HEAD_READ: usize = 1 << 10;

/// Reads once into `buf`, by `deadline`, into its spare capacity or
/// `size`'s lower bound, whichever is more, but at most its upper bound.
async fn fill(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    size: std::ops::RangeInclusive<usize>,
) -> Result<(), Ended> {
    let old = buf.len();
    let spare = buf.capacity() - old;
    buf.resize(old + spare.clamp(*size.start(), *size.end()), 0);
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
        start_counting(limits).0
    }

    /// Counts nothing.
    fn ignore_sheds() -> OnShed {
        Arc::new(|_| {})
    }

    /// A server answering `METHOD PATH BODY-LENGTH`, and the connections it shed.
    fn start_counting(limits: Limits) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Shed>>>) {
        let ex = Arc::new(smol::Executor::new());
        let listener = smol::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(|req: Request| {
            Box::pin(async move {
                if req.path == "/sleep" {
                    smol::Timer::after(Duration::from_millis(800)).await;
                }
                Response::text(
                    200,
                    format!("{} {} {}", req.method, req.path, req.body.len()),
                )
            })
        });
        let shed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let counted = shed.clone();
        let on_shed: OnShed = Arc::new(move |reason| counted.lock().unwrap().push(reason));
        let ex2 = ex.clone();
        std::thread::spawn(move || {
            smol::block_on(ex2.run(serve(ex2.clone(), listener, handler, on_shed, limits)))
        });
        (addr, shed)
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
            smol::block_on(ex2.run(serve(
                ex2.clone(),
                listener,
                handler,
                ignore_sheds(),
                limits,
            )))
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

    /// A connection the server closed: it reads the end of the stream, or
    /// a reset, with nothing before it.
    fn closed_unanswered(s: &mut std::net::TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => out.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    /// A request on a new connection, answered within `within`.
    fn answered_within(addr: SocketAddr, within: Duration) -> String {
        let begun = std::time::Instant::now();
        let out = exchange(
            addr,
            b"POST /ok HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        );
        assert!(out.ends_with("POST /ok 2"), "{out}");
        assert!(begun.elapsed() < within, "{:?}", begun.elapsed());
        out
    }

    /// With every slot taken by connections that sent nothing, a new client
    /// is served at once: the connection idle longest is closed for it,
    /// unanswered, and counted.
    #[test]
    fn the_connection_idle_longest_is_shed_for_a_new_one() {
        let (addr, shed) = start_counting(Limits {
            max_connections: 2,
            first_byte_timeout: Duration::from_secs(20),
            ..Limits::default()
        });
        let mut oldest = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut younger = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        answered_within(addr, Duration::from_secs(2));
        assert!(closed_unanswered(&mut oldest));
        assert_eq!(*shed.lock().unwrap(), [Shed::Idle]);
        // The younger one was kept, and is still served.
        younger
            .write_all(b"GET /y HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        younger.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("GET /y 0"), "{out}");
    }

    /// A keep-alive connection between requests is idle too.
    #[test]
    fn a_keep_alive_connection_between_requests_is_idle() {
        let (addr, shed) = start_counting(Limits {
            max_connections: 1,
            ..Limits::default()
        });
        let mut kept = std::net::TcpStream::connect(addr).unwrap();
        kept.write_all(b"GET /k HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = [0u8; 15];
        kept.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK");
        // Past the first-byte deadline, which a kept-alive connection does
        // not have: it waits for its next request as long as the head deadline.
        std::thread::sleep(Duration::from_millis(1500));
        answered_within(addr, Duration::from_secs(2));
        assert_eq!(*shed.lock().unwrap(), [Shed::Idle]);
    }

    /// When every slot holds a head that is still arriving, the oldest head
    /// is shed for a new client.
    #[test]
    fn the_oldest_slow_head_is_shed_when_none_is_idle() {
        let (addr, shed) = start_counting(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        let mut oldest = std::net::TcpStream::connect(addr).unwrap();
        oldest.write_all(b"POST /slow HTTP/1.1\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut younger = std::net::TcpStream::connect(addr).unwrap();
        younger.write_all(b"POST /slow HTTP/1.1\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        answered_within(addr, Duration::from_secs(2));
        assert!(closed_unanswered(&mut oldest));
        assert_eq!(*shed.lock().unwrap(), [Shed::SlowHead]);
        younger
            .write_all(b"Content-Length: 1\r\nConnection: close\r\n\r\nx")
            .unwrap();
        let mut out = String::new();
        younger.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("POST /slow 1"), "{out}");
    }

    /// A connection in the middle of a body is never shed: a new client
    /// waits for a slot until that body's deadline frees it.
    #[test]
    fn a_connection_mid_body_is_not_shed() {
        let (addr, shed) = start_counting(Limits {
            max_connections: 1,
            body_timeout: Duration::from_millis(600),
            ..Limits::default()
        });
        let mut busy = std::net::TcpStream::connect(addr).unwrap();
        busy.write_all(b"POST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let begun = std::time::Instant::now();
        answered_within(addr, Duration::from_secs(3));
        assert!(
            begun.elapsed() >= Duration::from_millis(300),
            "{:?}",
            begun.elapsed()
        );
        let mut out = String::new();
        busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = busy.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        // Once answered, it lingered (idle) and may have been shed then.
        assert!(
            shed.lock().unwrap().iter().all(|r| *r == Shed::Idle),
            "{:?}",
            shed.lock().unwrap()
        );
    }

    /// A new connection that sends nothing within the first-byte deadline
    /// is closed, unanswered; the whole head still has its own deadline.
    #[test]
    fn a_new_connection_must_send_its_first_byte_soon() {
        let addr = start(Limits {
            first_byte_timeout: Duration::from_millis(200),
            ..Limits::default()
        });
        let begun = std::time::Instant::now();
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        assert!(closed_unanswered(&mut silent));
        assert!(
            begun.elapsed() < Duration::from_secs(2),
            "{:?}",
            begun.elapsed()
        );
        // A head begun in time may take longer than the first-byte deadline.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /h HTTP/1.1\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(b"Connection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("GET /h 0"), "{out}");
    }

    /// Bodies in progress are bounded apart from connections: a second body
    /// waits for the first, and gets 503 if it cannot start by its deadline.
    #[test]
    fn bodies_in_progress_are_bounded() {
        let addr = start(Limits {
            max_bodies: 1,
            body_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        // The first body is in, and its handler takes 800 ms.
        let first = std::thread::spawn(move || {
            exchange(
                addr,
                b"POST /sleep HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
            )
        });
        std::thread::sleep(Duration::from_millis(100));
        let out = exchange(
            addr,
            b"POST /2 HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        );
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        // A request without a body needs no permit.
        let out = exchange(addr, b"GET /3 HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(out.ends_with("GET /3 0"), "{out}");
        let out = first.join().unwrap();
        assert!(out.ends_with("POST /sleep 2"), "{out}");
        // Its permit is back.
        answered_within(addr, Duration::from_secs(2));
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
