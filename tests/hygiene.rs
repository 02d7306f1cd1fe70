//! Process hygiene: what makes forkhook safe to leave running all day. One run at a
//! time, no orphans, clean stops, terminals, run endings, threads, no lost edits,
//! faults and bad input, dev servers.

mod common;

use common::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn run_ended(s: &mut Session) {
    s.expect_stderr("run exited", T);
}

/// A process counts as gone once it has no /proc entry or is a zombie (dead, waiting
/// for a parent to reap it).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim().chars().next());
            state != Some('Z')
        }
        Err(_) => false,
    }
}

fn all_gone(pids: &[i32]) -> bool {
    wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        pids.iter().all(|&p| !alive(p))
    })
}

/// Reads a watched file, then starts a background child and a detached daemon
/// (double fork + setsid), prints their pids and waits forever.
const SPAWNER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    FILE *f = fopen("input.txt", "r");
    char v[64] = "";
    if (f) fgets(v, sizeof v, f);
    pid_t background = fork();
    if (background == 0) { execlp("sleep", "sleep", "300", (char *)0); _exit(1); }
    int link[2];
    pipe(link);
    pid_t middle = fork();
    if (middle == 0) {
        setsid();
        pid_t daemon = fork();
        if (daemon == 0) { close(link[0]); close(link[1]); execlp("sleep", "sleep", "301", (char *)0); _exit(1); }
        dprintf(link[1], "%d", daemon);
        _exit(0);
    }
    close(link[1]);
    waitpid(middle, 0, 0);
    char daemon[32] = "";
    read(link[0], daemon, sizeof daemon - 1);
    printf("input %s", v);
    printf("pids %d %d %s\n", getpid(), background, daemon);
    fflush(stdout);
    for (;;) pause();
}
"#;

fn pids_of(line: &str) -> Vec<i32> {
    line.split_whitespace()
        .skip(1)
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("not a pid list: {line}"))
        })
        .collect()
}

#[test]
fn a_resume_ends_the_old_run_and_everything_it_started_and_no_zombies_pile_up() {
    let _l = lock();
    let dir = TempDir::new("one-run");
    let program = compile_c(&dir, "spawner", SPAWNER);
    dir.write("input.txt", "1\n");
    let mut s = forkhook_in(&dir, &["-f", r"/input\.txt$"], &program);
    let first = pids_of(&s.expect_stdout("pids ", T));
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|&p| alive(p)));
    let baseline = s.descendant_processes().len();

    save_rename_over(&dir.join("input.txt"), "2\n");
    s.expect_stdout("input 2", T);
    let second = pids_of(&s.expect_stdout("pids ", T));
    assert!(
        first.iter().all(|&p| !alive(p)),
        "the old run, its child and its detached daemon must be gone before the new run: {first:?}\n{}",
        s.transcript()
    );
    assert!(second.iter().all(|&p| alive(p)));

    for round in 3..=102 {
        save_truncate_write(&dir.join("input.txt"), &format!("{round}\n"));
        s.expect_stdout(&format!("input {round}"), T);
        s.expect_stdout("pids ", T);
    }
    let after = s.descendant_processes();
    assert_eq!(
        after.len(),
        baseline,
        "after 100 resumes the session has as many processes (zombies included) as after the first run: {after:#?}"
    );
}

/// Prints the first line of a file, as `name line`.
const SHOW: &str = r#"
static void show(const char *name) {
    FILE *f = fopen(name, "r");
    char v[64] = "";
    if (f) { fgets(v, sizeof v, f); fclose(f); }
    printf("%s %s", name, v);
    fflush(stdout);
}
"#;

/// Compiles `includes`, then [`SHOW`], then `rest`.
fn compile_with_show(dir: &TempDir, name: &str, includes: &str, rest: &str) -> PathBuf {
    compile_c(dir, name, &format!("{includes}{SHOW}{rest}"))
}

/// a.txt, b.txt and c.txt, then a session on `program` with a checkpoint before
/// every file (FORKHOOK_CHECKPOINT_SHARE=1) and its verbose lines.
fn every_file_session(dir: &TempDir, program: &Path) -> Session {
    for name in ["a", "b", "c"] {
        dir.write(format!("{name}.txt"), &format!("{name}1\n"));
    }
    Session::start(
        forkhook_command()
            .args(["-v", "-e", "txt", "--"])
            .arg(program)
            .current_dir(&dir.path)
            .env("FORKHOOK_CHECKPOINT_SHARE", "1"),
    )
}

/// For a program that shows a.txt, b.txt and c.txt then prints `pid N`, in an
/// [`every_file_session`] past its first run: saving b.txt resumes from checkpoint 2,
/// then saving c.txt from checkpoint 3, and each time the old run is gone.
fn resume_from_b_then_c(dir: &TempDir, s: &mut Session) {
    let first = pids_of(&s.expect_stdout("pid ", T))[0];
    save_rename_over(&dir.join("b.txt"), "b2\n");
    s.expect_stderr("resuming from checkpoint 2", T);
    s.expect_stdout("b.txt b2", T);
    s.expect_stdout("c.txt c1", T);
    let second = pids_of(&s.expect_stdout("pid ", T))[0];
    assert!(all_gone(&[first]), "{}", s.transcript());

    save_rename_over(&dir.join("c.txt"), "c2\n");
    s.expect_stderr("resuming from checkpoint 3", T);
    s.expect_stdout("c.txt c2", T);
    s.expect_stdout("pid ", T);
    assert!(all_gone(&[second]), "{}", s.transcript());
}

/// Reads a.txt, b.txt and c.txt (with [`every_file_session`], a checkpoint before
/// each), starting a background child and a detached daemon between b and c. Prints
/// the children the kernel lists for it, then its pids.
const BRANCHES_INCLUDES: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
"#;
const BRANCHES: &str = r#"
int main(void) {
    show("a.txt");
    show("b.txt");
    pid_t background = fork();
    if (background == 0) { execlp("sleep", "sleep", "300", (char *)0); _exit(1); }
    pid_t middle = fork();
    if (middle == 0) {
        setsid();
        if (fork() == 0) { execlp("sleep", "sleep", "301", (char *)0); _exit(1); }
        _exit(0);
    }
    waitpid(middle, 0, 0);
    show("c.txt");
    char path[64], children[256] = "";
    snprintf(path, sizeof path, "/proc/self/task/%d/children", getpid());
    FILE *c = fopen(path, "r");
    if (c) { fgets(children, sizeof children, c); fclose(c); }
    printf("children [%s] background %d\n", children, background);
    printf("pids %d %d\n", getpid(), background);
    fflush(stdout);
    for (;;) pause();
}
"#;

/// The pids of the session's processes running `sleep seconds`.
fn session_sleeps(s: &Session, seconds: &str) -> Vec<i32> {
    let want = format!("sleep\0{seconds}\0");
    s.descendant_processes()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| c == want.as_bytes())
        })
        .map(|p| p.pid)
        .collect()
}

#[test]
fn checkpoints_are_not_the_programs_children_and_a_resume_ends_the_whole_old_branch() {
    let _l = lock();
    let dir = TempDir::new("branches");
    let program = compile_with_show(&dir, "brancher", BRANCHES_INCLUDES, BRANCHES);
    let mut s = every_file_session(&dir, &program);
    s.expect_stderr("checkpoint 3 before", T);
    // The kernel's list of the run's children: its background child only (the
    // daemon's parent has been reaped), never one of the checkpoints.
    let children = s.expect_stdout("children ", T);
    let background = children.rsplit(' ').next().unwrap().trim();
    assert_eq!(
        children.trim(),
        format!("children [{background} ] background {background}"),
        "{}",
        s.transcript()
    );
    let first = pids_of(&s.expect_stdout("pids ", T));
    // The signals blocked around each clone are unblocked again in the run.
    let status = std::fs::read_to_string(format!("/proc/{}/status", first[0])).unwrap();
    let blocked = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
    assert_eq!(
        blocked.split_whitespace().nth(1),
        Some("0000000000000000"),
        "{status}"
    );
    let daemons = session_sleeps(&s, "301");
    assert_eq!(daemons.len(), 1, "{:#?}", s.descendant_processes());

    // c.txt resumes from the checkpoint before it: taken by the run, which goes on
    // beside it. The run, its child and its daemon go all the same.
    save_rename_over(&dir.join("c.txt"), "c2\n");
    s.expect_stdout("c.txt c2", T);
    let second = pids_of(&s.expect_stdout("pids ", T));
    assert!(
        first.iter().chain(&daemons).all(|&p| !alive(p)),
        "the old run, its child and its daemon must be gone: {first:?} {daemons:?}\n{}",
        s.transcript()
    );
    assert_ne!(second[0], first[0]);

    // b.txt resumes from an earlier checkpoint: the run forked from the later one
    // goes, and so does that checkpoint.
    save_rename_over(&dir.join("b.txt"), "b2\n");
    s.expect_stdout("b.txt b2", T);
    let children = s.expect_stdout("children ", T);
    let third = pids_of(&s.expect_stdout("pids ", T));
    assert!(
        second.iter().all(|&p| !alive(p)),
        "the second run and its child must be gone: {second:?}\n{}",
        s.transcript()
    );
    assert!(children.contains(&format!("[{} ]", third[1])), "{children}");
    assert_eq!(session_sleeps(&s, "300"), vec![third[1]]);
    assert_eq!(session_sleeps(&s, "301").len(), 1);
}

#[test]
fn a_checkpoint_killed_from_outside_hands_its_files_to_the_one_before() {
    let _l = lock();
    let dir = TempDir::new("dead-checkpoint");
    let program = compile_with_show(&dir, "brancher", BRANCHES_INCLUDES, BRANCHES);
    let mut s = every_file_session(&dir, &program);
    s.expect_stderr("checkpoint 3 before", T);
    let run = pids_of(&s.expect_stdout("pids ", T))[0];
    // Checkpoint 1 is the coordinator's child; 2 and 3 sit beside the run under it.
    let processes = s.descendant_processes();
    let first = processes
        .iter()
        .find(|p| p.ppid == s.pid() as i32)
        .expect("checkpoint 1")
        .pid;
    let later: Vec<i32> = processes
        .iter()
        .filter(|p| p.ppid == first && p.pid != run)
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("brancher"))
        })
        .map(|p| p.pid)
        .collect();
    assert_eq!(later.len(), 2, "checkpoints 2 and 3: {processes:#?}");
    for &pid in &later {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(all_gone(&later));

    save_rename_over(&dir.join("c.txt"), "c2\n");
    s.expect_stderr("checkpoint 3 is gone; resuming from the one before it", T);
    s.expect_stderr("checkpoint 2 is gone; resuming from the one before it", T);
    s.expect_stdout("a.txt a1", T);
    s.expect_stdout("c.txt c2", T);
    let second = pids_of(&s.expect_stdout("pids ", T));
    assert!(!alive(run), "{}", s.transcript());
    assert!(alive(second[0]));
}

#[test]
fn where_siblings_are_refused_checkpoints_are_taken_in_place() {
    let _l = lock();
    let dir = TempDir::new("no-siblings");
    // A sandbox that refuses clone(CLONE_PARENT) (EPERM), as some seccomp profiles
    // do; fork is a clone without that flag and still works.
    let program = compile_with_show(
        &dir,
        "sandboxed",
        r#"
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
"#,
        r#"
int main(void) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_PARENT, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof code / sizeof code[0], code };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("seccomp");
        return 1;
    }
    show("a.txt");
    show("b.txt");
    show("c.txt");
    printf("pid %d\n", getpid());
    fflush(stdout);
    for (;;) pause();
}
"#,
    );
    let mut s = every_file_session(&dir, &program);
    s.expect_stderr("checkpoints are taken in place from now on", T);
    s.expect_stderr("checkpoint 3 before", T);
    resume_from_b_then_c(&dir, &mut s);
    let transcript = s.transcript();
    assert!(
        !transcript.contains("error: ") && !transcript.contains("warning: "),
        "{transcript}"
    );
}

#[test]
fn a_run_that_starts_a_thread_between_checkpoints_resumes_from_either_side() {
    let _l = lock();
    let dir = TempDir::new("thread-between");
    // b's checkpoint sits beside the run; c's, with two threads, is taken in place.
    let source = format!(
        "#include <pthread.h>\n#include <stdio.h>\n#include <unistd.h>\n{SHOW}{}",
        r#"
static void *idle(void *arg) { (void)arg; for (;;) pause(); return 0; }
int main(void) {
    show("a.txt");
    show("b.txt");
    pthread_t t;
    pthread_create(&t, 0, idle, 0);
    show("c.txt");
    printf("pid %d\n", getpid());
    fflush(stdout);
    for (;;) pause();
}
"#
    );
    let program = compile_c_with(&dir, "threaded", &source, &["-pthread"]);
    let mut s = every_file_session(&dir, &program);
    s.expect_stderr("runs 2 threads at a checkpoint", T);
    s.expect_stderr("checkpoint 3 before", T);
    resume_from_b_then_c(&dir, &mut s);
    assert!(!s.transcript().contains("error: "), "{}", s.transcript());
}

#[test]
fn killing_the_coordinator_with_sigkill_leaves_no_process_behind() {
    let _l = lock();
    let dir = TempDir::new("sigkill");
    let program = compile_c(&dir, "spawner", SPAWNER);
    dir.write("input.txt", "1\n");
    let mut s = forkhook_in(&dir, &["-f", r"/input\.txt$"], &program);
    let run = pids_of(&s.expect_stdout("pids ", T));
    let mut everyone = s.descendants();
    everyone.extend(&run);
    assert!(
        everyone.len() >= 4,
        "checkpoint, run, child, daemon: {everyone:?}"
    );
    s.signal(libc::SIGKILL);
    assert!(
        all_gone(&everyone),
        "still alive after the coordinator was killed: {:?}",
        everyone.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

fn lua_forever(dir: &TempDir) {
    dir.write(
        "main.lua",
        "require 'mod'\nio.stdout:write('looping\\n') io.stdout:flush()\nwhile true do end\n",
    );
    dir.write("mod.lua", "return 1\n");
}

#[test]
fn ctrl_c_sigterm_and_sighup_end_everything_with_128_plus_the_signal() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    for (sig, to_group) in [
        (libc::SIGINT, true),
        (libc::SIGTERM, false),
        (libc::SIGHUP, false),
        (libc::SIGHUP, true),
    ] {
        let dir = TempDir::new("stop");
        lua_forever(&dir);
        let mut s = Session::start(
            forkhook_command()
                .args(["-e", "lua", "--", "lua5.4", "main.lua"])
                .current_dir(&dir.path),
        );
        s.expect_stdout("looping", T);
        let everyone = s.descendants();
        if to_group {
            s.signal_group(sig); // what the terminal does on Ctrl-C or hang-up
        } else {
            s.signal(sig);
        }
        let status = s.wait_exit(T);
        assert_eq!(
            status.code(),
            Some(128 + sig),
            "signal {sig}:\n{}",
            s.transcript()
        );
        assert!(all_gone(&everyone), "signal {sig}: processes left behind");
    }
}

#[test]
fn a_run_end_says_how_and_the_session_keeps_watching() {
    let _l = lock();
    let dir = TempDir::new("endings");
    let program = compile_c(
        &dir,
        "ender",
        r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    FILE *f = fopen("mode.txt", "r");
    char mode[32] = "";
    if (f) fgets(mode, sizeof mode, f);
    printf("mode %s", mode);
    fflush(stdout);
    if (!strncmp(mode, "crash", 5)) raise(SIGSEGV);
    if (!strncmp(mode, "fail", 4)) return 3;
    return 0;
}
"#,
    );
    dir.write("mode.txt", "ok\n");
    let mut s = forkhook_in(&dir, &["-e", "txt"], &program);
    let line = s.expect_stderr("run exited with status 0 after", T);
    assert!(line.contains("watching 1 file "), "{line}");
    save_rename_over(&dir.join("mode.txt"), "fail\n");
    let line = s.expect_stderr("run exited with status 3 after", T);
    assert!(line.contains("(resumed "), "{line}");
    save_rename_over(&dir.join("mode.txt"), "crash\n");
    s.expect_stderr("run was killed by SIGSEGV after", T);
    save_rename_over(&dir.join("mode.txt"), "ok again\n");
    s.expect_stdout("mode ok again", T);
    run_ended(&mut s);
}

#[test]
fn a_program_that_touches_no_watched_file_says_so_and_keeps_its_status() {
    let _l = lock();
    let dir = TempDir::new("nothing");
    let program = compile_c(
        &dir,
        "plain",
        "#include <stdio.h>\nint main(void) { puts(\"plain\"); return 4; }\n",
    );
    let mut s = forkhook_in(&dir, &["-e", "lua"], &program);
    assert_eq!(s.wait_exit(T).code(), Some(4), "{}", s.transcript());
    s.expect_stdout("plain", T);
    s.expect_stderr("no file matched the filter", T);
    assert_eq!(s.count_stderr("[forkhook]"), 1, "{}", s.transcript());
}

const THREADED: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *idle(void *arg) { (void)arg; for (;;) pause(); return 0; }
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, idle, 0);
    FILE *f = fopen("input.txt", "r");
    char v[32] = "";
    if (f) fgets(v, sizeof v, f);
    printf("input %s", v);
    return 0;
}
"#;

#[test]
fn threads_at_a_checkpoint_get_one_warning_and_a_setting() {
    let _l = lock();
    let dir = TempDir::new("threads");
    let program = compile_c_with(&dir, "threaded", THREADED, &["-pthread"]);
    dir.write("input.txt", "1\n");

    let mut s = forkhook_in(&dir, &["-e", "txt"], &program);
    let warning = s.expect_stderr("warning: the program runs 2 threads at a checkpoint", T);
    assert!(warning.contains("FORKHOOK_THREADS=skip"), "{warning}");
    s.expect_stdout("input 1", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("input.txt"), "2\n");
    s.expect_stdout("input 2", T);
    run_ended(&mut s);
    assert_eq!(
        s.count_stderr("threads at a checkpoint"),
        1,
        "{}",
        s.transcript()
    );
    drop(s);

    // With the setting, no checkpoint is taken while threads run: the program runs
    // unwatched to its end.
    let mut s = forkhook_in(&dir, &["--threads", "skip", "-e", "txt"], &program);
    s.expect_stderr("no checkpoint is taken while they run", T);
    assert_eq!(s.wait_exit(T).code(), Some(0), "{}", s.transcript());
    s.expect_stdout("input 2", T);
}

/// Each edit is written the moment the previous result is printed, as a formatter
/// that rewrites a file right after a save would: every result appears exactly once.
#[test]
fn no_edit_is_lost_and_none_is_acted_on_twice() {
    let _l = lock();
    let dir = TempDir::new("no-lost-edit");
    let program = compile_c(
        &dir,
        "counter",
        r#"
#include <stdio.h>
int main(void) {
    FILE *f = fopen("counter.txt", "r");
    char v[64] = "";
    if (f) fgets(v, sizeof v, f);
    printf("value %s", v);
    return 0;
}
"#,
    );
    dir.write("counter.txt", "0\n");
    let mut s = forkhook_in(&dir, &["-e", "txt"], &program);
    s.expect_stdout("value 0", T);
    let file = dir.join("counter.txt");
    for i in 1..=100 {
        let text = format!("{i}\n");
        if i % 2 == 0 {
            save_truncate_write(&file, &text);
        } else {
            save_rename_over(&file, &text);
        }
        s.expect_stdout(&format!("value {i}"), T);
    }
    // One resume per edit, and then quiet. (stdout and stderr travel on two pipes, so
    // the last resume's line may arrive after the last result: wait for it.)
    wait_until(T, Duration::from_millis(10), || {
        s.count_stderr("resuming") >= 100
    });
    let late = s.collect_for(Duration::from_millis(800));
    assert!(
        !late.iter().any(|l| l.starts_with("value")),
        "nothing printed after the last result: {late:?}"
    );
    assert_eq!(s.count_stderr("resuming"), 100, "{}", s.transcript());
    for i in 0..=100 {
        let n = s
            .stdout_lines()
            .iter()
            .filter(|l| **l == format!("value {i}"))
            .count();
        assert_eq!(n, 1, "result {i} printed {n} times\n{}", s.transcript());
    }
}

#[test]
fn a_watched_directory_removed_and_recreated() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("dir-gone");
    dir.write(
        "main.lua",
        "package.path = './lib/?.lua;' .. package.path\n\
         print('startup')\n\
         local x = 0 for i = 1, 4e7 do x = x + i end\n\
         print(require 'mod')\n",
    );
    std::fs::create_dir(dir.join("lib")).unwrap();
    dir.write("lib/mod.lua", "return 'mod v1'\n");
    let mut s = Session::start(
        forkhook_command()
            .args(["-e", "lua", "--", "lua5.4", "main.lua"])
            .current_dir(&dir.path),
    );
    s.expect_stdout("mod v1", T);
    run_ended(&mut s);
    std::fs::remove_dir_all(dir.join("lib")).unwrap();
    s.expect_stderr("module 'mod' not found", T);
    s.expect_stderr("run exited with status 1", T);
    std::fs::create_dir(dir.join("lib")).unwrap();
    dir.write("lib/mod.lua", "return 'mod v2'\n");
    s.expect_stdout("mod v2", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("lib/mod.lua"), "return 'mod v3'\n");
    s.expect_stdout("mod v3", T);
    run_ended(&mut s);
    assert_eq!(s.count_stdout("startup"), 1, "{}", s.transcript());
}

/// In a user namespace of its own the inotify watch limit can be lowered without
/// touching the machine's: 2 watches for files in 4 directories.
#[test]
fn exhausted_inotify_watches_name_the_sysctl_and_the_rest_keeps_working() {
    let _l = lock();
    if !require_tool("lua5.4") || !require_tool("unshare") {
        return;
    }
    let dir = TempDir::new("watch-limit");
    let mut main = String::from("package.path = './?/m.lua;' .. package.path\n");
    for d in ["a", "b", "c", "d"] {
        std::fs::create_dir(dir.join(d)).unwrap();
        dir.write(format!("{d}/m.lua"), &format!("return '{d}1'\n"));
        main.push_str(&format!(
            "local x = 0 for i = 1, 1e7 do x = x + i end\nprint(require '{d}')\n"
        ));
    }
    dir.write("main.lua", &main);
    // main.lua's directory takes one watch, a/ the other: b/, c/, d/ cannot be watched.
    let script = format!(
        "echo 2 > /proc/sys/user/max_inotify_watches && exec {} -e lua -- lua5.4 main.lua",
        forkhook_bin().display()
    );
    let mut cmd = std::process::Command::new("unshare");
    clean_env(&mut cmd).args(["--user", "--map-root-user", "sh", "-c", &script]);
    let mut s = Session::start(cmd.current_dir(&dir.path));
    let error = s.expect_stderr("inotify watch limit", T);
    assert!(error.contains("fs.inotify.max_user_watches"), "{error}");
    s.expect_stdout("d1", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("a/m.lua"), "return 'a2'\n");
    s.expect_stdout("a2", T);
    run_ended(&mut s);
    // a/ has no watch left for its file: its writes are watched on the directory.
    save_truncate_write(&dir.join("a/m.lua"), "return 'a3'\n");
    s.expect_stdout("a3", T);
    run_ended(&mut s);
}

/// A user whose process limit is reached: forks fail with EAGAIN. The program carries
/// on without the checkpoint, and earlier checkpoints still resume.
#[test]
fn a_failing_fork_costs_a_checkpoint_not_the_program() {
    let _l = lock();
    if !require_tool("setpriv") || !require_tool("prlimit") {
        return;
    }
    let dir = TempDir::new("eagain");
    let program = compile_c(
        &dir,
        "two",
        r#"
#include <stdio.h>
#include <unistd.h>
static void show(const char *name) {
    FILE *f = fopen(name, "r");
    char v[64] = "";
    if (f) { fgets(v, sizeof v, f); fclose(f); }
    printf("%s: %s", name, v);
    fflush(stdout);
}
int main(void) {
    show("a.txt");
    usleep(200000);   /* time for the budget to allow another checkpoint */
    show("b.txt");
    return 0;
}
"#,
    );
    dir.write("a.txt", "a1\n");
    dir.write("b.txt", "b1\n");
    let library = dir.join("libforkhook.so");
    std::fs::copy(library_path(), &library).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    // nobody's processes now, plus: the program, the coordinator's child (checkpoint 1)
    // and its run. The fork for checkpoint 2 hits the limit.
    let nobody_now = process_table()
        .iter()
        .filter(|p| uid_of(p.pid) == Some(65534))
        .count();
    let limit = nobody_now + 3;
    let mut cmd = std::process::Command::new("setpriv");
    clean_env(&mut cmd)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "prlimit",
        ])
        .arg(format!("--nproc={limit}"))
        .arg(&program)
        .env("LD_PRELOAD", &library)
        .env("FORKHOOK_FILTER", r"\.txt$")
        .env("FORKHOOK_CHECKPOINT_SHARE", "1")
        .current_dir(&dir.path);
    let mut s = Session::start(cmd);
    s.expect_stdout("a.txt: a1", T);
    s.expect_stderr("no checkpoint before", T);
    s.expect_stdout("b.txt: b1", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("a.txt"), "a2\n");
    s.expect_stdout("a.txt: a2", T);
    s.expect_stdout("b.txt: b1", T);
    run_ended(&mut s);
}

fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_program_that_closes_every_descriptor_it_did_not_open() {
    let _l = lock();
    let dir = TempDir::new("closefrom");
    let program = compile_c(
        &dir,
        "closer",
        r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
static void show(const char *name) {
    FILE *f = fopen(name, "r");
    char v[64] = "";
    if (f) { fgets(v, sizeof v, f); fclose(f); }
    printf("%s: %s", name, v);
    fflush(stdout);
}
int main(void) {
    show("a.txt");
    for (int fd = 3; fd < 4096; fd++) close(fd);   /* what daemons and some servers do */
    show("b.txt");
    return 0;
}
"#,
    );
    dir.write("a.txt", "a1\n");
    dir.write("b.txt", "b1\n");
    let mut s = forkhook_in(&dir, &["-e", "txt"], &program);
    s.expect_stdout("a.txt: a1", T);
    s.expect_stdout("b.txt: b1", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("a.txt"), "a2\n");
    s.expect_stdout("a.txt: a2", T);
    s.expect_stdout("b.txt: b1", T);
    run_ended(&mut s);
    // Read after the descriptors were closed, and still watched (first accesses are
    // told through shared memory; the warning, if any, is about checkpoints).
    save_rename_over(&dir.join("b.txt"), "b2\n");
    s.expect_stdout("b.txt: b2", T);
    run_ended(&mut s);
}

#[test]
fn the_launcher_reports_commands_it_cannot_run() {
    let _l = lock();
    let dir = TempDir::new("launcher-errors");
    let mut s =
        Session::start(forkhook_command().args(["-e", "lua", "--", "no-such-command-here"]));
    assert_eq!(s.wait_exit(T).code(), Some(127), "{}", s.transcript());
    s.expect_stderr("no-such-command-here: command not found", T);

    let script = dir.write("not-executable.sh", "echo hi\n");
    let mut s = Session::start(forkhook_command().args(["-e", "lua", "--"]).arg(&script));
    assert_eq!(s.wait_exit(T).code(), Some(126), "{}", s.transcript());
    s.expect_stderr("cannot execute", T);

    let mut s = Session::start(forkhook_command().args(["--", "true"]));
    assert_eq!(s.wait_exit(T).code(), Some(2), "{}", s.transcript());
    s.expect_stderr("nothing to watch", T);
}

/// Plone's fork loop: a server preloads a slow framework, imports its views, listens.
/// Editing the views makes the next request answer with the new code.
#[test]
fn a_dev_server_answers_with_the_new_code_after_an_edit() {
    let _l = lock();
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("devserver");
    dir.write(
        "framework.py",
        "import time\nt = time.perf_counter()\nTABLE = {i: str(i) for i in range(1_000_000)}\n\
         print(f'framework loaded in {time.perf_counter() - t:.2f} s')\n",
    );
    dir.write("views.py", "def render():\n    return 'view v1'\n");
    dir.write(
        "server.py",
        "import os\nimport framework\nimport views\n\
         from http.server import BaseHTTPRequestHandler, HTTPServer\n\
         class Handler(BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = views.render().encode()\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('Content-Length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   def log_message(self, *args):\n\
         \x20       pass\n\
         server = HTTPServer(('127.0.0.1', int(os.environ['PORT'])), Handler)\n\
         print('listening', flush=True)\n\
         server.serve_forever()\n",
    );
    let port = free_port();
    let mut s = Session::start(
        forkhook_command()
            .args(["-e", "py", "--", "python3", "server.py"])
            .current_dir(&dir.path)
            .env("PORT", port.to_string())
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .env_remove("PYTHONUNBUFFERED"),
    );
    s.expect_stdout("listening", T);
    let first = http_get(port, "/", Duration::from_secs(10)).expect("the server answers");
    assert_eq!(first.body, "view v1");

    for v in 2..=4 {
        // Sizes differ: CPython trusts a .pyc whose source has the same size and mtime
        // in whole seconds, so two same-size saves within a second would look unchanged
        // to it (with or without forkhook).
        let padding = "#".repeat(v);
        save_rename_over(
            &dir.join("views.py"),
            &format!("def render():\n    return 'view v{v}'  {padding}\n"),
        );
        s.expect_stdout("listening", T);
        // Every request ends (an answer or an error), none hangs: each has a timeout.
        let fresh = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
            http_get(port, "/", Duration::from_secs(10))
                .is_ok_and(|r| r.body == format!("view v{v}"))
        });
        assert!(
            fresh,
            "the server never answered with view v{v}\n{}",
            s.transcript()
        );
    }
    assert_eq!(s.count_stdout("framework loaded"), 1, "{}", s.transcript());
}

/// The program reads the terminal after a checkpoint, then puts it in no-echo,
/// non-canonical mode and is killed by a resume; then Ctrl-C. Driven through a real
/// pseudo-terminal by a small Python script (its `pty` module).
#[test]
fn terminals_work_and_are_restored() {
    let _l = lock();
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("pty");
    compile_c(
        &dir,
        "asker",
        r#"
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
int main(void) {
    FILE *f = fopen("greeting.txt", "r");
    char g[64] = "";
    if (f) fgets(g, sizeof g, f);
    g[strcspn(g, "\n")] = 0;
    printf("name?\n");
    fflush(stdout);
    char name[64] = "";
    if (!fgets(name, sizeof name, stdin)) return 3;
    name[strcspn(name, "\r\n")] = 0;
    printf("%s %s\n", g, name);
    struct termios t;
    tcgetattr(0, &t);
    t.c_lflag &= ~(ECHO | ICANON);
    tcsetattr(0, TCSANOW, &t);
    printf("raw\n");
    fflush(stdout);
    for (;;) pause();
}
"#,
    );
    dir.write("greeting.txt", "hello\n");
    dir.write(
        "driver.py",
        r#"
import os, pty, select, sys, termios, time

forkhook, workdir = sys.argv[1], sys.argv[2]
pid, master = pty.fork()
if pid == 0:
    os.chdir(workdir)
    os.execv(forkhook, [forkhook, "-e", "txt", "--", "./asker"])

seen = b""
def expect(text, timeout=20):
    global seen
    end = time.time() + timeout
    while text.encode() not in seen:
        left = end - time.time()
        if left <= 0:
            sys.exit(f"timed out waiting for {text!r}; terminal showed: {seen!r}")
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                seen += os.read(master, 4096)
            except OSError:
                sys.exit(f"terminal closed waiting for {text!r}; it showed: {seen!r}")
    seen = seen[seen.index(text.encode()) + len(text):]

def lflag():
    return termios.tcgetattr(master)[3]

def save(text):
    tmp = os.path.join(workdir, ".greeting.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(workdir, "greeting.txt"))

expect("name?")
os.write(master, b"bob\n")
expect("hello bob")
expect("raw")
assert not lflag() & termios.ECHO, "the program turned echo off"
save("bye\n")
expect("name?")
flags = lflag()
assert flags & termios.ECHO and flags & termios.ICANON, "terminal restored after the resume"
os.write(master, b"alice\n")
expect("bye alice")
expect("raw")
os.write(master, b"\x03")                  # Ctrl-C, through the terminal's own ISIG
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 130, f"exit status {status}"
flags = lflag()
assert flags & termios.ECHO and flags & termios.ICANON, "terminal restored after Ctrl-C"
print("DRIVER OK")
"#,
    );
    let mut cmd = std::process::Command::new("python3");
    clean_env(&mut cmd)
        .arg(dir.join("driver.py"))
        .arg(forkhook_bin())
        .arg(&dir.path)
        .env("PYTHONUNBUFFERED", "1");
    let mut s = Session::start(cmd);
    let status = s.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", s.transcript());
    s.expect_stdout("DRIVER OK", T);
}

/// Once the session runs, what the program spawns runs without the hook (through
/// `system()`, and through an explicit copy of the environment taken at start, as
/// CPython's subprocess passes it); a wrapper that execs the program still works.
#[test]
fn spawned_processes_do_not_load_the_hook_but_wrappers_that_exec_do() {
    let _l = lock();
    if !require_tool("lua5.4") || !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("spawned");
    dir.write(
        "main.lua",
        "require 'foo'\nos.execute('echo \"system: [$LD_PRELOAD]\"')\n",
    );
    dir.write("foo.lua", "print('foo 1')\n");
    let mut s = Session::start(
        forkhook_command()
            .args(["-e", "lua", "--", "sh", "-c", "exec lua5.4 main.lua"])
            .current_dir(&dir.path),
    );
    s.expect_stdout("foo 1", T);
    let line = s.expect_stdout("system: [", T);
    assert!(!line.contains("forkhook"), "{line}");
    save_rename_over(&dir.join("foo.lua"), "print('foo 2')\n");
    s.expect_stdout("foo 2", T);
    drop(s);

    dir.write(
        "app.py",
        "import os, subprocess, sys\nimport mod\n\
         out = subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"LD_PRELOAD\"))'],\n\
         \x20   env=dict(os.environ), capture_output=True, text=True).stdout.strip()\n\
         print('child LD_PRELOAD:', out)\n",
    );
    dir.write("mod.py", "VALUE = 1\n");
    let mut s = Session::start(
        forkhook_command()
            .args(["-f", r"/mod\.py$", "--", "python3", "app.py"])
            .current_dir(&dir.path),
    );
    let line = s.expect_stdout("child LD_PRELOAD:", T);
    assert!(!line.contains("forkhook"), "{line}\n{}", s.transcript());
    s.expect_stderr("run exited with status 0", T);
    assert_eq!(s.count_stderr("no file matched"), 0, "{}", s.transcript());
}
