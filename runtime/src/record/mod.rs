//! Record mode: real tokio underneath, every intercepted result appended
//! to the run's log. `ops.rs` is the mode's side of every operation
//! (`crate::backend::Backend`), `net.rs` its sockets, `driver.rs` the
//! driver's turns.

mod driver;
mod net;
mod ops;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use deja_recorder::{
    ConnId, Datagram, EventKind, ReadOutcome, Recorded, Recorder, RecorderStats, TaskId,
    WriteError, Written,
};

use crate::backend::{self, Adoptions, Clock, TaskCtx, TASK_OUTSIDE};
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
    /// Tasks library code started with `tokio::spawn`.
    adoptions: Adoptions,
    /// Intercepted calls made outside any task (warned about once).
    outside_calls: AtomicU64,
    /// Connections tasks made with sockets of their own (warned about once).
    foreign_sockets: AtomicU64,
    /// Main's `Exit` is logged: the runtime is shutting down.
    exited: std::sync::atomic::AtomicBool,
    /// The runtime runs every task on one thread: its driver's turns are
    /// logged (a multi-thread runtime's are not replayable as one order).
    log_turns: std::sync::atomic::AtomicBool,
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
            adoptions: Adoptions::default(),
            outside_calls: AtomicU64::new(0),
            foreign_sockets: AtomicU64::new(0),
            exited: std::sync::atomic::AtomicBool::new(false),
            log_turns: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Log the driver's turns from now on (a runtime on one thread).
    pub(crate) fn log_driver_turns(&self) {
        self.log_turns.store(true, Ordering::Relaxed);
    }

    /// Whether the driver's turns are logged.
    pub(crate) fn logs_driver_turns(&self) -> bool {
        self.log_turns.load(Ordering::Relaxed) && !self.exited.load(Ordering::Relaxed)
    }

    /// The runtime's driver turned, `ready` sockets ready, and read the
    /// monotonic clock as `clock` (the C library's scale) right after (see
    /// `intercept/driver.rs`).
    pub(crate) fn driver_turn(&self, ready: u32, clock: u64) {
        let clock_ns = clock.saturating_sub(self.recorder.origin_ns());
        self.recorder
            .record(TASK_OUTSIDE, EventKind::DriverTurn { ready, clock_ns });
    }

    /// Record `kind` as done by the running task, now.
    pub(crate) fn record(&self, kind: EventKind) {
        let task = backend::task_id();
        if task == TASK_OUTSIDE {
            self.outside_call(&kind);
        }
        self.recorder.record(task, kind);
    }

    /// An intercepted call outside any task: replay can order it only
    /// by luck. Counted, and said once on stderr.
    fn outside_call(&self, kind: &EventKind) {
        // Sockets dropped while the runtime shuts down, after main's exit,
        // are nobody's task and nothing replay needs.
        if self.exited.load(Ordering::Relaxed) {
            return;
        }
        if self.outside_calls.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!(
                "deja: warning: {} was called outside any task (a thread the service started, or spawn_blocking); \
                 replay cannot order such calls: make them from a task",
                kind.name()
            );
        }
    }

    /// A task connected with a socket of its own (see
    /// `intercept/socket.rs`): logged as a mark, counted, said once.
    pub(crate) fn foreign_socket(&self, peer: &str) {
        self.record(EventKind::Mark {
            name: deja_recorder::FOREIGN_SOCKET_MARK.to_string(),
            value: peer.as_bytes().to_vec(),
        });
        if self.foreign_sockets.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!(
                "deja: warning: library code connected to {peer} with a socket of its own, not deja::net: \
                 nothing it receives is recorded, and replay cannot reproduce it (`deja stats` counts these); \
                 connect through deja::net (the README's porting guide shows how)"
            );
        }
    }

    /// The context of a task library code started with `tokio::spawn`,
    /// adopting it (a new logical id, and its `TaskAdopted` event) at its
    /// first intercepted call.
    pub(crate) fn adopt(&self, tokio_id: tokio::task::Id) -> Option<Arc<TaskCtx>> {
        self.adoptions.get_or_adopt(tokio_id, || {
            let child = self.next_task();
            self.recorder.record(
                child,
                EventKind::TaskAdopted {
                    tokio_id: backend::tokio_id_number(tokio_id),
                },
            );
            TaskCtx::new(&self.root_seed, child)
        })
    }

    /// Tasks made so far are the runtime's own (see [`Adoptions::set_floor`]).
    pub(crate) fn set_adoption_floor(&self, tokio_id: u64) {
        self.adoptions.set_floor(tokio_id);
    }

    /// A clock reading made by `task` through the C library (`std::time`,
    /// tokio, any crate): logged as it is. `real` is the reading,
    /// nanoseconds on the clock's own scale.
    pub(crate) fn record_libc_clock(&self, task: TaskId, clock: Clock, real: i64) {
        let kind = match clock {
            Clock::Mono => EventKind::LibClockMono {
                ns: (real as u64).saturating_sub(self.recorder.origin_ns()),
            },
            Clock::Wall => EventKind::LibClockWall { unix_ns: real },
        };
        self.recorder.record(task, kind);
    }

    /// Entropy drawn by `task` through the C library.
    pub(crate) fn record_libc_entropy(&self, task: TaskId, bytes: &[u8]) {
        self.recorder.record(
            task,
            EventKind::Entropy {
                bytes: bytes.to_vec(),
            },
        );
    }

    /// Record the bytes a TCP read returned, masked by the redactors.
    pub(crate) fn record_read(&self, conn: ConnId, peer: SocketAddr, bytes: &[u8]) {
        let (logged, ranges) = self.redacted(Direction::TcpRead, conn, peer, bytes);
        let recorded = self.recorder.record(
            backend::task_id(),
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
            backend::task_id(),
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
            backend::task_id(),
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
        if matches!(kind, EventKind::Exit { .. }) {
            self.exited.store(true, Ordering::Relaxed);
        }
        self.recorder.record(task, kind);
    }

    /// Record a monotonic clock reading stamped with its own value.
    pub(crate) fn record_clock(&self) -> u64 {
        let ns = self.recorder.elapsed_ns();
        self.recorder
            .record_at(backend::task_id(), ns, EventKind::ClockMono { ns });
        ns
    }

    /// The recording's origin on the real monotonic clock, nanoseconds.
    pub(crate) fn origin_ns(&self) -> u64 {
        self.recorder.origin_ns()
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
