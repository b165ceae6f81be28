//! Helpers for end-to-end tests that run the `deja` CLI and fixture
//! services as real processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
