//! The config unit tests: every section, its defaults, and the exact text
//! of every error (`tern check` prints them; tests/cli.rs checks some too).

use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("t.toml"), text)
}

#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```toml\n").expect("README has a toml example") + 8;
    let len = readme[start..].find("```").expect("closed");
    let c = parse(&readme[start..start + len]).unwrap();
    assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/tern"));
    assert_eq!(c.scrape[0].targets[0].url, "http://127.0.0.1:9100/metrics");
    assert_eq!(c.scrape[0].body_size_limit, 16 << 20);
    assert_eq!(
        c.scrape[0].labels.get("site").map(String::as_str),
        Some("plant-7")
    );
    assert_eq!(
        c.resource.get("deployment.environment").map(String::as_str),
        Some("prod")
    );
    assert_eq!(
        c.export.headers.get("X-Scope-OrgID").map(String::as_str),
        Some("edge")
    );
    assert_eq!(c.export.tls, TlsConfig::default());
    assert_eq!(c.export.queue.max_size, 256 << 20);
}

#[test]
fn the_readme_journald_example_parses_to_the_defaults() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```toml\n[journald]")
        .expect("README has a [journald] example")
        + 8;
    let len = readme[start..].find("```").expect("closed");
    let example = parse(&readme[start..start + len])
        .unwrap()
        .journald
        .unwrap();
    assert_eq!(example, parse("[journald]\n").unwrap().journald.unwrap());
}

/// The README's block that starts with `header`, parsed.
fn readme_block(header: &str) -> Config {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find(&format!("```toml\n{header}"))
        .unwrap_or_else(|| panic!("README has a {header} example"))
        + 8;
    let len = readme[start..].find("```").expect("closed");
    parse(&readme[start..start + len]).unwrap()
}

#[test]
fn the_readme_file_and_syslog_examples_show_the_defaults() {
    let files = readme_block("[[file]]").files;
    let defaults = parse("[[file]]\ninclude = [\"/var/log/messages\"]\n")
        .unwrap()
        .files;
    assert_eq!(files, defaults);
    let syslog = readme_block("[receiver.syslog]").syslog_receiver.unwrap();
    let defaults = parse("[receiver.syslog]\nudp = \"127.0.0.1:5514\"\ntcp = \"127.0.0.1:5514\"\n")
        .unwrap()
        .syslog_receiver
        .unwrap();
    assert_eq!(syslog, defaults);
}

#[test]
fn defaults_from_an_empty_file() {
    let c = parse("[agent]\nstate_dir = \"/tmp/x\"\n").unwrap();
    assert_eq!(c.agent.listen.to_string(), "127.0.0.1:12345");
    assert_eq!(c.export.retry.initial_interval, Duration::from_secs(5));
    assert_eq!(c.export.retry.max_interval, Duration::from_secs(30));
    assert_eq!(c.export.retry.multiplier, 1.5);
    assert_eq!(c.export.retry.randomization_factor, 0.5);
    assert_eq!(c.export.retry.max_elapsed_time, Duration::ZERO);
    assert_eq!(c.export.queue.full_policy, FullPolicy::DropOldest);
    assert!(c.export.queue.fsync);
    assert_eq!(c.export.queue.mode, QueueMode::Disk);
    assert_eq!(c.export.queue.memory_size, 4 << 20);
    assert_eq!(c.export.compression, Compression::Gzip);
}

#[test]
fn queue_mode_and_memory_size() {
    let c = parse("[export.queue]\nmode = \"memory_first\"\nmemory_size = \"1MiB\"\n").unwrap();
    assert_eq!(c.export.queue.mode, QueueMode::MemoryFirst);
    assert_eq!(c.export.queue.memory_size, 1 << 20);
    assert_eq!(
        error("[export.queue]\nmode = \"memory\"\n"),
        "t.toml:2:8: export.queue.mode: expected \"disk\" or \"memory_first\", not \"memory\""
    );
    assert_eq!(
        error("[export.queue]\nmax_size = \"2MiB\"\nmemory_size = \"3MiB\"\n"),
        "t.toml:3:15: export.queue.memory_size: must be at most max_size (2097152 bytes)"
    );
}

#[test]
fn scrape_targets_become_urls() {
    let c = parse(
        "[[scrape]]\njob = \"node\"\ntargets = [\"127.0.0.1:9100\", \"https://h:1/x\"]\ninterval = \"5s\"\n",
    )
    .unwrap();
    let s = &c.scrape[0];
    assert_eq!(s.targets[0].url, "http://127.0.0.1:9100/metrics");
    assert_eq!(s.targets[0].instance, "127.0.0.1:9100");
    assert_eq!(s.targets[1].url, "https://h:1/x");
    assert_eq!(s.targets[1].instance, "h:1");
    assert_eq!(s.interval, Duration::from_secs(5));
    assert_eq!(s.timeout, Duration::from_secs(5));
}

#[test]
fn unknown_key_names_line_column_and_key() {
    let e = parse("[agent]\nstate_dir = \"/x\"\nlisten_addr = \"1\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("t.toml:3:1: agent.listen_addr: unknown field `listen_addr`"),
        "{msg}"
    );
}

#[test]
fn bad_duration_names_line_column_and_key() {
    let e =
        parse("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\ninterval = \"15x\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "t.toml:4:12: scrape[0].interval: invalid duration \"15x\": expected a number and a unit (ms, s, m, h), like \"15s\""
    );
}

#[test]
fn timeout_above_interval_is_an_error() {
    let e = parse(
        "[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\ninterval = \"5s\"\ntimeout = \"6s\"\n",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("scrape[0].timeout: must be above 0 and at most the interval (5s)"),
        "{e}"
    );
}

#[test]
fn bad_target_is_located() {
    let e = parse("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\", \"nope\"]\n").unwrap_err();
    assert_eq!(e.position, Some((3, 19)));
    assert_eq!(e.key, "scrape[0].targets[1]");
}

#[test]
fn journald_is_off_unless_present() {
    let c = parse("[agent]\nstate_dir = \"/tmp/x\"\n").unwrap();
    assert_eq!(c.journald, None);
}

#[test]
fn journald_defaults() {
    let c = parse("[journald]\n").unwrap();
    let j = c.journald.unwrap();
    assert!(j.units.is_empty() && j.exclude_units.is_empty() && j.matches.is_empty());
    assert_eq!(j.min_priority, 6);
    assert_eq!(j.directory, None);
    assert_eq!(j.read_from, ReadFrom::Tail);
    assert_eq!(j.journalctl, PathBuf::from("journalctl"));
    assert_eq!(j.max_field_size, 128 << 10);
    assert_eq!(j.max_entry_size, 512 << 10);
    assert_eq!(j.hang_timeout, Duration::from_secs(60));
}

#[test]
fn journald_every_key() {
    let c = parse(
        r#"[journald]
units = ["sshd", "tern.service"]
exclude_units = ["noisy-*.service"]
min_priority = "warning"
matches = ["_TRANSPORT=kernel", "+", "SYSLOG_IDENTIFIER=app"]
directory = "/var/log/journal/remote"
read_from = "boot"
journalctl = "/usr/bin/journalctl"
max_field_size = "4KiB"
max_entry_size = "64KiB"
hang_timeout = "5s"
"#,
    )
    .unwrap();
    let j = c.journald.unwrap();
    assert_eq!(j.units, ["sshd", "tern.service"]);
    assert_eq!(j.exclude_units, ["noisy-*.service"]);
    assert_eq!(j.min_priority, 4);
    assert_eq!(j.matches.len(), 3);
    assert_eq!(j.directory, Some(PathBuf::from("/var/log/journal/remote")));
    assert_eq!(j.read_from, ReadFrom::Boot);
    assert_eq!(j.max_field_size, 4096);
    assert_eq!(j.max_entry_size, 65536);
    assert_eq!(j.hang_timeout, Duration::from_secs(5));
    let c = parse("[journald]\nmin_priority = \"3\"\ndirectory = \"\"\n").unwrap();
    let j = c.journald.unwrap();
    assert_eq!(j.min_priority, 3);
    assert_eq!(j.directory, None);
}

#[test]
fn journald_errors_are_located() {
    let e = parse("[journald]\nmin_priority = \"loud\"\n").unwrap_err();
    assert_eq!(e.position, Some((2, 16)));
    assert_eq!(e.key, "journald.min_priority");
    let e = parse("[journald]\nmatches = [\"A=1\", \"lower=x\"]\n").unwrap_err();
    assert_eq!(e.key, "journald.matches[1]");
    assert!(e.reason.contains("FIELD=value"), "{e}");
    let e = parse("[journald]\nread_from = \"start\"\n").unwrap_err();
    assert_eq!(e.key, "journald.read_from");
    let e = parse("[journald]\nunits = [\"a b\"]\n").unwrap_err();
    assert_eq!(e.key, "journald.units[0]");
    let e =
        parse("[journald]\nmax_field_size = \"1MiB\"\nmax_entry_size = \"64KiB\"\n").unwrap_err();
    assert_eq!(e.key, "journald.max_entry_size");
    let e = parse("[journald]\nhang_timeout = \"10ms\"\n").unwrap_err();
    assert_eq!(e.key, "journald.hang_timeout");
    let e = parse("[journald]\nfollow = true\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `follow`"), "{e}");
}

#[test]
fn otlp_receiver_is_off_unless_present_and_has_defaults() {
    assert_eq!(parse("").unwrap().otlp_receiver, None);
    let r = parse("[receiver.otlp]\n").unwrap().otlp_receiver.unwrap();
    assert_eq!(r.listen.to_string(), "127.0.0.1:4318");
    assert_eq!(r.max_request_size, 4 << 20);
    assert_eq!(r.max_connections, 256);
    assert_eq!(r.read_timeout, Duration::from_secs(30));
    assert_eq!(r.full_policy, ReceiverFullPolicy::DropOldest);
    let c = parse("[receiver.otlp]\n[export.queue]\nfull_policy = \"drop_newest\"\n").unwrap();
    assert_eq!(
        c.otlp_receiver.unwrap().full_policy,
        ReceiverFullPolicy::PushBack
    );
    let r = parse(
        "[receiver.otlp]\nlisten = \"0.0.0.0:4319\"\nmax_request_size = \"1MiB\"\nmax_connections = 4\nread_timeout = \"5s\"\nfull_policy = \"push_back\"\n",
    )
    .unwrap()
    .otlp_receiver
    .unwrap();
    assert_eq!(r.listen.to_string(), "0.0.0.0:4319");
    assert_eq!(r.max_request_size, 1 << 20);
    assert_eq!(r.max_connections, 4);
    assert_eq!(r.read_timeout, Duration::from_secs(5));
    assert_eq!(r.full_policy, ReceiverFullPolicy::PushBack);
}

#[test]
fn otlp_receiver_errors_are_located() {
    let e = parse("[receiver.otlp]\nlisten = \"localhost\"\n").unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.position),
        ("receiver.otlp.listen", Some((2, 10)))
    );
    let e = parse("[receiver.otlp]\nmax_request_size = \"2GiB\"\n").unwrap_err();
    assert_eq!(e.key, "receiver.otlp.max_request_size");
    let e = parse(
        "[receiver.otlp]\nmax_request_size = \"8MiB\"\n[export.queue]\nmax_size = \"4MiB\"\n",
    )
    .unwrap_err();
    assert!(e.reason.contains("export.queue.max_size"), "{e}");
    let e = parse("[receiver.otlp]\nmax_connections = 0\n").unwrap_err();
    assert_eq!(e.key, "receiver.otlp.max_connections");
    let e = parse("[receiver.otlp]\nfull_policy = \"drop_newest\"\n").unwrap_err();
    assert_eq!(e.key, "receiver.otlp.full_policy");
    let e = parse("[receiver.otlp]\nread_timeout = \"1ms\"\n").unwrap_err();
    assert_eq!(e.key, "receiver.otlp.read_timeout");
    let e = parse("[receiver.otlp]\nendpoint = \"x\"\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `endpoint`"), "{e}");
    let e = parse("[receiver.grpc]\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `grpc`"), "{e}");
}

#[test]
fn syslog_receiver_needs_a_listener_and_has_defaults() {
    assert_eq!(parse("").unwrap().syslog_receiver, None);
    let e = parse("[receiver.syslog]\n").unwrap_err();
    assert_eq!(e.key, "receiver.syslog");
    assert!(e.reason.contains("udp, tcp and unix"), "{e}");
    let e = parse("[receiver.syslog]\nudp = \"\"\n").unwrap_err();
    assert_eq!(e.key, "receiver.syslog");
    let r = parse("[receiver.syslog]\nudp = \"127.0.0.1:5514\"\n")
        .unwrap()
        .syslog_receiver
        .unwrap();
    assert_eq!(r.udp, Some("127.0.0.1:5514".parse().unwrap()));
    assert_eq!((r.tcp, r.unix), (None, None));
    assert_eq!(r.protocol, SyslogProtocol::Auto);
    assert_eq!((r.max_message_size, r.max_connections), (8192, 64));
    let r = parse("[receiver.syslog]\ntcp = \"[::1]:601\"\nunix = \"/dev/log\"\nprotocol = \"rfc3164\"\nmax_message_size = \"64KiB\"\nmax_connections = 2\n")
        .unwrap()
        .syslog_receiver
        .unwrap();
    assert_eq!(r.tcp, Some("[::1]:601".parse().unwrap()));
    assert_eq!(r.unix.as_deref(), Some(std::path::Path::new("/dev/log")));
    assert_eq!(r.protocol, SyslogProtocol::Rfc3164);
    assert_eq!((r.max_message_size, r.max_connections), (65536, 2));
}

#[test]
fn file_tables_have_defaults_and_located_errors() {
    assert!(parse("").unwrap().files.is_empty());
    let c = parse("[[file]]\ninclude = [\"/var/log/messages\"]\n\n[[file]]\ninclude = [\"/srv/**/*.log\"]\nexclude = [\"/srv/tmp/*\"]\nread_from = \"head\"\nmax_line_size = \"1KiB\"\nencoding = \"UTF-8\"\nrotate_wait = \"2s\"\n").unwrap();
    assert_eq!(c.files.len(), 2);
    let f = &c.files[0];
    assert_eq!(f.include[0].as_str(), "/var/log/messages");
    assert_eq!((f.read_from, f.max_line_size), (ReadFrom::Tail, 64 << 10));
    assert_eq!(f.rotate_wait, Duration::from_secs(5));
    let f = &c.files[1];
    assert!(f.include[0].matches(std::path::Path::new("/srv/a/b.log")));
    assert!(f.exclude[0].matches(std::path::Path::new("/srv/tmp/x")));
    assert_eq!((f.read_from, f.max_line_size), (ReadFrom::Head, 1024));
    for (text, key, at) in [
        ("[[file]]\ninclude = []\n", "file[0].include", (2, 11)),
        (
            "[[file]]\ninclude = [\"var/log\"]\n",
            "file[0].include[0]",
            (2, 12),
        ),
        (
            "[[file]]\ninclude = [\"/a\"]\n[[file]]\ninclude = [\"/x/[ab\"]\n",
            "file[1].include[0]",
            (4, 12),
        ),
        (
            "[[file]]\ninclude = [\"/a\"]\nexclude = [\"b\"]\n",
            "file[0].exclude[0]",
            (3, 12),
        ),
        (
            "[[file]]\ninclude = [\"/a\"]\nread_from = \"boot\"\n",
            "file[0].read_from",
            (3, 13),
        ),
        (
            "[[file]]\ninclude = [\"/a\"]\nmax_line_size = 1\n",
            "file[0].max_line_size",
            (3, 17),
        ),
        (
            "[[file]]\ninclude = [\"/a\"]\nencoding = \"latin1\"\n",
            "file[0].encoding",
            (3, 12),
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!((e.key.as_str(), e.position), (key, Some(at)), "{text}: {e}");
    }
    let e = parse("[[file]]\n").unwrap_err();
    assert!(e.to_string().contains("include"), "{e}");
    let c = parse("[[file]]\ninclude = [\"/a\"]\nmultiline = '^\\S'\n").unwrap();
    let m = c.files[0].multiline.as_ref().unwrap();
    assert!(m.starts(b"Exception in thread") && !m.starts(b"    at x") && m.starts(b"\xff x"));
}

#[test]
fn the_busybox_example_parses() {
    let c = parse(include_str!("../../../examples/busybox.toml")).unwrap();
    let r = c.syslog_receiver.unwrap();
    assert_eq!(r.udp, Some("127.0.0.1:5514".parse().unwrap()));
    assert_eq!(r.tcp, Some("127.0.0.1:5514".parse().unwrap()));
    assert_eq!(c.files[0].include[0].as_str(), "/var/log/messages");
}

#[test]
fn syslog_receiver_errors_are_located() {
    let e = parse("[receiver.syslog]\nudp = \"514\"\n").unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.position),
        ("receiver.syslog.udp", Some((2, 7)))
    );
    let e = parse("[receiver.syslog]\ntcp = \"x:1\"\n").unwrap_err();
    assert_eq!(e.key, "receiver.syslog.tcp");
    let e = parse("[receiver.syslog]\nunix = \"dev/log\"\n").unwrap_err();
    assert_eq!(e.key, "receiver.syslog.unix");
    let e = parse("[receiver.syslog]\nudp = \"127.0.0.1:1\"\nprotocol = \"bsd\"\n").unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.position),
        ("receiver.syslog.protocol", Some((3, 12)))
    );
    let e =
        parse("[receiver.syslog]\nudp = \"127.0.0.1:1\"\nmax_message_size = 100\n").unwrap_err();
    assert_eq!(e.key, "receiver.syslog.max_message_size");
    let e = parse("[receiver.syslog]\nudp = \"127.0.0.1:1\"\nmax_connections = 0\n").unwrap_err();
    assert_eq!(e.key, "receiver.syslog.max_connections");
    let e = parse("[receiver.syslog]\nudp = \"127.0.0.1:1\"\nport = 514\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `port`"), "{e}");
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert!(parse_duration("").is_err());
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("1e400s").is_err());
    assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
    assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
    assert!(parse_size("99999999999999999999GiB").is_err());
    assert!(parse_size("1.5GiB").is_err());
}

/// A directory of files for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "tern-config-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The message of the error `text` gets.
fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn zero_durations_that_cannot_work_are_refused() {
    assert_eq!(
        error("[export]\ntimeout = \"0s\"\n"),
        "t.toml:2:11: export.timeout: must be more than 0: every request would time out"
    );
    assert_eq!(
        error("[export.retry]\ninitial_interval = \"0s\"\n"),
        "t.toml:2:20: export.retry.initial_interval: must be more than 0: a failed request would be sent again at once, without end"
    );
    assert_eq!(
        error("[export.retry]\nmax_interval = \"0\"\n"),
        "t.toml:2:16: export.retry.max_interval: need initial_interval (5s) <= max_interval (0ms)"
    );
    assert_eq!(
        error("[export.retry]\ninitial_interval = \"1m\"\n"),
        "t.toml:2:20: export.retry.initial_interval: need initial_interval (60s) <= max_interval (30s)"
    );
    assert_eq!(
        error("[export.retry]\nmultiplier = 0.5\n"),
        "t.toml:2:14: export.retry.multiplier: must be between 1 and 100"
    );
    assert_eq!(
        error("[export.retry]\nrandomization_factor = 1.5\n"),
        "t.toml:2:24: export.retry.randomization_factor: must be between 0 and 1"
    );
    assert_eq!(
        error("[export]\ndns = { hostname = \"gw\", timeout = \"0s\" }\n"),
        "t.toml:2:36: export.dns.timeout: must be more than 0: every query would time out"
    );
    // max_elapsed_time 0 means never give up: still fine.
    let c = parse("[export.retry]\nmax_elapsed_time = \"0s\"\n").unwrap();
    assert_eq!(c.export.retry.max_elapsed_time, Duration::ZERO);
}

#[test]
fn headers_that_http_cannot_carry_are_refused() {
    assert_eq!(
        error("[export]\nheaders = { \"X-A\" = \"a\\r\\nb\" }\n"),
        "t.toml:2:21: export.headers.X-A: the value holds the control character U+000D: header values allow no CR, LF or other control characters"
    );
    let e = error("[export]\nheaders = { \"X-A\" = \"a\\u0000\" }\n");
    assert!(e.contains("U+0000"), "{e}");
    assert_eq!(
        error("[export]\nheaders = { \"X Org\" = \"v\" }\n"),
        "t.toml:2:13: export.headers.\"X Org\": not a header name: use letters, digits and !#$%&'*+-.^_`|~ (an RFC 9110 token)"
    );
    let e = error("[export.headers]\n\"\" = \"v\"\n");
    assert!(
        e.starts_with("t.toml:2:1: export.headers.\"\": not a header name"),
        "{e}"
    );
    let e = error("[export.headers]\n\"X-Ä\" = \"v\"\n");
    assert!(e.contains("not a header name"), "{e}");
    assert_eq!(
        error("[export.headers]\ncontent-type = \"application/json\"\n"),
        "t.toml:2:1: export.headers.content-type: tern sets this header itself; remove it"
    );
    // A secret in a bad value is never echoed.
    let e = error("[export]\nheaders = { Authorization = \"Bearer s3cret\\n\" }\n");
    assert!(!e.contains("s3cret"), "{e}");
    // Tabs, spaces and non-ASCII text are allowed in values.
    let c =
        parse("[export]\nheaders = { \"X-Scope-OrgID\" = \"a\\tb c ü\", \"x_y.z~\" = \"1\" }\n")
            .unwrap();
    assert_eq!(c.export.headers.len(), 2);
}

#[test]
fn settings_that_cannot_go_together_are_located() {
    assert_eq!(
        error("[[scrape]]\njob = \"n\"\ntargets = []\n"),
        "t.toml:3:11: scrape[0].targets: must list at least one target, like [\"127.0.0.1:9100\"]"
    );
    assert_eq!(
        error("[export]\nendpoints = [\"http://a:1\"]\ndns = { hostname = \"gw\" }\n"),
        "t.toml:3:20: export.dns: set either export.endpoints or export.dns, not both"
    );
    assert_eq!(
        error("[export.dns]\nhostname = \"gw\"\n[export]\nendpoints = [\"http://a:1\"]\n"),
        "t.toml:4:14: export.endpoints: set either export.endpoints or export.dns, not both"
    );
    assert_eq!(
        error("[export.tls]\ncert_file = \"/c.pem\"\n"),
        "t.toml:2:13: export.tls.cert_file: needs key_file too: a client certificate goes with its private key"
    );
    assert_eq!(
        error("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\ntls = { key_file = \"/k.pem\" }\n"),
        "t.toml:4:20: scrape[0].tls.key_file: needs cert_file too: a private key goes with its client certificate"
    );
    assert_eq!(
        error("[export.tls]\nserver_name = \"gw\"\n"),
        "t.toml:2:15: export.tls.server_name: not supported yet: put the certificate's name in the URL"
    );
}

#[test]
fn attributes_need_a_name() {
    assert_eq!(
        error("[resource]\n\"\" = \"x\"\n"),
        "t.toml:2:1: resource.\"\": an attribute needs a name, not \"\""
    );
    assert_eq!(
        error("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\nlabels = { \"\" = \"x\" }\n"),
        "t.toml:4:12: scrape[0].labels.\"\": an attribute needs a name, not \"\""
    );
}

#[test]
fn tls_files_are_read_at_check_time() {
    let dir = TempDir::new("tls");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.write("cert.pem", certified.cert.pem());
    let key = dir.write("key.pem", certified.key_pair.serialize_pem());
    let both = dir.write(
        "both.pem",
        format!(
            "{}{}",
            certified.cert.pem(),
            certified.key_pair.serialize_pem()
        ),
    );
    let text = dir.write("text.pem", "not a certificate\n");
    let missing = dir.0.join("missing.pem");
    let tls = |body: String| parse(&format!("[export.tls]\n{body}"));

    let c = tls(format!(
        "ca_file = {cert:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n"
    ))
    .unwrap();
    assert_eq!(c.export.tls.ca_file.as_ref(), Some(&cert));
    tls(format!("cert_file = {both:?}\nkey_file = {both:?}\n")).unwrap();

    let e = tls(format!("ca_file = {missing:?}\n")).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.position),
        ("export.tls.ca_file", Some((2, 11)))
    );
    assert!(
        e.reason.starts_with(&format!("{}: ", missing.display()))
            && e.reason.contains("No such file"),
        "{e}"
    );
    let e = tls(format!("ca_file = {text:?}\n")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "t.toml:2:11: export.tls.ca_file: {}: no PEM certificate found",
            text.display()
        )
    );
    let e = tls(format!("cert_file = {text:?}\nkey_file = {key:?}\n")).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.position),
        ("export.tls.cert_file", Some((2, 13)))
    );
    assert!(e.reason.contains("no PEM certificate found"), "{e}");
    let e = tls(format!("cert_file = {cert:?}\nkey_file = {cert:?}\n")).unwrap_err();
    assert_eq!(e.key, "export.tls.cert_file", "{e}");
    let e = tls(format!("cert_file = {cert:?}\nkey_file = {text:?}\n")).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.position),
        ("export.tls.key_file", Some((3, 12)))
    );
    let e = tls(format!("cert_file = {cert:?}\nkey_file = {missing:?}\n")).unwrap_err();
    assert_eq!(e.key, "export.tls.key_file", "{e}");
    let e = parse(&format!(
        "[[scrape]]\njob = \"n\"\ntargets = [\"https://a:1/m\"]\ntls = {{ ca_file = {missing:?} }}\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "scrape[0].tls.ca_file", "{e}");
}

#[test]
fn a_file_that_is_not_utf8_names_the_first_bad_byte() {
    let dir = TempDir::new("utf8");
    let path = dir.write("t.toml", b"[agent]\nstate_dir = \"/tmp/\xc3\xa9\xff\"\n");
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.position, Some((2, 20)));
    assert_eq!(
        e.reason,
        "invalid UTF-8 (byte 0xff): a config file must be UTF-8 text"
    );
}

#[test]
fn parser_errors_keep_their_whole_reason_and_name_no_value() {
    assert_eq!(
        error("[agent]\nstate_dir = \"/x\"\n[agent]\nlisten = \"127.0.0.1:1\"\n"),
        "t.toml:3:1: agent: invalid table header: duplicate key `agent` in document root"
    );
    let e = error("[export.retry]\n[export.retry]\n");
    assert!(
        e.starts_with("t.toml:2:1: export.retry: invalid table header"),
        "{e}"
    );
    // A type error names the key, not the value where the key belongs.
    assert_eq!(
        error("[agent]\nstate_dir = 12345\n"),
        "t.toml:2:13: agent.state_dir: invalid type: integer `12345`, expected a string"
    );
    assert_eq!(
        error("[[scrape]]\njob = \"a\"\ntargets = [\"a:1\"]\n[[scrape]]\njob = \"b\"\ntargets = [\"b:1\", 2]\n"),
        "t.toml:6:19: scrape[1].targets[1]: invalid type: integer `2`, expected a string"
    );
    let e = error("[export.retry]\nmultiplier = \"x\"\n");
    assert!(
        e.starts_with("t.toml:2:14: export.retry.multiplier: invalid type"),
        "{e}"
    );
    let e = error("export.retry.multiplier = \"x\"\n");
    assert!(
        e.starts_with("t.toml:1:27: export.retry.multiplier: invalid type"),
        "{e}"
    );
    let e = error("[resource]\n\"a.b\" = 1\n");
    assert!(
        e.starts_with("t.toml:2:9: resource.\"a.b\": invalid type"),
        "{e}"
    );
    let e = error("[[scrape]]\ntargets = [\"a:1\"]\n");
    assert!(
        e.starts_with("t.toml:1:1: scrape[0]: missing field `job`"),
        "{e}"
    );
    let e = error("[export]\ndns = { port = 1 }\n");
    assert!(e.contains(": export.dns: missing field `hostname`"), "{e}");
    // Syntax errors: the position and the parser's reason, no key.
    let e = error("[agent]\nstate_dir = \n");
    assert!(e.starts_with("t.toml:2:13: invalid string: "), "{e}");
    assert_eq!(
        error("[agent]\nstate_dir = \"x\" y\n"),
        "t.toml:2:17: expected newline, `#`"
    );
    let e = error("[agent]\nstate_dir = \"a\"\nstate_dir = \"b\"\n");
    assert!(
        e.starts_with("t.toml:3:1: duplicate key `state_dir`"),
        "{e}"
    );
}

#[test]
fn sizes_may_be_a_number_of_bytes() {
    let c = parse("[export.queue]\nmax_size = 1048576\n").unwrap();
    assert_eq!(c.export.queue.max_size, 1 << 20);
    let c = parse("[export.queue]\nmax_size = \"2097152\"\n").unwrap();
    assert_eq!(c.export.queue.max_size, 2 << 20);
    let c = parse(
        "[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\nbody_size_limit = 4096\n[journald]\nmax_field_size = 2048\nmax_entry_size = 8192\n[receiver.otlp]\nmax_request_size = 65536\n",
    )
    .unwrap();
    assert_eq!(c.scrape[0].body_size_limit, 4096);
    let j = c.journald.unwrap();
    assert_eq!((j.max_field_size, j.max_entry_size), (2048, 8192));
    assert_eq!(c.otlp_receiver.unwrap().max_request_size, 65536);
    assert_eq!(
        error("[export.queue]\nmax_size = -1\n"),
        "t.toml:2:12: export.queue.max_size: invalid size -1: must not be negative"
    );
    let e = error("[export.queue]\nmax_size = 1.5\n");
    assert!(
        e.starts_with("t.toml:2:12: export.queue.max_size: invalid type: floating point `1.5`, expected a size like \"256MiB\" or a number of bytes"),
        "{e}"
    );
}

#[test]
fn rules_between_keys_point_at_the_section_when_a_key_is_unset() {
    // max_entry_size keeps its default (512KiB), below max_field_size.
    let e = parse("\n[journald]\nmax_field_size = \"1MiB\"\n").unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.position),
        ("journald.max_entry_size", Some((2, 1)))
    );
}

#[test]
fn max_bandwidth_is_a_rate_or_zero() {
    let rate = |v: &str| {
        parse(&format!("[export]\nmax_bandwidth = {v}\n")).map(|c| c.export.max_bandwidth)
    };
    assert_eq!(parse("").unwrap().export.max_bandwidth, 0);
    assert_eq!(rate("\"32KiB/s\"").unwrap(), 32 * 1024);
    assert_eq!(rate("\"1MB/s\"").unwrap(), 1_000_000);
    assert_eq!(rate("\"0\"").unwrap(), 0);
    assert_eq!(rate("0").unwrap(), 0);
    assert_eq!(rate("4096").unwrap(), 4096);
    assert_eq!(
        rate("\"32KiB\"").unwrap_err().to_string(),
        "t.toml:2:17: export.max_bandwidth: invalid rate \"32KiB\": expected a size per second, like \"32KiB/s\", or 0 for no limit"
    );
    assert!(rate("\"32Kb/s\"")
        .unwrap_err()
        .to_string()
        .starts_with("t.toml:2:17: export.max_bandwidth: invalid size \"32Kb\""));
    assert!(rate("-1")
        .unwrap_err()
        .to_string()
        .contains("must not be negative"));
}

#[test]
fn max_request_size_defaults_to_1mib() {
    assert_eq!(parse("").unwrap().export.max_request_size, 1 << 20);
    let c = parse("[export]\nmax_request_size = \"256KiB\"\n").unwrap();
    assert_eq!(c.export.max_request_size, 256 << 10);
    let e = parse("[export]\nmax_request_size = \"1 lot\"\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("t.toml:2:20: export.max_request_size: invalid size"),
        "{e}"
    );
}

#[test]
fn zstd_takes_a_level_gzip_does_not() {
    let c = |text: &str| parse(text).map(|c| c.export.compression);
    assert_eq!(
        c("[export]\ncompression = \"zstd\"\n").unwrap(),
        Compression::Zstd(1)
    );
    assert_eq!(
        c("[export]\ncompression = \"zstd\"\ncompression_level = 3\n").unwrap(),
        Compression::Zstd(3)
    );
    assert_eq!(
        c("[export]\ncompression = \"zstd\"\ncompression_level = 22\n")
            .unwrap_err()
            .to_string(),
        "t.toml:3:21: export.compression_level: expected a zstd level from 1 to 19, not 22"
    );
    assert!(c("[export]\ncompression_level = 3\n")
        .unwrap_err()
        .to_string()
        .starts_with("t.toml:2:21: export.compression_level: only zstd takes a level"));
    assert!(c("[export]\ncompression = \"brotli\"\n")
        .unwrap_err()
        .to_string()
        .contains("expected \"gzip\", \"zstd\" or \"none\""));
}

#[test]
fn relabel_rules_and_limits_parse_with_prometheus_defaults() {
    let c = parse(
        r#"[[scrape]]
job = "node"
targets = ["127.0.0.1:9100"]
sample_limit = 5000
label_limit = 30
honor_labels = true
honor_timestamps = false

[[scrape.metric_relabel_configs]]
source_labels = ["__name__"]
regex = "go_.*"
action = "drop"

[[scrape.metric_relabel_configs]]
regex = "cpu"
action = "LabelDrop"
"#,
    )
    .unwrap();
    let s = &c.scrape[0];
    assert_eq!(s.metric_relabel_configs.len(), 2);
    assert_eq!(
        s.metric_relabel_configs[1].action(),
        crate::relabel::Action::LabelDrop
    );
    assert_eq!(s.limits.sample_limit, 5000);
    assert_eq!(s.limits.label_limit, 30);
    assert_eq!(s.limits.label_value_length_limit, 0);
    assert!(s.honor_labels && !s.honor_timestamps);
    let d = &parse("[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\n")
        .unwrap()
        .scrape[0];
    assert!(!d.honor_labels && d.honor_timestamps && !d.limits.any());
    assert!(d.metric_relabel_configs.is_empty());
}

#[test]
fn relabel_errors_name_the_rule_field_line_and_column() {
    let job = "[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\n";
    assert_eq!(
        error(&format!(
            "{job}[[scrape.metric_relabel_configs]]\nsource_labels = [\"x\"]\nregex = \"a(b\"\naction = \"drop\"\n"
        )),
        "t.toml:6:9: scrape[0].metric_relabel_configs[0].regex: invalid regular expression: found open group without closing ')'"
    );
    assert_eq!(
        error(&format!("{job}[[scrape.relabel_configs]]\naction = \"rename\"\n")),
        "t.toml:5:10: scrape[0].relabel_configs[0].action: unknown relabel action \"rename\", expected one of replace, keep, drop, keepequal, dropequal, hashmod, labelmap, labeldrop, labelkeep, lowercase, uppercase"
    );
    // A field that is missing: the rule's table is named.
    let e = parse(&format!(
        "{job}[[scrape.metric_relabel_configs]]\nsource_labels = [\"a\"]\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "scrape[0].metric_relabel_configs[0].target_label");
    assert_eq!(e.position.map(|p| p.0), Some(4));
    assert!(
        e.reason
            .contains("relabel configuration for replace action requires 'target_label' value"),
        "{e}"
    );
    assert!(error(&format!(
        "{job}[[scrape.metric_relabel_configs]]\naction = \"hashmod\"\ntarget_label = \"t\"\n"
    ))
    .contains("requires non-zero modulus"));
    assert!(error(&format!("{job}sample_limit = -1\n"))
        .contains("scrape[0].sample_limit: must be 0 (no limit) or a positive number"));
    assert!(error(&format!(
        "{job}[[scrape.metric_relabel_configs]]\naction = \"drop\"\nsource = [\"a\"]\n"
    ))
    .contains("unknown field `source`"));
}

#[test]
fn target_relabeling_runs_when_the_config_loads() {
    let c = parse(
        r#"[[scrape]]
job = "snmp"
targets = ["10.0.0.1:161", "10.0.0.2:161", "10.0.0.3:161"]
labels = { site = "b" }
params = { module = ["if_mib"] }

[[scrape.relabel_configs]]
source_labels = ["__address__"]
regex = "10\\.0\\.0\\.3:.*"
action = "drop"

[[scrape.relabel_configs]]
source_labels = ["__address__"]
target_label = "__param_target"

[[scrape.relabel_configs]]
source_labels = ["__param_target"]
target_label = "instance"

[[scrape.relabel_configs]]
target_label = "__address__"
replacement = "127.0.0.1:9116"

[[scrape.relabel_configs]]
target_label = "__metrics_path__"
replacement = "/snmp"
"#,
    )
    .unwrap();
    let s = &c.scrape[0];
    assert_eq!(s.dropped_targets, 1);
    assert_eq!(s.targets.len(), 2);
    let t = &s.targets[0];
    assert_eq!(
        t.url,
        "http://127.0.0.1:9116/snmp?module=if_mib&target=10.0.0.1%3A161"
    );
    assert_eq!(t.instance, "10.0.0.1:161");
    assert_eq!(t.job, "snmp");
    assert_eq!(t.labels.get("site").map(String::as_str), Some("b"));
    assert_eq!(t.labels.len(), 1, "{:?}", t.labels);

    // An address without a port gets the scheme's, as in Prometheus 2.
    let c = parse(
        "[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\nscheme = \"https\"\n[[scrape.relabel_configs]]\ntarget_label = \"__address__\"\nreplacement = \"example.org\"\n[[scrape.relabel_configs]]\ntarget_label = \"job\"\nreplacement = \"renamed\"\n",
    )
    .unwrap();
    assert_eq!(
        c.scrape[0].targets[0].url,
        "https://example.org:443/metrics"
    );
    assert_eq!(c.scrape[0].targets[0].instance, "example.org:443");
    assert_eq!(c.scrape[0].targets[0].job, "renamed");

    // A query written in the target is read decoded, as `__param_`
    // labels, and encoded once again (Go's escaping: a space is `+`).
    let c = parse(
        r#"[[scrape]]
job = "probe"
targets = ["http://127.0.0.1:9115/probe?target=a%20b%2Fc&module=http+2xx"]
params = { extra = ["x y"] }

[[scrape.relabel_configs]]
source_labels = ["__param_target"]
target_label = "instance"
"#,
    )
    .unwrap();
    let t = &c.scrape[0].targets[0];
    assert_eq!(
        t.url,
        "http://127.0.0.1:9115/probe?extra=x+y&module=http+2xx&target=a+b%2Fc"
    );
    assert_eq!(t.instance, "a b/c");
    let e = parse(
        "[[scrape]]\njob = \"p\"\ntargets = [\"http://h:1/p?target=%zz\"]\nparams = { a = [\"1\"] }\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "scrape[0].targets[0]");
    assert!(
        e.reason
            .contains("\"target=%zz\" is not valid percent-encoded UTF-8"),
        "{e}"
    );

    // Rules that leave a target no address are an error at that target.
    let e = parse(
        "[[scrape]]\njob = \"n\"\ntargets = [\"a:1\"]\n[[scrape.relabel_configs]]\ntarget_label = \"__address__\"\nreplacement = \"\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "scrape[0].targets[0]");
    assert!(e.reason.contains("left no __address__"), "{e}");
}
