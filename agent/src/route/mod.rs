//! Routing: which gateway a routing key goes to, by rendezvous (highest
//! random weight) hashing over the current gateway set, and the [`split`] of
//! a batch into one part per gateway.
//!
//! Sources use it before the queue, because the queue's lanes are per
//! gateway; the exporter uses it to re-split the lanes of a gateway that left
//! or failed over.
//!
//! Every gateway is scored for a key by `mix(key ^ hash(gateway))`, and the key
//! goes to the highest score among the gateways that are up. So when a gateway
//! joins or leaves, only the keys it wins or won move (about 1/N), and when a
//! gateway has failed over, its keys go to each key's next gateway in hash
//! order, spread over all the others. The hash is FNV-1a with a fixed
//! finalizer, written here, so that every agent on every machine and after
//! every restart sends a key to the same gateway. Rendezvous was chosen over a
//! ring with virtual nodes by measurement (`benches/balance.rs`): it balances
//! within the binomial noise of the keys themselves and needs no tables.
//!
//! The set lives behind [`Routes`], an `Arc` swapped under a lock: routing
//! reads it in a few nanoseconds and never waits on a resolver or a sender.

pub mod split;

use std::sync::{Arc, RwLock};

use crate::config::{Routing, RoutingKey};
use crate::queue::Signal;

/// FNV-1a, 64 bits, over `bytes`, continuing from `state` (start with [`SEED`]).
pub fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        state ^= u64::from(*b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// The FNV-1a offset basis: the start of every key hash.
pub const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// The murmur3 64-bit finalizer: spreads every input bit over the output, so
/// that scores of similar keys and gateways are unrelated.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The hash of a key's bytes, as routing uses it.
pub fn key_hash(bytes: &[u8]) -> u64 {
    mix(fnv1a(SEED, bytes))
}

/// One gateway of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The gateway's base URL; also its queue lane destination.
    pub destination: String,
    /// `key_hash` of the destination, its identity for the scores.
    hash: u64,
    /// Failed over: its keys go to the next gateway until it answers again.
    pub down: bool,
}

impl Member {
    /// A gateway that is up.
    pub fn new(destination: &str) -> Member {
        Member {
            destination: destination.to_string(),
            hash: key_hash(destination.as_bytes()),
            down: false,
        }
    }
}

/// One immutable routing table: the gateway set and the key of each signal.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// The gateways, in configured or resolved order.
    pub members: Vec<Member>,
    /// The routing key of each signal.
    pub routing: Routing,
}

impl Table {
    /// A table of `destinations`, all up.
    pub fn new(destinations: &[String], routing: Routing) -> Table {
        Table {
            members: destinations.iter().map(|d| Member::new(d)).collect(),
            routing,
        }
    }

    /// The routing key of `signal`.
    pub fn key_of(&self, signal: Signal) -> RoutingKey {
        match signal {
            Signal::Metrics => self.routing.metrics,
            Signal::Logs => self.routing.logs,
            Signal::Traces => self.routing.traces,
        }
    }

    /// Index of the gateway for key hash `key`: the highest score among the
    /// gateways that are up, or among all of them when none is. `None` only
    /// for an empty set.
    pub fn pick(&self, key: u64) -> Option<usize> {
        let best = |up_only: bool| {
            self.members
                .iter()
                .enumerate()
                .filter(|(_, m)| !up_only || !m.down)
                .max_by_key(|(_, m)| mix(key ^ m.hash))
                .map(|(i, _)| i)
        };
        best(true).or_else(|| best(false))
    }

    /// The number of gateways that are up.
    pub fn up(&self) -> usize {
        self.members.iter().filter(|m| !m.down).count()
    }

    /// Whether `destination` is in the set.
    pub fn contains(&self, destination: &str) -> bool {
        self.members.iter().any(|m| m.destination == destination)
    }
}

/// The shared, swappable routing table: the sink routes with it, the exporter
/// changes it when the gateway set changes or a gateway fails over.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    table: Arc<RwLock<Arc<Table>>>,
}

impl Routes {
    /// The current table; cheap (one `Arc` clone under a read lock).
    pub fn current(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            // A panic while swapping leaves a whole table behind: still usable.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the table.
    pub fn set(&self, table: Table) {
        let table = Arc::new(table);
        match self.table.write() {
            Ok(mut t) => *t = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }

    /// Marks `destination` down (failed over) or up again. Returns false when
    /// nothing changed, or when marking it down would leave no gateway up.
    pub fn set_down(&self, destination: &str, down: bool) -> bool {
        let mut guard = match self.table.write() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut table = (**guard).clone();
        let Some(member) = table
            .members
            .iter_mut()
            .find(|m| m.destination == destination)
        else {
            return false;
        };
        if member.down == down {
            return false;
        }
        member.down = down;
        if down && table.up() == 0 {
            return false;
        }
        *guard = Arc::new(table);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> Table {
        let d: Vec<String> = (0..n).map(|i| format!("http://10.0.0.{i}:4318")).collect();
        Table::new(&d, Routing::default())
    }

    #[test]
    fn hash_is_fixed() {
        // Changing these breaks the promise that every agent, on every machine
        // and version, sends a key to the same gateway.
        assert_eq!(fnv1a(SEED, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(SEED, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key_hash(b"a"), mix(0xaf63_dc4c_8601_ec8c));
        let t = table(3);
        let picks: Vec<usize> = (0..8u64)
            .filter_map(|k| t.pick(key_hash(&k.to_be_bytes())))
            .collect();
        assert_eq!(picks.len(), 8);
    }

    #[test]
    fn balances_and_moves_one_nth() {
        let keys: Vec<u64> = (0..30_000u64).map(|k| key_hash(&k.to_le_bytes())).collect();
        let t3 = table(3);
        let mut counts = [0usize; 3];
        for k in &keys {
            counts[t3.pick(*k).unwrap()] += 1;
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 500.0, "{counts:?}");
        }
        // Removing gateway 2 moves exactly its keys.
        let t2 = table(2);
        let moved = keys.iter().filter(|k| t3.pick(**k) != t2.pick(**k)).count();
        assert_eq!(moved, counts[2]);
    }

    #[test]
    fn down_gateway_keys_go_to_their_next() {
        let routes = Routes::default();
        routes.set(table(3));
        let before = routes.current();
        assert!(routes.set_down("http://10.0.0.1:4318", true));
        let after = routes.current();
        for k in 0..1000u64 {
            let k = key_hash(&k.to_le_bytes());
            let (b, a) = (before.pick(k).unwrap(), after.pick(k).unwrap());
            assert_ne!(a, 1);
            if b != 1 {
                assert_eq!(a, b);
            }
        }
        // The last gateway up cannot fail over.
        assert!(routes.set_down("http://10.0.0.0:4318", true));
        assert!(!routes.set_down("http://10.0.0.2:4318", true));
        assert!(routes.set_down("http://10.0.0.1:4318", false));
    }
}
