//! Failure capture: the command that reruns a seed, the per-host logs a
//! failed run writes, and how a replay finds its host again.
//!
//! A simulation hashes every event of every host (the digest, with a
//! checkpoint every [`CHECKPOINT_EVENTS`]) and keeps events only as its
//! [`CaptureMode`] says:
//!
//! * **Off**: nothing but the hashes. `Sweep` and `check_determinism` run
//!   seeds this way; they hold a factory, so a failing seed runs again
//!   with capture on to write its logs, and two runs whose hashes differ
//!   run again keeping only the stretch where the checkpoints part.
//! * **Logs**: a plain [`super::Sim::run`] consumes its futures and cannot
//!   run again, so its capture streams: each host incarnation holds at
//!   most [`CAPTURE_BUFFER_EVENTS`] events, then writes them to its log in
//!   a staging directory beside the log directory. A failed run moves the
//!   logs into place; a run that passed removes them.
//! * **Keep**: the events of one host incarnation in a range of seqs.

use std::cell::RefCell;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use deja_recorder::{Event, LogWriter, RunMeta, RunReader, WriteError, WriterConfig};

use super::host::Host;
use super::world::World;
use super::HostEvents;

/// Environment variables a simulation log carries in its header, so that
/// `deja replay` can find the host, the seed and the test again.
const ENV_HOST: &str = "DEJA_SIM_HOST";
const ENV_INCARNATION: &str = "DEJA_SIM_INCARNATION";
const ENV_SEED: &str = "DEJA_SEED";
const ENV_TEST: &str = "DEJA_SIM_TEST";

thread_local! {
    /// Set by the determinism check: the run's checkpoints and kept
    /// events go here.
    pub(crate) static CAPTURED: RefCell<Option<Rc<RefCell<Vec<HostEvents>>>>> =
        const { RefCell::new(None) };
}

/// Events between two digest checkpoints: a determinism check that finds
/// two digests differ runs the seed again keeping this many events of the
/// one host (plus the few before them), wherever in an hour-long run the
/// difference lies. 4096 events are about 400 KiB held; a checkpoint is 8
/// bytes, so an hour of 1.6 M events costs 3 KiB of checkpoints.
pub const CHECKPOINT_EVENTS: u64 = 4096;
/// Most events a host incarnation holds in memory while its capture
/// streams to disk: one frame's worth of writes at a time (about 400 KiB
/// of small events), instead of one write per event.
pub const CAPTURE_BUFFER_EVENTS: usize = 4096;
const _: () = assert!(CAPTURE_BUFFER_EVENTS > 0 && CHECKPOINT_EVENTS > 0);

/// What a simulation keeps of its events besides their hashes.
#[derive(Clone, Debug, Default)]
pub(crate) enum CaptureMode {
    /// Hashes only.
    #[default]
    Off,
    /// Every event, streamed to logs that a failed run keeps.
    Logs(Rc<LogPlan>),
    /// The events of host `host`'s incarnation `incarnation` whose seq is
    /// in `seqs` (the determinism check's second look).
    Keep {
        host: String,
        incarnation: u32,
        seqs: Range<u64>,
    },
}

impl CaptureMode {
    /// The capture of one new host incarnation.
    pub(crate) fn for_host(&self, seed: u64, host: &Host) -> HostCapture {
        match self {
            CaptureMode::Off => HostCapture::Off,
            CaptureMode::Logs(plan) => HostCapture::Stream(Box::new(Stream {
                plan: Rc::clone(plan),
                meta: run_meta(seed, host, &plan.context),
                pending: Vec::new(),
                writer: None,
                spilled: None,
                failed: false,
            })),
            CaptureMode::Keep {
                host: name,
                incarnation,
                seqs,
            } if *name == host.name && *incarnation == host.incarnation => HostCapture::Keep {
                seqs: seqs.clone(),
                events: Vec::new(),
            },
            CaptureMode::Keep { .. } => HostCapture::Off,
        }
    }
}

/// Where a run's logs go, and the staging directory its captures spill
/// to until the run's outcome is known.
#[derive(Debug)]
pub(crate) struct LogPlan {
    dir: PathBuf,
    context: RunContext,
    /// Created at the first spill; removed when the plan goes.
    staging: RefCell<Option<PathBuf>>,
    /// The log directory did not exist before the first spill: a run
    /// that passed leaves no empty `deja-runs` behind.
    made_dir: std::cell::Cell<bool>,
    error: RefCell<Option<String>>,
}

impl LogPlan {
    pub(crate) fn new(dir: PathBuf, context: RunContext) -> LogPlan {
        LogPlan {
            dir,
            context,
            staging: RefCell::new(None),
            made_dir: std::cell::Cell::new(false),
            error: RefCell::new(None),
        }
    }

    /// The staging directory, created on first use: inside the log
    /// directory, so that a failed run's logs move into place by rename.
    fn staging(&self) -> Result<PathBuf, WriteError> {
        if let Some(dir) = self.staging.borrow().as_ref() {
            return Ok(dir.clone());
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            ".deja-sim-staging-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.dir.join(name);
        self.made_dir.set(!self.dir.exists());
        std::fs::create_dir_all(&dir).map_err(|source| WriteError::Io {
            path: dir.clone(),
            source,
        })?;
        *self.staging.borrow_mut() = Some(dir.clone());
        Ok(dir)
    }

    /// Remove the staging directory and whatever is left in it (the logs
    /// of a run that passed; a failed run's logs have moved out).
    pub(crate) fn discard(&self) {
        if let Some(dir) = self.staging.borrow_mut().take() {
            let _ = std::fs::remove_dir_all(dir);
            if self.made_dir.get() {
                // Fails, as it should, once it holds logs.
                let _ = std::fs::remove_dir(&self.dir);
            }
        }
    }

    /// The first capture error, if any (the run's logs are incomplete).
    pub(crate) fn error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    fn failed(&self, error: String) {
        self.error.borrow_mut().get_or_insert(error);
    }
}

impl Drop for LogPlan {
    fn drop(&mut self) {
        self.discard();
    }
}

/// One host incarnation's capture.
#[derive(Debug, Default)]
pub(crate) enum HostCapture {
    #[default]
    Off,
    Stream(Box<Stream>),
    Keep {
        seqs: Range<u64>,
        events: Vec<Event>,
    },
}

impl HostCapture {
    /// Capture `event`. Returns the events now held in memory.
    #[inline]
    pub(crate) fn push(&mut self, event: Event) -> usize {
        match self {
            HostCapture::Off => 0,
            HostCapture::Stream(stream) => stream.push(event),
            HostCapture::Keep { seqs, events } => {
                if seqs.contains(&event.seq) {
                    events.push(event);
                }
                events.len()
            }
        }
    }

    /// The incarnation ended: a log already on disk is completed and
    /// closed (a simulation with many restarts keeps no file open per
    /// incarnation).
    pub(crate) fn end(&mut self) {
        if let HostCapture::Stream(stream) = self {
            if stream.writer.is_some() {
                stream.spill();
                stream.close();
            }
        }
    }
}

/// A capture streaming to a log.
#[derive(Debug)]
pub(crate) struct Stream {
    plan: Rc<LogPlan>,
    meta: RunMeta,
    /// At most [`CAPTURE_BUFFER_EVENTS`].
    pending: Vec<Event>,
    /// Open once the capture spilled, until the incarnation ended.
    writer: Option<LogWriter>,
    /// The run directory in the staging directory, once spilled.
    spilled: Option<PathBuf>,
    /// A write failed: the log is lost (said in the run's failure).
    failed: bool,
}

impl Stream {
    fn push(&mut self, event: Event) -> usize {
        if self.failed {
            return 0;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(CAPTURE_BUFFER_EVENTS);
        }
        self.pending.push(event);
        let held = self.pending.len();
        if held >= CAPTURE_BUFFER_EVENTS {
            self.spill();
        }
        held
    }

    /// Write the pending events to the staging log.
    fn spill(&mut self) {
        if self.failed {
            return;
        }
        if let Err(err) = self.try_spill() {
            self.failed = true;
            self.pending = Vec::new();
            self.writer = None;
            self.plan.failed(format!(
                "{}: {err}",
                self.spilled.as_deref().unwrap_or(&self.plan.dir).display()
            ));
        }
    }

    fn try_spill(&mut self) -> Result<(), WriteError> {
        if self.writer.is_none() {
            let staging = self.plan.staging()?;
            let writer = LogWriter::create(&staging, self.meta.clone(), WriterConfig::default())?;
            self.spilled = Some(writer.dir().to_path_buf());
            self.writer = Some(writer);
        }
        let writer = self.writer.as_mut().expect("created above");
        writer.write(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    fn close(&mut self) {
        if let Some(writer) = self.writer.take() {
            if let Err(err) = writer.finish() {
                self.failed = true;
                self.plan.failed(err.to_string());
            }
        }
    }

    /// Put the whole log in `dir` (replacing the same seed's earlier log).
    fn write_into(mut self, dir: &Path) -> Result<PathBuf, WriteError> {
        let run_dir = dir.join(self.meta.dir_name());
        remove_old_log(&run_dir)?;
        if self.writer.is_some() {
            self.spill();
            self.close();
        }
        if self.failed {
            return Err(WriteError::Io {
                path: run_dir,
                source: std::io::Error::other(self.plan.error().unwrap_or_default()),
            });
        }
        match &self.spilled {
            Some(spilled) => {
                std::fs::rename(spilled, &run_dir).map_err(|source| WriteError::Io {
                    path: run_dir.clone(),
                    source,
                })?;
            }
            None => {
                let mut writer = LogWriter::create(dir, self.meta, WriterConfig::default())?;
                writer.write(&self.pending)?;
                writer.finish()?;
            }
        }
        Ok(run_dir)
    }
}

/// The same seed's logs from an earlier run: replace them.
fn remove_old_log(run_dir: &Path) -> Result<(), WriteError> {
    if run_dir
        .join(deja_recorder::format::segment_file_name(0))
        .exists()
    {
        std::fs::remove_dir_all(run_dir).map_err(|source| WriteError::Io {
            path: run_dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// The header of a host incarnation's log.
fn run_meta(seed: u64, host: &Host, context: &RunContext) -> RunMeta {
    let run_id = match host.incarnation {
        0 => format!("seed{seed}"),
        k => format!("seed{seed}-r{k}"),
    };
    let mut meta = RunMeta::new(&host.name, &run_id);
    meta.host = "simulated".into();
    meta.pid = std::process::id();
    meta.start_wall_unix_ns = host.start_wall_ns();
    meta.root_seed = Some(host.root_seed);
    meta.argv = context.argv.clone();
    let mut env = vec![
        (ENV_SEED.to_string(), seed.to_string()),
        (ENV_HOST.to_string(), host.name.clone()),
        (ENV_INCARNATION.to_string(), host.incarnation.to_string()),
    ];
    if let Some(test) = &context.test {
        env.push((ENV_TEST.to_string(), test.clone()));
    }
    env.sort();
    meta.env = env;
    meta
}

/// Give the determinism check every host's checkpoints and kept events,
/// if it asked.
pub(crate) fn hand_over(world: &World) {
    let Some(sink) = CAPTURED.with(|slot| slot.borrow().clone()) else {
        return;
    };
    let mut sink = sink.borrow_mut();
    for slot in world.hosts.borrow().iter() {
        for host in &slot.incarnations {
            let (checkpoints, capture) = host.take_capture();
            let events = match capture {
                HostCapture::Keep { events, .. } => events,
                _ => Vec::new(),
            };
            sink.push(HostEvents {
                host: slot.name.clone(),
                incarnation: host.incarnation,
                checkpoints,
                events,
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
pub(crate) fn write_logs(world: &World, dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    for slot in world.hosts.borrow().iter() {
        for host in &slot.incarnations {
            if let (_, HostCapture::Stream(stream)) = host.take_capture() {
                written.push(stream.write_into(dir)?);
            }
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
