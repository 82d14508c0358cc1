//! Backlog figures for `/metrics` and `tern queue`, kept in memory.

use std::time::{Duration, SystemTime};

use super::lane::{Lane, Signal};

/// How much is waiting: in one lane, one signal, or the whole queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Batches stored.
    pub batches: u64,
    /// Payload bytes stored.
    pub bytes: u64,
    /// Data points, log records or spans stored.
    pub items: u64,
    /// Creation time of the oldest batch; `None` when empty.
    pub oldest_created: Option<SystemTime>,
}

impl Backlog {
    /// Age of the oldest batch at `now`; zero if the clock went backwards since
    /// it was made, `None` when empty.
    ///
    /// Devices without a real-time clock may have made batches before NTP set
    /// the time; those look decades old.
    pub fn oldest_age(&self, now: SystemTime) -> Option<Duration> {
        self.oldest_created
            .map(|created| now.duration_since(created).unwrap_or_default())
    }

    /// Adds `other` to this backlog, keeping the older of the two oldest batches.
    pub fn add(&mut self, other: &Backlog) {
        self.batches = self.batches.saturating_add(other.batches);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.items = self.items.saturating_add(other.items);
        self.oldest_created = match (self.oldest_created, other.oldest_created) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The backlog of one lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneStats {
    /// The lane.
    pub lane: Lane,
    /// What waits in it.
    pub backlog: Backlog,
}

/// A snapshot of the queue's backlog, from [`Queue::stats`](super::Queue::stats)
/// (cheap: no disk access) or [`Queue::inspect`](super::Queue::inspect).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every lane this queue has seen, empty ones included, in no set order.
    pub lanes: Vec<LaneStats>,
    /// Payload bytes of the batches held in memory, included in the lanes'
    /// backlog (memory first; always 0 in disk mode).
    pub memory_bytes: u64,
    /// Payload bytes written to the queue's segment files since it was
    /// opened: every push in disk mode, only spills in memory first.
    pub written_bytes: u64,
}

impl Stats {
    /// The backlog of the whole queue.
    pub fn total(&self) -> Backlog {
        let mut total = Backlog::default();
        for lane in &self.lanes {
            total.add(&lane.backlog);
        }
        total
    }

    /// The backlog of one signal, over all its destinations.
    pub fn signal(&self, signal: Signal) -> Backlog {
        let mut total = Backlog::default();
        for lane in self.lanes.iter().filter(|l| l.lane.signal() == signal) {
            total.add(&lane.backlog);
        }
        total
    }
}
