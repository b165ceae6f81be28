//! Timeout cascade, caught in a recording and replayed exactly: the
//! backend stalls, the front's immediate retries keep requests in flight
//! several timeouts long, the front fills up and rejects a long run of
//! requests. Replay gives the same ledger, virtual timestamps included.

use std::path::Path;
use std::sync::{Arc, Mutex};

use deja::debug::{BreakHit, Resume};
use deja::recorder::{Event, EventKind, TaskId};
use deja::Error;
use deja_fixtures::heisenbug::{self, Attempt, Caught, Outside};
use deja_fixtures::timeout_cascade::{
    self, Ledger, Load, Options, Outcome, Shared, IN_FLIGHT_MAX, SERVICE,
};
use deja_tests::e2e::log_events;
use deja_tests::heisenbug::{assert_diverges_at, quick_stall};

/// Record attempts before giving up: the backend stalls in every attempt
/// and a stall of fifteen timeouts fills the front each time; the bound only
/// covers a machine so loaded that the load itself stalls.
const ATTEMPTS_MAX: u32 = 5;
/// Replays that must all agree.
const REPLAYS: u32 = 20;

/// Record the front under steady load until the stall cascades.
fn catch(out: &Path) -> (Caught<Ledger>, Options) {
    let mut options = None;
    let caught = heisenbug::record_until_bug(
        "timeout-cascade",
        ATTEMPTS_MAX,
        |_| {
            let outside = Outside::new()?;
            let (attempt, replies, used) =
                timeout_cascade::record(&outside, out, false, Load::default())?;
            // The clients saw what the front's ledger says.
            assert_eq!(
                replies.longest_rejection_run(),
                attempt.outcome.longest_rejection_run()
            );
            options = Some(used);
            Ok::<Attempt<Ledger>, anyhow::Error>(attempt)
        },
        // The cascade the fixture plants is made of retries. On a starved
        // machine the front can fill before the stall with none; that
        // run shows a different bug, so record again.
        |ledger: &Ledger| ledger.bug().filter(|_| retried(ledger)),
    )
    .expect("recording the timeout cascade");
    (caught, options.expect("an attempt ran"))
}

/// Did any request of the ledger take a second attempt?
fn retried(ledger: &Ledger) -> bool {
    ledger.requests.values().any(|request| request.attempts > 1)
}

fn replay_ledger(
    run: &Path,
    options: &Options,
    configure: impl FnOnce(deja::Builder) -> deja::Builder,
    shared: &Shared,
) -> Result<deja::ReplayStats, Error> {
    heisenbug::replay(run, SERVICE, configure, |ready| {
        timeout_cascade::front(options.clone(), Arc::clone(shared), ready)
    })
}

#[test]
fn replay_reproduces_the_cascade_with_its_timings_20_times_out_of_20() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    eprintln!(
        "caught after {} attempt(s): {}",
        caught.attempts, caught.bug
    );
    let (replayed, digest) = heisenbug::replay_times(REPLAYS, || {
        let shared = Shared::default();
        let stats = replay_ledger(&caught.run, &options, |b| b, &shared)?;
        let ledger = shared.lock().unwrap().clone();
        Ok((ledger, stats))
    })
    .unwrap();
    // Per request: attempts, outcome, and the virtual times it arrived
    // and was answered.
    assert_eq!(replayed, caught.outcome, "replay gives the recorded ledger");
    assert_eq!(replayed.bug(), Some(caught.bug.clone()));
    assert!(replayed
        .requests
        .values()
        .all(|r| r.outcome != Outcome::InFlight && r.answered_ns.is_some()));
    eprintln!("{REPLAYS} replays, digest {digest:016x}: {}", caught.bug);
}

/// What the callback saw at the cascade's first rejection.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    in_flight: u32,
    /// The admitted requests in flight, with their attempts so far.
    attempts: Vec<(u64, u32)>,
}

#[test]
fn a_breakpoint_on_the_cascades_first_rejection_sees_a_full_front_of_retries() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    // The first rejection of the cascade (the longest run): a machine
    // loaded enough may reject a request or two before the stall.
    let (first, _) = caught.outcome.longest_rejection_run().expect("a rejection");
    let spec = format!("mark=reject:{first},kind=mark");
    let shared = Shared::default();
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let result = {
        let (shared_in_cb, seen) = (Arc::clone(&shared), Arc::clone(&seen));
        replay_ledger(
            &caught.run,
            &options,
            move |builder| {
                builder
                    .break_at(&spec)
                    .unwrap()
                    .on_break(move |hit: &BreakHit<'_>| {
                        let ledger = shared_in_cb.lock().unwrap();
                        *seen.lock().unwrap() = Some(Seen {
                            seq: hit.seq(),
                            in_flight: ledger.in_flight,
                            attempts: ledger.in_flight_attempts(),
                        });
                        Resume::Stop
                    })
            },
            &shared,
        )
    };
    let seen = seen.lock().unwrap().clone().expect("the breakpoint hit");
    eprintln!("at the cascade's first rejection (request {first}): {seen:?}");
    match result {
        Err(Error::Halted { seq, .. }) => assert_eq!(seq, seen.seq),
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    // The state that explains it: the front is full, and it is full of
    // retries: without them fewer requests would be in flight.
    assert_eq!(seen.in_flight, IN_FLIGHT_MAX, "{seen:?}");
    assert_eq!(seen.attempts.len() as u32, IN_FLIGHT_MAX, "{seen:?}");
    let retrying = seen.attempts.iter().filter(|(_, a)| *a > 1).count();
    assert!(retrying > 0, "requests in flight on a retry: {seen:?}");
}

#[test]
fn the_fixed_front_diverges_at_the_first_immediate_retry() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let expected = first_retry(&log_events(&caught.run));
    let fixed = Options {
        fixed: true,
        ..options
    };
    let shared = Shared::default();
    let report = assert_diverges_at(
        replay_ledger(&caught.run, &fixed, quick_stall, &shared),
        expected,
    );
    // The fixed task waits on its backoff timer, which the log never fired.
    assert!(
        report.contains(&format!("task {} waits on timer_fired", expected.1)),
        "the report names the backoff timer: {report}"
    );
}

/// Where backing off first changes behaviour: the first retry in the log,
/// that is, the first request's second `attempt` mark, which the buggy
/// front makes right after its timeout fired and the fixed one only after
/// a backoff timer. Returns its seq and task.
fn first_retry(events: &[Event]) -> (u64, TaskId) {
    let mut attempts: std::collections::BTreeMap<Vec<u8>, u32> = Default::default();
    for event in events {
        if let EventKind::Mark { name, value } = &event.kind {
            if name == "attempt" {
                let n = attempts.entry(value.clone()).or_default();
                *n += 1;
                if *n == 2 {
                    return (event.seq, event.task);
                }
            }
        }
    }
    panic!("no request retried")
}
