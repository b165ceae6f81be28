//! `deja diff` of the double charge: the simulated checkout of a failing
//! seed against the fixed checkout of the same seed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use deja_fixtures::double_charge;
use deja_recorder::{Event, EventKind, ReadOutcome};
use deja_tests::e2e::{log_events, run_bounded, workspace_bin};
use serde_json::Value;

/// The simulated seed that double-charges (see `sim_heisenbug.rs`).
const SEED: u64 = 1;

/// Run seed `SEED` of the double-charge simulation (`fixed` or not),
/// writing every host's log under `logs`; checkout's run directory.
fn checkout_run(logs: &Path, fixed: bool) -> PathBuf {
    let mut sim = double_charge::sim(SEED, fixed);
    sim.always_write_logs()
        .write_logs(true)
        .log_dir(logs)
        .quiet(true);
    let listed = match sim.run() {
        Ok(report) => {
            assert!(fixed, "seed {SEED} of the buggy checkout passed");
            report.logs
        }
        Err(failure) => {
            assert!(!fixed, "the fixed checkout failed: {}", failure.kind);
            failure.logs
        }
    };
    let run = logs.join(format!("{}-seed{SEED}", double_charge::SERVICE));
    assert!(listed.contains(&run), "{listed:?}");
    run
}

fn deja_diff(a: &Path, b: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let output = run_bounded(
        Command::new(workspace_bin("deja"))
            .arg("diff")
            .arg(a)
            .arg(b)
            .args(extra),
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The order charged twice in the buggy run: the order with two
/// `charging` marks.
fn double_charged_order(events: &[Event]) -> Vec<u8> {
    let mut charging: Vec<&[u8]> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Mark { name, value } if name == "charging" => Some(value.as_slice()),
            _ => None,
        })
        .collect();
    charging.sort();
    charging
        .windows(2)
        .find(|pair| pair[0] == pair[1])
        .map(|pair| pair[0].to_vec())
        .expect("an order charging twice in the buggy run")
}

/// Tasks that mark `charging=order`.
fn charging_tasks(events: &[Event], order: &[u8]) -> BTreeSet<u64> {
    events
        .iter()
        .filter(|event| {
            matches!(&event.kind, EventKind::Mark { name, value } if name == "charging" && value == order)
        })
        .map(|event| event.task.0)
        .collect()
}

/// `task`'s events, in order.
fn task_events(events: &[Event], task: u64) -> Vec<&Event> {
    events.iter().filter(|event| event.task.0 == task).collect()
}

/// The index within `task` of the read of payment's answer to `STATUS`:
/// the first read after the task wrote (kept bytes) `STATUS ...`.
fn status_reply(events: &[&Event]) -> usize {
    let asked = events
        .iter()
        .position(|event| match &event.kind {
            EventKind::TcpWrite {
                result: Ok(written),
                ..
            } => written
                .bytes
                .as_ref()
                .is_some_and(|bytes| bytes.starts_with(b"STATUS ")),
            _ => false,
        })
        .expect("the task asks payment STATUS (the simulation keeps written bytes)");
    asked
        + 1
        + events[asked + 1..]
            .iter()
            .position(|event| matches!(event.kind, EventKind::TcpRead { .. }))
            .expect("a read of the answer")
}

fn read_bytes(event: &Event) -> &[u8] {
    match &event.kind {
        EventKind::TcpRead {
            result: ReadOutcome::Data(bytes),
            ..
        } => bytes,
        other => panic!("not a read with data: {other}"),
    }
}

#[test]
fn diff_points_at_the_status_check_the_fix_delays() {
    let (buggy_logs, fixed_logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let buggy = checkout_run(buggy_logs.path(), false);
    let fixed = checkout_run(fixed_logs.path(), true);
    let (buggy_events, fixed_events) = (log_events(&buggy), log_events(&fixed));

    // The request the fix changes: it charged the double-charged order in
    // the buggy run and does not charge it in the fixed one (the lock
    // made it wait until the first charge had landed).
    let order = double_charged_order(&buggy_events);
    let changed: Vec<u64> = charging_tasks(&buggy_events, &order)
        .difference(&charging_tasks(&fixed_events, &order))
        .copied()
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    let task = changed[0];
    let (in_fixed, in_buggy) = (
        task_events(&fixed_events, task),
        task_events(&buggy_events, task),
    );
    let index = status_reply(&in_fixed);
    assert_eq!(index, status_reply(&in_buggy));
    let (fixed_reply, buggy_reply) = (in_fixed[index], in_buggy[index]);
    assert_eq!(read_bytes(fixed_reply), b"PAID\n");
    assert_eq!(read_bytes(buggy_reply), b"UNPAID\n");
    eprintln!(
        "double charge of order {}: task {task}, operation {index}: fixed {fixed_reply} / buggy {buggy_reply}",
        String::from_utf8_lossy(&order)
    );

    // The good run as the reference, as JSON.
    let (code, stdout, stderr) = deja_diff(&fixed, &buggy, &["--json"]);
    assert_eq!(code, Some(5), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("one JSON object");
    let first = &report["first"];
    assert_eq!(first["task"], task, "{stdout}");
    assert_eq!(first["index"], index as u64, "{stdout}");
    assert_eq!(first["a"], serde_json::to_value(fixed_reply).unwrap());
    assert_eq!(first["b"], serde_json::to_value(buggy_reply).unwrap());
    assert_eq!(first["before_a"].as_array().unwrap().len(), 3);
    assert_eq!(
        first["before_a"][2],
        serde_json::to_value(in_fixed[index - 1]).unwrap()
    );
    assert_eq!(report["a"]["events"], fixed_events.len() as u64);
    assert_eq!(report["b"]["events"], buggy_events.len() as u64);
    // The fixed run serves the SHUTDOWN request the stopped simulation
    // never got to: a task of its own.
    assert!(report["only_in_a"].as_u64().unwrap() >= 1, "{stdout}");

    // The bad run as the reference, as text: the same operation.
    let (code, stdout, stderr) = deja_diff(&buggy, &fixed, &["--context", "2"]);
    eprintln!("{stdout}");
    assert_eq!(code, Some(5), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("runs differ at task {task}, operation {index} ")),
        "{stdout}"
    );
    assert_eq!(lines[1], format!("  A  {buggy_reply}"));
    assert_eq!(lines[2], format!("  B  {fixed_reply}"));
    assert!(lines[1].contains("\"UNPAID\\n\""), "{stdout}");
    assert!(lines[2].contains("\"PAID\\n\""), "{stdout}");
    let context: Vec<&&str> = lines
        .iter()
        .skip_while(|line| !line.starts_with("before it"))
        .skip(1)
        .take(4)
        .collect();
    assert_eq!(*context[1], format!("  A  {}", in_buggy[index - 1]));
    assert_eq!(*context[3], format!("  B  {}", in_fixed[index - 1]));
}

#[test]
fn a_run_does_not_differ_from_itself() {
    let logs = tempfile::tempdir().unwrap();
    let run = checkout_run(logs.path(), true);
    let events = log_events(&run);
    let tasks: BTreeSet<u64> = events.iter().map(|event| event.task.0).collect();
    let (code, stdout, stderr) = deja_diff(&run, &run, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "no difference: {} operations in {} tasks match\n",
            events.len(),
            tasks.len()
        )
    );
    assert_eq!(stderr, "");
}
