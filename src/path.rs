//! Making the path a program passed to `open`/`stat` absolute, without allocating.
//!
//! This runs on every hooked call, so it does as little as it can: an absolute path
//! already in normal form (the common case) is used as the program passed it, with no
//! copy; anything else is built in a small stack buffer (a page-sized one only for
//! long paths), resolving `.`, `..` and repeated slashes lexically. The filter is
//! matched against this form; symlinks are resolved afterwards, only for paths that
//! matched (see `hook`).
//!
//! The result is lent to a closure rather than returned: returning a 4 KiB buffer by
//! value copied it on every call, and a copy between two stack slots 4 KiB apart is
//! pathologically slow on some CPUs (it was most of the hook's cost).
//!
//! The current directory comes from a per-thread copy, refreshed after the program
//! calls `chdir` or `fchdir` (the hook counts those calls in [`cwd_changed`]), so a
//! relative path costs no `getcwd` system call. A directory change the hook cannot
//! see (a raw `syscall(SYS_chdir)`, glibc's own `fts` walking with `__fchdir`) leaves
//! the copy stale until the next `chdir` the hook does see.

use crate::sys;
use std::cell::RefCell;
use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest absolute path handled (`PATH_MAX`, with its NUL).
pub const MAX: usize = 4096;
/// Paths up to this long (with their NUL) are built in a buffer this size, which is
/// what a call zeroes; longer ones take the slow way.
const SMALL: usize = 512;

/// Bumped on every `chdir`/`fchdir` the program makes: every thread's copy of the
/// current directory is stale from then on. Starts at 1: an empty copy has 0.
static CWD_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The program changed (or tried to change) its current directory.
pub fn cwd_changed() {
    CWD_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Changes each time the program changes directory: a relative name means the same
/// path as long as this is the same.
pub fn cwd_generation() -> u64 {
    CWD_GENERATION.load(Ordering::Acquire)
}

/// A thread's copy of the current directory, as of `generation`. A directory longer
/// than the buffer is not kept (it is asked for every time).
struct CwdCopy {
    generation: u64,
    len: usize,
    buf: [u8; SMALL],
}

thread_local! {
    static CWD: RefCell<CwdCopy> = const {
        RefCell::new(CwdCopy {
            generation: 0,
            len: 0,
            buf: [0; SMALL],
        })
    };
}

/// The current directory, written into `out` (as [`sys::getcwd`]), from this thread's
/// copy when the program has not changed directory since it was taken.
fn current_dir(out: &mut [u8]) -> io::Result<usize> {
    // Read before asking the kernel: a chdir racing with us then bumps it after, and
    // the next call asks again.
    let generation = CWD_GENERATION.load(Ordering::Acquire);
    let from_copy = CWD.try_with(|copy| {
        let mut copy = copy.try_borrow_mut().ok()?;
        if copy.generation == generation {
            let len = copy.len;
            // Too long for `out`: the kernel says so (ERANGE), below.
            out.get_mut(..len)?.copy_from_slice(&copy.buf[..len]);
            return Some(Ok(len));
        }
        let asked = sys::getcwd(out);
        if let Ok(len) = asked {
            if len < SMALL {
                copy.buf[..len].copy_from_slice(&out[..len]);
                copy.len = len;
                copy.generation = generation;
            }
        }
        Some(asked)
    });
    from_copy.ok().flatten().unwrap_or_else(|| sys::getcwd(out))
}

/// Calls `f` with `path` as seen from `dirfd` (`AT_FDCWD` for the current directory),
/// made absolute and normalised, NUL-terminated so it can be passed to a syscall as it
/// is. `None` (and `f` is not called) when it cannot be known: a bad dirfd, an
/// unreachable current directory, or a result longer than [`MAX`].
pub fn with_absolute<R>(dirfd: RawFd, path: &CStr, f: impl FnOnce(&CStr) -> R) -> Option<R> {
    let given = path.to_bytes();
    if is_normal_absolute(given) {
        return Some(f(path));
    }
    let mut small = [0u8; SMALL];
    match build(dirfd, given, &mut small) {
        Built::Done(len) => Some(f(CStr::from_bytes_with_nul(&small[..=len]).ok()?)),
        Built::TooLong => with_long(dirfd, given, f),
        Built::Unknown => None,
    }
}

/// [`with_absolute`] for paths that do not fit the small buffer; out of line, so the
/// common case does not carry a page-sized stack frame.
#[inline(never)]
#[cold]
fn with_long<R>(dirfd: RawFd, given: &[u8], f: impl FnOnce(&CStr) -> R) -> Option<R> {
    let mut big = [0u8; MAX];
    match build(dirfd, given, &mut big) {
        Built::Done(len) => Some(f(CStr::from_bytes_with_nul(&big[..=len]).ok()?)),
        Built::TooLong | Built::Unknown => None,
    }
}

/// Whether `path` is absolute and already in the form [`with_absolute`] gives: no
/// empty, `.` or `..` segment, no trailing slash (except the root itself).
pub fn is_normal_absolute(path: &[u8]) -> bool {
    match path {
        [b'/'] => true,
        // Such a segment starts with "//" or "/.": most paths have neither, and those
        // that have one ("/home/me/.config/...") get the exact look.
        [b'/', .., last] if *last != b'/' => !may_have_slash_pair(path) || segments_normal(path),
        _ => false,
    }
}

/// `path[1..]`'s segments are neither empty, `.` nor `..` (`path` starts with '/').
fn segments_normal(path: &[u8]) -> bool {
    path[1..]
        .split(|&b| b == b'/')
        .all(|segment| !matches!(segment, b"" | b"." | b".."))
}

/// Whether `path` may contain "//" or "/.": never false when it does, and rarely true
/// when it does not. Eight byte pairs at a time (every hooked call scans its path).
fn may_have_slash_pair(path: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const SLASHES: u64 = u64::from_ne_bytes([b'/'; 8]);
    const DOTS: u64 = u64::from_ne_bytes([b'.'; 8]);
    // The high bit of each byte that is zero in `x` (and, through a borrow, maybe of a
    // byte after one that is: a false alarm, which only costs the exact look).
    let zeros = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let word = |bytes: &[u8]| <[u8; 8]>::try_from(bytes).map(u64::from_le_bytes);
    let mut at = 0;
    while at + 9 <= path.len() {
        // Byte k of `here` is path[at + k], byte k of `next` the one after it.
        let (Ok(here), Ok(next)) = (word(&path[at..at + 8]), word(&path[at + 1..at + 9])) else {
            return true;
        };
        if zeros(here ^ SLASHES) & (zeros(next ^ SLASHES) | zeros(next ^ DOTS)) != 0 {
            return true;
        }
        at += 8;
    }
    path[at..]
        .windows(2)
        .any(|pair| pair[0] == b'/' && matches!(pair[1], b'/' | b'.'))
}

enum Built {
    /// Length of the path written, not counting the NUL after it.
    Done(usize),
    TooLong,
    Unknown,
}

/// Writes the absolute normal form of `path` (seen from `dirfd`) and a NUL into `out`.
/// The base directory is written straight into `out` (the kernel gives it in normal
/// form already), then `path`'s segments are applied to it.
fn build(dirfd: RawFd, path: &[u8], out: &mut [u8]) -> Built {
    let base = if path.first() == Some(&b'/') {
        0
    } else {
        let got = if dirfd == libc::AT_FDCWD {
            current_dir(out)
        } else {
            sys::fd_path(dirfd, out)
        };
        match got {
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => return Built::TooLong,
            Err(_) => return Built::Unknown,
            // readlink truncates silently: a full buffer may be a cut-off path.
            Ok(n) if n >= out.len() => return Built::TooLong,
            // Not a path: "(unreachable)/..." outside our root, "pipe:[..]" for a dirfd
            // that is not a directory (the real call fails on it anyway).
            Ok(n) if n == 0 || out[0] != b'/' => return Built::Unknown,
            // The root is the empty prefix.
            Ok(1) => 0,
            Ok(n) => n,
        }
    };
    match push_segments(out, base, path) {
        Some(len) => {
            out[len] = 0;
            Built::Done(len)
        }
        None => Built::TooLong,
    }
}

/// Applies the segments of `path` to the normal absolute path `out[..len]` (the root
/// is `len == 0`) and returns the new length. Leaves room for a NUL after it; `None`
/// if that does not fit.
fn push_segments(out: &mut [u8], mut len: usize, path: &[u8]) -> Option<usize> {
    for segment in path.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                // Drop the last segment; at the root, ".." stays at the root.
                while len > 0 && out[len - 1] != b'/' {
                    len -= 1;
                }
                len = len.saturating_sub(1);
            }
            name => {
                let end = len + 1 + name.len();
                if end >= out.len() {
                    return None;
                }
                out[len] = b'/';
                out[len + 1..end].copy_from_slice(name);
                len = end;
            }
        }
    }
    if len == 0 {
        if out.len() < 2 {
            return None;
        }
        out[0] = b'/';
        len = 1;
    }
    Some(len)
}

/// Writes the lexical normal form of `base` + `/` + `path` into `out` and returns its
/// length (`path` alone when it is absolute). `None` if it, and a NUL after it, do not
/// fit.
pub fn normalize_into(base: &[u8], path: &[u8], out: &mut [u8]) -> Option<usize> {
    let len = if path.first() == Some(&b'/') {
        0
    } else {
        match push_segments(out, 0, base)? {
            // push_segments gives the root as "/", the prefix as nothing.
            1 if out[0] == b'/' => 0,
            n => n,
        }
    };
    push_segments(out, len, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn norm(base: &str, path: &str) -> String {
        let mut out = [0u8; 64];
        let n = normalize_into(base.as_bytes(), path.as_bytes(), &mut out).expect("fits");
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    fn absolute(dirfd: RawFd, path: &str) -> Option<String> {
        let path = CString::new(path).unwrap();
        with_absolute(dirfd, &path, |abs| {
            String::from_utf8(abs.to_bytes().to_vec()).unwrap()
        })
    }

    #[test]
    fn relative_paths_join_the_base() {
        assert_eq!(norm("/home/me", "foo.lua"), "/home/me/foo.lua");
        assert_eq!(norm("/home/me", "./foo.lua"), "/home/me/foo.lua");
        assert_eq!(norm("/home/me/", "src//a.lua"), "/home/me/src/a.lua");
        assert_eq!(norm("/", "a"), "/a");
    }

    #[test]
    fn absolute_paths_ignore_the_base() {
        assert_eq!(norm("/home/me", "/tmp/x.py"), "/tmp/x.py");
        assert_eq!(norm("/home/me", "//tmp///x.py"), "/tmp/x.py");
    }

    #[test]
    fn dot_dot_climbs_but_not_past_the_root() {
        assert_eq!(norm("/home/me/app", "../lib/a.lua"), "/home/me/lib/a.lua");
        assert_eq!(norm("/home", "../../../etc/x"), "/etc/x");
        assert_eq!(norm("/a/b", ".."), "/a");
        assert_eq!(norm("/a", ".."), "/");
        assert_eq!(norm("/", "."), "/");
    }

    #[test]
    fn too_long_is_none() {
        let mut out = [0u8; 8];
        assert_eq!(normalize_into(b"/", b"abcdefghijkl", &mut out), None);
    }

    #[test]
    fn normal_absolute_paths_are_recognised() {
        for normal in [
            "/",
            "/a",
            "/a/b.lua",
            "/a/.hidden",
            "/a/..b",
            "/a/b..",
            "/a/b c",
        ] {
            assert!(is_normal_absolute(normal.as_bytes()), "{normal}");
        }
        for other in [
            "", "a", "a/b", "./a", "//a", "/a/", "/a//b", "/a/./b", "/a/../b", "/a/.", "/a/..",
            "/.", "/..",
        ] {
            assert!(!is_normal_absolute(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn the_fast_normal_form_check_agrees_with_the_definition() {
        let simple = |p: &[u8]| match p {
            [b'/'] => true,
            [b'/', rest @ ..] => rest
                .split(|&b| b == b'/')
                .all(|s| !matches!(s, b"" | b"." | b"..")),
            _ => false,
        };
        // Every string of up to 10 bytes over '/', '.', 'a'.
        let mut path = Vec::new();
        for len in 0..=10u32 {
            for mut n in 0..3usize.pow(len) {
                path.clear();
                for _ in 0..len {
                    path.push([b'/', b'.', b'a'][n % 3]);
                    n /= 3;
                }
                assert_eq!(is_normal_absolute(&path), simple(&path), "{path:?}");
            }
        }
        // And longer ones, pseudo-random, starting with '/'.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 1 + (state % 48) as usize;
            path.clear();
            path.push(b'/');
            let mut bits = state;
            for _ in 1..len {
                bits = bits.rotate_left(5) ^ state;
                path.push([b'/', b'.', b'a', b'0', b'a', b'b', b'c', b'/'][(bits % 8) as usize]);
            }
            assert_eq!(is_normal_absolute(&path), simple(&path), "{path:?}");
        }
    }

    #[test]
    fn slash_pairs_are_never_missed() {
        let text = b"/abcdefg/ijklmnopqrstuvwxyz0123456789";
        for at in 1..text.len() {
            for second in [b'/', b'.'] {
                let mut path = text.to_vec();
                path[at - 1] = b'/';
                path[at] = second;
                assert!(
                    may_have_slash_pair(&path),
                    "{}",
                    String::from_utf8_lossy(&path)
                );
            }
        }
        assert!(!may_have_slash_pair(text));
        assert!(!may_have_slash_pair(b"/a/b/c/d/e/f/g/h/i/j/k.lua"));
        assert!(!may_have_slash_pair(b"/x"));
    }

    #[test]
    fn absolute_paths_are_normalised() {
        assert_eq!(absolute(libc::AT_FDCWD, "/a/b.lua").unwrap(), "/a/b.lua");
        assert_eq!(
            absolute(libc::AT_FDCWD, "/a/./b/../c.lua").unwrap(),
            "/a/c.lua"
        );
        assert_eq!(absolute(libc::AT_FDCWD, "//a//b/").unwrap(), "/a/b");
        assert_eq!(absolute(libc::AT_FDCWD, "/..").unwrap(), "/");
        // A bad dirfd does not matter for an absolute path, as for the real call.
        assert_eq!(absolute(-5, "/x/./y").unwrap(), "/x/y");
    }

    #[test]
    fn resolve_uses_the_cwd_and_dirfds() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute(libc::AT_FDCWD, "x/../y.lua").unwrap(),
            format!("{}/y.lua", cwd.display())
        );
        assert_eq!(
            absolute(libc::AT_FDCWD, ".").unwrap(),
            cwd.display().to_string()
        );
        let dir = std::fs::File::open("/usr").unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(
            absolute(dir.as_raw_fd(), "lib/a.so").unwrap(),
            "/usr/lib/a.so"
        );
        assert_eq!(absolute(dir.as_raw_fd(), "..").unwrap(), "/");
        assert!(absolute(-5, "rel").is_none());
    }

    #[test]
    fn the_current_directory_is_copied_until_it_changes() {
        let cwd = std::env::current_dir().unwrap().display().to_string();
        assert_eq!(absolute(libc::AT_FDCWD, "a").unwrap(), format!("{cwd}/a"));
        // This thread's copy is used as long as no chdir was seen...
        CWD.with(|copy| {
            let mut copy = copy.borrow_mut();
            copy.buf[..10].copy_from_slice(b"/elsewhere");
            copy.len = 10;
        });
        assert_eq!(absolute(libc::AT_FDCWD, "a").unwrap(), "/elsewhere/a");
        // ...and a chdir makes it ask the kernel again.
        cwd_changed();
        assert_eq!(absolute(libc::AT_FDCWD, "a").unwrap(), format!("{cwd}/a"));
    }

    #[test]
    fn long_paths_take_the_big_buffer_and_too_long_ones_are_none() {
        let long = format!("/{}x.lua", "d/".repeat(400));
        assert!(long.len() > SMALL);
        assert_eq!(
            absolute(libc::AT_FDCWD, &format!("{long}/.")).unwrap(),
            long.trim_end_matches("/.")
        );
        let relative = "d/".repeat(400);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute(libc::AT_FDCWD, &relative).unwrap(),
            format!("{}/{}", cwd.display(), relative.trim_end_matches('/'))
        );
        let too_long = format!("/{}", "d/".repeat(MAX));
        assert!(absolute(libc::AT_FDCWD, &format!("{too_long}.")).is_none());
    }
}
