//! Staleness: what the last good scrape of a target exposed, kept compactly,
//! so that a series that disappears gets one point with the NoRecordedValue
//! flag, and every series does when a scrape fails.
//!
//! Keeping the previous body would double a large target's memory (12 MB for
//! 100k series), so [`SeriesMemory`] keeps the series' identities instead:
//! interned strings and label pairs and small index records, about 16 bytes
//! plus 4 per label for each series. The
//! set of series rarely changes between scrapes, and exporters write it in the
//! same order every time, so a steady target costs one comparison of its
//! hashes in exposition order; only when they differ are they sorted to find
//! what vanished, and the identities rebuilt.

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
    families: Vec<FamilyRecord>,
    /// Invariant: each record's `labels` range lies within `labels`.
    series: Vec<SeriesRecord>,
    /// Every distinct label (name, value) pair; exporters repeat them a lot.
    pairs: Vec<(StrRef, StrRef)>,
    /// The labels of all series, as indexes into `pairs`: 4 bytes a label.
    labels: Vec<u32>,
}

/// A string in [`Table::text`]: offset and length.
type StrRef = (u32, u32);

#[derive(Debug)]
struct FamilyRecord {
    name: StrRef,
    kind: MetricType,
    help: Option<StrRef>,
    unit: Option<StrRef>,
    /// Its series: a range of [`Table::series`].
    series: (u32, u32),
}

#[derive(Debug)]
struct SeriesRecord {
    name: StrRef,
    /// A range of [`Table::labels`].
    labels: (u32, u32),
}

impl SeriesMemory {
    /// Whether nothing is remembered (no good scrape yet, or one failed since).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Hashes remembered but missing from `current` (a scrape's hashes in
    /// exposition order): the series that vanished, sorted and deduplicated.
    pub fn vanished(&self, current: &[u64]) -> Vec<u64> {
        if same_words(&self.hashes, current) {
            return Vec::new();
        }
        let sorted = |h: &[u64]| {
            let mut h = h.to_vec();
            h.sort_unstable();
            h.dedup();
            h
        };
        let (before, now) = (sorted(&self.hashes), sorted(current));
        // Both sorted: one walk instead of a search per series.
        let mut now = now.iter().peekable();
        let mut gone = Vec::new();
        for h in before {
            while now.next_if(|n| **n < h).is_some() {}
            if now.peek() != Some(&&h) {
                gone.push(h);
            }
        }
        gone
    }

    /// Notes one family of a scrape as it goes by. `hashes` are the
    /// scrape's series hashes so far, this family's last, and `first` the
    /// index of this family's first one. While the scrape repeats the
    /// remembered series in the same order (a steady target), nothing is
    /// copied; from the first family that differs, `next` records the new
    /// identities, starting with the remembered ones before it.
    pub fn record(&self, next: &mut Recording, family: &Family<'_>, hashes: &[u64], first: usize) {
        if next.table.is_none() {
            let end = hashes.len();
            let same = self
                .hashes
                .get(first..end)
                .zip(hashes.get(first..end))
                .is_some_and(|(was, now)| same_words(was, now));
            if same {
                return;
            }
            next.table = Some(TableBuilder::with_prefix(&self.table, first));
        }
        if let Some(table) = &mut next.table {
            table.family(family);
        }
    }

    /// Remembers the series of a good scrape: `hashes` (in exposition
    /// order) and the identities `next` recorded. `hashes` gets the previous
    /// scrape's vector back, for the caller to fill next time.
    pub fn remember(&mut self, hashes: &mut Vec<u64>, next: Recording) {
        match next.table {
            Some(table) => self.table = table.finish(),
            // The same series as before, or the first ones of them.
            None if hashes.len() != self.hashes.len() => {
                self.table = TableBuilder::with_prefix(&self.table, hashes.len()).finish();
            }
            None => {}
        }
        std::mem::swap(&mut self.hashes, hashes);
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
                .iter()
                .map(|s| Sample {
                    name: t.str(s.name),
                    labels: t
                        .labels_of(s)
                        .iter()
                        .filter_map(|i| t.pairs.get(*i as usize))
                        .map(|(n, v)| Label {
                            name: t.str(*n),
                            value: Cow::Borrowed(t.str(*v)),
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

/// The identities of a scrape's series, recorded by [`SeriesMemory::record`]
/// from the first family that differs from what is remembered.
#[derive(Debug, Default)]
pub struct Recording {
    table: Option<TableBuilder>,
}

/// A [`Table`] being filled, with its interning maps.
#[derive(Debug, Default)]
struct TableBuilder {
    table: Table,
    interned: HashMap<String, StrRef>,
    pair_ids: HashMap<(StrRef, StrRef), u32>,
}

impl TableBuilder {
    /// A table holding the first `n` series of `old` (and their families).
    fn with_prefix(old: &Table, n: usize) -> TableBuilder {
        let mut b = TableBuilder::default();
        let n = to_u32(n);
        for f in &old.families {
            let (start, end) = (f.series.0, f.series.1.min(n));
            if start >= end {
                break;
            }
            let first = to_u32(b.table.series.len());
            for s in old.series.get(start as usize..end as usize).unwrap_or(&[]) {
                let labels = old
                    .labels_of(s)
                    .iter()
                    .filter_map(|i| old.pairs.get(*i as usize))
                    .map(|(n, v)| (old.str(*n), old.str(*v)));
                b.series(old.str(s.name), labels);
            }
            let record = FamilyRecord {
                name: b.intern(old.str(f.name)),
                kind: f.kind,
                help: f.help.map(|h| b.intern(old.str(h))),
                unit: f.unit.map(|u| b.intern(old.str(u))),
                series: (first, to_u32(b.table.series.len())),
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

    fn series<'s>(&mut self, name: &str, labels: impl Iterator<Item = (&'s str, &'s str)>) {
        let start = to_u32(self.table.labels.len());
        for (n, v) in labels {
            let pair = (self.intern(n), self.intern(v));
            let next = to_u32(self.table.pairs.len());
            let id = *self.pair_ids.entry(pair).or_insert(next);
            if id == next {
                self.table.pairs.push(pair);
            }
            self.table.labels.push(id);
        }
        let name = self.intern(name);
        self.table.series.push(SeriesRecord {
            name,
            labels: (start, to_u32(self.table.labels.len())),
        });
    }

    fn family(&mut self, family: &Family<'_>) {
        let first = to_u32(self.table.series.len());
        for s in &family.samples {
            self.series(s.name, s.labels.iter().map(|l| (l.name, l.value.as_ref())));
        }
        let record = FamilyRecord {
            name: self.intern(family.name),
            kind: family.kind,
            help: family.help.as_deref().map(|h| self.intern(h)),
            unit: family.unit.map(|u| self.intern(u)),
            series: (first, to_u32(self.table.series.len())),
        };
        self.table.families.push(record);
    }

    fn finish(self) -> Table {
        let mut t = self.table;
        t.text.shrink_to_fit();
        t.families.shrink_to_fit();
        t.series.shrink_to_fit();
        t.labels.shrink_to_fit();
        t.pairs.shrink_to_fit();
        t
    }
}

impl Table {
    fn str(&self, (offset, len): StrRef) -> &str {
        let start = offset as usize;
        self.text.get(start..start + len as usize).unwrap_or("")
    }

    fn series_of(&self, f: &FamilyRecord) -> &[SeriesRecord] {
        self.series
            .get(f.series.0 as usize..f.series.1 as usize)
            .unwrap_or(&[])
    }

    fn labels_of(&self, s: &SeriesRecord) -> &[u32] {
        self.labels
            .get(s.labels.0 as usize..s.labels.1 as usize)
            .unwrap_or(&[])
    }
}

/// `a == b`, without the call to `memcmp` that slice equality becomes: musl's
/// compares a byte at a time, and this runs on every scrape over 8 bytes a series.
fn same_words(a: &[u64], b: &[u64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Offsets into one scrape's tables; a body is at most `body_size_limit`,
/// far below 4 GiB, so this saturates only on a broken invariant.
fn to_u32(n: usize) -> u32 {
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

    /// A body's series hashes in exposition order, as the scraper makes them.
    fn hashes(body: &str) -> Vec<u64> {
        Parser::new(body.as_bytes(), Format::PrometheusText, &Limits::default())
            .flatten()
            .flat_map(|f| f.samples.iter().map(series_hash).collect::<Vec<_>>())
            .collect()
    }

    /// A good scrape of `body` as the scraper does it: record each family as
    /// it goes by, then remember. Gives what vanished since the last one.
    fn scrape(memory: &mut SeriesMemory, body: &str) -> Vec<u64> {
        let mut hashes = Vec::new();
        let mut next = Recording::default();
        for family in Parser::new(body.as_bytes(), Format::PrometheusText, &Limits::default()) {
            let family = family.unwrap();
            let first = hashes.len();
            hashes.extend(family.samples.iter().map(series_hash));
            memory.record(&mut next, &family, &hashes, first);
        }
        let gone = memory.vanished(&hashes);
        memory.remember(&mut hashes, next);
        gone
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
            flate2::read::GzDecoder::new(batch.gzip.as_slice())
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
        memory.remember(&mut vec![50, 30, 90, 30, 70, 10], Recording::default());
        let none: &[u64] = &[];
        for (current, gone) in [
            (vec![50, 30, 90, 30, 70, 10], none),
            (vec![10, 30, 50, 70, 90], none),
            (vec![90, 80, 70, 60, 50, 40, 30, 20, 10, 0], none),
            (vec![70, 50], &[10, 30, 90][..]),
            (vec![11, 31, 51, 71, 91], &[10, 30, 50, 70, 90][..]),
            (vec![], &[10, 30, 50, 70, 90][..]),
            (vec![90, 90, 10], &[30, 50, 70][..]),
        ] {
            assert_eq!(memory.vanished(&current), gone, "now {current:?}");
        }
    }

    #[test]
    fn a_vanished_series_gets_one_stale_point_with_its_labels() {
        let before = "# HELP g Help.\n# TYPE g gauge\ng{s=\"a\"} 1\ng{s=\"b\"} 2\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n";
        let after = "# TYPE g gauge\ng{s=\"a\"} 1\n";
        let mut memory = SeriesMemory::default();
        scrape(&mut memory, before);
        let gone = memory.vanished(&hashes(after));
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
        flate2::read::GzDecoder::new(batches[0].0.gzip.as_slice())
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
            memory.vanished(&hashes(after)).len(),
            5,
            "identities kept while the set is unchanged"
        );
        memory.clear();
        assert!(memory.is_empty());
    }
}
