//! The `regex` of a rule, anchored at both ends as Prometheus anchors it,
//! and the `$1` / `${name}` templates of `replacement` and `target_label`,
//! expanded as Go's `Regexp.Expand` does.
//!
//! Most rules in the wild use a few shapes: the default `(.*)`, a name, a
//! list of names, or names by prefix (`go_.*|process_.*`). Those are matched
//! with string comparisons; anything else goes to regex-lite. Both paths
//! give the same answers (a unit test and the `relabel` fuzz target compare
//! them).

use regex_lite::{CaptureLocations, Regex, RegexBuilder};

/// Capture spans of one match: group `i`'s byte range, or None.
pub type Spans = Vec<Option<(usize, usize)>>;

/// An anchored pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// As written in the config.
    source: String,
    /// The whole pattern compiled, anchored: the reference and the fallback.
    regex: Regex,
    fast: Option<Fast>,
}

/// Shapes matched without the regex engine. `.` never matches `\n`, as in
/// RE2, so the shapes ending in `.*` check for it.
#[derive(Debug, Clone)]
enum Fast {
    /// `(.*)` (capturing) or `.*`.
    Any { capture: bool },
    /// Alternatives each a literal or a literal then `.*`, maybe in one
    /// capturing group: `a|b_.*`, `(a|b)`.
    OneOf {
        exact: Vec<String>,
        prefixes: Vec<String>,
        capture: bool,
    },
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Pattern {
    /// Compiles `source`, anchored. The error is regex-lite's, on one line.
    pub fn new(source: &str) -> Result<Pattern, String> {
        let regex = RegexBuilder::new(&format!("^(?:{source})$"))
            // Bounded, so that a pattern cannot take much memory.
            .size_limit(1 << 20)
            .build()
            .map_err(|e| e.to_string().replace('\n', " "))?;
        Ok(Pattern {
            fast: Fast::of(source),
            source: source.to_string(),
            regex,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The number of capture groups, the whole match (group 0) included.
    pub fn groups(&self) -> usize {
        self.regex.captures_len()
    }

    /// The index of the group named `name`.
    fn group_named(&self, name: &str) -> Option<usize> {
        self.regex
            .capture_names()
            .position(|n| n.is_some_and(|n| n == name))
    }

    /// Whether the whole of `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        match &self.fast {
            Some(Fast::Any { .. }) => !s.contains('\n'),
            Some(Fast::OneOf {
                exact, prefixes, ..
            }) => one_of(exact, prefixes, s),
            None => self.regex.is_match(s),
        }
    }

    /// Matches the whole of `s`, filling `spans` with each group's range;
    /// false (and `spans` unspecified) when it does not match.
    pub fn captures(
        &self,
        s: &str,
        spans: &mut Spans,
        locs: &mut Option<CaptureLocations>,
    ) -> bool {
        spans.clear();
        match &self.fast {
            Some(Fast::Any { capture }) | Some(Fast::OneOf { capture, .. }) => {
                if !self.is_match(s) {
                    return false;
                }
                spans.push(Some((0, s.len())));
                if *capture {
                    spans.push(Some((0, s.len())));
                }
                true
            }
            None => self.regex_captures(s, spans, locs),
        }
    }

    /// [`Pattern::captures`] by the regex engine alone: the reference the
    /// fast shapes are checked against.
    #[doc(hidden)]
    pub fn regex_captures(
        &self,
        s: &str,
        spans: &mut Spans,
        locs: &mut Option<CaptureLocations>,
    ) -> bool {
        spans.clear();
        let locs = locs.get_or_insert_with(|| self.regex.capture_locations());
        if locs.len() != self.regex.captures_len() {
            *locs = self.regex.capture_locations();
        }
        if self.regex.captures_read(locs, s).is_none() {
            return false;
        }
        spans.extend((0..locs.len()).map(|i| locs.get(i)));
        true
    }

    /// Whether the fast path serves this pattern (for tests and benches).
    #[doc(hidden)]
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }
}

fn one_of(exact: &[String], prefixes: &[String], s: &str) -> bool {
    exact.iter().any(|e| e == s)
        || prefixes
            .iter()
            .any(|p| s.starts_with(p.as_str()) && !s[p.len()..].contains('\n'))
}

impl Fast {
    fn of(source: &str) -> Option<Fast> {
        match source {
            ".*" => return Some(Fast::Any { capture: false }),
            "(.*)" => return Some(Fast::Any { capture: true }),
            _ => {}
        }
        let (inner, capture) = match source.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
            Some(inner) => (inner, true),
            None => (source, false),
        };
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for alternative in inner.split('|') {
            if let Some(prefix) = alternative.strip_suffix(".*") {
                prefixes.push(literal(prefix)?);
            } else {
                exact.push(literal(alternative)?);
            }
        }
        Some(Fast::OneOf {
            exact,
            prefixes,
            capture,
        })
    }
}

/// `s` as the literal it means, when it is one: plain name characters, and
/// a `\.` or `\-` escape here and there. Anything else is left to the engine.
fn literal(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | ':' | '-' | '/' | ' ' | '=' | ',' | '@' => {
                out.push(c)
            }
            '\\' => match chars.next()? {
                e @ ('.' | '-' | '/' | ':') => out.push(e),
                _ => return None,
            },
            _ => return None,
        }
    }
    Some(out)
}

/// A `replacement` or `target_label` template, split once into text and
/// group references.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// A group by index; a reference to a group the pattern lacks is None
    /// and expands to nothing, as in Go.
    Group(Option<usize>),
}

impl Template {
    /// Splits `template` as Go's `Regexp.Expand` reads it: `$$` is a `$`;
    /// `$name` takes the longest run of letters, digits and `_` (so `$1x`
    /// is the group named `1x`, not group 1 then `x`); `${name}` is
    /// delimited; digits alone (no leading zero) are a group number; a `$`
    /// followed by anything else is kept as text.
    pub fn new(template: &str, pattern: &Pattern) -> Template {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                text.push('$');
                rest = after;
                continue;
            }
            let Some((name, after)) = reference(rest) else {
                text.push('$');
                continue;
            };
            rest = after;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            let group = match group_number(name) {
                Some(n) => Some(n).filter(|&n| n < pattern.groups()),
                None => pattern.group_named(name),
            };
            pieces.push(Piece::Group(group));
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Template { pieces }
    }

    /// Appends the expansion for a match of `s` with `spans` to `out`.
    pub fn expand(&self, s: &str, spans: &[Option<(usize, usize)>], out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Group(Some(g)) => {
                    if let Some(Some((from, to))) = spans.get(*g) {
                        out.push_str(s.get(*from..*to).unwrap_or(""));
                    }
                }
                Piece::Group(None) => {}
            }
        }
    }

    /// The template's text, when it has no group references.
    pub fn as_literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }
}

/// The name after a `$`: `{name}` or a run of name characters, and what
/// follows it. None when there is none (the `$` is then text).
fn reference(s: &str) -> Option<(&str, &str)> {
    let is_name = |c: char| c.is_alphanumeric() || c == '_';
    if let Some(braced) = s.strip_prefix('{') {
        let end = braced.find(|c: char| !is_name(c)).unwrap_or(braced.len());
        if end == 0 || !braced[end..].starts_with('}') {
            return None;
        }
        return Some((&braced[..end], &braced[end + 1..]));
    }
    let end = s.find(|c: char| !is_name(c)).unwrap_or(s.len());
    (end > 0).then(|| (&s[..end], &s[end..]))
}

/// A group number as Go reads one: ASCII digits, no leading zero, below 10^8.
fn group_number(name: &str) -> Option<usize> {
    if !name.bytes().all(|b| b.is_ascii_digit()) || (name.len() > 1 && name.starts_with('0')) {
        return None;
    }
    name.parse::<usize>().ok().filter(|&n| n < 100_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(pattern: &str, template: &str, s: &str) -> Option<String> {
        let p = Pattern::new(pattern).unwrap();
        let mut spans = Vec::new();
        let mut locs = None;
        if !p.captures(s, &mut spans, &mut locs) {
            return None;
        }
        let mut out = String::new();
        Template::new(template, &p).expand(s, &spans, &mut out);
        Some(out)
    }

    #[test]
    fn patterns_are_anchored() {
        let p = Pattern::new("foo|bar").unwrap();
        assert!(p.is_match("foo") && p.is_match("bar"));
        assert!(!p.is_match("foobar") && !p.is_match("xfoo") && !p.is_match(""));
        let p = Pattern::new("a.c").unwrap();
        assert!(p.is_match("abc") && !p.is_match("abcd") && !p.is_match("a\nc"));
        assert!(Pattern::new("(").is_err());
    }

    #[test]
    fn templates_expand_as_go_does() {
        assert_eq!(expand("(.*)", "$1", "x").as_deref(), Some("x"));
        assert_eq!(expand("(a)(b)", "${2}${1}", "ab").as_deref(), Some("ba"));
        // `$1x` names the group "1x", which does not exist.
        assert_eq!(expand("(a)", "$1x", "a").as_deref(), Some(""));
        assert_eq!(expand("(a)", "${1}x", "a").as_deref(), Some("ax"));
        assert_eq!(expand("(?P<n>a)b", "<$n>", "ab").as_deref(), Some("<a>"));
        assert_eq!(
            expand("(a)", "$$1 $ ${ $}", "a").as_deref(),
            Some("$1 $ ${ $}")
        );
        assert_eq!(expand("(a)", "$2$01$0", "a").as_deref(), Some("a"));
        assert_eq!(expand("(a)|(b)", "[$1][$2]", "b").as_deref(), Some("[][b]"));
        assert_eq!(expand("(.*):(\\d+)", "$1", "h:9100").as_deref(), Some("h"));
        assert_eq!(expand("(.*)", "$1", "no\nmatch"), None);
    }

    #[test]
    fn fast_shapes_agree_with_the_engine() {
        let patterns = [
            ".*",
            "(.*)",
            "node_cpu_seconds_total",
            "go_.*|process_.*",
            "(up|scrape_duration_seconds)",
            "a\\.b|c-d",
            "",
            "x|",
            "(foo_.*)",
        ];
        let inputs = [
            "",
            "x",
            "go_gc",
            "go_",
            "process_cpu",
            "up",
            "a.b",
            "axb",
            "c-d",
            "foo_",
            "foo_\n",
            "node_cpu_seconds_total",
            "node_cpu_seconds_totalx",
            "go_\nx",
            "scrape_duration_seconds",
        ];
        for p in patterns {
            let pattern = Pattern::new(p).unwrap();
            assert!(pattern.is_fast(), "{p:?} should take the fast path");
            for s in inputs {
                let (mut fast, mut slow) = (Vec::new(), Vec::new());
                let mut locs = None;
                let a = pattern.captures(s, &mut fast, &mut locs);
                let b = pattern.regex_captures(s, &mut slow, &mut locs);
                assert_eq!(a, b, "{p:?} on {s:?}");
                assert_eq!(pattern.is_match(s), b, "{p:?} on {s:?}");
                if a {
                    assert_eq!(fast, slow, "{p:?} on {s:?}");
                }
            }
        }
        for p in ["a+", "(a)|(b)", "[ab]", "a\\d", "(a|b)(c)", "a.b"] {
            assert!(!Pattern::new(p).unwrap().is_fast(), "{p:?}");
        }
    }
}
