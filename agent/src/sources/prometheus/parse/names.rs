//! A map keyed by names, for the per-family bookkeeping that outlives a window
//! of the body.
//!
//! Keys are owned (a streamed body is gone by the time a later family looks a
//! name up) and looked up by `&str`, so that only a new key allocates. Each key
//! is hashed once, with a randomly keyed SipHash (so a hostile body cannot
//! force collisions), and the hash is kept: growing the table moves hashes, it
//! never hashes keys again. Entries with equal hashes are chained and told
//! apart by comparing keys. The newest entries can be taken back
//! ([`NameMap::truncate`]), which is how a family cut off at the end of a window
//! is undone before it is parsed again in the next one.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// A hasher for keys that already are keyed hashes.
#[derive(Debug, Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A `HashMap` whose keys are already hashes (keyed, or well mixed).
pub(crate) type HashKeyed<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// No next entry in a chain.
const END: usize = usize::MAX;

#[derive(Debug)]
struct Entry<V> {
    key: Box<str>,
    /// The key's hash, for [`NameMap::truncate`].
    hash: u64,
    /// Next entry with the same hash, or `END`. Always an older entry.
    next: usize,
    value: V,
}

/// Names → values, with entries addressed by a stable index (in insertion
/// order).
#[derive(Debug)]
pub(super) struct NameMap<V> {
    hasher: RandomState,
    /// Hash → newest entry with that hash.
    heads: HashKeyed<usize>,
    entries: Vec<Entry<V>>,
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap {
            hasher: RandomState::new(),
            heads: HashKeyed::default(),
            entries: Vec::new(),
        }
    }
}

impl<V> NameMap<V> {
    /// A map with room for `n` keys before it grows.
    pub(super) fn with_capacity(n: usize) -> Self {
        NameMap {
            hasher: RandomState::new(),
            heads: HashKeyed::with_capacity_and_hasher(n, BuildHasherDefault::default()),
            entries: Vec::with_capacity(n),
        }
    }

    /// The name's hash: its bytes in one write, without the terminator `str`
    /// adds (keys are compared whole, so they need not be prefix-free).
    fn hash(&self, key: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key.as_bytes());
        h.finish()
    }

    fn find(&self, hash: u64, key: &str) -> Option<usize> {
        let mut i = *self.heads.get(&hash)?;
        while let Some(e) = self.entries.get(i) {
            if *e.key == *key {
                return Some(i);
            }
            i = e.next;
        }
        None
    }

    /// The index of `key`'s entry, if it has one.
    pub(super) fn get(&self, key: &str) -> Option<usize> {
        self.find(self.hash(key), key)
    }

    /// The index of `key`'s entry, made with `make` if new; and whether it is new.
    pub(super) fn entry(&mut self, key: &str, make: impl FnOnce() -> V) -> (usize, bool) {
        let hash = self.hash(key);
        if let Some(i) = self.find(hash, key) {
            return (i, false);
        }
        let i = self.entries.len();
        let next = self.heads.insert(hash, i).unwrap_or(END);
        self.entries.push(Entry {
            key: key.into(),
            hash,
            next,
            value: make(),
        });
        (i, true)
    }

    /// The value at an index from [`NameMap::get`] or [`NameMap::entry`].
    pub(super) fn value(&self, i: usize) -> Option<&V> {
        self.entries.get(i).map(|e| &e.value)
    }

    /// The value at an index from [`NameMap::get`] or [`NameMap::entry`].
    pub(super) fn value_mut(&mut self, i: usize) -> Option<&mut V> {
        self.entries.get_mut(i).map(|e| &mut e.value)
    }

    /// The number of entries.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Removes the entries made after the first `len`, newest first, as if
    /// they had never been made.
    pub(super) fn truncate(&mut self, len: usize) {
        while self.entries.len() > len {
            let Some(e) = self.entries.pop() else {
                break;
            };
            // The newest entry heads its chain: it was inserted last.
            if e.next == END {
                self.heads.remove(&e.hash);
            } else {
                self.heads.insert(e.hash, e.next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_entries_with_equal_hashes() {
        let mut m: NameMap<u32> = NameMap::default();
        assert_eq!(m.entry("a", || 1), (0, true));
        assert_eq!(m.entry("b", || 2), (1, true));
        assert_eq!(m.entry("a", || 3), (0, false));
        // Force a collision: "c" chained behind "a"'s hash.
        let hash_a = m.hash("a");
        m.heads.insert(hash_a, 2);
        m.entries.push(Entry {
            key: "c".into(),
            hash: hash_a,
            next: 0,
            value: 4,
        });
        assert_eq!(m.find(hash_a, "a"), Some(0));
        assert_eq!(m.find(hash_a, "c"), Some(2));
        assert_eq!(m.find(hash_a, "d"), None);
        assert_eq!(m.get("b").and_then(|i| m.value(i)), Some(&2));
        assert_eq!(m.get("zzz"), None);
    }

    #[test]
    fn truncate_forgets_the_newest_entries() {
        let mut m: NameMap<u32> = NameMap::default();
        m.entry("a", || 1);
        m.entry("b", || 2);
        // "c" collides with "a" and is chained in front of it.
        let hash_a = m.hash("a");
        m.heads.insert(hash_a, 2);
        m.entries.push(Entry {
            key: "c".into(),
            hash: hash_a,
            next: 0,
            value: 3,
        });
        m.entry("d", || 4);
        m.truncate(2);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a"), Some(0));
        assert_eq!(m.get("b"), Some(1));
        assert_eq!(m.get("d"), None);
        assert_eq!(m.heads.get(&hash_a), Some(&0));
        assert_eq!(m.entry("d", || 5), (2, true));
        m.truncate(0);
        assert!(m.heads.is_empty());
        assert_eq!(m.get("a"), None);
    }
}
