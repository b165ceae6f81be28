//! The real clock, read past any interposer.
//!
//! The `deja` runtime interposes `clock_gettime` so that clock readings
//! made by a service's tasks (through `std::time`, tokio or any library)
//! are recorded and replayed. The recorder's own readings (the time stamp
//! on every event, the writer's flush timing) must not be: they would be
//! recorded as the service's, recursively. They come from here, which
//! calls the C library's `clock_gettime` found with `dlsym(RTLD_NEXT)`,
//! the definition after this executable's own, so an interposer is never
//! in the way. Without a dynamic C library it falls back to the system
//! call.

use std::sync::atomic::{AtomicPtr, Ordering};

type ClockGettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

/// The C library's `clock_gettime`, looked up once; null: not looked up yet.
static REAL_CLOCK_GETTIME: AtomicPtr<libc::c_void> = AtomicPtr::new(std::ptr::null_mut());

/// A marker for "no C library definition: use the system call".
const USE_SYSCALL: *mut libc::c_void = usize::MAX as *mut libc::c_void;

fn real_clock_gettime_fn() -> *mut libc::c_void {
    let cached = REAL_CLOCK_GETTIME.load(Ordering::Acquire);
    if !cached.is_null() {
        return cached;
    }
    // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT searches the
    // objects loaded after this one (the C library).
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, c"clock_gettime".as_ptr()) };
    let found = if found.is_null() { USE_SYSCALL } else { found };
    REAL_CLOCK_GETTIME.store(found, Ordering::Release);
    found
}

/// The C library's `clock_gettime(clock, tp)`, never an interposer's:
/// what an interposer forwards to.
///
/// # Safety
/// As the C function: `tp` is null (an `EFAULT`) or a writable `timespec`.
pub unsafe fn real_clock_gettime_raw(
    clock: libc::clockid_t,
    tp: *mut libc::timespec,
) -> libc::c_int {
    let function = real_clock_gettime_fn();
    // SAFETY: the pointer is either the C library's clock_gettime (same
    // signature) or the syscall marker; `tp` is the caller's.
    unsafe {
        if function == USE_SYSCALL {
            libc::syscall(libc::SYS_clock_gettime, clock, tp) as libc::c_int
        } else {
            let function: ClockGettime = std::mem::transmute(function);
            function(clock, tp)
        }
    }
}

/// The C library's `clock_gettime(clock)`, never an interposer's.
pub fn real_clock_gettime(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    let status = unsafe { real_clock_gettime_raw(clock, &mut ts) };
    assert_eq!(status, 0, "clock_gettime({clock}) failed");
    ts
}

/// `CLOCK_MONOTONIC` in nanoseconds, read past any interposer.
pub fn mono_ns() -> u64 {
    timespec_ns(real_clock_gettime(libc::CLOCK_MONOTONIC))
}

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch, read past any
/// interposer.
// `time_t` and `c_long` are `i32` on 32-bit targets.
#[allow(clippy::useless_conversion)]
pub fn wall_unix_ns() -> i64 {
    let ts = real_clock_gettime(libc::CLOCK_REALTIME);
    i64::from(ts.tv_sec)
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.tv_nsec))
}

/// A timespec of a clock that does not go below zero, in nanoseconds.
pub fn timespec_ns(ts: libc::timespec) -> u64 {
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_clock_moves_forward_with_std() {
        let a = mono_ns();
        let std_a = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = mono_ns();
        let std_elapsed = std_a.elapsed().as_nanos() as u64;
        assert!(b > a);
        // Both read CLOCK_MONOTONIC: the same span, within scheduling noise.
        assert!((b - a).abs_diff(std_elapsed) < 50_000_000);
        let wall = wall_unix_ns();
        let std_wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((wall - std_wall).abs() < 1_000_000_000);
    }
}
