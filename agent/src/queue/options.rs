//! How a queue is sized and how hard it tries to be durable.

use std::time::Duration;

/// What [`Queue::push`](super::Queue::push) does when a batch does not fit in
/// [`Options::max_size`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Delete the oldest batches of the whole queue, across signals and
    /// destinations, until the new batch fits; each is reported as dropped with
    /// [`DropReason::QueueFull`](super::DropReason::QueueFull).
    ///
    /// Globally oldest rather than oldest of the same signal, so that the queue
    /// keeps one common time window for all signals: after an outage the metrics,
    /// logs and traces that reach the gateway cover the same minutes and can be
    /// correlated. Dropping per signal would instead freeze each signal's share
    /// at the moment the queue filled up. A signal that floods the queue is a
    /// source's problem, limited at the source. The default.
    #[default]
    DropOldest,
    /// Refuse the new batch and keep the queue as it is; the new batch is
    /// reported as dropped with [`DropReason::QueueFull`](super::DropReason::QueueFull).
    /// Its checkpoint, if any, is still written: the source has dealt with the
    /// data, by policy, and must not read it again after a restart.
    DropNewest,
    /// Refuse the new batch with [`QueueError::Full`](super::QueueError::Full)
    /// (or [`QueueError::TooLarge`](super::QueueError::TooLarge)), write nothing
    /// and drop nothing: for callers that can push back instead, such as the OTLP
    /// receiver answering 503. Use it through
    /// [`Queue::push_with_policy`](super::Queue::push_with_policy).
    Reject,
}

/// How a [`Queue`](super::Queue) is sized and flushed; built by the caller from
/// the `[export.queue]` and `[agent]` configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The most payload bytes the queue holds, summed over all lanes. Not
    /// counted: about 100 bytes of index and headers per batch, up to two
    /// partly drained 1 MiB segment files per lane, and the index's own files
    /// (see "Limits" in the module docs). Defaults to 256 MiB: days of one
    /// node_exporter, yet a small share of a 4 GB SD card.
    pub max_size: u64,
    /// What a push does when its batch does not fit. Defaults to
    /// [`FullPolicy::DropOldest`].
    pub full_policy: FullPolicy,
    /// Whether a push returns only once its batch is on disk (fsync). Off, a
    /// power cut loses about the batches of the last `flush_interval`; a crash
    /// of the agent alone loses nothing the kernel already has. Defaults to
    /// `true`: the product's promise is to lose nothing.
    pub fsync: bool,
    /// How often the index is written and fsynced in the background, and how
    /// often pushes sync their segment file when `fsync` is off. Defaults to
    /// 1 s: with `fsync` off, about what a power cut can lose, and with it on,
    /// how long an ack may stay undone (a lost ack means the batch is sent
    /// again, never lost).
    pub flush_interval: Duration,
    /// Memory the storage engine may use to cache pages, in bytes. Defaults to
    /// 4 MiB, not sled's 1 GiB: the queue is written at its tail and read at its
    /// head, so only those pages are hot, and the agent's whole budget is 8 MB.
    pub cache_capacity: u64,
    /// `Some(bytes)`: memory first. A pushed batch is kept in memory, and
    /// written to disk only when the batches held in memory would exceed
    /// `bytes` (the oldest go first), when its lane is moved, and on
    /// [`Queue::flush`](super::Queue::flush) and close. A batch acked while
    /// in memory never touches the disk. A crash or power cut loses what
    /// memory held: at most `bytes`. `None` (the default): every batch is
    /// written when pushed.
    pub memory_size: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_size: 256 * 1024 * 1024,
            full_policy: FullPolicy::DropOldest,
            fsync: true,
            flush_interval: Duration::from_secs(1),
            cache_capacity: 4 * 1024 * 1024,
            memory_size: None,
        }
    }
}
