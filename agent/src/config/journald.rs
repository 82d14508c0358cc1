//! The `[journald]` section: which entries of the systemd journal to follow.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::locate::Cx;
use super::raw::RawJournald;
use super::ConfigError;

/// `min_priority`: 6 (info), as in DESIGN.md: debug messages stay on the box.
const DEFAULT_MIN_PRIORITY: u8 = 6;

/// `max_field_size`: twice journald's default `LineMax`, so real log lines
/// pass whole while a stray core dump does not.
const DEFAULT_MAX_FIELD_SIZE: u64 = 128 << 10;

/// `max_entry_size`: a bound on the source's memory for one entry.
const DEFAULT_MAX_ENTRY_SIZE: u64 = 512 << 10;

/// `hang_timeout`: long enough for a quiet box's journal, short enough that a
/// hung journalctl costs a minute of delay, not hours.
const DEFAULT_HANG_TIMEOUT: Duration = Duration::from_secs(60);

/// The `[journald]` section: follow the systemd journal through `journalctl`
/// and forward its entries as OTLP logs.
#[derive(Debug, Clone, PartialEq)]
pub struct JournaldConfig {
    /// Units to read (journalctl `--unit`, globs allowed; a name without a
    /// suffix gets `.service`). Empty: every unit. Defaults to empty.
    pub units: Vec<String>,
    /// Units whose entries are dropped, matched against `_SYSTEMD_UNIT` with the
    /// same rules as `units`. Defaults to empty.
    pub exclude_units: Vec<String>,
    /// The least important syslog priority read, 0 (emerg) to 7 (debug); below
    /// 7 it is passed to journalctl as `--priority`, which also skips entries
    /// without a PRIORITY field. Defaults to 6 (info), as in DESIGN.md.
    pub min_priority: u8,
    /// journalctl matches, `FIELD=value` or `+` (or), passed as journalctl takes
    /// them. Defaults to empty.
    pub matches: Vec<String>,
    /// Read the journal files in this directory (journalctl `--directory`)
    /// instead of the system journal. Defaults to none.
    pub directory: Option<PathBuf>,
    /// Where the first start (no saved cursor) begins. Defaults to tail.
    pub read_from: ReadFrom,
    /// The journalctl program, a path or a name looked up in `PATH`. Defaults to
    /// `journalctl`.
    pub journalctl: PathBuf,
    /// Largest field value kept, in bytes; a longer value is cut to it and
    /// counted. Defaults to 128 KiB: twice journald's default `LineMax`, so
    /// real log lines pass whole while a stray core dump does not.
    pub max_field_size: u64,
    /// Largest entry kept (all fields), in bytes; a larger entry is skipped and
    /// counted. Defaults to 512 KiB, a bound on the source's memory.
    pub max_entry_size: u64,
    /// How long journalctl may stay silent before tern checks that the journal
    /// has nothing newer; if it has, journalctl is hung and is restarted.
    /// Defaults to 60 s.
    pub hang_timeout: Duration,
}

/// Where the journald source starts when it has no saved cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// After the newest entry: only what is logged from now on.
    Tail,
    /// At the oldest entry in the journal.
    Head,
    /// At the first entry of the current boot.
    Boot,
}

impl Cx<'_> {
    pub(super) fn journald(&self, raw: RawJournald) -> Result<JournaldConfig, ConfigError> {
        let units = self.units(raw.units, "journald.units")?;
        let exclude_units = self.units(raw.exclude_units, "journald.exclude_units")?;
        let min_priority = match &raw.min_priority {
            None => DEFAULT_MIN_PRIORITY,
            Some(p) => parse_priority(p.get_ref()).ok_or_else(|| {
                self.err(
                    p,
                    "journald.min_priority",
                    format!(
                        "expected emerg, alert, crit, err, warning, notice, info, debug or 0-7, not {:?}",
                        p.get_ref()
                    ),
                )
            })?,
        };
        let mut matches = Vec::new();
        for (i, m) in raw.matches.into_iter().enumerate() {
            if !valid_match(m.get_ref()) {
                return Err(self.err(
                    &m,
                    &format!("journald.matches[{i}]"),
                    format!(
                        "expected FIELD=value with FIELD in A-Z, 0-9 and _, like \"_TRANSPORT=kernel\", or \"+\", not {:?}",
                        m.get_ref()
                    ),
                ));
            }
            matches.push(m.into_inner());
        }
        let read_from = match &raw.read_from {
            None => ReadFrom::Tail,
            Some(r) if r.get_ref() == "tail" => ReadFrom::Tail,
            Some(r) if r.get_ref() == "head" => ReadFrom::Head,
            Some(r) if r.get_ref() == "boot" => ReadFrom::Boot,
            Some(r) => {
                return Err(self.err(
                    r,
                    "journald.read_from",
                    format!(
                        "expected \"tail\", \"head\" or \"boot\", not {:?}",
                        r.get_ref()
                    ),
                ))
            }
        };
        let journalctl = match &raw.journalctl {
            None => PathBuf::from("journalctl"),
            Some(j) if j.get_ref().is_empty() => {
                return Err(self.err(j, "journald.journalctl", "must not be empty"))
            }
            Some(j) => PathBuf::from(j.get_ref()),
        };
        let max_field_size = self.size(
            raw.max_field_size.as_ref(),
            "journald.max_field_size",
            DEFAULT_MAX_FIELD_SIZE,
        )?;
        let max_entry_size = self.size(
            raw.max_entry_size.as_ref(),
            "journald.max_entry_size",
            DEFAULT_MAX_ENTRY_SIZE,
        )?;
        if !(1 << 10..=1 << 30).contains(&max_field_size) {
            return Err(self.err_opt(
                raw.max_field_size.as_ref(),
                "journald.max_field_size",
                "must be between 1KiB and 1GiB",
            ));
        }
        if max_entry_size < max_field_size || max_entry_size > 1 << 30 {
            return Err(self.err_opt(
                raw.max_entry_size.as_ref(),
                "journald.max_entry_size",
                format!(
                    "must be at least max_field_size ({max_field_size} bytes) and at most 1GiB"
                ),
            ));
        }
        let hang_timeout = self.duration(
            raw.hang_timeout.as_ref(),
            "journald.hang_timeout",
            DEFAULT_HANG_TIMEOUT,
        )?;
        if hang_timeout < Duration::from_secs(1) {
            return Err(self.err_opt(
                raw.hang_timeout.as_ref(),
                "journald.hang_timeout",
                "must be at least 1s",
            ));
        }
        Ok(JournaldConfig {
            units,
            exclude_units,
            min_priority,
            matches,
            // An empty path means unset, so the README can show every key.
            directory: raw.directory.filter(|d| !d.is_empty()).map(PathBuf::from),
            read_from,
            journalctl,
            max_field_size,
            max_entry_size,
            hang_timeout,
        })
    }

    /// Unit names or globs: not empty, no whitespace or control characters
    /// (journalctl would refuse them, and tern would restart it in a loop).
    fn units(&self, raw: Vec<Spanned<String>>, key: &str) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let name = u.get_ref();
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.err(
                    &u,
                    &format!("{key}[{i}]"),
                    format!("expected a unit name like \"sshd.service\", not {name:?}"),
                ));
            }
            out.push(u.into_inner());
        }
        Ok(out)
    }
}

/// A syslog priority as journalctl `--priority` takes it: a name or 0-7.
fn parse_priority(s: &str) -> Option<u8> {
    const NAMES: [&str; 8] = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    match s.parse::<u8>() {
        Ok(n) if n <= 7 => Some(n),
        Ok(_) => None,
        Err(_) => NAMES
            .iter()
            .position(|n| *n == s)
            .and_then(|i| u8::try_from(i).ok()),
    }
}

/// A journalctl match: `FIELD=value` with a journal field name (A-Z, 0-9, _,
/// not starting with a digit, at most 64 bytes), or `+` between alternatives.
fn valid_match(m: &str) -> bool {
    if m == "+" {
        return true;
    }
    let Some((field, _)) = m.split_once('=') else {
        return false;
    };
    !field.is_empty()
        && field.len() <= 64
        && !field.starts_with(|c: char| c.is_ascii_digit())
        && field
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}
