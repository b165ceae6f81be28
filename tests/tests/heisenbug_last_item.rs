//! The last item sold twice, on a real stack (axum, tower-http, a real
//! PostgreSQL with SCRAM login, a real Redis, a tonic upstream), caught in
//! a recording and replayed with both servers stopped: two buyers of one
//! unit both read `1` from the cache, both pay, and PostgreSQL decrements
//! twice (`deja_fixtures::last_item`).
//!
//! One test, in phases, rather than one test per check as the other
//! heisenbugs have: each would start its own PostgreSQL cluster (`initdb`
//! takes seconds) and three would run at once on a two-core machine.
//! Without PostgreSQL or `redis-server` it skips with one loud line,
//! except with `CI=true` (`deja_fixtures::servers`).

// The test waits with real time and reads real clocks.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use deja::debug::{BreakHit, Resume};
use deja::recorder::{Event, EventKind, TaskId};
use deja::Error;
use deja_fixtures::heisenbug::log::text;
use deja_fixtures::heisenbug::FIX_STALL_WAIT;
use deja_fixtures::heisenbug::{self, Attempt, Caught, Outside};
use deja_fixtures::last_item::{self, break_spec, Deps, Ledger, Load, Options, Shared};
use deja_fixtures::servers;
use deja_tests::e2e::log_events;

/// Record attempts before giving up: 8 items with two buyers each within
/// 10 ms, where a sale holds its check for a payment call and three
/// queries; in the runs measured every attempt oversold some item.
const ATTEMPTS_MAX: u32 = 5;
/// Replays that must all agree.
const REPLAYS: u32 = 10;
/// Recordings that may stop with a divergence report before one replays:
/// 1 in 8 to 15 does not replay (fixtures/README.md), so 4 in a row is a
/// failure.
const UNREPLAYABLE_MAX: u32 = 3;
/// The payments upstream answers within 1 to this many ms.
const PAYMENT_DELAY_MS: u64 = 5;

#[test]
fn the_last_item_sold_twice_replays_offline_and_the_fix_diverges() {
    let started = Instant::now();
    let outside = Outside::new().expect("the outside runtime");
    let seed = heisenbug::fresh_seed();
    let Some(mut deps) = Deps::start(&outside, "heisenbug_last_item", PAYMENT_DELAY_MS, seed)
        .expect("starting the dependencies")
    else {
        return;
    };
    let servers_up = started.elapsed();
    let out = tempfile::tempdir().expect("tempdir");
    let options = last_item::options(&deps, false);

    let caught = catch_replayable(&outside, out.path(), &options, seed);
    let recorded = started.elapsed();

    // Replay needs neither server.
    let pg_addr = deps.postgres.addr();
    let redis_addr = deps.redis.addr();
    deps.stop_servers();
    for addr in [pg_addr, redis_addr] {
        assert!(
            !servers::listening(addr),
            "a server still listens at {addr}"
        );
    }

    let digest = replays_agree(&caught, &options);
    let replayed = started.elapsed();
    breakpoint_before_the_second_sale(&caught, &options, pg_addr);
    fixed_shop_diverges_at_the_first_decrement(&caught, &options, pg_addr);
    eprintln!(
        "last-item: servers up in {servers_up:?}, caught by {recorded:?}, {REPLAYS} replays \
         (digest {digest:016x}) by {replayed:?}, total {:?}",
        started.elapsed()
    );
}

/// Record under load until an item is oversold, in a recording that
/// replays. A recording whose first replay stops with a divergence report
/// (the known gap: the handlers share one PostgreSQL, one Redis and one
/// HTTP/2 connection, and now and then replay wakes them in another order
/// than the recording's scheduler did, so a pipelined write goes out in
/// another order; fixtures/README.md has the figures) is reported here in
/// full and recorded again, at most [`UNREPLAYABLE_MAX`] times. It must
/// stop with that report: a hang or other answers fail the test.
fn catch_replayable(outside: &Outside, out: &Path, options: &Options, seed: u64) -> Caught<Ledger> {
    for round in 0..=UNREPLAYABLE_MAX {
        let seed = seed + 100 * u64::from(round);
        eprintln!("last-item: load seeds from {seed}");
        let caught = heisenbug::record_until_bug(
            "last-item",
            ATTEMPTS_MAX,
            |n| {
                let load = Load {
                    seed: seed + u64::from(n),
                    ..Load::default()
                };
                let (attempt, receipts) = last_item::record(outside, out, options, load)?;
                check_receipts(&attempt, &receipts);
                Ok::<Attempt<Ledger>, anyhow::Error>(attempt)
            },
            Ledger::bug,
        )
        .expect("recording the last item sold twice");
        eprintln!(
            "last-item: caught after {} attempt(s): {}",
            caught.attempts, caught.bug
        );
        match last_item::replay(&caught.run, options, |b| b, &Shared::default()) {
            Ok(_) => return caught,
            Err(Error::Diverged(divergence)) => eprintln!(
                "last-item: KNOWN GAP: recording {} of {} does not replay:\n{divergence}",
                round + 1,
                UNREPLAYABLE_MAX + 1
            ),
            Err(other) => panic!("replay of {} failed: {other}", caught.run.display()),
        }
    }
    panic!(
        "{} recordings in a row did not replay",
        UNREPLAYABLE_MAX + 1
    )
}

/// The customers saw what the shop's ledger says. (Other answers, such
/// as a 500 when redis's 500 ms response timeout fired on a loaded
/// machine, are said and allowed: the recording has them too.)
fn check_receipts(attempt: &Attempt<Ledger>, receipts: &last_item::Receipts) {
    for error in &receipts.errors {
        eprintln!("last-item: a buyer got {error}");
    }
    let ledger = &attempt.outcome;
    for (sku, bought) in &receipts.bought {
        let mut orders: Vec<i64> = bought.iter().map(|b| b.order).collect();
        let mut sold: Vec<i64> = ledger.sales[sku].iter().map(|s| s.order).collect();
        orders.sort_unstable();
        sold.sort_unstable();
        assert_eq!(orders, sold, "{sku}");
        // PostgreSQL went below zero exactly as often as it oversold
        // (unless a request failed between its decrement and its answer).
        let stocked = receipts.restocked[sku];
        if !receipts.errors.is_empty() {
            continue;
        }
        assert_eq!(
            receipts.final_stock[sku],
            stocked - bought.len() as i64,
            "{sku}"
        );
    }
    assert_eq!(receipts.oversold(), ledger.oversold());
}

/// `REPLAYS` replays with the servers stopped: the recorded ledger (the
/// bug included) and one digest.
fn replays_agree(caught: &Caught<Ledger>, options: &Options) -> u64 {
    let (replayed, digest) = heisenbug::replay_times(REPLAYS, || {
        let shared = Shared::default();
        let stats = last_item::replay(&caught.run, options, |b| b, &shared)?;
        let ledger = shared.lock().unwrap().clone();
        Ok((ledger, stats))
    })
    .unwrap_or_else(|err| panic!("replaying {}: {err:#}", caught.run.display()));
    assert_eq!(replayed, caught.outcome, "replay gives the recorded ledger");
    assert_eq!(replayed.bug(), Some(caught.bug.clone()));
    eprintln!(
        "last-item: {REPLAYS} replays, digest {digest:016x}: {}",
        caught.bug
    );
    digest
}

/// What the callback saw at a `sell` mark of the oversold item.
#[derive(Clone, Debug)]
struct Seen {
    seq: u64,
    task: TaskId,
    /// The cached stock each request past the check had read.
    passed_check: Vec<i64>,
    /// Sales of the item made so far.
    sold: usize,
}

/// Stop at the second sale of the oversold item: both requests are past
/// the check on the cache's word (it said 1 to both), and the second is
/// about to decrement anyway.
fn breakpoint_before_the_second_sale(caught: &Caught<Ledger>, options: &Options, pg: SocketAddr) {
    let sku = caught.outcome.oversold()[0].clone();
    let stocked = caught.outcome.restocked[&sku];
    let shared = Shared::default();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let result = {
        let (ledger, seen, sku) = (Arc::clone(&shared), Arc::clone(&seen), sku.clone());
        last_item::replay(
            &caught.run,
            options,
            move |builder| {
                builder
                    .break_at(&break_spec(&sku))
                    .unwrap()
                    .on_break(move |hit: &BreakHit<'_>| {
                        let ledger = ledger.lock().unwrap();
                        let mut seen = seen.lock().unwrap();
                        seen.push(Seen {
                            seq: hit.seq(),
                            task: hit.task(),
                            passed_check: ledger
                                .passed_check
                                .get(&sku)
                                .cloned()
                                .unwrap_or_default(),
                            sold: ledger.sales.get(&sku).map_or(0, Vec::len),
                        });
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
    assert_eq!(seen.len(), 2, "two sales of {sku}: {seen:?}");
    let second = &seen[1];
    match result {
        Err(Error::Halted { seq, .. }) => assert_eq!(seq, second.seq),
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    assert_ne!(seen[0].task, second.task, "two requests, two tasks");
    // The state that explains it: two requests passed the check, each on
    // a cached stock of 1 unit, and at most one sale has happened.
    assert!(second.passed_check.len() >= 2, "{seen:?}");
    assert!(
        second.passed_check.iter().all(|&stock| stock == stocked),
        "both read the restocked {stocked} from the cache: {seen:?}"
    );
    assert!(second.sold < 2, "{seen:?}");

    // "Right before": the shop's next write to PostgreSQL carries it.
    let events = log_events(&caught.run);
    let pg_conn = pg_connection(&events, pg);
    assert!(
        events
            .iter()
            .any(|e| e.seq > second.seq && is_write_on(e, pg_conn)),
        "no write to PostgreSQL after the second sale's mark"
    );
    eprintln!(
        "last-item: stopped at seq {} (task {}) before the second sale of {sku}: \
         passed the check on cached stock {:?}, {} sold so far",
        second.seq, second.task, second.passed_check, second.sold
    );
}

/// The fix changes the decrement's SQL, so against the buggy recording it
/// diverges at the first write that carries a decrement: the first write
/// to PostgreSQL after the first `sell` mark.
fn fixed_shop_diverges_at_the_first_decrement(
    caught: &Caught<Ledger>,
    options: &Options,
    pg: SocketAddr,
) {
    let events = log_events(&caught.run);
    let expected = first_decrement_write(&events, pg_connection(&events, pg));
    let fixed = Options {
        fixed: true,
        ..options.clone()
    };
    let report = assert_diverges_at(
        last_item::replay(&caught.run, &fixed, quick_stall, &Shared::default()),
        expected,
    );
    assert!(
        report.contains("UPDATE items SET stock"),
        "the report shows the decrement: {report}"
    );
}

/// The id of the connection the shop opened to PostgreSQL.
fn pg_connection(events: &[Event], pg: SocketAddr) -> deja::recorder::ConnId {
    let pg = pg.to_string();
    events
        .iter()
        .find_map(|event| match &event.kind {
            EventKind::TcpConnect {
                conn,
                addr,
                result: Ok(_),
            } if *addr == pg => Some(*conn),
            _ => None,
        })
        .expect("a connection to PostgreSQL")
}

fn is_write_on(event: &Event, on: deja::recorder::ConnId) -> bool {
    matches!(&event.kind, EventKind::TcpWrite { conn, .. } if *conn == on)
}

/// The first write to PostgreSQL after the first `sell` mark: its seq and
/// task (tokio-postgres's connection task, which writes what the handlers
/// queued).
fn first_decrement_write(events: &[Event], pg_conn: deja::recorder::ConnId) -> (u64, TaskId) {
    let first_sale = events
        .iter()
        .find(|e| matches!(&e.kind, EventKind::Mark { name, .. } if name == "sell"))
        .expect("a sale");
    if let EventKind::Mark { value, .. } = &first_sale.kind {
        eprintln!(
            "last-item: first sale: {} at seq {}",
            text(value),
            first_sale.seq
        );
    }
    let write = events
        .iter()
        .find(|e| e.seq > first_sale.seq && is_write_on(e, pg_conn))
        .expect("the first decrement's write");
    (write.seq, write.task)
}

/// A fix that waits on something the log lacks stalls: call it sooner.
fn quick_stall(builder: deja::Builder) -> deja::Builder {
    builder.stall_wait(FIX_STALL_WAIT)
}

/// The replay diverged at `expected` (seq, task); its report.
fn assert_diverges_at(
    replayed: Result<deja::ReplayStats, Error>,
    expected: (u64, TaskId),
) -> String {
    let divergence = match replayed {
        Err(Error::Diverged(divergence)) => divergence,
        Err(err) => panic!("expected a divergence, got {err}"),
        Ok(stats) => panic!("the fixed code followed the buggy recording to its end: {stats:?}"),
    };
    let report = divergence.to_string();
    eprintln!("{report}");
    assert_eq!(divergence.seq(), Some(expected.0), "{report}");
    assert_eq!(divergence.task, expected.1, "{report}");
    report
}
