//! Simulation memory (issue 19): a run holds hashes, not its events. The
//! bounds are checked structurally here (events held per host
//! incarnation); peak RSS is measured by `cargo bench -p deja --bench sim`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use deja::sim::{check_determinism, Sim, Sweep, CAPTURE_BUFFER_EVENTS, CHECKPOINT_EVENTS};
use deja::time::{sleep, Duration, Instant};

/// Reads the clock `reads` times (one event each), sleeping now and
/// then, then fails.
async fn long_client(reads: usize) -> io::Result<()> {
    for i in 0..reads {
        let _ = Instant::now();
        if i % 1000 == 0 {
            sleep(Duration::from_millis(1)).await;
        }
    }
    deja::mark("done", "yes");
    Err(io::Error::other("failing on purpose"))
}

const READS: usize = 3 * CAPTURE_BUFFER_EVENTS + 17;

/// A plain `Sim::run` cannot run again, so its capture streams to disk:
/// a host holds at most `CAPTURE_BUFFER_EVENTS` events, and the log of
/// the failure has every event and replays to the same error.
#[test]
fn a_long_failing_run_streams_its_log_and_the_log_replays() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(3);
    sim.client("long", long_client(READS));
    sim.log_dir(dir.path()).quiet(true);
    let failure = sim.run().expect_err("the client fails");
    let report = &failure.report;
    assert!(report.events > READS as u64, "{report:?}");
    assert!(
        report.events_held_max > 0 && report.events_held_max <= CAPTURE_BUFFER_EVENTS as u64,
        "held {} events at once",
        report.events_held_max
    );
    assert_eq!(failure.logs.len(), 1, "{failure}");
    let logged = deja::recorder::RunReader::open(&failure.logs[0])
        .expect("the log")
        .inspect(|event| assert!(event.is_ok(), "{event:?}"))
        .count() as u64;
    assert_eq!(logged, report.hosts[0].events, "every event is in the log");
    // Nothing is left in staging: the log directory holds the log alone.
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["long-seed3"]);

    let mut runtime = deja::Builder::new()
        .mode(deja::Mode::Replay)
        .trace_dir(&failure.logs[0])
        .service("long")
        .build()
        .unwrap();
    let replayed = runtime
        .block_on(long_client(READS))
        .expect("replays to the end");
    assert!(replayed.unwrap_err().to_string().contains("on purpose"));
}

/// A run that passes keeps no logs: its spilled capture goes.
#[test]
fn a_long_passing_run_leaves_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(3);
    sim.client("long", async {
        let _ = long_client(READS).await;
    });
    let logs = dir.path().join("deja-runs");
    sim.log_dir(&logs);
    let report = sim.run().expect("passes");
    assert!(report.events > 2 * CAPTURE_BUFFER_EVENTS as u64);
    assert!(report.events_held_max <= CAPTURE_BUFFER_EVENTS as u64);
    assert!(!logs.exists(), "the log directory it made is gone");
}

/// Sweeps and determinism checks hold a factory: they run on hashes
/// alone, and a failing seed runs again to write its logs.
#[test]
fn sweeps_and_checks_hold_no_events_and_failing_seeds_still_log() {
    let report = check_determinism(5, |seed| {
        let mut sim = Sim::new(seed);
        sim.client("long", async {
            let _ = long_client(READS).await;
        });
        sim
    })
    .expect("deterministic");
    assert_eq!(report.events_held_max, 0);

    let dir = tempfile::tempdir().unwrap();
    let sweep = Sweep::new(0..2)
        .jobs(1)
        .quiet(true)
        .collect_all()
        .log_dir(dir.path())
        .run(|seed| {
            let mut sim = Sim::new(seed);
            sim.client("long", long_client(READS));
            sim
        });
    assert_eq!(sweep.failing_seeds(), [0, 1]);
    for failure in &sweep.failures {
        assert_eq!(failure.logs.len(), 1, "{failure}");
        assert!(failure.log_error.is_none(), "{failure}");
        // The rerun that wrote the logs streamed them.
        assert!(failure.report.events_held_max <= CAPTURE_BUFFER_EVENTS as u64);
        let logged = deja::recorder::RunReader::open(&failure.logs[0])
            .expect("the log")
            .count() as u64;
        assert_eq!(logged, failure.report.events);
    }
}

/// A difference far into a run (past several checkpoints) is still named
/// exactly, with the events before it, though no run kept its events.
#[test]
fn the_determinism_check_names_a_difference_past_the_first_checkpoints() {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let reads = 2 * CHECKPOINT_EVENTS as usize + 100;
    let make = move |seed| {
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let mut sim = Sim::new(seed);
        sim.client("client", async move {
            for _ in 0..reads {
                let _ = Instant::now();
            }
            // Runs 0 and 2 agree, 1 and 3 agree: the reruns differ too.
            deja::mark("run", (run % 2).to_string());
        });
        sim
    };
    let difference = check_determinism(9, make).expect_err("the mark differs");
    let text = difference.to_string();
    assert_eq!(difference.host, "client", "{text}");
    let first = difference.first.as_ref().expect("the first run's event");
    assert_eq!(first.seq as usize, difference.index);
    assert!(difference.index > 2 * CHECKPOINT_EVENTS as usize, "{text}");
    assert!(text.contains("run"), "{text}");
    assert_eq!(difference.before.len(), 5, "{text}");
    assert_eq!(
        difference.before.last().unwrap().seq as usize,
        difference.index - 1
    );
}
