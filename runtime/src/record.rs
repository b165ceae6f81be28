//! Record mode: real tokio underneath, every intercepted result appended
//! to the run's log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use deja_recorder::{ConnId, EventKind, Recorder, RecorderStats, TaskId, WriteError};

use crate::context;

/// A recording in progress: shared by every thread of the runtime.
#[derive(Debug)]
pub(crate) struct Recording {
    recorder: Recorder,
    origin: Instant,
    root_seed: [u8; 32],
    /// Task 0 is main; spawned tasks count from 1.
    next_task: AtomicU64,
    next_conn: AtomicU64,
    keep_write_bytes: bool,
}

impl Recording {
    pub(crate) fn new(
        recorder: Recorder,
        root_seed: [u8; 32],
        keep_write_bytes: bool,
    ) -> Recording {
        Recording {
            origin: recorder.origin(),
            recorder,
            root_seed,
            next_task: AtomicU64::new(1),
            next_conn: AtomicU64::new(0),
            keep_write_bytes,
        }
    }

    /// Record `kind` as done by the running task, now.
    pub(crate) fn record(&self, kind: EventKind) {
        self.recorder.record(context::task_id(), kind);
    }

    /// Record `kind` for an explicit task (drops of task wrappers).
    pub(crate) fn record_for(&self, task: TaskId, kind: EventKind) {
        self.recorder.record(task, kind);
    }

    /// Record a monotonic clock reading stamped with its own value.
    pub(crate) fn record_clock(&self) -> u64 {
        let ns = self.recorder.elapsed_ns();
        self.recorder
            .record_at(context::task_id(), ns, EventKind::ClockMono { ns });
        ns
    }

    pub(crate) fn origin(&self) -> Instant {
        self.origin
    }

    pub(crate) fn root_seed(&self) -> &[u8; 32] {
        &self.root_seed
    }

    pub(crate) fn next_task(&self) -> TaskId {
        TaskId(self.next_task.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn next_conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn keep_write_bytes(&self) -> bool {
        self.keep_write_bytes
    }

    /// Flight mode: freeze the ring into a kept run directory.
    pub(crate) fn keep(&self, reason: &str) -> Result<std::path::PathBuf, WriteError> {
        self.recorder.keep(reason)
    }

    pub(crate) fn close(&self) -> Result<RecorderStats, WriteError> {
        self.recorder.close()
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        self.recorder.dir()
    }
}
