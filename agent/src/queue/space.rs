//! Free space on the queue's filesystem: the limit it puts on the queue, and
//! the reserve that keeps acks and deletes possible on a full disk.
//!
//! A queue that fills its filesystem cannot get out by itself: sled cannot
//! write the removal of a delivered batch, and once sled has seen a write
//! fail it refuses every later write until it is opened again. So the queue
//! never lets its payload take the last [`Space::keep_free`] bytes of the
//! filesystem (checked at open and at most every [`CHECK_EVERY`] while
//! running), and keeps a reserve file of [`RESERVE`] bytes that it deletes
//! when the filesystem runs full anyway (another program filled it), which
//! gives sled room for acks and lets `open` and `tern queue` start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The reserve file's name in the queue's directory.
const RESERVE_NAME: &str = "reserve";

/// Bytes the reserve file holds: room for a few thousand acks in sled's log
/// and for sled to open on a full disk.
pub(super) const RESERVE: u64 = 4 * 1024 * 1024;

/// How often a running queue reads the free space: cheap (one `statvfs`),
/// and often enough that another program filling the disk is seen before
/// the queue's next writes need the room.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The ENOSPC errno, the same on every Linux architecture.
const ENOSPC: i32 = 28;

/// Whether `err` says the filesystem is full.
pub(super) fn is_disk_full(err: &io::Error) -> bool {
    err.raw_os_error() == Some(ENOSPC) || err.to_string().contains("No space left on device")
}

/// The free space of one queue's filesystem and its reserve file.
pub(super) struct Space {
    /// `<state_dir>/queue/reserve`.
    reserve: PathBuf,
    /// Bytes of the filesystem the queue's payload never takes: about 3% of
    /// it, at least 2 MiB (sled's log, the ack log, segment headers) and at
    /// most 64 MiB (a large card needs no more than a small one). Set on open.
    keep_free: u64,
    /// Bytes free for unprivileged writers at the last check.
    available: u64,
    /// When the free space was last read.
    checked: Instant,
}

impl Space {
    /// Reads the free space of the filesystem holding `dir` and creates the
    /// reserve file if it is missing and there is room for it.
    pub(super) fn open(dir: &Path) -> io::Result<Space> {
        let (available, total) = statvfs(dir)?;
        let keep_free = (total / 32).clamp(2 * 1024 * 1024, 64 * 1024 * 1024);
        let mut space = Space {
            reserve: dir.join(RESERVE_NAME),
            keep_free,
            available,
            checked: Instant::now(),
        };
        space.restore_reserve();
        Ok(space)
    }

    /// Bytes of the filesystem the queue keeps free.
    pub(super) fn keep_free(&self) -> u64 {
        self.keep_free
    }

    /// Bytes free at the last check.
    pub(super) fn available(&self) -> u64 {
        self.available
    }

    /// Reads the free space again if the last read is [`CHECK_EVERY`] old.
    /// Returns whether it was read. When the filesystem is nearly full,
    /// deletes the reserve; when there is room again and `restore`, makes it
    /// anew (4 MiB written and synced: not on a push's path).
    pub(super) fn refresh(&mut self, restore: bool) -> bool {
        if self.checked.elapsed() < CHECK_EVERY {
            return false;
        }
        self.refresh_now(restore)
    }

    /// Reads the free space now, whenever it was last read: right before the
    /// index is flushed, so that a disk another program has just filled
    /// gets its reserve released before sled writes (sled refuses every
    /// write after one that failed, until the queue is opened again).
    pub(super) fn refresh_now(&mut self, restore: bool) -> bool {
        self.checked = Instant::now();
        match statvfs(&self.reserve_dir()) {
            Ok((available, _)) => self.available = available,
            Err(err) => {
                log::warn!(
                    "Could not read the free space of the queue's filesystem path={} error={err}",
                    self.reserve_dir().display()
                );
                return false;
            }
        }
        if self.available < self.keep_free / 2 {
            self.release_reserve();
        } else if restore && self.available > self.keep_free.saturating_add(2 * RESERVE) {
            self.restore_reserve();
        }
        true
    }

    /// Deletes the reserve file, if there is one, so that the next writes
    /// find room. Returns whether it freed anything.
    pub(super) fn release_reserve(&mut self) -> bool {
        match fs::remove_file(&self.reserve) {
            Ok(()) => {
                log::warn!(
                    "Disk full: released the queue's reserve so that acks and deletes can be written path={} bytes={RESERVE}",
                    self.reserve.display()
                );
                self.available = self.available.saturating_add(RESERVE);
                true
            }
            Err(_) => false,
        }
    }

    /// Makes the reserve file if it is missing and the filesystem has room
    /// for it beyond what the queue keeps free. A failure leaves no file.
    fn restore_reserve(&mut self) {
        if self.reserve.exists() || self.available < self.keep_free.saturating_add(2 * RESERVE) {
            return;
        }
        let made = write_zeros(&self.reserve, RESERVE);
        match made {
            Ok(()) => self.available = self.available.saturating_sub(RESERVE),
            Err(err) => {
                let _ = fs::remove_file(&self.reserve);
                log::debug!("Could not make the queue's reserve file error={err}");
            }
        }
    }

    fn reserve_dir(&self) -> PathBuf {
        self.reserve
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

/// Deletes the reserve in `dir` if the queue could not be opened for lack of
/// space; returns whether there was one to delete.
pub(super) fn release_reserve_in(dir: &Path) -> bool {
    let freed = fs::remove_file(dir.join(RESERVE_NAME)).is_ok();
    if freed {
        log::warn!(
            "Disk full: released the queue's reserve to open it path={}",
            dir.display()
        );
    }
    freed
}

/// `(bytes available to unprivileged writers, total bytes)` of the
/// filesystem holding `path`.
fn statvfs(path: &Path) -> io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    let block = stat.f_frsize.max(1);
    Ok((
        stat.f_bavail.saturating_mul(block),
        stat.f_blocks.saturating_mul(block),
    ))
}

/// Writes `len` zero bytes to a new file at `path` and syncs it: real blocks,
/// which a sparse file or `fallocate` on some filesystems would not give.
fn write_zeros(path: &Path, len: u64) -> io::Result<()> {
    let mut file: File = OpenOptions::new().write(true).create_new(true).open(path)?;
    let chunk = [0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        file.write_all(chunk.get(..n).unwrap_or(&chunk))?;
        left -= n as u64;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_share_of_the_filesystem_free_and_makes_a_reserve() {
        let dir = std::env::temp_dir().join(format!("tern-space-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let space = Space::open(&dir).unwrap();
        assert!(space.keep_free() >= 2 * 1024 * 1024);
        assert!(space.keep_free() <= 64 * 1024 * 1024);
        if space.available() > space.keep_free() + 3 * RESERVE {
            assert_eq!(fs::metadata(dir.join(RESERVE_NAME)).unwrap().len(), RESERVE);
        }
        assert!(is_disk_full(&io::Error::from_raw_os_error(ENOSPC)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(13)));
        let _ = fs::remove_dir_all(&dir);
    }
}
