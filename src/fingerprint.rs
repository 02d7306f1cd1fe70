//! What a watched file holds, reduced to a number, so that a save of the same bytes
//! (or a `touch`) resumes nothing.
//!
//! The run takes the fingerprint itself, in the hook, *before* the program reads the
//! file: any edit after that point changes the fingerprint, so an edit that lands while
//! the coordinator is still catching up is never mistaken for the baseline.

use crate::sys::{self, FileStat};
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Files larger than this are fingerprinted by identity (inode, size, mtime) rather
/// than content: hashing a big data file on every access costs more than it saves.
pub const CONTENT_LIMIT: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fingerprint {
    /// No regular file at that path.
    Missing,
    /// A 128-bit hash of the content (or of the identity of a large file).
    Content(u128),
}

impl Fingerprint {
    pub const LEN: usize = 17;

    /// Fingerprint of the file at `path` right now.
    pub fn of_path(path: &Path) -> Fingerprint {
        let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
            return Fingerprint::Missing;
        };
        let Ok(fd) = sys::open_read(&c_path) else {
            return Fingerprint::Missing;
        };
        match sys::fstat(fd.as_raw_fd()) {
            Ok(stat) => Fingerprint::of_open(fd.as_raw_fd(), &stat),
            Err(_) => Fingerprint::Missing,
        }
    }

    /// Fingerprint of what `fd` (freshly opened, at offset 0, described by `stat`)
    /// holds.
    pub fn of_open(fd: RawFd, stat: &FileStat) -> Fingerprint {
        if !stat.regular {
            return Fingerprint::Missing;
        }
        if stat.size > CONTENT_LIMIT {
            let identity = [
                stat.dev.to_le_bytes(),
                stat.ino.to_le_bytes(),
                stat.size.to_le_bytes(),
                (stat.mtime_ns as u64).to_le_bytes(),
            ]
            .concat();
            return Fingerprint::Content(xxhash_rust::xxh3::xxh3_128(&identity));
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match sys::read(fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return Fingerprint::Missing,
            }
        }
        Fingerprint::Content(hasher.digest128())
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        if let Fingerprint::Content(h) = self {
            out[0] = 1;
            out[1..].copy_from_slice(&h.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Fingerprint> {
        match bytes {
            [0, ..] => Some(Fingerprint::Missing),
            [1, hash @ ..] => Some(Fingerprint::Content(u128::from_le_bytes(
                hash.try_into().ok()?,
            ))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_fingerprint_and_missing_files_are_missing() {
        let dir = std::env::temp_dir().join(format!("forkhook-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.lua");
        let b = dir.join("b.lua");
        std::fs::write(&a, "print 'x'").unwrap();
        std::fs::write(&b, "print 'x'").unwrap();
        assert_eq!(Fingerprint::of_path(&a), Fingerprint::of_path(&b));
        std::fs::write(&b, "print 'y'").unwrap();
        assert_ne!(Fingerprint::of_path(&a), Fingerprint::of_path(&b));
        assert_eq!(
            Fingerprint::of_path(&dir.join("none")),
            Fingerprint::Missing
        );
        assert_eq!(Fingerprint::of_path(&dir), Fingerprint::Missing);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
