//! Checks the shared test harness (`tests/common`) on plain programs, without forkhook.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else {
        String::from("(non-string panic)")
    }
}

#[test]
fn expect_finds_lines_and_drop_ends_the_tree() {
    let _guard = lock();
    // `; echo never` keeps sh from exec'ing sleep, so sleep is a descendant.
    let mut session = Session::start(sh("echo hi; echo oops >&2; sleep 30; echo never"));
    assert_eq!(session.expect_stdout("hi", LONG), "hi");
    assert_eq!(session.expect_stderr("oops", LONG), "oops");

    let mut sleep_pid = None;
    assert!(
        wait_until(LONG, Duration::from_millis(10), || {
            sleep_pid = session
                .descendant_processes()
                .into_iter()
                .find(|p| p.comm == "sleep" && p.is_live());
            sleep_pid.is_some()
        }),
        "no sleep among descendants:\n{}",
        session.report("")
    );
    let sleep = sleep_pid.unwrap();
    assert_eq!(session.descendants(), vec![sleep.pid]);
    assert_eq!(
        sleep.pgid,
        session.pid() as i32,
        "children stay in the session's group"
    );
    let shell = ProcInfo::read(session.pid() as i32).expect("shell is running");
    assert_eq!(session.stdout_lines(), vec!["hi"]);
    assert_eq!(session.stderr_lines(), vec!["oops"]);
    assert!(
        session.transcript().contains("out| hi"),
        "{}",
        session.transcript()
    );
    assert!(
        session.transcript().contains("err| oops"),
        "{}",
        session.transcript()
    );

    drop(session);
    assert!(!sleep.still_running(), "sleep survived the drop: {sleep}");
    assert!(!shell.still_running(), "sh survived the drop: {shell}");
}

#[test]
fn expect_timeout_panics_with_the_transcript() {
    let _guard = lock();
    let mut session = Session::start(sh("echo hi; echo oops >&2; sleep 30; echo never"));
    session.expect_stderr("oops", LONG);
    let payload = catch_unwind(AssertUnwindSafe(|| {
        session.expect_stdout("no such line", Duration::from_millis(300));
    }))
    .expect_err("expect_stdout should time out");
    let message = panic_message(payload);
    for part in [
        "timed out",
        "no such line",
        "out| hi",
        "err| oops",
        "sleep 30",
        "still running",
    ] {
        assert!(message.contains(part), "missing {part:?} in:\n{message}");
    }
}

#[test]
fn expect_fails_fast_when_the_stream_closes() {
    let _guard = lock();
    let mut session = Session::start(sh("echo only"));
    let payload = catch_unwind(AssertUnwindSafe(|| {
        session.expect_stdout("never printed", Duration::from_secs(60));
    }))
    .expect_err("expect_stdout should fail");
    let message = panic_message(payload);
    assert!(message.contains("stdout closed"), "{message}");
    assert!(
        session.elapsed() < Duration::from_secs(30),
        "did not fail fast"
    );
}

#[test]
fn expect_consumes_lines_in_order() {
    let _guard = lock();
    let mut session = Session::start(sh("echo foo 1; echo bar; echo foo 2; echo done"));
    assert_eq!(session.expect_stdout("foo", LONG), "foo 1");
    assert_eq!(session.expect_stdout("foo", LONG), "foo 2");
    assert_eq!(session.expect_stdout("done", LONG), "done");
    assert!(session.wait_exit(LONG).success());
    assert_eq!(session.count_stdout("foo"), 2);
    assert_eq!(
        session.stdout_lines(),
        vec!["foo 1", "bar", "foo 2", "done"]
    );
}

#[test]
fn lines_without_newline_and_carriage_returns() {
    let _guard = lock();
    let mut session = Session::start(sh("printf 'a\\r\\nb'"));
    assert!(session.wait_exit(LONG).success());
    assert_eq!(session.stdout_lines(), vec!["a", "b"]);
}

#[test]
fn collect_for_returns_what_arrives_in_the_window() {
    let _guard = lock();
    let mut session = Session::start(sh(
        "echo first; sleep 0.2; echo second; echo third >&2; sleep 30",
    ));
    session.expect_stdout("first", LONG);
    let mut lines = session.collect_for(Duration::from_secs(3));
    // The order between the two pipes depends on which reader thread runs first.
    lines.sort();
    assert_eq!(lines, vec!["second", "third"], "{}", session.transcript());
    let lines = session.collect_for(Duration::from_millis(200));
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn wait_exit_reports_codes_and_signals() {
    let _guard = lock();
    let mut session = Session::start(sh("echo bye; exit 3"));
    let status = session.wait_exit(LONG);
    assert_eq!(status.code(), Some(3));
    assert_eq!(session.stdout_lines(), vec!["bye"]);
    // Twice gives the same answer.
    assert_eq!(session.wait_exit(LONG).code(), Some(3));

    let mut session = Session::start(Command::new("sleep").arg("30"));
    session.signal(libc::SIGTERM);
    let status = session.wait_exit(LONG);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));

    let payload = catch_unwind(AssertUnwindSafe(|| {
        let mut session = Session::start(Command::new("sleep").arg("30"));
        session.wait_exit(Duration::from_millis(200));
    }))
    .expect_err("wait_exit should time out");
    assert!(panic_message(payload).contains("waiting for the process to exit"));
}

#[test]
fn signal_group_reaches_every_process() {
    let _guard = lock();
    // Not SIGINT: a non-interactive sh starts background jobs with SIGINT ignored.
    let mut session = Session::start(sh("trap 'echo got TERM; exit 143' TERM; sleep 30 & wait"));
    assert!(wait_until(LONG, Duration::from_millis(10), || session
        .descendants()
        .len()
        == 1));
    let sleep = session.descendant_processes().remove(0);
    session.signal_group(libc::SIGTERM);
    assert_eq!(session.wait_exit(LONG).code(), Some(143));
    session.expect_stdout("got TERM", LONG);
    assert!(wait_until(LONG, Duration::from_millis(10), || !sleep.still_running()));
}

#[test]
fn drop_kills_orphans_left_in_the_group() {
    let _guard = lock();
    // The background sleep is orphaned when sh exits: only the process group finds it.
    let mut session = Session::start(sh("sleep 30 & echo $!"));
    let pid: i32 = session.expect_stdout("", LONG).trim().parse().unwrap();
    session.wait_exit(LONG);
    let orphan = ProcInfo::read(pid).expect("sleep runs");
    assert!(session.descendants().is_empty());
    assert_eq!(session.group_processes().len(), 1);
    assert!(
        !session.wait_output_closed(Duration::from_millis(100)),
        "sleep holds the pipes"
    );
    drop(session);
    assert!(!orphan.still_running(), "orphan survived: {orphan}");
}

#[test]
fn temp_dir_is_unique_and_removed() {
    let first = TempDir::new("self test");
    let second = TempDir::new("self test");
    assert_ne!(first.path, second.path);
    assert!(first
        .path
        .starts_with(fs::canonicalize(std::env::temp_dir()).unwrap()));
    let file = first.write("sub/dir/a.txt", "hello");
    assert_eq!(file, first.join("sub/dir/a.txt"));
    assert_eq!(fs::read_to_string(&file).unwrap(), "hello");
    let path = first.path.clone();
    drop(first);
    if std::env::var_os("FORKHOOK_KEEP_TEMP").is_none() {
        assert!(!path.exists());
    }
}

#[test]
fn save_helpers_write_the_right_content() {
    let dir = TempDir::new("saves");
    let file = dir.write("foo.lua", "print('foo!')\n");

    let inode = fs::metadata(&file).unwrap().ino();
    save_truncate_write(&file, "print('é two halves')\n");
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "print('é two halves')\n"
    );
    assert_eq!(
        fs::metadata(&file).unwrap().ino(),
        inode,
        "truncate keeps the inode"
    );

    save_rename_over(&file, "print('renamed')\n");
    assert_eq!(fs::read_to_string(&file).unwrap(), "print('renamed')\n");
    assert_ne!(
        fs::metadata(&file).unwrap().ino(),
        inode,
        "rename brings a new inode"
    );

    save_sed_inplace(&file, "renamed", "sed/ited");
    assert_eq!(fs::read_to_string(&file).unwrap(), "print('sed/ited')\n");

    save_delete_create(&file, "print('recreated')\n");
    assert_eq!(fs::read_to_string(&file).unwrap(), "print('recreated')\n");

    let names: Vec<_> = fs::read_dir(&dir.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["foo.lua"], "no temp files left behind");

    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    touch(&file);
    let metadata = fs::metadata(&file).unwrap();
    assert!(metadata.modified().unwrap() > old);
    assert_eq!(fs::read_to_string(&file).unwrap(), "print('recreated')\n");
}

#[test]
fn compiles_and_runs_c_and_rust() {
    let _guard = lock();
    let dir = TempDir::new("compile");
    if require_tool("gcc") {
        let program = compile_c(
            &dir,
            "hello_c",
            "#include <stdio.h>\nint main(void) { puts(\"hello from C\"); return 4; }\n",
        );
        let mut session = Session::start(Command::new(program));
        session.expect_stdout("hello from C", LONG);
        assert_eq!(session.wait_exit(LONG).code(), Some(4));

        let payload = catch_unwind(|| compile_c(&dir, "broken", "int main(void) { return x; }\n"))
            .expect_err("broken C should not compile");
        let message = panic_message(payload);
        assert!(message.contains("undeclared"), "{message}");
        assert!(message.contains("   1 | int main"), "{message}");
    }
    if require_tool("rustc") {
        let program = compile_rust(
            &dir,
            "hello_rust",
            "fn main() { println!(\"hello from Rust\"); }\n",
        );
        let mut session = Session::start(Command::new(program));
        session.expect_stdout("hello from Rust", LONG);
        assert!(session.wait_exit(LONG).success());
    }
}

#[test]
fn require_tool_finds_tools() {
    assert!(require_tool("sh"));
    assert!(find_on_path("/bin/sh").is_some());
    if std::env::var("CI").as_deref() != Ok("true") {
        assert!(!require_tool("no-such-tool-forkhook-selftest"));
    }
}

#[test]
fn lock_survives_poisoning() {
    let _ = thread::spawn(|| {
        let _guard = lock();
        panic!("poisoning the lock on purpose");
    })
    .join();
    drop(lock());
}

#[test]
fn http_get_reads_status_and_body() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // Read the whole request: closing with unread bytes makes the kernel reset the
        // connection, and the client would see that instead of the answer.
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&chunk[..n]);
        }
        let request = String::from_utf8_lossy(&request).into_owned();
        stream
            .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from views\n")
            .unwrap();
        request
    });
    let response = http_get(port, "/", LONG).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "hello from views\n");
    assert!(server.join().unwrap().starts_with("GET / HTTP/1.0\r\n"));
    assert!(http_get(free_port(), "/", LONG).is_err());
}

/// The examples run as documented without forkhook; this also exercises the harness on
/// real interpreters (block-buffered Python output on a pipe, a server that never exits).
/// Python gets PYTHONUNBUFFERED=1, as forkhook gives it.
#[test]
fn examples_run_without_forkhook() {
    let _guard = lock();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let elsewhere = TempDir::new("examples-cwd");

    if require_tool("lua5.4") {
        let mut cmd = Command::new("lua5.4");
        clean_env(&mut cmd)
            .arg(root.join("examples/lua/main.lua"))
            .current_dir(&elsewhere.path);
        let mut session = Session::start(cmd);
        assert!(
            session.wait_exit(LONG).success(),
            "{}",
            session.transcript()
        );
        let lines = session.stdout_lines();
        assert_eq!(lines[0], "startup");
        assert!(lines[1].starts_with("computed the sum"), "{lines:?}");
        assert_eq!(lines[2..], ["foo!", "finished"]);
    }

    if require_tool("python3") {
        let mut cmd = Command::new("python3");
        clean_env(&mut cmd)
            .env("PYTHONUNBUFFERED", "1")
            .arg(root.join("examples/python/app.py"))
            .current_dir(&elsewhere.path);
        let mut session = Session::start(cmd);
        assert!(
            session.wait_exit(LONG).success(),
            "{}",
            session.transcript()
        );
        let lines = session.stdout_lines();
        assert_eq!(lines[0], "app: starting");
        assert!(lines[1].starts_with("loaded heavy in"), "{lines:?}");
        assert_eq!(
            lines[2..],
            [
                "hello from views",
                "app: 450000 products in 31 tags",
                "app: finished"
            ]
        );

        let port = free_port();
        let mut cmd = Command::new(python3_executable());
        clean_env(&mut cmd)
            .env("PYTHONUNBUFFERED", "1")
            .arg(root.join("examples/devserver/server.py"))
            .env("PORT", port.to_string())
            .current_dir(&elsewhere.path);
        let mut session = Session::start(cmd);
        session.expect_stdout("framework: loaded 160000 users", LONG);
        session.expect_stdout(&format!("serving on http://127.0.0.1:{port}/"), LONG);
        let response = http_get(port, "/", LONG).unwrap();
        assert_eq!(response.status, 200);
        assert!(
            response.body.contains("<h1>hello from views</h1>"),
            "{}",
            response.body
        );
        assert_eq!(http_get(port, "/missing", LONG).unwrap().status, 404);
        session.expect_stderr("\"GET /missing HTTP/1.0\" 404", LONG);
        // Ctrl-C: the server stops quietly.
        session.signal_group(libc::SIGINT);
        assert!(
            session.wait_exit(LONG).success(),
            "{}",
            session.transcript()
        );
        assert!(
            !session.transcript().contains("Traceback"),
            "{}",
            session.transcript()
        );
    }

    if require_tool("tcc") {
        let mut cmd = Command::new("tcc");
        clean_env(&mut cmd)
            .arg("-run")
            .arg(root.join("examples/tcc/main.c"))
            .current_dir(&elsewhere.path);
        let mut session = Session::start(cmd);
        assert!(
            session.wait_exit(LONG).success(),
            "{}",
            session.transcript()
        );
        assert_eq!(
            session.stdout_lines(),
            [
                "hello",
                "|v|^2 = 9, from one of the 40000 vector types in big.h"
            ]
        );
    }
}

#[test]
fn descendants_of_walks_the_tree_in_order() {
    let process = |pid, ppid| ProcInfo {
        pid,
        ppid,
        pgid: 10,
        state: 'S',
        threads: 1,
        start_time: 0,
        comm: String::from("x"),
        cmdline: String::new(),
    };
    let table = [
        process(13, 11),
        process(12, 10),
        process(11, 10),
        process(10, 1),
        process(14, 12),
        process(99, 1),
    ];
    let pids: Vec<i32> = descendants_of(10, &table).iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![11, 13, 12, 14]);
}
