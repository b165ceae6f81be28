//! Time: clock readings and timers. A drop-in for `tokio::time` plus
//! `std::time::{Instant, SystemTime}::now`.
//!
//! In record mode every reading and every timer firing is logged; in
//! replay, readings come from the log and timers fire when the log says
//! they did, so a run that slept ten seconds replays in milliseconds.

use std::fmt;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};

pub use std::time::Duration;

use crate::backend::{self, live::nanos, TimerIo, TimerTarget};

/// A monotonic instant: nanoseconds since the run started. Use it like
/// `std::time::Instant`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    ns: u64,
}

impl Instant {
    /// The current monotonic time: recorded in record mode, read from the
    /// log in replay.
    pub fn now() -> Instant {
        let ns = backend::with(|backend| backend.clock_mono());
        Instant { ns }
    }

    /// Nanoseconds since the run started.
    pub fn as_nanos(self) -> u64 {
        self.ns
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.ns.saturating_sub(earlier.ns))
    }

    /// Like [`Instant::duration_since`], `None` if `earlier` is later.
    pub fn checked_duration_since(self, earlier: Instant) -> Option<Duration> {
        self.ns.checked_sub(earlier.ns).map(Duration::from_nanos)
    }

    /// Time since `self` (reads the clock: recorded like [`Instant::now`]).
    pub fn elapsed(self) -> Duration {
        Instant::now().duration_since(self)
    }

    /// `self + duration`, `None` on overflow.
    pub fn checked_add(self, duration: Duration) -> Option<Instant> {
        self.ns
            .checked_add(nanos(duration))
            .map(|ns| Instant { ns })
    }

    /// `self - duration`, `None` before the run's start.
    pub fn checked_sub(self, duration: Duration) -> Option<Instant> {
        self.ns
            .checked_sub(nanos(duration))
            .map(|ns| Instant { ns })
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instant({:?})", Duration::from_nanos(self.ns))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant {
            ns: self.ns.saturating_add(nanos(rhs)),
        }
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant {
            ns: self.ns.saturating_sub(nanos(rhs)),
        }
    }
}

impl SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, rhs: Duration) {
        *self = *self - rhs;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.duration_since(rhs)
    }
}

/// Wall-clock time: `deja::time::SystemTime::now()` returns a
/// `std::time::SystemTime` that is recorded, and read from the log in replay.
#[derive(Debug)]
pub struct SystemTime(());

impl SystemTime {
    /// The current wall-clock time.
    pub fn now() -> std::time::SystemTime {
        let unix_ns = backend::with(|backend| backend.clock_wall());
        match unix_ns {
            None => std::time::SystemTime::now(),
            Some(ns) if ns >= 0 => std::time::UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs()),
            Some(ns) => std::time::UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs()),
        }
    }
}

/// Wait until `duration` has elapsed, like `tokio::time::sleep`.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep::new(TimerTarget::After(nanos(duration)))
}

/// Wait until `deadline`, like `tokio::time::sleep_until`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::new(TimerTarget::At(deadline.ns))
}

/// A future that completes when its timer fires. Its firing is one
/// `TimerSlept` event (a `sleep(d)`: replay checks `d`) or `TimerFired`
/// (a deadline: replay checks it).
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    inner: SleepInner,
}

enum SleepInner {
    /// Armed: the backend's timer.
    Armed(Pin<Box<dyn TimerIo>>),
    Fired,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep").finish_non_exhaustive()
    }
}

impl Sleep {
    fn new(target: TimerTarget) -> Sleep {
        Sleep {
            inner: SleepInner::Armed(backend::with(|backend| backend.timer(target))),
        }
    }

    /// True once the timer has fired.
    pub fn is_elapsed(&self) -> bool {
        matches!(self.inner, SleepInner::Fired)
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match &mut this.inner {
            SleepInner::Armed(timer) => std::task::ready!(timer.as_mut().poll_fired(cx)),
            SleepInner::Fired => return Poll::Ready(()),
        }
        this.inner = SleepInner::Fired;
        Poll::Ready(())
    }
}

/// Errors of [`timeout`].
pub mod error {
    use std::fmt;

    /// The deadline passed before the future completed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Elapsed(pub(super) ());

    impl fmt::Display for Elapsed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("deadline has elapsed")
        }
    }

    impl std::error::Error for Elapsed {}

    impl From<Elapsed> for std::io::Error {
        fn from(_: Elapsed) -> std::io::Error {
            std::io::ErrorKind::TimedOut.into()
        }
    }
}

/// Run `future` with a time limit, like `tokio::time::timeout`.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep(duration),
    }
}

/// Run `future` until `deadline`.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep_until(deadline),
    }
}

/// The future of [`timeout`]: the inner future is polled first, so a
/// result that is ready wins over a deadline that passed at the same time.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Timeout<F> {
    future: F,
    sleep: Sleep,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, error::Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is structurally pinned; `sleep` is Unpin.
        let this = unsafe { self.get_unchecked_mut() };
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        if let Poll::Ready(output) = future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(&mut this.sleep)
            .poll(cx)
            .map(|()| Err(error::Elapsed(())))
    }
}

/// A stream of ticks every `period`, the first one immediately, like
/// `tokio::time::interval` (missed ticks fire at once, in a burst).
pub fn interval(period: Duration) -> Interval {
    interval_at(Instant::now(), period)
}

/// Ticks every `period` starting at `start`.
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    assert!(period > Duration::ZERO, "`period` must be non-zero");
    Interval {
        next: start,
        period,
        sleep: None,
    }
}

/// See [`interval`]. Each tick is one timer firing.
#[derive(Debug)]
pub struct Interval {
    next: Instant,
    period: Duration,
    sleep: Option<Sleep>,
}

impl Interval {
    /// Wait for the next tick; returns its scheduled instant.
    pub async fn tick(&mut self) -> Instant {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// Poll for the next tick.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Instant> {
        let next = self.next;
        let sleep = self.sleep.get_or_insert_with(|| sleep_until(next));
        std::task::ready!(Pin::new(sleep).poll(cx));
        self.sleep = None;
        self.next = next + self.period;
        Poll::Ready(next)
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}
