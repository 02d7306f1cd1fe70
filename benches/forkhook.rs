//! Benchmarks for issue 4: real programs, run for real, measured and reported.
//! They assert nothing about speed: they print a markdown table with each target and
//! whether this machine met it.
//!
//! ```text
//! cargo bench                          all scenarios (a couple of minutes)
//! cargo bench -- latency               only scenarios whose key contains "latency"
//! FORKHOOK_BENCH_QUICK=1 cargo bench   fewer iterations
//! ```
//!
//! Scenario keys: `latency` (1, edit → new output), `overhead` (2, first-run
//! overhead), `memory` (3, memory of a session), `scale` (4, 10,000 watched files),
//! `hook` (5, cost of a hooked `stat`), `writer` (6, a program writing a log beside its
//! sources), `every` (7, a checkpoint before every file), `access` (8, what a file's
//! first access costs the run), `start` (9, what a session's start costs a small
//! program). 2 and 3 share their runs.
//!
//! Every process a scenario starts is owned by a [`Proc`], whose drop ends it and
//! every process below it, by pid (never by name), also when a scenario fails.
//! The release profile aborts on panic, which would skip those drops: nothing here
//! panics on purpose, failures travel as `Err(String)`.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FORKHOOK: &str = env!("CARGO_BIN_EXE_forkhook");
/// Upper bound for any single wait; never an assertion about speed.
const TIMEOUT: Duration = Duration::from_secs(120);

type Res<T> = Result<T, String>;

// ------------------------------------------------------------------------------ options

struct Opts {
    quick: bool,
    filters: Vec<String>,
}

impl Opts {
    fn from_env() -> Opts {
        Opts {
            quick: std::env::var_os("FORKHOOK_BENCH_QUICK").is_some_and(|v| v != "0"),
            // cargo passes `--bench`; everything else that is not a flag is a filter.
            filters: std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .collect(),
        }
    }

    fn wants(&self, key: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| key.contains(f.as_str()))
    }

    fn pick(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

// ------------------------------------------------------------------------------ temp dirs

struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(name: &str) -> Res<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "forkhook-bench-{name}-{}-{nanos:08x}",
            std::process::id()
        ));
        fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let path = fs::canonicalize(&path).unwrap_or(path);
        Ok(TempDir { path })
    }

    fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.path.join(relative)
    }

    fn write(&self, relative: impl AsRef<Path>, contents: &str) -> Res<PathBuf> {
        let path = self.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        fs::write(&path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

// ------------------------------------------------------------------------------ /proc

/// (pid, parent pid, start time in clock ticks) of a live process.
fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, starttime field 22.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Every live process below `root` (not `root` itself), with its start time.
fn descendants(root: i32) -> Vec<(i32, u64)> {
    let mut children: HashMap<i32, Vec<(i32, u64)>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((ppid, start)) = proc_stat(pid) {
                children.entry(ppid).or_default().push((pid, start));
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &(child, start) in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            out.push((child, start));
            todo.push(child);
        }
    }
    out
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn kill(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) takes plain integers; the pid is one we started or found below it.
    unsafe { libc::kill(pid, signal) };
}

// ------------------------------------------------------------------------------ processes

struct Line {
    err: bool,
    at: Instant,
    text: String,
}

/// A process this bench started, with its stdout and stderr read line by line (each
/// line stamped when it was read from the pipe). Dropping it ends the process and
/// everything below it.
struct Proc {
    label: String,
    pid: i32,
    started: Instant,
    lines: Receiver<Line>,
    transcript: Vec<String>,
    /// `[forkhook] run ... watching` lines read so far.
    runs_ended: usize,
    last_run_end: String,
    exited: Option<Exited>,
}

#[derive(Clone, Copy)]
struct Exited {
    status: i32,
    maxrss_kib: i64,
}

fn reader(stream: impl Read + Send + 'static, err: bool, tx: Sender<Line>) {
    thread::spawn(move || {
        let mut stream = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stream.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx.send(Line { err, at, text }).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

fn is_run_end(l: &Line) -> bool {
    l.err && l.text.contains("[forkhook] run ") && l.text.contains("watching")
}

impl Proc {
    fn spawn(label: &str, cmd: &mut Command) -> Res<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{label}: cannot start {cmd:?}: {e}"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            reader(out, false, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            reader(err, true, tx);
        }
        // The pid is ours to wait for (wait4, for the peak RSS); `Child` never reaps.
        Ok(Proc {
            label: label.to_string(),
            pid: child.id() as i32,
            started,
            lines: rx,
            transcript: Vec::new(),
            runs_ended: 0,
            last_run_end: String::new(),
            exited: None,
        })
    }

    fn fail(&self, what: &str) -> String {
        let mut s = format!("{}: {what}\n--- transcript ---\n", self.label);
        for line in self.transcript.iter().rev().take(40).rev() {
            let _ = writeln!(s, "{line}");
        }
        s
    }

    /// The next line (stdout or stderr) for which `want` holds; lines before it are
    /// consumed.
    fn wait_line(&mut self, what: &str, want: impl Fn(&Line) -> bool) -> Res<Line> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if is_run_end(&line) {
                        self.runs_ended += 1;
                        self.last_run_end = line.text.clone();
                    }
                    self.transcript.push(format!(
                        "{} {}",
                        if line.err { "err|" } else { "out|" },
                        line.text
                    ));
                    if want(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.fail(&format!("timed out waiting for {what}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(&format!("output ended before {what}")))
                }
            }
        }
    }

    fn wait_out(&mut self, want: impl Fn(&str) -> bool) -> Res<Line> {
        self.wait_line("a line on stdout", |l| !l.err && want(&l.text))
    }

    /// Waits until the coordinator has reported `count` ends of runs in all (lines
    /// consumed while waiting for something else count too); returns the last such line.
    fn wait_runs_ended(&mut self, count: usize) -> Res<String> {
        while self.runs_ended < count {
            self.wait_line("`run exited`", is_run_end)?;
        }
        Ok(self.last_run_end.clone())
    }

    /// Waits for the process to exit (it must end by itself), with its peak RSS.
    fn wait_exit(&mut self) -> Res<Exited> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut status = 0;
            // SAFETY: rusage is plain data, filled in by the kernel.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid out-pointers; the pid is our own child.
            let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == self.pid {
                let exited = Exited {
                    status,
                    maxrss_kib: usage.ru_maxrss,
                };
                self.exited = Some(exited);
                return Ok(exited);
            }
            if r < 0 {
                return Err(self.fail(&format!(
                    "wait4 failed: {}",
                    std::io::Error::last_os_error()
                )));
            }
            if Instant::now() > deadline {
                return Err(self.fail("did not exit"));
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// The process and every live process below it.
    fn tree(&self) -> Vec<i32> {
        let mut all = vec![self.pid];
        all.extend(descendants(self.pid).into_iter().map(|(p, _)| p));
        all
    }
}

/// Total PSS (KiB) of a session and its process count, once the session has settled:
/// after a run ends the coordinator may retire checkpoints (its memory budget), so
/// this waits until the tree has kept the same processes for 300 ms (at most 5 s).
fn settled_memory(session: &Proc) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tree = session.tree();
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(300) {
        thread::sleep(Duration::from_millis(20));
        let now = session.tree();
        if now != tree {
            tree = now;
            since = Instant::now();
        }
    }
    let pss = tree.iter().filter_map(|&pid| pss_kib(pid)).sum();
    (pss, tree.len())
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        // What lives below it now; the coordinator ends all of it on SIGTERM, and
        // whatever is left afterwards is killed here, by pid (after checking the pid
        // still names the same process).
        let below = descendants(self.pid);
        kill(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid on our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid || r < 0 {
                break;
            }
            if Instant::now() > deadline {
                kill(self.pid, libc::SIGKILL);
                // SAFETY: as above, blocking.
                unsafe { libc::waitpid(self.pid, &mut status, 0) };
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let mut left = 0;
        for (pid, start) in below {
            if proc_stat(pid).is_some_and(|(_, s)| s == start) {
                left += 1;
                kill(pid, libc::SIGKILL);
            }
        }
        if left > 0 {
            eprintln!(
                "note: {}: killed {left} process(es) left behind after SIGTERM",
                self.label
            );
        }
    }
}

/// A command with none of the developer's forkhook or Python settings.
fn clean(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("FORKMON_")
            || k.starts_with("FORKHOOK_")
            || k == "NO_COLOR"
            || k == "LD_PRELOAD"
            || k == "PYTHONUNBUFFERED"
            || k == "PYTHONDONTWRITEBYTECODE"
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

fn forkhook(ext: &str, program: &[&str]) -> Command {
    let mut cmd = clean(FORKHOOK);
    cmd.arg("-e").arg(ext).arg("--").args(program);
    cmd
}

fn plain(program: &[&str]) -> Command {
    let mut cmd = clean(program[0]);
    cmd.args(&program[1..]);
    cmd
}

// ------------------------------------------------------------------------------ statistics

/// Orders of four, at random (xorshift seeded from the clock; no crate for this).
struct Shuffler(u64);

impl Shuffler {
    fn new() -> Shuffler {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Shuffler(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// 0, 1, 2, 3 in a random order (Fisher-Yates).
    fn next4(&mut self) -> [usize; 4] {
        let mut v = [0, 1, 2, 3];
        for i in (1..4).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
        v
    }
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The median of `a[i] / b[i]`: runs `i` of two variants come from the same round.
fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

/// A 95% interval for [`paired_ratio`], by bootstrap: the rounds drawn again with
/// replacement 2,000 times, the median of each draw, its 2.5th and 97.5th percentiles.
/// It says how far the VM's noise leaves the paired ratio from what the same runs
/// would give again: about ±1% at calm moments, ±2% at busy ones.
fn paired_interval(a: &[f64], b: &[f64]) -> (f64, f64) {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    if ratios.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut draw = Shuffler::new();
    let medians: Vec<f64> = (0..2000)
        .map(|_| {
            let sample: Vec<f64> = (0..ratios.len())
                .map(|_| ratios[draw.below(ratios.len())])
                .collect();
            median(&sample)
        })
        .collect();
    (percentile(&medians, 2.5), percentile(&medians, 97.5))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 1000.0 {
        format!("{v:.1} ms")
    } else {
        format!("{:.3} s", v / 1e3)
    }
}

fn fmt_mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn yes(ok: bool) -> String {
    if ok { "yes" } else { "**no**" }.to_string()
}

// ------------------------------------------------------------------------------ report

struct Row {
    scenario: String,
    plain: String,
    forkhook: String,
    ratio: String,
    target: String,
    met: String,
}

struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(
        &mut self,
        scenario: &str,
        plain: String,
        forkhook: String,
        ratio: String,
        target: &str,
        met: String,
    ) {
        let row = Row {
            scenario: scenario.to_string(),
            plain,
            forkhook,
            ratio,
            target: target.to_string(),
            met,
        };
        eprintln!(
            "  {} | {} | {} | {} | {} | {}",
            row.scenario, row.plain, row.forkhook, row.ratio, row.target, row.met
        );
        self.rows.push(row);
    }

    fn note(&mut self, note: String) {
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    fn print(&self) {
        println!();
        println!("| scenario | plain / full restart | forkhook | ratio | target | met? |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario, r.plain, r.forkhook, r.ratio, r.target, r.met
            );
        }
        println!();
        for n in &self.notes {
            println!("- {n}");
        }
    }
}

fn machine() -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {model}, Linux {}", kernel.trim())
}

// ------------------------------------------------------------------------------ 1. latency

#[derive(Clone, Copy)]
enum Save {
    /// open(O_TRUNC), write, close: what `echo > file` and many editors do.
    InPlace,
    /// write a temporary file, rename it over: vim, JetBrains, `sed -i`.
    Rename,
}

impl Save {
    fn name(self) -> &'static str {
        match self {
            Save::InPlace => "in-place write",
            Save::Rename => "rename-over save",
        }
    }

    /// Saves `contents` to `path`; returns when the file is complete (closed/renamed).
    fn save(self, path: &Path, contents: &str) -> Res<Instant> {
        let err = |e: std::io::Error| format!("cannot save {}: {e}", path.display());
        match self {
            Save::InPlace => fs::write(path, contents).map_err(err)?,
            Save::Rename => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                let temp = path.with_file_name(format!(".{name}.bench-tmp"));
                fs::write(&temp, contents).map_err(err)?;
                fs::rename(&temp, path).map_err(err)?;
            }
        }
        Ok(Instant::now())
    }
}

/// Edits `file` `edits` times in a running session and returns the latency of each
/// (file complete → the expected line read from stdout). `expect(n)` is the line the
/// n-th edit (content `content(n)`) must produce. Counts stdout lines that came first.
fn edit_latencies(
    session: &mut Proc,
    file: &Path,
    save: Save,
    edits: usize,
    content: impl Fn(usize) -> String,
    expect: impl Fn(usize) -> String,
    stray: &mut usize,
) -> Res<Vec<f64>> {
    let mut out = Vec::new();
    for n in 1..=edits {
        // A little quiet between edits, so each one is a separate burst.
        thread::sleep(Duration::from_millis(20));
        let ended = session.runs_ended;
        let done = save.save(file, &content(n))?;
        let want = expect(n);
        let strays = Cell::new(0usize);
        let line = session.wait_line(&format!("`{want}`"), |l| {
            if l.err || l.at < done {
                return false;
            }
            if l.text == want {
                return true;
            }
            // A line on stdout between the save and the expected one.
            strays.set(strays.get() + 1);
            false
        })?;
        out.push(ms(line.at.saturating_duration_since(done)));
        *stray += strays.get();
        session.wait_runs_ended(ended + 1)?;
    }
    Ok(out)
}

fn scenario_latency(o: &Opts, report: &mut Report) -> Res<()> {
    eprintln!("1. edit → new output");
    let dir = TempDir::new("latency")?;
    dir.write(
        "main.lua",
        "-- about 1 s of CPU before the module being edited is required\n\
         local t, x = os.clock(), 0\n\
         while os.clock() - t < 1.0 do x = x + 1 end\n\
         require(\"mod\")\n",
    )?;
    let module = dir.write("mod.lua", "print(\"MARK 0\")\n")?;

    let mut restart = Vec::new();
    for _ in 0..o.pick(5, 2) {
        let mut p = Proc::spawn(
            "plain lua5.4 main.lua",
            plain(&["lua5.4", "main.lua"]).current_dir(&dir.path),
        )?;
        let line = p.wait_out(|t| t.starts_with("MARK"))?;
        restart.push(ms(line.at - p.started));
        p.wait_exit()?;
    }
    let restart_median = median(&restart);

    let edits = o.pick(20, 8);
    for save in [Save::InPlace, Save::Rename] {
        let mut s = Proc::spawn(
            "forkhook -e lua -- lua5.4 main.lua",
            forkhook("lua", &["lua5.4", "main.lua"]).current_dir(&dir.path),
        )?;
        s.wait_out(|t| t == "MARK 0")?;
        s.wait_runs_ended(1)?;
        let mut stray = 0;
        let lat = edit_latencies(
            &mut s,
            &module,
            save,
            edits,
            |n| format!("print(\"MARK {n}\")\n"),
            |n| format!("MARK {n}"),
            &mut stray,
        )?;
        drop(s);
        dir.write("mod.lua", "print(\"MARK 0\")\n")?;
        if stray > 0 {
            report.note(format!(
                "1 ({}): {stray} other stdout line(s) arrived before an expected marker",
                save.name()
            ));
        }
        let (med, p90) = (median(&lat), percentile(&lat, 90.0));
        report.row(
            &format!("1. edit → new output ({}), {edits} edits", save.name()),
            format!("full restart {}", fmt_ms(restart_median)),
            format!(
                "median {}, p90 {} (min {}, max {})",
                fmt_ms(med),
                fmt_ms(p90),
                fmt_ms(percentile(&lat, 0.0)),
                fmt_ms(percentile(&lat, 100.0))
            ),
            format!("{:.4}×", med / restart_median),
            "median ≤ 10 ms",
            yes(med <= 10.0),
        );
    }
    report.note(format!(
        "1: full restart = spawn of plain `lua5.4 main.lua` until `MARK` is read from its \
         stdout (median of {}). forkmon, the same idea in C, waits FORKMON_RESTART_DELAY \
         (50 ms by default) after a change before it restarts, so its latency is at least 50 ms \
         (not measured here); forkhook's settle window is 3 ms.",
        restart.len()
    ));
    Ok(())
}

// ------------------------------------------------------------------------------ 2 + 3. projects

struct Project {
    name: &'static str,
    dir: TempDir,
    /// When its files were written (see `settle`).
    written: Instant,
    ext: &'static str,
    argv: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

fn lua_project() -> Res<Project> {
    let dir = TempDir::new("lua1000")?;
    let mut main = String::from("local sum = 0\nfor i = 1, 1000 do\n  sum = sum + require(\"m\" .. i)\nend\nprint(\"done \" .. sum)\n");
    main.insert_str(0, "-- 1000 modules, each doing a little work\n");
    dir.write("main.lua", &main)?;
    for i in 1..=1000 {
        dir.write(
            format!("m{i}.lua"),
            &format!(
                "local t = {{}}\nfor i = 1, 2000 do t[i] = (i * {i}) % 13 end\n\
                 local s = 0\nfor i = 1, #t do s = s + t[i] end\nreturn s\n"
            ),
        )?;
    }
    Ok(Project {
        name: "Lua, 1000 modules",
        dir,
        written: Instant::now(),
        ext: "lua",
        argv: vec!["lua5.4".into(), "main.lua".into()],
        env: vec![],
    })
}

/// The interpreter itself, not a wrapper script (pyenv shims are bash scripts).
fn python_executable() -> Res<String> {
    let out = clean("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if exe.is_empty() {
        return Err("python3 did not say where it is".into());
    }
    Ok(exe)
}

/// Objects per module: 500 modules build about 100 MiB of small objects in total.
const PY_ITEMS: usize = 1000;

fn python_project() -> Res<Project> {
    let dir = TempDir::new("py500")?;
    dir.write(
        "main.py",
        "# 500 modules, which together build about 100 MiB of small objects\n\
         import importlib\n\
         total = 0\n\
         for i in range(500):\n\
         \x20   total += importlib.import_module(f\"m{i}\").N\n\
         print(f\"done {total}\")\n",
    )?;
    for i in 0..500 {
        dir.write(
            format!("m{i}.py"),
            &format!(
                "DATA = [(i, i * 0.5, str(i)) for i in range({PY_ITEMS})]\n\
                 INDEX = {{d[2]: d for d in DATA[::4]}}\n\
                 N = len(DATA) + len(INDEX) + {i}\n"
            ),
        )?;
    }
    Ok(Project {
        name: "Python, 500 modules, ~100 MiB heap",
        dir,
        written: Instant::now(),
        ext: "py",
        argv: vec![python_executable()?, "main.py".into()],
        env: vec![("PYTHONUNBUFFERED", "1")],
    })
}

struct ProjectRuns {
    plain_wall: Vec<f64>,
    hook_wall: Vec<f64>,
    /// The parts of the overhead: the launcher and the library with nothing matching,
    /// and a session with only its first checkpoint.
    nothing_wall: Vec<f64>,
    first_only_wall: Vec<f64>,
    plain_maxrss: Vec<f64>,
    hook_pss: Vec<f64>,
    hook_procs: Vec<usize>,
}

/// Waits until files written at `written` are older than forkhook's settle time (3 s):
/// a run reads a file changed more recently than that itself, before the program does
/// (its timestamps may not tell a second write apart), and leaves older ones to the
/// coordinator. A project someone works on is mostly older files.
fn settle(written: Instant) {
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(written.elapsed()));
}

fn run_project(p: &Project, runs: usize) -> Res<ProjectRuns> {
    settle(p.written);
    let argv: Vec<&str> = p.argv.iter().map(String::as_str).collect();
    let plain_cmd = || {
        let mut c = plain(&argv);
        c.current_dir(&p.dir.path).envs(p.env.iter().copied());
        c
    };
    let hook_cmd = || {
        let mut c = forkhook(p.ext, &argv);
        c.current_dir(&p.dir.path).envs(p.env.iter().copied());
        c
    };
    // Warm-up: page cache, .pyc files (written by this plain run), the library cache.
    {
        let mut w = Proc::spawn("warm-up plain", &mut plain_cmd())?;
        w.wait_out(|t| t.starts_with("done"))?;
        w.wait_exit()?;
        let mut w = Proc::spawn("warm-up forkhook", &mut hook_cmd())?;
        w.wait_out(|t| t.starts_with("done"))?;
        w.wait_runs_ended(1)?;
    }
    let nothing_cmd = || {
        let mut c = forkhook("nomatch", &argv);
        c.current_dir(&p.dir.path).envs(p.env.iter().copied());
        c
    };
    let first_only_cmd = || {
        let mut c = hook_cmd();
        c.env("FORKHOOK_CHECKPOINT_SHARE", "0");
        c
    };
    let mut r = ProjectRuns {
        plain_wall: vec![],
        hook_wall: vec![],
        nothing_wall: vec![],
        first_only_wall: vec![],
        plain_maxrss: vec![],
        hook_pss: vec![],
        hook_procs: vec![],
    };
    let mut order = Shuffler::new();
    for _ in 0..runs {
        // Interleaved, so drift on a shared machine hits all alike, and in a new random
        // order each round: each variant then follows each other as often (the end of
        // the session before, whose processes are still exiting, costs the next run).
        for variant in order.next4() {
            match variant {
                0 => {
                    let mut x = Proc::spawn(&format!("plain {}", p.name), &mut plain_cmd())?;
                    let done = x.wait_out(|t| t.starts_with("done"))?;
                    r.plain_wall.push(ms(done.at - x.started));
                    let exited = x.wait_exit()?;
                    if exited.status != 0 {
                        return Err(x.fail(&format!("exited with wait status {}", exited.status)));
                    }
                    r.plain_maxrss.push(exited.maxrss_kib as f64);
                }
                1 => {
                    let mut s = Proc::spawn(&format!("forkhook {}", p.name), &mut hook_cmd())?;
                    let done = s.wait_out(|t| t.starts_with("done"))?;
                    r.hook_wall.push(ms(done.at - s.started));
                    s.wait_runs_ended(1)?;
                    let (pss, processes) = settled_memory(&s);
                    r.hook_pss.push(pss as f64);
                    r.hook_procs.push(processes);
                }
                2 => {
                    let mut n =
                        Proc::spawn(&format!("nothing matching {}", p.name), &mut nothing_cmd())?;
                    let done = n.wait_out(|t| t.starts_with("done"))?;
                    r.nothing_wall.push(ms(done.at - n.started));
                    n.wait_exit()?;
                }
                _ => {
                    let mut f = Proc::spawn(&format!("share 0 {}", p.name), &mut first_only_cmd())?;
                    let done = f.wait_out(|t| t.starts_with("done"))?;
                    r.first_only_wall.push(ms(done.at - f.started));
                    f.wait_runs_ended(1)?;
                }
            }
        }
    }
    Ok(r)
}

fn scenario_projects(o: &Opts, report: &mut Report, overhead: bool, memory: bool) -> Res<()> {
    eprintln!("2/3. first-run overhead and memory");
    // As many rounds for Python as for Lua: with 41, two runs of this bench at calm
    // moments differed by 4% on Python's ratio, the effect measured.
    let lua_runs = o.pick(101, 5);
    let python_runs = o.pick(101, 5);
    for (make, runs) in [
        (lua_project as fn() -> Res<Project>, lua_runs),
        (python_project, python_runs),
    ] {
        let p = make()?;
        let r = run_project(&p, runs)?;
        if overhead {
            let (a, b) = (median(&r.plain_wall), median(&r.hook_wall));
            // The lower quartiles too: this VM's speed changes from one run to the next
            // (a quarter to a half of plain runs take 30% longer than the rest), which
            // moves medians by more than the effect measured; the faster runs of each
            // side are the least disturbed.
            let q1 = |v: &[f64]| percentile(v, 25.0);
            let (a_q1, b_q1) = (q1(&r.plain_wall), q1(&r.hook_wall));
            // And the median of each round's own ratio: a slow spell of the VM hits
            // both runs of a round alike, and cancels out.
            let paired = paired_ratio(&r.hook_wall, &r.plain_wall);
            let (low, high) = paired_interval(&r.hook_wall, &r.plain_wall);
            report.row(
                &format!("2. first-run overhead: {}", p.name),
                format!("{} (q1 {})", fmt_ms(a), fmt_ms(a_q1)),
                format!("{} (q1 {})", fmt_ms(b), fmt_ms(b_q1)),
                format!(
                    "{:.3}× (q1 {:.3}×, paired {paired:.3}×, 95% {low:.3}–{high:.3}×)",
                    b / a,
                    b_q1 / a_q1
                ),
                "≤ 1.05×",
                format!(
                    "median {}, q1 {}, paired {}",
                    yes(b / a <= 1.05),
                    yes(b_q1 / a_q1 <= 1.05),
                    yes(paired <= 1.05)
                ),
            );
            report.note(format!(
                "2: {}: parts of the overhead, from the same interleaved runs, median (lower \
                 quartile; paired): the launcher and the library with nothing matching {:.3}× \
                 ({:.3}×; {:.3}×), a session with only its first checkpoint \
                 (FORKHOOK_CHECKPOINT_SHARE=0) {:.3}× ({:.3}×; {:.3}×), default {:.3}× ({:.3}×; \
                 {paired:.3}×)",
                p.name,
                median(&r.nothing_wall) / a,
                q1(&r.nothing_wall) / a_q1,
                paired_ratio(&r.nothing_wall, &r.plain_wall),
                median(&r.first_only_wall) / a,
                q1(&r.first_only_wall) / a_q1,
                paired_ratio(&r.first_only_wall, &r.plain_wall),
                b / a,
                b_q1 / a_q1,
            ));
        }
        if memory {
            let (a, b) = (median(&r.plain_maxrss), median(&r.hook_pss));
            report.row(
                &format!("3. memory: {}", p.name),
                format!("peak RSS {}", fmt_mib(a)),
                format!(
                    "PSS {} ({} processes)",
                    fmt_mib(b),
                    r.hook_procs.iter().max().copied().unwrap_or(0)
                ),
                format!("{:.2}×", b / a),
                "≤ 1.5×",
                yes(b / a <= 1.5),
            );
        }
    }
    report.note(format!(
        "2/3: wall time = spawn until the program's last stdout line is read (median and \
         lower quartile of {lua_runs} (Lua) and {python_runs} (Python) interleaved runs, each round in a random order, after one warm-up of each; project files at least 3.2 s \
         old). forkhook runs use the launcher \
         (`forkhook -e lua|py -- ...`). Python: the interpreter binary is run directly (not \
         the pyenv shim), PYTHONDONTWRITEBYTECODE unset so the warm-up writes .pyc files and \
         the measured runs use them (CPython then only stats each .py), PYTHONUNBUFFERED=1 \
         for both plain and forkhook runs (the launcher would set it anyway). Memory: sum of \
         `Pss:` of the session's processes (coordinator + checkpoints) after `run exited`, \
         once the process tree is stable for 300 ms (the coordinator may retire checkpoints \
         to keep to its memory budget), vs ru_maxrss of the plain run (wait4)."
    ));
    Ok(())
}

// ------------------------------------------------------------------------------ 4. scale

fn inotify_limits() -> String {
    let read = |n: &str| {
        fs::read_to_string(format!("/proc/sys/fs/inotify/{n}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    format!(
        "max_user_watches={}, max_user_instances={}",
        read("max_user_watches"),
        read("max_user_instances")
    )
}

fn scenario_scale(o: &Opts, report: &mut Report) -> Res<()> {
    eprintln!("4. scale: 10,000 files in 100 directories");
    let dir = TempDir::new("scale")?;
    dir.write(
        "main.lua",
        "local sum = 0\n\
         for d = 0, 99 do\n\
         \x20 for f = 0, 99 do\n\
         \x20   sum = sum + dofile(string.format(\"d%02d/f%03d.lua\", d, f))\n\
         \x20 end\n\
         end\n\
         print(\"MARK \" .. sum)\n",
    )?;
    for d in 0..100 {
        for f in 0..100 {
            dir.write(format!("d{d:02}/f{f:03}.lua"), "return 1\n")?;
        }
    }
    settle(Instant::now());
    let mut restart = Vec::new();
    for _ in 0..o.pick(5, 2) {
        let mut p = Proc::spawn(
            "plain lua5.4 main.lua (scale)",
            plain(&["lua5.4", "main.lua"]).current_dir(&dir.path),
        )?;
        let line = p.wait_out(|t| t.starts_with("MARK"))?;
        restart.push(ms(line.at - p.started));
        p.wait_exit()?;
    }
    let mut s = Proc::spawn(
        "forkhook (scale)",
        forkhook("lua", &["lua5.4", "main.lua"]).current_dir(&dir.path),
    )?;
    let first = s.wait_out(|t| t == "MARK 10000")?;
    let first_run = ms(first.at - s.started);
    let exited = s.wait_runs_ended(1)?;
    let watching = exited
        .split("watching ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let (session_pss, processes) = settled_memory(&s);
    let edited = dir.join("d99/f099.lua");
    let edits = o.pick(20, 8);
    let mut stray = 0;
    let lat = edit_latencies(
        &mut s,
        &edited,
        Save::InPlace,
        edits,
        |n| format!("return {}\n", 1 + n),
        |n| format!("MARK {}", 10000 + n),
        &mut stray,
    )?;
    let resumed_from = s
        .transcript
        .iter()
        .find(|l| l.contains("changed: resuming from"))
        .map(|l| l.trim_start_matches("err| [forkhook] ").to_string())
        .unwrap_or_default();
    let complaints: Vec<String> = s
        .transcript
        .iter()
        .filter(|l| l.starts_with("err|") && (l.contains("inotify") || l.contains("error")))
        .cloned()
        .collect();
    drop(s);
    let (med, p90) = (median(&lat), percentile(&lat, 90.0));
    let restart_median = median(&restart);
    report.row(
        &format!("4. scale: 10,000 files / 100 dirs, edit of the last file, {edits} edits"),
        format!("full restart {}", fmt_ms(restart_median)),
        format!(
            "median {}, p90 {}; first edit {}",
            fmt_ms(med),
            fmt_ms(p90),
            fmt_ms(lat[0])
        ),
        format!("{:.3}×", med / restart_median),
        "works in default inotify limits; median ≤ 10 ms",
        yes(complaints.is_empty() && watching != "?" && med <= 10.0),
    );
    if stray > 0 {
        report.note(format!(
            "4: {stray} other stdout line(s) arrived before an expected marker"
        ));
    }
    report.note(format!(
        "4: the session reported watching {watching} files; after the first run it kept \
         {processes} processes (coordinator + checkpoints, {} PSS), first run {} (plain {}); first edit: \
         `{resumed_from}`; inotify limits here: {}; forkhook errors/warnings: {}.",
        fmt_mib(session_pss as f64),
        fmt_ms(first_run),
        fmt_ms(restart_median),
        inotify_limits(),
        if complaints.is_empty() {
            "none".to_string()
        } else {
            complaints.join(" / ")
        }
    ));
    Ok(())
}

// ------------------------------------------------------------------------------ 5. hook cost

const STAT_BENCH_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* The system call stat() makes, made directly: no library can interpose it. */
static int raw_stat(const char *path, struct stat *st) {
    return syscall(SYS_newfstatat, AT_FDCWD, path, st, 0);
}

/* statbench MODE N ROUNDS [pairs]
   MODE: rel|abs (paths that do not match the filter and do not exist), files
   (relative names of files that exist and do not match) or tracked (one matching
   file, the same path every time).
   Without "pairs": ROUNDS loops of N stat() calls, each timed ("round NS").
   With "pairs": ROUNDS × N/400 pairs of batches, 200 direct system calls then the
   next 200 paths through stat(): "pair NS" is what stat() cost more per call, in
   the same process, at the same moment. Not the same 200 paths twice: the first
   batch would warm the kernel's caches for the second. */
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *mode = argv[1];
    long n = atol(argv[2]);
    int rounds = atoi(argv[3]);
    int pairs = argc > 4 && !strcmp(argv[4], "pairs");
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return 3;
    char **paths = malloc(n * sizeof *paths);
    for (long i = 0; i < n; i++) {
        int r = 0;
        if (!strcmp(mode, "rel")) r = asprintf(&paths[i], "nomatch/d%ld/file%06ld.txt", i % 100, i);
        else if (!strcmp(mode, "abs")) r = asprintf(&paths[i], "%s/nomatch/d%ld/file%06ld.txt", cwd, i % 100, i);
        else if (!strcmp(mode, "files")) r = asprintf(&paths[i], "files/d%ld/file%06ld.txt", i % 100, i);
        else paths[i] = "tracked.lua";
        if (r < 0) return 4;
    }
    struct stat st;
    long ok = 0;
    /* Not timed: the first call (for the tracked file, it starts the session). */
    ok += stat(paths[0], &st) == 0;
    for (int r = 0; r < rounds; r++) {
        if (pairs) {
            for (long b = 0; b + 400 <= n; b += 400) {
                double t0 = now_ns();
                for (long i = b; i < b + 200; i++) ok += raw_stat(paths[i], &st) == 0;
                double t1 = now_ns();
                for (long i = b + 200; i < b + 400; i++) ok += stat(paths[i], &st) == 0;
                double t2 = now_ns();
                printf("pair %.2f %.2f\n", ((t2 - t1) - (t1 - t0)) / 200, (t1 - t0) / 200);
            }
        } else {
            double t0 = now_ns();
            for (long i = 0; i < n; i++) ok += stat(paths[i], &st) == 0;
            double t1 = now_ns();
            printf("round %.2f\n", (t1 - t0) / n);
        }
        fflush(stdout);
    }
    printf("done %ld\n", ok);
    fflush(stdout);
    return 0;
}
"#;

/// Builds a C program of the bench with `gcc -O2`.
fn compile_c(source: &Path, binary: &Path) -> Res<()> {
    let out = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(binary)
        .arg(source)
        .output()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "gcc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn library_path() -> Res<String> {
    let out = clean(FORKHOOK)
        .arg("--print-library")
        .output()
        .map_err(|e| format!("cannot run {FORKHOOK}: {e}"))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        return Err(format!("`forkhook --print-library` failed: {}", out.status));
    }
    Ok(path)
}

/// What one run of the stat program printed.
#[derive(Default)]
struct StatRun {
    /// ns per call of each timed loop ("round").
    per_call: Vec<f64>,
    /// ns per call that stat() cost more than the direct system call ("pair"), and
    /// what the direct call cost.
    extra: Vec<f64>,
    direct: Vec<f64>,
    /// Spawn to the last line, ms.
    wall: f64,
}

/// How a run of the stat program is set up: with the library or not, and a padding
/// of its environment.
///
/// Where the stack starts depends on the size of the environment, and a hooked
/// `stat` is sensitive to it: the same build measured -37 to +205 ns per call with
/// the environment 0 to 56 bytes longer. So the two runs of a pair get environments
/// of the same size (the plain run stand-ins of the same length for the library's
/// two variables) and each pair a random padding, which turns that bias into noise
/// the pairs average out.
struct StatEnv<'a> {
    library: &'a str,
    preloaded: bool,
    padding: usize,
}

impl<'a> StatEnv<'a> {
    const FILTER: &'static str = r"\.lua$";

    fn new(library: &'a str, preloaded: bool, padding: usize) -> StatEnv<'a> {
        StatEnv {
            library,
            preloaded,
            padding,
        }
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env("BENCH_PADDING", "x".repeat(self.padding));
        if self.preloaded {
            cmd.env("LD_PRELOAD", self.library)
                .env("FORKHOOK_FILTER", Self::FILTER);
        } else {
            // "LD_PRELOAD" and "BENCH_ONE_" are both 10 bytes, "FORKHOOK_FILTER"
            // and "BENCH_THE_OTHER" both 15: the same sizes, meaning nothing.
            cmd.env("BENCH_ONE_", "x".repeat(self.library.len()))
                .env("BENCH_THE_OTHER", "x".repeat(Self::FILTER.len()));
        }
    }
}

fn run_statbench(
    dir: &TempDir,
    mode: &str,
    n: usize,
    rounds: usize,
    pairs: bool,
    setup: &StatEnv,
) -> Res<StatRun> {
    let mut cmd = clean(dir.join("statbench"));
    cmd.args([mode, &n.to_string(), &rounds.to_string()])
        .current_dir(&dir.path);
    if pairs {
        cmd.arg("pairs");
    }
    setup.apply(&mut cmd);
    let label = format!(
        "statbench {mode} ({})",
        if setup.preloaded {
            "preloaded"
        } else {
            "plain"
        }
    );
    let mut p = Proc::spawn(&label, &mut cmd)?;
    let mut run = StatRun::default();
    let number = |p: &Proc, v: &str| {
        v.parse::<f64>()
            .map_err(|e| p.fail(&format!("bad number {v:?}: {e}")))
    };
    loop {
        let line = p.wait_out(|_| true)?;
        if let Some(v) = line.text.strip_prefix("round ") {
            run.per_call.push(number(&p, v)?);
        } else if let Some(v) = line.text.strip_prefix("pair ") {
            let (extra, direct) = v.split_once(' ').unwrap_or((v, "nan"));
            run.extra.push(number(&p, extra)?);
            run.direct.push(number(&p, direct)?);
        } else if line.text.starts_with("done") {
            run.wall = ms(line.at - p.started);
            // A tracked file started a session, which stays to watch it: the drop
            // ends it.
            if !setup.preloaded || mode != "tracked" {
                p.wait_exit()?;
            }
            return Ok(run);
        }
    }
}

fn scenario_hook(o: &Opts, report: &mut Report) -> Res<()> {
    eprintln!("5. hook cost");
    let dir = TempDir::new("hook")?;
    let source = dir.write("statbench.c", STAT_BENCH_C)?;
    dir.write("tracked.lua", "return 1\n")?;
    let n = 100_000;
    for d in 0..100 {
        fs::create_dir_all(dir.join(format!("files/d{d}"))).map_err(|e| e.to_string())?;
    }
    for i in 0..n {
        let file = dir.join(format!("files/d{}/file{i:06}.txt", i % 100));
        fs::write(&file, "").map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    compile_c(&source, &dir.join("statbench"))?;
    let library = library_path()?;
    let (rounds, runs) = (5, o.pick(31, 3));
    let mut draw = Shuffler::new();
    for (mode, what) in [
        ("rel", "100,000 relative paths that do not exist"),
        ("abs", "100,000 absolute paths that do not exist"),
        ("files", "100,000 files that exist and do not match"),
        ("tracked", "one tracked file 100,000 times"),
    ] {
        let hooked = StatEnv::new(&library, true, 0);
        run_statbench(&dir, mode, n, 1, false, &hooked)?; // warm-up
                                                          // The cost per call: stat() against the direct system call, in one process.
        let (mut extra, mut direct, mut control) = (vec![], vec![], vec![]);
        for _ in 0..o.pick(3, 1) {
            let padding = draw.below(4096);
            let with = StatEnv::new(&library, true, padding);
            let run = run_statbench(&dir, mode, n, 2, true, &with)?;
            extra.extend(run.extra);
            direct.extend(run.direct);
            let without = StatEnv::new(&library, false, padding);
            control.extend(run_statbench(&dir, mode, n, 2, true, &without)?.extra);
        }
        let cost = median(&extra);
        report.row(
            &format!("5. hook cost per call: stat of {what}"),
            format!("{:.0} ns/call", median(&direct)),
            format!(
                "+{cost:.1} ns (without the library: {:+.1} ns)",
                median(&control)
            ),
            format!("{:.3}×", (median(&direct) + cost) / median(&direct)),
            "< 1 µs per call",
            yes(cost < 1000.0),
        );
        // The whole program, plain then preloaded, in pairs.
        let (mut plain_wall, mut hook_wall) = (vec![], vec![]);
        for _ in 0..runs {
            let padding = draw.below(4096);
            for (preloaded, walls) in [(false, &mut plain_wall), (true, &mut hook_wall)] {
                let setup = StatEnv::new(&library, preloaded, padding);
                walls.push(run_statbench(&dir, mode, n, rounds, false, &setup)?.wall);
            }
        }
        let (a, b) = (median(&plain_wall), median(&hook_wall));
        // Each run with the library follows one without, so a slow spell of the VM
        // hits both alike: the median of each pair's own ratio cancels it out.
        let paired = paired_ratio(&hook_wall, &plain_wall);
        let (low, high) = paired_interval(&hook_wall, &plain_wall);
        report.row(
            &format!("5. hook cost, whole program ({rounds}×100,000 stats): {mode}"),
            fmt_ms(a),
            fmt_ms(b),
            format!(
                "{:.3}× (paired {paired:.3}×, 95% {low:.3}–{high:.3}×)",
                b / a
            ),
            "≤ 1.05×",
            format!(
                "median {}, paired {}",
                yes(b / a <= 1.05),
                yes(paired <= 1.05)
            ),
        );
    }
    report.note(format!(
        "5: a C program (gcc -O2). Per call: in one process, batches of 200 paths made \
         as direct system calls (`syscall(SYS_newfstatat)`, which nothing interposes), \
         then the next 200 through `stat()`, 500 pairs of batches per run; the median \
         of what `stat()` cost more, over {} runs with the library (and the same \
         without it, as a control). Whole program = spawn until its last \
         line, {runs} pairs of runs (one without the library, then one with), median \
         of each and of each pair's ratio. Preloaded = LD_PRELOAD=$(forkhook \
         --print-library) FORKHOOK_FILTER='\\.lua$' (no launcher exec in between). Both \
         runs of a pair have environments of the same size, padded by the same random \
         0–4095 bytes: where the stack starts moves a hooked `stat`'s cost by up to \
         100 ns.",
        o.pick(3, 1)
    ));
    Ok(())
}

// ------------------------------------------------------------------------------ 6. writer

/// A program that writes another file beside the one it reads (a log): what the watch
/// on that directory costs its writes.
fn scenario_writer(o: &Opts, report: &mut Report) -> Res<()> {
    eprintln!("6. a program writing a log beside its sources");
    let dir = TempDir::new("writer")?;
    dir.write("mod.lua", "return 1\n")?;
    dir.write(
        "main.lua",
        "local m = require 'mod'\n\
         local f = assert(io.open('app.log', 'w'))\n\
         f:setvbuf('no')\n\
         for i = 1, 200000 do f:write('line ', i, '\\n') end\n\
         f:close()\n\
         print('done')\n",
    )?;
    settle(Instant::now());
    let argv = ["lua5.4", "main.lua"];
    let (mut plain_wall, mut hook_wall) = (vec![], vec![]);
    for _ in 0..o.pick(7, 3) {
        let mut x = Proc::spawn("plain writer", plain(&argv).current_dir(&dir.path))?;
        let done = x.wait_out(|t| t == "done")?;
        plain_wall.push(ms(done.at - x.started));
        x.wait_exit()?;
        drop(x);
        let mut s = Proc::spawn(
            "forkhook writer",
            forkhook("lua", &argv).current_dir(&dir.path),
        )?;
        let done = s.wait_out(|t| t == "done")?;
        hook_wall.push(ms(done.at - s.started));
        s.wait_runs_ended(1)?;
    }
    let (a, b) = (median(&plain_wall), median(&hook_wall));
    report.row(
        "6. a Lua program writing 200,000 unbuffered lines to a log beside its module",
        fmt_ms(a),
        fmt_ms(b),
        format!("{:.2}×", b / a),
        "(no target)",
        "-".to_string(),
    );
    Ok(())
}

// ------------------------------------------------------------------------------ 7. every file

/// A checkpoint before each of n tiny modules (FORKHOOK_CHECKPOINT_SHARE=1, none
/// retired): what one costs the run, at two depths. Equal costs per checkpoint for
/// 100 and 400 modules mean a checkpoint costs the same however many came before.
fn scenario_every(o: &Opts, report: &mut Report) -> Res<()> {
    eprintln!("7. a checkpoint before every file");
    for n in [100usize, 400] {
        let dir = TempDir::new(&format!("every{n}"))?;
        dir.write(
            "main.lua",
            &format!(
                "local s = 0\nfor i = 1, {n} do s = s + require('m' .. i) end\n\
                 print('done ' .. s)\n"
            ),
        )?;
        for i in 1..=n {
            dir.write(format!("m{i}.lua"), &format!("return {i}\n"))?;
        }
        settle(Instant::now());
        let argv = ["lua5.4", "main.lua"];
        let (mut plain_wall, mut hook_wall) = (vec![], vec![]);
        for _ in 0..o.pick(5, 2) {
            let mut x = Proc::spawn("plain modules", plain(&argv).current_dir(&dir.path))?;
            let done = x.wait_out(|t| t.starts_with("done"))?;
            plain_wall.push(ms(done.at - x.started));
            x.wait_exit()?;
            drop(x);
            let mut s = Proc::spawn(
                "forkhook, a checkpoint before every module",
                forkhook("lua", &argv)
                    .env("FORKHOOK_CHECKPOINT_SHARE", "1")
                    .env("FORKHOOK_MAX_CHECKPOINTS", "1000")
                    .current_dir(&dir.path),
            )?;
            let done = s.wait_out(|t| t.starts_with("done"))?;
            hook_wall.push(ms(done.at - s.started));
            s.wait_runs_ended(1)?;
        }
        let (a, b) = (median(&plain_wall), median(&hook_wall));
        // main.lua is a matching file too: n + 1 checkpoints.
        let each = (b - a) / (n + 1) as f64;
        report.row(
            &format!("7. a checkpoint before each of {n} Lua modules, none retired"),
            fmt_ms(a),
            fmt_ms(b),
            format!("{each:.2} ms per checkpoint"),
            "(no target)",
            "-".to_string(),
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------ 8. first accesses

const ACCESS_BENCH_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* Reaches f1.lua .. fN.lua twice: the first pass is each file's first access, the
   second reaches files already known. "open" reads each as Lua's loader does (fopen,
   a read, fclose); "stat" stats it, as CPython does a module whose .pyc is valid.
   f0.lua, reached before the clock starts, is where a session takes its checkpoint. */
static double pass(int n, int by_stat) {
    char name[32];
    struct stat st;
    double t0 = now_ns();
    for (int i = 1; i <= n; i++) {
        snprintf(name, sizeof name, "f%d.lua", i);
        if (by_stat) {
            if (stat(name, &st) != 0) { perror(name); exit(1); }
            continue;
        }
        FILE *f = fopen(name, "r");
        if (!f) { perror(name); exit(1); }
        fgetc(f);
        fclose(f);
    }
    return (now_ns() - t0) / n;
}

int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    int by_stat = argc > 2 && strcmp(argv[2], "stat") == 0;
    FILE *f = fopen("f0.lua", "r");
    if (f) fclose(f);
    double first = pass(n, by_stat);
    double again = pass(n, by_stat);
    printf("first %.1f\nagain %.1f\ndone\n", first, again);
    fflush(stdout);
    return 0;
}
"#;

/// `argv` in `dir` three ways, for benches 8 and 9: plain (0), under the launcher with
/// nothing matching (1, `-e zzz`), and in a session that keeps to its first checkpoint
/// (2, `-e lua`, FORKHOOK_CHECKPOINT_SHARE=0).
fn three_ways(variant: usize, argv: &[&str], dir: &Path) -> Command {
    let mut c = match variant {
        0 => plain(argv),
        1 => forkhook("zzz", argv),
        _ => {
            let mut c = forkhook("lua", argv);
            c.env("FORKHOOK_CHECKPOINT_SHARE", "0");
            c
        }
    };
    c.current_dir(dir);
    c
}

/// What a file's first access costs the run (the hook's slow path: the filter, the
/// file noted, its identity taken with `fstat`, a message to the coordinator), apart
/// from the forks and the program's own work: a C program opens 2,000 files twice,
/// plain, with the library and nothing matching, and in a session that keeps to its
/// first checkpoint, in interleaved rounds.
fn scenario_access(o: &Opts, report: &mut Report) -> Res<()> {
    eprintln!("8. first accesses");
    let dir = TempDir::new("access")?;
    let source = dir.write("accessbench.c", ACCESS_BENCH_C)?;
    let n = 2000;
    for i in 0..=n {
        dir.write(format!("f{i}.lua"), &format!("return {i}\n"))?;
    }
    compile_c(&source, &dir.join("accessbench"))?;
    // Settled files, as in a project someone works on: the run leaves reading them to
    // the coordinator (see `settle`).
    settle(Instant::now());
    let program = dir.join("accessbench").to_string_lossy().into_owned();
    let count = n.to_string();
    for (mode, first_label, again_label) in [
        (
            "open",
            format!("8. a first access (fopen, a read, fclose of each of {n} files)"),
            "8. the same files read again (names known)",
        ),
        (
            "stat",
            format!("8. a first access by `stat` (as CPython reaches a module with a valid .pyc), {n} files"),
            "8. the same files stat'ed again (names known)",
        ),
    ] {
        let argv = [program.as_str(), count.as_str(), mode];
        let (first, again) = access_rounds(o, &argv, &dir.path)?;
        let paired_extra = |a: &[f64], b: &[f64]| {
            median(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>())
        };
        let us = |ns: f64| format!("{:+.2} µs", ns / 1000.0);
        for (label, times) in [(first_label.as_str(), &first), (again_label, &again)] {
            report.row(
                label,
                format!("{:.2} µs per file", median(&times[0]) / 1000.0),
                format!(
                    "{:.2} µs with nothing matching, {:.2} µs in a session",
                    median(&times[1]) / 1000.0,
                    median(&times[2]) / 1000.0
                ),
                format!(
                    "{} per file over nothing matching (paired)",
                    us(paired_extra(&times[2], &times[1]))
                ),
                "(no target)",
                "-".to_string(),
            );
        }
    }
    report.note(format!(
        "8: a C program (gcc -O2) reads f1.lua to f{n}.lua (files older than 3 s) as \
         Lua's loader does, then again, and in other runs stats them instead, as \
         CPython does modules whose .pyc is valid; f0.lua, read first, starts the session \
         (`forkhook -e lua`, FORKHOOK_CHECKPOINT_SHARE=0: one checkpoint, before the \
         clock starts). Medians of {} rounds, each runs plain, with nothing matching \
         (`-e zzz`) and in a session, in a random order; paired = the median of each \
         round's difference.",
        o.pick(21, 3)
    ));
    Ok(())
}

/// Per variant of [`three_ways`] (plain, nothing matching, a session), one time a round.
type ThreeWays = [Vec<f64>; 3];

/// Bench 8's rounds for one way of reaching the files (`argv`): ns per file of the
/// first pass and of the second.
fn access_rounds(o: &Opts, argv: &[&str], dir: &Path) -> Res<(ThreeWays, ThreeWays)> {
    let variants = ["plain", "nothing matching", "a session"];
    let mut first = ThreeWays::default();
    let mut again = ThreeWays::default();
    let mut order = Shuffler::new();
    for round in 0..=o.pick(21, 3) {
        for variant in order.next4().into_iter().filter(|&v| v < 3) {
            let mut p = Proc::spawn(
                &format!("accessbench {}, {}", argv[2], variants[variant]),
                &mut three_ways(variant, argv, dir),
            )?;
            let read = |p: &mut Proc, key: &str| -> Res<f64> {
                let line = p.wait_out(|t| t.starts_with(key))?;
                line.text[key.len()..]
                    .trim()
                    .parse::<f64>()
                    .map_err(|e| p.fail(&format!("bad number in {:?}: {e}", line.text)))
            };
            let (f, a) = (read(&mut p, "first")?, read(&mut p, "again")?);
            p.wait_out(|t| t == "done")?;
            if variant == 2 {
                p.wait_runs_ended(1)?;
            } else {
                p.wait_exit()?;
            }
            // Round 0 warms the page cache and the library's copy.
            if round > 0 {
                first[variant].push(f);
                again[variant].push(a);
            }
        }
    }
    Ok((first, again))
}

// ------------------------------------------------------------------------------ 9. start

/// What a session's start costs a program, apart from its files: the launcher and the
/// library (nothing matching), then the first checkpoint (the coordinator's fork and
/// checkpoint 1's). A Lua program of 10 small modules runs in about 2 ms, so these
/// fixed costs, a fraction of a millisecond each, are not lost in the noise of a run
/// that takes 70 ms, as in scenario 2.
fn scenario_start(o: &Opts, report: &mut Report) -> Res<()> {
    eprintln!("9. a session's start");
    let dir = TempDir::new("start")?;
    let mut main = String::from("local s = 0\nfor i = 1, 10 do s = s + require(\"m\" .. i) end\n");
    main.push_str("print(\"done \" .. s)\n");
    dir.write("main.lua", &main)?;
    for i in 1..=10 {
        dir.write(
            format!("m{i}.lua"),
            &format!("local t = {{}}\nfor i = 1, 200 do t[i] = i * {i} end\nreturn #t\n"),
        )?;
    }
    settle(Instant::now());
    let argv = ["lua5.4", "main.lua"];
    let variants = ["plain", "nothing matching", "first checkpoint"];
    let command = |variant: usize| three_ways(variant, &argv, &dir.path);
    let rounds = o.pick(301, 21);
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut order = Shuffler::new();
    for round in 0..=rounds {
        for variant in order.next4().into_iter().filter(|&v| v < 3) {
            let mut p = Proc::spawn(
                &format!("start, {}", variants[variant]),
                &mut command(variant),
            )?;
            let done = p.wait_out(|t| t.starts_with("done"))?;
            if variant == 2 {
                p.wait_runs_ended(1)?;
            } else {
                p.wait_exit()?;
            }
            // Round 0 warms the page cache and the library's copy.
            if round > 0 {
                times[variant].push(ms(done.at - p.started));
            }
        }
    }
    let differences = |a: &[f64], b: &[f64]| -> Vec<f64> {
        sorted(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>())
    };
    let spread = |d: &[f64]| {
        format!(
            "{:+.3} ms (quartiles {:+.3} to {:+.3})",
            median(d),
            percentile(d, 25.0),
            percentile(d, 75.0)
        )
    };
    let nothing = differences(&times[1], &times[0]);
    let session = differences(&times[2], &times[1]);
    report.row(
        "9. a session's start: a Lua program of 10 modules",
        fmt_ms(median(&times[0])),
        format!(
            "nothing matching {}, first checkpoint {}",
            fmt_ms(median(&times[1])),
            fmt_ms(median(&times[2]))
        ),
        format!(
            "launcher and library {}; the session's start {} more (paired)",
            spread(&nothing),
            spread(&session)
        ),
        "(no target)",
        "-".to_string(),
    );
    report.note(format!(
        "9: wall time from spawn to the program's last line, {rounds} rounds, each runs \
         `lua5.4 main.lua` plain, `forkhook -e zzz` (nothing matching) and `forkhook -e \
         lua` with FORKHOOK_CHECKPOINT_SHARE=0 (one checkpoint) in a random order; \
         the medians of each round's differences, and their quartiles."
    ));
    Ok(())
}

// ------------------------------------------------------------------------------ main

fn main() {
    let o = Opts::from_env();
    let began = Instant::now();
    let mut report = Report {
        rows: vec![],
        notes: vec![],
    };
    eprintln!(
        "forkhook benchmarks{} on {}",
        if o.quick { " (quick)" } else { "" },
        machine()
    );
    type Scenario = fn(&Opts, &mut Report) -> Res<()>;
    let overhead = o.wants("overhead");
    let memory = o.wants("memory");
    let scenarios: [(&str, bool, Scenario); 8] = [
        ("latency", o.wants("latency"), scenario_latency),
        ("overhead/memory", overhead || memory, |o, r| {
            scenario_projects(o, r, o.wants("overhead"), o.wants("memory"))
        }),
        ("scale", o.wants("scale"), scenario_scale),
        ("hook", o.wants("hook"), scenario_hook),
        ("writer", o.wants("writer"), scenario_writer),
        ("every", o.wants("every"), scenario_every),
        ("access", o.wants("access"), scenario_access),
        ("start", o.wants("start"), scenario_start),
    ];
    let mut failed = 0;
    for (name, wanted, run) in scenarios {
        if !wanted {
            continue;
        }
        if let Err(e) = run(&o, &mut report) {
            failed += 1;
            eprintln!("scenario {name} failed:\n{e}");
            report.note(format!(
                "scenario {name} FAILED: {}",
                e.lines().next().unwrap_or("")
            ));
        }
    }
    println!("\nforkhook benchmarks on {}", machine());
    report.print();
    println!(
        "\n({} in total{})",
        fmt_ms(ms(began.elapsed())),
        if o.quick {
            ", FORKHOOK_BENCH_QUICK"
        } else {
            ""
        }
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
