//! The interposed symbols live only in libforkhook.so: a launcher that exported `open`
//! would hook its own file opens.

mod common;

use common::*;
use std::process::Command;

fn defined_dynamic_symbols(path: &std::path::Path) -> Vec<String> {
    let output = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(path)
        .output()
        .expect("run nm");
    assert!(
        output.status.success(),
        "nm {}: {:?}",
        path.display(),
        output
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

#[test]
fn only_the_library_exports_the_hooked_functions() {
    if !require_tool("nm") {
        return;
    }
    let hooked = [
        "open", "open64", "openat", "fopen", "fopen64", "stat", "statx", "execve",
    ];
    let library = defined_dynamic_symbols(&library_path());
    for name in hooked {
        assert!(
            library.iter().any(|s| s == name),
            "libforkhook.so lacks {name}"
        );
    }
    let launcher = defined_dynamic_symbols(&forkhook_bin());
    for name in hooked {
        assert!(
            !launcher.iter().any(|s| s == name),
            "the launcher exports {name}"
        );
    }
}
