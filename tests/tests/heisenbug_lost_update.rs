//! Lost update, caught in a recording and replayed exactly: two
//! withdrawals on one account both read the same balance, and the second
//! write erases the first.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use deja::debug::{BreakHit, Resume};
use deja::recorder::{Event, EventKind, ReadOutcome, TaskId};
use deja::Error;
use deja_fixtures::heisenbug::{self, Attempt, Caught, Outside};
use deja_fixtures::lost_update::{self, Ledger, Load, Options, Shared, Write, SERVICE};
use deja_tests::e2e::log_events;
use deja_tests::heisenbug::{assert_diverges_at, next_event_of, quick_stall, text};

/// Record attempts before giving up: one attempt shows the bug with a
/// probability above 90 % (3 accounts, 6 withdrawals each within 30 ms),
/// so ten make a miss vanishingly rare.
const ATTEMPTS_MAX: u32 = 10;
/// Replays that must all agree.
const REPLAYS: u32 = 20;

/// Record the account service under concurrent withdrawals until one is
/// lost.
fn catch(out: &Path) -> (Caught<Ledger>, Options) {
    let mut options = None;
    let seed = heisenbug::fresh_seed();
    eprintln!("lost-update: load seeds from {seed}");
    let caught = heisenbug::record_until_bug(
        "lost-update",
        ATTEMPTS_MAX,
        |n| {
            let outside = Outside::new()?;
            let load = Load {
                seed: seed + u64::from(n),
                ..Load::default()
            };
            let (attempt, receipts, used) = lost_update::record(&outside, out, false, load)?;
            // The balances in the store say what the service's ledger says:
            // an account lost money exactly when two withdrawals on it read
            // the same balance.
            let stale: Vec<u32> = attempt
                .outcome
                .stale_writes()
                .iter()
                .map(|stale| stale.account)
                .collect();
            let lost: Vec<u32> = receipts.lost().iter().map(|lost| lost.account).collect();
            assert_eq!(lost, stale, "{receipts:?}");
            assert!(receipts.lost().iter().all(|lost| lost.missing() > 0));
            if let Some(bug) = receipts.bug() {
                eprintln!("lost-update: the store says {bug}");
            }
            options = Some(used);
            Ok::<Attempt<Ledger>, anyhow::Error>(attempt)
        },
        Ledger::bug,
    )
    .expect("recording the lost update");
    (caught, options.expect("an attempt ran"))
}

fn replay_ledger(
    run: &Path,
    options: &Options,
    configure: impl FnOnce(deja::Builder) -> deja::Builder,
    shared: &Shared,
) -> Result<deja::ReplayStats, Error> {
    heisenbug::replay(run, SERVICE, configure, |ready| {
        lost_update::account(options.clone(), Arc::clone(shared), ready)
    })
}

#[test]
fn replay_reproduces_the_lost_update_20_times_out_of_20() {
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

/// What a callback saw at a `withdraw` mark of the account that lost a
/// withdrawal.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    task: TaskId,
    reads: Vec<u64>,
    writes: Vec<Write>,
}

/// The `withdraw` marks of `account` in the log, in order, each with its
/// task and the balance that task's `GET` returned.
fn withdraw_marks(events: &[Event], account: u32) -> Vec<(u64, TaskId, u64)> {
    let value = account.to_string();
    events
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::Mark { name, value: v } if name == "withdraw" && text(v) == value)
        })
        .map(|mark| {
            let read = events
                .iter()
                .filter(|e| e.task == mark.task && e.seq < mark.seq)
                .find_map(|e| match &e.kind {
                    EventKind::TcpRead {
                        result: ReadOutcome::Data(data),
                        ..
                    } => text(data)
                        .strip_prefix("VALUE ")
                        .and_then(|n| n.trim_end().parse().ok()),
                    _ => None,
                })
                .expect("a withdrawal reads the balance before it writes");
            (mark.seq, mark.task, read)
        })
        .collect()
}

#[test]
fn a_breakpoint_on_the_account_stops_before_the_stale_write_with_both_reads_equal() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let account = caught.outcome.stale_writes()[0].account;
    // From the log alone: the first `withdraw` mark of the account whose
    // withdrawal read the same balance as an earlier one. That write is
    // the faulty one: it erases the earlier withdrawal.
    let marks = withdraw_marks(&log_events(&caught.run), account);
    let (second, balance) = marks
        .iter()
        .enumerate()
        .find_map(|(i, (_, _, read))| {
            marks[..i]
                .iter()
                .any(|m| m.2 == *read)
                .then_some((i, *read))
        })
        .expect("two withdrawals read the same balance");
    let first = marks
        .iter()
        .position(|m| m.2 == balance)
        .expect("the earlier one");
    let stop_at = second + 1;
    let spec = format!("mark=withdraw:{account},kind=mark");
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
                            reads: ledger.reads.get(&account).cloned().unwrap_or_default(),
                            writes: ledger.writes.get(&account).cloned().unwrap_or_default(),
                        });
                        if seen.len() == stop_at {
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
    assert_eq!(seen.len(), stop_at, "{marks:?}: {seen:?}");
    let at = &seen[second];
    match result {
        Err(Error::Halted { seq, .. }) => {
            assert_eq!((seq, at.task), (marks[second].0, marks[second].1))
        }
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    assert_ne!(seen[first].task, at.task, "two requests, two tasks");
    // The state that explains the bug: two GETs returned the same balance,
    // the earlier withdrawal already got to its write, and this one is
    // about to write its own `balance - amount` over it.
    let same: Vec<&Write> = at.writes.iter().filter(|w| w.read == balance).collect();
    assert_eq!(same.len(), 2, "two writes from balance {balance}: {at:?}");
    assert!(
        at.reads.iter().filter(|read| **read == balance).count() >= 2,
        "two GETs returned balance {balance}: {at:?}"
    );
    assert_eq!(at.writes.len(), stop_at, "{at:?}");
    eprintln!(
        "stopped at seq {} (task {:?}): withdrawals of {} and {} both read {balance}",
        at.seq, at.task, same[0].amount, same[1].amount
    );

    // "Right before": the stopped task's next event is the PUT write.
    let events = log_events(&caught.run);
    let next = next_event_of(&events, at.task, at.seq);
    assert!(
        matches!(next.kind, EventKind::TcpWrite { .. }),
        "after the withdraw mark comes the PUT write, got {next}"
    );
}

#[test]
fn the_fixed_service_diverges_where_a_withdrawal_would_wait_for_the_account() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let expected = first_wait(&log_events(&caught.run));
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

/// One withdrawal in the log, as the per-account lock sees it.
struct Request {
    task: TaskId,
    /// Its `account` mark: where the fix takes the lock.
    mark: u64,
    /// Its first event after the mark (the store connect): what the fix
    /// holds back while the account is locked.
    next: u64,
    /// Its last read from the store (the PUT's answer, or the GET's when
    /// refused): where the fix releases the lock.
    release: u64,
}

/// Where the per-account lock first changes behaviour. The lock is taken
/// in mark order, so a withdrawal cannot go on while any withdrawal on
/// the same account marked before it has not released: the first
/// withdrawal whose next event the recording has before such a release is
/// where the fixed code stalls. Returns its seq and task.
fn first_wait(events: &[Event]) -> (u64, TaskId) {
    let mut accounts: BTreeMap<String, Vec<Request>> = BTreeMap::new();
    for event in events {
        let EventKind::Mark { name, value } = &event.kind else {
            continue;
        };
        if name != "account" {
            continue;
        }
        let after = || {
            events
                .iter()
                .filter(|e| e.task == event.task && e.seq > event.seq)
        };
        let next = after().next().expect("the withdrawal goes on");
        let store = match &next.kind {
            EventKind::TcpConnect {
                conn,
                result: Ok(_),
                ..
            } => *conn,
            other => panic!("a withdrawal connects to the store first, got {other:?}"),
        };
        let release = after()
            .filter(|e| matches!(&e.kind, EventKind::TcpRead { conn, .. } if *conn == store))
            .map(|e| e.seq)
            .max()
            .expect("the withdrawal reads the store's answers");
        accounts.entry(text(value)).or_default().push(Request {
            task: event.task,
            mark: event.seq,
            next: next.seq,
            release,
        });
    }
    accounts
        .values()
        .flat_map(|requests| {
            requests.iter().filter_map(|waiter| {
                requests
                    .iter()
                    .any(|holder| holder.mark < waiter.mark && holder.release > waiter.next)
                    .then_some((waiter.next, waiter.task))
            })
        })
        .min_by_key(|(seq, _)| *seq)
        .expect("a lost update means two withdrawals overlapped")
}
