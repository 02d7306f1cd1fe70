//! The launcher's first steps, taken at the executable's entry point, before libc starts.
//!
//! glibc's start-up asks the CPU what it can do, with a few dozen `cpuid` instructions,
//! and in a virtual machine each of them traps to the hypervisor: 0.45 ms of the 0.8 ms
//! the launcher took on the VM of the README's figures, paid at every launch, and more
//! when the host is busy (the command then pays the same once more, as it would
//! without forkhook). Most launches are `forkhook [-q|-v] -e EXT[,EXT] [--settle MS]
//! [--threads P] -- COMMAND...` with the library already in its cache: [`launch`] does
//! those with a few system calls and execs the command, before libc has started.
//! Anything else (help, `-f`, a bad option, the first launch of a version, a command
//! that cannot be run) returns, and the ordinary start (`main`, clap) handles it from
//! the beginning: nothing done here is left behind.
//!
//! What this code must not do, because libc has not started: allocate, call a libc
//! function or compile to a call of one (a loop the compiler takes for `memcpy`,
//! `memset`, `memcmp` or `strlen`; a copy of a value larger than 32 bytes in an
//! unoptimised build), use thread-local storage, or panic. So values stay small, bytes
//! are compared by [`same`] and written by `sys::early::Memory`, and everything is
//! generic rather than a trait object (a vtable is data a position-independent
//! executable relocates during libc's start-up). `tests/launcher.rs` disassembles the
//! launcher and checks that this code calls nothing outside itself.
//!
//! It does what `launcher::main` does for these options, in the same order of cache
//! directories, and builds the same environment, with two differences, both of which
//! leave the command as it would be without forkhook: the entries it does not set are
//! passed on as they were, in their order (std sorts them and drops duplicates and
//! entries without `=`), and an ignored SIGPIPE stays ignored (std's `exec` puts it
//! back to the default).

// `contains` on bytes calls core's memchr through a table that a position-independent
// build fills in during libc's start-up.
#![allow(clippy::manual_contains)]

use crate::sys::early::{self as raw, InitialStack, Memory};

/// What [`launch`] reads: the command line and the environment.
pub trait Source {
    /// Argument `i` (0 is the launcher), without its NUL.
    fn arg(&self, i: usize) -> Option<&'static [u8]>;
    /// The first value of the environment variable `name`, without its NUL.
    fn var(&self, name: &[u8]) -> Option<&'static [u8]>;
}

/// The options [`plan`] found. Small (no larger than 32 bytes): see the module's
/// documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// `--settle`, in milliseconds.
    pub settle: Option<u64>,
    /// Index of the command's first argument.
    pub command: u32,
    /// At least one `-e`.
    pub exts: bool,
    pub quiet: bool,
    pub verbose: bool,
    pub threads: Threads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Unset,
    Checkpoint,
    Skip,
}

/// `a == b`, byte by byte: slice equality compiles to a call of `memcmp`.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn starts_with<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = (s.get(..prefix.len())?, s.get(prefix.len()..)?);
    same(head, prefix).then_some(rest)
}

/// The value of an option that takes one: `--name=value`, `--name value`, and for a
/// short name also `-xvalue` and `-x value`. Advances `next` past a separate value.
fn value_of(
    arg: &'static [u8],
    long: &[u8],
    short: Option<&[u8]>,
    next: &mut usize,
    source: &impl Source,
) -> Option<Option<&'static [u8]>> {
    let separate = |next: &mut usize| {
        let value = source.arg(*next)?;
        *next += 1;
        // clap would take it for an option, or for the end of the options.
        (value.first() != Some(&b'-')).then_some(value)
    };
    if same(arg, long) {
        return Some(separate(next));
    }
    if let Some(rest) = starts_with(arg, long).and_then(|r| starts_with(r, b"=")) {
        return Some(Some(rest));
    }
    let short = short?;
    if same(arg, short) {
        return Some(separate(next));
    }
    let attached = starts_with(arg, short)?;
    // `-e=lua`: clap's reading of it is left to clap.
    Some((attached.first() != Some(&b'=')).then_some(attached))
}

/// Calls `each` with every extension of an `-e` value, as `filter_regex` would use it;
/// false if the value is one this code leaves to clap and `filter_regex` (an empty
/// item, spaces, anything regex::escape would change).
pub fn each_extension(value: &[u8], mut each: impl FnMut(&[u8]) -> Option<()>) -> bool {
    for item in value.split(|&b| b == b',') {
        let mut ext = item;
        while let Some((b'.', rest)) = ext.split_first() {
            ext = rest;
        }
        let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
        if ext.is_empty() || !ext.iter().all(plain) || each(ext).is_none() {
            return false;
        }
    }
    true
}

/// One option before `--`.
#[derive(Clone, Copy)]
enum Item {
    Quiet,
    Verbose,
    Ext(&'static [u8]),
    Settle(&'static [u8]),
    Threads(&'static [u8]),
}

/// Walks the options before `--`, calling `each` with every one, and returns the
/// index of the command; None at the first item this code leaves to clap (or when
/// `each` says so).
fn walk(source: &impl Source, mut each: impl FnMut(Item) -> Option<()>) -> Option<usize> {
    let mut next = 1;
    loop {
        let arg = source.arg(next)?;
        next += 1;
        if same(arg, b"--") {
            source.arg(next)?;
            return Some(next);
        }
        let item = if same(arg, b"-q") || same(arg, b"--quiet") {
            Item::Quiet
        } else if same(arg, b"-v") || same(arg, b"--verbose") {
            Item::Verbose
        } else if let Some(value) = value_of(arg, b"--ext", Some(b"-e"), &mut next, source) {
            Item::Ext(value?)
        } else if let Some(value) = value_of(arg, b"--settle", None, &mut next, source) {
            Item::Settle(value?)
        } else if let Some(value) = value_of(arg, b"--threads", None, &mut next, source) {
            Item::Threads(value?)
        } else {
            return None;
        };
        each(item)?;
    }
}

/// Reads the command line; None when it is not one this code handles.
pub fn plan(source: &impl Source) -> Option<Plan> {
    let mut plan = Plan {
        settle: None,
        command: 0,
        exts: false,
        quiet: false,
        verbose: false,
        threads: Threads::Unset,
    };
    let command = walk(source, |item| {
        match item {
            // Twice, or -q with -v, are for clap to report.
            Item::Quiet if !plan.quiet && !plan.verbose => plan.quiet = true,
            Item::Verbose if !plan.quiet && !plan.verbose => plan.verbose = true,
            Item::Ext(value) if each_extension(value, |_| Some(())) => plan.exts = true,
            Item::Settle(value) if plan.settle.is_none() => {
                plan.settle = Some(milliseconds(value)?)
            }
            Item::Threads(value) if plan.threads == Threads::Unset => {
                plan.threads = if same(value, b"checkpoint") {
                    Threads::Checkpoint
                } else if same(value, b"skip") {
                    Threads::Skip
                } else {
                    return None;
                }
            }
            _ => return None,
        }
        Some(())
    })?;
    plan.command = u32::try_from(command).ok()?;
    // No -e: the filter must come from the environment, else the ordinary start says
    // there is nothing to watch.
    if !plan.exts
        && source.var(b"FORKMON_FILTER").is_none()
        && source.var(b"FORKHOOK_FILTER").is_none()
    {
        return None;
    }
    Some(plan)
}

/// Digits only (clap's u64 parser also takes a `+`; that case is left to it).
fn milliseconds(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// Writes `n` in decimal (no digit buffer: an unoptimised build fills one with
/// `memset`).
fn push_number(memory: &mut Memory, n: u64) -> Option<()> {
    let mut unit = 1;
    while n / unit >= 10 {
        unit *= 10;
    }
    while unit > 0 {
        memory.push(&[b'0' + (n / unit % 10) as u8])?;
        unit /= 10;
    }
    Some(())
}

/// The cache directories `launcher::install_library` tries, in its order, written as
/// `<dir>/libforkhook-<hash>.so` into `memory` after what is there; `each` is called
/// with the start of each path, and stops the walk by returning Some.
fn library_candidates<T>(
    source: &impl Source,
    memory: &mut Memory,
    hash: &[u8],
    mut each: impl FnMut(&mut Memory, usize) -> Option<T>,
) -> Option<T> {
    let start = memory.len();
    let uid_dir = |memory: &mut Memory| -> Option<()> {
        memory.push(b"forkhook-")?;
        push_number(memory, u64::from(raw::getuid()))
    };
    for which in 0..3 {
        memory.truncate(start);
        let written = match which {
            0 => source
                .var(b"XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .and_then(|base| join(memory, base, |m| m.push(b"forkhook"))),
            1 => source
                .var(b"HOME")
                .filter(|v| !v.is_empty())
                .and_then(|base| join(memory, base, |m| m.push(b".cache/forkhook"))),
            // std::env::temp_dir: TMPDIR as it is (also empty), else /tmp.
            _ => join(memory, source.var(b"TMPDIR").unwrap_or(b"/tmp"), uid_dir),
        };
        if written.is_none() {
            continue;
        }
        memory.push(b"/libforkhook-")?;
        memory.push(hash)?;
        memory.push(b".so\0")?;
        if let Some(found) = each(memory, start) {
            return Some(found);
        }
    }
    None
}

/// `PathBuf::from(base).join(rest)` for a relative `rest`: a `/` between them unless
/// `base` is empty or ends with one.
fn join(
    memory: &mut Memory,
    base: &[u8],
    rest: impl FnOnce(&mut Memory) -> Option<()>,
) -> Option<()> {
    memory.push(base)?;
    if base.last().is_some_and(|&b| b != b'/') {
        memory.push(b"/")?;
    }
    rest(memory)
}

/// How the library's path is judged, as `install_into` judges it.
enum Cached {
    /// The copy is there: use it.
    Found,
    /// LD_PRELOAD cannot hold it: `install_into` tries the next directory.
    Unusable,
    /// Missing or of another size: `install_into` would write it, which is left to it.
    Missing,
}

fn judge(path: &[u8], library_len: u64) -> Cached {
    if path.iter().any(|&b| b == b' ' || b == b':') {
        return Cached::Unusable;
    }
    match raw::file_size(path) {
        Some(size) if size == library_len => Cached::Found,
        _ => Cached::Missing,
    }
}

/// Names of the variables the launcher sets (or removes), whose inherited entries
/// are left out of the command's environment.
fn replaced(name: &[u8], plan: &Plan, marker: bool) -> bool {
    same(name, b"LD_PRELOAD")
        || same(name, b"FORKHOOK_LAUNCHER_PID")
        || (marker && same(name, b"FORKHOOK_SESSION_MARKER"))
        || (plan.exts && (same(name, b"FORKHOOK_FILTER") || same(name, b"FORKMON_FILTER")))
        || (plan.quiet && same(name, b"FORKHOOK_QUIET"))
        || (plan.verbose && same(name, b"FORKHOOK_VERBOSE"))
        || (plan.settle.is_some() && same(name, b"FORKHOOK_SETTLE_MS"))
        || (plan.threads != Threads::Unset && same(name, b"FORKHOOK_THREADS"))
}

/// The launcher's variables, written into `memory` as NUL-terminated "NAME=value"
/// entries, after the library's path (see [`exec`]). `marker` is the session marker's
/// descriptor.
fn write_settings(
    source: &impl Source,
    plan: &Plan,
    memory: &mut Memory,
    marker: Option<i32>,
) -> Option<()> {
    // LD_PRELOAD=<library> is written already, without its NUL: [:<inherited>]
    if let Some(inherited) = source.var(b"LD_PRELOAD").filter(|v| !v.is_empty()) {
        memory.push(b":")?;
        memory.push(inherited)?;
    }
    memory.push(b"\0")?;
    if plan.exts {
        memory.push(b"FORKHOOK_FILTER=\\.(?:")?;
        let mut first = true;
        walk(source, |item| {
            let Item::Ext(value) = item else {
                return Some(());
            };
            each_extension(value, |ext| {
                if !first {
                    memory.push(b"|")?;
                }
                first = false;
                memory.push(ext)
            })
            .then_some(())
        })?;
        memory.push(b")$\0")?;
    }
    if plan.quiet {
        memory.push(b"FORKHOOK_QUIET=1\0")?;
    }
    if plan.verbose {
        memory.push(b"FORKHOOK_VERBOSE=1\0")?;
    }
    if let Some(ms) = plan.settle {
        memory.push(b"FORKHOOK_SETTLE_MS=")?;
        push_number(memory, ms)?;
        memory.push(b"\0")?;
    }
    match plan.threads {
        Threads::Unset => {}
        Threads::Checkpoint => memory.push(b"FORKHOOK_THREADS=checkpoint\0")?,
        Threads::Skip => memory.push(b"FORKHOOK_THREADS=skip\0")?,
    }
    memory.push(b"FORKHOOK_LAUNCHER_PID=")?;
    push_number(memory, raw::getpid() as u64)?;
    memory.push(b"\0")?;
    if let Some(fd) = marker {
        memory.push(b"FORKHOOK_SESSION_MARKER=")?;
        push_number(memory, fd as u64)?;
        memory.push(b"\0")?;
    }
    Some(())
}

/// What execvp(3) does on failure: keep looking along PATH after these.
fn try_next_directory(errno: i32) -> bool {
    matches!(
        errno,
        libc::EACCES
            | libc::ENOENT
            | libc::ESTALE
            | libc::ENOTDIR
            | libc::ENODEV
            | libc::EHOSTDOWN
            | libc::ETIMEDOUT
    )
}

/// Handles the launch if it is one of the common kind (see the module's
/// documentation); returns if not, or if exec failed, having undone everything.
/// `library_len` and `hash` are those of the embedded library.
pub fn launch(stack: &InitialStack, library_len: usize, hash: &[u8]) {
    let source = StackSource(stack);
    let Some(plan) = plan(&source) else {
        return;
    };
    // Room for every string written below, and the environment's pointers.
    let length = |name: &[u8]| source.var(name).map_or(0, |v| v.len());
    let mut needed = 4096
        + hash.len()
        + length(b"XDG_CACHE_HOME")
        + length(b"HOME")
        + length(b"TMPDIR")
        + length(b"LD_PRELOAD")
        + length(b"PATH");
    let mut i = 0;
    while let Some(arg) = stack.arg(i) {
        needed += arg.len();
        i += 1;
    }
    needed += 8 * (stack.environment().count() + 16);
    let Some(mut memory) = Memory::map(needed) else {
        return;
    };
    let marker = raw::memfd_inheritable(b"forkhook-session\0");
    // Returns only if nothing was run: leave no trace for the ordinary start.
    // The marker as descriptor 0, 1 or 2 means one of them was closed: Rust's start
    // opens /dev/null there, which is for it to do.
    if marker.is_some_and(|fd| fd > 2) {
        exec(&source, &plan, &mut memory, (library_len, hash), marker);
    }
    if let Some(fd) = marker {
        raw::close(fd);
    }
    memory.free();
}

/// Writes the command's environment and execs it; returns when the ordinary start
/// must take over.
fn exec(
    source: &StackSource,
    plan: &Plan,
    memory: &mut Memory,
    (library_len, hash): (usize, &[u8]),
    marker: Option<i32>,
) -> Option<()> {
    let stack = source.0;
    let settings = memory.len();
    memory.push(b"LD_PRELOAD=")?;
    let found = library_candidates(source, memory, hash, |memory, start| {
        match judge(memory.since(start), library_len as u64) {
            Cached::Found => Some(true),
            Cached::Unusable => None,
            Cached::Missing => Some(false),
        }
    })?;
    if !found {
        return None;
    }
    // The path ends with the NUL `judge` needed; the rest of the entry goes there.
    memory.truncate(memory.len() - 1);
    write_settings(source, plan, memory, marker)?;
    let settings_end = memory.len();

    memory.begin_array()?;
    let array = memory.len();
    for entry in stack.environment() {
        let name = entry
            .split(|&b| b == b'=' || b == 0)
            .next()
            .unwrap_or(entry);
        if !replaced(name, plan, marker.is_some()) {
            memory.push_pointer_to(entry)?;
        }
    }
    let mut at = settings;
    while at < settings_end {
        memory.push_pointer_to_own(at)?;
        at += memory.since(at).iter().position(|&b| b == 0)? + 1;
    }
    let env = memory.end_array(array)?;

    let command = plan.command as usize;
    let program = stack.arg(command)?;
    if program.iter().any(|&b| b == b'/') {
        stack.exec(program, command, memory, env);
        return None;
    }
    let name = program.split_last()?.1;
    // execvp(3)'s search: PATH, or its default.
    let path = source.var(b"PATH").unwrap_or(b"/bin:/usr/bin");
    let scratch = memory.len();
    for dir in path.split(|&b| b == b':') {
        memory.truncate(scratch);
        memory.push(dir)?;
        if !dir.is_empty() {
            memory.push(b"/")?;
        }
        memory.push(name)?;
        memory.push(b"\0")?;
        let errno = stack.exec(memory.since(scratch), command, memory, env);
        if !try_next_directory(errno) {
            // A script without `#!` (ENOEXEC) is for execvp to hand to /bin/sh.
            return None;
        }
    }
    // Not found: the ordinary start says so.
    None
}

/// The real command line and environment, on the initial stack.
struct StackSource<'s>(&'s InitialStack);

impl Source for StackSource<'_> {
    fn arg(&self, i: usize) -> Option<&'static [u8]> {
        Some(self.0.arg(i)?.split_last()?.1)
    }

    fn var(&self, name: &[u8]) -> Option<&'static [u8]> {
        self.0.environment().find_map(|entry| {
            let value = starts_with(entry, name).and_then(|rest| starts_with(rest, b"="))?;
            Some(value.split_last()?.1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Line(Vec<&'static str>, Vec<&'static str>);

    impl Source for Line {
        fn arg(&self, i: usize) -> Option<&'static [u8]> {
            self.0.get(i).map(|a| a.as_bytes())
        }
        fn var(&self, name: &[u8]) -> Option<&'static [u8]> {
            self.1.iter().find_map(|e| {
                let (k, v) = e.split_once('=')?;
                same(k.as_bytes(), name).then_some(v.as_bytes())
            })
        }
    }

    fn plan_of(args: &str, env: &[&'static str]) -> Option<Plan> {
        let args: Vec<&'static str> = std::iter::once("forkhook")
            .chain(String::leak(args.to_string()).split(' '))
            .collect();
        plan(&Line(args, env.to_vec()))
    }

    fn plain(command: u32) -> Plan {
        Plan {
            settle: None,
            command,
            exts: true,
            quiet: false,
            verbose: false,
            threads: Threads::Unset,
        }
    }

    #[test]
    fn the_common_command_lines_are_planned() {
        assert_eq!(plan_of("-e lua -- lua5.4 main.lua", &[]), Some(plain(4)));
        assert_eq!(plan_of("-elua,py -- x", &[]), Some(plain(3)));
        assert_eq!(plan_of("--ext=.lua --ext h,c -- x", &[]), Some(plain(5)));
        assert_eq!(
            plan_of("-q --settle 007 --threads=skip -e lua -- x", &[]),
            Some(Plan {
                settle: Some(7),
                quiet: true,
                threads: Threads::Skip,
                ..plain(8)
            })
        );
        assert_eq!(
            plan_of("-v --threads checkpoint -- x", &["FORKMON_FILTER=%.lua$"]),
            Some(Plan {
                exts: false,
                verbose: true,
                threads: Threads::Checkpoint,
                ..plain(5)
            })
        );
        // A filter variable counts even when empty, as `var_os` sees it.
        assert!(plan_of("-- x", &["FORKHOOK_FILTER="]).is_some());
    }

    #[test]
    fn everything_else_is_left_to_the_ordinary_start() {
        for line in [
            "--help",
            "--version",
            "--print-library",
            "-f \\.lua$ -- x",
            "-e lua x",
            "-e lua --",
            "-e -- x",
            "-e=lua -- x",
            "-e -q -- x",
            "-e lua, -- x",
            "-e lua,,py -- x",
            "-e .. -- x",
            "-e tar.gz -- x",
            "-e l+a -- x",
            "-q -q -e lua -- x",
            "-q -v -e lua -- x",
            "-qv -e lua -- x",
            "--settle +5 -e lua -- x",
            "--settle 99999999999999999999 -e lua -- x",
            "--settle 1 --settle 2 -e lua -- x",
            "--threads maybe -e lua -- x",
            "--threads skip --threads skip -e lua -- x",
            "--quiet=1 -e lua -- x",
            "-- x",
        ] {
            assert_eq!(plan_of(line, &[]), None, "{line}");
        }
    }

    #[test]
    fn extensions_are_those_the_filter_is_built_from() {
        let mut seen = vec![];
        assert!(each_extension(b"lua,.py,..h", |e| {
            seen.push(String::from_utf8_lossy(e).into_owned());
            Some(())
        }));
        assert_eq!(seen, ["lua", "py", "h"]);
        let exts: Vec<String> = seen.clone();
        let built = crate::launcher::filter_regex(&exts, &[]).unwrap().unwrap();
        assert_eq!(built, r"\.(?:lua|py|h)$");
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut memory = Memory::map(4096).unwrap();
        for n in [0, 7, 10, 99, 100, 4_294_967_296, u64::MAX] {
            let start = memory.len();
            push_number(&mut memory, n).unwrap();
            assert_eq!(memory.since(start), n.to_string().as_bytes());
        }
        memory.free();
    }
}
