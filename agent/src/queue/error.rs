//! The queue's one error type.

use std::fmt;
use std::io;
use std::path::Path;

use super::format::FORMAT_VERSION;

/// Why a queue operation failed.
///
/// Losing a single batch is not an error: it is reported as a
/// [`Dropped`](super::Dropped) in the operation's result. An error means the
/// operation did not happen (or, for [`QueueError::Storage`] during a push, may
/// have happened without being made durable).
#[derive(Debug)]
#[non_exhaustive]
pub enum QueueError {
    /// Another process holds the queue directory open.
    ///
    /// sled takes an exclusive lock on its directory, so a running agent makes
    /// [`Queue::open`](super::Queue::open) and
    /// [`Queue::inspect`](super::Queue::inspect) fail with this. `tern queue`
    /// then asks the running agent over HTTP instead; two agents must not share
    /// one `state_dir`.
    Locked {
        /// The queue directory.
        path: Box<Path>,
    },
    /// The directory holds a queue written by a newer tern, in a format this one
    /// does not know. Nothing was changed; run the newer tern until the queue is
    /// empty, or remove the directory to discard it.
    NewerFormat {
        /// The queue directory.
        path: Box<Path>,
        /// The format version found on disk.
        found: u32,
    },
    /// Reading or writing the storage failed: a file-system error (full disk,
    /// permissions, I/O error) or one reported by the storage engine, which
    /// includes damage it detected and files made by another engine version.
    Storage {
        /// The queue directory.
        path: Box<Path>,
        /// What the file system or the engine said.
        source: io::Error,
    },
    /// Queue-wide bookkeeping (not a single batch: those are dropped with
    /// [`DropReason::Corrupt`](super::DropReason::Corrupt)) could not be decoded.
    Corrupt {
        /// The queue directory.
        path: Box<Path>,
        /// Which record was unreadable.
        detail: &'static str,
    },
    /// The batch does not fit and the push asked for
    /// [`FullPolicy::Reject`](super::FullPolicy::Reject). Nothing was stored;
    /// try again once the exporter has caught up.
    Full {
        /// Length of the refused payload.
        bytes: u64,
        /// Bytes free in the queue at the time.
        free: u64,
    },
    /// The batch is larger than the whole queue (`max_size`), and the push asked
    /// for [`FullPolicy::Reject`](super::FullPolicy::Reject). Retrying cannot
    /// help; the batch must be split, or `max_size` raised.
    TooLarge {
        /// Length of the refused payload.
        bytes: u64,
        /// The queue's `max_size`.
        max_size: u64,
    },
    /// The lane's destination key is longer than
    /// [`Lane::MAX_DESTINATION_LEN`](super::Lane::MAX_DESTINATION_LEN) bytes.
    InvalidLane {
        /// Length of the destination key in bytes.
        len: usize,
    },
    /// A checkpoint's source name is longer than 65535 bytes.
    InvalidCheckpoint {
        /// Length of the source name in bytes.
        len: usize,
    },
}

impl QueueError {
    /// Wraps a storage-engine error, recognising the lock held by another process.
    pub(super) fn from_sled(path: &Path, err: sled::Error) -> QueueError {
        let path: Box<Path> = path.into();
        match err {
            sled::Error::Io(source) if is_lock_error(&source) => QueueError::Locked { path },
            sled::Error::Io(source) => QueueError::Storage { path, source },
            other => QueueError::Storage {
                path,
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

/// Whether sled failed to open because another process holds its lock.
///
/// sled 0.34.7 reports a failed `flock` as an `Other` I/O error with this message
/// and no other marker (its `Config::try_lock`). The test `second_open_is_locked`
/// pins this down, so a sled upgrade that changes the wording fails that test.
fn is_lock_error(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Other && err.to_string().starts_with("could not acquire lock")
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Locked { path } => write!(
                f,
                "queue locked: {} is in use by another process (is the agent running?)",
                path.display()
            ),
            QueueError::NewerFormat { path, found } => write!(
                f,
                "queue format: {} has format {found}, this tern reads up to {FORMAT_VERSION}",
                path.display()
            ),
            QueueError::Storage { path, source } => {
                write!(f, "queue storage: {}: {source}", path.display())
            }
            QueueError::Corrupt { path, detail } => {
                write!(f, "queue corrupt: {}: {detail}", path.display())
            }
            QueueError::Full { bytes, free } => {
                write!(f, "queue full: batch of {bytes} bytes, {free} bytes free")
            }
            QueueError::TooLarge { bytes, max_size } => {
                write!(
                    f,
                    "batch too large: {bytes} bytes, queue max_size is {max_size}"
                )
            }
            QueueError::InvalidLane { len } => write!(
                f,
                "queue lane: destination key of {len} bytes, at most {} allowed",
                super::Lane::MAX_DESTINATION_LEN
            ),
            QueueError::InvalidCheckpoint { len } => write!(
                f,
                "queue checkpoint: source name of {len} bytes, at most {} allowed",
                super::format::MAX_SOURCE_LEN
            ),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueError::Storage { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        // Five words: a boxed path and a detail, plus the tag. Results of the
        // hot path (push, peek, ack) carry it, so keep it from growing.
        assert!(
            std::mem::size_of::<QueueError>() <= 40,
            "{}",
            std::mem::size_of::<QueueError>()
        );
    }

    #[test]
    fn display_is_short_and_names_the_path() {
        let err = QueueError::Locked {
            path: Path::new("/var/lib/tern/queue").into(),
        };
        assert_eq!(
            err.to_string(),
            "queue locked: /var/lib/tern/queue is in use by another process (is the agent running?)"
        );
        let err = QueueError::NewerFormat {
            path: Path::new("/q").into(),
            found: 9,
        };
        assert_eq!(
            err.to_string(),
            "queue format: /q has format 9, this tern reads up to 2"
        );
    }
}
