//! HTTP, shared by the parts that speak it: the [`client`] (ureq with
//! rustls) that scrapes targets, posts to gateways and asks a running agent
//! for its queue, and the small [`server`] that serves the self telemetry
//! endpoints and the OTLP receiver.
//!
//! It knows nothing of the config, the queue or OTLP: callers hand it URLs,
//! headers, bodies and limits, and get statuses, bodies and [`HttpError`]s.

pub(crate) mod client;
pub(crate) mod server;

pub(crate) use client::{host_port, is_connect_failure, is_https, Client, HttpError, TlsConfig};
