//! The file source's checkpoint: where each followed file is, as stored in
//! the queue with every batch. A text format, one line a file, so that a
//! later tern reads what an earlier one wrote:
//!
//! ```text
//! tern-files 1
//! <dev> <inode> <fingerprint length> <fingerprint, hex> <offset> <path>
//! ```

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::route::{fnv1a, SEED};

/// The bytes at the start of a file that make its fingerprint, at most.
pub const FINGERPRINT_LEN: usize = 256;

const HEADER: &str = "tern-files 1";

/// A file's identity on its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// A hash of a file's first bytes (up to [`FINGERPRINT_LEN`]), with how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    len: u32,
    hash: u64,
}

impl Fingerprint {
    /// The fingerprint of `file`, `size` bytes long.
    pub fn of(file: &File, size: u64) -> Fingerprint {
        let want = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(FINGERPRINT_LEN);
        let mut buf = [0u8; FINGERPRINT_LEN];
        let got = read_full(file, buf.get_mut(..want).unwrap_or_default());
        Fingerprint {
            len: u32::try_from(got).unwrap_or(0),
            hash: fnv1a(SEED, buf.get(..got).unwrap_or_default()),
        }
    }

    /// Bytes it covers.
    pub fn covered(&self) -> usize {
        self.len as usize
    }

    /// Whether `file` (`size` bytes) starts with the bytes this was made of.
    pub fn matches(&self, file: &File, size: u64) -> bool {
        let len = self.covered();
        if size < len as u64 {
            return false;
        }
        let mut buf = [0u8; FINGERPRINT_LEN];
        let Some(part) = buf.get_mut(..len) else {
            return false;
        };
        read_full(file, part) == len && fnv1a(SEED, part) == self.hash
    }
}

/// Reads `buf.len()` bytes from the start of `file`, or as many as it has.
fn read_full(file: &File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(buf.get_mut(got..).unwrap_or_default(), got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

/// Where a file was: its identity and the offset after its last queued line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Device and inode.
    pub id: FileId,
    /// Fingerprint when saved.
    pub fp: Fingerprint,
    /// Bytes consumed.
    pub offset: u64,
    /// Where it was.
    pub path: PathBuf,
}

/// Encodes positions; paths with a newline cannot be written and are left out
/// (such a file is read from its start after a restart).
pub fn encode(files: impl Iterator<Item = Saved>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(HEADER.as_bytes());
    out.push(b'\n');
    for s in files {
        let path = s.path.as_os_str().as_bytes();
        if path.contains(&b'\n') {
            continue;
        }
        out.extend_from_slice(
            format!(
                "{} {} {} {:016x} {} ",
                s.id.dev, s.id.ino, s.fp.len, s.fp.hash, s.offset
            )
            .as_bytes(),
        );
        out.extend_from_slice(path);
        out.push(b'\n');
    }
    out
}

/// Decodes what [`encode`] wrote; `None` if it is not that.
pub fn decode(bytes: &[u8]) -> Option<Vec<Saved>> {
    let mut lines = bytes.split(|&b| b == b'\n');
    if lines.next()? != HEADER.as_bytes() {
        return None;
    }
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(6, |&b| b == b' ');
        let mut number = |radix: u32| -> Option<u64> {
            let p = std::str::from_utf8(parts.next()?).ok()?;
            u64::from_str_radix(p, radix).ok()
        };
        let dev = number(10)?;
        let ino = number(10)?;
        let len = u32::try_from(number(10)?)
            .ok()
            .filter(|&l| l as usize <= FINGERPRINT_LEN)?;
        let hash = number(16)?;
        let offset = number(10)?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(parts.next()?));
        out.push(Saved {
            id: FileId { dev, ino },
            fp: Fingerprint { len, hash },
            offset,
            path,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let saved = vec![
            Saved {
                id: FileId { dev: 2049, ino: 77 },
                fp: Fingerprint {
                    len: 256,
                    hash: 0xdead_beef,
                },
                offset: 1 << 40,
                path: PathBuf::from("/var/log/with space.log"),
            },
            Saved {
                id: FileId { dev: 1, ino: 2 },
                fp: Fingerprint { len: 0, hash: 3 },
                offset: 0,
                path: PathBuf::from("/x"),
            },
        ];
        let bytes = encode(saved.clone().into_iter());
        assert_eq!(decode(&bytes), Some(saved));
        let newline = Saved {
            path: PathBuf::from("/a\nb"),
            ..decode(&bytes).unwrap()[1].clone()
        };
        assert_eq!(decode(&encode(std::iter::once(newline))), Some(vec![]));
    }

    #[test]
    fn damaged_positions_are_refused() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"tern-files 2\n"), None);
        assert_eq!(decode(b"tern-files 1\n1 2 3\n"), None);
        assert_eq!(decode(b"tern-files 1\n1 2 999 0 0 /x\n"), None);
        assert_eq!(decode(b"tern-files 1\n"), Some(vec![]));
    }

    #[test]
    fn fingerprints_tell_a_rewritten_file() {
        let dir = crate::tempdir::TempDir::new("fingerprint");
        let p = dir.path().join("f");
        std::fs::write(&p, b"first line\n").unwrap();
        let f = File::open(&p).unwrap();
        let fp = Fingerprint::of(&f, 11);
        assert_eq!(fp.covered(), 11);
        std::fs::write(&p, b"first line\nsecond\n").unwrap();
        assert!(fp.matches(&f, 18), "grown: still the same start");
        std::fs::write(&p, b"other line\nsecond\n").unwrap();
        assert!(!fp.matches(&f, 18));
        assert!(!fp.matches(&f, 5), "shorter than the fingerprint");
    }
}
