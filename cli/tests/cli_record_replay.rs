//! `deja record` and `deja replay`: the child gets the environment that
//! picks its mode, its output passes through, its exit code (or 128 +
//! signal) becomes deja's, signals sent to deja reach it, and replay checks
//! the run before starting anything. The children are `sh -c` scripts
//! standing in for a deja service.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{recorder, Run};
use recorder::{EventKind, Recorder, RunMeta, TaskId, WriterConfig};

/// Longest any deja run in this file may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The variables deja sets; cleared so the test's own environment cannot leak in.
const DEJA_VARS: [&str; 4] = ["DEJA_MODE", "DEJA_TRACE", "DEJA_SERVICE", "DEJA_RUN_ID"];

/// `deja ARGS` with the `DEJA_*` variables cleared, output captured.
fn deja_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = common::deja_command(args);
    for var in DEJA_VARS {
        command.env_remove(var);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Run `deja ARGS` to completion, within [`TIMEOUT`].
fn deja<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    finish(deja_command(args).spawn().expect("start deja"))
}

/// Collect a spawned deja's output and exit code, within [`TIMEOUT`].
fn finish(mut child: Child) -> Run {
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let status = wait_bounded(&mut child);
    let run = Run {
        code: status
            .code()
            .unwrap_or_else(|| panic!("deja was killed by signal {:?}", status.signal())),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    run.assert_no_panic();
    run
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_string(&mut text).expect("utf-8 output");
        }
        text
    })
}

/// Wait for `child`, killing it and failing the test after [`TIMEOUT`].
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for deja") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("deja did not exit within {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn record_sh(out: &Path, script: &str) -> Run {
    deja([
        "record".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
        "--service".as_ref(),
        "svc".as_ref(),
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        OsStr::new(script),
    ])
}

/// A closed run `svc-r1` under `out` with `events` mark events, recorded
/// with `argv`.
fn recorded_run(out: &Path, argv: &[&str], events: u64) -> PathBuf {
    let mut meta = RunMeta::new("svc", "r1");
    meta.argv = argv.iter().map(|arg| arg.to_string()).collect();
    let recorder = Recorder::create(out, meta, WriterConfig::default()).expect("create run");
    for i in 0..events {
        recorder.record(
            TaskId(0),
            EventKind::Mark {
                name: "step".into(),
                value: i.to_le_bytes().to_vec(),
            },
        );
    }
    recorder.close().expect("close run");
    recorder.dir().to_path_buf()
}

fn stderr_lines(run: &Run) -> Vec<&str> {
    run.stderr.lines().collect()
}

#[test]
fn record_sets_the_environment_and_warns_when_nothing_was_recorded() {
    let out = tempfile::tempdir().unwrap();
    let trace = out.path().join("runs"); // does not exist yet
    let run = record_sh(
        &trace,
        r#"echo "$DEJA_MODE $DEJA_TRACE $DEJA_SERVICE $DEJA_RUN_ID""#,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let words: Vec<&str> = run.stdout.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{}", run.stdout);
    assert_eq!(words[0], "record");
    assert_eq!(words[1], trace.to_str().unwrap());
    assert_eq!(words[2], "svc");
    assert!(!words[3].is_empty());
    assert!(trace.is_dir(), "the out directory is created");

    let lines = stderr_lines(&run);
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(
        lines[0].starts_with("deja: warning: sh did not record"),
        "{}",
        lines[0]
    );
    let run_dir = trace.join(format!("svc-{}", words[3]));
    assert!(lines[0].contains(run_dir.to_str().unwrap()), "{}", lines[0]);
    assert!(
        lines[1].starts_with("hint: ") && lines[1].contains("#[deja::main]"),
        "{}",
        lines[1]
    );
}

#[test]
fn record_names_the_service_after_the_command_and_picks_fresh_run_ids() {
    let out = tempfile::tempdir().unwrap();
    let record = || {
        deja([
            "record".as_ref(),
            "--out".as_ref(),
            out.path().as_os_str(),
            "--".as_ref(),
            "/bin/sh".as_ref(),
            "-c".as_ref(),
            OsStr::new(r#"echo "$DEJA_SERVICE $DEJA_RUN_ID""#),
        ])
    };
    let (first, second) = (record(), record());
    for run in [&first, &second] {
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.starts_with("sh "), "{}", run.stdout);
    }
    assert_ne!(first.stdout, second.stdout, "run ids are unique");
}

#[test]
fn record_reports_what_the_child_recorded() {
    let out = tempfile::tempdir().unwrap();
    let source = recorded_run(&out.path().join("source"), &["svc"], 3);
    let trace = out.path().join("runs");
    // The child plays the runtime: it writes the run directory deja expects.
    let copy = r#"cp -R "$SOURCE" "$DEJA_TRACE/$DEJA_SERVICE-$DEJA_RUN_ID" && echo "$DEJA_RUN_ID""#;
    for without_index in [false, true] {
        if without_index {
            std::fs::remove_file(source.join(recorder::writer::INDEX_FILE_NAME)).unwrap();
        }
        let mut command = deja_command([
            "record".as_ref(),
            "--out".as_ref(),
            trace.as_os_str(),
            "--service".as_ref(),
            "svc".as_ref(),
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            OsStr::new(copy),
        ]);
        command.env("SOURCE", &source);
        let run = finish(command.spawn().unwrap());
        assert_eq!(run.code, 0, "{run:?}");
        let run_dir = trace.join(format!("svc-{}", run.stdout.trim()));
        let lines = stderr_lines(&run);
        assert_eq!(lines.len(), 1, "{}", run.stderr);
        let expected = format!("deja: recorded {} (3 events, ", run_dir.display());
        assert!(lines[0].starts_with(&expected), "{}", lines[0]);
        assert!(
            lines[0].ends_with(" B)") || lines[0].ends_with("iB)"),
            "{}",
            lines[0]
        );
    }
}

#[test]
fn exit_codes_pass_through() {
    let out = tempfile::tempdir().unwrap();
    assert_eq!(record_sh(out.path(), "exit 7").code, 7);
    assert_eq!(record_sh(out.path(), "exit 0").code, 0);
    // Killed by SIGTERM: 128 + 15, as shells report it.
    assert_eq!(record_sh(out.path(), "kill -TERM $$").code, 143);
    assert_eq!(record_sh(out.path(), "kill -KILL $$").code, 137);
}

#[test]
fn signals_sent_to_deja_reach_the_child() {
    let out = tempfile::tempdir().unwrap();
    for (signal, name, code) in [
        (libc::SIGTERM, "TERM", 42),
        (libc::SIGINT, "INT", 41),
        (libc::SIGHUP, "HUP", 43),
    ] {
        // The loop ends by itself after ~10 s, so nothing outlives the test.
        let script = format!(
            "trap 'exit {code}' {name}; echo ready; \
             i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; exit 9"
        );
        let mut child = deja_command([
            "record".as_ref(),
            "--out".as_ref(),
            out.path().as_os_str(),
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            OsStr::new(&script),
        ])
        .spawn()
        .unwrap();

        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (ready_tx, ready_rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let _ = ready_tx.send(line);
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
        });
        let ready = ready_rx.recv_timeout(TIMEOUT);
        if ready.as_deref() != Ok("ready\n") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("SIG{name}: the child never said ready: {ready:?}");
        }

        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill has no memory effects; `pid` is our unreaped child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let status = wait_bounded(&mut child);
        // deja survived the signal and exited with the child's trap code.
        assert_eq!(status.code(), Some(code), "SIG{name}: {status:?}");
        reader.join().unwrap();
    }
}

#[test]
fn a_command_that_cannot_start_is_a_one_line_error() {
    let out = tempfile::tempdir().unwrap();
    let run = deja([
        "record".as_ref(),
        "--out".as_ref(),
        out.path().as_os_str(),
        "--".as_ref(),
        "deja-test-no-such-command".as_ref(),
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    let lines = stderr_lines(&run);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].starts_with("deja: error: cannot start deja-test-no-such-command: "),
        "{}",
        lines[0]
    );

    // The same for replay.
    let dir = recorded_run(out.path(), &["deja-test-no-such-command"], 0);
    let run = deja(["replay".as_ref(), dir.as_os_str()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(stderr_lines(&run).len(), 1, "{}", run.stderr);
}

#[test]
fn replay_of_a_missing_directory_is_an_error_naming_it() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("no-such-run");
    let run = deja([
        "replay".as_ref(),
        missing.as_os_str(),
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        "echo started".as_ref(),
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "", "nothing was started");
    let lines = stderr_lines(&run);
    assert!(lines[0].starts_with("deja: error: "), "{}", run.stderr);
    assert!(lines[0].contains(missing.to_str().unwrap()), "{}", lines[0]);
    assert!(
        lines[1..].iter().all(|line| line.starts_with("hint: ")),
        "{}",
        run.stderr
    );
}

#[test]
fn replay_of_a_damaged_run_is_an_error_naming_the_file() {
    let out = tempfile::tempdir().unwrap();
    let garbage = out.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("00000000.deja"), [0xa5; 1000]).unwrap();

    // Cut inside the header: the reader opens it, but there is nothing to replay.
    let torn = recorded_run(&out.path().join("torn"), &["sh"], 0);
    let segment = torn.join("00000000.deja");
    let bytes = std::fs::read(&segment).unwrap();
    std::fs::write(&segment, &bytes[..4]).unwrap();

    for dir in [&garbage, &torn] {
        let run = deja([
            "replay".as_ref(),
            dir.as_os_str(),
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            "echo started".as_ref(),
        ]);
        assert_eq!(run.code, 1, "{run:?}");
        assert_eq!(run.stdout, "", "nothing was started");
        let lines = stderr_lines(&run);
        assert!(lines[0].starts_with("deja: error: "), "{}", run.stderr);
        let file = dir.join("00000000.deja");
        assert!(lines[0].contains(file.to_str().unwrap()), "{}", lines[0]);
        assert!(lines[0].contains("byte 0"), "{}", lines[0]);
    }
}

#[test]
fn replay_runs_the_command_with_replay_on() {
    let out = tempfile::tempdir().unwrap();
    let dir = recorded_run(out.path(), &["sh", "-c", "echo from-argv"], 2);
    let mut command = deja_command([
        "replay".as_ref(),
        dir.as_os_str(),
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        r#"echo $DEJA_MODE $DEJA_TRACE ${DEJA_RUN_ID-unset} ${DEJA_SERVICE-unset}; exit 5"#
            .as_ref(),
    ]);
    command.env("DEJA_RUN_ID", "stale");
    let run = finish(command.spawn().unwrap());
    assert_eq!(
        run.stdout,
        format!("replay {} unset unset\n", dir.display())
    );
    // A shell is no deja service: it never reports an outcome, so the
    // replay did not happen, whatever code it exits with (issue 18).
    assert_eq!(run.code, 1, "{run:?}");
    let lines = stderr_lines(&run);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].starts_with("deja: error: sh made no intercepted call: is it built with deja?"),
        "{}",
        lines[0]
    );
}

#[test]
fn replay_of_a_program_that_replays_nothing_is_an_error_json_or_not() {
    let out = tempfile::tempdir().unwrap();
    let dir = recorded_run(out.path(), &["true"], 0);
    let run = deja([
        "replay".as_ref(),
        dir.as_os_str(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("true made no intercepted call"),
        "{run:?}"
    );
    let run = deja([
        "replay".as_ref(),
        dir.as_os_str(),
        "--json".as_ref(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    let outcome: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(outcome["status"], "error", "{run:?}");
}

#[test]
fn a_service_exiting_3_as_recorded_is_no_divergence() {
    // A stand-in for a deja service: it reports its outcome on fd 3 as the
    // runtime does, then exits with the recorded code 3.
    let out = tempfile::tempdir().unwrap();
    let script = r#"echo '{"type":"outcome","status":"exited","exit_code":3}' >&3; exit 3"#;
    let dir = recorded_run(out.path(), &["sh", "-c", script], 0);
    let run = deja(["replay".as_ref(), dir.as_os_str()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("the service exited 3, as the recorded run did"),
        "{run:?}"
    );
    let diverged = r#"echo '{"type":"outcome","status":"diverged","exit_code":3}' >&3; exit 3"#;
    let dir = recorded_run(&out.path().join("d"), &["sh", "-c", diverged], 0);
    assert_eq!(deja(["replay".as_ref(), dir.as_os_str()]).code, 3);
}

#[test]
fn replay_defaults_to_the_recorded_command_line() {
    let out = tempfile::tempdir().unwrap();
    let dir = recorded_run(out.path(), &["sh", "-c", "echo from-argv"], 1);
    let run = deja(["replay".as_ref(), dir.as_os_str()]);
    assert_eq!(run.stdout, "from-argv\n");
    // Not a deja service: see `replay_runs_the_command_with_replay_on`.
    assert_eq!(run.code, 1, "{run:?}");

    let signaled = recorded_run(&out.path().join("k"), &["sh", "-c", "kill -TERM $$"], 1);
    assert_eq!(deja(["replay".as_ref(), signaled.as_os_str()]).code, 143);
}

#[test]
fn replay_without_a_command_or_a_recorded_one_is_a_usage_error() {
    let out = tempfile::tempdir().unwrap();
    let dir = recorded_run(out.path(), &[], 1);
    let run = deja(["replay".as_ref(), dir.as_os_str()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stdout, "");
    let lines = stderr_lines(&run);
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(lines[0].starts_with("deja: error: "), "{}", lines[0]);
    assert!(
        lines[1].starts_with("hint: ") && lines[1].contains("-- CMD"),
        "{}",
        lines[1]
    );
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["record"][..],
        &["record", "sh"],
        &["record", "--bogus", "--", "true"],
        &["record", "--service", "", "--", "true"],
        &["record", "--out"],
        &["replay"],
        &["replay", "dir", "--bogus"],
        &["replay", "dir", "extra"],
    ] {
        let run = deja(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert_eq!(run.stdout, "", "{args:?}");
        assert!(
            run.stderr.starts_with("error: "),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// The child's signal state is what it would be without deja in between:
/// nothing blocked, and a signal ignored by deja's parent (`nohup`) still
/// ignored.
#[cfg(target_os = "linux")]
#[test]
fn the_child_inherits_the_signal_state_deja_started_with() {
    use std::os::unix::process::CommandExt;

    let out = tempfile::tempdir().unwrap();
    let mut command = deja_command([
        "record".as_ref(),
        "--out".as_ref(),
        out.path().as_os_str(),
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        // exec, not a child of sh reading sh's status: dash blocks every
        // signal around its own forks, so a grep of /proc/$$/status races
        // with that and can see a full mask.
        OsStr::new("exec grep -E '^Sig(Blk|Ign)' /proc/self/status"),
    ]);
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let run = finish(command.spawn().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    let mask = |name: &str| {
        let line = run.lines().into_iter().find(|line| line.starts_with(name));
        let hex = line.and_then(|line| line.split_whitespace().nth(1));
        u64::from_str_radix(hex.expect("a mask line"), 16).unwrap()
    };
    let bit = |signal: libc::c_int| 1u64 << (signal - 1);
    assert_eq!(mask("SigBlk:"), 0, "{}", run.stdout);
    let ignored = mask("SigIgn:");
    assert_ne!(ignored & bit(libc::SIGHUP), 0, "{}", run.stdout);
    assert_eq!(
        ignored & (bit(libc::SIGINT) | bit(libc::SIGTERM)),
        0,
        "{}",
        run.stdout
    );
}

/// Issue 18: a service killed between creating its run directory and its
/// first segment leaves an empty directory: `deja record` says nothing was
/// recorded (not "recorded (0 events)" and a warning about its own
/// directory), and `deja verify` reads it as an empty run.
#[test]
fn a_run_directory_left_empty_reads_as_an_empty_run() {
    let out = tempfile::tempdir().unwrap();
    let run = record_sh(
        out.path(),
        r#"mkdir -m 700 "$DEJA_TRACE/$DEJA_SERVICE-$DEJA_RUN_ID""#,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let lines = stderr_lines(&run);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].starts_with("deja: warning: nothing was recorded: "),
        "{}",
        lines[0]
    );
    let dir = std::fs::read_dir(out.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let verify = deja(["verify".as_ref(), dir.as_os_str()]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(verify.stderr.contains("empty run: "), "{verify:?}");
}
