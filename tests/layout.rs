//! The interposed symbols live only in libforkhook.so: a launcher that exported `open`
//! would hook its own file opens.

mod common;

use common::*;
use std::process::Command;

/// What `tool args path` prints, asserting that it succeeded.
fn output_of(tool: &str, args: &[&str], path: &std::path::Path) -> String {
    let output = Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {}: {output:?}",
        path.display()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn defined_dynamic_symbols(path: &std::path::Path) -> Vec<String> {
    output_of("nm", &["-D", "--defined-only"], path)
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

/// The shared libraries `path` names as needed (its DT_NEEDED entries).
fn needed_libraries(path: &std::path::Path) -> Vec<String> {
    // "0x...01 (NEEDED)  Shared library: [libc.so.6]"
    output_of("readelf", &["-d", "-W"], path)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect()
}

/// Every program the library is preloaded into loads what it needs: libgcc_s would
/// cost each one its constructor's `cpuid` queries (see hook/build.rs), so the
/// unwinder is linked in, wherever the toolchain has it to link.
#[test]
fn the_library_needs_only_the_c_library_and_the_loader() {
    if !require_tool("readelf") || !require_tool("gcc") {
        return;
    }
    let archive = Command::new("gcc")
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .expect("run gcc");
    let archive = String::from_utf8_lossy(&archive.stdout).trim().to_string();
    if !std::path::Path::new(&archive).is_absolute() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "gcc has no libgcc_eh.a in CI"
        );
        eprintln!("SKIPPED: gcc has no libgcc_eh.a, the library uses libgcc_s");
        return;
    }
    let needed = needed_libraries(&library_path());
    assert!(
        needed.iter().any(|n| n.starts_with("libc.so")),
        "no libc among {needed:?}"
    );
    for name in &needed {
        assert!(
            name.starts_with("libc.so") || name.starts_with("ld-linux"),
            "libforkhook.so needs {name} (all: {needed:?})"
        );
    }
}
