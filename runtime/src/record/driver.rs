//! The driver's turns in a recording on one thread (see
//! `intercept/driver.rs`): the real `epoll_wait`, and the turn logged at
//! the driver's next monotonic clock reading, with it (the reading tokio
//! fires timers by), so replay moves its clock to exactly that reading.

use std::cell::Cell;

use super::Recording;
use crate::backend;

thread_local! {
    /// A turn not logged yet. Const, no destructor: the interposers read it.
    static PENDING_TURN: Cell<Option<u32>> = const { Cell::new(None) };
}

impl Recording {
    /// The driver waits for events: log the previous turn if no clock
    /// reading took it, wait for real, and keep this turn for the next
    /// reading. `None` when turns are not logged (several workers).
    pub(super) fn driver_wait(
        &self,
        wait: &mut dyn FnMut(i32) -> i32,
        timeout_ms: i32,
    ) -> Option<i32> {
        if !self.logs_driver_turns() {
            return None;
        }
        if let Some(ready) = PENDING_TURN.with(Cell::take) {
            // The driver turned and read no clock since: the turn's time
            // is now.
            let now = deja_recorder::clock::mono_ns();
            backend::internal(|| self.driver_turn(ready, now));
        }
        let ready = wait(timeout_ms);
        if ready >= 0 {
            PENDING_TURN.with(|pending| pending.set(Some(ready.unsigned_abs())));
        }
        Some(ready)
    }

    /// A monotonic reading outside any task: if it is the driver's first
    /// since a turn, the turn is logged with it. `None`: not the driver's.
    pub(super) fn driver_clock(&self, real: &mut dyn FnMut() -> i64) -> Option<i64> {
        let ready = PENDING_TURN.with(Cell::take)?;
        let value = real();
        self.driver_turn(ready, value.max(0).unsigned_abs());
        Some(value)
    }
}
