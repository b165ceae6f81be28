//! tokio-postgres over deja against a real PostgreSQL that the test starts
//! itself (`deja_fixtures::servers::Postgres`: `initdb` in a temporary
//! directory, SCRAM-SHA-256 password authentication on 127.0.0.1).
//!
//! The service (`pg_service`, a binary of this crate) logs in with
//! `deja::net::postgres::connect`, runs 8 tasks inserting and counting
//! concurrently on one connection and a transaction on a second. It is
//! recorded with default settings; then the server is stopped and the
//! recording is replayed 20 times, each in a new process (as `deja replay`
//! runs a service): every replay sees the recorded answers and gives one
//! digest. A service whose query has another literal diverges.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use deja::recorder::{EventKind, ReadOutcome};
use deja_fixtures::servers::{self, Postgres};
use deja_tests::e2e::{log_events, run_bounded};

/// Replays of the recording, each in a process of its own.
const REPLAYS: usize = 20;
/// Worker lines (8 tasks x 4 rounds), the transaction, the totals.
const REPORT_LINES: usize = 8 * 4 + 2;

/// What one run of `pg_service` printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    run_dir: Option<PathBuf>,
    answers: Vec<String>,
    digest: Option<String>,
    divergence: Vec<String>,
    stdout: String,
    stderr: String,
}

fn pg_service(role: &str, dir: &Path, pg: &Postgres, flags: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pg_service"));
    command
        .arg(role)
        .arg(dir)
        .arg(pg.addr().to_string())
        .args([pg.user(), pg.password(), pg.dbname()])
        .args(flags);
    // The mode comes from the command line, not from a DEJA_* variable a
    // developer may have set.
    command.env_remove("DEJA_MODE").env_remove("DEJA_TRACE");
    let output = run_bounded(&mut command);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut run = Run {
        code: output.status.code(),
        run_dir: None,
        answers: Vec::new(),
        digest: None,
        divergence: Vec::new(),
        stdout: stdout.clone(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for line in stdout.lines() {
        if let Some(dir) = line.strip_prefix("run ") {
            run.run_dir = Some(PathBuf::from(dir));
        } else if let Some(answer) = line.strip_prefix("answer ") {
            run.answers.push(answer.to_string());
        } else if let Some(digest) = line.strip_prefix("digest ") {
            run.digest = Some(digest.to_string());
        } else if let Some(text) = line.strip_prefix("| ") {
            run.divergence.push(text.to_string());
        }
    }
    run
}

#[test]
fn tokio_postgres_with_scram_login_replays_with_the_server_stopped() {
    let started = Instant::now();
    let Some(mut pg) = Postgres::start("real_postgres") else {
        return;
    };
    let server_up = started.elapsed();
    let out = tempfile::tempdir().expect("tempdir");

    let recorded = pg_service("record", out.path(), &pg, &[]);
    assert_eq!(
        recorded.code,
        Some(0),
        "the recorded run failed:\n{}\n{}\nserver log:\n{}",
        recorded.stdout,
        recorded.stderr,
        pg.log()
    );
    let run = recorded.run_dir.clone().expect("the recording's directory");
    let answers = recorded.answers.clone();
    assert_eq!(answers.len(), REPORT_LINES, "{answers:#?}");
    assert!(
        answers.iter().any(|a| a.starts_with("transaction: moved")),
        "{answers:#?}"
    );
    assert!(
        answers
            .last()
            .is_some_and(|a| a.starts_with("total 32 rows")),
        "{answers:#?}"
    );
    // The login was SCRAM-SHA-256: the server offered it, in bytes the log
    // holds (and replay hands back).
    let events = log_events(&run);
    let offered_scram = events.iter().any(|event| {
        matches!(&event.kind, EventKind::TcpRead { result: ReadOutcome::Data(bytes), .. }
            if bytes.windows(13).any(|w| w == b"SCRAM-SHA-256"))
    });
    assert!(offered_scram, "no SCRAM-SHA-256 challenge in the log");
    let connects = events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::TcpConnect { .. }))
        .count();
    assert_eq!(connects, 2, "two connections, both through deja");
    let recorded_in = started.elapsed();
    eprintln!(
        "real_postgres: the recorded run saw:\n{}",
        answers.join("\n")
    );

    // Replay needs nothing from the server: stop it first.
    pg.stop();
    assert!(
        !servers::listening(pg.addr()),
        "PostgreSQL still listens at {}",
        pg.addr()
    );

    let mut digests = std::collections::BTreeSet::new();
    for round in 0..REPLAYS {
        let replayed = pg_service("replay", &run, &pg, &[]);
        assert_eq!(
            replayed.code,
            Some(0),
            "replay {round} failed:\n{}\n{}",
            replayed.stdout,
            replayed.stderr
        );
        assert_eq!(
            replayed.answers, answers,
            "replay {round} saw other answers"
        );
        digests.insert(replayed.digest.expect("a replay prints its digest"));
    }
    assert_eq!(digests.len(), 1, "replays gave digests {digests:?}");
    let replayed_in = started.elapsed();

    let changed = pg_service("replay", &run, &pg, &["--changed"]);
    assert_eq!(
        changed.code,
        Some(3),
        "a changed query must diverge:\n{}\n{}",
        changed.stdout,
        changed.stderr
    );
    let report = changed.divergence.join("\n");
    assert!(
        report.contains("write"),
        "the divergence is the write of the changed query:\n{report}"
    );
    eprintln!(
        "real_postgres: server up in {server_up:?}, recorded by {recorded_in:?}, \
         {REPLAYS} replays by {replayed_in:?}, total {:?}; digest {digests:?}",
        started.elapsed()
    );
}

/// A pool's shape: two connections opened, the second used first. The
/// recording adopts the second connection's task first (at its first
/// write); replay adopts the first one first, at its first poll of a read
/// that the recording never logged, and diverges. The minimal form of
/// this deja bug is `runtime/tests/adoption_pending_read.rs`.
#[test]

fn the_second_connection_used_first_replays() {
    let Some(mut pg) = Postgres::start("real_postgres (second connection first)") else {
        return;
    };
    let out = tempfile::tempdir().expect("tempdir");
    let recorded = pg_service("record", out.path(), &pg, &["--second-first"]);
    assert_eq!(
        recorded.code,
        Some(0),
        "{}\n{}",
        recorded.stdout,
        recorded.stderr
    );
    pg.stop();
    let run = recorded.run_dir.expect("the recording's directory");
    let replayed = pg_service("replay", &run, &pg, &["--second-first"]);
    assert_eq!(
        replayed.code,
        Some(0),
        "the replay failed:\n{}",
        replayed.divergence.join("\n")
    );
    assert_eq!(replayed.answers, recorded.answers);
}
