//! `deja sim`: one run of CMD per seed with the sim environment, failing
//! seeds reported, stop at the first failure unless `--all`, a timeout per
//! seed, exit 0 or 1.

mod common;

use std::path::{Path, PathBuf};

use common::deja;

/// A stand-in simulation: a shell script that checks the environment deja
/// sets and fails the seeds that `fails` (a shell test on $DEJA_SEED)
/// selects, printing a report like a real simulation's.
fn script(dir: &Path, fails: &str) -> PathBuf {
    let path = dir.join("sim.sh");
    let body = format!(
        r#"#!/bin/sh
[ "$DEJA_MODE" = sim ] || {{ echo "DEJA_MODE=$DEJA_MODE" >&2; exit 9; }}
[ -d "$DEJA_TRACE" ] || {{ echo "no DEJA_TRACE dir" >&2; exit 9; }}
echo "seed $DEJA_SEED ran" >> "$DEJA_TRACE/ran"
if {fails}; then
  echo "deja sim: seed $DEJA_SEED failed at 0.1s virtual: planted" >&2
  echo "  reproduce: DEJA_SEED=$DEJA_SEED sim.sh" >&2
  exit 1
fi
exit 0
"#
    );
    std::fs::write(&path, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn ran(out: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(out.join("ran")).unwrap_or_default();
    let mut seeds: Vec<u64> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(1)?.parse().ok())
        .collect();
    seeds.sort();
    seeds
}

fn sim(out: &Path, script: &Path, flags: &[&str]) -> common::Run {
    let mut args: Vec<String> = vec!["sim".into(), "--out".into(), out.display().to_string()];
    args.extend(flags.iter().map(|flag| flag.to_string()));
    args.push("--".into());
    args.push(script.display().to_string());
    deja(args)
}

#[test]
fn every_seed_passes_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let script = script(dir.path(), "false");
    let run = sim(&out, &script, &["--seeds", "12", "--jobs", "3"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(ran(&out), (0..12).collect::<Vec<_>>());
    assert!(
        run.stderr.contains("12 seeds of 0..12 in") && run.stderr.contains("all passed"),
        "{run:?}"
    );
}

#[test]
fn the_first_failure_stops_the_sweep_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let script = script(dir.path(), r#"[ "$DEJA_SEED" -eq 3 ]"#);
    let run = sim(&out, &script, &["--seeds", "200", "--jobs", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(ran(&out), [0, 1, 2, 3], "one job stops right after seed 3");
    assert!(
        run.stderr
            .contains("seed 3 failed at 0.1s virtual: planted"),
        "{run:?}"
    );
    assert!(run.stderr.contains("reproduce: DEJA_SEED=3"), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("rerun: deja sim --seed 3 -- {}", script.display())),
        "{run:?}"
    );
    assert!(run.stderr.contains("1 failed: 3"), "{run:?}");
}

#[test]
fn all_collects_every_failing_seed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let script = script(dir.path(), r#"[ $((DEJA_SEED % 7)) -eq 3 ]"#);
    let run = sim(
        &out,
        &script,
        &["--from", "5", "--seeds", "30", "--all", "--jobs", "2"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(ran(&out), (5..35).collect::<Vec<_>>());
    assert!(run.stderr.contains("4 failed: 10, 17, 24, 31"), "{run:?}");
    assert!(
        run.stderr.contains("seed 10 failed"),
        "the lowest is shown: {run:?}"
    );
}

#[test]
fn seed_runs_just_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let script = script(dir.path(), r#"[ "$DEJA_SEED" -eq 42 ]"#);
    let run = sim(&out, &script, &["--seed", "42"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(ran(&out), [42]);
    assert!(run.stderr.contains("1 seeds of 42..43 in"), "{run:?}");
}

#[test]
fn a_hanging_seed_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let script = script(dir.path(), r#"[ "$DEJA_SEED" -eq 1 ] && exec sleep 60"#);
    let started = std::time::Instant::now();
    let run = sim(
        &out,
        &script,
        &["--seeds", "3", "--jobs", "3", "--timeout", "1"],
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("seed 1 failed (timed out after 1s)"),
        "{run:?}"
    );
}

#[test]
fn usage_errors_exit_two_and_a_missing_command_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = deja(["sim", "--seedz", "3", "--", "true"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = deja(["sim", "--jobs", "0", "--", "true"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = deja(["sim"]);
    assert_eq!(run.code, 2, "CMD is required: {run:?}");
    let out = dir.path().join("runs");
    let run = deja([
        "sim",
        "--out",
        out.to_str().unwrap(),
        "--",
        "/nonexistent/simulation",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("cannot start /nonexistent/simulation"),
        "{run:?}"
    );
}
