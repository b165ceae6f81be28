//! One incarnation of a simulated host: its clocks, its ids and its log.
//!
//! A host's events are numbered and stamped exactly as a recording of the
//! same service would be (seq from 0, monotonic time since the host
//! started), so the log a simulation writes replays like a production one.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;

use deja_recorder::{ConnId, Event, EventKind, TaskId};
use xxhash_rust::xxh3::Xxh3;

use super::capture::{HostCapture, CHECKPOINT_EVENTS};
use crate::backend::{self, Adoptions, Clock, TaskCtx};
use crate::sim::executor::TaskKey;
use crate::sim::tokio_rt::HostRuntime;

/// One run of a host's entry function, from its start to its crash or the
/// end of the simulation.
#[derive(Debug)]
pub(crate) struct Host {
    /// Index of the host in the simulation (its address is derived from it).
    pub(crate) index: usize,
    pub(crate) name: String,
    /// 0 for the first start, then one more per restart.
    pub(crate) incarnation: u32,
    pub(crate) ip: IpAddr,
    /// Virtual time (simulation ns) at which this incarnation started.
    pub(crate) started_at: u64,
    /// Added to the simulation's wall clock for this host's readings.
    pub(crate) skew_ns: i64,
    /// This host's wall clock when the incarnation started.
    start_wall_ns: i64,
    pub(crate) root_seed: [u8; 32],
    next_task: Cell<u64>,
    next_conn: Cell<u64>,
    /// False once crashed or once the simulation ended: later events are
    /// not part of this incarnation's run.
    alive: Cell<bool>,
    log: RefCell<HostLog>,
    /// Executor keys of this incarnation's tasks (a crash aborts them).
    pub(crate) tasks: RefCell<Vec<TaskKey>>,
    /// The incarnation's tokio runtime (`None` before it is built and
    /// once the incarnation ended).
    pub(crate) runtime: RefCell<Option<HostRuntime>>,
    /// Tasks library code started with `tokio::spawn`.
    adoptions: Adoptions,
    /// One of the host's deja tasks ran since the world last looked.
    pub(crate) polled: Cell<bool>,
    /// The host's tasks read the clock through the C library: they may
    /// start tokio timers (whose deadlines come from such readings), so
    /// after they run the world steps the host's runtime to find out.
    pub(crate) reads_libc_clock: Cell<bool>,
}

pub(crate) struct HostLog {
    next_seq: u64,
    digest: Xxh3,
    scratch: Vec<u8>,
    /// The digest after every [`CHECKPOINT_EVENTS`] events.
    checkpoints: Vec<u64>,
    capture: HostCapture,
    /// Most events the capture held in memory at once.
    held_max: usize,
}

impl std::fmt::Debug for HostLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLog")
            .field("next_seq", &self.next_seq)
            .field("held_max", &self.held_max)
            .finish_non_exhaustive()
    }
}

impl Host {
    pub(crate) fn new(
        index: usize,
        name: String,
        incarnation: u32,
        started_at: u64,
        skew_ns: i64,
        start_wall_ns: i64,
        root_seed: [u8; 32],
    ) -> Host {
        Host {
            start_wall_ns,
            index,
            ip: host_ip(index),
            name,
            incarnation,
            started_at,
            skew_ns,
            root_seed,
            next_task: Cell::new(1),
            next_conn: Cell::new(0),
            alive: Cell::new(true),
            log: RefCell::new(HostLog {
                next_seq: 0,
                digest: Xxh3::new(),
                scratch: Vec::new(),
                checkpoints: Vec::new(),
                capture: HostCapture::Off,
                held_max: 0,
            }),
            tasks: RefCell::default(),
            runtime: RefCell::new(None),
            adoptions: Adoptions::default(),
            polled: Cell::new(false),
            reads_libc_clock: Cell::new(false),
        }
    }

    /// What this incarnation keeps of its events (set once, at its start).
    pub(crate) fn set_capture(&self, capture: HostCapture) {
        self.log.borrow_mut().capture = capture;
    }

    /// Stop logging: the incarnation crashed or the simulation ended.
    pub(crate) fn stop(&self) {
        if self.alive.replace(false) {
            self.log.borrow_mut().capture.end();
        }
    }

    /// This host's wall clock when the incarnation started.
    pub(crate) fn start_wall_ns(&self) -> i64 {
        self.start_wall_ns
    }

    /// Monotonic nanoseconds since this incarnation started.
    pub(crate) fn mono_ns(&self) -> u64 {
        super::world::now_ns().saturating_sub(self.started_at)
    }

    /// This host's wall clock: the simulation's plus its skew.
    pub(crate) fn wall_ns(&self) -> i64 {
        super::world::wall_ns().saturating_add(self.skew_ns)
    }

    /// Record `kind` as done by the running task.
    pub(crate) fn record(&self, kind: EventKind) {
        self.record_for(backend::task_id(), kind);
    }

    /// Record `kind` for `task`, now.
    pub(crate) fn record_for(&self, task: TaskId, kind: EventKind) {
        if !self.alive.get() {
            return;
        }
        let mut log = self.log.borrow_mut();
        let log = &mut *log;
        let event = Event {
            seq: log.next_seq,
            task,
            mono_ns: self.mono_ns(),
            kind,
        };
        log.next_seq += 1;
        log.scratch.clear();
        deja_recorder::format::encode_event(&event, &mut log.scratch);
        log.digest.update(&log.scratch);
        if log.next_seq % CHECKPOINT_EVENTS == 0 {
            log.checkpoints.push(log.digest.digest());
        }
        let held = log.capture.push(event);
        log.held_max = log.held_max.max(held);
    }

    pub(crate) fn record_clock_mono(&self) -> u64 {
        let ns = self.mono_ns();
        self.record(EventKind::ClockMono { ns });
        ns
    }

    pub(crate) fn record_clock_wall(&self) -> i64 {
        let unix_ns = self.wall_ns();
        self.record(EventKind::ClockWall { unix_ns });
        unix_ns
    }

    /// A clock reading made through the C library by one of this host's
    /// tasks: simulated, and logged like [`Host::record_clock_mono`].
    pub(crate) fn libc_clock(&self, clock: Clock) -> i64 {
        self.reads_libc_clock.set(true);
        match clock {
            Clock::Mono => {
                let ns = self.mono_ns();
                self.record(EventKind::LibClockMono { ns });
                backend::virtual_mono(ns)
            }
            Clock::Wall => {
                let unix_ns = self.wall_ns();
                self.record(EventKind::LibClockWall { unix_ns });
                unix_ns
            }
        }
    }

    /// The context of a task library code started with `tokio::spawn` in
    /// this host's runtime, adopted (a new logical id, and its
    /// `TaskAdopted` event) at its first intercepted call. The event's
    /// `tokio_id` is 0: tokio numbers tasks with one counter for the
    /// whole process, which parallel tests share, so its ids differ from
    /// run to run and would fail the determinism check.
    pub(crate) fn adopt(&self, tokio_id: tokio::task::Id) -> Option<std::sync::Arc<TaskCtx>> {
        self.adoptions.get_or_adopt(tokio_id, || {
            let child = self.next_task();
            self.record_for(child, EventKind::TaskAdopted { tokio_id: 0 });
            TaskCtx::new(&self.root_seed, child)
        })
    }

    /// A handle of the incarnation's tokio runtime, if it has one.
    pub(crate) fn tokio_handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime
            .borrow()
            .as_ref()
            .map(|runtime| runtime.handle().clone())
    }

    pub(crate) fn next_task(&self) -> TaskId {
        let id = self.next_task.get();
        self.next_task.set(id + 1);
        TaskId(id)
    }

    pub(crate) fn next_conn(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        ConnId(id)
    }

    /// Events recorded so far, the digest of all of them, and the most
    /// events its capture held in memory at once.
    pub(crate) fn summary(&self) -> (u64, u64, usize) {
        let log = self.log.borrow();
        (log.next_seq, log.digest.digest(), log.held_max)
    }

    /// Take the checkpoints and the capture (for a log or a comparison).
    pub(crate) fn take_capture(&self) -> (Vec<u64>, HostCapture) {
        let mut log = self.log.borrow_mut();
        (
            std::mem::take(&mut log.checkpoints),
            std::mem::take(&mut log.capture),
        )
    }
}

/// Host `index`'s address: 10.0.0.1, 10.0.0.2, ... in the order hosts
/// were declared.
pub(crate) fn host_ip(index: usize) -> IpAddr {
    let n = u32::try_from(index + 1).unwrap_or(u32::MAX) & 0x00ff_ffff;
    IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | n))
}
