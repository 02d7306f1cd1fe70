//! The core promise, on real programs: an edit resumes the program from the checkpoint
//! taken before it first read the edited file, and nothing before that point runs again.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// forkmon's own example, with a visible amount of work before `require 'foo'`.
fn lua_example(dir: &TempDir) {
    dir.write(
        "main.lua",
        "print('startup')\n\
         local x = 0\n\
         for i = 1, 4e7 do x = x + i end\n\
         require 'foo'\n\
         print('finished')\n",
    );
    dir.write("foo.lua", "print('foo!')\n");
}

/// Waits for the end of the current run, so what follows starts from a quiet session.
fn run_ended(s: &mut Session) {
    s.expect_stderr("run exited", T);
}

#[test]
fn lua_preload_only_with_forkmon_filter_resumes_after_startup() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("lua-preload");
    lua_example(&dir);
    let mut s = Session::start(
        preload_command("lua5.4")
            .arg("main.lua")
            .current_dir(&dir.path)
            .env("FORKMON_FILTER", "%.lua$"),
    );
    s.expect_stdout("startup", T);
    s.expect_stdout("foo!", T);
    s.expect_stdout("finished", T);
    run_ended(&mut s);

    save_truncate_write(&dir.join("foo.lua"), "print('hello world!')\n");
    s.expect_stderr(
        "foo.lua changed: resuming from checkpoint 2 (before foo.lua)",
        T,
    );
    s.expect_stdout("hello world!", T);
    s.expect_stdout("finished", T);
    run_ended(&mut s);
    assert_eq!(s.count_stdout("startup"), 1, "{}", s.transcript());
    assert_eq!(s.count_stdout("foo!"), 1, "{}", s.transcript());
}

#[test]
fn lua_through_the_launcher_in_a_tmp_directory() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("lua-launcher");
    assert!(
        dir.path.starts_with("/tmp"),
        "forkmon skips /tmp; we must not"
    );
    lua_example(&dir);
    let mut s = Session::start(
        forkhook_command()
            .args(["-e", "lua", "--", "lua5.4", "main.lua"])
            .current_dir(&dir.path),
    );
    s.expect_stdout("foo!", T);
    run_ended(&mut s);
    for round in 1..=3 {
        save_rename_over(&dir.join("foo.lua"), &format!("print('round {round}')\n"));
        s.expect_stdout(&format!("round {round}"), T);
        s.expect_stdout("finished", T);
        run_ended(&mut s);
    }
    assert_eq!(s.count_stdout("startup"), 1, "{}", s.transcript());
    assert_eq!(
        s.count_stderr("resuming from checkpoint 2"),
        3,
        "{}",
        s.transcript()
    );
}

#[test]
fn tcc_resumes_after_the_big_header_was_parsed() {
    let _l = lock();
    if !require_tool("tcc") {
        return;
    }
    let dir = TempDir::new("tcc");
    // The example's big header: macros that expand to 40 000 structs and 120 000
    // functions, about half a second of tcc's time.
    dir.write("big.h", include_str!("../examples/tcc/big.h"));
    dir.write("small.h", "#define GREETING \"hello from small.h\"\n");
    dir.write(
        "main.c",
        "#include <stdio.h>\n#include \"big.h\"\n#include \"small.h\"\n\
         int main(void) { printf(\"%s %g\\n\", GREETING, big_norm2_a0042(big_make_a0042(1, 2, 2))); return 0; }\n",
    );
    let mut s = Session::start(
        forkhook_command()
            .args(["-e", "h", "--", "tcc", "-run", "main.c"])
            .current_dir(&dir.path),
    );
    s.expect_stdout("hello from small.h 9", T);
    run_ended(&mut s);
    save_rename_over(
        &dir.join("small.h"),
        "#define GREETING \"bye from small.h\"\n",
    );
    let line = s.expect_stderr("small.h changed: resuming from checkpoint", T);
    assert!(
        line.contains("(before small.h)"),
        "resumed before the big header: {line}"
    );
    s.expect_stdout("bye from small.h 9", T);
    run_ended(&mut s);
}

#[test]
fn python_with_valid_pyc_resumes_after_the_slow_import() {
    let _l = lock();
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("python-pyc");
    dir.write(
        "heavy.py",
        "import time\n\
         t = time.perf_counter()\n\
         data = {i: str(i) * 3 for i in range(1_000_000)}\n\
         print('heavy loaded', flush=True)\n",
    );
    dir.write(
        "views.py",
        "def greeting():\n    return 'hello from views'\n",
    );
    dir.write(
        "app.py",
        "import heavy\nimport views\nprint(views.greeting())\n",
    );
    // Valid .pyc files: CPython then only stats views.py and reads the cached bytecode.
    let status = std::process::Command::new("python3")
        .args(["-m", "compileall", "-q", "."])
        .current_dir(&dir.path)
        .env_remove("PYTHONDONTWRITEBYTECODE")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(fs::read_dir(dir.join("__pycache__")).unwrap().count() >= 2);

    let mut s = Session::start(
        forkhook_command()
            .args(["-e", "py", "--", "python3", "app.py"])
            .current_dir(&dir.path)
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .env_remove("PYTHONUNBUFFERED"),
    );
    s.expect_stdout("heavy loaded", T);
    s.expect_stdout("hello from views", T);
    run_ended(&mut s);
    // A different size, so CPython's mtime+size check sees the change in any second.
    save_truncate_write(
        &dir.join("views.py"),
        "def greeting():\n    return 'goodbye from the edited views'\n",
    );
    s.expect_stderr("views.py changed: resuming", T);
    s.expect_stdout("goodbye from the edited views", T);
    run_ended(&mut s);
    assert_eq!(s.count_stdout("heavy loaded"), 1, "{}", s.transcript());
}

#[test]
fn a_c_program_using_openat_resumes() {
    let _l = lock();
    let dir = TempDir::new("c-openat");
    let program = compile_c(
        &dir,
        "reader",
        r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("start\n");
    int dirfd = open(".", O_RDONLY | O_DIRECTORY);
    int fd = openat(dirfd, "data.txt", O_RDONLY);
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("data: %s", buf);
    return 0;
}
"#,
    );
    dir.write("data.txt", "one\n");
    let mut s = forkhook_in(&dir, &["-f", r"/data\.txt$"], &program);
    s.expect_stdout("data: one", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("data.txt"), "two\n");
    s.expect_stdout("data: two", T);
    run_ended(&mut s);
    assert_eq!(s.count_stdout("start"), 1, "{}", s.transcript());
}

#[test]
fn a_rust_program_using_std_fs_resumes() {
    let _l = lock();
    let dir = TempDir::new("rust-fs");
    let program = compile_rust(
        &dir,
        "reader",
        r#"
fn main() {
    println!("start");
    let len = std::fs::metadata("config.txt").map(|m| m.len()).unwrap_or(0);
    let text = std::fs::read_to_string("config.txt").unwrap_or_default();
    println!("config ({len} bytes): {}", text.trim());
}
"#,
    );
    dir.write("config.txt", "alpha\n");
    let mut s = forkhook_in(&dir, &["-e", "txt"], &program);
    s.expect_stdout("config (6 bytes): alpha", T);
    run_ended(&mut s);
    save_truncate_write(&dir.join("config.txt"), "beta gamma\n");
    s.expect_stdout("config (11 bytes): beta gamma", T);
    run_ended(&mut s);
    assert_eq!(s.count_stdout("start"), 1, "{}", s.transcript());
}

/// Prints a line, then reads input.txt: on a pipe or a file, C stdio still holds the
/// line in its buffer when the checkpoint is taken.
const BUFFERED: &str = r#"
#include <stdio.h>
int main(void) {
    printf("before the checkpoint\n");
    FILE *f = fopen("input.txt", "r");
    char line[128] = "";
    if (f && fgets(line, sizeof line, f)) printf("after: %s", line);
    return 0;
}
"#;

/// C stdio fully buffers a pipe: without a flush before each fork, every resumed run
/// would print the buffered "before" again.
#[test]
fn output_buffered_before_a_checkpoint_is_not_printed_again_on_a_pipe() {
    let _l = lock();
    let dir = TempDir::new("pipe-output");
    let program = compile_c(&dir, "buffered", BUFFERED);
    dir.write("input.txt", "v1\n");
    let mut s = forkhook_in(&dir, &["-e", "txt"], &program);
    s.expect_stdout("after: v1", T);
    run_ended(&mut s);
    for v in 2..=3 {
        save_rename_over(&dir.join("input.txt"), &format!("v{v}\n"));
        s.expect_stdout(&format!("after: v{v}"), T);
        run_ended(&mut s);
    }
    assert_eq!(
        s.count_stdout("before the checkpoint"),
        1,
        "{}",
        s.transcript()
    );
}

/// The same with stdout redirected to a file (`> out.txt`).
#[test]
fn output_buffered_before_a_checkpoint_is_not_written_again_to_a_file() {
    let _l = lock();
    let dir = TempDir::new("file-output");
    let program = compile_c(&dir, "buffered", BUFFERED);
    dir.write("input.txt", "v1\n");
    let mut s = Session::start(
        forkhook_command()
            .args(["-e", "txt", "--", "sh", "-c"])
            .arg(format!("exec {} > out.txt", program.display()))
            .current_dir(&dir.path),
    );
    run_ended(&mut s);
    save_rename_over(&dir.join("input.txt"), "v2\n");
    s.expect_stderr("resuming", T);
    run_ended(&mut s);
    let out = fs::read_to_string(dir.join("out.txt")).unwrap();
    assert_eq!(
        out.matches("before the checkpoint").count(),
        1,
        "out.txt:\n{out}"
    );
    assert!(
        out.contains("after: v1") && out.contains("after: v2"),
        "out.txt:\n{out}"
    );
}

/// A file open across a checkpoint reads on from where the checkpoint was, although
/// the old run moved the shared offset.
#[test]
fn a_file_open_across_a_checkpoint_reads_on_from_the_right_place() {
    let _l = lock();
    let dir = TempDir::new("offsets");
    let program = compile_c(
        &dir,
        "offsets",
        r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
static void line_from(int fd, const char *label) {
    char buf[7] = {0};
    if (read(fd, buf, 6) == 6) printf("%s %s", label, buf);
    else printf("%s <eof>\n", label);
}
int main(void) {
    int stream = open("stream.dat", O_RDONLY);
    line_from(stream, "first:");
    FILE *f = fopen("watched.txt", "r");        /* the checkpoint is taken here */
    char text[64] = "";
    if (f) fgets(text, sizeof text, f);
    printf("watched: %s", text);
    line_from(stream, "second:");
    line_from(stream, "third:");
    return 0;
}
"#,
    );
    dir.write("stream.dat", "line1\nline2\nline3\nline4\nline5\n");
    dir.write("watched.txt", "w1\n");
    let mut s = forkhook_in(&dir, &["-e", "txt"], &program);
    s.expect_stdout("first: line1", T);
    s.expect_stdout("second: line2", T);
    s.expect_stdout("third: line3", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("watched.txt"), "w2\n");
    s.expect_stdout("watched: w2", T);
    s.expect_stdout("second: line2", T);
    s.expect_stdout("third: line3", T);
    run_ended(&mut s);
}

/// Lua program requiring `a` then `b` with work in between, each printing its content.
fn two_module_lua(dir: &TempDir) {
    dir.write(
        "main.lua",
        "local function work() local x = 0 for i = 1, 4e7 do x = x + i end end\n\
         print('startup')\n\
         work()\n\
         require 'a'\n\
         work()\n\
         require 'b'\n\
         print('done')\n",
    );
    dir.write("a.lua", "print('a: 1')\n");
    dir.write("b.lua", "print('b: 1')\n");
}

/// `two_module_lua` in a new directory, run through its first run, with the test lock
/// held (the guard must live as long as the test); `None` without lua5.4.
fn two_module_run_ended(
    name: &str,
) -> Option<(std::sync::MutexGuard<'static, ()>, TempDir, Session)> {
    let guard = lock();
    if !require_tool("lua5.4") {
        return None;
    }
    let dir = TempDir::new(name);
    two_module_lua(&dir);
    let mut s = start_lua(&dir);
    s.expect_stdout("done", T);
    run_ended(&mut s);
    Some((guard, dir, s))
}

fn start_lua(dir: &TempDir) -> Session {
    Session::start(
        forkhook_command()
            .args(["-e", "lua", "--", "lua5.4", "main.lua"])
            .current_dir(&dir.path),
    )
}

/// Each way editors save is seen, once.
#[test]
fn every_way_of_saving_is_seen_exactly_once() {
    let Some((_l, dir, mut s)) = two_module_run_ended("saves") else {
        return;
    };

    let b = dir.join("b.lua");
    save_rename_over(&b, "print('b: 2')\n");
    s.expect_stdout("b: 2", T);
    run_ended(&mut s);
    save_sed_inplace(&b, "b: 2", "b: 3");
    s.expect_stdout("b: 3", T);
    run_ended(&mut s);
    save_truncate_write(&b, "print('b: 4')\n");
    s.expect_stdout("b: 4", T);
    run_ended(&mut s);
    save_delete_create(&b, "print('b: 5')\n");
    s.expect_stdout("b: 5", T);
    s.expect_stdout("done", T);
    run_ended(&mut s);

    let quiet = s.collect_for(Duration::from_millis(500));
    assert!(quiet.is_empty(), "nothing more should happen: {quiet:?}");
    assert_eq!(s.count_stderr("resuming from"), 4, "{}", s.transcript());
    assert_eq!(s.count_stdout("startup"), 1, "{}", s.transcript());
    for v in 2..=5 {
        assert_eq!(s.count_stdout(&format!("b: {v}")), 1, "{}", s.transcript());
    }
}

#[test]
fn touch_and_same_content_saves_resume_nothing() {
    let Some((_l, dir, mut s)) = two_module_run_ended("no-change") else {
        return;
    };

    same_content_saves_resume_nothing_then_a_change_does(&dir, &mut s);
}

/// A `touch`, an in-place save and a rename-over save of `b.lua`, all with its content
/// unchanged, resume nothing; then a real change still resumes.
fn same_content_saves_resume_nothing_then_a_change_does(dir: &TempDir, s: &mut Session) {
    let b = dir.join("b.lua");
    touch(&b);
    save_truncate_write(&b, "print('b: 1')\n");
    save_rename_over(&b, "print('b: 1')\n");
    let lines = s.collect_for(Duration::from_millis(800));
    assert!(
        lines.is_empty(),
        "a save without a change resumed something: {lines:?}"
    );
    save_truncate_write(&b, "print('b: 2')\n");
    s.expect_stdout("b: 2", T);
    run_ended(s);
}

/// Files changed more than 3 s before the run reads them are read by the coordinator
/// on its own time (the run only notes what `stat` says): the same saves still resume
/// nothing, and a real change still resumes.
#[test]
fn touch_and_same_content_saves_of_older_files_resume_nothing() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("no-change-old");
    two_module_lua(&dir);
    std::thread::sleep(Duration::from_millis(3200));
    let mut s = start_lua(&dir);
    s.expect_stdout("done", T);
    run_ended(&mut s);
    // The coordinator reads the files once the run has been quiet for a moment.
    std::thread::sleep(Duration::from_millis(300));

    same_content_saves_resume_nothing_then_a_change_does(&dir, &mut s);
}

/// The file an edit resumed for is the likeliest to be edited next: the resumed run
/// takes a checkpoint right before it, whatever the budget, so the next edit resumes
/// from there.
#[test]
fn the_edited_file_gets_a_checkpoint_of_its_own() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("hot");
    dir.write(
        "main.lua",
        "local x = 0 for i = 1, 2e7 do x = x + i end\n\
         for i = 1, 60 do require('m' .. i) end\n\
         print('done ' .. M60)\n",
    );
    for i in 1..=60 {
        dir.write(format!("m{i}.lua"), &format!("M{i} = {i}\n"));
    }
    let mut s = start_lua(&dir);
    s.expect_stdout("done 60", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("m60.lua"), "M60 = 'a'\n");
    s.expect_stdout("done a", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("m60.lua"), "M60 = 'b'\n");
    s.expect_stdout("done b", T);
    run_ended(&mut s);
    let resumes: Vec<String> = s
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("resuming from"))
        .collect();
    assert_eq!(resumes.len(), 2, "{}", s.transcript());
    assert!(
        !resumes[0].contains("(before m60.lua)") && resumes[1].contains("(before m60.lua)"),
        "{}",
        s.transcript()
    );
}

/// A burst is what arrives within the settle window. The window is set wide here
/// (the default is 3 ms) because on a loaded two-core CI machine the test itself can
/// be descheduled for longer than that between two renames; then two resumes are
/// right, and the test would fail for the scheduler, not for forkhook.
#[test]
fn two_files_saved_together_resume_once_from_the_earlier() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("burst");
    two_module_lua(&dir);
    let mut s = Session::start(
        forkhook_command()
            .args(["--settle", "150", "-e", "lua", "--", "lua5.4", "main.lua"])
            .current_dir(&dir.path),
    );
    s.expect_stdout("done", T);
    run_ended(&mut s);

    // Both new versions are written first, then renamed into place one after the
    // other, as `git checkout` does; the later file first.
    let (b_new, a_new) = (dir.join(".b.lua.new"), dir.join(".a.lua.new"));
    fs::write(&b_new, "print('b: 2')\n").unwrap();
    fs::write(&a_new, "print('a: 2')\n").unwrap();
    fs::rename(&b_new, dir.join("b.lua")).unwrap();
    fs::rename(&a_new, dir.join("a.lua")).unwrap();
    let line = s.expect_stderr("resuming from", T);
    assert!(
        line.contains("before a.lua"),
        "must resume before a.lua: {line}"
    );
    s.expect_stdout("a: 2", T);
    s.expect_stdout("b: 2", T);
    s.expect_stdout("done", T);
    run_ended(&mut s);
    let quiet = s.collect_for(Duration::from_millis(500));
    assert!(quiet.is_empty(), "one resume only: {quiet:?}");
    assert_eq!(s.count_stderr("resuming from"), 1, "{}", s.transcript());
}

#[test]
fn a_deleted_file_that_comes_back_is_picked_up() {
    let Some((_l, dir, mut s)) = two_module_run_ended("deleted") else {
        return;
    };

    let b = dir.join("b.lua");
    std::fs::remove_file(&b).unwrap();
    // The resumed run sees it missing, as a fresh run would: lua fails to require it.
    s.expect_stderr("module 'b' not found", T);
    s.expect_stderr("run exited with status 1", T);
    std::fs::write(&b, "print('b: back')\n").unwrap();
    s.expect_stdout("b: back", T);
    s.expect_stdout("done", T);
    run_ended(&mut s);
    assert_eq!(s.count_stdout("startup"), 1, "{}", s.transcript());
}

/// A save that deletes and recreates may be paused between the two (a loaded machine,
/// a slow generator): the file being gone, then empty, is not the change; the new
/// content, once written, is, and it resumes once.
#[test]
fn a_slow_delete_and_recreate_resumes_once_with_the_new_content() {
    let Some((_l, dir, mut s)) = two_module_run_ended("slow-recreate") else {
        return;
    };

    let b = dir.join("b.lua");
    std::fs::remove_file(&b).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut file = std::fs::File::create(&b).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    std::io::Write::write_all(&mut file, b"print('b: recreated')\n").unwrap();
    drop(file);
    s.expect_stdout("b: recreated", T);
    s.expect_stdout("done", T);
    run_ended(&mut s);
    let quiet = s.collect_for(Duration::from_millis(500));
    assert!(quiet.is_empty(), "nothing more should happen: {quiet:?}");
    assert_eq!(s.count_stderr("resuming from"), 1, "{}", s.transcript());
    assert_eq!(s.count_stderr("not found"), 0, "{}", s.transcript());
}

/// The coordinator leaves first accesses in the ring while the run goes on reading
/// files, so a.lua is not watched yet when it is saved: the save is found by comparing
/// the file with what the run saw once the access is handled, and it resumes.
#[test]
fn a_file_saved_while_the_run_still_loads_others_resumes() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("edit-while-loading");
    dir.write("a.lua", "return 1\n");
    for i in 1..=300 {
        // About a millisecond of work each: the run tells a first access that often.
        dir.write(
            format!("b{i}.lua"),
            &format!("local x = 0 for i = 1, 40000 do x = x + 1 end\nreturn {i}\n"),
        );
    }
    dir.write(
        "main.lua",
        "io.stdout:setvbuf('line')\n\
         print('a ' .. require('a'))\n\
         local total = 0\n\
         for i = 1, 300 do total = total + require('b' .. i) end\n\
         print('total ' .. total)\n",
    );
    let mut s = start_lua(&dir);
    s.expect_stdout("a 1", T);
    save_rename_over(&dir.join("a.lua"), "return 2\n");
    s.expect_stdout("a 2", T);
    s.expect_stdout("total 45150", T);
    let line = s.expect_stderr("a.lua changed", T);
    assert!(line.contains("resuming"), "{}", s.transcript());
}

/// forkmon creates an inotify instance per file and breaks past the default limit of
/// 128; one instance per session watches any number of files.
#[test]
fn three_hundred_watched_files() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("many");
    let mut main = String::from("local total = 0\n");
    for i in 1..=300 {
        dir.write(format!("m{i}.lua"), &format!("return {i}\n"));
        main.push_str(&format!("total = total + require('m{i}')\n"));
    }
    main.push_str("print('total ' .. total)\n");
    dir.write("main.lua", &main);
    let mut s = start_lua(&dir);
    s.expect_stdout("total 45150", T);
    let line = s.expect_stderr("run exited", T);
    assert!(line.contains("watching 301 files"), "{line}");
    save_rename_over(&dir.join("m250.lua"), "return 1250\n");
    s.expect_stdout("total 46150", T);
    run_ended(&mut s);
    save_rename_over(&dir.join("m7.lua"), "return 1007\n");
    s.expect_stdout("total 47150", T);
    run_ended(&mut s);
}

#[test]
fn an_invalid_filter_stops_before_the_program_runs() {
    let _l = lock();
    let dir = TempDir::new("bad-filter");
    dir.write("ran.sh", "echo the program ran\n");
    // A Lua pattern with no regex equivalent, through plain LD_PRELOAD.
    let mut s = Session::start(
        preload_command("sh")
            .arg("ran.sh")
            .current_dir(&dir.path)
            .env("FORKMON_FILTER", "%b()"),
    );
    let status = s.wait_exit(T);
    assert_eq!(status.code(), Some(2), "{}", s.transcript());
    s.expect_stderr("%b", T);
    assert_eq!(s.count_stdout("the program ran"), 0);

    // A regex that does not parse, through the launcher.
    let mut s = Session::start(
        forkhook_command()
            .args(["-f", "(unclosed", "--", "sh", "ran.sh"])
            .current_dir(&dir.path),
    );
    assert_eq!(s.wait_exit(T).code(), Some(2), "{}", s.transcript());
    s.expect_stderr("(unclosed", T);
    assert_eq!(s.count_stdout("the program ran"), 0);

    // No filter at all.
    let mut s = Session::start(preload_command("sh").arg("ran.sh").current_dir(&dir.path));
    assert_eq!(s.wait_exit(T).code(), Some(2), "{}", s.transcript());
    s.expect_stderr("no filter", T);
    assert_eq!(s.count_stdout("the program ran"), 0);
}
