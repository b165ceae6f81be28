//! Reproduction (found by the `last-item` fixture): sockets that become
//! ready in one turn of tokio's driver wake their tasks together, and the
//! tasks *those* wake run after all of them. A connection shared by
//! several handlers (a pipelined PostgreSQL or Redis client) then writes
//! the requests of one batch in one write. Replay used to release one
//! read at a time and run everything it woke before the next, so the
//! shared writer ran after the first handler alone and wrote a shorter
//! batch: "writes other bytes". Replay now turns its driver where the
//! recording's turned (`driver_turn` events) and wakes the batch's
//! readers together, in the recording's order.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;
use common::{record_with, replay_with};

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Upstream connections that answer in the same instant.
const READERS: usize = 3;
/// Replays of one recording.
const REPLAYS: usize = 10;
/// How long the service keeps its thread busy while the peer answers.
const BUSY: std::time::Duration = std::time::Duration::from_millis(200);
/// Recordings tried until the three answers land in one turn (a peer
/// thread that the machine's load keeps off a core past [`BUSY`] splits
/// them; the test is about the batch).
const RECORDINGS_MAX: usize = 3;

/// The peer, outside deja: on `go` from the control connection it writes
/// one byte to each upstream connection back to back, then collects what
/// the shared connection receives until it closes.
fn peer() -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let accept = || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            stream
        };
        let mut control = accept();
        let mut upstreams: Vec<_> = (0..READERS).map(|_| accept()).collect();
        let mut shared = accept();
        let mut go = [0u8; 1];
        control.read_exact(&mut go).unwrap();
        for (index, upstream) in upstreams.iter_mut().enumerate() {
            upstream.write_all(&[b'a' + index as u8]).unwrap();
        }
        let mut received = Vec::new();
        let _ = shared.read_to_end(&mut received);
        received
    });
    (port, thread)
}

async fn service(port: u16, written: Arc<Mutex<Vec<String>>>) -> io::Result<()> {
    let addr = format!("127.0.0.1:{port}");
    let mut control = TcpStream::connect(addr.as_str()).await?;
    let mut upstreams = Vec::new();
    for _ in 0..READERS {
        upstreams.push(TcpStream::connect(addr.as_str()).await?);
    }
    let mut shared = TcpStream::connect(addr.as_str()).await?;

    // The shared connection's writer: whatever is queued when it runs
    // goes out in one write, as a pipelining client's connection task does.
    let (queue, mut queued) = mpsc::unbounded_channel::<u8>();
    let writer = tokio::spawn(async move {
        let mut open = true;
        while open {
            let Some(first) = queued.recv().await else {
                break;
            };
            let mut batch = vec![first];
            loop {
                match queued.try_recv() {
                    Ok(byte) => batch.push(byte),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            written
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&batch).into_owned());
            shared.write_all(&batch).await?;
        }
        shared.shutdown().await
    });

    // A reader per upstream connection wakes its handler, which queues
    // a request on the shared connection.
    let mut handlers = Vec::new();
    for mut upstream in upstreams {
        let (tell, told) = oneshot::channel::<u8>();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            if upstream.read_exact(&mut byte).await.is_ok() {
                let _ = tell.send(byte[0]);
            }
        });
        let queue = queue.clone();
        handlers.push(tokio::spawn(async move {
            if let Ok(byte) = told.await {
                let _ = queue.send(byte.to_ascii_uppercase());
            }
        }));
    }
    drop(queue);
    // Let every reader park on its read first.
    tokio::task::yield_now().await;
    control.write_all(b"g").await?;
    // Busy while the peer answers: the three answers are ready at the
    // driver's next turn, together.
    std::thread::sleep(BUSY);
    for handler in handlers {
        handler.await.map_err(io::Error::other)?;
    }
    writer.await.map_err(io::Error::other)?
}

#[test]
fn reads_ready_in_one_turn_wake_their_tasks_together_in_replay() {
    let out = tempfile::tempdir().unwrap();
    let mut batched = None;
    for _ in 0..RECORDINGS_MAX {
        let (port, peer) = peer();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::clone(&recorded);
        let dir = record_with(out.path(), "turns", move || service(port, writes));
        let received = peer.join().unwrap();
        let recorded = recorded.lock().unwrap().clone();
        assert_eq!(received, b"ABC", "{recorded:?}");
        if recorded == ["ABC"] {
            batched = Some((port, dir, recorded));
            break;
        }
        eprintln!("the answers came in separate turns ({recorded:?}): recording again");
    }
    // The three answers came in one turn and their handlers queued together.
    let (port, dir, recorded) = batched.expect("one recording with the answers in one turn");

    let mut digests = Vec::new();
    for round in 0..REPLAYS {
        let replayed = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::clone(&replayed);
        let (result, stats) = replay_with(&dir, "turns", move || service(port, writes));
        if let Err(err) = result {
            panic!("replay {round}: {err}");
        }
        assert_eq!(*replayed.lock().unwrap(), recorded, "replay {round}");
        assert_eq!(stats.events, stats.log_events, "replay {round}");
        digests.push(stats.digest);
    }
    digests.dedup();
    assert_eq!(digests.len(), 1, "one digest: {digests:x?}");
}
