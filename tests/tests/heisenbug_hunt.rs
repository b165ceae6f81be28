//! What `fixtures/hunt.sh` does, as processes and checked: start a
//! fixture's dependencies, record `serve` under `deja record` while `load`
//! runs until the load reports the bug, replay the run through `deja
//! replay --json` to the breakpoint the load named, and replay `serve
//! --fixed` against it, which must diverge (exit 3).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use deja_fixtures::heisenbug::Heisenbug;
use deja_fixtures::kv_server::{clean_command, KvServer};
use deja_tests::e2e::{deja_offline, run_bounded, workspace_bin};

/// Attempts before the hunt gives up (the fixtures show their bug within
/// a few under this load).
const ATTEMPTS_MAX: u32 = 10;
/// How long `deps` may take to print its line: last-item's runs `initdb`
/// and starts PostgreSQL and Redis first (seconds; more on a loaded
/// machine).
const DEPS_STARTUP: Duration = Duration::from_secs(120);
/// How long `deps` has to stop what it started after SIGTERM (last-item's
/// stops PostgreSQL and Redis, each given 10 s) before it gets SIGKILL.
const DEPS_STOP: Duration = Duration::from_secs(30);
/// Exit code of a replay that diverged.
const EXIT_DIVERGENCE: i32 = 3;

/// A fixture's `deps` process, stopped on drop with SIGTERM (it stops
/// the servers it started; SIGKILL would leave them running), waited for.
struct Deps {
    child: Child,
    args: Vec<String>,
}

impl Deps {
    fn start(fixture: &Path) -> Deps {
        let mut child = clean_command(fixture)
            .arg("deps")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting deps");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {} // keep draining
        });
        let line = match rx.recv_timeout(DEPS_STARTUP) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("deps printed no `deps ...` line: {other:?}");
            }
        };
        let args = line
            .strip_prefix("deps")
            .unwrap_or_else(|| panic!("expected `deps ARGS...`, got {line:?}"))
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Deps { child, args }
    }
}

impl Drop for Deps {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + DEPS_STOP;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                eprintln!("deps still running {DEPS_STOP:?} after SIGTERM: SIGKILL");
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

/// A recorded run in which the load saw the bug.
struct Hunted {
    run: PathBuf,
    spec: String,
    attempts: u32,
}

/// Records until the load sees the bug. Dependencies start afresh for
/// every attempt, as in `hunt.sh` (clock-edge's put midnight a moment
/// after they start).
fn hunt(name: &str, out: &Path) -> Hunted {
    let fixture = workspace_bin(name);
    for attempt in 1..=ATTEMPTS_MAX {
        let deps = Deps::start(&fixture);
        let attempt_out = out.join(format!("attempt-{attempt}"));
        std::fs::create_dir_all(&attempt_out).unwrap();
        let mut record = Command::new(workspace_bin("deja"));
        record
            .arg("record")
            .arg("--out")
            .arg(&attempt_out)
            .arg("--")
            .arg(&fixture)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&deps.args)
            .stderr(std::fs::File::create(out.join("record.stderr")).unwrap());
        for var in deja_fixtures::kv_server::DEJA_ENV_VARS {
            record.env_remove(var);
        }
        let mut service = KvServer::start(record).expect("deja record -- serve starts");
        let load = run_bounded(
            Command::new(&fixture)
                .args(["load", "--addr"])
                .arg(service.addr().to_string()),
        );
        let status = service
            .wait_timeout(Duration::from_secs(30))
            .expect("waiting for the recording")
            .expect("serve ends when the load is done");
        let stderr = std::fs::read_to_string(out.join("record.stderr")).unwrap();
        assert!(status.success(), "recording failed: {stderr}");
        let stdout = String::from_utf8_lossy(&load.stdout).into_owned();
        match load.status.code() {
            Some(0) => continue,
            Some(1) => {}
            other => panic!(
                "load failed ({other:?}): {stdout}{}",
                String::from_utf8_lossy(&load.stderr)
            ),
        }
        let spec = stdout
            .lines()
            .find_map(|line| line.strip_prefix("break: "))
            .unwrap_or_else(|| panic!("the load named no breakpoint: {stdout}"))
            .to_string();
        let run = std::fs::read_dir(&attempt_out)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.is_dir())
            .expect("a run directory");
        eprintln!("{name}: bug after {attempt} attempt(s): {stdout}");
        return Hunted {
            run,
            spec,
            attempts: attempt,
        };
    }
    panic!("{name}: no bug in {ATTEMPTS_MAX} attempts");
}

fn hunt_and_replay<H: Heisenbug>() {
    if let Err(why) = H::available() {
        eprintln!("SKIPPED {}: {why}", H::NAME);
        return;
    }
    let name = H::NAME;
    let out = tempfile::tempdir().unwrap();
    let (hunted, replay) = hunt_replayable::<H>(out.path());

    // To the breakpoint, as JSON: at least one hit, and a complete replay.
    let stdout = String::from_utf8_lossy(&replay.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&replay.stderr).into_owned();
    assert!(replay.status.success(), "{stdout}{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let hits = lines.iter().filter(|line| line["type"] == "hit").count();
    assert!(hits >= 1, "`{}` never hit: {stdout}{stderr}", hunted.spec);
    let outcome = lines.last().expect("an outcome line");
    assert_eq!(outcome["status"], "exited", "{stdout}{stderr}");
    assert_eq!(outcome["hits"], hits, "{stdout}{stderr}");

    // The fix, against the buggy recording: a divergence, exit 3.
    let mut fixed = deja_offline();
    fixed
        .arg("replay")
        .arg(&hunted.run)
        .arg("--")
        .arg(workspace_bin(name))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(deps_args_of(&hunted.run))
        .arg("--fixed")
        .env("DEJA_STALL_MS", "100");
    let fixed = run_bounded(&mut fixed);
    let stderr = String::from_utf8_lossy(&fixed.stderr).into_owned();
    assert_eq!(fixed.status.code(), Some(EXIT_DIVERGENCE), "{stderr}");
    assert!(stderr.contains("replay diverged at seq"), "{stderr}");
    eprintln!(
        "{name}: {} attempt(s), {hits} hit(s) of `{}`, the fix diverges:\n{stderr}",
        hunted.attempts, hunted.spec
    );
}

/// Hunts the bug and replays the run through `deja replay --json` to the
/// breakpoint the load named (its dependencies are gone by then, and the
/// replay runs under `unshare --net` where that works: no network at all). For a fixture with `Heisenbug::UNREPLAYABLE_MAX`
/// (a known gap in deja), a replay that diverges is printed as `KNOWN
/// GAP` and the bug hunted again, in a new recording, at most that many
/// times; for any other fixture the first replay is the one checked.
fn hunt_replayable<H: Heisenbug>(out: &Path) -> (Hunted, std::process::Output) {
    let recordings_max = H::UNREPLAYABLE_MAX + 1;
    for recording in 1..=recordings_max {
        let hunt_out = out.join(format!("hunt-{recording}"));
        std::fs::create_dir_all(&hunt_out).unwrap();
        let hunted = hunt(H::NAME, &hunt_out);
        let replay = run_bounded(deja_offline().arg("replay").arg(&hunted.run).args([
            "--json",
            "--break",
            &hunted.spec,
        ]));
        if recording == recordings_max || replay.status.code() != Some(EXIT_DIVERGENCE) {
            return (hunted, replay);
        }
        eprintln!(
            "{}: KNOWN GAP: recording {recording} of at most {recordings_max} does not replay; \
             hunting again:\n{}{}",
            H::NAME,
            String::from_utf8_lossy(&replay.stdout),
            String::from_utf8_lossy(&replay.stderr)
        );
    }
    unreachable!("the last recording returns")
}

/// The deps arguments `serve` was recorded with (from the run's argv).
fn deps_args_of(run: &Path) -> Vec<String> {
    let reader = deja_recorder::RunReader::open(run).unwrap();
    let argv = reader.header().unwrap().run.argv.clone();
    // argv: FIXTURE serve --listen ADDR DEPS...
    argv.into_iter().skip(4).collect()
}

/// One `#[test]` per row of `deja_tests::heisenbugs!`, named after it.
macro_rules! hunts {
    ($($test:ident: $fixture:ty,)*) => {
        $(
            #[test]
            fn $test() {
                hunt_and_replay::<$fixture>();
            }
        )*
    };
}

deja_tests::heisenbugs!(hunts);
