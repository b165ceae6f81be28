//! Seed sweeps: many seeds of one simulation, in parallel across cores.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
/// let report = Sweep::new(0..8).jobs(2).progress(false).run(|seed| {
///     let mut sim = Sim::new(seed);
///     sim.client("tick", async {
///         deja::time::sleep(deja::time::Duration::from_secs(1)).await;
///     });
///     sim
/// });
/// assert_eq!(report.seeds_run, 8);
/// assert!(report.failures.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct Sweep {
    seeds: Range<u64>,
    jobs: usize,
    stop_at_first: bool,
    progress: bool,
    log_dir: Option<PathBuf>,
}

impl Sweep {
    /// Seeds `seeds`, one job per core, stopping at the first failure.
    /// `DEJA_SEED` narrows the sweep to that one seed.
    pub fn new(seeds: Range<u64>) -> Sweep {
        let seeds = match super::seed_override() {
            Some(seed) => seed..seed.saturating_add(1),
            None => seeds,
        };
        Sweep {
            seeds,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop_at_first: true,
            progress: true,
            log_dir: None,
        }
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
        let total = self.seeds.end.saturating_sub(self.seeds.start);
        let bar = self.progress_bar(total);
        let next = AtomicU64::new(self.seeds.start);
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
                let spawned = builder.spawn_scoped(scope, move || loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= self.seeds.end {
                        return;
                    }
                    let mut sim = make(seed);
                    sim.quiet(true);
                    if let Some(dir) = &self.log_dir {
                        sim.log_dir(dir);
                    }
                    let failed_so_far = failures.lock().unwrap_or_else(|p| p.into_inner()).len();
                    if failed_so_far >= LOGGED_FAILURES_MAX {
                        sim.write_logs(false);
                    }
                    let result = sim.run();
                    let mut totals = totals.lock().unwrap_or_else(|p| p.into_inner());
                    totals.seeds += 1;
                    match result {
                        Ok(report) => {
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
        let report = SweepReport {
            seeds_run: totals.seeds,
            failures,
            wall_time: started.elapsed(),
            events: totals.events,
            virtual_time: totals.virtual_time,
        };
        eprintln!("{}", report.summary());
        report
    }

    fn progress_bar(&self, total: u64) -> indicatif::ProgressBar {
        if !self.progress {
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
    seeds: u64,
    events: u64,
    virtual_time: Duration,
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
        SweepReport {
            seeds_run: 1,
            failures,
            wall_time: Duration::ZERO,
            events,
            virtual_time,
        }
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
        let mut line = format!(
            "deja sim: {} seeds in {:.2}s ({:.1} seeds/s), {} events, {:.1}s virtual",
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
