//! The `[[file]]` tables: groups of log files to follow.

use std::time::Duration;

use super::glob::Glob;
use super::journald::ReadFrom;
use super::locate::Cx;
use super::raw::RawFile;
use super::ConfigError;

/// `max_line_size`: longer than any sane log line, small enough that 100
/// files each holding a partial line stay within the memory budget.
const DEFAULT_MAX_LINE_SIZE: u64 = 64 << 10;

/// `rotate_wait`: how long a file renamed or deleted away is still read, for
/// writers that reopen their file only a moment after the rotation.
const DEFAULT_ROTATE_WAIT: Duration = Duration::from_secs(5);

/// One `[[file]]` table: files to follow, each line a log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// Absolute path globs (`*`, `?`, `[a-z]` within a name, `**` for any
    /// directories) of the files to follow. Required.
    pub include: Vec<Glob>,
    /// Globs of paths not to follow, though included. Defaults to none.
    pub exclude: Vec<Glob>,
    /// Where a file found at tern's first start begins: `tail` (only new
    /// lines) or `head`. Files that appear later are read from their start.
    /// Defaults to tail.
    pub read_from: ReadFrom,
    /// Longest line kept; a longer one is cut to it and counted. Defaults to
    /// 64 KiB.
    pub max_line_size: usize,
    /// How long a file renamed or deleted away is still read after its end.
    /// Defaults to 5 s.
    pub rotate_wait: Duration,
    /// A pattern that starts a record: lines that do not match it are joined
    /// to the record before them (stack traces). Defaults to none: a line a
    /// record.
    pub multiline: Option<Multiline>,
}

/// A multiline start pattern: a regular expression (Rust regex syntax, as
/// regex-lite takes it), unanchored unless it says `^`.
#[derive(Debug, Clone)]
pub struct Multiline {
    pattern: String,
    regex: regex_lite::Regex,
}

impl Multiline {
    /// Whether `line` starts a record.
    pub fn starts(&self, line: &[u8]) -> bool {
        match std::str::from_utf8(line) {
            Ok(s) => self.regex.is_match(s),
            Err(_) => self.regex.is_match(&String::from_utf8_lossy(line)),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl PartialEq for Multiline {
    fn eq(&self, other: &Multiline) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Multiline {}

impl Cx<'_> {
    pub(super) fn files(&self, raw: Vec<RawFile>) -> Result<Vec<FileConfig>, ConfigError> {
        raw.into_iter()
            .enumerate()
            .map(|(i, f)| self.file(i, f))
            .collect()
    }

    fn file(&self, i: usize, raw: RawFile) -> Result<FileConfig, ConfigError> {
        let key = |k: &str| format!("file[{i}].{k}");
        let globs = |v: Vec<toml::Spanned<String>>, name: &str| -> Result<Vec<Glob>, ConfigError> {
            v.into_iter()
                .enumerate()
                .map(|(j, g)| {
                    Glob::new(g.get_ref())
                        .map_err(|reason| self.err(&g, &format!("file[{i}].{name}[{j}]"), reason))
                })
                .collect()
        };
        if raw.include.get_ref().is_empty() {
            return Err(self.err(
                &raw.include,
                &key("include"),
                "list at least one path or glob, like [\"/var/log/messages\"]",
            ));
        }
        let include = globs(raw.include.into_inner(), "include")?;
        let exclude = globs(raw.exclude, "exclude")?;
        let read_from = match &raw.read_from {
            None => ReadFrom::Tail,
            Some(r) if r.get_ref() == "tail" => ReadFrom::Tail,
            Some(r) if r.get_ref() == "head" => ReadFrom::Head,
            Some(r) => {
                return Err(self.err(
                    r,
                    &key("read_from"),
                    format!("expected \"tail\" or \"head\", not {:?}", r.get_ref()),
                ))
            }
        };
        let max_line_size = self.size(
            raw.max_line_size.as_ref(),
            &key("max_line_size"),
            DEFAULT_MAX_LINE_SIZE,
        )?;
        if !(16..=16 << 20).contains(&max_line_size) {
            return Err(self.err_opt(
                raw.max_line_size.as_ref(),
                &key("max_line_size"),
                "must be between 16 bytes and 16MiB",
            ));
        }
        if let Some(e) = &raw.encoding {
            if !e.get_ref().eq_ignore_ascii_case("utf-8")
                && !e.get_ref().eq_ignore_ascii_case("utf8")
            {
                return Err(self.err(
                    e,
                    &key("encoding"),
                    format!(
                        "only \"utf-8\" is supported (invalid bytes are kept as bytes), not {:?}",
                        e.get_ref()
                    ),
                ));
            }
        }
        let rotate_wait = self.duration(
            raw.rotate_wait.as_ref(),
            &key("rotate_wait"),
            DEFAULT_ROTATE_WAIT,
        )?;
        let multiline = match &raw.multiline {
            None => None,
            Some(m) => {
                // Bounded, so that a pattern cannot take much memory.
                let regex = regex_lite::RegexBuilder::new(m.get_ref())
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        let reason = e.to_string().replace('\n', " ");
                        self.err(
                            m,
                            &key("multiline"),
                            format!("invalid regular expression: {reason}"),
                        )
                    })?;
                Some(Multiline {
                    pattern: m.get_ref().clone(),
                    regex,
                })
            }
        };
        Ok(FileConfig {
            include,
            multiline,
            exclude,
            read_from,
            max_line_size: usize::try_from(max_line_size).unwrap_or(usize::MAX),
            rotate_wait,
        })
    }
}
