//! Child process of the `real_postgres` test: a service that talks to a
//! real PostgreSQL through tokio-postgres over deja sockets
//! (`deja::net::postgres::connect`, SCRAM-SHA-256 login), recorded or
//! replayed in a process of its own, as `deja record` and `deja replay`
//! run a service. (A process each, not a thread: tokio-postgres names its
//! prepared statements `s0`, `s1`, ... from a process-wide counter, so a
//! second run in one process sends other names than the recording did.)
//!
//! Usage:
//!   `pg_service record OUT_DIR ADDR USER PASSWORD DBNAME`
//!   `pg_service replay RUN_DIR ADDR USER PASSWORD DBNAME [--changed]`
//!
//! `--second-first` (both roles) uses the second connection first.
//!
//! Prints `run DIR` (record), `answer LINE` for each line of the service's
//! report, and `digest HEX` (replay). A replay that diverges prints
//! `diverged` and the report (lines prefixed `| `) and exits 3; any other
//! failure exits 1.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use deja::{Builder, Mode};
use tokio_postgres::{Client, Config};

/// Tasks inserting and reading concurrently on one connection.
const TASKS: i32 = 8;
/// Insert + select rounds per task.
const ROUNDS: i32 = 4;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the command line changes in the service.
#[derive(Clone, Copy, Debug)]
struct Options {
    /// `--changed`: the workers' count query has another literal.
    changed: bool,
    /// `--second-first`: the second connection runs a query before the
    /// first one does (see `real_postgres`'s ignored test).
    second_first: bool,
}

/// The service: one connection shared by [`TASKS`] tasks, and a second one
/// running a transaction meanwhile. What each query returned depends on how
/// the server interleaved them: the report (into `out`) says what this run
/// saw.
async fn service(
    config: Config,
    options: Options,
    out: Arc<Mutex<Vec<String>>>,
) -> Result<(), BoxError> {
    let changed = options.changed;
    let (client, connection) = deja::net::postgres::connect(&config).await?;
    let driver = tokio::spawn(connection);
    let (mut tx_client, tx_connection) = deja::net::postgres::connect(&config).await?;
    let tx_driver = tokio::spawn(tx_connection);
    if options.second_first {
        // As a pool may: the connection opened last is used first.
        tx_client.batch_execute("SELECT 1").await?;
    }

    client
        .batch_execute(
            "DROP TABLE IF EXISTS deja_items;
             CREATE TABLE deja_items (
                 id SERIAL PRIMARY KEY,
                 task INT NOT NULL,
                 n INT NOT NULL,
                 note TEXT NOT NULL,
                 at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
             )",
        )
        .await?;

    let client = Arc::new(client);
    let workers: Vec<_> = (0..TASKS)
        .map(|task| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { worker(&client, task, changed).await })
        })
        .collect();
    let transfer = tokio::spawn(async move {
        let seen = transaction(&mut tx_client).await;
        (seen, tx_client)
    });

    let mut report = Vec::new();
    for worker in workers {
        report.extend(worker.await??);
    }
    let (seen, tx_client) = transfer.await?;
    report.push(seen?);

    let row = client
        .query_one(
            "SELECT count(*), sum(n)::BIGINT, string_agg(id::TEXT, ',' ORDER BY at, id),
                    (max(at) - min(at) > interval '0')::TEXT, max(at)::TEXT
             FROM deja_items",
            &[],
        )
        .await?;
    let (count, sum, order, spread, last): (i64, i64, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    report.push(format!(
        "total {count} rows, sum {sum}, insert order {order}, spread {spread}, last at {last}"
    ));

    drop(tx_client);
    drop(client);
    tx_driver.await??;
    driver.await??;
    *out.lock().expect("report lock") = report;
    Ok(())
}

/// [`ROUNDS`] of: insert a row, then count what the other tasks inserted
/// so far. `changed` selects another literal in that count:
/// a code change that a replay must catch.
async fn worker(
    client: &Client,
    task: i32,
    changed: bool,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let literal = if changed { "others!" } else { "others" };
    let count = format!("SELECT count(*), '{literal}' FROM deja_items WHERE task <> $1");
    let mut seen = Vec::new();
    for round in 0..ROUNDS {
        let row = client
            .query_one(
                "INSERT INTO deja_items (task, n, note) VALUES ($1, $2, $3) RETURNING id",
                &[&task, &round, &format!("t{task}r{round}")],
            )
            .await?;
        let id: i32 = row.get(0);
        let row = client.query_one(count.as_str(), &[&task]).await?;
        let others: i64 = row.get(0);
        seen.push(format!(
            "task {task} round {round}: id {id}, {others} rows of other tasks"
        ));
    }
    Ok(seen)
}

/// A transaction on its own connection, while the workers insert: move
/// task 0's rows by 100, let the server wait a little, and read the
/// table's totals inside it (read committed: it sees the rows committed
/// meanwhile, as many as the server's timing let in).
async fn transaction(client: &mut Client) -> Result<String, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let moved = tx
        .execute(
            "UPDATE deja_items SET n = n + 100 WHERE task = $1",
            &[&0i32],
        )
        .await?;
    tx.batch_execute("SELECT pg_sleep(0.002)").await?;
    let row = tx
        .query_one(
            "SELECT count(*), coalesce(sum(n), 0)::BIGINT FROM deja_items",
            &[],
        )
        .await?;
    let (count, sum): (i64, i64) = (row.get(0), row.get(1));
    tx.commit().await?;
    Ok(format!(
        "transaction: moved {moved} rows of task 0; saw {count} rows summing to {sum}"
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (role, dir, addr, user, password, dbname) = match args.as_slice() {
        [role, dir, addr, user, password, dbname, ..] => (role, dir, addr, user, password, dbname),
        _ => {
            eprintln!(
                "usage: pg_service record|replay DIR ADDR USER PASSWORD DBNAME [--changed] [--second-first]"
            );
            return ExitCode::from(2);
        }
    };
    let options = Options {
        changed: args.iter().any(|arg| arg == "--changed"),
        second_first: args.iter().any(|arg| arg == "--second-first"),
    };
    let (host, port) = addr.rsplit_once(':').expect("ADDR is host:port");
    let mut config = Config::new();
    config
        .host(host)
        .port(port.parse().expect("a port"))
        .user(user)
        .password(password)
        .dbname(dbname);

    let builder = match role.as_str() {
        "record" => Builder::new().mode(Mode::Record),
        "replay" => Builder::new().mode(Mode::Replay),
        other => {
            eprintln!("pg_service: unknown role {other}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = builder
        .trace_dir(dir)
        .service("postgres")
        .build()
        .expect("building the runtime");
    if let Some(run) = runtime.run_dir().filter(|_| role == "record") {
        println!("run {}", run.display());
    }
    let report = Arc::new(Mutex::new(Vec::new()));
    match runtime.block_on(service(config, options, Arc::clone(&report))) {
        Ok(Ok(())) => {
            for line in report.lock().expect("report lock").iter() {
                println!("answer {line}");
            }
            if let Some(stats) = runtime.replay_stats() {
                println!("digest {:016x}", stats.digest);
            }
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            println!("failed {err}");
            ExitCode::from(1)
        }
        Err(deja::Error::Diverged(divergence)) => {
            println!("diverged");
            for line in divergence.to_string().lines() {
                println!("| {line}");
            }
            ExitCode::from(3)
        }
        Err(err) => {
            println!("error {err}");
            ExitCode::from(1)
        }
    }
}
