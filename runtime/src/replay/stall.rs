//! Telling a stalled replay from a busy one.
//!
//! Replay runs on a tokio current-thread runtime whose clock is virtual,
//! so it never sleeps for time to pass: when it parks, it waits for a
//! wake-up from another thread (a `spawn_blocking` job, a thread the
//! service started) or for nothing at all. A watchdog thread tells the
//! two apart: parked for [`crate::STALL_WAIT_DEFAULT`] (`DEJA_STALL_MS`)
//! of real time means stalled, and it wakes the runtime's root future,
//! which reports the stall.

use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Shared between the replay thread's park hooks and the watchdog.
#[derive(Debug)]
pub(crate) struct StallWatch {
    state: Mutex<WatchState>,
    changed: Condvar,
    stall_wait: Duration,
}

#[derive(Debug, Default)]
struct WatchState {
    /// Since when the runtime has been parked; `None` while it runs.
    parked_since: Option<Instant>,
    /// The watchdog saw a park last the whole stall wait.
    stalled: bool,
    /// The replay is over: the watchdog exits.
    finished: bool,
    /// The root future's waker.
    waker: Option<Waker>,
}

impl StallWatch {
    /// A watch and its watchdog thread, which exits at [`StallWatch::finish`].
    pub(crate) fn start(stall_wait: Duration) -> Arc<StallWatch> {
        let watch = Arc::new(StallWatch {
            state: Mutex::default(),
            changed: Condvar::new(),
            stall_wait,
        });
        let watchdog = Arc::clone(&watch);
        let spawned = std::thread::Builder::new()
            .name("deja-replay-watchdog".into())
            .spawn(move || watchdog.run());
        if let Err(err) = spawned {
            // Without the thread a stall hangs instead of being reported;
            // the replay itself is unaffected.
            eprintln!("deja: warning: cannot start the replay watchdog ({err}): a stalled replay will hang");
        }
        watch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime is about to park.
    pub(crate) fn parked(&self) {
        let mut state = self.lock();
        // On the replay thread the clock is virtual: read the real one.
        state.parked_since = Some(crate::intercept::internal(Instant::now));
        self.changed.notify_one();
    }

    /// The runtime woke up.
    pub(crate) fn unparked(&self) {
        self.lock().parked_since = None;
    }

    /// The root future is waiting with `waker`.
    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut state = self.lock();
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.waker = Some(waker.clone());
        }
    }

    /// True once if the watchdog found the runtime stalled.
    pub(crate) fn take_stalled(&self) -> bool {
        std::mem::take(&mut self.lock().stalled)
    }

    /// The replay is over: let the watchdog go.
    pub(crate) fn finish(&self) {
        self.lock().finished = true;
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut state = self.lock();
        while !state.finished {
            let Some(since) = state.parked_since else {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let parked_for = since.elapsed();
            if parked_for < self.stall_wait {
                state = self
                    .changed
                    .wait_timeout(state, self.stall_wait - parked_for)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            state.stalled = true;
            state.parked_since = None;
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}
