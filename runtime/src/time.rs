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
use std::sync::OnceLock;
use std::task::{Context, Poll};

pub use std::time::Duration;

use deja_recorder::EventKind;
use deja_replayer::gate::{Call, TimerTarget};

use crate::context::{self, Ctx};

/// The origin of live-mode instants: first use in the process.
fn live_origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

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
        let ns = context::with(|ctx| match ctx {
            Ctx::Live => nanos(crate::intercept::internal(|| live_origin().elapsed())),
            Ctx::Record(recording) => recording.record_clock(),
            Ctx::Replay(replay) => match replay.claim(context::task_id(), &Call::ClockMono) {
                Some(deja_recorder::Event {
                    kind: EventKind::ClockMono { ns },
                    ..
                }) => ns,
                _ => replay.now_ns(),
            },
            Ctx::Sim(host) => host.record_clock_mono(),
        });
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

    fn to_tokio(self, origin: std::time::Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(origin + Duration::from_nanos(self.ns))
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
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
        let unix_ns = context::with(|ctx| match ctx {
            Ctx::Live => None,
            Ctx::Record(recording) => {
                let unix_ns = unix_ns(crate::intercept::internal(std::time::SystemTime::now));
                recording.record(EventKind::ClockWall { unix_ns });
                Some(unix_ns)
            }
            Ctx::Replay(replay) => Some(match replay.claim(context::task_id(), &Call::ClockWall) {
                Some(deja_recorder::Event {
                    kind: EventKind::ClockWall { unix_ns },
                    ..
                }) => unix_ns,
                _ => replay.wall_ns(),
            }),
            Ctx::Sim(host) => Some(host.record_clock_wall()),
        });
        match unix_ns {
            None => std::time::SystemTime::now(),
            Some(ns) if ns >= 0 => std::time::UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs()),
            Some(ns) => std::time::UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs()),
        }
    }
}

fn unix_ns(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Wait until `duration` has elapsed, like `tokio::time::sleep`.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep::new(Target::After(duration))
}

/// Wait until `deadline`, like `tokio::time::sleep_until`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::new(Target::At(deadline))
}

enum Target {
    After(Duration),
    At(Instant),
}

impl Target {
    /// The duration a `sleep(d)` asked for; `None` for a deadline.
    fn duration_ns(&self) -> Option<u64> {
        match self {
            Target::After(duration) => Some(nanos(*duration)),
            Target::At(_) => None,
        }
    }
}

/// The event of a timer that fired: with its duration when it was armed
/// with one (replay checks it exactly), else its deadline alone.
fn fired(timer: u64, deadline_ns: u64, duration_ns: Option<u64>) -> EventKind {
    match duration_ns {
        Some(duration_ns) => EventKind::TimerSlept {
            timer,
            deadline_ns,
            duration_ns,
        },
        None => EventKind::TimerFired { timer, deadline_ns },
    }
}

/// A future that completes when its timer fires. Its firing is one
/// `TimerSlept` event (a `sleep(d)`: replay checks `d`) or `TimerFired`
/// (a deadline: replay checks it).
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    inner: SleepInner,
}

enum SleepInner {
    Live(Pin<Box<tokio::time::Sleep>>),
    Record {
        sleep: Pin<Box<tokio::time::Sleep>>,
        timer: u64,
        deadline_ns: u64,
        duration_ns: Option<u64>,
    },
    Replay {
        timer: u64,
        target: TimerTarget,
    },
    Sim {
        timer: u64,
        deadline_ns: u64,
        duration_ns: Option<u64>,
        key: Option<crate::sim::TimerKey>,
    },
    Fired,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep").finish_non_exhaustive()
    }
}

impl Sleep {
    fn new(target: Target) -> Sleep {
        let inner = context::with(|ctx| match ctx {
            Ctx::Live => SleepInner::Live(Box::pin(match target {
                Target::After(duration) => tokio::time::sleep(duration),
                Target::At(at) => tokio::time::sleep_until(at.to_tokio(live_origin())),
            })),
            Ctx::Record(recording) => {
                let origin = recording.origin();
                let deadline = match target {
                    // deja's own reading, not the service's: unlogged.
                    Target::After(duration) => {
                        crate::intercept::internal(tokio::time::Instant::now) + duration
                    }
                    Target::At(at) => at.to_tokio(origin),
                };
                SleepInner::Record {
                    sleep: Box::pin(tokio::time::sleep_until(deadline)),
                    timer: context::next_timer_id(),
                    deadline_ns: nanos(deadline.into_std().saturating_duration_since(origin)),
                    duration_ns: target.duration_ns(),
                }
            }
            Ctx::Replay(_) => SleepInner::Replay {
                timer: context::next_timer_id(),
                target: match target {
                    Target::After(duration) => TimerTarget::After {
                        duration_ns: nanos(duration),
                    },
                    Target::At(at) => TimerTarget::At { deadline_ns: at.ns },
                },
            },
            Ctx::Sim(host) => {
                let now = host.mono_ns();
                SleepInner::Sim {
                    timer: context::next_timer_id(),
                    deadline_ns: match target {
                        Target::After(duration) => now.saturating_add(nanos(duration)),
                        Target::At(at) => at.ns,
                    },
                    duration_ns: target.duration_ns(),
                    key: None,
                }
            }
        });
        Sleep { inner }
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
            SleepInner::Live(sleep) => {
                std::task::ready!(sleep.as_mut().poll(cx));
            }
            SleepInner::Record {
                sleep,
                timer,
                deadline_ns,
                duration_ns,
            } => {
                std::task::ready!(sleep.as_mut().poll(cx));
                let event = fired(*timer, *deadline_ns, *duration_ns);
                context::with(|ctx| {
                    if let Ctx::Record(recording) = ctx {
                        recording.record(event);
                    }
                });
            }
            SleepInner::Replay { timer, target } => {
                let call = Call::Timer {
                    timer: *timer,
                    target: *target,
                };
                let ready = crate::replay::poll(cx, &call);
                std::task::ready!(ready);
            }
            SleepInner::Sim {
                timer,
                deadline_ns,
                duration_ns,
                key,
            } => {
                let (timer, deadline_ns, duration_ns) = (*timer, *deadline_ns, *duration_ns);
                let host = context::with(|ctx| match ctx {
                    Ctx::Sim(host) => Some(std::rc::Rc::clone(host)),
                    _ => None,
                });
                // Polled outside its simulation (it ended): never fires.
                let Some(host) = host else {
                    return Poll::Pending;
                };
                std::task::ready!(crate::sim::poll_timer(cx, &host, deadline_ns, key));
                host.record(fired(timer, deadline_ns, duration_ns));
            }
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
