//! Taking a checkpoint, parking it, and forking runs from it.
//!
//! The process tree of a session, after a first run that took three checkpoints and
//! a resume from the third:
//!
//! ```text
//! coordinator (the original pid)
//! └─ checkpoint 1 ─┬─ checkpoint 2
//!                  └─ checkpoint 3 ─┬─ run ─ what the run spawned
//!                                   └─ checkpoint 4 (taken by that run)
//! ```
//!
//! The first checkpoint parks in place: at the session's first access the process
//! forks, the parent parks, and the child carries on as the run. Every later one is
//! a sibling of the run (`sys::fork_sibling`): a copy parks beside it, under the
//! run's parent, and the run carries on in the same process. So the run is never a
//! deeper copy than where it started (a chain of forks makes each fork dearer, see
//! `sys::fork_sibling`), it keeps its mapped code, and the program never sees a
//! checkpoint among its children. A process with several threads still parks in
//! place: glibc's fork handlers keep malloc usable in the child.
//!
//! Checkpoints are subreapers, so whatever a run spawned (also daemons that detached)
//! stays below the checkpoint it was forked from, and everything stays below
//! checkpoint 1. A checkpoint is taken inside the hooked call, after the real
//! `open`/`stat` and before its result reaches the program. On a resume the
//! coordinator ends every process but the checkpoints it keeps, then orders the
//! checkpoint to fork a fresh run, which makes the real call again on the edited file.
//!
//! A forked child (the run) may do anything: it is the program. A parked checkpoint
//! only ever runs the code in this file, and leaves with `_exit`, so the program's
//! atexit handlers and stdio buffers are never run twice.

use crate::budget::{Limits, Meter, Spending, Verdict};
use crate::config::ThreadPolicy;
use crate::coordinator;
use crate::hook::{self, process, Observed, Then};
use crate::protocol::{AccessOf, Down, Up, DOWN_LEN};
use crate::report::human;
use crate::sys::{self, Fork, Pid, SignalSet};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a run knows about its session. Lives in the run's memory, so a resumed run
/// gets the version its checkpoint had, updated by [`park`] for the new branch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionState {
    /// Socket to the coordinator (inherited by every process of the session).
    pub up: RawFd,
    /// Its inode: a program that closes descriptors it did not open may reuse the number.
    pub up_inode: u64,
    pub epoch: u64,
    /// Newest checkpoint above this run: the resume point for files it reads next.
    pub checkpoint: Pid,
    /// `now - origin` is the time into the run as if it had started from scratch.
    pub origin: Instant,
    /// What checkpoints have cost this branch of runs (see `budget`).
    pub spending: Spending,
    /// Checkpoints above this run.
    pub depth: usize,
}

impl SessionState {
    /// Is `up` still our socket? If the program closed it, say so once: this run takes
    /// no more checkpoints (a resume from an earlier one gets a fresh connection).
    /// Checked before each send: the number may now be one of the program's sockets.
    fn connected(&self) -> bool {
        if sys::fstat(self.up).is_ok_and(|s| s.socket && s.ino == self.up_inode) {
            return true;
        }
        let first = process()
            .as_mut()
            .is_some_and(|p| !std::mem::replace(&mut p.warned_closed, true));
        if first {
            hook::reporter().warn(&format!(
                "the program closed forkhook's descriptor {}; this run takes no more \
                 checkpoints (a change to a file it reads from now on resumes from an earlier one)",
                self.up
            ));
        }
        false
    }

    fn send(&self, message: &Up, pass: Option<RawFd>) -> io::Result<()> {
        sys::send_message(self.up, &message.encode(), pass)
    }

    /// Tells the coordinator of a first access through the ring, with no system call
    /// unless it sleeps (then one wake-up); through the socket if the ring is full.
    fn tell(&self, access: &AccessOf) {
        match ring().and_then(|r| r.push(access.encoded_len(), |out| access.write(out))) {
            Some(false) => {}
            Some(true) => {
                if self.connected() {
                    let _ = self.send(&Up::Wake, None);
                }
            }
            None => {
                if self.connected() {
                    let _ = sys::send_message(self.up, &access.encode(), None);
                }
            }
        }
    }
}

/// The ring first accesses are told through (see `sys::Ring`), made at session start
/// and shared by every process of the session.
static RING: OnceLock<sys::Ring> = OnceLock::new();

pub(crate) fn ring() -> Option<&'static sys::Ring> {
    RING.get()
}

/// Terminal settings at session start, inherited by every checkpoint: a run killed
/// while it had the terminal in raw or no-echo mode must not leave it so.
static TERMINAL: OnceLock<sys::Termios> = OnceLock::new();

pub(crate) fn restore_terminal() {
    if let Some(settings) = TERMINAL.get() {
        sys::tcsetattr(0, settings);
    }
}

/// Signals a parked process (checkpoint or coordinator) leaves to the kernel's
/// defaults: job control, so Ctrl-Z still suspends the whole session, and faults.
const UNBLOCKED: &[libc::c_int] = &[
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCONT,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
];

pub(crate) fn parked_signals() -> SignalSet {
    SignalSet::all_except(UNBLOCKED)
}

/// The run touched `file` (an existing regular file that matches the filter, as
/// `seen`) for the first time, in a call that already succeeded. Takes a checkpoint if
/// the budget allows, then tells the coordinator. In a run resumed from that
/// checkpoint, says to make the call again. `opened` is the descriptor the call opened:
/// parked processes close it (they never use it, and an open file in a directory delays
/// the event that says the directory was removed).
pub(crate) fn at_first_access(file: &Path, mut seen: Observed, opened: Option<RawFd>) -> Then {
    let Some(settings) = hook::settings() else {
        return Then::Return;
    };
    let report = hook::reporter();
    let session = process().as_ref().and_then(|p| p.session);
    let (mut session, started_now) = match session {
        Some(s) => (s, false),
        // Checked before the session starts: the original process keeps every thread
        // when it becomes the coordinator, so the warning belongs here.
        None if threads_allow(settings).is_none() => return Then::Return,
        None => match start_session(opened) {
            Ok(s) => (s, true),
            Err(e) => {
                report.error(&format!(
                    "cannot start a session ({e}); the program runs unwatched"
                ));
                return Then::Return;
            }
        },
    };

    let mut then = Then::Return;
    // Time into the run, read once (the clock is most of what a first access costs
    // beyond the hash lookups); again only after a checkpoint.
    let mut elapsed = session.origin.elapsed();
    let hot = || ring().is_some_and(|r| r.is_hot(file.as_os_str().as_bytes()));
    let verdict = if session.depth == 0 {
        // The first checkpoint (the program's start, as far as files go) is always taken.
        Verdict::Take {
            closing: Duration::ZERO,
        }
    } else if hot() {
        // The file whose edit started this run: it will likely be edited again, and a
        // checkpoint right before it makes that resume the shortest.
        Verdict::Take {
            closing: session.spending.open(&mut LiveMeter),
        }
    } else {
        session.spending.afford(
            elapsed,
            Limits {
                share: settings.budget.time_share,
                min_gap: settings.budget.min_gap,
            },
            &mut LiveMeter,
        )
    };
    let skipped = !matches!(verdict, Verdict::Take { .. });
    if skipped {
        // Worded only when shown: this is the path of most first accesses.
        report.detail(|| {
            let why = match verdict {
                Verdict::Near => format!(
                    "the newest, {} earlier, is near enough",
                    human(elapsed.saturating_sub(session.spending.newest_at)),
                ),
                Verdict::Loading => format!(
                    "loading: the file before was read {} earlier; one waits for a pause",
                    human(elapsed.saturating_sub(session.spending.last_access)),
                ),
                _ => format!(
                    "budget: checkpoints took {} of {}",
                    human(session.spending.total(&mut LiveMeter)),
                    human(session.origin.elapsed()),
                ),
            };
            format!(
                "no checkpoint before {} ({why}); a change to it resumes from an earlier one",
                file.display(),
            )
        });
    } else if let Some(threads) = started_now
        // Counted when the session started; the first checkpoint parks in place anyway.
        .then_some(1)
        .or_else(|| threads_allow(settings).filter(|_| session.connected()))
    {
        let closing = match verdict {
            Verdict::Take { closing } => closing,
            Verdict::Skip | Verdict::Near | Verdict::Loading => Duration::ZERO,
        };
        match take(session, file, opened, closing, threads) {
            Ok(resumed) => {
                if resumed.epoch != session.epoch {
                    // A run resumed from this checkpoint, maybe long after: the file
                    // may hold something else by now, and the call is made again.
                    seen = Observed::now(file);
                    then = Then::CallAgain;
                }
                session = resumed;
                elapsed = session.origin.elapsed();
            }
            Err(e) => report.warn(&format!(
                "no checkpoint before {} ({e}); a change to it resumes from an earlier one",
                file.display()
            )),
        }
    }
    session.spending.accessed(elapsed);
    if let Some(p) = process().as_mut() {
        p.session = Some(session);
    }
    let access = AccessOf {
        epoch: session.epoch,
        checkpoint: session.checkpoint,
        elapsed_ns: elapsed.as_nanos() as u64,
        identity: seen.identity,
        fingerprint: seen.fingerprint,
        file,
    };
    session.tell(&access);
    then
}

/// How long a parked checkpoint waits before it gives back its file pages.
const PARKED_RELEASE_AFTER: Duration = Duration::from_millis(250);

/// Files a session's run is expected to read, to size its sets up front.
const FILES_EXPECTED: usize = 1024;

/// Cost of a copy-on-write fault if it cannot be measured (about what a VM takes).
const DEFAULT_PAGE_COPY: Duration = Duration::from_micros(2);

/// The first checkpoint turns this (original) process into the coordinator: it forks,
/// the child carries on as the program, and this process never returns to it.
fn start_session(opened: Option<RawFd>) -> io::Result<SessionState> {
    hook::forget_preload();
    let (coordinator_end, member_end) = sys::seqpacket_pair()?;
    let coordinator_end = sys::move_high(coordinator_end)?;
    let member_end = sys::move_high(member_end)?;
    let up_inode = sys::fstat(member_end.as_raw_fd())?.ino;
    if let Ok(ring) = sys::Ring::new() {
        let _ = RING.set(ring);
    }
    hook::mark_session_started();
    if let Some(settings) = sys::tcgetattr(0) {
        let _ = TERMINAL.set(settings);
    }
    // Blocked before the fork: a Ctrl-C that reaches the coordinator before it got to
    // run must wait in its signalfd, not kill it (or run the program's handler).
    let program_mask = parked_signals().block();
    let forked = sys::fork();
    if !matches!(forked, Ok(Fork::Parent(_))) {
        program_mask.set_mask();
    }
    match forked? {
        Fork::Child => {
            drop(coordinator_end);
            if let Some(p) = process().as_mut() {
                // A session reads files by the hundred: sized once here rather than
                // grown (and every name hashed again) a dozen times during the run.
                p.reserve(FILES_EXPECTED);
            }
            Ok(SessionState {
                up: member_end.into_raw_fd(),
                up_inode,
                epoch: 0,
                checkpoint: 0,
                origin: hook::start_time(),
                spending: Spending::default(),
                depth: 0,
            })
        }
        Fork::Parent(_) => {
            drop(member_end);
            if let Some(fd) = opened {
                sys::close(fd);
            }
            coordinator::run(coordinator_end)
        }
    }
}

/// The run's own counters, for the budget.
struct LiveMeter;

impl Meter for LiveMeter {
    fn minor_faults(&mut self) -> u64 {
        sys::minor_faults()
    }
    fn anonymous_pages(&mut self) -> u64 {
        sys::anonymous_pages().unwrap_or(0)
    }
    /// Timed once, on the probe armed before the second checkpoint, whose pages the
    /// checkpoints since share (a run resumed from one taken before times its own). Two
    /// threads asking at once: the one that finds the probe taken uses the default.
    fn page_copy(&mut self) -> Duration {
        match PAGE_COPY_NS.load(Ordering::Relaxed) {
            0 => {}
            ns => return Duration::from_nanos(ns),
        }
        let time = sys::CowProbe::take_armed().map_or(DEFAULT_PAGE_COPY, |p| p.time_copy());
        PAGE_COPY_NS.store((time.as_nanos() as u64).max(1), Ordering::Relaxed);
        time
    }
}

/// The time of a copy-on-write fault on this machine, once timed (0 before).
static PAGE_COPY_NS: AtomicU64 = AtomicU64::new(0);

/// Before a checkpoint whose copies are charged (any but the first): pages it will
/// share, for `LiveMeter::page_copy` to time a copy on. Not at session start, where
/// it cost every session 140 µs (mapping, 16 faults, then 16 copies) that the runs
/// which take one checkpoint never use.
fn arm_page_copy_probe() {
    if PAGE_COPY_NS.load(Ordering::Relaxed) == 0 && !sys::CowProbe::armed() {
        if let Some(probe) = sys::CowProbe::new() {
            probe.arm();
        }
    }
}

/// fork(2) copies only the calling thread: say so once, and skip if told to. The
/// number of threads if a checkpoint may be taken.
fn threads_allow(settings: &crate::config::Settings) -> Option<usize> {
    let threads = sys::thread_count();
    if threads <= 1 {
        return Some(threads);
    }
    let skip = settings.threads == ThreadPolicy::Skip;
    let first = process()
        .as_mut()
        .is_some_and(|p| !std::mem::replace(&mut p.warned_threads, true));
    if first {
        hook::reporter().warn(&format!(
            "the program runs {threads} threads at a checkpoint: a resumed run has only the \
             thread that opened the file, so work the others were doing (and locks they held) \
             is lost; {}",
            if skip {
                "no checkpoint is taken while they run (FORKHOOK_THREADS=skip)"
            } else {
                "checkpointing anyway (set FORKHOOK_THREADS=skip to take none while they run)"
            }
        ));
    }
    (!skip).then_some(threads)
}

/// What a checkpoint holds the run for: the wall time the run waited (shown with
/// `-v`), and the CPU time it worked, which the budget is charged. They part when the
/// machine is busy: a run that waits for a CPU, or a VM whose host runs something
/// else, sees a 0.3 ms fork take 60 ms. Such a stall hits the run whether or not it
/// forks; charged, it refused every checkpoint for the next 6 s of a 1% share.
#[derive(Clone, Copy)]
struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            cpu: sys::thread_cpu_time(),
        }
    }

    /// The cost so far, in the thread that started it.
    fn cost(&self) -> Cost {
        Cost {
            waited: self.wall.elapsed(),
            worked: sys::thread_cpu_time().saturating_sub(self.cpu),
        }
    }

    /// The cost so far, in the child of a fork made at `forked` (after this started,
    /// in the same thread): the child's CPU clock started from zero there, and it
    /// cannot read its parent's, which did the fork's own work. So: the CPU time up
    /// to the fork, and the wall time from it.
    fn cost_in_child(&self, forked: Stopwatch) -> Cost {
        let since_fork = forked.wall.elapsed();
        Cost {
            waited: self.wall.elapsed(),
            worked: forked.cpu.saturating_sub(self.cpu) + since_fork,
        }
    }
}

/// See [`Stopwatch`].
#[derive(Clone, Copy)]
struct Cost {
    waited: Duration,
    worked: Duration,
}

/// Takes a checkpoint. Returns in the run, with its updated state; `Err` when none
/// could be taken, and the program carries on without it.
///
/// Two ways (see the module's documentation): a sibling parks and this process goes
/// on as the run, or this process parks and its child goes on. The second is for the
/// first checkpoint, which must be the parent of everything after it, and for a
/// process with several threads (`threads`, counted just before; fork's handlers
/// keep malloc usable in the child).
fn take(
    session: SessionState,
    file: &Path,
    opened: Option<RawFd>,
    closing: Duration,
    threads: usize,
) -> io::Result<SessionState> {
    let began = Stopwatch::start();
    if session.depth > 0 {
        arm_page_copy_probe();
    }
    sys::flush_stdio();
    let offsets = record_offsets();
    let (orders, orders_for_coordinator) = sys::pipe()?;
    let orders = sys::move_high(orders)?;
    let parked = Parked {
        orders,
        offsets,
        elapsed: session.origin.elapsed(),
        session,
        file: file.to_path_buf(),
        opened,
        closing,
    };
    if session.depth > 0 && threads <= 1 && !SIBLINGS_REFUSED.load(Ordering::Relaxed) {
        match parked.beside(orders_for_coordinator, began) {
            Beside::Taken(resumed) => return Ok(resumed),
            Beside::Failed(e) => return Err(e),
            // This system forbids the clone (a sandbox): park this process instead.
            Beside::Refused(parked, orders_for_coordinator, e) => {
                SIBLINGS_REFUSED.store(true, Ordering::Relaxed);
                hook::reporter().detail(|| {
                    format!(
                        "checkpoints are taken in place from now on (clone with CLONE_PARENT: \
                         {e}); each makes the next fork a little dearer"
                    )
                });
                return parked.in_place(orders_for_coordinator, began);
            }
        }
    }
    parked.in_place(orders_for_coordinator, began)
}

/// Set once `clone(CLONE_PARENT)` was refused: later checkpoints park in place.
static SIBLINGS_REFUSED: AtomicBool = AtomicBool::new(false);

enum Beside {
    Taken(SessionState),
    Failed(io::Error),
    Refused(Parked, OwnedFd, io::Error),
}

/// The verbose line for a checkpoint taken at `depth` (0: the first).
fn say_taken(depth: usize, file: &Path, elapsed: Duration, cost: Cost) {
    hook::reporter().detail(|| {
        // The CPU time too when waiting made most of it (see `Stopwatch`).
        let worked = if cost.waited > cost.worked * 2 + Duration::from_millis(1) {
            format!(", {} of CPU", human(cost.worked))
        } else {
            String::new()
        };
        format!(
            "checkpoint {} before {} ({} in, took {}{worked})",
            depth + 1,
            file.display(),
            human(elapsed),
            human(cost.waited)
        )
    });
}

/// No checkpoint after all: this process goes on as the run it was, which dies with
/// its checkpoint (the session's first run has the coordinator as parent instead,
/// and no such signal).
fn still_a_run(session: &SessionState) {
    if session.depth > 0 {
        let _ = sys::set_parent_death_signal(libc::SIGKILL);
    }
}

/// Offsets of the files open for reading, so a resumed run reads on from where the
/// checkpoint was (forked processes share offsets: the old run moved them).
fn record_offsets() -> Vec<(RawFd, i64)> {
    let Ok(fds) = sys::open_fds() else {
        return Vec::new();
    };
    fds.into_iter()
        .filter(|&fd| {
            sys::fd_flags(fd).is_ok_and(|f| f & libc::O_ACCMODE == libc::O_RDONLY)
                && sys::fstat(fd).is_ok_and(|s| s.regular)
        })
        .filter_map(|fd| Some((fd, sys::lseek(fd, 0, libc::SEEK_CUR).ok()?)))
        .collect()
}

struct Parked {
    orders: OwnedFd,
    offsets: Vec<(RawFd, i64)>,
    /// time into the run at this checkpoint
    elapsed: Duration,
    session: SessionState,
    file: PathBuf,
    /// What the interrupted call opened: the run forked first keeps it, runs forked
    /// later make the call again.
    opened: Option<RawFd>,
    /// What the interval before this checkpoint cost in page copies (see `budget`).
    closing: Duration,
}

impl Parked {
    /// This process parks as the checkpoint, and a child it forks goes on as the run.
    fn in_place(
        self,
        orders_for_coordinator: OwnedFd,
        began: Stopwatch,
    ) -> io::Result<SessionState> {
        let session = self.session;
        let me = sys::getpid();
        // This process was a run, which dies with its parent. A checkpoint must not:
        // the coordinator may retire the one above it as soon as it hears of this
        // one, and a checkpoint learns of the coordinator's end from its order pipe.
        let _ = sys::set_parent_death_signal(0);
        let announced = session.send(
            &Up::Checkpoint {
                epoch: session.epoch,
                pid: me,
                elapsed_ns: self.elapsed.as_nanos() as u64,
                file: self.file.clone(),
            },
            Some(orders_for_coordinator.as_raw_fd()),
        );
        if let Err(e) = announced {
            still_a_run(&session);
            return Err(e);
        }
        // Only the coordinator holds the write end now: if it dies, we read end-of-file.
        drop(orders_for_coordinator);
        self.park(Some(began), None).inspect_err(|e| {
            // Not parked: this process goes on as the run it was.
            still_a_run(&session);
            let _ = session.send(
                &Up::CheckpointFailed {
                    epoch: session.epoch,
                    pid: me,
                    errno: e.raw_os_error().unwrap_or(0),
                },
                None,
            );
        })
    }

    /// A sibling of this process parks as the checkpoint (see `sys::fork_sibling`),
    /// and this process goes on as the run.
    fn beside(self, orders_for_coordinator: OwnedFd, began: Stopwatch) -> Beside {
        let session = self.session;
        // Blocked across the clone: a Ctrl-C that reaches the new checkpoint before it
        // parks must wait in its signalfd, not kill it (or run the program's handler).
        let program_mask = parked_signals().block();
        let cloned = sys::fork_sibling();
        if !matches!(cloned, Ok(Fork::Child)) {
            program_mask.set_mask();
        }
        let sibling = match cloned {
            Ok(Fork::Parent(pid)) => pid,
            Ok(Fork::Child) => {
                // The checkpoint. Our parent is the run's; no parent-death signal
                // came with the clone, and none is wanted (see `in_place`).
                drop(orders_for_coordinator);
                match self.park(None, Some(program_mask)) {
                    Ok(resumed) => return Beside::Taken(resumed),
                    // Not parked: this copy leaves. The run announces it all the
                    // same; a resume from it goes to the checkpoint before it (see
                    // `Coordinator::resume`).
                    Err(_) => sys::exit_now(1),
                }
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EPERM | libc::ENOSYS)
                ) =>
            {
                return Beside::Refused(self, orders_for_coordinator, e)
            }
            Err(e) => return Beside::Failed(e),
        };
        let Parked {
            orders,
            elapsed,
            file,
            closing,
            ..
        } = self;
        // The sibling's end (it has closed its copy of ours).
        drop(orders);
        // Announced before this process says anything else: its next first accesses
        // name the new checkpoint.
        let announced = session.send(
            &Up::Checkpoint {
                epoch: session.epoch,
                pid: sibling,
                elapsed_ns: elapsed.as_nanos() as u64,
                file: file.clone(),
            },
            Some(orders_for_coordinator.as_raw_fd()),
        );
        // Closing our write end: if the announcement failed, the sibling reads
        // end-of-file at once and leaves.
        drop(orders_for_coordinator);
        if let Err(e) = announced {
            return Beside::Failed(e);
        }
        let cost = began.cost();
        say_taken(session.depth, &file, elapsed, cost);
        Beside::Taken(SessionState {
            checkpoint: sibling,
            spending: session.spending.after_checkpoint(
                elapsed,
                closing,
                cost.worked,
                sys::minor_faults(),
                sys::anonymous_pages().unwrap_or(0),
            ),
            depth: session.depth + 1,
            ..session
        })
    }

    /// Waits for orders, having forked the first run at once if `first_run` (taking
    /// a checkpoint in place does not stop the program: it goes on in the child).
    /// `blocked` is the program's signal mask if the parked signals are blocked
    /// already. Returns only in a run forked from here.
    fn park(
        self,
        first_run: Option<Stopwatch>,
        blocked: Option<SignalSet>,
    ) -> io::Result<SessionState> {
        let me = sys::getpid();
        let program_mask = blocked.unwrap_or_else(|| parked_signals().block());
        let sigchld = match SignalSet::of(&[libc::SIGCHLD]).signalfd() {
            Ok(fd) => fd,
            Err(e) => {
                program_mask.set_mask();
                return Err(e);
            }
        };
        // Before the first fork, so even what the first run spawns stays below us.
        let _ = sys::set_child_subreaper();
        let mut epoch = self.session.epoch;
        let mut run = 0;
        if let Some(began) = first_run {
            let forked = Stopwatch::start();
            match self.fork_run(epoch, &program_mask) {
                Ok(Fork::Parent(pid)) => run = pid,
                Ok(Fork::Child) => {
                    return Ok(self.into_run(sigchld, epoch, began.cost_in_child(forked)))
                }
                Err(e) => {
                    drop(sigchld);
                    program_mask.set_mask();
                    return Err(e);
                }
            }
            say_taken(self.session.depth, &self.file, self.elapsed, began.cost());
        }

        // What the interrupted call opened stays with the run going on. Nothing is
        // created here from now on, so the number stays free for the runs forked
        // later, which make the call again and close it first (harmlessly).
        if let Some(fd) = self.opened {
            sys::close(fd);
        }

        // Code and constants this process mapped while it was the run are given back
        // once parked for a moment (see `sys::release_file_pages`); not at once, since
        // the budgets may retire it soon and the run has work to do meanwhile.
        let mut idle_release = Some(PARKED_RELEASE_AFTER);
        loop {
            let timeout = idle_release.map_or(-1, |d| d.as_millis() as i32);
            let ready =
                sys::poll_readable(&[self.orders.as_raw_fd(), sigchld.as_raw_fd()], timeout)
                    .unwrap_or_else(|_| vec![false, false]);
            if !ready.contains(&true) {
                if idle_release.take().is_some() {
                    sys::release_file_pages();
                }
                continue;
            }
            if ready[1] {
                sys::read_signals(sigchld.as_raw_fd());
                while let Ok(Some((pid, status, peak_memory))) = sys::wait_any_with_peak(false) {
                    if pid == run {
                        let _ = self.session.send(
                            &Up::RunEnded {
                                epoch,
                                pid,
                                status,
                                peak_memory,
                            },
                            None,
                        );
                        run = 0;
                    }
                }
            }
            if ready[0] {
                let mut buf = [0u8; DOWN_LEN];
                match sys::read(self.orders.as_raw_fd(), &mut buf) {
                    Ok(DOWN_LEN) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // End of file: the coordinator is gone, and so is the session.
                    _ => {
                        end_descendants(me);
                        sys::exit_now(0);
                    }
                }
                let new_epoch = match Down::decode(&buf) {
                    Ok(Down::Resume { epoch }) => epoch,
                    Ok(Down::Retire) => sys::exit_now(0),
                    Err(_) => continue,
                };
                end_descendants(me);
                restore_terminal();
                epoch = new_epoch;
                // The fork is all there is to charge: made at once.
                let forked = Stopwatch::start();
                match self.fork_run(epoch, &program_mask) {
                    Ok(Fork::Parent(pid)) => run = pid,
                    Ok(Fork::Child) => {
                        return Ok(self.into_run(sigchld, epoch, forked.cost_in_child(forked)))
                    }
                    Err(e) => {
                        hook::reporter()
                            .error(&format!("cannot fork a run from the checkpoint: {e}"));
                        run = 0;
                    }
                }
            }
        }
    }

    /// Forks a run. In the child: the program's signal mask back, our descriptors
    /// closed, the file offsets of the checkpoint restored, and a parent-death signal
    /// so the run never outlives its checkpoint.
    fn fork_run(&self, epoch: u64, program_mask: &SignalSet) -> io::Result<Fork> {
        let me = sys::getpid();
        let fork = sys::fork()?;
        match fork {
            Fork::Child => {
                // The checkpoint's signalfd and order pipe are closed by the caller,
                // which owns them (closing them here as well would close whatever has
                // reused the numbers by then).
                program_mask.set_mask();
                let _ = sys::set_parent_death_signal(libc::SIGKILL);
                if sys::getppid() != me {
                    // The checkpoint died between fork and prctl.
                    sys::exit_now(1);
                }
                for &(fd, offset) in &self.offsets {
                    let _ = sys::lseek(fd, offset, libc::SEEK_SET);
                }
            }
            Fork::Parent(pid) => {
                let _ = self.session.send(
                    &Up::RunStarted {
                        epoch,
                        pid,
                        checkpoint: me,
                    },
                    None,
                );
            }
        }
        Ok(fork)
    }

    /// In a run just forked from here: the checkpoint's signalfd and order pipe are
    /// closed (dropped, once), and the run's state is what this checkpoint knew.
    fn into_run(self, sigchld: OwnedFd, epoch: u64, cost: Cost) -> SessionState {
        drop(sigchld);
        SessionState {
            up: self.session.up,
            up_inode: self.session.up_inode,
            epoch,
            checkpoint: sys::getppid(),
            // Time into the run restarts from where the checkpoint was.
            origin: Instant::now() - self.elapsed,
            spending: match self.session.depth {
                0 => self.session.spending.after_first_checkpoint(self.elapsed),
                _ => self.session.spending.after_checkpoint(
                    self.elapsed,
                    self.closing,
                    cost.worked,
                    sys::minor_faults(),
                    sys::anonymous_pages().unwrap_or(0),
                ),
            },
            depth: self.session.depth + 1,
        }
    }
}

/// Ends every process below `me` and reaps them. Walks the tree again after each
/// round of reaps: a killed parent's children are reparented to us (we are a subreaper),
/// and one may have forked between the walk and the kill.
pub(crate) fn end_descendants(me: Pid) {
    loop {
        let below = sys::descendants_of(me);
        for &pid in &below {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        // Every child that has ended is reaped before walking the tree again: killed
        // together, they end together, and a walk reads a file per process (reaping
        // one per walk made stopping a session of 400 checkpoints take 6 s).
        match sys::wait_any(!below.is_empty()) {
            Ok(Some(_)) => while let Ok(Some(_)) = sys::wait_any(false) {},
            Ok(None) if below.is_empty() => return,
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::black_box(0u64);
        }
    }

    // A stall (here a sleep: the thread off its CPU, as when the machine is busy) is
    // waited, not worked: the budget is not charged for it.
    #[test]
    fn a_stall_is_waited_not_worked() {
        let began = Stopwatch::start();
        std::thread::sleep(Duration::from_millis(40));
        let stalled = began.cost();
        assert!(stalled.waited >= Duration::from_millis(40));
        assert!(
            stalled.worked < Duration::from_millis(20),
            "{:?}",
            stalled.worked
        );
        spin(Duration::from_millis(30));
        let worked = began.cost().worked - stalled.worked;
        // A busy test machine may take the CPU away for part of the spin.
        assert!(worked > Duration::from_millis(5), "{worked:?}");
    }

    // In a forked child: the CPU time up to the fork, then the wall time from it (the
    // child cannot tell its parent's CPU time during the fork from a stall).
    #[test]
    fn a_child_is_charged_the_work_before_the_fork_and_the_time_since() {
        let began = Stopwatch::start();
        std::thread::sleep(Duration::from_millis(40));
        let forked = Stopwatch::start();
        std::thread::sleep(Duration::from_millis(30));
        let cost = began.cost_in_child(forked);
        assert!(cost.waited >= Duration::from_millis(70));
        assert!(
            cost.worked >= Duration::from_millis(30),
            "{:?}",
            cost.worked
        );
        assert!(cost.worked < Duration::from_millis(60), "{:?}", cost.worked);
    }
}
