//! Reproduction (found by the axum-shop end-to-end test): a
//! `std::time::SystemTime::now()` read by a request handler that runs
//! inside hyper's server connection (as every axum handler and
//! tracing's timestamps do) is not given back its recorded value in
//! replay.
//!
//! hyper's server reads the clock itself on the same task (its `Date`
//! header cache, on polls), and replay does not poll a task exactly as
//! often as the recording's scheduler did, so the gate matches readings
//! loosely (`Gate::claim`: a reading with no recorded reading next is
//! answered with virtual time, recorded readings still pending at the
//! task's next other call are passed). The handler's own reading then
//! gets virtual time or the `Date` cache's recorded reading, not its own.
//! In axum-shop it shows as service log lines whose timestamps differ
//! between the recording and a replay that completes (exit 0, same
//! digest); here the handler writes the reading into its answer, and the
//! replay diverges at that write.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream};
use deja::{Builder, Error, Mode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const REQUESTS: usize = 10;

/// The handler: the wall clock, as tracing's timestamps read it.
async fn now(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    Ok(Response::new(Full::new(Bytes::from(format!("{ns:020}")))))
}

async fn service() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = deja::spawn(async move {
        let (stream, _) = listener.accept().await?;
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), hyper::service::service_fn(now))
            .await
            .map_err(io::Error::other)
    });
    let mut conn = TcpStream::connect(addr).await?;
    for _ in 0..REQUESTS {
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        // Headers, then a 20-byte body.
        while !(got.windows(4).any(|w| w == b"\r\n\r\n")
            && got.len() >= got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4 + 20)
        {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got.extend_from_slice(&buf[..n]);
        }
        // The client's pace: the handler's reading moves between requests.
        deja::time::sleep(deja::time::Duration::from_millis(2)).await;
    }
    drop(conn);
    server.await.expect("server")?;
    Ok(())
}

fn record(out: &Path) -> PathBuf {
    let out = out.to_path_buf();
    std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Record)
            .trace_dir(&out)
            .service("handler-clock")
            .build()
            .expect("record runtime");
        let dir = runtime.run_dir().expect("run dir").to_path_buf();
        runtime
            .block_on(service())
            .expect("recorded run")
            .expect("the service works");
        dir
    })
    .join()
    .expect("record thread")
}

fn replay(dir: &Path) -> Result<(), Error> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service("handler-clock")
            .stall_wait(std::time::Duration::from_millis(300))
            .build()
            .expect("replay runtime");
        runtime
            .block_on(service())
            .map(|result| result.expect("the service works in replay"))
    })
    .join()
    .expect("replay thread")
}

#[test]
fn a_handler_under_hypers_server_reads_its_recorded_clock() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = record(out.path());
    if let Err(err) = replay(&dir) {
        panic!("replay failed: {err}");
    }
}
