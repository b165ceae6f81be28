//! Regression (issue 17, found with tokio-postgres): a `tokio::spawn`ed
//! task whose first poll is a read that is not ready yet.
//!
//! Recording logs nothing for a pending read, so such a task is adopted
//! later, at its first recorded event. Replay used to adopt it at that
//! first poll, taking the next recorded adoption, which belonged to
//! another task (whose entropy then came from the root seed, with no
//! divergence reported). Replay now keeps such a task on a provisional id
//! until one of its calls matches a recorded task's first event
//! (`Replay::try_resolve`).
//!
//! This is the shape of tokio-postgres's `Connection` future spawned with
//! `tokio::spawn` (it polls its socket first), next to tasks that draw
//! `rand::rng()` or read the clock.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;
use common::on_fresh_thread;

use std::io;
use std::sync::{Arc, Mutex};

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream};
use deja::{Builder, Mode};

/// What the drawer drew and the reader read.
type Seen = Arc<Mutex<Option<(u64, Vec<u8>)>>>;

/// Task A reads first (nothing there yet); task B, spawned after A has
/// polled, draws thread-RNG entropy; then main sends A its bytes.
async fn service(out: Seen) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut client = TcpStream::connect(addr).await?;
    let (mut server, _) = listener.accept().await?;
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await?;
        Ok::<Vec<u8>, io::Error>(buf.to_vec())
    });
    // A polls once: its read is pending.
    tokio::task::yield_now().await;
    let drawer = tokio::spawn(async {
        use rand::Rng;
        rand::rng().random::<u64>()
    });
    let drawn = drawer.await.expect("drawer");
    server.write_all(b"ping").await?;
    let read = reader.await.expect("reader")?;
    *out.lock().unwrap() = Some((drawn, read));
    Ok(())
}

#[test]

fn a_task_whose_first_poll_is_a_pending_read_keeps_its_recorded_id() {
    let out = tempfile::tempdir().expect("tempdir");
    let out_path = out.path().to_path_buf();
    let (dir, recorded) = on_fresh_thread(move || {
        let seen = Arc::new(Mutex::new(None));
        let mut runtime = Builder::new()
            .mode(Mode::Record)
            .trace_dir(&out_path)
            .service("adoption")
            .build()
            .expect("record runtime");
        let dir = runtime.run_dir().expect("run dir").to_path_buf();
        runtime
            .block_on(service(Arc::clone(&seen)))
            .expect("recorded run")
            .expect("service");
        let recorded = seen.lock().unwrap().take().expect("recorded values");
        (dir, recorded)
    });
    let (result, replayed) = on_fresh_thread(move || {
        let seen = Arc::new(Mutex::new(None));
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service("adoption")
            .stall_wait(std::time::Duration::from_millis(300))
            .build()
            .expect("replay runtime");
        let result = runtime.block_on(service(Arc::clone(&seen))).map(|_| ());
        let replayed = seen.lock().unwrap().take();
        (result, replayed)
    });
    if let Err(err) = &result {
        panic!("replay failed: {err}");
    }
    assert_eq!(
        replayed,
        Some(recorded),
        "the replayed task drew other entropy than the recorded one"
    );
}

/// Main sleeps on tokio's timer, then writes: the replayed code sleeps
/// longer than the recorded one did.
async fn sleeper(sleep_ms: u64) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut client = TcpStream::connect(addr).await?;
    let (_server, _) = listener.accept().await?;
    tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)).await;
    client.write_all(b"late").await?;
    Ok(())
}

/// Record `sleeper(2)`, replay `sleeper(replay_ms)`: the replay's outcome,
/// or `None` if it did not end within 10 s.
fn replay_a_longer_sleep(replay_ms: u64) -> Option<Result<(), String>> {
    let out = tempfile::tempdir().expect("tempdir");
    let out_path = out.path().to_path_buf();
    let dir = on_fresh_thread(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Record)
            .trace_dir(&out_path)
            .service("sleeper")
            .build()
            .expect("record runtime");
        let dir = runtime.run_dir().expect("run dir").to_path_buf();
        runtime
            .block_on(sleeper(2))
            .expect("recorded run")
            .expect("service");
        dir
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // Not joined: a replay that never ends is the bug.
    std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service("sleeper")
            .stall_wait(std::time::Duration::from_millis(300))
            .build()
            .expect("replay runtime");
        let result = runtime.block_on(sleeper(replay_ms)).map(|_| ());
        let _ = done_tx.send(result.map_err(|err| err.to_string()));
    });
    let outcome = done_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .ok();
    drop(out);
    outcome
}

/// Far past the recorded write: the runtime parks longer than the stall
/// wait, and the watchdog reports it.
#[test]
fn a_tokio_timer_due_long_after_the_next_event_is_reported() {
    match replay_a_longer_sleep(3_000) {
        Some(Err(report)) => assert!(report.contains("no task can make progress"), "{report}"),
        other => panic!("expected a stall report, got {other:?}"),
    }
}

#[test]

fn a_tokio_timer_due_just_after_the_next_event_is_reported() {
    match replay_a_longer_sleep(10) {
        Some(Err(report)) => assert!(report.contains("no task can make progress"), "{report}"),
        other => panic!("expected a stall report within 10 s, got {other:?}"),
    }
}
