//! The messages between the processes of a session.
//!
//! Up (runs and checkpoints → coordinator) travel on one `SOCK_SEQPACKET` socket that
//! every session process inherits: each send is one whole message, so concurrent
//! senders never interleave. Down (coordinator → one checkpoint) travel on a pipe per
//! checkpoint, whose write end only the coordinator holds: its closing is how a parked
//! checkpoint learns the coordinator is gone.
//!
//! Every message carries the *epoch* of the branch it comes from. The coordinator
//! bumps the epoch at each resume; messages still in flight from the branch it just
//! threw away carry the old epoch and are dropped.

use crate::fingerprint::{Fingerprint, Identity};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub type Pid = i32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Up {
    /// A process parked itself as a checkpoint just before its first access to `file`.
    /// Sent with the write end of the checkpoint's order pipe.
    Checkpoint {
        epoch: u64,
        pid: Pid,
        /// time into the run (as if started from scratch) at the checkpoint
        elapsed_ns: u64,
        file: PathBuf,
    },
    /// A run touched `file` (absolute, as the program named it) for the first time; a
    /// change to it resumes from `checkpoint`. `identity` is what `stat` said before
    /// the program read it; `fingerprint` is the content, if the run read it itself
    /// (`Unknown` if it left that to the coordinator, `Missing` if there was no file).
    Access {
        epoch: u64,
        checkpoint: Pid,
        elapsed_ns: u64,
        identity: Identity,
        fingerprint: Fingerprint,
        file: PathBuf,
    },
    /// A checkpoint forked a run.
    RunStarted {
        epoch: u64,
        pid: Pid,
        checkpoint: Pid,
    },
    /// The run ended by itself (raw wait status, peak resident memory in bytes).
    RunEnded {
        epoch: u64,
        pid: Pid,
        status: i32,
        peak_memory: u64,
    },
    /// The checkpoint `pid` announced could not fork its run; it carries on as the
    /// run itself, and is no checkpoint.
    CheckpointFailed { epoch: u64, pid: Pid, errno: i32 },
    /// Nothing but a wake-up: there are messages in the ring (see `sys::Ring`).
    Wake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// End everything below you, then fork a fresh run that carries `epoch`.
    Resume { epoch: u64 },
    /// Leave, and leave everything below you alone: it reparents to the checkpoint
    /// above (a subreaper). Frees this checkpoint's memory; its files resume from the
    /// one above, which also precedes them.
    Retire,
}

pub const DOWN_LEN: usize = 9;

/// Largest encoded message: a path of PATH_MAX plus fixed fields.
pub const MAX_UP_LEN: usize = 4096 + 64;

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

impl Up {
    pub fn encode(&self) -> Vec<u8> {
        // Sized once, as `AccessOf::encode` does (there, growing the buffer cost more
        // than the rest of the encoding).
        let path_len = match self {
            Up::Checkpoint { file, .. } | Up::Access { file, .. } => file.as_os_str().len(),
            _ => 0,
        };
        let mut w = Vec::with_capacity(128 + path_len);
        match self {
            Up::Checkpoint {
                epoch,
                pid,
                elapsed_ns,
                file,
            } => {
                w.push(1);
                w.extend_from_slice(&epoch.to_le_bytes());
                w.extend_from_slice(&pid.to_le_bytes());
                w.extend_from_slice(&elapsed_ns.to_le_bytes());
                put_path(&mut w, file);
            }
            Up::Access { .. } => {
                if let Some(access) = self.as_access() {
                    return access.encode();
                }
            }
            Up::RunStarted {
                epoch,
                pid,
                checkpoint,
            } => {
                w.push(3);
                w.extend_from_slice(&epoch.to_le_bytes());
                w.extend_from_slice(&pid.to_le_bytes());
                w.extend_from_slice(&checkpoint.to_le_bytes());
            }
            Up::RunEnded {
                epoch,
                pid,
                status,
                peak_memory,
            } => {
                w.push(4);
                w.extend_from_slice(&epoch.to_le_bytes());
                w.extend_from_slice(&pid.to_le_bytes());
                w.extend_from_slice(&status.to_le_bytes());
                w.extend_from_slice(&peak_memory.to_le_bytes());
            }
            Up::CheckpointFailed { epoch, pid, errno } => {
                w.push(5);
                w.extend_from_slice(&epoch.to_le_bytes());
                w.extend_from_slice(&pid.to_le_bytes());
                w.extend_from_slice(&errno.to_le_bytes());
            }
            Up::Wake => w.push(6),
        }
        w
    }

    /// A first access, borrowed (see [`AccessOf`]).
    pub fn as_access(&self) -> Option<AccessOf<'_>> {
        match self {
            Up::Access {
                epoch,
                checkpoint,
                elapsed_ns,
                identity,
                fingerprint,
                file,
            } => Some(AccessOf {
                epoch: *epoch,
                checkpoint: *checkpoint,
                elapsed_ns: *elapsed_ns,
                identity: *identity,
                fingerprint: *fingerprint,
                file,
            }),
            _ => None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Up, Malformed> {
        let (&tag, rest) = bytes.split_first().ok_or(Malformed)?;
        let mut r = Reader(rest);
        let msg = match tag {
            1 => Up::Checkpoint {
                epoch: r.u64()?,
                pid: r.i32()?,
                elapsed_ns: r.u64()?,
                file: r.path()?,
            },
            2 => Up::Access {
                epoch: r.u64()?,
                checkpoint: r.i32()?,
                elapsed_ns: r.u64()?,
                identity: Identity::from_bytes(r.take(Identity::LEN)?).ok_or(Malformed)?,
                fingerprint: Fingerprint::from_bytes(r.take(Fingerprint::LEN)?).ok_or(Malformed)?,
                file: r.path()?,
            },
            3 => Up::RunStarted {
                epoch: r.u64()?,
                pid: r.i32()?,
                checkpoint: r.i32()?,
            },
            4 => Up::RunEnded {
                epoch: r.u64()?,
                pid: r.i32()?,
                status: r.i32()?,
                peak_memory: r.u64()?,
            },
            5 => Up::CheckpointFailed {
                epoch: r.u64()?,
                pid: r.i32()?,
                errno: r.i32()?,
            },
            6 => Up::Wake,
            _ => return Err(Malformed),
        };
        Ok(msg)
    }
}

impl Down {
    pub fn encode(&self) -> [u8; DOWN_LEN] {
        let mut out = [0u8; DOWN_LEN];
        match self {
            Down::Resume { epoch } => {
                out[0] = 1;
                out[1..].copy_from_slice(&epoch.to_le_bytes());
            }
            Down::Retire => out[0] = 2,
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Down, Malformed> {
        match bytes {
            [1, epoch @ ..] if epoch.len() == 8 => Ok(Down::Resume {
                epoch: u64::from_le_bytes(epoch.try_into().map_err(|_| Malformed)?),
            }),
            [2, rest @ ..] if rest.len() == 8 => Ok(Down::Retire),
            _ => Err(Malformed),
        }
    }
}

/// [`Up::Access`] with the path borrowed: a run encodes one in the program's own
/// call, for each first access, and copying the path first would cost an allocation.
pub struct AccessOf<'a> {
    pub epoch: u64,
    pub checkpoint: Pid,
    pub elapsed_ns: u64,
    pub identity: Identity,
    pub fingerprint: Fingerprint,
    pub file: &'a Path,
}

impl AccessOf<'_> {
    /// Bytes before the path: tag, epoch, checkpoint, elapsed, identity, fingerprint,
    /// path length.
    const FIXED: usize = 1 + 8 + 4 + 8 + Identity::LEN + Fingerprint::LEN + 4;

    /// Length of the encoding.
    pub fn encoded_len(&self) -> usize {
        Self::FIXED + self.file.as_os_str().len()
    }

    /// The same bytes as `Up::Access { .. }.encode()`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = vec![0; self.encoded_len()];
        self.write(&mut w);
        w
    }

    /// Writes the encoding into `out`, exactly [`AccessOf::encoded_len`] bytes long: in the
    /// run, straight into the ring, with no buffer of its own to allocate and free.
    pub fn write(&self, out: &mut [u8]) {
        let path = self.file.as_os_str().as_bytes();
        let (fixed, rest) = out.split_at_mut(Self::FIXED);
        fixed[0] = 2;
        fixed[1..9].copy_from_slice(&self.epoch.to_le_bytes());
        fixed[9..13].copy_from_slice(&self.checkpoint.to_le_bytes());
        fixed[13..21].copy_from_slice(&self.elapsed_ns.to_le_bytes());
        let (identity, tail) = fixed[21..].split_at_mut(Identity::LEN);
        identity.copy_from_slice(&self.identity.to_bytes());
        let (fingerprint, length) = tail.split_at_mut(Fingerprint::LEN);
        fingerprint.copy_from_slice(&self.fingerprint.to_bytes());
        length.copy_from_slice(&(path.len() as u32).to_le_bytes());
        rest.copy_from_slice(path);
    }
}

fn put_path(w: &mut Vec<u8>, path: &Path) {
    let bytes = path.as_os_str().as_bytes();
    w.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    w.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| Malformed)?,
        ))
    }
    fn i32(&mut self) -> Result<i32, Malformed> {
        Ok(i32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| Malformed)?,
        ))
    }
    fn path(&mut self) -> Result<PathBuf, Malformed> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Malformed)?);
        Ok(PathBuf::from(OsStr::from_bytes(self.take(len as usize)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_up_message_round_trips() {
        let messages = [
            Up::Checkpoint {
                epoch: 3,
                pid: 1234,
                elapsed_ns: 1_000_000_007,
                file: "/tmp/a b/foo.lua".into(),
            },
            Up::Access {
                epoch: u64::MAX,
                checkpoint: 99,
                elapsed_ns: 0,
                identity: Identity {
                    dev: 1,
                    ino: 2,
                    size: 3,
                    mtime_ns: 4,
                    ctime_ns: 5,
                },
                fingerprint: Fingerprint::Content(0xdead_beef_u128 << 64 | 7),
                file: PathBuf::from(OsStr::from_bytes(b"/x/\xff\xfe.py")),
            },
            Up::Access {
                epoch: 0,
                checkpoint: 1,
                elapsed_ns: 5,
                identity: Identity::default(),
                fingerprint: Fingerprint::Missing,
                file: "/gone".into(),
            },
            Up::RunStarted {
                epoch: 1,
                pid: 2,
                checkpoint: 3,
            },
            Up::RunEnded {
                epoch: 1,
                pid: 2,
                status: 0x0900,
                peak_memory: 100 << 20,
            },
            Up::CheckpointFailed {
                epoch: 2,
                pid: 5,
                errno: libc::EAGAIN,
            },
            Up::Wake,
        ];
        for m in messages {
            assert_eq!(Up::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn truncated_or_unknown_messages_are_rejected() {
        let full = Up::RunEnded {
            epoch: 1,
            pid: 2,
            status: 3,
            peak_memory: 4,
        }
        .encode();
        for cut in 0..full.len() {
            assert_eq!(Up::decode(&full[..cut]), Err(Malformed));
        }
        assert_eq!(Up::decode(&[42]), Err(Malformed));
        assert_eq!(Down::decode(&[1, 2, 3]), Err(Malformed));
    }

    #[test]
    fn down_round_trips() {
        for d in [Down::Resume { epoch: 77 }, Down::Retire] {
            assert_eq!(Down::decode(&d.encode()), Ok(d));
        }
    }
}
