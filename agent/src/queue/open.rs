//! Opening the queue: the directory lock, sled, the format check, and the
//! recovery scan that rebuilds the in-memory state from the index, adopts
//! the segment records the index lost and replays the ack log (see the
//! module docs, "Recovery"); and [`Queue::inspect`] for `tern queue`.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;

use super::acklog::AckLog;
use super::batch::{DropReason, Dropped};
use super::error::QueueError;
use super::format::{
    self, checkpoint_key, decode_lane_prefix, index_key, split_index_key, IndexRecord, CHECKPOINT,
    FORMAT_KEY, FORMAT_VERSION, INDEX, INDEX_END, NEXT_SEQ_KEY,
};
use super::options::Options;
use super::segments::{self, Segments};
use super::space::{self, is_disk_full, Space};
use super::stats::Stats;
use super::store::{Flusher, Inner, Queue, State, DATA_DIR, DIR_NAME, INDEX_DIR};

/// The file whose flock says the queue is open, inside the queue's directory.
pub(super) const LOCK_NAME: &str = "lock";

/// Cache for [`Queue::inspect`], which reads each index record once.
pub(super) const INSPECT_CACHE: u64 = 1024 * 1024;

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
            // The scan above read the checkpoint keys before this one was
            // written: the source must resume after this batch, not before.
            if let Some((_, Some((source, checkpoint)))) =
                IndexRecord::decode_with_checkpoint(&u.value)
            {
                state.note_checkpoint(source, u.seq, checkpoint, true);
            }
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
}

impl State {
    /// Chooses the globally oldest batches whose payloads add up to `need` bytes.
    /// Takes in batches found by [`Segments::unindexed`] as if pushed now;
    /// returns the index entries to write for them. Any that does not decode
    /// is left out (its file is then deleted as unreferenced).
    pub(super) fn adopt(&mut self, found: Vec<segments::Unindexed>) -> Vec<(Vec<u8>, Vec<u8>)> {
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
}

/// The result of reading the whole index once.
pub(super) struct Scan {
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
pub(super) fn check_format(db: &sled::Db, path: &Path) -> Result<Option<u32>, QueueError> {
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

/// How long `open` waits for sled's lock when the queue's own lock is free.
pub(super) const SLED_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Takes the exclusive lock on `<state_dir>/queue/lock`, creating the
/// directory; [`QueueError::Locked`] at once if another process holds it.
pub(super) fn lock_dir(path: &Path) -> Result<File, QueueError> {
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
pub(super) fn open_db_waiting(path: &Path, cache_capacity: u64) -> Result<sled::Db, QueueError> {
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
pub(super) fn carry_checkpoint(db: &sled::Db, key: &[u8], value: &[u8]) -> Result<(), sled::Error> {
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
