//! tern: a store-and-forward telemetry agent for small Linux devices.
//!
//! The modules follow the data flow (see DESIGN.md), each depending only on the
//! ones to its right:
//!
//! ```text
//! config -> sources (prometheus, ...) -> otlp -> queue -> export -> telemetry
//! ```
//!
//! The `tern` binary only wires these together.

pub mod agent;
pub mod config;
pub mod export;
pub mod otlp;
pub mod queue;
pub mod sources;
pub mod telemetry;
