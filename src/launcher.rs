//! The `forkhook` command: turns its options into the environment the library reads,
//! writes the embedded library to a cache file, and execs the command, which so
//! keeps the launcher's pid (the shell waits for the pid that becomes the coordinator).
//!
//! On x86-64 Linux the common launches never get here: [`early`] does them at the
//! executable's entry point, before libc's start-up (whose CPU probing costs a virtual
//! machine half a millisecond), and leaves everything else to this module.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod early;

use crate::filter::Filter;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

const ABOUT: &str = "Run a program, and when a file it read changes, resume it from a \
checkpoint taken just before it first read that file, instead of starting over.";

const LONG_ABOUT: &str = "Run a program, and when a file it read changes, resume it from a \
checkpoint taken just before it first read that file, instead of starting over.

The first time COMMAND opens or stats a file that matches the filter, forkhook forks it: \
one copy is parked (a checkpoint), the other carries on. When such a file changes, the \
current run is stopped and the newest checkpoint taken before that file was first read \
forks a fresh run, which reads the new file. Everything the program did before that \
point (loading an interpreter, a framework, big headers) is not done again.";

const AFTER_HELP: &str = "Examples:
  forkhook -e lua -- lua5.4 main.lua          edit any .lua file main.lua loads
  forkhook -e py -- python3 app.py            edit a module app.py imports
  forkhook -e h,c -- tcc -run main.c          edit a header included after big ones
  forkhook -f '/src/views/' -- python3 srv.py watch files under a directory
  LD_PRELOAD=$(forkhook --print-library) FORKMON_FILTER='%.lua$' lua5.4 main.lua

Environment (also read without the launcher):
  FORKMON_FILTER        Lua patterns, ';'-separated, matched against absolute paths
  FORKHOOK_FILTER       a Rust regex, matched against absolute paths
  FORKMON_QUIET         print nothing but errors
  FORKMON_NO_COLORS, NO_COLOR   no colours on stderr
  FORKMON_RESTART_DELAY quiet time (ms) after the last change before resuming (default 3)
  FORKMON_IGNORE_DELAY  minimum time (ms) between resumes; later changes wait, never lost
  FORKHOOK_VERBOSE      a line per checkpoint and per watched file
  FORKHOOK_THREADS      checkpoint (default) or skip, when the program runs threads
  FORKHOOK_CHECKPOINT_SHARE  share of run time checkpoints may cost (default 0.01;
                             1: a checkpoint before every file)
  FORKHOOK_CHECKPOINT_GAP_MS least time (ms) between two checkpoints (default 100);
                             while files come less than half of it apart, the
                             next one waits for a pause, up to ten times it
  FORKHOOK_MAX_CHECKPOINTS   most checkpoints alive at once (default 64)

Exit status: the session's (128 + signal when stopped by Ctrl-C, SIGTERM, SIGHUP);
2 for bad options or settings; 126 if COMMAND cannot be executed; 127 if not found.";

/// What the command line asked for.
#[derive(Debug)]
pub struct Cli {
    /// `-e`: extensions, one per element (commas already split)
    pub ext: Vec<String>,
    /// `-f`: Rust regexes
    pub filter: Vec<String>,
    pub quiet: bool,
    pub verbose: bool,
    pub settle: Option<u64>,
    pub threads: Option<String>,
    pub print_library: bool,
    /// The program to run, and its arguments
    pub command: Vec<OsString>,
}

impl Cli {
    /// The command line's grammar. Built with clap's builder rather than its derive
    /// macro: a proc macro is a shared library, and the launcher is linked statically
    /// (see `.cargo/config.toml`), a setting cargo also applies to proc macros.
    pub fn command() -> Command {
        Command::new("forkhook")
            .version(env!("CARGO_PKG_VERSION"))
            .about(ABOUT)
            .long_about(LONG_ABOUT)
            .after_help(AFTER_HELP)
            .arg(
                Arg::new("ext")
                    .short('e')
                    .long("ext")
                    .value_name("EXT[,EXT]")
                    .value_delimiter(',')
                    .action(ArgAction::Append)
                    .help("Watch files with these extensions (comma-separated, repeatable): -e lua, -e py,html"),
            )
            .arg(
                Arg::new("filter")
                    .short('f')
                    .long("filter")
                    .value_name("REGEX")
                    .action(ArgAction::Append)
                    .help(
                        "Watch files whose absolute path matches this Rust regex (repeatable; \
                         (?i) folds ASCII letters only)",
                    ),
            )
            .arg(
                Arg::new("quiet")
                    .short('q')
                    .long("quiet")
                    .action(ArgAction::SetTrue)
                    .conflicts_with("verbose")
                    .help("Print nothing but errors"),
            )
            .arg(
                Arg::new("verbose")
                    .short('v')
                    .long("verbose")
                    .action(ArgAction::SetTrue)
                    .help("Also print a line per checkpoint and per watched file"),
            )
            .arg(
                Arg::new("settle")
                    .long("settle")
                    .value_name("MS")
                    .value_parser(clap::value_parser!(u64))
                    .help("Quiet time after the last change before resuming, in milliseconds"),
            )
            .arg(
                Arg::new("threads")
                    .long("threads")
                    .value_name("POLICY")
                    .value_parser(["checkpoint", "skip"])
                    .help("When the program runs several threads at a checkpoint: checkpoint anyway, or skip"),
            )
            .arg(
                Arg::new("print_library")
                    .long("print-library")
                    .action(ArgAction::SetTrue)
                    .help("Print the path of the embedded libforkhook.so (for plain LD_PRELOAD use) and exit"),
            )
            .arg(
                Arg::new("command")
                    .last(true)
                    .value_name("COMMAND")
                    .num_args(1..)
                    .value_parser(clap::value_parser!(OsString))
                    .required_unless_present("print_library")
                    .help("The program to run, and its arguments"),
            )
    }

    /// Parses this process's arguments; on bad usage, `--help` or `--version`, prints
    /// what clap says and exits (status 2 for errors, as before).
    pub fn parse() -> Cli {
        Cli::from_matches(&Cli::command().get_matches())
    }

    fn from_matches(m: &ArgMatches) -> Cli {
        let strings = |id: &str| -> Vec<String> {
            m.get_many::<String>(id)
                .map(|v| v.cloned().collect())
                .unwrap_or_default()
        };
        Cli {
            ext: strings("ext"),
            filter: strings("filter"),
            quiet: m.get_flag("quiet"),
            verbose: m.get_flag("verbose"),
            settle: m.get_one::<u64>("settle").copied(),
            threads: m.get_one::<String>("threads").cloned(),
            print_library: m.get_flag("print_library"),
            command: m
                .get_many::<OsString>("command")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// The launcher's errors: each says what went wrong and what to do, and maps to an
/// exit status.
#[derive(Debug)]
pub enum LaunchError {
    Usage(String),
    Library(io::Error),
    NotFound(OsString),
    NotExecutable(OsString, io::Error),
}

impl LaunchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Usage(_) => 2,
            LaunchError::Library(_) => 1,
            LaunchError::NotFound(_) => 127,
            LaunchError::NotExecutable(..) => 126,
        }
    }
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::Usage(msg) => f.write_str(msg),
            LaunchError::Library(e) => {
                write!(f, "cannot write the hook library to a cache directory: {e}")
            }
            LaunchError::NotFound(cmd) => write!(f, "{}: command not found", cmd.to_string_lossy()),
            LaunchError::NotExecutable(cmd, e) => {
                write!(f, "{}: cannot execute: {e}", cmd.to_string_lossy())
            }
        }
    }
}

/// Runs the launcher with `library`, the bytes of libforkhook.so (embedded in the
/// binary by build.rs); returns only on error (after a successful exec, the command
/// runs in this process).
/// `library` is the embedded libforkhook.so, `hash` its hash (computed at build time).
pub fn main(cli: Cli, library: &[u8], hash: &str) -> Result<(), LaunchError> {
    let library = install_library(library, hash).map_err(LaunchError::Library)?;
    if cli.print_library {
        println!("{}", library.display());
        return Ok(());
    }
    let regex = filter_regex(&cli.ext, &cli.filter)?;
    let (program, args) = cli.command.split_first().ok_or_else(|| {
        LaunchError::Usage("no command given: forkhook [OPTIONS] -- COMMAND [ARGS]...".into())
    })?;

    let mut command = std::process::Command::new(program);
    command.args(args);
    match regex {
        Some(regex) => {
            // The flags say what to watch: a FORKMON_FILTER left in the environment
            // must not widen it behind the user's back.
            command
                .env("FORKHOOK_FILTER", regex)
                .env_remove("FORKMON_FILTER");
        }
        None if std::env::var_os("FORKMON_FILTER").is_none()
            && std::env::var_os("FORKHOOK_FILTER").is_none() =>
        {
            return Err(LaunchError::Usage(
                "nothing to watch: give -e EXT (e.g. -e lua) or -f REGEX, or set FORKMON_FILTER"
                    .into(),
            ));
        }
        None => {}
    }
    if cli.quiet {
        command.env("FORKHOOK_QUIET", "1");
    }
    if cli.verbose {
        command.env("FORKHOOK_VERBOSE", "1");
    }
    if let Some(ms) = cli.settle {
        command.env("FORKHOOK_SETTLE_MS", ms.to_string());
    }
    if let Some(policy) = &cli.threads {
        command.env("FORKHOOK_THREADS", policy);
    }
    // The command keeps this pid; a memfd it inherits tells it at exit whether any
    // process it started went on to watch something.
    command.env("FORKHOOK_LAUNCHER_PID", std::process::id().to_string());
    if let Ok(marker) = crate::sys::memfd_inheritable(c"forkhook-session") {
        command.env("FORKHOOK_SESSION_MARKER", marker.as_raw_fd().to_string());
        // Owned by the command from here on (exec keeps it open).
        std::mem::forget(marker);
    }
    let mut preload = library.into_os_string();
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    command.env("LD_PRELOAD", preload);

    let error = command.exec();
    Err(match error.kind() {
        io::ErrorKind::NotFound => LaunchError::NotFound(program.clone()),
        _ => LaunchError::NotExecutable(program.clone(), error),
    })
}

/// One regex from `-e` and `-f`, checked here so a typo fails before the program runs.
pub fn filter_regex(exts: &[String], filters: &[String]) -> Result<Option<String>, LaunchError> {
    let mut parts = Vec::new();
    let exts: Vec<String> = exts
        .iter()
        .map(|e| e.trim().trim_start_matches('.').to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if !exts.is_empty() {
        let alternatives: Vec<String> = exts.iter().map(|e| regex::escape(e)).collect();
        parts.push(format!(r"\.(?:{})$", alternatives.join("|")));
    }
    for f in filters {
        Filter::from_sources(None, Some(f)).map_err(|e| LaunchError::Usage(format!("-f {e}")))?;
        parts.push(f.clone());
    }
    Ok(match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(
            parts
                .iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|"),
        ),
    })
}

/// Writes the embedded library to `<cache>/forkhook/libforkhook-<hash>.so` once; the
/// hash in the name lets versions live side by side. Written to a temporary name and
/// renamed, so a concurrent launch never preloads a half-written file.
pub fn install_library(bytes: &[u8], hash: &str) -> io::Result<PathBuf> {
    let name = format!("libforkhook-{hash}.so");
    let mut last_error = io::Error::other("no cache directory");
    for dir in cache_dirs() {
        match install_into(&dir, &name, bytes) {
            Ok(path) => return Ok(path),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

fn install_into(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(name);
    // LD_PRELOAD splits on spaces and colons: such a path cannot be preloaded.
    if path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|&b| b == b' ' || b == b':')
    {
        return Err(io::Error::other(format!(
            "{} contains a space or colon",
            path.display()
        )));
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&temp, bytes)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&temp, &path)?;
    Ok(path)
}

fn cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(xdg).join("forkhook"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(home).join(".cache/forkhook"));
    }
    // A per-user directory keeps users apart.
    dirs.push(std::env::temp_dir().join(format!("forkhook-{}", crate::sys::getuid())));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_become_one_anchored_regex() {
        let r = filter_regex(&["lua".into(), ".py".into()], &[])
            .unwrap()
            .unwrap();
        assert_eq!(r, r"\.(?:lua|py)$");
        let f = Filter::from_sources(None, Some(&r)).unwrap().unwrap();
        assert!(f.is_match(b"/a/b.lua") && f.is_match(b"/a/b.py"));
        assert!(!f.is_match(b"/a/b.pyc") && !f.is_match(b"/a/blua"));
    }

    #[test]
    fn filters_and_extensions_combine() {
        let r = filter_regex(&["h".into()], &["/src/".into(), "x+y".into()])
            .unwrap()
            .unwrap();
        let f = Filter::from_sources(None, Some(&r)).unwrap().unwrap();
        assert!(f.is_match(b"/a.h") && f.is_match(b"/p/src/a.c") && f.is_match(b"/xxy"));
        assert!(!f.is_match(b"/p/a.c"));
        assert!(filter_regex(&[], &[]).unwrap().is_none());
    }

    #[test]
    fn a_bad_regex_is_a_usage_error() {
        let e = filter_regex(&[], &["(unclosed".into()]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("(unclosed"), "{e}");
    }
}
