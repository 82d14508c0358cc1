//! Values shared by every section: durations ("15s"), sizes ("256MiB"),
//! bounded numbers and resource attributes, parsed with located errors.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::locate::{dotted, Cx};
use super::raw::RawSize;
use super::ConfigError;

impl Cx<'_> {
    /// Resource attributes (`[resource]`, a job's `labels`): a key must not
    /// be empty, since OTLP attributes need a name.
    pub(super) fn attributes(
        &self,
        raw: BTreeMap<Spanned<String>, String>,
        key: &str,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, value) in raw {
            if name.get_ref().is_empty() {
                return Err(self.err(
                    &name,
                    &dotted(key, ""),
                    "an attribute needs a name, not \"\"",
                ));
            }
            out.insert(name.into_inner(), value);
        }
        Ok(out)
    }

    pub(super) fn duration(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref()).map_err(|r| self.err(s, key, r)),
        }
    }

    pub(super) fn size(
        &self,
        v: Option<&Spanned<RawSize>>,
        key: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match v.map(|s| (s, s.get_ref())) {
            None => Ok(default),
            Some((s, RawSize::Text(t))) => parse_size(t).map_err(|r| self.err(s, key, r)),
            Some((s, RawSize::Bytes(n))) => u64::try_from(*n)
                .map_err(|_| self.err(s, key, format!("invalid size {n}: must not be negative"))),
        }
    }

    pub(super) fn float(
        &self,
        v: Option<&Spanned<f64>>,
        key: &str,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<f64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if range.contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(self.err(
                s,
                key,
                format!("must be between {} and {}", range.start(), range.end()),
            )),
        }
    }
}

/// Parses durations such as "15s", "500ms", "5m", "1h30m" or "0".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h), like \"15s\"")
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
        rest = next;
    }
    Ok(total)
}

/// Formats a duration the way the config writes it ("15s", "500ms").
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.is_zero() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Parses sizes such as "256MiB", "16MB", "512KiB" or "1048576" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size {s:?}: expected a number and a unit (B, KiB, MiB, GiB, KB, MB, GB), like \"256MiB\"")
    };
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}
