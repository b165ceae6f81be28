//! Simulation: several services in one process, on virtual time, over a
//! network that delays, drops, partitions and crashes on purpose, all
//! drawn from one seed.
//!
//! The services are the same code that runs live, records and replays:
//! every host runs its entry function on the shim, and the shim's clock,
//! randomness, tasks and sockets go to the simulated world instead of the
//! OS. Virtual time moves only when no task of any host can run, so an
//! hour of heartbeats takes milliseconds. Each host's events are logged
//! exactly as a recording would log them: when a simulation fails, it
//! prints the seed and writes one log per host that `deja replay`
//! replays (breakpoints included).
//!
//! ```
//! use deja::io::{AsyncReadExt, AsyncWriteExt};
//! use deja::net::{TcpListener, TcpStream};
//! use deja::sim::{Latency, Sim};
//! use deja::time::Duration;
//!
//! let mut sim = Sim::new(7);
//! sim.net().latency(Latency::Uniform(Duration::from_millis(1), Duration::from_millis(20)));
//! sim.host("echo", || async {
//!     let listener = TcpListener::bind("0.0.0.0:7000").await?;
//!     loop {
//!         let (mut conn, _) = listener.accept().await?;
//!         deja::spawn(async move {
//!             let mut buf = [0u8; 64];
//!             let n = conn.read(&mut buf).await?;
//!             conn.write_all(&buf[..n]).await
//!         });
//!     }
//!     #[allow(unreachable_code)]
//!     Ok::<(), std::io::Error>(())
//! });
//! sim.client("client", async {
//!     let mut conn = TcpStream::connect("echo:7000").await?;
//!     conn.write_all(b"ping").await?;
//!     let mut reply = [0u8; 4];
//!     conn.read_exact(&mut reply).await?;
//!     assert_eq!(&reply, b"ping");
//!     Ok::<(), std::io::Error>(())
//! });
//! let report = sim.run().map_err(|failure| failure.to_string())?;
//! assert!(report.virtual_time > Duration::ZERO);
//! # Ok::<(), String>(())
//! ```
//!
//! Many seeds at once: [`Sweep`]. Does the code depend on anything but
//! the seed? [`check_determinism`].
//!
//! # Library code
//!
//! Every host (each incarnation) has a tokio current-thread runtime of
//! its own, entered while its tasks run, so library code that calls
//! `tokio::spawn`, `tokio::time::{sleep, timeout, interval}`,
//! `tokio::task::yield_now` or `spawn_blocking` (axum's `serve`,
//! hyper-util's pooled client, tower's timeouts) runs in a host as it is:
//!
//! * Its tasks run when no deja task can, on the simulation's thread; they
//!   are logged as tasks of the host, adopted at their first intercepted
//!   call (as in a recording).
//! * Its timers run on the host's virtual clock, with tokio's millisecond
//!   granularity: while a host has tokio timers waiting, the simulation
//!   steps its timer driver at every millisecond of virtual time
//!   ([`SimReport::tokio_ticks`]). A simulation that does not use tokio
//!   has no such steps.
//! * A blocking task runs to completion, in no virtual time, while the
//!   simulation waits, right after the poll that spawned it; it runs on a
//!   real thread, so its clock and entropy are the machine's. One that
//!   waits for the simulation fails the run ([`Sim::blocking_wait`]).
//! * A crash drops the host's runtime with its tasks and timers.
//!
//! Without `--cfg tokio_unstable`, which branch of a library's
//! `tokio::select!` goes first when two are ready is tokio's own random
//! choice, not the seed's.

mod capture;
mod chaos;
mod check;
pub(crate) mod executor;
mod hash;
pub(crate) mod host;
pub(crate) mod net;
mod ops;
mod policy;
mod sockets;
mod sweep;
pub(crate) mod tokio_rt;
pub(crate) mod world;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

pub use capture::{CAPTURE_BUFFER_EVENTS, CHECKPOINT_EVENTS};
pub use chaos::Chaos;
pub use check::{check_determinism, Nondeterminism};
pub use deja_replayer::sweep::{Shard, SweepRecord, SHARD_ENV};
pub use policy::{Latency, LinkPolicy};
pub use sweep::{Sweep, SweepReport, LOGGED_FAILURES_MAX};
pub use tokio_rt::BLOCKING_WAIT_DEFAULT;

pub(crate) use host::Host;

use crate::runtime::MainResult;
use world::{Entry, HostSlot, Installed, Item, World};

/// The simulated wall clock at time zero: 2026-01-01T00:00:00Z.
pub const EPOCH_DEFAULT_UNIX_S: i64 = 1_767_225_600;
/// Virtual time after which a simulation with clients still running
/// fails (and one without clients ends): a day, so that workloads of a
/// round hour or two (a heartbeat hour, a lease renewed for an hour) pass
/// without tuning, while a client stuck behind a periodic timer still
/// ends in seconds of CPU. [`Sim::time_limit`] changes it.
pub const TIME_LIMIT_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// How long a connect waits for an answer across a partition.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// A host's entry future, boxed, with its exit folded to a code.
pub(crate) type HostFuture = Pin<Box<dyn Future<Output = Exited>>>;

/// How a simulated process ended.
#[derive(Debug)]
pub(crate) struct Exited {
    pub(crate) code: i32,
    pub(crate) error: Option<String>,
}

impl MainResult for Exited {
    fn exit_code(&self) -> i32 {
        self.code
    }
    fn report(self) -> i32 {
        if let Some(error) = &self.error {
            eprintln!("Error: {error}");
        }
        self.code
    }
}

fn boxed<F>(future: F) -> HostFuture
where
    F: Future + 'static,
    F::Output: MainResult,
{
    Box::pin(async move {
        let output = future.await;
        Exited {
            code: output.exit_code(),
            error: output.error_text(),
        }
    })
}

/// A fault or lifecycle change, by host index.
#[derive(Debug)]
pub(crate) enum Control {
    Crash(usize),
    Restart(usize),
    Partition(usize, usize),
    Hold(usize, usize),
    Heal(usize, usize),
    HealAll,
    Exited(usize, u32, Exited),
}

/// A scheduled fault, by host name (resolved when the run starts).
#[derive(Clone, Debug)]
enum Fault {
    Crash(String),
    Restart(String),
    Partition(String, String),
    Hold(String, String),
    Heal(String, String),
    HealAll,
}

/// A check run whenever the simulation is idle; an `Err` fails it.
pub(crate) struct Invariant {
    pub(crate) name: String,
    pub(crate) check: Box<dyn FnMut() -> Result<(), String>>,
}

struct Declared {
    name: String,
    entry: Entry,
    options: HostOptions,
}

/// Per-host settings: returned by [`Sim::host`] and [`Sim::client`].
#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    skew_ns: i64,
    start_at: Duration,
}

impl HostOptions {
    /// This host's wall clock runs `ahead` of everyone else's.
    pub fn clock_ahead(&mut self, ahead: Duration) -> &mut Self {
        self.skew_ns = i64::try_from(ahead.as_nanos()).unwrap_or(i64::MAX);
        self
    }

    /// This host's wall clock runs `behind` everyone else's.
    pub fn clock_behind(&mut self, behind: Duration) -> &mut Self {
        self.skew_ns = -i64::try_from(behind.as_nanos()).unwrap_or(i64::MAX);
        self
    }

    /// Start this host at virtual time `at` instead of 0.
    pub fn start_at(&mut self, at: Duration) -> &mut Self {
        self.start_at = at;
        self
    }
}

/// One simulation: declare hosts, clients, the network and faults, then
/// [`Sim::run`]. See the [module docs](self).
pub struct Sim {
    seed: u64,
    hosts: Vec<Declared>,
    net: LinkPolicy,
    links: Vec<(String, String, LinkPolicy)>,
    faults: Vec<(Duration, Fault)>,
    invariants: Vec<Invariant>,
    chaos: Chaos,
    time_limit: Duration,
    connect_timeout: Duration,
    epoch_unix_ns: i64,
    log_dir: Option<PathBuf>,
    write_logs: bool,
    logs_always: bool,
    keep_write_bytes: bool,
    fail_on_task_panic: bool,
    quiet: bool,
    blocking_wait: Duration,
    config_errors: Vec<String>,
    /// Set by `Sweep` and `check_determinism`, which can run a seed again:
    /// what to keep instead of streaming capture to logs.
    capture: Option<capture::CaptureMode>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field(
                "hosts",
                &self
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A simulation of `seed`; `DEJA_SEED` in the environment overrides
    /// it, so a failing seed reruns with `DEJA_SEED=N cargo test ...`.
    pub fn new(seed: u64) -> Sim {
        let seed = match seed_override() {
            Some(forced) => {
                announce_seed_override(forced, seed);
                forced
            }
            None => seed,
        };
        Sim {
            seed,
            hosts: Vec::new(),
            net: LinkPolicy::default(),
            links: Vec::new(),
            faults: Vec::new(),
            invariants: Vec::new(),
            chaos: Chaos::default(),
            time_limit: TIME_LIMIT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            epoch_unix_ns: EPOCH_DEFAULT_UNIX_S * 1_000_000_000,
            log_dir: None,
            write_logs: true,
            logs_always: false,
            keep_write_bytes: true,
            fail_on_task_panic: true,
            quiet: false,
            blocking_wait: BLOCKING_WAIT_DEFAULT,
            config_errors: Vec::new(),
            capture: None,
        }
    }

    /// The seed this simulation runs.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A server: `entry` runs at start and again after each restart (a
    /// crash loses whatever it kept in memory).
    pub fn host<F, Fut>(&mut self, name: &str, entry: F) -> &mut HostOptions
    where
        F: Fn() -> Fut + 'static,
        Fut: Future + 'static,
        Fut::Output: MainResult,
    {
        self.declare(name, Entry::Server(Rc::new(move || boxed(entry()))))
    }

    /// A client: runs once; the simulation succeeds when every client has
    /// returned `Ok` (or `()`), and fails when one panics or errs. Pass an
    /// `async` block: a shim future made out here (`sleep(d)` itself)
    /// would belong to no simulation.
    pub fn client<Fut>(&mut self, name: &str, future: Fut) -> &mut HostOptions
    where
        Fut: Future + 'static,
        Fut::Output: MainResult,
    {
        self.declare(name, Entry::Client(Some(boxed(future))))
    }

    fn declare(&mut self, name: &str, entry: Entry) -> &mut HostOptions {
        if name.is_empty() || name.contains(['/', ':', ' ']) {
            self.config_errors
                .push(format!("host name {name:?}: use letters, digits, - and _"));
        }
        if self.hosts.iter().any(|host| host.name == name) {
            self.config_errors
                .push(format!("host {name:?} is declared twice"));
        }
        self.hosts.push(Declared {
            name: name.to_string(),
            entry,
            options: HostOptions::default(),
        });
        &mut self.hosts.last_mut().expect("just pushed").options
    }

    /// The policy of every link without its own.
    pub fn net(&mut self) -> &mut LinkPolicy {
        &mut self.net
    }

    /// The policy of the link between `a` and `b` (both directions),
    /// starting from the default one.
    pub fn link(&mut self, a: &str, b: &str) -> &mut LinkPolicy {
        self.links
            .push((a.to_string(), b.to_string(), self.net.clone()));
        &mut self.links.last_mut().expect("just pushed").2
    }

    /// Crash `host` at virtual time `at`: its tasks stop, its
    /// connections reset, its memory is gone.
    pub fn crash_at(&mut self, at: Duration, host: &str) -> &mut Self {
        self.faults.push((at, Fault::Crash(host.to_string())));
        self
    }

    /// Start `host` again at `at` (crashing it first if it runs).
    pub fn restart_at(&mut self, at: Duration, host: &str) -> &mut Self {
        self.faults.push((at, Fault::Restart(host.to_string())));
        self
    }

    /// Cut the link between `a` and `b` at `at`.
    pub fn partition_at(&mut self, at: Duration, a: &str, b: &str) -> &mut Self {
        self.faults
            .push((at, Fault::Partition(a.to_string(), b.to_string())));
        self
    }

    /// Hold the link between `a` and `b` at `at`: its packets wait until
    /// it heals, then arrive in order; connections stay up (a partition
    /// resets them). A connect across a hold times out after
    /// `connect_timeout`.
    pub fn hold_at(&mut self, at: Duration, a: &str, b: &str) -> &mut Self {
        self.faults
            .push((at, Fault::Hold(a.to_string(), b.to_string())));
        self
    }

    /// Restore the link between `a` and `b` at `at` (ending a partition
    /// or a hold).
    pub fn heal_at(&mut self, at: Duration, a: &str, b: &str) -> &mut Self {
        self.faults
            .push((at, Fault::Heal(a.to_string(), b.to_string())));
        self
    }

    /// Restore every link at `at`.
    pub fn heal_all_at(&mut self, at: Duration) -> &mut Self {
        self.faults.push((at, Fault::HealAll));
        self
    }

    /// Random faults drawn from the seed (none by default).
    pub fn chaos(&mut self) -> &mut Chaos {
        &mut self.chaos
    }

    /// Check `check` whenever the simulation is idle; an `Err` fails the
    /// run at that instant, named `name`.
    pub fn invariant(
        &mut self,
        name: &str,
        check: impl FnMut() -> Result<(), String> + 'static,
    ) -> &mut Self {
        self.invariants.push(Invariant {
            name: name.to_string(),
            check: Box::new(check),
        });
        self
    }

    /// Virtual time allowed (default [`TIME_LIMIT_DEFAULT`]).
    pub fn time_limit(&mut self, limit: Duration) -> &mut Self {
        self.time_limit = limit;
        self
    }

    /// How long a connect across a partition waits before `TimedOut`.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// The simulated wall clock at time zero.
    pub fn start_time(&mut self, at: std::time::SystemTime) -> &mut Self {
        self.epoch_unix_ns = at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self
    }

    /// Where failure logs go (default: `DEJA_TRACE`, else `deja-runs`).
    pub fn log_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Write logs when the run fails (default true). While it may write
    /// them, a run streams each host's events to a staging log on disk
    /// past [`CAPTURE_BUFFER_EVENTS`]; with `false` it keeps only their
    /// hashes (the digest).
    pub fn write_logs(&mut self, write: bool) -> &mut Self {
        self.write_logs = write;
        self
    }

    /// Write the logs after every run, passed or failed (for debugging a
    /// run that passes: its hosts replay like recordings).
    pub fn always_write_logs(&mut self) -> &mut Self {
        self.logs_always = true;
        self
    }

    /// Keep written bytes in the logs, so a divergence shows them
    /// (default true; false keeps only length and hash).
    pub fn keep_write_bytes(&mut self, keep: bool) -> &mut Self {
        self.keep_write_bytes = keep;
        self
    }

    /// Fail the run when a spawned task panics (default true). Off, a
    /// panic only fails the task's `JoinHandle`, as in tokio.
    pub fn fail_on_task_panic(&mut self, fail: bool) -> &mut Self {
        self.fail_on_task_panic = fail;
        self
    }

    /// Real time one blocking task (`tokio::task::spawn_blocking` in a
    /// host) may take before the run fails (default
    /// [`BLOCKING_WAIT_DEFAULT`]). Blocking tasks run to completion while
    /// the simulation waits, one at a time, in no virtual time: one that
    /// waits for the simulation never ends.
    pub fn blocking_wait(&mut self, limit: Duration) -> &mut Self {
        self.blocking_wait = limit;
        self
    }

    /// Do not print failures (sweeps print their own summary).
    pub fn quiet(&mut self, quiet: bool) -> &mut Self {
        self.quiet = quiet;
        self
    }

    /// Run the simulation to its end. On failure, prints the seed and
    /// the command that reproduces it, writes one log per host, and
    /// returns the failure (its `Display` says all of that again).
    ///
    /// Under `deja replay` (`DEJA_MODE=replay` with a log this
    /// simulation wrote), runs only the logged host, replayed, and exits
    /// the process the way `#[deja::main]` does.
    pub fn run(self) -> Result<SimReport, Box<SimFailure>> {
        if let Some(target) = capture::replay_target() {
            return self.replay(target);
        }
        let quiet = self.quiet;
        let result = self.simulate();
        if let Err(failure) = &result {
            if !quiet {
                eprintln!("{failure}");
            }
        }
        result
    }

    fn simulate(mut self) -> Result<SimReport, Box<SimFailure>> {
        let started = std::time::Instant::now();
        let seed = self.seed;
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        let index = |name: &str| names.iter().position(|known| known == name);
        let mut errors = std::mem::take(&mut self.config_errors);
        let mut links = HashMap::new();
        for (a, b, policy) in &self.links {
            match (index(a), index(b)) {
                (Some(a), Some(b)) => {
                    links.insert((a, b), policy.clone());
                }
                _ => errors.push(format!("link {a:?}-{b:?}: no such host")),
            }
        }
        let mut scheduled = Vec::new();
        for (at, fault) in &self.faults {
            let resolve = |name: &str, errors: &mut Vec<String>| {
                let found = index(name);
                if found.is_none() {
                    errors.push(format!("fault at {at:?}: no host named {name:?}"));
                }
                found
            };
            let control = match fault {
                Fault::Crash(h) => resolve(h, &mut errors).map(Control::Crash),
                Fault::Restart(h) => resolve(h, &mut errors).map(Control::Restart),
                Fault::Partition(a, b) => resolve(a, &mut errors)
                    .zip(resolve(b, &mut errors))
                    .map(|(a, b)| Control::Partition(a, b)),
                Fault::Hold(a, b) => resolve(a, &mut errors)
                    .zip(resolve(b, &mut errors))
                    .map(|(a, b)| Control::Hold(a, b)),
                Fault::Heal(a, b) => resolve(a, &mut errors)
                    .zip(resolve(b, &mut errors))
                    .map(|(a, b)| Control::Heal(a, b)),
                Fault::HealAll => Some(Control::HealAll),
            };
            if let Some(control) = control {
                scheduled.push((nanos(*at), control));
            }
        }
        let servers: Vec<usize> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, host)| matches!(host.entry, Entry::Server(_)))
            .map(|(index, _)| index)
            .collect();
        scheduled.extend(
            self.chaos
                .schedule(seed, names.len(), &servers, nanos(self.time_limit)),
        );
        let context = capture::RunContext::current();
        if !errors.is_empty() {
            return Err(Box::new(SimFailure {
                seed,
                kind: FailureKind::Config(errors.join("; ")),
                report: SimReport::empty(seed),
                logs: Vec::new(),
                log_error: None,
                reproduce: context.reproduce(seed),
            }));
        }

        let net = net::Net::new(
            names.clone(),
            self.net.clone(),
            links,
            nanos(self.connect_timeout),
        );
        let starts: Vec<u64> = self
            .hosts
            .iter()
            .map(|h| nanos(h.options.start_at))
            .collect();
        let slots = self
            .hosts
            .drain(..)
            .map(|declared| HostSlot {
                name: declared.name,
                entry: declared.entry,
                skew_ns: declared.options.skew_ns,
                current: None,
                incarnations: Vec::new(),
                exited: None,
            })
            .collect();
        let log_dir = self
            .log_dir
            .clone()
            .unwrap_or_else(capture::default_log_dir);
        let mode = match self.capture.take() {
            Some(mode) => mode,
            None if self.write_logs || self.logs_always => capture::CaptureMode::Logs(Rc::new(
                capture::LogPlan::new(log_dir.clone(), context.clone()),
            )),
            None => capture::CaptureMode::Off,
        };
        let mut world = World::new(
            seed,
            self.epoch_unix_ns,
            net,
            slots,
            self.fail_on_task_panic,
            self.keep_write_bytes,
            self.blocking_wait,
        );
        world.capture = mode.clone();
        let world = Rc::new(world);
        let installed = Installed::new(&world);
        for (index, at) in starts.into_iter().enumerate() {
            world.schedule(at, Item::Start(index));
        }
        for (at, control) in scheduled {
            world.schedule(at, Item::Control(control));
        }
        let failure = world.run(nanos(self.time_limit), &mut self.invariants);
        world.shutdown();
        let report = SimReport::of(&world, started.elapsed());
        capture::hand_over(&world);
        let (logs, log_error) = match &mode {
            capture::CaptureMode::Logs(plan)
                if self.logs_always || (failure.is_some() && self.write_logs) =>
            {
                match capture::write_logs(&world, &log_dir) {
                    Ok(logs) => (logs, plan.error()),
                    Err(err) => (Vec::new(), Some(err.to_string())),
                }
            }
            _ => (Vec::new(), None),
        };
        if let capture::CaptureMode::Logs(plan) = &mode {
            plan.discard();
        }
        let mut report = report;
        report.logs.clone_from(&logs);
        let result = match failure {
            None => Ok(report),
            Some(kind) => Err(Box::new(SimFailure {
                seed,
                kind,
                report,
                logs,
                log_error,
                reproduce: context.reproduce(seed),
            })),
        };
        // Drop the hosts (and every future they still hold) while the
        // world is installed: their drops look for it.
        world.hosts.borrow_mut().clear();
        drop(installed);
        result
    }

    /// Run without printing or writing logs, keeping what `mode` says,
    /// and hand over every host's checkpoints (and kept events): for
    /// [`check_determinism`].
    pub(crate) fn simulate_captured(
        mut self,
        mode: capture::CaptureMode,
    ) -> (Result<SimReport, Box<SimFailure>>, Vec<HostEvents>) {
        self.write_logs = false;
        self.logs_always = false;
        self.quiet = true;
        self.capture = Some(mode);
        let events = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = Rc::clone(&events);
        capture::CAPTURED.with(|slot| *slot.borrow_mut() = Some(sink));
        let result = self.simulate();
        capture::CAPTURED.with(|slot| slot.borrow_mut().take());
        let events = std::mem::take(&mut *events.borrow_mut());
        (result, events)
    }

    /// Run keeping only the hashes, for a caller that can build the
    /// simulation again to write its logs (`Sweep`). A simulation that
    /// writes its logs whether or not it fails streams them as usual.
    pub(crate) fn run_hashed(mut self) -> Result<SimReport, Box<SimFailure>> {
        if !self.logs_always {
            self.capture = Some(capture::CaptureMode::Off);
        }
        self.run()
    }

    fn replay(mut self, target: capture::ReplayTarget) -> Result<SimReport, Box<SimFailure>> {
        if !target.is_for_this_thread() {
            eprintln!(
                "deja: not replaying this simulation: the log is of test {:?}",
                target.test.as_deref().unwrap_or("?")
            );
            return Ok(SimReport::empty(self.seed));
        }
        let Some(position) = self.hosts.iter().position(|h| h.name == target.host) else {
            eprintln!(
                "deja: {} is a log of simulated host {:?}, which this simulation does not declare (hosts: {})",
                target.dir.display(),
                target.host,
                self.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
            );
            std::process::exit(1);
        };
        let declared = self.hosts.swap_remove(position);
        let future = match declared.entry {
            Entry::Server(factory) => factory(),
            Entry::Client(future) => future.expect("a declared client has its future"),
        };
        let runtime = crate::Builder::from_env()
            .map(|builder| builder.service(&target.host))
            .and_then(crate::Builder::build);
        crate::runtime::run_to_exit(runtime, future)
    }
}

/// `DEJA_SEED` replacing a seed the code chose is said once per process,
/// unless `deja sim` set it (`DEJA_MODE=sim`: choosing seeds is its job).
fn announce_seed_override(forced: u64, given: u64) {
    static SAID: std::sync::Once = std::sync::Once::new();
    let by_deja_sim = std::env::var("DEJA_MODE").is_ok_and(|mode| mode == "sim");
    if forced != given && !by_deja_sim {
        SAID.call_once(|| {
            eprintln!("deja sim: DEJA_SEED={forced} overrides the seed {given} given to Sim::new")
        });
    }
}

/// `DEJA_SEED`, if set and a number.
pub(crate) fn seed_override() -> Option<u64> {
    std::env::var("DEJA_SEED").ok()?.trim().parse().ok()
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// One host incarnation's checkpoints and kept events, for the
/// determinism check.
#[derive(Debug)]
pub(crate) struct HostEvents {
    pub(crate) host: String,
    pub(crate) incarnation: u32,
    /// Digests after every [`CHECKPOINT_EVENTS`] events.
    pub(crate) checkpoints: Vec<u64>,
    pub(crate) events: Vec<deja_recorder::Event>,
}

/// Why a simulation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// A host's main, or one of its tasks, panicked.
    Panicked {
        /// The host.
        host: String,
        /// The panic message.
        message: String,
    },
    /// A host or client returned an error (exit code not 0).
    Exited {
        /// The host.
        host: String,
        /// Its exit code.
        code: i32,
        /// The error it returned, if it said.
        error: Option<String>,
    },
    /// An invariant callback returned `Err`.
    Invariant {
        /// The invariant's name.
        name: String,
        /// What it said.
        message: String,
    },
    /// No task can run and nothing is scheduled, but clients are waiting.
    Deadlock {
        /// The clients still running.
        waiting: Vec<String>,
    },
    /// Tasks kept waking each other without virtual time moving.
    Livelock {
        /// Polls at the stuck instant.
        polls: u64,
    },
    /// The time limit passed with clients still running.
    TimeLimit {
        /// The limit, virtual ns.
        limit_ns: u64,
        /// The clients still running.
        waiting: Vec<String>,
    },
    /// The simulation was declared wrong (an unknown host, a duplicate).
    Config(String),
    /// Library code in a host did something the simulation cannot run
    /// (a blocking task that never ends, ...).
    Library {
        /// The host.
        host: String,
        /// What happened.
        message: String,
    },
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Panicked { host, message } => write!(f, "host {host:?} {message}"),
            FailureKind::Exited { host, code, error } => {
                write!(f, "host {host:?} exited with code {code}")?;
                if let Some(error) = error {
                    write!(f, ": {error}")?;
                }
                Ok(())
            }
            FailureKind::Invariant { name, message } => {
                write!(f, "invariant {name:?} broke: {message}")
            }
            FailureKind::Deadlock { waiting } => write!(
                f,
                "no host can make progress: nothing is scheduled and client(s) {} still wait",
                waiting.join(", ")
            ),
            FailureKind::Livelock { polls } => write!(
                f,
                "livelock: {polls} polls without virtual time moving (tasks keep waking each other)"
            ),
            FailureKind::TimeLimit { limit_ns, waiting } => write!(
                f,
                "time limit of {:.3}s virtual reached with client(s) {} still running (Sim::time_limit raises it)",
                *limit_ns as f64 / 1e9,
                waiting.join(", ")
            ),
            FailureKind::Config(what) => write!(f, "bad simulation: {what}"),
            FailureKind::Library { host, message } => write!(f, "host {host:?}: {message}"),
        }
    }
}

/// Figures of one simulation run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Virtual time at the end.
    pub virtual_time: Duration,
    /// Wall time the run took.
    pub wall_time: Duration,
    /// Events logged, every host together.
    pub events: u64,
    /// Task polls.
    pub polls: u64,
    /// Agenda items fired (timers, packets, faults).
    pub items: u64,
    /// Hash of every host's whole event history: equal digests, equal runs.
    pub digest: u64,
    /// Per host incarnation: name, incarnation, events, digest.
    pub hosts: Vec<HostReport>,
    /// UDP datagrams the network dropped.
    pub dropped_datagrams: u64,
    /// Faults that happened (crashes, restarts, partitions, heals).
    pub faults: u64,
    /// Ticks of the hosts' tokio timer drivers (one per millisecond of
    /// virtual time while a host's tokio timers wait; 0 when no host uses
    /// tokio's timers).
    pub tokio_ticks: u64,
    /// Steps of the hosts' tokio runtimes (0 when no host uses tokio).
    pub tokio_steps: u64,
    /// The run directories written, one per host incarnation (see
    /// [`Sim::always_write_logs`]; a failed run writes them by default).
    pub logs: Vec<PathBuf>,
    /// Most events one host incarnation held in memory at once: at most
    /// [`CAPTURE_BUFFER_EVENTS`] while logs are captured (the rest is on
    /// disk), 0 when only hashes are kept (sweeps, determinism checks).
    pub events_held_max: u64,
}

/// One host incarnation in a [`SimReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostReport {
    /// The host's name.
    pub name: String,
    /// 0, then one more per restart.
    pub incarnation: u32,
    /// Events it logged.
    pub events: u64,
    /// Digest of its events.
    pub digest: u64,
}

impl SimReport {
    fn empty(seed: u64) -> SimReport {
        SimReport {
            seed,
            ..SimReport::default()
        }
    }

    fn of(world: &World, wall_time: Duration) -> SimReport {
        let mut digest = xxhash_rust::xxh3::Xxh3::new();
        let mut hosts = Vec::new();
        let mut events = 0;
        let mut held_max = 0;
        for slot in world.hosts.borrow().iter() {
            for host in &slot.incarnations {
                let (count, host_digest, held) = host.summary();
                held_max = held_max.max(held as u64);
                digest.update(slot.name.as_bytes());
                digest.update(&host.incarnation.to_le_bytes());
                digest.update(&host_digest.to_le_bytes());
                events += count;
                hosts.push(HostReport {
                    name: slot.name.clone(),
                    incarnation: host.incarnation,
                    events: count,
                    digest: host_digest,
                });
            }
        }
        SimReport {
            seed: world.seed,
            virtual_time: Duration::from_nanos(world.now()),
            wall_time,
            events,
            polls: world.polls.get(),
            items: world.items.get(),
            digest: digest.digest(),
            hosts,
            dropped_datagrams: world.net.borrow().dropped_datagrams,
            faults: world.faults.get(),
            tokio_ticks: world.tokio_ticks.get(),
            tokio_steps: world.tokio_steps.get(),
            logs: Vec::new(),
            events_held_max: held_max,
        }
    }
}

/// A failed simulation: why, the seed, the logs, how to reproduce it.
#[derive(Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// What went wrong.
    pub kind: FailureKind,
    /// The run's figures up to the failure.
    pub report: SimReport,
    /// One run directory per host incarnation, for `deja replay`.
    pub logs: Vec<PathBuf>,
    /// Why the logs could not be written, if they could not.
    pub log_error: Option<String>,
    /// A command that runs this seed again.
    pub reproduce: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "deja sim: seed {} failed at {:.6}s virtual: {}",
            self.seed,
            self.report.virtual_time.as_secs_f64(),
            self.kind
        )?;
        writeln!(f, "  reproduce: {}", self.reproduce)?;
        for log in &self.logs {
            writeln!(f, "  replay:    deja replay {}", log.display())?;
        }
        if let Some(error) = &self.log_error {
            writeln!(f, "  (logs not written: {error})")?;
        }
        if let FailureKind::Panicked { message, .. } = &self.kind {
            if message.contains("Tokio") || message.contains("reactor") {
                writeln!(
                    f,
                    "hint: each simulated host has a tokio runtime, entered while its tasks run; a future made outside the simulation (passed to Sim::client as is, not in an async block) or a thread has none"
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for SimFailure {}

// --- called from inside a simulation ---------------------------------------

fn control_by_name(names: &[&str], make: impl FnOnce(&[usize]) -> Control) -> bool {
    world::with_world(|world| {
        let indexes: Option<Vec<usize>> = names.iter().map(|n| world.host_index(n)).collect();
        match indexes {
            Some(indexes) => {
                world.request(make(&indexes));
                true
            }
            None => false,
        }
    })
    .unwrap_or(false)
}

/// Crash `host` now (after the calling task's current poll). False if
/// not in a simulation or no such host.
pub fn crash(host: &str) -> bool {
    control_by_name(&[host], |i| Control::Crash(i[0]))
}

/// Start `host` again now (crashing it first if it runs).
pub fn restart(host: &str) -> bool {
    control_by_name(&[host], |i| Control::Restart(i[0]))
}

/// Cut the link between `a` and `b` now.
pub fn partition(a: &str, b: &str) -> bool {
    control_by_name(&[a, b], |i| Control::Partition(i[0], i[1]))
}

/// Hold the link between `a` and `b` now (see [`Sim::hold_at`]).
pub fn hold(a: &str, b: &str) -> bool {
    control_by_name(&[a, b], |i| Control::Hold(i[0], i[1]))
}

/// Restore the link between `a` and `b` now (ending a partition or a hold).
pub fn heal(a: &str, b: &str) -> bool {
    control_by_name(&[a, b], |i| Control::Heal(i[0], i[1]))
}

/// Restore every link now.
pub fn heal_all() -> bool {
    control_by_name(&[], |_| Control::HealAll)
}

/// Virtual time since the simulation started; `None` outside one.
pub fn elapsed() -> Option<Duration> {
    world::with_world(|world| Duration::from_nanos(world.now()))
}

/// True on a simulation's thread.
pub fn is_simulating() -> bool {
    world::with_world(|_| ()).is_some()
}

/// Schedule a timer for the running simulated host (for `deja::time`).
pub(crate) fn poll_timer(
    cx: &mut std::task::Context<'_>,
    host: &Host,
    deadline_ns: u64,
    key: &mut Option<TimerKey>,
) -> std::task::Poll<()> {
    let at = host.started_at.saturating_add(deadline_ns);
    let fired = world::with_world(|world| {
        if at <= world.now() {
            return true;
        }
        match key {
            Some(TimerKey(timer)) => world.timer_poll(*timer, cx.waker()),
            None => {
                *key = Some(TimerKey(world.timer_start(at, cx.waker())));
                false
            }
        }
    });
    match fired {
        Some(false) => std::task::Poll::Pending,
        // Fired, or the simulation is over (its tasks are being dropped).
        _ => std::task::Poll::Ready(()),
    }
}

/// A registered simulated timer; dropping it cancels the timer.
#[derive(Debug)]
pub(crate) struct TimerKey(u64);

impl Drop for TimerKey {
    fn drop(&mut self) {
        world::with_world(|world| world.timer_cancel(self.0));
    }
}

/// Spawn `future` as a task of the running simulated host.
pub(crate) fn spawn_task(
    host: &Rc<Host>,
    future: Pin<Box<dyn Future<Output = ()>>>,
) -> Option<crate::sim::executor::TaskKey> {
    world::with_world(|world| world.spawn_on(host, future))
}

/// Abort a simulated task.
pub(crate) fn abort(key: crate::sim::executor::TaskKey) {
    world::with_world(|world| world.executor.abort(key));
}

/// A spawned task panicked: fail the simulation (unless told not to).
pub(crate) fn task_panicked(message: String) {
    let Ok(host) = net::current_host() else {
        return;
    };
    let host = host.name.clone();
    world::with_world(|world| {
        if world.fail_on_task_panic {
            world.fail(FailureKind::Panicked {
                host,
                message: format!("task panicked: {message}"),
            });
        }
    });
}

/// Whether simulated writes keep their bytes in the log.
pub(crate) fn keep_write_bytes() -> bool {
    world::with_world(|world| world.keep_write_bytes).unwrap_or(false)
}
