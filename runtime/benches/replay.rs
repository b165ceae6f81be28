//! Replay speed, and what an inactive breakpoint set costs it.
//!
//! Records an in-process order service once (8 clients, request/reply over
//! loopback TCP, a mark and a clock reading per request), then replays the
//! log alternately with no breakpoints and with 10 specs that never hit
//! (one of each term, a `mark=` among them so mark scopes are tracked).
//! Prints the median events/s of each and their ratio. Target: the
//! breakpoint set costs at most 10 %. `DEJA_BENCH_SPECS='seq=1;kind=send'`
//! measures other specs; an empty value measures the harness's own bias.
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

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The best round: on a shared machine, interference only ever slows a
/// CPU-bound round down, so the fastest is the least disturbed.
fn best(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let (per_client, rounds) = if measuring { (3000, 21) } else { (20, 1) };
    let scratch = tempfile::tempdir().expect("scratch dir");
    let run = record(scratch.path(), per_client);
    // Warm the page cache and the allocator.
    replay(&run, per_client, &[]);

    let custom = std::env::var("DEJA_BENCH_SPECS").ok();
    let specs: Vec<&str> = match &custom {
        // `;`-separated specs to measure instead of the ten.
        Some(text) => text.split(';').filter(|spec| !spec.is_empty()).collect(),
        None => INACTIVE.to_vec(),
    };
    let specs = specs.as_slice();
    // The watch alone, on the run's events: what each event pays.
    let log: Vec<deja::recorder::Event> = deja::recorder::RunReader::open(&run)
        .expect("open run")
        .collect::<Result<_, _>>()
        .expect("read run");
    let mut set = deja::debug::Breakpoints::new();
    for spec in specs {
        set.push(spec.parse().expect("spec parses")).expect("room");
    }
    let mut per_event = Vec::new();
    for _ in 0..rounds {
        let mut watch = deja_replayer::watch::Watch::new(set.clone(), None);
        let started = Instant::now();
        for event in &log {
            std::hint::black_box(watch.on_event(std::hint::black_box(event)));
        }
        per_event.push(started.elapsed().as_nanos() as f64 / log.len() as f64);
    }

    let (mut plain, mut watched) = (Vec::new(), Vec::new());
    let mut events = 0;
    for round in 0..rounds {
        // Alternate which goes first, so neither gains from the other's
        // warm caches or freed memory.
        let mut run_plain = || {
            let (n, seconds) = replay(&run, per_client, &[]);
            plain.push(n as f64 / seconds);
            n
        };
        let mut run_watched = || {
            let (n, seconds) = replay(&run, per_client, specs);
            watched.push(n as f64 / seconds);
        };
        if round % 2 == 0 {
            events = run_plain();
            run_watched();
        } else {
            run_watched();
            events = run_plain();
        }
    }
    for (name, rates) in [
        ("no_breakpoints", &plain),
        ("ten_inactive_breakpoints", &watched),
    ] {
        println!(
            "replay/{name:<26} {events} events  best {:>9.0} events/s  median {:>9.0} (of {rounds})",
            best(rates),
            median(rates)
        );
    }
    println!(
        "watch/on_event                   {:.1} ns/event (fastest of {rounds}, {} specs)",
        per_event.iter().copied().fold(f64::MAX, f64::min),
        specs.len()
    );
    println!(
        "replay/inactive_breakpoint_cost  best {:+.1} %  median {:+.1} % (target: at most +10 %)",
        (best(&plain) / best(&watched) - 1.0) * 100.0,
        (median(&plain) / median(&watched) - 1.0) * 100.0
    );
}
