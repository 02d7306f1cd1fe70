//! The coordinator's picture of the session, and the decision it makes from it.
//!
//! Pure data: which checkpoints are alive, in order, and for every watched file the
//! checkpoint a change to it resumes from and the content the run read. No I/O here,
//! so every rule is unit-tested.
//!
//! The rule (DESIGN.md invariant 1): a file resumes from a checkpoint taken *before*
//! the program's first access to it. When several files changed, the earliest such
//! checkpoint wins, and a file whose content did not change resumes nothing.

use crate::fingerprint::{Baseline, Fingerprint, Identity};
use crate::hook::PathHashing;
use crate::protocol::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub pid: Pid,
    /// The file whose first access this checkpoint precedes.
    pub file: PathBuf,
    /// Time into the run (from a fresh start) when it was taken: what a resume skips.
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    /// Resume point: a checkpoint taken before the first access.
    pub checkpoint: Pid,
    /// Content the current run read (or will read next time it gets there).
    pub baseline: Baseline,
    /// Changed, and a resume is under way: the new run has not read it yet. Deciding
    /// now could resume a second time for an edit the new run is about to read.
    pub awaiting: bool,
    /// The branch (resume count) whose run read it.
    pub epoch: u64,
    /// `sys::path_hash` of the name the run used for it.
    pub name_hash: u64,
}

/// What to do about a set of changed files.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// Position of the checkpoint to resume from (0 = oldest).
    pub index: usize,
    pub checkpoint: Checkpoint,
    /// The files whose content really changed, earliest resume point first.
    pub changed: Vec<PathBuf>,
}

#[derive(Debug, Default)]
pub struct Timeline {
    checkpoints: Vec<Checkpoint>,
    files: HashMap<PathBuf, Tracked, PathHashing>,
    /// Checkpoints lost or retired, and the one that took over their files. A first
    /// access is told after its checkpoint (through another channel, and read in
    /// batches), so it may name a checkpoint already retired: it goes to the heir.
    heirs: HashMap<Pid, Pid>,
}

impl Timeline {
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn is_tracked(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }

    pub fn files_in<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
        self.files.keys().filter(move |f| f.parent() == Some(dir))
    }

    pub fn position(&self, pid: Pid) -> Option<usize> {
        self.checkpoints.iter().position(|c| c.pid == pid)
    }

    /// The alive checkpoint that stands for `pid` (itself, or the one its files went
    /// to when it was lost), with its position.
    fn heir_of(&self, mut pid: Pid) -> Option<(Pid, usize)> {
        // Each heir was alive when it inherited, so older than its testator: the
        // chain ends. The bound is only a guard.
        for _ in 0..=self.heirs.len() {
            if let Some(position) = self.position(pid) {
                return Some((pid, position));
            }
            pid = *self.heirs.get(&pid)?;
        }
        None
    }

    /// A new checkpoint, newer than every other alive one.
    pub fn checkpoint_taken(&mut self, checkpoint: Checkpoint) {
        self.checkpoints.push(checkpoint);
    }

    /// The run of branch `epoch` touched `file` for the first time, with `checkpoint`
    /// as its resume point. Returns false (and records nothing) if that checkpoint is
    /// unknown (its message was dropped as stale, so this access belongs to a run that
    /// is gone), or if the same run reached the file earlier under another name (a
    /// symlink): the first access is the one that counts.
    pub fn accessed(
        &mut self,
        file: PathBuf,
        checkpoint: Pid,
        epoch: u64,
        baseline: Baseline,
    ) -> bool {
        let Some((checkpoint, position)) = self.heir_of(checkpoint) else {
            return false;
        };
        if let Some(earlier) = self.files.get(&file) {
            let before = self
                .position(earlier.checkpoint)
                .is_some_and(|p| p <= position);
            if earlier.epoch == epoch && before {
                return false;
            }
        }
        self.files.insert(
            file,
            Tracked {
                checkpoint,
                baseline,
                awaiting: false,
                epoch,
                name_hash: 0,
            },
        );
        true
    }

    /// Is a resume under way that will read `path` again?
    pub fn is_awaiting(&self, path: &Path) -> bool {
        self.files.get(path).is_some_and(|t| t.awaiting)
    }

    /// The run ended (or took too long): files it did not read keep the content seen at
    /// the resume as baseline.
    pub fn stop_awaiting(&mut self) {
        for tracked in self.files.values_mut() {
            tracked.awaiting = false;
        }
    }

    /// The content the run read, once the coordinator has read it: only if the file
    /// is still unread with that identity.
    pub fn baseline_read(&mut self, path: &Path, seen: &Identity, fingerprint: Fingerprint) {
        if let Some(tracked) = self.files.get_mut(path) {
            if tracked.baseline == Baseline::Unread(*seen) {
                tracked.baseline = Baseline::Read(fingerprint);
            }
        }
    }

    pub fn set_name_hash(&mut self, path: &Path, hash: u64) {
        if let Some(tracked) = self.files.get_mut(path) {
            tracked.name_hash = hash;
        }
    }

    pub fn name_hash(&self, path: &Path) -> u64 {
        self.files.get(path).map_or(0, |t| t.name_hash)
    }

    pub fn baseline(&self, path: &Path) -> Option<Baseline> {
        self.files.get(path).map(|t| t.baseline)
    }

    /// Of `candidates` (files with change events), those whose content now differs from
    /// what the run read, as told by `differs`; then the checkpoint to resume from.
    pub fn decide(
        &self,
        candidates: impl IntoIterator<Item = PathBuf>,
        mut differs: impl FnMut(&Path, &Baseline) -> bool,
    ) -> Option<Resume> {
        let mut changed: Vec<(usize, PathBuf)> = candidates
            .into_iter()
            .filter_map(|path| {
                let tracked = self.files.get(&path)?;
                let index = self.position(tracked.checkpoint)?;
                differs(&path, &tracked.baseline).then_some((index, path))
            })
            .collect();
        changed.sort();
        let index = changed.first()?.0;
        Some(Resume {
            index,
            checkpoint: self.checkpoints[index].clone(),
            changed: changed.into_iter().map(|(_, p)| p).collect(),
        })
    }

    /// The run resumed from checkpoint `index`: every later checkpoint is gone. Their
    /// files now resume from `index` (still before their first access), and changed
    /// files get the content seen now as baseline until the new run reads them again.
    /// Returns the pids of the checkpoints that are gone.
    pub fn resumed(&mut self, index: usize, now: &[(PathBuf, Fingerprint)]) -> Vec<Pid> {
        let gone: Vec<Pid> = self.checkpoints.drain(index + 1..).map(|c| c.pid).collect();
        let keep = self.checkpoints[index].pid;
        for tracked in self.files.values_mut() {
            if gone.contains(&tracked.checkpoint) {
                tracked.checkpoint = keep;
            }
        }
        for (path, fingerprint) in now {
            if let Some(tracked) = self.files.get_mut(path) {
                tracked.baseline = Baseline::Read(*fingerprint);
                tracked.awaiting = true;
            }
        }
        gone
    }

    /// The checkpoint to retire when there are too many: the one whose loss leaves the
    /// smallest gap in time into the run, so resume points stay spread over it. The
    /// oldest (the program's start), the newest and `keep` (the run's parent, which
    /// the run dies with) always stay.
    pub fn least_needed(&self, keep: Option<Pid>) -> Option<usize> {
        let c = &self.checkpoints;
        (1..c.len().saturating_sub(1))
            .filter(|&i| Some(c[i].pid) != keep)
            .min_by_key(|&i| c[i + 1].elapsed - c[i - 1].elapsed)
    }

    /// A checkpoint vanished (its fork failed, or it died). Its files resume from the
    /// one before it, which also precedes their first access; with none before it,
    /// they are no longer watched. Returns how many files were dropped.
    pub fn checkpoint_lost(&mut self, pid: Pid) -> usize {
        let Some(index) = self.position(pid) else {
            return 0;
        };
        self.checkpoints.remove(index);
        let before = index.checked_sub(1).map(|i| self.checkpoints[i].pid);
        if let Some(prev) = before {
            self.heirs.insert(pid, prev);
        }
        let count = self.files.len();
        self.files.retain(|_, tracked| {
            if tracked.checkpoint != pid {
                return true;
            }
            match before {
                Some(prev) => {
                    tracked.checkpoint = prev;
                    true
                }
                None => false,
            }
        });
        count - self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fp(n: u128) -> Fingerprint {
        Fingerprint::Content(n)
    }

    /// Checkpoints 10, 20, 30 before a.lua, b.lua, c.lua; d.lua shares 30 (its own
    /// checkpoint was skipped by the budget).
    fn timeline() -> Timeline {
        let mut t = Timeline::default();
        for (pid, name, ms) in [(10, "a", 0), (20, "b", 500), (30, "c", 900)] {
            t.checkpoint_taken(Checkpoint {
                pid,
                file: format!("/p/{name}.lua").into(),
                elapsed: Duration::from_millis(ms),
            });
            assert!(t.accessed(format!("/p/{name}.lua").into(), pid, 0, read(pid as u128)));
        }
        assert!(t.accessed("/p/d.lua".into(), 30, 0, read(40)));
        t
    }

    fn read(n: u128) -> Baseline {
        Baseline::Read(fp(n))
    }

    /// What the disk holds, for `decide`: unread baselines count as changed.
    fn contents(pairs: &[(&str, Fingerprint)]) -> impl FnMut(&Path, &Baseline) -> bool {
        let map: HashMap<PathBuf, Fingerprint> =
            pairs.iter().map(|(p, f)| (PathBuf::from(p), *f)).collect();
        move |p, baseline| match baseline {
            Baseline::Read(f) => map.get(p).copied().unwrap_or(Fingerprint::Missing) != *f,
            Baseline::Unread(_) => true,
        }
    }

    #[test]
    fn a_change_resumes_from_the_checkpoint_before_the_file() {
        let t = timeline();
        let r = t
            .decide(["/p/b.lua".into()], contents(&[("/p/b.lua", fp(99))]))
            .unwrap();
        assert_eq!((r.index, r.checkpoint.pid), (1, 20));
        assert_eq!(r.changed, vec![PathBuf::from("/p/b.lua")]);
    }

    #[test]
    fn same_content_resumes_nothing() {
        let t = timeline();
        assert_eq!(
            t.decide(["/p/b.lua".into()], contents(&[("/p/b.lua", fp(20))])),
            None
        );
    }

    #[test]
    fn untracked_files_resume_nothing() {
        let t = timeline();
        assert_eq!(t.decide(["/p/zzz.lua".into()], contents(&[])), None);
    }

    #[test]
    fn several_changes_resume_once_from_the_earliest() {
        let t = timeline();
        let r = t
            .decide(
                ["/p/c.lua".into(), "/p/b.lua".into(), "/p/a.lua".into()],
                contents(&[
                    ("/p/c.lua", fp(1)),
                    ("/p/b.lua", fp(2)),
                    ("/p/a.lua", fp(10)),
                ]),
            )
            .unwrap();
        // a.lua is unchanged: b.lua's checkpoint is the earliest among real changes.
        assert_eq!(r.index, 1);
        assert_eq!(
            r.changed,
            vec![PathBuf::from("/p/b.lua"), PathBuf::from("/p/c.lua")]
        );
    }

    #[test]
    fn a_file_without_its_own_checkpoint_resumes_from_the_one_before() {
        let t = timeline();
        let r = t
            .decide(["/p/d.lua".into()], contents(&[("/p/d.lua", fp(1))]))
            .unwrap();
        assert_eq!(r.checkpoint.pid, 30);
    }

    #[test]
    fn deletion_is_a_change_and_a_return_is_another() {
        let mut t = timeline();
        let r = t.decide(["/p/b.lua".into()], contents(&[])).unwrap();
        t.resumed(r.index, &[("/p/b.lua".into(), Fingerprint::Missing)]);
        // Still missing: nothing to do.
        assert_eq!(t.decide(["/p/b.lua".into()], contents(&[])), None);
        // Back again: resume from the same checkpoint.
        let r = t
            .decide(["/p/b.lua".into()], contents(&[("/p/b.lua", fp(5))]))
            .unwrap();
        assert_eq!(r.checkpoint.pid, 20);
    }

    #[test]
    fn resuming_drops_later_checkpoints_and_remaps_their_files() {
        let mut t = timeline();
        let gone = t.resumed(0, &[("/p/a.lua".into(), fp(11))]);
        assert_eq!(gone, vec![20, 30]);
        assert_eq!(t.checkpoints().len(), 1);
        // c.lua was first read after checkpoint 10 too: a change still resumes from it.
        let r = t
            .decide(["/p/c.lua".into()], contents(&[("/p/c.lua", fp(0))]))
            .unwrap();
        assert_eq!(r.checkpoint.pid, 10);
        // Messages from the discarded branch name checkpoints that are gone.
        assert!(!t.accessed("/p/e.lua".into(), 30, 1, read(1)));
        // The baseline of the changed file moved to what is on disk now.
        assert_eq!(
            t.decide(["/p/a.lua".into()], contents(&[("/p/a.lua", fp(11))])),
            None
        );
    }

    #[test]
    fn a_resumed_file_awaits_the_new_runs_access() {
        let mut t = timeline();
        let r = t
            .decide(["/p/b.lua".into()], contents(&[("/p/b.lua", fp(2))]))
            .unwrap();
        t.resumed(r.index, &[("/p/b.lua".into(), fp(2))]);
        assert!(t.is_awaiting(Path::new("/p/b.lua")));
        assert!(!t.is_awaiting(Path::new("/p/a.lua")));
        // The new run read a newer save (3): that is the baseline now.
        assert!(t.accessed("/p/b.lua".into(), 20, 1, read(3)));
        assert!(!t.is_awaiting(Path::new("/p/b.lua")));
        assert_eq!(
            t.decide(["/p/b.lua".into()], contents(&[("/p/b.lua", fp(3))])),
            None
        );
        t.resumed(1, &[("/p/b.lua".into(), fp(4))]);
        t.stop_awaiting();
        assert!(!t.is_awaiting(Path::new("/p/b.lua")));
    }

    #[test]
    fn a_second_name_for_a_file_does_not_move_its_resume_point() {
        let mut t = timeline();
        // b.lua again, through a symlink, after checkpoint 30: it still resumes from 20.
        assert!(!t.accessed("/p/b.lua".into(), 30, 0, read(20)));
        let r = t
            .decide(["/p/b.lua".into()], contents(&[("/p/b.lua", fp(9))]))
            .unwrap();
        assert_eq!(r.checkpoint.pid, 20);
        // A content the run did not see is a change, whatever is on disk.
        assert!(t.accessed(
            "/p/x.lua".into(),
            30,
            0,
            Baseline::Read(Fingerprint::Unknown)
        ));
        assert!(t
            .decide(["/p/x.lua".into()], contents(&[("/p/x.lua", fp(1))]))
            .is_some());
    }

    #[test]
    fn an_unread_baseline_is_filled_in_only_if_still_unread() {
        let mut t = timeline();
        let seen = Identity {
            ino: 7,
            ..Identity::default()
        };
        assert!(t.accessed("/p/u.lua".into(), 30, 0, Baseline::Unread(seen)));
        // Read with another identity (the run of another branch saw another file).
        t.baseline_read(Path::new("/p/u.lua"), &Identity::default(), fp(1));
        assert_eq!(
            t.baseline(Path::new("/p/u.lua")),
            Some(Baseline::Unread(seen))
        );
        t.baseline_read(Path::new("/p/u.lua"), &seen, fp(2));
        assert_eq!(t.baseline(Path::new("/p/u.lua")), Some(read(2)));
        assert_eq!(
            t.decide(["/p/u.lua".into()], contents(&[("/p/u.lua", fp(2))])),
            None
        );
    }

    #[test]
    fn the_checkpoint_retired_first_is_the_one_leaving_the_smallest_gap() {
        let mut t = timeline(); // at 0, 500 and 900 ms
        assert_eq!(t.least_needed(None), Some(1), "only the middle one may go");
        let middle = t.checkpoints()[1].pid;
        assert_eq!(t.least_needed(Some(middle)), None, "the run's parent stays");
        t.checkpoint_taken(Checkpoint {
            pid: 40,
            file: "/p/e.lua".into(),
            elapsed: Duration::from_millis(1000),
        });
        // Without 500: gap 0..900; without 900: gap 500..1000, the smaller.
        assert_eq!(t.least_needed(None), Some(2));
        assert_eq!(t.least_needed(Some(t.checkpoints()[2].pid)), Some(1));
        let mut short = Timeline::default();
        assert_eq!(short.least_needed(None), None);
        short.checkpoint_taken(t.checkpoints()[0].clone());
        short.checkpoint_taken(t.checkpoints()[1].clone());
        assert_eq!(short.least_needed(None), None, "first and newest stay");
    }

    #[test]
    fn a_lost_checkpoint_hands_its_files_to_the_one_before() {
        let mut t = timeline();
        assert_eq!(t.checkpoint_lost(20), 0);
        let r = t
            .decide(["/p/b.lua".into()], contents(&[("/p/b.lua", fp(0))]))
            .unwrap();
        assert_eq!(r.checkpoint.pid, 10);
        assert_eq!(
            t.checkpoint_lost(10),
            2,
            "a.lua and b.lua have no resume point left"
        );
        assert!(!t.is_tracked(Path::new("/p/a.lua")));
        assert!(t.is_tracked(Path::new("/p/c.lua")));
    }

    #[test]
    fn an_access_told_after_its_checkpoint_was_retired_goes_to_the_heir() {
        let mut t = timeline();
        // 30 retired (too many checkpoints), then 20: a first access under 30 that
        // was still on its way resumes from 10, the newest one alive before it.
        t.checkpoint_lost(30);
        t.checkpoint_lost(20);
        assert!(t.accessed("/p/late.lua".into(), 30, 0, read(5)));
        let r = t
            .decide(["/p/late.lua".into()], contents(&[("/p/late.lua", fp(6))]))
            .unwrap();
        assert_eq!(r.checkpoint.pid, 10);
        // A checkpoint never announced stays unknown.
        assert!(!t.accessed("/p/x.lua".into(), 99, 0, read(1)));
    }
}
