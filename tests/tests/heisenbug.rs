//! Every heisenbug fixture, caught in a recording and explained in
//! replay: one test per row of `deja_tests::heisenbugs!`.
//!
//! Per row, [`Trial::run`] records the service under its load until the
//! planted bug shows (at most `Heisenbug::ATTEMPTS_MAX` attempts; how many
//! it took is printed), replays the recording 20 times, replays it to the
//! breakpoint right before the faulty operation with a callback that reads
//! the service's state, and replays the fixed service against it. A row
//! whose fixture runs on real servers (`Heisenbug::REPLAY_OFFLINE`:
//! last-item) makes its 20 replays, and one more of the fixed service, as
//! `deja replay` processes under `unshare --net` with the servers stopped
//! (`deja_tests::heisenbug::replays_offline`). This
//! file asserts what every heisenbug must show; the fixture's `Heisenbug`
//! impl (`deja_fixtures::NAME::explain`) checks what only it can say.

use deja_fixtures::heisenbug::{Heisenbug, Trial, REPLAYS};
use deja_tests::heisenbug::{fixed_offline, replays_offline};

/// One `#[test]` per row: a failure names its bug, and the rows run in
/// parallel.
macro_rules! trials {
    ($($test:ident: $fixture:ty,)*) => {
        $(
            #[test]
            fn $test() {
                caught_replayed_and_explained::<$fixture>();
            }
        )*
    };
}

deja_tests::heisenbugs!(trials);

fn caught_replayed_and_explained<H: Heisenbug>() {
    if let Err(why) = H::available() {
        eprintln!("SKIPPED {}: {why}", H::NAME);
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let trial = match H::REPLAY_OFFLINE {
        true => Trial::<H>::run_with(out.path(), replays_offline::<H>),
        false => Trial::<H>::run(out.path()),
    }
    .unwrap_or_else(|err| panic!("{}: {err:#}", H::NAME));
    let fail = |what: &str, err: anyhow::Error| -> ! { panic!("{}: {what}: {err:#}", H::NAME) };
    let Trial {
        caught,
        events,
        replays,
        stop,
        fixed,
    } = &trial;
    assert!(caught.attempts <= H::ATTEMPTS_MAX);

    // 20 replays out of 20 give the same wrong result and the same digest
    // (the trial compared each with the first). In-process, the ledger is
    // the recorded one; as processes, each replay's `serve` said what the
    // recording's ledger says.
    assert_eq!(replays.times, REPLAYS);
    if let Some(ledger) = &replays.ledger {
        assert_eq!(
            ledger, &caught.outcome.ledger,
            "replay gives the recorded ledger"
        );
    }
    assert_eq!(replays.summary, H::summary(&caught.outcome.ledger));
    assert_eq!(replays.verdict, Some(caught.bug.clone()));
    H::check_replayed(caught, replays.ledger.as_ref()).unwrap_or_else(|err| fail("replayed", err));

    // The callback stopped the replay at the hit right before the faulty
    // operation, and saw the state that explains the bug.
    assert_eq!(
        stop.hits.len(),
        stop.at.stop_at_hit,
        "hits of `{}`: {:?}",
        stop.at.spec,
        stop.hits
    );
    let last = stop.hits.last().expect("at least one hit");
    match &stop.result {
        Err(deja::Error::Halted { seq, .. }) => assert_eq!(*seq, last.seq),
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    H::check_stop(&stop.at.focus, &stop.hits, events)
        .unwrap_or_else(|err| fail("at the breakpoint", err));

    // The fixed service diverges at the seq computed from the log.
    let divergence = match &fixed.result {
        Err(deja::Error::Diverged(divergence)) => divergence,
        Err(err) => panic!("expected a divergence, got {err}"),
        Ok(stats) => panic!("the fixed code followed the buggy recording to its end: {stats:?}"),
    };
    let report = divergence.to_string();
    eprintln!("{report}");
    assert_eq!(divergence.seq(), Some(fixed.expected.0), "{report}");
    assert_eq!(divergence.task, fixed.expected.1, "{report}");
    H::check_divergence(&report, fixed.expected).unwrap_or_else(|err| fail("the divergence", err));

    // And offline, as a process, at the same seq.
    if H::REPLAY_OFFLINE {
        let report = fixed_offline(caught, fixed.expected)
            .unwrap_or_else(|err| fail("the fix replayed offline", err));
        H::check_divergence(&report, fixed.expected)
            .unwrap_or_else(|err| fail("the divergence offline", err));
    }
}
