//! The synthetic exporters. Each serves series in families of 100, half
//! counters and half gauges, with label sets like a web service's
//! (`{instance_id="...",path="/api/v1/...",method="GET",code="200"}`), in the
//! Prometheus text format; every scrape sees new values. Both count scrapes per
//! client (by `User-Agent` product), so the bench can check each agent's count.
//!
//! - [`Synthetic`]: one target of `series` series (100k, 1M), on the threaded
//!   server of `http.rs`.
//! - [`Fleet`]: `targets` targets of `series` series each, one loopback port per
//!   target (so each is its own `instance`, as separate exporters are), all
//!   served by one thread of async I/O (smol), which costs the machine almost
//!   nothing while 3 x 2,000 keep-alive connections wait. Every series carries
//!   `target="<n>"`, so no two targets share a series.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::http::{Response, Server};

/// Series per metric family.
const PER_FAMILY: usize = 100;
/// HTTP methods in the label sets.
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
/// Status codes in the label sets.
const CODES: [&str; 5] = ["200", "201", "304", "404", "500"];
/// The content type both exporters answer with.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The most bytes of a request head the fleet reads before dropping the connection.
const MAX_HEAD: usize = 64 << 10;

/// Scrapes one client made and the body bytes it got.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Served {
    /// Successful scrapes of `/metrics`.
    pub(crate) scrapes: u64,
    /// Body bytes served.
    pub(crate) bytes: u64,
}

/// What each client was served, by `User-Agent` product.
#[derive(Debug, Default)]
struct Counts(Mutex<BTreeMap<String, Served>>);

impl Counts {
    /// Counts one body of `bytes` served to `user_agent`.
    fn add(&self, user_agent: &str, bytes: usize) {
        let mut served = lock(&self.0);
        let client = served.entry(client_name(user_agent)).or_default();
        client.scrapes += 1;
        client.bytes += bytes as u64;
    }

    /// What `client` got so far.
    fn get(&self, client: &str) -> Served {
        lock(&self.0).get(client).copied().unwrap_or_default()
    }
}

/// The synthetic exporter of one target on `127.0.0.1:0`.
#[derive(Debug)]
pub(crate) struct Synthetic {
    server: Server,
    /// The number of samples in every scrape.
    pub(crate) series: usize,
    served: Arc<Counts>,
}

impl Synthetic {
    /// Starts an exporter of `series` series.
    pub(crate) fn start(series: usize) -> Synthetic {
        let template = Arc::new(Template::new(series));
        let served: Arc<Counts> = Arc::default();
        let scrapes = AtomicU64::new(0);
        let handler_served = served.clone();
        let server = Server::start("bench-exporter", move |req| {
            if req.method != "GET" || req.path != "/metrics" {
                return Response::empty(404, "text/plain");
            }
            let body = template.render(scrapes.fetch_add(1, Ordering::SeqCst), None);
            handler_served.add(&req.user_agent, body.len());
            Response {
                status: 200,
                content_type: CONTENT_TYPE,
                body: Arc::new(body),
            }
        });
        Synthetic {
            server,
            series,
            served,
        }
    }

    /// The target address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// What `client` (a `User-Agent` product such as `tern` or `Prometheus`) got so far.
    pub(crate) fn served(&self, client: &str) -> Served {
        self.served.get(client)
    }
}

/// Many synthetic targets, one loopback port each, served by one thread; stops
/// on drop (its connections close).
#[derive(Debug)]
pub(crate) struct Fleet {
    /// The targets' addresses, target `n` at index `n`.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Series per target.
    pub(crate) series: usize,
    served: Arc<Counts>,
    stop: smol::channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Fleet {
    /// Binds `targets` listeners on `127.0.0.1:0` and serves `series` series on
    /// each.
    ///
    /// # Panics
    ///
    /// If a listener cannot be bound (too few file descriptors, say) or the
    /// thread cannot start.
    pub(crate) fn start(targets: usize, series: usize) -> Fleet {
        let listeners: Vec<TcpListener> = (0..targets)
            .map(|n| {
                TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| {
                    panic!(
                        "bind the fleet's listener {n} of {targets} on loopback: {e} (ulimit -n?)"
                    )
                })
            })
            .collect();
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
            .collect();
        let template = Arc::new(Template::new(series));
        let served: Arc<Counts> = Arc::default();
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let thread_served = served.clone();
        let thread = std::thread::Builder::new()
            .name("bench-fleet".into())
            .spawn(move || serve_fleet(listeners, &template, &thread_served, &stopped))
            .expect("spawn the fleet's thread");
        Fleet {
            addrs,
            series,
            served,
            stop,
            thread: Some(thread),
        }
    }

    /// What `client` (a `User-Agent` product) got so far, over all targets.
    pub(crate) fn served(&self, client: &str) -> Served {
        self.served.get(client)
    }
}

impl Drop for Fleet {
    /// Stops the thread; its tasks, listeners and connections drop with it.
    fn drop(&mut self) {
        self.stop.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fleet's thread: a task per listener and per connection on one local
/// executor, until `stopped` closes. Listener tasks hand their connections to
/// the main future, which spawns them (a task cannot borrow the executor it
/// runs on); everything drops with the executor.
fn serve_fleet(
    listeners: Vec<TcpListener>,
    template: &Arc<Template>,
    served: &Arc<Counts>,
    stopped: &smol::channel::Receiver<()>,
) {
    let ex = smol::LocalExecutor::new();
    let scrapes = Rc::new(Cell::new(0u64));
    let (conn_tx, conns) = smol::channel::unbounded::<(smol::Async<TcpStream>, usize)>();
    for (n, listener) in listeners.into_iter().enumerate() {
        let listener = match smol::Async::new(listener) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bench: fleet target {n}: cannot register its listener: {e}");
                continue;
            }
        };
        let conn_tx = conn_tx.clone();
        ex.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        if conn_tx.send((stream, n)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("bench: fleet target {n}: accept failed: {e}");
                        smol::Timer::after(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .detach();
    }
    smol::block_on(ex.run(async {
        loop {
            let next = smol::future::or(async { conns.recv().await.ok() }, async {
                let _ = stopped.recv().await;
                None
            })
            .await;
            let Some((stream, n)) = next else { return };
            let conn = Conn {
                template: template.clone(),
                served: served.clone(),
                scrapes: scrapes.clone(),
                target: format!("{n:04}"),
            };
            ex.spawn(conn.serve(stream)).detach();
        }
    }));
}

/// What one fleet connection needs to answer its target's scrapes.
struct Conn {
    template: Arc<Template>,
    served: Arc<Counts>,
    /// Scrapes served by the whole fleet, which sets the values.
    scrapes: Rc<Cell<u64>>,
    /// The target's number, the value of its `target` label.
    target: String,
}

impl Conn {
    /// Serves GET requests on one fleet connection until the peer closes it,
    /// asks to close, or sends something unparsable.
    async fn serve(self, mut stream: smol::Async<TcpStream>) {
        let _ = stream.get_ref().set_nodelay(true);
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let head_len = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if buf.len() > MAX_HEAD {
                    return;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if !matches!(
                req.parse(&buf[..head_len]),
                Ok(httparse::Status::Complete(_))
            ) {
                return;
            }
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                || req.version == Some(0);
            let ok = req.method == Some("GET") && req.path == Some("/metrics");
            let user_agent = header("user-agent").unwrap_or_default();
            buf.drain(..head_len);
            let body = if ok {
                let scrape = self.scrapes.get();
                self.scrapes.set(scrape + 1);
                self.template.render(scrape, Some(&self.target))
            } else {
                Vec::new()
            };
            if ok {
                self.served.add(&user_agent, body.len());
            }
            let head = format!(
                "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
                if ok { "200 OK" } else { "404 Not Found" },
                if ok { CONTENT_TYPE } else { "text/plain" },
                body.len(),
                if close { "Connection: close\r\n" } else { "" },
            );
            let mut out = head.into_bytes();
            out.extend_from_slice(&body);
            if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() || close {
                return;
            }
        }
    }
}

/// The product name of a `User-Agent` (`Prometheus/2.42.0` gives `Prometheus`).
fn client_name(user_agent: &str) -> String {
    user_agent
        .split('/')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Locks the per-client counts; a panicked handler thread leaves them usable.
fn lock(m: &Mutex<BTreeMap<String, Served>>) -> MutexGuard<'_, BTreeMap<String, Served>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The exposition rendered once without values, so a scrape only writes numbers.
#[derive(Debug)]
struct Template {
    families: Vec<Family>,
    /// A size hint for the rendered body.
    size: usize,
}

/// One metric family: its `# HELP`/`# TYPE` lines, its name, and each series'
/// labels after the `{`, with the `}` and a space.
#[derive(Debug)]
struct Family {
    header: String,
    name: String,
    counter: bool,
    series: Vec<String>,
}

impl Template {
    /// Lays out `series` series in families of [`PER_FAMILY`].
    fn new(series: usize) -> Template {
        let mut families = Vec::new();
        let mut left = series;
        let mut size = 0;
        while left > 0 {
            let f = families.len();
            let counter = f % 2 == 0;
            let name = if counter {
                format!("bench_http_requests_{f:04}_total")
            } else {
                format!("bench_http_inflight_requests_{f:04}")
            };
            let (kind, help) = if counter {
                ("counter", "Requests served by the synthetic service.")
            } else {
                ("gauge", "Requests in flight in the synthetic service.")
            };
            let header = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
            let n = left.min(PER_FAMILY);
            let series = (0..n)
                .map(|j| {
                    // j picks (path, method) uniquely: 25 paths x 4 methods = 100.
                    format!(
                        "instance_id=\"i-0a1b2c3d4e5f{:05}\",path=\"/api/v1/items/{}\",method=\"{}\",code=\"{}\"}} ",
                        f % 64,
                        j % 25,
                        METHODS[(j / 25) % METHODS.len()],
                        CODES[j % CODES.len()],
                    )
                })
                .collect::<Vec<_>>();
            size += header.len()
                + series
                    .iter()
                    .map(|s| name.len() + s.len() + 28)
                    .sum::<usize>();
            families.push(Family {
                header,
                name,
                counter,
                series,
            });
            left -= n;
        }
        Template { families, size }
    }

    /// The body of scrape number `scrape`: counters grow by a per-series rate,
    /// gauges move around; both change on every scrape. With `target`, every
    /// series gets the label `target="<target>"` first.
    fn render(&self, scrape: u64, target: Option<&str>) -> Vec<u8> {
        let mut out = String::with_capacity(self.size);
        let mut i: u64 = 0;
        for family in &self.families {
            out.push_str(&family.header);
            for labels in &family.series {
                out.push_str(&family.name);
                out.push('{');
                if let Some(t) = target {
                    out.push_str("target=\"");
                    out.push_str(t);
                    out.push_str("\",");
                }
                out.push_str(labels);
                // Writing to a String cannot fail.
                let _ = if family.counter {
                    let base = i.wrapping_mul(7919) % 1_000_000;
                    writeln!(out, "{}", base + scrape * (1 + i % 50))
                } else {
                    let v = (i * 31 + scrape * 17) % 10_000;
                    writeln!(out, "{}.{:02}", v / 100, v % 100)
                };
                i += 1;
            }
        }
        out.into_bytes()
    }
}
