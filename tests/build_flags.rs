//! The flags build.rs passes to the nested build of the hook: the launcher's static
//! linking must not reach the shared library (rustc would drop its crate type and the
//! build would have no libforkhook.so to embed); every other flag must.

include!("../build/rustflags.rs");

const SEP: &str = "\x1f";

fn flags(parts: &[&str]) -> String {
    parts.join(SEP)
}

#[test]
fn crt_static_is_left_out_in_each_spelling() {
    assert_eq!(
        without_crt_static(&flags(&["-C", "target-feature=+crt-static"])),
        ""
    );
    assert_eq!(without_crt_static("-Ctarget-feature=+crt-static"), "");
    assert_eq!(
        without_crt_static(&flags(&["--codegen", "target-feature=+crt-static"])),
        ""
    );
    assert_eq!(without_crt_static(""), "");
}

#[test]
fn other_features_and_flags_pass_through() {
    assert_eq!(
        without_crt_static("-Ctarget-feature=+crt-static,+avx2"),
        "-Ctarget-feature=+avx2"
    );
    assert_eq!(
        without_crt_static(&flags(&[
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
        without_crt_static(&flags(&["-C", "target-cpu=native"])),
        flags(&["-C", "target-cpu=native"])
    );
}
