//! How the hook names the files a program opens by relative path. It keeps a copy of
//! the current directory (no `getcwd` per call), so a program that changes directory
//! must still have the right files tracked.

mod common;

use common::*;

use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Reads `data.txt` in three directories, reaching them by `chdir` and `fchdir`. A
/// stale copy of the current directory, or taking the same name for the same file
/// after a directory change, would track the decoy `./data.txt` (or `sub/data.txt`
/// twice) only, and edits to the others would resume nothing. Each read is a `stat`
/// and then an `fopen` of the same name, as CPython does: the second finds the name
/// known, which a thread remembers (see `hook::RECENT`) for as long as the directory
/// stays the same.
const WALKER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
static void show(const char *where) {
    char v[64] = "";
    struct stat st;
    if (stat("data.txt", &st) != 0) return;
    FILE *f = fopen("data.txt", "r");
    if (f) { fgets(v, sizeof v, f); fclose(f); }
    printf("%s: %s", where, v);
    fflush(stdout);
}
int main(void) {
    FILE *top = fopen("top.txt", "r");      /* a relative open in the start directory */
    if (top) fclose(top);
    show("start");
    int other = open("other", O_RDONLY | O_DIRECTORY);
    if (other < 0 || chdir("sub") != 0) return 1;
    show("sub");
    if (fchdir(other) != 0) return 1;
    show("other");
    printf("done\n");
    fflush(stdout);
    return 0;
}
"#;

#[test]
fn files_opened_after_chdir_and_fchdir_are_the_ones_tracked() {
    let _lock = lock();
    let dir = TempDir::new("paths-chdir");
    dir.write("top.txt", "top\n");
    dir.write("data.txt", "decoy\n");
    dir.write("sub/data.txt", "sub-1\n");
    dir.write("other/data.txt", "other-1\n");
    let walker = compile_c(&dir, "walker", WALKER);
    let mut s = forkhook_in(&dir, &["-e", "txt"], &walker);
    s.expect_stdout("start: decoy", T);
    s.expect_stdout("sub: sub-1", T);
    s.expect_stdout("other: other-1", T);
    s.expect_stdout("done", T);
    s.expect_stderr("watching 4 files", T);

    save_rename_over(&dir.join("sub/data.txt"), "sub-2\n");
    s.expect_stdout("sub: sub-2", T);
    s.expect_stdout("other: other-1", T);
    s.expect_stdout("done", T);
    s.expect_stderr("run exited", T);

    save_rename_over(&dir.join("other/data.txt"), "other-2\n");
    s.expect_stdout("other: other-2", T);
    s.expect_stdout("done", T);
    s.expect_stderr("run exited", T);
    assert_eq!(s.count_stdout("sub: decoy"), 0, "{}", s.transcript());
    assert_eq!(s.count_stdout("other: decoy"), 0, "{}", s.transcript());
}
