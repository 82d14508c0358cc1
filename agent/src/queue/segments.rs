//! Segment files: where payloads live, appended per lane and deleted whole.
//!
//! Payloads are kept out of sled because sled 0.34 rewrites whole B-tree leaves
//! when they split or consolidate, which wrote every 20 KiB batch three to five
//! times (see "Limits" in the module docs). A segment is written once, front to
//! back, and deleted once the index no longer refers to any batch in it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::format::{
    check_segment_record, decode_trailer_meta, parse_segment_file_name, parse_segment_header,
    parse_trailer_head, payload_matches, segment_file_name, segment_header, segment_trailer,
    IndexRecord, MAX_TRAILER_META, SEGMENT_HEADER_LEN, TRAILER_HEAD_LEN,
};

/// A lane starts a new segment once its current one has reached this size; a
/// batch larger than this gets a segment of its own. Small enough that a lane
/// that drains in order frees disk space every few dozen batches, large enough
/// that a 256 MiB queue is a few hundred files.
const SEGMENT_TARGET: u64 = 1024 * 1024;

/// With `fsync` on, a record of at least this many bytes starts on a page
/// boundary and is padded with zeros to the next one: appending after a
/// synced partial page writes that page again (and extending a file past a
/// partial last page makes the kernel zero and write it), so an 11 KiB batch
/// would cost four pages instead of three. Smaller records are packed
/// (aligning them would cost disk space and save no write).
const PAGE: u64 = 4096;

/// `at` rounded up to a multiple of [`PAGE`].
fn page_align(at: u64) -> u64 {
    at.div_ceil(PAGE).saturating_mul(PAGE)
}

/// The payload files of one queue and what the index says about them.
///
/// Invariant: `files[id].live` is the number of index records that name
/// segment `id`, counting only records whose sled write succeeded.
pub(super) struct Segments {
    /// Every segment file this process knows of.
    files: BTreeMap<u64, FileInfo>,
    /// The segment each lane (by index) appends to.
    active: HashMap<usize, Active>,
    /// Segments that no record names any more and no lane appends to: to be
    /// deleted once sled has the records' removal on disk.
    dead: Vec<u64>,
    /// The id of the next segment. Invariant: above every id this process has
    /// used or found on disk, so a name is never reused while a deletion of
    /// an older file by that name may still be under way.
    next_id: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct FileInfo {
    /// Bytes in the file.
    len: u64,
    /// Index records naming it.
    live: u64,
    /// The offset of the last record in it that the index named on open (or
    /// since): records before it need no recovery.
    indexed_from: Option<u64>,
}

struct Active {
    id: u64,
    file: File,
    /// When the file was last synced (or created).
    synced: Instant,
}

/// Where a payload was appended.
#[derive(Clone, Copy, Debug)]
pub(super) struct Appended {
    /// The segment's id (its file name).
    pub(super) segment: u64,
    /// The offset of the record's header in the file.
    pub(super) offset: u64,
}

impl Segments {
    /// Lists the segment files in `dir` with their lengths; none if `dir` is missing.
    pub(super) fn list(dir: &Path) -> io::Result<BTreeMap<u64, u64>> {
        let mut files = BTreeMap::new();
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(files),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(parse_segment_file_name) {
                files.insert(id, entry.metadata()?.len());
            }
        }
        Ok(files)
    }

    /// Starts from the files found by [`Segments::list`], none referenced yet;
    /// new segments are numbered after the newest file.
    pub(super) fn new(files: &BTreeMap<u64, u64>) -> Segments {
        let next_id = files
            .keys()
            .next_back()
            .map_or(0, |&id| id.saturating_add(1));
        let files = files
            .iter()
            .map(|(&id, &len)| {
                let info = FileInfo {
                    len,
                    ..FileInfo::default()
                };
                (id, info)
            })
            .collect();
        Segments {
            files,
            active: HashMap::new(),
            dead: Vec::new(),
            next_id,
        }
    }

    /// Whether `record` lies wholly inside a known segment file.
    pub(super) fn contains(&self, record: &IndexRecord) -> bool {
        let len = self.files.get(&record.segment).map(|info| info.len);
        matches!((len, record.end()), (Some(len), Some(end)) if end <= len)
    }

    /// Counts an index record naming its segment (on open, and after a push's
    /// sled write succeeded).
    pub(super) fn reference(&mut self, record: &IndexRecord) {
        if let Some(info) = self.files.get_mut(&record.segment) {
            info.live += 1;
            info.indexed_from = info.indexed_from.max(Some(record.offset));
        }
    }

    /// Uncounts an index record that was removed; a segment left with none,
    /// and not appended to, becomes dead.
    pub(super) fn release(&mut self, segment: u64) {
        let Some(info) = self.files.get_mut(&segment) else {
            return;
        };
        info.live = info.live.saturating_sub(1);
        let appending = self.active.values().any(|active| active.id == segment);
        if info.live == 0 && !appending {
            self.dead.push(segment);
        }
    }

    /// After recovery: every segment no record names is dead.
    pub(super) fn mark_unreferenced_dead(&mut self) {
        let unreferenced = self
            .files
            .iter()
            .filter(|(_, info)| info.live == 0)
            .map(|(&id, _)| id);
        self.dead.extend(unreferenced);
    }

    /// Appends batch `seq`'s payload to lane `lane`'s segment, starting a new
    /// segment when there is none or it is full, followed by a trailer with the
    /// lane's `prefix` and the index value `index_value` makes for the place
    /// the record got; returns the place and that value. With `fsync`,
    /// returns once the record (and a new file's name) is on disk; without,
    /// syncs the segment when it was last synced `interval` ago or more, so
    /// that what a power cut can take does not grow with the kernel's
    /// writeback delay.
    ///
    /// The record only counts once [`Segments::reference`] is called; after a
    /// failure here or in the sled write, call [`Segments::abandon`].
    #[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
    pub(super) fn append(
        &mut self,
        dir: &Path,
        lane: usize,
        seq: u64,
        payload: &[u8],
        (prefix, index_value): (&[u8], impl FnOnce(Appended) -> Vec<u8>),
        fsync: bool,
        interval: Duration,
    ) -> io::Result<(Appended, Vec<u8>)> {
        let full = match self.active.get(&lane) {
            Some(active) => self
                .files
                .get(&active.id)
                .map_or(true, |f| f.len >= SEGMENT_TARGET),
            None => true,
        };
        if full {
            self.retire(lane);
            let id = self.next_id;
            self.next_id = id.saturating_add(1);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(segment_file_name(id)))?;
            self.files.insert(id, FileInfo::default());
            let synced = Instant::now();
            self.active.insert(lane, Active { id, file, synced });
            if fsync {
                // The new name must be on disk before a record points into it.
                if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
                    self.abandon(lane);
                    return Err(err);
                }
            }
        }
        let Some(active) = self.active.get_mut(&lane) else {
            return Err(io::Error::other("segment for lane vanished"));
        };
        let id = active.id;
        let end = self.files.get(&id).map_or(0, |info| info.len);
        let header_len = SEGMENT_HEADER_LEN as u64;
        let payload_len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        // The trailer is short (a lane prefix and an index record): its length
        // does not change whether the record is worth aligning.
        let aligned = fsync && header_len.saturating_add(payload_len) >= PAGE;
        let offset = if aligned { page_align(end) } else { end };
        let appended = Appended {
            segment: id,
            offset,
        };
        let value = index_value(appended);
        let header = segment_header(seq, payload);
        let mut trailer = segment_trailer(prefix, &value);
        let payload_end = offset
            .saturating_add(header_len)
            .saturating_add(payload_len);
        if aligned {
            let trailer_len = u64::try_from(trailer.len()).unwrap_or(u64::MAX);
            let record_end = payload_end.saturating_add(trailer_len);
            let padding = page_align(record_end).saturating_sub(record_end);
            trailer.resize(trailer.len() + usize::try_from(padding).unwrap_or(0), 0);
        }
        let written = active
            .file
            .write_all_at(&header, offset)
            .and_then(|()| {
                active
                    .file
                    .write_all_at(payload, offset.saturating_add(header_len))
            })
            .and_then(|()| active.file.write_all_at(&trailer, payload_end))
            .and_then(|()| {
                if fsync || active.synced.elapsed() >= interval {
                    active.synced = Instant::now();
                    active.file.sync_data()
                } else {
                    Ok(())
                }
            });
        if let Err(err) = written {
            self.abandon(lane);
            return Err(err);
        }
        if let Some(info) = self.files.get_mut(&id) {
            let trailer_len = u64::try_from(trailer.len()).unwrap_or(u64::MAX);
            info.len = payload_end.saturating_add(trailer_len);
        }
        Ok((appended, value))
    }

    /// Finds the batches in the segment files that the index does not hold:
    /// pushed, but their index write was lost in a crash (the index is flushed
    /// in the background; the segment is synced by the push). They are the
    /// records with a sequence number of `next_seq` or more, `next_seq` being
    /// one past every batch the index holds or ever removed. Each file is read
    /// from its last indexed record on (whole if none), and up to its first
    /// record that is torn or damaged: nothing after that was acknowledged
    /// with `fsync` on, and appends never resume in a file found on open.
    ///
    /// Returns `(seq, lane prefix, index value)` in sequence order.
    pub(super) fn unindexed(&self, dir: &Path, next_seq: u64) -> io::Result<Vec<Unindexed>> {
        let mut found = Vec::new();
        for (&id, info) in &self.files {
            let from = info.indexed_from.unwrap_or(0);
            if from >= info.len {
                continue;
            }
            let file = match File::open(dir.join(segment_file_name(id))) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            scan_file(&file, id, from, info.len, next_seq, &mut found)?;
        }
        found.sort_by_key(|u| u.seq);
        Ok(found)
    }

    /// Syncs every segment being appended to: for an explicit flush.
    pub(super) fn sync_active(&mut self) -> io::Result<()> {
        for active in self.active.values_mut() {
            active.file.sync_data()?;
            active.synced = Instant::now();
        }
        Ok(())
    }

    /// Stops appending to lane `lane`'s segment after a failed write: whatever
    /// was half-written there is never named by the index.
    pub(super) fn abandon(&mut self, lane: usize) {
        self.retire(lane);
    }

    /// Closes lane `lane`'s segment for appends; dead if nothing refers to it.
    fn retire(&mut self, lane: usize) {
        if let Some(active) = self.active.remove(&lane) {
            if self
                .files
                .get(&active.id)
                .map_or(true, |info| info.live == 0)
            {
                self.dead.push(active.id);
            }
        }
    }

    /// Takes the dead segments, forgetting them; the caller deletes the files.
    pub(super) fn take_dead(&mut self) -> Vec<u64> {
        let dead = std::mem::take(&mut self.dead);
        for id in &dead {
            self.files.remove(id);
        }
        dead
    }

    /// Bytes in all segment files.
    pub(super) fn disk_bytes(&self) -> u64 {
        self.files.values().map(|info| info.len).sum()
    }
}

/// A batch found in a segment file that the index does not hold.
#[derive(Debug)]
pub(super) struct Unindexed {
    pub(super) seq: u64,
    /// Its lane's index key prefix.
    pub(super) prefix: Vec<u8>,
    /// Its index record value, checkpoint included.
    pub(super) value: Vec<u8>,
}

/// Reads `len` bytes at `at`; `None` when the file ends first.
fn read_at(file: &File, at: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
    // Callers check `at + len` against the file's length first, so this is
    // bounded by the file.
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    let mut buf = vec![0; len];
    match file.read_exact_at(&mut buf, at) {
        Ok(()) => Ok(Some(buf)),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(err) => Err(err),
    }
}

/// Walks the records of segment `id` from `pos` to `len` (see
/// [`Segments::unindexed`]), adding those from `next_seq` on to `found`.
fn scan_file(
    file: &File,
    id: u64,
    mut pos: u64,
    len: u64,
    next_seq: u64,
    found: &mut Vec<Unindexed>,
) -> io::Result<()> {
    const HEADER: u64 = SEGMENT_HEADER_LEN as u64;
    const TRAILER_HEAD: u64 = TRAILER_HEAD_LEN as u64;
    let fits = |at: u64, n: u64| at.checked_add(n).is_some_and(|end| end <= len);
    while fits(pos, HEADER) {
        let read_header = |at| -> io::Result<_> {
            let bytes = if fits(at, HEADER) {
                read_at(file, at, HEADER)?
            } else {
                None
            };
            Ok(bytes.as_deref().and_then(parse_segment_header))
        };
        // A record follows the previous one directly, or on the next page
        // boundary (see `PAGE`); the gap between reads as zeros.
        let header = match read_header(pos)? {
            Some(header) => header,
            None if pos % PAGE != 0 => {
                pos = page_align(pos);
                match read_header(pos)? {
                    Some(header) => header,
                    None => break,
                }
            }
            None => break,
        };
        let payload_at = pos + HEADER;
        if !fits(payload_at, header.len) {
            break;
        }
        let payload_end = payload_at + header.len;
        if !header.has_trailer {
            // Format 1: indexed before its push returned; nothing to recover.
            pos = payload_end;
            continue;
        }
        if !fits(payload_end, TRAILER_HEAD) {
            break;
        }
        let Some((meta_len, meta_crc)) = read_at(file, payload_end, TRAILER_HEAD)?
            .as_deref()
            .and_then(parse_trailer_head)
        else {
            break;
        };
        let meta_at = payload_end + TRAILER_HEAD;
        if meta_len > MAX_TRAILER_META || !fits(meta_at, meta_len) {
            break;
        }
        let Some(meta) = read_at(file, meta_at, meta_len)? else {
            break;
        };
        let Some((prefix, value)) = decode_trailer_meta(&meta, meta_crc) else {
            break;
        };
        if header.seq >= next_seq {
            let Some(payload) = read_at(file, payload_at, header.len)? else {
                break;
            };
            let placed = IndexRecord::decode(value).is_some_and(|record| {
                record.segment == id && record.offset == pos && record.len == header.len
            });
            if !placed || !payload_matches(&header, &payload) {
                break;
            }
            found.push(Unindexed {
                seq: header.seq,
                prefix: prefix.to_vec(),
                value: value.to_vec(),
            });
        }
        pos = meta_at + meta_len;
    }
    Ok(())
}

/// Reads batch `seq`'s payload back; `None` if its file or record is missing,
/// short or does not match (damaged, or deleted meanwhile).
pub(super) fn read_payload(
    dir: &Path,
    seq: u64,
    record: &IndexRecord,
) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(dir.join(segment_file_name(record.segment))) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    // The length was checked against the file's length on open or written by
    // this process, so this allocation is bounded by the file.
    let Some(total) = usize::try_from(record.len)
        .ok()
        .and_then(|len| len.checked_add(SEGMENT_HEADER_LEN))
    else {
        return Ok(None);
    };
    let mut buf = vec![0; total];
    match file.read_exact_at(&mut buf, record.offset) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let valid = check_segment_record(&buf, seq, record.len).is_some();
    Ok(valid.then(|| buf.split_off(SEGMENT_HEADER_LEN)))
}

/// Deletes segment files; a file already gone is fine.
pub(super) fn delete(dir: &Path, ids: &[u64]) -> io::Result<()> {
    for &id in ids {
        match fs::remove_file(dir.join(segment_file_name(id))) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
