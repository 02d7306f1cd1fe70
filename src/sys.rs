//! Every system call forkhook makes, and the only module allowed `unsafe`.
//!
//! Each wrapper is one call, its `-1`/errno turned into `io::Result` by `cvt`.
//! File I/O here goes through raw `syscall(2)` rather than libc's `open`/`stat`:
//! libforkhook.so exports those very symbols, so calling them from inside the hook
//! would re-enter it. Process control (`fork`, `waitpid`, `kill`, `prctl`) goes
//! through libc, which the hook does not interpose.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

pub type Pid = libc::pid_t;

/// Turns the C convention (`-1` and `errno`) into a `Result`.
fn cvt<T: Copy + PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Puts `errno` back as it was, when dropped: what the hook does inside a program's
/// call must not change what that call left there.
pub struct ErrnoKept(libc::c_int);

impl ErrnoKept {
    pub fn now() -> ErrnoKept {
        // SAFETY: errno is thread-local and always readable.
        ErrnoKept(unsafe { *libc::__errno_location() })
    }
}

impl Drop for ErrnoKept {
    fn drop(&mut self) {
        // SAFETY: errno is thread-local and always writable.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

// ---------------------------------------------------------------- files (raw syscalls)

/// What forkhook needs to know about a file: is it regular, and its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub regular: bool,
    pub socket: bool,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    /// Status change time: set by the kernel on every write, rename or chmod, and no
    /// program can set it back.
    pub ctime_ns: i64,
    pub symlink: bool,
}

fn file_stat_from(st: &libc::stat) -> FileStat {
    FileStat {
        regular: st.st_mode & libc::S_IFMT == libc::S_IFREG,
        socket: st.st_mode & libc::S_IFMT == libc::S_IFSOCK,
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
        symlink: st.st_mode & libc::S_IFMT == libc::S_IFLNK,
    }
}

/// What a program's own `stat`-family call just filled, passed to the hook by
/// reference and read only if the file turns out to matter. Made only through the
/// `unsafe` constructors, whose contract makes [`StatBuf::read`] sound.
#[derive(Debug, Clone, Copy)]
pub struct StatBuf(Filled);

#[derive(Debug, Clone, Copy)]
enum Filled {
    /// A `struct stat` (`stat`, `lstat`, `fstatat`, and their 64-bit forms where
    /// `struct stat64` is the same).
    Stat(*const libc::stat),
    /// A `struct statx`.
    Statx(*const libc::statx),
}

/// The fields of a `statx` result that make a [`FileStat`] (the device is always there).
const STATX_NEEDED: u32 =
    libc::STATX_TYPE | libc::STATX_INO | libc::STATX_SIZE | libc::STATX_MTIME | libc::STATX_CTIME;

impl StatBuf {
    /// # Safety
    /// `buf` points to a `struct stat` that a successful call filled, and stays valid
    /// and unchanged until the hooked call returns (the only time it is read).
    pub unsafe fn stat(buf: *const libc::c_void) -> StatBuf {
        StatBuf(Filled::Stat(buf as *const libc::stat))
    }

    /// # Safety
    /// As for [`StatBuf::stat`], with a `struct statx`.
    pub unsafe fn statx(buf: *const libc::c_void) -> StatBuf {
        StatBuf(Filled::Statx(buf as *const libc::statx))
    }

    /// `None` if the program asked `statx` for less than a [`FileStat`] holds.
    pub fn read(&self) -> Option<FileStat> {
        match self.0 {
            // SAFETY: see `stat`: a filled `struct stat`, read during the hooked call.
            Filled::Stat(buf) => Some(file_stat_from(unsafe { &*buf })),
            Filled::Statx(buf) => {
                // SAFETY: see `statx`: a filled `struct statx`, read during the call.
                let st = unsafe { &*buf };
                if st.stx_mask & STATX_NEEDED != STATX_NEEDED {
                    return None;
                }
                let kind = u32::from(st.stx_mode) & libc::S_IFMT;
                let ns = |t: libc::statx_timestamp| t.tv_sec * 1_000_000_000 + i64::from(t.tv_nsec);
                Some(FileStat {
                    regular: kind == libc::S_IFREG,
                    socket: kind == libc::S_IFSOCK,
                    dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
                    ino: st.stx_ino,
                    size: st.stx_size,
                    mtime_ns: ns(st.stx_mtime),
                    ctime_ns: ns(st.stx_ctime),
                    symlink: kind == libc::S_IFLNK,
                })
            }
        }
    }
}

/// `stat(2)` following symlinks, through the raw syscall.
pub fn stat(path: &CStr) -> io::Result<FileStat> {
    stat_at(path, 0)
}

/// `lstat(2)`: a symlink itself, not what it points to.
pub fn lstat(path: &CStr) -> io::Result<FileStat> {
    stat_at(path, libc::AT_SYMLINK_NOFOLLOW)
}

/// Is `path` an empty regular file (not a symlink)? What `open(O_CREAT)` just made.
pub fn is_empty_regular_file(path: &Path) -> bool {
    cstr(path)
        .and_then(|c| lstat(&c))
        .is_ok_and(|st| st.regular && st.size == 0)
}

fn stat_at(path: &CStr, flags: libc::c_int) -> io::Result<FileStat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` is NUL-terminated; `st` is a valid out-pointer the kernel fills.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            path.as_ptr(),
            st.as_mut_ptr(),
            flags,
        )
    })?;
    // SAFETY: the syscall succeeded, so the kernel wrote the whole struct.
    Ok(file_stat_from(unsafe { &st.assume_init() }))
}

pub fn fstat(fd: RawFd) -> io::Result<FileStat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer; a bad fd is reported as EBADF.
    cvt(unsafe { libc::syscall(libc::SYS_fstat, fd, st.as_mut_ptr()) })?;
    // SAFETY: the syscall succeeded, so the kernel wrote the whole struct.
    Ok(file_stat_from(unsafe { &st.assume_init() }))
}

/// `openat(AT_FDCWD, path, flags)` through the raw syscall, always close-on-exec.
fn open_raw(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens read-only, through the raw syscall. Non-blocking, so a FIFO that matches a
/// filter does not hang us; a regular file ignores the flag.
pub fn open_read(path: &CStr) -> io::Result<OwnedFd> {
    open_raw(path, libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK)
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) };
        match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(|n| n as usize),
        }
    }
}

/// Reads a small file whole (for /proc files), through raw syscalls.
pub fn read_small_file(path: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    let fd = open_read(path)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = read(fd.as_raw_fd(), &mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The current working directory, written into `buf` (no allocation when it fits).
pub fn getcwd(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; the kernel NUL-terminates.
    let n = cvt(unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) })?;
    Ok((n as usize).saturating_sub(1))
}

/// The path a descriptor refers to (`/proc/self/fd/N`), used for `openat(dirfd, ..)`.
pub fn fd_path(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let link = format!("/proc/self/fd/{fd}\0");
    // SAFETY: `link` is NUL-terminated; `buf` is valid for `buf.len()` bytes.
    let n = cvt(unsafe {
        libc::syscall(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            link.as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    })?;
    Ok(n as usize)
}

/// The canonical path: symlinks, `.` and `..` resolved. Uses `O_PATH` and the
/// kernel's own name for the descriptor, so it costs one open and one readlink.
pub fn canonical(path: &CStr) -> io::Result<PathBuf> {
    fd_canonical(open_raw(path, libc::O_PATH)?.as_raw_fd())
}

/// The canonical path of what `fd` refers to: the kernel's own name for it.
pub fn fd_canonical(fd: RawFd) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let n = fd_path(fd, &mut buf)?;
    buf.truncate(n);
    Ok(PathBuf::from(OsStr::from_bytes(&buf)))
}

/// Reads from a given offset, leaving the descriptor's own offset alone.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: i64) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
    cvt(unsafe { libc::pread(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), offset) })
        .map(|n| n as usize)
}

pub fn pwrite(fd: RawFd, data: &[u8], offset: i64) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length.
    cvt(unsafe { libc::pwrite(fd, data.as_ptr() as *const libc::c_void, data.len(), offset) })
        .map(|n| n as usize)
}

/// An anonymous in-memory file that is inherited across exec (no close-on-exec).
pub fn memfd_inheritable(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; flags 0 leaves the descriptor open across exec.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), 0) })?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn lseek(fd: RawFd, offset: i64, whence: libc::c_int) -> io::Result<i64> {
    // SAFETY: plain syscall on an integer descriptor.
    cvt(unsafe { libc::lseek(fd, offset, whence) })
}

/// Access mode and flags of an open descriptor.
pub fn fd_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: plain syscall on an integer descriptor.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// Every open descriptor of this process, read from `/proc/self/fd` with `getdents64`.
pub fn open_fds() -> io::Result<Vec<RawFd>> {
    let dir = open_raw(c"/proc/self/fd", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is valid for its length; the kernel writes whole dirent records.
        let n = cvt(unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        })? as usize;
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name...
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(fd) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                if fd != dir.as_raw_fd() {
                    fds.push(fd);
                }
            }
            at += reclen;
        }
    }
    Ok(fds)
}

// ---------------------------------------------------------------- descriptors

pub fn close(fd: RawFd) {
    // SAFETY: closing an integer descriptor; callers only close descriptors they own.
    unsafe { libc::close(fd) };
}

/// Moves a descriptor to a high number (out of the way of programs that expect
/// 0, 1, 2, ... to be theirs) with close-on-exec, and closes the original.
pub fn move_high(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a fresh one.
    let high = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 900) })?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned both descriptors to us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A message socket pair: each send is one message, never merged or split.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: the kernel just returned both descriptors to us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message, optionally passing a descriptor along (SCM_RIGHTS).
/// MSG_NOSIGNAL: a dead peer is an error to handle, not a SIGPIPE.
pub fn send_message(sock: RawFd, data: &[u8], pass: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: zeroed msghdr is a valid "no name, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = pass {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; `control` is large enough
        // (32 bytes >= CMSG_SPACE(4) = 24) and aligned to u64; CMSG_FIRSTHDR is non-null
        // because msg_controllen covers one header.
        unsafe {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        match cvt(unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Receives one message and the descriptor passed with it, if any, without waiting:
/// `ErrorKind::WouldBlock` when none is queued. `Ok(None)` means every sender has
/// closed its end.
pub fn recv_message(sock: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: zeroed msghdr is a valid empty header; we fill the pointers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        match cvt(unsafe {
            libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT)
        }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other? as usize,
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let mut passed = None;
    // SAFETY: the kernel filled msg_control; CMSG_* walk it within msg_controllen.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
            passed = Some(OwnedFd::from_raw_fd(fd));
        }
    }
    Ok(Some((n, passed)))
}

pub fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe { libc::write(fd, data.as_ptr() as *const libc::c_void, data.len()) };
        match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(n) => data = &data[n as usize..],
        }
    }
    Ok(())
}

/// Waits until one of `fds` is readable, or `timeout_ms` passes (-1: forever).
/// Returns which were readable (or hung up).
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of `len` pollfd structs.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    match cvt(n) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(vec![false; fds.len()]),
        Err(e) => Err(e),
        Ok(_) => Ok(pfds.iter().map(|p| p.revents != 0).collect()),
    }
}

// ---------------------------------------------------------------- processes

pub enum Fork {
    Child,
    Parent(Pid),
}

/// `fork(2)`.
///
/// After `Fork::Child` the child has one thread: the one that called fork. It may
/// use what this crate uses (malloc is fork-safe in glibc, our own lock is never
/// held across a fork) but must not wait on anything another thread owned.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: fork has no memory-safety preconditions; the caller handles both sides.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// A fork whose child is this process's sibling: `clone(CLONE_PARENT | SIGCHLD)`.
///
/// The child is a copy of this process, as after `fork`, but its parent is ours: we
/// never see it as a child (a program's `wait(-1)` does not find it, no `SIGCHLD`
/// comes to us when it ends), and our parent reaps it.
///
/// Why not `fork` with the roles swapped: a chain of forks, each child forking the
/// next, makes every fork dearer. The kernel links each new process's memory to that
/// of all its ancestors that are still alive (anon_vma chains), so the fork at depth
/// d costs O(d): 0.28 ms at depth 0 to 9 ms at depth 400 for a 2 MiB C program on our
/// VM. Forked this way, the caller stays at its depth however many checkpoints it
/// takes, and it keeps its page tables for code (a fork's child maps it again).
///
/// The system call is made directly (glibc has no wrapper without a new stack), so
/// glibc's fork handlers do not run in the child and the thread id it caches stays
/// the caller's. The child must only run code that needs neither: it parks, and the
/// runs it forks later come from a real `fork`, which sets both right. Fails with
/// EINVAL if this process is the init of a PID namespace.
pub fn fork_sibling() -> io::Result<Fork> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without CLONE_VM or a new stack duplicates this process like fork:
    // the child goes on from here with a copy of the memory and this one thread (we
    // are single-threaded when a checkpoint is taken), so no lock is held in it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid as Pid)),
    }
}

pub fn getpid() -> Pid {
    // SAFETY: always succeeds.
    unsafe { libc::getpid() }
}

pub fn getuid() -> libc::uid_t {
    // SAFETY: always succeeds.
    unsafe { libc::getuid() }
}

pub fn getppid() -> Pid {
    // SAFETY: always succeeds.
    unsafe { libc::getppid() }
}

/// Ends this process now, without atexit handlers or stdio flushes: a checkpoint
/// or the coordinator must never flush the program's buffered output a second time.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Flushes every C stdio output stream, so a fork does not duplicate buffered output.
pub fn flush_stdio() {
    // SAFETY: fflush(NULL) flushes all streams; it takes glibc's own locks.
    unsafe { libc::fflush(std::ptr::null_mut()) };
}

pub fn kill(pid: Pid, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// How a waited-for child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn from_wait_status(status: i32) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }
}

/// Reaps one ended child. `Ok(None)`: with `block == false`, none has ended yet.
/// `Err` with ECHILD: there are no children left.
pub fn wait_any(block: bool) -> io::Result<Option<(Pid, i32)>> {
    Ok(wait_any_with_peak(block)?.map(|(pid, status, _)| (pid, status)))
}

/// [`wait_any`], also giving the child's peak resident memory in bytes.
pub fn wait_any_with_peak(block: bool) -> io::Result<Option<(Pid, i32, u64)>> {
    let mut status = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut usage = MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `status` and `usage` are valid out-pointers.
        match cvt(unsafe { libc::wait4(-1, &mut status, flags, usage.as_mut_ptr()) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(0) => return Ok(None),
            Ok(pid) => {
                // SAFETY: zero-initialised, then filled by the kernel for a reaped child.
                let peak_kb = unsafe { usage.assume_init() }.ru_maxrss.max(0) as u64;
                return Ok(Some((pid, status, peak_kb * 1024)));
            }
        }
    }
}

/// Asks the kernel to send `sig` to this process when its parent dies.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Orphaned descendants reparent to this process instead of init, so a
/// checkpoint can always find (and end) whatever its run started.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a boolean.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

/// Direct children of `pid`, from `/proc/PID/task/*/children` (every thread's).
/// `None` when the kernel has no such files (built without CONFIG_PROC_CHILDREN).
fn children_of(pid: Pid) -> Option<Vec<Pid>> {
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(256);
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let mut path = task.path().into_os_string();
        path.push("/children\0");
        let path = CStr::from_bytes_with_nul(path.as_bytes()).ok()?;
        match read_small_file(path, &mut buf) {
            Ok(()) => out.extend(
                buf.split(|b| b.is_ascii_whitespace())
                    .filter_map(|w| std::str::from_utf8(w).ok()?.parse::<Pid>().ok()),
            ),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return None,
            // The thread ended meanwhile: it has no children to report.
            Err(_) => {}
        }
    }
    Some(out)
}

/// `(pid, parent)` of every process, from `/proc/*/stat`: the slow way, for kernels
/// without `/proc/PID/task/TID/children`.
fn parent_table() -> Vec<(Pid, Pid)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut buf = Vec::with_capacity(512);
    let mut table = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = std::str::from_utf8(name.as_bytes())
            .ok()
            .and_then(|n| n.parse::<Pid>().ok())
        else {
            continue;
        };
        let Ok(path) = CString::new(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if read_small_file(&path, &mut buf).is_err() {
            continue;
        }
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(close) = buf.iter().rposition(|&b| b == b')') else {
            continue;
        };
        let parent = buf[close + 1..]
            .split(|&b| b == b' ')
            .filter(|w| !w.is_empty())
            .nth(1)
            .and_then(|w| std::str::from_utf8(w).ok()?.parse().ok());
        if let Some(parent) = parent {
            table.push((pid, parent));
        }
    }
    table
}

/// All live descendants of `pid`, parents before children.
pub fn descendants_of(pid: Pid) -> Vec<Pid> {
    let mut out: Vec<Pid> = Vec::new();
    let mut queue = vec![pid];
    let mut table: Option<Vec<(Pid, Pid)>> = None;
    while let Some(p) = queue.pop() {
        let children = match (&table, children_of(p)) {
            (None, Some(children)) => children,
            _ => {
                let table = table.get_or_insert_with(parent_table);
                table
                    .iter()
                    .filter(|(_, parent)| *parent == p)
                    .map(|(c, _)| *c)
                    .collect()
            }
        };
        for child in children {
            if !out.contains(&child) {
                out.push(child);
                queue.push(child);
            }
        }
    }
    out
}

/// Is `pid` there and not a zombie (from /proc/PID/stat, field 3)?
pub fn running(pid: Pid) -> bool {
    let mut buf = Vec::with_capacity(512);
    let Ok(path) = CString::new(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if read_small_file(&path, &mut buf).is_err() {
        return false;
    }
    // The name (field 2) is in parentheses and may hold anything: the state follows
    // the last ')'.
    let state = buf
        .iter()
        .rposition(|&b| b == b')')
        .and_then(|at| buf.get(at + 2).copied());
    !matches!(state, None | Some(b'Z') | Some(b'X'))
}

/// Number of threads of this process (from /proc/self/stat, field 20).
pub fn thread_count() -> usize {
    let mut buf = Vec::with_capacity(512);
    if read_small_file(c"/proc/self/stat", &mut buf).is_err() {
        return 1;
    }
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(close) = buf.iter().rposition(|&b| b == b')') else {
        return 1;
    };
    buf[close + 1..]
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty())
        .nth(17)
        .and_then(|w| std::str::from_utf8(w).ok()?.parse().ok())
        .unwrap_or(1)
}

/// Memory of a process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Proportional: shared pages split between the processes sharing them.
    pub pss: u64,
    /// Pages no other process shares: what ending this process frees.
    pub private: u64,
}

/// A "Name:   1234 kB" line of a /proc file, in bytes.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Peak resident memory of a live process (VmHWM), in bytes.
pub fn peak_memory_of(pid: Pid) -> Option<u64> {
    kb_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmHWM:",
    )
}

/// Memory of a process, from smaps_rollup.
pub fn memory_of(pid: Pid) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| kb_field(&text, name);
    Some(Memory {
        pss: field("Pss:")?,
        private: field("Private_Clean:")? + field("Private_Dirty:")?,
    })
}

/// Drops this process's pages of read-only file mappings (code and constants of the
/// program and its libraries): the next use maps them again from the page cache, and
/// processes that share them keep them.
///
/// For processes that stay idle after running much: the coordinator, which started as
/// the program, and parked checkpoints. Each page only one process maps counts whole
/// in the session's memory, and the kernel maps code 64 KiB at a time. A fork does
/// not copy these page tables, so a forked run maps what it runs anyway.
pub fn release_file_pages() {
    let mut smaps = Vec::with_capacity(64 * 1024);
    if read_small_file(c"/proc/self/smaps", &mut smaps).is_err() {
        return;
    }
    for (start, len) in clean_file_mappings(&smaps) {
        // SAFETY: a private, read-only mapping of a file holding no page of its own
        // (no anonymous page: nothing was ever written to it). Dropping its pages
        // loses nothing: a later access maps the same file contents again.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    }
}

/// Hands the free pages inside malloc's heap back to the kernel.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of malloc's own arenas.
    unsafe { libc::malloc_trim(0) };
}

/// The mappings of `/proc/self/smaps` text that are private, not writable, backed by a
/// file, resident and free of anonymous (copied-on-write) pages: `(start, length)`.
/// Those can be dropped and faulted in again unchanged. A mapping made writable once
/// (relocations, then `mprotect` read-only) holds anonymous pages and is left alone.
pub fn clean_file_mappings(smaps: &[u8]) -> Vec<(usize, usize)> {
    struct Mapping {
        start: usize,
        len: usize,
        candidate: bool,
        rss: u64,
        anonymous: u64,
        locked: u64,
    }
    let keep = |m: &Mapping| m.candidate && m.rss > 0 && m.anonymous == 0 && m.locked == 0;
    let mut found = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in smaps.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: "start-end perms offset dev inode [path]".
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            if let Some(m) = current.take().filter(keep) {
                found.push((m.start, m.len));
            }
            let perms = words.next().unwrap_or("");
            let inode = words.nth(2).unwrap_or("0");
            let path = words.next().unwrap_or("");
            current = Some(Mapping {
                start,
                len: end.saturating_sub(start),
                candidate: perms.starts_with('r')
                    && perms.as_bytes().get(1) == Some(&b'-')
                    && perms.as_bytes().get(3) == Some(&b'p')
                    && inode != "0"
                    && path.starts_with('/'),
                rss: 0,
                anonymous: 1,
                locked: 0,
            });
        } else if let Some(m) = current.as_mut() {
            let kb = || words.clone().next().and_then(|w| w.parse::<u64>().ok());
            match first {
                "Rss:" => m.rss = kb().unwrap_or(0),
                "Anonymous:" => m.anonymous = kb().unwrap_or(1),
                "Locked:" => m.locked = kb().unwrap_or(1),
                _ => {}
            }
        }
    }
    if let Some(m) = current.filter(keep) {
        found.push((m.start, m.len));
    }
    found
}

// ---------------------------------------------------------------- shared message ring

/// A ring of messages in memory shared by every process of a session (an anonymous
/// shared mapping, inherited by fork): runs append, the coordinator takes. Appending
/// costs no system call, and the coordinator reads on its own time.
///
/// One writer at a time: only the run appends, and a resume ends the old run before
/// the next one starts. A run killed halfway through an append never published it (the
/// write position moves last), and the next run writes over it.
///
/// Positions only grow; a message is stored whole, as its length then its bytes, and
/// one that would cross the end of the buffer starts again at its beginning after a
/// `WRAP` marker.
pub struct Ring {
    base: *mut u8,
}

// SAFETY: the mapping lives as long as the process; all access to the shared header
// goes through atomics, and the data bytes are published with release/acquire.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

#[repr(C)]
struct RingHeader {
    /// End of the published messages (written by the run).
    write: AtomicU64,
    /// End of the messages taken (written by the coordinator).
    read: AtomicU64,
    /// The coordinator is about to sleep, or sleeps, until it is woken.
    sleeping: AtomicU32,
    /// Hashes of the files whose change started the current run (0: none), so it can
    /// take a checkpoint right before them: they are the files being edited.
    hot: [AtomicU64; RING_HOT],
}

const RING_HOT: usize = 8;

const RING_DATA: usize = 1 << 20;
const RING_HEADER: usize = 128;
const RING_WRAP: u32 = u32::MAX;

impl Ring {
    pub fn new() -> io::Result<Ring> {
        // SAFETY: a fresh shared anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RING_HEADER + RING_DATA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Zero-filled by the kernel: positions 0, not sleeping.
        Ok(Ring {
            base: base as *mut u8,
        })
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: the header sits at the start of the mapping, which is aligned to a
        // page and never unmapped; it holds only atomics.
        unsafe { &*(self.base as *const RingHeader) }
    }

    fn data(&self, at: u64) -> *mut u8 {
        // SAFETY: `at % RING_DATA` is inside the data area of the mapping.
        unsafe {
            self.base
                .add(RING_HEADER + (at % RING_DATA as u64) as usize)
        }
    }

    /// Appends a message `len` bytes long, which `fill` writes in place. Returns
    /// `None` if it does not fit now (the coordinator is behind), else whether the
    /// coordinator sleeps and must be woken.
    pub fn push(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Option<bool> {
        let h = self.header();
        let mut write = h.write.load(Ordering::Relaxed);
        let read = h.read.load(Ordering::Acquire);
        let need = 4 + len as u64;
        let room_to_end = RING_DATA as u64 - write % RING_DATA as u64;
        let wrap = if room_to_end < need { room_to_end } else { 0 };
        if need > RING_DATA as u64 / 4 || write + wrap + need - read > RING_DATA as u64 {
            return None;
        }
        if wrap > 0 {
            if room_to_end >= 4 {
                // SAFETY: 4 bytes inside the data area (room_to_end >= 4); unaligned
                // writes are allowed by write_unaligned.
                unsafe { (self.data(write) as *mut u32).write_unaligned(RING_WRAP) };
            }
            write += wrap;
        }
        // SAFETY: `need` bytes from `write` lie inside the data area (no wrap left),
        // and the coordinator does not read them before `write` is published below;
        // only this process writes there (one writer at a time), so the slice is ours.
        unsafe {
            (self.data(write) as *mut u32).write_unaligned(len as u32);
            fill(std::slice::from_raw_parts_mut(self.data(write + 4), len));
        }
        h.write.store(write + need, Ordering::SeqCst);
        Some(h.sleeping.swap(0, Ordering::SeqCst) == 1)
    }

    /// Takes every published message, oldest first.
    pub fn take(&self, mut each: impl FnMut(&[u8])) {
        let h = self.header();
        let end = h.write.load(Ordering::Acquire);
        let mut at = h.read.load(Ordering::Relaxed);
        let mut buf = Vec::new();
        while at < end {
            let room_to_end = RING_DATA as u64 - at % RING_DATA as u64;
            if room_to_end < 4 {
                at += room_to_end;
                continue;
            }
            // SAFETY: 4 bytes inside the data area, published (before `end`).
            let len = unsafe { (self.data(at) as *const u32).read_unaligned() };
            if len == RING_WRAP || u64::from(len) + 4 > room_to_end {
                at += room_to_end;
                continue;
            }
            buf.clear();
            // SAFETY: `len` bytes after the length lie inside the data area (checked
            // above) and were published before `end`.
            unsafe {
                buf.extend_from_slice(std::slice::from_raw_parts(self.data(at + 4), len as usize))
            };
            at += 4 + u64::from(len);
            each(&buf);
        }
        h.read.store(at.min(end), Ordering::Release);
    }

    /// Where the run's appends have got to: it moves while the run reads files.
    pub fn written(&self) -> u64 {
        self.header().write.load(Ordering::Acquire)
    }

    /// Bytes appended and not taken yet.
    pub fn unread(&self) -> u64 {
        let h = self.header();
        h.write
            .load(Ordering::Acquire)
            .saturating_sub(h.read.load(Ordering::Relaxed))
    }

    /// Past this many unread bytes, messages are taken at once, so that the run never
    /// finds the ring full (it would then have to send on the socket).
    pub const TAKE_BEYOND: u64 = RING_DATA as u64 / 4;

    /// The coordinator is going to sleep: true if it may (nothing came meanwhile),
    /// false if there is something to take first. A later `push` reports that it
    /// must be woken.
    pub fn sleep(&self) -> bool {
        let h = self.header();
        h.sleeping.store(1, Ordering::SeqCst);
        if h.write.load(Ordering::SeqCst) != h.read.load(Ordering::Relaxed) {
            h.sleeping.store(0, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The coordinator is awake (woken, or by a timeout): no wake-up needed.
    pub fn awake(&self) {
        self.header().sleeping.store(0, Ordering::SeqCst);
    }

    /// The coordinator notes which files (by `path_hash`) the next run resumes for.
    pub fn set_hot(&self, hashes: &[u64]) {
        for (i, slot) in self.header().hot.iter().enumerate() {
            slot.store(hashes.get(i).copied().unwrap_or(0), Ordering::Release);
        }
    }

    /// Is `path` one of the hot files? Hashed only if there are any: a session's
    /// first run has none, and that run reads the most files.
    pub fn is_hot(&self, path: &[u8]) -> bool {
        let hot = &self.header().hot;
        if hot.iter().all(|slot| slot.load(Ordering::Acquire) == 0) {
            return false;
        }
        let hash = path_hash(path);
        hot.iter().any(|slot| slot.load(Ordering::Acquire) == hash)
    }
}

/// The hash of a path that runs and the coordinator agree on (never 0).
pub fn path_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes) | 1
}

// ---------------------------------------------------------------- copy-on-write cost

/// CPU time the calling thread has used (a forked child's starts from zero). Unlike
/// a wall clock it stands still while the thread waits for a CPU, and, with the
/// kernel's paravirtual steal accounting, while the hypervisor runs something else.
pub fn thread_cpu_time() -> Duration {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: `ts` is a valid out-pointer; the clock exists on every Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, ts.as_mut_ptr()) } != 0 {
        return Duration::ZERO;
    }
    // SAFETY: the call succeeded, so it wrote the whole struct.
    let ts = unsafe { ts.assume_init() };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Minor page faults this process has taken (a forked child starts from zero). After
/// a fork, a write to a page the parent still shares is one of them: the kernel copies
/// the page.
pub fn minor_faults() -> u64 {
    let mut usage = MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `usage` is a valid out-pointer the kernel fills on success.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded and wrote the whole struct.
    unsafe { usage.assume_init() }.ru_minflt as u64
}

/// Resident pages of this process that are not file-backed: those a fork shares and
/// a later write copies. From /proc/self/statm (no page-table walk, unlike smaps).
pub fn anonymous_pages() -> Option<u64> {
    let mut buf = Vec::with_capacity(128);
    read_small_file(c"/proc/self/statm", &mut buf).ok()?;
    let mut fields = buf
        .split(|b| b.is_ascii_whitespace())
        .filter_map(|f| std::str::from_utf8(f).ok()?.parse::<u64>().ok());
    let (_size, resident, shared) = (fields.next()?, fields.next()?, fields.next()?);
    Some(resident.saturating_sub(shared))
}

/// A few pages written before a fork, to time copy-on-write faults after it.
pub struct CowProbe {
    base: *mut u8,
}

/// The probe [`CowProbe::arm`] kept in this process, until [`CowProbe::take_armed`];
/// null when there is none. An atomic rather than a lock: a fork while another thread
/// held a lock would leave it held forever in the child.
static ARMED_PROBE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

const PROBE_PAGES: usize = 16;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

impl CowProbe {
    /// Maps and writes the probe pages (so they are resident, and shared by a fork).
    pub fn new() -> Option<CowProbe> {
        let len = PROBE_PAGES * page_size();
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as *mut u8;
        for page in 0..PROBE_PAGES {
            // SAFETY: inside the mapping just made, which is writable.
            unsafe { base.add(page * page_size()).write_volatile(1) };
        }
        Some(CowProbe { base })
    }

    /// Keeps the probe in this process, and in every process forked from it, until
    /// [`CowProbe::take_armed`].
    pub fn arm(self) {
        let earlier = ARMED_PROBE.swap(self.base, Ordering::AcqRel);
        // The mapping now belongs to ARMED_PROBE.
        std::mem::forget(self);
        if !earlier.is_null() {
            drop(CowProbe { base: earlier });
        }
    }

    /// Whether a probe is armed in this process.
    pub fn armed() -> bool {
        !ARMED_PROBE.load(Ordering::Acquire).is_null()
    }

    /// The probe armed in this process, to the first caller only.
    pub fn take_armed() -> Option<CowProbe> {
        let base = ARMED_PROBE.swap(std::ptr::null_mut(), Ordering::AcqRel);
        (!base.is_null()).then_some(CowProbe { base })
    }

    /// In a process forked after [`CowProbe::new`]: the median time to write to a page
    /// the other process still shares, that is, to take a copy-on-write fault.
    pub fn time_copy(&self) -> Duration {
        let mut times: Vec<Duration> = (0..PROBE_PAGES)
            .map(|page| {
                let began = std::time::Instant::now();
                // SAFETY: inside our mapping, still mapped (only Drop unmaps it).
                unsafe { self.base.add(page * page_size()).write_volatile(2) };
                began.elapsed()
            })
            .collect();
        times.sort();
        times[PROBE_PAGES / 2]
    }
}

impl Drop for CowProbe {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made, which nothing else refers to.
        unsafe { libc::munmap(self.base as *mut libc::c_void, PROBE_PAGES * page_size()) };
    }
}

// ---------------------------------------------------------------- signals

/// A set of signals, for blocking them and reading them from a signalfd.
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub fn of(signals: &[libc::c_int]) -> SignalSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset with valid signal numbers.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for &s in signals {
                libc::sigaddset(set.as_mut_ptr(), s);
            }
            SignalSet(set.assume_init())
        }
    }

    /// Every signal but these. Blocking it leaves job control (`SIGTSTP`, `SIGCONT`)
    /// and faults (`SIGSEGV`, ...) working while everything else waits in a signalfd.
    pub fn all_except(signals: &[libc::c_int]) -> SignalSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigfillset initialises the set; sigdelset with valid signal numbers.
        unsafe {
            libc::sigfillset(set.as_mut_ptr());
            for &s in signals {
                libc::sigdelset(set.as_mut_ptr(), s);
            }
            SignalSet(set.assume_init())
        }
    }

    /// Blocks these signals; returns the mask that was in force before.
    pub fn block(&self) -> SignalSet {
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: both pointers are valid sigset_t.
        unsafe {
            libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, old.as_mut_ptr());
            SignalSet(old.assume_init())
        }
    }

    /// Makes this set the whole signal mask (to restore a saved one).
    pub fn set_mask(&self) {
        // SAFETY: valid sigset_t.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }

    /// A descriptor that becomes readable when one of these (blocked) signals is pending.
    pub fn signalfd(&self) -> io::Result<OwnedFd> {
        // SAFETY: -1 asks for a new descriptor; the set is valid.
        let fd =
            cvt(unsafe { libc::signalfd(-1, &self.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Takes every pending signal off a signalfd; returns their numbers.
pub fn read_signals(fd: RawFd) -> Vec<i32> {
    let mut out = Vec::new();
    let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: `info` is valid for `size` bytes of writes.
        let n = unsafe { libc::read(fd, info.as_mut_ptr() as *mut libc::c_void, size) };
        if n as usize != size {
            return out;
        }
        // SAFETY: the kernel wrote a whole record.
        out.push(unsafe { info.assume_init_ref() }.ssi_signo as i32);
    }
}

// ---------------------------------------------------------------- inotify

pub fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = cvt(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn inotify_add_watch(fd: RawFd, path: &Path, mask: u32) -> io::Result<i32> {
    let path = cstr(path)?;
    // SAFETY: `path` is NUL-terminated.
    cvt(unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) })
}

pub fn inotify_rm_watch(fd: RawFd, wd: i32) {
    // SAFETY: plain system call on integers; an unknown `wd` only returns EINVAL.
    unsafe { libc::inotify_rm_watch(fd, wd) };
}

/// One inotify event: watch descriptor, mask, and the name within the directory.
pub struct InotifyEvent {
    pub wd: i32,
    pub mask: u32,
    pub name: Vec<u8>,
}

/// Reads every queued inotify event (the descriptor is non-blocking).
pub fn inotify_read(fd: RawFd, out: &mut Vec<InotifyEvent>) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        let n = match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(n) => n as usize,
        };
        let mut at = 0;
        let header = std::mem::size_of::<libc::inotify_event>();
        while at + header <= n {
            // SAFETY: the kernel writes whole events; `at` stays on an event boundary.
            let ev = unsafe {
                std::ptr::read_unaligned(buf.as_ptr().add(at) as *const libc::inotify_event)
            };
            let name = &buf[at + header..at + header + ev.len as usize];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            out.push(InotifyEvent {
                wd: ev.wd,
                mask: ev.mask,
                name: name.to_vec(),
            });
            at += header + ev.len as usize;
        }
    }
}

// ---------------------------------------------------------------- terminal

/// Saved terminal settings of a descriptor, to restore after a run that left
/// the terminal in raw or no-echo mode.
#[derive(Clone, Copy)]
pub struct Termios(libc::termios);

pub fn tcgetattr(fd: RawFd) -> Option<Termios> {
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `t` is a valid out-pointer; fails with ENOTTY on a non-terminal.
    if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } == 0 {
        // SAFETY: tcgetattr succeeded and filled the struct.
        Some(Termios(unsafe { t.assume_init() }))
    } else {
        None
    }
}

pub fn tcsetattr(fd: RawFd, t: &Termios) {
    // SAFETY: `t` holds settings read by tcgetattr.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t.0) };
}

pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: plain call on an integer descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

// ---------------------------------------------------------------- environment

/// Sets or removes an environment variable of this process. Only called from the
/// load-time constructor and at session start, when the program is not reading it.
pub fn set_env(name: &CStr, value: Option<&[u8]>) {
    match value.map(CString::new) {
        // SAFETY: both strings are NUL-terminated.
        Some(Ok(v)) => unsafe {
            libc::setenv(name.as_ptr(), v.as_ptr(), 1);
        },
        // SAFETY: NUL-terminated name.
        _ => unsafe {
            libc::unsetenv(name.as_ptr());
        },
    }
}

/// The file this code was loaded from (the .so, or the executable).
pub fn own_object_path() -> Option<PathBuf> {
    let mut info = MaybeUninit::<libc::Dl_info>::uninit();
    let addr = own_object_path as *const libc::c_void;
    // SAFETY: dladdr fills `info` for an address inside a loaded object.
    if unsafe { libc::dladdr(addr, info.as_mut_ptr()) } == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded; dli_fname is a NUL-terminated string owned by the loader.
    let name = unsafe { CStr::from_ptr(info.assume_init().dli_fname) };
    Some(PathBuf::from(OsStr::from_bytes(name.to_bytes())))
}

// ---------------------------------------------------------------- before libc starts

/// The system calls of the launcher's first steps (`launcher::early`), which run at the
/// executable's entry point, before glibc has started. So: no libc function (in a
/// static executable `memcpy` and its kin are picked for the CPU by libc's start-up,
/// and a call before it crashes), no `errno` (thread-local storage is not set up yet):
/// each is one `syscall` instruction, and an error comes back as the errno number.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::manual_contains)] // see launcher::early
pub mod early {
    use core::arch::asm;
    use core::mem::MaybeUninit;

    /// The kernel returns -errno in `rax` on failure (-4095..-1).
    fn result(ret: isize) -> Result<usize, i32> {
        if (-4095..0).contains(&ret) {
            Err(-ret as i32)
        } else {
            Ok(ret as usize)
        }
    }

    /// # Safety
    /// `number` is a system call that takes the arguments as given, and any pointer
    /// among them is valid for what that call does with it.
    #[inline(always)]
    unsafe fn syscall(number: i64, a: usize, b: usize, c: usize, d: usize) -> Result<usize, i32> {
        let ret: isize;
        // SAFETY: the caller vouches for the arguments; `syscall` clobbers rcx and r11
        // and nothing else of ours, and does not touch the stack.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") number as isize => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        result(ret)
    }

    /// A NUL-terminated byte string, as the kernel takes paths.
    fn terminated(bytes: &[u8]) -> bool {
        bytes.last() == Some(&0)
    }

    pub fn getpid() -> i32 {
        // SAFETY: getpid takes no arguments and cannot fail.
        unsafe { syscall(libc::SYS_getpid, 0, 0, 0, 0) }.unwrap_or(0) as i32
    }

    pub fn getuid() -> u32 {
        // SAFETY: getuid takes no arguments and cannot fail.
        unsafe { syscall(libc::SYS_getuid, 0, 0, 0, 0) }.unwrap_or(0) as u32
    }

    /// The size of the file at `path` (NUL-terminated), following symbolic links.
    pub fn file_size(path: &[u8]) -> Option<u64> {
        if !terminated(path) {
            return None;
        }
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `path` is NUL-terminated; `st` has room for the struct the kernel
        // writes, and is read only after the call succeeded.
        unsafe {
            syscall(
                libc::SYS_newfstatat,
                libc::AT_FDCWD as usize,
                path.as_ptr() as usize,
                st.as_mut_ptr() as usize,
                0,
            )
            .ok()?;
            Some(st.assume_init_ref().st_size as u64)
        }
    }

    /// A memfd without close-on-exec (the command inherits it), named `name`.
    pub fn memfd_inheritable(name: &[u8]) -> Option<i32> {
        if !terminated(name) {
            return None;
        }
        // SAFETY: `name` is NUL-terminated; no flags.
        unsafe { syscall(libc::SYS_memfd_create, name.as_ptr() as usize, 0, 0, 0) }
            .ok()
            .map(|fd| fd as i32)
    }

    pub fn close(fd: i32) {
        // SAFETY: closing a descriptor this code opened and no one else uses.
        let _ = unsafe { syscall(libc::SYS_close, fd as usize, 0, 0, 0) };
    }

    /// Anonymous, private, zeroed memory of `len` bytes.
    fn map(len: usize) -> Option<&'static mut [u8]> {
        let mut ret: isize = libc::SYS_mmap as isize;
        // SAFETY: a new anonymous private mapping overlaps nothing; the kernel picks
        // the address. Six arguments, so the call is spelt out here.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") ret,
                in("rdi") 0usize,
                in("rsi") len,
                in("rdx") (libc::PROT_READ | libc::PROT_WRITE) as usize,
                in("r10") (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as usize,
                in("r8") usize::MAX,
                in("r9") 0usize,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        let address = result(ret).ok()?;
        // SAFETY: the kernel mapped `len` readable and writable bytes there, which
        // nothing else refers to.
        Some(unsafe { core::slice::from_raw_parts_mut(address as *mut u8, len) })
    }

    /// Memory the first steps write strings and pointer arrays into: one anonymous
    /// mapping, written a byte at a time with volatile stores (a copy loop the
    /// compiler saw as `memcpy` would call libc's).
    pub struct Memory {
        bytes: &'static mut [u8],
        len: usize,
    }

    /// A null-terminated array of pointers to NUL-terminated strings, written in a
    /// [`Memory`] at this offset (only [`Memory::end_array`] makes one).
    #[derive(Clone, Copy)]
    pub struct PointerArray(usize);

    impl Memory {
        pub fn map(capacity: usize) -> Option<Memory> {
            Some(Memory {
                bytes: map(capacity)?,
                len: 0,
            })
        }

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// Forgets what was written from `len` on.
        pub fn truncate(&mut self, len: usize) {
            self.len = self.len.min(len);
        }

        pub fn push(&mut self, bytes: &[u8]) -> Option<()> {
            // Indexed: an iterator pair is a value an unoptimised build copies with
            // `memcpy`.
            let mut i = 0;
            while i < bytes.len() {
                let to = self.bytes.get_mut(self.len + i)?;
                // SAFETY: `to` is a valid, exclusive reference.
                unsafe { core::ptr::write_volatile(to, bytes[i]) };
                i += 1;
            }
            self.len += bytes.len();
            Some(())
        }

        /// What was written from `start` on.
        pub fn since(&self, start: usize) -> &[u8] {
            self.bytes.get(start..self.len).unwrap_or(&[])
        }

        /// Starts a pointer array: pads to the alignment of a pointer.
        pub fn begin_array(&mut self) -> Option<()> {
            while self.len % core::mem::align_of::<usize>() != 0 {
                self.push(&[0])?;
            }
            Some(())
        }

        /// Adds to the array a pointer to `string`, which lives as long as the process
        /// (the initial stack's); it must be NUL-terminated.
        pub fn push_pointer_to(&mut self, string: &'static [u8]) -> Option<()> {
            if !terminated(string) {
                return None;
            }
            self.push(&(string.as_ptr() as usize).to_ne_bytes())
        }

        /// Adds to the array a pointer to this memory's own NUL-terminated string at
        /// `offset`.
        pub fn push_pointer_to_own(&mut self, offset: usize) -> Option<()> {
            if !self.bytes.get(offset..self.len)?.iter().any(|&b| b == 0) {
                return None;
            }
            let address = self.bytes.as_ptr() as usize + offset;
            self.push(&address.to_ne_bytes())
        }

        /// Ends the array begun at `start` with a null pointer.
        pub fn end_array(&mut self, start: usize) -> Option<PointerArray> {
            if start % core::mem::align_of::<usize>() != 0 || start > self.len {
                return None;
            }
            self.push(&0usize.to_ne_bytes())?;
            Some(PointerArray(start))
        }

        /// Gives the mapping back.
        pub fn free(self) {
            // SAFETY: a whole mapping made by `map`, given up with `self`.
            let _ = unsafe {
                syscall(
                    libc::SYS_munmap,
                    self.bytes.as_mut_ptr() as usize,
                    self.bytes.len(),
                    0,
                    0,
                )
            };
        }
    }

    /// The NUL-terminated string at `p`, terminator included.
    ///
    /// # Safety
    /// `p` points to a NUL-terminated string that lives as long as the process (the
    /// arguments and environment the kernel put on the initial stack).
    pub unsafe fn c_string(p: *const u8) -> &'static [u8] {
        let mut len = 0;
        // SAFETY: the bytes up to and including the NUL are readable (the caller).
        // Read one at a time and volatile: a loop the compiler saw as `strlen` would
        // become a call to libc's, which cannot run yet.
        while unsafe { core::ptr::read_volatile(p.add(len)) } != 0 {
            len += 1;
        }
        // SAFETY: as above, `len + 1` bytes from `p`.
        unsafe { core::slice::from_raw_parts(p, len + 1) }
    }

    /// The entries of the initial environment, in order.
    pub struct Environment(*const *const u8);

    impl Iterator for Environment {
        type Item = &'static [u8];

        fn next(&mut self) -> Option<&'static [u8]> {
            // SAFETY: the kernel's environment array ends with a null pointer, and this
            // never moves past it.
            let p = unsafe { *self.0 };
            if p.is_null() {
                return None;
            }
            // SAFETY: not the end, so the next element is still in the array.
            self.0 = unsafe { self.0.add(1) };
            // SAFETY: a NUL-terminated string on the initial stack.
            Some(unsafe { c_string(p) })
        }
    }

    /// The kernel's initial stack: `argc`, then the argument pointers and a null, then
    /// the environment's and a null.
    #[derive(Clone, Copy)]
    pub struct InitialStack {
        pub argv: *const *const u8,
        pub argc: usize,
        pub envp: *const *const u8,
    }

    impl InitialStack {
        /// # Safety
        /// `sp` is the stack pointer the kernel gave the entry point.
        pub unsafe fn at(sp: *const usize) -> InitialStack {
            // SAFETY: the layout the kernel sets up (System V ABI, "Process
            // Initialization"): argc at sp, argv from sp + 1, a null, then envp.
            unsafe {
                let argc = *sp;
                let argv = sp.add(1) as *const *const u8;
                InitialStack {
                    argv,
                    argc,
                    envp: argv.add(argc + 1),
                }
            }
        }

        /// Argument `i`, NUL-terminated.
        pub fn arg(&self, i: usize) -> Option<&'static [u8]> {
            if i >= self.argc {
                return None;
            }
            // SAFETY: i < argc: a pointer to a string on the initial stack.
            Some(unsafe { c_string(*self.argv.add(i)) })
        }

        /// Runs `path` (NUL-terminated) in this process with arguments `command..`
        /// and the environment `env` (in `memory`); returns only on failure, with the
        /// errno.
        pub fn exec(&self, path: &[u8], command: usize, memory: &Memory, env: PointerArray) -> i32 {
            if !terminated(path) || command >= self.argc || env.0 >= memory.len {
                return libc::EINVAL;
            }
            // SAFETY: `path` is NUL-terminated. `argv + command` is the end of the
            // kernel's null-terminated argument array (command < argc). `env` was made
            // by `end_array`: pointers to NUL-terminated strings of the stack or of
            // `memory`, then a null, all within the mapping `memory` holds.
            match unsafe {
                syscall(
                    libc::SYS_execve,
                    path.as_ptr() as usize,
                    self.argv.add(command) as usize,
                    memory.bytes.as_ptr() as usize + env.0,
                    0,
                )
            } {
                Ok(_) => 0,
                Err(errno) => errno,
            }
        }

        /// The environment's entries ("NAME=value"), each NUL-terminated.
        pub fn environment(&self) -> Environment {
            Environment(self.envp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_programs_stat_buffers_read_as_our_own_stat() {
        let path = c"/proc/self/exe";
        let ours = stat(path).unwrap();
        let same = |seen: FileStat| {
            assert!(seen.regular && !seen.symlink && !seen.socket);
            assert_eq!(
                (seen.dev, seen.ino, seen.size, seen.mtime_ns, seen.ctime_ns),
                (ours.dev, ours.ino, ours.size, ours.mtime_ns, ours.ctime_ns)
            );
        };
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: libc's own `stat` into a valid out-pointer, read only on success.
        assert_eq!(unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) }, 0);
        // SAFETY: filled by the successful call above, and alive until the end.
        same(unsafe { StatBuf::stat(st.as_ptr().cast()) }.read().unwrap());

        let mut stx = MaybeUninit::<libc::statx>::uninit();
        let statx = |mask: u32, out: *mut libc::statx| {
            // SAFETY: libc's own `statx` into a valid out-pointer.
            unsafe { libc::statx(libc::AT_FDCWD, path.as_ptr(), 0, mask, out) }
        };
        assert_eq!(statx(libc::STATX_BASIC_STATS, stx.as_mut_ptr()), 0);
        // SAFETY: filled by the successful call above.
        same(
            unsafe { StatBuf::statx(stx.as_ptr().cast()) }
                .read()
                .unwrap(),
        );
        // A program that asked for less (here the size only) has its result left alone.
        let mut stx = MaybeUninit::<libc::statx>::zeroed();
        assert_eq!(statx(libc::STATX_SIZE, stx.as_mut_ptr()), 0);
        // SAFETY: filled by the successful call above.
        let read = unsafe { StatBuf::statx(stx.as_ptr().cast()) }.read();
        // The kernel may fill more than was asked; what it says it filled decides.
        // SAFETY: as above.
        let mask = unsafe { stx.assume_init() }.stx_mask;
        assert_eq!(read.is_some(), mask & STATX_NEEDED == STATX_NEEDED);
    }

    const SMAPS: &str = "\
5599fc94a000-5599fc951000 r--p 00000000 fe:00 1234 /usr/bin/lua5.4
Size:                 28 kB
Rss:                  28 kB
Anonymous:             0 kB
Locked:                0 kB
5599fc951000-5599fc97c000 r-xp 00007000 fe:00 1234 /usr/bin/lua5.4
Rss:                 172 kB
Anonymous:             0 kB
Locked:                0 kB
5599fc98a000-5599fc98c000 r--p 0003f000 fe:00 1234 /usr/bin/lua5.4
Rss:                   8 kB
Anonymous:             8 kB
Locked:                0 kB
5599fc98c000-5599fc98d000 rw-p 00041000 fe:00 1234 /usr/bin/lua5.4
Rss:                   4 kB
Anonymous:             4 kB
7f3e100e7000-7f3e101e8000 rw-s 00000000 00:01 5 /dev/zero (deleted)
Rss:                 100 kB
Anonymous:             0 kB
7f3e10223000-7f3e1023a000 r-xp 00003000 fe:00 99 /usr/lib/libgcc_s.so.1
Rss:                   0 kB
Anonymous:             0 kB
7f3e10240000-7f3e10266000 r--p 00000000 fe:00 77 /usr/lib/libc.so.6
Rss:                 152 kB
Anonymous:             0 kB
Locked:                4 kB
7f3e10266000-7f3e103bc000 r-xp 00026000 fe:00 77 /usr/lib/libc.so.6
Rss:                 936 kB
7f3e10731000-7f3e10733000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f3e10734000-7f3e1075a000 r-xp 00001000 fe:00 88 /usr/lib/ld-linux-x86-64.so.2
Rss:                 152 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_dropped() {
        assert_eq!(
            clean_file_mappings(SMAPS.as_bytes()),
            vec![
                // lua5.4's constants and code, and ld.so's code (the last mapping).
                (0x5599fc94a000, 0x7000),
                (0x5599fc951000, 0x2b000),
                (0x7f3e10734000, 0x26000),
            ],
            "not: relocated constants (anonymous pages), writable or shared mappings, \
             mappings with nothing resident, locked pages, a mapping whose Anonymous \
             field is missing, the vdso"
        );
    }

    #[test]
    fn descendants_include_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let child_pid = child.id() as Pid;
        let mut found = Vec::new();
        for _ in 0..200 {
            found = descendants_of(getpid());
            if found.contains(&child_pid) && found.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let grandchild = descendants_of(child_pid);
        for pid in grandchild.iter().chain([&child_pid]) {
            let _ = kill(*pid, libc::SIGKILL);
        }
        let _ = child.wait();
        assert!(found.contains(&child_pid), "{found:?}");
        assert_eq!(grandchild.len(), 1, "the sleep below sh: {grandchild:?}");
    }

    #[test]
    fn this_process_has_at_least_one_thread() {
        assert!(thread_count() >= 1);
    }
}
