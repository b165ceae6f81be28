//! `deja timeline`: three services (gateway, orders, payments) logged by a
//! simulation with payments' clock 250 ms ahead. The merged order puts
//! every cause first; the offset estimate's bounds hold the true offset.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use deja::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use deja::net::{TcpListener, TcpStream};
use deja::sim::{Latency, Sim};
use deja::time::Duration;
use deja_replayer::timeline::{Link, Timeline};
use deja_tests::e2e::{run_bounded, workspace_bin};

/// Payments' wall clock runs this far ahead.
const SKEW: Duration = Duration::from_millis(250);
const PORT: u16 = 8000;
const REQUESTS: usize = 12;

/// Send one line to `addr`, read one line back.
async fn call(addr: &str, line: &str) -> io::Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await?;
    BufReader::new(read)
        .lines()
        .next_line()
        .await?
        .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

/// Serve lines, answering each with `handle(line)`, which may call on.
async fn serve<F, Fut>(handle: F) -> io::Result<()>
where
    F: Fn(String) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = io::Result<String>> + Send,
{
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        deja::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Some(line) = lines.next_line().await? {
                let reply = handle(line).await?;
                write.write_all(format!("{reply}\n").as_bytes()).await?;
            }
            Ok::<(), io::Error>(())
        });
    }
}

fn shop(seed: u64, logs: &Path) -> Sim {
    let mut sim = Sim::new(seed);
    sim.always_write_logs().log_dir(logs);
    sim.net().latency(Latency::Uniform(
        Duration::from_micros(200),
        Duration::from_millis(3),
    ));
    sim.host("gateway", || {
        serve(|line| async move { call(&format!("orders:{PORT}"), &line).await })
    });
    sim.host("orders", || {
        serve(|line| async move {
            deja::mark("order", &line);
            let paid = call(&format!("payments:{PORT}"), &format!("PAY {line}")).await?;
            Ok(format!("ORDERED {line} {paid}"))
        })
    });
    sim.host("payments", || {
        serve(|line| async move { Ok(line.replace("PAY", "PAID")) })
    })
    .clock_ahead(SKEW);
    sim.client("users", async {
        for i in 0..REQUESTS {
            let reply = call(&format!("gateway:{PORT}"), &format!("o{i}")).await?;
            assert_eq!(reply, format!("ORDERED o{i} PAID o{i}"));
        }
        Ok::<(), io::Error>(())
    });
    sim
}

fn logs_of(report: &deja::sim::SimReport, hosts: &[&str]) -> Vec<PathBuf> {
    hosts
        .iter()
        .map(|host| {
            report
                .logs
                .iter()
                .find(|log| log.file_name().unwrap().to_string_lossy().starts_with(host))
                .unwrap_or_else(|| panic!("no log of {host}: {:?}", report.logs))
                .clone()
        })
        .collect()
}

#[test]
fn the_timeline_orders_causes_first_and_bounds_the_injected_clock_offset() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(3, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let timeline = Timeline::load(&runs).unwrap();

    // Every request crosses three links both ways: 4 × 2 reads per request.
    let reads = timeline
        .matches
        .iter()
        .filter(|m| matches!(m.link, Link::Bytes { .. }))
        .count();
    assert_eq!(reads, REQUESTS * 6, "every read matched to its write");
    assert_eq!(timeline.unmatched_receives, 0);
    assert_eq!(timeline.order_conflicts, 0);
    let position: std::collections::HashMap<_, _> = timeline
        .order
        .iter()
        .enumerate()
        .map(|(i, at)| (*at, i))
        .collect();
    for m in timeline
        .matches
        .iter()
        .filter(|m| m.link != Link::Connection)
    {
        assert!(
            position[&m.cause] < position[&m.effect],
            "cause first: {m:?}"
        );
    }

    // orders is run 1, payments run 2: payments' clock minus orders'.
    let clock = timeline
        .clocks
        .iter()
        .find(|c| (c.a, c.b) == (1, 2))
        .expect("orders and payments exchanged messages");
    let truth = SKEW.as_nanos() as i64;
    let (lower, upper) = (clock.lower_ns.unwrap(), clock.upper_ns.unwrap());
    println!(
        "payments - orders: estimate {} ns in [{lower}, {upper}], truth {truth}",
        clock.estimate_ns
    );
    assert!(
        lower <= truth && truth <= upper,
        "the truth lies inside the bounds"
    );
    assert!((clock.estimate_ns - truth).abs() <= (upper - lower) / 2 + 1);
    assert!(upper - lower < 6_000_000, "bounds within two link delays");
    // gateway and orders share a clock: their offset's bounds hold 0.
    let same = timeline
        .clocks
        .iter()
        .find(|c| (c.a, c.b) == (0, 1))
        .unwrap();
    assert!(same.lower_ns.unwrap() <= 0 && 0 <= same.upper_ns.unwrap());

    // On raw clocks, every reply from payments arrives "before" it left.
    assert_eq!(timeline.effects_before_causes.len(), REQUESTS);
    for flagged in &timeline.effects_before_causes {
        assert_eq!((flagged.link.cause.run, flagged.link.effect.run), (2, 1));
        assert!(flagged.by_ns > 200_000_000, "{flagged:?}");
    }
}

#[test]
fn deja_timeline_prints_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(4, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let text = run_bounded(
        Command::new(workspace_bin("deja"))
            .arg("timeline")
            .args(&runs),
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(
        text.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    assert!(stdout.starts_with("timeline: 4 runs,"), "{stdout}");
    assert!(stdout.contains("payments - orders: +0.2"), "{stdout}");
    assert!(
        stdout.contains("effects before causes (12; raw clocks)"),
        "{stdout}"
    );
    assert!(stdout.contains("<- payments#"), "{stdout}");

    let json = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["timeline", "--format", "json"])
            .args(&runs),
    );
    assert_eq!(json.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&json.stdout);
    let mut lines = stdout.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["runs"].as_array().unwrap().len(), 4);
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let total: u64 = header["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["events"].as_u64().unwrap())
        .sum();
    assert_eq!(events.len() as u64, total);
    assert!(events
        .iter()
        .any(|e| e["cause"]["link"]["bytes"].is_object()));
}

#[test]
fn the_perfetto_export_is_a_valid_trace_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(5, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let file = dir.path().join("trace.json");
    let exported = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["timeline", "--format", "perfetto", "--out"])
            .arg(&file)
            .args(&runs),
    );
    assert_eq!(exported.status.code(), Some(0));
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).expect("one JSON document");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let mut processes = Vec::new();
    let mut flows: std::collections::HashMap<u64, (Option<f64>, Option<f64>)> = Default::default();
    let mut slices = 0;
    for event in events {
        let ph = event["ph"].as_str().expect("every event has a phase");
        assert!(event["pid"].is_u64() && event["tid"].is_u64(), "{event}");
        match ph {
            "M" => {
                let name = event["args"]["name"].as_str().unwrap().to_string();
                if event["name"] == "process_name" {
                    processes.push(name);
                }
            }
            "X" => {
                slices += 1;
                assert!(event["ts"].as_f64().unwrap() >= 0.0, "{event}");
                assert!(event["dur"].as_f64().unwrap() > 0.0);
                assert!(event["name"].is_string() && event["cat"].is_string());
            }
            "s" | "f" => {
                let id = event["id"].as_u64().unwrap();
                let ts = event["ts"].as_f64();
                let entry = flows.entry(id).or_default();
                if ph == "s" {
                    entry.0 = ts;
                } else {
                    assert_eq!(event["bp"], "e", "flows bind to the enclosing slice");
                    entry.1 = ts;
                }
            }
            other => panic!("unexpected phase {other}"),
        }
    }
    processes.sort();
    assert_eq!(processes, ["gateway", "orders", "payments", "users"]);
    let total: usize = runs
        .iter()
        .map(|run| {
            Timeline::load(std::slice::from_ref(run))
                .unwrap()
                .order
                .len()
        })
        .sum();
    assert_eq!(slices, total, "one slice per event");
    assert_eq!(flows.len(), REQUESTS * 6, "one arrow per matched read");
    for (id, (start, finish)) in flows {
        let (start, finish) = (start.unwrap(), finish.unwrap());
        assert!(start <= finish, "flow {id} goes forward in time");
    }
}

/// Peak resident memory of this process, KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// About a million events over three logs. Slow in a debug build: run
/// with `cargo test --release -p deja-tests --test timeline -- --ignored`.
#[test]
#[ignore = "a measurement: a million events"]
fn a_million_events_merge_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(1);
    sim.always_write_logs().log_dir(dir.path());
    sim.write_logs(true).keep_write_bytes(false);
    sim.host("gateway", || {
        serve(|line| async move { call(&format!("orders:{PORT}"), &line).await })
    });
    sim.host("orders", || serve(|line| async move { Ok(line) }));
    sim.client("users", async {
        let mut tasks = Vec::new();
        for user in 0..16 {
            tasks.push(deja::spawn(async move {
                for i in 0..2_900 {
                    call(&format!("gateway:{PORT}"), &format!("u{user} {i}")).await?;
                }
                Ok::<(), io::Error>(())
            }));
        }
        for task in tasks {
            task.await.expect("user")?;
        }
        Ok::<(), io::Error>(())
    });
    sim.time_limit(Duration::from_secs(24 * 3600));
    let report = sim.run().expect("runs");
    let runs = logs_of(&report, &["gateway", "orders", "users"]);
    let before = peak_rss_kib();
    let started = std::time::Instant::now();
    let timeline = Timeline::load(&runs).unwrap();
    let merged = started.elapsed();
    let events = timeline.order.len();
    println!(
        "timeline of {events} events in 3 logs: {:.2}s, peak RSS {} MiB (before loading: {} MiB), {} matches",
        merged.as_secs_f64(),
        peak_rss_kib() / 1024,
        before / 1024,
        timeline.matches.len()
    );
    assert!(events >= 1_000_000, "{events}");
    assert_eq!(timeline.order_conflicts, 0);
}
