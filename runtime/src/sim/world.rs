//! The simulated world: virtual time, the agenda of things that will
//! happen (timers, packets, faults), every host, and the loop that runs
//! them all on one thread.
//!
//! The loop polls every runnable task; only when none is left does it
//! take the next item off the agenda, move virtual time to it and fire
//! it. Everything it does follows from the seed: the run queue is FIFO,
//! the agenda is ordered by (time, insertion), and every random choice is
//! drawn from one ChaCha stream.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use deja_recorder::{EventKind, TaskId};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::capture::CaptureMode;
use super::hash::FastMap;
use super::host::Host;
use super::net::{Net, Packet};
use super::{Control, Exited, FailureKind, HostFuture};
use crate::backend::{self, TaskCtx};
use crate::sim::executor::{Executor, TaskKey};
use crate::sim::tokio_rt::{HostRuntime, TOKIO_TICK_NS};

/// Polls allowed at one virtual instant: more means tasks keep waking
/// each other without time ever moving (a livelock), which would
/// otherwise spin forever.
pub(crate) const POLLS_PER_INSTANT_MAX: u64 = 1_000_000;

thread_local! {
    static WORLD: RefCell<Option<Rc<World>>> = const { RefCell::new(None) };
}

/// Run `f` with this thread's simulation, if one is running.
pub(crate) fn with_world<R>(f: impl FnOnce(&Rc<World>) -> R) -> Option<R> {
    let world = WORLD.with(|slot| slot.borrow().clone())?;
    Some(f(&world))
}

/// Virtual nanoseconds since the simulation started (0 outside one).
pub(crate) fn now_ns() -> u64 {
    with_world(|world| world.now.get()).unwrap_or(0)
}

/// The simulation's wall clock (before a host's skew).
pub(crate) fn wall_ns() -> i64 {
    with_world(|world| {
        world
            .epoch_unix_ns
            .saturating_add(i64::try_from(world.now.get()).unwrap_or(i64::MAX))
    })
    .unwrap_or(0)
}

/// Makes `world` this thread's simulation until dropped.
pub(crate) struct Installed(());

impl Installed {
    pub(crate) fn new(world: &Rc<World>) -> Installed {
        WORLD.with(|slot| *slot.borrow_mut() = Some(Rc::clone(world)));
        Installed(())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let world = WORLD.with(|slot| slot.borrow_mut().take());
        drop(world);
    }
}

/// Something that happens at a virtual instant.
#[derive(Debug)]
pub(crate) enum Item {
    Timer(u64),
    Packet(Packet),
    Control(Control),
    Start(usize),
    /// Step the timer driver of host `.0`'s incarnation `.1` (see
    /// `tokio_rt.rs`).
    TokioTick(usize, u32),
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    order: u64,
    item: Item,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

#[derive(Debug, Default)]
struct TimerSlot {
    fired: bool,
    waker: Option<Waker>,
}

/// How a host is started (again).
pub(crate) enum Entry {
    /// A server: started again on restart.
    Server(Rc<dyn Fn() -> HostFuture>),
    /// A client: runs once; the simulation ends when every client has.
    Client(Option<HostFuture>),
}

/// A declared host and its incarnations.
pub(crate) struct HostSlot {
    pub(crate) name: String,
    pub(crate) entry: Entry,
    pub(crate) skew_ns: i64,
    pub(crate) current: Option<Rc<Host>>,
    /// Every incarnation so far (for the logs), the current one last.
    pub(crate) incarnations: Vec<Rc<Host>>,
    pub(crate) exited: Option<i32>,
}

impl HostSlot {
    pub(crate) fn is_client(&self) -> bool {
        matches!(self.entry, Entry::Client(_))
    }
}

/// A simulation in progress.
pub(crate) struct World {
    pub(crate) seed: u64,
    now: Cell<u64>,
    epoch_unix_ns: i64,
    rng: RefCell<ChaCha20Rng>,
    agenda: RefCell<BinaryHeap<Reverse<Scheduled>>>,
    next_order: Cell<u64>,
    timers: RefCell<FastMap<u64, TimerSlot>>,
    next_timer: Cell<u64>,
    pub(crate) net: RefCell<Net>,
    pub(crate) hosts: RefCell<Vec<HostSlot>>,
    pub(crate) executor: Executor,
    controls: RefCell<VecDeque<Control>>,
    failure: RefCell<Option<FailureKind>>,
    pub(crate) fail_on_task_panic: bool,
    pub(crate) keep_write_bytes: bool,
    pub(crate) polls: Cell<u64>,
    pub(crate) items: Cell<u64>,
    pub(crate) faults: Cell<u64>,
    /// Blocking threads of every host runtime, started and not ended.
    blocking_in_flight: Arc<AtomicU64>,
    /// Real time one blocking task may take.
    blocking_wait: Duration,
    pub(crate) tokio_ticks: Cell<u64>,
    pub(crate) tokio_steps: Cell<u64>,
    /// What the hosts keep of their events besides the hashes (set
    /// before the run starts).
    pub(crate) capture: CaptureMode,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.seed)
            .field("now", &self.now.get())
            .finish_non_exhaustive()
    }
}

impl World {
    pub(crate) fn new(
        seed: u64,
        epoch_unix_ns: i64,
        net: Net,
        hosts: Vec<HostSlot>,
        fail_on_task_panic: bool,
        keep_write_bytes: bool,
        blocking_wait: Duration,
    ) -> World {
        World {
            seed,
            now: Cell::new(0),
            epoch_unix_ns,
            rng: RefCell::new(ChaCha20Rng::seed_from_u64(seed)),
            agenda: RefCell::default(),
            next_order: Cell::new(0),
            timers: RefCell::default(),
            next_timer: Cell::new(0),
            net: RefCell::new(net),
            hosts: RefCell::new(hosts),
            // Nothing outside the simulation wakes its tasks: no wait.
            executor: Executor::new(),
            controls: RefCell::default(),
            failure: RefCell::new(None),
            fail_on_task_panic,
            keep_write_bytes,
            polls: Cell::new(0),
            items: Cell::new(0),
            faults: Cell::new(0),
            blocking_in_flight: Arc::default(),
            blocking_wait,
            tokio_ticks: Cell::new(0),
            tokio_steps: Cell::new(0),
            capture: CaptureMode::Off,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.now.get()
    }

    /// Run `f` with the network's random stream.
    pub(crate) fn with_rng<R>(&self, f: impl FnOnce(&mut ChaCha20Rng) -> R) -> R {
        f(&mut self.rng.borrow_mut())
    }

    pub(crate) fn schedule(&self, at: u64, item: Item) {
        let order = self.next_order.get();
        self.next_order.set(order + 1);
        self.agenda
            .borrow_mut()
            .push(Reverse(Scheduled { at, order, item }));
    }

    /// Ask for a fault or a lifecycle change; it happens right after the
    /// running task's poll, never inside it.
    pub(crate) fn request(&self, control: Control) {
        self.controls.borrow_mut().push_back(control);
    }

    pub(crate) fn fail(&self, kind: FailureKind) {
        let mut failure = self.failure.borrow_mut();
        if failure.is_none() {
            *failure = Some(kind);
        }
    }

    pub(crate) fn take_failure(&self) -> Option<FailureKind> {
        self.failure.borrow_mut().take()
    }

    pub(crate) fn failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// The index of the host called `name`.
    pub(crate) fn host_index(&self, name: &str) -> Option<usize> {
        self.hosts
            .borrow()
            .iter()
            .position(|slot| slot.name == name)
    }

    // --- timers -----------------------------------------------------------

    /// A timer that fires at simulation time `at`.
    pub(crate) fn timer_start(&self, at: u64, waker: &Waker) -> u64 {
        let key = self.next_timer.get();
        self.next_timer.set(key + 1);
        self.timers.borrow_mut().insert(
            key,
            TimerSlot {
                fired: false,
                waker: Some(waker.clone()),
            },
        );
        self.schedule(at, Item::Timer(key));
        key
    }

    /// True once fired; otherwise keeps `waker` for the firing.
    pub(crate) fn timer_poll(&self, key: u64, waker: &Waker) -> bool {
        let mut timers = self.timers.borrow_mut();
        match timers.get_mut(&key) {
            Some(slot) if slot.fired => true,
            Some(slot) => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    slot.waker = Some(waker.clone());
                }
                false
            }
            None => true,
        }
    }

    pub(crate) fn timer_cancel(&self, key: u64) {
        self.timers.borrow_mut().remove(&key);
    }

    // --- hosts ------------------------------------------------------------

    /// Start host `index` (again): a new incarnation runs its entry.
    pub(crate) fn start_host(self: &Rc<World>, index: usize) {
        let (host, future) = {
            let mut hosts = self.hosts.borrow_mut();
            let slot = &mut hosts[index];
            if slot.current.is_some() || matches!(slot.entry, Entry::Client(None)) {
                return; // running, or a client that ran (clients run once)
            }
            let incarnation = u32::try_from(slot.incarnations.len()).unwrap_or(u32::MAX);
            let root_seed = host_seed(self.seed, index, incarnation);
            let host = Rc::new(Host::new(
                index,
                slot.name.clone(),
                incarnation,
                self.now.get(),
                slot.skew_ns,
                self.epoch_unix_ns
                    .saturating_add(i64::try_from(self.now.get()).unwrap_or(i64::MAX))
                    .saturating_add(slot.skew_ns),
                root_seed,
            ));
            host.set_capture(self.capture.for_host(self.seed, &host));
            match HostRuntime::build(&host, &self.blocking_in_flight) {
                Ok(runtime) => *host.runtime.borrow_mut() = Some(runtime),
                Err(err) => {
                    self.fail(FailureKind::Library {
                        host: slot.name.clone(),
                        message: format!("its tokio runtime could not be built: {err}"),
                    });
                    return;
                }
            }
            let future = match &mut slot.entry {
                Entry::Server(factory) => {
                    let factory = Rc::clone(factory);
                    let _enter = backend::enter(Some(Rc::clone(&host) as Rc<dyn backend::Backend>));
                    let handle = host.tokio_handle();
                    let _runtime = handle.as_ref().map(tokio::runtime::Handle::enter);
                    Some(factory())
                }
                Entry::Client(future) => future.take(),
            };
            let Some(future) = future else {
                return; // a client runs once
            };
            slot.current = Some(Rc::clone(&host));
            slot.incarnations.push(Rc::clone(&host));
            slot.exited = None;
            (host, future)
        };
        host.record_for(
            TaskId::MAIN,
            EventKind::RootSeed {
                seed: host.root_seed,
            },
        );
        let incarnation = host.incarnation;
        let body = backend::scope(TaskCtx::new(&host.root_seed, TaskId::MAIN), async move {
            let exited = match crate::task::CatchUnwind(future).await {
                Ok(exited) => exited,
                Err(payload) => Exited {
                    code: EXIT_PANIC,
                    error: Some(format!("panicked: {}", panic_text(&*payload))),
                },
            };
            if let Ok(host) = super::net::current_host() {
                host.record(EventKind::Exit { code: exited.code });
            }
            with_world(|world| world.request(Control::Exited(index, incarnation, exited)));
        });
        self.spawn_on(&host, Box::pin(body));
    }

    /// Run `future` as a task of `host`.
    pub(crate) fn spawn_on(
        &self,
        host: &Rc<Host>,
        future: Pin<Box<dyn Future<Output = ()>>>,
    ) -> TaskKey {
        let key = self.executor.spawn(Box::pin(InHost {
            host: Rc::clone(host),
            runtime: host.tokio_handle(),
            future: Some(future),
        }));
        let mut tasks = host.tasks.borrow_mut();
        // Forget finished tasks now and then, so a host that serves a
        // million connections does not keep a million keys.
        if tasks.len() >= 64 && tasks.len().is_power_of_two() {
            tasks.retain(|key| self.executor.is_live(*key));
        }
        tasks.push(key);
        key
    }

    /// Stop host `index`'s current incarnation: no more events, every
    /// task dropped. `crashed`: its connections are reset, not closed.
    fn stop_host(&self, index: usize, crashed: bool) {
        let host = self.hosts.borrow_mut()[index].current.take();
        let Some(host) = host else {
            return;
        };
        host.stop();
        if crashed {
            self.net.borrow_mut().crash_host(self, index);
        }
        let tasks = std::mem::take(&mut *host.tasks.borrow_mut());
        for key in tasks {
            self.executor.abort(key);
        }
        // Then the tasks library code started: gone with the runtime.
        let runtime = host.runtime.borrow_mut().take();
        if let Some(mut runtime) = runtime {
            runtime.shutdown(&host);
        }
        if !crashed {
            // Sockets dropped by the tasks above closed normally; what is
            // left (listeners in a leaked task) goes now.
            self.net.borrow_mut().crash_host(self, index);
        }
    }

    /// Apply the requested controls, in order.
    fn apply_controls(self: &Rc<World>) {
        loop {
            let control = self.controls.borrow_mut().pop_front();
            let Some(control) = control else {
                return;
            };
            self.apply(control);
        }
    }

    fn apply(self: &Rc<World>, control: Control) {
        if !matches!(control, Control::Exited(..)) {
            self.faults.set(self.faults.get() + 1);
        }
        match control {
            Control::Crash(index) => self.stop_host(index, true),
            Control::Restart(index) => {
                self.stop_host(index, true);
                self.start_host(index);
            }
            Control::Partition(a, b) => self.net.borrow_mut().partition(self, a, b),
            Control::Hold(a, b) => self.net.borrow_mut().hold(a, b),
            Control::Heal(a, b) => self.net.borrow_mut().heal(self, a, b),
            Control::HealAll => self.net.borrow_mut().heal_all(self),
            Control::Exited(index, incarnation, exited) => {
                let current = {
                    let hosts = self.hosts.borrow();
                    let slot = &hosts[index];
                    slot.current
                        .as_ref()
                        .is_some_and(|host| host.incarnation == incarnation)
                };
                if !current {
                    return;
                }
                let name = self.hosts.borrow()[index].name.clone();
                self.hosts.borrow_mut()[index].exited = Some(exited.code);
                self.stop_host(index, false);
                if exited.code == EXIT_PANIC {
                    self.fail(FailureKind::Panicked {
                        host: name,
                        message: exited.error.unwrap_or_default(),
                    });
                } else if exited.code != 0 {
                    self.fail(FailureKind::Exited {
                        host: name,
                        code: exited.code,
                        error: exited.error,
                    });
                }
            }
        }
    }

    /// Clients that have not finished yet.
    fn clients_running(&self) -> usize {
        self.hosts
            .borrow()
            .iter()
            .filter(|slot| slot.is_client() && slot.exited.is_none())
            .count()
    }

    fn has_clients(&self) -> bool {
        self.hosts.borrow().iter().any(HostSlot::is_client)
    }

    /// Run until every client finished, something failed, or time ran out.
    pub(crate) fn run(
        self: &Rc<World>,
        time_limit: u64,
        invariants: &mut [super::Invariant],
    ) -> Option<FailureKind> {
        let mut polls_at_instant = 0u64;
        loop {
            while let Some(key) = self.executor.pop_ready() {
                self.executor.poll_task(key);
                self.polls.set(self.polls.get() + 1);
                polls_at_instant += 1;
                self.settle_blocking();
                self.apply_controls();
                if self.failed() {
                    return self.take_failure();
                }
                if polls_at_instant > POLLS_PER_INSTANT_MAX {
                    return Some(FailureKind::Livelock {
                        polls: polls_at_instant,
                    });
                }
            }
            // No deja task can run: run what the hosts' tokio runtimes
            // have ready, then look at deja's tasks again.
            let steps = self.step_runtimes();
            if steps > 0 {
                polls_at_instant += steps;
                if self.failed() {
                    return self.take_failure();
                }
                if polls_at_instant > POLLS_PER_INSTANT_MAX {
                    return Some(FailureKind::Livelock {
                        polls: polls_at_instant,
                    });
                }
                continue;
            }
            for invariant in invariants.iter_mut() {
                if let Err(message) = (invariant.check)() {
                    return Some(FailureKind::Invariant {
                        name: invariant.name.clone(),
                        message,
                    });
                }
            }
            if self.has_clients() && self.clients_running() == 0 {
                return None;
            }
            // Before time moves: hosts whose tasks ran may have started
            // tokio timers.
            self.tick_polled_runtimes();
            // Idle: move time to the next thing that happens.
            let next = self.agenda.borrow_mut().pop();
            let Some(Reverse(Scheduled { at, item, .. })) = next else {
                if !self.has_clients() {
                    return None;
                }
                return Some(FailureKind::Deadlock {
                    waiting: self.running_clients(),
                });
            };
            if let Item::Timer(key) = &item {
                if !self.timers.borrow().contains_key(key) {
                    continue; // cancelled: time does not move for it
                }
            }
            if at > time_limit {
                self.now.set(time_limit.max(self.now.get()));
                if !self.has_clients() {
                    return None;
                }
                return Some(FailureKind::TimeLimit {
                    limit_ns: time_limit,
                    waiting: self.running_clients(),
                });
            }
            if at > self.now.get() {
                self.now.set(at);
                polls_at_instant = 0;
            }
            self.items.set(self.items.get() + 1);
            self.fire(item);
            self.apply_controls();
            if self.failed() {
                return self.take_failure();
            }
        }
    }

    fn running_clients(&self) -> Vec<String> {
        self.hosts
            .borrow()
            .iter()
            .filter(|slot| slot.is_client() && slot.exited.is_none())
            .map(|slot| slot.name.clone())
            .collect()
    }

    fn fire(self: &Rc<World>, item: Item) {
        match item {
            Item::Timer(key) => {
                let waker = {
                    let mut timers = self.timers.borrow_mut();
                    timers.get_mut(&key).and_then(|slot| {
                        slot.fired = true;
                        slot.waker.take()
                    })
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Item::Packet(packet) => {
                let wakers = self.net.borrow_mut().deliver(self, packet);
                for waker in wakers {
                    waker.wake();
                }
            }
            Item::Control(control) => self.apply(control),
            Item::Start(index) => self.start_host(index),
            Item::TokioTick(index, incarnation) => {
                let host = self.hosts.borrow()[index].current.clone();
                let Some(host) = host.filter(|host| host.incarnation == incarnation) else {
                    return; // the incarnation ended
                };
                if let Some(runtime) = host.runtime.borrow().as_ref() {
                    runtime.tick_at.set(None);
                    runtime.due.set(true);
                    self.tokio_ticks.set(self.tokio_ticks.get() + 1);
                };
            }
        }
    }

    // --- the hosts' tokio runtimes (see tokio_rt.rs) -----------------------

    /// Step, in host order, every host runtime with work; the number of
    /// steps taken.
    fn step_runtimes(self: &Rc<World>) -> u64 {
        let mut steps = 0;
        let count = self.hosts.borrow().len();
        for index in 0..count {
            let host = {
                let hosts = self.hosts.borrow();
                match &hosts[index].current {
                    Some(host)
                        if host
                            .runtime
                            .borrow()
                            .as_ref()
                            .is_some_and(HostRuntime::has_work) =>
                    {
                        Rc::clone(host)
                    }
                    _ => continue,
                }
            };
            steps += 1;
            self.tokio_steps.set(self.tokio_steps.get() + 1);
            let (outcome, timers_pending) = {
                let runtime = host.runtime.borrow();
                let Some(runtime) = runtime.as_ref() else {
                    continue;
                };
                let outcome = runtime.step(&host);
                (outcome, runtime.timers_pending.get())
            };
            if let Some(message) = outcome.panic {
                let hint = if message.contains("from within a runtime") {
                    " (a simulation cannot run inside a tokio runtime: run it from a plain #[test] or fn main, not #[tokio::test] or block_on)"
                } else {
                    ""
                };
                self.fail(FailureKind::Library {
                    host: host.name.clone(),
                    message: format!("stepping its tokio runtime panicked: {message}{hint}"),
                });
            } else if outcome.runaway {
                self.fail(FailureKind::Library {
                    host: host.name.clone(),
                    message: format!(
                        "livelock: its tokio tasks kept waking each other without virtual time moving ({} clock readings by tokio's scheduler in one step; a yield_now loop waiting for the clock to move?)",
                        super::tokio_rt::STEP_CLOCK_READS_MAX
                    ),
                });
            }
            if timers_pending {
                self.schedule_tick(&host);
            }
            self.settle_blocking();
            self.apply_controls();
            if self.failed() {
                return steps;
            }
        }
        steps
    }

    /// A tick for every host whose deja tasks ran since the last look and
    /// may have started tokio timers (they read the clock through the C
    /// library, as `tokio::time` does): its step tells whether they did.
    fn tick_polled_runtimes(&self) {
        for slot in self.hosts.borrow().iter() {
            if let Some(host) = &slot.current {
                if host.polled.replace(false) && host.reads_libc_clock.get() {
                    self.schedule_tick(host);
                }
            }
        }
    }

    /// Schedule a tick of `host`'s timer driver at the next millisecond
    /// boundary of its clock, unless one is already on the agenda.
    fn schedule_tick(&self, host: &Rc<Host>) {
        let runtime = host.runtime.borrow();
        let Some(runtime) = runtime.as_ref() else {
            return;
        };
        if runtime.tick_at.get().is_some() {
            return;
        }
        let next = (host.mono_ns() / TOKIO_TICK_NS + 1).saturating_mul(TOKIO_TICK_NS);
        let at = host.started_at.saturating_add(next);
        runtime.tick_at.set(Some(at));
        self.schedule(at, Item::TokioTick(host.index, host.incarnation));
    }

    /// Let the blocking tasks spawned by the last poll or step run to
    /// completion, now, in virtual time zero.
    #[inline]
    fn settle_blocking(&self) {
        if self.blocking_in_flight.load(Ordering::Acquire) != 0 {
            self.settle_blocking_now();
        }
    }

    /// Every host's current incarnation (hosts that are down have none).
    fn current_hosts(&self) -> Vec<Rc<Host>> {
        self.hosts
            .borrow()
            .iter()
            .filter_map(|slot| slot.current.clone())
            .collect()
    }

    #[inline(never)]
    fn settle_blocking_now(&self) {
        let hosts = self.current_hosts();
        for host in hosts {
            let settled = match host.runtime.borrow().as_ref() {
                Some(runtime) => runtime.settle_blocking(self.blocking_wait),
                None => Ok(()),
            };
            if settled.is_err() {
                self.fail(FailureKind::Library {
                    host: host.name.clone(),
                    message: format!(
                        "a blocking task (tokio::task::spawn_blocking, or tokio's own, e.g. a DNS lookup) ran for more than {:?} of real time. In a simulation a blocking task runs to completion while the simulation waits: one that waits for the simulation (a channel, a socket, a lock held by a task) never ends",
                        self.blocking_wait
                    ),
                });
                return;
            }
        }
    }

    /// End of the simulation: stop logging everywhere, drop every task.
    pub(crate) fn shutdown(&self) {
        let hosts = self.current_hosts();
        for host in &hosts {
            host.stop();
        }
        self.executor.shutdown();
        for host in &hosts {
            let runtime = host.runtime.borrow_mut().take();
            if let Some(mut runtime) = runtime {
                runtime.shutdown(host);
            }
        }
        // Drops of the runtimes' tasks may have spawned deja tasks.
        self.executor.shutdown();
        self.timers.borrow_mut().clear();
        self.agenda.borrow_mut().clear();
        self.controls.borrow_mut().clear();
    }
}

pub(crate) use crate::task::{panic_text, EXIT_PANIC};

/// The root seed of incarnation `incarnation` of host `index`.
fn host_seed(seed: u64, index: usize, incarnation: u32) -> [u8; 32] {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(index as u64 + 1);
    rng.set_word_pos(u128::from(incarnation) * 8);
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}

/// A task of one host: its polls and its drop run in the host's context,
/// and in its tokio runtime's (so `tokio::spawn` and `tokio::time` find
/// the host's runtime).
struct InHost {
    host: Rc<Host>,
    runtime: Option<tokio::runtime::Handle>,
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

impl Future for InHost {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.host.polled.set(true);
        let _enter = backend::enter(Some(Rc::clone(&self.host) as Rc<dyn backend::Backend>));
        let _runtime = self.runtime.as_ref().map(tokio::runtime::Handle::enter);
        match self.future.as_mut() {
            Some(future) => future.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for InHost {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            let _enter = backend::enter(Some(Rc::clone(&self.host) as Rc<dyn backend::Backend>));
            let _runtime = self.runtime.as_ref().map(tokio::runtime::Handle::enter);
            drop(future);
        }
    }
}
