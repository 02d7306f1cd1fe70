//! Builds libforkhook.so (the `hook/` crate) and hands its path to the launcher,
//! which embeds it with `include_bytes!`, so `cargo install` gives one binary.
//!
//! The nested cargo gets its own target directory: sharing ours would deadlock on
//! the lock this very build holds. It builds the core library again as a dependency
//! of the hook, which runs this script again: `FORKHOOK_NESTED_BUILD` stops that.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FORKHOOK_NESTED_BUILD");
    if env::var_os("FORKHOOK_NESTED_BUILD").is_some() {
        return;
    }
    // The launcher starts at its own entry point, which does the common launches
    // before libc starts (src/launcher/early.rs), then goes on to libc's.
    let crt_static = env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|features| features.split(',').any(|f| f == "crt-static"));
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && early_entry_is_safe(&flags, crt_static)
    {
        println!("cargo:rustc-link-arg-bin=forkhook=-Wl,--entry=forkhook_entry");
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for watched in ["hook", "src", "Cargo.toml", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(watched).display()
        );
    }

    let target_dir = out_dir.join("hook-target");
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(manifest_dir.join("hook/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("FORKHOOK_NESTED_BUILD", "1")
        // Symbol names stay (for profilers); debug info would triple the binary.
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        // Lints and wrappers of the outer command (clippy) are not for this build.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // The launcher is a static, position-dependent executable
        // (`.cargo/config.toml`); a shared library can be neither. The other flags the
        // outer build has pass on, and take precedence over the config file the nested
        // cargo reads too.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            for_shared_library(&env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default()),
        )
        .env_remove("RUSTFLAGS");
    let status = command
        .status()
        .expect("cannot run cargo to build the hook library");
    assert!(status.success(), "building hook/ (libforkhook.so) failed");

    let built = target_dir.join("release/libforkhook.so");
    let embedded = out_dir.join("libforkhook.so");
    std::fs::copy(&built, &embedded).expect("copy libforkhook.so");
    println!(
        "cargo:rustc-env=FORKHOOK_EMBEDDED_LIBRARY={}",
        embedded.display()
    );
    // Its hash names the cached copy. Computed here, so that a launch does not read
    // the 2 MB it carries just to find the copy already there.
    let bytes = std::fs::read(&embedded).expect("read libforkhook.so");
    println!(
        "cargo:rustc-env=FORKHOOK_EMBEDDED_HASH={:016x}",
        xxhash_rust::xxh3::xxh3_64(&bytes)
    );
}

// Shared with tests/build_flags.rs, which checks it.
include!("build/rustflags.rs");
