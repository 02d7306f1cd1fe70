//! Checkpoint budgets: fewer checkpoints than files, and still a correct resume.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// `count` modules, each doing `work` loop iterations, summed by main.lua.
fn modules(dir: &TempDir, count: usize, work: u64) {
    let mut main = String::from("local total = 0\n");
    for i in 1..=count {
        dir.write(
            format!("m{i}.lua"),
            &format!("local x = 0 for i = 1, {work} do x = x + 1 end\nreturn {i}\n"),
        );
        main.push_str(&format!("total = total + require('m{i}')\n"));
    }
    main.push_str("print('total ' .. total)\n");
    dir.write("main.lua", &main);
}

/// `forkhook -v -e lua -- lua5.4 main.lua` in `dir`, with `env` set.
fn verbose_lua_session(dir: &TempDir, env: &[(&str, &str)]) -> Session {
    let mut command = forkhook_command();
    command
        .args(["-v", "-e", "lua", "--", "lua5.4", "main.lua"])
        .current_dir(&dir.path)
        .envs(env.iter().copied());
    Session::start(command)
}

/// A verbose session on 200 modules loaded in quick succession, with `env` set, once
/// its first run has ended having watched all 201 files.
fn quick_modules_run(dir: &TempDir, env: &[(&str, &str)]) -> Session {
    modules(dir, 200, 0);
    let mut s = verbose_lua_session(dir, env);
    s.expect_stdout("total 20100", T);
    let line = s.expect_stderr("run exited", T);
    assert!(line.contains("watching 201 files"), "{line}");
    s
}

/// 200 modules loaded in quick succession: one fork each would cost more than the
/// budget allows, so most share a checkpoint; a change to any still resumes right.
#[test]
fn quick_files_share_checkpoints_and_still_resume_correctly() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("budget-time");
    let mut s = quick_modules_run(&dir, &[]);
    let taken = s.count_stderr("] checkpoint ");
    assert!(
        (1..201).contains(&taken),
        "{taken} checkpoints for 201 files\n{}",
        s.transcript()
    );
    save_rename_over(&dir.join("m150.lua"), "return 1150\n");
    s.expect_stdout("total 21100", T);
    s.expect_stderr("run exited", T);
}

/// With room for 3 checkpoints, the others are retired as new ones come; files keep
/// resuming from a checkpoint before them, and the retired processes are gone.
#[test]
fn the_checkpoint_cap_retires_the_least_needed_and_resumes_stay_correct() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("budget-count");
    modules(&dir, 8, 3_000_000);
    let mut s = verbose_lua_session(
        &dir,
        &[
            ("FORKHOOK_MAX_CHECKPOINTS", "3"),
            // Here the count is under test, not the time budget: a checkpoint per file.
            ("FORKHOOK_CHECKPOINT_SHARE", "1"),
        ],
    );
    s.expect_stdout("total 36", T);
    s.expect_stderr("run exited", T);
    assert!(
        s.count_stderr("retired the checkpoint") >= 1,
        "{}",
        s.transcript()
    );
    // The coordinator, and three parked checkpoints: the run has ended.
    let settled = wait_until(T, Duration::from_millis(20), || s.descendants().len() == 3);
    assert!(
        settled,
        "processes: {:?}\n{}",
        s.descendant_processes(),
        s.transcript()
    );
    for (module, total) in [("m2", 36 - 2 + 100), ("m7", 36 - 2 + 100 - 7 + 200)] {
        let value = if module == "m2" { 100 } else { 200 };
        save_rename_over(
            &dir.join(format!("{module}.lua")),
            &format!("return {value}\n"),
        );
        s.expect_stdout(&format!("total {total}"), T);
        s.expect_stderr("run exited", T);
    }
}

/// A checkpoint before each of 200 quick files, with room for 3: most are retired
/// within moments, often before the coordinator has read the first accesses told
/// under them. Those files are still watched (they resume from the checkpoint that
/// took over), where before 60 to 190 of the 201 were silently left out.
#[test]
fn files_first_read_under_a_checkpoint_retired_at_once_are_still_watched() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("budget-heirs");
    let mut s = quick_modules_run(
        &dir,
        &[
            ("FORKHOOK_MAX_CHECKPOINTS", "3"),
            ("FORKHOOK_CHECKPOINT_SHARE", "1"),
        ],
    );
    save_rename_over(&dir.join("m120.lua"), "return 1120\n");
    s.expect_stdout("total 21100", T);
    s.expect_stderr("run exited", T);
}

/// Total proportional memory of a process and all its descendants, in bytes.
fn session_pss(s: &Session) -> u64 {
    std::iter::once(s.pid() as i32)
        .chain(s.descendants())
        .filter_map(forkhook::sys::memory_of)
        .map(|m| m.pss)
        .sum()
}

/// A program that rewrites a 48 MiB buffer after each of four checkpoints: each
/// checkpoint ends up holding its own copy. Past the memory budget, checkpoints are
/// retired, and resumes stay correct.
#[test]
fn the_memory_budget_retires_checkpoints_holding_private_copies() {
    let _l = lock();
    let dir = TempDir::new("budget-memory");
    let program = compile_c(
        &dir,
        "rewriter",
        r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    size_t size = 48u << 20;
    char *big = malloc(size);
    memset(big, 1, size);
    for (int i = 1; i <= 4; i++) {
        char name[16], value[32] = "";
        snprintf(name, sizeof name, "f%d.txt", i);
        FILE *f = fopen(name, "r");
        if (f) { fgets(value, sizeof value, f); fclose(f); }
        printf("%s: %s", name, value);
        memset(big, i + 1, size);                 /* every page, after the checkpoint */
    }
    printf("done %d\n", big[size - 1]);
    return 0;
}
"#,
    );
    for i in 1..=4 {
        dir.write(format!("f{i}.txt"), &format!("v{i}\n"));
    }
    let mut s = Session::start(
        forkhook_command()
            .args(["-v", "-e", "txt", "--"])
            .arg(&program)
            .current_dir(&dir.path)
            .env("FORKHOOK_CHECKPOINT_SHARE", "1"),
    );
    s.expect_stdout("done 5", T);
    s.expect_stderr("run exited", T);
    assert_eq!(s.count_stderr("] checkpoint "), 4, "{}", s.transcript());
    // The run peaked at 48 MiB and a little; the budget is 1.5 times that or 32 MiB
    // more, whichever is larger (here the latter); and a little room for the rest.
    let limit: u64 = (48 << 20) + (32 << 20) + (8 << 20);
    let within = wait_until(T, Duration::from_millis(50), || session_pss(&s) <= limit);
    assert!(
        within,
        "the session holds {} MiB\n{}",
        session_pss(&s) >> 20,
        s.transcript()
    );
    assert!(
        s.count_stderr("retired the checkpoint") >= 2,
        "{}",
        s.transcript()
    );
    save_rename_over(&dir.join("f3.txt"), "v3 edited\n");
    s.expect_stdout("f3.txt: v3 edited", T);
    s.expect_stdout("f4.txt: v4", T);
    s.expect_stdout("done 5", T);
    s.expect_stderr("run exited", T);
}

/// Files read within the minimum gap of the newest checkpoint share it; one read
/// after a longer stretch gets its own. An edit to a shared one resumes from the
/// checkpoint before it, and the resumed run takes one right before the edited file,
/// so the next edit of it resumes from there.
#[test]
fn files_near_a_checkpoint_share_it_until_one_is_edited() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("budget-gap");
    dir.write("a.lua", "return 'a1'\n");
    dir.write("b.lua", "return 'b1'\n");
    dir.write("c.lua", "return 'c1'\n");
    dir.write(
        "main.lua",
        "local a, b = require('a'), require('b')\n\
         local t = os.clock() while os.clock() - t < 0.6 do end\n\
         print(a .. ' ' .. b .. ' ' .. require('c'))\n",
    );
    // Wide enough for a loaded machine between main.lua and b.lua, and less than the
    // 0.6 s of CPU the run burns before c.lua.
    let mut s = verbose_lua_session(&dir, &[("FORKHOOK_CHECKPOINT_GAP_MS", "250")]);
    let named = |file: &str| dir.join(file).display().to_string();
    for file in ["a.lua", "b.lua"] {
        let line = s.expect_stderr(&format!("no checkpoint before {}", named(file)), T);
        assert!(line.contains("is near enough"), "{line}");
    }
    s.expect_stderr(&format!("checkpoint 2 before {} (", named("c.lua")), T);
    s.expect_stdout("a1 b1 c1", T);
    s.expect_stderr("run exited", T);
    assert_eq!(s.count_stderr("] checkpoint "), 2, "{}", s.transcript());

    save_rename_over(&dir.join("b.lua"), "return 'b2'\n");
    s.expect_stderr(
        "b.lua changed: resuming from checkpoint 1 (before main.lua)",
        T,
    );
    s.expect_stderr(&format!("checkpoint 2 before {} (", named("b.lua")), T);
    s.expect_stdout("a1 b2 c1", T);
    s.expect_stderr("run exited", T);

    save_rename_over(&dir.join("b.lua"), "return 'b3'\n");
    s.expect_stderr(
        "b.lua changed: resuming from checkpoint 2 (before b.lua)",
        T,
    );
    s.expect_stdout("a1 b3 c1", T);
    s.expect_stderr("run exited", T);
    assert_eq!(s.count_stdout("a1 b"), 3, "{}", s.transcript());
}

/// A program that loads 200 modules without a pause, past the gap, then works for a
/// while before it reads the module being edited: no checkpoint in the middle of the
/// loading ("loading:", the files come less than half the gap apart), one before the
/// module read after the pause, and an edit of it resumes from there, without loading
/// the 200 modules again.
#[test]
fn checkpoints_wait_for_a_pause_in_the_loading() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("budget-loading");
    // About 0.2 ms each: a burst of 40 ms or more, past the 20 ms gap.
    modules(&dir, 200, 20_000);
    let main = std::fs::read_to_string(dir.join("main.lua")).expect("main.lua");
    let main = main.replace(
        "print('total ' .. total)\n",
        "print('loaded ' .. total)\n\
         local t = os.clock() while os.clock() - t < 0.3 do end\n\
         print(require('edited'))\n",
    );
    dir.write("main.lua", &main);
    dir.write("edited.lua", "return 'edited v1'\n");
    // Loading: files less than 10 ms apart; a checkpoint waits up to 200 ms.
    let mut s = verbose_lua_session(&dir, &[("FORKHOOK_CHECKPOINT_GAP_MS", "20")]);
    let edited = dir.join("edited.lua").display().to_string();
    s.expect_stderr(&format!("before {edited} ("), T);
    s.expect_stdout("edited v1", T);
    s.expect_stderr("run exited", T);
    assert!(
        s.count_stderr("one waits for a pause") > 0,
        "no file was left without a checkpoint while the program loaded\n{}",
        s.transcript()
    );

    save_rename_over(&dir.join("edited.lua"), "return 'edited v2'\n");
    s.expect_stderr("edited.lua changed: resuming from checkpoint", T);
    s.expect_stdout("edited v2", T);
    s.expect_stderr("run exited", T);
    assert_eq!(s.count_stdout("loaded 20100"), 1, "{}", s.transcript());
}
