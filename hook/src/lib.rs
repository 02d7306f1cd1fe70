//! libforkhook.so: the libc entry points through which programs open and stat files,
//! interposed with `LD_PRELOAD`, and the load-time constructor. Each one makes the real
//! call, then, if it succeeded, tells the core (`forkhook::hook`) what the program is
//! about to get; the core may take a checkpoint right there, and a run resumed from it
//! makes the real call again.
//!
//! Nothing else lives here, on purpose: these symbols must exist only in this cdylib
//! (a crate that also built an rlib would leak `open` into every binary linking it).
//!
//! `open`, `openat` and friends are variadic in C. Stable Rust cannot define a
//! variadic function, so they take the optional `mode` as a plain third (fourth)
//! argument: on x86-64 and aarch64 Linux a variadic argument travels in the same
//! register as a named one, and `mode` is only read by the real call when `O_CREAT`
//! or `O_TMPFILE` says the caller passed it.
#![allow(clippy::missing_safety_doc)]

use forkhook::hook::{after_access, cwd_changed, exec_environment, Found, Intent, Then};
use forkhook::sys::StatBuf;
use libc::{c_char, c_int, c_void, mode_t, pid_t, FILE};
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicPtr, Ordering};

/// Finds the next definition of a symbol (libc's), once, and calls it.
macro_rules! real {
    ($name:ident : fn($($arg:ty),*) -> $ret:ty) => {{
        static REAL: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
        let mut ptr = REAL.load(Ordering::Relaxed);
        if ptr.is_null() {
            ptr = lookup(concat!(stringify!($name), "\0").as_bytes());
            REAL.store(ptr, Ordering::Relaxed);
        }
        if ptr.is_null() {
            None
        } else {
            // SAFETY: `ptr` is libc's definition of this very symbol, whose C
            // signature is the one spelled out at the call site.
            Some(std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> $ret>(ptr))
        }
    }};
}

/// `dlsym(RTLD_NEXT)`, falling back to the oldest versions of symbols glibc keeps
/// only for old binaries (`__xstat` and friends have no default version since 2.33).
unsafe fn lookup(name: &[u8]) -> *mut c_void {
    let name = name.as_ptr() as *const c_char;
    let ptr = libc::dlsym(libc::RTLD_NEXT, name);
    if !ptr.is_null() {
        return ptr;
    }
    for version in [c"GLIBC_2.2.5", c"GLIBC_2.17", c"GLIBC_2.0"] {
        let ptr = libc::dlvsym(libc::RTLD_NEXT, name, version.as_ptr());
        if !ptr.is_null() {
            return ptr;
        }
    }
    std::ptr::null_mut()
}

fn missing<T>(fail: T) -> T {
    // SAFETY: errno is thread-local and always writable.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    fail
}

/// Tells the core that a call on `path` succeeded; true if it must be made again.
/// The core keeps errno as the real call left it.
///
/// # Safety
/// `path` is what the program passed: NULL or a NUL-terminated string.
unsafe fn again(dirfd: c_int, path: *const c_char, intent: Intent, found: Found) -> bool {
    if path.is_null() {
        return false;
    }
    after_access(dirfd, CStr::from_ptr(path), intent, found) == Then::CallAgain
}

/// A file opened to be written, truncated or created is the program's output, not a
/// dependency (and with `O_CREAT` it may exist only because of this very call).
fn open_intent(flags: c_int) -> Intent {
    if flags & libc::O_ACCMODE == libc::O_WRONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0 {
        Intent::Write
    } else {
        Intent::Read
    }
}

/// # Safety
/// `mode` is NULL or a NUL-terminated fopen mode string.
unsafe fn fopen_intent(mode: *const c_char) -> Intent {
    if !mode.is_null() && *mode == b'r' as c_char {
        Intent::Read
    } else {
        Intent::Write
    }
}

// ---------------------------------------------------------------- the open family

macro_rules! hook_open {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
            let Some(f) = real!($name: fn(*const c_char, c_int, mode_t) -> c_int) else {
                return missing(-1);
            };
            let fd = f(path, flags, mode);
            if fd >= 0 && again(libc::AT_FDCWD, path, open_intent(flags), Found::Fd(fd)) {
                libc::close(fd);
                return f(path, flags, mode);
            }
            fd
        }
    )*};
}
hook_open!(open, open64);

macro_rules! hook_openat {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
            let Some(f) = real!($name: fn(c_int, *const c_char, c_int, mode_t) -> c_int) else {
                return missing(-1);
            };
            let fd = f(dirfd, path, flags, mode);
            if fd >= 0 && again(dirfd, path, open_intent(flags), Found::Fd(fd)) {
                libc::close(fd);
                return f(dirfd, path, flags, mode);
            }
            fd
        }
    )*};
}
hook_openat!(openat, openat64);

// The _FORTIFY_SOURCE variants, called instead of open/openat when the flags are
// known at compile time not to need a mode.
macro_rules! hook_open_2 {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int) -> c_int {
            let Some(f) = real!($name: fn(*const c_char, c_int) -> c_int) else {
                return missing(-1);
            };
            let fd = f(path, flags);
            if fd >= 0 && again(libc::AT_FDCWD, path, open_intent(flags), Found::Fd(fd)) {
                libc::close(fd);
                return f(path, flags);
            }
            fd
        }
    )*};
}
hook_open_2!(__open_2, __open64_2);

macro_rules! hook_openat_2 {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
            let Some(f) = real!($name: fn(c_int, *const c_char, c_int) -> c_int) else {
                return missing(-1);
            };
            let fd = f(dirfd, path, flags);
            if fd >= 0 && again(dirfd, path, open_intent(flags), Found::Fd(fd)) {
                libc::close(fd);
                return f(dirfd, path, flags);
            }
            fd
        }
    )*};
}
hook_openat_2!(__openat_2, __openat64_2);

macro_rules! hook_fopen {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char) -> *mut FILE {
            let Some(f) = real!($name: fn(*const c_char, *const c_char) -> *mut FILE) else {
                return missing(std::ptr::null_mut());
            };
            let stream = f(path, mode);
            if !stream.is_null()
                && again(libc::AT_FDCWD, path, fopen_intent(mode), Found::Fd(libc::fileno(stream)))
            {
                libc::fclose(stream);
                return f(path, mode);
            }
            stream
        }
    )*};
}
hook_fopen!(fopen, fopen64);

macro_rules! hook_freopen {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> *mut FILE {
            let Some(f) = real!($name: fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE) else {
                return missing(std::ptr::null_mut());
            };
            let reopened = f(path, mode, stream);
            if !reopened.is_null()
                && again(libc::AT_FDCWD, path, fopen_intent(mode), Found::Fd(libc::fileno(reopened)))
            {
                // freopen closes what the stream holds and opens the file anew.
                return f(path, mode, reopened);
            }
            reopened
        }
    )*};
}
hook_freopen!(freopen, freopen64);

// ---------------------------------------------------------------- the stat family
// The buffer is passed through, and its type matters only to `filled`.

/// What a successful `stat`, `stat64`, `lstat`, `lstat64`, `fstatat` or `fstatat64`
/// left in `buf`: a `struct stat`, which on these targets `struct stat64` is too. The
/// core reads it rather than looking the file up again (`statx` hands on its own).
unsafe fn filled(buf: *mut c_void) -> Found {
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) && !buf.is_null() {
        Found::Stat(StatBuf::stat(buf))
    } else {
        Found::Path
    }
}

macro_rules! hook_stat {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, buf: *mut c_void) -> c_int {
            let Some(f) = real!($name: fn(*const c_char, *mut c_void) -> c_int) else {
                return missing(-1);
            };
            let result = f(path, buf);
            if result == 0 && again(libc::AT_FDCWD, path, Intent::Stat, filled(buf)) {
                return f(path, buf);
            }
            result
        }
    )*};
}
hook_stat!(stat, stat64, lstat, lstat64);

macro_rules! hook_fstatat {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, buf: *mut c_void, flags: c_int) -> c_int {
            let Some(f) = real!($name: fn(c_int, *const c_char, *mut c_void, c_int) -> c_int) else {
                return missing(-1);
            };
            let result = f(dirfd, path, buf, flags);
            if result == 0 && again(dirfd, path, Intent::Stat, filled(buf)) {
                return f(dirfd, path, buf, flags);
            }
            result
        }
    )*};
}
hook_fstatat!(fstatat, fstatat64);

#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: libc::c_uint,
    buf: *mut c_void,
) -> c_int {
    let Some(f) = real!(statx: fn(c_int, *const c_char, c_int, libc::c_uint, *mut c_void) -> c_int)
    else {
        return missing(-1);
    };
    let result = f(dirfd, path, flags, mask, buf);
    let found = match buf.is_null() {
        true => Found::Path,
        false => Found::Stat(StatBuf::statx(buf)),
    };
    if result == 0 && again(dirfd, path, Intent::Stat, found) {
        return f(dirfd, path, flags, mask, buf);
    }
    result
}

// glibc before 2.33 compiled stat() into calls to these; old binaries still make them.
macro_rules! hook_xstat {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(version: c_int, path: *const c_char, buf: *mut c_void) -> c_int {
            let Some(f) = real!($name: fn(c_int, *const c_char, *mut c_void) -> c_int) else {
                return missing(-1);
            };
            let result = f(version, path, buf);
            if result == 0 && again(libc::AT_FDCWD, path, Intent::Stat, Found::Path) {
                return f(version, path, buf);
            }
            result
        }
    )*};
}
hook_xstat!(__xstat, __xstat64, __lxstat, __lxstat64);

macro_rules! hook_fxstatat {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(version: c_int, dirfd: c_int, path: *const c_char, buf: *mut c_void, flags: c_int) -> c_int {
            let Some(f) = real!($name: fn(c_int, c_int, *const c_char, *mut c_void, c_int) -> c_int) else {
                return missing(-1);
            };
            let result = f(version, dirfd, path, buf, flags);
            if result == 0 && again(dirfd, path, Intent::Stat, Found::Path) {
                return f(version, dirfd, path, buf, flags);
            }
            result
        }
    )*};
}
hook_fxstatat!(__fxstatat, __fxstatat64);

// ---------------------------------------------------------------- spawning
// Once a session runs, what the program spawns does not load the hook. Spawns that
// read `environ` are covered by cleaning `environ` itself; these take an explicit
// environment (CPython's subprocess passes a copy made at startup).

/// # Safety
/// `envp` is NULL or a NULL-terminated array of NUL-terminated strings.
unsafe fn without_hook(envp: *const *const c_char) -> Option<(Vec<CString>, Vec<*const c_char>)> {
    if envp.is_null() {
        return None;
    }
    let mut entries = Vec::new();
    let mut at = envp;
    while !(*at).is_null() {
        entries.push(CStr::from_ptr(*at));
        at = at.add(1);
    }
    let owned = exec_environment(entries.into_iter())?;
    let mut pointers: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
    pointers.push(std::ptr::null());
    Some((owned, pointers))
}

macro_rules! hook_exec {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
            let cleaned = without_hook(envp);
            let envp = cleaned.as_ref().map_or(envp, |(_, p)| p.as_ptr());
            match real!($name: fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int) {
                Some(f) => f(path, argv, envp),
                None => missing(-1),
            }
        }
    )*};
}
hook_exec!(execve, execvpe);

macro_rules! hook_spawn {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            pid: *mut pid_t,
            path: *const c_char,
            actions: *const c_void,
            attr: *const c_void,
            argv: *const *const c_char,
            envp: *const *const c_char,
        ) -> c_int {
            let cleaned = without_hook(envp);
            let envp = cleaned.as_ref().map_or(envp, |(_, p)| p.as_ptr());
            match real!($name: fn(*mut pid_t, *const c_char, *const c_void, *const c_void, *const *const c_char, *const *const c_char) -> c_int) {
                Some(f) => f(pid, path, actions, attr, argv, envp),
                None => libc::ENOSYS,
            }
        }
    )*};
}
hook_spawn!(posix_spawn, posix_spawnp);

// ---------------------------------------------------------------- load time

extern "C" fn constructor() {
    forkhook::hook::init();
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

extern "C" fn destructor() {
    forkhook::hook::at_exit();
}

#[used]
#[link_section = ".fini_array"]
static DESTRUCTOR: extern "C" fn() = destructor;

// ---------------------------------------------------------------- the current directory
// Relative paths are made absolute with a copy of the current directory (no getcwd
// per call); these tell the core when the copy goes stale. Failed calls too: cheap,
// and never wrong.

#[no_mangle]
pub unsafe extern "C" fn chdir(path: *const c_char) -> c_int {
    let result = match real!(chdir: fn(*const c_char) -> c_int) {
        Some(f) => f(path),
        None => missing(-1),
    };
    cwd_changed();
    result
}

#[no_mangle]
pub unsafe extern "C" fn fchdir(fd: c_int) -> c_int {
    let result = match real!(fchdir: fn(c_int) -> c_int) {
        Some(f) => f(fd),
        None => missing(-1),
    };
    cwd_changed();
    result
}
