//! The nouns that name where a batch lives: its signal, its lane and its id.

use std::fmt;

/// The kind of telemetry a batch carries; each has its own OTLP endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// Metric data points (`/v1/metrics`).
    Metrics,
    /// Log records (`/v1/logs`).
    Logs,
    /// Spans (`/v1/traces`).
    Traces,
}

impl Signal {
    /// Every signal, in the order of their on-disk code.
    pub const ALL: [Signal; 3] = [Signal::Metrics, Signal::Logs, Signal::Traces];

    /// The lowercase name used in logs and metric labels: `metrics`, `logs`, `traces`.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
            Signal::Traces => "traces",
        }
    }

    /// The byte that stands for this signal in a key. Part of the on-disk format.
    pub(super) fn code(self) -> u8 {
        match self {
            Signal::Metrics => 1,
            Signal::Logs => 2,
            Signal::Traces => 3,
        }
    }

    /// The signal a key byte stands for, if any.
    pub(super) fn from_code(code: u8) -> Option<Signal> {
        match code {
            1 => Some(Signal::Metrics),
            2 => Some(Signal::Logs),
            3 => Some(Signal::Traces),
            _ => None,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One FIFO inside the queue: the batches of one signal bound for one destination.
///
/// The destination is an opaque key chosen by the exporter (today the gateway's
/// base URL). Its UTF-8 form must be at most [`Lane::MAX_DESTINATION_LEN`] bytes;
/// a longer one is refused by [`Queue::push`](super::Queue::push) with
/// [`QueueError::InvalidLane`](super::QueueError::InvalidLane).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    signal: Signal,
    destination: Box<str>,
}

impl Lane {
    /// The longest destination key a lane can have, in bytes (it is stored with a
    /// 16-bit length).
    pub const MAX_DESTINATION_LEN: usize = u16::MAX as usize;

    /// The lane of `signal` batches bound for `destination`.
    pub fn new(signal: Signal, destination: &str) -> Lane {
        Lane {
            signal,
            destination: destination.into(),
        }
    }

    /// The signal of the batches in this lane.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// The destination key (gateway) of the batches in this lane.
    pub fn destination(&self) -> &str {
        &self.destination
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.signal, self.destination)
    }
}

/// Names one stored batch, for [`Queue::ack`](super::Queue::ack) and
/// [`Queue::drop_batch`](super::Queue::drop_batch).
///
/// The sequence number is unique for the life of the queue directory and grows
/// with every push, across restarts. The lane part is an index into the lanes this
/// process has seen, so an id is only meaningful to the [`Queue`](super::Queue)
/// (and its clones) that returned it, and it goes stale when the batch is moved
/// to another lane by [`Queue::reroute`](super::Queue::reroute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId {
    pub(super) lane: u32,
    pub(super) seq: u64,
}

impl BatchId {
    /// The batch's sequence number: monotonic across restarts, FIFO order within a lane.
    pub fn seq(self) -> u64 {
        self.seq
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.seq)
    }
}
