//! Clock edge, caught in a recording and replayed exactly: a deadline
//! request straddles local midnight, reads "end of today" from the old day
//! and "now" from the new one, and the job is told its deadline passed.
//! The recording holds the clock, so replay shows it on any day.

use std::path::Path;
use std::sync::{Arc, Mutex};

use deja::debug::{BreakHit, Resume};
use deja::recorder::{Event, EventKind, TaskId};
use deja::Error;
use deja_fixtures::clock_edge::{self, local_day, Ledger, Load, Options, Shared, SERVICE};
use deja_fixtures::heisenbug::{self, Attempt, Caught, Outside};
use deja_tests::e2e::log_events;
use deja_tests::heisenbug::{assert_diverges_at, next_event_of, quick_stall};

/// Record attempts before giving up: local midnight falls inside every
/// attempt's load and four back-to-back clients keep a request open across
/// it almost always, so a second attempt is rare and a third rarer still.
const ATTEMPTS_MAX: u32 = 4;
/// Replays that must all agree.
const REPLAYS: u32 = 20;
/// Local midnight comes this long (plus up to a second: it falls on a
/// whole second) after the recording starts: time for the record runtime
/// to start on a loaded machine.
const MIDNIGHT_LEAD: std::time::Duration = std::time::Duration::from_millis(1000);

/// Record the scheduler across local midnight until a job is told its
/// deadline passed.
fn catch(out: &Path) -> (Caught<Ledger>, Options) {
    let mut options = None;
    let caught = heisenbug::record_until_bug(
        "clock-edge",
        ATTEMPTS_MAX,
        |_| {
            let outside = Outside::new()?;
            let (attempt, replies, used) =
                clock_edge::record(&outside, out, false, MIDNIGHT_LEAD, Load::default())?;
            assert!(replies.crossed_midnight, "the load waited for midnight");
            // The clients saw what the scheduler's ledger says.
            assert_eq!(replies.passed, attempt.outcome.passed());
            assert_eq!(replies.answered as usize, attempt.outcome.requests.len());
            eprintln!(
                "clock-edge: {} deadlines asked at UTC{:+} s",
                replies.answered, used.utc_offset_secs
            );
            options = Some(used);
            Ok::<Attempt<Ledger>, anyhow::Error>(attempt)
        },
        Ledger::bug,
    )
    .expect("recording the clock edge");
    (caught, options.expect("an attempt ran"))
}

fn replay_ledger(
    run: &Path,
    options: &Options,
    configure: impl FnOnce(deja::Builder) -> deja::Builder,
    shared: &Shared,
) -> Result<deja::ReplayStats, Error> {
    heisenbug::replay(run, SERVICE, configure, |ready| {
        clock_edge::scheduler(options.clone(), Arc::clone(shared), ready)
    })
}

#[test]
fn replay_reproduces_the_passed_deadline_20_times_out_of_20_after_midnight_is_gone() {
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
    assert_eq!(replayed, caught.outcome, "replay gives the recorded ledger");
    assert_eq!(replayed.bug(), Some(caught.bug.clone()));
    // The real clock has moved on: its local day is no longer the one
    // that ended in the recording, and replay did not care.
    let job = caught.outcome.passed()[0];
    let recorded_second = caught.outcome.requests[&job].second_unix_ns.unwrap();
    #[allow(clippy::disallowed_methods)] // the test's outside world: the real clock
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let real_now = i64::try_from(real_now.as_nanos()).unwrap();
    assert!(real_now > recorded_second);
    eprintln!(
        "{REPLAYS} replays, digest {digest:016x}, {} ms after the recorded midnight: {}",
        (real_now - recorded_second) / 1_000_000,
        caught.bug
    );
}

/// What the callback saw at the `deadline` mark of the job told `PASSED`.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    task: TaskId,
    first_day: i64,
    second_day: i64,
    answered: bool,
}

#[test]
fn a_breakpoint_on_the_job_stops_before_the_subtraction_with_readings_on_two_days() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let job = caught.outcome.passed()[0];
    let offset = options.utc_offset_secs;
    let spec = format!("mark=deadline:{job},kind=mark");
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
                        let request = &ledger.requests[&job];
                        *seen.lock().unwrap() = Some(Seen {
                            seq: hit.seq(),
                            task: hit.task(),
                            first_day: local_day(request.first_unix_ns, offset),
                            second_day: local_day(
                                request.second_unix_ns.expect("both readings taken"),
                                offset,
                            ),
                            answered: request.answer.is_some(),
                        });
                        Resume::Stop
                    })
            },
            &shared,
        )
    };
    let seen = seen.lock().unwrap().clone().expect("the breakpoint hit");
    match result {
        Err(Error::Halted { seq, .. }) => assert_eq!(seq, seen.seq),
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    // The state that explains the bug: the end of day came from one day,
    // "now" from the next, and the job is not answered yet.
    assert_eq!(seen.second_day, seen.first_day + 1, "{seen:?}");
    assert!(!seen.answered, "{seen:?}");

    // "Right before": the task read the clock twice since its request,
    // and its next event is the PASSED reply.
    let events = log_events(&caught.run);
    let mine = |e: &&Event| e.task == seen.task;
    let before: Vec<&Event> = events
        .iter()
        .filter(|e| e.seq < seen.seq)
        .filter(mine)
        .collect();
    let walls: Vec<&Event> = before
        .iter()
        .rev()
        .take_while(|e| !matches!(e.kind, EventKind::TcpRead { .. }))
        .filter(|e| matches!(e.kind, EventKind::ClockWall { .. }))
        .copied()
        .collect();
    assert_eq!(
        walls.len(),
        2,
        "two clock readings in the request: {walls:?}"
    );
    let next = next_event_of(&events, seen.task, seen.seq);
    assert!(
        matches!(next.kind, EventKind::TcpWrite { .. }),
        "after the deadline mark comes the reply, got {next}"
    );
}

#[test]
fn the_fixed_scheduler_diverges_at_the_first_second_clock_reading() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let expected = first_second_reading(&log_events(&caught.run));
    let fixed = Options {
        fixed: true,
        ..options
    };
    let shared = Shared::default();
    let report = assert_diverges_at(
        replay_ledger(&caught.run, &fixed, quick_stall, &shared),
        expected,
    );
    assert!(
        report.contains("clock_wall"),
        "the report names the call: {report}"
    );
}

/// Where reading the clock once first changes behaviour: the first
/// `clock_wall` event (in log order) that is the second reading of its
/// request, that is, the second since its task last read a request.
/// Returns its seq and task.
fn first_second_reading(events: &[Event]) -> (u64, TaskId) {
    let mut readings: std::collections::BTreeMap<TaskId, u32> = Default::default();
    for event in events {
        match event.kind {
            EventKind::TcpRead { .. } => {
                readings.insert(event.task, 0);
            }
            EventKind::ClockWall { .. } => {
                let n = readings.entry(event.task).or_default();
                *n += 1;
                if *n == 2 {
                    return (event.seq, event.task);
                }
            }
            _ => {}
        }
    }
    panic!("no request read the clock twice")
}
