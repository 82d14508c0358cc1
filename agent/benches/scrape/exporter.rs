//! The synthetic exporter: `series` series in families of 100, half counters and
//! half gauges, with label sets like a web service's
//! (`{instance_id="...",path="/api/v1/...",method="GET",code="200"}`), in the
//! Prometheus text format. Every scrape sees new values. It counts scrapes per
//! client (by `User-Agent` product), so the bench can check each agent's count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::http::{Response, Server};

/// Series per metric family.
const PER_FAMILY: usize = 100;
/// HTTP methods in the label sets.
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
/// Status codes in the label sets.
const CODES: [&str; 5] = ["200", "201", "304", "404", "500"];

/// Scrapes one client made and the body bytes it got.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Served {
    /// Successful scrapes of `/metrics`.
    pub(crate) scrapes: u64,
    /// Body bytes served.
    pub(crate) bytes: u64,
}

/// The synthetic exporter on `127.0.0.1:0`.
#[derive(Debug)]
pub(crate) struct Synthetic {
    server: Server,
    /// The number of samples in every scrape.
    pub(crate) series: usize,
    served: Arc<Mutex<BTreeMap<String, Served>>>,
}

impl Synthetic {
    /// Starts an exporter of `series` series.
    pub(crate) fn start(series: usize) -> Synthetic {
        let template = Arc::new(Template::new(series));
        let served: Arc<Mutex<BTreeMap<String, Served>>> = Arc::default();
        let scrapes = AtomicU64::new(0);
        let handler_served = served.clone();
        let server = Server::start("bench-exporter", move |req| {
            if req.method != "GET" || req.path != "/metrics" {
                return Response::empty(404, "text/plain");
            }
            let body = template.render(scrapes.fetch_add(1, Ordering::SeqCst));
            {
                let mut served = lock(&handler_served);
                let client = served.entry(client_name(&req.user_agent)).or_default();
                client.scrapes += 1;
                client.bytes += body.len() as u64;
            }
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
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
        lock(&self.served).get(client).copied().unwrap_or_default()
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

/// One metric family: its `# HELP`/`# TYPE` lines and each series' name and
/// labels followed by a space.
#[derive(Debug)]
struct Family {
    header: String,
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
                        "{name}{{instance_id=\"i-0a1b2c3d4e5f{:05}\",path=\"/api/v1/items/{}\",method=\"{}\",code=\"{}\"}} ",
                        f % 64,
                        j % 25,
                        METHODS[(j / 25) % METHODS.len()],
                        CODES[j % CODES.len()],
                    )
                })
                .collect::<Vec<_>>();
            size += header.len() + series.iter().map(|s| s.len() + 12).sum::<usize>();
            families.push(Family {
                header,
                counter,
                series,
            });
            left -= n;
        }
        Template { families, size }
    }

    /// The body of scrape number `scrape`: counters grow by a per-series rate,
    /// gauges move around; both change on every scrape.
    fn render(&self, scrape: u64) -> Vec<u8> {
        let mut out = String::with_capacity(self.size);
        let mut i: u64 = 0;
        for family in &self.families {
            out.push_str(&family.header);
            for prefix in &family.series {
                out.push_str(prefix);
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
