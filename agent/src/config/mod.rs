//! Configuration: the TOML file users write, parsed in two stages.
//!
//! `Raw*` structs mirror the file exactly and reject unknown keys
//! (`deny_unknown_fields`). `Config::from_raw` then validates and converts them
//! ("15s" to a [`Duration`](std::time::Duration), "256MiB" to bytes) into the types the runtime uses.
//! Every error names the file, line, column and key, as `tern check` prints it:
//!
//! ```text
//! /etc/tern/tern.toml:7:12: scrape[0].interval: invalid duration "15x": expected a number and a unit (ms, s, m, h), like "15s"
//! ```
//!
//! Everything else in tern reads [`Config`]; nothing reads the raw structs.
//!
//! One file per section (`agent`, `scrape`, `export`, `journald`,
//! `receiver`), each with its runtime types, its defaults (named constants,
//! each with its reason) and the function that validates it; the raw serde
//! structs are in `raw`, shared values (durations, sizes) in `values`, and
//! the location of errors in `locate`.

mod agent;
mod convert;
mod export;
mod files;
pub mod glob;
mod journald;
mod locate;
mod raw;
mod receiver;
mod scrape;
#[cfg(test)]
mod tests;
mod values;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use agent::AgentConfig;
pub use convert::convert;
pub use export::{
    Compression, DnsConfig, ExportConfig, FullPolicy, QueueConfig, QueueMode, RetryConfig, Routing,
    RoutingKey,
};
pub use files::{FileConfig, Multiline};
pub use journald::{JournaldConfig, ReadFrom};
pub use receiver::{OtlpReceiverConfig, ReceiverFullPolicy, SyslogProtocol, SyslogReceiverConfig};
pub use scrape::{ScrapeConfig, ScrapeLimits, ScrapeTarget};
pub use values::{format_duration, parse_duration, parse_size};

/// The `[export.tls]` and `[scrape.tls]` sections (the HTTP client's settings).
pub use crate::http::client::TlsConfig;

use locate::{line_col, toml_error, Cx};
use raw::RawConfig;

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config was read from, for messages.
    pub path: PathBuf,
    /// The `[agent]` section.
    pub agent: AgentConfig,
    /// The `[resource]` attributes added to every resource tern sends.
    pub resource: BTreeMap<String, String>,
    /// One entry per `[[scrape]]` job.
    pub scrape: Vec<ScrapeConfig>,
    /// The `[export]` section.
    pub export: ExportConfig,
    /// The `[journald]` section; `None` when absent (no journal reading).
    pub journald: Option<JournaldConfig>,
    /// The `[receiver.otlp]` section; `None` when absent (no OTLP receiver).
    pub otlp_receiver: Option<OtlpReceiverConfig>,
    /// The `[receiver.syslog]` section; `None` when absent (no syslog receiver).
    pub syslog_receiver: Option<SyslogReceiverConfig>,
    /// The `[[file]]` tables: files to follow. Empty: none.
    pub files: Vec<FileConfig>,
}

/// A configuration error, located in its file.
#[derive(Debug)]
pub struct ConfigError {
    /// The file the error is in.
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// The dotted key, for example `scrape[0].interval`, when known.
    pub key: String,
    /// What is wrong, lowercase.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The default path of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/tern/tern.toml";

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let error = |position, reason| ConfigError {
            path: path.to_owned(),
            position,
            key: String::new(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| error(None, format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let bytes = e.as_bytes();
            let valid = e.utf8_error().valid_up_to();
            let before = bytes
                .get(..valid)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or("");
            let byte = bytes.get(valid).copied().unwrap_or(0);
            error(
                Some(line_col(before, before.len())),
                format!("invalid UTF-8 (byte 0x{byte:02x}): a config file must be UTF-8 text"),
            )
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` is only used in
    /// messages. The TLS files the configuration names are read too, so that
    /// a missing or non-PEM file is a configuration error.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        Config::from_raw(path, text, raw)
    }

    /// Validates the raw structs and converts them to runtime types, one
    /// section at a time, in the order of the file's usual layout (the first
    /// error found is the one reported).
    fn from_raw(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
        let cx = Cx::new(path, text);
        let agent = cx.agent(raw.agent.unwrap_or_default())?;
        let scrape = cx.scrape(raw.scrape)?;
        let export = cx.export(raw.export.unwrap_or_default())?;
        let journald = raw.journald.map(|j| cx.journald(j)).transpose()?;
        let (otlp, syslog) = raw.receiver.map_or((None, None), |r| (r.otlp, r.syslog));
        let otlp_receiver = otlp
            .map(|r| cx.otlp_receiver(r, &export.queue))
            .transpose()?;
        let syslog_receiver = syslog.map(|r| cx.syslog_receiver(r)).transpose()?;
        let files = cx.files(raw.file)?;
        Ok(Config {
            path: path.to_owned(),
            agent,
            resource: cx.attributes(raw.resource, "resource")?,
            scrape,
            export,
            journald,
            otlp_receiver,
            syslog_receiver,
            files,
        })
    }
}
