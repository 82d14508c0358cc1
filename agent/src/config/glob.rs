//! Path globs, as `[[file]]` takes them: `*` (any run of bytes but `/`), `?`
//! (one byte), `[abc]`, `[a-z]`, `[!a-z]` within a name, and `**` as a whole
//! name for any number of directories. Matching is iterative or bounded by
//! the pattern's names, so no path can make it recurse deeply or take long.

use std::path::Path;

/// Deepest `**` descent, in directories.
pub const MAX_DEPTH: usize = 16;

/// A parsed absolute path glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    names: Vec<Name>,
}

/// One name of a glob's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// A name without wildcards.
    Literal(String),
    /// A name with `*`, `?` or `[...]`.
    Pattern(String),
    /// `**`: any number of directories, none included.
    AnyDirs,
}

impl Glob {
    /// Parses `text`, an absolute path glob.
    ///
    /// # Errors
    ///
    /// A reason, for a glob that is not absolute or has an unclosed `[`.
    pub fn new(text: &str) -> Result<Glob, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "must be an absolute path or glob, like \"/var/log/*.log\", not {text:?}"
            ));
        };
        let mut names = Vec::new();
        for name in rest.split('/').filter(|n| !n.is_empty() && *n != ".") {
            if name == ".." {
                return Err(format!("must not contain \"..\": {text:?}"));
            }
            names.push(if name == "**" {
                Name::AnyDirs
            } else if name.contains(['*', '?', '[']) {
                check_brackets(name).map_err(|r| format!("{r} in {text:?}"))?;
                Name::Pattern(name.to_string())
            } else {
                Name::Literal(name.to_string())
            });
        }
        if matches!(names.last(), None | Some(Name::AnyDirs)) {
            return Err(format!("must end in a file name or pattern: {text:?}"));
        }
        Ok(Glob {
            text: text.to_string(),
            names,
        })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its names, root first.
    pub fn names(&self) -> &[Name] {
        &self.names
    }

    /// Whether `path` (absolute) matches.
    pub fn matches(&self, path: &Path) -> bool {
        let parts: Vec<&[u8]> = path
            .to_str()
            .map(|p| {
                p.split('/')
                    .filter(|n| !n.is_empty())
                    .map(str::as_bytes)
                    .collect()
            })
            .unwrap_or_default();
        path.is_absolute() && match_names(&self.names, &parts, 0)
    }
}

fn match_names(names: &[Name], parts: &[&[u8]], depth: usize) -> bool {
    match names.split_first() {
        None => parts.is_empty(),
        Some((Name::AnyDirs, rest)) => {
            // Try every number of directories, within MAX_DEPTH.
            (0..=parts
                .len()
                .saturating_sub(1)
                .min(MAX_DEPTH.saturating_sub(depth)))
                .any(|skip| match_names(rest, parts.get(skip..).unwrap_or_default(), depth + skip))
        }
        Some((name, rest)) => match parts.split_first() {
            Some((part, more)) => match_name(name, part) && match_names(rest, more, depth),
            None => false,
        },
    }
}

/// Whether one path name matches one glob name (not `**`).
pub fn match_name(name: &Name, part: &[u8]) -> bool {
    match name {
        Name::Literal(l) => l.as_bytes() == part,
        Name::Pattern(p) => wildcard(p.as_bytes(), part),
        Name::AnyDirs => true,
    }
}

/// `*`, `?` and `[...]` matching, iterative (one backtrack point).
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let c = text.get(t).copied().unwrap_or(0);
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                t += 1;
                continue;
            }
            Some(b'[') => {
                if let Some((hit, len)) = class(pattern.get(p..).unwrap_or_default(), c) {
                    if hit {
                        p += len;
                        t += 1;
                        continue;
                    }
                }
            }
            Some(&b) if b == c => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == b'*')
}

/// A `[...]` class at the start of `p`: whether `c` is in it, and its length.
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let b = *p.get(i)?;
        if b == b']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&e| e != b']') {
            let e = *p.get(i + 2)?;
            hit |= (b..=e).contains(&c);
            i += 3;
        } else {
            hit |= b == c;
            i += 1;
        }
    }
}

fn check_brackets(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'[' {
            match class(b.get(i..).unwrap_or_default(), 0) {
                Some((_, len)) => i += len,
                None => return Err("an unclosed \"[\"".into()),
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, path: &str) -> bool {
        Glob::new(glob).unwrap().matches(Path::new(path))
    }

    #[test]
    fn names_and_wildcards() {
        assert!(m("/var/log/messages", "/var/log/messages"));
        assert!(!m("/var/log/messages", "/var/log/messages.1"));
        assert!(m("/var/log/*.log", "/var/log/app.log"));
        assert!(!m("/var/log/*.log", "/var/log/sub/app.log"));
        assert!(!m("/var/log/*.log", "/var/log/app.log.1"));
        assert!(m("/var/log/app?.log", "/var/log/app1.log"));
        assert!(m("/var/log/app[0-9].log", "/var/log/app7.log"));
        assert!(!m("/var/log/app[!0-9].log", "/var/log/app7.log"));
        assert!(m("/var/log/app[!0-9].log", "/var/log/appx.log"));
        assert!(m("/var/log/[]]x", "/var/log/]x"));
        assert!(m("/var//log/./*", "/var/log/x"));
    }

    #[test]
    fn any_directories() {
        assert!(m("/srv/**/*.log", "/srv/a.log"));
        assert!(m("/srv/**/*.log", "/srv/a/b/c/d.log"));
        assert!(!m("/srv/**/*.log", "/srv/a/b/c/d.txt"));
        let deep = format!("/srv/{}x.log", "d/".repeat(40));
        assert!(!m("/srv/**/x.log", &deep), "deeper than MAX_DEPTH");
    }

    #[test]
    fn bad_globs_are_refused() {
        assert!(Glob::new("var/log/*").is_err());
        assert!(Glob::new("/var/log/[ab").unwrap_err().contains("unclosed"));
        assert!(Glob::new("/var/../etc/x").is_err());
        assert!(Glob::new("/var/log/**").is_err());
        assert!(Glob::new("/").is_err());
    }

    /// Many stars against a long name: one backtrack point, so this takes
    /// pattern times name steps, not an exponential number.
    #[test]
    fn hostile_patterns_end() {
        let g = Glob::new(&format!("/{}b", "*a".repeat(50))).unwrap();
        let name = format!("/{}", "a".repeat(5000));
        assert!(!g.matches(Path::new(&name)));
        assert!(g.matches(Path::new(&format!("{name}b"))));
    }
}
