//! The simulation's executor: one thread, one FIFO run queue.
//!
//! Tasks run in the order they are woken, and every wake-up comes from the
//! simulated world (a packet, a timer on the agenda) or from the tasks
//! themselves (channels, join handles), so the same seed gives the same
//! schedule.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};

type BoxedTask = Pin<Box<dyn Future<Output = ()>>>;

/// Identifies one spawned task; the generation tells a reused slot apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskKey {
    slot: usize,
    generation: u64,
}

struct Slot {
    generation: u64,
    /// `None` while the task is being polled, or once it finished.
    future: Option<BoxedTask>,
    /// Set while the task is polled: it aborted itself or was aborted.
    cancel_after_poll: bool,
    waker: Option<Arc<TaskWaker>>,
}

/// Wake-ups, from this thread or any other.
#[derive(Default)]
struct ReadyQueue {
    queue: Mutex<Queue>,
    signal: Condvar,
}

#[derive(Default)]
struct Queue {
    keys: VecDeque<TaskKey>,
    /// The executor waits on `signal`: only then does a wake-up notify it
    /// (a notify is a futex syscall, and almost every wake-up comes from
    /// the executor's own thread while it runs).
    sleeping: bool,
}

struct TaskWaker {
    key: TaskKey,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let mut queue = self.ready.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.keys.push_back(self.key);
            if queue.sleeping {
                self.ready.signal.notify_one();
            }
        }
    }
}

/// The executor's tasks and run queue.
pub(crate) struct Executor {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    ready: Arc<ReadyQueue>,
}

impl Executor {
    pub(crate) fn new() -> Executor {
        Executor {
            slots: RefCell::default(),
            free: RefCell::default(),
            ready: Arc::default(),
        }
    }

    /// Add a task; it runs when the loop gets to it.
    pub(crate) fn spawn(&self, future: BoxedTask) -> TaskKey {
        let mut slots = self.slots.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                slots.push(Slot {
                    generation: 0,
                    future: None,
                    cancel_after_poll: false,
                    waker: None,
                });
                slots.len() - 1
            }
        };
        let entry = &mut slots[slot];
        entry.generation += 1;
        let key = TaskKey {
            slot,
            generation: entry.generation,
        };
        let waker = Arc::new(TaskWaker {
            key,
            queued: AtomicBool::new(false),
            ready: Arc::clone(&self.ready),
        });
        waker.wake_by_ref();
        entry.waker = Some(waker);
        entry.future = Some(future);
        entry.cancel_after_poll = false;
        key
    }

    /// Drop a task's future (its drops run now, or after its current poll).
    pub(crate) fn abort(&self, key: TaskKey) {
        let future = {
            let mut slots = self.slots.borrow_mut();
            let Some(entry) = slots.get_mut(key.slot) else {
                return;
            };
            if entry.generation != key.generation {
                return;
            }
            match entry.future.take() {
                Some(future) => {
                    entry.waker = None;
                    self.free.borrow_mut().push(key.slot);
                    Some(future)
                }
                None => {
                    entry.cancel_after_poll = true;
                    None
                }
            }
        };
        drop(future); // outside the borrow: drops may spawn or abort
    }

    pub(crate) fn pop_ready(&self) -> Option<TaskKey> {
        self.ready
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .pop_front()
    }

    pub(crate) fn poll_task(&self, key: TaskKey) {
        let (mut future, waker) = {
            let mut slots = self.slots.borrow_mut();
            let entry = &mut slots[key.slot];
            if entry.generation != key.generation {
                return;
            }
            let (Some(future), Some(waker)) = (entry.future.take(), entry.waker.clone()) else {
                return;
            };
            (future, waker)
        };
        waker.queued.store(false, Ordering::Release);
        let task_waker = Waker::from(Arc::clone(&waker));
        let mut cx = Context::from_waker(&task_waker);
        // Task wrappers catch their own panics; this one is a backstop so
        // a panicking drop inside a poll cannot take the executor down.
        let done = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            future.as_mut().poll(&mut cx)
        })) {
            Ok(Poll::Ready(())) | Err(_) => true,
            Ok(Poll::Pending) => false,
        };
        let mut slots = self.slots.borrow_mut();
        let entry = &mut slots[key.slot];
        if done || entry.cancel_after_poll {
            entry.waker = None;
            entry.cancel_after_poll = false;
            self.free.borrow_mut().push(key.slot);
            drop(slots);
            drop(future);
        } else {
            entry.future = Some(future);
        }
    }

    /// True while the task has not finished or been aborted.
    pub(crate) fn is_live(&self, key: TaskKey) -> bool {
        let slots = self.slots.borrow();
        slots.get(key.slot).is_some_and(|entry| {
            entry.generation == key.generation && (entry.future.is_some() || entry.waker.is_some())
        })
    }

    /// Drop every task (after the replay stopped), drops included.
    pub(crate) fn shutdown(&self) {
        // Drops may spawn tasks whose drops spawn more: bounded rounds.
        const SHUTDOWN_ROUNDS_MAX: usize = 16;
        for _ in 0..SHUTDOWN_ROUNDS_MAX {
            let futures: Vec<BoxedTask> = self
                .slots
                .borrow_mut()
                .iter_mut()
                .filter_map(|entry| {
                    entry.waker = None;
                    entry.future.take()
                })
                .collect();
            if futures.is_empty() {
                break;
            }
            drop(futures); // may spawn more; loop until none are left
        }
        self.ready
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .clear();
    }
}
