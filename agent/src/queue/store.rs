//! The [`Queue`] and the state it shares between its paths: sled, the
//! segment files, the in-memory counters, the flusher thread, and the
//! operations every path uses (flush, remove a key, stats). The paths
//! themselves are `open` (recovery), `writer` (push) and `reader` (peek,
//! ack, drop, move).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use event_listener::{Event, EventListener, Listener};

use super::acklog::AckLog;
use super::error::QueueError;
use super::format::{self, lane_prefix, IndexRecord};
use super::lane::{BatchId, Lane};
use super::memory::Held;
use super::options::Options;
use super::segments::{self, Segments};
use super::space::{is_disk_full, Space};
use super::stats::{Backlog, LaneStats, Stats};

/// The queue's directory under the agent's `state_dir`.
pub(super) const DIR_NAME: &str = "queue";
/// sled's directory (the index, checkpoints, counters) inside the queue's.
pub(super) const INDEX_DIR: &str = "index";
/// The segment files' directory inside the queue's.
pub(super) const DATA_DIR: &str = "data";

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
    pub(super) _flusher: Arc<Flusher>,
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    /// The flock on `<state_dir>/queue/lock`, held while the queue is open:
    /// released when this is dropped, unlike sled's own lock, which its
    /// background threads may hold a moment longer.
    pub(super) _dir_lock: File,
    pub(super) db: sled::Db,
    /// `<state_dir>/queue`, named in errors.
    pub(super) path: Box<Path>,
    /// `<state_dir>/queue/data`, the segment files.
    pub(super) data: Box<Path>,
    pub(super) options: Options,
    pub(super) state: Mutex<State>,
    /// Notified after every push that stored a batch, and after reroutes.
    pub(super) pushed: Event,
}

/// What the queue keeps in memory, rebuilt by one scan of the index on open.
///
/// Invariant: every change to it follows a successful write made while
/// holding its mutex, so it describes what is on disk.
pub(super) struct State {
    /// Invariant: `lanes[i]` is the lane with `by_lane[&lanes[i].lane] == i`;
    /// entries are never removed, so `BatchId::lane` stays valid.
    pub(super) lanes: Vec<LaneState>,
    pub(super) by_lane: HashMap<Lane, usize>,
    /// The sequence number of the next batch (or checkpoint-only write).
    pub(super) next_seq: u64,
    /// The value under `NEXT_SEQ_KEY`, to write it only when it changes.
    pub(super) next_seq_stored: u64,
    /// Payload bytes over all lanes, held in memory or on disk.
    pub(super) bytes: u64,
    /// Payload bytes of the batches held in memory (memory first).
    pub(super) held_bytes: u64,
    /// Payload bytes written to segment files since open (pushed or spilled).
    pub(super) written_bytes: u64,
    /// The newest checkpoint of each source.
    pub(super) checkpoints: HashMap<String, Latest>,
    /// The payload files.
    pub(super) segments: Segments,
    /// Every removal from the index since the last flush, for crash recovery.
    /// `None` while the queue is being opened (and in `inspect`).
    pub(super) acks: Option<AckLog>,
    /// Whether a flush of the index completed since the ack log last switched
    /// files: only then may it switch (and empty the other file).
    pub(super) flushed_since_switch: bool,
    /// The filesystem's free space; `None` in `inspect`.
    pub(super) space: Option<Space>,
}

pub(super) struct LaneState {
    pub(super) lane: Lane,
    /// `format::lane_prefix(&lane)`.
    pub(super) prefix: Vec<u8>,
    pub(super) batches: u64,
    pub(super) bytes: u64,
    pub(super) items: u64,
    /// The oldest batch of the lane on disk; `None` when none is.
    pub(super) head: Option<Head>,
    /// Batches held in memory (memory first), oldest first. Invariant: each
    /// is newer than every batch of the lane on disk, so the lane reads the
    /// disk first, then these.
    pub(super) held: VecDeque<Held>,
    /// How many held batches went to disk, so that a peek that read the disk
    /// without the lock can tell whether one moved past it meanwhile.
    pub(super) spills: u64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) record: IndexRecord,
}

/// A source's newest checkpoint, and where it is stored.
pub(super) struct Latest {
    /// The sequence number of the batch that carried it, or the one taken for
    /// a checkpoint written alone.
    pub(super) seq: u64,
    pub(super) value: Vec<u8>,
    /// Whether the source's checkpoint key holds it; if not, only the index
    /// record of batch `seq` does.
    pub(super) in_key: bool,
}

impl Queue {
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

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated
        // before a write (it changes only after one), so carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn sled_err(&self, err: sled::Error) -> QueueError {
        QueueError::from_sled(&self.path, err)
    }

    pub(super) fn data_err(&self, source: std::io::Error) -> QueueError {
        QueueError::Storage {
            path: self.data.clone(),
            source,
        }
    }

    pub(super) fn corrupt(&self, detail: &'static str) -> QueueError {
        QueueError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// Flushes the index (sled's log).
    pub(super) fn flush(&self) -> Result<(), QueueError> {
        self.db.flush().map(drop).map_err(|e| self.sled_err(e))
    }

    /// Deletes index key `key` and records the removal in the ack log, so
    /// that a crash before the next flush does not bring the batch back. A
    /// failed append is logged and costs at most a duplicate after a crash.
    pub(super) fn remove_key(&self, state: &mut State, key: &[u8]) -> Result<(), QueueError> {
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
    pub(super) fn tick(&self) {
        // Under the lock throughout: a push between the segments' sync and
        // the index's flush would put an index record on disk that names a
        // payload that is not (the VM power-cut test, fsync off: acked
        // batches up to 20 s old dropped as damaged when the sync was
        // outside the lock; 0.7 s at most with it). With fsync off, this
        // holds pushes back for one sync and one flush a second.
        let mut state = self.lock();
        if let Some(space) = state.space.as_mut() {
            space.refresh_now(true);
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
        let result = state
            .segments
            .sync_active()
            .map_err(|source| self.data_err(source))
            .and_then(|()| self.flush_locked(&mut state));
        match result {
            Ok(()) => state.flushed_since_switch = true,
            Err(err) => log::error!(
                "Writing the disk queue's index failed; acks and pushes of the last interval may be lost in a power cut error={err}"
            ),
        }
    }

    /// Flushes the index with the state lock held; on a full disk, releases
    /// the reserve and tries once more.
    fn flush_locked(&self, state: &mut State) -> Result<(), QueueError> {
        match self.flush() {
            Err(QueueError::Storage { ref source, .. })
                if is_disk_full(source)
                    && state.space.as_mut().is_some_and(Space::release_reserve) =>
            {
                self.flush()
            }
            other => other,
        }
    }

    /// Flushes the index; on a full disk, releases the reserve and tries once more.
    pub(super) fn flush_with_room(&self) -> Result<(), QueueError> {
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

    /// Writes the batches held in memory to disk, syncs the segments being
    /// appended to, then flushes the index.
    pub(super) fn flush_all(&self) -> Result<(), QueueError> {
        let synced = {
            let mut state = self.lock();
            self.spill_until(&mut state, 0)?;
            state.segments.sync_active()
        };
        synced.map_err(|source| self.data_err(source))?;
        self.flush_with_room()
    }

    /// Deletes segments no index record names any more, once their records'
    /// removal is on disk (`flushed`, or flushing here), so that a crash never
    /// leaves a record naming a deleted file. On failure the files stay until
    /// the next start, which deletes every segment the index does not name.
    pub(super) fn delete_segments(&self, dead: Vec<u64>, flushed: bool) {
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
    pub(super) fn new(segments: Segments) -> State {
        State {
            lanes: Vec::new(),
            by_lane: HashMap::new(),
            next_seq: 0,
            next_seq_stored: 0,
            bytes: 0,
            held_bytes: 0,
            written_bytes: 0,
            checkpoints: HashMap::new(),
            segments,
            acks: None,
            flushed_since_switch: false,
            space: None,
        }
    }

    pub(super) fn lane(&self, idx: usize) -> &LaneState {
        // Invariant: indexes come from `by_lane` or from a `BatchId` checked by
        // `lane_of`, and lanes are never removed.
        &self.lanes[idx]
    }

    pub(super) fn lane_mut(&mut self, idx: usize) -> &mut LaneState {
        // Invariant: as in `lane`.
        &mut self.lanes[idx]
    }

    /// The lane of a caller-supplied id, if it names one.
    pub(super) fn lane_of(&self, id: BatchId) -> Option<usize> {
        usize::try_from(id.lane)
            .ok()
            .filter(|&idx| idx < self.lanes.len())
    }

    /// The index of `lane`, adding it if new.
    pub(super) fn lane_index(&mut self, lane: &Lane) -> Result<usize, QueueError> {
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

    pub(super) fn add_lane(&mut self, lane: Lane, prefix: Vec<u8>) -> usize {
        let idx = self.lanes.len();
        self.by_lane.insert(lane.clone(), idx);
        self.lanes.push(LaneState {
            lane,
            prefix,
            batches: 0,
            bytes: 0,
            items: 0,
            head: None,
            held: VecDeque::new(),
            spills: 0,
        });
        idx
    }

    /// Counts a batch that is now stored on disk in lane `idx`.
    pub(super) fn remember(&mut self, idx: usize, seq: u64, record: IndexRecord) {
        self.count(idx, record);
        self.note_head(idx, seq, record);
    }

    /// Counts a batch that is now in lane `idx`, in memory or on disk.
    pub(super) fn count(&mut self, idx: usize, record: IndexRecord) {
        self.bytes = self.bytes.saturating_add(record.len);
        let lane = self.lane_mut(idx);
        lane.batches += 1;
        lane.bytes = lane.bytes.saturating_add(record.len);
        lane.items = lane.items.saturating_add(record.items);
    }

    /// Makes batch `seq`, now on disk, lane `idx`'s head if it is older.
    pub(super) fn note_head(&mut self, idx: usize, seq: u64, record: IndexRecord) {
        let lane = self.lane_mut(idx);
        if lane.head.map_or(true, |head| seq < head.seq) {
            lane.head = Some(Head { seq, record });
        }
    }

    /// Uncounts a batch that left lane `idx` (its head is the caller's business).
    pub(super) fn forget(&mut self, idx: usize, record: IndexRecord) {
        self.bytes = self.bytes.saturating_sub(record.len);
        let lane = self.lane_mut(idx);
        lane.batches = lane.batches.saturating_sub(1);
        lane.bytes = lane.bytes.saturating_sub(record.len);
        lane.items = lane.items.saturating_sub(record.items);
    }

    pub(super) fn stats(&self) -> Stats {
        let lanes = self
            .lanes
            .iter()
            .map(|lane| LaneStats {
                lane: lane.lane.clone(),
                backlog: lane.backlog(),
            })
            .collect();
        Stats {
            lanes,
            memory_bytes: self.held_bytes,
            written_bytes: self.written_bytes,
        }
    }
}

impl LaneState {
    pub(super) fn backlog(&self) -> Backlog {
        Backlog {
            batches: self.batches,
            bytes: self.bytes,
            items: self.items,
            oldest_created: self
                .head
                .map(|head| created(head.record))
                .or_else(|| self.held.front().map(Held::created)),
        }
    }
}

impl Head {
    pub(super) fn backlog(&self) -> Backlog {
        Backlog {
            batches: 1,
            bytes: self.record.len,
            items: self.record.items,
            oldest_created: Some(created(self.record)),
        }
    }
}

pub(super) fn lane_id(idx: usize) -> u32 {
    // Invariant: `State::lane_index` refuses to create lane indexes beyond `u32`.
    u32::try_from(idx).unwrap_or(u32::MAX)
}

pub(super) fn len_u64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// Milliseconds since the epoch, clamped to what an index record accepts.
pub(super) fn millis(time: SystemTime) -> u64 {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis())
        .unwrap_or(u64::MAX)
        .min(format::MAX_CREATED_MS)
}

pub(super) fn created(record: IndexRecord) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(record.created_ms)
}

/// The background flush thread (`tern-queue-flush`) of one open queue.
pub(super) struct Flusher {
    pub(super) stop: Option<mpsc::Sender<()>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    pub(super) fn start(inner: Arc<Inner>) -> std::io::Result<Flusher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = inner.options.flush_interval;
        let thread = crate::lifecycle::spawn(
            "tern-queue-flush".into(),
            "the queue's flush thread",
            move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    inner.tick();
                }
            },
        )?;
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
