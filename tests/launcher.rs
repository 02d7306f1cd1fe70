//! The launcher's two starts: the common launches done at the entry point before libc
//! starts (`launcher::early`), and the ordinary start that handles everything. They
//! must give the command the same environment, find it the same way, and the first
//! must never call into libc.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// `forkhook` with its cache in `cache` (so the first launch has no library to find
/// there, and takes the ordinary start, which writes it).
fn launcher_with_cache(cache: &Path) -> Command {
    let mut cmd = forkhook_command();
    cmd.env("XDG_CACHE_HOME", cache);
    cmd
}

/// What `env` printed under the launcher, as a map, after checking that it ran as the
/// launcher's own process (the launcher execs) and that the session marker is open.
fn environment_of(mut cmd: Command) -> BTreeMap<String, String> {
    let mut s = Session::start(&mut cmd);
    assert!(s.wait_exit(T).success(), "{}", s.transcript());
    let mut env: BTreeMap<String, String> = s
        .stdout_lines()
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pid = env.remove("FORKHOOK_LAUNCHER_PID");
    assert_eq!(
        pid,
        Some(s.pid().to_string()),
        "FORKHOOK_LAUNCHER_PID\n{}",
        s.transcript()
    );
    env
}

/// A program that prints its environment and whether the session marker is open, and
/// ignores the library (a static program loads nothing).
const PRINT_ENVIRONMENT: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
extern char **environ;
int main(void) {
    for (char **e = environ; *e; e++) puts(*e);
    const char *marker = getenv("FORKHOOK_SESSION_MARKER");
    if (marker) printf("marker open=%d\n", fcntl(atoi(marker), F_GETFD) >= 0);
    return 0;
}
"#;

#[test]
fn both_starts_give_the_command_the_same_environment() {
    if !require_tool("gcc") {
        return;
    }
    let _l = lock();
    let dir = TempDir::new("launcher-environment");
    let print = compile_c_with(&dir, "printenv", PRINT_ENVIRONMENT, &["-static"]);
    // Options, and variables the launcher inherits.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        (
            &["-e", "lua,py", "-q", "--settle", "007", "--threads", "skip"],
            // Replaced, removed, and passed on.
            &[
                ("FORKMON_FILTER", "%.c$"),
                ("FORKHOOK_QUIET", "0"),
                ("FORKHOOK_VERBOSE", "1"),
                ("LD_PRELOAD", "/nowhere/libother.so"),
            ],
        ),
        (&["--ext=.lua", "-v", "-eh", "--ext", "c"], &[]),
        (
            &["--threads=checkpoint", "--settle=0"],
            &[("FORKMON_FILTER", "%.lua$"), ("FORKHOOK_FILTER", "")],
        ),
    ];
    for (i, (options, inherited)) in cases.iter().enumerate() {
        let cache = dir.join(format!("cache{i}"));
        let run = || {
            let mut cmd = launcher_with_cache(&cache);
            cmd.args(*options).arg("--").arg(&print);
            cmd.envs(inherited.iter().copied());
            environment_of(cmd)
        };
        // The first finds no library in the new cache: the ordinary start writes it.
        let ordinary = run();
        let early = run();
        assert_eq!(
            early, ordinary,
            "forkhook {options:?}: the early start (left) and the ordinary one differ"
        );
        assert_eq!(ordinary.get("marker open").map(String::as_str), Some("1"));
        let preload = &ordinary["LD_PRELOAD"];
        assert!(
            preload.starts_with(&cache.join("forkhook").display().to_string()),
            "{preload}"
        );
    }
}

/// The system calls of a launch, from strace, up to the command's exec.
fn launch_trace(dir: &TempDir, cmd: &mut Command, name: &str) -> String {
    let trace = dir.join(format!("{name}.trace"));
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut traced = Command::new("strace");
    traced
        .args(["-f", "-qq", "-e", "trace=execve,arch_prctl", "-o"])
        .arg(&trace)
        .arg(program)
        .args(args);
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => traced.env(key, v),
            None => traced.env_remove(key),
        };
    }
    let mut s = Session::start(&mut traced);
    assert!(s.wait_exit(T).success(), "{}", s.transcript());
    let text = std::fs::read_to_string(&trace).expect("read the trace");
    // Up to the command's successful exec, the second one that succeeds.
    let mut out = String::new();
    let mut execs = 0;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.contains("execve(") && line.trim_end().ends_with("= 0") {
            execs += 1;
            if execs == 2 {
                return out;
            }
        }
    }
    panic!("the command was never run:\n{text}");
}

#[test]
fn a_common_launch_runs_the_command_before_libc_starts() {
    if !require_tool("strace") {
        return;
    }
    let _l = lock();
    let dir = TempDir::new("launcher-early");
    let cache = dir.join("cache");
    let mut launch = launcher_with_cache(&cache);
    launch.args(["-e", "lua", "--", "true"]);
    // glibc's start sets up thread-local storage (arch_prctl ARCH_SET_FS) before main;
    // the first launch, with no library cached yet, goes through it.
    let ordinary = launch_trace(&dir, &mut launch, "ordinary");
    assert!(ordinary.contains("arch_prctl"), "{ordinary}");
    let early = launch_trace(&dir, &mut launch, "early");
    assert!(!early.contains("arch_prctl"), "libc started:\n{early}");
}

#[test]
fn the_command_is_looked_up_as_execvp_does() {
    let _l = lock();
    let dir = TempDir::new("launcher-path");
    let first = dir.join("first");
    let second = dir.join("second");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    // Found first but not executable: execvp goes on looking.
    std::fs::write(first.join("tool"), "echo wrong tool\n").unwrap();
    let tool = second.join("tool");
    std::fs::write(&tool, "#!/bin/sh\necho right tool \"$@\"\n").unwrap();
    // No `#!`: execvp hands it to /bin/sh.
    let script = second.join("plain-script");
    std::fs::write(&script, "echo plain script ran\n").unwrap();
    for file in [&tool, &script] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}:/usr/bin:/bin", first.display(), second.display());
    let mut s = Session::start(
        forkhook_command()
            .env("PATH", &path)
            .args(["-e", "lua", "--", "tool", "a b"]),
    );
    s.expect_stdout("right tool a b", T);
    assert!(s.wait_exit(T).success(), "{}", s.transcript());
    assert_eq!(s.count_stdout("wrong tool"), 0, "{}", s.transcript());

    let mut s = Session::start(forkhook_command().env("PATH", &path).args([
        "-e",
        "lua",
        "--",
        "plain-script",
    ]));
    s.expect_stdout("plain script ran", T);
    assert!(s.wait_exit(T).success(), "{}", s.transcript());

    let mut s = Session::start(forkhook_command().env("PATH", &path).args([
        "-q",
        "-e",
        "lua",
        "--",
        "no-such-tool-anywhere",
    ]));
    assert_eq!(s.wait_exit(T).code(), Some(127), "{}", s.transcript());
    s.expect_stderr("no-such-tool-anywhere: command not found", T);
}

/// Started with its standard input closed, the launcher's ordinary start opens
/// /dev/null there (Rust's runtime does), so the session marker never takes its place.
#[test]
fn a_closed_standard_input_is_not_taken_by_the_session_marker() {
    let _l = lock();
    let mut cmd = forkhook_command();
    cmd.args([
        "-e",
        "lua",
        "--",
        "sh",
        "-c",
        "readlink /proc/$$/fd/0 || echo closed",
    ]);
    // SAFETY: close() is async-signal-safe and touches only the child's descriptor.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let mut s = Session::start(&mut cmd);
    assert!(s.wait_exit(T).success(), "{}", s.transcript());
    assert_eq!(s.stdout_lines(), ["/dev/null"], "{}", s.transcript());
}

#[test]
fn what_the_early_start_leaves_to_the_ordinary_one_still_works() {
    let _l = lock();
    for (args, code, needle) in [
        (&["--help"][..], 0, "Usage"),
        (&["--version"][..], 0, "forkhook"),
        (&["-e", "lua", "true"][..], 2, "Usage"),
        (
            &["-q", "-v", "-e", "lua", "--", "true"][..],
            2,
            "cannot be used with",
        ),
        (
            &["-e", "lua", "--settle", "soon", "--", "true"][..],
            2,
            "invalid value",
        ),
        (
            &["-e", "lua", "--threads", "some", "--", "true"][..],
            2,
            "invalid value",
        ),
        (&["-f", "(unclosed", "--", "true"][..], 2, "(unclosed"),
        (&["-e", "lua", "--"][..], 2, "COMMAND"),
    ] {
        let mut s = Session::start(forkhook_command().args(args));
        assert_eq!(
            s.wait_exit(T).code(),
            Some(code),
            "{args:?}\n{}",
            s.transcript()
        );
        let all = format!(
            "{}\n{}",
            s.stdout_lines().join("\n"),
            s.stderr_lines().join("\n")
        );
        assert!(all.contains(needle), "{args:?}: no {needle:?} in\n{all}");
    }
}

// ---------------------------------------------------------------------------------------
// What the early start may call

/// Every function of `binary` with its calls: (start address, name) and its call or
/// jump targets (an address, or the text of an indirect one).
struct Disassembly {
    functions: BTreeMap<u64, Function>,
}

struct Function {
    name: String,
    section: String,
    targets: Vec<Result<u64, String>>,
}

impl Disassembly {
    fn of(binary: &Path) -> Disassembly {
        let output = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", "-C"])
            .arg(binary)
            .output()
            .expect("run objdump");
        assert!(output.status.success(), "objdump: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut functions = BTreeMap::new();
        let (mut section, mut current) = (String::new(), None);
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Disassembly of section ") {
                section = rest.trim_end_matches(':').to_string();
                continue;
            }
            // "0000000000401000 <name>:"
            if let Some((address, name)) = line
                .strip_suffix(">:")
                .and_then(|l| l.split_once(" <"))
                .and_then(|(a, n)| Some((u64::from_str_radix(a, 16).ok()?, n)))
            {
                functions.insert(
                    address,
                    Function {
                        name: name.to_string(),
                        section: section.clone(),
                        targets: vec![],
                    },
                );
                current = Some(address);
                continue;
            }
            // "  401234:\tcall   401000 <name>" or "\tcall   *%rax"
            let Some(function) = current.and_then(|a| functions.get_mut(&a)) else {
                continue;
            };
            let Some((mnemonic, operand)) = line
                .split('\t')
                .nth(1)
                .and_then(|i| i.split_once(char::is_whitespace))
            else {
                continue;
            };
            let operand = operand.trim();
            if !(mnemonic.starts_with("call") || mnemonic.starts_with("jmp")) {
                continue;
            }
            if let Some(address) = operand
                .split_whitespace()
                .next()
                .and_then(|a| u64::from_str_radix(a, 16).ok())
            {
                function.targets.push(Ok(address));
            } else if mnemonic.starts_with("jmp") && operand.starts_with("*%r") {
                // A jump table: its targets are in this function.
            } else {
                function.targets.push(Err(format!("{mnemonic} {operand}")));
            }
        }
        Disassembly { functions }
    }

    /// The function `address` is in.
    fn owner(&self, address: u64) -> Option<u64> {
        self.functions
            .range(..=address)
            .next_back()
            .map(|(&a, _)| a)
    }

    fn start_of(&self, name: &str) -> Option<u64> {
        self.functions
            .iter()
            .find(|(_, f)| f.name == name)
            .map(|(&a, _)| a)
    }
}

/// Reached only when a bug panics, which ends the process anyway.
fn is_panic_path(name: &str) -> bool {
    [
        "core::panicking::",
        "core::slice::index::slice_",
        "core::option::unwrap_failed",
        "core::option::expect_failed",
        "core::result::unwrap_failed",
        "_Unwind_Resume",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Before libc starts, a call through the PLT (in a static executable, to `memcpy`,
/// `memset`, `strlen`, picked for the CPU by libc's start-up) crashes, and an indirect
/// call may go through a table not yet filled in. This walks every call the entry
/// point can reach in the launcher the tests run and fails on either.
#[test]
fn the_early_start_calls_nothing_outside_itself() {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) || !require_tool("objdump") {
        return;
    }
    let sections = Command::new("objdump")
        .arg("-h")
        .arg(forkhook_bin())
        .output()
        .expect("run objdump -h");
    if String::from_utf8_lossy(&sections.stdout).contains(" .interp ") {
        // Built without .cargo/config.toml's flags: the dynamic loader has relocated
        // everything (and started libc's CPU probing) before the entry point.
        eprintln!("SKIPPED: the launcher is dynamically linked");
        return;
    }
    let code = Disassembly::of(&forkhook_bin());
    let entry = code.start_of("forkhook_entry").expect("no forkhook_entry");
    let libc_start = code.start_of("_start").expect("no _start");
    let mut parent = BTreeMap::from([(entry, entry)]);
    let mut queue = std::collections::VecDeque::from([entry]);
    let mut bad = vec![];
    while let Some(address) = queue.pop_front() {
        let function = &code.functions[&address];
        if is_panic_path(&function.name) {
            continue;
        }
        for target in &function.targets {
            let callee = match target {
                Ok(to) => code.owner(*to),
                Err(indirect) => {
                    bad.push((address, indirect.clone()));
                    continue;
                }
            };
            match callee {
                Some(c) if c == address => {}
                Some(c) if address == entry && c == libc_start => {}
                Some(c) if !code.functions[&c].section.contains("plt") => {
                    if let std::collections::btree_map::Entry::Vacant(e) = parent.entry(c) {
                        e.insert(address);
                        queue.push_back(c);
                    }
                }
                _ => bad.push((address, format!("a call through the PLT: {target:?}"))),
            }
        }
    }
    let chain = |mut address: u64| {
        let mut names = vec![];
        loop {
            names.push(code.functions[&address].name.clone());
            if address == entry {
                return names.join("\n  called by ");
            }
            address = parent[&address];
        }
    };
    assert!(parent.len() > 3, "the walk found too little: {parent:?}");
    let report: Vec<String> = bad
        .iter()
        .map(|(from, what)| format!("{what}\n  in {}", chain(*from)))
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}
