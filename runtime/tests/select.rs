//! `deja::select!` picks the same branch in replay when several are ready
//! at once; `tokio::select!` (random start, unseedable without
//! `--cfg tokio_unstable`) does not.

use std::path::{Path, PathBuf};

use deja::time::Duration;
use deja::{Builder, Mode};
use tokio::sync::mpsc;

const TASKS: usize = 4;
const ROUNDS: usize = 200;

/// Every round both channels hold a message: both branches are ready and
/// the choice shows up in a mark, so a different choice is a divergence.
async fn chooser(use_tokio_select: bool) {
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        tasks.push(deja::spawn(async move {
            let (left_tx, mut left) = mpsc::unbounded_channel::<u32>();
            let (right_tx, mut right) = mpsc::unbounded_channel::<u32>();
            for round in 0..ROUNDS {
                let _ = left_tx.send(1);
                let _ = right_tx.send(2);
                let picked = if use_tokio_select {
                    #[allow(clippy::disallowed_macros)] // the point of the control
                    {
                        tokio::select! {
                            Some(v) = left.recv() => v,
                            Some(v) = right.recv() => v,
                        }
                    }
                } else {
                    deja::select! {
                        Some(v) = left.recv() => v,
                        Some(v) = right.recv() => v,
                    }
                };
                // Drain the other one so both are full again next round.
                while left.try_recv().is_ok() {}
                while right.try_recv().is_ok() {}
                deja::mark("picked", format!("{task}/{round}/{picked}"));
                if round % 50 == 0 {
                    deja::time::sleep(Duration::from_micros(100)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn record(out: &Path, use_tokio_select: bool) -> PathBuf {
    let mut runtime = Builder::new()
        .mode(Mode::Record)
        .trace_dir(out)
        .service("chooser")
        .build()
        .unwrap();
    let dir = runtime.run_dir().unwrap().to_path_buf();
    runtime.block_on(chooser(use_tokio_select)).unwrap();
    dir
}

fn replay(dir: &Path, use_tokio_select: bool) -> Result<deja::ReplayStats, deja::Error> {
    let mut runtime = Builder::new()
        .mode(Mode::Replay)
        .trace_dir(dir)
        .service("chooser")
        .stall_wait(Duration::from_millis(100))
        .build()?;
    runtime.block_on(chooser(use_tokio_select))?;
    Ok(runtime.replay_stats().unwrap())
}

#[test]
fn deja_select_replays_identically_50_times() {
    let out = tempfile::tempdir().unwrap();
    let dir = record(out.path(), false);
    let first = replay(&dir, false).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(first.events, first.log_events);
    assert!(first.events as usize > TASKS * ROUNDS);
    for run in 1..50 {
        let again = replay(&dir, false).unwrap_or_else(|err| panic!("replay {run}: {err}"));
        assert_eq!(again, first, "replay {run}");
    }
}

#[test]
fn tokio_select_is_caught_as_a_divergence() {
    let out = tempfile::tempdir().unwrap();
    let dir = record(out.path(), true);
    // 800 coin flips per replay: matching the recording by chance is out
    // of the question, and the mismatch must be reported, not replayed.
    let err = replay(&dir, true).expect_err("tokio::select! cannot replay");
    let deja::Error::Diverged(divergence) = err else {
        panic!("expected a divergence, got {err}")
    };
    assert!(
        divergence.to_string().contains("mark picked"),
        "{divergence}"
    );
}

#[test]
fn select_follows_tokio_semantics() {
    let mut runtime = Builder::new().build().unwrap();
    runtime
        .block_on(async {
            // A false condition disables a branch; all disabled runs `else`.
            let ready = std::future::ready(1);
            let picked = deja::select! {
                v = ready, if false => v,
                else => 99,
            };
            assert_eq!(picked, 99);

            // An output that does not match its pattern disables the branch.
            let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
            drop(tx);
            let picked = deja::select! {
                Some(v) = rx.recv() => v,
                v = async { deja::time::sleep(Duration::from_millis(1)).await; 5 } => v,
            };
            assert_eq!(picked, 5);

            // Fair: with three ready branches, each wins sometimes.
            let mut wins = [0u32; 3];
            for _ in 0..300 {
                let branch = deja::select! {
                    a = std::future::ready(0usize) => a,
                    b = std::future::ready(1usize) => b,
                    c = std::future::ready(2usize) => { c }
                };
                wins[branch] += 1;
            }
            assert!(wins.iter().all(|w| *w > 50), "{wins:?}");
        })
        .unwrap();
}
