//! A map keyed by names borrowed from the body, for per-family bookkeeping.
//!
//! Each key is hashed once, with a randomly keyed SipHash (so a hostile body
//! cannot force collisions), and the hash is kept: growing the table moves
//! hashes, it never hashes keys again. Entries with equal hashes are chained
//! and told apart by comparing keys.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

/// A hasher for keys that already are keyed hashes.
#[derive(Debug, Default)]
pub(super) struct PassThrough(u64);

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

/// A `HashMap` whose keys are already keyed hashes.
pub(super) type HashKeyed<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// No next entry in a chain.
const END: usize = usize::MAX;

#[derive(Debug)]
struct Entry<K, V> {
    key: K,
    /// Next entry with the same hash, or `END`.
    next: usize,
    value: V,
}

/// Keys → values, with entries addressed by a stable index.
#[derive(Debug)]
pub(super) struct KeyMap<K, V> {
    hasher: RandomState,
    /// Hash → first entry with that hash.
    heads: HashKeyed<usize>,
    entries: Vec<Entry<K, V>>,
}

/// A name as a key: hashed as its bytes in one write, without the terminator
/// `str` adds (keys are compared whole, so they need not be prefix-free).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Name<'a>(pub(super) &'a str);

impl Hash for Name<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// Names from the body → values.
pub(super) type NameMap<'a, V> = KeyMap<Name<'a>, V>;

impl<K, V> Default for KeyMap<K, V> {
    fn default() -> Self {
        KeyMap {
            hasher: RandomState::new(),
            heads: HashKeyed::default(),
            entries: Vec::new(),
        }
    }
}

impl<K: Hash + Eq, V> KeyMap<K, V> {
    /// A map with room for `n` keys before it grows.
    pub(super) fn with_capacity(n: usize) -> Self {
        KeyMap {
            hasher: RandomState::new(),
            heads: HashKeyed::with_capacity_and_hasher(n, BuildHasherDefault::default()),
            entries: Vec::with_capacity(n),
        }
    }

    fn find(&self, hash: u64, key: &K) -> Option<usize> {
        let mut i = *self.heads.get(&hash)?;
        while let Some(e) = self.entries.get(i) {
            if e.key == *key {
                return Some(i);
            }
            i = e.next;
        }
        None
    }

    /// The index of `key`'s entry, if it has one.
    pub(super) fn get(&self, key: &K) -> Option<usize> {
        self.find(self.hasher.hash_one(key), key)
    }

    /// The index of `key`'s entry, made with `make` if new; and whether it is new.
    pub(super) fn entry(&mut self, key: K, make: impl FnOnce() -> V) -> (usize, bool) {
        let hash = self.hasher.hash_one(&key);
        if let Some(i) = self.find(hash, &key) {
            return (i, false);
        }
        let i = self.entries.len();
        let next = self.heads.insert(hash, i).unwrap_or(END);
        self.entries.push(Entry {
            key,
            next,
            value: make(),
        });
        (i, true)
    }

    /// The value at an index from [`KeyMap::get`] or [`KeyMap::entry`].
    pub(super) fn value(&self, i: usize) -> Option<&V> {
        self.entries.get(i).map(|e| &e.value)
    }

    /// The value at an index from [`KeyMap::get`] or [`KeyMap::entry`].
    pub(super) fn value_mut(&mut self, i: usize) -> Option<&mut V> {
        self.entries.get_mut(i).map(|e| &mut e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_entries_with_equal_hashes() {
        let mut m: NameMap<'_, u32> = NameMap::default();
        assert_eq!(m.entry(Name("a"), || 1), (0, true));
        assert_eq!(m.entry(Name("b"), || 2), (1, true));
        assert_eq!(m.entry(Name("a"), || 3), (0, false));
        // Force a collision: "c" chained behind "a"'s hash.
        let hash_a = m.hasher.hash_one(Name("a"));
        m.heads.insert(hash_a, 2);
        m.entries.push(Entry {
            key: Name("c"),
            next: 0,
            value: 4,
        });
        assert_eq!(m.find(hash_a, &Name("a")), Some(0));
        assert_eq!(m.find(hash_a, &Name("c")), Some(2));
        assert_eq!(m.find(hash_a, &Name("d")), None);
        assert_eq!(m.get(&Name("b")).and_then(|i| m.value(i)), Some(&2));
        assert_eq!(m.get(&Name("zzz")), None);
    }
}
