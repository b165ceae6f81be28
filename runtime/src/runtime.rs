//! The entry point: pick the mode, build the runtime, run `main`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use deja_recorder::writer::flight::FlightWindow;
use deja_recorder::{
    Event, EventKind, ReadError, Recorder, RunMeta, RunReader, TaskId, WriteError, WriterConfig,
};
use deja_replayer::gate::{Call, Divergence, Gate};

use crate::backend::{self, Backend, TaskCtx};
use crate::debug::{
    BreakHit, Breakpoint, Breakpoints, DebugConfig, Halt, OnBreak, Resume, SpecError,
};
use crate::record::Recording;
use crate::redact::{Redact, Redaction, Redactors};
use crate::replay::debug::{open_json_fd, Debugger};
use crate::replay::stall::StallWatch;
use crate::replay::{Replay, ReplayStats, Stop};
use crate::task::{CatchUnwind, EXIT_PANIC};

/// Where recordings go when `DEJA_TRACE` is not set.
pub const TRACE_DIR_DEFAULT: &str = "deja-runs";

/// How long replay waits for a wake-up from outside (a thread the service
/// started itself) before it calls a replay with nothing runnable stalled.
pub const STALL_WAIT_DEFAULT: Duration = Duration::from_secs(1);

/// Most worker threads accepted from `DEJA_WORKERS`: far more than any
/// machine's cores, few enough that a typo cannot start a million threads.
const WORKERS_MAX: usize = 1024;
/// Longest stall wait accepted from `DEJA_STALL_MS`.
const STALL_WAIT_MAX: Duration = Duration::from_secs(600);

/// Largest flight ring, MiB (a TiB: beyond that, record normally).
const FLIGHT_MIB_MAX: u64 = 1 << 20;

/// How the service runs (see the design's "One API, four modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain tokio, nothing intercepted.
    Live,
    /// Real tokio, every intercepted result logged.
    Record,
    /// No network, clock or entropy: everything from a log.
    Replay,
    /// Simulated network on virtual time: see [`crate::sim`] (a
    /// simulation is built with `Sim`, not from one service's main).
    Sim,
}

impl std::str::FromStr for Mode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Mode, Error> {
        match text {
            "" | "live" => Ok(Mode::Live),
            "record" => Ok(Mode::Record),
            "replay" => Ok(Mode::Replay),
            "sim" => Ok(Mode::Sim),
            other => Err(Error::BadMode(other.to_string())),
        }
    }
}

/// What can stop a deja runtime from starting or finishing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `DEJA_MODE` has a value deja does not know.
    #[error("DEJA_MODE={0:?} is not a mode (live, record, replay, sim)")]
    BadMode(String),
    /// A setting from the environment is malformed.
    #[error("{name}={value:?}: {why}")]
    BadSetting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Replay needs the run directory.
    #[error(
        "replay needs the run directory: set DEJA_TRACE (or use `deja replay RUN_DIR -- CMD`)"
    )]
    NoRunDir,
    /// The mode cannot run a single service's main (sim runs many).
    #[error("mode {0:?} cannot run one service's main: a simulation is built with deja::sim::Sim")]
    Unsupported(Mode),
    /// The tokio runtime could not start.
    #[error("cannot start the tokio runtime: {0}")]
    Tokio(#[source] std::io::Error),
    /// The recording could not be written.
    #[error(transparent)]
    Record(#[from] WriteError),
    /// The log to replay cannot be read.
    #[error(transparent)]
    Log(#[from] ReadError),
    /// The log was recorded by another service.
    #[error("{dir} was recorded by service {recorded:?} ({recorded_cmd}), this is {this:?}")]
    ForeignLog {
        /// The run directory.
        dir: PathBuf,
        /// Its service.
        recorded: String,
        /// Its recorded command.
        recorded_cmd: String,
        /// This service.
        this: String,
    },
    /// The run is a flight-recorder window that starts after the run did:
    /// replay re-executes the service from its start, which it lacks.
    #[error("{} is a flight-recorder window that starts at seq {first_seq}: replay runs the service from its start, which the ring had already dropped; {before}. `deja inspect`, `stats`, `timeline` and `diff` read the window; a ring that still holds the start replays", dir.display())]
    FlightWindow {
        /// The run directory.
        dir: PathBuf,
        /// The window's first seq.
        first_seq: u64,
        /// What the window refers to from before it.
        before: String,
    },
    /// Replay stopped: the code no longer does what the log says.
    #[error("{0}")]
    Diverged(Box<Divergence>),
    /// A breakpoint spec does not parse.
    #[error(transparent)]
    BadBreakpoint(#[from] SpecError),
    /// A breakpoint, `--until` or `quit` ended the replay early, on purpose.
    #[error("replay stopped at seq {seq}: {why}")]
    Halted {
        /// The seq it stopped at.
        seq: u64,
        /// Who asked.
        why: Halt,
    },
    /// Replay reached the end of a recording that has no exit (the
    /// recorded process was killed, or is still running): main never
    /// returned in it, so it cannot return here.
    #[error("replay reached the end of the recording at seq {last_seq:?}: the recorded process did not exit (killed?)")]
    RecordingEnded {
        /// The last replayed seq.
        last_seq: Option<u64>,
    },
}

impl Error {
    /// What to do about it, for one-line error output.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::BadMode(_) | Error::BadSetting { .. } => Some("unset it or fix its value"),
            Error::BadBreakpoint(_) => Some(
                "terms: seq=N task=N kind=K mark=VALUE conn=N t>=1.5s after=N; comma is AND, `;` (or several --break) is OR",
            ),
            Error::NoRunDir => Some("deja replay RUN_DIR -- CMD sets it for you"),
            Error::Unsupported(_) => {
                Some("run the binary's simulation command (built with deja::sim::Sim) under `deja sim -- CMD`")
            }
            Error::Log(err) if err.is_corruption() => Some(
                "`deja verify RUN_DIR` shows the damage; a corrupt log cannot be replayed past it",
            ),
            Error::Log(_) => Some("check the path: a run directory contains 00000000.deja"),
            Error::ForeignLog { .. } => {
                Some("replay a run with the binary that recorded it (or set DEJA_SERVICE)")
            }
            _ => None,
        }
    }
}

/// What `main` returned, as a process exit code.
pub trait MainResult {
    /// The exit code, without side effects.
    fn exit_code(&self) -> i32;
    /// Print what the process prints on exit (an error), return the code.
    fn report(self) -> i32;
    /// The error, as text, if there was one (simulation reports use it).
    fn error_text(&self) -> Option<String> {
        None
    }
}

impl MainResult for () {
    fn exit_code(&self) -> i32 {
        0
    }
    fn report(self) -> i32 {
        0
    }
}

impl<E: std::fmt::Debug> MainResult for Result<(), E> {
    fn exit_code(&self) -> i32 {
        i32::from(self.is_err())
    }
    fn report(self) -> i32 {
        match self {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("Error: {err:?}");
                1
            }
        }
    }
    fn error_text(&self) -> Option<String> {
        self.as_ref().err().map(|err| format!("{err:?}"))
    }
}

/// Configure a runtime; [`Builder::from_env`] reads `DEJA_MODE`,
/// `DEJA_TRACE`, `DEJA_SERVICE`, `DEJA_RUN_ID`, `DEJA_STALL_MS`,
/// `DEJA_KEEP_WRITES`, `DEJA_WORKERS` (record and live: tokio worker
/// threads; 1 makes tasks interleave only at awaits, which services that
/// share memory between tasks need), and for replay `DEJA_BREAK` (specs separated by
/// `;`), `DEJA_ON_BREAK` (pause, trap, print), `DEJA_UNTIL` (a seq) and
/// `DEJA_JSON_FD` (an open fd that receives hits and the outcome as JSON
/// lines; only the outcome with `DEJA_JSON_OUTCOME_ONLY=1`).
#[derive(Clone, Debug)]
pub struct Builder {
    mode: Mode,
    trace: Option<PathBuf>,
    service: Option<String>,
    run_id: Option<String>,
    worker_threads: Option<usize>,
    stall_wait: Duration,
    keep_write_bytes: bool,
    writer: WriterConfig,
    debug: DebugConfig,
    redactors: Redactors,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Live mode, defaults everywhere.
    pub fn new() -> Builder {
        Builder {
            mode: Mode::Live,
            trace: None,
            service: None,
            run_id: None,
            worker_threads: None,
            stall_wait: STALL_WAIT_DEFAULT,
            keep_write_bytes: false,
            writer: WriterConfig::default(),
            debug: DebugConfig::default(),
            redactors: Redactors::default(),
        }
    }

    /// Settings from the environment (see the design's "Environment").
    pub fn from_env() -> Result<Builder, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let mut builder = Builder::new();
        builder.mode = var("DEJA_MODE").unwrap_or_default().parse()?;
        builder.trace = var("DEJA_TRACE").map(PathBuf::from);
        builder.service = var("DEJA_SERVICE");
        builder.run_id = var("DEJA_RUN_ID");
        if let Some(ms) = var("DEJA_STALL_MS") {
            let wait = ms
                .parse::<u64>()
                .ok()
                .map(Duration::from_millis)
                .filter(|wait| *wait <= STALL_WAIT_MAX)
                .ok_or(Error::BadSetting {
                    name: "DEJA_STALL_MS",
                    value: ms,
                    why: "expected milliseconds, at most 600000",
                })?;
            builder.stall_wait = wait;
        }
        if let Some(threads) = var("DEJA_WORKERS") {
            let threads = threads
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=WORKERS_MAX).contains(n))
                .ok_or(Error::BadSetting {
                    name: "DEJA_WORKERS",
                    value: threads,
                    why: "expected a number of worker threads, 1 to 1024",
                })?;
            builder.worker_threads = Some(threads);
        }
        builder.keep_write_bytes = matches!(var("DEJA_KEEP_WRITES").as_deref(), Some("1" | "true"));
        if let Some(mib) = var("DEJA_FLIGHT_MIB") {
            let mib = mib
                .parse::<u64>()
                .ok()
                .filter(|mib| (1..=FLIGHT_MIB_MAX).contains(mib))
                .ok_or(Error::BadSetting {
                    name: "DEJA_FLIGHT_MIB",
                    value: mib,
                    why: "expected the flight recorder's size in MiB, 1 to 1048576",
                })?;
            builder = builder.flight(mib);
        }
        if let Some(specs) = var("DEJA_BREAK") {
            builder.debug.breakpoints = Breakpoints::parse_env(&specs)?;
        }
        if let Some(action) = var("DEJA_ON_BREAK") {
            builder.debug.on_break = Some(action.parse().map_err(|_| Error::BadSetting {
                name: "DEJA_ON_BREAK",
                value: action,
                why: "expected pause, trap or print",
            })?);
        }
        if let Some(seq) = var("DEJA_UNTIL") {
            builder.debug.until = Some(seq.parse().map_err(|_| Error::BadSetting {
                name: "DEJA_UNTIL",
                value: seq,
                why: "expected a seq (a whole number)",
            })?);
        }
        if let Some(fd) = var("DEJA_JSON_FD") {
            builder.debug.json_fd = Some(fd.parse().map_err(|_| Error::BadSetting {
                name: "DEJA_JSON_FD",
                value: fd,
                why: "expected a file descriptor number",
            })?);
        }
        builder.debug.outcome_only = var("DEJA_JSON_OUTCOME_ONLY").is_some_and(|v| v == "1");

        Ok(builder)
    }

    /// The mode.
    pub fn mode(mut self, mode: Mode) -> Builder {
        self.mode = mode;
        self
    }

    /// Record: the directory runs are written under. Replay: the run
    /// directory to replay.
    pub fn trace_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.trace = Some(dir.into());
        self
    }

    /// The service's name (default: the executable's file name).
    pub fn service(mut self, name: impl Into<String>) -> Builder {
        self.service = Some(name.into());
        self
    }

    /// Flight recorder: keep only the last `mib` MiB of log in a ring,
    /// and keep a window on SIGUSR2, on a panic, or on
    /// [`crate::flight::keep`] (see [`crate::flight`]). 1 to 1 Mi.
    pub fn flight(mut self, mib: u64) -> Builder {
        assert!(
            (1..=FLIGHT_MIB_MAX).contains(&mib),
            "a flight ring of 1 to {FLIGHT_MIB_MAX} MiB"
        );
        self.writer.flight_bytes = Some(mib << 20);
        self
    }

    /// tokio worker threads. Live: tokio's default is one per core.
    /// Record: by default (or with 1) the service's tasks and `main` run
    /// on one thread, as they do in replay, so a replay reproduces how
    /// they interleave, shared memory and locks included. More than one
    /// is an opt-in for services that need the cores: tasks then race
    /// between intercepted calls, and a replay reports a divergence
    /// where such a race decided something (ARCHITECTURE.md, "What deja
    /// guarantees").
    pub fn worker_threads(mut self, threads: usize) -> Builder {
        self.worker_threads = Some(threads.max(1));
        self
    }

    /// Replay: how long to wait for outside wake-ups before reporting a stall.
    pub fn stall_wait(mut self, wait: Duration) -> Builder {
        self.stall_wait = wait.min(STALL_WAIT_MAX);
        self
    }

    /// Record: how the log is written (queue size, flush interval, retry
    /// after a failed write; tests also inject disk faults through it).
    pub fn writer_config(mut self, config: WriterConfig) -> Builder {
        self.writer = config;
        self
    }

    /// Record: keep every written byte in the log, not just length and hash.
    pub fn keep_write_bytes(mut self, keep: bool) -> Builder {
        self.keep_write_bytes = keep;
        self
    }

    /// Replay: stop at events matching `spec` (see [`crate::debug`]);
    /// several calls are OR.
    pub fn break_at(mut self, spec: &str) -> Result<Builder, Error> {
        let spec: Breakpoint = spec.parse()?;
        self.debug.breakpoints.push(spec)?;
        Ok(self)
    }

    /// Replay: what a hit does when there is no callback (default: pause
    /// when stdin is a terminal, else print).
    pub fn break_action(mut self, action: OnBreak) -> Builder {
        self.debug.on_break = Some(action);
        self
    }

    /// Replay: end the replay (successfully) at the first event with
    /// seq >= `seq`.
    pub fn until(mut self, seq: u64) -> Builder {
        self.debug.until = Some(seq);
        self
    }

    /// Replay: call `callback` at every hit; it sees the event, its task,
    /// its marks and its place in the log, and says how to go on.
    pub fn on_break(
        mut self,
        callback: impl FnMut(&BreakHit<'_>) -> Resume + Send + 'static,
    ) -> Builder {
        self.debug.callback = Some(std::sync::Arc::new(std::sync::Mutex::new(callback)));
        self
    }

    /// Mask secrets in what the recording logs: `redactor` sees a copy of
    /// every TCP read, UDP datagram received and write (TCP and UDP), and
    /// masks bytes in place (same length); the service always gets the
    /// real bytes. Several calls add redactors, which run in order.
    /// Redacted events are marked in the log, write hashes are taken
    /// after masking, and replay applies the same redactors to the
    /// service's writes, so keep the builder the same for record and
    /// replay. See [`crate::redact`] for ready-made ones:
    ///
    /// ```
    /// let builder = deja::Builder::new()
    ///     .redact(deja::redact::http_header("authorization"))
    ///     .redact(deja::redact::digits_run(13..=19).luhn());
    /// # drop(builder);
    /// ```
    pub fn redact(mut self, redactor: impl Redact) -> Builder {
        self.redactors.push(redactor);
        self
    }

    fn service_name(&self) -> String {
        self.service.clone().unwrap_or_else(exe_name)
    }

    /// Build the runtime (record: creates the run directory).
    pub fn build(self) -> Result<Runtime, Error> {
        match self.mode {
            Mode::Live => Ok(Runtime {
                kind: Kind::Live(self.tokio(None)?),
                last_replay: Default::default(),
            }),
            Mode::Record => {
                let out = self
                    .trace
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(TRACE_DIR_DEFAULT));
                let mut meta = RunMeta::current(&self.service_name());
                if let Some(run_id) = &self.run_id {
                    meta.set_run_id(run_id);
                }
                let root_seed = backend::os_seed();
                meta.root_seed = Some(root_seed);
                record_workers(&mut meta, self.worker_threads);
                let created = std::fs::create_dir_all(&out)
                    .map_err(|source| WriteError::Io {
                        path: out.clone(),
                        source,
                    })
                    .and_then(|()| Recorder::create(&out, meta, self.writer.clone()));
                let recorder = match created {
                    Ok(recorder) => recorder,
                    // Recording must never stop the service: run it live.
                    Err(err) => {
                        tracing::warn!(error = %err, "deja cannot record; the service runs live and nothing is recorded");
                        eprintln!(
                            "deja: warning: cannot record ({err}); the service runs live and nothing is recorded"
                        );
                        return Ok(Runtime {
                            kind: Kind::Live(self.tokio(None)?),
                            last_replay: Default::default(),
                        });
                    }
                };
                let recording = Arc::new(Recording::new(
                    recorder,
                    root_seed,
                    self.keep_write_bytes,
                    Redaction::new(self.redactors.clone()),
                ));
                recording.record_for(TaskId::MAIN, EventKind::RootSeed { seed: root_seed });
                let tokio = self.tokio(Some(Arc::clone(&recording)))?;
                if self.writer.flight_bytes.is_some() {
                    crate::flight::activate(&recording, &tokio);
                }
                Ok(Runtime {
                    kind: Kind::Record(tokio, recording),
                    last_replay: Default::default(),
                })
            }
            Mode::Replay => {
                let dir = self.trace.clone().ok_or(Error::NoRunDir)?;
                let (events, meta) = load_run(&dir)?;
                let this = self.service_name();
                check_identity(&dir, &meta, &this)?;
                let json = self.debug.json_fd.map(open_json_fd).transpose()?;
                Ok(Runtime {
                    kind: Kind::Replay {
                        events: Some(events),
                        strict_order: recorded_workers(&meta) <= 1,
                        start_wall_ns: meta.start_wall_unix_ns,
                        stall_wait: self.stall_wait,
                        debug: Box::new((self.debug.clone(), json)),
                        redactors: self.redactors.clone(),
                    },
                    last_replay: Default::default(),
                })
            }
            // A simulation is many services in one process: it is built
            // with `deja::sim::Sim`, not from one service's main.
            Mode::Sim => Err(Error::Unsupported(Mode::Sim)),
        }
    }

    /// Live: tokio's multi-thread runtime, as `#[tokio::main]` builds it.
    /// Record: by default one thread (see [`Builder::worker_threads`]),
    /// started at the recording's origin.
    fn tokio(&self, recording: Option<Arc<Recording>>) -> Result<tokio::runtime::Runtime, Error> {
        let Some(recording) = recording else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.enable_all();
            if let Some(threads) = self.worker_threads {
                builder.worker_threads(threads);
            }
            return builder.build().map_err(Error::Tokio);
        };
        // tokio's builder draws its seeds as soon as it is made: as main,
        // recorded; and its timers count milliseconds from the runtime's
        // start, which it reads as the recording's origin, where replay's
        // runtime starts too, so a deadline rounds to the same tick in
        // both (see `backend::RuntimeBuild`).
        let _record = backend::enter(Some(Rc::new(Arc::clone(&recording)) as Rc<dyn Backend>));
        crate::intercept::keep_driver_interposer();
        let _build = backend::RuntimeBuild::at(recording.origin_ns());
        let mut builder = match self.worker_threads {
            None | Some(1) => tokio::runtime::Builder::new_current_thread(),
            Some(threads) => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads);
                let recording = Arc::clone(&recording);
                builder.on_thread_start(move || {
                    // Worker and blocking threads live as long as the runtime.
                    std::mem::forget(backend::enter(Some(
                        Rc::new(Arc::clone(&recording)) as Rc<dyn Backend>
                    )));
                });
                builder
            }
        };
        builder.enable_all();
        seed_tokio(&mut builder, Recording::root_seed(&recording));
        let multi_thread = self.worker_threads.is_some_and(|threads| threads > 1);
        if multi_thread {
            // Workers start running while the runtime is built.
            recording.set_adoption_floor(u64::MAX);
        } else {
            recording.log_driver_turns();
        }
        let tokio = builder.build().map_err(Error::Tokio)?;
        drop(_build);
        if multi_thread {
            // The workers' loops are blocking tasks made by the build: a
            // task spawned now has a higher id than every one of them.
            let probe = tokio.block_on(tokio.spawn(async { tokio::task::id() }));
            let floor = probe.map_or(0, backend::tokio_id_number);
            recording.set_adoption_floor(floor);
        }
        Ok(tokio)
    }
}

fn exe_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| {
            path.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "service".into())
}

fn load_run(dir: &Path) -> Result<(Vec<Event>, RunMeta), Error> {
    let mut reader = RunReader::open(dir)?;
    let mut events = Vec::new();
    for event in reader.by_ref() {
        events.push(event?);
    }
    let window = FlightWindow::read(dir).map_err(|why| Error::FlightWindow {
        dir: dir.to_path_buf(),
        first_seq: 0,
        before: why,
    })?;
    if let Some(window) = window.filter(|window| !window.holds_the_start()) {
        return Err(Error::FlightWindow {
            dir: dir.to_path_buf(),
            first_seq: window.first_seq,
            before: deja_replayer::analysis::WindowReferences::of(&events).to_string(),
        });
    }
    let meta = reader
        .header()
        .map(|header| header.run.clone())
        .unwrap_or_else(|| RunMeta::new("", ""));
    Ok((events, meta))
}

/// The header's environment keeps `DEJA_WORKERS` as the recording ran,
/// whether it came from the environment or from `Builder::worker_threads`:
/// replay needs to know whether tasks ran in parallel.
fn record_workers(meta: &mut RunMeta, workers: Option<usize>) {
    meta.env.retain(|(name, _)| name != "DEJA_WORKERS");
    if let Some(workers) = workers {
        meta.env
            .push(("DEJA_WORKERS".to_string(), workers.to_string()));
        meta.env.sort();
    }
}

/// The worker threads the recording ran on (1 unless it says more).
fn recorded_workers(meta: &RunMeta) -> usize {
    meta.env
        .iter()
        .find(|(name, _)| name == "DEJA_WORKERS")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(1)
}

/// A log belongs to this binary if the service names match or the
/// recorded command ran an executable of the same name.
fn check_identity(dir: &Path, meta: &RunMeta, this: &str) -> Result<(), Error> {
    let recorded_exe = meta
        .argv
        .first()
        .and_then(|arg0| Path::new(arg0).file_stem())
        .map(|stem| stem.to_string_lossy().into_owned());
    if meta.service == this || recorded_exe.as_deref() == Some(exe_name().as_str()) {
        return Ok(());
    }
    Err(Error::ForeignLog {
        dir: dir.to_path_buf(),
        recorded: meta.service.clone(),
        recorded_cmd: meta.argv.first().cloned().unwrap_or_default(),
        this: this.to_string(),
    })
}

/// A deja runtime in one of its modes.
#[derive(Debug)]
pub struct Runtime {
    kind: Kind,
    last_replay: std::sync::Mutex<Option<ReplayStats>>,
}

#[derive(Debug)]
enum Kind {
    Live(tokio::runtime::Runtime),
    Record(tokio::runtime::Runtime, Arc<Recording>),
    Replay {
        events: Option<Vec<Event>>,
        /// One thread recorded it: synchronous calls are held to their
        /// place in the log (see `Gate::set_strict_order`).
        strict_order: bool,
        start_wall_ns: i64,
        stall_wait: Duration,
        debug: Box<(DebugConfig, Option<std::fs::File>)>,
        redactors: Redactors,
    },
}

impl Runtime {
    /// The mode this runtime runs in.
    pub fn mode(&self) -> Mode {
        match self.kind {
            Kind::Live(_) => Mode::Live,
            Kind::Record(..) => Mode::Record,
            Kind::Replay { .. } => Mode::Replay,
        }
    }

    /// Record mode: the run directory being written.
    pub fn run_dir(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Record(_, recording) => Some(recording.dir()),
            _ => None,
        }
    }

    /// After a replay: its figures (events, digest, virtual time).
    pub fn replay_stats(&self) -> Option<ReplayStats> {
        *self.last_replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `main` to completion as task 0. Record: the exit status is
    /// logged and the log closed before this returns. Replay: returns
    /// what main returned once the recorded exit is reached, or the
    /// divergence. A runtime runs one `main`.
    pub fn block_on<F>(&mut self, main: F) -> Result<F::Output, Error>
    where
        F: Future,
        F::Output: MainResult,
    {
        match &mut self.kind {
            Kind::Live(tokio) => Ok(tokio.block_on(main)),
            Kind::Record(tokio, recording) => {
                let _enter =
                    backend::enter(Some(Rc::new(Arc::clone(recording)) as Rc<dyn Backend>));
                let task = TaskCtx::new(Recording::root_seed(recording), TaskId::MAIN);
                let output = tokio.block_on(backend::scope(task, CatchUnwind(main)));
                let code = match &output {
                    Ok(output) => output.exit_code(),
                    Err(_) => EXIT_PANIC,
                };
                recording.record_for(TaskId::MAIN, EventKind::Exit { code });
                crate::flight::deactivate();
                report_losses(&recording.close()?, recording.dir());
                match output {
                    Ok(output) => Ok(output),
                    Err(payload) => std::panic::resume_unwind(payload),
                }
            }
            Kind::Replay {
                events,
                strict_order,
                start_wall_ns,
                stall_wait,
                debug,
                redactors,
            } => {
                let events = events.take().expect("a runtime runs one main");
                let (config, json) = std::mem::take(&mut **debug);
                let debugger = Debugger::new(config, json);
                let setup = ReplaySetup {
                    strict_order: *strict_order,
                    start_wall_ns: *start_wall_ns,
                    stall_wait: *stall_wait,
                    debugger,
                    redaction: Redaction::new(std::mem::take(redactors)),
                };
                let (output, stats) = replay(events, setup, main);
                *self.last_replay.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
                output
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Tasks still running after main returned must not keep the
        // process (or a test) waiting.
        let kind = std::mem::replace(
            &mut self.kind,
            Kind::Replay {
                events: None,
                strict_order: true,
                start_wall_ns: 0,
                stall_wait: Duration::ZERO,
                debug: Box::default(),
                redactors: Redactors::default(),
            },
        );
        match kind {
            Kind::Live(tokio) | Kind::Record(tokio, _) => tokio.shutdown_background(),
            Kind::Replay { .. } => {}
        }
    }
}

/// How a replay runs, besides its events.
struct ReplaySetup {
    strict_order: bool,
    start_wall_ns: i64,
    stall_wait: Duration,
    debugger: Option<Debugger>,
    redaction: Option<Redaction>,
}

fn replay<F>(
    events: Vec<Event>,
    setup: ReplaySetup,
    main: F,
) -> (Result<F::Output, Error>, ReplayStats)
where
    F: Future,
    F::Output: MainResult,
{
    let mut gate = Gate::new(events);
    gate.set_strict_order(setup.strict_order);
    let replay = Rc::new(Replay::new(
        gate,
        setup.start_wall_ns,
        setup.debugger,
        setup.redaction,
    ));
    let _enter = backend::enter(Some(Rc::clone(&replay) as Rc<dyn Backend>));
    let root_seed = replay.recorded_root_seed().unwrap_or([0; 32]);
    replay.set_root_seed(root_seed);
    // The recording's first event of main is its root seed; then come the
    // draws of its runtime's build (see `backend::RuntimeBuild`).
    replay.claim(TaskId::MAIN, &Call::RootSeed);
    let watch = StallWatch::start(setup.stall_wait);
    replay.set_watch(Arc::clone(&watch));
    let tokio = match replay_runtime(&watch, &root_seed) {
        Ok(tokio) => tokio,
        Err(err) => {
            watch.finish();
            return (Err(err), replay.stats());
        }
    };
    replay.pass_build_entropy();
    #[allow(clippy::type_complexity)]
    let output: Rc<std::cell::RefCell<Option<std::thread::Result<F::Output>>>> = Rc::default();
    {
        let output = Rc::clone(&output);
        let task = TaskCtx::new(&root_seed, TaskId::MAIN);
        let body = backend::scope(task, async move {
            let value = CatchUnwind(main).await;
            let code = match &value {
                Ok(value) => value.exit_code(),
                Err(_) => EXIT_PANIC,
            };
            crate::replay::replay_call(Call::Exit { code }).await;
            *output.borrow_mut() = Some(value);
        });
        let mut body = std::pin::pin!(body);
        replay.wake_cursor();
        tokio.block_on(std::future::poll_fn(|cx| {
            replay.set_root_waker(cx.waker());
            watch.set_waker(cx.waker());
            if watch.take_stalled() {
                replay.stall();
            }
            if replay.stopped() || body.as_mut().poll(cx).is_ready() || replay.stopped() {
                return std::task::Poll::Ready(());
            }
            std::task::Poll::Pending
        }));
    }
    let stop = replay.take_stop();
    // Tasks still waiting are dropped here, on this thread, in replay mode
    // (their drops claim nothing once the replay stopped); a blocking job
    // still running is not waited for.
    tokio.shutdown_background();
    watch.finish();
    let stats = replay.stats();
    if let Some(debugger) = &replay.debugger {
        let exit_code = match &stop {
            Some(Stop::Exited) => output.borrow().as_ref().map_or(0, |value| match value {
                Ok(value) => value.exit_code(),
                Err(_) => EXIT_PANIC,
            }),
            Some(Stop::Diverged(_)) => EXIT_DIVERGENCE,
            _ => 0,
        };
        debugger.outcome(stop.as_ref(), &stats, exit_code);
    }
    let result = match stop {
        Some(Stop::Exited) => match output.borrow_mut().take() {
            Some(Ok(value)) => Ok(value),
            // The recorded main panicked, and so did this one: again.
            Some(Err(payload)) => std::panic::resume_unwind(payload),
            None => Err(Error::RecordingEnded { last_seq: None }),
        },
        Some(Stop::RecordingEnded) => Err(Error::RecordingEnded {
            last_seq: replay.last_seq(),
        }),
        Some(Stop::Diverged(divergence)) => Err(Error::Diverged(divergence)),
        Some(Stop::Halted { seq, why }) => Err(Error::Halted { seq, why }),
        None => Err(Error::RecordingEnded {
            last_seq: replay.last_seq(),
        }),
    };
    (result, stats)
}

/// The tokio runtime a replay runs on: one thread, so the same log gives
/// the same schedule; tokio's timers on virtual time (every clock reading
/// on this thread is the replay's, see [`crate::intercept`]), started at
/// the recording's origin; IO enabled only so that a library that opens
/// its own socket gets an error, not a panic. Its park hooks move virtual
/// time at idle points ([`Replay::idle`]) and arm the stall watchdog.
fn replay_runtime(
    watch: &Arc<StallWatch>,
    root_seed: &[u8; 32],
) -> Result<tokio::runtime::Runtime, Error> {
    let _build = backend::RuntimeBuild::at(backend::virtual_mono(0) as u64);
    crate::intercept::keep_driver_interposer();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    let parked = Arc::clone(watch);
    builder.on_thread_park(move || {
        crate::replay::with_replay(|replay| replay.idle());
        parked.parked();
    });
    let unparked = Arc::clone(watch);
    builder.on_thread_unpark(move || unparked.unparked());
    seed_tokio(&mut builder, root_seed);
    builder.build().map_err(Error::Tokio)
}

/// With `--cfg tokio_unstable`, tokio's own randomness (which branch of a
/// library's `tokio::select!` goes first) comes from the run's root seed,
/// the same in the recording and every replay. Without it tokio seeds
/// itself, and a library `select!` with two branches ready at once may
/// pick differently in replay (which then says where it diverged).
#[allow(unused_variables)]
fn seed_tokio(builder: &mut tokio::runtime::Builder, root_seed: &[u8; 32]) {
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(root_seed));
}

/// The body of `#[deja::main]`: build from the environment, run, exit.
#[doc(hidden)]
pub fn run_main<T: MainResult, F: Future<Output = T>>(main: F) -> ! {
    run_to_exit(Builder::from_env().and_then(Builder::build), main)
}

/// `#[deja::main]` with a say in the builder: settings from the
/// environment, then `configure` (redactors, worker threads, ...), then
/// run `main` and exit the way the mode says. A service that redacts
/// writes its `main` this way, so record and replay get the same redactors:
///
/// ```no_run
/// // In `fn main()`:
/// deja::run_main_with(
///     |builder| builder.redact(deja::redact::http_header("authorization")),
///     async {
///         // the service, as under #[deja::main]
///         Ok::<(), std::io::Error>(())
///     },
/// )
/// ```
pub fn run_main_with<T: MainResult, F: Future<Output = T>>(
    configure: impl FnOnce(Builder) -> Builder,
    main: F,
) -> ! {
    run_to_exit(
        Builder::from_env().map(configure).and_then(Builder::build),
        main,
    )
}

/// Run `main` on `runtime` and exit the process the way the mode says
/// (replay: with the recorded code, or 3 on a divergence).
pub(crate) fn run_to_exit<T: MainResult, F: Future<Output = T>>(
    runtime: Result<Runtime, Error>,
    main: F,
) -> ! {
    let mut runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => fail(&err),
    };
    let mode = runtime.mode();
    let started = std::time::Instant::now();
    let result = runtime.block_on(main);
    let mut finished = "complete";
    let code = match result {
        Ok(output) => output.report(),
        Err(Error::Halted { seq, why }) => {
            eprintln!("deja: replay stopped at seq {seq}: {why}");
            finished = "stopped";
            0
        }
        Err(Error::Diverged(divergence)) => {
            eprint!("deja: {divergence}");
            if let Some(stats) = runtime
                .replay_stats()
                .filter(|stats| stats.foreign_sockets > 0)
            {
                eprintln!(
                    "note: library code opened {} connection(s) with sockets of its own, which replay refuses: \
                     a divergence after one is expected; connect through deja::net",
                    stats.foreign_sockets
                );
            }
            eprintln!("hint: `deja inspect RUN_DIR --from SEQ` shows the log around it");
            drop(runtime);
            std::process::exit(EXIT_DIVERGENCE);
        }
        Err(Error::RecordingEnded { last_seq }) => {
            eprintln!(
                "deja: replay reached the end of the recording (seq {}); the recorded process did not exit (killed?)",
                last_seq.map_or_else(|| "-".into(), |seq| seq.to_string())
            );
            0
        }
        Err(err) => fail(&err),
    };
    if mode == Mode::Replay {
        if let Some(stats) = runtime.replay_stats() {
            eprintln!(
                "deja: replay {finished}: {} events, digest {:016x}, {:.3}s virtual in {:.3}s",
                stats.events,
                stats.digest,
                stats.virtual_ns as f64 / 1e9,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(runtime);
    std::process::exit(code)
}

/// One stderr line at exit when the recording is missing events, so a
/// service without a `tracing` subscriber still says so.
fn report_losses(stats: &deja_recorder::RecorderStats, dir: &Path) {
    if let Some(error) = &stats.index_error {
        // Only the summary failed: the log itself is complete.
        eprintln!(
            "deja: warning: {error}; the log is complete (its footer is written), only its \
             index is missing or stale: `deja verify {}` reads it",
            dir.display()
        );
    }
    if stats.dropped == 0 && stats.write_error.is_none() {
        return;
    }
    let mut line = format!(
        "deja: warning: the recording lost {} of {} events",
        stats.dropped, stats.produced
    );
    if let Some(error) = &stats.write_error {
        line.push_str(&format!(
            " ({} write outage(s), last error: {error})",
            stats.write_outages
        ));
    }
    if stats.in_outage {
        line.push_str("; the disk never came back, so the log ends without a footer");
    }
    eprintln!("{line}; `deja stats {}` shows where", dir.display());
}

/// Under `deja replay`, say on its JSON channel that the replay could not
/// run, so `deja` tells this error apart from a program that is not a
/// deja service (which never writes there).
fn report_failure_json(err: &Error) {
    use std::io::Write as _;
    use std::os::fd::FromRawFd as _;
    if std::env::var_os("DEJA_MODE").is_none_or(|mode| mode != "replay") {
        return;
    }
    let Some(fd) = std::env::var("DEJA_JSON_FD")
        .ok()
        .and_then(|fd| fd.parse::<i32>().ok())
        .filter(|fd| *fd > 2)
    else {
        return;
    };
    // SAFETY: fcntl on any integer is safe; it fails on a closed fd.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return;
    }
    let line = serde_json::json!({
        "type": "outcome",
        "status": "error",
        "exit_code": 1,
        "detail": { "message": err.to_string() },
    });
    // SAFETY: the fd is open (checked above) and handed to deja by the
    // CLI for this purpose; ManuallyDrop leaves it open for the exit.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let _ = writeln!(file, "{line}");
}

/// Exit code of a replay that diverged (the design's table).
pub const EXIT_DIVERGENCE: i32 = 3;

fn fail(err: &Error) -> ! {
    report_failure_json(err);
    eprintln!("deja: {err}");
    if let Some(hint) = err.hint() {
        eprintln!("hint: {hint}");
    }
    std::process::exit(1)
}
