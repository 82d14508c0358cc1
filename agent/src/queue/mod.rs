//! queue (docs being written)

mod batch;
mod error;
mod format;
mod lane;
mod options;
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
