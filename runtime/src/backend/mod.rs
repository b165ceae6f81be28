//! The one interface every mode implements, and which one this thread runs.
//!
//! deja has four modes and one API. Each public operation (`time`, `rand`,
//! `net`, `task`, `signal`, and the C library calls `intercept/` sees)
//! asks [`with`] for the thread's [`Backend`] and calls it; it never looks
//! at the mode itself. Each mode implements the whole interface in its own
//! place:
//!
//! | mode | backend | where |
//! |---|---|---|
//! | live | plain tokio, nothing logged | `backend/live.rs` |
//! | record | tokio, every result logged | `record/` |
//! | replay | every result from the log, through the gate | `replay/` |
//! | sim | the simulated world, every result logged | `sim/` (`Host`) |
//!
//! An operation added to deja is one method here and one implementation in
//! each of those places. A socket, a timer or a spawned task made by a
//! backend keeps its own backend's state behind [`StreamIo`],
//! [`ListenerIo`], [`UdpIo`] and [`TimerIo`], so later calls on it go
//! straight to the backend that made it.
//!
//! This module and its children depend on no backend and no public API
//! module: the backends and the API depend on it (a test keeps the
//! runtime's modules free of import cycles, `runtime/tests/layering.rs`).

mod internal;
pub(crate) mod live;
mod seed;
mod task;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use deja_recorder::{ConnId, EventKind, SignalKind, TaskId, TaskOutcome};
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use internal::{internal, is_internal, Internal, RuntimeBuild};
pub(crate) use seed::{derive_seed, os_seed, select_seed};
pub(crate) use task::{
    current_task, next_rng_index, next_select_draw, next_timer_id, scope, splitmix64, task_id,
    tokio_id_number, Adoptions, TaskCtx, TASK_OUTSIDE,
};

/// A boxed, sendable future: what the interface's async operations return
/// (an interface object cannot have `async fn`s; one allocation per
/// connect, accept or bind).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which clock a reading is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Clock {
    /// `CLOCK_MONOTONIC` and its kin: nanoseconds on the system's scale.
    Mono,
    /// `CLOCK_REALTIME`: nanoseconds since the Unix epoch.
    Wall,
}

/// Where `CLOCK_MONOTONIC` starts, as the service sees it, in the modes
/// whose clock is virtual (replay: the recording's origin maps here;
/// sim: a host's start does): a machine up for a day. Fixed, so every
/// replay or simulation reads the same values.
const VIRTUAL_MONO_BASE_NS: i64 = 86_400 * 1_000_000_000;

/// A virtual monotonic reading `ns` into the run, on the C library's scale.
pub(crate) fn virtual_mono(ns: u64) -> i64 {
    VIRTUAL_MONO_BASE_NS.saturating_add(i64::try_from(ns).unwrap_or(i64::MAX))
}

/// What a timer waits for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimerTarget {
    /// `sleep(d)`: `d` nanoseconds from now.
    After(u64),
    /// `sleep_until(t)`: `t` nanoseconds into the run.
    At(u64),
}

impl TimerTarget {
    /// The duration a `sleep(d)` asked for; `None` for a deadline.
    pub(crate) fn duration_ns(self) -> Option<u64> {
        match self {
            TimerTarget::After(duration_ns) => Some(duration_ns),
            TimerTarget::At(_) => None,
        }
    }
}

/// The event of a timer that fired: with its duration when it was armed
/// with one (replay checks it exactly), else its deadline alone.
pub(crate) fn timer_fired(timer: u64, deadline_ns: u64, duration_ns: Option<u64>) -> EventKind {
    match duration_ns {
        Some(duration_ns) => EventKind::TimerSlept {
            timer,
            deadline_ns,
            duration_ns,
        },
        None => EventKind::TimerFired { timer, deadline_ns },
    }
}

/// One mode's implementation of every operation deja intercepts.
///
/// Methods take `&self` on the thread's backend (see [`with`]); what they
/// return that outlives the call (futures, sockets, timers) holds what it
/// needs itself and is `Send`: the service's futures move between threads.
pub(crate) trait Backend: 'static {
    /// For the few callers that need their own mode's type back
    /// (`replay::with_replay`, the simulation's `sim::net`).
    fn as_any(&self) -> &dyn Any;
    /// Likewise, keeping the backend (`current_mode`).
    fn into_any(self: Rc<Self>) -> Rc<dyn Any>;

    // Tasks.

    /// The run's root seed; `None` when randomness is the OS's (live).
    fn root_seed(&self) -> Option<[u8; 32]>;
    /// The context of a task library code started with `tokio::spawn`,
    /// adopted at its first intercepted call; `None` if it is not one of
    /// the service's tasks (or nothing is adopted, live).
    fn adopt(&self, tokio_id: tokio::task::Id) -> Option<Arc<TaskCtx>>;
    /// The running task spawns one: its logical id, logged (or claimed)
    /// as a `Spawn`; `None` if tasks are not tracked (live).
    fn spawn(&self) -> Option<TaskId>;
    /// The executor of this backend's own tasks, if they do not run on
    /// tokio (a simulated host's).
    fn own_executor(&self) -> Option<&dyn OwnExecutor> {
        None
    }
    /// `task` ended with `outcome`.
    fn task_end(&self, task: TaskId, outcome: TaskOutcome);
    /// The running task made an application mark.
    fn mark(&self, name: &str, value: &[u8]);
    /// The running task ended a mark's scope.
    fn mark_end(&self, name: &str);

    // Time and entropy, through deja's own API.

    /// `deja::time::Instant::now()`: nanoseconds since the run started.
    fn clock_mono(&self) -> u64;
    /// `deja::time::SystemTime::now()`: nanoseconds since the Unix epoch,
    /// or `None`: read the real clock.
    fn clock_wall(&self) -> Option<i64>;
    /// A timer of the running task (armed now).
    fn timer(&self, target: TimerTarget) -> Pin<Box<dyn TimerIo>>;
    /// `deja::rand::fill_bytes`, one chunk of at most an event's payload.
    fn entropy(&self, chunk: &mut [u8]);

    // Library calls the C library interposers see (`intercept/`). Each
    // returns `None` (or `false`) to let the real function answer.

    /// A clock reading; `task` is who reads (`None`: no task, e.g. the
    /// runtime's driver); `real` reads the real clock.
    fn libc_clock(
        &self,
        clock: Clock,
        task: Option<TaskId>,
        real: &mut dyn FnMut() -> i64,
    ) -> Option<i64>;
    /// An entropy draw into `out`; `real` fills it from the OS (`false`
    /// if that failed).
    fn libc_entropy(
        &self,
        out: &mut [u8],
        task: Option<TaskId>,
        real: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> bool;
    /// A task connects a socket of its own to `peer`: `Some(refuse)`, or
    /// `None` to let it through unseen.
    fn foreign_connect(&self, peer: &str, task: Option<TaskId>) -> Option<bool>;
    /// The runtime's driver waits for events (`epoll_wait`) with
    /// `timeout_ms`; `wait(ms)` is the real wait. `None`: not this
    /// backend's concern, wait for real.
    fn driver_wait(&self, wait: &mut dyn FnMut(i32) -> i32, timeout_ms: i32) -> Option<i32>;

    // Signals and the network.

    /// Wait for the first of `kinds`.
    fn signal(&self, kinds: &'static [SignalKind]) -> BoxFuture<'static, io::Result<SignalKind>>;
    /// Bind a TCP listener.
    fn tcp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn ListenerIo>>>;
    /// Connect a TCP stream.
    fn tcp_connect(&self, addr: String) -> BoxFuture<'static, io::Result<NewStream>>;
    /// Bind a UDP socket.
    fn udp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn UdpIo>>>;
    /// Resolve `host` ("name:port").
    fn lookup(&self, host: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// A backend whose tasks run on its own executor (a simulated host's).
pub(crate) trait OwnExecutor {
    /// Run `body`; `None` if the executor is gone (the task never runs).
    fn spawn_own(&self, body: Pin<Box<dyn Future<Output = ()>>>) -> Option<Box<dyn OwnTask>>;
    /// A task of this executor panicked (`message`).
    fn task_panicked(&self, message: String);
}

/// A task on a backend's own executor, for its `JoinHandle`.
pub(crate) trait OwnTask: Send + Sync {
    fn abort(&self);
}

/// A listener or UDP socket a backend bound, with what the log knows of
/// it: its id and its address.
pub(crate) struct NewSocket<T: ?Sized> {
    pub(crate) conn: ConnId,
    pub(crate) local: SocketAddr,
    pub(crate) io: Box<T>,
}

/// A stream a backend connected or accepted: its id, both ends, and the
/// backend's stream.
pub(crate) struct NewStream {
    pub(crate) conn: ConnId,
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) io: Box<dyn StreamIo>,
}

/// A listening TCP socket of one backend.
pub(crate) trait ListenerIo: Send + Sync {
    fn accept(&self) -> BoxFuture<'_, io::Result<NewStream>>;
}

/// A connected TCP stream of one backend.
pub(crate) trait StreamIo: AsyncRead + AsyncWrite + Send + Sync + Unpin {
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;
    /// Halves that can move to different tasks; the connection closes
    /// when both are dropped.
    fn into_split(self: Box<Self>) -> (Box<dyn ReadIo>, Box<dyn WriteIo>);
}

/// The read half of a split stream.
pub(crate) trait ReadIo: AsyncRead + Send + Sync + Unpin {}
impl<T: AsyncRead + Send + Sync + Unpin> ReadIo for T {}

/// The write half of a split stream (dropping it shuts the write side).
pub(crate) trait WriteIo: AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncWrite + Send + Sync + Unpin> WriteIo for T {}

/// A UDP socket of one backend (polled: a datagram is too small a thing
/// to allocate a future for).
pub(crate) trait UdpIo: Send + Sync {
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>>;
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>>;
}

/// A timer of one backend: ready once it fired (and its firing is logged,
/// or claimed).
pub(crate) trait TimerIo: Send + Sync {
    fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
}

thread_local! {
    /// This thread's backend; `None` is live.
    static CURRENT: RefCell<Option<Rc<dyn Backend>>> = const { RefCell::new(None) };
    /// `CURRENT` is not live: the one check the clock and entropy
    /// interposers make on threads that are not deja's (const, no
    /// destructor, so it is readable at any point of a thread's life).
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// True if this thread runs a backend other than live.
pub(crate) fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// Run `f` with this thread's backend.
pub(crate) fn with<R>(f: impl FnOnce(&dyn Backend) -> R) -> R {
    CURRENT.with(|current| match &*current.borrow() {
        Some(backend) => f(&**backend),
        None => f(&live::Live),
    })
}

/// Like [`with`], but `None` while the thread's locals are being torn
/// down (the clock interposer can be called then).
pub(crate) fn try_with<R>(f: impl FnOnce(&dyn Backend) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| match &*current.borrow() {
            Some(backend) => f(&**backend),
            None => f(&live::Live),
        })
        .ok()
}

/// This thread's backend, if it is not live (for a call that may block or
/// re-enter, so holds no borrow of the thread's state).
pub(crate) fn current() -> Option<Rc<dyn Backend>> {
    CURRENT
        .try_with(|current| current.borrow().clone())
        .ok()
        .flatten()
}

/// This thread's backend as `B`, if it is one.
pub(crate) fn with_mode<B: Backend, R>(f: impl FnOnce(&B) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| {
            let current = current.borrow();
            let backend = current.as_deref()?.as_any().downcast_ref::<B>()?;
            Some(f(backend))
        })
        .ok()
        .flatten()
}

/// This thread's backend as `B`, if it is one (kept: for a call that may
/// re-enter or outlive a borrow of the thread's state).
pub(crate) fn current_mode<B: Backend>() -> Option<Rc<B>> {
    current()?.into_any().downcast::<B>().ok()
}

/// Make this thread run `backend` (`None`: live) until the guard drops.
pub(crate) fn enter(backend: Option<Rc<dyn Backend>>) -> EnterGuard {
    let active = backend.is_some();
    let previous = CURRENT.with(|slot| slot.replace(backend));
    ACTIVE.with(|flag| flag.set(active));
    EnterGuard { previous }
}

/// Restores the thread's previous backend.
pub(crate) struct EnterGuard {
    previous: Option<Rc<dyn Backend>>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let active = previous.is_some();
        // Dropping the replaced backend may run drops that look at the
        // thread's mode: take it out first, then drop it.
        let replaced = CURRENT.with(|slot| slot.replace(previous));
        ACTIVE.with(|flag| flag.set(active));
        drop(replaced);
    }
}
