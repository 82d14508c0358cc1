//! The `[[scrape]]` source: scrape Prometheus exporters and turn each scrape into
//! OTLP metrics.

pub mod convert;
mod outcomes;
pub mod parse;
mod relabel;
pub mod schedule;
pub mod scrape;
pub mod stale;
