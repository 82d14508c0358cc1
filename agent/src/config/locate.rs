//! Where an error is: the file, line, column and dotted key of every config
//! error, for values (their span), for rules between keys (where the keys
//! are written) and for the TOML parser's own errors.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// Context for building located errors while validating.
pub(super) struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Where each key is written, built on the first error that has no span
    /// of its own (a missing key, or a rule between two keys).
    keys: std::cell::OnceCell<Option<KeyMap>>,
}

impl<'a> Cx<'a> {
    /// A context for the text of the config file at `path`.
    pub(super) fn new(path: &'a Path, text: &'a str) -> Cx<'a> {
        Cx {
            path,
            text,
            keys: std::cell::OnceCell::new(),
        }
    }
}

impl Cx<'_> {
    pub(super) fn err<T>(
        &self,
        at: &Spanned<T>,
        key: &str,
        reason: impl Into<String>,
    ) -> ConfigError {
        self.err_at(Some(at.span()), key, reason)
    }

    pub(super) fn err_opt<T>(
        &self,
        at: Option<&Spanned<T>>,
        key: &str,
        reason: impl Into<String>,
    ) -> ConfigError {
        self.err_at(at.map(|s| s.span()), key, reason)
    }

    pub(super) fn err_at(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        reason: impl Into<String>,
    ) -> ConfigError {
        // Without a span of its own, point at the key, or at the nearest
        // of its parents that is written (the section of a missing key).
        let span = span.or_else(|| {
            self.keys
                .get_or_init(|| KeyMap::of(self.text))
                .as_ref()
                .and_then(|k| k.span_of(key))
        });
        ConfigError {
            path: self.path.to_owned(),
            position: span.map(|s| line_col(self.text, s.start)),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// A located error from the TOML parser or deserializer, with its whole
/// reason on one line and the key its span falls on. toml knows only the span
/// (of a key, a value or a table header), so the key comes from a [`KeyMap`]
/// of the text; when the text is not TOML at all, only a table header can be
/// named, and otherwise the key is left out rather than guessed.
pub(super) fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    // The message can run over lines ("invalid table header" then "duplicate
    // key `agent` in document root"); each line is part of the reason.
    let reason = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let span = e.span();
    let key = span.as_ref().and_then(|span| match KeyMap::of(text) {
        Some(keys) => keys.path_at(span).map(str::to_owned),
        None => header_at(text, span.start),
    });
    ConfigError {
        path: path.to_owned(),
        position: span.map(|s| line_col(text, s.start)),
        key: key.unwrap_or_default(),
        reason,
    }
}

/// The key `name` under `parent` as messages write it: `export.headers.X-A`,
/// and quoted when it is not a bare TOML key: `resource."deployment.environment"`.
pub(super) fn dotted(parent: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), bare) {
        (true, true) => name.to_owned(),
        (true, false) => format!("{name:?}"),
        (false, true) => format!("{parent}.{name}"),
        (false, false) => format!("{parent}.{name:?}"),
    }
}

/// The dotted name of the table header on the line holding `offset`, like
/// `export.retry` for `[export.retry]` (an array of tables without its
/// index): the key of a parse error such as a duplicate table.
fn header_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next()?.trim();
    if !line.starts_with('[') {
        return None;
    }
    let keys = KeyMap::of(line)?;
    let path = keys.0.iter().map(|(_, p)| p).max_by_key(|p| p.len())?;
    Some(path.strip_suffix("[0]").unwrap_or(path).to_owned())
}

/// Every key and value of a TOML document with its byte span and its dotted
/// path (`scrape[0].targets[1]`, `resource."deployment.environment"`), so
/// that an error located only by a span can name its key, and an error about
/// a key can point at where it is written.
struct KeyMap(Vec<(Range<usize>, String)>);

impl KeyMap {
    /// Maps `text`; `None` when it is not TOML.
    fn of(text: &str) -> Option<KeyMap> {
        let protocol = SpannedProtocol::probe()?;
        let mut spans = Vec::new();
        let root = Node {
            path: String::new(),
            spans: &mut spans,
            protocol,
            spanned: false,
        };
        serde::de::DeserializeSeed::deserialize(root, toml::de::Deserializer::new(text)).ok()?;
        Some(KeyMap(spans))
    }

    /// The path of the smallest key or value whose span holds `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        self.0
            .iter()
            .filter(|(s, _)| s.start <= span.start && span.end <= s.end)
            .min_by_key(|(s, p)| (s.len(), std::cmp::Reverse(p.len())))
            .map(|(_, p)| p.as_str())
    }

    /// Where `key` is first written, or else the nearest of its parents.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let mut key = key;
        loop {
            let found = self
                .0
                .iter()
                .filter(|(_, p)| p == key)
                .map(|(s, _)| s.clone())
                .min_by_key(|s| s.start);
            if found.is_some() {
                return found;
            }
            key = key.get(..key.rfind(['.', '['])?)?;
        }
    }
}

/// How [`Spanned`] asks a deserializer for a span: serde_spanned's private
/// struct name and its three fields (start, end, value). Learned by letting
/// `Spanned` ask a probe, so that they cannot drift from the crate's.
#[derive(Debug, Clone, Copy)]
struct SpannedProtocol {
    name: &'static str,
    fields: &'static [&'static str],
}

impl SpannedProtocol {
    fn probe() -> Option<SpannedProtocol> {
        struct Probe(std::cell::Cell<Option<SpannedProtocol>>);
        impl<'de> serde::Deserializer<'de> for &Probe {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not a request for a span"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                name: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0.set(Some(SpannedProtocol { name, fields }));
                Err(serde::de::Error::custom("probed"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let probe = Probe(std::cell::Cell::new(None));
        let _ = Spanned::<serde::de::IgnoredAny>::deserialize(&probe);
        probe.0.get().filter(|p| p.fields.len() == 3)
    }

    /// Whether `key` is the span field `i` (0 start, 1 end, 2 value).
    fn is_field(&self, i: usize, key: &str) -> bool {
        self.fields.get(i).is_some_and(|f| *f == key)
    }
}

/// One value of the document being mapped, at `path`. With `spanned`, it asks
/// toml for the value's span (tables made implicit by a dotted header have
/// none, and arrive as plain tables).
struct Node<'a> {
    path: String,
    spans: &'a mut Vec<(Range<usize>, String)>,
    protocol: SpannedProtocol,
    spanned: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.spanned {
            let SpannedProtocol { name, fields } = self.protocol;
            d.deserialize_struct(name, fields, self)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for i in 0.. {
            let element = Node {
                path: format!("{}[{i}]", self.path),
                spans: &mut *self.spans,
                protocol: self.protocol,
                spanned: true,
            };
            if seq.next_element_seed(element)?.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Node {
            path,
            spans,
            protocol,
            ..
        } = self;
        let mut start = None;
        let mut end = None;
        while let Some((key_span, key)) = map.next_key_seed(KeySeed(protocol))? {
            // A spanned value arrives as the map {start, end, value}; its
            // keys, unlike a table's, have no span of their own.
            if key_span.is_none() && protocol.is_field(0, &key) {
                start = Some(map.next_value::<usize>()?);
            } else if key_span.is_none() && protocol.is_field(1, &key) {
                end = Some(map.next_value::<usize>()?);
            } else if key_span.is_none() && protocol.is_field(2, &key) {
                if let (Some(start), Some(end)) = (start, end) {
                    spans.push((start..end, path.clone()));
                }
                map.next_value_seed(Node {
                    path: path.clone(),
                    spans: &mut *spans,
                    protocol,
                    spanned: false,
                })?;
            } else {
                let child = dotted(&path, &key);
                if let Some(span) = key_span {
                    spans.push((span, child.clone()));
                }
                map.next_value_seed(Node {
                    path: child,
                    spans: &mut *spans,
                    protocol,
                    spanned: true,
                })?;
            }
        }
        Ok(())
    }
}

/// A table key with its span when toml has one.
struct KeySeed(SpannedProtocol);

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = (Option<Range<usize>>, String);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let SpannedProtocol { name, fields } = self.0;
        d.deserialize_struct(name, fields, self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = (Option<Range<usize>>, String);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok((None, v.to_owned()))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut start, mut end, mut value) = (None, None, None);
        while let Some(k) = map.next_key::<String>()? {
            if self.0.is_field(0, &k) {
                start = Some(map.next_value::<usize>()?);
            } else if self.0.is_field(1, &k) {
                end = Some(map.next_value::<usize>()?);
            } else {
                value = Some(map.next_value::<String>()?);
            }
        }
        let value = value.ok_or_else(|| serde::de::Error::custom("a key without a name"))?;
        Ok((start.zip(end).map(|(s, e)| s..e), value))
    }
}

/// Turns a byte offset into a 1-based line and column (in characters).
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
