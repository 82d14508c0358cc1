//! tern: a store-and-forward telemetry agent for small Linux devices.
//!
//! The modules follow the data flow (see DESIGN.md). Each depends only on
//! the ones on the lines above its own; the modules of one line never import
//! each other:
//!
//! ```text
//! lifecycle, otlp        stop signal, rate limit; OTLP encoding
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

pub mod agent;
pub mod config;
pub mod export;
pub mod http;
pub mod lifecycle;
pub mod otlp;
pub mod queue;
pub mod route;
pub mod sources;
pub mod telemetry;

#[cfg(test)]
mod layers;
