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

pub(crate) use driver::keep as keep_driver_interposer;

use deja_recorder::TaskId;

use crate::backend::RuntimeBuild;

/// Run an interposer's decision `f` unless deja itself is working (then
/// `None`: use the real function). `f` runs marked internal, so whatever
/// it reads itself is real.
fn intercepting<R>(f: impl FnOnce() -> Option<R>) -> Option<R> {
    if !crate::backend::active() || crate::backend::is_internal() {
        return None;
    }
    crate::backend::internal(f)
}

/// The task a reading belongs to: the running one, or main while a
/// runtime is built (see [`RuntimeBuild`]).
fn reading_task() -> Option<TaskId> {
    if RuntimeBuild::active() {
        return Some(TaskId::MAIN);
    }
    crate::backend::current_task()
}
