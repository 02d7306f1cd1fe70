//! Settings, read once from the environment by the load-time constructor.
//!
//! Environment variables (not the launcher's flags) are the source of truth, so the
//! library works the same with plain `LD_PRELOAD`. forkmon's own variables keep
//! forkmon's meaning; new ones are named `FORKHOOK_*`.

use crate::filter::{Filter, FilterError};
use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

/// What to do when a checkpoint would fork a process with more than one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadPolicy {
    /// Take the checkpoint anyway (only the calling thread survives in the fork).
    Checkpoint,
    /// Take no checkpoint while more than one thread runs.
    Skip,
}

/// Limits on how many checkpoints a run spends, so a big process is not slowed
/// down by one fork per file (see the README's "Cost" section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Share of the run's elapsed time that checkpoints may take (0.0..=1.0).
    pub time_share: f64,
    /// No checkpoint closer than this to the newest (see `budget`).
    pub min_gap: Duration,
    /// Most checkpoints alive at once.
    pub max_checkpoints: usize,
    /// Memory the session may hold beyond the run's own peak, as a share of it: past
    /// it, checkpoints are retired (their private copies are what grows).
    pub memory_share: f64,
}

#[derive(Debug)]
pub struct Settings {
    pub filter: Filter,
    pub quiet: bool,
    pub verbose: bool,
    pub color: bool,
    /// Quiet time after the last change event before deciding (forkmon: FORKMON_RESTART_DELAY).
    pub settle: Duration,
    /// Changes within this time after a resume wait until it has passed (FORKMON_IGNORE_DELAY).
    /// forkmon drops them; forkhook only delays them, so no edit is lost.
    pub hold_after_resume: Duration,
    pub threads: ThreadPolicy,
    pub budget: Budget,
}

#[derive(Debug)]
pub enum ConfigError {
    NoFilter,
    Filter(FilterError),
    Invalid {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoFilter => write!(
                f,
                "no filter: set FORKMON_FILTER (Lua patterns, e.g. '%.lua$') or FORKHOOK_FILTER \
                 (a regex, e.g. '\\.py$'), or use the launcher: forkhook -e lua -- COMMAND"
            ),
            ConfigError::Filter(e) => e.fmt(f),
            ConfigError::Invalid {
                variable,
                value,
                expected,
            } => write!(f, "{variable}='{value}' is not valid: expected {expected}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Reads the settings through `var` (the real environment, or a map in tests).
    /// `stderr_is_terminal` decides colours when nothing forces them.
    pub fn from_env(
        var: impl Fn(&str) -> Option<OsString>,
        stderr_is_terminal: bool,
    ) -> Result<Settings, ConfigError> {
        let text = |name: &str| var(name).map(|v| v.to_string_lossy().into_owned());
        // forkmon's switches are on when set at all; ours also accept 0/false/no for off.
        let forkmon_flag = |name: &str| var(name).is_some();
        let flag = |name: &str| {
            text(name).is_some_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "no" | "off"))
        };

        let filter = Filter::from_sources(
            text("FORKMON_FILTER").as_deref(),
            text("FORKHOOK_FILTER").as_deref(),
        )
        .map_err(ConfigError::Filter)?
        .ok_or(ConfigError::NoFilter)?;

        let quiet = forkmon_flag("FORKMON_QUIET") || flag("FORKHOOK_QUIET");
        let no_color =
            forkmon_flag("FORKMON_NO_COLORS") || text("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match text("FORKHOOK_COLOR").as_deref() {
            Some("always") => true,
            Some("never") => false,
            _ => stderr_is_terminal && !no_color,
        };

        let millis = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            match text(name) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| ConfigError::Invalid {
                        variable: name,
                        value: v,
                        expected: "a whole number of milliseconds",
                    }),
            }
        };
        let settle = match text("FORKHOOK_SETTLE_MS") {
            Some(_) => millis("FORKHOOK_SETTLE_MS", 0)?,
            None => millis("FORKMON_RESTART_DELAY", DEFAULT_SETTLE_MS)?,
        };
        let hold_after_resume = millis("FORKMON_IGNORE_DELAY", 0)?;

        let threads = match text("FORKHOOK_THREADS").as_deref() {
            None | Some("checkpoint") => ThreadPolicy::Checkpoint,
            Some("skip") => ThreadPolicy::Skip,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: "FORKHOOK_THREADS",
                    value: other.into(),
                    expected: "'checkpoint' or 'skip'",
                })
            }
        };

        let share = |name: &'static str, default: f64, max: f64, expected: &'static str| {
            let Some(v) = text(name) else {
                return Ok(default);
            };
            match v.trim().parse::<f64>() {
                Ok(x) if (0.0..=max).contains(&x) => Ok(x),
                _ => Err(ConfigError::Invalid {
                    variable: name,
                    value: v,
                    expected,
                }),
            }
        };
        let time_share = share(
            "FORKHOOK_CHECKPOINT_SHARE",
            DEFAULT_TIME_SHARE,
            1.0,
            "a fraction between 0 and 1, e.g. 0.03 (1: a checkpoint before every file)",
        )?;
        let memory_share = share(
            "FORKHOOK_MEMORY_SHARE",
            DEFAULT_MEMORY_SHARE,
            f64::MAX,
            "a number of at least 0, e.g. 0.5",
        )?;
        let min_gap = millis("FORKHOOK_CHECKPOINT_GAP_MS", DEFAULT_CHECKPOINT_GAP_MS)?;
        let max_checkpoints = match text("FORKHOOK_MAX_CHECKPOINTS") {
            None => DEFAULT_MAX_CHECKPOINTS,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        variable: "FORKHOOK_MAX_CHECKPOINTS",
                        value: v,
                        expected: "a whole number of at least 1",
                    })
                }
            },
        };

        Ok(Settings {
            filter,
            quiet,
            verbose: flag("FORKHOOK_VERBOSE") && !quiet,
            color,
            settle,
            hold_after_resume,
            threads,
            budget: Budget {
                time_share,
                min_gap,
                max_checkpoints,
                memory_share,
            },
        })
    }
}

pub const DEFAULT_SETTLE_MS: u64 = 3;
/// With the minimum gap and the first checkpoint free (see `budget`), this matters to
/// runs with big heaps: a Python project of 100 MiB took one or two checkpoints after
/// its first with 3%, which cost it 3 to 5% (their copies are counted as they come, so
/// one can overshoot), and none with 1%. A dev server on a loaded machine gets its
/// checkpoint after the framework with 1% since checkpoints wait for a pause in the
/// program's loading (with a 50 ms gap, then with 100 ms as its interpreter's own start
/// outlasted that, one landed while it loaded, and its copies used up the allowance).
pub const DEFAULT_TIME_SHARE: f64 = 0.01;
/// Resuming from a checkpoint this much earlier than the best one goes unnoticed
/// (about the limit of what feels instant), and only the first edit of a file pays
/// it: the resumed run takes a checkpoint right before that file. It also sets how
/// long a loading program is waited for (see `budget::Limits`): up to 1 s.
pub const DEFAULT_CHECKPOINT_GAP_MS: u64 = 100;
pub const DEFAULT_MAX_CHECKPOINTS: usize = 64;
pub const DEFAULT_MEMORY_SHARE: f64 = 0.5;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Settings::from_env(|k| map.get(k).cloned(), true)
    }

    #[test]
    fn a_filter_is_required() {
        assert!(matches!(settings(&[]), Err(ConfigError::NoFilter)));
        assert!(matches!(
            settings(&[("FORKMON_FILTER", ";")]),
            Err(ConfigError::NoFilter)
        ));
        let msg = settings(&[]).unwrap_err().to_string();
        assert!(
            msg.contains("FORKMON_FILTER") && msg.contains("forkhook -e"),
            "{msg}"
        );
    }

    #[test]
    fn forkmon_variables_keep_their_meaning() {
        let s = settings(&[
            ("FORKMON_FILTER", "%.lua$"),
            ("FORKMON_QUIET", ""),
            ("FORKMON_RESTART_DELAY", "50"),
            ("FORKMON_IGNORE_DELAY", "200"),
        ])
        .unwrap();
        assert!(s.quiet);
        assert_eq!(s.settle, Duration::from_millis(50));
        assert_eq!(s.hold_after_resume, Duration::from_millis(200));
        assert!(s.filter.is_match(b"/a/foo.lua"));
    }

    #[test]
    fn colours_follow_the_terminal_and_the_conventions() {
        assert!(settings(&[("FORKHOOK_FILTER", "x")]).unwrap().color);
        assert!(
            !settings(&[("FORKHOOK_FILTER", "x"), ("NO_COLOR", "1")])
                .unwrap()
                .color
        );
        assert!(
            !settings(&[("FORKHOOK_FILTER", "x"), ("FORKMON_NO_COLORS", "")])
                .unwrap()
                .color
        );
        assert!(
            settings(&[("FORKHOOK_FILTER", "x"), ("NO_COLOR", "")])
                .unwrap()
                .color
        );
    }

    #[test]
    fn bad_numbers_name_the_variable() {
        let err =
            settings(&[("FORKHOOK_FILTER", "x"), ("FORKMON_RESTART_DELAY", "soon")]).unwrap_err();
        assert!(
            err.to_string().contains("FORKMON_RESTART_DELAY='soon'"),
            "{err}"
        );
        let err = settings(&[("FORKHOOK_FILTER", "x"), ("FORKHOOK_THREADS", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("'checkpoint' or 'skip'"), "{err}");
        let err =
            settings(&[("FORKHOOK_FILTER", "x"), ("FORKHOOK_CHECKPOINT_SHARE", "2")]).unwrap_err();
        assert!(err.to_string().contains("between 0 and 1"), "{err}");
        let err = settings(&[
            ("FORKHOOK_FILTER", "x"),
            ("FORKHOOK_CHECKPOINT_GAP_MS", "-1"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("FORKHOOK_CHECKPOINT_GAP_MS='-1'"),
            "{err}"
        );
        let s = settings(&[
            ("FORKHOOK_FILTER", "x"),
            ("FORKHOOK_CHECKPOINT_GAP_MS", "0"),
        ])
        .unwrap();
        assert_eq!(s.budget.min_gap, Duration::ZERO);
    }

    #[test]
    fn verbose_and_quiet() {
        let s = settings(&[("FORKHOOK_FILTER", "x"), ("FORKHOOK_VERBOSE", "1")]).unwrap();
        assert!(s.verbose && !s.quiet);
        let s = settings(&[("FORKHOOK_FILTER", "x"), ("FORKHOOK_VERBOSE", "0")]).unwrap();
        assert!(!s.verbose);
        let s = settings(&[
            ("FORKHOOK_FILTER", "x"),
            ("FORKHOOK_VERBOSE", "1"),
            ("FORKHOOK_QUIET", "1"),
        ])
        .unwrap();
        assert!(s.quiet && !s.verbose);
    }
}
