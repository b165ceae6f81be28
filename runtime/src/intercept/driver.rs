//! `epoll_wait`, interposed: the runtime's driver turns.
//!
//! tokio's current-thread scheduler runs its tasks until none is ready (or
//! for 61 polls), then turns its driver: one `epoll_wait`, which hands
//! every socket that became ready since the last turn to its task, then
//! the timers that came due. The tasks a turn wakes run in one batch, in
//! the order the driver queued them, before anything they wake. That
//! batching decides the order of everything deja does not gate (locks,
//! channels, a connection shared by several handlers), so a recording made
//! on one thread logs each turn (`DriverTurn`, from the thread that runs
//! the tasks, outside any task), and replay turns its own driver at the
//! same places:
//!
//! - record (`record/driver.rs`): the real call; the turn is logged at
//!   the driver's next clock reading, with it (the reading tokio fires
//!   timers by);
//! - replay (`replay/ops.rs`): when the log's next event is a turn, it is passed
//!   ([`crate::replay::Replay::driver_turn`]) and the call returns at
//!   once; otherwise the runtime waits as asked, in slices, passing the
//!   turn as soon as the cursor reaches it (a blocking task may get it
//!   there while the driver sleeps).
//!
//! Any other thread, and every thread outside deja's runtimes, gets the C
//! library's `epoll_wait` untouched.

use std::rc::Rc;
use std::sync::atomic::{AtomicPtr, Ordering};

use super::intercepting;
use crate::backend::{self, Backend};

type EpollWaitFn = unsafe extern "C" fn(
    libc::c_int,
    *mut libc::epoll_event,
    libc::c_int,
    libc::c_int,
) -> libc::c_int;

static REAL_EPOLL_WAIT: AtomicPtr<libc::c_void> = AtomicPtr::new(std::ptr::null_mut());

/// The C library's `epoll_wait`.
///
/// # Safety
/// As the C function.
unsafe fn real_epoll_wait(
    epfd: libc::c_int,
    events: *mut libc::epoll_event,
    max: libc::c_int,
    timeout: libc::c_int,
) -> libc::c_int {
    let mut function = REAL_EPOLL_WAIT.load(Ordering::Acquire);
    if function.is_null() {
        // SAFETY: a NUL-terminated name; RTLD_NEXT looks past this executable.
        function = unsafe { libc::dlsym(libc::RTLD_NEXT, c"epoll_wait".as_ptr()) };
        if function.is_null() {
            // SAFETY: epoll_pwait with no mask is epoll_wait.
            return unsafe { libc::epoll_pwait(epfd, events, max, timeout, std::ptr::null()) };
        }
        REAL_EPOLL_WAIT.store(function, Ordering::Release);
    }
    // SAFETY: the C library's epoll_wait has this signature.
    unsafe {
        let function: EpollWaitFn = std::mem::transmute(function);
        function(epfd, events, max, timeout)
    }
}

/// The backend of the runtime whose driver turns on this thread, outside
/// any task (a task's own `epoll_wait` is not the driver's).
fn driver() -> Option<Rc<dyn Backend>> {
    intercepting(|| {
        if backend::current_task().is_some() {
            return None;
        }
        backend::current()
    })
}

/// Makes the linker keep this file's `epoll_wait`: nothing else in the
/// file is called from outside it, and an object file nobody references
/// is left out of the executable (so the C library's would run).
pub(crate) fn keep() {
    let interposer: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::epoll_event,
        libc::c_int,
        libc::c_int,
    ) -> libc::c_int = epoll_wait;
    std::hint::black_box(interposer);
}

/// The C library's `epoll_wait`, as deja sees it (see [`self`]).
///
/// # Safety
/// As the C function.
// Exported by `no_mangle`, not by Rust's visibility.
#[allow(unreachable_pub)]
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: libc::c_int,
    events: *mut libc::epoll_event,
    max: libc::c_int,
    timeout: libc::c_int,
) -> libc::c_int {
    // SAFETY: the caller's arguments, with the timeout the backend asks.
    let mut wait = |timeout_ms| unsafe { real_epoll_wait(epfd, events, max, timeout_ms) };
    if let Some(backend) = driver() {
        if let Some(ready) = backend.driver_wait(&mut wait, timeout) {
            return ready;
        }
    }
    wait(timeout)
}
