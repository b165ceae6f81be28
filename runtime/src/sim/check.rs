//! The determinism check: run one seed twice and compare every event.
//!
//! Code that bypasses the shim (`std::time::Instant::now`, `tokio::spawn`,
//! `rand::rng()`, a `HashMap`'s iteration order, a thread) makes two runs
//! of the same seed differ; this finds the first event where they do.

use std::fmt;

use deja_recorder::Event;

use super::{HostEvents, Sim, SimReport};

/// Events shown before the first difference.
const CONTEXT_EVENTS: usize = 5;

/// Run seed `seed` (built by `make`) twice and compare the whole event
/// history of every host. `Ok` with the first run's report when both
/// runs are identical (whether or not the simulation itself failed).
///
/// Each run has a thread of its own, as each run of a service has a
/// process of its own: what libraries cache per thread (hyper's `Date`
/// header, `rand::rng()`'s state) starts fresh in both, instead of the
/// second run inheriting the first's.
pub fn check_determinism(
    seed: u64,
    make: impl Fn(u64) -> Sim + Sync,
) -> Result<SimReport, Box<Nondeterminism>> {
    let run = || {
        std::thread::scope(
            |scope| match scope.spawn(|| make(seed).simulate_captured()).join() {
                Ok(outcome) => outcome,
                Err(panic) => std::panic::resume_unwind(panic),
            },
        )
    };
    let (first, first_events) = run();
    let (second, second_events) = run();
    let report = |result: Result<SimReport, Box<super::SimFailure>>| match result {
        Ok(report) => report,
        Err(failure) => failure.report,
    };
    let (first, second) = (report(first), report(second));
    match first_difference(&first_events, &second_events) {
        None if first.digest == second.digest => Ok(first),
        None => Err(Box::new(Nondeterminism {
            seed: first.seed,
            host: String::new(),
            incarnation: 0,
            index: 0,
            first: None,
            second: None,
            before: Vec::new(),
        })),
        Some(mut difference) => {
            difference.seed = first.seed;
            Err(Box::new(difference))
        }
    }
}

fn first_difference(a: &[HostEvents], b: &[HostEvents]) -> Option<Nondeterminism> {
    let hosts = a.len().max(b.len());
    for i in 0..hosts {
        let empty = Vec::new();
        let (ea, eb) = (
            a.get(i).map_or(&empty, |h| &h.events),
            b.get(i).map_or(&empty, |h| &h.events),
        );
        let named = a.get(i).or_else(|| b.get(i)).expect("i < hosts");
        let len = ea.len().max(eb.len());
        for index in 0..len {
            let (x, y) = (ea.get(index), eb.get(index));
            if x != y {
                return Some(Nondeterminism {
                    seed: 0,
                    host: named.host.clone(),
                    incarnation: named.incarnation,
                    index,
                    first: x.cloned(),
                    second: y.cloned(),
                    before: ea[index.saturating_sub(CONTEXT_EVENTS)..index].to_vec(),
                });
            }
        }
    }
    None
}

/// Two runs of one seed differed: where, and how.
#[derive(Debug)]
pub struct Nondeterminism {
    /// The seed.
    pub seed: u64,
    /// The first host whose events differ.
    pub host: String,
    /// Its incarnation.
    pub incarnation: u32,
    /// The index (seq) of the first differing event.
    pub index: usize,
    /// That event in the first run (`None`: the run ended before it).
    pub first: Option<Event>,
    /// That event in the second run.
    pub second: Option<Event>,
    /// The events just before it (equal in both runs).
    pub before: Vec<Event>,
}

impl fmt::Display for Nondeterminism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first.is_none() && self.second.is_none() {
            return writeln!(
                f,
                "deja sim: seed {} is not deterministic: the digests differ, but the kept events do not (the difference lies past the events kept in memory)",
                self.seed
            );
        }
        writeln!(
            f,
            "deja sim: seed {} is not deterministic: host {:?} (incarnation {}) differs at seq {}",
            self.seed, self.host, self.incarnation, self.index
        )?;
        let show = |event: &Option<Event>| match event {
            Some(event) => event.to_string(),
            None => "(no event: the run ended)".into(),
        };
        writeln!(f, "  first run:  {}", show(&self.first))?;
        writeln!(f, "  second run: {}", show(&self.second))?;
        if !self.before.is_empty() {
            writeln!(f, "  before it, in both runs:")?;
            for event in &self.before {
                writeln!(f, "    {event}")?;
            }
        }
        writeln!(
            f,
            "hint: code outside deja's shim decides something here: std::time, tokio::spawn or tokio::time, rand::rng(), HashMap iteration, threads (fixtures/clippy.toml flags these calls)"
        )
    }
}

impl std::error::Error for Nondeterminism {}
