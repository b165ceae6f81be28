//! Seed sweeps: many seeds of one simulation, in parallel across cores,
//! and across machines in shards (`deja_replayer::sweep`).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use deja_replayer::sweep::{Shard, SweepRecord, SHARD_ENV};

use super::{Sim, SimFailure};

/// Failing seeds of one sweep that write their logs: `collect_all` over a
/// buggy service can fail thousands of seeds, and the first few logs are
/// the ones anybody replays (any other seed reruns with `DEJA_SEED`).
pub const LOGGED_FAILURES_MAX: usize = 8;

/// Run many seeds of a simulation across threads: one simulation per
/// seed, each deterministic on its own thread.
///
/// ```
/// use deja::sim::{Sim, Sweep};
///
/// let report = Sweep::new(0..8).jobs(2).quiet(true).run(|seed| {
///     let mut sim = Sim::new(seed);
///     sim.client("tick", async {
///         deja::time::sleep(deja::time::Duration::from_secs(1)).await;
///     });
///     sim
/// });
/// assert_eq!(report.seeds_run, 8);
/// assert!(report.failures.is_empty());
/// ```
///
/// A sweep too big for one machine runs in shards, one per CI job:
/// `DEJA_SHARD=K/N` in the environment (or [`Sweep::shard`]) runs only the
/// K-th of N contiguous blocks of the seeds, the same block on every
/// machine, and [`Sweep::report`] / [`Sweep::junit`] write what ran for
/// `deja sim merge` and the CI system.
#[derive(Clone, Debug)]
pub struct Sweep {
    seeds: Range<u64>,
    shard: Option<Shard>,
    jobs: usize,
    stop_at_first: bool,
    progress: bool,
    quiet: bool,
    log_dir: Option<PathBuf>,
    report: Option<PathBuf>,
    junit: Option<PathBuf>,
}

impl Sweep {
    /// Seeds `seeds`, one job per core, stopping at the first failure.
    ///
    /// The environment can narrow it, and says so on stderr: `DEJA_SEED=N`
    /// runs only seed N (how a failing seed reruns), `DEJA_SHARD=K/N` only
    /// the K-th of N blocks.
    pub fn new(seeds: Range<u64>) -> Sweep {
        let seeds = match super::seed_override() {
            Some(seed) => {
                announce_seed_override(seed, &seeds);
                seed..seed.saturating_add(1)
            }
            None => seeds,
        };
        let shard = match Shard::from_env() {
            Ok(shard) => shard,
            // A typo in a CI matrix must not run the whole sweep N times.
            Err(err) => panic!("{SHARD_ENV}: {err}"),
        };
        Sweep {
            seeds,
            shard,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop_at_first: true,
            progress: true,
            quiet: false,
            log_dir: None,
            report: None,
            junit: None,
        }
    }

    /// Run only shard `index` of `count` (1-based, like a CI matrix): a
    /// contiguous block of the seeds; shards 1 to `count` cover them
    /// exactly once. Overrides `DEJA_SHARD`.
    ///
    /// # Panics
    ///
    /// When `index` is 0 or above `count`.
    pub fn shard(mut self, index: u64, count: u64) -> Sweep {
        match Shard::new(index, count) {
            Ok(shard) => self.shard = Some(shard),
            Err(err) => panic!("Sweep::shard: {err}"),
        }
        self
    }

    /// Threads to run seeds on (at least 1).
    pub fn jobs(mut self, jobs: usize) -> Sweep {
        self.jobs = jobs.max(1);
        self
    }

    /// Run every seed and collect every failure, instead of stopping at
    /// the first.
    pub fn collect_all(mut self) -> Sweep {
        self.stop_at_first = false;
        self
    }

    /// Show a progress bar on a terminal (default true; never drawn when
    /// stderr is not a terminal).
    pub fn progress(mut self, show: bool) -> Sweep {
        self.progress = show;
        self
    }

    /// Print nothing: no progress bar, no summary (the report has it all).
    pub fn quiet(mut self, quiet: bool) -> Sweep {
        self.quiet = quiet;
        self
    }

    /// Write what ran and failed as JSON to `path` at the end, for `deja
    /// sim merge` to combine with the other shards'.
    pub fn report(mut self, path: impl Into<PathBuf>) -> Sweep {
        self.report = Some(path.into());
        self
    }

    /// Write JUnit XML (one test case per seed) to `path` at the end.
    pub fn junit(mut self, path: impl Into<PathBuf>) -> Sweep {
        self.junit = Some(path.into());
        self
    }

    /// The seeds this sweep runs: its shard's block, or all of them.
    pub fn seeds(&self) -> Range<u64> {
        match self.shard {
            Some(shard) => shard.seeds(self.seeds.clone()),
            None => self.seeds.clone(),
        }
    }

    /// Where failing seeds write their logs.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Sweep {
        self.log_dir = Some(dir.into());
        self
    }

    /// Run the sweep; `make` builds the simulation of one seed. Under
    /// `deja replay` of a log a sweep wrote, runs that seed's simulation,
    /// which replays the logged host.
    pub fn run<F>(&self, make: F) -> SweepReport
    where
        F: Fn(u64) -> Sim + Sync,
    {
        if let Some(target) = super::capture::replay_target() {
            let seed = target.seed.unwrap_or(self.seeds.start);
            return SweepReport::single(make(seed).run());
        }
        let started = Instant::now();
        let share = self.seeds();
        let total = share.end.saturating_sub(share.start);
        let bar = self.progress_bar(total);
        let next = AtomicU64::new(share.start);
        let stop = AtomicBool::new(false);
        let failures = Mutex::new(Vec::new());
        let totals = Mutex::new(Totals::default());
        let name = std::thread::current().name().map(str::to_string);
        std::thread::scope(|scope| {
            for job in 0..self.jobs.min(total.max(1) as usize) {
                let builder = std::thread::Builder::new()
                    .name(name.clone().unwrap_or_else(|| format!("deja-sweep-{job}")));
                let (next, stop, failures, totals, bar, make) =
                    (&next, &stop, &failures, &totals, &bar, &make);
                let share_end = share.end;
                let spawned = builder.spawn_scoped(scope, move || loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= share_end {
                        return;
                    }
                    let result = self.run_seed(make, seed, || {
                        failures.lock().unwrap_or_else(|p| p.into_inner()).len()
                            < LOGGED_FAILURES_MAX
                    });
                    let mut totals = totals.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(report) => {
                            totals.passed.push(seed);
                            totals.events += report.events;
                            totals.virtual_time += report.virtual_time;
                        }
                        Err(failure) => {
                            totals.events += failure.report.events;
                            totals.virtual_time += failure.report.virtual_time;
                            let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                            failures.push(*failure);
                            bar.set_message(format!("{} failed", failures.len()));
                            if self.stop_at_first {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    bar.inc(1);
                });
                if let Err(err) = spawned {
                    eprintln!("deja sim: cannot start sweep thread {job}: {err}");
                }
            }
        });
        bar.finish_and_clear();
        let totals = totals.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
        failures.sort_by_key(|failure| failure.seed);
        let wall_time = started.elapsed();
        let mut record = SweepRecord::new(sweep_name(), self.seeds.clone(), self.shard);
        for &seed in &totals.passed {
            record.passed(seed);
        }
        for failure in &failures {
            record.failed(
                failure.seed,
                failure.kind.to_string(),
                failure.reproduce.clone(),
                &failure.to_string(),
            );
        }
        record.finish(record.seeds_run() == total, wall_time);
        self.write_outputs(&record);
        let report = SweepReport {
            seeds_run: record.seeds_run(),
            failures,
            wall_time,
            events: totals.events,
            virtual_time: totals.virtual_time,
            record,
        };
        if !self.quiet {
            eprintln!("{}", report.summary());
        }
        report
    }

    /// Run `seed` keeping only hashes; a failure runs it again with
    /// capture on to write its logs (if `log_it` says to and the
    /// simulation writes logs at all), so a sweep's memory does not grow
    /// with the length of its runs.
    fn run_seed<F>(
        &self,
        make: &F,
        seed: u64,
        log_it: impl FnOnce() -> bool,
    ) -> Result<super::SimReport, Box<SimFailure>>
    where
        F: Fn(u64) -> Sim + Sync,
    {
        let build = || {
            let mut sim = make(seed);
            sim.quiet(true);
            if let Some(dir) = &self.log_dir {
                sim.log_dir(dir);
            }
            sim
        };
        let sim = build();
        let writes_logs = sim.write_logs;
        let failure = match sim.run_hashed() {
            Err(failure) if failure.logs.is_empty() && writes_logs && log_it() => failure,
            result => return result,
        };
        let again = match build().run() {
            Err(again) if again.report.digest == failure.report.digest => again,
            Err(again) => {
                let mut failure = failure;
                failure.log_error = Some(format!(
                    "running seed {seed} again to write its logs ended otherwise (digest {:016x}, not {:016x}): the seed is not deterministic (check_determinism finds where)",
                    again.report.digest, failure.report.digest
                ));
                return Err(failure);
            }
            Ok(report) => {
                let mut failure = failure;
                failure.log_error = Some(format!(
                    "running seed {seed} again to write its logs passed (digest {:016x}): the seed is not deterministic (check_determinism finds where)",
                    report.digest
                ));
                return Err(failure);
            }
        };
        Err(again)
    }

    /// The report and JUnit files, if asked for; a file that cannot be
    /// written is said loudly (the sweep's verdict stands).
    fn write_outputs(&self, record: &SweepRecord) {
        if let Some(path) = &self.report {
            if let Err(err) = record.write(path) {
                eprintln!(
                    "deja sim: cannot write the report {}: {err}",
                    path.display()
                );
            }
        }
        if let Some(path) = &self.junit {
            if let Err(err) = record.write_junit_file(path) {
                eprintln!(
                    "deja sim: cannot write JUnit XML to {}: {err}",
                    path.display()
                );
            }
        }
    }

    fn progress_bar(&self, total: u64) -> indicatif::ProgressBar {
        if !self.progress || self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} seeds ({per_sec}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    }
}

#[derive(Default)]
struct Totals {
    passed: Vec<u64>,
    events: u64,
    virtual_time: Duration,
}

/// What a sweep's report calls the simulation: the test running it, or
/// the command line.
fn sweep_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => {
            let argv: Vec<String> = std::env::args().collect();
            deja_recorder::meta::shell_line(&argv)
        }
    }
}

/// `DEJA_SEED` narrows every sweep of the process to one seed; said once.
fn announce_seed_override(seed: u64, seeds: &Range<u64>) {
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        let outside = if seeds.contains(&seed) {
            ""
        } else {
            ", which is outside it"
        };
        eprintln!(
            "deja sim: DEJA_SEED={seed} narrows the sweep of seeds {}..{} to seed {seed}{outside}",
            seeds.start, seeds.end
        );
    });
}

/// What a sweep found.
#[derive(Debug)]
pub struct SweepReport {
    /// Seeds that ran to their end.
    pub seeds_run: u64,
    /// Failing seeds, lowest seed first.
    pub failures: Vec<SimFailure>,
    /// Wall time of the sweep.
    pub wall_time: Duration,
    /// Events of every run together.
    pub events: u64,
    /// Virtual time of every run together.
    pub virtual_time: Duration,
    record: SweepRecord,
}

impl SweepReport {
    fn single(result: Result<super::SimReport, Box<SimFailure>>) -> SweepReport {
        let (events, virtual_time, failures) = match result {
            Ok(report) => (report.events, report.virtual_time, Vec::new()),
            Err(failure) => (
                failure.report.events,
                failure.report.virtual_time,
                vec![*failure],
            ),
        };
        let mut record = SweepRecord::new(sweep_name(), 0..0, None);
        record.finish(true, Duration::ZERO);
        SweepReport {
            seeds_run: 1,
            failures,
            wall_time: Duration::ZERO,
            events,
            virtual_time,
            record,
        }
    }

    /// What ran and failed, as `deja sim merge` reads it: seed ranges,
    /// failures with their rerun commands, the shard.
    pub fn record(&self) -> &SweepRecord {
        &self.record
    }

    /// Seeds per wall-clock second.
    pub fn seeds_per_second(&self) -> f64 {
        self.seeds_run as f64 / self.wall_time.as_secs_f64().max(1e-9)
    }

    /// The failing seeds, lowest first.
    pub fn failing_seeds(&self) -> Vec<u64> {
        self.failures.iter().map(|failure| failure.seed).collect()
    }

    /// The lowest failing seed's failure.
    pub fn first_failure(&self) -> Option<&SimFailure> {
        self.failures.first()
    }

    /// One line: seeds, speed, failures.
    pub fn summary(&self) -> String {
        let shard = match self.record.shard {
            Some(shard) => {
                let share = self.record.share();
                format!(" (shard {shard}: seeds {}..{})", share.start, share.end)
            }
            None => String::new(),
        };
        let mut line = format!(
            "deja sim: {} seeds{shard} in {:.2}s ({:.1} seeds/s), {} events, {:.1}s virtual",
            self.seeds_run,
            self.wall_time.as_secs_f64(),
            self.seeds_per_second(),
            self.events,
            self.virtual_time.as_secs_f64()
        );
        match self.failing_seeds().as_slice() {
            [] => line.push_str(", no failures"),
            seeds => {
                let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
                line.push_str(&format!(", failing seeds: {}", list.join(", ")));
                if let Some(first) = self.first_failure() {
                    line.push('\n');
                    line.push_str(first.to_string().trim_end());
                }
            }
        }
        line
    }
}
