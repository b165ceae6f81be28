//! Process-level interception of the clock and OS entropy.
//!
//! Libraries read the clock and the OS's entropy behind deja's back: hyper's
//! `Date` header, tokio's timers, `std::time::Instant`, tracing's
//! timestamps, `rand::rng()`'s seed, uuid v4, `HashMap`'s keys, TLS
//! randoms. deja defines the C library's entry points for them
//! (`clock_gettime`, `gettimeofday`, `getrandom`, `getentropy`) in the
//! service's own executable, where they take precedence over the C
//! library's, and forwards to the real ones (found with
//! `dlsym(RTLD_NEXT)`) unless the call comes from one of the service's
//! tasks:
//!
//! | who reads | live | record | replay | sim |
//! |---|---|---|---|---|
//! | a task (deja's or tokio's) | real | real, logged | from the log | simulated |
//! | no task (tokio's driver, deja's threads) | real | real | virtual time; entropy from the root seed | virtual while the world steps the host's runtime; otherwise real |
//!
//! `syscall` is interposed too, for `SYS_getrandom` only: getrandom 0.2
//! (ring, so rustls) makes that system call itself (see `syscall.rs`).
//! And `connect`, to catch libraries that open their own sockets (see
//! `socket.rs`), and `epoll_wait`, the runtime's driver turns, so replay
//! batches wakes as the recording's driver did (see `driver.rs`).
//!
//! A reading made while deja itself is working ([`internal`]) is real
//! and unlogged, so deja's own bookkeeping never shows up in the log.
//!
//! Cost: one thread-local check per call outside a deja runtime
//! (`cargo bench -p deja --bench intercept`).

mod clock;
mod driver;
mod entropy;
mod socket;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod syscall;

use std::cell::Cell;

pub(crate) use clock::RuntimeBuild;
pub(crate) use driver::keep as keep_driver_interposer;
pub(crate) use socket::FOREIGN_SOCKET_MARK;

use deja_recorder::TaskId;

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

thread_local! {
    /// Set while deja's own code runs on this thread (and while an
    /// interposer handles a call): readings made then are real and
    /// unlogged. Const-initialised, no destructor: usable at any time in
    /// the thread's life.
    static INTERNAL: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` as deja's own work: the clock and entropy it reads are the
/// real ones, and nothing is logged for them.
pub(crate) fn internal<R>(f: impl FnOnce() -> R) -> R {
    let was = INTERNAL.with(|internal| internal.replace(true));
    let _restore = Restore(was);
    f()
}

/// A future whose every poll is deja's own work (see [`internal`]): deja's
/// sockets connect inside one, so the `connect` interposer knows them.
pub(crate) struct Internal<F>(pub(crate) F);

impl<F: std::future::Future> std::future::Future for Internal<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        // SAFETY: the inner future is structurally pinned, never moved.
        let future = unsafe { self.map_unchecked_mut(|this| &mut this.0) };
        internal(|| future.poll(cx))
    }
}

struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        INTERNAL.with(|internal| internal.set(self.0));
    }
}

/// Run an interposer's decision `f` unless deja itself is working (then
/// `None`: use the real function). `f` runs marked internal, so whatever
/// it reads itself is real.
fn intercepting<R>(f: impl FnOnce() -> Option<R>) -> Option<R> {
    if !crate::context::active() || INTERNAL.with(Cell::get) {
        return None;
    }
    internal(f)
}

/// The task a reading belongs to: the running one, or main while a
/// runtime is built (see [`RuntimeBuild`]).
fn reading_task() -> Option<TaskId> {
    if RuntimeBuild::active() {
        return Some(TaskId::MAIN);
    }
    crate::context::current_task()
}
