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

/// 200 modules loaded in quick succession: one fork each would cost more than the
/// budget allows, so most share a checkpoint; a change to any still resumes right.
#[test]
fn quick_files_share_checkpoints_and_still_resume_correctly() {
    let _l = lock();
    if !require_tool("lua5.4") {
        return;
    }
    let dir = TempDir::new("budget-time");
    modules(&dir, 200, 0);
    let mut s = Session::start(
        forkhook_command()
            .args(["-v", "-e", "lua", "--", "lua5.4", "main.lua"])
            .current_dir(&dir.path),
    );
    s.expect_stdout("total 20100", T);
    let line = s.expect_stderr("run exited", T);
    assert!(line.contains("watching 201 files"), "{line}");
    let taken = s.count_stderr("] checkpoint ");
    assert!(
        taken >= 1 && taken < 201,
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
    let mut s = Session::start(
        forkhook_command()
            .args(["-v", "-e", "lua", "--", "lua5.4", "main.lua"])
            .current_dir(&dir.path)
            .env("FORKHOOK_MAX_CHECKPOINTS", "3"),
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
