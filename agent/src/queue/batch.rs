//! What goes into the queue, what comes out, and what was dropped on the way.

use std::time::SystemTime;

use super::lane::{BatchId, Lane};

/// A batch to store: encoded, compressed OTLP that the queue keeps as opaque bytes.
#[derive(Clone, Copy, Debug)]
pub struct NewBatch<'a> {
    /// The bytes to send, exactly as the exporter will send them.
    pub payload: &'a [u8],
    /// Data points, log records or spans in the batch, for drop and backlog counts.
    pub items: u64,
    /// When the batch was made; the queue's oldest age is measured from it.
    pub created: SystemTime,
    /// The source's position after this batch, stored in the same atomic write.
    pub checkpoint: Option<Checkpoint<'a>>,
}

/// A source's resume position (a journal cursor, say), opaque to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint<'a> {
    /// The source's stable name, such as `journald`.
    pub source: &'a str,
    /// What the source needs to resume after the data of the batch.
    pub value: &'a [u8],
}

/// A stored batch, read by [`Queue::peek`](super::Queue::peek). It stays in the
/// queue until [`Queue::ack`](super::Queue::ack) or
/// [`Queue::drop_batch`](super::Queue::drop_batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// What to pass to `ack` once a gateway has accepted the batch.
    pub id: BatchId,
    /// The lane the batch was read from.
    pub lane: Lane,
    /// The bytes given to [`Queue::push`](super::Queue::push).
    pub payload: Vec<u8>,
    /// Data points, log records or spans in the batch.
    pub items: u64,
    /// When the batch was made, to millisecond precision.
    pub created: SystemTime,
}

/// Why a batch left the queue without being delivered. A fixed set, used as a
/// metric label; a retry is never a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The queue was at `max_size` and the full policy chose this batch.
    QueueFull,
    /// The filesystem under `state_dir` ran short of free space (below the
    /// queue's reserve) before the queue reached `max_size`, and the full
    /// policy chose this batch.
    DiskFull,
    /// A gateway rejected the batch for good (a 4xx other than 429).
    Permanent,
    /// Retrying took longer than the exporter's `max_elapsed_time`.
    Expired,
    /// The stored batch could not be decoded (damaged or foreign data on disk).
    Corrupt,
    /// A gateway answered 413 to a request holding a single item that cannot
    /// be split further.
    TooLarge,
}

impl DropReason {
    /// The snake_case name used as the `reason` label: `queue_full`,
    /// `disk_full`, `permanent`, `expired`, `corrupt`, `too_large`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::DiskFull => "disk_full",
            DropReason::Permanent => "permanent",
            DropReason::Expired => "expired",
            DropReason::Corrupt => "corrupt",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// One batch that left the queue undelivered, for the caller to count and log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The batch's id; `None` for a new batch refused before it was stored.
    pub id: Option<BatchId>,
    /// The batch's lane; `None` only for a corrupt record whose key did not decode.
    pub lane: Option<Lane>,
    /// Data points, log records or spans lost (0 when unknown, for corrupt data).
    pub items: u64,
    /// Payload bytes lost (0 when unknown, for corrupt data).
    pub bytes: u64,
    /// Why it was dropped.
    pub reason: DropReason,
}

/// The result of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "dropped batches must be counted in the self metrics"]
pub struct Pushed {
    /// The new batch's id, or `None` when the policy dropped the new batch itself.
    pub id: Option<BatchId>,
    /// Every batch dropped to make room (or the new batch, under
    /// [`FullPolicy::DropNewest`](super::FullPolicy::DropNewest)), oldest first.
    pub dropped: Vec<Dropped>,
}

/// The result of a peek.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "dropped batches must be counted in the self metrics"]
pub struct Peeked {
    /// Up to the requested number of batches, oldest first.
    pub batches: Vec<Batch>,
    /// Stored batches found undecodable on the way and deleted
    /// ([`DropReason::Corrupt`]).
    pub dropped: Vec<Dropped>,
}
