#![cfg(feature = "hyper")]
//! Found by the axum-shop end-to-end test: a service whose request
//! handlers share hyper-util's pooled legacy client on
//! `deja::net::Connector` to call an upstream, recorded under concurrent
//! keep-alive clients, does not always replay: a pooled connection
//! carries another handler's request than in the recording, or a connect
//! the recording made in the handler is finished by the pool's background
//! task. The test holds deja to what it can promise today: such a replay
//! stops with a divergence report, never hangs or ends otherwise.
//!
//! No axum and no adoption-order question here: the service is hyper's
//! HTTP/1 server on deja sockets, one `deja::spawn`ed task per
//! connection. The clients and the upstream are the outside world (plain
//! tokio on threads of their own, real sockets, not recorded), as they
//! are for a real service. Which handler's request goes out on which
//! pooled connection is decided inside hyper-util, between intercepted
//! calls: its pool (idle connections, waiters), its `want` channels, the
//! connection tasks and the "put it back in the pool" tasks it
//! `tokio::spawn`s, which make no intercepted call of their own.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deja::net::{Connector, TcpListener};
use deja::{Builder, Error, Mode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The smallest load that fails (about 5 runs in 6 on 2 cores); 8 x 8
/// fails every time. One client passes.
const CLIENTS: usize = 2;
const CALLS: usize = 2;
const REPLAYS: usize = 5;
/// Longest wait of the upstream before it answers, ms.
const UPSTREAM_DELAY_MS: u64 = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Pooled = Client<Connector, Empty<Bytes>>;

/// The outside world's upstream: answers `/price/X` with `X`, after a
/// random 0-5 ms. Plain tokio on its own thread; runs until the process
/// ends.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let mut seed = 1u64;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let state = Arc::new(Mutex::new(seed));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let wait = {
                            let mut state = state.lock().unwrap();
                            *state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                            (*state >> 33) % (UPSTREAM_DELAY_MS + 1)
                        };
                        async move {
                            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                            let item = request.uri().path().trim_start_matches("/price/");
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                item.to_string(),
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// The outside world's clients: `CLIENTS` keep-alive connections to the
/// service, `CALLS` requests each, one after the other, then close.
/// Returns every body, in (client, call) order.
fn run_clients(service: SocketAddr) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(async move {
                    let stream = tokio::net::TcpStream::connect(service).await.unwrap();
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(
                            stream,
                        ))
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    let mut bodies = Vec::new();
                    for call in 0..CALLS {
                        sender.ready().await.unwrap();
                        let request = Request::get(format!("/buy/c{client}r{call}"))
                            .header("host", "service")
                            .body(Empty::new())
                            .unwrap();
                        let response = tokio::time::timeout(
                            std::time::Duration::from_secs(10),
                            sender.send_request(request),
                        )
                        .await
                        .expect("the service answers")
                        .unwrap();
                        let body = response.into_body().collect().await.unwrap().to_bytes();
                        bodies.push(String::from_utf8_lossy(&body).into_owned());
                    }
                    bodies
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    })
}

fn expected() -> Vec<String> {
    (0..CLIENTS)
        .flat_map(|c| (0..CALLS).map(move |r| format!("price of c{c}r{r}")))
        .collect()
}

/// One request: ask the upstream through the shared pooled client.
async fn handle(
    request: Request<Incoming>,
    client: Pooled,
    upstream: SocketAddr,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let item = request.uri().path().trim_start_matches("/buy/").to_string();
    let uri = format!("http://{upstream}/price/{item}").parse()?;
    let response = client.get(uri).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let answer = format!("price of {}", String::from_utf8_lossy(&body));
    Ok(Response::new(Full::new(Bytes::from(answer))))
}

/// The recorded service: accepts `CLIENTS` connections, serves each on a
/// `deja::spawn`ed hyper connection task until the client closes.
async fn service(
    upstream: SocketAddr,
    bound: Option<std::sync::mpsc::Sender<SocketAddr>>,
) -> Result<(), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    if let Some(bound) = bound {
        bound.send(listener.local_addr()?)?;
    }
    let client: Pooled = Client::builder(TokioExecutor::new()).build(Connector::new());
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        let (stream, _) = listener.accept().await?;
        let client = client.clone();
        conns.push(deja::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle(request, client.clone(), upstream)
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
        }));
    }
    for conn in conns {
        conn.await.map_err(|err| format!("{err:?}"))??;
    }
    Ok(())
}

fn record(out: &Path, upstream: SocketAddr) -> PathBuf {
    let out = out.to_path_buf();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let recorder = std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Record)
            .trace_dir(&out)
            .service("pooled-client")
            .build()
            .expect("record runtime");
        let dir = runtime.run_dir().expect("run dir").to_path_buf();
        runtime
            .block_on(service(upstream, Some(bound_tx)))
            .expect("recorded run")
            .expect("the service works");
        dir
    });
    let addr = bound_rx.recv().expect("the service's address");
    assert_eq!(run_clients(addr), expected());
    recorder.join().expect("record thread")
}

fn replay(dir: &Path, upstream: SocketAddr) -> Result<u64, Error> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service("pooled-client")
            .stall_wait(std::time::Duration::from_millis(300))
            .build()
            .expect("replay runtime");
        runtime
            .block_on(service(upstream, None))
            .map(|result| result.expect("the service works in replay"))?;
        Ok(runtime.replay_stats().map_or(0, |stats| stats.digest))
    })
    .join()
    .expect("replay thread")
}

/// Not exact yet (ARCHITECTURE.md, "What deja guarantees"): whether a
/// handler finds an idle pooled connection or opens one is decided by how
/// tokio interleaves the pool's own tasks between two logged events, and
/// replay may interleave them otherwise. What must hold: every replay
/// either succeeds with one digest or stops with a divergence report that
/// names the call (a connect made from another task than recorded); none
/// hangs, and none finishes with other answers.
#[test]
fn handlers_sharing_a_pooled_client_replay_or_say_where_they_part() {
    let upstream = start_upstream();
    let out = tempfile::tempdir().expect("tempdir");
    let dir = record(out.path(), upstream);
    if std::env::var_os("KEEP_RUN").is_some() {
        // For `deja inspect`: keep the recording and say where it is.
        eprintln!("run: {}", dir.display());
        std::mem::forget(out);
    }
    let mut digests = std::collections::BTreeSet::new();
    let mut diverged = 0;
    for round in 0..REPLAYS {
        match replay(&dir, upstream) {
            Ok(digest) => {
                digests.insert(digest);
            }
            Err(Error::Diverged(divergence)) => {
                if diverged == 0 {
                    eprintln!("{divergence}");
                }
                assert!(divergence.expected.is_some() || !divergence.actual.is_empty());
                diverged += 1;
            }
            Err(err) => panic!("replay {round} failed otherwise than by diverging: {err}"),
        };
    }
    eprintln!("{} of {REPLAYS} replays diverged", diverged);
    assert!(
        digests.len() <= 1,
        "replays that finished agree: {digests:x?}"
    );
}
