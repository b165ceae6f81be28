//! Every simulated host incarnation owns a tokio current-thread runtime,
//! so library code inside it (`tokio::spawn`, `tokio::time`,
//! `tokio::task::yield_now`, `spawn_blocking`) finds one, and runs on the
//! simulation's thread and virtual time.
//!
//! * **Context.** The world enters the host's runtime (`Handle::enter`)
//!   around every poll of the host's deja tasks, so `tokio::spawn` from
//!   one lands in the host's runtime and `tokio::time::sleep` registers
//!   with the host's timer driver.
//! * **Steps.** When no deja task can run, the world steps every host
//!   runtime that has work (tasks woken from outside it, or a tick): one
//!   `block_on` of [`Step`], which runs the runtime's ready tasks and
//!   returns once none is left. The runtime is built with an
//!   `on_thread_park` hook that wakes the step's future: tokio then turns
//!   its driver with a zero timeout instead of sleeping (tokio#7835 and
//!   tokio#8222: 1.51.4, 1.52.4 and later; this was written against
//!   1.54.1), and `block_on` returns. No step ever sleeps in real time.
//! * **Time.** While a step runs, the clock readings made outside any
//!   task (tokio's scheduler and timer driver) read the host's virtual
//!   monotonic clock, unlogged ([`driver_clock`]); the runtime is built
//!   under the same clock, so its timer wheel counts milliseconds of the
//!   host's virtual time. The world does not know tokio's deadlines: while
//!   a host's wheel holds timers it schedules a tick at every millisecond
//!   boundary of the host's clock ([`TOKIO_TICK_NS`]), which fires each
//!   timer at the very tick tokio would. Whether the wheel holds timers is
//!   read off the driver: its park reads the clock twice when it has a
//!   timer to wait for, once when it has none. A timer that a deja task
//!   starts is found the same way: before virtual time moves, a host whose
//!   deja tasks ran and have read the clock through the C library (as
//!   `tokio::time` does for its deadlines) gets a tick.
//! * **Tasks** that library code spawns are adopted by the host at their
//!   first intercepted call (`Host::adopt`), as a recording adopts them.
//!   A crash, or the end of the run, shuts the runtime down: its tasks are
//!   dropped in the host's context.
//! * **Blocking tasks** (`spawn_blocking`, and tokio's own, e.g. DNS) run
//!   on tokio's blocking threads, held at a gate until the poll or step
//!   that spawned them has ended; then they run one thread at a time, to
//!   completion, while the simulation waits: they take no virtual time
//!   and their wake-ups land at the same point in every run.
//!
//! A host that never uses tokio pays one `Handle::enter` per poll and the
//! runtime's construction (a few microseconds per incarnation); it is
//! never stepped and never ticked.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::host::Host;
use crate::backend::{self, Clock};

/// Virtual time between two steps of a host runtime's timer driver while
/// its wheel holds timers. tokio's wheel counts whole milliseconds (a
/// deadline rounds up to the next one) and never tells its deadlines:
/// stepping at every millisecond boundary of the host's clock fires each
/// timer at the tick tokio itself would fire it.
pub(crate) const TOKIO_TICK_NS: u64 = 1_000_000;

/// Clock readings outside any task allowed in one step: tokio's scheduler
/// reads the clock at least once every 61 task polls (its driver runs
/// that often), so more means tasks keep waking each other without
/// virtual time moving (a livelock, e.g. a `yield_now` loop waiting for
/// the clock to move). The step is then cut short and the run fails.
pub(crate) const STEP_CLOCK_READS_MAX: u64 = 1_000_000;

/// Real time the simulation waits for one blocking task (`spawn_blocking`)
/// to finish before failing the run: blocking tasks run while the
/// simulation waits, so one that waits for the simulation never ends.
pub const BLOCKING_WAIT_DEFAULT: Duration = Duration::from_secs(10);

/// The name of the blocking threads of simulated hosts.
const BLOCKING_THREAD_NAME: &str = "deja-sim-blocking";

/// One host incarnation's tokio runtime.
pub(crate) struct HostRuntime {
    /// `None` once shut down.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    metrics: tokio::runtime::RuntimeMetrics,
    gate: Arc<BlockingGate>,
    /// A tick is on the agenda at this virtual instant.
    pub(crate) tick_at: Cell<Option<u64>>,
    /// A tick fired: step the driver.
    pub(crate) due: Cell<bool>,
    /// The last step left timers in the wheel.
    pub(crate) timers_pending: Cell<bool>,
}

impl std::fmt::Debug for HostRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostRuntime")
            .field("tick_at", &self.tick_at.get())
            .field("timers_pending", &self.timers_pending.get())
            .finish_non_exhaustive()
    }
}

impl HostRuntime {
    /// `host`'s runtime, built in its context: the time driver's origin
    /// is the host's virtual clock. `in_flight` counts the blocking
    /// threads of every host of the simulation.
    pub(crate) fn build(
        host: &Rc<Host>,
        in_flight: &Arc<AtomicU64>,
    ) -> std::io::Result<HostRuntime> {
        let gate = Arc::new(BlockingGate::new(Arc::clone(in_flight)));
        let _ctx = backend::enter(Some(Rc::clone(host) as Rc<dyn backend::Backend>));
        let driving = Driving::install();
        let mut builder = tokio::runtime::Builder::new_current_thread();
        // I/O: a library that opens a socket of its own gets one (or an
        // error) rather than tokio's "IO is disabled" panic.
        builder
            .enable_time()
            .enable_io()
            .on_thread_park(parked)
            .on_thread_unpark(unparked)
            // A blocking thread ends with its work: every blocking task
            // then starts a thread, which the gate holds (see `settle`).
            .thread_keep_alive(Duration::ZERO);
        let spawned = Arc::clone(&gate);
        builder.thread_name_fn(move || {
            spawned.spawned();
            BLOCKING_THREAD_NAME.to_string()
        });
        let started = Arc::clone(&gate);
        builder.on_thread_start(move || started.wait_for_permit());
        let stopped = Arc::clone(&gate);
        builder.on_thread_stop(move || stopped.exited());
        seed_tokio(&mut builder, &host.root_seed);
        let runtime = builder.build();
        drop(driving);
        let runtime = runtime?;
        let handle = runtime.handle().clone();
        let metrics = runtime.metrics();
        Ok(HostRuntime {
            runtime: Some(runtime),
            handle,
            metrics,
            gate,
            tick_at: Cell::new(None),
            due: Cell::new(false),
            timers_pending: Cell::new(false),
        })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Tasks are ready (woken from outside the runtime: by deja's tasks,
    /// the network, another host, a blocking thread), or a tick fired.
    pub(crate) fn has_work(&self) -> bool {
        self.runtime.is_some() && (self.due.get() || self.metrics.global_queue_depth() > 0)
    }

    /// Run the runtime's ready tasks until none is left (see the module
    /// docs). Call with no `RefCell` of the world borrowed: the tasks use
    /// the world.
    pub(crate) fn step(&self, host: &Rc<Host>) -> StepOutcome {
        self.due.set(false);
        let Some(runtime) = &self.runtime else {
            return StepOutcome::default();
        };
        let _ctx = backend::enter(Some(Rc::clone(host) as Rc<dyn backend::Backend>));
        let driving = Driving::install();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(Step { first: true });
        }));
        let state = driving.finish();
        self.timers_pending.set(state.timers_pending);
        StepOutcome {
            runaway: state.runaway,
            panic: ran.err().map(|payload| super::world::panic_text(&*payload)),
        }
    }

    /// Let the blocking tasks spawned so far run to completion (one thread
    /// at a time, in the order tokio queued them). `Err` when one did not
    /// finish within `limit` of real time.
    pub(crate) fn settle_blocking(&self, limit: Duration) -> Result<(), ()> {
        self.gate.settle(limit)
    }

    /// Shut the runtime down now: its tasks are dropped (in the host's
    /// context, so their drops find the simulation), its timers fire with
    /// an error, its blocking threads are not waited for.
    pub(crate) fn shutdown(&mut self, host: &Rc<Host>) {
        let _ctx = backend::enter(Some(Rc::clone(host) as Rc<dyn backend::Backend>));
        self.shut_down();
    }

    fn shut_down(&mut self) {
        // Blocking threads still at the gate (spawned by the drops of the
        // host's tasks as it stopped) go on, and run outside the
        // simulation's order: the host is gone by then.
        self.gate.open();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        // Never wait for blocking threads (a plain drop would, forever,
        // for one held at the gate).
        self.shut_down();
    }
}

/// With `--cfg tokio_unstable`, tokio's own randomness (which branch of a
/// library's `tokio::select!` goes first in a task of the host's runtime)
/// comes from the host's root seed. Without it tokio seeds itself, and
/// two branches ready at once may go either way from run to run.
#[allow(unused_variables)]
fn seed_tokio(builder: &mut tokio::runtime::Builder, root_seed: &[u8; 32]) {
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(root_seed));
}

/// How a step went.
#[derive(Debug, Default)]
pub(crate) struct StepOutcome {
    /// Cut short after [`STEP_CLOCK_READS_MAX`] readings: a livelock.
    pub(crate) runaway: bool,
    /// `block_on` itself panicked (e.g. the simulation runs inside
    /// another tokio runtime).
    pub(crate) panic: Option<String>,
}

// --- the step -----------------------------------------------------------

/// The state of the step running on this thread.
#[derive(Default)]
struct DriveState {
    /// Clock readings outside any task during the step.
    reads: u64,
    /// `reads` when the park hook ran (the driver's last turn follows).
    reads_at_park: Option<u64>,
    /// The step's future, waiting for the park hook.
    waker: Option<Waker>,
    /// The run queue ran dry: the park hook ran.
    idle: bool,
    /// The driver's last turn found timers in the wheel.
    timers_pending: bool,
    runaway: bool,
}

thread_local! {
    static DRIVING: RefCell<Option<DriveState>> = const { RefCell::new(None) };
}

/// Marks this thread as stepping (or building) a host runtime until
/// dropped or finished.
struct Driving {
    previous: Option<DriveState>,
}

impl Driving {
    fn install() -> Driving {
        Driving {
            previous: DRIVING.with(|slot| slot.replace(Some(DriveState::default()))),
        }
    }

    fn finish(mut self) -> DriveState {
        let previous = self.previous.take();
        DRIVING
            .with(|slot| slot.replace(previous))
            .unwrap_or_default()
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = DRIVING.try_with(|slot| slot.replace(previous));
    }
}

/// The future a step blocks on: ready once the runtime's run queue ran
/// dry. Its first poll wakes itself, so the driver turns (and fires the
/// timers that came due since the last step) before the run queue can
/// run dry: the last turn, after the park hook, then never finds a timer
/// that came due and leaves no task behind.
struct Step {
    first: bool,
}

impl Future for Step {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.first {
            self.first = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let done = DRIVING.with(|slot| match slot.borrow_mut().as_mut() {
            Some(state) if !state.idle && !state.runaway => {
                state.waker = Some(cx.waker().clone());
                false
            }
            _ => true,
        });
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// `on_thread_park`: the run queue is empty. Waking the step's future
/// makes tokio turn its driver without blocking, then return.
fn parked() {
    let waker = DRIVING
        .try_with(|slot| {
            let mut slot = slot.borrow_mut();
            let state = slot.as_mut()?;
            state.idle = true;
            state.reads_at_park = Some(state.reads);
            state.waker.take()
        })
        .ok()
        .flatten();
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// `on_thread_unpark`: the driver's last turn is over. It read the clock
/// once more to compute how long to wait when its wheel held a timer: one
/// reading means an empty wheel. No reading at all means the turn was
/// skipped (tokio 1.50.0 to 1.51.3 and 1.52.0 to 1.52.3 skip it when the
/// park hook schedules work, see tokio#8222): the wheel is unknown, and
/// counted as holding timers (the host is then ticked while it lives:
/// slower, never wrong).
fn unparked() {
    let _ = DRIVING.try_with(|slot| {
        if let Some(state) = slot.borrow_mut().as_mut() {
            if let Some(at_park) = state.reads_at_park.take() {
                state.timers_pending = state.reads - at_park != 1;
            }
        }
    });
}

/// A clock reading made outside any task on the simulation's thread: while
/// a host runtime is stepped or built (tokio's scheduler and timer
/// driver), the host's virtual clock, unlogged; otherwise `None` (the real
/// clock).
pub(crate) fn driver_clock(host: &Host, clock: Clock) -> Option<i64> {
    let wake = DRIVING
        .try_with(|slot| {
            let mut slot = slot.borrow_mut();
            let state = slot.as_mut()?;
            state.reads += 1;
            if state.reads > STEP_CLOCK_READS_MAX && !state.runaway {
                state.runaway = true;
                return Some(state.waker.take());
            }
            Some(None)
        })
        .ok()
        .flatten()?;
    if let Some(waker) = wake {
        waker.wake();
    }
    Some(match clock {
        Clock::Mono => backend::virtual_mono(host.mono_ns()),
        Clock::Wall => host.wall_ns(),
    })
}

// --- blocking tasks -----------------------------------------------------

/// Holds a host runtime's blocking threads until the simulation lets them
/// run, one at a time.
struct BlockingGate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// Blocking threads started and not ended, every host together (a
    /// cheap check after every poll).
    in_flight: Arc<AtomicU64>,
}

#[derive(Default)]
struct GateState {
    spawned: u64,
    exited: u64,
    permits: u64,
    /// The runtime is gone: nothing waits at the gate any more.
    open: bool,
}

impl BlockingGate {
    fn new(in_flight: Arc<AtomicU64>) -> BlockingGate {
        BlockingGate {
            state: Mutex::default(),
            changed: Condvar::new(),
            in_flight,
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// tokio starts a blocking thread (on the spawning thread).
    fn spawned(&self) {
        self.lock().spawned += 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// On the blocking thread, before it takes any work.
    fn wait_for_permit(&self) {
        let mut state = self.lock();
        while state.permits == 0 && !state.open {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.permits = state.permits.saturating_sub(1);
    }

    /// On the blocking thread, after its last task (and that task's
    /// wake-up).
    fn exited(&self) {
        self.lock().exited += 1;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_all();
    }

    fn open(&self) {
        self.lock().open = true;
        self.changed.notify_all();
    }

    /// Release the threads one by one, each after the previous one ended:
    /// the first runs every queued task in order, the others find none.
    fn settle(&self, limit: Duration) -> Result<(), ()> {
        backend::internal(|| {
            let mut state = self.lock();
            while state.exited < state.spawned && !state.open {
                let target = state.exited + 1;
                state.permits += 1;
                self.changed.notify_all();
                let started = std::time::Instant::now();
                while state.exited < target {
                    let left = limit.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(());
                    }
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            Ok(())
        })
    }
}
