//! A flight-recorder window kept before the ring wrapped holds the run's
//! start: it replays, to the end of the window.

use std::time::Duration;

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream};
use deja::recorder::writer::flight::FlightWindow;
use deja::{Builder, Error, Mode};

/// An echo round trip, then a window kept: what the replay must redo.
async fn echo_then_keep() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = deja::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        stream.write_all(&buf[..n]).await?;
        Ok::<(), std::io::Error>(())
    });
    let mut client = TcpStream::connect(addr).await?;
    client.write_all(b"hello flight").await?;
    let mut reply = vec![0u8; 12];
    client.read_exact(&mut reply).await?;
    server.await.expect("server task")?;
    let now = deja::time::Instant::now();
    deja::mark("seen", format!("{:?}", now.elapsed()).as_bytes());
    assert_eq!(reply, b"hello flight");
    deja::flight::keep().map_err(std::io::Error::other)?;
    Ok(())
}

#[test]
fn a_window_that_holds_the_start_replays_to_its_end() {
    let out = tempfile::tempdir().unwrap();
    let mut runtime = Builder::new()
        .mode(Mode::Record)
        .trace_dir(out.path())
        .service("echo")
        .flight(4)
        .build()
        .unwrap();
    runtime.block_on(echo_then_keep()).unwrap().unwrap();
    let kept = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("-kept1"))
        .expect("a kept window");
    let window = FlightWindow::read(&kept).unwrap().unwrap();
    assert!(window.holds_the_start());

    // Replay redoes everything up to the keep; the window ends before
    // main returned, so replay stops there and says so (it is no divergence).
    for _ in 0..3 {
        let mut replay = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&kept)
            .service("echo")
            .stall_wait(Duration::from_millis(200))
            .build()
            .expect("a window holding the start replays");
        let err = replay
            .block_on(echo_then_keep())
            .expect_err("the window ends before main returns");
        match err {
            Error::RecordingEnded { last_seq } => assert_eq!(last_seq, window.last_seq),
            other => panic!("expected the end of the window, got {other}"),
        }
    }
}
