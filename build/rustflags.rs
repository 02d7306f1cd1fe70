// Included by build.rs and by tests/build_flags.rs.

/// `flags` (separated by 0x1f, as cargo encodes them) without `+crt-static` in any
/// `-C target-feature=` list; a list left empty is dropped.
fn without_crt_static(flags: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut args = flags.split('\x1f').filter(|a| !a.is_empty()).peekable();
    while let Some(arg) = args.next() {
        let (prefix, value) = if arg == "-C" || arg == "--codegen" {
            match args.peek() {
                Some(next) if next.starts_with("target-feature=") => {
                    let next = args.next().unwrap_or_default();
                    (Some(arg), next)
                }
                _ => {
                    out.push(arg.to_string());
                    continue;
                }
            }
        } else if let Some(rest) = arg.strip_prefix("-C") {
            if !rest.starts_with("target-feature=") {
                out.push(arg.to_string());
                continue;
            }
            (None, rest)
        } else {
            out.push(arg.to_string());
            continue;
        };
        let list = &value["target-feature=".len()..];
        let kept: Vec<&str> = list
            .split(',')
            .filter(|f| !f.is_empty() && *f != "+crt-static")
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Some(prefix) = prefix {
            out.push(prefix.to_string());
        }
        out.push(format!(
            "{}target-feature={}",
            if prefix.is_some() { "" } else { "-C" },
            kept.join(",")
        ));
    }
    out.join("\x1f")
}
