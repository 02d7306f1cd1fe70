//! The flags build.rs passes to the nested build of the hook: what makes the launcher
//! a static, position-dependent executable must not reach the shared library (rustc
//! would drop its crate type, or the link would fail on code that is not
//! position-independent); every other flag must.

include!("../build/rustflags.rs");

const SEP: &str = "\x1f";

fn flags(parts: &[&str]) -> String {
    parts.join(SEP)
}

#[test]
fn crt_static_is_left_out_in_each_spelling() {
    assert_eq!(
        for_shared_library(&flags(&["-C", "target-feature=+crt-static"])),
        ""
    );
    assert_eq!(for_shared_library("-Ctarget-feature=+crt-static"), "");
    assert_eq!(
        for_shared_library(&flags(&["--codegen", "target-feature=+crt-static"])),
        ""
    );
    assert_eq!(for_shared_library(""), "");
}

#[test]
fn the_static_relocation_model_is_left_out_in_each_spelling() {
    assert_eq!(
        for_shared_library(&flags(&[
            "-C",
            "target-feature=+crt-static",
            "-C",
            "relocation-model=static"
        ])),
        ""
    );
    assert_eq!(for_shared_library("-Crelocation-model=static"), "");
    assert_eq!(
        for_shared_library(&flags(&["--codegen", "relocation-model=static"])),
        ""
    );
    // Only that model: a position-independent one is what a shared library needs.
    assert_eq!(
        for_shared_library(&flags(&["-C", "relocation-model=pic"])),
        flags(&["-C", "relocation-model=pic"])
    );
}

#[test]
fn other_features_and_flags_pass_through() {
    assert_eq!(
        for_shared_library("-Ctarget-feature=+crt-static,+avx2"),
        "-Ctarget-feature=+avx2"
    );
    assert_eq!(
        for_shared_library(&flags(&[
            "-C",
            "target-feature=+avx2,+crt-static",
            "-C",
            "opt-level=3",
            "--cfg",
            "x"
        ])),
        flags(&[
            "-C",
            "target-feature=+avx2",
            "-C",
            "opt-level=3",
            "--cfg",
            "x"
        ])
    );
    assert_eq!(
        for_shared_library(&flags(&["-C", "target-cpu=native"])),
        flags(&["-C", "target-cpu=native"])
    );
    assert_eq!(for_shared_library("-Copt-level=2"), "-Copt-level=2");
    // A trailing `-C` with nothing after it is passed on for rustc to report.
    assert_eq!(for_shared_library("-C"), "-C");
}

#[test]
fn the_early_entry_is_left_out_of_a_static_position_independent_launcher() {
    // This repository's flags (.cargo/config.toml): static, position-dependent.
    let ours = flags(&[
        "-C",
        "target-feature=+crt-static",
        "-C",
        "relocation-model=static",
    ]);
    assert!(early_entry_is_safe(&ours, true));
    assert!(early_entry_is_safe("-Crelocation-model=static", true));
    // `cargo install` without them: dynamically linked, relocated by the loader.
    assert!(early_entry_is_safe("", false));
    // +crt-static alone makes a static-pie.
    assert!(!early_entry_is_safe(
        &flags(&["-C", "target-feature=+crt-static"]),
        true
    ));
    assert!(!early_entry_is_safe(
        &flags(&[
            "-Crelocation-model=static",
            "--codegen",
            "relocation-model=pie"
        ]),
        true
    ));
}
