//! System tests: the built `tern` binary against real components (a real
//! node_exporter, a test gateway that decodes OTLP with prost) over loopback.
//! One module per area; helpers in `harness/`.

// Tests may unwrap: a panic is a failed test with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs,
    unreachable_pub
)]

mod harness;

mod bad_input;
mod balance;
mod cli;
mod crash;
mod cross;
mod disk;
mod faults;
mod files;
mod fleet;
mod hostile_gateway;
mod idle_clients;
mod journald;
mod lifecycle;
mod limits;
mod notify;
mod outage;
mod receiver;
mod relabel;
mod scrape;
mod syslog;
mod uplink;
mod vm;
