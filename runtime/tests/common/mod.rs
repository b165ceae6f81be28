//! Recording and replaying a service in-process, as the runtime's
//! integration tests do: each run on a thread of its own, as `deja record`
//! and `deja replay` run the service in a new process (thread-locals that
//! libraries seed once per thread, `rand::rng()` and std `HashMap` keys,
//! start fresh).

#![allow(dead_code)] // each test file uses some of these

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deja::{Builder, Error, Mode, ReplayStats};

/// How long a replay in these tests waits before it calls a stall one.
pub(crate) const STALL_WAIT: Duration = Duration::from_millis(300);

/// Runs `f` on a thread of its own.
pub(crate) fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("the run's thread")
}

/// Record `service` as `name` with default settings under `out`; the run
/// directory.
pub(crate) fn record_with<Fut>(
    out: &Path,
    name: &'static str,
    service: impl FnOnce() -> Fut + Send + 'static,
) -> PathBuf
where
    Fut: Future<Output = io::Result<()>>,
{
    let out = out.to_path_buf();
    on_fresh_thread(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Record)
            .trace_dir(&out)
            .service(name)
            .build()
            .expect("record runtime");
        let dir = runtime.run_dir().expect("run dir").to_path_buf();
        runtime
            .block_on(service())
            .expect("recorded run")
            .expect("the service works");
        dir
    })
}

/// Replay `dir` with `service` as `name`: how it ended, and its figures.
pub(crate) fn replay_with<Fut>(
    dir: &Path,
    name: &'static str,
    service: impl FnOnce() -> Fut + Send + 'static,
) -> (Result<(), Error>, ReplayStats)
where
    Fut: Future<Output = io::Result<()>>,
{
    let dir = dir.to_path_buf();
    on_fresh_thread(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service(name)
            .stall_wait(STALL_WAIT)
            .build()
            .expect("replay runtime");
        let result = runtime
            .block_on(service())
            .map(|output| output.expect("the service works in replay"));
        (result, runtime.replay_stats().unwrap_or_default())
    })
}
