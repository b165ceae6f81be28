//! Which logical task is running: a tokio task-local carries it (task-
//! locals work on any executor, so every backend shares them), and tasks
//! library code starts with `tokio::spawn` are adopted at their first
//! intercepted call.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deja_recorder::TaskId;

/// The task id given to intercepted calls made outside any task (from a
/// thread the service started, or `spawn_blocking`): outside the
/// guarantee, but still recorded so the log shows them.
pub(crate) const TASK_OUTSIDE: TaskId = TaskId::OUTSIDE;

/// Per-task state that must evolve identically in record and replay.
/// Atomic because an adopted task's state is shared through a table (a
/// multi-worker recording may poll it on any thread); `Relaxed` is
/// enough: one task is polled by one thread at a time.
#[derive(Debug)]
pub(crate) struct TaskCtx {
    /// The logical id. Atomic because replay gives an adopted task a
    /// provisional id first and its real one at its first call (see
    /// `Replay::resolve`).
    id: AtomicU64,
    /// Timer ids are per task: the k-th timer a task creates has id k in
    /// every run of the same code.
    next_timer: AtomicU64,
    /// Likewise for derived RNGs.
    next_rng: AtomicU64,
    /// splitmix64 state for `select!` start branches.
    select_state: AtomicU64,
}

impl TaskCtx {
    /// Task `id` of a run with this root seed: its counters start at zero
    /// and its `select!` sequence is derived from (root seed, id).
    pub(crate) fn new(root_seed: &[u8; 32], id: TaskId) -> TaskCtx {
        TaskCtx {
            id: AtomicU64::new(id.0),
            next_timer: AtomicU64::new(0),
            next_rng: AtomicU64::new(0),
            select_state: AtomicU64::new(super::select_seed(root_seed, id)),
        }
    }

    pub(crate) fn id(&self) -> TaskId {
        TaskId(self.id.load(Ordering::Relaxed))
    }

    /// Replay: a provisional task learns its real id (before its first
    /// call is matched, so nothing has used the old one yet).
    pub(crate) fn set_id(&self, root_seed: &[u8; 32], id: TaskId) {
        self.id.store(id.0, Ordering::Relaxed);
        self.select_state
            .store(super::select_seed(root_seed, id), Ordering::Relaxed);
    }

    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed)
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

/// Run `f` with the running logical task: a deja task, or a task that
/// library code started with `tokio::spawn`, adopted at its first
/// intercepted call (see [`Adoptions`]). `None` outside any task (tokio's
/// own driver, a thread the service started, a live runtime).
pub(crate) fn with_task<R>(f: impl FnOnce(&TaskCtx) -> R) -> Option<R> {
    if TASK.try_with(|_| ()).is_ok() {
        return TASK.try_with(f).ok();
    }
    let adopted = adopted_task()?;
    Some(f(&adopted))
}

/// The running tokio task's adopted context, adopting it now if this is
/// its first intercepted call.
fn adopted_task() -> Option<Arc<TaskCtx>> {
    let tokio_id = tokio::task::try_id()?;
    super::try_with(|backend| backend.adopt(tokio_id)).flatten()
}

/// The logical task running now, if any.
pub(crate) fn current_task() -> Option<TaskId> {
    with_task(TaskCtx::id)
}

/// The logical task running now ([`TASK_OUTSIDE`] outside any task).
pub(crate) fn task_id() -> TaskId {
    current_task().unwrap_or(TASK_OUTSIDE)
}

/// A new timer id for the running task.
pub(crate) fn next_timer_id() -> u64 {
    with_task(|task| TaskCtx::bump(&task.next_timer)).unwrap_or(0)
}

/// The running task and the index of its next derived RNG.
pub(crate) fn next_rng_index() -> (TaskId, u64) {
    with_task(|task| (task.id(), TaskCtx::bump(&task.next_rng))).unwrap_or((TASK_OUTSIDE, 0))
}

/// The next draw of the running task's `select!` sequence; `None` outside
/// a deja task.
pub(crate) fn next_select_draw() -> Option<u64> {
    with_task(|task| {
        let state = task
            .select_state
            .fetch_add(SPLITMIX_GAMMA, Ordering::Relaxed);
        splitmix64_mix(state.wrapping_add(SPLITMIX_GAMMA))
    })
}

const SPLITMIX_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64: a tiny, well-mixed generator for `select!` starts, where a
/// ChaCha draw per poll would be wasted work.
pub(crate) fn splitmix64(state: &Cell<u64>) -> u64 {
    let next = state.get().wrapping_add(SPLITMIX_GAMMA);
    state.set(next);
    splitmix64_mix(next)
}

fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Most adopted tasks remembered at once. tokio (without
/// `--cfg tokio_unstable`) does not say when a task ends, so the table
/// forgets the oldest adoption past this many: 64 Ki tasks at ~100 bytes
/// is 6 MiB. A task forgotten while still alive is adopted again, under a
/// new id, at its next intercepted call; record and replay forget in the
/// same order, so the replay still matches.
const ADOPTED_TASKS_MAX: usize = 1 << 16;

type FixedState = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The tasks library code started with `tokio::spawn`, by tokio id. One
/// table per recording or replay. Keyed with a fixed hasher: a
/// `RandomState` would draw entropy, and so shift the keys of every std
/// `HashMap` the service makes afterwards on this thread.
#[derive(Debug, Default)]
pub(crate) struct Adoptions {
    table: Mutex<AdoptionTable>,
    /// tokio ids up to this one are not the service's tasks: a
    /// multi-thread runtime runs each worker's loop as a blocking task,
    /// made when the runtime was built (see [`Adoptions::set_floor`]).
    floor: AtomicU64,
}

#[derive(Debug, Default)]
struct AdoptionTable {
    /// `None`: not one of the service's tasks (below the floor).
    by_tokio_id: HashMap<tokio::task::Id, Option<Arc<TaskCtx>>, FixedState>,
    /// Adoption order, for forgetting the oldest.
    order: VecDeque<tokio::task::Id>,
}

impl Adoptions {
    /// The task's context, or `adopt()`'s for a task seen for the first
    /// time. `adopt` runs without the table's lock: it records (or, in
    /// replay, claims) the adoption, which may stop at a breakpoint whose
    /// callback asks who is running.
    pub(crate) fn get_or_adopt(
        &self,
        tokio_id: tokio::task::Id,
        adopt: impl FnOnce() -> TaskCtx,
    ) -> Option<Arc<TaskCtx>> {
        if let Some(task) = self.lock().by_tokio_id.get(&tokio_id) {
            return task.clone();
        }
        let is_task = tokio_id_number(tokio_id) > self.floor.load(Ordering::Relaxed);
        let task = is_task.then(|| Arc::new(adopt()));
        let mut table = self.lock();
        if table.order.len() == ADOPTED_TASKS_MAX {
            let oldest = table.order.pop_front().expect("the table is full");
            table.by_tokio_id.remove(&oldest);
        }
        table.order.push_back(tokio_id);
        table.by_tokio_id.insert(tokio_id, task.clone());
        debug_assert_eq!(table.order.len(), table.by_tokio_id.len());
        task
    }

    /// Every tokio task made so far (ids up to `tokio_id`) is the
    /// runtime's own, not the service's.
    pub(crate) fn set_floor(&self, tokio_id: u64) {
        self.floor.store(tokio_id, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdoptionTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// tokio's id as a number, for the log (tokio offers only `Display`).
pub(crate) fn tokio_id_number(id: tokio::task::Id) -> u64 {
    id.to_string().parse().unwrap_or(0)
}
