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

    // One flight recorder per process (`deja::flight::keep` is global):
    // the damaged-window case reuses this window rather than record its own.
    a_window_whose_first_event_is_not_the_one_flight_json_names_is_corrupt(&kept);
}

/// A window's `flight.json` names its first seq; a window whose first
/// event is another (a segment deleted, the file edited) is damaged, and
/// every reader says so instead of replaying from the wrong place.
fn a_window_whose_first_event_is_not_the_one_flight_json_names_is_corrupt(kept: &std::path::Path) {
    let copy = tempfile::tempdir().unwrap();
    let damaged = copy.path().join(kept.file_name().unwrap());
    std::fs::create_dir(&damaged).unwrap();
    for entry in std::fs::read_dir(kept).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, damaged.join(path.file_name().unwrap())).unwrap();
    }
    let flight = damaged.join("flight.json");
    let text = std::fs::read_to_string(&flight).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["first_seq"] = serde_json::json!(5);
    std::fs::write(&flight, serde_json::to_vec(&json).unwrap()).unwrap();

    let err = deja::recorder::RunReader::open(&damaged)
        .unwrap()
        .find_map(Result::err)
        .expect("the reader refuses the window");
    assert!(err.is_corruption(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("first event is #0") && message.contains("flight.json says #5"),
        "{message}"
    );
    let replay = Builder::new()
        .mode(Mode::Replay)
        .trace_dir(&damaged)
        .service("echo")
        .build();
    let err = replay.expect_err("replay refuses it");
    assert!(err.to_string().contains("flight.json says #5"), "{err}");
}
