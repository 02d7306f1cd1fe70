//! The coordinator: the original process, once the first checkpoint is taken.
//!
//! It keeps the pid the shell waits for, owns the session's only inotify instance
//! (one per session: the default limit is 128 instances per user), watches the
//! *directories* of tracked files (so rename-over saves are seen), and decides, from
//! what the runs tell it and what the disk holds, which checkpoint to resume.
//!
//! It runs inside the program's process image but never returns to the program: it
//! leaves with `_exit`, and every signal it cares about arrives through a signalfd.

use crate::checkpoint::{self, end_descendants, parked_signals};
use crate::config::Settings;
use crate::fingerprint::{Baseline, Fingerprint, Identity};
use crate::hook::{self, PathHashing};
use crate::protocol::{Down, Malformed, Up, MAX_UP_LEN};
use crate::report::{display_path, human, signal_name, Reporter};
use crate::sys::{self, Exit, InotifyEvent, Pid};
use crate::timeline::{Checkpoint, Resume, Timeline};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Watched on the directory of tracked files: what happens to the names in it (saves
/// by rename, delete and recreate, the directory itself going away).
///
/// Not the writes: a directory watched for IN_MODIFY costs every write to any file in
/// it an event made by the writer, and a program that writes beside its sources (a
/// log, a database, a compiler's output) pays it on each call: 200,000 unbuffered
/// writes took 1.8 times as long. Writes are watched on the tracked files instead.
const DIR_MASK: u32 = libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_CREATE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;
/// Watched on each tracked file. IN_MODIFY only marks a file as being written:
/// deciding before its IN_CLOSE_WRITE would read half a save.
const FILE_MASK: u32 = libc::IN_MODIFY | libc::IN_CLOSE_WRITE;
/// On a directory whose files cannot get their own watch (the watch limit).
const DIR_AND_WRITES_MASK: u32 = DIR_MASK | FILE_MASK;
const SETTLE_EVENTS: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_CREATE;
const DIR_GONE: u32 = libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED;

/// How long a file may stay "being written" (IN_MODIFY without IN_CLOSE_WRITE) before
/// its content is taken as it is: a writer that keeps a file open must not block us.
const MAX_WRITE_WAIT: Duration = Duration::from_secs(2);
/// How long a removed file may stay missing before that is taken as the change: an
/// editor that deletes and recreates (or renames the old file away first) writes the
/// new file within milliseconds, but a loaded machine may pause it between the two.
const MAX_GONE_WAIT: Duration = Duration::from_millis(500);
/// How often to look for a watched directory that was removed to come back.
const LOST_DIR_RETRY: Duration = Duration::from_millis(100);
/// How long a changed file waits for the resumed run to read it before its next change
/// is decided on anyway (a run that never gets there again, e.g. a server).
const AWAIT_LIMIT: Duration = Duration::from_secs(5);
/// See `serve`.
const MESSAGE_BATCH_PAUSE: Duration = Duration::from_millis(1);
/// After events that concerned no tracked file, how long the inotify descriptor is left
/// alone (see `serve`).
const UNTRACKED_EVENTS_PAUSE: Duration = Duration::from_millis(2);
/// First accesses wait in the ring while the run is reading files, until it has told
/// none for this long, doubled each time it is found still telling (see `ring_due`)...
const ACCESS_QUIET: Duration = Duration::from_millis(5);
/// ... or the oldest has waited this long (a run that reads files without a pause).
const ACCESS_MAX_WAIT: Duration = Duration::from_millis(250);
/// See `read_baselines`.
const BASELINE_QUIET: Duration = Duration::from_millis(20);
const BASELINE_MAX_WAIT: Duration = Duration::from_secs(2);
const BASELINE_SLICE: usize = 256;
/// Memory is given back once messages stopped coming for this long (see `tidy`).
const TIDY_QUIET: Duration = Duration::from_millis(100);
/// Memory the session may always hold beyond the run's peak, whatever the share.
const MEMORY_FLOOR: u64 = 32 << 20;
/// How often the memory budget is checked while a run goes on (servers never end).
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Time a run gets to end by itself on SIGTERM/SIGHUP before everything is killed.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// How long a resume waits for the old run's processes to be reaped (see
/// `end_branch`); a process stuck in the kernel may take longer.
const END_BRANCH_LIMIT: Duration = Duration::from_secs(2);

struct Run {
    pid: Pid,
    /// The checkpoint it was forked from: it dies with it, so that one stays.
    parent: Pid,
    started: Instant,
    /// Time into the run the checkpoint had reached: what this run did not redo.
    skipped: Duration,
}

struct Coordinator {
    settings: &'static Settings,
    report: Reporter,
    cwd: Option<PathBuf>,
    sock: OwnedFd,
    signals: OwnedFd,
    inotify: Option<OwnedFd>,
    epoch: u64,
    timeline: Timeline,
    /// Order pipe of every live checkpoint.
    orders: HashMap<Pid, OwnedFd>,
    dir_of_watch: HashMap<i32, PathBuf>,
    /// Tracked files with a watch of their own (several names for one file share it).
    files_of_watch: HashMap<i32, Vec<PathBuf>>,
    watch_of_file: HashMap<PathBuf, i32, PathHashing>,
    /// Directories watched for the writes to their files too (see `watch_file`).
    dirs_with_writes: HashSet<PathBuf>,
    /// Directories as runs named them, and where they really are.
    canonical_dirs: HashMap<PathBuf, PathBuf, PathHashing>,
    watch_of_dir: HashMap<PathBuf, i32, PathHashing>,
    /// Directories that were removed while watched, until they come back.
    lost_dirs: BTreeSet<PathBuf>,
    warned_watch_limit: bool,
    /// Files whose content the run read is known by identity only, with when they were
    /// reported: read once the runs pause (see `read_baselines`).
    unread: VecDeque<(PathBuf, Identity, Instant)>,
    /// First accesses told before their checkpoint was (see `take_messages`).
    early: Vec<Up>,
    /// The ring's write position when last looked at, and when it last moved.
    ring_seen: (u64, Instant),
    /// Since when first accesses wait in the ring (see `ring_due`).
    ring_waiting_since: Option<Instant>,
    /// How long the ring must have been quiet for them to be due (see `ring_due`).
    ring_quiet: Duration,
    /// When the last message arrived: a run that sends none is not busy reading files.
    last_message: Instant,
    /// Files with change events not yet decided on.
    pending: BTreeSet<PathBuf>,
    writing: HashSet<PathBuf>,
    /// Tracked files removed (or renamed away) and not back yet.
    gone: HashSet<PathBuf>,
    pending_since: Option<Instant>,
    last_event: Instant,
    /// The last events read concerned no tracked file: events are not read again
    /// before this (see `serve`).
    events_paused_until: Option<Instant>,
    /// No resume before this (FORKMON_IGNORE_DELAY), so a burst right after one waits.
    hold_until: Option<Instant>,
    /// Until then, changes to files the resumed run has yet to read wait for it.
    awaiting_until: Option<Instant>,
    next_memory_check: Instant,
    warned_memory: bool,
    run: Option<Run>,
    /// The run the last resume replaced, in case it had ended by itself meanwhile.
    replaced: Option<Run>,
    /// Every process that parked as a checkpoint this session.
    ever_checkpoints: HashSet<Pid>,
    /// What the next RunStarted skipped (set when a resume is ordered).
    next_skipped: Duration,
    runs_started: u64,
    /// Messages came since memory was last given back (see `tidy`).
    untidy: bool,
}

/// Becomes the coordinator, talking to the session's processes over `sock`.
pub(crate) fn run(sock: OwnedFd) -> ! {
    let Some(settings) = hook::settings() else {
        sys::exit_now(1)
    };
    let report = hook::reporter();
    // Already blocked since before the fork (see checkpoint::start_session).
    let signals = match parked_signals().signalfd() {
        Ok(fd) => fd,
        Err(e) => {
            report.error(&format!("cannot receive signals ({e}); stopping"));
            end_descendants(sys::getpid());
            sys::exit_now(1)
        }
    };
    let _ = sys::set_child_subreaper();
    let inotify = match sys::inotify_init() {
        Ok(fd) => Some(fd),
        Err(e) => {
            let hint = if e.raw_os_error() == Some(libc::EMFILE) {
                "; too many inotify instances: raise fs.inotify.max_user_instances \
                 (sudo sysctl fs.inotify.max_user_instances=1024)"
            } else {
                ""
            };
            report.error(&format!(
                "cannot watch files ({e}){hint}; changes will not be seen"
            ));
            None
        }
    };
    let mut coordinator = Coordinator {
        settings,
        report,
        cwd: std::env::current_dir().ok(),
        sock,
        signals,
        inotify,
        epoch: 0,
        timeline: Timeline::default(),
        orders: HashMap::new(),
        dir_of_watch: HashMap::new(),
        files_of_watch: HashMap::new(),
        watch_of_file: HashMap::default(),
        dirs_with_writes: HashSet::new(),
        canonical_dirs: HashMap::default(),
        watch_of_dir: HashMap::default(),
        lost_dirs: BTreeSet::new(),
        warned_watch_limit: false,
        unread: VecDeque::new(),
        early: Vec::new(),
        ring_seen: (0, Instant::now()),
        ring_waiting_since: None,
        ring_quiet: ACCESS_QUIET,
        last_message: Instant::now(),
        pending: BTreeSet::new(),
        writing: HashSet::new(),
        gone: HashSet::new(),
        pending_since: None,
        last_event: Instant::now(),
        events_paused_until: None,
        hold_until: None,
        awaiting_until: None,
        next_memory_check: Instant::now() + MEMORY_CHECK_EVERY,
        warned_memory: false,
        run: None,
        replaced: None,
        ever_checkpoints: HashSet::new(),
        next_skipped: Duration::ZERO,
        runs_started: 0,
        untidy: true,
    };
    coordinator.serve()
}

impl Coordinator {
    fn serve(&mut self) -> ! {
        let mut message = vec![0u8; MAX_UP_LEN];
        let mut events = Vec::new();
        let ring = checkpoint::ring();
        let mut busy = false;
        loop {
            let mut timeout = self.next_timeout();
            let ring_wait = ring.and_then(|r| self.ring_due(r).err());
            if let Some(wait) = ring_wait {
                // First accesses wait while the run reads files (see `ring_due`): look
                // again when they may be due, and let the run add more without waking
                // us (it wakes us only when we sleep).
                let wait = wait.as_micros().div_ceil(1000) as i32;
                if timeout < 0 || timeout > wait {
                    timeout = wait;
                }
            } else if busy {
                // Messages came: let the run add more for a moment before looking
                // again, rather than be woken for each (a run wakes us only when we
                // sleep). Nothing waits on us meanwhile.
                let pause = MESSAGE_BATCH_PAUSE.as_millis() as i32;
                if timeout < 0 || timeout > pause {
                    timeout = pause;
                }
            } else if ring.is_some_and(|r| !r.sleep()) {
                timeout = 0;
            }
            // A program writing a file beside the ones it reads (a log, a database)
            // makes an event per write, and a reader waiting on the descriptor makes
            // the writer wake it each time: a cross-CPU wake-up per write, which
            // doubled the time of a program writing 200,000 unbuffered lines. So after
            // events that concerned no tracked file, the descriptor is left alone for
            // a moment: the kernel merges repeated events meanwhile, and wakes nobody.
            // An edit made then waits at most that moment longer.
            let paused = self
                .events_paused_until
                .map(|until| until.saturating_duration_since(Instant::now()))
                .filter(|left| !left.is_zero());
            if paused.is_none() {
                self.events_paused_until = None;
            }
            let mut fds = vec![self.sock.as_raw_fd(), self.signals.as_raw_fd()];
            match (&self.inotify, paused) {
                (Some(inotify), None) => fds.push(inotify.as_raw_fd()),
                (_, Some(left)) => {
                    let left = left.as_micros().div_ceil(1000) as i32;
                    if timeout < 0 || timeout > left {
                        timeout = left;
                    }
                }
                (None, None) => {}
            }
            let ready = sys::poll_readable(&fds, timeout).unwrap_or_default();
            if let Some(ring) = ring {
                ring.awake();
            }
            if ready.get(1) == Some(&true) {
                for sig in sys::read_signals(self.signals.as_raw_fd()) {
                    if sig == libc::SIGCHLD {
                        self.reap();
                    } else if matches!(
                        sig,
                        libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT
                    ) {
                        self.stop(sig);
                    }
                }
            }
            let ring_now = ring.filter(|r| self.ring_due(r).is_ok());
            busy = self.take_messages(ring_now, ring, &mut message) > 0;
            if ready.get(2) == Some(&true) {
                if let Some(inotify) = &self.inotify {
                    events.clear();
                    let _ = sys::inotify_read(inotify.as_raw_fd(), &mut events);
                    let batch = std::mem::take(&mut events);
                    let mut concerned = false;
                    for event in &batch {
                        concerned |= self.on_event(event);
                    }
                    if !batch.is_empty() && !concerned {
                        self.events_paused_until = Some(Instant::now() + UNTRACKED_EVENTS_PAUSE);
                    }
                    events = batch;
                }
            }
            self.retry_lost_dirs();
            self.read_baselines();
            self.tidy();
            if self.settle_due() {
                self.decide();
            }
            if Instant::now() >= self.next_memory_check {
                self.next_memory_check = Instant::now() + MEMORY_CHECK_EVERY;
                if let Some(peak) = self.run.as_ref().and_then(|r| sys::peak_memory_of(r.pid)) {
                    self.enforce_memory(peak);
                }
            }
        }
    }

    // ------------------------------------------------------------ messages

    /// Handles what runs and checkpoints said: messages in the ring (first accesses)
    /// and on the socket (the rest). Returns how many.
    ///
    /// Each process says things in order, but the ring and the socket are two ways: a
    /// ring message may name a checkpoint announced on the socket just before, and a
    /// run's end is told on the socket after its last ring message. So the socket's
    /// messages go first but for run ends, which wait until the ring has been read
    /// again; a first access whose checkpoint is still unknown waits for the next
    /// round.
    ///
    /// `ring_now` is the ring if its messages are due (see `ring_due`), `ring` the
    /// ring: a run's end is handled after everything it told, due or not.
    fn take_messages(
        &mut self,
        ring_now: Option<&sys::Ring>,
        ring: Option<&sys::Ring>,
        buf: &mut [u8],
    ) -> usize {
        let mut ring_messages = Vec::new();
        let take_ring = |ring: Option<&sys::Ring>, into: &mut Vec<Result<Up, Malformed>>| {
            if let Some(ring) = ring {
                ring.take(|bytes| into.push(Up::decode(bytes)));
            }
        };
        take_ring(ring_now, &mut ring_messages);
        let mut handled = ring_messages.len();
        let mut ends = Vec::new();
        loop {
            match sys::recv_message(self.sock.as_raw_fd(), buf) {
                Ok(Some((len, fd))) => {
                    handled += 1;
                    match Up::decode(&buf[..len]) {
                        Ok(end @ Up::RunEnded { .. }) => ends.push(Ok(end)),
                        message => self.handle(message, fd),
                    }
                }
                Ok(None) => self.all_gone(),
                Err(_) => break,
            }
        }
        let early = std::mem::take(&mut self.early);
        for message in early.into_iter().map(Ok).chain(ring_messages) {
            self.handle(message, None);
        }
        if !ends.is_empty() {
            let mut last = Vec::new();
            take_ring(ring, &mut last);
            handled += last.len();
            for message in last.into_iter().chain(ends) {
                self.handle(message, None);
            }
        }
        if handled > 0 {
            self.last_message = Instant::now();
            self.untidy = true;
        }
        if ring.is_some_and(|r| r.unread() == 0) {
            self.ring_waiting_since = None;
            self.ring_quiet = ACCESS_QUIET;
        }
        handled
    }

    /// Are the first accesses waiting in the ring due? If not, how long until they may
    /// be. They wait while the run is reading files: handling one (resolving the path,
    /// adding watches, comparing what the file holds with what the run saw) costs
    /// system calls and CPU time the run, busy loading, would compete with on a small
    /// machine. A file edited meanwhile is found changed when its access is handled,
    /// by the comparison, so waiting loses no edit; it only delays noticing one made
    /// while the run was loading. Nothing waits when a change is being decided on, or
    /// when no run is alive.
    fn ring_due(&mut self, ring: &sys::Ring) -> Result<(), Duration> {
        let now = Instant::now();
        let written = ring.written();
        if written != self.ring_seen.0 {
            // Still telling since we last looked: the run is loading, so look again
            // later each time. Looking costs nothing on two CPUs, but on one it takes
            // the CPU from the run: every 5 ms, that was 13 times in a 65 ms Lua run.
            if self.ring_waiting_since.is_some() {
                self.ring_quiet = (self.ring_quiet * 2).min(ACCESS_MAX_WAIT);
            }
            self.ring_seen = (written, now);
        }
        if ring.unread() == 0 {
            return Ok(());
        }
        let since = *self.ring_waiting_since.get_or_insert(now);
        let due = (self.ring_seen.1 + self.ring_quiet).min(since + ACCESS_MAX_WAIT);
        if now >= due
            || ring.unread() > sys::Ring::TAKE_BEYOND
            || self.run.is_none()
            || self.deadline().is_some()
        {
            return Ok(());
        }
        Err(due - now)
    }

    fn handle(&mut self, message: Result<Up, Malformed>, fd: Option<OwnedFd>) {
        match message {
            Ok(up) => self.on_message(up, fd),
            Err(_) => self
                .report
                .error("malformed message from a session process"),
        }
    }

    fn on_message(&mut self, up: Up, fd: Option<OwnedFd>) {
        match up {
            Up::Checkpoint {
                epoch,
                pid,
                elapsed_ns,
                file,
            } if epoch == self.epoch => {
                let Some(fd) = fd else { return };
                self.orders.insert(pid, fd);
                self.ever_checkpoints.insert(pid);
                self.timeline.checkpoint_taken(Checkpoint {
                    pid,
                    file,
                    elapsed: Duration::from_nanos(elapsed_ns),
                });
                self.enforce_checkpoint_count();
            }
            Up::Access {
                epoch,
                checkpoint,
                identity,
                fingerprint,
                file,
                ..
            } if epoch == self.epoch => {
                let announced = self.ever_checkpoints.contains(&checkpoint);
                if self.timeline.position(checkpoint).is_none() && !announced {
                    // Its checkpoint's announcement is still on its way (see
                    // `take_messages`); a later epoch drops it.
                    self.early.push(Up::Access {
                        epoch,
                        checkpoint,
                        elapsed_ns: 0,
                        identity,
                        fingerprint,
                        file,
                    });
                    return;
                }
                self.accessed(&file, checkpoint, identity, fingerprint)
            }
            // A run that parked in place (see `checkpoint::take`) is no run any more,
            // and its checkpoint may tell of it after it did.
            Up::RunStarted {
                epoch,
                pid,
                checkpoint,
            } if epoch == self.epoch && !self.ever_checkpoints.contains(&pid) => {
                self.run_started(pid, checkpoint)
            }
            Up::RunEnded {
                epoch,
                pid,
                status,
                peak_memory,
            } => {
                // A retired checkpoint was a run once, and its parent still takes it for
                // one when reaping it: that is no run ending.
                if self.ever_checkpoints.contains(&pid) {
                    return;
                }
                if epoch + 1 == self.epoch {
                    // The run a resume replaced had already ended by itself: its end
                    // crossed the resume order. Say how it ended all the same.
                    if let Some(run) = self.replaced.take_if(|r| r.pid == pid) {
                        self.report_run_end(&run, Exit::from_wait_status(status));
                    }
                    return;
                }
                let Some(run) = self.run.take_if(|r| r.pid == pid && epoch == self.epoch) else {
                    return;
                };
                self.restore_terminal();
                self.timeline.stop_awaiting();
                self.report_run_end(&run, Exit::from_wait_status(status));
                self.enforce_memory(peak_memory);
            }
            Up::CheckpointFailed { epoch, pid, errno } if epoch == self.epoch => {
                // It goes on as the run it was.
                self.ever_checkpoints.remove(&pid);
                self.orders.remove(&pid);
                self.timeline.checkpoint_lost(pid);
                self.report.warn(&format!(
                    "a checkpoint could not fork its run ({}); the program carries on without it",
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
            // From a branch a resume has thrown away.
            _ => {}
        }
    }

    /// A run's first access to `named` (absolute, as the program named it).
    fn accessed(
        &mut self,
        named: &Path,
        checkpoint: Pid,
        identity: Identity,
        fingerprint: Fingerprint,
    ) {
        let file = self.canonical(named);
        let known = self.timeline.is_tracked(&file);
        // Watch first, then look: an edit from now on is an event, an earlier one is
        // seen in the comparison below.
        let dir_newly_watched = file.parent().is_some_and(|dir| self.watch(dir));
        let file_newly_watched = !self.watch_of_file.contains_key(&file) && self.watch_file(&file);
        let newly_watched = dir_newly_watched || file_newly_watched;
        // A file tracked in a directory watched already has its edits told by events:
        // the comparison below must not act on them instead, since content may change
        // a moment before its event is queued (a writer paused between its truncation
        // and its event), and what it has written so far is no save yet.
        let events_tell = known && !newly_watched && self.watched(&file);
        let (baseline, changed) = match fingerprint {
            // The run left the reading to us. Not now: the run is likely busy reading
            // more files, and would wait on the disk and the other CPU with us. Until
            // then the identity stands for the content (see fingerprint.rs).
            Fingerprint::Unknown => {
                self.unread
                    .push_back((file.clone(), identity, Instant::now()));
                let changed = Baseline::Unread(identity).differs_from(&file);
                (Baseline::Unread(identity), changed)
            }
            read => (Baseline::Read(read), Fingerprint::of_path(&file) != read),
        };
        if !self
            .timeline
            .accessed(file.clone(), checkpoint, self.epoch, baseline)
        {
            return;
        }
        self.timeline
            .set_name_hash(&file, sys::path_hash(named.as_os_str().as_bytes()));
        if changed && !events_tell {
            self.mark_pending(file.clone());
        }
        if !known {
            self.report
                .detail(|| format!("watching {}", self.show(&file)));
        }
    }

    /// Reads the files known by identity only, once no message came for a moment (the
    /// run is not loading files), or once they waited too long (a run that never
    /// pauses). Until read, a save of the same content (or a `touch`) counts as a change.
    fn read_baselines(&mut self) {
        let Some(&(_, _, oldest)) = self.unread.front() else {
            return;
        };
        let now = Instant::now();
        if now < self.last_activity() + BASELINE_QUIET && now < oldest + BASELINE_MAX_WAIT {
            return;
        }
        // In slices, so that events and messages are not kept waiting.
        for _ in 0..BASELINE_SLICE {
            let Some((file, seen, _)) = self.unread.pop_front() else {
                return;
            };
            if self.timeline.baseline(&file) != Some(Baseline::Unread(seen)) {
                continue;
            }
            match Fingerprint::of_path_as(&file, &seen) {
                // Written since the run looked at it: its events tell when the write
                // is done (see `accessed`), unless there are none.
                Fingerprint::Unknown if !self.watched(&file) => self.mark_pending(file),
                Fingerprint::Unknown => {}
                read => self.timeline.baseline_read(&file, &seen, read),
            }
        }
    }

    fn tidy_due(&self) -> Instant {
        self.last_activity() + TIDY_QUIET
    }

    /// When a run last told anything: a message handled, or the ring written to. First
    /// accesses wait in the ring while a run loads files (see `ring_due`), and are
    /// handled in batches as far apart as `ACCESS_MAX_WAIT`: the time since the last
    /// batch says nothing of whether the run is still loading. Reading files (or
    /// `/proc/self/smaps`) then would compete with it for the disk and, on one CPU,
    /// for the CPU itself (17 to 20 ms of a 550 ms Lua run that loads 1000 modules).
    fn last_activity(&self) -> Instant {
        self.last_message.max(self.ring_seen.1)
    }

    /// Gives back the memory the coordinator holds but does not use, once the session
    /// has been quiet for a moment after messages (a run ended, or paused) and every
    /// file has been read. This process started as the program: it has the pages the
    /// program's start mapped, and those its own bursts of work left behind; every page
    /// only it maps counts whole in the session's memory.
    fn tidy(&mut self) {
        if !self.untidy || Instant::now() < self.tidy_due() || !self.unread.is_empty() {
            return;
        }
        self.untidy = false;
        sys::release_file_pages();
        sys::trim_heap();
    }

    /// Where the file really is: symlinks resolved, so that two names for it are one
    /// dependency and its own directory is watched. Directories are resolved once.
    fn canonical(&mut self, file: &Path) -> PathBuf {
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            return file.to_path_buf();
        };
        let real_dir = match self.canonical_dirs.get(dir) {
            Some(real) => real.clone(),
            None => match std::fs::canonicalize(dir) {
                Ok(real) => {
                    self.canonical_dirs.insert(dir.to_path_buf(), real.clone());
                    real
                }
                Err(_) => dir.to_path_buf(),
            },
        };
        let path = real_dir.join(name);
        let is_link = CString::new(path.as_os_str().as_bytes())
            .ok()
            .and_then(|c| sys::lstat(&c).ok())
            .is_some_and(|s| s.symlink);
        if is_link {
            std::fs::canonicalize(&path).unwrap_or(path)
        } else {
            path
        }
    }

    fn run_started(&mut self, pid: Pid, parent: Pid) {
        match &mut self.run {
            // A checkpoint taken in place: the same run goes on in its forked child.
            Some(run) => {
                run.pid = pid;
                run.parent = parent;
            }
            None => {
                // The first run started with the program, before any checkpoint.
                let started = if self.runs_started == 0 {
                    hook::start_time()
                } else {
                    Instant::now()
                };
                self.runs_started += 1;
                self.run = Some(Run {
                    pid,
                    parent,
                    started,
                    skipped: self.next_skipped,
                });
            }
        }
    }

    fn report_run_end(&self, run: &Run, exit: Exit) {
        let how = match exit {
            Exit::Code(code) => format!("exited with status {code}"),
            Exit::Signal(sig) => format!("was killed by {}", signal_name(sig)),
        };
        let resumed = if run.skipped > Duration::ZERO {
            format!(" (resumed {} in)", human(run.skipped))
        } else {
            String::new()
        };
        let files = self.timeline.file_count();
        self.report.info(&format!(
            "run {how} after {}{resumed}; watching {files} file{} for changes (Ctrl-C to stop)",
            human(run.started.elapsed()),
            if files == 1 { "" } else { "s" },
        ));
    }

    // ------------------------------------------------------------ watching

    /// Is the directory of `file` watched, so that its edits come as events?
    fn watched(&self, file: &Path) -> bool {
        file.parent().is_some_and(|dir| {
            self.watch_of_dir.contains_key(dir)
                && (self.watch_of_file.contains_key(file) || self.dirs_with_writes.contains(dir))
        })
    }

    /// Watches `dir`; true if the watch is new.
    fn watch(&mut self, dir: &Path) -> bool {
        if self.watch_of_dir.contains_key(dir) {
            return false;
        }
        let Some(inotify) = &self.inotify else {
            return false;
        };
        let fd = inotify.as_raw_fd();
        let mut added = sys::inotify_add_watch(fd, dir, DIR_MASK);
        // Out of watches: directories come first, so one whose files have watches of
        // their own gets its writes watched on it instead, which frees those.
        if added
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
            && self.free_file_watches()
        {
            added = sys::inotify_add_watch(fd, dir, DIR_MASK);
        }
        match added {
            Ok(wd) => {
                self.watch_of_dir.insert(dir.to_path_buf(), wd);
                self.dir_of_watch.insert(wd, dir.to_path_buf());
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if !std::mem::replace(&mut self.warned_watch_limit, true) {
                    self.report.error(&format!(
                        "cannot watch {}: the inotify watch limit is reached; raise it with \
                         `sudo sysctl fs.inotify.max_user_watches=524288` (see inotify(7)); \
                         files in directories already watched still work",
                        self.show(dir)
                    ));
                }
                false
            }
            Err(_) => {
                // Gone already (or unreadable): look for it to come back.
                self.lost_dirs.insert(dir.to_path_buf());
                false
            }
        }
    }

    /// Watches the writes to `file` (its inode: a file saved by rename gets a new watch
    /// when its name comes back, see `on_event`); true if it was not watched so.
    fn watch_file(&mut self, file: &Path) -> bool {
        let (Some(inotify), Some(dir)) = (&self.inotify, file.parent()) else {
            return false;
        };
        let fd = inotify.as_raw_fd();
        // A file of a directory that could not be watched is not watched at all (see
        // `watched`): directories come first for the watches left.
        if !self.watch_of_dir.contains_key(dir) || self.dirs_with_writes.contains(dir) {
            return false;
        }
        match sys::inotify_add_watch(fd, file, FILE_MASK) {
            Ok(wd) => {
                let old = self.watch_of_file.insert(file.to_path_buf(), wd);
                if old == Some(wd) {
                    return false;
                }
                if let Some(old) = old {
                    self.forget_file_watch(old, file);
                }
                self.files_of_watch
                    .entry(wd)
                    .or_default()
                    .push(file.to_path_buf());
                true
            }
            // Out of watches: this directory's writes are watched on it instead.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => self.watch_writes_on(dir),
            // Gone already: its name coming back is an event on the directory.
            Err(_) => false,
        }
    }

    /// Watches the writes to every file in `dir` on the directory's own watch (which
    /// takes no new one), and drops the watches its files had; true if done.
    fn watch_writes_on(&mut self, dir: &Path) -> bool {
        let (Some(inotify), Some(&dir_wd)) = (&self.inotify, self.watch_of_dir.get(dir)) else {
            return false;
        };
        let widened = sys::inotify_add_watch(inotify.as_raw_fd(), dir, DIR_AND_WRITES_MASK);
        if !widened.is_ok_and(|wd| wd == dir_wd) {
            return false;
        }
        self.dirs_with_writes.insert(dir.to_path_buf());
        let own: Vec<(PathBuf, i32)> = self
            .watch_of_file
            .iter()
            .filter(|(file, _)| file.parent() == Some(dir))
            .map(|(file, &wd)| (file.clone(), wd))
            .collect();
        for (file, wd) in own {
            self.watch_of_file.remove(&file);
            self.forget_file_watch(wd, &file);
        }
        true
    }

    /// Frees watches for directories: the directory whose files hold the most watches
    /// of their own has its writes watched on it instead. False if none has any.
    fn free_file_watches(&mut self) -> bool {
        let mut per_dir: HashMap<&Path, usize> = HashMap::new();
        for file in self.watch_of_file.keys() {
            if let Some(dir) = file.parent() {
                *per_dir.entry(dir).or_default() += 1;
            }
        }
        let Some(dir) = per_dir
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .map(|(dir, _)| dir.to_path_buf())
        else {
            return false;
        };
        self.watch_writes_on(&dir)
    }

    /// `file` no longer goes by watch `wd` (its name now holds another file); the
    /// watch goes when no tracked name uses it.
    fn forget_file_watch(&mut self, wd: i32, file: &Path) {
        let Some(files) = self.files_of_watch.get_mut(&wd) else {
            return;
        };
        files.retain(|f| f != file);
        if files.is_empty() {
            self.files_of_watch.remove(&wd);
            if let Some(inotify) = &self.inotify {
                sys::inotify_rm_watch(inotify.as_raw_fd(), wd);
            }
        }
    }

    /// Handles one event; false if it concerned no tracked file nor a watch.
    fn on_event(&mut self, event: &InotifyEvent) -> bool {
        if event.mask & libc::IN_Q_OVERFLOW != 0 {
            // Events were lost: check every tracked file.
            let all: Vec<PathBuf> = self
                .watch_of_dir
                .keys()
                .flat_map(|d| self.timeline.files_in(d).cloned().collect::<Vec<_>>())
                .collect();
            for file in all {
                self.mark_pending(file);
            }
            return true;
        }
        if let Some(files) = self.files_of_watch.get(&event.wd) {
            if event.mask & libc::IN_IGNORED != 0 {
                // The file is gone (or its watch was removed).
                let files = self.files_of_watch.remove(&event.wd).unwrap_or_default();
                for file in files {
                    if self.watch_of_file.get(&file) == Some(&event.wd) {
                        self.watch_of_file.remove(&file);
                    }
                }
                return false;
            }
            for file in files.clone() {
                self.on_file_event(file, event.mask);
            }
            return true;
        }
        let Some(dir) = self.dir_of_watch.get(&event.wd).cloned() else {
            return false;
        };
        if event.mask & DIR_GONE != 0 {
            self.dir_of_watch.remove(&event.wd);
            self.watch_of_dir.remove(&dir);
            self.dirs_with_writes.remove(&dir);
            self.lost_dirs.insert(dir.clone());
            let files: Vec<PathBuf> = self.timeline.files_in(&dir).cloned().collect();
            for file in files {
                self.mark_pending(file);
            }
            return true;
        }
        let path = dir.join(OsStr::from_bytes(&event.name));
        if !self.timeline.is_tracked(&path) {
            return false;
        }
        if event.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
            // A new file under the name: watch its writes before looking at it below.
            self.watch_file(&path);
        }
        self.on_file_event(path, event.mask);
        true
    }

    /// An event for the tracked file `path`, from its directory's watch or its own.
    fn on_file_event(&mut self, path: PathBuf, mask: u32) {
        if mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
            self.gone.insert(path.clone());
            self.writing.remove(&path);
        }
        if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
            self.gone.remove(&path);
        }
        // A file just created by open(O_CREAT) is empty until its writer is done.
        if mask & libc::IN_MODIFY != 0
            || (mask & libc::IN_CREATE != 0 && sys::is_empty_regular_file(&path))
        {
            self.writing.insert(path.clone());
        }
        if mask & libc::IN_CLOSE_WRITE != 0 {
            self.writing.remove(&path);
        }
        if mask & SETTLE_EVENTS != 0 {
            self.mark_pending(path);
        }
    }

    fn mark_pending(&mut self, path: PathBuf) {
        self.pending.insert(path);
        self.last_event = Instant::now();
        self.pending_since.get_or_insert(self.last_event);
    }

    /// A removed directory that exists again is watched again, and its files are
    /// compared (the whole directory may have been replaced, as `git checkout` does).
    fn retry_lost_dirs(&mut self) {
        if self.lost_dirs.is_empty() {
            return;
        }
        for dir in std::mem::take(&mut self.lost_dirs) {
            if self.watch(&dir) {
                let files: Vec<PathBuf> = self.timeline.files_in(&dir).cloned().collect();
                for file in files {
                    self.watch_file(&file);
                    self.mark_pending(file);
                }
            }
        }
    }

    // ------------------------------------------------------------ deciding

    /// Is `path` changed, and about to be read by the run a resume just started? Its
    /// change waits for that read (or the run's end), so a save the new run already
    /// reads is not acted on a second time.
    fn awaiting(&self, path: &Path) -> bool {
        self.awaiting_until
            .is_some_and(|until| Instant::now() < until)
            && self.timeline.is_awaiting(path)
    }

    fn deadline(&self) -> Option<Instant> {
        self.pending_since?;
        let mut deadline = self.last_event + self.settings.settle;
        if self.pending.iter().all(|p| self.awaiting(p)) {
            deadline = deadline.max(self.awaiting_until?);
        }
        if let Some(hold) = self.hold_until {
            deadline = deadline.max(hold);
        }
        Some(deadline)
    }

    fn next_timeout(&self) -> i32 {
        let mut timeout: Option<Duration> = self
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        if !self.lost_dirs.is_empty() {
            timeout = Some(timeout.map_or(LOST_DIR_RETRY, |t| t.min(LOST_DIR_RETRY)));
        }
        if let Some(&(_, _, oldest)) = self.unread.front() {
            let due = (self.last_activity() + BASELINE_QUIET).min(oldest + BASELINE_MAX_WAIT);
            let wait = due.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        }
        if self.untidy {
            let wait = self.tidy_due().saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        }
        if self.run.is_some() {
            let check = self
                .next_memory_check
                .saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(check, |t| t.min(check)));
        }
        match timeout {
            // Round up: waking early would only spin.
            Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
            None => -1,
        }
    }

    fn settle_due(&mut self) -> bool {
        let Some(deadline) = self.deadline() else {
            return false;
        };
        let now = Instant::now();
        if now < deadline {
            return false;
        }
        let waited = self.pending_since.map_or(Duration::ZERO, |s| now - s);
        let still_writing = self.pending.iter().any(|p| self.writing.contains(p));
        let still_gone = self.pending.iter().any(|p| self.gone.contains(p));
        if (still_writing && waited < MAX_WRITE_WAIT) || (still_gone && waited < MAX_GONE_WAIT) {
            // Half-written, or removed with its new version yet to come: wait for
            // IN_CLOSE_WRITE or its return (the deadline moves with each event).
            self.last_event = now;
            return false;
        }
        true
    }

    fn decide(&mut self) {
        if self
            .awaiting_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.awaiting_until = None;
            self.timeline.stop_awaiting();
        }
        let (waiting, candidates): (BTreeSet<PathBuf>, BTreeSet<PathBuf>) =
            std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|p| self.awaiting(p));
        if candidates.is_empty() {
            self.pending = waiting;
            return;
        }
        self.pending_since = (!waiting.is_empty()).then(Instant::now);
        self.pending = waiting;
        for path in &candidates {
            self.writing.remove(path);
            self.gone.remove(path);
        }
        let names: Vec<String> = candidates.iter().map(|p| self.show(p)).collect();
        match self
            .timeline
            .decide(candidates, |path, baseline| baseline.differs_from(path))
        {
            Some(resume) => self.resume(resume),
            None => self
                .report
                .detail(|| format!("{}: content unchanged, nothing to do", names.join(", "))),
        }
    }

    /// Ends the run and everything after `resume.checkpoint`, and orders that
    /// checkpoint to fork a fresh run.
    fn resume(&mut self, resume: Resume) {
        let Resume {
            mut index,
            mut checkpoint,
            changed,
        } = resume;
        // A checkpoint that died (killed from outside, or one that could not park)
        // hands its files to the one before it, which also precedes their first
        // access: checked before the run is ended for it.
        while index > 0 && !sys::running(checkpoint.pid) {
            self.orders.remove(&checkpoint.pid);
            self.timeline.checkpoint_lost(checkpoint.pid);
            self.report.warn(&format!(
                "checkpoint {} is gone; resuming from the one before it",
                index + 1
            ));
            index -= 1;
            checkpoint = self.timeline.checkpoints()[index].clone();
        }
        let now: Vec<(PathBuf, Fingerprint)> = changed
            .iter()
            .map(|p| (p.clone(), Fingerprint::of_path(p)))
            .collect();
        self.epoch += 1;
        for gone in self.timeline.resumed(index, &now) {
            // Closing its order pipe also tells a later checkpoint to end its subtree.
            self.orders.remove(&gone);
        }
        // The run to come takes a checkpoint right before these, whatever its budget:
        // a file just edited is the likeliest to be edited again.
        if let Some(ring) = checkpoint::ring() {
            let hot: Vec<u64> = changed.iter().map(|p| self.timeline.name_hash(p)).collect();
            ring.set_hot(&hot);
        }
        // Whether the run ended by itself before the resume (then its end is still
        // worth reporting), or is ended now, by us.
        let run_ended = self.run.as_ref().is_some_and(|r| !sys::running(r.pid));
        self.end_branch();
        let order = Down::Resume { epoch: self.epoch }.encode();
        let sent = self
            .orders
            .get(&checkpoint.pid)
            .is_some_and(|fd| sys::write_all(fd.as_raw_fd(), &order).is_ok());
        if !sent {
            self.orders.remove(&checkpoint.pid);
            self.timeline.checkpoint_lost(checkpoint.pid);
            self.report.error(&format!(
                "checkpoint {} is gone; cannot resume from it (restart forkhook to start over)",
                index + 1
            ));
            return;
        }
        self.replaced = self.run.take().filter(|_| run_ended);
        self.next_skipped = checkpoint.elapsed;
        self.awaiting_until = Some(Instant::now() + AWAIT_LIMIT);
        if self.settings.hold_after_resume > Duration::ZERO {
            self.hold_until = Some(Instant::now() + self.settings.hold_after_resume);
        }
        let names: Vec<String> = changed.iter().map(|p| self.show(p)).collect();
        let before = self.show(&checkpoint.file);
        let skip = if checkpoint.elapsed > Duration::ZERO {
            format!(", skipping {}", human(checkpoint.elapsed))
        } else {
            String::new()
        };
        self.report.info(&format!(
            "{} changed: resuming from checkpoint {} (before {before}){skip}",
            names.join(", "),
            index + 1,
        ));
    }

    /// Ends every process of the session but us and the checkpoints the timeline
    /// keeps: the run, what it started, and the checkpoints after the one resumed
    /// from. Those are not all below that checkpoint (a run's checkpoints are its
    /// siblings: see `checkpoint`), but all are below the first one, which stays.
    /// Returns once they are gone (their parents reap them at once), so that nothing
    /// of the old run overlaps the new one.
    fn end_branch(&mut self) {
        let checkpoints = self.timeline.checkpoints();
        let Some(first) = checkpoints.first().map(|c| c.pid) else {
            return;
        };
        let kept: HashSet<Pid> = checkpoints.iter().map(|c| c.pid).collect();
        let deadline = Instant::now() + END_BRANCH_LIMIT;
        loop {
            let doomed: Vec<Pid> = sys::descendants_of(first)
                .into_iter()
                .filter(|p| !kept.contains(p))
                .collect();
            if doomed.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                self.report.warn(&format!(
                    "{} processes of the old run are still there after {}; resuming anyway",
                    doomed.len(),
                    human(END_BRANCH_LIMIT)
                ));
                return;
            }
            for &pid in &doomed {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Keeps at most FORKHOOK_MAX_CHECKPOINTS alive, retiring those that add least.
    fn enforce_checkpoint_count(&mut self) {
        let max = self.settings.budget.max_checkpoints.max(2);
        while self.timeline.checkpoints().len() > max {
            let Some(index) = self
                .timeline
                .least_needed(self.run.as_ref().map(|r| r.parent))
            else {
                return;
            };
            self.retire(index);
        }
    }

    /// The memory budget: every checkpoint shares its pages with the run until one of
    /// them writes to a page, which then exists twice. The session's processes may hold
    /// (1 + FORKHOOK_MEMORY_SHARE) × the run's peak resident memory, counted
    /// proportionally (PSS); past that, the checkpoint whose own private pages are the
    /// largest is retired.
    fn enforce_memory(&mut self, run_peak: u64) {
        if run_peak == 0 {
            return;
        }
        // A small program's checkpoints cost little whatever the ratio: the share only
        // binds past a floor, so a 3 MiB script keeps its resume points.
        let limit = ((run_peak as f64 * (1.0 + self.settings.budget.memory_share)) as u64)
            .max(run_peak + MEMORY_FLOOR);
        let me = sys::getpid();
        // Measured once. Retiring a checkpoint frees exactly its private pages (what it
        // shares stays with the others, whose PSS grows by as much as its own shrinks),
        // so the total after each retirement is known without reading every process
        // again: that made the coordinator deaf for seconds with hundreds of
        // checkpoints (6 s before it heard a Ctrl-C, with 400).
        let mut total: u64 = std::iter::once(me)
            .chain(sys::descendants_of(me))
            .filter_map(sys::memory_of)
            .map(|m| m.pss)
            .sum();
        if total <= limit {
            return;
        }
        // The first checkpoint (the program's start) always stays; the run's parent too
        // while the run lives (it dies with it). The others go largest first.
        let parent = self.run.as_ref().map(|r| r.parent);
        let mut candidates: Vec<(u64, Pid)> = self.timeline.checkpoints()[1..]
            .iter()
            .filter(|c| Some(c.pid) != parent)
            .filter_map(|c| Some((sys::memory_of(c.pid)?.private, c.pid)))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (private, pid) in candidates {
            if total <= limit {
                return;
            }
            let index = self
                .timeline
                .checkpoints()
                .iter()
                .position(|c| c.pid == pid);
            if let Some(index) = index {
                self.retire(index);
                total = total.saturating_sub(private);
            }
        }
        if total > limit && !std::mem::replace(&mut self.warned_memory, true) {
            self.report.warn(&format!(
                "the session holds {} MiB, over its budget of {} MiB, with no checkpoint \
                 left to retire (FORKHOOK_MEMORY_SHARE)",
                total >> 20,
                limit >> 20
            ));
        }
    }

    /// Lets checkpoint `index` go: its files resume from the one before it.
    fn retire(&mut self, index: usize) {
        let checkpoint = self.timeline.checkpoints()[index].clone();
        if let Some(fd) = self.orders.remove(&checkpoint.pid) {
            let _ = sys::write_all(fd.as_raw_fd(), &Down::Retire.encode());
        }
        self.timeline.checkpoint_lost(checkpoint.pid);
        self.report.detail(|| {
            format!(
            "retired the checkpoint before {} ({} in): a change to it resumes from the one before",
            self.show(&checkpoint.file),
            human(checkpoint.elapsed)
        )
        });
    }

    // ------------------------------------------------------------ processes

    fn reap(&mut self) {
        while let Ok(Some((pid, _))) = sys::wait_any(false) {
            // The oldest checkpoint is our child; if it died, so did its order pipe.
            if self.orders.remove(&pid).is_some() {
                let dropped = self.timeline.checkpoint_lost(pid);
                if dropped > 0 {
                    self.report.warn(&format!(
                        "checkpoint process {pid} died; {dropped} files can no longer be resumed"
                    ));
                }
            }
        }
    }

    /// Every process that could send us a message is gone: nothing can run again.
    fn all_gone(&mut self) -> ! {
        self.report
            .error("every checkpoint of the session is gone; stopping");
        end_descendants(sys::getpid());
        self.restore_terminal();
        sys::exit_now(1)
    }

    /// Ctrl-C, SIGTERM, SIGHUP: everything ends, the terminal is restored, and the
    /// session exits as a process killed by that signal would (128 + signal).
    fn stop(&mut self, sig: i32) -> ! {
        // Ctrl-C and Ctrl-\ already reached the run (same process group); a signal
        // sent to us alone is passed on, and the run gets a moment to end cleanly.
        if let Some(run) = &self.run {
            if !matches!(sig, libc::SIGINT | libc::SIGQUIT) {
                let _ = sys::kill(run.pid, sig);
            }
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && sys::kill(run.pid, 0).is_ok() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        end_descendants(sys::getpid());
        self.restore_terminal();
        self.report
            .detail(|| format!("stopped by {}", signal_name(sig)));
        sys::exit_now(128 + sig)
    }

    fn restore_terminal(&self) {
        crate::checkpoint::restore_terminal();
    }

    fn show(&self, path: &Path) -> String {
        display_path(path, self.cwd.as_deref())
    }
}
