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
    IndexRecord, MAX_TRAILER_META, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, TRAILER_HEAD_LEN,
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
    ///
    /// A file that cannot be opened or read (permissions, I/O error) is named
    /// in an ERROR line and left out, so that the rest of the queue is still
    /// delivered; with `set_aside`, it is also renamed to `<name>.unreadable`,
    /// kept for a person to look at, and never read again. The batches the
    /// index places in it then count as `Corrupt` drops.
    pub(super) fn list(dir: &Path, set_aside: bool) -> io::Result<BTreeMap<u64, u64>> {
        let mut files = BTreeMap::new();
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(files),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(parse_segment_file_name) else {
                continue;
            };
            let path = entry.path();
            match readable_len(&path) {
                Ok(len) => {
                    files.insert(id, len);
                }
                Err(err) => {
                    let aside = path.with_extension("seg.unreadable");
                    let moved = set_aside && fs::rename(&path, &aside).is_ok();
                    log::error!(
                        "Set aside an unreadable queue segment; its batches are dropped as corrupt file={} error={err} moved_to={}",
                        path.display(),
                        if moved { aside.display().to_string() } else { "-".into() }
                    );
                }
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
            if !fsync {
                // The old segment is synced before the index can name a
                // record in the new one: the index is flushed in the
                // background, and must never point past what is on disk.
                if let Some(active) = self.active.get_mut(&lane) {
                    active.file.sync_data()?;
                }
            }
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
                    self.abandon(dir, lane);
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
            self.abandon(dir, lane);
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
    /// from its last indexed record on (whole if none).
    ///
    /// A damaged record does not end the scan: records are framed by a magic
    /// and CRC-checked, so the scan looks for the next record header after it
    /// and goes on, and every intact record after a damaged one is kept. What
    /// was lost is returned in [`Recovered::lost`]: a record whose trailer
    /// still reads tells its lane and items; bytes that no header explains,
    /// followed by an intact record, count as one batch of unknown size. Bytes
    /// after the last intact record of a file are a torn tail (a push that
    /// never returned) and are not a loss. A file that cannot be read is
    /// named in an ERROR line and skipped.
    pub(super) fn unindexed(&self, dir: &Path, next_seq: u64) -> io::Result<Recovered> {
        let mut recovered = Recovered::default();
        for (&id, info) in &self.files {
            let from = info.indexed_from.unwrap_or(0);
            if from >= info.len {
                continue;
            }
            let path = dir.join(segment_file_name(id));
            let scanned = File::open(&path).and_then(|file| {
                let mut scan = FileScan {
                    file: &file,
                    id,
                    len: info.len,
                    next_seq,
                    indexed: info.indexed_from,
                    out: &mut recovered,
                };
                scan.run(from)
            });
            match scanned {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => log::error!(
                    "Could not read a queue segment to recover its batches file={} error={err}",
                    path.display()
                ),
            }
        }
        recovered.found.sort_by_key(|u| u.seq);
        Ok(recovered)
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
    /// was half-written there is never named by the index. A segment that no
    /// index record ever named is deleted at once (no flush can be needed
    /// first), so that failing pushes on a full disk leave no files behind.
    pub(super) fn abandon(&mut self, dir: &Path, lane: usize) {
        let Some(id) = self.active.get(&lane).map(|active| active.id) else {
            return;
        };
        let never_named = self
            .files
            .get(&id)
            .is_some_and(|info| info.indexed_from.is_none() && info.live == 0);
        self.retire(lane);
        if never_named {
            self.dead.retain(|&dead| dead != id);
            self.files.remove(&id);
            let _ = fs::remove_file(dir.join(segment_file_name(id)));
        }
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

/// What [`Segments::unindexed`] found.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Intact records the index does not hold, in sequence order.
    pub(super) found: Vec<Unindexed>,
    /// Records that were pushed after the index's last write and are damaged.
    pub(super) lost: Vec<Lost>,
}

/// A damaged record found by [`Segments::unindexed`]: lost data to count.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Lost {
    /// The segment it was in.
    pub(super) segment: u64,
    /// Where the damage starts.
    pub(super) offset: u64,
    /// Its lane's index key prefix, when its trailer still reads.
    pub(super) prefix: Option<Vec<u8>>,
    /// Items it held (0 when unknown).
    pub(super) items: u64,
    /// Payload bytes (when known), else the length of the damaged stretch.
    pub(super) bytes: u64,
}

/// One record as read at an offset.
enum Record {
    /// Intact: its header, payload and trailer check out. `meta` is `None`
    /// for format-1 records, which have no trailer.
    Intact {
        seq: u64,
        len: u64,
        meta: Option<(Vec<u8>, Vec<u8>)>,
        end: u64,
    },
    /// The header and trailer read, but the payload fails its CRC.
    Damaged {
        seq: u64,
        prefix: Vec<u8>,
        value: Vec<u8>,
        len: u64,
    },
    /// Nothing here reads as a record.
    Garbage,
}

/// Walks one segment file for [`Segments::unindexed`].
struct FileScan<'a> {
    file: &'a File,
    id: u64,
    len: u64,
    next_seq: u64,
    /// The offset of the last record the index holds, if any: damage there is
    /// found (and counted) when the batch is read.
    indexed: Option<u64>,
    out: &'a mut Recovered,
}

impl FileScan<'_> {
    fn run(&mut self, mut pos: u64) -> io::Result<()> {
        const HEADER: u64 = SEGMENT_HEADER_LEN as u64;
        while self.fits(pos, HEADER) {
            let mut record = self.read_record(pos)?;
            if matches!(record, Record::Garbage) && pos % PAGE != 0 {
                // A record follows the previous one directly, or on the next
                // page boundary (see `PAGE`); the gap between reads as zeros.
                let aligned = page_align(pos);
                if self.fits(aligned, HEADER) {
                    if let next @ Record::Intact { .. } = self.read_record(aligned)? {
                        pos = aligned;
                        record = next;
                    }
                }
            }
            match record {
                Record::Intact {
                    seq,
                    len,
                    meta,
                    end,
                } => {
                    if let Some((prefix, value)) = meta {
                        let placed = IndexRecord::decode(&value).is_some_and(|record| {
                            record.segment == self.id && record.offset == pos && record.len == len
                        });
                        if seq >= self.next_seq && placed {
                            self.out.found.push(Unindexed { seq, prefix, value });
                        }
                    }
                    pos = end;
                }
                Record::Damaged {
                    seq,
                    prefix,
                    value,
                    len,
                } => {
                    if seq >= self.next_seq && Some(pos) != self.indexed {
                        let items = IndexRecord::decode(&value).map_or(0, |r| r.items);
                        self.out.lost.push(Lost {
                            segment: self.id,
                            offset: pos,
                            prefix: Some(prefix),
                            items,
                            bytes: len,
                        });
                    }
                    let Some(next) = self.next_header(pos + 1)? else {
                        break;
                    };
                    pos = next;
                }
                Record::Garbage => {
                    let Some(next) = self.next_header(pos + 1)? else {
                        // A torn tail: the push writing it never returned.
                        log::warn!(
                            "Ignored the torn end of a queue segment segment={:016x} offset={pos} bytes={}",
                            self.id,
                            self.len - pos
                        );
                        break;
                    };
                    if Some(pos) != self.indexed {
                        self.out.lost.push(Lost {
                            segment: self.id,
                            offset: pos,
                            prefix: None,
                            items: 0,
                            bytes: next - pos,
                        });
                    }
                    pos = next;
                }
            }
        }
        Ok(())
    }

    fn fits(&self, at: u64, n: u64) -> bool {
        at.checked_add(n).is_some_and(|end| end <= self.len)
    }

    fn read(&self, at: u64, n: u64) -> io::Result<Option<Vec<u8>>> {
        if !self.fits(at, n) {
            return Ok(None);
        }
        read_at(self.file, at, n)
    }

    /// Reads the record whose header starts at `pos`.
    fn read_record(&self, pos: u64) -> io::Result<Record> {
        const HEADER: u64 = SEGMENT_HEADER_LEN as u64;
        const TRAILER_HEAD: u64 = TRAILER_HEAD_LEN as u64;
        let Some(header) = self
            .read(pos, HEADER)?
            .as_deref()
            .and_then(parse_segment_header)
        else {
            return Ok(Record::Garbage);
        };
        let payload_at = pos + HEADER;
        if !self.fits(payload_at, header.len) {
            return Ok(Record::Garbage);
        }
        let payload_end = payload_at + header.len;
        if !header.has_trailer {
            // Format 1: indexed before its push returned; nothing to recover.
            let Some(payload) = self.read(payload_at, header.len)? else {
                return Ok(Record::Garbage);
            };
            return Ok(if payload_matches(&header, &payload) {
                Record::Intact {
                    seq: header.seq,
                    len: header.len,
                    meta: None,
                    end: payload_end,
                }
            } else {
                Record::Garbage
            });
        }
        let Some((meta_len, meta_crc)) = self
            .read(payload_end, TRAILER_HEAD)?
            .as_deref()
            .and_then(parse_trailer_head)
        else {
            return Ok(Record::Garbage);
        };
        let meta_at = payload_end + TRAILER_HEAD;
        if meta_len > MAX_TRAILER_META {
            return Ok(Record::Garbage);
        }
        let Some(meta) = self.read(meta_at, meta_len)? else {
            return Ok(Record::Garbage);
        };
        let Some((prefix, value)) = decode_trailer_meta(&meta, meta_crc) else {
            return Ok(Record::Garbage);
        };
        let (prefix, value) = (prefix.to_vec(), value.to_vec());
        let Some(payload) = self.read(payload_at, header.len)? else {
            return Ok(Record::Garbage);
        };
        Ok(if payload_matches(&header, &payload) {
            Record::Intact {
                seq: header.seq,
                len: header.len,
                meta: Some((prefix, value)),
                end: meta_at + meta_len,
            }
        } else {
            Record::Damaged {
                seq: header.seq,
                prefix,
                value,
                len: header.len,
            }
        })
    }

    /// The offset of the next intact record at or after `from`, found by
    /// looking for record magics and checking each candidate whole.
    fn next_header(&self, mut from: u64) -> io::Result<Option<u64>> {
        const CHUNK: u64 = 64 * 1024;
        let finder = memchr::memmem::Finder::new(&SEGMENT_MAGIC);
        while from < self.len {
            let n = CHUNK.min(self.len - from);
            let Some(chunk) = self.read(from, n)? else {
                return Ok(None);
            };
            for at in finder.find_iter(&chunk) {
                let candidate = from + at as u64;
                if let Record::Intact { .. } = self.read_record(candidate)? {
                    return Ok(Some(candidate));
                }
            }
            // Overlap by the magic's length less one, so that a magic across
            // two chunks is found.
            let step = n.saturating_sub(SEGMENT_MAGIC.len() as u64 - 1).max(1);
            from += step;
        }
        Ok(None)
    }
}

/// Reads batch `seq`'s payload back; `None` if its file or record is missing,
/// short, unreadable or does not match (damaged, or deleted meanwhile). An
/// unreadable file (permissions, I/O error) is named in an ERROR line: the
/// caller drops the batch as corrupt instead of stopping the whole lane.
pub(super) fn read_payload(dir: &Path, seq: u64, record: &IndexRecord) -> Option<Vec<u8>> {
    let path = dir.join(segment_file_name(record.segment));
    let unreadable = |err: io::Error| {
        log::error!(
            "Could not read a batch from the disk queue file={} offset={} error={err}",
            path.display(),
            record.offset
        );
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
        Err(err) => {
            unreadable(err);
            return None;
        }
    };
    // The length was checked against the file's length on open or written by
    // this process, so this allocation is bounded by the file.
    let total = usize::try_from(record.len)
        .ok()
        .and_then(|len| len.checked_add(SEGMENT_HEADER_LEN))?;
    let mut buf = vec![0; total];
    match file.read_exact_at(&mut buf, record.offset) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return None,
        Err(err) => {
            unreadable(err);
            return None;
        }
    }
    let valid = check_segment_record(&buf, seq, record.len).is_some();
    valid.then(|| buf.split_off(SEGMENT_HEADER_LEN))
}

/// The length of the file at `path`, once it has been opened and its first
/// byte read: a segment that fails this would fail every read later.
fn readable_len(path: &Path) -> io::Result<u64> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut first = [0u8; 1];
        file.read_exact_at(&mut first, 0)?;
    }
    Ok(len)
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
