//! Record mode: real tokio underneath, every intercepted result appended
//! to the run's log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use deja_recorder::{
    ConnId, Datagram, EventKind, ReadOutcome, Recorded, Recorder, RecorderStats, TaskId,
    WriteError, Written,
};

use crate::context;
use crate::redact::{Direction, Redaction};

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
    /// The service's redactors; `None` when it has none.
    redaction: Option<Redaction>,
}

impl Recording {
    pub(crate) fn new(
        recorder: Recorder,
        root_seed: [u8; 32],
        keep_write_bytes: bool,
        redaction: Option<Redaction>,
    ) -> Recording {
        Recording {
            redaction,
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

    /// Record the bytes a TCP read returned, masked by the redactors.
    pub(crate) fn record_read(&self, conn: ConnId, peer: SocketAddr, bytes: &[u8]) {
        let (logged, ranges) = self.redacted(Direction::TcpRead, conn, peer, bytes);
        let recorded = self.recorder.record(
            context::task_id(),
            EventKind::TcpRead {
                conn,
                result: ReadOutcome::Data(logged),
            },
        );
        self.mark_redacted(recorded, ranges);
    }

    /// Record a datagram received, masked by the redactors.
    pub(crate) fn record_datagram(&self, socket: ConnId, peer: SocketAddr, bytes: &[u8]) {
        let (logged, ranges) = self.redacted(Direction::UdpRecv, socket, peer, bytes);
        let recorded = self.recorder.record(
            context::task_id(),
            EventKind::UdpRecv {
                socket,
                result: Ok(Datagram {
                    peer,
                    bytes: logged,
                }),
            },
        );
        self.mark_redacted(recorded, ranges);
    }

    /// Record a write (TCP or UDP) that accepted `accepted`: `make` builds
    /// the event from what is logged of it, hashed (and kept, if asked)
    /// after the redactors masked it.
    pub(crate) fn record_write(
        &self,
        direction: Direction,
        conn: ConnId,
        peer: SocketAddr,
        accepted: &[u8],
        make: impl FnOnce(Written) -> EventKind,
    ) {
        let Some(redaction) = &self.redaction else {
            self.record(make(Written::of(accepted, self.keep_write_bytes)));
            return;
        };
        let mut logged = accepted.to_vec();
        let ranges = redaction.mask(direction, conn, peer, accepted, &mut logged);
        redaction.advance(direction, conn, accepted);
        let recorded = self.recorder.record(
            context::task_id(),
            make(Written::of(&logged, self.keep_write_bytes)),
        );
        self.mark_redacted(recorded, ranges);
    }

    /// The copy of `bytes` to log and its masked ranges.
    fn redacted(
        &self,
        direction: Direction,
        conn: ConnId,
        peer: SocketAddr,
        bytes: &[u8],
    ) -> (Vec<u8>, Vec<(u32, u32)>) {
        let mut logged = bytes.to_vec();
        let Some(redaction) = &self.redaction else {
            return (logged, Vec::new());
        };
        let ranges = redaction.mask(direction, conn, peer, bytes, &mut logged);
        redaction.advance(direction, conn, bytes);
        (logged, ranges)
    }

    /// Follow a redacted event with its marker (none if the event itself
    /// was dropped: the gap after it says so).
    fn mark_redacted(&self, recorded: Recorded, ranges: Vec<(u32, u32)>) {
        if let (Recorded::Queued(seq_of), false) = (recorded, ranges.is_empty()) {
            self.record(EventKind::Redacted { seq_of, ranges });
        }
    }

    /// A stream closed: its redaction context goes.
    pub(crate) fn forget_conn(&self, conn: ConnId) {
        if let Some(redaction) = &self.redaction {
            redaction.forget(conn);
        }
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
