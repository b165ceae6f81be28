//! Simulation at scale (issue 19): the three workloads deja was compared
//! with turmoil and madsim on, each in a child process of its own so that
//! its peak RSS is its own.
//!
//! * echo: 10 clients × 10,000 TCP round trips of 8 bytes, 1 ms links.
//! * heartbeat: 5 hosts, each sending a UDP heartbeat to the 4 others
//!   every 100 ms for one virtual hour (720,000 datagrams), 1 ms links;
//!   run as a sweep runs a seed (no logs wanted: hashes only), as a plain
//!   `Sim::run` that would write logs on failure (capture streams to
//!   disk), and under `check_determinism`.
//! * sweep: 20,000 seeds of a tiny simulation (one TCP round trip) on 2
//!   threads.
//!
//! Each line gives wall time, CPU time (user + system, `getrusage`: what
//! other processes on a shared machine do not inflate) and peak RSS
//! (`VmHWM` of the child). The memory bounds of issue 19 are asserted
//! here, with their margins printed, not in a timed test.
//!
//! Run with `cargo bench -p deja --bench sim`; one workload alone with
//! `cargo bench -p deja --bench sim -- --bench heartbeat`. Without
//! `--bench` (as `cargo test --benches` runs it) it runs smaller sizes
//! as a smoke test and asserts nothing about memory.

use std::process::Command;
use std::time::{Duration, Instant};

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream, UdpSocket};
use deja::sim::{check_determinism, Latency, Sim, Sweep};

/// Names the workload a child process runs.
const CHILD_ENV: &str = "DEJA_SIM_BENCH_CHILD";
/// Issue 19's bounds: one virtual hour of heartbeats, and its
/// determinism check (two runs).
const HEARTBEAT_RSS_MAX_KIB: u64 = 16 << 10;
const HEARTBEAT_CHECK_RSS_MAX_KIB: u64 = 32 << 10;

/// Sizes of the workloads: full, or a smoke test.
#[derive(Clone, Copy)]
struct Sizes {
    echo_rounds: u32,
    heartbeat_ticks: u32,
    sweep_seeds: u64,
}

const FULL: Sizes = Sizes {
    echo_rounds: 10_000,
    heartbeat_ticks: 36_000,
    sweep_seeds: 20_000,
};
const SMOKE: Sizes = Sizes {
    echo_rounds: 100,
    heartbeat_ticks: 360,
    sweep_seeds: 200,
};

fn link(sim: &mut Sim) {
    sim.net().latency(Latency::Fixed(Duration::from_millis(1)));
}

async fn echo_server() -> std::io::Result<()> {
    let listener = TcpListener::bind("0.0.0.0:7000").await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        deja::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                stream.write_all(&buf[..n]).await?;
            }
        });
    }
}

fn echo(seed: u64, clients: u32, rounds: u32) -> Sim {
    let mut sim = Sim::new(seed);
    link(&mut sim);
    sim.host("server", echo_server);
    sim.client("clients", async move {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            tasks.push(deja::spawn(async move {
                let mut stream = TcpStream::connect("server:7000").await?;
                let mut reply = [0u8; 8];
                for round in 0..rounds {
                    let message = u64::from(round).to_le_bytes();
                    stream.write_all(&message).await?;
                    stream.read_exact(&mut reply).await?;
                    assert_eq!(reply, message);
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

const HEARTBEAT_HOSTS: usize = 5;
const HEARTBEAT_PORT: u16 = 9000;

/// Every host sends `ticks` heartbeats to every other host, one round
/// every 100 ms, and counts what it receives; the run ends when the
/// last heartbeat has landed (nothing is left to happen).
fn heartbeat(seed: u64, ticks: u32) -> Sim {
    let mut sim = Sim::new(seed);
    link(&mut sim);
    for index in 0..HEARTBEAT_HOSTS {
        sim.host(&format!("node{index}"), move || async move {
            let socket = std::sync::Arc::new(UdpSocket::bind(("0.0.0.0", HEARTBEAT_PORT)).await?);
            let receiver = std::sync::Arc::clone(&socket);
            deja::spawn(async move {
                let mut buf = [0u8; 16];
                loop {
                    receiver.recv_from(&mut buf).await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), std::io::Error>(())
            });
            // Hosts are 10.0.0.1, 10.0.0.2, ... in declaration order.
            let peers: Vec<std::net::SocketAddr> = (0..HEARTBEAT_HOSTS)
                .filter(|peer| *peer != index)
                .map(|peer| {
                    let ip = std::net::Ipv4Addr::new(10, 0, 0, peer as u8 + 1);
                    std::net::SocketAddr::from((ip, HEARTBEAT_PORT))
                })
                .collect();
            let mut interval = deja::time::interval(Duration::from_millis(100));
            for tick in 0..ticks {
                interval.tick().await;
                for peer in &peers {
                    socket.send_to(&tick.to_le_bytes(), *peer).await?;
                }
            }
            std::future::pending::<()>().await;
            Ok::<(), std::io::Error>(())
        });
    }
    sim
}

fn tiny(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.host("server", echo_server);
    sim.client("client", async {
        let mut stream = TcpStream::connect("server:7000").await?;
        stream.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await?;
        assert_eq!(&reply, b"ping");
        Ok::<(), std::io::Error>(())
    });
    sim
}

/// Run workload `name` in this process; one line of what it did.
fn run_workload(name: &str, sizes: Sizes) -> String {
    match name {
        "echo" => {
            let mut sim = echo(1, 10, sizes.echo_rounds);
            sim.write_logs(false);
            let report = sim.run().expect("echo passes");
            format!("{} events, digest {:016x}", report.events, report.digest)
        }
        "heartbeat" => {
            let mut sim = heartbeat(1, sizes.heartbeat_ticks);
            sim.write_logs(false);
            let report = sim.run().expect("heartbeat passes");
            assert_eq!(report.hosts.len(), HEARTBEAT_HOSTS);
            format!(
                "{} events, {:.0}s virtual, digest {:016x}",
                report.events,
                report.virtual_time.as_secs_f64(),
                report.digest
            )
        }
        "heartbeat-logged" => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let mut sim = heartbeat(1, sizes.heartbeat_ticks);
            sim.log_dir(dir.path());
            let report = sim.run().expect("heartbeat passes");
            format!("{} events, digest {:016x}", report.events, report.digest)
        }
        "heartbeat-check" => {
            let report = check_determinism(1, |seed| heartbeat(seed, sizes.heartbeat_ticks))
                .expect("deterministic");
            format!("{} events per run", report.events)
        }
        "sweep" => {
            let report = Sweep::new(0..sizes.sweep_seeds)
                .jobs(2)
                .quiet(true)
                .run(tiny);
            assert!(report.failures.is_empty());
            format!(
                "{} seeds, {:.0} seeds/s on 2 threads",
                report.seeds_run,
                report.seeds_per_second()
            )
        }
        other => panic!("no workload {other:?}"),
    }
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes a plain struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Peak resident set of this process, KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// In the child: run, then print `wall_s cpu_s peak_kib what`.
fn child(name: &str, sizes: Sizes) {
    let (cpu, wall) = (cpu_time(), Instant::now());
    let what = run_workload(name, sizes);
    let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
    println!(
        "{:.3} {:.3} {} {what}",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        peak_rss_kib()
    );
}

struct Measured {
    wall_s: f64,
    cpu_s: f64,
    peak_kib: u64,
    what: String,
}

fn measure(name: &str, full: bool) -> Measured {
    let exe = std::env::current_exe().expect("the bench's path");
    let mut command = Command::new(exe);
    command.env(CHILD_ENV, name).env_remove("DEJA_SEED");
    if full {
        command.arg("--bench");
    }
    let output = command.output().expect("the workload's process runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "workload {name} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    let mut fields = line.splitn(4, ' ');
    let mut next = || fields.next().unwrap_or_default().to_string();
    Measured {
        wall_s: next().parse().unwrap_or(f64::NAN),
        cpu_s: next().parse().unwrap_or(f64::NAN),
        peak_kib: next().parse().unwrap_or(0),
        what: next(),
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let sizes = if full { FULL } else { SMOKE };
    if let Ok(name) = std::env::var(CHILD_ENV) {
        child(&name, sizes);
        return;
    }
    let all = [
        "echo",
        "heartbeat",
        "heartbeat-logged",
        "heartbeat-check",
        "sweep",
    ];
    let chosen: Vec<&str> = all
        .iter()
        .copied()
        .filter(|name| std::env::args().skip(1).any(|arg| arg == *name))
        .collect();
    let chosen = if chosen.is_empty() {
        all.to_vec()
    } else {
        chosen
    };
    println!(
        "{:<17} {:>8} {:>8} {:>10}  what",
        "workload", "wall s", "cpu s", "peak MiB"
    );
    for name in chosen {
        let m = measure(name, full);
        println!(
            "{name:<17} {:>8.3} {:>8.3} {:>10.1}  {}",
            m.wall_s,
            m.cpu_s,
            m.peak_kib as f64 / 1024.0,
            m.what
        );
        let bound = match name {
            "heartbeat" | "heartbeat-logged" => HEARTBEAT_RSS_MAX_KIB,
            "heartbeat-check" => HEARTBEAT_CHECK_RSS_MAX_KIB,
            _ => continue,
        };
        if full && std::env::var_os("DEJA_SIM_BENCH_NO_ASSERT").is_none() {
            assert!(
                m.peak_kib <= bound,
                "{name}: peak RSS {} KiB over the bound of {bound} KiB",
                m.peak_kib
            );
            println!(
                "{:<17} peak RSS within {} MiB: {:.1} MiB to spare",
                "",
                bound >> 10,
                (bound - m.peak_kib) as f64 / 1024.0
            );
        }
    }
}
