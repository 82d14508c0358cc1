//! tern: a store-and-forward telemetry agent for small Linux devices.
//!
//! The modules follow the data flow (see DESIGN.md). Each depends only on
//! the ones on the lines above its own; the modules of one line never import
//! each other:
//!
//! ```text
//! lifecycle, otlp,       stop signal, rate limit; OTLP encoding;
//!   relabel              Prometheus relabeling rules
//! queue                  the durable queue
//! telemetry              self metrics, log, systemd notify
//! http                   the HTTP client and server
//! config                 the TOML file, parsed and validated
//! route                  routing table, hash, split by key
//! sources, export        side by side: into the queue, out of it
//! agent                  the wiring `tern run` calls
//! ```
//!
//! A unit test below reads every `crate::` path of every module and holds
//! this order. The `tern` binary only wires these together.

//! # Public surface
//!
//! The API is [`Config`] (and its section types under [`config`]), and the
//! three commands of the binary: [`run`], [`summary`] (for `tern check`) and
//! [`print_queue`]. The modules marked `#[doc(hidden)]` are public only so
//! that the benches, the fuzz targets and the system tests reach the parts
//! they measure; they make no promise of stability. The agent's wiring, the
//! exporter and the HTTP client and server are private.

mod agent;
pub mod config;
mod export;
mod http;
#[doc(hidden)]
pub mod lifecycle;
#[doc(hidden)]
pub mod otlp;
#[doc(hidden)]
pub mod queue;
#[doc(hidden)]
pub mod relabel;
#[doc(hidden)]
pub mod route;
#[doc(hidden)]
pub mod sources;
#[doc(hidden)]
pub mod telemetry;

pub use agent::{print_queue, run, summary, Error};
pub use config::{Config, ConfigError};

#[cfg(test)]
mod layers;
#[cfg(test)]
mod tempdir;
