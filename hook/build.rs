//! Links the unwinder into libforkhook.so, so that it does not depend on libgcc_s.so.1.
//!
//! Rust's standard library needs an unwinder even with `panic = "abort"`: its
//! precompiled code has landing pads, and backtraces walk the stack. On GNU targets it
//! takes it from libgcc_s.so.1, a shared library that every program the hook is
//! preloaded into then loads too. Its constructor asks the CPU for its features with a
//! dozen `cpuid` instructions, and in a virtual machine each of them traps to the
//! hypervisor (4 µs each on the machine of the README's figures). Loading it made each
//! program start 150 µs later: half of what the whole library cost.
//!
//! The static archive libgcc_eh.a holds the same unwinder. Linked whole, ahead of the
//! standard library's `-lgcc_s`, it defines every symbol that library would, so the
//! linker (`--as-needed`) leaves libgcc_s out. Its symbols stay local: a cdylib
//! exports only the hooked functions. A toolchain without libgcc_eh.a (GCC's static
//! libraries not installed) builds the library as before, depending on libgcc_s.
//! `tests/layout.rs` checks what the built library depends on.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let gnu_linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !gnu_linux {
        return;
    }
    let Some(archive) = static_unwinder() else {
        println!(
            "cargo:warning=libgcc_eh.a not found: libforkhook.so will load libgcc_s.so.1 \
             (about 150 µs more at each program start)"
        );
        return;
    };
    if let Some(dir) = archive.parent() {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=gcc_eh");
}

/// Where the compiler driver that links the library finds libgcc_eh.a, if it does. The
/// driver answers with the bare name when it has no such file.
fn static_unwinder() -> Option<PathBuf> {
    let driver = env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_string());
    let output = Command::new(driver)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    (output.status.success() && path.is_absolute() && path.is_file()).then_some(path)
}
