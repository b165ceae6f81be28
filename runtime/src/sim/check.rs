//! The determinism check: run one seed twice and compare every event.
//!
//! Code that bypasses the shim (`std::time::Instant::now`, `tokio::spawn`,
//! `rand::rng()`, a `HashMap`'s iteration order, a thread) makes two runs
//! of the same seed differ; this finds the first event where they do.

use std::fmt;

use std::ops::Range;

use deja_recorder::Event;

use super::capture::{CaptureMode, CHECKPOINT_EVENTS};
use super::{HostEvents, HostReport, Sim, SimReport};

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
///
/// The runs keep hashes, not events: a digest per host incarnation and a
/// checkpoint every [`CHECKPOINT_EVENTS`] events, so an hour-long run
/// checks in the memory of a short one. When the digests differ, the
/// seed runs twice more, keeping the events of the first differing host
/// around the first differing checkpoint, to name the first differing
/// event and the events before it.
pub fn check_determinism(
    seed: u64,
    make: impl Fn(u64) -> Sim + Sync,
) -> Result<SimReport, Box<Nondeterminism>> {
    let run = |keep: Option<&Keep>| {
        std::thread::scope(|scope| {
            let run = scope.spawn(|| {
                let mode = match keep {
                    None => CaptureMode::Off,
                    Some(keep) => CaptureMode::Keep {
                        host: keep.host.clone(),
                        incarnation: keep.incarnation,
                        seqs: keep.seqs.clone(),
                    },
                };
                let (result, hosts) = make(seed).simulate_captured(mode);
                let report = match result {
                    Ok(report) => report,
                    Err(failure) => failure.report,
                };
                (report, hosts)
            });
            match run.join() {
                Ok(outcome) => outcome,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    };
    let (first, first_hosts) = run(None);
    let (second, second_hosts) = run(None);
    if first.digest == second.digest {
        return Ok(first);
    }
    let keep = where_to_look(&first, &second, &first_hosts, &second_hosts);
    let (_, first_kept) = run(Some(&keep));
    let (_, second_kept) = run(Some(&keep));
    let kept = |hosts: Vec<HostEvents>| {
        hosts
            .into_iter()
            .find(|h| h.host == keep.host && h.incarnation == keep.incarnation)
            .map(|h| h.events)
            .unwrap_or_default()
    };
    let mut difference = first_difference(kept(first_kept), kept(second_kept), &keep);
    difference.seed = first.seed;
    Err(Box::new(difference))
}

/// The events a second look keeps: one host incarnation's, in a range.
struct Keep {
    host: String,
    incarnation: u32,
    seqs: Range<u64>,
}

/// The first host incarnation whose digests differ, and the stretch of
/// its events from just before the first differing checkpoint's block.
fn where_to_look(
    first: &SimReport,
    second: &SimReport,
    first_hosts: &[HostEvents],
    second_hosts: &[HostEvents],
) -> Keep {
    let same = |a: &HostReport, b: &HostReport| {
        (&a.name, a.incarnation, a.events, a.digest) == (&b.name, b.incarnation, b.events, b.digest)
    };
    let hosts = first.hosts.len().max(second.hosts.len());
    let differs = (0..hosts)
        .find(|&i| match (first.hosts.get(i), second.hosts.get(i)) {
            (Some(a), Some(b)) => !same(a, b),
            _ => true,
        })
        .unwrap_or(0);
    let named = first
        .hosts
        .get(differs)
        .or_else(|| second.hosts.get(differs));
    let (host, incarnation) = named.map_or((String::new(), 0), |h| (h.name.clone(), h.incarnation));
    let checkpoints = |hosts: &[HostEvents]| -> Vec<u64> {
        hosts
            .iter()
            .find(|h| h.host == host && h.incarnation == incarnation)
            .map(|h| h.checkpoints.clone())
            .unwrap_or_default()
    };
    let (a, b) = (checkpoints(first_hosts), checkpoints(second_hosts));
    let block = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len())) as u64;
    let start = block * CHECKPOINT_EVENTS;
    Keep {
        host,
        incarnation,
        seqs: start.saturating_sub(CONTEXT_EVENTS as u64)..start + CHECKPOINT_EVENTS,
    }
}

fn first_difference(a: Vec<Event>, b: Vec<Event>, keep: &Keep) -> Nondeterminism {
    let len = a.len().max(b.len());
    let at = (0..len).find(|&i| a.get(i) != b.get(i));
    let Some(at) = at else {
        // The second look saw no difference where the first did.
        return Nondeterminism {
            seed: 0,
            host: keep.host.clone(),
            incarnation: keep.incarnation,
            index: usize::try_from(keep.seqs.start).unwrap_or(usize::MAX),
            first: None,
            second: None,
            before: Vec::new(),
        };
    };
    let index = a
        .get(at)
        .or_else(|| b.get(at))
        .map_or(keep.seqs.start.saturating_add(at as u64), |event| event.seq);
    Nondeterminism {
        seed: 0,
        host: keep.host.clone(),
        incarnation: keep.incarnation,
        index: usize::try_from(index).unwrap_or(usize::MAX),
        first: a.get(at).cloned(),
        second: b.get(at).cloned(),
        before: a[at.saturating_sub(CONTEXT_EVENTS).min(a.len())..at.min(a.len())].to_vec(),
    }
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
                "deja sim: seed {} is not deterministic: the digests of host {:?} (incarnation {}) differ, but two more runs keeping its events from seq {} on did not (the difference comes and goes: run the check again)",
                self.seed, self.host, self.incarnation, self.index
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
