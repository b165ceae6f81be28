//! Child process of the `log_crash` test: records the deterministic stream
//! `sample_kind(0), sample_kind(1), ...` through a real [`Recorder`]
//! (background writer thread, small segments so it rotates often) until it
//! is killed.
//!
//! Usage: `crash_writer <out-dir>`. Prints `ready <run-dir>` once the run
//! directory and its first segment exist. Exits on its own (closing the
//! log cleanly) only if nobody kills it within 30 seconds.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use deja_recorder::{Recorder, RunMeta, TaskId, WriterConfig};

/// Give up waiting to be killed after this long.
const LIFETIME_MAX: Duration = Duration::from_secs(30);

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .expect("usage: crash_writer <out-dir>");
    let config = WriterConfig {
        segment_bytes_max: 16 << 10,
        flush_interval: Duration::from_millis(5),
        ..WriterConfig::default()
    };
    let recorder = Recorder::create(Path::new(&out), RunMeta::new("crash", "run"), config)
        .expect("creating the run");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready {}", recorder.dir().display()).expect("stdout");
    stdout.flush().expect("stdout");
    let started = Instant::now();
    for i in 0u64.. {
        recorder.record(TaskId::MAIN, deja_tests::sample_kind(i));
        // A bounded rate (tens of thousands of events a second) so the
        // queue never fills and kills land in every phase of the writer.
        if i % 32 == 31 {
            std::thread::sleep(Duration::from_micros(100));
            if started.elapsed() > LIFETIME_MAX {
                break;
            }
        }
    }
    recorder.close().expect("closing the run");
}
