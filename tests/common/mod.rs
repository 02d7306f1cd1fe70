//! Shared harness for the integration tests.
//!
//! Every test binary in `tests/` does `mod common;` and uses a subset of this module. It
//! owns: the global lock that serialises tests which fork or signal; per-test temp dirs;
//! finding the launcher and the library; compiling small C and Rust programs; running a
//! program as a [`Session`] whose output can be awaited line by line; editor-style saves;
//! and reading the process table from `/proc`.
//!
//! Rules the helpers follow, so the tests can too:
//! - Wait for events (a line of output, a process exit), never sleep for a fixed time.
//!   Timeouts are generous upper bounds, never assertions about speed.
//! - A failure prints what happened: the command, its exit status, its live processes and
//!   the whole transcript of stdout and stderr in arrival order.
//! - Cleanup only touches processes descended from the child a [`Session`] spawned.
//!
//! Environment variables for whoever runs the tests:
//! - `FORKHOOK_KEEP_TEMP`: keep every [`TempDir`] and print where it is.
//! - `FORKHOOK_TEST_ECHO`: echo each line of every session to stderr as it arrives.
//! - `CI=true`: a missing tool fails the test instead of skipping it.

#![allow(dead_code)]

use std::borrow::BorrowMut;
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long [`Session`]'s drop waits for the processes to end after SIGTERM.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the output pipes to close once the session process has exited:
/// whatever it wrote is already in the pipe, so this only bounds a leaked descendant.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Global lock

static LOCK: Mutex<()> = Mutex::new(());

/// Serialises tests that fork, signal or count processes. A test that panicked while
/// holding the lock does not poison it for the others.
pub fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Temp dirs

/// A fresh directory under `std::env::temp_dir()`, removed on drop unless
/// `FORKHOOK_KEEP_TEMP` is set. The path is canonical (symlinks resolved), so it compares
/// equal to the paths forkhook reports.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = std::env::temp_dir();
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let candidate = base.join(format!(
                "forkhook-{name}-{}-{}-{nanos:08x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match fs::create_dir(&candidate) {
                Ok(()) => {
                    let path = fs::canonicalize(&candidate).unwrap_or(candidate);
                    return TempDir { path };
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temp dir {}: {e}", candidate.display()),
            }
        }
    }

    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.path.join(relative)
    }

    /// Creates (or truncates) `relative` with `contents`, creating parent dirs. A plain
    /// create, no rename: use it to set files up, the `save_*` helpers to edit them.
    pub fn write(&self, relative: impl AsRef<Path>, contents: &str) -> PathBuf {
        let path = self.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("FORKHOOK_KEEP_TEMP").is_some() {
            eprintln!("FORKHOOK_KEEP_TEMP is set: keeping {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!(
                "warning: cannot remove temp dir {}: {e}",
                self.path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The launcher, the library, tools

pub fn forkhook_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_forkhook"))
}

/// Removes every setting forkhook reads from the inherited environment, so the
/// developer's own `FORKMON_*`/`FORKHOOK_*`/`NO_COLOR`/`LD_PRELOAD` never change a test.
///
/// Also removes `PYTHONUNBUFFERED` and `PYTHONDONTWRITEBYTECODE`, which container images
/// and CI often set: Python programs then run as on a user's machine, with block-buffered
/// stdout on a pipe and `.pyc` files (after which CPython only stats the `.py`). A test
/// that wants either sets it again.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let key_bytes = key.as_bytes();
        if key_bytes.starts_with(b"FORKMON_")
            || key_bytes.starts_with(b"FORKHOOK_")
            || key_bytes == b"NO_COLOR"
            || key_bytes == b"LD_PRELOAD"
            || key_bytes == b"PYTHONUNBUFFERED"
            || key_bytes == b"PYTHONDONTWRITEBYTECODE"
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// `forkhook` with a clean environment; add the arguments.
pub fn forkhook_command() -> Command {
    let mut cmd = Command::new(forkhook_bin());
    clean_env(&mut cmd);
    cmd
}

/// `program` with a clean environment and `LD_PRELOAD` set to the library; add the
/// settings (`FORKMON_FILTER`, ...) and the arguments.
pub fn preload_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    cmd.env("LD_PRELOAD", library_path());
    cmd
}

/// The library the launcher writes to its cache, from `forkhook --print-library`
/// (run once per test binary).
pub fn library_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let output = forkhook_command()
            .arg("--print-library")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", forkhook_bin().display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "`forkhook --print-library` failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        let path = PathBuf::from(stdout.trim());
        assert!(
            path.is_file(),
            "`forkhook --print-library` printed {:?}, which is not a file\nstderr:\n{stderr}",
            stdout.trim()
        );
        path
    })
    .clone()
}

/// Where `name` is on `PATH` (or `name` itself if it contains a `/`), if executable.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    fn executable(path: &Path) -> bool {
        fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    if name.contains('/') {
        let path = PathBuf::from(name);
        return executable(&path).then_some(path);
    }
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| executable(candidate))
}

/// The real Python interpreter behind `python3` (`sys.executable`), which is not the
/// same file when `python3` is a wrapper script such as a pyenv shim. Use it for tests
/// about Python itself; use plain `python3` for tests about wrappers that `exec`.
pub fn python3_executable() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut cmd = Command::new("python3");
        clean_env(&mut cmd);
        let output = cmd
            .args(["-c", "import sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
        assert!(
            output.status.success(),
            "python3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
    .clone()
}

/// Is `name` installed? Tests start with `if !require_tool("lua5.4") { return; }`. In CI
/// (`CI=true`) a missing tool is a failure, elsewhere the test is skipped with a note.
pub fn require_tool(name: &str) -> bool {
    if find_on_path(name).is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is required in CI");
    }
    eprintln!("SKIPPED: {name} not installed");
    false
}

// ---------------------------------------------------------------------------------------
// Compiling test programs

/// Writes `source` to `<dir>/<name>.c` and compiles it with `gcc -O1` to `<dir>/<name>`.
pub fn compile_c(dir: &TempDir, name: &str, source: &str) -> PathBuf {
    compile_c_with(dir, name, source, &[])
}

/// [`compile_c`] with extra gcc arguments (e.g. `-pthread`), placed after the source.
pub fn compile_c_with(dir: &TempDir, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    let source_path = dir.write(format!("{name}.c"), source);
    let output_path = dir.join(name);
    let mut cmd = Command::new("gcc");
    cmd.arg("-O1")
        .arg("-o")
        .arg(&output_path)
        .arg(&source_path)
        .args(extra);
    run_compiler(cmd, &source_path);
    output_path
}

/// Writes `source` to `<dir>/<name>.rs` and compiles it with `rustc -O --edition 2021`.
pub fn compile_rust(dir: &TempDir, name: &str, source: &str) -> PathBuf {
    let source_path = dir.write(format!("{name}.rs"), source);
    let output_path = dir.join(name);
    let mut cmd = Command::new("rustc");
    cmd.args(["-O", "--edition", "2021", "-o"])
        .arg(&output_path)
        .arg(&source_path);
    run_compiler(cmd, &source_path);
    output_path
}

fn run_compiler(mut cmd: Command, source_path: &Path) {
    clean_env(&mut cmd);
    let description = format!("{cmd:?}");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    if !output.status.success() {
        let source = fs::read_to_string(source_path).unwrap_or_default();
        panic!(
            "compiling {} failed ({})\ncommand: {description}\n--- compiler output ---\n{}{}\n--- source ---\n{}",
            source_path.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            numbered(&source),
        );
    }
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, line)| format!("{:4} | {line}\n", i + 1))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Sessions

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line of output, as recorded in the transcript.
#[derive(Clone, Debug)]
pub struct Line {
    pub stream: Stream,
    /// Time since the session started when the reader thread got the line.
    pub at: Duration,
    pub text: String,
}

enum Event {
    Line(Stream, String, Instant),
    Closed(Stream),
}

/// A running program with stdout and stderr piped. Two reader threads record every line
/// in a shared transcript and send it over a channel; the `expect_*` methods consume the
/// lines of one stream in order, so after `expect_stdout("foo!")` the next
/// `expect_stdout("foo!")` only matches a later line.
///
/// The program runs in its own process group (its pid is the group id), so
/// [`Session::signal_group`] can do what Ctrl-C on a terminal does, and the drop can find
/// processes that left the tree. Stdin is `/dev/null`.
///
/// The session process is never reaped before the drop: its pid, and so its process
/// group id, cannot be reused while the session exists, which makes signalling both safe.
pub struct Session {
    child: Child,
    pid: i32,
    pidfd: Option<OwnedFd>,
    command: String,
    started: Instant,
    events: Receiver<Event>,
    transcript: Arc<Mutex<Vec<Line>>>,
    pending_stdout: VecDeque<(String, Instant)>,
    pending_stderr: VecDeque<(String, Instant)>,
    stdout_closed: bool,
    stderr_closed: bool,
    status: Option<ExitStatus>,
    /// Set once a failure message has printed the transcript, so the drop does not
    /// print it a second time.
    reported: Cell<bool>,
}

impl Session {
    /// Starts `cmd` with stdin from `/dev/null`, stdout and stderr piped, in a new
    /// process group. Takes a `Command` or a `&mut Command`, so
    /// `Session::start(forkhook_command().args([...]))` works.
    pub fn start(mut cmd: impl BorrowMut<Command>) -> Session {
        let cmd = cmd.borrow_mut();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // A shell that runs this test suite in the background (`cargo test &` in a
        // script) makes it ignore SIGINT and SIGQUIT, and children inherit that: the
        // program would not see the Ctrl-C the tests send. A terminal user's program does.
        // SAFETY: signal() is async-signal-safe and touches only this child's dispositions.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        let command = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        let started = Instant::now();

        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1. The pid is
        // our unreaped child, so it names the process we just spawned.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = (raw >= 0).then(|| {
            // SAFETY: the syscall returned a fresh fd that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(raw as i32) }
        });

        let transcript = Arc::new(Mutex::new(Vec::new()));
        let (sender, events) = mpsc::channel();
        let echo = std::env::var_os("FORKHOOK_TEST_ECHO").is_some();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_reader(
            Stream::Stdout,
            stdout,
            sender.clone(),
            transcript.clone(),
            started,
            echo,
            pid,
        );
        spawn_reader(
            Stream::Stderr,
            stderr,
            sender,
            transcript.clone(),
            started,
            echo,
            pid,
        );

        Session {
            child,
            pid,
            pidfd,
            command,
            started,
            events,
            transcript,
            pending_stdout: VecDeque::new(),
            pending_stderr: VecDeque::new(),
            stdout_closed: false,
            stderr_closed: false,
            status: None,
            reported: Cell::new(false),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for a stdout line containing `needle`, consuming the stdout lines before it.
    /// Returns the line. Panics with the transcript on timeout or when stdout closes.
    pub fn expect_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect(Stream::Stdout, needle, timeout)
    }

    /// [`Session::expect_stdout`] for stderr.
    pub fn expect_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect(Stream::Stderr, needle, timeout)
    }

    /// Waits for a line containing `needle` on `stream`; see [`Session::expect_stdout`].
    pub fn expect(&mut self, stream: Stream, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some((line, _)) = self.pending(stream).pop_front() {
                if line.contains(needle) {
                    return line;
                }
            }
            if self.closed(stream) {
                self.fail(&format!(
                    "{} closed before a line containing {needle:?} appeared",
                    stream.name()
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                self.fail(&format!(
                    "timed out after {timeout:?} waiting for a {} line containing {needle:?}",
                    stream.name()
                ));
            }
            self.receive(deadline - now);
        }
    }

    /// Every stdout line received so far, consumed or not.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines_of(Stream::Stdout)
    }

    /// Every stderr line received so far, consumed or not.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines_of(Stream::Stderr)
    }

    /// How many stdout lines received so far contain `needle`.
    pub fn count_stdout(&self, needle: &str) -> usize {
        self.stdout_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// How many stderr lines received so far contain `needle`.
    pub fn count_stderr(&self, needle: &str) -> usize {
        self.stderr_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Every line received so far, both streams, in arrival order.
    pub fn lines(&self) -> Vec<Line> {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Watches both streams for `window` and returns the lines (untagged, in arrival
    /// order) that arrived during it: to show that nothing happens, e.g. after a touch.
    /// Lines received earlier and not yet consumed are consumed without being returned,
    /// and so are the returned ones. Returns early if both streams have closed.
    ///
    /// Await the messages you know are coming (the end of the run, a resume) before the
    /// window starts, or they may land in it.
    pub fn collect_for(&mut self, window: Duration) -> Vec<String> {
        let start = Instant::now();
        let end = start + window;
        let mut seen: Vec<(Instant, String)> = Vec::new();
        self.receive_ready();
        for (line, at) in self
            .pending_stdout
            .drain(..)
            .chain(self.pending_stderr.drain(..))
        {
            if at >= start {
                seen.push((at, line));
            }
        }
        while !(self.stdout_closed && self.stderr_closed) {
            let now = Instant::now();
            if now >= end {
                break;
            }
            match self.events.recv_timeout(end - now) {
                Ok(Event::Line(_, line, at)) => seen.push((at, line)),
                Ok(Event::Closed(stream)) => self.mark_closed(stream),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    self.stdout_closed = true;
                    self.stderr_closed = true;
                }
            }
        }
        seen.sort_by_key(|(at, _)| *at);
        seen.into_iter().map(|(_, line)| line).collect()
    }

    /// Both streams, in arrival order, one line each, tagged `out|` or `err|` after the
    /// time since start.
    pub fn transcript(&self) -> String {
        let lines = self.lines();
        let mut text = String::new();
        for line in &lines {
            text.push_str(&format!(
                "{:8.3}s {}| {}\n",
                line.at.as_secs_f64(),
                line.stream.tag(),
                line.text
            ));
        }
        if lines.is_empty() {
            text.push_str("(no output)\n");
        }
        text
    }

    /// Waits for the session process to exit and returns its status; panics with the
    /// transcript on timeout. Then waits (briefly) for both pipes to close, so that
    /// [`Session::stdout_lines`] holds everything the process wrote.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        match self.wait_for_exit(Instant::now() + timeout) {
            Some(status) => {
                self.status = Some(status);
                self.wait_output_closed(OUTPUT_DRAIN);
                status
            }
            None => self.fail(&format!(
                "timed out after {timeout:?} waiting for the process to exit"
            )),
        }
    }

    /// The exit status, if the session process has exited (without waiting).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.peek_exit();
        }
        self.status
    }

    /// Waits until both stdout and stderr have closed: every process holding them (the
    /// session process and all it left behind) is gone. Returns false on timeout.
    pub fn wait_output_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !(self.stdout_closed && self.stderr_closed) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.receive(deadline - now);
        }
        true
    }

    /// Sends `sig` to the session process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory effects. The pid is our unreaped child, so it cannot
        // name another process.
        let rc = unsafe { libc::kill(self.pid, sig) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            self.fail(&format!("kill({}, {sig}) failed: {e}", self.pid));
        }
    }

    /// Sends `sig` to the session's whole process group, as the terminal does on Ctrl-C
    /// (SIGINT) or when it hangs up (SIGHUP).
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: killpg has no memory effects. The group id is our unreaped child's pid,
        // so the group is the one we created.
        let rc = unsafe { libc::killpg(self.pid, sig) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            self.fail(&format!("killpg({}, {sig}) failed: {e}", self.pid));
        }
    }

    /// Pids of all live (not zombie) descendants of the session process, sorted.
    pub fn descendants(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .descendant_processes()
            .into_iter()
            .filter(|p| p.is_live())
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// All descendants of the session process, zombies included, in tree order.
    pub fn descendant_processes(&self) -> Vec<ProcInfo> {
        descendants_of(self.pid, &process_table())
    }

    /// Every process in the session's process group other than the session process,
    /// zombies included: unlike [`Session::descendants`], this also finds processes
    /// orphaned when the session process died.
    pub fn group_processes(&self) -> Vec<ProcInfo> {
        process_table()
            .into_iter()
            .filter(|p| p.pgid == self.pid && p.pid != self.pid)
            .collect()
    }

    /// Time since the session started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The failure report: command, status, processes, transcript.
    pub fn report(&self, headline: &str) -> String {
        let mut text = format!("{headline}\n");
        text.push_str(&format!("--- session: {}\n", self.command));
        text.push_str(&format!(
            "--- pid {}, {:.3}s since start, ",
            self.pid,
            self.started.elapsed().as_secs_f64()
        ));
        match self.status.or_else(|| self.peek_exit()) {
            Some(status) => text.push_str(&format!("exited: {status}\n")),
            None => text.push_str("still running\n"),
        }
        let table = process_table();
        let mut processes: Vec<ProcInfo> = table
            .iter()
            .filter(|p| p.pid == self.pid)
            .cloned()
            .collect();
        processes.extend(descendants_of(self.pid, &table));
        let mut listed: HashSet<i32> = processes.iter().map(|p| p.pid).collect();
        for p in table.iter().filter(|p| p.pgid == self.pid) {
            if listed.insert(p.pid) {
                processes.push(p.clone());
            }
        }
        text.push_str("--- processes (session, descendants, rest of its group):\n");
        for p in &processes {
            text.push_str(&format!("  {p}\n"));
        }
        text.push_str(&format!("--- transcript ({} lines):\n", self.lines().len()));
        text.push_str(&self.transcript());
        text.push_str("--- end of transcript");
        text
    }

    fn fail(&self, headline: &str) -> ! {
        self.reported.set(true);
        panic!("{}", self.report(headline));
    }

    fn pending(&mut self, stream: Stream) -> &mut VecDeque<(String, Instant)> {
        match stream {
            Stream::Stdout => &mut self.pending_stdout,
            Stream::Stderr => &mut self.pending_stderr,
        }
    }

    fn closed(&self, stream: Stream) -> bool {
        match stream {
            Stream::Stdout => self.stdout_closed,
            Stream::Stderr => self.stderr_closed,
        }
    }

    fn mark_closed(&mut self, stream: Stream) {
        match stream {
            Stream::Stdout => self.stdout_closed = true,
            Stream::Stderr => self.stderr_closed = true,
        }
    }

    fn route(&mut self, event: Event) {
        match event {
            Event::Line(stream, line, at) => self.pending(stream).push_back((line, at)),
            Event::Closed(stream) => self.mark_closed(stream),
        }
    }

    /// Waits up to `timeout` for one event and queues it.
    fn receive(&mut self, timeout: Duration) {
        match self.events.recv_timeout(timeout) {
            Ok(event) => self.route(event),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                self.stdout_closed = true;
                self.stderr_closed = true;
            }
        }
    }

    /// Queues every event already received, without waiting.
    fn receive_ready(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.route(event);
        }
    }

    fn lines_of(&self, stream: Stream) -> Vec<String> {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text.clone())
            .collect()
    }

    /// The exit status if the session process has exited, leaving it unreaped.
    fn peek_exit(&self) -> Option<ExitStatus> {
        loop {
            // SAFETY: an all-zero siginfo_t is valid (plain integers and unions of them);
            // waitid fills it in, and leaves si_pid 0 if the child has not exited.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid, writable siginfo_t. WNOWAIT leaves the child
            // unreaped, so its pid stays ours.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            if rc != 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Only the drop reaps the child, so this cannot be ECHILD; and this runs
                // inside drops, where a panic would abort.
                return None;
            }
            // SAFETY: waitid succeeded for a child, so the SIGCHLD fields are the ones set.
            let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
            if pid == 0 {
                return None;
            }
            let raw = match info.si_code {
                libc::CLD_EXITED => (status & 0xff) << 8,
                libc::CLD_KILLED => status & 0x7f,
                libc::CLD_DUMPED => (status & 0x7f) | 0x80,
                _ => return None,
            };
            return Some(ExitStatus::from_raw(raw));
        }
    }

    /// Waits until the session process exits or `deadline` passes, leaving it unreaped.
    fn wait_for_exit(&self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.peek_exit() {
                return Some(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let remaining = deadline - now;
            match &self.pidfd {
                Some(pidfd) => {
                    // A pidfd polls readable once the process has exited.
                    let mut pollfd = libc::pollfd {
                        fd: pidfd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let millis = remaining
                        .as_millis()
                        .saturating_add(1)
                        .min(i32::MAX as u128) as i32;
                    // SAFETY: `pollfd` is one valid pollfd and the count says 1. The result
                    // only tells us to look again; errors (EINTR) just loop.
                    unsafe { libc::poll(&mut pollfd, 1, millis) };
                }
                None => thread::sleep(remaining.min(Duration::from_millis(10))),
            }
        }
    }
}

fn spawn_reader(
    stream: Stream,
    pipe: impl Read + Send + 'static,
    sender: Sender<Event>,
    transcript: Arc<Mutex<Vec<Line>>>,
    started: Instant,
    echo: bool,
    pid: i32,
) {
    let body = move || {
        let mut reader = BufReader::new(pipe);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) => break,
                Ok(_) => {
                    while buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buffer.pop();
                    }
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    let at = Instant::now();
                    {
                        let mut lines = transcript.lock().unwrap_or_else(|p| p.into_inner());
                        lines.push(Line {
                            stream,
                            at: at - started,
                            text: text.clone(),
                        });
                    }
                    if echo {
                        eprintln!("[session {pid}] {}| {text}", stream.tag());
                    }
                    // After the session is dropped nobody listens, but the pipe must still
                    // be drained so that a writer never blocks on it.
                    let _ = sender.send(Event::Line(stream, text, at));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = sender.send(Event::Closed(stream));
    };
    thread::Builder::new()
        .name(format!("session-{}-{pid}", stream.name()))
        .spawn(body)
        .expect("spawn reader thread");
}

impl Drop for Session {
    /// Ends every process of the session, even when the test panicked: descendants are
    /// listed first (they leave the tree once the session process dies), then the session
    /// process gets SIGTERM and up to 2 s to take them with it; whatever remains gets
    /// SIGKILL, the tree is walked once more, the process group is killed, and the session
    /// process is reaped.
    fn drop(&mut self) {
        if thread::panicking() && !self.reported.get() {
            eprintln!(
                "{}",
                self.report("session dropped while the test was panicking")
            );
        }
        let collected = self.descendant_processes();

        let deadline = Instant::now() + TERMINATE_GRACE;
        if self.peek_exit().is_none() {
            // SAFETY: kill has no memory effects; the pid is our unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            self.wait_for_exit(deadline);
        }
        // Give the descendants the rest of the grace period to end with the session.
        wait_until(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(10),
            || collected.iter().all(|p| !p.still_running()),
        );

        // SAFETY: kill has no memory effects; the pid is our unreaped child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let mut leftovers = Vec::new();
        for p in &collected {
            if p.still_running() {
                // SAFETY: kill has no memory effects; still_running just checked that the
                // pid names the same process (same start time) that we listed.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
                leftovers.push(p.clone());
            }
        }
        for p in self.descendant_processes() {
            if p.is_live() {
                // SAFETY: kill has no memory effects; p descends from our unreaped child.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
                leftovers.push(p);
            }
        }
        for p in self.group_processes() {
            if p.is_live() {
                leftovers.push(p);
            }
        }
        // SAFETY: killpg has no memory effects; the group id is our unreaped child's pid.
        unsafe { libc::killpg(self.pid, libc::SIGKILL) };

        let _ = self.child.wait();
        let mut seen = HashSet::new();
        leftovers.retain(|p| seen.insert(p.pid));
        // SIGKILL takes effect asynchronously: return only once they are gone, so that the
        // next test starts with a clean process table.
        wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
            leftovers.iter().all(|p| !p.still_running())
        });
        if !leftovers.is_empty() {
            eprintln!(
                "note: {} process(es) of session {} outlived SIGTERM + {:?} and were killed:",
                leftovers.len(),
                self.pid,
                TERMINATE_GRACE
            );
            for p in &leftovers {
                eprintln!("  {p}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The process table

/// One process, from `/proc/<pid>/stat` and `/proc/<pid>/cmdline`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    /// `R`, `S`, `D`, `T`, `Z`, ...
    pub state: char,
    pub threads: u32,
    /// Start time in clock ticks since boot: with the pid, it names a process uniquely.
    pub start_time: u64,
    pub comm: String,
    /// Arguments joined by spaces; empty for zombies and kernel threads.
    pub cmdline: String,
}

impl ProcInfo {
    /// Reads one process; None if it does not exist (any more).
    pub fn read(pid: i32) -> Option<ProcInfo> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // comm is in parentheses and may itself contain spaces and parentheses.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // fields[0] is field 3 of proc(5): state, ppid, pgrp, ... num_threads (20),
        // starttime (22).
        let state = fields.first()?.chars().next()?;
        let ppid = fields.get(1)?.parse().ok()?;
        let pgid = fields.get(2)?.parse().ok()?;
        let threads = fields.get(17)?.parse().ok()?;
        let start_time = fields.get(19)?.parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|bytes| {
                bytes
                    .split(|b| *b == 0)
                    .filter(|arg| !arg.is_empty())
                    .map(|arg| String::from_utf8_lossy(arg).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        Some(ProcInfo {
            pid,
            ppid,
            pgid,
            state,
            threads,
            start_time,
            comm,
            cmdline,
        })
    }

    /// Not a zombie (nor dead).
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// This very process (same pid and start time) exists and is not a zombie.
    pub fn still_running(&self) -> bool {
        ProcInfo::read(self.pid)
            .is_some_and(|now| now.start_time == self.start_time && now.is_live())
    }
}

impl fmt::Display for ProcInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} ppid {} pgid {} state {} threads {} {}",
            self.pid,
            self.ppid,
            self.pgid,
            self.state,
            self.threads,
            if self.cmdline.is_empty() {
                format!("[{}]", self.comm)
            } else {
                self.cmdline.clone()
            }
        )
    }
}

/// Every process visible in `/proc`. Parent links come from `/proc/<pid>/stat`, because
/// `/proc/<pid>/task/<tid>/children` only exists with CONFIG_PROC_CHILDREN.
pub fn process_table() -> Vec<ProcInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(ProcInfo::read)
        .collect()
}

/// The descendants of `root` in `table` (not `root` itself), depth first, each parent
/// before its children, siblings by pid.
pub fn descendants_of(root: i32, table: &[ProcInfo]) -> Vec<ProcInfo> {
    let mut children: HashMap<i32, Vec<&ProcInfo>> = HashMap::new();
    for p in table {
        children.entry(p.ppid).or_default().push(p);
    }
    for kids in children.values_mut() {
        kids.sort_by_key(|p| p.pid);
    }
    let mut result = Vec::new();
    let mut visited = HashSet::from([root]);
    let mut stack: Vec<i32> = vec![root];
    while let Some(parent) = stack.pop() {
        if parent != root {
            if let Some(p) = table.iter().find(|p| p.pid == parent) {
                result.push(p.clone());
            }
        }
        for kid in children.get(&parent).into_iter().flatten().rev() {
            if visited.insert(kid.pid) {
                stack.push(kid.pid);
            }
        }
    }
    result
}

// ---------------------------------------------------------------------------------------
// Editor-style saves: each produces a different pattern of inotify events.

/// Writes a temp file next to `path` and renames it over `path` (vim with
/// `backupcopy=no`, JetBrains, atomic writers): `IN_MOVED_TO` on the name, a new inode.
/// Keeps the file's permissions. The temp name does not end like `path`, so it never
/// matches an extension filter.
pub fn save_rename_over(path: &Path, contents: &str) {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .expect("path has a file name")
        .to_string_lossy();
    let temp = dir.join(format!(
        ".{name}.save-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&temp, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", temp.display()));
    if let Ok(metadata) = fs::metadata(path) {
        let _ = fs::set_permissions(&temp, metadata.permissions());
    }
    fs::rename(&temp, path).unwrap_or_else(|e| {
        panic!(
            "cannot rename {} over {}: {e}",
            temp.display(),
            path.display()
        )
    });
}

/// Opens `path` with `O_TRUNC` and writes `contents` in two `write()` calls (nano, most
/// editors): `IN_MODIFY` for the truncation and each write, then `IN_CLOSE_WRITE`; same
/// inode.
pub fn save_truncate_write(path: &Path, contents: &str) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut split = contents.len() / 2;
    while !contents.is_char_boundary(split) {
        split -= 1;
    }
    let (first, second) = contents.split_at(split);
    for part in [first, second] {
        file.write_all(part.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// Runs the real `sed -i s/from/to/ path` (writes a temp file in the same dir and renames
/// it over `path`). `from` is a sed basic regex; the delimiter is chosen to appear in
/// neither argument.
pub fn save_sed_inplace(path: &Path, from: &str, to: &str) {
    let delimiter = ['/', '|', '#', ',', '@', '%']
        .into_iter()
        .find(|d| !from.contains(*d) && !to.contains(*d))
        .expect("no sed delimiter free in from/to");
    let script = format!("s{delimiter}{from}{delimiter}{to}{delimiter}");
    let output = Command::new("sed")
        .arg("-i")
        .arg(&script)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run sed: {e}"));
    assert!(
        output.status.success(),
        "sed -i {script:?} {} failed ({}): {}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Deletes `path` and creates it again with `contents` (some VCS checkouts and
/// generators): `IN_DELETE`, then `IN_CREATE` and `IN_CLOSE_WRITE`, a new inode.
pub fn save_delete_create(path: &Path, contents: &str) {
    fs::remove_file(path).unwrap_or_else(|e| panic!("cannot remove {}: {e}", path.display()));
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Sets the access and modification times to now without touching the content
/// (`IN_ATTRIB` only).
pub fn touch(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: c_path is a valid NUL-terminated string; a null `times` means "now".
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), std::ptr::null(), 0) };
    if rc != 0 {
        panic!(
            "utimensat({}) failed: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }
}

/// Polls `condition` every `poll_every` until it holds (true) or `timeout` passes
/// (false). For conditions no event announces, like a count of processes; wait for
/// output with [`Session::expect_stdout`] instead.
pub fn wait_until(
    timeout: Duration,
    poll_every: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(poll_every.min(deadline - now));
    }
}

// ---------------------------------------------------------------------------------------
// HTTP, for the dev-server tests

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// An HTTP response: status code and body.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` from 127.0.0.1:`port` over HTTP/1.0 (the server closes the connection
/// after the answer). An error if nothing listens or the answer does not parse.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {text:?}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}

/// `forkhook ARGS -- PROGRAM` started in `dir`: the shape of most tests.
pub fn forkhook_in(dir: &TempDir, args: &[&str], program: impl AsRef<OsStr>) -> Session {
    Session::start(
        forkhook_command()
            .args(args)
            .arg("--")
            .arg(program)
            .current_dir(&dir.path),
    )
}
