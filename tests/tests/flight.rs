//! The flight recorder: a run longer than the ring keeps only its most
//! recent window; SIGUSR2, a panic and `deja::flight::keep()` each freeze
//! a window; a window that holds the start replays to its end, one that
//! does not is refused with what it refers to from before it.
//!
//! One test per process step: signals and the panic hook are process-wide.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deja::recorder::writer::flight::FlightWindow;
use deja::{Builder, Error, Mode};
use deja_recorder::{EventKind, RunReader};
use deja_tests::e2e::{run_bounded, workspace_bin};

/// Bytes of each mark: incompressible, so the ring fills at a known rate.
const MARK_BYTES: usize = 4096;
/// How long to wait for a window frozen by a signal.
const SIGNAL_WAIT: Duration = Duration::from_secs(10);

fn noise(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..MARK_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// `count` marks from `tasks` spawned tasks (each with a clock reading).
async fn churn(from: u64, count: u64) {
    let mut handles = Vec::new();
    for task in 0..4 {
        handles.push(deja::spawn(async move {
            for i in (from + task..from + count).step_by(4) {
                deja::mark("blob", noise(i));
                let _ = deja::time::Instant::now();
            }
        }));
    }
    for handle in handles {
        handle.await.expect("churn task");
    }
}

fn kept_windows(out: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("-kept"))
        .collect();
    dirs.sort();
    dirs
}

fn wait_for_windows(out: &Path, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + SIGNAL_WAIT;
    loop {
        let dirs = kept_windows(out);
        if dirs.len() >= n && dirs.iter().all(|d| d.join("flight.json").is_file()) {
            return dirs;
        }
        assert!(
            Instant::now() < deadline,
            "no window kept within {SIGNAL_WAIT:?}: {dirs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn events_of(dir: &Path) -> Vec<deja_recorder::Event> {
    RunReader::open(dir)
        .unwrap()
        .collect::<Result<_, _>>()
        .expect("a kept window reads back")
}

#[test]
fn the_flight_recorder_keeps_windows_on_api_signal_and_panic() {
    let out = tempfile::tempdir().unwrap();
    let mut runtime = Builder::new()
        .mode(Mode::Record)
        .trace_dir(out.path())
        .service("flighty")
        .worker_threads(2)
        .flight(1)
        .build()
        .expect("record runtime");
    let ring = runtime.run_dir().unwrap().to_path_buf();
    assert!(ring.to_string_lossy().ends_with(".flight"), "{ring:?}");
    let out_dir = out.path().to_path_buf();
    let first_kept = std::sync::Arc::new(std::sync::Mutex::new(None));
    let first_slot = std::sync::Arc::clone(&first_kept);
    runtime
        .block_on(async move {
            // ~4 MiB through a 1 MiB ring.
            churn(0, 1000).await;
            let first = deja::flight::keep().expect("keep");
            churn(1000, 200).await;
            // SIGUSR2: the window appears without the service doing anything.
            unsafe { libc::raise(libc::SIGUSR2) };
            let deadline = deja::time::Instant::now() + SIGNAL_WAIT;
            while kept_windows(&out_dir).len() < 2 && deja::time::Instant::now() < deadline {
                deja::time::sleep(Duration::from_millis(20)).await;
            }
            churn(1200, 200).await;
            // A panicking task freezes a window before it unwinds.
            let panicked = deja::spawn(async { panic!("boom (expected by the test)") }).await;
            assert!(panicked.is_err());
            *first_slot.lock().unwrap() = Some(first);
        })
        .expect("the service runs to its end");
    let kept = first_kept.lock().unwrap().clone().expect("kept by the API");

    assert!(!ring.exists(), "a clean exit deletes the ring");
    let windows = wait_for_windows(out.path(), 3);
    assert_eq!(windows.len(), 3, "{windows:?}");
    assert_eq!(windows[0], kept);
    let mut last_end = 0;
    for (dir, reason) in windows.iter().zip(["api", "signal", "panic"]) {
        let window = FlightWindow::read(dir).unwrap().expect("flight.json");
        assert_eq!(window.reason, reason);
        assert!(!window.holds_the_start(), "the ring wrapped: {window:?}");
        let events = events_of(dir);
        let bytes: u64 = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        // Only the window: at most the ring plus the open segment.
        assert!(bytes <= (1 << 20) + (256 << 10), "{dir:?}: {bytes} bytes");
        assert!(events.len() > 100, "{dir:?} holds a real window");
        assert_eq!(events[0].seq, window.first_seq);
        assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let end = events.last().unwrap().seq;
        assert!(end > last_end, "later windows end later");
        last_end = end;
    }
    // The panic window ends at or after the panicking task's start.
    let panic_events = events_of(&windows[2]);
    assert!(panic_events
        .iter()
        .any(|e| matches!(e.kind, EventKind::Spawn { .. })));

    // Replaying a window that starts mid-run is refused, clearly.
    let err = Builder::new()
        .mode(Mode::Replay)
        .trace_dir(&windows[0])
        .service("flighty")
        .build()
        .expect_err("a mid-run window cannot be re-executed");
    let text = err.to_string();
    assert!(
        matches!(err, Error::FlightWindow { first_seq, .. } if first_seq > 0),
        "{text}"
    );
    assert!(
        text.contains("flight-recorder window that starts at seq"),
        "{text}"
    );
    assert!(
        text.contains("tasks and") && text.contains("began before it"),
        "{text}"
    );
    assert!(text.contains("task "), "names the tasks: {text}");

    // deja stats says what the window is.
    let stats = run_bounded(
        std::process::Command::new(workspace_bin("deja"))
            .arg("stats")
            .arg(&windows[1]),
    );
    let stdout = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.status.success(), "{stdout}");
    assert!(
        stdout.contains("flight window") && stdout.contains("kept on signal; starts at seq"),
        "{stdout}"
    );
}
