//! What replay says when the code changed (issue 18): a stall lists every
//! call each blocked task waits on; a UDP socket's close is logged as one.

use std::path::{Path, PathBuf};

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream, UdpSocket};
use deja::time::{sleep, timeout, Duration};
use deja::{Builder, Mode};

fn record<F: std::future::Future<Output = std::io::Result<()>>>(out: &Path, main: F) -> PathBuf {
    let mut runtime = Builder::new()
        .mode(Mode::Record)
        .trace_dir(out)
        .service("reports")
        .build()
        .expect("record runtime");
    let dir = runtime.run_dir().expect("run dir").to_path_buf();
    runtime
        .block_on(main)
        .expect("recorded run")
        .expect("service ok");
    dir
}

fn replay_runtime(dir: &Path) -> deja::Runtime {
    Builder::new()
        .mode(Mode::Replay)
        .trace_dir(dir)
        .service("reports")
        .stall_wait(Duration::from_millis(200))
        .build()
        .expect("replay runtime")
}

/// Main accepts a client task's connection, sleeps, and answers; the
/// client reads the answer under a timeout. The changed main waits on
/// another accept or a signal instead of sleeping.
async fn ask_and_answer(changed: bool) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let client = deja::spawn(async move {
        let mut stream = TcpStream::connect(addr).await?;
        let mut buf = [0u8; 8];
        let read = timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(1))), "{read:?}");
        Ok::<(), std::io::Error>(())
    });
    let (mut conn, _) = listener.accept().await?;
    if changed {
        deja::select! {
            _ = listener.accept() => {}
            _ = deja::signal::ctrl_c() => {}
        }
    }
    sleep(Duration::from_millis(1)).await;
    conn.write_all(b"x").await?;
    client.await.expect("client")?;
    Ok(())
}

#[test]
fn a_stall_lists_every_call_each_blocked_task_waits_on() {
    let out = tempfile::tempdir().unwrap();
    let dir = record(out.path(), ask_and_answer(false));
    let mut runtime = replay_runtime(&dir);
    let err = runtime.block_on(ask_and_answer(true)).unwrap_err();
    let deja::Error::Diverged(divergence) = err else {
        panic!("expected a stall, got {err}")
    };
    let report = divergence.to_string();
    assert!(report.contains("no task can make progress"), "{report}");
    // Main waits on the accept and the signal of its select! (polled in
    // the order its recorded RNG picks); the client on its read and on its
    // timeout's timer.
    let waits_of = |task: &str| -> Vec<String> {
        let from = report
            .find(&format!("task {task} waits on "))
            .unwrap_or_else(|| panic!("task {task} not listed: {report}"));
        let rest = &report[from + format!("task {task} waits on ").len()..];
        let end = rest.find([';', '\n']).unwrap_or(rest.len());
        let mut calls: Vec<String> = rest[..end].split(" and ").map(str::to_string).collect();
        calls.sort();
        calls
    };
    assert_eq!(
        waits_of("0"),
        ["signal", "tcp_accept listener=0"],
        "{report}"
    );
    assert_eq!(
        waits_of("1"),
        ["tcp_read conn=2", "timer_fired timer=0 sleep 30s"],
        "{report}"
    );
}

#[test]
fn a_udp_socket_closes_as_udp_and_replays() {
    let out = tempfile::tempdir().unwrap();
    let service = || async {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        socket.send_to(b"ping", addr).await?;
        let mut buf = [0u8; 8];
        let (n, _) = socket.recv_from(&mut buf).await?;
        assert_eq!(&buf[..n], b"ping");
        drop(socket);
        deja::mark("closed", b"");
        Ok(())
    };
    let dir = record(out.path(), service());
    let names: Vec<&str> = deja_recorder::RunReader::open(&dir)
        .unwrap()
        .map(|event| event.unwrap().kind.name())
        .collect();
    assert!(names.contains(&"udp_close"), "{names:?}");
    assert!(!names.contains(&"tcp_close"), "{names:?}");
    let mut runtime = replay_runtime(&dir);
    runtime.block_on(service()).unwrap().unwrap();
}

/// A task marks a session once, then a request in a scope that ends.
async fn marked() -> std::io::Result<()> {
    deja::mark("session", "s1");
    {
        let _request = deja::mark_scope("req", "1");
        let _ = deja::time::Instant::now();
    }
    let _ = deja::time::Instant::now();
    Ok(())
}

#[test]
fn a_mark_scope_ends_and_own_mark_matches_only_the_mark() {
    let out = tempfile::tempdir().unwrap();
    let dir = record(out.path(), marked());
    let names: Vec<&str> = deja_recorder::RunReader::open(&dir)
        .unwrap()
        .map(|event| event.unwrap().kind.name())
        .collect();
    assert!(names.contains(&"mark_end"), "{names:?}");
    let hits_of = |spec: &str| -> Vec<&'static str> {
        let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&hits);
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service("reports")
            .break_at(spec)
            .unwrap()
            .on_break(move |hit: &deja::debug::BreakHit<'_>| {
                seen.lock().unwrap().push(hit.event().kind.name());
                deja::debug::Resume::Continue
            })
            .build()
            .unwrap();
        runtime.block_on(marked()).unwrap().unwrap();
        let hits = hits.lock().unwrap().clone();
        hits
    };
    // In the scope: the mark, the reading inside; not the reading after.
    assert_eq!(hits_of("mark=req:1,kind=time"), ["clock_mono"]);
    assert_eq!(hits_of("mark=req:1"), ["mark", "clock_mono"]);
    // The session mark is in scope to the end; own-mark is only the mark.
    assert_eq!(
        hits_of("mark=session:s1,kind=time"),
        ["clock_mono", "clock_mono"]
    );
    assert_eq!(hits_of("own-mark=session:s1"), ["mark"]);
}
