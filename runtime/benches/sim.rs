//! Simulation speed: events per second on one core, virtual/wall time for
//! an idle-heavy workload, seeds per second of a sweep on two threads.
//!
//! * ping-pong: 8 clients × 200 request/replies over TCP with 0.1–2 ms
//!   latency and a random pause per reply; events/s on one thread.
//! * heartbeat: one tick per virtual second for one virtual hour. Target:
//!   well under one wall second.
//! * sweep: 64 seeds of a smaller ping-pong on 2 threads; seeds/s.
//!
//! Run with `cargo bench -p deja --bench sim`. Without `--bench` (as
//! `cargo test --benches` runs it) it does one small round as a smoke test.

use std::time::{Duration, Instant};

use deja::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use deja::net::{TcpListener, TcpStream};
use deja::rand::Rng;
use deja::sim::{Latency, Sim, Sweep};

async fn server() -> std::io::Result<()> {
    let listener = TcpListener::bind("0.0.0.0:7000").await?;
    loop {
        let (stream, _) = listener.accept().await?;
        deja::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Some(line) = lines.next_line().await? {
                let pause = deja::rand::rng().random_range(0..500);
                deja::time::sleep(Duration::from_micros(pause)).await;
                write.write_all(format!("{line}\n").as_bytes()).await?;
            }
            Ok::<(), std::io::Error>(())
        });
    }
}

fn ping_pong(seed: u64, clients: usize, rounds: usize) -> Sim {
    let mut sim = Sim::new(seed);
    sim.net().latency(Latency::Uniform(
        Duration::from_micros(100),
        Duration::from_millis(2),
    ));
    sim.host("server", server);
    sim.client("clients", async move {
        let mut tasks = Vec::new();
        for client in 0..clients {
            tasks.push(deja::spawn(async move {
                let stream = TcpStream::connect("server:7000").await?;
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                for round in 0..rounds {
                    write
                        .write_all(format!("{client} {round}\n").as_bytes())
                        .await?;
                    let reply = lines.next_line().await?;
                    assert_eq!(reply, Some(format!("{client} {round}")));
                }
                Ok::<(), std::io::Error>(())
            }));
        }
        for task in tasks {
            task.await.expect("client task")?;
        }
        Ok::<(), std::io::Error>(())
    });
    sim
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (rounds, repeats, seeds) = if full { (200, 7, 64) } else { (10, 1, 4) };

    let mut rates = Vec::new();
    let mut events = 0;
    for repeat in 0..repeats {
        let report = ping_pong(repeat, 8, rounds)
            .run()
            .expect("ping-pong passes");
        events = report.events;
        rates.push(report.events as f64 / report.wall_time.as_secs_f64());
    }
    println!(
        "ping-pong       {events:>8} events/run  {:>12.0} events/s on one thread (median of {repeats})",
        median(rates)
    );

    let mut walls = Vec::new();
    for _ in 0..repeats {
        let mut sim = Sim::new(0);
        sim.client("heartbeat", async {
            let mut ticks = deja::time::interval(Duration::from_secs(1));
            for _ in 0..=3600 {
                ticks.tick().await;
            }
        });
        let report = sim.run().expect("heartbeat passes");
        assert_eq!(report.virtual_time, Duration::from_secs(3600));
        walls.push(report.wall_time.as_secs_f64());
    }
    let wall = median(walls);
    println!(
        "heartbeat       1 virtual hour in {:>9.3} ms wall  {:>12.0}x virtual/wall",
        wall * 1e3,
        3600.0 / wall
    );

    let started = Instant::now();
    let report = Sweep::new(0..seeds)
        .jobs(2)
        .progress(false)
        .run(|seed| ping_pong(seed, 4, rounds / 4));
    assert!(report.failures.is_empty());
    println!(
        "sweep           {seeds:>8} seeds  {:>12.1} seeds/s on 2 threads ({:.2}s)",
        report.seeds_per_second(),
        started.elapsed().as_secs_f64()
    );
}
