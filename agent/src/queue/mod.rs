//! The durable disk queue: where encoded batches wait, on disk, between the
//! sources and the exporter.
//!
//! Sources push encoded, compressed OTLP batches (opaque bytes here) into a
//! [`Lane`]: one signal bound for one destination (gateway). The exporter reads
//! the oldest batches of its lanes, sends them, and acks each one a gateway
//! accepted. This module knows nothing of OTLP, HTTP or the self metrics: every
//! batch it drops is returned to the caller as a [`Dropped`] with a
//! [`DropReason`], for the caller to count and log.
//!
//! ```text
//! sources --push(lane, batch, checkpoint)--> Queue --peek(lane)/ack(id)--> exporter
//! ```
//!
//! # Losses it must prevent
//!
//! As sled's `SAFETY.md` does, the design starts from what must not happen:
//!
//! 1. **An accepted batch is lost.** A push that returned `Ok` with an id, with
//!    `fsync` on, survives a crash or a power cut until it is acked or dropped
//!    by a stated policy. Guarded by: the payload and a copy of its index
//!    record written and synced before `push` returns; `open` indexes again
//!    what sled had not flushed. In memory first (below), by design, except
//!    the batches memory held: at most `memory_size`.
//! 2. **A gap or a duplicate at a source.** A source's checkpoint (a journal
//!    cursor) and the batch made up to it are stored in one sled key, and in
//!    one CRC-checked segment record, so after a crash both are there or
//!    neither is.
//! 3. **A silent drop.** Every batch that leaves unacked is reported with its
//!    lane, items, bytes and reason; a retry is never a drop.
//! 4. **Garbage sent as data.** A payload whose header or CRC does not match
//!    its index record is never returned; it is deleted and reported `Corrupt`.
//! 5. **Resource exhaustion.** Payload bytes are bounded by
//!    [`Options::max_size`] and by the free space of the filesystem (see
//!    "Full disks"); memory holds counters per lane, not per batch (and, in
//!    memory first, at most [`Options::memory_size`] of payloads); sled's
//!    page cache is bounded by [`Options::cache_capacity`].
//! 6. **A stuck queue.** A full disk, a damaged record or an unreadable file
//!    never stops the rest of the queue from being delivered: acks and
//!    deletes keep working on a full disk, recovery skips damage and keeps
//!    every intact record, and an unreadable file is set aside.
//! 7. **SD-card wear.** At most 2 bytes written to disk per byte accepted (the
//!    DESIGN budget); see "Limits" for the measurements.
//! 8. **A crash on bad bytes.** Nothing read back from disk reaches `unwrap`,
//!    slice indexing or an unchecked cast; undecodable records become drops.
//!
//! # Layout
//!
//! `<state_dir>/queue/` holds two directories. `index/` is a sled database (one
//! tree, keys below); `data/` holds segment files with the payloads. Beside
//! them: `lock`, whose exclusive flock says the queue is open (taken before
//! sled's own lock, and released as soon as the queue is dropped, while
//! sled's background threads may hold theirs a moment longer: `open` then
//! waits for sled's, up to 30 s); `acks.0` and `acks.1`, the ack log (see
//! "Read, ack and delete"); and `reserve`, 4 MiB of zeros (see "Full disks").
//!
//! ```text
//! // sled keys, one byte of kind first, big-endian numbers throughout
//! FormatKey      = 0x00 "format"                -> u32 format version (1)
//! NextSeqKey     = 0x00 "next_seq"              -> u64 next sequence number
//! CheckpointKey  = 0x01 source: [u8]            -> CheckpointValue
//! IndexKey       = 0x02 signal: u8              // 1 metrics, 2 logs, 3 traces
//!                       dest_len: u16 dest: [u8] // the lane's destination
//!                       seq: u64                 // FIFO order inside the lane
//!                                               -> IndexRecord
//!
//! struct CheckpointValue { seq: u64, checkpoint: [u8] }
//! struct IndexRecord {
//!     version: u8,            // 1
//!     created_ms: u64,        // batch creation, ms since the Unix epoch
//!     items: u64,             // points, log records or spans
//!     len: u64,               // payload bytes
//!     segment: u64,           // data/<segment as 16 hex digits>.seg
//!     offset: u64,            // where its SegmentRecord starts
//!     checkpoint: Option<{ source_len: u16, source: [u8], value: [u8] }>,
//! }
//!
//! // data/<id>.seg: SegmentRecords, appended, never rewritten
//! struct SegmentRecord {
//!     magic: "TQP2", seq: u64, len: u64, crc32: u32, // of the payload
//!     payload: [u8; len],
//!     meta_len: u32, meta_crc32: u32,
//!     meta: { prefix_len: u16, prefix: [u8], index_record: IndexRecord }, // the sled key's lane and value
//!     padding: [0u8],  // with fsync on, records of 4 KiB and more fill whole pages
//! }
//! // Format 1 wrote "TQP1" records without meta; they are still read.
//! ```
//!
//! A lane is a key prefix, so reading a lane in order is one range scan, and
//! moving a lane to another gateway ([`Queue::reroute`]) rewrites only its
//! small index records; payloads stay where they are. Sequence numbers are
//! global and only grow, across restarts, so batches moved between lanes keep
//! their push order. Each lane appends to a segment of its own (a new one
//! every 1 MiB), so a lane that drains in order frees whole files even while
//! another lane is stuck.
//!
//! # What "accepted" means
//!
//! A push does, under the queue's lock: append the payload and its index
//! record to the lane's segment (and `fdatasync` it with `fsync` on; a new
//! segment's directory entry too), then insert the index record into sled,
//! which writes its log in the background every [`Options::flush_interval`]
//! (default 1 s). One sync per push: the segment record is the write-ahead
//! copy, and [`Queue::open`] indexes again every record that sled lost. So:
//!
//! - `fsync` on (the default): `Ok` means on disk. A crash or power cut after
//!   it loses nothing.
//! - `fsync` off: `Ok` means in the queue. A push syncs its lane's segment
//!   when the last sync is [`Options::flush_interval`] old, a lane syncs its
//!   old segment before it starts a new one, and the background flush syncs
//!   every segment being appended to before it writes the index, holding the
//!   queue's lock throughout, so the index it writes never names a record
//!   that is not on disk. A process crash loses nothing (the kernel has the
//!   segment); a power cut loses the last interval at most: measured by the
//!   VM power-cut test (`scripts/test-vm`), acked batches lost were acked at
//!   most 0.7 s before the cut. sled may still write its log between flushes
//!   (and the kernel may write that back early), so a record named by it may
//!   be damaged after a power cut: it fails its CRC and is dropped as
//!   `Corrupt`, never sent, and it is one of the last interval's.
//!
//! sled's own background flush is off: the queue's thread `tern-queue-flush`
//! does it every [`Options::flush_interval`], in this order, under the
//! queue's lock: read the free space, switch the ack log's file, sync the
//! segments, flush sled.
//!
//! The OTLP receiver answers 200 only after `push` returned.
//!
//! # Memory first
//!
//! With [`Options::memory_size`] set (`[export.queue] mode = "memory_first"`),
//! a push keeps its batch in memory (`memory`: the lane's `held` batches,
//! with their sequence numbers and counts, but no payload file or index
//! record) and `Ok` means "in memory". The batch is written, exactly as a
//! push in disk mode writes it, only when:
//!
//! - the batches held would exceed `memory_size`: the oldest of all lanes
//!   go to disk first (so a slow gateway's lane spills, a healthy one's not);
//! - its lane's batches move to another lane ([`Queue::reroute`],
//!   [`Queue::move_batch`]): only index records move, so payloads must be on
//!   disk first;
//! - [`Queue::flush`] runs or the last handle is dropped (SIGTERM).
//!
//! A held batch that is acked or evicted costs no write at all. Within a
//! lane, every batch on disk is older than every held one, so a lane reads
//! its disk batches first and then memory; a peek that read the disk without
//! the lock checks the lane's spill count and reads on if one moved.
//! Batches larger than `memory_size`, and batches that carry a checkpoint,
//! go to disk at once, after the lane's held batches: a checkpoint on disk
//! must never be ahead of batches that only memory held, or a power cut
//! would skip them at the source. A crash or power cut loses the held
//! batches: at most `memory_size`, the newest.
//!
//! # Checkpoints
//!
//! A batch's checkpoint is part of its index record: one sled key, written
//! atomically, without sled's multi-key batches (which force two synchronous
//! log writes each; see "Limits"). [`Queue::checkpoint`] answers from memory
//! with the newest one by sequence number. Before the record that holds a
//! source's newest checkpoint is deleted (ack, drop), the checkpoint is copied
//! to the source's `CheckpointKey`, so it outlives its batch; a crash between
//! the two leaves both copies, and the newer wins on open. A checkpoint
//! without a batch ([`Queue::set_checkpoint`], or a batch refused under
//! `DropNewest`) takes a sequence number of its own.
//!
//! # Read, ack and delete
//!
//! [`Queue::peek`] reads a lane's first index records and their payloads
//! without taking the queue's lock, so pushes go on meanwhile; anything that
//! reads badly is looked at again under the lock before it is called damaged.
//! [`Queue::ack`] deletes the index record; when a segment has no live record
//! left (and no lane appends to it) its file is deleted, after a sled flush so
//! that no record on disk can still name it. The exporter drops batches with
//! [`Queue::drop_batch`] (`Permanent`, `Expired`, `Corrupt`, `TooLarge`).
//!
//! Every removal from the index (ack, drop, eviction) is also appended to the
//! ack log, one `write` of about 40 bytes without a sync, because sled keeps
//! its writes in memory until the next flush: without it a SIGKILL brought
//! back every batch acked in the last second, and they were sent again. Two
//! files take turns: the background flush switches files (emptying the one
//! whose removals the previous flush made durable), then flushes sled. `open`
//! replays both before it reads the index, and does not take back from the
//! segments a batch the log says was removed. So after a SIGKILL, only
//! batches in flight (sent, not yet acked) are sent again; after a power cut,
//! at most those acked in the last flush interval.
//!
//! # Drop policies
//!
//! When a batch does not fit in [`Options::max_size`]:
//!
//! - [`FullPolicy::DropOldest`] (default) deletes the globally oldest batches,
//!   whatever their lane, until it fits (why globally: see its docs);
//! - [`FullPolicy::DropNewest`] refuses the new batch (its checkpoint is still
//!   stored);
//! - [`FullPolicy::Reject`], through [`Queue::push_with_policy`], refuses with
//!   [`QueueError::Full`] and changes nothing: for callers that push back.
//!
//! Both drop policies report every dropped batch with reason `QueueFull`, or
//! `DiskFull` when the limit that applied was the filesystem's (below). A
//! batch larger than `max_size` is refused alone (or `TooLarge` under Reject).
//!
//! # Full disks
//!
//! A queue that fills its filesystem cannot get out by itself: sled could not
//! write the removal of a delivered batch, and once sled has seen one write
//! fail it refuses every later one until it is opened again. So:
//!
//! - The payload never takes the last `keep_free` bytes of the filesystem
//!   (about 3% of it, between 2 MiB and 64 MiB): the queue's limit is
//!   `min(max_size, bytes queued + bytes available - keep_free)`, read at
//!   open (a WARN line says when that is below `max_size`) and at most
//!   every 500 ms while pushing. A batch refused or evicted for this limit is
//!   counted with reason `DiskFull`.
//! - `reserve` (4 MiB of real blocks) is deleted when the filesystem is
//!   nearly full anyway (another program filled it: under half of
//!   `keep_free` available) or a write fails with ENOSPC, giving sled room
//!   for acks and deletes; it is made again once there is room. `open` and
//!   `tern queue` delete it when sled cannot open for lack of space.
//! - A push that fails on a full disk leaves no file behind: a segment no
//!   index record ever named is deleted at once.
//!
//! # Recovery
//!
//! [`Queue::open`] takes sled's lock ([`QueueError::Locked`] if an agent holds
//! it), checks the format version, lists the segment files, and scans the index
//! once (small records, never the payloads) to rebuild the counters per lane,
//! the next sequence number and the newest checkpoints. A record that does not
//! decode, or points outside its segment file, is deleted and returned as a
//! `Corrupt` drop.
//!
//! Before that scan, the removals in the ack log are done again (a record
//! that carries its source's newest checkpoint gives it to the checkpoint key
//! first). Then the records sled lost: sled recovers a prefix of its writes,
//! and every removal of the newest batch first stores `NextSeqKey`, so the
//! next sequence number found is above every batch sled still has or ever
//! removed. Segment records from that number on were pushed after the last
//! write sled kept: each segment is read from its last indexed record on
//! (whole when none), and those records (payload CRC and meta CRC checked)
//! are indexed again from their meta, checkpoints included, unless the ack
//! log removed them. A damaged record does not end the scan: it looks for
//! the next record magic and checks each candidate whole, so every intact
//! record after the damage comes back; a damaged record whose trailer reads
//! is dropped as `Corrupt` with its lane and items, a stretch no header
//! explains counts as one `Corrupt` batch, and the torn end of a file (a
//! push that never returned) is not a loss. A segment file that cannot be
//! opened or read is named in an ERROR line and renamed `<name>.unreadable`,
//! and the batches the index places in it are dropped as `Corrupt` with the
//! items the index knew. Then segment files that no record names (drained,
//! or written by a push that failed) are deleted. Payloads are checked
//! (header, CRC) when read; one that cannot be read is dropped as `Corrupt`
//! and the lane goes on. [`Queue::inspect`] does the same scan without
//! changing anything, for `tern queue` on a stopped agent.
//!
//! # Format version
//!
//! `FormatKey` holds the layout's version, written on first open. A larger
//! version than this build knows is refused with [`QueueError::NewerFormat`]
//! naming the directory; nothing is touched. A change to any layout above
//! bumps it, and the older version is then migrated or read, never guessed.
//!
//! # Limits
//!
//! Measured on the development VM (ext4, 2 cores) by the ignored test
//! `queue::tests::write_amplification`, pushing incompressible batches while a
//! reader acks 500 batches behind. "Written" is the kernel's `write_bytes`
//! for the process (whole pages reaching the block layer) per payload byte:
//!
//! | scenario | pushes/s | written per byte pushed |
//! | --- | --- | --- |
//! | 20 KiB, fsync off | 19,700 | 1.04 |
//! | 20 KiB, fsync on | 3,340 | 1.22 |
//! | 20 KiB + checkpoint, fsync on | 3,240 | 1.24 |
//! | 20 KiB, fsync off, 100 MiB backlog | 22,400 | 1.24 |
//! | 2 KiB + checkpoint, fsync off | 44,900 | 1.67 |
//! | 2 KiB, fsync on | 4,270 | 3.25 |
//!
//! With `fsync` on each push waits for one `fdatasync` of its segment, so the
//! disk's sync latency sets the rate. Format 1 also flushed sled on every
//! push: two syncs, 500 to 2,500 pushes/s of 20 KiB at 1.42, and 5.2 for
//! 2 KiB batches.
//!
//! With `fsync` on, records of 4 KiB and more fill whole pages, so a push
//! writes its pages once; sled's log adds about one page per flush interval
//! for the index writes and acks of that interval together. Smaller batches
//! each rewrite the segment's partial last page: the budget of 2 holds from
//! about 4 KiB up, and smaller batches with `fsync` on should be merged by
//! the source. Disk use is the queued payload plus about 1 MiB per lane and
//! the index (13.4 MiB on disk for 9.8 MiB queued). Memory is counters per
//! lane plus sled's cache: the whole test process peaked at 7 to 17 MB RSS
//! in these runs, 100 MiB backlog included.
//!
//! Payloads are not in sled because sled 0.34 rewrites whole B-tree leaves
//! (up to 16 values) on every split and every tenth update: keeping the
//! payloads in sled measured 3.3 to 5.6 bytes passed to `write` per byte
//! pushed (4 to 20 reaching the disk), and 100 to 340 MiB on disk for 10 MiB
//! queued, for any sled segment size from 512 KiB to 16 MiB. sled also
//! forces two synchronous log writes per multi-key batch, which is why nothing
//! on the push and ack paths uses one.
//!
//! sled settings: `cache_capacity` from [`Options::cache_capacity`] (4 MiB,
//! not sled's 1 GiB), no `flush_every_ms` (the queue flushes it), no
//! compression (payloads are gzip already; the index is small), sled's default
//! 512 KiB log segments, and `Mode::LowSpace`, which sled 0.34.7 stores but
//! never reads.
//!
//! # Implementation
//!
//! The queue runs one thread, `tern-queue-flush`, stopped and joined when the
//! last [`Queue`] clone is dropped. sled writes from a pool of background
//! threads of its own, which may keep sled's files, and so its lock, for a
//! moment after that: `open` waits for it (up to 30 s) once the queue's own
//! lock is free, so a reopen in the same process does not fail.
//!
//! The code follows the paths above: `store` holds the [`Queue`] and the
//! state its paths share (counters, the flusher, flush and remove); `open`
//! is the lock, sled, the format check and the recovery scan (and
//! [`Queue::inspect`]); `writer` is push, the size policy and checkpoints;
//! `reader` is peek, ack, drop and moves between lanes; `memory` holds and
//! spills the batches of memory first. `segments` (payload
//! files), `acklog`, `format` (keys and records), `space` (free space),
//! `lane`, `batch`, `stats`, `options` and `error` are the nouns they use.

mod acklog;
mod batch;
mod error;
mod format;
mod lane;
mod memory;
mod open;
mod options;
mod reader;
mod segments;
mod space;
mod stats;
mod store;
#[cfg(test)]
mod tests;
mod writer;

pub use batch::{Batch, Checkpoint, DropReason, Dropped, NewBatch, Peeked, Pushed};
pub use error::QueueError;
pub use lane::{BatchId, Lane, Signal};
pub use options::{FullPolicy, Options};
pub use stats::{Backlog, LaneStats, Stats};
pub use store::{PushListener, Queue};

// Every source and sender thread holds a clone of the queue, and a sender
// waits on a listener from another thread: held at compile time.
const _: () = {
    const fn send_sync<T: Send + Sync + Clone>() {}
    const fn send<T: Send>() {}
    send_sync::<Queue>();
    send::<PushListener>();
};
