//! `clock_gettime` and `gettimeofday`, interposed.

use std::cell::Cell;

use deja_recorder::clock::real_clock_gettime;

use super::{intercepting, Clock};
use crate::context::{self, Ctx};

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

thread_local! {
    /// While a tokio runtime is built for a recording or a replay: the
    /// run's origin, which monotonic readings return (see [`RuntimeBuild`]).
    static BUILD_ORIGIN: Cell<Option<i64>> = const { Cell::new(None) };
}

/// While a recording's or a replay's tokio runtime is built on this
/// thread: its time driver takes its origin from the monotonic clock, and
/// reads the run's origin instead, so a timer deadline rounds to the same
/// millisecond tick in the recording and in every replay; and the
/// entropy it draws (seeds for its own RNG, std's `HashMap` keys for this
/// thread) is main's, logged in the recording and handed back in replay,
/// so a std `HashMap` iterates in the same order in both.
pub(crate) struct RuntimeBuild {
    previous: Option<i64>,
}

impl RuntimeBuild {
    pub(crate) fn at(origin_ns: u64) -> RuntimeBuild {
        let origin = i64::try_from(origin_ns).unwrap_or(i64::MAX);
        RuntimeBuild {
            previous: BUILD_ORIGIN.with(|clock| clock.replace(Some(origin))),
        }
    }

    /// True while a runtime is built on this thread.
    pub(crate) fn active() -> bool {
        BUILD_ORIGIN.with(Cell::get).is_some()
    }
}

impl Drop for RuntimeBuild {
    fn drop(&mut self) {
        BUILD_ORIGIN.with(|clock| clock.set(self.previous));
    }
}

/// What a reading of `clock` returns instead of the real one, if anything.
fn reading(clock: Clock, real: impl FnOnce() -> i64) -> Option<i64> {
    if !context::active() {
        return None;
    }
    if clock == Clock::Mono {
        if let Some(origin) = BUILD_ORIGIN.with(Cell::get) {
            return Some(origin);
        }
    }
    intercepting(|| {
        context::try_with(|ctx| match ctx {
            Ctx::Live => None,
            Ctx::Record(recording) => {
                let Some(task) = super::reading_task() else {
                    // The driver's first monotonic reading after a turn
                    // is the turn's time (see `driver.rs`).
                    if clock == Clock::Mono {
                        if let Some(ready) = super::driver::take_pending_turn() {
                            let value = real();
                            recording.driver_turn(ready, value.max(0).unsigned_abs());
                            return Some(value);
                        }
                    }
                    return None;
                };
                let value = real();
                recording.record_libc_clock(task, clock, value);
                Some(value)
            }
            Ctx::Replay(replay) => Some(replay.libc_clock(clock, super::reading_task())),
            Ctx::Sim(host) => match context::current_task() {
                Some(_) => Some(host.libc_clock(clock)),
                // tokio's scheduler and timer driver, while the world
                // steps the host's runtime: its virtual clock, unlogged.
                None => crate::sim::tokio_rt::driver_clock(host, clock),
            },
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
