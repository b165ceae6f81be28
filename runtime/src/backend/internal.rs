//! What a service thread is doing besides the service's work: deja's own
//! work (the clock and entropy it reads are real and unlogged, the sockets
//! it connects are not foreign), or building a runtime.

use std::cell::Cell;

thread_local! {
    /// Set while deja's own code runs on this thread (and while an
    /// interposer handles a call): readings made then are real and
    /// unlogged. Const-initialised, no destructor: usable at any time in
    /// the thread's life.
    static INTERNAL: Cell<bool> = const { Cell::new(false) };
}

/// True while deja's own work runs on this thread.
pub(crate) fn is_internal() -> bool {
    INTERNAL.with(Cell::get)
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

    /// The run's origin, while a runtime is built on this thread.
    pub(crate) fn origin() -> Option<i64> {
        BUILD_ORIGIN.with(Cell::get)
    }
}

impl Drop for RuntimeBuild {
    fn drop(&mut self) {
        BUILD_ORIGIN.with(|clock| clock.set(self.previous));
    }
}
