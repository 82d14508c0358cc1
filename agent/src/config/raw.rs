//! The raw structs: the TOML file exactly as written, every value with its
//! span, unknown keys refused (`deny_unknown_fields`). Only the section
//! functions of this module's siblings read them; the rest of tern reads
//! [`Config`](super::Config).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) agent: Option<RawAgent>,
    #[serde(default)]
    pub(super) resource: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub(super) scrape: Vec<RawScrape>,
    pub(super) export: Option<RawExport>,
    pub(super) journald: Option<RawJournald>,
    pub(super) receiver: Option<RawReceiver>,
    #[serde(default)]
    pub(super) file: Vec<RawFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) include: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) exclude: Vec<Spanned<String>>,
    pub(super) read_from: Option<Spanned<String>>,
    pub(super) max_line_size: Option<Spanned<RawSize>>,
    pub(super) encoding: Option<Spanned<String>>,
    pub(super) rotate_wait: Option<Spanned<String>>,
    pub(super) multiline: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReceiver {
    pub(super) otlp: Option<RawOtlpReceiver>,
    pub(super) syslog: Option<RawSyslogReceiver>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSyslogReceiver {
    pub(super) udp: Option<Spanned<String>>,
    pub(super) tcp: Option<Spanned<String>>,
    pub(super) unix: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) max_message_size: Option<Spanned<RawSize>>,
    pub(super) max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOtlpReceiver {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) max_request_size: Option<Spanned<RawSize>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) read_timeout: Option<Spanned<String>>,
    pub(super) full_policy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) listen: Option<Spanned<String>>,
    pub(super) log_level: Option<Spanned<String>>,
    pub(super) scrape_workers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScrape {
    pub(super) job: Spanned<String>,
    pub(super) targets: Spanned<Vec<Spanned<String>>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) metrics_path: Option<Spanned<String>>,
    pub(super) scheme: Option<Spanned<String>>,
    pub(super) body_size_limit: Option<Spanned<RawSize>>,
    #[serde(default)]
    pub(super) labels: BTreeMap<Spanned<String>, String>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) params: BTreeMap<String, Vec<String>>,
    pub(super) honor_labels: Option<bool>,
    pub(super) honor_timestamps: Option<bool>,
    pub(super) sample_limit: Option<Spanned<i64>>,
    pub(super) label_limit: Option<Spanned<i64>>,
    pub(super) label_name_length_limit: Option<Spanned<i64>>,
    pub(super) label_value_length_limit: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) relabel_configs: Vec<RawRule>,
    #[serde(default)]
    pub(super) metric_relabel_configs: Vec<RawRule>,
}

/// One `[[scrape.relabel_configs]]` or `[[scrape.metric_relabel_configs]]`
/// rule, with Prometheus's field names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) source_labels: Option<Spanned<Vec<String>>>,
    pub(super) separator: Option<Spanned<String>>,
    pub(super) regex: Option<Spanned<String>>,
    pub(super) modulus: Option<Spanned<i64>>,
    pub(super) target_label: Option<Spanned<String>>,
    pub(super) replacement: Option<Spanned<String>>,
    pub(super) action: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExport {
    #[serde(default)]
    pub(super) endpoints: Vec<Spanned<String>>,
    pub(super) compression: Option<Spanned<String>>,
    pub(super) compression_level: Option<Spanned<i64>>,
    pub(super) timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) headers: BTreeMap<Spanned<String>, Spanned<String>>,
    pub(super) tls: Option<RawTls>,
    pub(super) retry: Option<RawRetry>,
    pub(super) queue: Option<RawQueue>,
    pub(super) debug: Option<bool>,
    pub(super) routing_key: Option<Spanned<String>>,
    pub(super) dns: Option<RawDns>,
    pub(super) failover_after: Option<Spanned<String>>,
    pub(super) max_bandwidth: Option<Spanned<RawSize>>,
    pub(super) max_request_size: Option<Spanned<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) hostname: Spanned<String>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) resolver: Option<Spanned<String>>,
    pub(super) scheme: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJournald {
    #[serde(default)]
    pub(super) units: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) exclude_units: Vec<Spanned<String>>,
    pub(super) min_priority: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) matches: Vec<Spanned<String>>,
    pub(super) directory: Option<String>,
    pub(super) read_from: Option<Spanned<String>>,
    pub(super) journalctl: Option<Spanned<String>>,
    pub(super) max_field_size: Option<Spanned<RawSize>>,
    pub(super) max_entry_size: Option<Spanned<RawSize>>,
    pub(super) hang_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) cert_file: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
    pub(super) server_name: Option<Spanned<String>>,
    pub(super) insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) initial_interval: Option<Spanned<String>>,
    pub(super) max_interval: Option<Spanned<String>>,
    pub(super) multiplier: Option<Spanned<f64>>,
    pub(super) randomization_factor: Option<Spanned<f64>>,
    pub(super) max_elapsed_time: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) max_size: Option<Spanned<RawSize>>,
    pub(super) full_policy: Option<Spanned<String>>,
    pub(super) fsync: Option<bool>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) memory_size: Option<Spanned<RawSize>>,
}

/// A size as written: a string like "256MiB" or "1048576", or a TOML integer
/// of bytes (`max_size = 1048576`), as the README allows.
#[derive(Debug)]
pub(super) enum RawSize {
    Text(String),
    Bytes(i64),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawSize, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"256MiB\" or a number of bytes")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}
