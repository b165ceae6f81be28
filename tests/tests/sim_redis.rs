//! The redis crate's default `MultiplexedConnection` (its 500 ms response
//! timeout on) against the `resp-kv` fixture, as two hosts of a
//! `deja::sim` simulation: deterministic per seed, and a held link makes
//! the client's own timeout fire at the same virtual moment every time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deja::sim::{check_determinism, Latency, Sim};
use deja_fixtures::heisenbug::ignore_ready;
use deja_fixtures::resp;

/// Seeds checked (issue 17 asks for 20).
const SEEDS: u64 = 20;

/// What the client saw: each reply or error, and when (virtual ms).
type Seen = Arc<Mutex<Vec<String>>>;

fn note(seen: &Seen, what: String) {
    let at = deja::sim::elapsed().map_or(0, |t| t.as_millis());
    seen.lock().unwrap().push(format!("{at}ms {what}"));
}

fn simulation(seed: u64, hold: bool, seen: &Seen) -> Sim {
    let seen = Arc::clone(seen);
    let mut sim = Sim::new(seed);
    sim.net().latency(Latency::Uniform(
        Duration::from_millis(1),
        Duration::from_millis(5),
    ));
    sim.host("redis", || {
        let options = resp::Options {
            listen: "0.0.0.0:6379".into(),
            fixed: true,
        };
        resp::serve(options, resp::Shared::default(), ignore_ready())
    });
    if hold {
        sim.hold_at(Duration::from_millis(1000), "client", "redis")
            .heal_at(Duration::from_millis(3000), "client", "redis");
    }
    sim.client("client", async move {
        let (mut con, driver) = deja::net::redis::connect("redis://redis:6379/")
            .await
            .map_err(std::io::Error::other)?;
        let driver = tokio::spawn(driver);
        for round in 0..12u32 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let pipelined: redis::RedisResult<(String, i64, i64)> = redis::pipe()
                .set(format!("k{round}"), round)
                .ignore()
                .get(format!("k{round}"))
                // resp-kv knows INCR, not the INCRBY that `.incr` sends.
                .add_command(redis::cmd("INCR").arg("counter").clone())
                .add_command(redis::cmd("INCR").arg("counter").clone())
                .query_async(&mut con)
                .await;
            match pipelined {
                Ok((value, first, second)) => note(&seen, format!("{value} {first} {second}")),
                Err(err) => note(&seen, format!("error {err}")),
            }
        }
        drop(con);
        let _ = driver.await;
        Ok::<(), std::io::Error>(())
    });
    sim
}

#[test]
fn the_default_multiplexed_connection_is_deterministic_against_resp_kv() {
    let seen: Seen = Arc::default();
    for seed in 0..SEEDS {
        check_determinism(seed, |seed| simulation(seed, false, &seen))
            .unwrap_or_else(|difference| panic!("seed {seed}: {difference}"));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, 2 * SEEDS * 12, "every round answered");
    assert!(seen.iter().all(|line| !line.contains("error")), "{seen:?}");
}

#[test]
fn a_held_link_makes_the_response_timeout_fire_the_same_way_every_time() {
    let seen: Seen = Arc::default();
    for seed in 0..4 {
        check_determinism(seed, |seed| simulation(seed, true, &seen))
            .unwrap_or_else(|difference| panic!("seed {seed}: {difference}"));
    }
    let seen = seen.lock().unwrap();
    let runs: Vec<&[String]> = seen.chunks(12).collect();
    for pair in runs.chunks(2) {
        assert_eq!(pair[0], pair[1], "both runs of a seed alike");
    }
    for run in &runs {
        let timeouts: Vec<&String> = run.iter().filter(|line| line.contains("error")).collect();
        assert!(
            !timeouts.is_empty(),
            "the hold makes the timeout fire: {run:?}"
        );
        for line in &timeouts {
            let at: u64 = line.split("ms").next().unwrap().parse().unwrap();
            // Sent during the hold, given up 500 ms later (redis's default).
            assert!((1500..3100).contains(&at), "{run:?}");
        }
        assert!(
            run.last().unwrap().contains(' ') && !run.last().unwrap().contains("error"),
            "answers again after the heal: {run:?}"
        );
    }
}
