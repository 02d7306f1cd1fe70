//! forkhook: resume a slow-starting program from a fork checkpoint taken just before
//! it first read the file you edited.
//!
//! The flow, one module each:
//! 1. `hook`: inside the program's `open`/`stat` (the cdylib in `hook/` calls in here):
//!    is this the first access to a file the filter matches?
//! 2. `checkpoint`: fork, if `budget` says the run can afford it; park the parent as a
//!    checkpoint; the child carries on.
//! 3. `coordinator`: the original process watches files (inotify) and, through
//!    `timeline`, decides which checkpoint to resume when one changes.
//! 4. `launcher`: the `forkhook` command, which sets up the environment and execs
//!    (`launcher::early` does the common launches before libc starts).
//!
//! `protocol` carries messages between them, `config` reads the settings, `filter`
//! compiles them, `fingerprint` tells changed content from unchanged, `report` prints what users see. All `unsafe` lives in `sys`.
#![deny(unsafe_code)]

pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod coordinator;
pub mod filter;
pub mod fingerprint;
pub mod hook;
pub mod launcher;
pub mod path;
pub mod protocol;
pub mod report;
pub mod sys;
pub mod timeline;
