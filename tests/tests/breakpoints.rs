//! Breakpoints through `deja replay` on a recorded kv run: every spec term
//! stops at exactly the events it names, the pause prompt is scriptable,
//! `trap` lands in gdb inside kv's own code, and none of it changes the
//! replay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use deja_recorder::{Event, EventKind, TaskId};
use deja_tests::e2e::{
    kv_replay_command, log_events, replay_summary, run_bounded, run_with_stdin, workspace_bin,
    KvRecording,
};
use serde_json::Value;

const CLIENTS: usize = 4;
const REQUESTS: usize = 10;

/// One recording shared by the tests of this file (they only read it).
fn recording() -> &'static KvRecording {
    static RUN: OnceLock<KvRecording> = OnceLock::new();
    RUN.get_or_init(|| KvRecording::record(CLIENTS, REQUESTS, false))
}

fn replay(deja_args: &[&str]) -> Output {
    run_bounded(&mut kv_replay_command(
        &recording().run,
        CLIENTS,
        deja_args,
        &[],
    ))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `deja replay --json` with these breakpoint flags: the hit seqs, in hit
/// order, and the outcome line.
fn json_hits(break_args: &[&str]) -> (Vec<u64>, Value) {
    let mut args = vec!["--json"];
    args.extend_from_slice(break_args);
    let output = replay(&args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{break_args:?}: {stderr}");
    let lines: Vec<Value> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line}: {err}")))
        .collect();
    let (outcome, hits) = lines.split_last().expect("an outcome line");
    assert_eq!(outcome["type"], "outcome", "{outcome}");
    let seqs = hits
        .iter()
        .map(|hit| {
            assert_eq!(hit["type"], "hit", "{hit}");
            hit["seq"].as_u64().expect("seq")
        })
        .collect();
    (seqs, outcome.clone())
}

/// The digest of a replay without breakpoints.
fn plain_digest() -> &'static str {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST.get_or_init(|| {
        let output = replay(&[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        replay_summary(&stderr).expect("replay summary").1
    })
}

/// Marks in scope per task, computed here independently of deja: a mark
/// enters its task's scope (replacing its name), a spawned task copies
/// its parent's, a task's scope ends after its `task_end`.
fn scoped(
    events: &[Event],
    wanted: impl Fn(&Event, &BTreeMap<String, Vec<u8>>) -> bool,
) -> BTreeSet<u64> {
    let mut scopes: BTreeMap<TaskId, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut seqs = BTreeSet::new();
    for event in events {
        match &event.kind {
            EventKind::Mark { name, value } => {
                scopes
                    .entry(event.task)
                    .or_default()
                    .insert(name.clone(), value.clone());
            }
            EventKind::Spawn { child, .. } => {
                let parent = scopes.get(&event.task).cloned().unwrap_or_default();
                scopes.insert(*child, parent);
            }
            _ => {}
        }
        let scope = scopes.get(&event.task).cloned().unwrap_or_default();
        if wanted(event, &scope) {
            seqs.insert(event.seq);
        }
        if matches!(event.kind, EventKind::TaskEnd { .. }) {
            scopes.remove(&event.task);
        }
    }
    seqs
}

fn filter(events: &[Event], wanted: impl Fn(&Event) -> bool) -> BTreeSet<u64> {
    events.iter().filter(|e| wanted(e)).map(|e| e.seq).collect()
}

#[test]
fn each_term_stops_at_exactly_its_events_and_never_changes_the_replay() {
    let events = log_events(&recording().run);
    let middle = &events[events.len() / 2];
    let first_write = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::TcpWrite { .. }))
        .expect("a write");
    let conn = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::TcpAccept {
                result: Ok(accepted),
                ..
            } => Some(accepted.conn),
            _ => None,
        })
        .expect("an accepted connection");
    // A request mark whose value occurs once: a request id a user knows.
    let mut counts: BTreeMap<&[u8], usize> = BTreeMap::new();
    for event in &events {
        if let EventKind::Mark { name, value } = &event.kind {
            if name == "req" {
                *counts.entry(value.as_slice()).or_default() += 1;
            }
        }
    }
    let request = counts
        .iter()
        .find(|(value, count)| **count == 1 && value.len() < 40 && value.starts_with(b"GET"))
        .map(|(value, _)| String::from_utf8(value.to_vec()).unwrap())
        .expect("a unique GET request mark");
    let has_request = |scope: &BTreeMap<String, Vec<u8>>| {
        scope
            .get("req")
            .is_some_and(|v| v.as_slice() == request.as_bytes())
    };

    let seq = middle.seq.to_string();
    let task = first_write.task.0.to_string();
    let cases: Vec<(Vec<String>, BTreeSet<u64>)> = vec![
        (vec![format!("seq={seq}")], BTreeSet::from([middle.seq])),
        (
            vec![format!("task={task}")],
            filter(&events, |e| e.task == first_write.task),
        ),
        (
            vec!["kind=send".into()],
            filter(&events, |e| matches!(e.kind, EventKind::TcpWrite { .. })),
        ),
        (
            vec!["kind=accept|tcp_read".into()],
            filter(&events, |e| {
                matches!(
                    e.kind,
                    EventKind::TcpAccept { .. } | EventKind::TcpRead { .. }
                )
            }),
        ),
        (
            vec![format!("mark={request}")],
            scoped(&events, |_, scope| has_request(scope)),
        ),
        (
            vec![format!("mark=req:{request},kind=time")],
            scoped(&events, |e, scope| {
                has_request(scope)
                    && matches!(
                        e.kind,
                        EventKind::ClockMono { .. } | EventKind::ClockWall { .. }
                    )
            }),
        ),
        (
            vec![format!("conn={}", conn.0)],
            filter(&events, |e| match &e.kind {
                EventKind::TcpAccept {
                    result: Ok(accepted),
                    ..
                } => accepted.conn == conn,
                kind => kind.conn() == Some(conn),
            }),
        ),
        (
            vec![format!("t>={}ns", middle.mono_ns)],
            filter(&events, |e| e.mono_ns >= middle.mono_ns),
        ),
        (
            vec![format!("after={seq}")],
            filter(&events, |e| e.seq > middle.seq),
        ),
        // Comma is AND.
        (
            vec![format!("task={task},kind=send")],
            filter(&events, |e| {
                e.task == first_write.task && matches!(e.kind, EventKind::TcpWrite { .. })
            }),
        ),
        // Several --break are OR.
        (
            vec![format!("seq={seq}"), "kind=accept".into()],
            filter(&events, |e| {
                e.seq == middle.seq || matches!(e.kind, EventKind::TcpAccept { .. })
            }),
        ),
    ];
    for (specs, expected) in cases {
        assert!(
            !expected.is_empty(),
            "{specs:?} selects nothing in this log"
        );
        let mut args = Vec::new();
        for spec in &specs {
            args.push("--break");
            args.push(spec.as_str());
        }
        let (hits, outcome) = json_hits(&args);
        let hit_set: BTreeSet<u64> = hits.iter().copied().collect();
        assert_eq!(hit_set.len(), hits.len(), "{specs:?}: an event hit twice");
        assert_eq!(hit_set, expected, "{specs:?}");
        assert_eq!(outcome["status"], "exited", "{specs:?}: {outcome}");
        assert_eq!(outcome["hits"].as_u64(), Some(hits.len() as u64));
        assert_eq!(
            outcome["digest"].as_str(),
            Some(plain_digest()),
            "{specs:?}: breakpoints changed the replay"
        );
    }
}

/// Every event in the order tasks take them (what step walks through).
fn taken_order() -> Vec<(u64, String)> {
    let output = replay(&["--json", "--break", "t>=0s"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["type"] == "hit")
        .map(|hit| {
            (
                hit["seq"].as_u64().unwrap(),
                hit["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_pause_prompt_takes_commands_from_a_pipe() {
    let order = taken_order();
    // A stop in a task (the prompt's `tasks` marks it running), not at
    // one of the driver's turns.
    let first = order.len() / 4
        + order[order.len() / 4..]
            .iter()
            .position(|(_, kind)| kind != "driver_turn")
            .expect("a task's event");
    let stepped = first + 1;
    let next_send = stepped
        + 1
        + order[stepped + 1..]
            .iter()
            .position(|(_, kind)| kind == "tcp_write")
            .expect("a write after the step");
    let second = next_send + 5;
    let (s1, s2) = (order[first].0, order[second].0);
    let script = "tasks\nstep\nnext send\nprint\nevents 3\nbogus\nhelp\ncontinue\nquit\n";
    let output = run_with_stdin(
        &mut kv_replay_command(
            &recording().run,
            CLIENTS,
            &[
                "--on-break",
                "pause",
                "--break",
                &format!("seq={s1}"),
                "--break",
                &format!("seq={s2}"),
            ],
            &[],
        ),
        script.as_bytes(),
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let expect = |needle: &str| assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    expect(&format!("breakpoint 1 `seq={s1}` at seq {s1} "));
    // tasks: the stopped task runs, others wait on the gate or elsewhere.
    expect("running (this stop)");
    expect("  task 0 ");
    expect(&format!("step at seq {} ", order[stepped].0));
    let send = format!("next send at seq {} ", order[next_send].0);
    // `print` shows the same stop again.
    assert_eq!(stderr.matches(&send).count(), 2, "{stderr}");
    expect(&format!("> #{:<8}", order[next_send].0));
    expect("unknown command \"bogus\"");
    expect("next KIND, n");
    expect(&format!("breakpoint 2 `seq={s2}` at seq {s2} "));
    expect(&format!("replay stopped at seq {s2}: quit at the prompt"));
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn until_ends_the_replay_with_exit_0_and_an_outcome() {
    let order = taken_order();
    let until = order[order.len() / 3].0;
    let stop = order.iter().find(|(seq, _)| *seq >= until).unwrap().0;
    let output = replay(&["--json", "--until", &until.to_string()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("replay stopped at seq {stop}: --until {until}")),
        "{stderr}"
    );
    let outcome: Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert_eq!(outcome["status"], "stopped", "{outcome}");
    assert_eq!(outcome["detail"]["seq"].as_u64(), Some(stop));
}

#[test]
fn bad_specs_are_refused_naming_the_term() {
    let output = replay(&["--break", "kind=send,taks=3"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`taks=3`") && stderr.contains("unknown term"),
        "{stderr}"
    );

    let output = replay(&["--break", "t>=soon"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("`t>=soon`"));

    let output = replay(&["--gdb", "--on-break", "print"]);
    assert_eq!(output.status.code(), Some(2));

    // The environment form, read by the service itself.
    let output = run_bounded(
        Command::new(workspace_bin("kv"))
            .args(["--listen", "127.0.0.1:0"])
            .env("DEJA_MODE", "replay")
            .env("DEJA_TRACE", &recording().run)
            .env("DEJA_BREAK", "seq=1;kind=recv,conn=x"),
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`conn=x`") && stderr.contains("whole number"),
        "{stderr}"
    );
}

#[test]
fn trap_without_a_debugger_warns_and_goes_on() {
    let output = replay(&["--on-break", "trap", "--break", "kind=send"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("no debugger is attached").count(),
        1,
        "{stderr}"
    );
    assert_eq!(replay_summary(&stderr).expect("summary").1, plain_digest());
}

fn gdb_available() -> bool {
    let found = Command::new("gdb")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("skipping: gdb is not installed (apt-get install gdb)");
    }
    found
}

/// A frame of kv's own code (fixtures/src/bin/kv.rs) in a backtrace.
fn has_kv_frame(backtrace: &str) -> bool {
    backtrace
        .lines()
        .any(|line| line.starts_with('#') && line.contains(" kv::"))
}

#[test]
fn trap_stops_gdb_inside_the_service() {
    if !gdb_available() {
        return;
    }
    let run: &Path = &recording().run;
    let output = run_bounded(
        Command::new("gdb")
            .args(["-batch", "-ex", "run", "-ex", "bt"])
            .arg("--args")
            .arg(workspace_bin("kv"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--max-conns",
                &CLIENTS.to_string(),
            ])
            .env("DEJA_MODE", "replay")
            .env("DEJA_TRACE", run)
            .env("DEJA_BREAK", "kind=send")
            .env("DEJA_ON_BREAK", "trap"),
    );
    let all = text(&output.stdout) + &text(&output.stderr);
    if all.contains("ptrace: Operation not permitted") {
        eprintln!("skipping: this machine forbids ptrace");
        return;
    }
    assert!(all.contains("SIGTRAP"), "{all}");
    assert!(all.contains("breakpoint 1 `kind=send`"), "{all}");
    assert!(has_kv_frame(&all), "no kv frame on the stack:\n{all}");

    // The same through `deja replay --gdb`, with gdb's commands on a pipe.
    let output = run_with_stdin(
        &mut kv_replay_command(run, CLIENTS, &["--gdb", "--break", "kind=send"], &[]),
        b"bt\nkill\nquit\n",
    );
    let all = text(&output.stdout) + &text(&output.stderr);
    assert!(all.contains("SIGTRAP"), "{all}");
    assert!(has_kv_frame(&all), "no kv frame on the stack:\n{all}");
}
