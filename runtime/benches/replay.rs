//! Replay speed, and what an inactive breakpoint set costs it.
//!
//! Records an in-process order service once (8 clients, request/reply over
//! loopback TCP, a mark and a clock reading per request), then replays the
//! log alternately with no breakpoints and with 10 specs that never hit
//! (one of each term, a `mark=` among them so mark scopes are tracked).
//! Prints the median events/s of each and their ratio. Target: the
//! breakpoint set costs at most 10 %.
//!
//! Run with `cargo bench -p deja --bench replay`. Without `--bench` (as
//! `cargo test --benches` runs it) it does one small round as a smoke test.

use std::path::{Path, PathBuf};
use std::time::Instant;

use deja::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use deja::net::{TcpListener, TcpStream};
use deja::{Builder, Mode};

const CLIENTS: usize = 8;

/// Specs that cannot hit in this log, one per term kind.
const INACTIVE: [&str; 10] = [
    "seq=999999999",
    "task=99999",
    "kind=signal",
    "mark=order-never",
    "conn=99999",
    "t>=100000s",
    "after=999999999",
    "kind=send,task=99999",
    "mark=order:none,kind=recv",
    "kind=udp_recv|udp_send",
];

async fn orders(per_client: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = deja::spawn(async move {
        let mut handlers = Vec::new();
        for _ in 0..CLIENTS {
            let (conn, _) = listener.accept().await?;
            handlers.push(deja::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Some(order) = lines.next_line().await? {
                    deja::mark("order", &order);
                    let at = deja::time::Instant::now();
                    let reply = format!("ok {order} {:?}\n", at.elapsed());
                    write.write_all(reply.as_bytes()).await?;
                }
                Ok::<(), std::io::Error>(())
            }));
        }
        for handler in handlers {
            handler.await.expect("handler")?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        clients.push(deja::spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            let (read, mut write) = stream.into_split();
            let mut replies = BufReader::new(read).lines();
            for n in 0..per_client {
                write
                    .write_all(format!("order-{client}-{n}\n").as_bytes())
                    .await?;
                replies.next_line().await?;
            }
            Ok::<(), std::io::Error>(())
        }));
    }
    for client in clients {
        client.await.expect("client")?;
    }
    server.await.expect("server")
}

fn record(out: &Path, per_client: usize) -> PathBuf {
    let mut runtime = Builder::new()
        .mode(Mode::Record)
        .trace_dir(out)
        .service("orders")
        .build()
        .expect("record runtime");
    let run = runtime.run_dir().expect("run dir").to_path_buf();
    runtime
        .block_on(orders(per_client))
        .expect("recording")
        .expect("service");
    run
}

/// One replay: events released and seconds taken.
fn replay(run: &Path, per_client: usize, specs: &[&str]) -> (u64, f64) {
    let mut builder = Builder::new()
        .mode(Mode::Replay)
        .trace_dir(run)
        .service("orders");
    for spec in specs {
        builder = builder.break_at(spec).expect("spec parses");
    }
    let mut runtime = builder.build().expect("replay runtime");
    let started = Instant::now();
    runtime
        .block_on(orders(per_client))
        .expect("replay completes")
        .expect("service");
    let seconds = started.elapsed().as_secs_f64();
    let stats = runtime.replay_stats().expect("stats");
    assert_eq!(stats.events, stats.log_events, "replay completed");
    (stats.events, seconds)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let (per_client, rounds) = if measuring { (3000, 15) } else { (20, 1) };
    let scratch = tempfile::tempdir().expect("scratch dir");
    let run = record(scratch.path(), per_client);
    // Warm the page cache and the allocator.
    replay(&run, per_client, &[]);

    let (mut plain, mut watched) = (Vec::new(), Vec::new());
    let mut events = 0;
    for _ in 0..rounds {
        let (n, seconds) = replay(&run, per_client, &[]);
        plain.push(n as f64 / seconds);
        let (n, seconds) = replay(&run, per_client, &INACTIVE);
        watched.push(n as f64 / seconds);
        events = n;
    }
    let (plain, watched) = (median(plain), median(watched));
    println!(
        "replay/no_breakpoints            {events} events  {:>10.0} events/s (median of {rounds})",
        plain
    );
    println!(
        "replay/ten_inactive_breakpoints  {events} events  {:>10.0} events/s (median of {rounds})",
        watched
    );
    println!(
        "replay/inactive_breakpoint_cost  {:+.1} % (target: at most +10 %)",
        (plain / watched - 1.0) * 100.0
    );
}
