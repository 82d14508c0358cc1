//! The ack log: every removal from the index (ack, drop, eviction) appended to
//! a small file as it happens, so that a crash of the agent does not bring
//! back batches a gateway already has.
//!
//! sled keeps its writes in memory until the queue's background flush (every
//! `flush_interval`), so a SIGKILL used to forget up to a second of acks and
//! every one of those batches was sent again. An append here is one `write`
//! of about 40 bytes, no sync: the kernel has it as soon as the call returns,
//! which is what a process crash needs. A power cut is covered by sled's
//! flush: what the ack log holds is at most one flush interval old.
//!
//! Two files take turns (`acks.0`, `acks.1`). At each background flush the
//! queue switches to the other file, truncating it (its removals were made
//! durable by the flush before), then flushes sled, which makes the removals
//! of the file it switched away from durable in turn. [`Queue::open`] replays
//! both files before reading the index.
//!
//! ```text
//! // acks.N: records, appended
//! struct AckRecord { key_len: u16, key: [u8; key_len], crc32: u32 } // of key
//! ```
//!
//! [`Queue::open`]: super::Queue::open

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The two files' names, in the queue's directory.
const NAMES: [&str; 2] = ["acks.0", "acks.1"];

/// The longest key a record holds: a lane prefix and a sequence number.
const MAX_KEY: usize = 4 + 1024 + 8;

/// The ack log of one open queue.
pub(super) struct AckLog {
    dir: PathBuf,
    /// Which of [`NAMES`] is appended to.
    current: usize,
    file: File,
    /// Whether each file holds records: when neither does, a switch has
    /// nothing to do, and an idle queue touches no file (memory first, an
    /// empty queue: truncating a file a second still wrote a page of
    /// metadata every 30 s).
    holds: [bool; 2],
}

impl AckLog {
    /// Reads the index keys recorded in both files of `dir`, oldest file
    /// first, up to the first torn or damaged record of each.
    pub(super) fn replay(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        for name in NAMES {
            let mut bytes = Vec::new();
            match File::open(dir.join(name)) {
                // Bounded: a file holds at most one flush interval of acks,
                // and this reads it once at start.
                Ok(file) => file.take(64 << 20).read_to_end(&mut bytes)?,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            keys.extend(decode(&bytes));
        }
        Ok(keys)
    }

    /// Starts an empty log in `dir`: both files truncated. Call once the
    /// replayed removals are durable in the index.
    pub(super) fn create(dir: &Path) -> io::Result<AckLog> {
        let file = truncate(&dir.join(NAMES[1]))?;
        drop(file);
        let file = truncate(&dir.join(NAMES[0]))?;
        Ok(AckLog {
            dir: dir.to_path_buf(),
            current: 0,
            file,
            holds: [false; 2],
        })
    }

    /// Records the removal of index key `key`: one `write`, no sync.
    pub(super) fn append(&mut self, key: &[u8]) -> io::Result<()> {
        // Before the write: a failed write may still have left part of a
        // record, which the next switch must clear.
        self.holds[self.current] = true;
        self.file.write_all(&encode(key))
    }

    /// Switches to the other file, emptied: every removal it held must be
    /// durable in the index already (a flush has completed since the last
    /// switch). The file switched away from holds the removals the next
    /// flush makes durable.
    pub(super) fn switch(&mut self) -> io::Result<()> {
        if self.holds == [false; 2] {
            return Ok(());
        }
        let next = 1 - self.current;
        self.file = truncate(&self.dir.join(NAMES[next]))?;
        self.holds[next] = false;
        self.current = next;
        Ok(())
    }
}

fn truncate(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
}

/// One record: `[key_len: u16 BE][key][crc32 of key: u32 BE]`.
fn encode(key: &[u8]) -> Vec<u8> {
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + key.len() + 4);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&crc32(key).to_be_bytes());
    out
}

/// The keys of the intact records at the front of `bytes`.
fn decode(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    // (`split_first_chunk` would say this shorter, but needs Rust 1.77.)
    while let Some(&[a, b]) = bytes.get(..2) {
        let len = usize::from(u16::from_be_bytes([a, b]));
        let Some(key) = bytes.get(2..2 + len) else {
            break;
        };
        let Some(&[c0, c1, c2, c3]) = bytes.get(2 + len..2 + len + 4) else {
            break;
        };
        if len == 0 || len > MAX_KEY || u32::from_be_bytes([c0, c1, c2, c3]) != crc32(key) {
            break;
        }
        keys.push(key.to_vec());
        bytes = bytes.get(2 + len + 4..).unwrap_or(&[]);
    }
    keys
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_only_when_a_file_holds_records() {
        let dir = std::env::temp_dir().join(format!("tern-acklog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = AckLog::create(&dir).unwrap();
        let modified = |name: &str| {
            std::fs::metadata(dir.join(name))
                .unwrap()
                .modified()
                .unwrap()
        };
        let before = (modified(NAMES[0]), modified(NAMES[1]));
        std::thread::sleep(std::time::Duration::from_millis(20));
        log.switch().unwrap();
        assert_eq!(log.current, 0, "an empty log does not switch");
        assert_eq!((modified(NAMES[0]), modified(NAMES[1])), before);
        log.append(b"k1").unwrap();
        log.switch().unwrap();
        assert_eq!(log.current, 1);
        // acks.0 still holds k1 until the next switch empties it.
        assert_eq!(AckLog::replay(&dir).unwrap(), vec![b"k1".to_vec()]);
        log.switch().unwrap();
        assert_eq!(log.current, 0);
        assert_eq!(AckLog::replay(&dir).unwrap(), Vec::<Vec<u8>>::new());
        log.switch().unwrap();
        assert_eq!(log.current, 0, "both empty again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_round_trip_and_stop_at_damage() {
        let keys: Vec<Vec<u8>> = (0..5u8).map(|i| vec![2, 1, 0, 1, b'g', i]).collect();
        let mut bytes: Vec<u8> = keys.iter().flat_map(|k| encode(k)).collect();
        assert_eq!(decode(&bytes), keys);
        // Torn at every length: a prefix of the records, never garbage.
        for cut in 0..bytes.len() {
            let got = decode(&bytes[..cut]);
            assert!(keys.starts_with(&got), "cut {cut}");
        }
        // A flipped bit in the third record ends the replay there.
        bytes[2 * 12 + 5] ^= 1;
        assert_eq!(decode(&bytes), keys[..2].to_vec());
        assert_eq!(decode(&[0xff; 64]), Vec::<Vec<u8>>::new());
    }
}
