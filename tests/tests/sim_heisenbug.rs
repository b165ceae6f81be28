//! The heisenbugs found by simulation: a sweep over a bounded range of
//! seeds finds a seed that breaks the fixture's invariant, the failing
//! seed's log of the service replays in-process to the bug (a breakpoint
//! on the faulty operation sees the state that explains it), the seed is
//! deterministic, and the fixed service passes every seed.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use deja::debug::{BreakHit, Resume};
use deja::sim::{FailureKind, Sim, SimFailure, Sweep, SweepReport};
use deja::{Error, ReplayStats};
use deja_fixtures::heisenbug::ignore_ready;
use deja_fixtures::{double_charge, lost_update};
use deja_tests::e2e::{run_bounded, workspace_bin};

/// Seeds every sweep runs: about two in five fail for either fixture, so
/// a miss over 40 seeds does not happen (and the seeds are fixed: the
/// simulation is deterministic).
const SEEDS: Range<u64> = 0..40;
/// Replays of the failing seed's log that must agree.
const REPLAYS: u32 = 5;

/// Sweep `SEEDS` of `make` (every seed, so the test sees passing seeds
/// too), logs under `logs`; prints the speed.
fn sweep(name: &str, logs: &Path, make: impl Fn(u64) -> Sim + Sync) -> SweepReport {
    let report = Sweep::new(SEEDS)
        .jobs(2)
        .progress(false)
        .collect_all()
        .log_dir(logs)
        .run(make);
    eprintln!(
        "{name}: {} seeds in {:.2}s ({:.1} seeds/s), failing seeds {:?}",
        report.seeds_run,
        report.wall_time.as_secs_f64(),
        report.seeds_per_second(),
        report.failing_seeds()
    );
    assert_eq!(report.seeds_run, SEEDS.end - SEEDS.start);
    report
}

/// The first failing seed of a buggy sweep: it broke the named invariant
/// (not a deadlock, a crash or a time limit), and some seeds passed.
fn first_failure<'a>(report: &'a SweepReport, invariant: &str) -> (&'a SimFailure, String) {
    let failure = report.first_failure().expect("a seed that shows the bug");
    assert!(
        report.failures.len() < SEEDS.end as usize - SEEDS.start as usize,
        "every seed failed: the load hides the seeds that pass"
    );
    match &failure.kind {
        FailureKind::Invariant { name, message } if name == invariant => (failure, message.clone()),
        other => panic!("seed {} failed otherwise: {other}", failure.seed),
    }
}

/// The number after `word ` in `message` (`order 2 charged ...`).
fn number_after(message: &str, word: &str) -> u32 {
    message
        .split_once(&format!("{word} "))
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {word} named in {message:?}"))
}

/// The failing seed's log of `host`, which the failure lists.
fn host_log(failure: &SimFailure, logs: &Path, host: &str) -> PathBuf {
    let run = logs.join(format!("{host}-seed{}", failure.seed));
    assert!(failure.logs.contains(&run), "{:?}", failure.logs);
    run
}

/// Replay `run` of simulated host `host` in-process with `service`; the
/// result (a log cut when the simulation ended replays to
/// `RecordingEnded`) and the replay's figures.
fn replay_host<S>(
    run: &Path,
    host: &str,
    configure: impl FnOnce(deja::Builder) -> deja::Builder,
    service: S,
) -> (Result<std::io::Result<()>, Error>, ReplayStats)
where
    S: std::future::Future<Output = std::io::Result<()>>,
{
    let builder = deja::Builder::new()
        .mode(deja::Mode::Replay)
        .trace_dir(run)
        .service(host);
    let mut runtime = configure(builder).build().expect("a replay runtime");
    let result = runtime.block_on(service);
    let stats = runtime.replay_stats().expect("a replay has figures");
    (result, stats)
}

/// The replay followed the whole log: the service returned, or the log
/// ended where the simulation stopped.
fn assert_replayed(result: &Result<std::io::Result<()>, Error>) {
    match result {
        Ok(_) | Err(Error::RecordingEnded { .. }) => {}
        Err(err) => panic!("the replay did not follow the log: {err}"),
    }
}

/// The seed runs the same twice: same digest as the sweep saw.
fn assert_deterministic(failure: &SimFailure, make: impl Fn(u64) -> Sim + Sync) {
    for _ in 0..2 {
        let mut sim = make(failure.seed);
        sim.write_logs(false).quiet(true);
        let again = sim.run().expect_err("the failing seed fails again");
        assert_eq!(again.kind, failure.kind);
        assert_eq!(again.report.digest, failure.report.digest);
    }
    deja::sim::check_determinism(failure.seed, make).unwrap_or_else(|diff| panic!("{diff}"));
}

/// The fixed service passes every seed of the sweep.
fn assert_fixed_passes(name: &str, logs: &Path, make: impl Fn(u64) -> Sim + Sync) {
    let fixed = sweep(name, logs, make);
    assert!(
        fixed.failures.is_empty(),
        "the fix failed: {}",
        fixed.summary()
    );
}

#[test]
fn a_sweep_finds_the_double_charge_and_its_checkout_log_replays_to_it() {
    let logs = tempfile::tempdir().unwrap();
    let report = sweep("double-charge sim", logs.path(), |seed| {
        double_charge::sim(seed, false)
    });
    let (failure, message) = first_failure(&report, "no order charged twice");
    let order = number_after(&message, "order");
    eprintln!("double-charge: seed {}: {message}", failure.seed);
    let run = host_log(failure, logs.path(), double_charge::SERVICE);
    let options = double_charge::sim_options(false);

    // Replayed, both requests for the order get past the unpaid check
    // (the simulation stopped when payment booked the second charge, before
    // checkout heard of it), with the same ledger and digest every time.
    let mut replayed = Vec::new();
    for _ in 0..REPLAYS {
        let shared = double_charge::Shared::default();
        let (result, stats) = replay_host(&run, double_charge::SERVICE, |b| b, {
            double_charge::checkout(options.clone(), Arc::clone(&shared), ignore_ready())
        });
        assert_replayed(&result);
        let ledger = shared.lock().unwrap().clone();
        assert_eq!(ledger.past_unpaid_check.get(&order), Some(&2), "{ledger:?}");
        replayed.push((ledger, stats.digest, stats.events));
    }
    assert!(replayed.windows(2).all(|r| r[0] == r[1]), "{replayed:?}");

    // A breakpoint before each charge of the order: at the second one
    // both requests are past the unpaid check, and neither charge is in.
    let spec = format!("mark=charging:{order},kind=mark");
    let shared = double_charge::Shared::default();
    let seen: Arc<Mutex<Vec<(u64, u32, usize)>>> = Arc::default();
    let (result, _) = {
        let (ledger, seen) = (Arc::clone(&shared), Arc::clone(&seen));
        replay_host(
            &run,
            double_charge::SERVICE,
            move |builder| {
                builder
                    .break_at(&spec)
                    .unwrap()
                    .on_break(move |hit: &BreakHit<'_>| {
                        let ledger = ledger.lock().unwrap();
                        let mut seen = seen.lock().unwrap();
                        seen.push((
                            hit.seq(),
                            ledger.past_unpaid_check.get(&order).copied().unwrap_or(0),
                            ledger.charges.get(&order).map_or(0, Vec::len),
                        ));
                        if seen.len() == 2 {
                            Resume::Stop
                        } else {
                            Resume::Continue
                        }
                    })
            },
            double_charge::checkout(options.clone(), Arc::clone(&shared), ignore_ready()),
        )
    };
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "two charges of order {order}: {seen:?}");
    let (seq, past_check, charged) = seen[1];
    match result {
        Err(Error::Halted { seq: stopped, .. }) => assert_eq!(stopped, seq),
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    assert_eq!(past_check, 2, "both requests read UNPAID: {seen:?}");
    assert!(charged <= 1, "{seen:?}");

    assert_deterministic(failure, |seed| double_charge::sim(seed, false));
    assert_fixed_passes("double-charge sim --fixed", logs.path(), |seed| {
        double_charge::sim(seed, true)
    });
}

/// At a `withdraw` mark: its seq, then the account's writes and reads.
type WithdrawHit = (u64, Vec<lost_update::Write>, Vec<u64>);

#[test]
fn a_sweep_finds_the_lost_update_and_its_account_log_replays_to_it() {
    let logs = tempfile::tempdir().unwrap();
    let report = sweep("lost-update sim", logs.path(), |seed| {
        lost_update::sim(seed, false)
    });
    let (failure, message) = first_failure(&report, "no lost withdrawal");
    let account = number_after(&message, "account");
    eprintln!("lost-update: seed {}: {message}", failure.seed);
    let run = host_log(failure, logs.path(), lost_update::SERVICE);
    let options = lost_update::sim_options(false);

    // Replayed, two withdrawals on the account read the same balance,
    // with the same ledger and digest every time.
    let mut replayed = Vec::new();
    for _ in 0..REPLAYS {
        let shared = lost_update::Shared::default();
        let (result, stats) = replay_host(&run, lost_update::SERVICE, |b| b, {
            lost_update::account(options.clone(), Arc::clone(&shared), ignore_ready())
        });
        assert_replayed(&result);
        let ledger = shared.lock().unwrap().clone();
        let stale: Vec<u32> = ledger.stale_writes().iter().map(|s| s.account).collect();
        assert_eq!(stale, vec![account], "{ledger:?}");
        replayed.push((ledger, stats.digest, stats.events));
    }
    assert!(replayed.windows(2).all(|r| r[0] == r[1]), "{replayed:?}");

    // A breakpoint before each write of the account; the callback stops
    // at the first one whose withdrawal read a balance another withdrawal
    // already wrote back reduced: the write that erases it.
    let spec = format!("mark=withdraw:{account},kind=mark");
    let shared = lost_update::Shared::default();
    let seen: Arc<Mutex<Vec<WithdrawHit>>> = Arc::default();
    let (result, _) = {
        let (ledger, seen) = (Arc::clone(&shared), Arc::clone(&seen));
        replay_host(
            &run,
            lost_update::SERVICE,
            move |builder| {
                builder
                    .break_at(&spec)
                    .unwrap()
                    .on_break(move |hit: &BreakHit<'_>| {
                        let ledger = ledger.lock().unwrap();
                        let writes = ledger.writes.get(&account).cloned().unwrap_or_default();
                        let reads = ledger.reads.get(&account).cloned().unwrap_or_default();
                        let stale = writes.windows(2).any(|w| w[0].read == w[1].read);
                        seen.lock().unwrap().push((hit.seq(), writes, reads));
                        if stale {
                            Resume::Stop
                        } else {
                            Resume::Continue
                        }
                    })
            },
            lost_update::account(options.clone(), Arc::clone(&shared), ignore_ready()),
        )
    };
    let seen = seen.lock().unwrap().clone();
    let (seq, writes, reads) = seen.last().cloned().expect("the breakpoint hit");
    match result {
        Err(Error::Halted { seq: stopped, .. }) => assert_eq!(stopped, seq),
        other => panic!("expected the callback's stop at the stale write, got {other:?}: {seen:?}"),
    }
    assert!(seen.len() >= 2, "an earlier write of the account: {seen:?}");
    // The state that explains the bug: two GETs returned the same balance
    // and both withdrawals write `balance - amount` back.
    let balance = writes
        .windows(2)
        .find(|w| w[0].read == w[1].read)
        .map(|w| w[0].read)
        .expect("two writes from one read");
    assert!(
        reads.iter().filter(|read| **read == balance).count() >= 2,
        "{reads:?}"
    );

    assert_deterministic(failure, |seed| lost_update::sim(seed, false));
    assert_fixed_passes("lost-update sim --fixed", logs.path(), |seed| {
        lost_update::sim(seed, true)
    });
}

#[test]
fn double_charge_sim_fails_its_seed_as_a_process_and_deja_replay_breaks_in_checkout() {
    // The seed, found in-process: the binary runs the same simulation.
    let scratch = tempfile::tempdir().unwrap();
    let report = sweep("double-charge sim", scratch.path(), |seed| {
        double_charge::sim(seed, false)
    });
    let (failure, message) = first_failure(&report, "no order charged twice");
    let order = number_after(&message, "order");
    let passing = SEEDS
        .clone()
        .find(|seed| !report.failing_seeds().contains(seed))
        .expect("a passing seed");

    let logs = tempfile::tempdir().unwrap();
    let sim = |seed: u64| {
        run_bounded(
            Command::new(workspace_bin("double-charge"))
                .arg("sim")
                .env("DEJA_SEED", seed.to_string())
                .env("DEJA_TRACE", logs.path())
                .env_remove("DEJA_MODE"),
        )
    };
    let passed = sim(passing);
    let stdout = String::from_utf8_lossy(&passed.stdout).into_owned();
    assert_eq!(passed.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("deja sim: seed {passing} passed")),
        "{stdout}"
    );

    let failed = sim(failure.seed);
    let stderr = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("reproduce:"), "{stderr}");
    assert!(stderr.contains(&message), "{stderr}");

    let run = logs
        .path()
        .join(format!("{}-seed{}", double_charge::SERVICE, failure.seed));
    let spec = format!("mark=charging:{order},kind=mark");
    let replay = run_bounded(
        Command::new(workspace_bin("deja"))
            .arg("replay")
            .arg(&run)
            .args(["--on-break", "print", "--break", &spec]),
    );
    let stderr = String::from_utf8_lossy(&replay.stderr).into_owned();
    assert_eq!(replay.status.code(), Some(0), "{stderr}");
    let hits = stderr.matches("deja: breakpoint 1 ").count();
    assert!(hits >= 2, "both charges of order {order} stop: {stderr}");
    eprintln!("deja replay {}: {hits} hits of `{spec}`", run.display());
}

#[test]
fn deja_sim_sweeps_the_double_charge_binary_to_the_same_failing_seed() {
    let scratch = tempfile::tempdir().unwrap();
    let report = sweep("double-charge sim (in-process)", scratch.path(), |seed| {
        double_charge::sim(seed, false)
    });
    let lowest = report.failing_seeds()[0];

    let logs = tempfile::tempdir().unwrap();
    let swept = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["sim", "--seeds", "40", "--jobs", "2", "--out"])
            .arg(logs.path())
            .arg("--")
            .arg(workspace_bin("double-charge"))
            .arg("sim"),
    );
    let stderr = String::from_utf8_lossy(&swept.stderr).into_owned();
    assert_eq!(swept.status.code(), Some(1), "{stderr}");
    // Two jobs may both fail before stopping; the lowest failing seed
    // is the one the in-process sweep found first.
    assert!(
        stderr.contains(&format!("deja sim: seed {lowest} failed (exit code 1)")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("rerun: deja sim --seed {lowest} -- ")),
        "{stderr}"
    );
    let checkout = logs
        .path()
        .join(format!("{}-seed{lowest}", double_charge::SERVICE));
    assert!(checkout.join("00000000.deja").exists(), "{stderr}");
}
