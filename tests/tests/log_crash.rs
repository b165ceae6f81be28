//! A process recording through the real `Recorder` and killed with SIGKILL
//! at a random moment (mid-frame, mid-rotation, between writes) leaves a
//! log that reads without error as an unclean shutdown or a torn tail,
//! holding a prefix of the events it recorded.
//!
//! The child is `src/bin/crash_writer.rs`. Kill delays come from a seeded
//! PRNG; the seed is printed, and `DEJA_CRASH_SEED=<seed>` reuses it (the
//! moments still vary with scheduling).

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deja_recorder::{EventKind, LogEnd};
use deja_tests::{read_run, sample_kind, segment_files};

const KILLS: usize = 24;
const DELAY_MS_MIN: u64 = 5;
const DELAY_MS_MAX: u64 = 150;
/// The whole test gives up (fails) after this long.
const TIME_MAX: Duration = Duration::from_secs(50);

/// splitmix64: small, seedable, good enough to spread kill moments.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn seed() -> u64 {
    match std::env::var("DEJA_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("DEJA_CRASH_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Start the child recording into `out`; returns it and its run directory
/// once the first segment exists.
fn start_child(out: &std::path::Path) -> (std::process::Child, PathBuf) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning crash_writer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("reading crash_writer's stdout");
    let dir = line
        .trim_end()
        .strip_prefix("ready ")
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("crash_writer did not start: {line:?}")
        })
        .into();
    (child, dir)
}

#[test]
fn killed_recorders_leave_logs_that_read_as_a_prefix() {
    let seed = seed();
    println!("seed {seed} (rerun with DEJA_CRASH_SEED={seed})");
    let mut rng = SplitMix(seed);
    let started = Instant::now();
    let (mut torn, mut unclean, mut total_events, mut most_segments, mut gaps) = (0, 0, 0, 0, 0);
    for kill in 0..KILLS {
        assert!(
            started.elapsed() < TIME_MAX,
            "seed {seed}: {kill} kills took over {TIME_MAX:?}"
        );
        let delay = DELAY_MS_MIN + rng.next() % (DELAY_MS_MAX - DELAY_MS_MIN + 1);
        let here = format!("kill {kill} after {delay} ms (seed {seed})");
        let out = tempfile::tempdir().unwrap();
        let (mut child, dir) = start_child(out.path());
        std::thread::sleep(Duration::from_millis(delay));
        // SIGKILL on unix.
        child.kill().expect("killing crash_writer");
        let status = child.wait().expect("reaping crash_writer");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{here}: crash_writer ended on its own: {status}"
        );

        let (events, end) = read_run(&dir);
        let end = end.unwrap_or_else(|err| {
            panic!(
                "{here}: the log is damaged after {} events: {err}",
                events.len()
            )
        });
        let last_seq = events.last().map(|event| event.seq);
        match &end {
            LogEnd::Unclean { last_seq: seq, .. } => {
                assert_eq!(*seq, last_seq, "{here}: {end:?}");
                unclean += 1;
            }
            LogEnd::TornTail { last_seq: seq, .. } => {
                assert_eq!(*seq, last_seq, "{here}: {end:?}");
                torn += 1;
            }
            LogEnd::Clean => panic!("{here}: a killed recorder left a clean log"),
        }
        // Event i of the stream gets seq i plus one for each gap event
        // before it (a dropped event's seq is covered by the gap).
        let mut gaps_seen = 0;
        for event in &events {
            if let EventKind::Gap { .. } = event.kind {
                gaps_seen += 1;
                continue;
            }
            let index = event.seq - gaps_seen;
            assert_eq!(
                event.kind,
                sample_kind(index),
                "{here}: event seq {} is not stream event {index}",
                event.seq
            );
        }
        let segments = segment_files(&dir).len();
        println!(
            "{here}: {} events in {segments} segment(s), {gaps_seen} gap(s); {}",
            events.len(),
            end.warning().unwrap_or_default()
        );
        total_events += events.len();
        most_segments = most_segments.max(segments);
        gaps += gaps_seen;
    }
    println!(
        "{KILLS} kills in {:?}: {unclean} unclean, {torn} torn, {total_events} events, \
         up to {most_segments} segments, {gaps} gaps",
        started.elapsed()
    );
    assert!(
        total_events > 0,
        "seed {seed}: no kill left any event on disk"
    );
}
