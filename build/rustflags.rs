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
