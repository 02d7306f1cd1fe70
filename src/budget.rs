//! The time budget for checkpoints: what they have cost a run, and whether it can
//! afford one more.
//!
//! A checkpoint costs the run its fork (a few hundred microseconds for a small
//! process, milliseconds for a big one) and then a copy-on-write fault for every page
//! the run writes that the checkpoint still shares. For a garbage-collected heap that
//! second part is by far the larger: Lua's and Python's collectors write to every live
//! object, so a checkpoint of a 100 MiB Python process costs the run about 25,000 page
//! copies (measured: 0.7 ms per MiB on a 2-vCPU VM, against 0.03 ms per MiB for the
//! fork itself).
//!
//! So the run counts both. Forks are timed on the run's CPU clock, not the wall clock
//! (a busy machine can hold a 0.3 ms fork for 60 ms, which is no cost of the
//! checkpoint: see `checkpoint::Stopwatch`). Copies are counted: the minor faults taken
//! since the newest checkpoint, less those that brought in new memory (the growth of
//! the anonymous resident pages), at most one per page the checkpoint shares, times the
//! cost of one copy (timed once, the first time a copy is charged). A checkpoint is
//! taken only if all of that stays within a share of the time the run has been going.
//! What the next one will cost is not predicted (see `Spending::afford`).
//!
//! The first checkpoint is not charged: it is the session's start, taken whatever the
//! budget says, and so are the copies the run makes of the pages it shares with it.
//! Charging them (a Python program's reference counts rewrite its whole early heap)
//! would leave nothing for the checkpoint that matters most to a dev server, the one
//! after its framework has loaded.
//!
//! And a checkpoint must be worth its cost: one taken soon after the newest saves a
//! resume only that short stretch of the run, which nobody would notice, so none is
//! taken closer to the newest than a minimum gap (100 ms by default). A short run
//! (65 ms of Lua loading 1000 modules) then takes only its first checkpoint, not six;
//! the file a resume was for still gets its own (the run asks [`Spending::open`]), so
//! the gap costs at most one resume per file, the first, up to 100 ms. Every run pays
//! for its checkpoints again, each a fork and then the copies (about 1 ms for that Lua
//! run), so the gap is a trade of a one-off against a cost on every run.
//!
//! Nor is one taken while the program is loading, that is while the files it reads
//! come less than half the gap apart: it waits for the first file read after a pause,
//! or for ten gaps after the newest (1 s by default). A pause is where a stretch of the
//! program's own work ends (a framework built, a fixture loaded, big headers parsed):
//! a checkpoint there saves a resume that whole stretch. One in the middle of a burst
//! of imports saves little more than the one before it, and costs the same: a fork,
//! then copies of what the rest of the burst rewrites, which used up the share a dev
//! server needed for the checkpoint after its framework when a loaded machine made
//! its interpreter's own start outlast the gap (tests/hygiene.rs, with both CPUs busy).
//!
//! Pure arithmetic: the run passes in what it measured, so every rule is unit-tested.

use std::time::Duration;

/// Measuring costs a few system calls: after a "no", ask again only after this much
/// more of the run's time at the least.
const RECHECK: Duration = Duration::from_millis(1);

/// What checkpoints have cost a branch of runs. `Spending::default()` is the session's
/// start, before any checkpoint: nothing is measured until a copy can be charged (after
/// the second checkpoint), so the first run pays for no system call it does not need,
/// nor for timing a copy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spending {
    /// Forks, and the copies of the intervals between checkpoints already closed.
    pub spent: Duration,
    /// The run's minor fault count just after the newest checkpoint.
    pub faults_at_checkpoint: u64,
    /// Anonymous pages the newest checkpoint shares with the run.
    pub shared_pages: u64,
    /// Time into the run before which no checkpoint can be afforded (saves the
    /// measurements on the first accesses in between).
    pub next_check: Duration,
    /// Time into the run of the newest checkpoint.
    pub newest_at: Duration,
    /// Whether copies since the newest checkpoint are charged (not after the first).
    pub charging: bool,
    /// Time into the run of the previous first access (see [`Spending::accessed`]).
    pub last_access: Duration,
}

/// What a run may spend on checkpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Share of the run's elapsed time that checkpoints may cost (1: no limit).
    pub share: f64,
    /// No checkpoint closer than this after the newest (unless the share is 1).
    pub min_gap: Duration,
}

impl Limits {
    /// Files read closer together than this are a program loading: no checkpoint
    /// between them (see the module's notes).
    pub fn loading(&self) -> Duration {
        self.min_gap / 2
    }

    /// How long after the newest checkpoint one waits for the program to pause.
    pub fn longest_wait(&self) -> Duration {
        self.min_gap * 10
    }
}

/// What the run measures, asked for only when needed.
pub trait Meter {
    fn minor_faults(&mut self) -> u64;
    fn anonymous_pages(&mut self) -> u64;
    /// Time to copy one page on write.
    fn page_copy(&mut self) -> Duration;
}

/// The outcome of [`Spending::afford`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Take it; `closing` is what the interval since the newest checkpoint cost in
    /// copies, to be added to `spent` with the fork.
    Take { closing: Duration },
    /// Not now: the budget is spent.
    Skip,
    /// Not now: the newest checkpoint is less than the minimum gap before.
    Near,
    /// Not now: the program is loading (the previous file was read just before); one
    /// waits for a pause.
    Loading,
}

impl Spending {
    /// The run forked from the first checkpoint, taken `at` into the run: nothing
    /// spent yet, and the copies that follow are not charged (see the module's notes),
    /// so they are not counted either.
    pub fn after_first_checkpoint(&self, at: Duration) -> Spending {
        Spending {
            spent: Duration::ZERO,
            newest_at: at,
            next_check: Duration::ZERO,
            charging: false,
            last_access: at,
            ..*self
        }
    }

    /// The run made a first access `at` into the run (whatever was decided for it).
    pub fn accessed(&mut self, at: Duration) {
        self.last_access = at;
    }

    /// Can a run `elapsed` into its work afford one more checkpoint now?
    pub fn afford(&mut self, elapsed: Duration, limits: Limits, meter: &mut impl Meter) -> Verdict {
        let share = limits.share;
        if share >= 1.0 {
            // No limit: a checkpoint before every file.
            return Verdict::Take {
                closing: self.open(meter),
            };
        }
        // Checked first: they need no measurement.
        if elapsed < self.newest_at + limits.min_gap {
            return Verdict::Near;
        }
        if elapsed < self.last_access + limits.loading()
            && elapsed < self.newest_at + limits.longest_wait()
        {
            return Verdict::Loading;
        }
        if elapsed < self.next_check {
            return Verdict::Skip;
        }
        // Nothing may be spent: only the first checkpoint, and those before files a
        // resume was for. (Without this, a run that had spent nothing yet, the first
        // checkpoint being free, would take one more: nothing is at most nothing.)
        if share <= 0.0 {
            return Verdict::Skip;
        }
        let allowed = elapsed.mul_f64(share);
        let closing = self.open(meter);
        // What the new checkpoint will cost is not predicted: a heap rewritten so far
        // may be left alone from now on (a server's, once loaded), and its fork is a
        // small part. It is counted as it comes.
        let need = self.spent + closing;
        if need <= allowed {
            return Verdict::Take { closing };
        }
        // Costs only grow: until the allowance has caught up with them, do not ask
        // (and never more often than every RECHECK of the run's time).
        self.next_check = need.div_f64(share.max(1e-9)).max(elapsed + RECHECK);
        Verdict::Skip
    }

    /// Pages copied on write since the newest checkpoint: minor faults, less those
    /// that brought in new memory (the growth of the anonymous pages), at most one per
    /// page the checkpoint shares.
    fn copied(&self, faults: u64, pages: u64) -> u64 {
        let faults = faults.saturating_sub(self.faults_at_checkpoint);
        let grown = pages.saturating_sub(self.shared_pages);
        faults.saturating_sub(grown).min(self.shared_pages)
    }

    /// The run forked from a new checkpoint taken `at` into the run, which took
    /// `fork` (from before the fork until the run went on); `closing` is what
    /// [`Spending::afford`] said. `faults` and `pages` are measured by the new run.
    pub fn after_checkpoint(
        &self,
        at: Duration,
        closing: Duration,
        fork: Duration,
        faults: u64,
        pages: u64,
    ) -> Spending {
        Spending {
            spent: self.spent + closing + fork,
            faults_at_checkpoint: faults,
            shared_pages: pages,
            next_check: Duration::ZERO,
            newest_at: at,
            charging: true,
            last_access: at,
        }
    }

    /// What the copies since the newest checkpoint cost so far, as charged.
    pub fn open(&self, meter: &mut impl Meter) -> Duration {
        if !self.charging {
            return Duration::ZERO;
        }
        let pages = meter.anonymous_pages();
        match self.copied(meter.minor_faults(), pages) {
            0 => Duration::ZERO,
            copied => meter.page_copy() * copied as u32,
        }
    }

    /// What checkpoints have cost so far, with the copies of the open interval.
    pub fn total(&self, meter: &mut impl Meter) -> Duration {
        self.spent + self.open(meter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        faults: u64,
        pages: u64,
        asked_pages: usize,
        asked_copy: usize,
    }

    impl Meter for Fake {
        fn minor_faults(&mut self) -> u64 {
            self.faults
        }
        fn anonymous_pages(&mut self) -> u64 {
            self.asked_pages += 1;
            self.pages
        }
        fn page_copy(&mut self) -> Duration {
            self.asked_copy += 1;
            3 * US
        }
    }

    fn meter(faults: u64, pages: u64) -> Fake {
        Fake {
            faults,
            pages,
            asked_pages: 0,
            asked_copy: 0,
        }
    }

    const US: Duration = Duration::from_micros(1);
    const MS: Duration = Duration::from_millis(1);

    fn after_one(shared: u64) -> Spending {
        Spending::default().after_checkpoint(MS, Duration::ZERO, 200 * US, 0, shared)
    }

    fn share(share: f64) -> Limits {
        Limits {
            share,
            min_gap: Duration::ZERO,
        }
    }

    #[test]
    fn a_small_program_that_writes_little_takes_checkpoints_often() {
        let mut s = after_one(500);
        // 20 pages copied since (60 µs), and the fork (200 µs).
        let mut m = meter(20, 500);
        assert_eq!(
            s.afford(20 * MS, share(0.03), &mut m),
            Verdict::Take { closing: 60 * US }
        );
    }

    #[test]
    fn a_big_heap_that_is_rewritten_takes_none_until_the_run_has_paid_for_it() {
        // 100 MiB shared and rewritten: 25,600 copies of 3 µs = 77 ms.
        let mut s = after_one(25_600);
        let mut m = meter(30_000, 25_600);
        assert_eq!(
            s.afford(Duration::from_millis(500), share(0.03), &mut m),
            Verdict::Skip
        );
        // Not asked again until the allowance can cover it: 77 ms / 3% = 2.57 s.
        assert!(
            s.next_check > Duration::from_millis(2560),
            "{:?}",
            s.next_check
        );
        assert_eq!(m.asked_pages, 1);
        assert_eq!(
            s.afford(Duration::from_secs(2), share(0.03), &mut m),
            Verdict::Skip
        );
        assert_eq!(m.asked_pages, 1, "not measured again before then");
        assert!(matches!(
            s.afford(Duration::from_secs(3), share(0.03), &mut m),
            Verdict::Take { .. }
        ));
    }

    #[test]
    fn a_heap_that_grows_is_no_copy() {
        // From 1,000 shared pages to 26,000: 25,000 faults brought in new memory, and
        // the checkpoint before a big heap costs its fork, not a rewrite.
        let mut s = after_one(1_000);
        let mut m = meter(25_100, 26_000);
        // 300 µs of copies and a 200 µs fork so far, within 9 ms.
        assert_eq!(
            s.afford(Duration::from_millis(300), share(0.03), &mut m),
            Verdict::Take { closing: 300 * US }
        );
    }

    #[test]
    fn a_share_of_one_takes_every_checkpoint() {
        let mut s = after_one(25_600);
        let mut m = meter(30_000, 25_600);
        assert!(matches!(
            s.afford(MS, share(1.0), &mut m),
            Verdict::Take { .. }
        ));
        assert_eq!(s.afford(MS, share(0.99), &mut m), Verdict::Skip);
    }

    #[test]
    fn a_share_of_zero_takes_none_after_the_first() {
        // Right after the first checkpoint: nothing spent, nothing charged.
        let mut s = Spending::default().after_first_checkpoint(MS);
        let mut m = meter(0, 2_000);
        assert_eq!(
            s.afford(Duration::from_secs(5), share(0.0), &mut m),
            Verdict::Skip
        );
        assert!(matches!(
            s.afford(Duration::from_secs(5), share(0.01), &mut m),
            Verdict::Take { .. }
        ));
    }

    #[test]
    fn a_copy_is_timed_only_once_there_is_one_to_charge() {
        let s = after_one(100);
        let mut m = meter(0, 100);
        assert_eq!(s.open(&mut m), Duration::ZERO);
        assert_eq!(m.asked_copy, 0, "no copy yet, none timed");
        m.faults = 10;
        assert_eq!(s.open(&mut m), 30 * US);
        assert_eq!(m.asked_copy, 1);
    }

    fn gap_of_100_ms() -> Limits {
        Limits {
            share: 0.03,
            min_gap: 100 * MS,
        }
    }

    #[test]
    fn while_the_program_loads_a_checkpoint_waits_for_a_pause() {
        let limits = gap_of_100_ms();
        let mut s = after_one(10);
        let mut m = meter(0, 10);
        // Files read a millisecond apart, past the gap: the program is loading.
        for t in 2..=150 {
            let at = t * MS;
            let verdict = s.afford(at, limits, &mut m);
            let expected = match t {
                ..=100 => Verdict::Near,
                _ => Verdict::Loading,
            };
            assert_eq!(verdict, expected, "at {t} ms");
            s.accessed(at);
        }
        assert_eq!(m.asked_pages, 0, "nothing measured while it loads");
        // Then 50 ms of its own work, the half gap: the next file gets one.
        assert!(matches!(
            s.afford(200 * MS, limits, &mut m),
            Verdict::Take { .. }
        ));
    }

    #[test]
    fn a_program_that_never_pauses_gets_one_ten_gaps_after_the_newest() {
        let limits = gap_of_100_ms();
        let mut s = after_one(10);
        let mut m = meter(0, 10);
        let mut taken = None;
        for t in 2..=1500 {
            let at = t * MS;
            if let Verdict::Take { .. } = s.afford(at, limits, &mut m) {
                taken = Some(t);
                break;
            }
            s.accessed(at);
        }
        assert_eq!(taken, Some(1001), "the newest was at 1 ms");
    }

    #[test]
    fn faults_count_at_most_once_per_shared_page() {
        let s = after_one(100);
        let mut m = meter(1_000_000, 100);
        assert_eq!(s.total(&mut m), 200 * US + 300 * US);
    }

    #[test]
    fn the_closing_interval_and_the_fork_are_charged() {
        let s = after_one(10);
        let next = s.after_checkpoint(9 * MS, 30 * US, 250 * US, 7, 40);
        assert_eq!(next.spent, 200 * US + 30 * US + 250 * US);
        assert_eq!((next.faults_at_checkpoint, next.shared_pages), (7, 40));
        assert_eq!(next.newest_at, 9 * MS);
    }

    #[test]
    fn the_first_checkpoint_and_the_copies_after_it_are_not_charged() {
        // A Python-like early heap of 2,000 pages, all rewritten after checkpoint 1
        // (6 ms of copies): a checkpoint is still affordable at 300 ms with 1%.
        let mut s = Spending::default().after_first_checkpoint(MS);
        let mut m = meter(30_000, 30_000);
        m.faults = 2_000 + 28_000;
        assert_eq!(
            s.afford(300 * MS, share(0.01), &mut m),
            Verdict::Take {
                closing: Duration::ZERO
            }
        );
        assert_eq!(s.total(&mut m), Duration::ZERO);
        assert_eq!(
            (m.asked_pages, m.asked_copy),
            (0, 0),
            "nothing measured while nothing is charged"
        );
        // After a second one, copies count again.
        let next = s.after_checkpoint(300 * MS, Duration::ZERO, 400 * US, 30_000, 30_000);
        m.faults = 30_000 + 1_000;
        assert_eq!(next.open(&mut m), 3 * MS);
    }

    #[test]
    fn none_is_taken_near_the_newest_unless_every_file_is_asked_for() {
        // Taken 1 ms in; cheap enough for many more, but not within 50 ms of it.
        let mut s = after_one(10);
        let mut m = meter(0, 10);
        let limits = Limits {
            share: 0.03,
            min_gap: 50 * MS,
        };
        assert_eq!(s.afford(50 * MS, limits, &mut m), Verdict::Near);
        assert_eq!(m.asked_pages, 0, "nothing measured for a near one");
        assert!(matches!(
            s.afford(51 * MS, limits, &mut m),
            Verdict::Take { .. }
        ));
        let every = Limits {
            share: 1.0,
            ..limits
        };
        assert!(matches!(
            s.afford(2 * MS, every, &mut m),
            Verdict::Take { .. }
        ));
    }
}
