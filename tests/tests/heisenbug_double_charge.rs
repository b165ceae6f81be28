//! Double charge, caught in a recording and replayed exactly: two checkout
//! requests for one order both read `UNPAID` and both charge.

use std::path::Path;
use std::sync::{Arc, Mutex};

use deja::debug::{BreakHit, Resume};
use deja::recorder::{EventKind, TaskId};
use deja::Error;
use deja_fixtures::double_charge::{self, Ledger, Load, Options, Shared, SERVICE};
use deja_fixtures::heisenbug::{self, Attempt, Caught, Outside};
use deja_tests::e2e::log_events;
use deja_tests::heisenbug::{assert_diverges_at, next_event_of, quick_stall, text};

/// Record attempts before giving up: one attempt shows the bug with a
/// probability well above 90 % (12 double-clicked orders), so ten make a
/// miss vanishingly rare.
const ATTEMPTS_MAX: u32 = 10;
/// Replays that must all agree.
const REPLAYS: u32 = 20;

/// Record checkout under double-clicking load until an order is charged
/// twice.
fn catch(out: &Path) -> (Caught<Ledger>, Options) {
    let mut options = None;
    let seed = heisenbug::fresh_seed();
    eprintln!("double-charge: load seeds from {seed}");
    let caught = heisenbug::record_until_bug(
        "double-charge",
        ATTEMPTS_MAX,
        |n| {
            let outside = Outside::new()?;
            let load = Load {
                seed: seed + u64::from(n),
                ..Load::default()
            };
            let (attempt, receipts, used) = double_charge::record(&outside, out, false, load)?;
            // The customers saw what checkout's ledger says.
            let charged_twice: Vec<u32> = attempt
                .outcome
                .double_charged()
                .iter()
                .map(|(order, _)| *order)
                .collect();
            assert_eq!(receipts.double_charged(), charged_twice);
            options = Some(used);
            Ok::<Attempt<Ledger>, anyhow::Error>(attempt)
        },
        Ledger::bug,
    )
    .expect("recording the double charge");
    (caught, options.expect("an attempt ran"))
}

fn replay_ledger(
    run: &Path,
    options: &Options,
    configure: impl FnOnce(deja::Builder) -> deja::Builder,
    shared: &Shared,
) -> Result<deja::ReplayStats, Error> {
    heisenbug::replay(run, SERVICE, configure, |ready| {
        double_charge::checkout(options.clone(), Arc::clone(shared), ready)
    })
}

#[test]
fn replay_reproduces_the_double_charge_20_times_out_of_20() {
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

/// What a callback saw at a `charging` mark of the double-charged order.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    task: TaskId,
    past_unpaid_check: u32,
    charged: usize,
}

#[test]
fn a_breakpoint_on_the_order_stops_before_the_second_charge_with_both_past_the_check() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let (order, ids) = caught.outcome.double_charged()[0].clone();
    let spec = format!("mark=charging:{order},kind=mark");
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
                        let mut seen = seen.lock().unwrap();
                        seen.push(Seen {
                            seq: hit.seq(),
                            task: hit.task(),
                            past_unpaid_check: ledger
                                .past_unpaid_check
                                .get(&order)
                                .copied()
                                .unwrap_or(0),
                            charged: ledger.charges.get(&order).map_or(0, Vec::len),
                        });
                        // Stop at the second charge: the faulty one.
                        if seen.len() == 2 {
                            Resume::Stop
                        } else {
                            Resume::Continue
                        }
                    })
            },
            &shared,
        )
    };
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "two charges of order {order} ({ids:?}): {seen:?}"
    );
    let second = &seen[1];
    match result {
        Err(Error::Halted { seq, .. }) => assert_eq!(seq, second.seq),
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    assert_ne!(seen[0].task, second.task, "two requests, two tasks");
    // The state that explains the bug: both requests are past the unpaid
    // check, and the second is about to charge anyway.
    assert_eq!(second.past_unpaid_check, 2, "{seen:?}");
    assert!(second.charged <= 1, "{seen:?}");

    // "Right before": the stopped task's next event is the CHARGE write.
    let events = log_events(&caught.run);
    let next = next_event_of(&events, second.task, second.seq);
    assert!(
        matches!(next.kind, EventKind::TcpWrite { .. }),
        "after the charging mark comes the CHARGE write, got {next}"
    );
}

#[test]
fn the_fixed_checkout_diverges_where_the_second_request_would_wait() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let expected = first_overlap(&log_events(&caught.run));
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
        report.contains("tcp_connect"),
        "the report names the call: {report}"
    );
}

/// Where the per-order lock first changes behaviour: the first second
/// request whose payment connect the recording has before the first
/// request's last payment read (the fix would hold it at the lock until
/// then). Returns its seq and task.
fn first_overlap(events: &[deja::recorder::Event]) -> (u64, TaskId) {
    use std::collections::BTreeMap;
    // order -> tasks in the order of their `order` marks
    let mut requests: BTreeMap<String, Vec<(TaskId, u64)>> = BTreeMap::new();
    for event in events {
        if let EventKind::Mark { name, value } = &event.kind {
            if name == "order" {
                requests
                    .entry(text(value))
                    .or_default()
                    .push((event.task, event.seq));
            }
        }
    }
    let task_after =
        |task: TaskId, seq: u64| events.iter().filter(move |e| e.task == task && e.seq > seq);
    let mut first: Option<(u64, TaskId)> = None;
    for tasks in requests.values() {
        let [(a, a_mark), (b, b_mark)] = tasks[..] else {
            continue;
        };
        let payment_conn = task_after(a, a_mark)
            .find_map(|e| match &e.kind {
                EventKind::TcpConnect {
                    conn,
                    result: Ok(_),
                    ..
                } => Some(*conn),
                _ => None,
            })
            .expect("the first request connects to payment");
        let a_release = task_after(a, a_mark)
            .filter(|e| matches!(&e.kind, EventKind::TcpRead { conn, .. } if *conn == payment_conn))
            .map(|e| e.seq)
            .max()
            .expect("the first request reads payment's answers");
        let b_connect = task_after(b, b_mark)
            .next()
            .expect("the second request goes on");
        if b_connect.seq < a_release && first.is_none_or(|(seq, _)| b_connect.seq < seq) {
            first = Some((b_connect.seq, b));
        }
    }
    first.expect("a double charge means two requests overlapped")
}
