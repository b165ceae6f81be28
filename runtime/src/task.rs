//! Tasks: [`spawn`] with logical ids that replay reproduces,
//! and [`JoinHandle`].

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use deja_recorder::{TaskId, TaskOutcome};

use crate::backend::{self, OwnTask, TaskCtx};

/// Spawn a task, like `tokio::spawn`.
///
/// In record and replay the task gets a logical id at its `Spawn` event,
/// so replay gives every task the same id and order as the recording.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // Held, not borrowed from the thread: a simulated host's executor
    // may look at the thread's backend while it takes the task.
    let tracked = backend::current().and_then(|backend| {
        let child = backend.spawn()?;
        let root_seed = backend.root_seed()?;
        Some((backend, child, root_seed))
    });
    let Some((backend, child, root_seed)) = tracked else {
        // Live: tokio's task, untracked.
        return JoinHandle {
            inner: Inner::Tokio(tokio::spawn(future)),
        };
    };
    let body = backend::scope(TaskCtx::new(&root_seed, child), Tracked::new(child, future));
    match backend.own_executor() {
        Some(executor) => spawn_own(executor, body),
        None => JoinHandle {
            inner: Inner::Tokio(tokio::spawn(body)),
        },
    }
}

/// A task on its backend's own executor (a simulated host's); its output
/// reaches the handle through a shared slot.
fn spawn_own<F>(executor: &dyn backend::OwnExecutor, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let state = Arc::new(Mutex::new(JoinState::default()));
    let body = OwnTaskBody {
        future,
        state: Arc::clone(&state),
    };
    match executor.spawn_own(Box::pin(body)) {
        Some(task) => JoinHandle {
            inner: Inner::Own { state, task },
        },
        // The executor is gone (its simulation ended): the task never runs.
        None => {
            lock(&state).finish(Err(JoinError::cancelled()));
            JoinHandle {
                inner: Inner::Done { state },
            }
        }
    }
}

/// Record an application annotation (a request id, an order id) that
/// breakpoints and the timeline can refer to. Values are cut to
/// [`MARK_VALUE_BYTES_MAX`]. In replay, a mark with another value than the
/// recording's is a divergence.
pub fn mark(name: &str, value: impl AsRef<[u8]>) {
    let value = value.as_ref();
    let value = &value[..value.len().min(MARK_VALUE_BYTES_MAX)];
    let name = &name[..floor_char_boundary(name, MARK_NAME_BYTES_MAX)];
    backend::with(|backend| backend.mark(name, value));
}

/// End the scope of mark `name` in the running task: breakpoints with a
/// `mark=` term stop matching its later events (tasks it spawned keep the
/// scope they inherited). A connection task that marks each request ends
/// the mark when the request is answered, so `mark=req:42` stops at that
/// request's events and not at the next request's.
///
/// ```
/// # let mut rt = deja::Builder::new().mode(deja::Mode::Live).build().unwrap();
/// # rt.block_on(async {
/// deja::mark("req", "42");
/// // ... answer request 42 ...
/// deja::mark_end("req");
/// # }).unwrap();
/// ```
pub fn mark_end(name: &str) {
    let name = &name[..floor_char_boundary(name, MARK_NAME_BYTES_MAX)];
    backend::with(|backend| backend.mark_end(name));
}

/// [`mark`] now and [`mark_end`] when the returned guard drops: a mark
/// whose scope is a block.
///
/// ```
/// # let mut rt = deja::Builder::new().mode(deja::Mode::Live).build().unwrap();
/// # rt.block_on(async {
/// {
///     let _scope = deja::mark_scope("order", "order-42");
///     // events here are in the scope of order-42
/// }
/// // and these are not
/// # }).unwrap();
/// ```
pub fn mark_scope(name: &str, value: impl AsRef<[u8]>) -> MarkScope {
    mark(name, value);
    MarkScope {
        name: name.to_string(),
    }
}

/// The guard of [`mark_scope`]: ends the mark's scope when dropped.
#[derive(Debug)]
#[must_use = "the scope ends when this guard drops"]
pub struct MarkScope {
    name: String,
}

impl Drop for MarkScope {
    fn drop(&mut self) {
        mark_end(&self.name);
    }
}

/// Longest mark value kept: marks are labels, not payloads.
pub const MARK_VALUE_BYTES_MAX: usize = 4 << 10;
/// Longest mark name kept.
pub const MARK_NAME_BYTES_MAX: usize = 128;

fn floor_char_boundary(text: &str, max: usize) -> usize {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// A panic payload as text.
pub(crate) fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into())
}

/// Exit code of a process whose main panicked (Rust's).
pub(crate) const EXIT_PANIC: i32 = 101;

/// Polls a future, turning a panic into `Err(payload)`: a main that
/// panics still ends its log with an `Exit`, in every mode.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: the future is structurally pinned, never moved out.
        let future = unsafe { self.map_unchecked_mut(|this| &mut this.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Records how a task ends: `TaskEnd` on completion, panic or drop.
struct Tracked<F> {
    task: TaskId,
    future: F,
    ended: bool,
}

impl<F> Tracked<F> {
    fn new(task: TaskId, future: F) -> Tracked<F> {
        Tracked {
            task,
            future,
            ended: false,
        }
    }
}

fn record_end(task: TaskId, outcome: TaskOutcome) {
    backend::with(|backend| backend.task_end(task, outcome));
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is structurally pinned: never moved out of `self`.
        let this = unsafe { self.get_unchecked_mut() };
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(output)) => {
                this.ended = true;
                record_end(this.task, TaskOutcome::Completed);
                Poll::Ready(output)
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                this.ended = true;
                record_end(this.task, TaskOutcome::Panicked);
                std::panic::resume_unwind(payload)
            }
        }
    }
}

impl<F> Drop for Tracked<F> {
    fn drop(&mut self) {
        if !self.ended {
            record_end(self.task, TaskOutcome::Cancelled);
        }
    }
}

/// A task on its backend's own executor: runs the future and hands its
/// outcome to the handle.
struct OwnTaskBody<F: Future> {
    future: F,
    state: Arc<Mutex<JoinState<F::Output>>>,
}

impl<F: Future> Future for OwnTaskBody<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `future` is structurally pinned; `state` is never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        let result =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(output)) => Ok(output),
                Err(payload) => {
                    let message = panic_text(&*payload);
                    backend::with(|backend| {
                        if let Some(executor) = backend.own_executor() {
                            executor.task_panicked(message);
                        }
                    });
                    Err(JoinError::panicked(payload))
                }
            };
        lock(&this.state).finish(result);
        Poll::Ready(())
    }
}

impl<F: Future> Drop for OwnTaskBody<F> {
    fn drop(&mut self) {
        lock(&self.state).finish(Err(JoinError::cancelled()));
    }
}

struct JoinState<T> {
    result: Option<Result<T, JoinError>>,
    finished: bool,
    waker: Option<Waker>,
}

impl<T> Default for JoinState<T> {
    fn default() -> Self {
        JoinState {
            result: None,
            finished: false,
            waker: None,
        }
    }
}

impl<T> JoinState<T> {
    fn finish(&mut self, result: Result<T, JoinError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.result = Some(result);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// An owned permission to join a task, like `tokio::task::JoinHandle`.
/// Dropping it detaches the task.
pub struct JoinHandle<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Tokio(tokio::task::JoinHandle<T>),
    /// On its backend's own executor.
    Own {
        state: Arc<Mutex<JoinState<T>>>,
        task: Box<dyn OwnTask>,
    },
    /// A task that never started (spawned after its simulation ended).
    Done {
        state: Arc<Mutex<JoinState<T>>>,
    },
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").finish_non_exhaustive()
    }
}

impl<T> JoinHandle<T> {
    /// Cancel the task: its future is dropped at its next await point.
    pub fn abort(&self) {
        match &self.inner {
            Inner::Tokio(handle) => handle.abort(),
            Inner::Own { task, .. } => task.abort(),
            Inner::Done { .. } => {}
        }
    }

    /// True once the task has finished.
    pub fn is_finished(&self) -> bool {
        match &self.inner {
            Inner::Tokio(handle) => handle.is_finished(),
            Inner::Own { state, .. } | Inner::Done { state } => lock(state).finished,
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Inner::Tokio(handle) => Pin::new(handle).poll(cx).map_err(|err| {
                if err.is_panic() {
                    JoinError::panicked(err.into_panic())
                } else {
                    JoinError::cancelled()
                }
            }),
            Inner::Own { state, .. } | Inner::Done { state } => {
                let mut state = lock(state);
                match state.result.take() {
                    Some(result) => Poll::Ready(result),
                    None if state.finished => Poll::Ready(Err(JoinError::cancelled())),
                    None => {
                        state.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}

/// A task failed to complete: it panicked or was cancelled.
pub struct JoinError {
    panic: Option<Box<dyn Any + Send + 'static>>,
}

impl JoinError {
    fn panicked(payload: Box<dyn Any + Send + 'static>) -> JoinError {
        JoinError {
            panic: Some(payload),
        }
    }

    fn cancelled() -> JoinError {
        JoinError { panic: None }
    }

    /// True if the task panicked.
    pub fn is_panic(&self) -> bool {
        self.panic.is_some()
    }

    /// True if the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.panic.is_none()
    }

    /// The panic's payload; panics if the task was cancelled instead.
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.panic
            .expect("the task was cancelled, it did not panic")
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinError::{}",
            if self.is_panic() {
                "Panic(..)"
            } else {
                "Cancelled"
            }
        )
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.panic {
            Some(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".into());
                write!(f, "task panicked: {message}")
            }
            None => f.write_str("task was cancelled"),
        }
    }
}

impl std::error::Error for JoinError {}
