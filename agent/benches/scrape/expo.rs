//! Reading values out of an agent's self metrics (Prometheus text format).

/// The sum of every series named `name` whose labels include all of `labels`;
/// None if no series matches.
pub(crate) fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching = series(text, name, labels);
    (!matching.is_empty()).then(|| matching.iter().map(|(_, v)| v).sum())
}

/// Every series named `name` whose labels include all of `labels`, with its
/// labels and value, in the order written.
pub(crate) fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(Labels, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((series_name, series_labels, value)) = split(line) else {
            continue;
        };
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            out.push((series_labels, value));
        }
    }
    out
}

/// The value of label `key` in `labels`, if present.
pub(crate) fn label<'a>(labels: &'a Labels, key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A series' labels, in the order written.
pub(crate) type Labels = Vec<(String, String)>;

/// Splits a sample line into name, labels and value; None for comments, blank
/// lines and lines it cannot read.
fn split(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Parses `k="v",...}` (the text after `{`); returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].trim_start().strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        let quoted = s[eq + 1..].trim_start().strip_prefix('"')?;
        s = &quoted[end + 1..];
        labels.push((key, value));
    }
}
