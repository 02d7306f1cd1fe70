//! Making the path a program passed to `open`/`stat` absolute, without allocating.
//!
//! This runs on every hooked call, so it works in a fixed buffer and resolves `.`,
//! `..` and repeated slashes lexically. The filter is matched against this form;
//! symlinks are resolved afterwards, only for paths that matched (see `hook`).

use crate::sys;
use std::os::fd::RawFd;

pub const MAX: usize = 4096;

/// A path of at most [`MAX`] bytes, built in place.
pub struct AbsPath {
    buf: [u8; MAX],
    len: usize,
}

impl AbsPath {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// `path` as seen from `dirfd` (`AT_FDCWD` for the current directory), made
    /// absolute and normalised. `None` when it cannot be known (bad dirfd, too long).
    pub fn resolve(dirfd: RawFd, path: &[u8]) -> Option<AbsPath> {
        let mut out = AbsPath {
            buf: [0; MAX],
            len: 0,
        };
        let mut base = [0u8; MAX];
        let base_len = if path.first() == Some(&b'/') {
            0
        } else if dirfd == libc::AT_FDCWD {
            sys::getcwd(&mut base).ok()?
        } else {
            sys::fd_path(dirfd, &mut base).ok()?
        };
        out.len = normalize_into(&base[..base_len], path, &mut out.buf)?;
        Some(out)
    }
}

/// Writes the lexical normal form of `base` + `/` + `path` into `out` and returns its
/// length (`path` alone when it is absolute). `None` if it does not fit.
pub fn normalize_into(base: &[u8], path: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    let parts = if path.first() == Some(&b'/') {
        [&b""[..], path]
    } else {
        [base, path]
    };
    for part in parts {
        for segment in part.split(|&b| b == b'/') {
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
                    if end > out.len() {
                        return None;
                    }
                    out[len] = b'/';
                    out[len + 1..end].copy_from_slice(name);
                    len = end;
                }
            }
        }
    }
    if len == 0 {
        *out.first_mut()? = b'/';
        len = 1;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(base: &str, path: &str) -> String {
        let mut out = [0u8; 64];
        let n = normalize_into(base.as_bytes(), path.as_bytes(), &mut out).expect("fits");
        String::from_utf8(out[..n].to_vec()).unwrap()
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
    fn resolve_uses_the_cwd_and_dirfds() {
        let cwd = std::env::current_dir().unwrap();
        let abs = AbsPath::resolve(libc::AT_FDCWD, b"x/../y.lua").unwrap();
        assert_eq!(
            abs.as_bytes(),
            format!("{}/y.lua", cwd.display()).as_bytes()
        );
        let dir = std::fs::File::open("/usr").unwrap();
        use std::os::fd::AsRawFd;
        let abs = AbsPath::resolve(dir.as_raw_fd(), b"lib/a.so").unwrap();
        assert_eq!(abs.as_bytes(), b"/usr/lib/a.so");
        assert!(AbsPath::resolve(-5, b"rel").is_none());
    }
}
