//! A real axum stack recorded and replayed end to end, as processes:
//! `axum-shop serve` (axum, tower-http's timeout and request-id layers,
//! hyper-util's pooled client to an upstream, a `tokio::sync::Mutex`,
//! tracing with timestamps, uuid v4) under `deja record`, driven by
//! [`CLIENTS`] keep-alive clients, stopped with SIGTERM, then replayed with
//! `deja replay` with the upstream gone and, where `unshare --net` works,
//! without any network at all.
//!
//! - `a_loaded_axum_service_replays_offline_to_one_digest`: record under
//!   normal upstream latency (every answer 200), check the log holds the
//!   writes (`deja inspect --kind send --json`) and what the clients got;
//!   a build that answers differently exits 3 ("diverged"); 20 replays
//!   exit 0 with one digest and the service's own log lines as recorded
//!   (timestamps within half a second: ARCHITECTURE.md, "Library code").
//! - `timeouts_fired_in_the_recording_fire_in_replay`: a slow upstream
//!   (0-120 ms against the 50 ms `TimeoutLayer`) gives a mix of 200 and
//!   408; 4 replays each exit 0 with one digest and the same log, or stop
//!   with a divergence report (about half of these recordings here: with
//!   many handlers waiting on the pool and on their timeouts at once,
//!   hyper-util's pool hands connections out in an order replay does not
//!   always reproduce; ARCHITECTURE.md, "What deja guarantees").
//! - `sixteen_clients_replay_offline_to_one_digest`: the load, 16
//!   keep-alive clients, recorded and replayed 20 times offline, each
//!   with one digest and the recorded log.

#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use deja_fixtures::axum_shop::{parse_answer, Answer};
use deja_fixtures::kv_server::{clean_command, KvServer};
use deja_tests::e2e::{
    offline_available, only_run, replay_summary, run_bounded, workspace_bin, CHILD_TIMEOUT,
};

/// Concurrent keep-alive clients of the tests that check the log's
/// bytes and the timeouts; the load, 16, has a test of its own
/// ([`sixteen_clients_replay_offline_to_one_digest`]), exact since hyper's
/// `Date` header at a second boundary replays (ARCHITECTURE.md, "Library
/// code").
const CLIENTS: usize = 2;
const REQUESTS: usize = 10;
/// Longest one replay may take before it counts as hung (a good one
/// takes well under a second).
const REPLAY_LIMIT: Duration = Duration::from_secs(10);

/// A child started in a process group of its own, with everything it
/// started in turn (`deja record` runs the service as its child): the
/// whole group is killed when this is dropped, so a failing test leaves
/// no process behind.
struct Group(KvServer);

impl Group {
    fn start(mut command: Command, what: &str) -> Group {
        command.process_group(0);
        Group(KvServer::start(command).unwrap_or_else(|err| panic!("{what}: {err}")))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.0.id());
    }
}

/// SIGKILL to the process group `leader` leads (nothing if it is gone).
fn kill_group(leader: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(leader) {
        // SAFETY: kill(2) on a process group this test created; no memory
        // is involved.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// `axum-shop upstream` on a free port, killed when dropped.
fn start_upstream(delay_ms: u64) -> Group {
    let mut upstream = clean_command(workspace_bin("axum-shop"));
    upstream
        .args([
            "upstream",
            "--port",
            "0",
            "--delay-ms",
            &delay_ms.to_string(),
        ])
        .stderr(Stdio::null());
    Group::start(upstream, "axum-shop upstream starts and prints its address")
}

/// `axum-shop serve`'s arguments, the same for the recording and the
/// replays.
fn serve_args(upstream: &str) -> Vec<String> {
    ["serve", "--port", "0", "--upstream", upstream]
        .into_iter()
        .map(String::from)
        .collect()
}

/// A recording of `axum-shop serve` under load.
struct Recording {
    _out: tempfile::TempDir,
    run: PathBuf,
    upstream: String,
    answers: Vec<Answer>,
    /// `deja record`'s stderr: the service's log, then deja's lines.
    stderr: String,
}

/// Starts the upstream, records the shop under `clients` x `REQUESTS`,
/// stops it with SIGTERM, and stops the upstream (by its pid).
fn record(delay_ms: u64, keep_writes: bool, clients: usize) -> Recording {
    let upstream = start_upstream(delay_ms);
    let upstream_addr = upstream.0.addr().to_string();
    let out = tempfile::tempdir().expect("scratch directory");
    let mut record = clean_command(workspace_bin("deja"));
    record
        .arg("record")
        .arg("--out")
        .arg(out.path())
        .arg("--")
        .arg(workspace_bin("axum-shop"))
        .args(serve_args(&upstream_addr))
        .stderr(std::fs::File::create(out.path().join("record.stderr")).expect("record.stderr"));
    if keep_writes {
        record.env("DEJA_KEEP_WRITES", "1");
    }
    let mut service = Group::start(record, "deja record -- axum-shop serve prints its address");
    let load = run_bounded(Command::new(workspace_bin("axum-shop")).args([
        "load",
        "--addr",
        &service.0.addr().to_string(),
        "--clients",
        &clients.to_string(),
        "--requests",
        &REQUESTS.to_string(),
        "--seed",
        "7",
    ]));
    let load_out = String::from_utf8_lossy(&load.stdout).into_owned();
    let load_err = String::from_utf8_lossy(&load.stderr).into_owned();
    assert!(load.status.success(), "load failed: {load_err}\n{load_out}");
    let answers: Vec<Answer> = load_out
        .lines()
        .map(|line| parse_answer(line).unwrap_or_else(|| panic!("bad load line {line:?}")))
        .collect();
    assert_eq!(answers.len(), clients * REQUESTS, "{load_err}");
    // The load's output is in (client, request) order whatever the timing.
    let order: Vec<_> = answers.iter().map(|a| (a.client, a.request)).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted);

    service.0.terminate().expect("SIGTERM to deja record");
    let (code, stderr) = finish_recording(&mut service.0, out.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("deja: recorded"), "{stderr}");
    // The outside world goes away: replay must not need it.
    drop(upstream);
    Recording {
        run: only_run(out.path()),
        _out: out,
        upstream: upstream_addr,
        answers,
        stderr,
    }
}

/// The service's own log lines (tracing's fmt output): (timestamp, rest).
fn service_log(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|level| ["INFO", "WARN", "ERROR"].contains(&level))
        })
        .map(|line| {
            let (stamp, rest) = line.split_once(' ').expect("a timestamp first");
            (stamp.to_string(), rest.trim_start().to_string())
        })
        .collect()
}

/// Runs `command` with a time limit: its output, or why not (it is
/// killed past the limit).
fn run_limited(command: &mut Command, limit: Duration) -> Result<Output, String> {
    command.process_group(0);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("spawning: {err}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                // The whole group: `deja replay` runs the service as its child.
                kill_group(child.id());
                let _ = child.wait();
                let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default())
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ");
                return Err(format!(
                    "hung: killed after {limit:?} (last stderr lines, newest first: {err})"
                ));
            }
            Err(err) => return Err(format!("waiting: {err}")),
        }
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Waits (bounded) for `deja record` to exit: its code and stderr.
fn finish_recording(service: &mut KvServer, out: &Path) -> (Option<i32>, String) {
    let status = service
        .wait_timeout(CHILD_TIMEOUT)
        .expect("waiting for deja record")
        .expect("deja record exits after SIGTERM");
    let stderr = std::fs::read_to_string(out.join("record.stderr")).expect("record.stderr");
    (status.code(), stderr)
}

/// Whether replays can run without a network (`unshare --net`, root).
/// `deja replay RUN -- axum-shop serve ...`, under `unshare --net` when
/// `offline`.
fn replay_command(recording: &Recording, offline: bool, extra: &[&str]) -> Command {
    let mut args: Vec<std::ffi::OsString> = vec!["replay".into(), recording.run.clone().into()];
    args.push("--".into());
    args.push(workspace_bin("axum-shop").into());
    args.extend(serve_args(&recording.upstream).into_iter().map(Into::into));
    args.extend(extra.iter().map(Into::into));
    let mut command = if offline {
        let mut command = clean_command("unshare");
        command.args(["--net", "--"]).arg(workspace_bin("deja"));
        command
    } else {
        clean_command(workspace_bin("deja"))
    };
    command.args(args);
    command
}

/// The first line of a replay's report (`deja: replay ...`).
fn replay_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|line| line.starts_with("deja: replay") || line.starts_with("deja:"))
        .unwrap_or("(no deja line)")
        .to_string()
}

/// Replays `times` times (stopping at the first failure): every replay
/// must exit 0 with "replay complete", all with one digest, and print the
/// service's log as recorded. Returns the digest, or what went wrong.
/// How a run of replays must end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every replay completes, with one digest.
    Exact,
    /// Each replay completes (all with one digest) or stops with a
    /// divergence report (exit 3); none hangs or ends otherwise.
    ExactOrReported,
}

fn replay_times(
    recording: &Recording,
    times: usize,
    offline: bool,
    expect: Expect,
) -> Result<String, String> {
    let recorded_log = service_log(&recording.stderr);
    let mut digests = BTreeSet::new();
    let mut reported = 0;
    for round in 1..=times {
        let started = Instant::now();
        let output = run_limited(&mut replay_command(recording, offline, &[]), REPLAY_LIMIT)
            .map_err(|why| format!("replay {round} of {times}: {why}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let diverged = output.status.code() == Some(3) && stderr.contains("replay diverged");
        if diverged && expect == Expect::ExactOrReported {
            if reported == 0 {
                let report: Vec<&str> = stderr
                    .lines()
                    .skip_while(|line| !line.starts_with("deja:"))
                    .take(3)
                    .collect();
                eprintln!("replay {round} of {times}: {}", report.join("\n    "));
            }
            reported += 1;
            continue;
        }
        let Some((_events, digest)) = replay_summary(&stderr).filter(|_| output.status.success())
        else {
            let divergence: Vec<&str> = stderr
                .lines()
                .skip_while(|line| !line.starts_with("deja:"))
                .take(4)
                .collect();
            return Err(format!(
                "replay {round} of {times}: exit {:?} after {:.1?}: {}",
                output.status.code(),
                started.elapsed(),
                divergence.join("\n    ")
            ));
        };
        digests.insert(digest);
        // The service's own log, as recorded (timestamps apart: checked below).
        let replayed_log = service_log(&stderr);
        // As a multiset: stderr is not intercepted, so two tasks' lines
        // may interleave otherwise; what each line says must match.
        let rests = |log: &[(String, String)]| {
            let mut rests = log.iter().map(|(_, rest)| rest.clone()).collect::<Vec<_>>();
            rests.sort();
            rests
        };
        if rests(&replayed_log) != rests(&recorded_log) {
            return Err(format!(
                "replay {round} of {times}: the service logged other lines than in the recording"
            ));
        }
        // tracing's timestamps are clock readings of the service's tasks,
        // handed back from the log; inside hyper's connection task they
        // are matched by order, and hyper reads the clock on every poll,
        // so a line may carry a neighbouring reading (ARCHITECTURE.md,
        // "Library code"): close to the recorded time, never far.
        let by_line = |log: &[(String, String)]| {
            let mut lines = log.to_vec();
            lines.sort_by(|a, b| a.1.cmp(&b.1));
            lines
        };
        let far = by_line(&replayed_log)
            .iter()
            .zip(&by_line(&recorded_log))
            .filter(|(replayed, recorded)| !stamps_close(&replayed.0, &recorded.0))
            .count();
        if far > 0 {
            return Err(format!(
                "replay {round} of {times}: {far} of {} service log lines carry timestamps more than {STAMP_SLACK_S} s from the recorded ones",
                recorded_log.len()
            ));
        }
    }
    if reported > 0 {
        eprintln!("{reported} of {times} replays stopped with a divergence report");
    }
    match digests.len() {
        0 if reported == times => Ok("every replay diverged, and said where".into()),
        1 => Ok(digests.pop_first().expect("one digest")),
        _ => Err(format!(
            "{times} replays gave {} digests: {digests:?}",
            digests.len()
        )),
    }
}

/// The recorded writes, from `deja inspect RUN --kind send --json`: (conn, bytes).
fn recorded_writes(run: &Path) -> Vec<(u64, Vec<u8>)> {
    let output = run_bounded(
        clean_command(workspace_bin("deja"))
            .arg("inspect")
            .arg(run)
            .args(["--kind", "send", "--json"]),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("a JSON event");
            let write = &event["kind"]["TcpWrite"];
            assert!(write.is_object(), "not a TCP write: {line}");
            let written = &write["result"]["Ok"];
            let len = written["len"].as_u64().expect("a length");
            let bytes: Vec<u8> = match &written["bytes"] {
                serde_json::Value::Array(bytes) => bytes
                    .iter()
                    .map(|b| b.as_u64().expect("a byte") as u8)
                    .collect(),
                other => panic!("DEJA_KEEP_WRITES=1 keeps the bytes, got {other}"),
            };
            assert_eq!(bytes.len() as u64, len, "{line}");
            (write["conn"].as_u64().expect("a conn"), bytes)
        })
        .collect()
}

#[test]
fn a_loaded_axum_service_replays_offline_to_one_digest() {
    let started = Instant::now();
    let recording = record(5, true, CLIENTS);
    eprintln!("recorded in {:.1?}", started.elapsed());

    // a. What the clients got: 200s (a 408 only if this machine stalled
    // past 50 ms), each with its request id in the header and the body.
    let ok: Vec<&Answer> = recording
        .answers
        .iter()
        .filter(|a| a.status == 200)
        .collect();
    let others: Vec<&Answer> = recording
        .answers
        .iter()
        .filter(|a| a.status != 200)
        .collect();
    assert!(
        others.iter().all(|a| a.status == 408) && ok.len() * 10 >= recording.answers.len() * 9,
        "{others:?}"
    );
    let mut orders = BTreeSet::new();
    for answer in &ok {
        let body: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON body");
        assert_eq!(body["request_id"], answer.request_id.as_str(), "{answer}");
        assert_eq!(body["item"], answer.item.as_str(), "{answer}");
        assert_eq!(
            body["cents"],
            deja_fixtures::axum_shop::price_of(&answer.item),
            "{answer}"
        );
        assert!(body.get("variant").is_none(), "{answer}");
        orders.insert(body["order"].as_u64().expect("an order number"));
    }
    assert_eq!(orders.len(), ok.len(), "order numbers are unique");
    let ids: BTreeSet<_> = recording.answers.iter().map(|a| &a.request_id).collect();
    assert_eq!(ids.len(), recording.answers.len(), "request ids are unique");

    // The log holds the shop's writes: every answer's body and request id,
    // and its requests to the upstream.
    let writes = recorded_writes(&recording.run);
    let text: Vec<String> = writes
        .iter()
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
        .collect();
    for answer in &ok {
        assert!(
            text.iter()
                .any(|write| write.contains(&answer.body) && write.contains(&answer.request_id)),
            "no recorded write holds {answer}"
        );
    }
    let upstream_calls = text.iter().filter(|w| w.starts_with("GET /price/")).count();
    assert!(
        upstream_calls >= ok.len(),
        "{upstream_calls} upstream requests"
    );
    // And the service's log has one `response` line per answer.
    let responses = service_log(&recording.stderr)
        .iter()
        .filter(|(_, rest)| rest.contains(" response "))
        .count();
    assert_eq!(responses, recording.answers.len(), "{}", recording.stderr);

    let offline = offline_available();
    if !offline {
        eprintln!("`unshare --net` is not available here: replaying with the network up (the upstream is stopped)");
    }

    // d. A build that answers differently diverges (checked before the
    // 20 replays so that both results are reported).
    let changed = run_limited(
        &mut replay_command(&recording, offline, &["--variant", "changed"]),
        REPLAY_LIMIT,
    );
    let changed_verdict = match &changed {
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.code() == Some(3) && stderr.contains("diverged") {
                Ok(())
            } else {
                Err(format!(
                    "the changed build: exit {:?}, {}",
                    output.status.code(),
                    replay_line(&stderr)
                ))
            }
        }
        Err(why) => Err(format!("the changed build: {why}")),
    };

    // b. 20 replays, upstream gone (and no network, where possible).
    let replays_started = Instant::now();
    let replays = replay_times(&recording, 20, offline, Expect::Exact);
    eprintln!(
        "replays ({}): {:.1?}; total {:.1?}",
        if offline {
            "unshare --net"
        } else {
            "network up"
        },
        replays_started.elapsed(),
        started.elapsed()
    );
    let mut failures = Vec::new();
    if let Err(why) = &replays {
        failures.push(why.clone());
    }
    if let Err(why) = &changed_verdict {
        failures.push(why.clone());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn timeouts_fired_in_the_recording_fire_in_replay() {
    let started = Instant::now();
    // c. Upstream answers take 0-120 ms, the shop gives up at 50.
    let recording = record(120, false, CLIENTS);
    let statuses: BTreeSet<u16> = recording.answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        BTreeSet::from([200, 408]),
        "{:?}",
        recording.answers
    );
    for answer in recording.answers.iter().filter(|a| a.status == 408) {
        // The request-id layer sits outside the timeout: a 408 has one too.
        assert_ne!(answer.request_id, "-", "{answer}");
        assert!(answer.body.is_empty(), "{answer}");
    }
    let timeouts = recording.answers.iter().filter(|a| a.status == 408).count();
    eprintln!(
        "recorded {timeouts} timeouts of {} in {:.1?}",
        recording.answers.len(),
        started.elapsed()
    );
    let offline = offline_available();
    let replays = replay_times(&recording, 4, offline, Expect::ExactOrReported);
    eprintln!("total {:.1?}", started.elapsed());
    if let Err(why) = replays {
        panic!("{why}");
    }
}

/// How far a replayed log timestamp may be from the recorded one.
const STAMP_SLACK_S: f64 = 0.5;

/// Seconds of the day of an RFC 3339 timestamp (`...THH:MM:SS.ffffffZ`).
fn stamp_seconds(stamp: &str) -> Option<f64> {
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

fn stamps_close(replayed: &str, recorded: &str) -> bool {
    match (stamp_seconds(replayed), stamp_seconds(recorded)) {
        (Some(a), Some(b)) => (a - b).abs() <= STAMP_SLACK_S,
        _ => replayed == recorded,
    }
}

/// The load, 16 keep-alive clients: recorded, then replayed 20
/// times offline, each with one digest and the recorded log (every write
/// checked against the recording).
#[test]
fn sixteen_clients_replay_offline_to_one_digest() {
    const SIXTEEN: usize = 16;
    let recording = record(5, false, SIXTEEN);
    assert_eq!(recording.answers.len(), SIXTEEN * REQUESTS);
    if let Err(why) = replay_times(&recording, 20, offline_available(), Expect::Exact) {
        panic!("{why}");
    }
}
