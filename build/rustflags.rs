// Included by build.rs and by tests/build_flags.rs.

/// `flags` (separated by 0x1f, as cargo encodes them) as the nested build of the hook
/// takes them: without what only an executable can be, that is `+crt-static` in any
/// `-C target-feature=` list (a list left empty is dropped) and
/// `-C relocation-model=static` (a shared library's code must be position-independent).
/// Every other flag passes through.
fn for_shared_library(flags: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut args = flags.split('\x1f').filter(|a| !a.is_empty()).peekable();
    while let Some(arg) = args.next() {
        // A codegen option, in one argument (`-Cname=value`) or two (`-C`, `--codegen`).
        let (prefix, option) = if arg == "-C" || arg == "--codegen" {
            match args.peek() {
                Some(_) => (Some(arg), args.next().unwrap_or_default()),
                None => {
                    out.push(arg.to_string());
                    continue;
                }
            }
        } else if let Some(rest) = arg.strip_prefix("-C") {
            (None, rest)
        } else {
            out.push(arg.to_string());
            continue;
        };
        let kept = match option.split_once('=') {
            Some(("relocation-model", "static")) => None,
            Some(("target-feature", list)) => {
                let features: Vec<&str> = list
                    .split(',')
                    .filter(|f| !f.is_empty() && *f != "+crt-static")
                    .collect();
                (!features.is_empty()).then(|| format!("target-feature={}", features.join(",")))
            }
            _ => Some(option.to_string()),
        };
        let Some(kept) = kept else {
            continue;
        };
        match prefix {
            Some(prefix) => {
                out.push(prefix.to_string());
                out.push(kept);
            }
            None => out.push(format!("-C{kept}")),
        }
    }
    out.join("\x1f")
}

/// The codegen options among `flags` (encoded as for [`for_shared_library`]), as
/// `name=value` strings, in order.
fn codegen_options(flags: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = flags.split('\x1f').filter(|a| !a.is_empty());
    while let Some(arg) = args.next() {
        if arg == "-C" || arg == "--codegen" {
            out.extend(args.next().map(str::to_string));
        } else if let Some(rest) = arg.strip_prefix("-C") {
            out.push(rest.to_string());
        }
    }
    out
}

/// May the launcher start at its own entry point (src/launcher/early.rs), before libc?
/// Not in a static position-independent executable (`+crt-static` without
/// `-C relocation-model=static`): there libc's start-up applies the executable's own
/// relocations, and until then a call between crates, made through the GOT, jumps to
/// an address not yet relocated. A dynamically linked one has been relocated by the
/// loader, and a position-dependent static one has nothing to relocate.
fn early_entry_is_safe(flags: &str, crt_static: bool) -> bool {
    let model = codegen_options(flags)
        .iter()
        .filter_map(|o| o.strip_prefix("relocation-model=").map(str::to_string))
        .next_back();
    !crt_static || model.as_deref() == Some("static")
}
