//! Simulation: determinism, faults, clocks, failure capture.

use std::io;
use std::sync::{Arc, Mutex};

use deja::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use deja::net::{TcpListener, TcpStream, UdpSocket};
use deja::rand::Rng;
use deja::sim::{check_determinism, FailureKind, Latency, Sim};
use deja::time::{sleep, timeout, Duration, Instant, SystemTime};

const PORT: u16 = 7000;

/// Answers each line with `f(line)`, one task per connection, after a
/// random pause (so schedules depend on the seed).
async fn line_server(f: fn(&str) -> String) -> io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        deja::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Some(line) = lines.next_line().await? {
                let pause = deja::rand::rng().random_range(0..2000);
                sleep(Duration::from_micros(pause)).await;
                write
                    .write_all(format!("{}\n", f(&line)).as_bytes())
                    .await?;
            }
            Ok::<(), io::Error>(())
        });
    }
}

/// Send `line`, read one line back.
async fn ask(addr: &str, line: &str) -> io::Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    lines
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no reply"))
}

fn echo_sim(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.net()
        .latency(Latency::Uniform(
            Duration::from_micros(200),
            Duration::from_millis(5),
        ))
        .split_writes(0.3);
    sim.host("echo", || line_server(|line| line.to_uppercase()));
    sim.client("clients", async {
        let mut tasks = Vec::new();
        for i in 0..8 {
            tasks.push(deja::spawn(async move {
                let reply = ask("echo:7000", &format!("hello {i}")).await?;
                assert_eq!(reply, format!("HELLO {i}"));
                deja::mark("reply", &reply);
                Ok::<(), io::Error>(())
            }));
        }
        for task in tasks {
            task.await.expect("client task")?;
        }
        Ok::<(), io::Error>(())
    });
    sim
}

#[test]
fn the_same_seed_gives_the_same_digest_twenty_times() {
    let first = echo_sim(7).run().expect("seed 7 passes");
    assert!(first.events > 50, "{first:?}");
    assert!(first.virtual_time > Duration::ZERO);
    for _ in 0..19 {
        let again = echo_sim(7).run().expect("seed 7 passes");
        assert_eq!(again.digest, first.digest);
        assert_eq!(again.events, first.events);
        assert_eq!(again.virtual_time, first.virtual_time);
    }
}

#[test]
fn different_seeds_give_different_schedules() {
    let digests: std::collections::BTreeSet<u64> = (0..6)
        .map(|seed| echo_sim(seed).run().expect("passes").digest)
        .collect();
    assert_eq!(digests.len(), 6, "every seed schedules differently");
}

#[test]
fn the_determinism_check_passes_code_that_stays_on_the_shim() {
    let report = check_determinism(3, echo_sim).expect("deterministic");
    assert!(report.events > 50);
}

/// A host whose request handling reads `std::time::Instant` (as any
/// library does): the reading is the simulated clock, so the run is
/// deterministic and the durations are the simulated link's.
#[test]
fn std_instant_in_a_host_reads_simulated_time() {
    let make = |seed| {
        let mut sim = Sim::new(seed);
        sim.host("api", || async {
            let listener = TcpListener::bind("0.0.0.0:80").await?;
            loop {
                let (mut conn, _) = listener.accept().await?;
                #[allow(clippy::disallowed_methods)]
                let started = std::time::Instant::now();
                let mut buf = [0u8; 16];
                let n = conn.read(&mut buf).await?;
                deja::mark("took_ns", started.elapsed().as_nanos().to_string());
                conn.write_all(&buf[..n]).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        });
        sim.client("client", ping_api(3));
        sim
    };
    check_determinism(11, make).expect("std::time::Instant reads simulated time");
}

/// A client that pings host `api` on port 80 `times` times, a connection each.
async fn ping_api(times: usize) -> io::Result<()> {
    for _ in 0..times {
        let mut conn = TcpStream::connect("api:80").await?;
        conn.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        conn.read_exact(&mut reply).await?;
    }
    Ok(())
}

/// State that outlives a run (a process-wide counter) makes two runs of
/// one seed differ: the check catches it and names the usual suspects.
#[test]
fn process_wide_state_is_caught_by_the_determinism_check() {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let make = |seed| {
        let mut sim = Sim::new(seed);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sim.host("api", move || async move {
            let listener = TcpListener::bind("0.0.0.0:80").await?;
            loop {
                let (mut conn, _) = listener.accept().await?;
                let mut buf = [0u8; 16];
                let n = conn.read(&mut buf).await?;
                deja::mark("took_ns", run.to_string());
                conn.write_all(&buf[..n]).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        });
        sim.client("client", ping_api(1));
        sim
    };
    let difference = check_determinism(11, make).expect_err("the counter is caught");
    assert_eq!(difference.host, "api");
    let text = difference.to_string();
    println!("{text}");
    assert!(text.contains("not deterministic"), "{text}");
    assert!(
        text.contains("took_ns"),
        "the differing event is the mark: {text}"
    );
    assert!(
        text.contains("std::time"),
        "the hint names the usual suspects: {text}"
    );
}

/// A replica of a tiny quorum store: a `PUT` succeeds once one other
/// replica (a majority of three) acknowledged it.
async fn replica(peers: [&'static str; 2]) -> io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        deja::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Some(line) = lines.next_line().await? {
                let reply = if let Some(value) = line.strip_prefix("PUT ") {
                    let mut acks = 0;
                    for peer in peers {
                        let asked = timeout(
                            Duration::from_millis(300),
                            ask(&format!("{peer}:{PORT}"), &format!("REPL {value}")),
                        )
                        .await;
                        if matches!(asked, Ok(Ok(ref ack)) if ack == "ACK") {
                            acks += 1;
                        }
                    }
                    if acks >= 1 {
                        "OK".to_string()
                    } else {
                        "ERR no quorum".to_string()
                    }
                } else {
                    "ACK".to_string()
                };
                write.write_all(format!("{reply}\n").as_bytes()).await?;
            }
            Ok::<(), io::Error>(())
        });
    }
}

#[test]
fn a_partition_fails_writes_to_the_minority_until_it_heals() {
    let outcomes: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut sim = Sim::new(5);
    sim.host("r1", || replica(["r2", "r3"]));
    sim.host("r2", || replica(["r1", "r3"]));
    sim.host("r3", || replica(["r1", "r2"]));
    sim.partition_at(Duration::from_secs(1), "r1", "r2")
        .partition_at(Duration::from_secs(1), "r1", "r3")
        .heal_all_at(Duration::from_secs(3));
    let seen = Arc::clone(&outcomes);
    sim.client("writer", async move {
        for (at_ms, replica) in [(500, "r1"), (2000, "r1"), (2000, "r2"), (4000, "r1")] {
            let now = deja::sim::elapsed().expect("simulating");
            sleep(Duration::from_millis(at_ms).saturating_sub(now)).await;
            let reply = ask(&format!("{replica}:{PORT}"), &format!("PUT {at_ms}")).await?;
            seen.lock()
                .unwrap()
                .push((format!("{at_ms}ms {replica}"), reply));
        }
        Ok::<(), io::Error>(())
    });
    sim.run().expect("the simulation itself passes");
    let outcomes = outcomes.lock().unwrap().clone();
    let expected = [
        ("500ms r1", "OK"),
        ("2000ms r1", "ERR no quorum"),
        ("2000ms r2", "OK"),
        ("4000ms r1", "OK"),
    ];
    let got: Vec<(&str, &str)> = outcomes
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(got, expected);
}

/// A hold delays traffic instead of cutting it: the connection made
/// before the hold answers after the heal, nothing resets, and the answer
/// comes no earlier than the heal.
#[test]
fn a_hold_delays_traffic_until_the_heal_and_keeps_connections() {
    let answered: Arc<Mutex<Vec<(String, Duration)>>> = Arc::default();
    let mut sim = Sim::new(3);
    sim.net().latency(Latency::Fixed(Duration::from_millis(1)));
    sim.host("counter", counter);
    sim.hold_at(Duration::from_secs(1), "client", "counter")
        .heal_at(Duration::from_secs(4), "client", "counter");
    let seen = Arc::clone(&answered);
    sim.client("client", async move {
        let stream = TcpStream::connect(("counter", PORT)).await?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        for at_ms in [500u64, 2000, 2500, 5000] {
            let now = deja::sim::elapsed().expect("simulating");
            sleep(Duration::from_millis(at_ms).saturating_sub(now)).await;
            write.write_all(b"INCR\n").await?;
            let line = lines.next_line().await?.expect("an answer");
            seen.lock()
                .unwrap()
                .push((line, deja::sim::elapsed().expect("simulating")));
        }
        Ok::<(), io::Error>(())
    });
    sim.run().expect("a hold resets nothing");
    let answered = answered.lock().unwrap().clone();
    let counts: Vec<&str> = answered.iter().map(|(line, _)| line.as_str()).collect();
    assert_eq!(counts, ["1", "2", "3", "4"], "one connection throughout");
    assert!(answered[0].1 < Duration::from_secs(1));
    // Sent during the hold: answered only after the heal (plus a round trip).
    assert!(answered[1].1 >= Duration::from_secs(4), "{answered:?}");
    assert!(answered[1].1 < Duration::from_millis(4100), "{answered:?}");
    assert!(answered[3].1 < Duration::from_millis(5100), "{answered:?}");
}

/// A segment lost again and again backs off (each retransmission timeout
/// twice the last) and, after eight losses in a row, resets the
/// connection; the same seed does it at the same moment.
#[test]
fn heavy_loss_backs_off_and_finally_resets_the_connection() {
    let run = |seed: u64| {
        let outcome: Arc<Mutex<Option<(io::ErrorKind, Duration)>>> = Arc::default();
        let mut sim = Sim::new(seed);
        sim.net()
            .latency(Latency::Fixed(Duration::from_millis(1)))
            .loss(0.9)
            .retransmit_timeout(Duration::from_millis(10));
        sim.host("counter", counter);
        let seen = Arc::clone(&outcome);
        sim.client("client", async move {
            let stream = TcpStream::connect(("counter", PORT)).await?;
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            for _ in 0..1000 {
                let answer = match write.write_all(b"INCR\n").await {
                    Ok(()) => lines.next_line().await,
                    Err(err) => Err(err),
                };
                if let Err(err) = answer {
                    let at = deja::sim::elapsed().expect("simulating");
                    *seen.lock().unwrap() = Some((err.kind(), at));
                    return Ok(());
                }
            }
            Ok::<(), io::Error>(())
        });
        sim.run().expect("the client handles the reset");
        let outcome = *outcome.lock().unwrap();
        outcome
    };
    let (kind, at) = run(4).expect("90% loss resets the connection");
    assert_eq!(kind, io::ErrorKind::ConnectionReset);
    // Eight losses in a row wait 10+20+...+1280 ms = 2.55 s at least.
    assert!(at >= Duration::from_millis(2550), "{at:?}");
    assert_eq!(
        run(4),
        Some((kind, at)),
        "the same seed resets at the same moment"
    );
}

/// Counts `INCR`s in memory.
async fn counter() -> io::Result<()> {
    let count = Arc::new(Mutex::new(0u64));
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let count = Arc::clone(&count);
        deja::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Some(_line) = lines.next_line().await? {
                let now = {
                    let mut count = count.lock().unwrap();
                    *count += 1;
                    *count
                };
                write.write_all(format!("{now}\n").as_bytes()).await?;
            }
            Ok::<(), io::Error>(())
        });
    }
}

#[test]
fn a_crash_resets_connections_and_a_restart_loses_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(9);
    sim.always_write_logs().log_dir(dir.path());
    sim.host("counter", counter);
    sim.client("client", async {
        let addr = format!("counter:{PORT}");
        for expected in 1..=3 {
            assert_eq!(ask(&addr, "INCR").await?, expected.to_string());
        }
        // An open connection when the host crashes.
        let held = TcpStream::connect(addr.as_str()).await?;
        assert!(deja::sim::crash("counter"));
        let (mut read, _write) = held.into_split();
        let mut buf = [0u8; 8];
        let err = read.read(&mut buf).await.expect_err("reset by the crash");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let refused = TcpStream::connect(addr.as_str())
            .await
            .expect_err("nobody listens");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert!(deja::sim::restart("counter"));
        sleep(Duration::from_millis(1)).await;
        assert_eq!(ask(&addr, "INCR").await?, "1", "memory was lost");
        Ok::<(), io::Error>(())
    });
    let report = sim.run().expect("passes");
    let incarnations: Vec<(&str, u32)> = report
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.incarnation))
        .collect();
    assert_eq!(
        incarnations,
        [("counter", 0), ("counter", 1), ("client", 0)]
    );
    // Each incarnation is a run of its own; both replay to their end.
    let names: Vec<String> = report
        .logs
        .iter()
        .map(|log| log.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["counter-seed9", "counter-seed9-r1", "client-seed9"]);
    for log in &report.logs[..2] {
        let mut runtime = deja::Builder::new()
            .mode(deja::Mode::Replay)
            .trace_dir(log)
            .service("counter")
            .build()
            .unwrap();
        let ended = runtime.block_on(counter());
        assert!(
            matches!(ended, Err(deja::Error::RecordingEnded { .. })),
            "{ended:?}"
        );
        let stats = runtime.replay_stats().unwrap();
        assert_eq!(stats.events, stats.log_events, "{}", log.display());
    }
}

#[test]
fn scheduled_crash_and_restart_happen_on_time() {
    let mut sim = Sim::new(1);
    sim.host("counter", counter);
    sim.crash_at(Duration::from_secs(1), "counter")
        .restart_at(Duration::from_secs(2), "counter");
    sim.client("client", async {
        let addr = format!("counter:{PORT}");
        assert_eq!(ask(&addr, "INCR").await?, "1");
        assert_eq!(ask(&addr, "INCR").await?, "2");
        sleep(Duration::from_millis(1500)).await;
        let down = ask(&addr, "INCR").await.expect_err("crashed at 1 s");
        assert_eq!(down.kind(), io::ErrorKind::ConnectionRefused);
        sleep(Duration::from_secs(1)).await;
        assert_eq!(ask(&addr, "INCR").await?, "1", "restarted at 2 s, empty");
        Ok::<(), io::Error>(())
    });
    sim.run().expect("passes");
}

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i128
}

#[test]
fn clock_skew_shows_in_each_hosts_wall_clock_not_in_virtual_time() {
    let mut sim = Sim::new(2);
    let time_server = || line_server(|_| format!("{}", wall_ns()));
    sim.host("ahead", time_server)
        .clock_ahead(Duration::from_secs(5));
    sim.host("behind", time_server)
        .clock_behind(Duration::from_secs(2));
    sim.host("late", time_server)
        .start_at(Duration::from_secs(10));
    sim.net().latency(Latency::Fixed(Duration::from_millis(1)));
    sim.client("client", async {
        let skew = |reply: String, mine: i128| reply.parse::<i128>().unwrap() - mine;
        let mine = wall_ns();
        let ahead = skew(ask(&format!("ahead:{PORT}"), "TIME").await?, mine);
        let mine = wall_ns();
        let behind = skew(ask(&format!("behind:{PORT}"), "TIME").await?, mine);
        let ms = 1_000_000i128;
        assert!(
            (5_000 * ms..5_010 * ms).contains(&ahead),
            "ahead by {ahead} ns"
        );
        assert!(
            (-2_000 * ms..-1_990 * ms).contains(&behind),
            "behind by {behind} ns"
        );
        // Virtual time is one for everybody: a second here is a second there.
        let started = Instant::now();
        sleep(Duration::from_secs(11)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(11));
        let mine = wall_ns();
        let late = skew(ask(&format!("late:{PORT}"), "TIME").await?, mine);
        assert!(
            (0..10 * ms).contains(&late),
            "no skew, started late: {late} ns"
        );
        Ok::<(), io::Error>(())
    });
    let report = sim.run().expect("passes");
    assert!(report.virtual_time >= Duration::from_secs(11));
    // The simulated calendar starts at 2026-01-01 unless told otherwise.
    assert_eq!(deja::sim::EPOCH_DEFAULT_UNIX_S, 1_767_225_600);
}

#[test]
fn failures_print_the_seed_and_write_logs_that_replay() {
    let dir = tempfile::tempdir().unwrap();
    let server = || line_server(|line| line.chars().rev().collect());
    let client = || async {
        let reply = ask(&format!("mirror:{PORT}"), "deja").await?;
        deja::mark("reply", &reply);
        if reply != "deja" {
            return Err(io::Error::other(format!("mirror answered {reply:?}")));
        }
        Ok(())
    };
    let mut sim = Sim::new(21);
    sim.host("mirror", server);
    sim.client("client", client());
    sim.log_dir(dir.path());
    let failure = sim.run().expect_err("the client errs");
    assert_eq!(failure.seed, 21);
    match &failure.kind {
        FailureKind::Exited { host, code, error } => {
            assert_eq!((host.as_str(), *code), ("client", 1));
            assert!(error.as_deref().unwrap().contains("ajed"));
        }
        other => panic!("unexpected failure {other:?}"),
    }
    let text = failure.to_string();
    assert!(text.contains("seed 21 failed"), "{text}");
    assert!(
        text.contains("reproduce: DEJA_SEED=21 ")
            && text.contains("failures_print_the_seed_and_write_logs_that_replay --exact"),
        "{text}"
    );
    let logs: Vec<String> = failure
        .logs
        .iter()
        .map(|log| log.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(logs, ["mirror-seed21", "client-seed21"]);
    assert!(text.contains("deja replay "), "{text}");

    // The client's log replays like a recording: same error, same marks.
    let mut marks = Vec::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::clone(&seen);
    let mut runtime = deja::Builder::new()
        .mode(deja::Mode::Replay)
        .trace_dir(&failure.logs[1])
        .service("client")
        .break_at("kind=mark")
        .unwrap()
        .on_break(move |hit| {
            hits.lock().unwrap().push(hit.event().to_string());
            deja::debug::Resume::Continue
        })
        .build()
        .unwrap();
    let replayed: io::Result<()> = runtime.block_on(client()).expect("replays to the end");
    assert!(replayed.unwrap_err().to_string().contains("ajed"));
    marks.extend(seen.lock().unwrap().iter().cloned());
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert!(marks[0].contains("ajed"), "{marks:?}");

    // The server's log was cut when the simulation ended: it replays up
    // to there without a divergence.
    let mut runtime = deja::Builder::new()
        .mode(deja::Mode::Replay)
        .trace_dir(&failure.logs[0])
        .service("mirror")
        .build()
        .unwrap();
    match runtime.block_on(server()) {
        Err(deja::Error::RecordingEnded { .. }) => {}
        other => panic!("expected the cut log to end cleanly, got {other:?}"),
    }
    let stats = runtime.replay_stats().unwrap();
    assert_eq!(stats.events, stats.log_events, "every event replayed");
}

#[test]
fn a_client_waiting_on_nothing_is_a_deadlock() {
    let mut sim = Sim::new(4);
    sim.host("silent", || async {
        let listener = TcpListener::bind("0.0.0.0:1").await?;
        let (_conn, _) = listener.accept().await?;
        std::future::pending::<()>().await;
        Ok::<(), io::Error>(())
    });
    sim.client("waiter", async {
        let mut conn = TcpStream::connect("silent:1").await?;
        let mut buf = [0u8; 1];
        let _ = conn.read(&mut buf).await?;
        Ok::<(), io::Error>(())
    });
    sim.write_logs(false);
    let failure = sim.run().expect_err("nobody can move");
    assert_eq!(
        failure.kind,
        FailureKind::Deadlock {
            waiting: vec!["waiter".into()]
        }
    );
    assert!(failure.to_string().contains("no host can make progress"));
}

#[test]
fn the_time_limit_and_task_panics_fail_the_run() {
    let mut sim = Sim::new(4);
    sim.client("sleeper", async { sleep(Duration::from_secs(7200)).await });
    sim.time_limit(Duration::from_secs(60)).write_logs(false);
    let failure = sim.run().expect_err("too slow");
    assert!(matches!(failure.kind, FailureKind::TimeLimit { .. }));
    assert_eq!(failure.report.virtual_time, Duration::from_secs(60));

    let mut sim = Sim::new(4);
    sim.client("panicky", async {
        let task = deja::spawn(async { panic!("task blew up") });
        let _ = task.await;
    });
    sim.write_logs(false);
    let failure = sim.run().expect_err("a task panicked");
    match failure.kind {
        FailureKind::Panicked { host, message } => {
            assert_eq!(host, "panicky");
            assert!(message.contains("task blew up"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_declarations_are_reported_not_panicked() {
    let mut sim = Sim::new(0);
    sim.host("a", || async {});
    sim.host("a", || async {});
    sim.crash_at(Duration::from_secs(1), "nobody");
    let failure = sim.run().expect_err("bad config");
    let FailureKind::Config(what) = failure.kind else {
        panic!("{:?}", failure.kind);
    };
    assert!(
        what.contains("declared twice") && what.contains("nobody"),
        "{what}"
    );
}

/// Sends `count` numbered datagrams; the receiver reports what arrived.
fn udp_sim(seed: u64, configure: impl FnOnce(&mut Sim)) -> Vec<u32> {
    let received: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut sim = Sim::new(seed);
    configure(&mut sim);
    let sink = Arc::clone(&received);
    sim.host("receiver", move || {
        let sink = Arc::clone(&sink);
        async move {
            let socket = UdpSocket::bind("0.0.0.0:53").await?;
            let mut buf = [0u8; 4];
            loop {
                let (n, _) = socket.recv_from(&mut buf).await?;
                assert_eq!(n, 4);
                sink.lock().unwrap().push(u32::from_le_bytes(buf));
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        }
    });
    sim.client("sender", async {
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        let target: std::net::SocketAddr = "10.0.0.1:53".parse().unwrap();
        for i in 0..200u32 {
            socket.send_to(&i.to_le_bytes(), target).await?;
            sleep(Duration::from_micros(100)).await;
        }
        sleep(Duration::from_secs(1)).await;
        Ok::<(), io::Error>(())
    });
    sim.run().expect("passes");
    let received = received.lock().unwrap().clone();
    received
}

#[test]
fn udp_is_lost_duplicated_and_reordered_as_configured() {
    let clean = udp_sim(1, |sim| {
        sim.net().latency(Latency::Fixed(Duration::from_millis(1)));
    });
    assert_eq!(
        clean,
        (0..200).collect::<Vec<_>>(),
        "no faults: all, in order"
    );

    let faulty = udp_sim(1, |sim| {
        sim.net()
            .latency(Latency::Fixed(Duration::from_millis(1)))
            .loss(0.2)
            .duplicate(0.1)
            .reorder(0.3, Duration::from_millis(5));
    });
    let mut unique = faulty.clone();
    unique.sort();
    unique.dedup();
    let lost = 200 - unique.len();
    let duplicated = faulty.len() - unique.len();
    let out_of_order = faulty.windows(2).filter(|w| w[1] < w[0]).count();
    assert!((15..=70).contains(&lost), "lost {lost}");
    assert!((3..=40).contains(&duplicated), "duplicated {duplicated}");
    assert!(out_of_order >= 10, "out of order {out_of_order}");
    assert_eq!(
        faulty,
        udp_sim(1, |sim| {
            sim.net()
                .latency(Latency::Fixed(Duration::from_millis(1)))
                .loss(0.2)
                .duplicate(0.1)
                .reorder(0.3, Duration::from_millis(5));
        }),
        "the same seed drops and reorders the same datagrams"
    );
}

/// tokio's UDP surface in a simulation: `send_to` and `connect` take
/// `"host:port"`, `lookup_host` answers from the simulated hosts, and a
/// connected socket hears only its peer.
fn named_udp_sim(seed: u64, heard: &Arc<Mutex<Vec<String>>>) -> Sim {
    let heard = Arc::clone(heard);
    let mut sim = Sim::new(seed);
    sim.net().latency(Latency::Uniform(
        Duration::from_millis(1),
        Duration::from_millis(3),
    ));
    sim.host("echo", || async {
        let socket = UdpSocket::bind("0.0.0.0:9000").await?;
        let mut buf = [0u8; 64];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await?;
            socket.send_to(&buf[..n], from).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    });
    sim.host("noise", || async {
        // Datagrams to the client's port that its connected socket drops.
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        for i in 0..20u32 {
            socket
                .send_to(format!("noise {i}").as_bytes(), "client:4000")
                .await?;
            sleep(Duration::from_millis(1)).await;
        }
        Ok::<(), io::Error>(())
    });
    sim.client("client", async move {
        let echo: Vec<_> = deja::net::lookup_host("echo:9000").await?.collect();
        assert_eq!(echo, vec!["10.0.0.1:9000".parse().unwrap()]);
        let unknown = deja::net::lookup_host("nowhere:1")
            .await
            .err()
            .expect("no such host");
        assert_eq!(unknown.kind(), io::ErrorKind::NotFound);
        let socket = UdpSocket::bind("0.0.0.0:4000").await?;
        socket.send_to(b"by name", "echo:9000").await?;
        let mut buf = [0u8; 64];
        // Not connected yet: the noise host's datagrams arrive too.
        loop {
            let (n, from) = socket.recv_from(&mut buf).await?;
            if from == echo[0] {
                let text = String::from_utf8_lossy(&buf[..n]);
                heard.lock().unwrap().push(format!("{from} {text}"));
                break;
            }
            assert!(buf[..n].starts_with(b"noise"));
        }
        socket.connect("echo:9000").await?;
        assert_eq!(socket.peer_addr()?, echo[0]);
        for i in 0..10 {
            socket.send(format!("ping {i}").as_bytes()).await?;
            let n = socket.recv(&mut buf).await?;
            heard
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        Ok::<(), io::Error>(())
    });
    sim
}

#[test]
fn udp_takes_names_and_a_connected_socket_hears_only_its_peer() {
    let heard = Arc::new(Mutex::new(Vec::new()));
    for seed in 0..5 {
        check_determinism(seed, |seed| named_udp_sim(seed, &heard))
            .unwrap_or_else(|difference| panic!("seed {seed}: {difference}"));
    }
    let heard = heard.lock().unwrap();
    let mut expected = vec!["10.0.0.1:9000 by name".to_string()];
    expected.extend((0..10).map(|i| format!("ping {i}")));
    for run in heard.chunks(expected.len()) {
        assert_eq!(
            run,
            expected.as_slice(),
            "noise never reaches a connected socket"
        );
    }
    assert_eq!(heard.len(), 10 * expected.len());
}

#[test]
fn an_hour_of_heartbeats_runs_on_virtual_time() {
    let mut sim = Sim::new(0);
    sim.client("heartbeat", async {
        let mut ticks = deja::time::interval(Duration::from_secs(1));
        for _ in 0..=3600 {
            ticks.tick().await;
        }
    });
    let report = sim.run().expect("passes");
    println!(
        "one virtual hour of heartbeats: {} events in {:?} wall",
        report.events, report.wall_time
    );
    assert_eq!(report.virtual_time, Duration::from_secs(3600));
    assert!(report.events > 3600);
}

#[test]
fn a_client_that_panics_fails_the_run_and_its_log_panics_again_in_replay() {
    let dir = tempfile::tempdir().unwrap();
    let client = || async {
        let reply = ask(&format!("mirror:{PORT}"), "abc").await.unwrap();
        assert_eq!(reply, "abc", "the mirror reversed it");
    };
    let mut sim = Sim::new(8);
    sim.host("mirror", || {
        line_server(|line| line.chars().rev().collect())
    });
    sim.client("client", client());
    sim.log_dir(dir.path());
    let failure = sim.run().expect_err("the client panics");
    let FailureKind::Panicked { host, message } = &failure.kind else {
        panic!("{:?}", failure.kind);
    };
    assert_eq!(host, "client");
    assert!(message.contains("the mirror reversed it"), "{message}");

    let mut runtime = deja::Builder::new()
        .mode(deja::Mode::Replay)
        .trace_dir(&failure.logs[1])
        .service("client")
        .build()
        .unwrap();
    let replayed =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(client())));
    let payload = replayed.expect_err("the replay panics where the run did");
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("the mirror reversed it"), "{text}");
}

/// The command a failure log records reruns this very test in replay
/// mode, which is what `deja replay RUN_DIR` does.
#[test]
fn a_failure_log_replays_through_its_recorded_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(33);
    sim.host("mirror", || {
        line_server(|line| line.chars().rev().collect())
    });
    sim.client("client", async {
        let reply = ask(&format!("mirror:{PORT}"), "live").await?;
        deja::mark("reply", &reply);
        if reply != "live" {
            return Err(io::Error::other(format!("mirror answered {reply:?}")));
        }
        Ok(())
    });
    sim.log_dir(dir.path());
    // Under replay, `run` replays the client and exits the process.
    let failure = sim.run().expect_err("the client errs");

    let client_log = &failure.logs[1];
    let reader = deja::recorder::RunReader::open(client_log).unwrap();
    let argv = reader.header().unwrap().run.argv.clone();
    assert!(
        argv.contains(&"a_failure_log_replays_through_its_recorded_command_line".to_string()),
        "{argv:?}"
    );
    let output = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("DEJA_MODE", "replay")
        .env("DEJA_TRACE", client_log)
        .env("DEJA_BREAK", "kind=mark")
        .env("DEJA_ON_BREAK", "print")
        .env_remove("DEJA_SEED")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "the client's exit code: {stderr}"
    );
    assert!(stderr.contains("evil"), "the mark and the error: {stderr}");
    assert!(stderr.contains("deja: replay complete"), "{stderr}");
}

fn chaos_sim(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.host("a", || line_server(|line| format!("a:{line}")));
    sim.host("b", || line_server(|line| format!("b:{line}")));
    sim.chaos()
        .partitions(Duration::from_secs(2), Duration::from_secs(1))
        .crashes(Duration::from_secs(3), Duration::from_millis(500));
    sim.time_limit(Duration::from_secs(120));
    sim.client("retrier", async {
        let mut answered = 0;
        let mut failed = 0;
        // Bounded: 60 rounds of a request to each server, retried.
        for round in 0..60 {
            for server in ["a", "b"] {
                let asked = timeout(
                    Duration::from_millis(200),
                    ask(&format!("{server}:{PORT}"), &round.to_string()),
                )
                .await;
                match asked {
                    Ok(Ok(reply)) => {
                        assert_eq!(reply, format!("{server}:{round}"));
                        answered += 1;
                    }
                    _ => failed += 1,
                }
            }
            sleep(Duration::from_millis(500)).await;
        }
        deja::mark("outcome", format!("{answered} answered, {failed} failed"));
        assert!(answered > 60, "most requests get through: {answered}");
        assert!(failed > 0, "chaos made some fail");
    });
    sim
}

#[test]
fn chaos_draws_partitions_and_crashes_from_the_seed() {
    let first = chaos_sim(12).run().expect("the retrier copes");
    assert!(first.faults >= 20, "{} faults", first.faults);
    let restarts = first.hosts.iter().filter(|h| h.incarnation > 0).count();
    assert!(restarts >= 3, "{restarts} restarts: {:?}", first.hosts);
    let again = chaos_sim(12).run().expect("passes again");
    assert_eq!(again.digest, first.digest);
    assert_eq!(again.faults, first.faults);
    let other = chaos_sim(13).run().expect("another seed passes");
    assert_ne!(other.digest, first.digest);
}

/// Fails when its first roll is a zero: about one seed in four.
fn dice(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.client("dice", async {
        let roll = deja::rand::rng().random_range(0..4);
        sleep(Duration::from_millis(roll)).await;
        if roll == 0 {
            return Err(io::Error::other("rolled a zero"));
        }
        Ok(())
    });
    sim
}

#[test]
fn a_sweep_reports_every_failing_seed_and_logs_the_first_few() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = deja::sim::Sweep::new(0..40)
        .jobs(2)
        .progress(false)
        .collect_all()
        .log_dir(dir.path());
    let report = sweep.run(dice);
    assert_eq!(report.seeds_run, 40);
    let failing = report.failing_seeds();
    assert!((3..=25).contains(&failing.len()), "{failing:?}");
    assert!(
        failing.windows(2).all(|w| w[0] < w[1]),
        "sorted: {failing:?}"
    );
    let logged = report
        .failures
        .iter()
        .filter(|f| !f.logs.is_empty())
        .count();
    assert!(
        logged <= deja::sim::LOGGED_FAILURES_MAX + 1,
        "{logged} logged"
    );
    assert!(logged >= 1);
    assert!(
        report.summary().contains("failing seeds:"),
        "{}",
        report.summary()
    );
    assert_eq!(
        sweep.run(dice).failing_seeds(),
        failing,
        "the same seeds fail again"
    );
}

/// A sweep split into shards runs each seed exactly once across them, and
/// the shards' records merge into the unsharded sweep's.
#[test]
fn shards_of_a_sweep_cover_it_exactly_and_merge_into_it() {
    use deja_replayer::sweep::merge;

    let dir = tempfile::tempdir().unwrap();
    let sweep = |shard: Option<u64>| {
        let mut sweep = deja::sim::Sweep::new(0..30)
            .jobs(2)
            .quiet(true)
            .collect_all()
            .log_dir(dir.path());
        if let Some(index) = shard {
            sweep = sweep.shard(index, 4);
        }
        sweep
    };
    let whole = sweep(None).run(dice);
    assert_eq!(whole.seeds_run, 30);
    assert!(!whole.failing_seeds().is_empty());

    let mut covered = Vec::new();
    let mut records = Vec::new();
    for index in [3, 1, 4, 2] {
        let junit = dir.path().join(format!("shard-{index}.xml"));
        let report_file = dir.path().join(format!("shard-{index}.json"));
        let shard = sweep(Some(index)).junit(&junit).report(&report_file);
        let seeds = shard.seeds();
        let report = shard.run(dice);
        assert_eq!(report.seeds_run, seeds.end - seeds.start);
        covered.extend(seeds);
        let xml = std::fs::read_to_string(&junit).unwrap();
        assert_eq!(
            xml.matches("<testcase ").count() as u64,
            report.seeds_run,
            "{xml}"
        );
        assert_eq!(
            xml.matches("<failure ").count(),
            report.failures.len(),
            "{xml}"
        );
        let record = deja::sim::SweepRecord::read(&report_file).unwrap();
        assert_eq!(&record, report.record());
        records.push(record);
    }
    covered.sort_unstable();
    assert_eq!(covered, (0..30).collect::<Vec<_>>(), "each seed once");

    let merged = merge(records).unwrap();
    let mut expected = whole.record().clone();
    // Wall time and failure output (log paths) are the only differences.
    expected.wall_ms = merged.wall_ms;
    for (merged, whole) in merged.failures.iter().zip(&mut expected.failures) {
        whole.output.clone_from(&merged.output);
    }
    assert_eq!(merged, expected);
}

/// Every host has a tokio runtime on virtual time: tokio's timers work
/// in a simulation (runtime/tests/sim_tokio.rs has the rest).
#[test]
fn tokio_timers_inside_a_simulation_run_on_virtual_time() {
    let mut sim = Sim::new(0);
    sim.client("tokio", async {
        #[allow(clippy::disallowed_methods)]
        tokio::time::sleep(Duration::from_millis(1500)).await;
    });
    let report = sim.run().expect("tokio's timer fires on virtual time");
    assert_eq!(report.virtual_time, Duration::from_millis(1500));
    assert!(report.tokio_ticks >= 1500, "{report:?}");
}
