//! The memory tier of memory-first queueing ([`Options::memory_size`]): batches
//! held in memory while the exporter keeps up, and spilled to disk, oldest
//! first, when it falls behind by more than `memory_size`.
//!
//! A held batch has its sequence number and counts like a batch on disk; only
//! its payload and index record are not written. Spilling writes
//! both, exactly as a push in disk mode would, so recovery needs nothing new.
//! A held batch that is acked costs no write at all. Batches that carry a
//! source's checkpoint are never held (see `Queue::push_with_policy`).
//!
//! [`Options::memory_size`]: super::Options::memory_size

use std::time::SystemTime;

use super::batch::Batch;
use super::error::QueueError;
use super::format::IndexRecord;
use super::lane::{BatchId, Lane};
use super::store::{created, lane_id, len_u64, Inner, State};

/// A batch in memory, not yet on disk.
pub(super) struct Held {
    pub(super) seq: u64,
    pub(super) created_ms: u64,
    pub(super) items: u64,
    pub(super) payload: Vec<u8>,
}

impl Held {
    pub(super) fn len(&self) -> u64 {
        len_u64(&self.payload)
    }

    /// Its counts, as an index record that names no segment.
    pub(super) fn record(&self) -> IndexRecord {
        IndexRecord {
            created_ms: self.created_ms,
            items: self.items,
            len: self.len(),
            segment: 0,
            offset: 0,
        }
    }

    pub(super) fn created(&self) -> SystemTime {
        created(self.record())
    }

    pub(super) fn to_batch(&self, lane: &Lane, lane_idx: usize) -> Batch {
        Batch {
            id: BatchId {
                lane: lane_id(lane_idx),
                seq: self.seq,
            },
            lane: lane.clone(),
            payload: self.payload.clone(),
            items: self.items,
            created: self.created(),
        }
    }
}

impl State {
    /// Keeps `held` in memory in lane `idx`; its sequence number must be the
    /// newest of the lane.
    pub(super) fn hold(&mut self, idx: usize, held: Held) {
        self.held_bytes = self.held_bytes.saturating_add(held.len());
        self.count(idx, held.record());
        self.lane_mut(idx).held.push_back(held);
    }

    /// Takes batch `seq` out of lane `idx`'s memory, if it is held there.
    pub(super) fn take_held(&mut self, idx: usize, seq: u64) -> Option<Held> {
        let lane = self.lane_mut(idx);
        let at = lane.held.binary_search_by_key(&seq, |h| h.seq).ok()?;
        let held = lane.held.remove(at)?;
        self.held_bytes = self.held_bytes.saturating_sub(held.len());
        self.forget(idx, held.record());
        Some(held)
    }
}

impl Inner {
    /// Writes held batches to disk, the oldest of all lanes first, until at
    /// most `keep` bytes stay in memory.
    ///
    /// # Errors
    ///
    /// As a push's write; the batch that failed stays in memory.
    pub(super) fn spill_until(&self, state: &mut State, keep: u64) -> Result<(), QueueError> {
        while state.held_bytes > keep {
            let oldest = state
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(idx, lane)| lane.held.front().map(|h| (idx, h.seq)))
                .min_by_key(|&(_, seq)| seq);
            let Some((idx, _)) = oldest else { break };
            self.spill_front(state, idx)?;
        }
        Ok(())
    }

    /// Writes every batch lane `idx` holds in memory to disk, before its
    /// batches move to another lane.
    pub(super) fn spill_lane(&self, state: &mut State, idx: usize) -> Result<(), QueueError> {
        while !state.lane(idx).held.is_empty() {
            self.spill_front(state, idx)?;
        }
        Ok(())
    }

    fn spill_front(&self, state: &mut State, idx: usize) -> Result<(), QueueError> {
        let Some(held) = state.lane_mut(idx).held.pop_front() else {
            return Ok(());
        };
        let written = self.write_batch(
            state,
            idx,
            held.seq,
            &held.payload,
            (held.items, held.created_ms),
            None,
        );
        match written {
            Ok(record) => {
                state.held_bytes = state.held_bytes.saturating_sub(record.len);
                state.note_head(idx, held.seq, record);
                let lane = state.lane_mut(idx);
                lane.spills = lane.spills.wrapping_add(1);
                Ok(())
            }
            Err(err) => {
                state.lane_mut(idx).held.push_front(held);
                Err(err)
            }
        }
    }
}
