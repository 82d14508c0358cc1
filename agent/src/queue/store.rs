//! The [`Queue`]: sled, the in-memory counters, and every operation on them.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use event_listener::{Event, EventListener, Listener};

use super::batch::{Batch, Checkpoint, DropReason, Dropped, NewBatch, Peeked, Pushed};
use super::error::QueueError;
use super::format::{
    self, checkpoint_key, decode_lane_prefix, decode_payload, encode_payload, index_key,
    lane_prefix, payload_key, split_index_key, IndexRecord, FORMAT_KEY, FORMAT_VERSION, INDEX,
    NEXT_SEQ_KEY, PAYLOAD,
};
use super::lane::{BatchId, Lane};
use super::options::{FullPolicy, Options};
use super::stats::{Backlog, LaneStats, Stats};

/// The queue's directory under the agent's `state_dir`.
pub(super) const DIR_NAME: &str = "queue";

/// sled's log segment size. sled refuses to reopen a directory with another
/// value, so this is part of the on-disk format. See "Limits" in the module docs
/// for the measurement behind it.
const SEGMENT_SIZE: usize = 512 * 1024;

/// How many batches one sled write moves during [`Queue::reroute`]: bounds the
/// memory of one write while keeping each step atomic.
const REROUTE_CHUNK: usize = 1024;

/// Cache for [`Queue::inspect`], which reads each index record once.
const INSPECT_CACHE: u64 = 1024 * 1024;

/// A durable FIFO of batches on disk; see the module docs for the design.
///
/// Cheap to clone (one `Arc`); every clone is the same queue. All methods block
/// on disk I/O: call them from a dedicated thread or through `smol::unblock`,
/// never on an executor thread. [`Queue::listen`] is the one async entry point.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    path: Box<Path>,
    options: Options,
    state: Mutex<State>,
    /// Notified after every push that stored a batch, and after reroutes.
    pushed: Event,
}

/// What the queue keeps in memory: counters per lane, rebuilt by one scan of
/// the index on open.
///
/// Invariant: every change to it follows a successful sled write made while
/// holding its mutex, so it always describes what sled holds.
#[derive(Default)]
struct State {
    /// Invariant: `lanes[i]` is the lane with `by_lane[&lanes[i].lane] == i`;
    /// entries are never removed, so `BatchId::lane` stays valid.
    lanes: Vec<LaneState>,
    by_lane: HashMap<Lane, usize>,
    /// The sequence number of the next pushed batch.
    next_seq: u64,
    /// Payload bytes over all lanes.
    bytes: u64,
}

struct LaneState {
    lane: Lane,
    /// `format::lane_prefix(&lane)`.
    prefix: Vec<u8>,
    batches: u64,
    bytes: u64,
    items: u64,
    /// The oldest batch of the lane; `None` when empty.
    head: Option<Head>,
}

#[derive(Clone, Copy, Debug)]
struct Head {
    seq: u64,
    record: IndexRecord,
}

/// Batches chosen by `FullPolicy::DropOldest`, and the heads their lanes will have.
#[derive(Default)]
struct Eviction {
    victims: Vec<(usize, Head)>,
    heads: Vec<(usize, Option<Head>)>,
}

impl Queue {
    /// Opens (or creates) the queue in `<state_dir>/queue` and recovers it.
    ///
    /// Recovery rebuilds the counters with one scan of the index (small records,
    /// not the payloads), deletes index records that do not decode and returns
    /// them as [`DropReason::Corrupt`] drops, for the caller to count.
    ///
    /// # Errors
    ///
    /// [`QueueError::Locked`] if another process (a running agent) has the
    /// directory open, [`QueueError::NewerFormat`] if a newer tern wrote it,
    /// [`QueueError::Storage`] if it cannot be created or read.
    pub fn open(state_dir: &Path, options: &Options) -> Result<(Queue, Vec<Dropped>), QueueError> {
        let path: Box<Path> = state_dir.join(DIR_NAME).into();
        let db = open_db(&path, options.cache_capacity, Some(options.flush_interval))?;
        let sled_err = |e| QueueError::from_sled(&path, e);
        if !check_format(&db, &path)? {
            db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes()[..])
                .map_err(sled_err)?;
        }
        let scan = Scan::run(&db, &path, true)?;
        let stored_next = match db.get(NEXT_SEQ_KEY).map_err(sled_err)? {
            Some(value) => format::decode_u64(&value).ok_or_else(|| QueueError::Corrupt {
                path: path.clone(),
                detail: "next sequence number",
            })?,
            None => 0,
        };
        let mut state = scan.state;
        state.next_seq = state.next_seq.max(stored_next);
        let mut dropped = Vec::with_capacity(scan.corrupt.len());
        if !scan.corrupt.is_empty() {
            let mut writes = sled::Batch::default();
            for (key, drop) in scan.corrupt {
                if let Some((_, seq)) = split_index_key(&key) {
                    writes.remove(&payload_key(seq)[..]);
                }
                writes.remove(key);
                dropped.push(drop);
            }
            db.apply_batch(writes).map_err(sled_err)?;
            log::error!(
                "Dropped undecodable batches from the disk queue path={} batches={}",
                path.display(),
                dropped.len()
            );
        }
        db.flush().map_err(sled_err)?;
        let total = state.backlog();
        log::info!(
            "Opened the disk queue path={} batches={} bytes={}",
            path.display(),
            total.batches,
            total.bytes
        );
        let inner = Inner {
            db,
            path,
            options: options.clone(),
            state: Mutex::new(state),
            pushed: Event::new(),
        };
        Ok((
            Queue {
                inner: Arc::new(inner),
            },
            dropped,
        ))
    }

    /// Reads the backlog of the queue in `<state_dir>/queue` without changing
    /// its batches: for `tern queue` on a stopped agent.
    ///
    /// A directory that does not exist reads as an empty queue. Undecodable
    /// records are skipped (the agent drops them on its next start). The storage
    /// engine may still complete its own crash recovery in the directory.
    ///
    /// # Errors
    ///
    /// [`QueueError::Locked`] while an agent runs on this `state_dir`: ask it
    /// over HTTP instead. Otherwise as [`Queue::open`].
    pub fn inspect(state_dir: &Path) -> Result<Stats, QueueError> {
        let path: Box<Path> = state_dir.join(DIR_NAME).into();
        if !path.exists() {
            return Ok(Stats::default());
        }
        let db = open_db(&path, INSPECT_CACHE, None)?;
        check_format(&db, &path)?;
        let scan = Scan::run(&db, &path, false)?;
        Ok(scan.state.stats())
    }

    /// Stores a batch in `lane` under the configured [`Options::full_policy`].
    ///
    /// With [`Options::fsync`] on, returns once the batch (and its checkpoint)
    /// is on disk. Either both the batch and its checkpoint are stored, or
    /// neither.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidLane`] for an over-long destination,
    /// [`QueueError::Storage`] if the write or the flush fails (after a failed
    /// flush the batch may still be stored).
    pub fn push(&self, lane: &Lane, batch: NewBatch<'_>) -> Result<Pushed, QueueError> {
        self.push_with_policy(lane, batch, self.inner.options.full_policy)
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
        let record = IndexRecord {
            created_ms: millis(batch.created),
            items: batch.items,
            len,
        };
        let max_size = inner.options.max_size;

        let mut state = inner.lock();
        let lane_idx = state.lane_index(lane)?;
        let free = max_size.saturating_sub(state.bytes);
        let mut eviction = Eviction::default();
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
                    eviction = state.plan_eviction(inner, len - free)?;
                    true
                }
            }
        };

        let mut writes = sled::Batch::default();
        if let Some(Checkpoint { source, value }) = batch.checkpoint {
            writes.insert(checkpoint_key(source), value);
        }
        for (victim_lane, head) in &eviction.victims {
            writes.remove(index_key(&state.lane(*victim_lane).prefix, head.seq));
            writes.remove(&payload_key(head.seq)[..]);
        }
        let seq = state.next_seq;
        if store {
            writes.insert(
                index_key(&state.lane(lane_idx).prefix, seq),
                &record.encode()[..],
            );
            writes.insert(&payload_key(seq)[..], encode_payload(seq, batch.payload));
            writes.insert(NEXT_SEQ_KEY, &(seq + 1).to_be_bytes()[..]);
        }
        let wrote = store || batch.checkpoint.is_some();
        if wrote {
            inner
                .db
                .apply_batch(writes)
                .map_err(|e| inner.sled_err(e))?;
        }

        let mut dropped = Vec::with_capacity(eviction.victims.len() + usize::from(!store));
        for (victim_lane, head) in eviction.victims {
            state.forget(victim_lane, head.record);
            dropped.push(Dropped {
                id: Some(BatchId {
                    lane: lane_id(victim_lane),
                    seq: head.seq,
                }),
                lane: Some(state.lane(victim_lane).lane.clone()),
                items: head.record.items,
                bytes: head.record.len,
                reason: DropReason::QueueFull,
            });
        }
        for (idx, head) in eviction.heads {
            state.lane_mut(idx).head = head;
        }
        if store {
            state.next_seq = seq + 1;
            state.remember(lane_idx, seq, record);
        } else {
            dropped.push(Dropped {
                id: None,
                lane: Some(lane.clone()),
                items: batch.items,
                bytes: len,
                reason: DropReason::QueueFull,
            });
        }
        drop(state);

        if wrote && inner.options.fsync {
            inner.flush()?;
        }
        if store {
            inner.pushed.notify(usize::MAX);
        }
        let id = store.then_some(BatchId {
            lane: lane_id(lane_idx),
            seq,
        });
        Ok(Pushed { id, dropped })
    }

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
    /// A batch whose stored payload does not match its index record is deleted
    /// and returned in [`Peeked::dropped`].
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
        let (lane_idx, prefix) = {
            let state = inner.lock();
            match state.by_lane.get(lane) {
                Some(&idx) => (idx, state.lane(idx).prefix.clone()),
                None => return Ok(peeked),
            }
        };
        let start = index_key(&prefix, after.map_or(0, |id| id.seq.saturating_add(1)));
        // Read without the state lock, so that pushes go on meanwhile; what looks
        // wrong is checked again under the lock by `Inner::repair`.
        for item in inner.db.range(start..) {
            let (key, value) = item.map_err(|e| inner.sled_err(e))?;
            if !key.starts_with(&prefix) {
                break;
            }
            let Some((_, seq)) = split_index_key(&key) else {
                continue;
            };
            let found = match IndexRecord::decode(&value) {
                Some(record) => inner.read_batch(lane, lane_idx, seq, record)?,
                None => None,
            };
            match found {
                Some(batch) => peeked.batches.push(batch),
                None => match inner.repair(lane, lane_idx, seq)? {
                    Repair::Gone => {}
                    Repair::Valid(batch) => peeked.batches.push(batch),
                    Repair::Dropped(drop) => peeked.dropped.push(drop),
                },
            }
            if peeked.batches.len() >= max {
                break;
            }
        }
        Ok(peeked)
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
    /// stay in push order. For the exporter when a gateway leaves.
    ///
    /// Each step of [`REROUTE_CHUNK`] batches is atomic; a crash in between
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
        if to_idx == from_idx {
            return Ok(Some(new_id));
        }
        let key = index_key(&state.lane(from_idx).prefix, id.seq);
        let Some(value) = inner.db.get(&key).map_err(|e| inner.sled_err(e))? else {
            return Ok(None);
        };
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

    /// The backlog per lane, from memory: cheap enough for every scrape.
    pub fn stats(&self) -> Stats {
        self.inner.lock().stats()
    }

    /// A future that completes at the next push that stores a batch (or the next
    /// reroute), in any lane.
    ///
    /// The listener is registered when this returns, so the race-free way to
    /// wait for work is: call `listen`, then [`Queue::peek`], and await the
    /// listener only if the peek found nothing.
    pub fn listen(&self) -> PushListener {
        PushListener(self.inner.pushed.listen())
    }

    /// The checkpoint last stored for `source`, if any.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if reading fails.
    pub fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let inner = &*self.inner;
        let value = inner
            .db
            .get(checkpoint_key(source))
            .map_err(|e| inner.sled_err(e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Stores a checkpoint without a batch: for a source whose input produced
    /// nothing to send (every journal entry filtered out, say). Flushed like a
    /// push when [`Options::fsync`] is on.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if the write or the flush fails.
    pub fn set_checkpoint(&self, source: &str, value: &[u8]) -> Result<(), QueueError> {
        let inner = &*self.inner;
        inner
            .db
            .insert(checkpoint_key(source), value)
            .map_err(|e| inner.sled_err(e))?;
        if inner.options.fsync {
            inner.flush()?;
        }
        Ok(())
    }

    /// Writes everything to disk now (also done when the last clone is dropped).
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if the write or the fsync fails.
    pub fn flush(&self) -> Result<(), QueueError> {
        self.inner.flush()
    }

    /// Bytes the storage engine's files take on disk, for the self metrics.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if the files cannot be measured.
    pub fn disk_usage(&self) -> Result<u64, QueueError> {
        self.inner
            .db
            .size_on_disk()
            .map_err(|e| self.inner.sled_err(e))
    }

    /// The queue's directory (`<state_dir>/queue`).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Completes at the next push into the queue; from [`Queue::listen`].
///
/// A future for async senders, with [`PushListener::wait_timeout`] for
/// senders on their own thread. Works with any executor.
#[derive(Debug)]
#[must_use = "a listener does nothing unless awaited or waited on"]
pub struct PushListener(EventListener);

impl PushListener {
    /// Blocks the thread until the next push, or `timeout`; returns whether a
    /// push came.
    pub fn wait_timeout(self, timeout: Duration) -> bool {
        self.0.wait_timeout(timeout).is_some()
    }
}

impl Future for PushListener {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// What a second look under the lock found for a batch that read badly.
enum Repair {
    /// It was acked or dropped meanwhile.
    Gone,
    /// It was being written meanwhile and reads well now.
    Valid(Batch),
    /// It is damaged, and was deleted.
    Dropped(Dropped),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated
        // before a sled write (it changes only after one), so carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sled_err(&self, err: sled::Error) -> QueueError {
        QueueError::from_sled(&self.path, err)
    }

    fn corrupt(&self, detail: &'static str) -> QueueError {
        QueueError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn flush(&self) -> Result<(), QueueError> {
        self.db.flush().map(drop).map_err(|e| self.sled_err(e))
    }

    /// Reads batch `seq`'s payload; `None` if it is missing or does not match.
    fn read_batch(
        &self,
        lane: &Lane,
        lane_idx: usize,
        seq: u64,
        record: IndexRecord,
    ) -> Result<Option<Batch>, QueueError> {
        let value = self
            .db
            .get(payload_key(seq))
            .map_err(|e| self.sled_err(e))?;
        let payload = value
            .as_deref()
            .and_then(|v| decode_payload(v, seq, record.len));
        Ok(payload.map(|payload| Batch {
            id: BatchId {
                lane: lane_id(lane_idx),
                seq,
            },
            lane: lane.clone(),
            payload: payload.to_vec(),
            items: record.items,
            created: UNIX_EPOCH + Duration::from_millis(record.created_ms),
        }))
    }

    /// Looks again, under the lock, at batch `seq` that read badly, and deletes
    /// it if it really is damaged.
    fn repair(&self, lane: &Lane, lane_idx: usize, seq: u64) -> Result<Repair, QueueError> {
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
        let mut writes = sled::Batch::default();
        writes.remove(key);
        writes.remove(&payload_key(seq)[..]);
        self.db.apply_batch(writes).map_err(|e| self.sled_err(e))?;
        if let Some(record) = record {
            state.forget(lane_idx, record);
        }
        self.refresh_head(&mut state, lane_idx, seq)?;
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
    fn remove(&self, id: BatchId) -> Result<Option<(Lane, IndexRecord)>, QueueError> {
        let mut state = self.lock();
        let Some(lane_idx) = state.lane_of(id) else {
            return Ok(None);
        };
        let key = index_key(&state.lane(lane_idx).prefix, id.seq);
        let Some(value) = self.db.get(&key).map_err(|e| self.sled_err(e))? else {
            return Ok(None);
        };
        let record = IndexRecord::decode(&value).ok_or_else(|| self.corrupt("index record"))?;
        let mut writes = sled::Batch::default();
        writes.remove(key);
        writes.remove(&payload_key(id.seq)[..]);
        self.db.apply_batch(writes).map_err(|e| self.sled_err(e))?;
        state.forget(lane_idx, record);
        self.refresh_head(&mut state, lane_idx, id.seq)?;
        Ok(Some((state.lane(lane_idx).lane.clone(), record)))
    }

    /// After batch `removed` left lane `idx`, finds the lane's new oldest batch
    /// if `removed` was it.
    fn refresh_head(&self, state: &mut State, idx: usize, removed: u64) -> Result<(), QueueError> {
        let lane = state.lane_mut(idx);
        if lane.head.map_or(true, |head| head.seq == removed) {
            // On a read error the head is cleared rather than left pointing at
            // the removed batch, which `plan_eviction` would count twice.
            lane.head = None;
            lane.head = next_head(self, &lane.prefix, removed.saturating_add(1))?;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(err) = self.flush() {
            log::error!("Could not flush the disk queue on close error={err}");
        }
    }
}

impl State {
    fn lane(&self, idx: usize) -> &LaneState {
        // Invariant: indexes come from `by_lane` or from a `BatchId` checked by
        // `lane_of`, and lanes are never removed.
        &self.lanes[idx]
    }

    fn lane_mut(&mut self, idx: usize) -> &mut LaneState {
        // Invariant: as in `lane`.
        &mut self.lanes[idx]
    }

    /// The lane of a caller-supplied id, if it names one.
    fn lane_of(&self, id: BatchId) -> Option<usize> {
        usize::try_from(id.lane)
            .ok()
            .filter(|&idx| idx < self.lanes.len())
    }

    /// The index of `lane`, adding it if new.
    fn lane_index(&mut self, lane: &Lane) -> Result<usize, QueueError> {
        if let Some(&idx) = self.by_lane.get(lane) {
            return Ok(idx);
        }
        let len = lane.destination().len();
        let prefix = lane_prefix(lane).ok_or(QueueError::InvalidLane { len })?;
        // A `BatchId` holds a lane index as `u32`; four billion lanes are not
        // a real case, so refuse rather than wrap.
        u32::try_from(self.lanes.len()).map_err(|_| QueueError::InvalidLane { len })?;
        Ok(self.add_lane(lane.clone(), prefix))
    }

    fn add_lane(&mut self, lane: Lane, prefix: Vec<u8>) -> usize {
        let idx = self.lanes.len();
        self.by_lane.insert(lane.clone(), idx);
        self.lanes.push(LaneState {
            lane,
            prefix,
            batches: 0,
            bytes: 0,
            items: 0,
            head: None,
        });
        idx
    }

    /// Counts a batch that is now stored in lane `idx`.
    fn remember(&mut self, idx: usize, seq: u64, record: IndexRecord) {
        self.bytes = self.bytes.saturating_add(record.len);
        let lane = self.lane_mut(idx);
        lane.batches += 1;
        lane.bytes = lane.bytes.saturating_add(record.len);
        lane.items = lane.items.saturating_add(record.items);
        if lane.head.map_or(true, |head| seq < head.seq) {
            lane.head = Some(Head { seq, record });
        }
    }

    /// Uncounts a batch that left lane `idx` (its head is the caller's business).
    fn forget(&mut self, idx: usize, record: IndexRecord) {
        self.bytes = self.bytes.saturating_sub(record.len);
        let lane = self.lane_mut(idx);
        lane.batches = lane.batches.saturating_sub(1);
        lane.bytes = lane.bytes.saturating_sub(record.len);
        lane.items = lane.items.saturating_sub(record.items);
    }

    /// Chooses the globally oldest batches whose payloads add up to `need` bytes.
    fn plan_eviction(&self, inner: &Inner, need: u64) -> Result<Eviction, QueueError> {
        let mut heads: Vec<Option<Head>> = self.lanes.iter().map(|lane| lane.head).collect();
        let mut eviction = Eviction::default();
        let mut freed = 0u64;
        while freed < need {
            let oldest = heads
                .iter()
                .enumerate()
                .filter_map(|(idx, head)| head.map(|head| (idx, head)))
                .min_by_key(|(_, head)| head.seq);
            let Some((idx, head)) = oldest else { break };
            freed = freed.saturating_add(head.record.len);
            eviction.victims.push((idx, head));
            let next = next_head(inner, &self.lane(idx).prefix, head.seq.saturating_add(1))?;
            // Invariant: `heads` has one entry per lane and `idx` came from it.
            heads[idx] = next;
        }
        for &(idx, _) in &eviction.victims {
            if !eviction.heads.iter().any(|&(seen, _)| seen == idx) {
                eviction.heads.push((idx, heads[idx]));
            }
        }
        Ok(eviction)
    }

    fn stats(&self) -> Stats {
        let lanes = self
            .lanes
            .iter()
            .map(|lane| LaneStats {
                lane: lane.lane.clone(),
                backlog: lane.backlog(),
            })
            .collect();
        Stats { lanes }
    }

    fn backlog(&self) -> Backlog {
        self.stats().total()
    }
}

impl LaneState {
    fn backlog(&self) -> Backlog {
        Backlog {
            batches: self.batches,
            bytes: self.bytes,
            items: self.items,
            oldest_created: self.head.map(|head| created(head.record)),
        }
    }
}

impl Head {
    fn backlog(&self) -> Backlog {
        Backlog {
            batches: 1,
            bytes: self.record.len,
            items: self.record.items,
            oldest_created: Some(created(self.record)),
        }
    }
}

/// The result of reading the whole index once.
struct Scan {
    state: State,
    /// Undecodable index keys, with the drop to report for each.
    corrupt: Vec<(sled::IVec, Dropped)>,
}

impl Scan {
    /// Rebuilds the counters from the index. With `collect_corrupt`, gathers
    /// undecodable records for deletion; without, skips them.
    fn run(db: &sled::Db, path: &Path, collect_corrupt: bool) -> Result<Scan, QueueError> {
        let mut scan = Scan {
            state: State::default(),
            corrupt: Vec::new(),
        };
        let mut skipped = 0u64;
        // The lane of the previous key: keys come sorted, so lanes come in runs.
        let mut current: Option<usize> = None;
        for item in db.range(&[INDEX][..]..&[PAYLOAD][..]) {
            let (key, value) = item.map_err(|e| QueueError::from_sled(path, e))?;
            let split = split_index_key(&key);
            let decoded = split.zip(IndexRecord::decode(&value));
            let lane_idx = match (decoded, current) {
                (Some(((prefix, _), _)), Some(idx)) if scan.state.lane(idx).prefix == prefix => {
                    Some(idx)
                }
                (Some(((prefix, _), _)), _) => {
                    decode_lane_prefix(prefix).map(|lane| match scan.state.by_lane.get(&lane) {
                        Some(&idx) => idx,
                        None => scan.state.add_lane(lane, prefix.to_vec()),
                    })
                }
                (None, _) => None,
            };
            match (decoded, lane_idx) {
                (Some(((_, seq), record)), Some(idx)) => {
                    scan.state.remember(idx, seq, record);
                    scan.state.next_seq = scan.state.next_seq.max(seq.saturating_add(1));
                    current = Some(idx);
                }
                _ if collect_corrupt => {
                    let lane = split.and_then(|(prefix, _)| decode_lane_prefix(prefix));
                    let drop = Dropped {
                        id: None,
                        lane,
                        items: 0,
                        bytes: 0,
                        reason: DropReason::Corrupt,
                    };
                    scan.corrupt.push((key, drop));
                }
                _ => skipped += 1,
            }
        }
        if skipped > 0 {
            log::warn!(
                "Skipped undecodable batches in the disk queue path={} batches={skipped}",
                path.display()
            );
        }
        Ok(scan)
    }
}

/// Opens sled with our settings; see "Limits" in the module docs for each.
pub(super) fn open_db(
    path: &Path,
    cache_capacity: u64,
    flush_interval: Option<Duration>,
) -> Result<sled::Db, QueueError> {
    std::fs::create_dir_all(path).map_err(|source| QueueError::Storage {
        path: path.into(),
        source,
    })?;
    let flush_every_ms =
        flush_interval.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .flush_every_ms(flush_every_ms)
        // sled 0.34.7 stores the mode but never reads it; set for clarity.
        .mode(sled::Mode::LowSpace)
        // Payloads come gzip-compressed from the encoder; zstd would only cost CPU.
        .use_compression(false)
        .segment_size(
            std::env::var("SEG")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(SEGMENT_SIZE),
        )
        .open()
        .map_err(|e| QueueError::from_sled(path, e))
}

/// Checks the format version; returns whether it was present.
fn check_format(db: &sled::Db, path: &Path) -> Result<bool, QueueError> {
    let Some(value) = db
        .get(FORMAT_KEY)
        .map_err(|e| QueueError::from_sled(path, e))?
    else {
        return Ok(false);
    };
    match format::decode_u32(&value) {
        Some(FORMAT_VERSION) => Ok(true),
        Some(found) if found > FORMAT_VERSION => Err(QueueError::NewerFormat {
            path: path.into(),
            found,
        }),
        _ => Err(QueueError::Corrupt {
            path: path.into(),
            detail: "format version",
        }),
    }
}

/// The oldest batch of the lane with `prefix` whose sequence number is at least `from`.
fn next_head(inner: &Inner, prefix: &[u8], from: u64) -> Result<Option<Head>, QueueError> {
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

fn lane_id(idx: usize) -> u32 {
    // Invariant: `State::lane_index` refuses to create lane indexes beyond `u32`.
    u32::try_from(idx).unwrap_or(u32::MAX)
}

fn len_u64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// Milliseconds since the epoch, clamped to what an index record accepts.
fn millis(time: SystemTime) -> u64 {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis())
        .unwrap_or(u64::MAX)
        .min(format::MAX_CREATED_MS)
}

fn created(record: IndexRecord) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(record.created_ms)
}
