//! What happens inside an interposed call. The cdylib (`hook/`) turns C arguments
//! into these calls; everything else about a file access is decided here.
//!
//! Rules for this module, because it runs inside the program's own `open`/`stat`:
//! - it never re-enters itself: a thread-local guard makes every nested hooked call
//!   (the regex crate, std, libc internals) go straight to the real function;
//! - it does its own file I/O through raw syscalls (`sys`), never through hooked names;
//! - it starts no thread, and holds no lock across a fork;
//! - it looks after the real call succeeded, so a path that does not exist costs no
//!   system call of ours;
//! - a name that cannot match costs a suffix comparison, a file already handled a hash
//!   and one atomic load; the rest (a lock, the absolute path, the filter) is for
//!   first accesses and names the suffixes cannot decide.

use crate::checkpoint;
use crate::config::Settings;
use crate::fingerprint::{Fingerprint, Identity};
use crate::path;
use crate::report::Reporter;
use crate::sys;
use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// How the program is about to use a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// open for reading (or reading and writing), fopen "r"/"r+"
    Read,
    /// open for writing only, or with truncation: the program produces this file, it
    /// does not depend on it, so it is not watched (else its own writes would resume it)
    Write,
    /// stat and friends: CPython with a valid .pyc only stats the .py
    Stat,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();
static START: OnceLock<Instant> = OnceLock::new();
/// The path this library was loaded from, to strip from `LD_PRELOAD` of children.
static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
/// Set by the launcher: the pid it exec'd the command as, and a shared memfd where
/// whichever process starts a session notes it, so the command can tell at exit
/// whether anything was watched (it may be a wrapper whose child did the watching).
static LAUNCHED: OnceLock<(libc::pid_t, RawFd)> = OnceLock::new();

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Held while the hook runs on this thread; a hooked call made meanwhile passes through.
pub struct Guard(());

impl Guard {
    pub fn enter() -> Option<Guard> {
        BUSY.try_with(|busy| (!busy.replace(true)).then_some(Guard(())))
            .ok()
            .flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = BUSY.try_with(|busy| busy.set(false));
    }
}

/// Hashes paths with xxh3. SipHash's defence against chosen keys buys nothing here
/// (the program picks its own paths), and it was a fifth of the cost of a hooked call
/// on a file already seen.
#[derive(Default)]
pub(crate) struct PathHasher(u64);

impl Hasher for PathHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_usize(&mut self, n: usize) {
        // The length `[u8]` hashes before its bytes: a seed is enough.
        self.0 ^= n as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Maps and sets keyed by paths use this (the coordinator's).
pub(crate) type PathHashing = BuildHasherDefault<PathHasher>;

/// A path as the hook remembers it: its 128-bit xxh3. Remembering the hash instead
/// of the bytes makes a first access allocate nothing and compare no bytes (they were
/// a fifth of its cost); two paths of a session would share a key with a chance
/// of about n² / 2^129, 10^-31 for ten thousand files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PathKey(u128);

impl PathKey {
    pub fn of(bytes: &[u8]) -> PathKey {
        PathKey(xxhash_rust::xxh3::xxh3_128(bytes))
    }
}

/// Hashes a [`PathKey`], which is a hash already: its low half is the answer.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a PathKey is hashed.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeySet = HashSet<PathKey, BuildHasherDefault<KeyHasher>>;

/// Per-process memory of the hook. It is copied by every fork, so a resumed run
/// remembers exactly the files its checkpoint had seen, and no others.
pub(crate) struct Process {
    /// Absolute paths (lexical and resolved) already handled in this run.
    pub seen: KeySet,
    /// Names of files in `seen` as the program passed them, absolute ones and relative
    /// ones (to the current directory as of `names_cwd`, see [`path::cwd_generation`]).
    /// A name found here needs neither making absolute nor matching: its file is
    /// handled.
    absolute_names: KeySet,
    relative_names: KeySet,
    names_cwd: u64,
    pub session: Option<checkpoint::SessionState>,
    pub warned_threads: bool,
    pub warned_closed: bool,
}

static PROCESS: Mutex<Option<Process>> = Mutex::new(None);

impl Process {
    /// Room for `files` more files without growing.
    pub(crate) fn reserve(&mut self, files: usize) {
        // Each file is in `seen` under one name or two (lexical and resolved).
        self.seen.reserve(files);
        self.relative_names.reserve(files);
    }

    fn names(&mut self, name: &Name) -> &mut KeySet {
        if name.absolute {
            return &mut self.absolute_names;
        }
        if self.names_cwd != name.cwd {
            // The program changed directory: relative names may mean other files now.
            self.relative_names.clear();
            self.names_cwd = name.cwd;
        }
        &mut self.relative_names
    }

    /// Was the file named `name` handled already?
    fn knows_name(&mut self, name: &Name) -> bool {
        self.names(name).contains(&name.key)
    }
}

pub(crate) fn process() -> MutexGuard<'static, Option<Process>> {
    // A panic never happens while this is held (no unwinding in the hook), but if it
    // did, the data is still consistent: take it anyway rather than stop hooking.
    let mut guard = PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(|| Process {
        seen: KeySet::default(),
        absolute_names: KeySet::default(),
        relative_names: KeySet::default(),
        names_cwd: 0,
        session: None,
        warned_threads: false,
        warned_closed: false,
    });
    guard
}

pub(crate) fn settings() -> Option<&'static Settings> {
    SETTINGS.get()
}

pub(crate) fn start_time() -> Instant {
    *START.get_or_init(Instant::now)
}

pub(crate) fn reporter() -> Reporter {
    match SETTINGS.get() {
        Some(s) => Reporter {
            quiet: s.quiet,
            verbose: s.verbose,
            color: s.color,
        },
        None => Reporter {
            quiet: false,
            verbose: false,
            color: false,
        },
    }
}

/// The load-time constructor: read the settings and compile the filter. No fork, no
/// thread, no watcher yet. Bad settings end the program before it runs, with status 2.
pub fn init() {
    let Some(_guard) = Guard::enter() else {
        return;
    };
    start_time();
    if let Some(path) = sys::own_object_path() {
        let _ = LIBRARY.set(path);
    }
    let number = |name: &str| std::env::var(name).ok()?.parse::<i32>().ok();
    if let (Some(pid), Some(marker)) = (
        number("FORKHOOK_LAUNCHER_PID"),
        number("FORKHOOK_SESSION_MARKER"),
    ) {
        let _ = LAUNCHED.set((pid, marker));
    }
    match Settings::from_env(|name| std::env::var_os(name), sys::isatty(2)) {
        Ok(settings) => {
            // CPython keeps its own output buffer, which fflush(NULL) cannot reach: it
            // would be written once by the run and again by each resumed copy.
            if std::env::var_os("PYTHONUNBUFFERED").is_none() {
                sys::set_env(c"PYTHONUNBUFFERED", Some(b"1"));
            }
            let _ = SETTINGS.set(settings);
        }
        Err(e) => {
            reporter().error(&e.to_string());
            sys::exit_now(2);
        }
    }
}

/// The launcher's marker descriptor, if this process still has it.
fn launch_marker() -> Option<RawFd> {
    let &(_, fd) = LAUNCHED.get()?;
    let mut name = [0u8; 64];
    let n = sys::fd_path(fd, &mut name).ok()?;
    name[..n]
        .starts_with(b"/memfd:forkhook-session")
        .then_some(fd)
}

/// Notes in the launcher's marker that a session started.
pub(crate) fn mark_session_started() {
    if let Some(fd) = launch_marker() {
        let _ = sys::pwrite(fd, b"1", 0);
    }
}

/// The load-time destructor. The command the launcher ran exits without any session
/// having started: nothing matched the filter, which is worth one line.
pub fn at_exit() {
    let Some(_guard) = Guard::enter() else {
        return;
    };
    let (Some(settings), Some(&(launched, _))) = (SETTINGS.get(), LAUNCHED.get()) else {
        return;
    };
    // Something matched (it may have been skipped, with a warning said then).
    if launched != sys::getpid() || process().as_ref().is_some_and(|p| !p.seen.is_empty()) {
        return;
    }
    let mut mark = [0u8; 1];
    let started = launch_marker()
        .is_some_and(|fd| sys::pread(fd, &mut mark, 0).is_ok_and(|n| n == 1) && mark[0] == b'1');
    if !started {
        reporter().info(&format!(
            "no file matched the filter ({}): nothing was watched",
            settings.filter.describe()
        ));
    }
}

/// What a hooked call that succeeded has in hand.
#[derive(Debug, Clone, Copy)]
pub enum Found {
    /// A descriptor it opened (for `fopen`, the stream's descriptor).
    Fd(RawFd),
    /// A `stat` result that says no more than that the path exists.
    Path,
    /// The program's own `stat`/`lstat`/`statx` result.
    Stat(sys::StatBuf),
}

/// What the hooked function does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Then {
    /// Return the result of the real call.
    Return,
    /// This is a run resumed from a checkpoint taken during this very call, maybe long
    /// after: release the result (close the descriptor) and make the real call again,
    /// so the program gets the file as it is now.
    CallAgain,
}

/// Called after a real `open`/`stat`/... succeeded, before its result reaches the
/// program. Checking afterwards costs nothing for the many paths that do not exist
/// (module searches): their result already says so.
///
/// This part runs on every successful call, so it does only what answers the two
/// common cases: a name that cannot match, and a file already handled. It takes no
/// lock and calls nothing that is hooked or could set `errno`: the program finds
/// errno as the real call left it (the rest restores it).
#[inline]
pub fn after_access(dirfd: RawFd, path: &CStr, intent: Intent, found: Found) -> Then {
    let Some(settings) = SETTINGS.get() else {
        return Then::Return;
    };
    let given = path.to_bytes();
    // Most paths a program touches do not match: when the name alone says so, nothing
    // else is done (no guard, no absolute path).
    if intent == Intent::Write || given.is_empty() || settings.filter.rejects_name(given) {
        return Then::Return;
    }
    // A file read again (a stat before every use, a config reread) is known by the
    // name the program gave, as long as that name means the same file.
    let absolute = given[0] == b'/';
    let name = (absolute || dirfd == libc::AT_FDCWD).then(|| Name {
        key: PathKey::of(given),
        absolute,
        cwd: path::cwd_generation(),
    });
    if name.as_ref().is_some_and(Name::recently_known) {
        return Then::Return;
    }
    not_known_lately(settings, dirfd, path, name, found)
}

/// The rest of [`after_access`]: the process's own memory of names, under its lock,
/// then the absolute path and the filter. Kept out of line so that the common case
/// above has a small frame.
#[inline(never)]
fn not_known_lately(
    settings: &Settings,
    dirfd: RawFd,
    path: &CStr,
    name: Option<Name>,
    found: Found,
) -> Then {
    let _errno = sys::ErrnoKept::now();
    let Some(_guard) = Guard::enter() else {
        return Then::Return;
    };
    if let Some(name) = &name {
        if process().as_mut().is_some_and(|p| p.knows_name(name)) {
            name.note_known();
            return Then::Return;
        }
    }
    let given = path.to_bytes();
    path::with_absolute(dirfd, path, |abs| {
        // forkmon matched the name as the program passed it; a pattern anchored to a
        // relative name (`^src/`) must keep working, so a relative name is tried too.
        let matched = settings.filter.is_match(abs.to_bytes())
            || (given[0] != b'/'
                && settings.filter.matches_relative_names()
                && settings.filter.is_match(given));
        if matched {
            first_access(abs, name, found)
        } else {
            Then::Return
        }
    })
    .unwrap_or(Then::Return)
}

/// A name as the program passed it, and the current directory it is relative to.
struct Name {
    key: PathKey,
    absolute: bool,
    cwd: u64,
}

/// Names the process found known lately, in slots picked by their hash, each holding
/// the name's fingerprint: 64 bits of its key mixed with the directory generation a
/// relative name was known under (a process never forgets a name, but a relative one
/// when the program changes directory). It spares a file read again and again (a
/// `stat` before every use) the process-wide lock.
///
/// Process-wide atomics rather than per-thread slots: reading one is a plain load,
/// where a cdylib's thread-local goes through `__tls_get_addr`. A fork copies them
/// with the process's names, so they stay true in the child and in a run resumed from
/// a checkpoint. Two names share a fingerprint with a chance of 2^-63 per lookup.
const RECENT_SLOTS: usize = 64;

static RECENT: [AtomicU64; RECENT_SLOTS] = [const { AtomicU64::new(0) }; RECENT_SLOTS];

impl Name {
    /// The slot for this name, and what it holds once the name is known (never 0, an
    /// empty slot). Absolute names hold for any directory.
    fn slot(&self) -> (&'static AtomicU64, u64) {
        let directory = if self.absolute { u64::MAX } else { self.cwd };
        let fingerprint =
            ((self.key.0 >> 64) as u64 ^ directory.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        (&RECENT[self.key.0 as usize % RECENT_SLOTS], fingerprint)
    }

    fn recently_known(&self) -> bool {
        let (slot, fingerprint) = self.slot();
        slot.load(Ordering::Relaxed) == fingerprint
    }

    fn note_known(&self) {
        let (slot, fingerprint) = self.slot();
        slot.store(fingerprint, Ordering::Relaxed);
    }
}

/// Called after the program's `chdir`/`fchdir`: relative paths are made absolute with
/// a copy of the current directory, which is stale from now on.
pub fn cwd_changed() {
    path::cwd_changed();
}

/// `abs` matched the filter: absolute, normalised, NUL-terminated.
fn first_access(abs: &CStr, name: Option<Name>, found: Found) -> Then {
    let abs_bytes = abs.to_bytes();
    let key = PathKey::of(abs_bytes);
    let remember = |p: &mut Process| {
        if let Some(name) = &name {
            p.names(name).insert(name.key);
        }
    };
    if process().as_mut().is_some_and(|p| {
        let seen = p.seen.contains(&key);
        if seen {
            remember(p);
        }
        seen
    }) {
        return Then::Return;
    }
    // A directory, or a device, is no dependency.
    let stat = match found {
        Found::Fd(fd) => sys::fstat(fd),
        // What the program saw, with no second lookup; a symlink's own (`lstat`) says
        // nothing of the file it names, which is looked up.
        Found::Stat(buf) => match buf.read() {
            Some(seen) if seen.regular => Ok(seen),
            _ => sys::stat(abs),
        },
        Found::Path => sys::stat(abs),
    };
    let stat = match stat {
        Ok(stat) if stat.regular => stat,
        _ => return Then::Return,
    };
    if !process().as_mut().is_some_and(|p| {
        remember(p);
        p.seen.insert(key)
    }) {
        return Then::Return;
    }
    // Two names for one file (a symlink) are told apart by the coordinator, which
    // resolves them on its own time.
    let file = Path::new(std::ffi::OsStr::from_bytes(abs_bytes));
    let seen = Observed::from_stat(file, &stat, found);
    let opened = match found {
        Found::Fd(fd) => Some(fd),
        Found::Path | Found::Stat(_) => None,
    };
    checkpoint::at_first_access(file, seen, opened)
}

/// What the run knows of a file it is about to read: see [`crate::fingerprint`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed {
    pub identity: Identity,
    pub fingerprint: Fingerprint,
}

impl Observed {
    fn from_stat(file: &Path, stat: &sys::FileStat, found: Found) -> Observed {
        let identity = Identity::of(stat);
        let fingerprint = if identity.settled() {
            // The coordinator reads it, checking the identity.
            Fingerprint::Unknown
        } else {
            match found {
                Found::Fd(fd) => Fingerprint::of_open(fd, stat),
                Found::Path | Found::Stat(_) => Fingerprint::of_path(file),
            }
        };
        Observed {
            identity,
            fingerprint,
        }
    }

    /// The file as it is now (a resumed run, about to make the real call again).
    pub fn now(file: &Path) -> Observed {
        let stat = CString::new(file.as_os_str().as_bytes())
            .ok()
            .and_then(|c| sys::stat(&c).ok())
            .filter(|s| s.regular);
        match stat {
            Some(stat) => Observed::from_stat(file, &stat, Found::Path),
            None => Observed {
                identity: Identity::default(),
                fingerprint: Fingerprint::Missing,
            },
        }
    }
}

/// The environment for a program about to be exec'd, if it must change: once a
/// session has started, processes the run spawns do not load the hook (DESIGN.md
/// invariant 8), so this library is taken out of their `LD_PRELOAD`.
pub fn exec_environment<'a>(envp: impl Iterator<Item = &'a CStr>) -> Option<Vec<CString>> {
    let _guard = Guard::enter()?;
    process().as_ref()?.session.as_ref()?;
    let library = LIBRARY.get()?;
    let mut changed = false;
    let mut out = Vec::new();
    for entry in envp {
        let bytes = entry.to_bytes();
        match bytes.strip_prefix(b"LD_PRELOAD=") {
            Some(value) => {
                let kept = without_library(value, library);
                if kept.as_slice() != value {
                    changed = true;
                    if !kept.is_empty() {
                        out.push(CString::new([&b"LD_PRELOAD="[..], &kept].concat()).ok()?);
                    }
                    continue;
                }
                out.push(entry.to_owned());
            }
            None => out.push(entry.to_owned()),
        }
    }
    changed.then_some(out)
}

/// Takes this library out of this process's own `LD_PRELOAD`, for `system()`,
/// `popen()` and other spawns that read `environ` inside libc.
pub(crate) fn forget_preload() {
    let (Some(library), Some(value)) = (LIBRARY.get(), std::env::var_os("LD_PRELOAD")) else {
        return;
    };
    let kept = without_library(value.as_bytes(), library);
    if kept.as_slice() != value.as_bytes() {
        sys::set_env(c"LD_PRELOAD", (!kept.is_empty()).then_some(&kept[..]));
    }
}

/// `LD_PRELOAD` (entries split by spaces or colons) without entries naming `library`.
fn without_library(value: &[u8], library: &Path) -> Vec<u8> {
    let library = library.as_os_str().as_bytes();
    let lib_name = library.rsplit(|&b| b == b'/').next().unwrap_or(library);
    let kept: Vec<&[u8]> = value
        .split(|&b| b == b':' || b == b' ')
        .filter(|e| !e.is_empty())
        .filter(|e| {
            let same_file = *e == library
                || std::fs::canonicalize(Path::new(std::ffi::OsStr::from_bytes(e)))
                    .is_ok_and(|c| c.as_os_str().as_bytes() == library);
            // A bare name ("libforkhook.so") is found through the library path.
            let same_name = !e.contains(&b'/') && *e == lib_name;
            !(same_file || same_name)
        })
        .collect();
    kept.join(&b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_library_leaves_ld_preload() {
        let lib = Path::new("/home/me/.cache/forkhook/libforkhook-1.so");
        assert_eq!(
            without_library(b"/home/me/.cache/forkhook/libforkhook-1.so", lib),
            b""
        );
        assert_eq!(
            without_library(
                b"/usr/lib/libasan.so:/home/me/.cache/forkhook/libforkhook-1.so",
                lib
            ),
            b"/usr/lib/libasan.so"
        );
        assert_eq!(
            without_library(b"libforkhook-1.so /usr/lib/other.so", lib),
            b"/usr/lib/other.so"
        );
        assert_eq!(
            without_library(b"/usr/lib/other.so", lib),
            b"/usr/lib/other.so"
        );
    }

    #[test]
    fn seen_paths_are_found_again() {
        let mut seen = KeySet::default();
        for i in 0..1000 {
            assert!(seen.insert(PathKey::of(format!("/a/m{i}.lua").as_bytes())));
        }
        assert!(!seen.insert(PathKey::of(b"/a/m7.lua")));
        assert!(seen.contains(&PathKey::of(b"/a/m999.lua")));
        assert!(!seen.contains(&PathKey::of(b"/a/m1000.lua")));
        assert!(!seen.contains(&PathKey::of(b"")));
    }

    #[test]
    fn relative_names_are_forgotten_when_the_directory_changes() {
        let mut p = Process {
            seen: KeySet::default(),
            absolute_names: KeySet::default(),
            relative_names: KeySet::default(),
            names_cwd: 1,
            session: None,
            warned_threads: false,
            warned_closed: false,
        };
        let name = |bytes: &[u8], cwd| Name {
            key: PathKey::of(bytes),
            absolute: bytes.starts_with(b"/"),
            cwd,
        };
        p.names(&name(b"m.lua", 1)).insert(PathKey::of(b"m.lua"));
        p.names(&name(b"/a/m.lua", 1))
            .insert(PathKey::of(b"/a/m.lua"));
        assert!(p.knows_name(&name(b"m.lua", 1)));
        assert!(!p.knows_name(&name(b"m.lua", 2)), "a new directory");
        assert!(p.knows_name(&name(b"/a/m.lua", 2)));
        assert!(!p.knows_name(&name(b"m.lua", 1)), "forgotten, not hidden");
    }

    #[test]
    fn a_recent_relative_name_holds_only_in_its_directory() {
        let name = |bytes: &[u8], cwd| Name {
            key: PathKey::of(bytes),
            absolute: bytes.starts_with(b"/"),
            cwd,
        };
        let relative = name(b"recent-test/m.lua", 7);
        assert!(!relative.recently_known());
        relative.note_known();
        assert!(relative.recently_known());
        assert!(
            !name(b"recent-test/m.lua", 8).recently_known(),
            "another directory"
        );
        assert!(
            !name(b"recent-test/n.lua", 7).recently_known(),
            "another name"
        );

        name(b"/recent-test/m.lua", 7).note_known();
        assert!(name(b"/recent-test/m.lua", 8).recently_known(), "absolute");
    }

    #[test]
    fn the_guard_is_not_reentrant() {
        let outer = Guard::enter().expect("first entry");
        assert!(Guard::enter().is_none());
        drop(outer);
        assert!(Guard::enter().is_some());
    }
}
