//! What users see: one-line messages on stderr, prefixed `[forkhook]`, coloured only
//! on a terminal. Written with a single `write(2)` so lines from different processes
//! of a session never interleave mid-line.

use crate::sys;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    pub quiet: bool,
    pub verbose: bool,
    pub color: bool,
}

#[derive(Clone, Copy)]
enum Tone {
    Info,
    Detail,
    Warning,
    Error,
}

impl Reporter {
    /// A line users see by default: resumes and run endings.
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            self.emit(Tone::Info, msg);
        }
    }

    /// Per-checkpoint lines, with verbose output only. The message is made only then:
    /// the coordinator would otherwise format a line for each file a run reads.
    pub fn detail(&self, msg: impl FnOnce() -> String) {
        if self.verbose {
            self.emit(Tone::Detail, &msg());
        }
    }

    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            self.emit(Tone::Warning, msg);
        }
    }

    /// Errors are shown even when quiet: they explain an exit status or a lost feature.
    pub fn error(&self, msg: &str) {
        self.emit(Tone::Error, msg);
    }

    fn emit(&self, tone: Tone, msg: &str) {
        let line = if self.color {
            let (start, label) = match tone {
                Tone::Info => ("\x1b[36m", ""),
                Tone::Detail => ("\x1b[2m", ""),
                Tone::Warning => ("\x1b[33m", "warning: "),
                Tone::Error => ("\x1b[31m", "error: "),
            };
            format!("{start}[forkhook]\x1b[0m {label}{msg}\n")
        } else {
            let label = match tone {
                Tone::Warning => "warning: ",
                Tone::Error => "error: ",
                _ => "",
            };
            format!("[forkhook] {label}{msg}\n")
        };
        let _ = sys::write_all(2, line.as_bytes());
    }
}

/// "850 µs", "12 ms", "1.52 s": precise enough to compare, short enough to read.
pub fn human(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{} ms", us / 1_000)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// A path as the user would type it: relative to the current directory when under it.
pub fn display_path(path: &Path, cwd: Option<&Path>) -> String {
    match cwd.and_then(|cwd| path.strip_prefix(cwd).ok()) {
        Some(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => path.display().to_string(),
    }
}

pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_micros(850)), "850 µs");
        assert_eq!(human(Duration::from_millis(12)), "12 ms");
        assert_eq!(human(Duration::from_millis(1520)), "1.52 s");
    }

    #[test]
    fn paths_are_shown_relative_to_the_cwd_when_under_it() {
        let cwd = Path::new("/home/me/app");
        assert_eq!(
            display_path(Path::new("/home/me/app/src/foo.lua"), Some(cwd)),
            "src/foo.lua"
        );
        assert_eq!(
            display_path(Path::new("/etc/x.lua"), Some(cwd)),
            "/etc/x.lua"
        );
        assert_eq!(
            display_path(Path::new("/home/me/app"), Some(cwd)),
            "/home/me/app"
        );
    }
}
