//! What a watched file holds, reduced to a number, so that a save of the same bytes
//! (or a `touch`) resumes nothing; and how the coordinator knows which content the run
//! read without the run reading the file twice.
//!
//! The run records the file's [`Identity`] (what `stat` says) *before* the program
//! reads it. The coordinator, on its own time, reads the file and keeps the fingerprint
//! only if the identity is still the same: the file was not written since, so the
//! content it hashed is the content the run read. Any write changes the status change
//! time (ctime), which no program can set back: a write after the run's `stat` makes the
//! identities differ, and the file counts as changed.
//!
//! One gap: timestamps are coarse (a clock tick, a second on some filesystems), so a
//! write in the same tick as the last one may keep the ctime. A file whose ctime is
//! that recent (a file just saved, typically the one being edited) is fingerprinted by
//! the run itself, before the program reads it.

use crate::sys::{self, FileStat};
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Files larger than this are fingerprinted by identity (inode, size, mtime) rather
/// than content: hashing a big data file on every access costs more than it saves.
pub const CONTENT_LIMIT: u64 = 64 << 20;

/// A file changed less than this long ago may change again without its ctime moving:
/// more than a clock tick, and than the 1 s and 2 s timestamps of ext3, FAT and HFS+.
pub const SETTLE_TIME: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fingerprint {
    /// No regular file at that path.
    Missing,
    /// A 128-bit hash of the content (or of the identity of a large file).
    Content(u128),
    /// The content the run read is not known (it changed before anyone could look):
    /// whatever the file holds now counts as a change.
    Unknown,
}

/// What the coordinator knows of the content a run read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Its fingerprint.
    Read(Fingerprint),
    /// Not read yet (the coordinator waits for the run to pause, so as not to compete
    /// with it): the file holds the same content as long as it has this identity.
    Unread(Identity),
}

/// What `stat` says of a regular file, enough to tell it was not written since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Identity {
    pub const LEN: usize = 40;

    pub fn of(stat: &FileStat) -> Identity {
        Identity {
            dev: stat.dev,
            ino: stat.ino,
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            ctime_ns: stat.ctime_ns,
        }
    }

    /// Was the file last changed long enough ago that its next write is sure to move
    /// its ctime? If not, only reading it now tells what it holds.
    pub fn settled(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        self.ctime_ns < now - SETTLE_TIME.as_nanos() as i64
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..8].copy_from_slice(&self.dev.to_le_bytes());
        out[8..16].copy_from_slice(&self.ino.to_le_bytes());
        out[16..24].copy_from_slice(&self.size.to_le_bytes());
        out[24..32].copy_from_slice(&self.mtime_ns.to_le_bytes());
        out[32..40].copy_from_slice(&self.ctime_ns.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Identity> {
        let field = |i: usize| -> Option<[u8; 8]> { bytes.get(i * 8..i * 8 + 8)?.try_into().ok() };
        Some(Identity {
            dev: u64::from_le_bytes(field(0)?),
            ino: u64::from_le_bytes(field(1)?),
            size: u64::from_le_bytes(field(2)?),
            mtime_ns: i64::from_le_bytes(field(3)?),
            ctime_ns: i64::from_le_bytes(field(4)?),
        })
    }
}

impl Baseline {
    /// Does the file at `path` hold something else than the run read?
    pub fn differs_from(&self, path: &Path) -> bool {
        match self {
            Baseline::Read(fingerprint) => Fingerprint::of_path(path) != *fingerprint,
            Baseline::Unread(identity) => {
                let now = CString::new(path.as_os_str().as_bytes())
                    .ok()
                    .and_then(|c| sys::stat(&c).ok())
                    .filter(|s| s.regular)
                    .map(|s| Identity::of(&s));
                now != Some(*identity)
            }
        }
    }
}

impl Fingerprint {
    pub const LEN: usize = 17;

    /// Fingerprint of the file at `path` right now.
    pub fn of_path(path: &Path) -> Fingerprint {
        Self::read_path(path, None)
    }

    /// Fingerprint of the file at `path`, provided it still has identity `expected`
    /// before and after reading; `Unknown` if it was written meanwhile.
    pub fn of_path_as(path: &Path, expected: &Identity) -> Fingerprint {
        Self::read_path(path, Some(expected))
    }

    fn read_path(path: &Path, expected: Option<&Identity>) -> Fingerprint {
        let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
            return Fingerprint::Missing;
        };
        let Ok(fd) = sys::open_read(&c_path) else {
            return Self::missing_or_unknown(expected);
        };
        let fd = fd.as_raw_fd();
        let same = |stat: &FileStat| expected.map_or(true, |e| Identity::of(stat) == *e);
        match sys::fstat(fd) {
            Ok(stat) if !stat.regular => Self::missing_or_unknown(expected),
            Ok(stat) if same(&stat) => {
                let fingerprint = Self::of_open(fd, &stat);
                let unchanged = expected.is_none() || sys::fstat(fd).is_ok_and(|s| same(&s));
                if unchanged {
                    fingerprint
                } else {
                    Fingerprint::Unknown
                }
            }
            Ok(_) => Fingerprint::Unknown,
            Err(_) => Self::missing_or_unknown(expected),
        }
    }

    /// A file the run saw is gone: what it read is unknown, and differs from "missing".
    fn missing_or_unknown(expected: Option<&Identity>) -> Fingerprint {
        match expected {
            Some(_) => Fingerprint::Unknown,
            None => Fingerprint::Missing,
        }
    }

    /// Fingerprint of what `fd` (described by `stat`) holds. Reads with `pread`, so
    /// the descriptor's offset (the program's, maybe) does not move.
    pub fn of_open(fd: RawFd, stat: &FileStat) -> Fingerprint {
        if !stat.regular {
            return Fingerprint::Missing;
        }
        if stat.size > CONTENT_LIMIT {
            let identity = [
                stat.dev.to_le_bytes(),
                stat.ino.to_le_bytes(),
                stat.size.to_le_bytes(),
                stat.mtime_ns.to_le_bytes(),
            ]
            .concat();
            return Fingerprint::Content(xxhash_rust::xxh3::xxh3_128(&identity));
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        // Sized to the file (most are small): zeroing a fixed 16 KiB for each was half
        // of what the coordinator did to read a project's files.
        let mut buf = vec![0u8; (stat.size as usize + 1).clamp(512, 16 * 1024)];
        let mut offset = 0i64;
        loop {
            match sys::pread(fd, &mut buf, offset) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    offset += n as i64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Fingerprint::Unknown,
            }
        }
        Fingerprint::Content(hasher.digest128())
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        match self {
            Fingerprint::Missing => {}
            Fingerprint::Content(h) => {
                out[0] = 1;
                out[1..].copy_from_slice(&h.to_le_bytes());
            }
            Fingerprint::Unknown => out[0] = 2,
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Fingerprint> {
        match bytes {
            [0, ..] => Some(Fingerprint::Missing),
            [1, hash @ ..] => Some(Fingerprint::Content(u128::from_le_bytes(
                hash.try_into().ok()?,
            ))),
            [2, ..] => Some(Fingerprint::Unknown),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(path: &Path) -> FileStat {
        sys::stat(&CString::new(path.as_os_str().as_bytes()).unwrap()).unwrap()
    }

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

        // With an identity: the same file gives its content, a rewritten or removed one
        // is unknown (never equal to any content, nor to "missing").
        let seen = Identity::of(&stat(&a));
        assert_eq!(Fingerprint::of_path_as(&a, &seen), Fingerprint::of_path(&a));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&a, "print 'z'").unwrap();
        assert_eq!(Fingerprint::of_path_as(&a, &seen), Fingerprint::Unknown);
        std::fs::remove_file(&a).unwrap();
        assert_eq!(Fingerprint::of_path_as(&a, &seen), Fingerprint::Unknown);
        assert!(!seen.settled(), "a file written just now is not settled");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identity_and_fingerprint_bytes_round_trip() {
        let id = Identity {
            dev: 1,
            ino: u64::MAX,
            size: 3,
            mtime_ns: -4,
            ctime_ns: 5,
        };
        assert_eq!(Identity::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(Identity::from_bytes(&id.to_bytes()[..39]), None);
        for f in [
            Fingerprint::Missing,
            Fingerprint::Unknown,
            Fingerprint::Content(u128::MAX - 1),
        ] {
            assert_eq!(Fingerprint::from_bytes(&f.to_bytes()), Some(f));
        }
    }
}
