//! The kv fixture recorded under load by `deja record`, then replayed by
//! `deja replay`: exact, offline, deterministic, and loud on divergence.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use deja_recorder::EventKind;
use deja_tests::e2e::{
    finish_recording, kv_replay_command, log_events, only_run, replay_summary, run_bounded,
    start_recording, workspace_bin, KvRecording,
};

const CLIENTS: usize = 16;
const REQUESTS: usize = 40;

/// Record kv under CLIENTS clients sending REQUESTS requests each.
fn record_kv(keep_writes: bool) -> KvRecording {
    KvRecording::record(CLIENTS, REQUESTS, keep_writes)
}

fn replay_command(run: &Path, extra: &[&str]) -> Command {
    kv_replay_command(run, CLIENTS, &[], extra)
}

/// The line kv prints when it stops: request and connection counts.
fn stop_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|line| line.starts_with("kv: stopping"))
        .unwrap_or_else(|| panic!("no stop line in {stderr}"))
        .to_string()
}

#[test]
fn a_loaded_recording_replays_to_completion_with_identical_writes() {
    // Keep every written byte: the gate then compares bytes, not hashes.
    let recorded = record_kv(true);
    let events = log_events(&recorded.run);
    let conns: BTreeSet<_> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::TcpAccept {
                result: Ok(accepted),
                ..
            } => Some(accepted.conn),
            _ => None,
        })
        .collect();
    assert_eq!(conns.len(), CLIENTS);
    let writes = events
        .iter()
        .filter(|event| {
            matches!(&event.kind, EventKind::TcpWrite { result: Ok(written), .. } if written.bytes.is_some())
        })
        .count();
    assert!(writes >= CLIENTS * REQUESTS, "{writes} writes with bytes");

    let output = run_bounded(&mut replay_command(&recorded.run, &[]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    // The service saw the same world: same address, same counts.
    assert_eq!(
        stdout.lines().next(),
        Some(format!("listening on {}", recorded.addr).as_str())
    );
    assert_eq!(stop_line(&stderr), stop_line(&recorded.stderr));
    let (replayed, _) = replay_summary(&stderr).expect("replay summary");
    assert_eq!(replayed, events.len() as u64, "{stderr}");
}

#[test]
fn replay_touches_no_network() {
    let recorded = record_kv(false);
    // The recorded port is held by someone else: replay must not care.
    let _held = std::net::TcpListener::bind(&recorded.addr);
    let output = run_bounded(&mut replay_command(&recorded.run, &[]));
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // In a network namespace with no interface up (not even loopback).
    let probe = Command::new("unshare").args(["--net", "true"]).status();
    if !matches!(probe, Ok(status) if status.success()) {
        eprintln!("skipping the namespace half: `unshare --net` is not available here");
        return;
    }
    let replay = replay_command(&recorded.run, &[]);
    let mut offline = Command::new("unshare");
    offline
        .arg("--net")
        .arg("--")
        .arg(replay.get_program())
        .args(replay.get_args());
    let output = run_bounded(&mut offline);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(replay_summary(&stderr).is_some(), "{stderr}");
}

#[test]
fn fifty_replays_give_one_digest() {
    let recorded = record_kv(false);
    let mut digests = BTreeSet::new();
    for _ in 0..50 {
        let output = run_bounded(&mut replay_command(&recorded.run, &[]));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let (_, digest) = replay_summary(&stderr).expect("replay summary");
        digests.insert(digest);
    }
    assert_eq!(digests.len(), 1, "{digests:?}");
}

#[test]
fn a_changed_service_exits_3_at_the_first_changed_write() {
    let recorded = record_kv(false);
    // --shout changes every greeting: the log's first write is the first
    // thing that differs.
    let first_write = log_events(&recorded.run)
        .into_iter()
        .find(|event| matches!(event.kind, EventKind::TcpWrite { .. }))
        .expect("a write")
        .seq;
    let output = run_bounded(&mut replay_command(&recorded.run, &["--shout"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("replay diverged at seq {first_write} ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("expected:") && stderr.contains("actual:"),
        "{stderr}"
    );
    // Recorded without DEJA_KEEP_WRITES: the report says only a hash was
    // kept and shows this write's bytes (issue 18).
    assert!(stderr.contains("kept only the hash"), "{stderr}");
    assert!(stderr.contains("|HI "), "{stderr}");
}

/// Bad logs fail with one `deja:` line (and a hint), never a panic.
fn assert_one_line_error(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("deja:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(needle), "{stderr}");
}

#[test]
fn missing_corrupt_and_foreign_logs_fail_with_one_line() {
    let scratch = tempfile::tempdir().unwrap();

    let missing = scratch.path().join("no-such-run");
    let output = run_bounded(&mut replay_command(&missing, &[]));
    assert_one_line_error(&output, "no-such-run");

    // Corrupt: a real log with its first frame's bytes flipped. The CLI's
    // pre-check reads only the header, so the service itself reports it.
    let out = scratch.path().join("runs");
    let corrupt = deja_tests::write_run(
        &out,
        &deja_tests::sample_events(2_000),
        deja_recorder::WriterConfig::default(),
    );
    let segment = deja_tests::only_segment(&corrupt);
    let mut bytes = std::fs::read(&segment).unwrap();
    let layout = deja_tests::SegmentLayout::of(&bytes);
    let middle = layout.frames[0].payload_middle() as usize;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let output = run_bounded(&mut replay_command(&corrupt, &[]));
    assert_one_line_error(&output, "00000000.deja");

    // Foreign: a clean log recorded by another service.
    let mut meta = deja_recorder::RunMeta::new("payments", "r1");
    meta.argv = vec!["/usr/local/bin/payments".into()];
    let recorder = deja_recorder::Recorder::create(&out, meta, Default::default()).unwrap();
    recorder.record(deja_recorder::TaskId::MAIN, EventKind::ClockMono { ns: 1 });
    recorder.close().unwrap();
    let output = run_bounded(&mut replay_command(recorder.dir(), &[]));
    assert_one_line_error(&output, "payments");
}

#[test]
fn a_sigterm_shutdown_is_recorded_and_replayed_to_the_same_exit() {
    let out = tempfile::tempdir().unwrap();
    let mut service = start_recording(out.path(), &[], false);
    let load = run_bounded(Command::new(workspace_bin("kv-load")).args([
        "--addr",
        &service.addr().to_string(),
        "--clients",
        "4",
        "--requests",
        "10",
        "--seed",
        "3",
    ]));
    assert!(load.status.success());
    // SIGTERM to `deja record` is forwarded to kv, which shuts down cleanly.
    service.terminate().unwrap();
    let (code, stderr) = finish_recording(service, out.path());
    assert_eq!(code, Some(0), "{stderr}");
    let run = only_run(out.path());
    let events = log_events(&run);
    assert!(
        events
            .iter()
            .any(|event| matches!(event.kind, EventKind::Signal { .. })),
        "no signal recorded"
    );
    assert!(matches!(
        events.last().map(|event| &event.kind),
        Some(EventKind::Exit { code: 0 })
    ));

    // Replay receives the same signal at the same point and exits 0.
    let mut replay = Command::new(workspace_bin("deja"));
    replay.arg("replay").arg(&run); // the recorded command line
    let output = run_bounded(&mut replay);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let (replayed, _) = replay_summary(&stderr).expect("replay summary");
    assert_eq!(replayed, events.len() as u64);
}

#[test]
fn a_bad_worker_count_is_refused_with_the_setting_named() {
    for bad in ["0", "many", "100000"] {
        let output = run_bounded(
            Command::new(workspace_bin("kv"))
                .args(["--listen", "127.0.0.1:0", "--max-conns", "0"])
                .env("DEJA_WORKERS", bad),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("DEJA_WORKERS=\"{bad}\"")) && stderr.contains("1 to 1024"),
            "{stderr}"
        );
    }
}

/// Issue 18: a run recorded as `./kv` replays with `deja replay RUN` from
/// any directory: the header keeps the program's absolute path.
#[test]
fn a_program_recorded_by_a_relative_path_replays_from_another_directory() {
    let kv = workspace_bin("kv");
    let bin_dir = kv.parent().expect("kv's directory").to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let mut record = Command::new(workspace_bin("deja"));
    record
        .current_dir(&bin_dir)
        .arg("record")
        .arg("--out")
        .arg(out.path())
        .args(["--", "./kv", "--listen", "127.0.0.1:0", "--max-conns", "1"])
        .stderr(std::fs::File::create(out.path().join("record.stderr")).unwrap());
    let service = deja_fixtures::kv_server::KvServer::start(record).expect("kv starts");
    {
        use std::io::{Read, Write};
        let mut client = std::net::TcpStream::connect(service.addr()).unwrap();
        client.write_all(b"QUIT\n").unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("BYE\n"), "{answer}");
    }
    let (code, stderr) = finish_recording(service, out.path());
    assert_eq!(code, Some(0), "{stderr}");
    let run = only_run(out.path());
    let header = deja_recorder::RunReader::open(&run).unwrap();
    let argv0 = header.header().unwrap().run.argv[0].clone();
    assert_eq!(
        Path::new(&argv0),
        kv.as_path(),
        "the header keeps the absolute path"
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let output = run_bounded(
        Command::new(workspace_bin("deja"))
            .current_dir(elsewhere.path())
            .arg("replay")
            .arg(&run),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(replay_summary(&stderr).is_some(), "{stderr}");
}
