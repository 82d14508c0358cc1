//! The read and ack path: [`Queue::peek`] reads the oldest batches of a lane
//! (repairing or dropping what cannot be read), [`Queue::ack`] and
//! [`Queue::drop_batch`] delete one, and [`Queue::reroute`] and
//! [`Queue::move_batch`] move batches between lanes.

use super::batch::{Batch, DropReason, Dropped, Peeked};
use super::error::QueueError;
use super::format::{self, checkpoint_key, index_key, split_index_key, IndexRecord, NEXT_SEQ_KEY};
use super::lane::{BatchId, Lane};
use super::segments;
use super::stats::Backlog;
use super::store::{created, lane_id, Head, Inner, Queue, State};

/// How many batches one sled write moves during [`Queue::reroute`]: bounds the
/// memory of one write while keeping each step atomic.
pub(super) const REROUTE_CHUNK: usize = 1024;

impl Queue {
    /// Reads up to `max` of the oldest batches of `lane`, without removing them.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if reading fails.
    pub fn peek(&self, lane: &Lane, max: usize) -> Result<Peeked, QueueError> {
        self.peek_after(lane, None, max)
    }

    /// Reads up to `max` of the oldest batches of `lane` whose sequence number
    /// is greater than `after`'s (of any lane): lets a sender keep several
    /// batches in flight without reading the same ones again.
    ///
    /// A batch whose stored payload is missing or fails its checks (sequence
    /// number, length, CRC) is deleted and returned in [`Peeked::dropped`].
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if reading fails.
    pub fn peek_after(
        &self,
        lane: &Lane,
        after: Option<BatchId>,
        max: usize,
    ) -> Result<Peeked, QueueError> {
        let inner = &*self.inner;
        let mut peeked = Peeked::default();
        if max == 0 {
            return Ok(peeked);
        }
        let (lane_idx, prefix, mut spills) = {
            let state = inner.lock();
            match state.by_lane.get(lane) {
                Some(&idx) => {
                    let lane = state.lane(idx);
                    (idx, lane.prefix.clone(), lane.spills)
                }
                None => return Ok(peeked),
            }
        };
        let mut from = after.map_or(0, |id| id.seq.saturating_add(1));
        loop {
            let read = inner.peek_disk(lane, (lane_idx, &prefix), from, max, &mut peeked)?;
            if read.full {
                return Ok(peeked);
            }
            // Then what memory holds, unless a held batch went to disk while
            // the disk was read without the lock: then read on from there.
            let state = inner.lock();
            let held = &state.lane(lane_idx).held;
            if state.lane(lane_idx).spills == spills {
                let wanted = max - peeked.batches.len();
                peeked.batches.extend(
                    held.iter()
                        .filter(|held| held.seq >= read.next)
                        .take(wanted)
                        .map(|held| held.to_batch(lane, lane_idx)),
                );
                return Ok(peeked);
            }
            spills = state.lane(lane_idx).spills;
            from = read.next;
        }
    }

    /// Deletes a batch a gateway has accepted. Returns `false` if it was no
    /// longer there (dropped meanwhile, already acked, or moved by a reroute).
    ///
    /// Not flushed: if an ack is lost in a crash, the batch is sent again
    /// (at-least-once delivery), never lost.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if the delete fails; the batch then stays.
    pub fn ack(&self, id: BatchId) -> Result<bool, QueueError> {
        Ok(self.inner.remove(id)?.is_some())
    }

    /// Deletes a batch that will not be delivered, for `reason` (the exporter
    /// uses [`DropReason::Permanent`] and [`DropReason::Expired`]). Returns the
    /// drop to count, or `None` if the batch was no longer there.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if the delete fails; the batch then stays.
    pub fn drop_batch(
        &self,
        id: BatchId,
        reason: DropReason,
    ) -> Result<Option<Dropped>, QueueError> {
        Ok(self.inner.remove(id)?.map(|(lane, record)| Dropped {
            id: Some(id),
            lane: Some(lane),
            items: record.items,
            bytes: record.len,
            reason,
        }))
    }

    /// Moves every batch of `from` to the lane of the same signal bound for
    /// `to_destination`, keeping their sequence numbers, so both lanes' batches
    /// stay in push order. For the exporter when a gateway leaves. Only index
    /// records move; payloads stay where they are.
    ///
    /// Each step of 1024 batches is atomic; a crash in between
    /// leaves some batches in each lane, none lost or doubled. Ids handed out
    /// for the moved batches go stale: stop the lane's sender first. Returns
    /// what was moved.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidLane`] for an over-long destination,
    /// [`QueueError::Storage`] if a step fails (earlier steps stay done).
    pub fn reroute(&self, from: &Lane, to_destination: &str) -> Result<Backlog, QueueError> {
        let inner = &*self.inner;
        let to = Lane::new(from.signal(), to_destination);
        let mut moved = Backlog::default();
        if &to == from {
            return Ok(moved);
        }
        let mut state = inner.lock();
        let Some(&from_idx) = state.by_lane.get(from) else {
            return Ok(moved);
        };
        let to_idx = state.lane_index(&to)?;
        // Only index records move: what memory holds goes to disk first, and
        // `to`'s too, so that each lane's disk batches stay older than its
        // held ones.
        inner.spill_lane(&mut state, from_idx)?;
        inner.spill_lane(&mut state, to_idx)?;
        let from_prefix = state.lane(from_idx).prefix.clone();
        let to_prefix = state.lane(to_idx).prefix.clone();
        loop {
            let mut writes = sled::Batch::default();
            let mut chunk = Vec::new();
            for item in inner.db.scan_prefix(&from_prefix).take(REROUTE_CHUNK) {
                let (key, value) = item.map_err(|e| inner.sled_err(e))?;
                let (seq, record) = split_index_key(&key)
                    .zip(IndexRecord::decode(&value))
                    .map(|((_, seq), record)| (seq, record))
                    .ok_or_else(|| inner.corrupt("index record"))?;
                writes.remove(key);
                writes.insert(index_key(&to_prefix, seq), value);
                chunk.push(Head { seq, record });
            }
            if chunk.is_empty() {
                break;
            }
            inner
                .db
                .apply_batch(writes)
                .map_err(|e| inner.sled_err(e))?;
            for head in chunk {
                state.forget(from_idx, head.record);
                state.remember(to_idx, head.seq, head.record);
                moved.add(&head.backlog());
            }
            state.lane_mut(from_idx).head = next_head(inner, &from_prefix, 0)?;
        }
        drop(state);
        if moved.batches > 0 {
            inner.pushed.notify(usize::MAX);
        }
        Ok(moved)
    }

    /// Moves one batch to the lane of the same signal bound for
    /// `to_destination`, atomically. Returns its new id, or `None` if it was no
    /// longer there.
    ///
    /// # Errors
    ///
    /// As [`Queue::reroute`].
    pub fn move_batch(
        &self,
        id: BatchId,
        to_destination: &str,
    ) -> Result<Option<BatchId>, QueueError> {
        let inner = &*self.inner;
        let mut state = inner.lock();
        let Some(from_idx) = state.lane_of(id) else {
            return Ok(None);
        };
        let to = Lane::new(state.lane(from_idx).lane.signal(), to_destination);
        let to_idx = state.lane_index(&to)?;
        let new_id = BatchId {
            lane: lane_id(to_idx),
            seq: id.seq,
        };
        // As in `reroute`: both lanes' held batches go to disk first.
        inner.spill_lane(&mut state, from_idx)?;
        inner.spill_lane(&mut state, to_idx)?;
        let key = index_key(&state.lane(from_idx).prefix, id.seq);
        let Some(value) = inner.db.get(&key).map_err(|e| inner.sled_err(e))? else {
            return Ok(None);
        };
        if to_idx == from_idx {
            return Ok(Some(new_id));
        }
        let record = IndexRecord::decode(&value).ok_or_else(|| inner.corrupt("index record"))?;
        let mut writes = sled::Batch::default();
        writes.remove(key);
        writes.insert(index_key(&state.lane(to_idx).prefix, id.seq), value);
        inner
            .db
            .apply_batch(writes)
            .map_err(|e| inner.sled_err(e))?;
        state.forget(from_idx, record);
        state.remember(to_idx, id.seq, record);
        inner.refresh_head(&mut state, from_idx, id.seq)?;
        drop(state);
        inner.pushed.notify(usize::MAX);
        Ok(Some(new_id))
    }
}

/// Where [`Inner::peek_disk`] stopped.
pub(super) struct DiskRead {
    /// Whether the peek has all the batches it asked for.
    pub(super) full: bool,
    /// The sequence number after the last index record read (or where it started).
    pub(super) next: u64,
}

/// What a second look under the lock found for a batch that read badly.
pub(super) enum Repair {
    /// It was acked or dropped meanwhile.
    Gone,
    /// It reads well now (it was being written or moved meanwhile).
    Valid(Batch),
    /// It is damaged, and was deleted.
    Dropped(Dropped),
}

impl Inner {
    /// Reads lane `lane_idx`'s batches on disk numbered `from` or later into
    /// `peeked`, up to `max` in all. Without the state lock, so that pushes go
    /// on meanwhile; what looks wrong is looked at again under the lock by
    /// [`Inner::repair`].
    fn peek_disk(
        &self,
        lane: &Lane,
        (lane_idx, prefix): (usize, &[u8]),
        from: u64,
        max: usize,
        peeked: &mut Peeked,
    ) -> Result<DiskRead, QueueError> {
        let mut next = from;
        for item in self.db.range(index_key(prefix, from)..) {
            let (key, value) = item.map_err(|e| self.sled_err(e))?;
            if !key.starts_with(prefix) {
                break;
            }
            let Some((_, seq)) = split_index_key(&key) else {
                continue;
            };
            next = seq.saturating_add(1);
            let found = match IndexRecord::decode(&value) {
                Some(record) => self.read_batch(lane, lane_idx, seq, record)?,
                None => None,
            };
            match found {
                Some(batch) => peeked.batches.push(batch),
                None => match self.repair(lane, lane_idx, seq)? {
                    Repair::Gone => {}
                    Repair::Valid(batch) => peeked.batches.push(batch),
                    Repair::Dropped(drop) => peeked.dropped.push(drop),
                },
            }
            if peeked.batches.len() >= max {
                return Ok(DiskRead { full: true, next });
            }
        }
        Ok(DiskRead { full: false, next })
    }

    /// Keeps what the index record of batch `seq` alone holds before it is
    /// deleted: a source's newest checkpoint, moved to the source's key, and
    /// the newest sequence number, so that ids keep growing after a restart.
    /// Written before the delete, so a crash in between leaves both copies.
    pub(super) fn before_remove(&self, state: &mut State, seq: u64) -> Result<(), QueueError> {
        if seq.saturating_add(1) >= state.next_seq {
            self.store_next_seq(state)?;
        }
        for (source, latest) in &mut state.checkpoints {
            if !latest.in_key && latest.seq == seq {
                let stored = format::encode_checkpoint_value(seq, &latest.value);
                self.db
                    .insert(checkpoint_key(source), stored)
                    .map_err(|e| self.sled_err(e))?;
                latest.in_key = true;
            }
        }
        Ok(())
    }

    /// Stores the next sequence number, if it grew since it was last stored.
    pub(super) fn store_next_seq(&self, state: &mut State) -> Result<(), QueueError> {
        if state.next_seq > state.next_seq_stored {
            let next = state.next_seq;
            self.db
                .insert(NEXT_SEQ_KEY, &next.to_be_bytes()[..])
                .map_err(|e| self.sled_err(e))?;
            state.next_seq_stored = next;
        }
        Ok(())
    }

    /// Reads batch `seq`'s payload; `None` if it is missing or fails its checks.
    pub(super) fn read_batch(
        &self,
        lane: &Lane,
        lane_idx: usize,
        seq: u64,
        record: IndexRecord,
    ) -> Result<Option<Batch>, QueueError> {
        let payload = segments::read_payload(&self.data, seq, &record);
        Ok(payload.map(|payload| Batch {
            id: BatchId {
                lane: lane_id(lane_idx),
                seq,
            },
            lane: lane.clone(),
            payload,
            items: record.items,
            created: created(record),
        }))
    }

    /// Looks again, under the lock, at batch `seq` that read badly, and deletes
    /// it if it really is damaged.
    pub(super) fn repair(
        &self,
        lane: &Lane,
        lane_idx: usize,
        seq: u64,
    ) -> Result<Repair, QueueError> {
        let mut state = self.lock();
        let key = index_key(&state.lane(lane_idx).prefix, seq);
        let Some(value) = self.db.get(&key).map_err(|e| self.sled_err(e))? else {
            return Ok(Repair::Gone);
        };
        let record = IndexRecord::decode(&value);
        if let Some(record) = record {
            if let Some(batch) = self.read_batch(lane, lane_idx, seq, record)? {
                return Ok(Repair::Valid(batch));
            }
        }
        self.before_remove(&mut state, seq)?;
        self.remove_key(&mut state, &key)?;
        if let Some(record) = record {
            state.forget(lane_idx, record);
            state.segments.release(record.segment);
        }
        self.refresh_head(&mut state, lane_idx, seq)?;
        let dead = state.segments.take_dead();
        drop(state);
        self.delete_segments(dead, false);
        log::error!("Dropped an undecodable batch from the disk queue lane={lane} seq={seq}");
        Ok(Repair::Dropped(Dropped {
            id: Some(BatchId {
                lane: lane_id(lane_idx),
                seq,
            }),
            lane: Some(lane.clone()),
            items: record.map_or(0, |r| r.items),
            bytes: record.map_or(0, |r| r.len),
            reason: DropReason::Corrupt,
        }))
    }

    /// Deletes batch `id`, returning its lane and index record if it was there.
    pub(super) fn remove(&self, id: BatchId) -> Result<Option<(Lane, IndexRecord)>, QueueError> {
        let mut state = self.lock();
        let Some(lane_idx) = state.lane_of(id) else {
            return Ok(None);
        };
        if let Some(held) = state.take_held(lane_idx, id.seq) {
            return Ok(Some((state.lane(lane_idx).lane.clone(), held.record())));
        }
        let key = index_key(&state.lane(lane_idx).prefix, id.seq);
        // The head's record is in memory, and acks mostly take the head; for
        // other batches, one look tells whether the id is stale.
        let head = state.lane(lane_idx).head.filter(|head| head.seq == id.seq);
        let record = match head {
            Some(head) => head.record,
            None => match self.db.get(&key).map_err(|e| self.sled_err(e))? {
                Some(value) => {
                    IndexRecord::decode(&value).ok_or_else(|| self.corrupt("index record"))?
                }
                None => return Ok(None),
            },
        };
        self.before_remove(&mut state, id.seq)?;
        self.remove_key(&mut state, &key)?;
        state.forget(lane_idx, record);
        state.segments.release(record.segment);
        self.refresh_head(&mut state, lane_idx, id.seq)?;
        let lane = state.lane(lane_idx).lane.clone();
        let dead = state.segments.take_dead();
        drop(state);
        self.delete_segments(dead, false);
        Ok(Some((lane, record)))
    }

    /// After batch `removed` left lane `idx`, finds the lane's new oldest batch
    /// if `removed` was it.
    pub(super) fn refresh_head(
        &self,
        state: &mut State,
        idx: usize,
        removed: u64,
    ) -> Result<(), QueueError> {
        let lane = state.lane_mut(idx);
        if lane.head.map_or(true, |head| head.seq == removed) {
            // On a read error the head is cleared rather than left naming the
            // removed batch, which `plan_eviction` would count twice.
            lane.head = None;
            lane.head = next_head(self, &lane.prefix, removed.saturating_add(1))?;
        }
        Ok(())
    }
}

/// The oldest batch of the lane with `prefix` whose sequence number is at least `from`.
pub(super) fn next_head(
    inner: &Inner,
    prefix: &[u8],
    from: u64,
) -> Result<Option<Head>, QueueError> {
    let Some(item) = inner.db.range(index_key(prefix, from)..).next() else {
        return Ok(None);
    };
    let (key, value) = item.map_err(|e| inner.sled_err(e))?;
    if !key.starts_with(prefix) {
        return Ok(None);
    }
    let head = split_index_key(&key)
        .zip(IndexRecord::decode(&value))
        .map(|((_, seq), record)| Head { seq, record })
        .ok_or_else(|| inner.corrupt("index record"))?;
    Ok(Some(head))
}
