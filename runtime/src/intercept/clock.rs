//! `clock_gettime` and `gettimeofday`, interposed.

use deja_recorder::clock::real_clock_gettime;

use super::intercepting;
use crate::backend::{self, Clock, RuntimeBuild};

/// The clock a reading is of, `None` for clocks deja leaves alone (CPU
/// time of a process or thread, and clocks it does not know).
fn clock_of(clock: libc::clockid_t) -> Option<Clock> {
    match clock {
        libc::CLOCK_MONOTONIC
        | libc::CLOCK_MONOTONIC_RAW
        | libc::CLOCK_MONOTONIC_COARSE
        | libc::CLOCK_BOOTTIME => Some(Clock::Mono),
        libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE => Some(Clock::Wall),
        _ => None,
    }
}

/// What a reading of `clock` returns instead of the real one, if anything.
fn reading(clock: Clock, real: impl FnOnce() -> i64) -> Option<i64> {
    if !backend::active() {
        return None;
    }
    if clock == Clock::Mono {
        if let Some(origin) = RuntimeBuild::origin() {
            return Some(origin);
        }
    }
    let mut real = Some(real);
    intercepting(|| {
        backend::try_with(|backend| {
            backend.libc_clock(clock, super::reading_task(), &mut || {
                real.take().map_or(0, |real| real())
            })
        })
        .flatten()
    })
}

fn to_timespec(ns: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: ns.rem_euclid(1_000_000_000) as libc::c_long,
    }
}

// `time_t` and `c_long` are `i32` on 32-bit targets.
#[allow(clippy::useless_conversion)]
fn timespec_to_ns(ts: libc::timespec) -> i64 {
    i64::from(ts.tv_sec)
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.tv_nsec))
}

/// The C library's `clock_gettime`, as deja sees it (see [`super`]).
///
/// # Safety
/// As the C function: `tp` is null or points to a writable `timespec`.
// Exported by `no_mangle`, not by Rust's visibility.
#[allow(unreachable_pub)]
#[no_mangle]
pub unsafe extern "C" fn clock_gettime(
    clock: libc::clockid_t,
    tp: *mut libc::timespec,
) -> libc::c_int {
    if tp.is_null() {
        // Let the C library report EFAULT as it would.
        return deja_recorder::clock::real_clock_gettime_raw(clock, tp);
    }
    if let Some(kind) = clock_of(clock) {
        if let Some(ns) = reading(kind, || timespec_to_ns(real_clock_gettime(clock))) {
            // SAFETY: `tp` is non-null and, by the contract, writable.
            unsafe { tp.write(to_timespec(ns)) };
            return 0;
        }
    }
    deja_recorder::clock::real_clock_gettime_raw(clock, tp)
}

/// The C library's `gettimeofday`, as deja sees it: the wall clock.
///
/// # Safety
/// As the C function: `tv` is null or points to a writable `timeval`.
// Exported by `no_mangle`, not by Rust's visibility.
#[allow(unreachable_pub)]
#[no_mangle]
pub unsafe extern "C" fn gettimeofday(
    tv: *mut libc::timeval,
    _tz: *mut libc::c_void,
) -> libc::c_int {
    if tv.is_null() {
        return 0;
    }
    let ns = reading(Clock::Wall, || {
        timespec_to_ns(real_clock_gettime(libc::CLOCK_REALTIME))
    })
    .unwrap_or_else(|| timespec_to_ns(real_clock_gettime(libc::CLOCK_REALTIME)));
    // SAFETY: `tv` is non-null and, by the contract, writable.
    unsafe {
        tv.write(libc::timeval {
            tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_usec: (ns.rem_euclid(1_000_000_000) / 1_000) as libc::suseconds_t,
        })
    };
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespecs_round_trip_including_before_the_epoch() {
        for ns in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_700_000_000_123_456_789,
            -1,
            -1_500_000_000,
        ] {
            assert_eq!(timespec_to_ns(to_timespec(ns)), ns);
        }
    }

    #[test]
    fn live_readings_are_the_real_clock() {
        let before = deja_recorder::clock::mono_ns();
        let std_now = std::time::Instant::now();
        let after = deja_recorder::clock::mono_ns();
        let _ = std_now;
        assert!(after >= before);
    }
}
