//! The write path: [`Queue::push`] and its size policy (evicting the oldest
//! batches, or refusing the new one), checkpoints written in the same sled
//! transaction as their batch, and checkpoints written alone.

use super::batch::{Checkpoint, DropReason, Dropped, NewBatch, Pushed};
use super::error::QueueError;
use super::format::{self, checkpoint_key, index_key, IndexRecord, MAX_SOURCE_LEN};
use super::lane::{BatchId, Lane};
use super::memory::Held;
use super::options::FullPolicy;
use super::reader::next_head;
use super::segments;
use super::space::is_disk_full;
use super::store::{lane_id, len_u64, millis, Head, Inner, Latest, Queue, State};

impl Queue {
    /// Stores a batch in `lane` under the configured [`Options::full_policy`].
    ///
    /// With [`Options::fsync`] on, returns once the batch and its checkpoint are
    /// on disk; under [`Options::memory_size`] (memory first), a batch without
    /// a checkpoint may be held in memory instead. Either both the batch and
    /// its checkpoint are stored, or neither: they are one sled record.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidLane`] or [`QueueError::InvalidCheckpoint`] for
    /// over-long names, [`QueueError::Storage`] if a write fails (after a
    /// failed flush the batch may still be stored).
    pub fn push(&self, lane: &Lane, batch: NewBatch<'_>) -> Result<Pushed, QueueError> {
        self.push_with_policy(lane, batch, self.inner.options.full_policy)
    }

    /// The configured [`Options::full_policy`], for callers that route one
    /// batch into several pushes.
    pub fn full_policy(&self) -> FullPolicy {
        self.inner.options.full_policy
    }

    /// Stores a batch in `lane`, handling a full queue with `policy` instead of
    /// the configured one; the OTLP receiver passes [`FullPolicy::Reject`].
    ///
    /// # Errors
    ///
    /// As [`Queue::push`], plus [`QueueError::Full`] and
    /// [`QueueError::TooLarge`] under [`FullPolicy::Reject`].
    pub fn push_with_policy(
        &self,
        lane: &Lane,
        batch: NewBatch<'_>,
        policy: FullPolicy,
    ) -> Result<Pushed, QueueError> {
        let inner = &*self.inner;
        let len = len_u64(batch.payload);
        let checkpoint = batch
            .checkpoint
            .map(|Checkpoint { source, value }| (source, value));
        if let Some((source, _)) = checkpoint {
            if source.len() > MAX_SOURCE_LEN {
                return Err(QueueError::InvalidCheckpoint { len: source.len() });
            }
        }
        let mut state = inner.lock();
        let lane_idx = state.lane_index(lane)?;
        // The configured size, or less when the filesystem has less room.
        let (max_size, reason) = state.limit(inner.options.max_size);
        let free = max_size.saturating_sub(state.bytes);
        let mut evict = false;
        let store = if len <= free {
            true
        } else {
            match policy {
                FullPolicy::Reject if len > max_size => {
                    return Err(QueueError::TooLarge {
                        bytes: len,
                        max_size,
                    })
                }
                FullPolicy::Reject => return Err(QueueError::Full { bytes: len, free }),
                FullPolicy::DropNewest => false,
                // A batch larger than the whole queue would empty it and still
                // not fit: refuse it alone.
                FullPolicy::DropOldest if len > max_size => false,
                FullPolicy::DropOldest => {
                    evict = true;
                    true
                }
            }
        };

        let mut dropped = Vec::new();
        let seq = state.next_seq;
        if store {
            // Memory first holds a batch unless it is larger than the whole
            // of memory, or carries a source's position: a checkpoint on disk
            // must never be ahead of batches that only memory held, or a
            // power cut would skip them at the source (journal entries).
            let memory = inner.options.memory_size;
            let hold = memory.filter(|&memory| len <= memory && checkpoint.is_none());
            // Every write that can fail comes before the first eviction, so
            // that a failed push drops nothing. (When max_size leaves no room
            // beyond memory_size, a batch may go to disk only to be evicted.)
            if let Some(memory) = hold {
                // Room in memory: the oldest held batches go to disk.
                inner.spill_until(&mut state, memory - len)?;
            } else if memory.is_some() {
                // The lane's held batches go to disk before it, as lanes read
                // the disk first.
                inner.spill_lane(&mut state, lane_idx)?;
            }
            let victims = if evict {
                state.plan_eviction(inner, len - free)?
            } else {
                Vec::new()
            };
            let created_ms = millis(batch.created);
            match hold {
                Some(_) => state.hold(
                    lane_idx,
                    Held {
                        seq,
                        created_ms,
                        items: batch.items,
                        payload: batch.payload.to_vec(),
                    },
                ),
                None => {
                    let record = inner.write_batch(
                        &mut state,
                        lane_idx,
                        seq,
                        batch.payload,
                        (batch.items, created_ms),
                        checkpoint,
                    )?;
                    state.remember(lane_idx, seq, record);
                }
            }
            state.next_seq = seq + 1;
            if let Some((source, value)) = checkpoint {
                state.note_checkpoint(source, seq, value, false);
            }
            // Evicting after the new batch is stored: a failure here leaves the
            // queue over its size until the next push, and never loses more
            // than the policy chose.
            if let Err(err) = inner.evict(&mut state, &victims, reason, &mut dropped) {
                log::error!("Could not make room in the disk queue error={err}");
            }
        } else {
            if let Some((source, value)) = checkpoint {
                // The source has dealt with its data, by policy: it must not
                // read it again after a restart.
                inner.store_checkpoint(&mut state, source, value)?;
            }
            dropped.push(Dropped {
                id: None,
                lane: Some(lane.clone()),
                items: batch.items,
                bytes: len,
                reason,
            });
        }
        let dead = state.segments.take_dead();
        drop(state);

        // A stored batch is on disk once its segment is synced; a checkpoint
        // stored alone is on disk once sled is.
        let flushed = !store && checkpoint.is_some() && inner.options.fsync;
        if flushed {
            inner.flush()?;
        }
        if store {
            inner.pushed.notify(usize::MAX);
        }
        inner.delete_segments(dead, flushed);
        let id = store.then_some(BatchId {
            lane: lane_id(lane_idx),
            seq,
        });
        Ok(Pushed { id, dropped })
    }

    /// The newest checkpoint stored for `source`, if any: the one written with
    /// the newest batch that carried one, or by [`Queue::set_checkpoint`].
    /// From memory.
    ///
    /// # Errors
    ///
    /// None today; kept so that a store that reads from disk can report one.
    pub fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self
            .inner
            .lock()
            .checkpoints
            .get(source)
            .map(|latest| latest.value.clone()))
    }

    /// Stores a checkpoint without a batch: for a source whose input produced
    /// nothing to send (every journal entry filtered out, say). Flushed like a
    /// push when [`Options::fsync`] is on.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidCheckpoint`] for an over-long source name,
    /// [`QueueError::Storage`] if the write or the flush fails.
    pub fn set_checkpoint(&self, source: &str, value: &[u8]) -> Result<(), QueueError> {
        if source.len() > MAX_SOURCE_LEN {
            return Err(QueueError::InvalidCheckpoint { len: source.len() });
        }
        let inner = &*self.inner;
        inner.store_checkpoint(&mut inner.lock(), source, value)?;
        if inner.options.fsync {
            inner.flush()?;
        }
        Ok(())
    }
}

impl Inner {
    /// Writes a checkpoint that no batch carries, under a sequence number of
    /// its own so that it orders after every batch pushed before it.
    pub(super) fn store_checkpoint(
        &self,
        state: &mut State,
        source: &str,
        value: &[u8],
    ) -> Result<(), QueueError> {
        let seq = state.next_seq;
        let stored = format::encode_checkpoint_value(seq, value);
        self.db
            .insert(checkpoint_key(source), stored)
            .map_err(|e| self.sled_err(e))?;
        state.next_seq = seq + 1;
        state.note_checkpoint(source, seq, value, true);
        Ok(())
    }

    /// Writes a batch's payload and index record (with its checkpoint) to
    /// disk, the payload first: the index record is what makes the batch
    /// exist, so it must never point at bytes not yet written. Leaves the
    /// counts to the caller.
    pub(super) fn write_batch(
        &self,
        state: &mut State,
        lane_idx: usize,
        seq: u64,
        payload: &[u8],
        (items, created_ms): (u64, u64),
        checkpoint: Option<(&str, &[u8])>,
    ) -> Result<IndexRecord, QueueError> {
        let (fsync, interval) = (self.options.fsync, self.options.flush_interval);
        let len = len_u64(payload);
        let prefix = state.lane(lane_idx).prefix.clone();
        let key = index_key(&prefix, seq);
        let make_record = |at: segments::Appended| IndexRecord {
            created_ms,
            items,
            len,
            segment: at.segment,
            offset: at.offset,
        };
        let index_value = |at| make_record(at).encode(checkpoint);
        let appended = state.segments.append(
            &self.data,
            lane_idx,
            seq,
            payload,
            (&prefix, index_value),
            fsync,
            interval,
        );
        let (appended, value) = match appended {
            Ok(appended) => appended,
            Err(source) => {
                if is_disk_full(&source) {
                    if let Some(space) = state.space.as_mut() {
                        space.release_reserve();
                    }
                }
                return Err(self.data_err(source));
            }
        };
        let record = make_record(appended);
        // One key holds the batch and its checkpoint: sled writes a key
        // atomically, without the forced writes of its multi-key batches.
        // Not flushed here: the segment record, synced, carries the same
        // value, and `open` indexes it again if this write is lost.
        if let Err(err) = self.db.insert(key, value) {
            state.segments.abandon(&self.data, lane_idx);
            return Err(self.sled_err(err));
        }
        state.segments.reference(&record);
        state.written_bytes = state.written_bytes.saturating_add(len);
        Ok(record)
    }

    /// Deletes the batches chosen by [`State::plan_eviction`], reporting each.
    pub(super) fn evict(
        &self,
        state: &mut State,
        victims: &[(usize, Head)],
        reason: DropReason,
        dropped: &mut Vec<Dropped>,
    ) -> Result<(), QueueError> {
        for &(idx, head) in victims {
            // A held batch leaves memory without a write.
            let on_disk = state.take_held(idx, head.seq).is_none();
            if on_disk {
                self.before_remove(state, head.seq)?;
                let key = index_key(&state.lane(idx).prefix, head.seq);
                self.remove_key(state, &key)?;
                state.forget(idx, head.record);
                state.segments.release(head.record.segment);
            }
            dropped.push(Dropped {
                id: Some(BatchId {
                    lane: lane_id(idx),
                    seq: head.seq,
                }),
                lane: Some(state.lane(idx).lane.clone()),
                items: head.record.items,
                bytes: head.record.len,
                reason,
            });
            if on_disk {
                self.refresh_head(state, idx, head.seq)?;
            }
        }
        Ok(())
    }
}

impl State {
    /// The most payload the queue may hold now: `max_size`, or less when the
    /// filesystem has less room than that beyond what the queue keeps free;
    /// with the drop reason that applies when a batch does not fit.
    pub(super) fn limit(&mut self, max_size: u64) -> (u64, DropReason) {
        let Some(space) = self.space.as_mut() else {
            return (max_size, DropReason::QueueFull);
        };
        space.refresh(false);
        // Batches held in memory take disk space once they spill.
        let room = (self.bytes.saturating_sub(self.held_bytes))
            .saturating_add(space.available().saturating_sub(space.keep_free()));
        if room < max_size {
            (room, DropReason::DiskFull)
        } else {
            (max_size, DropReason::QueueFull)
        }
    }

    /// Records `value` as `source`'s checkpoint if it is newer than the one known.
    pub(super) fn note_checkpoint(&mut self, source: &str, seq: u64, value: &[u8], in_key: bool) {
        let latest = Latest {
            seq,
            value: value.to_vec(),
            in_key,
        };
        match self.checkpoints.get_mut(source) {
            Some(known) if known.seq > seq => {}
            Some(known) => *known = latest,
            None => {
                self.checkpoints.insert(source.to_owned(), latest);
            }
        }
    }

    /// The oldest batch of lane `idx` numbered `from` or later, on disk or
    /// held in memory (which holds only batches newer than the disk's).
    fn oldest_from(
        &self,
        inner: &Inner,
        idx: usize,
        from: u64,
    ) -> Result<Option<Head>, QueueError> {
        let lane = self.lane(idx);
        let on_disk = match lane.head {
            Some(head) if head.seq >= from => Some(head),
            Some(_) => next_head(inner, &lane.prefix, from)?,
            None => None,
        };
        Ok(on_disk.or_else(|| {
            lane.held
                .iter()
                .find(|held| held.seq >= from)
                .map(|held| Head {
                    seq: held.seq,
                    record: held.record(),
                })
        }))
    }

    pub(super) fn plan_eviction(
        &self,
        inner: &Inner,
        need: u64,
    ) -> Result<Vec<(usize, Head)>, QueueError> {
        let mut heads: Vec<Option<Head>> = (0..self.lanes.len())
            .map(|idx| self.oldest_from(inner, idx, 0))
            .collect::<Result<_, _>>()?;
        let mut victims = Vec::new();
        let mut freed = 0u64;
        while freed < need {
            let oldest = heads
                .iter()
                .enumerate()
                .filter_map(|(idx, head)| head.map(|head| (idx, head)))
                .min_by_key(|(_, head)| head.seq);
            let Some((idx, head)) = oldest else { break };
            freed = freed.saturating_add(head.record.len);
            victims.push((idx, head));
            let next = self.oldest_from(inner, idx, head.seq.saturating_add(1))?;
            // Invariant: `heads` has one entry per lane and `idx` came from it.
            heads[idx] = next;
        }
        Ok(victims)
    }
}
