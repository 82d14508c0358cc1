//! The [`Queue`]: sled, the segment files, the in-memory counters, and every
//! operation on them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use event_listener::{Event, EventListener, Listener};

use super::acklog::AckLog;
use super::batch::{Batch, Checkpoint, DropReason, Dropped, NewBatch, Peeked, Pushed};
use super::error::QueueError;
use super::format::{
    self, checkpoint_key, decode_lane_prefix, index_key, lane_prefix, split_index_key, IndexRecord,
    CHECKPOINT, FORMAT_KEY, FORMAT_VERSION, INDEX, INDEX_END, MAX_SOURCE_LEN, NEXT_SEQ_KEY,
};
use super::lane::{BatchId, Lane};
use super::options::{FullPolicy, Options};
use super::segments::{self, Segments};
use super::space::{self, is_disk_full, Space};
use super::stats::{Backlog, LaneStats, Stats};

/// The queue's directory under the agent's `state_dir`.
pub(super) const DIR_NAME: &str = "queue";
/// sled's directory (the index, checkpoints, counters) inside the queue's.
pub(super) const INDEX_DIR: &str = "index";
/// The segment files' directory inside the queue's.
pub(super) const DATA_DIR: &str = "data";
/// The file whose flock says the queue is open, inside the queue's directory.
const LOCK_NAME: &str = "lock";

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
    // Declared before `inner`, so dropped first: the last handle stops and
    // joins the flusher thread, and `Inner` (sled, the directory lock) is then
    // dropped on the caller's thread, so that the queue can be opened again
    // as soon as the drop returns.
    _flusher: Arc<Flusher>,
    inner: Arc<Inner>,
}

struct Inner {
    /// The flock on `<state_dir>/queue/lock`, held while the queue is open:
    /// released when this is dropped, unlike sled's own lock, which its
    /// background threads may hold a moment longer.
    _dir_lock: File,
    db: sled::Db,
    /// `<state_dir>/queue`, named in errors.
    path: Box<Path>,
    /// `<state_dir>/queue/data`, the segment files.
    data: Box<Path>,
    options: Options,
    state: Mutex<State>,
    /// Notified after every push that stored a batch, and after reroutes.
    pushed: Event,
}

/// What the queue keeps in memory, rebuilt by one scan of the index on open.
///
/// Invariant: every change to it follows a successful write made while
/// holding its mutex, so it describes what is on disk.
struct State {
    /// Invariant: `lanes[i]` is the lane with `by_lane[&lanes[i].lane] == i`;
    /// entries are never removed, so `BatchId::lane` stays valid.
    lanes: Vec<LaneState>,
    by_lane: HashMap<Lane, usize>,
    /// The sequence number of the next batch (or checkpoint-only write).
    next_seq: u64,
    /// The value under `NEXT_SEQ_KEY`, to write it only when it changes.
    next_seq_stored: u64,
    /// Payload bytes over all lanes.
    bytes: u64,
    /// The newest checkpoint of each source.
    checkpoints: HashMap<String, Latest>,
    /// The payload files.
    segments: Segments,
    /// Every removal from the index since the last flush, for crash recovery.
    /// `None` while the queue is being opened (and in `inspect`).
    acks: Option<AckLog>,
    /// Whether a flush of the index completed since the ack log last switched
    /// files: only then may it switch (and empty the other file).
    flushed_since_switch: bool,
    /// The filesystem's free space; `None` in `inspect`.
    space: Option<Space>,
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

/// A source's newest checkpoint, and where it is stored.
struct Latest {
    /// The sequence number of the batch that carried it, or the one taken for
    /// a checkpoint written alone.
    seq: u64,
    value: Vec<u8>,
    /// Whether the source's checkpoint key holds it; if not, only the index
    /// record of batch `seq` does.
    in_key: bool,
}

impl Queue {
    /// Opens (or creates) the queue in `<state_dir>/queue` and recovers it.
    ///
    /// Recovery rebuilds the counters with one scan of the index (small records,
    /// not the payloads), deletes index records that do not decode or point
    /// outside their segment file, and returns them as [`DropReason::Corrupt`]
    /// drops for the caller to count. Segment files no record names are deleted.
    ///
    /// # Errors
    ///
    /// [`QueueError::Locked`] if another process (a running agent) has the
    /// directory open, [`QueueError::NewerFormat`] if a newer tern wrote it,
    /// [`QueueError::Storage`] if it cannot be created or read.
    pub fn open(state_dir: &Path, options: &Options) -> Result<(Queue, Vec<Dropped>), QueueError> {
        let path: Box<Path> = state_dir.join(DIR_NAME).into();
        let data: Box<Path> = path.join(DATA_DIR).into();
        let dir_lock = lock_dir(&path)?;
        // Our lock is ours: a `Locked` from sled now comes from its threads
        // of a queue this process just dropped (or an older tern without the
        // lock file), so wait for them a bounded time.
        let db = open_db_waiting(&path, options.cache_capacity)?;
        let sled_err = |e| QueueError::from_sled(&path, e);
        let data_err = |source| QueueError::Storage {
            path: data.clone(),
            source,
        };
        if check_format(&db, &path)? != Some(FORMAT_VERSION) {
            // New, or version 1, whose records this version reads as they are.
            db.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes()[..])
                .map_err(sled_err)?;
        }
        std::fs::create_dir_all(&data).map_err(data_err)?;
        // Removals a crash kept from the index: done again first, so that
        // batches a gateway already has are not read back.
        let acked = AckLog::replay(&path).map_err(|source| QueueError::Storage {
            path: path.clone(),
            source,
        })?;
        for key in &acked {
            if let Some(value) = db.get(key).map_err(sled_err)? {
                carry_checkpoint(&db, key, &value).map_err(sled_err)?;
                db.remove(key).map_err(sled_err)?;
            }
        }
        let acked: HashSet<Vec<u8>> = acked.into_iter().collect();
        let files = Segments::list(&data, true).map_err(data_err)?;
        let Scan { mut state, corrupt } = Scan::run(&db, &path, &files, true)?;
        let segments::Recovered { found, lost } = state
            .segments
            .unindexed(&data, state.next_seq)
            .map_err(data_err)?;
        // Batches pushed and acked since the index's last write: in their
        // segment, but delivered. Their checkpoints and numbers still count.
        let (found, delivered): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|u| !acked.contains(&index_key(&u.prefix, u.seq)));
        for u in &delivered {
            carry_checkpoint(&db, &index_key(&u.prefix, u.seq), &u.value).map_err(sled_err)?;
        }
        let highest_acked = acked
            .iter()
            .filter_map(|key| split_index_key(key))
            .map(|(_, seq)| seq);
        if let Some(highest) = highest_acked.max() {
            state.next_seq = state.next_seq.max(highest.saturating_add(1));
        }
        let recovered = state.adopt(found);
        for (key, value) in &recovered {
            db.insert(&key[..], &value[..]).map_err(sled_err)?;
        }
        if !recovered.is_empty() {
            log::warn!(
                "Indexed batches again from their segment files after a crash path={} batches={}",
                path.display(),
                recovered.len()
            );
        }

        let mut dropped = Vec::with_capacity(corrupt.len() + lost.len());
        for (key, drop) in corrupt {
            db.remove(key).map_err(sled_err)?;
            dropped.push(drop);
        }
        for lost in lost {
            log::error!(
                "Dropped a damaged batch found in a queue segment segment={:016x} offset={} points={} bytes={}",
                lost.segment,
                lost.offset,
                lost.items,
                lost.bytes
            );
            dropped.push(Dropped {
                id: None,
                lane: lost.prefix.as_deref().and_then(decode_lane_prefix),
                items: lost.items,
                bytes: lost.bytes,
                reason: DropReason::Corrupt,
            });
        }
        if !dropped.is_empty() {
            log::error!(
                "Dropped undecodable batches from the disk queue path={} batches={}",
                path.display(),
                dropped.len()
            );
        }
        if state.next_seq > state.next_seq_stored {
            db.insert(NEXT_SEQ_KEY, &state.next_seq.to_be_bytes()[..])
                .map_err(sled_err)?;
            state.next_seq_stored = state.next_seq;
        }
        db.flush().map_err(sled_err)?;
        // Only now that the index is on disk: the segments it does not name,
        // and the replayed removals.
        state.segments.mark_unreferenced_dead();
        segments::delete(&data, &state.segments.take_dead()).map_err(data_err)?;
        let dir_err = |source| QueueError::Storage {
            path: path.clone(),
            source,
        };
        state.acks = Some(AckLog::create(&path).map_err(dir_err)?);
        state.flushed_since_switch = true;
        let space = Space::open(&path).map_err(dir_err)?;
        let room = state
            .bytes
            .saturating_add(space.available().saturating_sub(space.keep_free()));
        if room < options.max_size {
            log::warn!(
                "The disk queue is limited by the free space of its filesystem path={} max_size={} configured_max_size={} available={} keep_free={}",
                path.display(),
                room,
                options.max_size,
                space.available(),
                space.keep_free()
            );
        }
        state.space = Some(space);

        let total = state.stats().total();
        log::info!(
            "Opened the disk queue path={} batches={} bytes={}",
            path.display(),
            total.batches,
            total.bytes
        );
        let inner = Inner {
            _dir_lock: dir_lock,
            db,
            path,
            data,
            options: options.clone(),
            state: Mutex::new(state),
            pushed: Event::new(),
        };
        let inner = Arc::new(inner);
        let flusher = Flusher::start(inner.clone()).map_err(|source| QueueError::Storage {
            path: inner.path.clone(),
            source,
        })?;
        Ok((
            Queue {
                _flusher: Arc::new(flusher),
                inner,
            },
            dropped,
        ))
    }

    /// Reads the backlog of the queue in `<state_dir>/queue` without changing
    /// its batches: for `tern queue` on a stopped agent.
    ///
    /// A directory that does not exist reads as an empty queue. Damaged records
    /// are skipped (the agent drops them on its next start). The storage engine
    /// may still complete its own crash recovery in the directory.
    ///
    /// # Errors
    ///
    /// [`QueueError::Locked`] while an agent runs on this `state_dir`: ask it
    /// over HTTP instead. Otherwise as [`Queue::open`].
    pub fn inspect(state_dir: &Path) -> Result<Stats, QueueError> {
        let path: Box<Path> = state_dir.join(DIR_NAME).into();
        if !path.join(INDEX_DIR).exists() {
            return Ok(Stats::default());
        }
        let _dir_lock = lock_dir(&path)?;
        let db = open_db_waiting(&path, INSPECT_CACHE)?;
        check_format(&db, &path)?;
        let data = path.join(DATA_DIR);
        let files = Segments::list(&data, false).map_err(|source| QueueError::Storage {
            path: data.clone().into(),
            source,
        })?;
        let mut scan = Scan::run(&db, &path, &files, false)?;
        let segments::Recovered { found, .. } = scan
            .state
            .segments
            .unindexed(&data, scan.state.next_seq)
            .map_err(|source| QueueError::Storage {
                path: data.clone().into(),
                source,
            })?;
        scan.state.adopt(found);
        Ok(scan.state.stats())
    }

    /// Stores a batch in `lane` under the configured [`Options::full_policy`].
    ///
    /// With [`Options::fsync`] on, returns once the batch and its checkpoint are
    /// on disk. Either both the batch and its checkpoint are stored, or
    /// neither: they are one sled record.
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
        let mut victims = Vec::new();
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
                    victims = state.plan_eviction(inner, len - free)?;
                    true
                }
            }
        };

        let mut dropped = Vec::new();
        let seq = state.next_seq;
        if store {
            // The payload first: the index record written next is what makes
            // the batch exist, so it must never point at bytes not yet written.
            let (fsync, interval) = (inner.options.fsync, inner.options.flush_interval);
            let lane_state = state.lane(lane_idx);
            let key = index_key(&lane_state.prefix, seq);
            let prefix = lane_state.prefix.clone();
            let make_record = |at: segments::Appended| IndexRecord {
                created_ms: millis(batch.created),
                items: batch.items,
                len,
                segment: at.segment,
                offset: at.offset,
            };
            let index_value = |at| make_record(at).encode(checkpoint);
            let appended = state.segments.append(
                &inner.data,
                lane_idx,
                seq,
                batch.payload,
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
                    return Err(inner.data_err(source));
                }
            };
            let record = make_record(appended);
            // One key holds the batch and its checkpoint: sled writes a key
            // atomically, without the forced writes of its multi-key batches.
            // Not flushed here: the segment record, synced, carries the same
            // value, and `open` indexes it again if this write is lost.
            if let Err(err) = inner.db.insert(key, value) {
                state.segments.abandon(&inner.data, lane_idx);
                return Err(inner.sled_err(err));
            }
            state.next_seq = seq + 1;
            state.remember(lane_idx, seq, record);
            state.segments.reference(&record);
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
        let (lane_idx, prefix) = {
            let state = inner.lock();
            match state.by_lane.get(lane) {
                Some(&idx) => (idx, state.lane(idx).prefix.clone()),
                None => return Ok(peeked),
            }
        };
        let start = index_key(&prefix, after.map_or(0, |id| id.seq.saturating_add(1)));
        // Read without the state lock, so that pushes go on meanwhile; what looks
        // wrong is looked at again under the lock by `Inner::repair`.
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

    /// The backlog per lane, from memory: cheap enough for every scrape.
    pub fn stats(&self) -> Stats {
        self.inner.lock().stats()
    }

    /// A future that completes at the next push that stores a batch (or the next
    /// reroute), in any lane.
    ///
    /// The listener is registered when this returns, so the race-free way to
    /// wait for work is: call `listen`, then [`Queue::peek`], and wait on the
    /// listener only if the peek found nothing.
    pub fn listen(&self) -> PushListener {
        PushListener(self.inner.pushed.listen())
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

    /// Writes everything to disk now (also done when the last clone is dropped).
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if the write or the fsync fails.
    pub fn flush(&self) -> Result<(), QueueError> {
        self.inner.flush_all()
    }

    /// Bytes the queue's files take on disk (index and segments), for the self
    /// metrics.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if the index files cannot be measured.
    pub fn disk_usage(&self) -> Result<u64, QueueError> {
        let index = self
            .inner
            .db
            .size_on_disk()
            .map_err(|e| self.inner.sled_err(e))?;
        Ok(index.saturating_add(self.inner.lock().segments.disk_bytes()))
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
    /// It reads well now (it was being written or moved meanwhile).
    Valid(Batch),
    /// It is damaged, and was deleted.
    Dropped(Dropped),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated
        // before a write (it changes only after one), so carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sled_err(&self, err: sled::Error) -> QueueError {
        QueueError::from_sled(&self.path, err)
    }

    fn data_err(&self, source: std::io::Error) -> QueueError {
        QueueError::Storage {
            path: self.data.clone(),
            source,
        }
    }

    fn corrupt(&self, detail: &'static str) -> QueueError {
        QueueError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// Flushes the index (sled's log).
    fn flush(&self) -> Result<(), QueueError> {
        self.db.flush().map(drop).map_err(|e| self.sled_err(e))
    }

    /// Deletes index key `key` and records the removal in the ack log, so
    /// that a crash before the next flush does not bring the batch back. A
    /// failed append is logged and costs at most a duplicate after a crash.
    fn remove_key(&self, state: &mut State, key: &[u8]) -> Result<(), QueueError> {
        self.db.remove(key).map_err(|e| self.sled_err(e))?;
        if let Some(acks) = state.acks.as_mut() {
            let mut appended = acks.append(key);
            if appended.as_ref().is_err_and(is_disk_full)
                && state.space.as_mut().is_some_and(Space::release_reserve)
            {
                appended = acks.append(key);
            }
            if let Err(err) = appended {
                log::warn!(
                    "Could not record an ack; a crash before the next flush sends the batch again path={} error={err}",
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    /// The background flush, every `flush_interval`: reads the free space,
    /// switches the ack log's file, syncs the segments being appended to
    /// and then flushes the index, in that order, so that the index on disk
    /// never names a record that is not.
    fn tick(&self) {
        let handles = {
            let mut state = self.lock();
            if let Some(space) = state.space.as_mut() {
                space.refresh(true);
            }
            if state.flushed_since_switch {
                let switched = state.acks.as_mut().map_or(Ok(()), AckLog::switch);
                match switched {
                    Ok(()) => state.flushed_since_switch = false,
                    Err(err) => log::warn!(
                        "Could not switch the queue's ack log file path={} error={err}",
                        self.path.display()
                    ),
                }
            }
            state.segments.active_handles()
        };
        let synced = handles.iter().try_for_each(File::sync_data);
        let result = synced
            .map_err(|source| self.data_err(source))
            .and_then(|()| self.flush_with_room());
        match result {
            Ok(()) => self.lock().flushed_since_switch = true,
            Err(err) => log::error!(
                "Writing the disk queue's index failed; acks and pushes of the last interval may be lost in a power cut error={err}"
            ),
        }
    }

    /// Flushes the index; on a full disk, releases the reserve and tries once more.
    fn flush_with_room(&self) -> Result<(), QueueError> {
        match self.flush() {
            Err(QueueError::Storage { ref source, .. })
                if is_disk_full(source)
                    && self
                        .lock()
                        .space
                        .as_mut()
                        .is_some_and(Space::release_reserve) =>
            {
                self.flush()
            }
            other => other,
        }
    }

    /// Syncs the segments being appended to, then flushes the index.
    fn flush_all(&self) -> Result<(), QueueError> {
        let synced = self.lock().segments.sync_active();
        synced.map_err(|source| self.data_err(source))?;
        self.flush_with_room()
    }

    /// Deletes segments no index record names any more, once their records'
    /// removal is on disk (`flushed`, or flushing here), so that a crash never
    /// leaves a record naming a deleted file. On failure the files stay until
    /// the next start, which deletes every segment the index does not name.
    fn delete_segments(&self, dead: Vec<u64>, flushed: bool) {
        if dead.is_empty() {
            return;
        }
        let result = if flushed {
            Ok(())
        } else {
            self.flush_with_room()
        };
        let result = result.and_then(|()| {
            segments::delete(&self.data, &dead).map_err(|source| self.data_err(source))
        });
        if let Err(err) = result {
            log::warn!("Could not delete drained queue segments error={err}");
        }
    }

    /// Writes a checkpoint that no batch carries, under a sequence number of
    /// its own so that it orders after every batch pushed before it.
    fn store_checkpoint(
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

    /// Keeps what the index record of batch `seq` alone holds before it is
    /// deleted: a source's newest checkpoint, moved to the source's key, and
    /// the newest sequence number, so that ids keep growing after a restart.
    /// Written before the delete, so a crash in between leaves both copies.
    fn before_remove(&self, state: &mut State, seq: u64) -> Result<(), QueueError> {
        if seq.saturating_add(1) >= state.next_seq && state.next_seq > state.next_seq_stored {
            let next = state.next_seq;
            self.db
                .insert(NEXT_SEQ_KEY, &next.to_be_bytes()[..])
                .map_err(|e| self.sled_err(e))?;
            state.next_seq_stored = next;
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

    /// Deletes the batches chosen by [`State::plan_eviction`], reporting each.
    fn evict(
        &self,
        state: &mut State,
        victims: &[(usize, Head)],
        reason: DropReason,
        dropped: &mut Vec<Dropped>,
    ) -> Result<(), QueueError> {
        for &(idx, head) in victims {
            self.before_remove(state, head.seq)?;
            let key = index_key(&state.lane(idx).prefix, head.seq);
            self.remove_key(state, &key)?;
            state.forget(idx, head.record);
            state.segments.release(head.record.segment);
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
            self.refresh_head(state, idx, head.seq)?;
        }
        Ok(())
    }

    /// Reads batch `seq`'s payload; `None` if it is missing or fails its checks.
    fn read_batch(
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
    fn remove(&self, id: BatchId) -> Result<Option<(Lane, IndexRecord)>, QueueError> {
        let mut state = self.lock();
        let Some(lane_idx) = state.lane_of(id) else {
            return Ok(None);
        };
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
    fn refresh_head(&self, state: &mut State, idx: usize, removed: u64) -> Result<(), QueueError> {
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

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(err) = self.flush_all() {
            log::error!("Could not flush the disk queue on close error={err}");
            return;
        }
        let dead = self.lock().segments.take_dead();
        self.delete_segments(dead, true);
    }
}

impl State {
    fn new(segments: Segments) -> State {
        State {
            lanes: Vec::new(),
            by_lane: HashMap::new(),
            next_seq: 0,
            next_seq_stored: 0,
            bytes: 0,
            checkpoints: HashMap::new(),
            segments,
            acks: None,
            flushed_since_switch: false,
            space: None,
        }
    }

    /// The most payload the queue may hold now: `max_size`, or less when the
    /// filesystem has less room than that beyond what the queue keeps free;
    /// with the drop reason that applies when a batch does not fit.
    fn limit(&mut self, max_size: u64) -> (u64, DropReason) {
        let Some(space) = self.space.as_mut() else {
            return (max_size, DropReason::QueueFull);
        };
        space.refresh(false);
        let room = self
            .bytes
            .saturating_add(space.available().saturating_sub(space.keep_free()));
        if room < max_size {
            (room, DropReason::DiskFull)
        } else {
            (max_size, DropReason::QueueFull)
        }
    }

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

    /// Records `value` as `source`'s checkpoint if it is newer than the one known.
    fn note_checkpoint(&mut self, source: &str, seq: u64, value: &[u8], in_key: bool) {
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

    /// Chooses the globally oldest batches whose payloads add up to `need` bytes.
    /// Takes in batches found by [`Segments::unindexed`] as if pushed now;
    /// returns the index entries to write for them. Any that does not decode
    /// is left out (its file is then deleted as unreferenced).
    fn adopt(&mut self, found: Vec<segments::Unindexed>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut entries = Vec::with_capacity(found.len());
        for segments::Unindexed { seq, prefix, value } in found {
            let Some(lane) = decode_lane_prefix(&prefix) else {
                continue;
            };
            let Some((record, checkpoint)) = IndexRecord::decode_with_checkpoint(&value)
                .filter(|(record, _)| self.segments.contains(record))
            else {
                continue;
            };
            let idx = match self.by_lane.get(&lane) {
                Some(&idx) => idx,
                None => self.add_lane(lane, prefix.clone()),
            };
            self.remember(idx, seq, record);
            self.segments.reference(&record);
            if let Some((source, checkpoint)) = checkpoint {
                self.note_checkpoint(source, seq, checkpoint, false);
            }
            self.next_seq = self.next_seq.max(seq.saturating_add(1));
            entries.push((index_key(&prefix, seq), value));
        }
        entries
    }

    fn plan_eviction(&self, inner: &Inner, need: u64) -> Result<Vec<(usize, Head)>, QueueError> {
        let mut heads: Vec<Option<Head>> = self.lanes.iter().map(|lane| lane.head).collect();
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
            let next = next_head(inner, &self.lane(idx).prefix, head.seq.saturating_add(1))?;
            // Invariant: `heads` has one entry per lane and `idx` came from it.
            heads[idx] = next;
        }
        Ok(victims)
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
    /// Index keys of damaged records, with the drop to report for each.
    corrupt: Vec<(sled::IVec, Dropped)>,
}

impl Scan {
    /// Rebuilds the in-memory state from the index and the segment `files`
    /// found on disk. A record is valid if it decodes and lies inside one of
    /// `files`. With `collect_corrupt`, gathers the others for deletion;
    /// without, skips them.
    fn run(
        db: &sled::Db,
        path: &Path,
        files: &BTreeMap<u64, u64>,
        collect_corrupt: bool,
    ) -> Result<Scan, QueueError> {
        let sled_err = |e| QueueError::from_sled(path, e);
        let mut scan = Scan {
            state: State::new(Segments::new(files)),
            corrupt: Vec::new(),
        };
        let state = &mut scan.state;
        if let Some(value) = db.get(NEXT_SEQ_KEY).map_err(sled_err)? {
            match format::decode_u64(&value) {
                Some(next) => {
                    state.next_seq = next;
                    state.next_seq_stored = next;
                }
                // The records below still give a lower bound; open rewrites it.
                None => log::warn!(
                    "Skipped an undecodable next sequence number path={}",
                    path.display()
                ),
            }
        }
        for item in db.range(&[CHECKPOINT][..]..&[INDEX][..]) {
            let (key, value) = item.map_err(sled_err)?;
            let source = format::checkpoint_source(&key);
            match source.zip(format::decode_checkpoint_value(&value)) {
                Some((source, (seq, checkpoint))) => {
                    state.note_checkpoint(source, seq, checkpoint, true);
                    state.next_seq = state.next_seq.max(seq.saturating_add(1));
                }
                None => log::warn!(
                    "Skipped an undecodable source checkpoint path={}",
                    path.display()
                ),
            }
        }

        let mut skipped = 0u64;
        // The lane of the previous key: keys come sorted, so lanes come in runs.
        let mut current: Option<usize> = None;
        for item in db.range(&[INDEX][..]..&[INDEX_END][..]) {
            let (key, value) = item.map_err(sled_err)?;
            let split = split_index_key(&key);
            if let Some((_, seq)) = split {
                // Even a damaged record's number stays used.
                state.next_seq = state.next_seq.max(seq.saturating_add(1));
            }
            let undecoded = IndexRecord::decode(&value);
            let decoded = IndexRecord::decode_with_checkpoint(&value)
                .filter(|(record, _)| state.segments.contains(record));
            let lane_idx = match (split, &decoded, current) {
                (Some((prefix, _)), Some(_), Some(idx)) if state.lane(idx).prefix == prefix => {
                    Some(idx)
                }
                (Some((prefix, _)), Some(_), _) => {
                    decode_lane_prefix(prefix).map(|lane| match state.by_lane.get(&lane) {
                        Some(&idx) => idx,
                        None => state.add_lane(lane, prefix.to_vec()),
                    })
                }
                _ => None,
            };
            match (split, decoded, lane_idx) {
                (Some((_, seq)), Some((record, checkpoint)), Some(idx)) => {
                    state.remember(idx, seq, record);
                    state.segments.reference(&record);
                    if let Some((source, value)) = checkpoint {
                        state.note_checkpoint(source, seq, value, false);
                    }
                    current = Some(idx);
                }
                _ if collect_corrupt => {
                    // A record that decodes but whose payload is gone (its
                    // segment deleted, truncated or set aside) still says
                    // what was lost.
                    let lane = split.and_then(|(prefix, _)| decode_lane_prefix(prefix));
                    let drop = Dropped {
                        id: None,
                        lane,
                        items: undecoded.map_or(0, |r| r.items),
                        bytes: undecoded.map_or(0, |r| r.len),
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

/// Opens the sled index of the queue in `path`, with our settings; see "Limits"
/// in the module docs for each.
pub(super) fn open_db(
    path: &Path,
    cache_capacity: u64,
    flush_interval: Option<Duration>,
) -> Result<sled::Db, QueueError> {
    let index = path.join(INDEX_DIR);
    std::fs::create_dir_all(&index).map_err(|source| QueueError::Storage {
        path: path.into(),
        source,
    })?;
    // The queue flushes sled itself (see `Inner::tick`), after syncing the
    // segments: sled's own timer would write an index naming records that
    // may not be on disk yet.
    let flush_every_ms =
        flush_interval.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    sled::Config::new()
        .path(index)
        .cache_capacity(cache_capacity)
        .flush_every_ms(flush_every_ms)
        // sled 0.34.7 stores the mode but never reads it; set for clarity.
        .mode(sled::Mode::LowSpace)
        // The index holds small binary records; zstd (a C library, not even
        // compiled in) would gain nothing.
        .use_compression(false)
        .open()
        .map_err(|e| QueueError::from_sled(path, e))
}

/// Checks the format version; returns it, or `None` for a new queue.
fn check_format(db: &sled::Db, path: &Path) -> Result<Option<u32>, QueueError> {
    let Some(value) = db
        .get(FORMAT_KEY)
        .map_err(|e| QueueError::from_sled(path, e))?
    else {
        return Ok(None);
    };
    match format::decode_u32(&value) {
        Some(found @ 1..=FORMAT_VERSION) => Ok(Some(found)),
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

/// How long `open` waits for sled's lock when the queue's own lock is free.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Takes the exclusive lock on `<state_dir>/queue/lock`, creating the
/// directory; [`QueueError::Locked`] at once if another process holds it.
fn lock_dir(path: &Path) -> Result<File, QueueError> {
    let storage = |source| QueueError::Storage {
        path: path.into(),
        source,
    };
    std::fs::create_dir_all(path).map_err(storage)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join(LOCK_NAME))
        .map_err(storage)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(QueueError::Locked { path: path.into() }),
        Err(err) => Err(storage(err.into())),
    }
}

/// Opens the index, waiting up to [`SLED_LOCK_WAIT`] for sled's lock (held a
/// moment by the background threads of a queue this process dropped), and
/// releasing the reserve if the filesystem is too full to open it.
fn open_db_waiting(path: &Path, cache_capacity: u64) -> Result<sled::Db, QueueError> {
    let deadline = Instant::now() + SLED_LOCK_WAIT;
    let mut released = false;
    loop {
        match open_db(path, cache_capacity, None) {
            Err(QueueError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(QueueError::Storage { ref source, .. }) if is_disk_full(source) && !released => {
                released = true;
                if !space::release_reserve_in(path) {
                    return open_db(path, cache_capacity, None);
                }
            }
            other => return other,
        }
    }
}

/// Copies the checkpoint carried by index value `value` (of `key`) to its
/// source's checkpoint key, unless that key holds a newer one: for an index
/// record about to be deleted during recovery.
fn carry_checkpoint(db: &sled::Db, key: &[u8], value: &[u8]) -> Result<(), sled::Error> {
    let (Some((_, seq)), Some((_, Some((source, checkpoint))))) = (
        split_index_key(key),
        IndexRecord::decode_with_checkpoint(value),
    ) else {
        return Ok(());
    };
    let stored = db.get(checkpoint_key(source))?;
    let newer = stored
        .as_deref()
        .and_then(format::decode_checkpoint_value)
        .map_or(true, |(known, _)| known < seq);
    if newer {
        let value = format::encode_checkpoint_value(seq, checkpoint);
        db.insert(checkpoint_key(source), value)?;
    }
    Ok(())
}

/// The background flush thread (`tern-queue-flush`) of one open queue.
struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(inner: Arc<Inner>) -> std::io::Result<Flusher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = inner.options.flush_interval;
        let thread = std::thread::Builder::new()
            .name("tern-queue-flush".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    inner.tick();
                }
            })?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
