//! Which mode this thread runs in, and which logical task is running.
//!
//! Every intercepted call starts here: a thread-local says whether the
//! thread belongs to a recording runtime, a replay executor, or neither
//! (live: plain tokio), and a tokio task-local carries the logical task.
//! Task-locals work on any executor, so record and replay share them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use deja_recorder::TaskId;

use crate::record::Recording;
use crate::replay::Replay;
use crate::sim::Host;

/// The task id given to intercepted calls made outside any deja task
/// (from a `tokio::spawn`ed task or a foreign thread): outside the
/// guarantee, but still recorded so the log shows them.
pub(crate) const TASK_OUTSIDE: TaskId = TaskId(u64::MAX);

/// The mode of the current thread.
#[derive(Clone, Default)]
pub(crate) enum Ctx {
    /// Plain tokio: nothing is intercepted.
    #[default]
    Live,
    /// A recording runtime's thread.
    Record(Arc<Recording>),
    /// The replay executor's thread.
    Replay(Rc<Replay>),
    /// A simulated host's task, on the simulation's thread.
    Sim(Rc<Host>),
}

thread_local! {
    static CONTEXT: RefCell<Ctx> = const { RefCell::new(Ctx::Live) };
}

/// Run `f` with the current thread's mode.
pub(crate) fn with<R>(f: impl FnOnce(&Ctx) -> R) -> R {
    CONTEXT.with(|ctx| f(&ctx.borrow()))
}

/// The current thread's mode (a cheap clone).
pub(crate) fn current() -> Ctx {
    with(Ctx::clone)
}

/// Make this thread run in `ctx` until the guard drops.
pub(crate) fn enter(ctx: Ctx) -> EnterGuard {
    let previous = CONTEXT.with(|slot| slot.replace(ctx));
    EnterGuard { previous }
}

/// Restores the thread's previous mode.
pub(crate) struct EnterGuard {
    previous: Ctx,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        // Dropping the replaced context may run drops that look at the
        // thread's mode: take it out first, then drop it.
        let replaced = CONTEXT.with(|slot| slot.replace(previous));
        drop(replaced);
    }
}

/// Per-task state that must evolve identically in record and replay.
#[derive(Debug)]
pub(crate) struct TaskCtx {
    pub(crate) id: TaskId,
    /// Timer ids are per task: the k-th timer a task creates has id k in
    /// every run of the same code.
    next_timer: Cell<u64>,
    /// Likewise for derived RNGs.
    next_rng: Cell<u64>,
    /// splitmix64 state for `select!` start branches.
    select_state: Cell<u64>,
}

impl TaskCtx {
    /// Task `id` of a run with this root seed: its counters start at zero
    /// and its `select!` sequence is derived from (root seed, id).
    pub(crate) fn new(root_seed: &[u8; 32], id: TaskId) -> TaskCtx {
        TaskCtx {
            id,
            next_timer: Cell::new(0),
            next_rng: Cell::new(0),
            select_state: Cell::new(crate::rand::select_seed(root_seed, id)),
        }
    }

    fn bump(counter: &Cell<u64>) -> u64 {
        let value = counter.get();
        counter.set(value.wrapping_add(1));
        value
    }
}

tokio::task_local! {
    static TASK: TaskCtx;
}

/// Run `future` as logical task `ctx`.
pub(crate) fn scope<F: std::future::Future>(
    ctx: TaskCtx,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<TaskCtx, F> {
    TASK.scope(ctx, future)
}

/// The logical task running now.
pub(crate) fn task_id() -> TaskId {
    TASK.try_with(|task| task.id).unwrap_or(TASK_OUTSIDE)
}

/// A new timer id for the running task.
pub(crate) fn next_timer_id() -> u64 {
    TASK.try_with(|task| TaskCtx::bump(&task.next_timer))
        .unwrap_or(0)
}

/// The running task and the index of its next derived RNG.
pub(crate) fn next_rng_index() -> (TaskId, u64) {
    TASK.try_with(|task| (task.id, TaskCtx::bump(&task.next_rng)))
        .unwrap_or((TASK_OUTSIDE, 0))
}

/// The next draw of the running task's `select!` sequence; `None` outside
/// a deja task.
pub(crate) fn next_select_draw() -> Option<u64> {
    TASK.try_with(|task| splitmix64(&task.select_state)).ok()
}

/// splitmix64: a tiny, well-mixed generator for `select!` starts, where a
/// ChaCha draw per poll would be wasted work.
pub(crate) fn splitmix64(state: &Cell<u64>) -> u64 {
    let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
    state.set(next);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
