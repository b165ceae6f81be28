//! The redis crate over deja against a real `redis-server` that the test
//! starts itself (`deja_fixtures::servers::Redis`).
//!
//! The service connects with `deja::net::redis::connect` (the crate's
//! `MultiplexedConnection` with its default configuration: a 500 ms
//! response timeout on every command), and 8 tasks share that one
//! connection for SET, GET, INCR and a pipeline. It is recorded with
//! default settings; then the server is stopped and the recording is
//! replayed 20 times, each on a fresh thread (as a new process would be):
//! every replay sees the recorded answers and gives one digest. A service
//! that sends another command diverges. And a recording in which the
//! default timeout fires (a script on another connection holds the
//! server) replays that timeout, 10 times, with the server stopped.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use deja::{Builder, Error, Mode};
use deja_fixtures::servers::{self, Redis};
use redis::AsyncCommands;

/// Tasks sharing the connection, and rounds each.
const TASKS: usize = 8;
const ROUNDS: usize = 4;
/// Replays of the recording.
const REPLAYS: usize = 20;

type Report = Vec<String>;

/// What a test changes in the service.
#[derive(Clone, Copy, Debug)]
struct Options {
    /// Workers set other values: a code change a replay must catch.
    changed: bool,
    /// Main sends FLUSHDB before it spawns the workers (else the workers
    /// send the connection's first commands).
    flush_first: bool,
}

const AS_RECORDED: Options = Options {
    changed: false,
    flush_first: true,
};

/// The service: what every task saw, in task order.
async fn service(url: String, options: Options, out: Arc<Mutex<Report>>) -> redis::RedisResult<()> {
    let (mut con, driver) = deja::net::redis::connect(url.as_str()).await?;
    let driver = tokio::spawn(driver);
    if options.flush_first {
        let () = redis::cmd("FLUSHDB").query_async(&mut con).await?;
    }
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let con = con.clone();
            tokio::spawn(worker(con, task, options.changed))
        })
        .collect();
    let mut report = Vec::new();
    for task in tasks {
        report.extend(task.await.expect("worker")?);
    }
    let counter: i64 = con.get("deja:counter").await?;
    let keys: Vec<String> = con.keys("deja:*").await?;
    report.push(format!("counter {counter}, {} keys", keys.len()));
    // The last clone goes: the driver closes the socket and ends.
    drop(con);
    driver.await.expect("the connection's driver");
    *out.lock().unwrap() = report;
    Ok(())
}

/// [`ROUNDS`] of: SET a key of its own, INCR the shared counter, GET the
/// key back, and a pipeline (INCR, GET) — every command on the shared
/// multiplexed connection, so what INCR returns depends on how the tasks'
/// commands were interleaved. `changed` sets another value.
async fn worker(
    mut con: redis::aio::MultiplexedConnection,
    task: usize,
    changed: bool,
) -> redis::RedisResult<Report> {
    let mut seen = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("deja:t{task}:r{round}");
        let value = if changed {
            format!("v{task}.{round}!")
        } else {
            format!("v{task}.{round}")
        };
        let () = con.set(&key, &value).await?;
        let counter: i64 = con.incr("deja:counter", 1).await?;
        let back: String = con.get(&key).await?;
        let (again, total): (i64, i64) = redis::pipe()
            .incr(format!("deja:t{task}"), 1)
            .get("deja:counter")
            .query_async(&mut con)
            .await?;
        seen.push(format!(
            "task {task} round {round}: counter {counter}, {key}={back}, own {again}, total {total}"
        ));
    }
    Ok(seen)
}

fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("the run's thread")
}

/// Record `run` (given where to put its report) on a fresh thread: the
/// run directory and the report.
fn record_run<Fut>(
    out: &Path,
    run: impl FnOnce(Arc<Mutex<Report>>) -> Fut + Send + 'static,
) -> (PathBuf, Report)
where
    Fut: std::future::Future<Output = redis::RedisResult<()>>,
{
    let out = out.to_path_buf();
    on_fresh_thread(move || {
        let report = Arc::new(Mutex::new(Vec::new()));
        let mut runtime = Builder::new()
            .mode(Mode::Record)
            .trace_dir(&out)
            .service("redis")
            .build()
            .expect("record runtime");
        let dir = runtime.run_dir().expect("run dir").to_path_buf();
        runtime
            .block_on(run(Arc::clone(&report)))
            .expect("recorded run")
            .expect("the service works against redis-server");
        let report = report.lock().unwrap().clone();
        (dir, report)
    })
}

/// Replay `dir` with `run` on a fresh thread: how it ended, the report,
/// the digest.
fn replay_run<Fut>(
    dir: &Path,
    run: impl FnOnce(Arc<Mutex<Report>>) -> Fut + Send + 'static,
) -> (Result<(), Error>, Report, u64)
where
    Fut: std::future::Future<Output = redis::RedisResult<()>>,
{
    let dir = dir.to_path_buf();
    on_fresh_thread(move || {
        let report = Arc::new(Mutex::new(Vec::new()));
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service("redis")
            .build()
            .expect("replay runtime");
        let result = runtime
            .block_on(run(Arc::clone(&report)))
            .map(|output| output.expect("the service works in replay"));
        let digest = runtime.replay_stats().map_or(0, |stats| stats.digest);
        let report = report.lock().unwrap().clone();
        (result, report, digest)
    })
}

fn record(url: String, out: &Path, options: Options) -> (PathBuf, Report) {
    record_run(out, move |report| service(url, options, report))
}

fn replay(url: String, dir: &Path, options: Options) -> (Result<(), Error>, Report, u64) {
    replay_run(dir, move |report| service(url, options, report))
}

#[test]
fn multiplexed_connection_with_default_timeout_replays_with_the_server_stopped() {
    let started = Instant::now();
    let Some(mut server) = Redis::start("real_redis") else {
        return;
    };
    let server_up = started.elapsed();
    let url = server.url();
    let out = tempfile::tempdir().expect("tempdir");

    let (dir, recorded) = record(url.clone(), out.path(), AS_RECORDED);
    assert_eq!(recorded.len(), TASKS * ROUNDS + 1, "{recorded:#?}");
    let expected_total = (TASKS * ROUNDS) as i64;
    assert_eq!(
        recorded.last().map(String::as_str),
        Some(
            format!(
                "counter {expected_total}, {} keys",
                TASKS * ROUNDS + TASKS + 1
            )
            .as_str()
        ),
        "{recorded:#?}"
    );
    let recorded_in = started.elapsed();

    server.stop();
    assert!(
        !servers::listening(server.addr()),
        "redis-server still listens at {}",
        server.addr()
    );

    let mut digests = BTreeSet::new();
    for round in 0..REPLAYS {
        let (result, report, digest) = replay(url.clone(), &dir, AS_RECORDED);
        if let Err(err) = result {
            panic!("replay {round} failed: {err}");
        }
        assert_eq!(report, recorded, "replay {round} saw other answers");
        digests.insert(digest);
    }
    assert_eq!(digests.len(), 1, "replays gave digests {digests:x?}");
    let replayed_in = started.elapsed();

    let changed = Options {
        changed: true,
        ..AS_RECORDED
    };
    let (result, _, _) = replay(url, &dir, changed);
    match result {
        Err(Error::Diverged(divergence)) => {
            let text = divergence.to_string();
            assert!(
                text.contains("write"),
                "the divergence is the changed command's write: {text}"
            );
        }
        other => panic!("a changed command must diverge, got {other:?}"),
    }
    eprintln!(
        "real_redis: server up in {server_up:?}, recorded by {recorded_in:?}, \
         {REPLAYS} replays by {replayed_in:?}, total {:?}; digest {digests:x?}",
        started.elapsed()
    );
}

/// The workers send the connection's first commands. The recording adopts
/// the first worker first (its response timeout reads the clock); replay
/// adopts the connection's driver first, at its first poll of a read the
/// recording never logged, and diverges. The minimal form of this deja
/// bug is `runtime/tests/adoption_pending_read.rs`.
#[test]

fn workers_that_send_the_first_commands_replay() {
    let Some(mut server) = Redis::start("real_redis (workers first)") else {
        return;
    };
    let url = server.url();
    let out = tempfile::tempdir().expect("tempdir");
    let options = Options {
        flush_first: false,
        ..AS_RECORDED
    };
    let (dir, recorded) = record(url.clone(), out.path(), options);
    server.stop();
    let (result, report, _) = replay(url, &dir, options);
    if let Err(err) = result {
        panic!("the replay failed: {err}");
    }
    assert_eq!(report, recorded);
}

/// A script that holds redis-server for about a second (Redis runs one
/// command at a time: every other client waits).
const STALL_SCRIPT: &str = "local s = redis.call('TIME') \
    while true do \
      local n = redis.call('TIME') \
      if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 1000000 then break end \
    end \
    return 1";

/// Sends [`STALL_SCRIPT`] on a connection of its own (outside deja, not
/// recorded) and returns once redis-server is inside it.
fn stall_server(addr: std::net::SocketAddr) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let (started, wait) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("the stalling connection");
        let command = format!(
            "*3\r\n$4\r\nEVAL\r\n${}\r\n{STALL_SCRIPT}\r\n$1\r\n0\r\n",
            STALL_SCRIPT.len()
        );
        stream.write_all(command.as_bytes()).expect("sending EVAL");
        // Redis reads the script at its next turn; give it that.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let _ = started.send(());
        let mut reply = [0u8; 16];
        let _ = stream.read(&mut reply);
    });
    wait.recv().expect("the stalling thread");
    thread
}

/// The service of the timeout test: a SET, then (after `stall` has made
/// redis-server busy, in the recording) a GET that the connection's
/// default 500 ms response timeout gives up on, then a GET that works.
async fn timeout_service(
    url: String,
    stall: Arc<dyn Fn() + Send + Sync>,
    out: Arc<Mutex<Report>>,
) -> redis::RedisResult<()> {
    let (mut con, driver) = deja::net::redis::connect(url.as_str()).await?;
    let driver = tokio::spawn(driver);
    let mut report = Vec::new();
    let () = con.set("deja:timeout", "before").await?;
    tokio::task::spawn_blocking(move || stall())
        .await
        .expect("the stall");
    let waited = deja::time::Instant::now();
    let busy: redis::RedisResult<String> = con.get("deja:timeout").await;
    report.push(match busy {
        Ok(value) => format!("answered {value}"),
        Err(err) => format!(
            "gave up after {} ms: timeout {}",
            waited.elapsed().as_millis() / 100 * 100,
            err.is_timeout()
        ),
    });
    // Once the script is done the connection answers again.
    deja::time::sleep(deja::time::Duration::from_millis(1500)).await;
    let after: String = con.get("deja:timeout").await?;
    report.push(format!("then {after}"));
    drop(con);
    driver.await.expect("the connection's driver");
    *out.lock().unwrap() = report;
    Ok(())
}

/// The default response timeout fires in the recording (redis-server is
/// held by a script on another connection) and fires again in every
/// replay, with the server stopped.
#[test]
fn a_response_timeout_that_fired_in_the_recording_fires_in_replay() {
    let Some(mut server) = Redis::start("real_redis (timeout)") else {
        return;
    };
    let url = server.url();
    let addr = server.addr();
    let out = tempfile::tempdir().expect("tempdir");
    let stalls = Arc::new(Mutex::new(Vec::new()));

    let threads = Arc::clone(&stalls);
    let stall: Arc<dyn Fn() + Send + Sync> =
        Arc::new(move || threads.lock().unwrap().push(stall_server(addr)));
    let record_url = url.clone();
    let (dir, recorded) = record_run(out.path(), move |report| {
        timeout_service(record_url, stall, report)
    });
    for thread in stalls.lock().unwrap().drain(..) {
        thread.join().expect("the stalling thread");
    }
    // The timeout is 500 ms; a loaded machine may fire it a little late.
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded[0].starts_with("gave up after") && recorded[0].ends_with("timeout true"),
        "the default timeout fired while the script held the server: {recorded:?}"
    );
    assert_eq!(recorded[1], "then before", "{recorded:?}");
    server.stop();

    let mut digests = BTreeSet::new();
    for round in 0..10 {
        let url = url.clone();
        let (result, report, digest) = replay_run(&dir, move |report| {
            timeout_service(url, Arc::new(|| {}), report)
        });
        if let Err(err) = result {
            panic!("replay {round} failed: {err}");
        }
        assert_eq!(report, recorded, "replay {round}");
        digests.insert(digest);
    }
    assert_eq!(digests.len(), 1, "replays gave digests {digests:x?}");
}
