//! Reproduction (found by the axum-shop end-to-end test): a task that
//! library code starts with `tokio::spawn` is adopted at a different
//! moment in record and in replay, so two such tasks swap logical ids.
//!
//! `axum::serve` spawns one task per connection, and its first
//! intercepted call is a read. Recording logs `TaskAdopted` when that read
//! *completes* (the first recorded event), so the tasks are numbered in
//! the order their clients' bytes arrive. Replay adopts a task at the
//! first *poll* of that read (it needs the task id to ask the gate), so
//! the tasks are numbered in the order tokio first polls them, the order
//! they were spawned. When a later connection speaks first, the replay's
//! task 2 is the first connection's handler, the log's task 2 reads the
//! second connection, and the replay stalls:
//!
//! ```text
//! replay diverged at seq N in task 2: no task can make progress
//!   expected: #N ... task=2 tcp_read conn=<second> ...
//!   actual:   ... task 2 waits on tcp_read conn=<first>; ...
//! ```

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;
use common::{record_with, replay_with};

use std::io;

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream};
use deja::time::{sleep, Duration};

/// Two connections, accepted first; then the second one sends, then the
/// first. Each is served by a `tokio::spawn`ed handler (as axum does).
async fn service() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = deja::spawn(async move {
        let mut handlers = Vec::new();
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().await?;
            handlers.push(tokio::spawn(async move {
                let mut buf = [0u8; 16];
                let n = conn.read(&mut buf).await?;
                conn.write_all(&buf[..n]).await?;
                Ok::<(), io::Error>(())
            }));
        }
        for handler in handlers {
            handler.await.expect("handler")?;
        }
        Ok::<(), io::Error>(())
    });
    let mut first = TcpStream::connect(addr).await?;
    let mut second = TcpStream::connect(addr).await?;
    // Both handlers are spawned and waiting on their reads by now.
    sleep(Duration::from_millis(20)).await;
    second.write_all(b"second\n").await?;
    sleep(Duration::from_millis(20)).await;
    first.write_all(b"first\n").await?;
    let mut answers = Vec::new();
    for conn in [&mut first, &mut second] {
        let mut buf = [0u8; 16];
        let n = conn.read(&mut buf).await?;
        answers.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    server.await.expect("server")?;
    assert_eq!(answers, ["first", "second"]);
    Ok(())
}

#[test]
fn tokio_spawned_handlers_that_read_in_another_order_than_spawned_replay() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = record_with(out.path(), "adoption-order", service);
    if let (Err(err), _) = replay_with(&dir, "adoption-order", service) {
        panic!("replay failed: {err}");
    }
}
