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
//!    by a stated policy. Guarded by: payload written and synced before the
//!    index record that makes it exist; index flushed before `push` returns.
//! 2. **A gap or a duplicate at a source.** A source's checkpoint (a journal
//!    cursor) and the batch made up to it are stored in one sled key, so after
//!    a crash both are there or neither is.
//! 3. **A silent drop.** Every batch that leaves unacked is reported with its
//!    lane, items, bytes and reason; a retry is never a drop.
//! 4. **Garbage sent as data.** A payload whose header or CRC does not match
//!    its index record is never returned; it is deleted and reported `Corrupt`.
//! 5. **Resource exhaustion.** Payload bytes are bounded by
//!    [`Options::max_size`]; memory holds counters per lane, not per batch;
//!    sled's page cache is bounded by [`Options::cache_capacity`].
//! 6. **SD-card wear.** At most 2 bytes written to disk per byte accepted (the
//!    DESIGN budget); see "Limits" for the measurements.
//! 7. **A crash on bad bytes.** Nothing read back from disk reaches `unwrap`,
//!    slice indexing or an unchecked cast; undecodable records become drops.
//!
//! # Layout
//!
//! `<state_dir>/queue/` holds two directories. `index/` is a sled database (one
//! tree, keys below); `data/` holds segment files with the payloads. sled's
//! exclusive lock on `index/` also guards `data/`.
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
//! // data/<id>.seg: SegmentRecords back to back, appended, never rewritten
//! struct SegmentRecord { magic: "TQP1", seq: u64, len: u64, crc32: u32, payload: [u8; len] }
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
//! A push does, under the queue's lock: append the payload to the lane's
//! segment (and `fdatasync` it with `fsync` on; a new segment's directory entry
//! too), then insert the index record into sled. Then, with `fsync` on, it
//! flushes sled (write and fsync of sled's log) before returning. So:
//!
//! - `fsync` on (the default): `Ok` means on disk. A crash or power cut after
//!   it loses nothing.
//! - `fsync` off: `Ok` means in the queue. sled flushes the index every
//!   [`Options::flush_interval`] (default 1 s) in the background, and a push
//!   syncs its lane's segment when the last sync is that old. A process crash
//!   loses nothing the kernel has; a power cut loses about the last interval
//!   (the last pushes of a lane that went quiet may wait for the kernel's own
//!   writeback, 30 s by default). A record whose payload never reached the
//!   disk fails its CRC and is dropped as `Corrupt`, never sent.
//!
//! The OTLP receiver answers 200 only after `push` returned.
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
//! that no record on disk can still name it. Acks are not flushed: an ack lost
//! in a crash means the batch is sent again (at-least-once delivery). The
//! exporter drops batches with [`Queue::drop_batch`] (`Permanent`, `Expired`).
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
//! Both drop policies report every dropped batch with reason `QueueFull`. A
//! batch larger than `max_size` is refused alone (or `TooLarge` under Reject).
//!
//! # Recovery
//!
//! [`Queue::open`] takes sled's lock ([`QueueError::Locked`] if an agent holds
//! it), checks the format version, lists the segment files, and scans the index
//! once (small records, never the payloads) to rebuild the counters per lane,
//! the next sequence number and the newest checkpoints. A record that does not
//! decode, or points outside its segment file, is deleted and returned as a
//! `Corrupt` drop. Then segment files that no record names (drained, or written
//! by a push that never committed) are deleted. Payloads are checked (header,
//! CRC) when read. [`Queue::inspect`] does the same scan without changing
//! anything, for `tern queue` on a stopped agent.
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
//! | 20 KiB, fsync off | 8,000 – 19,000 | 1.03 |
//! | 20 KiB, fsync on | 500 – 2,500 | 1.42 |
//! | 20 KiB + checkpoint, fsync on | 300 – 650 | 1.44 |
//! | 20 KiB, fsync off, 100 MiB backlog | 9,000 – 21,000 | 1.23 |
//! | 2 KiB + checkpoint, fsync off | 33,000 – 64,000 | 1.55 |
//! | 2 KiB, fsync on | 970 – 1,050 | 5.2 |
//!
//! Rates are from runs while other builds shared the machine, hence the
//! ranges; with `fsync` on each push waits for one `fdatasync` of its segment
//! and one sled flush, so the disk's sync latency sets the rate.
//!
//! With `fsync` on every push writes two partial pages (the segment's last
//! page and sled's log), about 8 KiB on top of the payload, so the budget of 2
//! holds for batches from about 8 KiB up; smaller batches with `fsync` on
//! should be merged by the source. Disk use is the queued payload plus about
//! 1 MiB per lane and the index (13 MiB on disk for 9.8 MiB queued). Memory is
//! counters per lane plus sled's cache: the whole test process peaked at 6 to
//! 8 MB RSS in these runs, 100 MiB backlog included.
//!
//! Payloads are not in sled because sled 0.34 rewrites whole B-tree leaves
//! (up to 16 values) on every split and every tenth update: keeping the
//! payloads in sled measured 3.3 to 5.6 bytes passed to `write` per byte
//! pushed (4 to 20 reaching the disk), and 100 to 340 MiB on disk for 10 MiB
//! queued, for any sled segment size from 512 KiB to 16 MiB. sled also forces two synchronous log writes per multi-key batch,
//! which is why nothing on the push and ack paths uses one.
//!
//! sled settings: `cache_capacity` from [`Options::cache_capacity`] (4 MiB,
//! not sled's 1 GiB), `flush_every_ms` from [`Options::flush_interval`], no
//! compression (payloads are gzip already; the index is small), sled's default
//! 512 KiB log segments, and `Mode::LowSpace`, which sled 0.34.7 stores but
//! never reads.
//!
//! # Implementation
//!
//! sled starts a flusher thread and writes from a pool of background threads
//! of its own. The pool may keep sled's files, and so its lock, for a moment
//! after the last [`Queue`] clone is dropped: reopening in the same process
//! can briefly see [`QueueError::Locked`].

mod batch;
mod error;
mod format;
mod lane;
mod options;
mod segments;
mod stats;
mod store;
#[cfg(test)]
mod tests;

pub use batch::{Batch, Checkpoint, DropReason, Dropped, NewBatch, Peeked, Pushed};
pub use error::QueueError;
pub use lane::{BatchId, Lane, Signal};
pub use options::{FullPolicy, Options};
pub use stats::{Backlog, LaneStats, Stats};
pub use store::{PushListener, Queue};
