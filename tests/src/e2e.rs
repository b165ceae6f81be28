//! Helpers for end-to-end tests that run the `deja` CLI and fixture
//! services as real processes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use deja_fixtures::kv_server::KvServer;
use deja_recorder::{Event, RunReader};

/// Longest any one child may run before the test kills it.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// A workspace binary (`deja`, `kv`, `kv-load`), built if missing: `cargo
/// test --workspace` builds them, `cargo test -p deja-tests` may not.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    if !path.exists() {
        let package = if name == "deja" {
            "deja-cli"
        } else {
            "deja-fixtures"
        };
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-q", "-p", package, "--bins"]);
        if profile_dir.file_name().is_some_and(|dir| dir == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Whether `unshare --net` works here (root, or user namespaces): a
/// replay run under it has no network at all, not even loopback.
pub fn offline_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        matches!(
            Command::new("unshare").args(["--net", "true"]).stderr(Stdio::null()).status(),
            Ok(status) if status.success()
        )
    })
}

/// `deja` with no network (under `unshare --net`) where that is
/// available, else plain `deja`: what a replay must do without.
pub fn deja_offline() -> Command {
    if offline_available() {
        let mut command = Command::new("unshare");
        command.args(["--net", "--"]).arg(workspace_bin("deja"));
        command
    } else {
        Command::new(workspace_bin("deja"))
    }
}

/// Run a command to completion with a time limit; kill it past the limit.
pub fn run_bounded(command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the command");
    wait_bounded(child, CHILD_TIMEOUT)
}

/// Wait for `child` up to `limit`, collecting its output; kill on timeout.
pub fn wait_bounded(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(limit).is_err() {
        // SAFETY: plain kill(2) on the child's pid, which is not reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("child {pid} ran longer than {limit:?} and was killed");
    }
    waiter
        .join()
        .expect("waiter thread")
        .expect("collecting child output")
}

/// Parse `deja: replay complete: N events, digest HEX, ...` from stderr.
pub fn replay_summary(stderr: &str) -> Option<(u64, String)> {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("deja: replay complete: "))?;
    let rest = line.strip_prefix("deja: replay complete: ")?;
    let (events, rest) = rest.split_once(" events, digest ")?;
    let digest = rest.split(',').next()?.to_string();
    Some((events.parse().ok()?, digest))
}

/// The one run directory under `out`.
pub fn only_run(out: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("reading the output directory")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.is_dir())
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "expected one run in {}: {runs:?}",
        out.display()
    );
    runs.pop().expect("one run")
}

/// Run a command with `input` on its stdin, to completion, bounded.
pub fn run_with_stdin(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the command");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A child that stops reading early must not block the test.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = wait_bounded(child, CHILD_TIMEOUT);
    let _ = feeder.join();
    output
}

/// Every event of a run (panics on a bad log: tests read their own runs).
pub fn log_events(run: &Path) -> Vec<Event> {
    RunReader::open(run)
        .expect("opening the run")
        .collect::<Result<_, _>>()
        .expect("reading the run")
}

/// `deja record --out OUT -- kv --listen 127.0.0.1:0 EXTRA...` in the
/// background; its stderr goes to `OUT/record.stderr`.
pub fn start_recording(out: &Path, extra: &[&str], keep_writes: bool) -> KvServer {
    let mut record = Command::new(workspace_bin("deja"));
    record
        .arg("record")
        .arg("--out")
        .arg(out)
        .arg("--")
        .arg(workspace_bin("kv"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(std::fs::File::create(out.join("record.stderr")).expect("record.stderr"));
    if keep_writes {
        record.env("DEJA_KEEP_WRITES", "1");
    }
    KvServer::start(record).expect("deja record -- kv starts and prints its address")
}

/// Wait (bounded) for a recording to end: its exit code and stderr.
pub fn finish_recording(mut service: KvServer, out: &Path) -> (Option<i32>, String) {
    let status = service
        .wait_timeout(CHILD_TIMEOUT)
        .expect("waiting for deja record")
        .expect("deja record exits once kv does");
    let stderr = std::fs::read_to_string(out.join("record.stderr")).expect("record.stderr");
    (status.code(), stderr)
}

/// A kv run recorded under load, in a scratch directory.
#[derive(Debug)]
pub struct KvRecording {
    _out: tempfile::TempDir,
    /// The run directory.
    pub run: PathBuf,
    /// Where kv listened.
    pub addr: String,
    /// `deja record`'s stderr.
    pub stderr: String,
}

impl KvRecording {
    /// Record kv while `clients` concurrent clients send `requests`
    /// requests each, with random sizes and pauses; kv exits after the
    /// last connection closes.
    pub fn record(clients: usize, requests: usize, keep_writes: bool) -> KvRecording {
        let out = tempfile::tempdir().expect("scratch directory");
        let service = start_recording(
            out.path(),
            &["--max-conns", &clients.to_string()],
            keep_writes,
        );
        let addr = service.addr().to_string();
        let load = run_bounded(Command::new(workspace_bin("kv-load")).args([
            "--addr",
            &addr,
            "--clients",
            &clients.to_string(),
            "--requests",
            &requests.to_string(),
            "--seed",
            "7",
            "--max-pause-ms",
            "3",
        ]));
        let load_out = String::from_utf8_lossy(&load.stdout).into_owned();
        assert!(load.status.success(), "kv-load failed: {load_out}");
        assert!(load_out.contains("errors=0"), "{load_out}");
        let (code, stderr) = finish_recording(service, out.path());
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stderr.contains("deja: recorded"), "{stderr}");
        KvRecording {
            run: only_run(out.path()),
            _out: out,
            addr,
            stderr,
        }
    }
}

/// `deja replay RUN DEJA_ARGS... -- kv --listen 127.0.0.1:0 --max-conns N KV_ARGS...`.
pub fn kv_replay_command(
    run: &Path,
    clients: usize,
    deja_args: &[&str],
    kv_args: &[&str],
) -> Command {
    let mut replay = Command::new(workspace_bin("deja"));
    replay
        .arg("replay")
        .arg(run)
        .args(deja_args)
        .arg("--")
        .arg(workspace_bin("kv"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-conns",
            &clients.to_string(),
        ])
        .args(kv_args);
    replay
}
