//! Out of order, caught in a recording and replayed exactly: a payment
//! overtakes its order on the faster link, the consumer drops it, and the
//! order stays unpaid.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use deja::debug::{BreakHit, Resume};
use deja::recorder::{Event as LogEvent, EventKind, ReadOutcome, TaskId};
use deja::Error;
use deja_fixtures::heisenbug::{self, Attempt, Caught, Outside};
use deja_fixtures::out_of_order::{self, Event, Ledger, Load, Options, Shared, Status, SERVICE};
use deja_tests::e2e::log_events;
use deja_tests::heisenbug::{assert_diverges_at, next_event_of, quick_stall};

/// Record attempts before giving up: one attempt shows the bug with a
/// probability around 90 % (12 orders, each paid 0.2 to 2 ms after its
/// creation over a link up to 1.7 ms faster), so ten make a miss
/// vanishingly rare.
const ATTEMPTS_MAX: u32 = 10;
/// Replays that must all agree.
const REPLAYS: u32 = 20;

/// Record the consumer under the two producers until a payment is
/// dropped.
fn catch(out: &Path) -> (Caught<Ledger>, Options) {
    let mut options = None;
    let seed = heisenbug::fresh_seed();
    eprintln!("out-of-order: load seeds from {seed}");
    let caught = heisenbug::record_until_bug(
        "out-of-order",
        ATTEMPTS_MAX,
        |n| {
            let outside = Outside::new()?;
            let load = Load {
                seed: seed + u64::from(n),
                ..Load::default()
            };
            let orders = load.orders;
            let (attempt, report, used) = out_of_order::record(&outside, out, false, load)?;
            // The producers saw what the consumer's ledger says: exactly
            // the orders whose payment was dropped end unpaid.
            assert_eq!(report.taken, [orders, orders], "{report:?}");
            let mut dropped = attempt.outcome.dropped.clone();
            dropped.sort_unstable();
            assert_eq!(report.unpaid(), dropped, "{report:?}");
            assert_eq!(attempt.outcome.unpaid(), dropped);
            if let Some(bug) = report.bug() {
                eprintln!("out-of-order: the producers say {bug}");
            }
            options = Some(used);
            Ok::<Attempt<Ledger>, anyhow::Error>(attempt)
        },
        Ledger::bug,
    )
    .expect("recording the out-of-order payment");
    (caught, options.expect("an attempt ran"))
}

fn replay_ledger(
    run: &Path,
    options: &Options,
    configure: impl FnOnce(deja::Builder) -> deja::Builder,
    shared: &Shared,
) -> Result<deja::ReplayStats, Error> {
    heisenbug::replay(run, SERVICE, configure, |ready| {
        out_of_order::consumer(options.clone(), Arc::clone(shared), ready)
    })
}

#[test]
fn replay_reproduces_the_dropped_payment_20_times_out_of_20() {
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
    eprintln!("{REPLAYS} replays, digest {digest:016x}: {}", caught.bug);
}

/// What a callback saw at an `apply` mark of the order left unpaid.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    task: TaskId,
    applying: Option<Event>,
    order: Option<Status>,
}

#[test]
fn a_breakpoint_on_the_order_stops_at_the_payment_that_finds_no_order() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let id = caught.outcome.dropped[0];
    let spec = format!("mark=apply:{id},kind=mark");
    let shared = Shared::default();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
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
                        seen.lock().unwrap().push(Seen {
                            seq: hit.seq(),
                            task: hit.task(),
                            applying: ledger.applying,
                            order: ledger.orders.get(&id).copied(),
                        });
                        // The first event applied for the order is the
                        // faulty one: its payment.
                        Resume::Stop
                    })
            },
            &shared,
        )
    };
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let at = &seen[0];
    match result {
        Err(Error::Halted { seq, .. }) => assert_eq!(seq, at.seq),
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    // The state that explains the bug: the consumer is applying the
    // payment, and the order it pays does not exist yet.
    assert_eq!(at.applying, Some(Event::Paid(id)), "{at:?}");
    assert_eq!(at.order, None, "order {id} is not created yet: {at:?}");
    eprintln!(
        "stopped at seq {} (task {:?}): applying {:?}, order {id}: {:?}",
        at.seq, at.task, at.applying, at.order
    );

    // The log agrees: the consumer read the payment and has not read the
    // order's creation; right after the mark it acknowledges the payment
    // it is about to drop.
    let events = log_events(&caught.run);
    let lines = event_lines(&events);
    let (payment_read, _) = lines
        .iter()
        .find(|(_, event)| *event == Event::Paid(id))
        .expect("the payment was read");
    let created_read = lines
        .iter()
        .find(|(_, event)| *event == Event::Created(id))
        .map(|(seq, _)| *seq)
        .expect("the order was read");
    assert!(*payment_read < at.seq && at.seq < created_read);
    let next = next_event_of(&events, at.task, at.seq);
    assert!(
        matches!(next.kind, EventKind::TcpWrite { .. }),
        "after the apply mark comes the OK to the payments producer, got {next}"
    );
}

#[test]
fn the_fixed_consumer_diverges_where_it_defers_the_first_early_payment() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let expected = first_early_payment(&log_events(&caught.run));
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
        report.contains("defer"),
        "the report names what the fix did instead: {report}"
    );
}

/// Every event line the consumer read, with the seq of the read that
/// completed it, in log order (each link carries one line at a time: a
/// producer waits for `OK` before it sends the next).
fn event_lines(events: &[LogEvent]) -> Vec<(u64, Event)> {
    let mut pending: BTreeMap<_, Vec<u8>> = BTreeMap::new();
    let mut lines = Vec::new();
    for event in events {
        let EventKind::TcpRead {
            conn,
            result: ReadOutcome::Data(data),
        } = &event.kind
        else {
            continue;
        };
        let buffer = pending.entry(*conn).or_default();
        buffer.extend_from_slice(data);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if let Some(parsed) = Event::parse(String::from_utf8_lossy(&line).trim_end()) {
                lines.push((event.seq, parsed));
            }
        }
    }
    lines
}

/// Where the deferral first changes behaviour: the first payment the
/// consumer read before the creation of its order. The buggy consumer
/// marked `apply` for it (its next mark after the read); the fixed one
/// marks `defer` there instead. Returns that mark's seq and task.
fn first_early_payment(events: &[LogEvent]) -> (u64, TaskId) {
    let mut created = BTreeSet::new();
    for (read, event) in event_lines(events) {
        match event {
            Event::Created(id) => {
                created.insert(id);
            }
            Event::Paid(id) if !created.contains(&id) => {
                let reader = events
                    .iter()
                    .find(|e| e.seq == read)
                    .expect("the read is in the log")
                    .task;
                let mark = events
                    .iter()
                    .find(|e| {
                        e.seq > read && e.task == reader && matches!(e.kind, EventKind::Mark { .. })
                    })
                    .expect("the consumer marks the payment it applies");
                return (mark.seq, mark.task);
            }
            Event::Paid(_) => {}
        }
    }
    panic!("a dropped payment means one arrived before its order")
}
