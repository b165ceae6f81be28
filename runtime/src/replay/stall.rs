//! Telling a stalled replay from a busy one.
//!
//! Replay runs on a tokio current-thread runtime whose clock is virtual,
//! so it never sleeps for time to pass: when it parks, it waits for a
//! wake-up from another thread (a `spawn_blocking` job, a thread the
//! service started) or for nothing at all. A library timer due after the
//! event the log expects next makes tokio park with a real timeout and
//! wake again, over and over, with nothing released in between. So the
//! watchdog thread measures from the first park since the replay last
//! released an event: parked again after [`crate::STALL_WAIT_DEFAULT`]
//! (`DEJA_STALL_MS`) of real time without progress means stalled, and it
//! wakes the runtime's root future, which reports the stall.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Shared between the replay thread and the watchdog.
#[derive(Debug)]
pub(crate) struct StallWatch {
    state: Mutex<WatchState>,
    changed: Condvar,
    stall_wait: Duration,
    /// Events released so far (bumped without the lock: once per event).
    progress: AtomicU64,
}

#[derive(Debug, Default)]
struct WatchState {
    /// The runtime is parked now.
    parked: bool,
    /// The first park since the last progress: the progress count then,
    /// and when (real time).
    idle: Option<(u64, Instant)>,
    /// The watchdog found the replay stalled.
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
            progress: AtomicU64::new(0),
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

    /// The replay released an event.
    pub(crate) fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// The runtime is about to park.
    pub(crate) fn parked(&self) {
        let progress = self.progress.load(Ordering::Relaxed);
        let mut state = self.lock();
        state.parked = true;
        // A watchdog already timing an idle spell wakes at its deadline and
        // measures again from `idle`, which is updated here: only one that
        // waits for a park needs waking (a replay with driver turns parks
        // once a turn, and a wake-up per park cost a context switch each).
        let watching = state.idle.is_some();
        if state.idle.is_none_or(|(at, _)| at != progress) {
            // On the replay thread the clock is virtual: read the real one.
            state.idle = Some((progress, crate::backend::internal(Instant::now)));
        }
        if !watching {
            self.changed.notify_one();
        }
    }

    /// The runtime woke up.
    pub(crate) fn unparked(&self) {
        self.lock().parked = false;
    }

    /// The root future is waiting with `waker`.
    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut state = self.lock();
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.waker = Some(waker.clone());
        }
    }

    /// True once if the watchdog found the replay stalled.
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
            let wait = match state.idle {
                Some((at, _)) if at != self.progress.load(Ordering::Relaxed) => {
                    state.idle = None;
                    None
                }
                Some((_, since)) if state.parked => {
                    let idle_for = since.elapsed();
                    if idle_for >= self.stall_wait {
                        state.stalled = true;
                        state.idle = None;
                        if let Some(waker) = state.waker.take() {
                            waker.wake();
                        }
                        continue;
                    }
                    Some(self.stall_wait - idle_for)
                }
                // Running: look again when it parks, or a stall wait later.
                Some(_) => Some(self.stall_wait),
                None => None,
            };
            state = match wait {
                Some(wait) => {
                    self.changed
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}
