//! The `[agent]` section: where tern keeps its state and serves its own
//! telemetry.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use super::locate::Cx;
use super::raw::RawAgent;
use super::ConfigError;

/// `agent.state_dir` when neither the config nor systemd's
/// `STATE_DIRECTORY` names one: the FHS place for a daemon's state.
const DEFAULT_STATE_DIR: &str = "/var/lib/tern";

/// `agent.listen`: Alloy's port, so that dashboards and firewall rules carry
/// over; loopback, since self metrics are for the box's own scraper.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 12345));

/// `agent.log_level`: lifecycle events and gateway changes, not per batch.
const DEFAULT_LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;

/// The `[agent]` section: where tern keeps state and serves its own telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The directory for the disk queue. Defaults to `/var/lib/tern`, or the
    /// `STATE_DIRECTORY` that systemd sets for `StateDirectory=`.
    pub state_dir: PathBuf,
    /// Address for self metrics (`/metrics`) and health (`/-/healthy`,
    /// `/-/ready`). Defaults to `127.0.0.1:12345`, Alloy's port, so dashboards
    /// and firewall rules carry over.
    pub listen: SocketAddr,
    /// Log level: error, warn, info, debug or trace. Defaults to `info`.
    pub log_level: log::LevelFilter,
    /// Threads that scrape the `[[scrape]]` targets, all jobs together. 0 (the
    /// default) picks the number of cores, at least 2 and at most 4: a
    /// hanging target holds one worker for at most its timeout, and more
    /// workers cost threads (README: "Threads").
    pub scrape_workers: usize,
}

/// The most `agent.scrape_workers`: past it, threads cost more memory than
/// the waiting they hide (each holds a parse window and a batch buffer).
const MAX_SCRAPE_WORKERS: usize = 64;

impl AgentConfig {
    /// The number of scrape workers to start: `scrape_workers`, or when it
    /// is 0 the cores this process may run on, between 2 and 4.
    pub fn scrape_worker_count(&self) -> usize {
        if self.scrape_workers > 0 {
            return self.scrape_workers;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.clamp(2, 4)
    }
}

impl Cx<'_> {
    /// The `[agent]` section.
    pub(super) fn agent(&self, agent: RawAgent) -> Result<AgentConfig, ConfigError> {
        let state_dir = match agent.state_dir {
            Some(dir) if dir.get_ref().is_empty() => {
                return Err(self.err(&dir, "agent.state_dir", "must not be empty"))
            }
            Some(dir) => PathBuf::from(dir.into_inner()),
            None => std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        };
        let listen = match agent.listen {
            Some(s) => s.get_ref().parse().map_err(|_| {
                self.err(
                    &s,
                    "agent.listen",
                    format!(
                        "invalid address {:?}: expected ip:port, like \"127.0.0.1:12345\"",
                        s.get_ref()
                    ),
                )
            })?,
            None => DEFAULT_LISTEN,
        };
        let log_level = match agent.log_level {
            Some(s) => s.get_ref().parse().map_err(|_| {
                self.err(
                    &s,
                    "agent.log_level",
                    format!(
                        "invalid level {:?}: expected error, warn, info, debug or trace",
                        s.get_ref()
                    ),
                )
            })?,
            None => DEFAULT_LOG_LEVEL,
        };

        let scrape_workers = match &agent.scrape_workers {
            None => 0,
            Some(n) if (0..=MAX_SCRAPE_WORKERS as i64).contains(n.get_ref()) => {
                usize::try_from(*n.get_ref()).unwrap_or(0)
            }
            Some(n) => {
                return Err(self.err(
                    n,
                    "agent.scrape_workers",
                    format!("must be between 0 (automatic) and {MAX_SCRAPE_WORKERS}"),
                ))
            }
        };

        Ok(AgentConfig {
            state_dir,
            listen,
            log_level,
            scrape_workers,
        })
    }
}
