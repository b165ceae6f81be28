//! Reproduction (found by the axum-shop end-to-end test): a replay that
//! stalls while some task has a `tokio::time` timer pending hangs for
//! ever instead of reporting the stall.
//!
//! Replay's clock is virtual: when the runtime idles, virtual time moves
//! to the next logged event's time (`Replay::idle`), never further. A
//! tokio timer whose deadline lies beyond that never fires, so tokio
//! parks with a real timeout of (deadline - virtual now), wakes, finds
//! the time unchanged and parks again, over and over. Every wake-up
//! resets the stall watchdog (`StallWatch`), which only reports a park
//! that lasts the whole `stall_wait`: the replay sleeps in
//! `epoll_wait` for ever. axum-shop hangs this way (tower-http's
//! `TimeoutLayer` and hyper-util's timers are pending) whenever its
//! replay stalls.
//!
//! The service: a library-style heartbeat (`tokio::time::sleep` in a
//! loop, in a `tokio::spawn`ed task that makes no other call), and a main
//! that writes to a connection. The replay is made to stall on purpose:
//! main first waits on a channel nobody sends on (a task blocked on
//! something deja does not record). Without the heartbeat the replay
//! reports the stall within `stall_wait`; with it, it never returns.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream};
use deja::{Builder, Error, Mode};

/// How long the test waits for the replay to come back.
const REPLAY_LIMIT: Duration = Duration::from_secs(10);

async fn service(heartbeat: bool, blocked: bool) -> io::Result<()> {
    if heartbeat {
        tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = deja::spawn(async move {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = [0u8; 16];
        let n = conn.read(&mut buf).await?;
        Ok::<_, io::Error>(buf[..n].to_vec())
    });
    let mut conn = TcpStream::connect(addr).await?;
    if blocked {
        // Blocked on something deja does not record: the replay stalls.
        let (_never, wait) = tokio::sync::oneshot::channel::<()>();
        let _ = wait.await;
    }
    conn.write_all(b"hello\n").await?;
    let got = server.await.expect("server")?;
    assert_eq!(got, b"hello\n");
    Ok(())
}

fn record(out: &Path, heartbeat: bool) -> PathBuf {
    let out = out.to_path_buf();
    std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Record)
            .trace_dir(&out)
            .service("stall-timer")
            .build()
            .expect("record runtime");
        let dir = runtime.run_dir().expect("run dir").to_path_buf();
        runtime
            .block_on(service(heartbeat, false))
            .expect("recorded run")
            .expect("the service works");
        dir
    })
    .join()
    .expect("record thread")
}

/// Replays with main blocked; `None` if the replay did not come back
/// within `REPLAY_LIMIT` (its thread is left behind).
fn replay_blocked(dir: &Path, heartbeat: bool) -> Option<Result<(), Error>> {
    let dir = dir.to_path_buf();
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service("stall-timer")
            .stall_wait(Duration::from_millis(300))
            .build()
            .expect("replay runtime");
        let outcome = runtime
            .block_on(service(heartbeat, true))
            .map(|result| result.expect("the service works"));
        let _ = done.send(outcome);
    });
    result.recv_timeout(REPLAY_LIMIT).ok()
}

fn assert_reports_the_stall(heartbeat: bool) {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = record(out.path(), heartbeat);
    match replay_blocked(&dir, heartbeat) {
        Some(Err(Error::Diverged(divergence))) => {
            let text = divergence.to_string();
            assert!(text.contains("no task can make progress"), "{text}");
        }
        Some(other) => panic!("expected a stall report, got {other:?}"),
        None => panic!(
            "the replay stalled and hung: no report within {REPLAY_LIMIT:?} (stall_wait is 300 ms)"
        ),
    }
}

#[test]
fn a_stall_is_reported() {
    assert_reports_the_stall(false);
}

#[test]
fn a_stall_is_reported_while_a_tokio_timer_is_pending() {
    assert_reports_the_stall(true);
}
