//! Staleness: what the last good scrape of a target exposed, kept compactly,
//! so that a series that disappears gets one point with the NoRecordedValue
//! flag, and every series does when a scrape fails.
//!
//! Keeping the previous body would double a large target's memory (12 MB for
//! 100k series), so [`SeriesMemory`] keeps the series' hashes (8 bytes each)
//! and their identities in a compact table: interned strings and label
//! pairs, and per series a few varints (about 1 byte per label when an
//! exporter repeats its label values, as most do). The set of series rarely
//! changes between scrapes, and exporters write it in the same order every
//! time, so a steady target costs one comparison of each hash with the one
//! remembered at its place, and nothing is copied; only from the first
//! family that differs are hashes and identities recorded again.

use std::borrow::Cow;
use std::collections::HashMap;

use super::convert::Builder;
use super::parse::{Family, Label, MetricType, Sample};

/// The series of the last good scrape of one target.
#[derive(Debug, Default)]
pub struct SeriesMemory {
    /// Hashes of those series in exposition order (see `series_hash` in scrape.rs).
    hashes: Vec<u64>,
    /// Their identities, in exposition order.
    table: Table,
}

/// Interned identities of a scrape's series.
#[derive(Debug, Default)]
struct Table {
    /// Every distinct string, back to back; `StrRef`s point into it.
    text: String,
    /// Every distinct sample name.
    names: Vec<StrRef>,
    /// Every distinct label (name, value) pair; exporters repeat them a lot.
    pairs: Vec<(StrRef, StrRef)>,
    families: Vec<FamilyRecord>,
    /// Each series in turn: the varints of its name's index in `names`, its
    /// label count, and each label's index in `pairs`.
    series: Vec<u8>,
}

/// A string in [`Table::text`]: offset and length.
type StrRef = (u32, u32);

#[derive(Debug)]
struct FamilyRecord {
    name: StrRef,
    kind: MetricType,
    help: Option<StrRef>,
    unit: Option<StrRef>,
    /// Its series: a byte range of [`Table::series`].
    series: (u32, u32),
}

/// One series read back from a [`Table`]: its name and label pairs.
struct SeriesEntry<'t> {
    name: &'t str,
    labels: Vec<(&'t str, &'t str)>,
}

impl SeriesMemory {
    /// Whether nothing is remembered (no good scrape yet, or one failed since).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Notes one family of a scrape as it goes by, with `hash` giving each
    /// sample's series hash. While the scrape repeats the remembered series
    /// in the same order (a steady target), nothing is kept; from the first
    /// family that differs, `next` records the hashes and identities.
    pub fn record(
        &self,
        next: &mut Recording,
        family: &Family<'_>,
        hash: impl Fn(&Sample<'_>) -> u64,
    ) {
        let first = next.len;
        next.len += family.samples.len();
        next.hashes.extend(family.samples.iter().map(hash));
        if next.diverged.is_none() {
            let same = self
                .hashes
                .get(first..next.len)
                .is_some_and(|was| same_words(was, &next.hashes));
            if same {
                next.hashes.clear();
                return;
            }
            next.diverged = Some(first);
            next.table = Some(TableBuilder::with_prefix(&self.table, first));
        }
        if let Some(table) = &mut next.table {
            table.family(family);
        }
    }

    /// The series remembered but missing from the scrape `next` recorded:
    /// their hashes, sorted and deduplicated.
    pub fn vanished(&self, next: &Recording) -> Vec<u64> {
        let prefix = next.diverged.unwrap_or(next.len).min(self.hashes.len());
        let Some(after) = self.hashes.get(prefix..).filter(|a| !a.is_empty()) else {
            return Vec::new();
        };
        // Only what was remembered after the scrape's unchanged prefix can
        // be gone: the sorted difference with what the scrape had there.
        let sorted = |h: &[u64]| {
            let mut h = h.to_vec();
            h.sort_unstable();
            h.dedup();
            h
        };
        let now = sorted(&next.hashes);
        let mut now = now.iter().peekable();
        let mut gone = Vec::new();
        for h in sorted(after) {
            while now.next_if(|n| **n < h).is_some() {}
            if now.peek() != Some(&&h) {
                gone.push(h);
            }
        }
        // A series repeated in the prefix is still there (an exporter
        // that writes one twice).
        if !gone.is_empty() {
            let mut still = vec![false; gone.len()];
            for h in self.hashes.get(..prefix).unwrap_or(&[]) {
                if let Ok(i) = gone.binary_search(h) {
                    still[i] = true;
                }
            }
            let mut flags = still.into_iter();
            gone.retain(|_| !flags.next().unwrap_or(false));
        }
        gone
    }

    /// Remembers the series of the good scrape `next` recorded, and gives
    /// back its hash buffer (emptied) for the next scrape.
    pub fn remember(&mut self, next: Recording) -> Vec<u64> {
        let Recording {
            len,
            diverged,
            mut hashes,
            table,
        } = next;
        match (diverged, table) {
            (Some(first), Some(table)) => {
                if first == 0 {
                    // All new: keep the buffer itself rather than a copy
                    // (a large target's first scrape), trimmed to size.
                    hashes.shrink_to_fit();
                    self.hashes = std::mem::take(&mut hashes);
                } else {
                    self.hashes.truncate(first);
                    self.hashes.reserve_exact(hashes.len());
                    self.hashes.extend_from_slice(&hashes);
                }
                self.table = table.finish();
            }
            // The same series as before, or the first ones of them.
            _ if len != self.hashes.len() => {
                self.hashes.truncate(len);
                self.hashes.shrink_to_fit();
                self.table = TableBuilder::with_prefix(&self.table, len).finish();
            }
            _ => {}
        }
        hashes.clear();
        hashes
    }

    /// Forgets everything (after the stale points of a failed scrape went out).
    pub fn clear(&mut self) {
        *self = SeriesMemory::default();
    }

    /// Writes a stale point for every remembered series whose hash is in
    /// `gone` (sorted), or for every series when `gone` is None.
    pub fn emit_stale(
        &self,
        gone: Option<&[u64]>,
        hash: impl Fn(&Sample<'_>) -> u64,
        builder: &mut Builder,
    ) {
        let t = &self.table;
        for f in &t.families {
            let samples: Vec<Sample<'_>> = t
                .series_of(f)
                .map(|s| Sample {
                    name: s.name,
                    labels: s
                        .labels
                        .into_iter()
                        .map(|(name, value)| Label {
                            name,
                            value: Cow::Borrowed(value),
                        })
                        .collect(),
                    value: f64::NAN,
                    timestamp_ms: None,
                })
                .filter(|s| gone.map_or(true, |g| g.binary_search(&hash(s)).is_ok()))
                .collect();
            if samples.is_empty() {
                continue;
            }
            let family = Family {
                name: t.str(f.name),
                kind: f.kind,
                help: f.help.map(|h| Cow::Borrowed(t.str(h))),
                unit: f.unit.map(|u| t.str(u)),
                samples,
            };
            builder.family(&family, true);
        }
    }
}

/// One scrape's series as [`SeriesMemory::record`] notes them: how many,
/// and from the first family that differs from what is remembered, their
/// hashes and identities.
#[derive(Debug, Default)]
pub struct Recording {
    /// Series seen so far.
    len: usize,
    /// Where the scrape first differs from what is remembered (a family's
    /// first series); None while it has not.
    diverged: Option<usize>,
    /// The hashes from `diverged` on (before it, one family's, while it is
    /// compared).
    hashes: Vec<u64>,
    table: Option<TableBuilder>,
}

impl Recording {
    /// A recording that fills `buffer` (a worker's, reused between scrapes).
    pub fn with_buffer(mut buffer: Vec<u64>) -> Recording {
        buffer.clear();
        Recording {
            hashes: buffer,
            ..Recording::default()
        }
    }

    /// The series the scrape had.
    pub fn series(&self) -> usize {
        self.len
    }

    /// Gives back the hash buffer, for a scrape that failed.
    pub fn into_buffer(self) -> Vec<u64> {
        let mut hashes = self.hashes;
        hashes.clear();
        hashes
    }
}

/// A [`Table`] being filled, with its interning maps.
#[derive(Debug, Default)]
struct TableBuilder {
    table: Table,
    interned: HashMap<String, StrRef>,
    name_ids: HashMap<StrRef, u32>,
    pair_ids: HashMap<(StrRef, StrRef), u32>,
}

impl TableBuilder {
    /// A table holding the first `n` series of `old` (and their families).
    fn with_prefix(old: &Table, n: usize) -> TableBuilder {
        let mut b = TableBuilder::default();
        let mut left = n;
        for f in &old.families {
            if left == 0 {
                break;
            }
            let first = b.table.series.len();
            let mut count = 0;
            for s in old.series_of(f).take(left) {
                b.series(s.name, s.labels.into_iter());
                count += 1;
            }
            left -= count;
            let record = FamilyRecord {
                name: b.intern(old.str(f.name)),
                kind: f.kind,
                help: f.help.map(|h| b.intern(old.str(h))),
                unit: f.unit.map(|u| b.intern(old.str(u))),
                series: (to_u32(first), to_u32(b.table.series.len())),
            };
            b.table.families.push(record);
        }
        b
    }

    fn intern(&mut self, s: &str) -> StrRef {
        if let Some(r) = self.interned.get(s) {
            return *r;
        }
        let text = &mut self.table.text;
        let r = (to_u32(text.len()), to_u32(s.len()));
        text.push_str(s);
        self.interned.insert(s.to_string(), r);
        r
    }

    fn series<'s>(
        &mut self,
        name: &str,
        labels: impl ExactSizeIterator<Item = (&'s str, &'s str)>,
    ) {
        let name = self.intern(name);
        let next = to_u32(self.table.names.len());
        let id = *self.name_ids.entry(name).or_insert(next);
        if id == next {
            self.table.names.push(name);
        }
        push_varint(&mut self.table.series, id);
        push_varint(&mut self.table.series, to_u32(labels.len()));
        for (n, v) in labels {
            let pair = (self.intern(n), self.intern(v));
            let next = to_u32(self.table.pairs.len());
            let id = *self.pair_ids.entry(pair).or_insert(next);
            if id == next {
                self.table.pairs.push(pair);
            }
            push_varint(&mut self.table.series, id);
        }
    }

    fn family(&mut self, family: &Family<'_>) {
        let first = self.table.series.len();
        for s in &family.samples {
            self.series(s.name, s.labels.iter().map(|l| (l.name, l.value.as_ref())));
        }
        let record = FamilyRecord {
            name: self.intern(family.name),
            kind: family.kind,
            help: family.help.as_deref().map(|h| self.intern(h)),
            unit: family.unit.map(|u| self.intern(u)),
            series: (to_u32(first), to_u32(self.table.series.len())),
        };
        self.table.families.push(record);
    }

    fn finish(self) -> Table {
        let mut t = self.table;
        t.text.shrink_to_fit();
        t.names.shrink_to_fit();
        t.families.shrink_to_fit();
        t.series.shrink_to_fit();
        t.pairs.shrink_to_fit();
        t
    }
}

impl Table {
    fn str(&self, (offset, len): StrRef) -> &str {
        let start = offset as usize;
        self.text.get(start..start + len as usize).unwrap_or("")
    }

    /// The series of family `f`, read back from their varints.
    fn series_of<'t>(&'t self, f: &FamilyRecord) -> impl Iterator<Item = SeriesEntry<'t>> + 't {
        let mut bytes = self
            .series
            .get(f.series.0 as usize..f.series.1 as usize)
            .unwrap_or(&[]);
        std::iter::from_fn(move || {
            let name = self.names.get(read_varint(&mut bytes)? as usize)?;
            let count = read_varint(&mut bytes)?;
            let mut labels = Vec::with_capacity(count.min(64) as usize);
            for _ in 0..count {
                let (n, v) = self.pairs.get(read_varint(&mut bytes)? as usize)?;
                labels.push((self.str(*n), self.str(*v)));
            }
            Some(SeriesEntry {
                name: self.str(*name),
                labels,
            })
        })
    }
}

/// Appends `v` as a varint (protobuf's, as the batches use).
fn push_varint(out: &mut Vec<u8>, v: u32) {
    prost::encoding::encode_varint(u64::from(v), out);
}

/// Reads a varint written by [`push_varint`] from the front of `bytes`;
/// None at the end (or on a damaged one, which the table never holds).
fn read_varint(bytes: &mut &[u8]) -> Option<u32> {
    if bytes.is_empty() {
        return None;
    }
    let v = prost::encoding::decode_varint(bytes).ok()?;
    u32::try_from(v).ok()
}

/// `a == b`, without the call to `memcmp` that slice equality becomes: musl's
/// compares a byte at a time, and this runs on every scrape over 8 bytes a series.
fn same_words(a: &[u64], b: &[u64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Offsets into one scrape's tables; a body is at most `body_size_limit`,
/// far below 4 GiB, so this saturates only on a broken invariant.
pub(super) fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use crate::otlp::proto::metrics::v1::{metric, DataPointFlags};
    use crate::sources::prometheus::convert::TargetInfo;
    use crate::sources::prometheus::scrape::series_hash;
    use prost::Message;
    use std::io::Read;

    use crate::sources::prometheus::parse::{Format, Limits, Parser};

    /// What a scrape of `body` records against `memory`, as the scraper
    /// does it: each family as it goes by.
    fn record(memory: &SeriesMemory, body: &str) -> Recording {
        let mut next = Recording::default();
        for family in Parser::new(body.as_bytes(), Format::PrometheusText, &Limits::default()) {
            memory.record(&mut next, &family.unwrap(), series_hash);
        }
        next
    }

    /// A good scrape of `body`: record, then remember. Gives what vanished
    /// since the last one.
    fn scrape(memory: &mut SeriesMemory, body: &str) -> Vec<u64> {
        let next = record(memory, body);
        let gone = memory.vanished(&next);
        memory.remember(next);
        gone
    }

    /// A body of one family `m` with a series per `x` label value.
    fn body(xs: &[u32]) -> String {
        let mut b = String::from("# TYPE m gauge\n");
        for x in xs {
            b.push_str(&format!("m{{x=\"{x}\"}} 1\n"));
        }
        b
    }

    /// The hash of the series `m{x="<x>"}`.
    fn hash_of(x: u32) -> u64 {
        let text = body(&[x]);
        let family = Parser::new(text.as_bytes(), Format::PrometheusText, &Limits::default())
            .next()
            .unwrap()
            .unwrap();
        series_hash(&family.samples[0])
    }

    /// The series every stale point of `memory` would name, as `name{k=v,...}`.
    fn stale_series(memory: &SeriesMemory) -> Vec<String> {
        let target = TargetInfo {
            job: "j".into(),
            instance: "h:1".into(),
            scheme: "http".into(),
            extra: vec![],
        };
        let mut builder = Builder::new(target.resource(&[]), 1);
        memory.emit_stale(None, series_hash, &mut builder);
        let mut out = Vec::new();
        for (batch, _) in builder.finish() {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(batch.payload.as_slice())
                .read_to_end(&mut raw)
                .unwrap();
            let request = ExportMetricsServiceRequest::decode(raw.as_slice()).unwrap();
            for m in &request.resource_metrics[0].scope_metrics[0].metrics {
                let Some(metric::Data::Gauge(g)) = &m.data else {
                    panic!("{m:?}")
                };
                for p in &g.data_points {
                    let labels: Vec<String> = p
                        .attributes
                        .iter()
                        .map(|kv| format!("{}={:?}", kv.key, kv.value))
                        .collect();
                    out.push(format!("{}{{{}}}", m.name, labels.join(",")));
                }
            }
        }
        out
    }

    #[test]
    fn recorded_identities_follow_each_scrape_from_where_it_differs() {
        let a = "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"2\"} 1\n";
        let b = "# TYPE b gauge\nb{y=\"1\"} 1\n";
        let b2 = "# TYPE b gauge\nb{y=\"2\"} 1\nb{y=\"3\"} 1\n";
        let c = "# TYPE c gauge\nc 1\n";
        let mut memory = SeriesMemory::default();
        assert!(scrape(&mut memory, &format!("{a}{b}{c}")).is_empty());
        let all = stale_series(&memory);
        assert_eq!(all.len(), 4, "{all:?}");
        // Steady: nothing recorded, the same identities.
        assert!(scrape(&mut memory, &format!("{a}{b}{c}")).is_empty());
        assert_eq!(stale_series(&memory), all);
        // A change in the middle: the prefix comes from memory, the rest from the scrape.
        assert_eq!(scrape(&mut memory, &format!("{a}{b2}{c}")).len(), 1);
        let now = stale_series(&memory);
        assert_eq!(now.len(), 5, "{now:?}");
        assert_eq!(now[..2], all[..2]);
        assert!(
            now[2].starts_with("b{y=") && now[2].contains("\"2\""),
            "{now:?}"
        );
        assert!(now[4].starts_with("c{"), "{now:?}");
        // Series gone from the end only: the table keeps the first ones.
        assert_eq!(scrape(&mut memory, a).len(), 3);
        assert_eq!(stale_series(&memory), all[..2]);
        // And from the start.
        assert_eq!(scrape(&mut memory, c).len(), 2);
        assert_eq!(stale_series(&memory), vec![all[3].clone()]);
    }

    #[test]
    fn vanished_is_what_the_last_scrape_had_and_this_one_lacks() {
        let mut memory = SeriesMemory::default();
        scrape(&mut memory, &body(&[5, 3, 9, 3, 7, 1]));
        let none: &[u32] = &[];
        for (current, gone) in [
            (vec![5, 3, 9, 3, 7, 1], none),
            (vec![1, 3, 5, 7, 9], none),
            (vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0], none),
            (vec![7, 5], &[1, 3, 9][..]),
            (vec![11, 31, 51, 71, 91], &[1, 3, 5, 7, 9][..]),
            (vec![9, 9, 1], &[3, 5, 7][..]),
            // An unchanged prefix: only what follows it can be gone, and
            // not when the prefix repeats it.
            (vec![5, 3, 9], &[1, 7][..]),
            (vec![5, 3, 9, 3], &[1, 7][..]),
            (vec![5, 3, 9, 3, 7], &[1][..]),
            (vec![5, 3, 9, 3, 7, 2], &[1][..]),
        ] {
            let next = record(&memory, &body(&current));
            let mut want: Vec<u64> = gone.iter().map(|x| hash_of(*x)).collect();
            want.sort_unstable();
            assert_eq!(memory.vanished(&next), want, "now {current:?}");
        }
        // The unchanged prefix of a family's series (one family here):
        // series before the first differing family are compared only.
        let mut memory = SeriesMemory::default();
        let two = "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n";
        scrape(&mut memory, two);
        let next = record(&memory, "# TYPE a gauge\na 1\n");
        assert_eq!(memory.vanished(&next).len(), 1);
        let next = record(
            &memory,
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\nb{y=\"1\"} 1\n",
        );
        assert!(memory.vanished(&next).is_empty());
    }

    #[test]
    fn a_steady_scrape_keeps_no_hashes_and_a_large_table_stays_small() {
        let mut memory = SeriesMemory::default();
        let xs: Vec<u32> = (0..20_000).map(|x| x % 300).collect();
        let mut big = String::new();
        for f in 0..100 {
            big.push_str(&format!("# HELP f{f} Help.\n# TYPE f{f} counter\n"));
            for x in &xs[f * 200..f * 200 + 200] {
                big.push_str(&format!(
                    "f{f}_total{{path=\"/api/{x}\",method=\"GET\",code=\"200\"}} 1\n"
                ));
            }
        }
        scrape(&mut memory, &big);
        let next = record(&memory, &big);
        assert!(next.hashes.is_empty(), "a steady scrape copies no hash");
        assert!(next.table.is_none(), "nor identities");
        let buffer = memory.remember(next);
        assert!(buffer.is_empty());
        // Three labels a series from few values: a name id (1 byte up to 127
        // names, 2 here), a count and three pair ids of 1 or 2 bytes.
        let t = &memory.table;
        assert!(t.series.len() <= 20_000 * 8, "{} bytes", t.series.len());
        assert_eq!(stale_series(&memory).len(), 20_000);
    }

    #[test]
    fn a_vanished_series_gets_one_stale_point_with_its_labels() {
        let before = "# HELP g Help.\n# TYPE g gauge\ng{s=\"a\"} 1\ng{s=\"b\"} 2\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n";
        let after = "# TYPE g gauge\ng{s=\"a\"} 1\n";
        let mut memory = SeriesMemory::default();
        scrape(&mut memory, before);
        let gone = memory.vanished(&record(&memory, after));
        assert_eq!(gone.len(), 5, "g{{s=b}} and the four histogram samples");

        let target = TargetInfo {
            job: "j".into(),
            instance: "h:1".into(),
            scheme: "http".into(),
            extra: vec![],
        };
        let mut builder = Builder::new(target.resource(&[]), 1);
        memory.emit_stale(Some(&gone), series_hash, &mut builder);
        let batches = builder.finish();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(batches[0].0.payload.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        let request = ExportMetricsServiceRequest::decode(raw.as_slice()).unwrap();
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2);
        let Some(metric::Data::Gauge(g)) = &metrics[0].data else {
            panic!("{metrics:?}")
        };
        assert_eq!(metrics[0].description, "Help.");
        assert_eq!(g.data_points.len(), 1);
        assert_eq!(g.data_points[0].attributes[0].key, "s");
        assert_eq!(
            g.data_points[0].flags,
            DataPointFlags::NoRecordedValueMask as u32
        );
        let Some(metric::Data::Histogram(h)) = &metrics[1].data else {
            panic!("{metrics:?}")
        };
        assert_eq!(
            h.data_points[0].flags,
            DataPointFlags::NoRecordedValueMask as u32
        );

        // The same set again keeps the table; an emptied memory emits nothing.
        assert!(scrape(&mut memory, before).is_empty());
        assert_eq!(
            memory.vanished(&record(&memory, after)).len(),
            5,
            "identities kept while the set is unchanged"
        );
        memory.clear();
        assert!(memory.is_empty());
    }
}
