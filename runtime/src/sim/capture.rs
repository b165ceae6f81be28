//! Failure capture: the command that reruns a seed, the per-host logs a
//! failed run writes, and how a replay finds its host again.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use deja_recorder::{LogWriter, RunMeta, RunReader, WriteError, WriterConfig};

use super::world::World;
use super::HostEvents;

/// Environment variables a simulation log carries in its header, so that
/// `deja replay` can find the host, the seed and the test again.
const ENV_HOST: &str = "DEJA_SIM_HOST";
const ENV_INCARNATION: &str = "DEJA_SIM_INCARNATION";
const ENV_SEED: &str = "DEJA_SEED";
const ENV_TEST: &str = "DEJA_SIM_TEST";

thread_local! {
    /// Set by the determinism check: the run's events go here.
    pub(crate) static CAPTURED: RefCell<Option<Rc<RefCell<Vec<HostEvents>>>>> =
        const { RefCell::new(None) };
}

/// Give the determinism check every host's events, if it asked.
pub(crate) fn hand_over(world: &World) {
    let Some(sink) = CAPTURED.with(|slot| slot.borrow().clone()) else {
        return;
    };
    let mut sink = sink.borrow_mut();
    for slot in world.hosts.borrow().iter() {
        for host in &slot.incarnations {
            sink.push(HostEvents {
                host: slot.name.clone(),
                incarnation: host.incarnation,
                events: host.take_events().0,
            });
        }
    }
}

/// Where the simulation runs: the command line that reruns it.
#[derive(Clone, Debug)]
pub(crate) struct RunContext {
    /// The executable and the arguments that select this simulation.
    argv: Vec<String>,
    /// The libtest test running it, if any (libtest names the thread).
    test: Option<String>,
}

impl RunContext {
    pub(crate) fn current() -> RunContext {
        let test = test_name();
        let mut args = std::env::args();
        let exe = args.next().unwrap_or_else(|| "SERVICE".into());
        let argv = match &test {
            // A test binary: run just this test, its output shown.
            Some(test) => vec![exe, test.clone(), "--exact".into(), "--nocapture".into()],
            None => std::iter::once(exe).chain(args).collect(),
        };
        RunContext { argv, test }
    }

    /// `DEJA_SEED=N <argv>`: one line to paste into a shell.
    pub(crate) fn reproduce(&self, seed: u64) -> String {
        format!(
            "{ENV_SEED}={seed} {}",
            deja_recorder::meta::shell_line(&self.argv)
        )
    }
}

/// The running test's name: libtest runs each test on a thread named
/// after it; sweeps name their workers after the thread that started them.
fn test_name() -> Option<String> {
    let thread = std::thread::current();
    let name = thread.name()?;
    (name != "main").then(|| name.to_string())
}

/// `DEJA_TRACE`, else `deja-runs` (where `deja record` writes too).
pub(crate) fn default_log_dir() -> PathBuf {
    std::env::var_os("DEJA_TRACE")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::TRACE_DIR_DEFAULT))
}

/// Write every host incarnation's events as a run directory under `dir`:
/// `<host>-seed<N>` (and `<host>-seed<N>-r<K>` after restarts).
pub(crate) fn write_logs(
    world: &World,
    dir: &Path,
    context: &RunContext,
) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    for slot in world.hosts.borrow().iter() {
        for host in &slot.incarnations {
            let run_id = match host.incarnation {
                0 => format!("seed{}", world.seed),
                k => format!("seed{}-r{k}", world.seed),
            };
            let mut meta = RunMeta::new(&slot.name, &run_id);
            meta.host = "simulated".into();
            meta.pid = std::process::id();
            meta.start_wall_unix_ns = host.start_wall_ns();
            meta.root_seed = Some(host.root_seed);
            meta.argv = context.argv.clone();
            let mut env = vec![
                (ENV_SEED.to_string(), world.seed.to_string()),
                (ENV_HOST.to_string(), slot.name.clone()),
                (ENV_INCARNATION.to_string(), host.incarnation.to_string()),
            ];
            if let Some(test) = &context.test {
                env.push((ENV_TEST.to_string(), test.clone()));
            }
            env.sort();
            meta.env = env;
            let run_dir = dir.join(meta.dir_name());
            // The same seed's logs from an earlier run: replace them.
            if run_dir
                .join(deja_recorder::format::segment_file_name(0))
                .exists()
            {
                std::fs::remove_dir_all(&run_dir).map_err(|source| WriteError::Io {
                    path: run_dir.clone(),
                    source,
                })?;
            }
            let (events, cut) = host.take_events();
            let mut writer = LogWriter::create(dir, meta, WriterConfig::default())?;
            writer.write(&events)?;
            writer.finish()?;
            if cut > 0 {
                eprintln!(
                    "deja sim: the log of {} keeps its first {} events ({cut} more were not kept)",
                    run_dir.display(),
                    events.len()
                );
            }
            written.push(run_dir);
        }
    }
    Ok(written)
}

/// A simulation log being replayed in this process.
#[derive(Debug)]
pub(crate) struct ReplayTarget {
    pub(crate) dir: PathBuf,
    pub(crate) host: String,
    pub(crate) seed: Option<u64>,
    pub(crate) test: Option<String>,
}

impl ReplayTarget {
    /// The log belongs to the test running on this thread (or to no test).
    pub(crate) fn is_for_this_thread(&self) -> bool {
        match &self.test {
            None => true,
            Some(test) => test_name().as_deref() == Some(test.as_str()),
        }
    }
}

/// `DEJA_MODE=replay` with `DEJA_TRACE` naming a log a simulation wrote.
pub(crate) fn replay_target() -> Option<ReplayTarget> {
    if std::env::var("DEJA_MODE").ok()? != "replay" {
        return None;
    }
    let dir = PathBuf::from(std::env::var_os("DEJA_TRACE")?);
    let reader = RunReader::open(&dir).ok()?;
    let env = &reader.header()?.run.env;
    let value = |name: &str| {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    Some(ReplayTarget {
        host: value(ENV_HOST)?,
        seed: value(ENV_SEED).and_then(|seed| seed.parse().ok()),
        test: value(ENV_TEST),
        dir,
    })
}
