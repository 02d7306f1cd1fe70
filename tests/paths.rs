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
/// known, which the process remembers (see `hook::RECENT`) for as long as the
/// directory stays the same.
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

/// A successful call leaves errno alone, and so must the hook behind it, whichever
/// way it goes: a first access (which takes a checkpoint), a name known to the
/// process, one known lately, a name that cannot match, and the call made again in a
/// run resumed from a checkpoint.
const ERRNO: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
static void check(const char *what, int result) {
    if (result < 0) printf("%s failed\n", what);
    else if (errno != 4242) printf("%s changed errno to %d\n", what, errno);
    else printf("%s kept errno\n", what);
    fflush(stdout);
}
int main(void) {
    struct stat st;
    char v[64] = "";
    errno = 4242; check("stat of b.dat, which does not match", stat("b.dat", &st));
    errno = 4242; check("first stat of a.txt", stat("a.txt", &st));
    errno = 4242; check("second stat of a.txt", stat("a.txt", &st));
    errno = 4242; check("third stat of a.txt", stat("a.txt", &st));
    errno = 4242;
    int fd = open("a.txt", O_RDONLY);
    check("open of a.txt", fd);
    if (fd >= 0) { read(fd, v, sizeof v - 1); close(fd); }
    printf("a.txt: %s", v);
    printf("done\n");
    fflush(stdout);
    return 0;
}
"#;

#[test]
fn errno_is_as_the_real_call_left_it() {
    let _lock = lock();
    let dir = TempDir::new("paths-errno");
    dir.write("a.txt", "one\n");
    dir.write("b.dat", "b\n");
    let program = compile_c(&dir, "errno", ERRNO);
    let mut s = forkhook_in(&dir, &["-e", "txt"], &program);
    s.expect_stdout("a.txt: one", T);
    s.expect_stdout("done", T);
    save_rename_over(&dir.join("a.txt"), "two\n");
    s.expect_stdout("a.txt: two", T);
    s.expect_stdout("done", T);
    let out = s.transcript();
    for what in [
        "stat of b.dat, which does not match",
        "first stat of a.txt",
        "second stat of a.txt",
        "third stat of a.txt",
        "open of a.txt",
    ] {
        assert!(out.contains(&format!("{what} kept errno")), "{what}: {out}");
    }
    assert!(
        !out.contains("changed errno") && !out.contains("failed"),
        "{out}"
    );
}

/// A file first reached by a `stat`-family call: the hook takes its identity from
/// what the call returned. `lstat` of a symlink returns the link's own, which says
/// nothing of the file it names: that one must still be tracked, and its edits seen.
const STATS: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
static void show(const char *name) {
    char v[64] = "";
    int fd = open(name, O_RDONLY);
    if (fd >= 0) { read(fd, v, sizeof v - 1); close(fd); }
    printf("%s: %s", name, v);
}
int main(void) {
    struct stat st;
    printf("start\n");
    fflush(stdout);
    if (lstat("link.txt", &st) != 0 || !S_ISLNK(st.st_mode)) return 1;
    if (fstatat(AT_FDCWD, "plain.txt", &st, AT_SYMLINK_NOFOLLOW) != 0) return 1;
    show("link.txt");
    show("plain.txt");
    printf("done\n");
    fflush(stdout);
    return 0;
}
"#;

#[test]
fn files_first_reached_by_stat_or_lstat_of_a_symlink_are_tracked() {
    let _lock = lock();
    let dir = TempDir::new("paths-stat");
    dir.write("real.txt", "real-1\n");
    dir.write("plain.txt", "plain-1\n");
    std::os::unix::fs::symlink("real.txt", dir.join("link.txt")).unwrap();
    let program = compile_c(&dir, "stats", STATS);
    let mut s = forkhook_in(&dir, &["-v", "-e", "txt"], &program);
    // The session starts at the `lstat`, not at the `open` after it.
    let link = dir.join("link.txt");
    s.expect_stderr(&format!("checkpoint 1 before {}", link.display()), T);
    s.expect_stdout("link.txt: real-1", T);
    s.expect_stdout("plain.txt: plain-1", T);
    s.expect_stdout("done", T);
    s.expect_stderr("run exited", T);

    save_rename_over(&dir.join("plain.txt"), "plain-2\n");
    s.expect_stdout("plain.txt: plain-2", T);
    s.expect_stdout("done", T);
    s.expect_stderr("run exited", T);

    save_truncate_write(&dir.join("real.txt"), "real-2\n");
    s.expect_stdout("link.txt: real-2", T);
    s.expect_stdout("done", T);
    assert_eq!(s.count_stdout("start"), 1, "{}", s.transcript());
}
