//! Library code, unchanged, under record and replay: what axum, hyper,
//! tower, redis or a TLS stack do behind deja's back (`tokio::spawn`,
//! `tokio::time`, `spawn_blocking`, `std::time`, `rand::rng()`, uuid v4, a
//! std `HashMap`, `tokio::sync` and `std::sync` locks).
//!
//! Each scenario is one service: an accept loop that hands every
//! connection to `tokio::spawn` (as `axum::serve` does), a handler that
//! does the library thing and answers with what it saw, and clients that
//! are themselves `tokio::spawn`ed. It is recorded with default settings
//! under concurrency, replayed 20 times (every replay must see the
//! recording's answers and give one digest), and a changed handler must
//! diverge.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream};
use deja::Error;

mod common;
use common::{record_with, replay_with};

/// The service name the recordings are made under.
const SERVICE: &str = "library-code";

/// Concurrent clients, and requests each.
const CLIENTS: usize = 16;
const REQUESTS: usize = 4;
/// Replays of each recording.
const REPLAYS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// `tokio::time::timeout` on the request read: clients wait 0-30 ms
    /// before sending, the handler gives up after 15.
    Timeout,
    /// The answer is computed by `spawn_blocking`.
    SpawnBlocking,
    /// `std::time::Instant` and `SystemTime`, read by the handler.
    StdTime,
    /// `rand::rng()`: thread-local, seeded from OS entropy.
    ThreadRng,
    /// `uuid::Uuid::new_v4()`: OS entropy on every call.
    UuidV4,
    /// `syscall(SYS_getrandom, ..)`, as getrandom 0.2 (under ring, so
    /// rustls) draws OS entropy on Linux, past the C library's `getrandom`.
    GetrandomSyscall,
    /// A std `HashMap` with `RandomState`, iterated.
    StdHashMap,
    /// 16 handlers append to one log under a `tokio::sync::Mutex`,
    /// holding it across an await.
    TokioMutex,
    /// The same under a `std::sync::Mutex`, with a yield between two
    /// critical sections that decide the answer.
    StdMutex,
}

/// What every request of a run got back, in (client, request) order.
type Answers = Vec<String>;

#[derive(Default)]
struct Shared {
    tokio_log: tokio::sync::Mutex<Vec<usize>>,
    std_log: Mutex<Vec<usize>>,
}

/// Serves one request on `conn`.
async fn handle(
    scenario: Scenario,
    mut conn: TcpStream,
    shared: Arc<Shared>,
    changed: bool,
) -> io::Result<()> {
    let mut buf = [0u8; 64];
    {
        let read = conn.read(&mut buf);
        let n = match scenario {
            Scenario::Timeout => {
                match tokio::time::timeout(std::time::Duration::from_millis(15), read).await {
                    Ok(n) => n?,
                    Err(_) => {
                        let answer = if changed { "timeout!\n" } else { "timeout\n" };
                        conn.write_all(answer.as_bytes()).await?;
                        // The client still sends its request: take it, then close.
                        while conn.read(&mut buf).await? > 0 {}
                        return Ok(());
                    }
                }
            }
            _ => read.await?,
        };
        if n == 0 {
            return Ok(());
        }
        let request = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        let answer = match scenario {
            Scenario::Timeout => format!("ok {request}"),
            Scenario::SpawnBlocking => {
                let input = request.clone();
                let digest = tokio::task::spawn_blocking(move || {
                    input
                        .bytes()
                        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
                })
                .await
                .expect("blocking job");
                format!("{request} {digest}")
            }
            Scenario::StdTime => {
                let started = std::time::Instant::now();
                tokio::task::yield_now().await;
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_nanos();
                format!("{request} {} {wall}", started.elapsed().as_nanos())
            }
            Scenario::ThreadRng => {
                use rand::Rng;
                format!("{request} {}", rand::rng().random::<u64>())
            }
            Scenario::UuidV4 => format!("{request} {}", uuid::Uuid::new_v4()),
            Scenario::GetrandomSyscall => {
                let mut bytes = [0u8; 16];
                // SAFETY: `bytes` is writable for its length.
                let got = unsafe {
                    libc::syscall(libc::SYS_getrandom, bytes.as_mut_ptr(), bytes.len(), 0)
                };
                assert_eq!(got, 16, "getrandom(2) of 16 bytes");
                format!("{request} {:032x}", u128::from_le_bytes(bytes))
            }
            Scenario::StdHashMap => {
                let words: std::collections::HashMap<String, usize> =
                    ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
                        .iter()
                        .enumerate()
                        .map(|(i, w)| (format!("{w}{request}"), i))
                        .collect();
                let order: Vec<String> = words.keys().cloned().collect();
                order.join(",")
            }
            Scenario::TokioMutex => {
                let mut log = shared.tokio_log.lock().await;
                let place = log.len();
                tokio::task::yield_now().await;
                log.push(place);
                format!("{request} at {place}")
            }
            Scenario::StdMutex => {
                let seen = shared.std_log.lock().unwrap().len();
                tokio::task::yield_now().await;
                let mut log = shared.std_log.lock().unwrap();
                let place = log.len();
                log.push(place);
                format!("{request} saw {seen} at {place}")
            }
        };
        let answer = if changed {
            format!("{answer}!")
        } else {
            answer
        };
        conn.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(())
}

/// One client: a connection per request, as an HTTP client without
/// keep-alive would.
async fn client(
    scenario: Scenario,
    addr: std::net::SocketAddr,
    client: usize,
) -> io::Result<Answers> {
    use rand::Rng;
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 256];
    for request in 0..REQUESTS {
        let mut conn = TcpStream::connect(addr).await?;
        if scenario == Scenario::Timeout {
            // Library-style waiting: tokio's own timer.
            // Well before or well after the handler's 15 ms: a timer that
            // tokio fires late on a loaded machine still decides alike
            // (replay fires library timers on time: ARCHITECTURE.md).
            let wait = if deja::rand::rng().random_bool(0.5) {
                1
            } else {
                45
            };
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        conn.write_all(format!("c{client}r{request}\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        while !answer.ends_with(b"\n") {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            answer.extend_from_slice(&buf[..n]);
        }
        answers.push(String::from_utf8_lossy(&answer).trim().to_string());
    }
    Ok(answers)
}

/// The service: library-style accept loop and clients, all `tokio::spawn`.
async fn service(scenario: Scenario, changed: bool, out: Arc<Mutex<Answers>>) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::default());
    let server = tokio::spawn(async move {
        let mut handlers = Vec::new();
        for _ in 0..CLIENTS * REQUESTS {
            let (conn, _) = listener.accept().await?;
            handlers.push(tokio::spawn(handle(
                scenario,
                conn,
                Arc::clone(&shared),
                changed,
            )));
        }
        for handler in handlers {
            handler.await.expect("handler")?;
        }
        Ok::<(), io::Error>(())
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(scenario, addr, c)))
        .collect();
    let mut answers = Vec::new();
    for (c, handle) in clients.into_iter().enumerate() {
        for (r, answer) in handle.await.expect("client")?.into_iter().enumerate() {
            answers.push(format!("c{c}r{r}: {answer}"));
        }
    }
    server.await.expect("server")?;
    *out.lock().unwrap() = answers;
    Ok(())
}

fn record(scenario: Scenario, out: &Path) -> (PathBuf, Answers) {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&answers);
    let dir = record_with(out, SERVICE, move || service(scenario, false, seen));
    let answers = answers.lock().unwrap().clone();
    (dir, answers)
}

fn replay(scenario: Scenario, dir: &Path, changed: bool) -> (Result<(), Error>, Answers, u64) {
    let answers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&answers);
    let (result, stats) = replay_with(dir, SERVICE, move || service(scenario, changed, seen));
    let answers = answers.lock().unwrap().clone();
    (result, answers, stats.digest)
}

/// Record once; replay 20 times to the recording's answers and one
/// digest; a changed handler diverges.
fn replays_exactly(scenario: Scenario) -> Answers {
    let out = tempfile::tempdir().expect("tempdir");
    let (dir, recorded) = record(scenario, out.path());
    assert_eq!(recorded.len(), CLIENTS * REQUESTS, "{recorded:?}");
    let mut digests = std::collections::BTreeSet::new();
    for round in 0..REPLAYS {
        let (result, answers, digest) = replay(scenario, &dir, false);
        if let Err(err) = result {
            panic!("{scenario:?} replay {round} failed: {err}");
        }
        assert_eq!(
            answers, recorded,
            "{scenario:?} replay {round} saw other answers"
        );
        digests.insert(digest);
    }
    assert_eq!(
        digests.len(),
        1,
        "{scenario:?}: replays gave digests {digests:x?}"
    );
    let (result, _, _) = replay(scenario, &dir, true);
    match result {
        Err(Error::Diverged(divergence)) => {
            let text = divergence.to_string();
            assert!(
                text.contains("write"),
                "{scenario:?}: the divergence is the changed write: {text}"
            );
        }
        other => panic!("{scenario:?}: a changed handler must diverge, got {other:?}"),
    }
    recorded
}

#[test]
fn tokio_timeout_fires_in_replay_exactly_where_it_fired_in_the_recording() {
    // Record until some requests time out and some do not.
    for _attempt in 0..5 {
        let answers = replays_exactly(Scenario::Timeout);
        let timeouts = answers.iter().filter(|a| a.contains("timeout")).count();
        if timeouts > 0 && timeouts < answers.len() {
            return;
        }
    }
    panic!("five recordings without a mix of timeouts and answers");
}

#[test]
fn spawn_blocking_replays() {
    replays_exactly(Scenario::SpawnBlocking);
}

#[test]
fn std_instant_and_system_time_replay() {
    let answers = replays_exactly(Scenario::StdTime);
    // The handler saw real, varying times: the replay saw the same.
    let distinct: std::collections::BTreeSet<_> = answers.iter().collect();
    assert_eq!(distinct.len(), answers.len());
}

#[test]
fn thread_rng_replays() {
    replays_exactly(Scenario::ThreadRng);
}

#[test]
fn uuid_v4_replays() {
    let answers = replays_exactly(Scenario::UuidV4);
    let ids: std::collections::BTreeSet<_> = answers.iter().map(|a| a.rsplit(' ').next()).collect();
    assert_eq!(ids.len(), answers.len(), "every uuid is new");
}

#[test]
fn getrandom_system_call_replays() {
    let answers = replays_exactly(Scenario::GetrandomSyscall);
    let draws: std::collections::BTreeSet<_> =
        answers.iter().map(|a| a.rsplit(' ').next()).collect();
    assert_eq!(draws.len(), answers.len(), "every draw is new");
}

#[test]
fn std_hash_map_iteration_replays() {
    replays_exactly(Scenario::StdHashMap);
}

#[test]
fn tasks_contending_on_a_tokio_mutex_replay() {
    replays_exactly(Scenario::TokioMutex);
}

#[test]
fn tasks_contending_on_a_std_mutex_replay() {
    replays_exactly(Scenario::StdMutex);
}

/// A library that connects with a `tokio::net` socket of its own (as
/// reqwest or sqlx do): the recording logs and counts it, `deja stats`
/// names it, and replay refuses the connection and says why it then
/// diverges; nothing panics.
#[test]
fn a_library_with_a_socket_of_its_own_is_named_not_a_panic() {
    use std::io::Write as _;
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream");
    let upstream_addr = upstream.local_addr().expect("upstream address");
    let world = std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().expect("the library connects");
        conn.write_all(b"pong\n").expect("answer");
    });
    let service = move || async move {
        let answer = match tokio::net::TcpStream::connect(upstream_addr).await {
            Ok(mut stream) => {
                use tokio::io::AsyncReadExt as _;
                let mut reply = [0u8; 5];
                stream.read_exact(&mut reply).await?;
                String::from_utf8_lossy(&reply).into_owned()
            }
            Err(err) => format!("error {:?}", err.kind()),
        };
        deja::mark("answer", answer.as_bytes());
        Ok::<(), io::Error>(())
    };
    let out = tempfile::tempdir().expect("tempdir");
    let dir = record_with(out.path(), SERVICE, service);
    world.join().expect("the upstream answered");
    let stats = deja_replayer::analysis::RunStats::compute(&dir).expect("stats");
    assert_eq!(stats.unseen.foreign_sockets, 1);
    assert_eq!(stats.unseen.foreign_peers, vec![upstream_addr.to_string()]);

    let (result, stats) = replay_with(&dir, SERVICE, service);
    let foreign = stats.foreign_sockets;
    assert_eq!(foreign, 1, "replay counts the refused connection");
    match result {
        Err(Error::Diverged(divergence)) => {
            let text = divergence.to_string();
            assert!(
                text.contains("answer"),
                "the mark with the refused answer: {text}"
            );
        }
        other => panic!("the refused connection changes the answer: {other:?}"),
    }
}

/// Recording runs `main` and the tasks on one thread by default, as
/// replay does: a task spawned by a `main` that has not awaited yet
/// cannot have run (with a worker beside `main`, it could, and that
/// recording would diverge in every replay).
#[test]
fn a_task_does_not_run_while_main_spins_without_awaiting() {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Spins of main before it awaits: far longer than a worker thread
    /// needs to start a task (about a millisecond), bounded by count.
    const SPINS: u64 = 20_000_000;
    let service = || async {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let task = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let mut ran_during_main = false;
        for _ in 0..SPINS {
            if ran.load(Ordering::SeqCst) {
                ran_during_main = true;
                break;
            }
            std::hint::spin_loop();
        }
        deja::mark(
            "ran_during_main",
            if ran_during_main { "yes" } else { "no" },
        );
        task.await.expect("task");
        deja::mark(
            "ran_after_await",
            if ran.load(Ordering::SeqCst) {
                "yes"
            } else {
                "no"
            },
        );
        Ok::<(), io::Error>(())
    };
    let out = tempfile::tempdir().expect("tempdir");
    let dir = record_with(out.path(), SERVICE, service);
    let events: Vec<_> = deja::recorder::RunReader::open(&dir)
        .expect("log")
        .map(|event| event.expect("event").kind)
        .collect();
    let marks: Vec<String> = events
        .iter()
        .filter_map(|kind| match kind {
            deja::recorder::EventKind::Mark { name, value } => {
                Some(format!("{name}={}", String::from_utf8_lossy(value)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(marks, ["ran_during_main=no", "ran_after_await=yes"]);
    let (replayed, _) = replay_with(&dir, SERVICE, service);
    replayed.expect("the recording replays");
}

/// Regression: a `main` that draws entropy first thing (a key or an id
/// made at start) logs its draws right after the runtime build's, with
/// nothing between them, and replay passed them all as the build's: the
/// first draw of `main` then diverged. Only the build's one draw (std's
/// `HashMap` keys) may be passed, and only when replay's build did not
/// make it.
#[test]
fn draws_main_makes_first_thing_are_not_taken_for_the_build() {
    async fn service(out: Arc<Mutex<Answers>>) -> io::Result<()> {
        // The size of the build's draw, then a key's.
        let id = uuid::Uuid::new_v4();
        let mut key = [0u8; 32];
        // SAFETY: `key` is writable for its length.
        let got = unsafe { libc::syscall(libc::SYS_getrandom, key.as_mut_ptr(), key.len(), 0) };
        assert_eq!(got, 32, "getrandom(2) of 32 bytes");
        let drawn = format!(
            "{id} {:032x}",
            u128::from_le_bytes(key[..16].try_into().unwrap())
        );
        deja::mark("drawn", drawn.as_bytes());
        out.lock().unwrap().push(drawn);
        Ok(())
    }
    let out = tempfile::tempdir().expect("tempdir");
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&recorded);
    let dir = record_with(out.path(), SERVICE, move || service(seen));
    for round in 0..3 {
        let replayed = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&replayed);
        let (result, _) = replay_with(&dir, SERVICE, move || service(seen));
        if let Err(err) = result {
            panic!("replay {round} failed: {err}");
        }
        assert_eq!(*replayed.lock().unwrap(), *recorded.lock().unwrap());
    }
}
