//! The part of YAML that Prometheus configurations are written in, for
//! `tern convert`: block mappings and sequences, flow `[...]` and `{...}`
//! (JSON included), plain, single- and double-quoted scalars, comments.
//! Anchors, aliases, tags, block scalars (`|`, `>`) and several documents
//! are refused with their line and column rather than misread. Scalars
//! stay text: the converter decides what each field is.

use std::fmt;

/// A YAML node and the 1-based line and column where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) at: (usize, usize),
    pub(crate) value: Value,
}

/// A node's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// An empty value (`key:` with nothing under it, `~`, `null`).
    Null,
    /// Any scalar, as text (quotes removed, escapes read).
    Text(String),
    Seq(Vec<Node>),
    /// Keys in the order written.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value of `key` in a mapping.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar.
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// Where and why the text is not YAML tern reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) reason: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.reason)
    }
}

/// A line with its comment removed: its number, indentation and content.
#[derive(Debug, Clone)]
struct Line {
    number: usize,
    indent: usize,
    text: String,
}

/// Parses one YAML document.
pub(crate) fn parse(text: &str) -> Result<Node, YamlError> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let content = strip_comment(raw);
        let trimmed = content.trim_end();
        if trimmed.trim().is_empty() {
            continue;
        }
        let indent = trimmed.len() - trimmed.trim_start().len();
        if trimmed[..indent].contains('\t') {
            return Err(err(number, 1, "tabs cannot indent YAML"));
        }
        let body = trimmed.trim_start();
        if indent == 0 && (body == "---" || body.starts_with("--- ")) {
            if !lines.is_empty() {
                return Err(err(
                    number,
                    1,
                    "several YAML documents: tern convert reads one",
                ));
            }
            continue;
        }
        if indent == 0 && body == "..." {
            break;
        }
        lines.push(Line {
            number,
            indent,
            text: body.to_string(),
        });
    }
    let mut p = Parser { lines, next: 0 };
    let Some(first) = p.lines.first() else {
        return Ok(Node {
            at: (1, 1),
            value: Value::Null,
        });
    };
    let indent = first.indent;
    let node = p.block(indent)?;
    if let Some(extra) = p.lines.get(p.next) {
        return Err(err(
            extra.number,
            extra.indent + 1,
            "this line is indented less than its block but more than the one around it",
        ));
    }
    Ok(node)
}

fn err(line: usize, column: usize, reason: impl Into<String>) -> YamlError {
    YamlError {
        line,
        column,
        reason: reason.into(),
    }
}

/// `raw` without its comment: a `#` at the start or after a blank, outside quotes.
fn strip_comment(raw: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (i, c) in raw.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && (previous == ' ' || previous == '\t') => return &raw[..i],
            None => {}
        }
        previous = c;
    }
    raw
}

struct Parser {
    lines: Vec<Line>,
    next: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Line> {
        self.lines.get(self.next)
    }

    /// The block whose lines start at `indent`.
    fn block(&mut self, indent: usize) -> Result<Node, YamlError> {
        let Some(line) = self.peek() else {
            return Ok(Node {
                at: (1, 1),
                value: Value::Null,
            });
        };
        if is_item(&line.text) {
            self.sequence(indent)
        } else if find_colon(&line.text).is_some() {
            self.mapping(indent)
        } else {
            // A scalar or flow node alone on its lines.
            let (number, col) = (line.number, line.indent + 1);
            let text = line.text.clone();
            self.next += 1;
            self.value(&text, number, col, indent)
        }
    }

    fn sequence(&mut self, indent: usize) -> Result<Node, YamlError> {
        let at = self.peek().map_or((1, 1), |l| (l.number, l.indent + 1));
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent != indent || !is_item(&line.text) {
                break;
            }
            let number = line.number;
            let rest = line.text[1..].trim_start().to_string();
            let col = indent + 1 + (line.text.len() - rest.len());
            if rest.is_empty() {
                self.next += 1;
                match self.peek() {
                    Some(n) if n.indent > indent => {
                        let inner = n.indent;
                        items.push(self.block(inner)?);
                    }
                    _ => items.push(Node {
                        at: (number, col),
                        value: Value::Null,
                    }),
                }
            } else {
                // `- key: value` starts a mapping at the column of `key`:
                // the rest of the line becomes a line of its own there.
                let inner = col - 1;
                if let Some(l) = self.lines.get_mut(self.next) {
                    l.indent = inner;
                    l.text = rest;
                }
                items.push(self.block(inner)?);
            }
        }
        Ok(Node {
            at,
            value: Value::Seq(items),
        })
    }

    fn mapping(&mut self, indent: usize) -> Result<Node, YamlError> {
        let at = self.peek().map_or((1, 1), |l| (l.number, l.indent + 1));
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent != indent || is_item(&line.text) {
                break;
            }
            let number = line.number;
            let text = line.text.clone();
            let Some(colon) = find_colon(&text) else {
                return Err(err(number, indent + 1, "expected `key: value`"));
            };
            let key = unquote(text[..colon].trim(), number, indent + 1)?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(err(number, indent + 1, format!("duplicate key {key:?}")));
            }
            let rest = text[colon + 1..].trim();
            let col = indent + 1 + text.len() - text[colon + 1..].trim_start().len();
            self.next += 1;
            let value = if rest.is_empty() {
                match self.peek() {
                    Some(n) if n.indent > indent => {
                        let inner = n.indent;
                        self.block(inner)?
                    }
                    // A sequence may sit at its key's own indentation.
                    Some(n) if n.indent == indent && is_item(&n.text) => self.sequence(indent)?,
                    _ => Node {
                        at: (number, col),
                        value: Value::Null,
                    },
                }
            } else {
                self.value(rest, number, col, indent)?
            };
            entries.push((key, value));
        }
        Ok(Node {
            at,
            value: Value::Map(entries),
        })
    }

    /// The value written from column `col` of line `number`: a flow node
    /// (which may go on over the next lines) or a scalar.
    fn value(
        &mut self,
        text: &str,
        number: usize,
        col: usize,
        indent: usize,
    ) -> Result<Node, YamlError> {
        let first = text.chars().next().unwrap_or(' ');
        match first {
            '&' | '*' | '!' => {
                return Err(err(
                    number,
                    col,
                    "anchors, aliases and tags are not read by tern convert",
                ))
            }
            '|' | '>' => {
                return Err(err(
                    number,
                    col,
                    "block scalars (| and >) are not read by tern convert",
                ))
            }
            _ => {}
        }
        if first == '[' || first == '{' {
            let mut flow = text.to_string();
            while !balanced(&flow) {
                match self.peek() {
                    Some(n)
                        if n.indent > indent
                            || n.text.starts_with(']')
                            || n.text.starts_with('}') =>
                    {
                        flow.push(' ');
                        flow.push_str(&n.text);
                        self.next += 1;
                    }
                    _ => return Err(err(number, col, "unclosed [ or {")),
                }
            }
            let mut f = Flow {
                chars: flow.chars().collect(),
                pos: 0,
                number,
                col,
            };
            let node = f.node()?;
            f.blanks();
            if f.pos < f.chars.len() {
                return Err(err(number, col, "something after the end of a [ ] or { }"));
            }
            return Ok(node);
        }
        Ok(Node {
            at: (number, col),
            value: scalar(text, number, col)?,
        })
    }
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// Where the `:` of `key: value` is (outside quotes, followed by a blank or
/// the end), if the line is one.
fn find_colon(text: &str) -> Option<usize> {
    let first = text.chars().next()?;
    if first == '[' || first == '{' {
        return None;
    }
    let mut quote: Option<char> = None;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && i == 0 => quote = Some(c),
            None if c == ':' && bytes.get(i + 1).map_or(true, |b| *b == b' ') => return Some(i),
            None => {}
        }
    }
    None
}

/// Whether every `[` and `{` outside quotes is closed.
fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                _ => {}
            },
        }
    }
    depth <= 0 && quote.is_none()
}

/// A plain or quoted scalar.
fn scalar(text: &str, number: usize, col: usize) -> Result<Value, YamlError> {
    match text {
        "~" | "null" | "Null" | "NULL" => Ok(Value::Null),
        _ => Ok(Value::Text(unquote(text, number, col)?)),
    }
}

/// `text` without its quotes, escapes read; plain text as it is.
fn unquote(text: &str, number: usize, col: usize) -> Result<String, YamlError> {
    if let Some(inner) = text.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| err(number, col, "unclosed ' quote"))?;
        return Ok(inner.replace("''", "'"));
    }
    if let Some(inner) = text.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .filter(|i| !i.ends_with('\\') || i.ends_with("\\\\"))
            .ok_or_else(|| err(number, col, "unclosed \" quote"))?;
        return double_quoted(inner).map_err(|reason| err(number, col, reason));
    }
    Ok(text.to_string())
}

/// The escapes of a double-quoted scalar (JSON's and YAML's common ones).
fn double_quoted(inner: &str) -> Result<String, String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('"') => out.push('"'),
            Some('/') => out.push('/'),
            Some('\\') => out.push('\\'),
            Some(' ') => out.push(' '),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad escape \\u{hex}"))?;
                out.push(code);
            }
            other => {
                return Err(format!(
                    "unknown escape \\{}",
                    other.map_or(String::new(), String::from)
                ))
            }
        }
    }
    Ok(out)
}

/// A flow node: `[a, b]`, `{k: v}`, scalars inside.
struct Flow {
    chars: Vec<char>,
    pos: usize,
    number: usize,
    col: usize,
}

impl Flow {
    fn blanks(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn error(&self, reason: &str) -> YamlError {
        err(self.number, self.col, format!("{reason} in a [ ] or {{ }}"))
    }

    fn node(&mut self) -> Result<Node, YamlError> {
        self.blanks();
        let at = (self.number, self.col);
        match self.chars.get(self.pos) {
            Some('[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.blanks();
                    if self.chars.get(self.pos) == Some(&']') {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.node()?);
                    self.blanks();
                    match self.chars.get(self.pos) {
                        Some(',') => self.pos += 1,
                        Some(']') => {}
                        _ => return Err(self.error("expected , or ]")),
                    }
                }
                Ok(Node {
                    at,
                    value: Value::Seq(items),
                })
            }
            Some('{') => {
                self.pos += 1;
                let mut entries = Vec::new();
                loop {
                    self.blanks();
                    if self.chars.get(self.pos) == Some(&'}') {
                        self.pos += 1;
                        break;
                    }
                    let key = match self.scalar_text(true)? {
                        Some(k) => k,
                        None => return Err(self.error("expected a key")),
                    };
                    self.blanks();
                    if self.chars.get(self.pos) != Some(&':') {
                        return Err(self.error("expected :"));
                    }
                    self.pos += 1;
                    let value = self.node()?;
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(self.error(&format!("duplicate key {key:?}")));
                    }
                    entries.push((key, value));
                    self.blanks();
                    match self.chars.get(self.pos) {
                        Some(',') => self.pos += 1,
                        Some('}') => {}
                        _ => return Err(self.error("expected , or }")),
                    }
                }
                Ok(Node {
                    at,
                    value: Value::Map(entries),
                })
            }
            _ => {
                let quoted = matches!(self.chars.get(self.pos), Some('"' | '\''));
                let text = self.scalar_text(false)?.unwrap_or_default();
                let value = if !quoted && matches!(text.as_str(), "" | "~" | "null") {
                    Value::Null
                } else {
                    Value::Text(text)
                };
                Ok(Node { at, value })
            }
        }
    }

    /// A scalar in flow context: quoted, or plain up to `,`, `]`, `}` (and
    /// `:` followed by a blank, for keys).
    fn scalar_text(&mut self, key: bool) -> Result<Option<String>, YamlError> {
        self.blanks();
        let start = self.pos;
        match self.chars.get(self.pos) {
            Some(&q @ ('"' | '\'')) => {
                self.pos += 1;
                let mut escaped = false;
                while let Some(&c) = self.chars.get(self.pos) {
                    self.pos += 1;
                    if q == '"' && escaped {
                        escaped = false;
                    } else if q == '"' && c == '\\' {
                        escaped = true;
                    } else if c == q {
                        if q == '\'' && self.chars.get(self.pos) == Some(&'\'') {
                            self.pos += 1;
                            continue;
                        }
                        let raw: String = self.chars[start..self.pos].iter().collect();
                        return unquote(&raw, self.number, self.col).map(Some);
                    }
                }
                Err(self.error("unclosed quote"))
            }
            _ => {
                while let Some(&c) = self.chars.get(self.pos) {
                    let colon = c == ':'
                        && self
                            .chars
                            .get(self.pos + 1)
                            .map_or(true, |n| n.is_whitespace() || key);
                    if c == ',' || c == ']' || c == '}' || (colon && key) {
                        break;
                    }
                    self.pos += 1;
                }
                let raw: String = self.chars[start..self.pos].iter().collect();
                let raw = raw.trim();
                Ok((!raw.is_empty()).then(|| raw.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(node: &Node) -> String {
        match &node.value {
            Value::Null => "~".into(),
            Value::Text(t) => format!("{t:?}"),
            Value::Seq(items) => format!(
                "[{}]",
                items.iter().map(texts).collect::<Vec<_>>().join(", ")
            ),
            Value::Map(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{k}: {}", texts(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    #[test]
    fn a_prometheus_config_in_block_style() {
        let doc = parse(
            r#"# my global config
global:
  scrape_interval: 15s # Set the scrape interval
  evaluation_interval: 15s

scrape_configs:
  - job_name: "prometheus"
    static_configs:
      - targets: ["localhost:9090"]
        labels:
          env: 'it''s'
  - job_name: node
    metric_relabel_configs:
    - source_labels: [__name__]
      regex: "go_.*|a\\.b"
      action: drop
    params: {module: [if_mib], x: "y #1"}
"#,
        )
        .unwrap();
        assert_eq!(
            texts(&doc),
            r#"{global: {scrape_interval: "15s", evaluation_interval: "15s"}, scrape_configs: [{job_name: "prometheus", static_configs: [{targets: ["localhost:9090"], labels: {env: "it's"}}]}, {job_name: "node", metric_relabel_configs: [{source_labels: ["__name__"], regex: "go_.*|a\\.b", action: "drop"}], params: {module: ["if_mib"], x: "y #1"}}]}"#
        );
        let job = &doc.get("scrape_configs").unwrap();
        let Value::Seq(jobs) = &job.value else {
            panic!()
        };
        assert_eq!(jobs[1].get("job_name").unwrap().at, (12, 15));
    }

    #[test]
    fn json_is_flow_yaml() {
        let doc = parse(r#"{"scrape_configs": [{"job_name": "a", "honor_labels": false, "x": null, "r": "\\d+\u0041"}]}"#).unwrap();
        assert_eq!(
            texts(&doc),
            r#"{scrape_configs: [{job_name: "a", honor_labels: "false", x: ~, r: "\\d+A"}]}"#
        );
        // A flow node may go on over several lines.
        let doc = parse("a: [1,\n  2]\nb: c\n").unwrap();
        assert_eq!(texts(&doc), r#"{a: ["1", "2"], b: "c"}"#);
    }

    #[test]
    fn what_is_not_read_is_refused_with_its_place() {
        let e = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 4));
        let e = parse("a: |\n  text\n").unwrap_err();
        assert!(e.reason.contains("block scalars"), "{e}");
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.reason.contains("unclosed"), "{e}");
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert!(e.reason.contains("duplicate key"), "{e}");
        // Found by the convert fuzz target: in flow style too.
        let e = parse("a: {b: 1, b: 2}\n").unwrap_err();
        assert!(e.reason.contains("duplicate key"), "{e}");
        let e = parse("a:\n    b: 1\n  c: 2\n").unwrap_err();
        assert_eq!(e.line, 3);
    }
}
