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
//! - record: the real call; the turn is logged at the driver's next
//!   clock reading, with it (the reading tokio fires timers by);
//! - replay: when the log's next event is a turn, it is passed
//!   ([`crate::replay::Replay::driver_turn`]) and the call returns at
//!   once; otherwise the runtime waits as asked, in slices, passing the
//!   turn as soon as the cursor reaches it (a blocking task may get it
//!   there while the driver sleeps).
//!
//! Any other thread, and every thread outside deja's runtimes, gets the C
//! library's `epoll_wait` untouched.

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

use super::intercepting;
use crate::context::{self, Ctx};
use crate::record::Recording;

/// How long a replay's driver sleeps before it looks again whether the
/// cursor reached a recorded turn.
const TURN_RECHECK_MS: libc::c_int = 2;

thread_local! {
    /// A recorded turn not logged yet: it is logged with the driver's
    /// next clock reading (tokio reads the clock right after the turn and
    /// fires the timers due by then), so replay moves its clock to exactly
    /// that reading. Const, no destructor: the interposers read it.
    static PENDING_TURN: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The turn waiting for the driver's clock reading, if any (taken).
pub(crate) fn take_pending_turn() -> Option<u32> {
    PENDING_TURN.with(Cell::take)
}

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

/// What this thread's turn is to deja.
enum Turn {
    Record(Arc<Recording>),
    Replay,
}

/// The runtime's driver turning on this thread, outside any task.
fn turn() -> Option<Turn> {
    intercepting(|| {
        if context::current_task().is_some() {
            return None;
        }
        context::try_with(|ctx| match ctx {
            Ctx::Record(recording) if recording.logs_driver_turns() => {
                Some(Turn::Record(Arc::clone(recording)))
            }
            Ctx::Replay(replay) if replay.has_turns() => Some(Turn::Replay),
            _ => None,
        })
        .flatten()
    })
}

fn pass_recorded_turn() -> bool {
    intercepting(|| crate::replay::with_replay(|replay| replay.driver_turn())).unwrap_or(false)
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
    match turn() {
        // SAFETY: the caller's arguments, as given.
        None => unsafe { real_epoll_wait(epfd, events, max, timeout) },
        Some(Turn::Record(recording)) => {
            if let Some(ready) = take_pending_turn() {
                // The driver turned and read no clock since: the turn's
                // time is now.
                let now = deja_recorder::clock::mono_ns();
                super::internal(|| recording.driver_turn(ready, now));
            }
            // SAFETY: the caller's arguments, as given.
            let ready = unsafe { real_epoll_wait(epfd, events, max, timeout) };
            if ready >= 0 {
                PENDING_TURN.with(|pending| pending.set(Some(ready.unsigned_abs())));
            }
            ready
        }
        Some(Turn::Replay) => {
            if pass_recorded_turn() {
                // Nothing replay needs is in the kernel (replay opens no
                // sockets); a wake-up left there is taken at the next
                // real wait. Saves a system call per turn.
                return 0;
            }
            let started = deja_recorder::clock::mono_ns();
            let limit_ns = u64::try_from(timeout).ok().map(|ms| ms * 1_000_000);
            loop {
                let waited_ns = deja_recorder::clock::mono_ns().saturating_sub(started);
                let left_ms = match limit_ns {
                    Some(limit) if waited_ns >= limit => return 0,
                    Some(limit) => ((limit - waited_ns).div_ceil(1_000_000) as libc::c_int)
                        .min(TURN_RECHECK_MS),
                    None => TURN_RECHECK_MS,
                };
                // SAFETY: the caller's arguments, with a shorter wait.
                let ready = unsafe { real_epoll_wait(epfd, events, max, left_ms) };
                if ready != 0 || pass_recorded_turn() {
                    return ready;
                }
            }
        }
    }
}
