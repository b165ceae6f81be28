//! Replay mode: no sockets, no clock, no entropy. Every intercepted call
//! asks the [`Gate`] for its recorded outcome, on a deterministic
//! single-threaded [`executor`].

pub(crate) mod debug;
mod net;
mod ops;

pub(crate) use net::replay_call;
pub(crate) mod stall;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};

use deja_recorder::{ConnId, Event, EventKind, TaskId};
use deja_replayer::gate::{Call, Claimed, Divergence, Gate, Gated, LogTail, RedactedUse};
use xxhash_rust::xxh3::Xxh3;

use crate::backend::{self, Adoptions, Clock, TaskCtx};
use crate::redact::{Direction, Redaction};

/// Why the replay stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The recorded `Exit` was released: the service ends as recorded.
    Exited,
    /// The last event of a recording without an exit was released.
    RecordingEnded,
    /// The code stopped matching the log.
    Diverged(Box<Divergence>),
    /// A breakpoint or `--until` ended the replay at this seq, on purpose.
    Halted {
        /// The seq of the event it stopped at.
        seq: u64,
        /// Who asked.
        why: crate::debug::Halt,
    },
}

/// Figures of a finished replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Events released (the log's usable events, if replay completed).
    pub events: u64,
    /// Usable events in the log.
    pub log_events: u64,
    /// Hash of every released event (seq, task, kind, time) and every
    /// write's bytes: equal digests mean equal replays.
    pub digest: u64,
    /// Synchronous calls made after their task's last recorded event.
    pub beyond_log_calls: u64,
    /// Virtual nanoseconds covered (the last released event's time).
    pub virtual_ns: u64,
    /// Events the recording redacted (reads, datagrams and writes whose
    /// logged bytes are partly masks).
    pub redacted_events: u64,
    /// Redacted reads and datagrams handed to the service: at each, the
    /// service saw masks instead of what the recording received.
    pub redacted_consumed: u64,
    /// Connections library code tried to open with sockets of its own
    /// (refused: replay opens no sockets).
    pub foreign_sockets: u64,
    /// Clock readings recorded but not made here, or made here but not
    /// recorded: a library that reads the clock on every poll of its task
    /// is polled a different number of times in replay (not a divergence:
    /// readings are not effects).
    pub readings_unmatched: u64,
}

/// Redacted reads reported one by one on stderr; past this, only the
/// count in [`ReplayStats::redacted_consumed`] goes on (a replay of a busy
/// service's log with a token in every request would print a line per request).
const REDACTED_REPORTS_MAX: u64 = 100;

/// Refused foreign connections reported one by one on stderr (a pool
/// retrying would print a line per try); the rest are counted.
const FOREIGN_SOCKET_REPORTS_MAX: u64 = 10;

/// Between the calls one task waits on, in stall reports.
const WAITS_SEPARATOR: &str = " and ";

/// Calls listed per waiting task: a `select!` over more is rare, and a
/// report must stay readable.
const WAITS_SHOWN_MAX: usize = 8;

/// Provisional ids of adopted tasks in replay start here: far above any
/// recorded id and below the ids of tasks spawned past the log's end.
const PROVISIONAL_TASKS: u64 = 1 << 61;

fn is_provisional(task: TaskId) -> bool {
    (PROVISIONAL_TASKS..1 << 62).contains(&task.0)
}

/// The ChaCha stream of the root seed that entropy read outside any task
/// comes from in replay (task ids use streams from 0 up).
const OUTSIDE_ENTROPY_STREAM: u64 = u64::MAX - 1;

/// The one draw a runtime's build makes: std's `HashMap` keys for the
/// thread, two `u64`s (see [`Replay::pass_build_entropy`]).
const BUILD_DRAW_BYTES: usize = 16;
/// Events after a driver turn scanned for the tasks it woke: a turn
/// wakes at most one task per ready socket (`epoll_wait` returns at most
/// 1024 events to tokio) and each logs a few events first.
const TURN_SCAN_EVENTS: usize = 4096;

/// The replay state of one run, owned by the executor's thread.
pub(crate) struct Replay {
    gate: RefCell<Gate>,
    /// Wakers of calls waiting at the gate, by task.
    waiters: RefCell<BTreeMap<TaskId, Vec<Waker>>>,
    /// What each waiting task last asked for, for stall reports (empty:
    /// not waiting; the entry goes when the task ends).
    pending: RefCell<BTreeMap<TaskId, String>>,
    stop: RefCell<Option<Stop>>,
    digest: RefCell<Xxh3>,
    /// Events the cursor had passed when the digest last took them.
    digested: Cell<usize>,
    root_seed: Cell<[u8; 32]>,
    start_wall_ns: i64,
    /// Ids for tasks spawned past the end of the log.
    next_beyond_task: Cell<u64>,
    /// Breakpoints and `--until`; `None` costs nothing per event.
    pub(crate) debugger: Option<debug::Debugger>,
    /// The time idle points moved virtual time to (see [`Replay::idle`]).
    idle_ns: Cell<u64>,
    /// The runtime's root future, woken when the replay stops.
    root_waker: RefCell<Option<Waker>>,
    /// Told of every released event (see `stall.rs`).
    watch: RefCell<Option<std::sync::Arc<stall::StallWatch>>>,
    /// Tasks library code started with `tokio::spawn`.
    adoptions: Adoptions,
    /// Adopted tasks that have not made a call to the gate yet, by their
    /// provisional ids (see [`Replay::resolve`]).
    provisional: RefCell<BTreeMap<TaskId, std::sync::Arc<TaskCtx>>>,
    next_provisional: Cell<u64>,
    /// Connections refused to sockets deja does not see.
    foreign_sockets: Cell<u64>,
    /// Recorded draws this replay's runtime build made (see
    /// [`Replay::pass_build_entropy`]).
    build_draws: Cell<u64>,
    /// Entropy for reads outside any task (tokio's own seeds): from the
    /// root seed, so every replay of a log draws the same.
    outside_rng: RefCell<Option<rand_chacha::ChaCha20Rng>>,
    /// The service's redactors, applied to its writes before they are
    /// compared with redacted recorded writes.
    redaction: Option<Redaction>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl Replay {
    pub(crate) fn new(
        gate: Gate,
        start_wall_ns: i64,
        debugger: Option<debug::Debugger>,
        redaction: Option<Redaction>,
    ) -> Replay {
        Replay {
            redaction,
            gate: RefCell::new(gate),
            waiters: RefCell::default(),
            pending: RefCell::default(),
            stop: RefCell::new(None),
            digest: RefCell::new(Xxh3::new()),
            digested: Cell::new(0),
            root_seed: Cell::new([0; 32]),
            start_wall_ns,
            next_beyond_task: Cell::new(1 << 62),
            debugger,
            idle_ns: Cell::new(0),
            root_waker: RefCell::new(None),
            watch: RefCell::new(None),
            adoptions: Adoptions::default(),
            provisional: RefCell::default(),
            next_provisional: Cell::new(PROVISIONAL_TASKS),
            outside_rng: RefCell::new(None),
            foreign_sockets: Cell::new(0),
            build_draws: Cell::new(0),
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.borrow().is_some()
    }

    pub(crate) fn take_stop(&self) -> Option<Stop> {
        self.stop.borrow_mut().take()
    }

    fn set_stop(&self, stop: Stop) {
        let mut slot = self.stop.borrow_mut();
        if slot.is_none() {
            *slot = Some(stop);
            drop(slot);
            if let Some(waker) = self.root_waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// The stall watchdog to tell of progress.
    pub(crate) fn set_watch(&self, watch: std::sync::Arc<stall::StallWatch>) {
        *self.watch.borrow_mut() = Some(watch);
    }

    /// The runtime's root future waits with this waker: a stop wakes it.
    pub(crate) fn set_root_waker(&self, waker: &Waker) {
        let mut slot = self.root_waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// The runtime has nothing to run: every task waits. If the event the
    /// log expects next belongs to a task that waits on a timer deja does
    /// not see (tokio's own, in library code: a `timeout`, a pool's idle
    /// timer), that timer fired in the recording before the event, so
    /// virtual time moves to the event's time and tokio's driver, which
    /// reads the clock next, fires every timer due by then. Timers due
    /// later did not fire before the event in the recording, and do not.
    pub(crate) fn idle(&self) {
        if let Some(event) = self.gate.borrow().cursor_event() {
            if event.mono_ns > self.idle_ns.get() {
                self.idle_ns.set(event.mono_ns);
            }
        }
    }

    /// Virtual time for readings outside any task (tokio's driver): the
    /// last released event's, or where an idle point moved it.
    fn outside_now_ns(&self) -> u64 {
        let gate = self.gate.borrow();
        if gate.has_turns() {
            // The recording's driver read the clock at its turns only.
            return gate.turn_ns();
        }
        drop(gate);
        self.now_ns().max(self.idle_ns.get())
    }

    /// The context of a task library code started with `tokio::spawn`, at
    /// its first intercepted call: a provisional id, which its first call
    /// to the gate replaces with the recording's (see [`Replay::resolve`]).
    pub(crate) fn adopt(&self, tokio_id: tokio::task::Id) -> Option<std::sync::Arc<TaskCtx>> {
        self.adoptions
            .get_or_adopt(tokio_id, || {
                let provisional = TaskId(self.next_provisional.get());
                self.next_provisional.set(provisional.0 + 1);
                TaskCtx::new(&self.root_seed(), provisional)
            })
            .inspect(|task| {
                if is_provisional(task.id()) {
                    self.provisional
                        .borrow_mut()
                        .entry(task.id())
                        .or_insert_with(|| std::sync::Arc::clone(task));
                }
            })
    }

    /// The task making `call`: `task` itself, or for an adopted task still
    /// on its provisional id, the recording's task whose first call this
    /// is ([`Gate::next_adoption`]), which takes its `TaskAdopted` event.
    fn resolve(&self, task: TaskId, call: &Call<'_>) -> TaskId {
        self.try_resolve(task, call, false).unwrap_or(task)
    }

    /// [`Replay::resolve`]; with `may_wait`, `None` when no recorded
    /// adopted task starts with `call` (a read still pending when the
    /// recording's task made its first logged call): the task waits,
    /// provisional, and tries again when it is woken.
    fn try_resolve(&self, task: TaskId, call: &Call<'_>, may_wait: bool) -> Option<TaskId> {
        if !is_provisional(task) {
            return Some(task);
        }
        let Some(ctx) = self.provisional.borrow().get(&task).cloned() else {
            return Some(task);
        };
        let next = self.gate.borrow_mut().next_adoption(call, may_wait);
        let real = match next {
            Some(real) => {
                self.provisional.borrow_mut().remove(&task);
                self.claim(real, &Call::Adopt);
                real
            }
            None if may_wait => return None,
            None => {
                self.provisional.borrow_mut().remove(&task);
                self.beyond_log_task()
            }
        };
        ctx.set_id(&self.root_seed(), real);
        // Calls it left waiting under the provisional id wait under the
        // real one now.
        let mut waiters = self.waiters.borrow_mut();
        if let Some(wakers) = waiters.remove(&task) {
            waiters.entry(real).or_default().extend(wakers);
        }
        drop(waiters);
        let mut pending = self.pending.borrow_mut();
        if let Some(text) = pending.remove(&task) {
            pending.entry(real).or_insert(text);
        }
        Some(real)
    }

    /// A clock reading made through the C library: a task's comes from
    /// the log, anything else reads virtual time.
    pub(crate) fn libc_clock(&self, clock: Clock, task: Option<TaskId>) -> i64 {
        let call = match clock {
            Clock::Mono => Call::LibClockMono,
            Clock::Wall => Call::LibClockWall,
        };
        let recorded = task
            .and_then(|task| self.claim(task, &call))
            .and_then(|event| match event.kind {
                EventKind::LibClockMono { ns } => Some(crate::backend::virtual_mono(ns)),
                EventKind::LibClockWall { unix_ns } => Some(unix_ns),
                _ => None,
            });
        recorded.unwrap_or_else(|| {
            let now = self.outside_now_ns();
            match clock {
                Clock::Mono => crate::backend::virtual_mono(now),
                Clock::Wall => self
                    .start_wall_ns
                    .saturating_add(i64::try_from(now).unwrap_or(i64::MAX)),
            }
        })
    }

    /// Entropy drawn through the C library: a task's comes from the log;
    /// anything else from the root seed.
    /// A task's draw that the log does not have (a std `HashMap`'s keys
    /// drawn here but not in the recording) is a divergence.
    pub(crate) fn libc_entropy(&self, out: &mut [u8], task: Option<TaskId>) {
        let building = crate::backend::RuntimeBuild::active();
        for chunk in out.chunks_mut(deja_recorder::EVENT_PAYLOAD_BYTES_MAX) {
            let call = Call::Entropy { len: chunk.len() };
            // While the runtime is built, a draw the recording's build did
            // not make (std's keys were drawn earlier on this thread) is not
            // a divergence: see `Replay::pass_build_entropy`.
            let task = task.filter(|&task| !building || self.next_is_entropy(task, chunk.len()));
            let recorded = task.and_then(|task| self.claim(task, &call));
            if building && recorded.is_some() {
                self.build_draws.set(self.build_draws.get() + 1);
            }
            match recorded.map(|event| event.kind) {
                Some(EventKind::Entropy { bytes }) if bytes.len() == chunk.len() => {
                    chunk.copy_from_slice(&bytes);
                }
                _ => self.outside_entropy(chunk),
            }
        }
    }

    /// A task connects to `peer` with a socket of its own: the recording
    /// logged it as a mark, which is taken here; the connect is refused.
    pub(crate) fn foreign_socket(&self, peer: &str, task: Option<TaskId>) {
        if let Some(task) = task {
            let call = Call::Mark {
                name: deja_recorder::FOREIGN_SOCKET_MARK,
                value: peer.as_bytes(),
            };
            self.claim(task, &call);
        }
        let count = self.foreign_sockets.get() + 1;
        self.foreign_sockets.set(count);
        if count <= FOREIGN_SOCKET_REPORTS_MAX {
            eprintln!(
                "deja: replay: library code connected to {peer} with a socket of its own, not deja::net; \
                 replay opens no sockets, so the connect was refused: what that connection received is not in the log"
            );
        }
    }

    fn next_is_entropy(&self, task: TaskId, len: usize) -> bool {
        matches!(
            self.gate.borrow().next_event_of(task).map(|event| &event.kind),
            Some(EventKind::Entropy { bytes }) if bytes.len() == len
        )
    }

    /// After the runtime's build: main's recorded build draw, when this
    /// build did not make it, is passed. The build's one draw is std's
    /// `HashMap` keys for the thread ([`BUILD_DRAW_BYTES`]; tokio seeds
    /// its own RNG from them, without drawing), made at the thread's first
    /// `HashMap`; when the thread drew them before deja started (a test
    /// that records and replays on one thread), the build does not draw,
    /// and a std `HashMap` iterates in another order than in the recording
    /// (a write that shows it diverges). A process that `deja replay`
    /// starts draws them in the build, as recorded.
    ///
    /// One draw of that size at most: main's own first draws follow the
    /// build's in the log with nothing between them (a service that makes
    /// a key first thing), and passing them too would take them from main.
    pub(crate) fn pass_build_entropy(&self) {
        if self.build_draws.get() > 0 {
            return;
        }
        let next = self
            .gate
            .borrow()
            .next_event_of(TaskId::MAIN)
            .map(|event| event.kind.clone());
        if let Some(EventKind::Entropy { bytes }) = next {
            if bytes.len() == BUILD_DRAW_BYTES {
                self.claim(TaskId::MAIN, &Call::Entropy { len: bytes.len() });
            }
        }
    }

    fn outside_entropy(&self, out: &mut [u8]) {
        use rand_core::{RngCore, SeedableRng};
        let mut rng = self.outside_rng.borrow_mut();
        rng.get_or_insert_with(|| {
            let mut rng = rand_chacha::ChaCha20Rng::from_seed(self.root_seed());
            rng.set_stream(OUTSIDE_ENTROPY_STREAM);
            rng
        })
        .fill_bytes(out);
    }

    pub(crate) fn root_seed(&self) -> [u8; 32] {
        self.root_seed.get()
    }

    pub(crate) fn set_root_seed(&self, seed: [u8; 32]) {
        self.root_seed.set(seed);
    }

    /// The root seed in the log (main's first event), if any.
    pub(crate) fn recorded_root_seed(&self) -> Option<[u8; 32]> {
        self.gate
            .borrow()
            .first_of(TaskId::MAIN)
            .and_then(|event| match event.kind {
                EventKind::RootSeed { seed } => Some(seed),
                _ => None,
            })
    }

    /// The seq of the last released event.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.gate.borrow().last_released().map(|event| event.seq)
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.gate.borrow().now_ns()
    }

    pub(crate) fn wall_ns(&self) -> i64 {
        self.start_wall_ns
            .saturating_add(i64::try_from(self.now_ns()).unwrap_or(i64::MAX))
    }

    pub(crate) fn beyond_log_task(&self) -> TaskId {
        let id = self.next_beyond_task.get();
        self.next_beyond_task.set(id + 1);
        TaskId(id)
    }

    pub(crate) fn stats(&self) -> ReplayStats {
        let gate = self.gate.borrow();
        ReplayStats {
            events: gate.released() as u64,
            log_events: gate.len() as u64,
            digest: self.digest.borrow().digest(),
            beyond_log_calls: gate.beyond_log_calls(),
            virtual_ns: gate.now_ns(),
            redacted_events: gate.redacted_events() as u64,
            redacted_consumed: gate.redacted_uses(),
            foreign_sockets: self.foreign_sockets.get(),
            readings_unmatched: gate.readings_unmatched(),
        }
    }

    /// The running task writes `buf`: if its next recorded event is that
    /// write and the recording redacted it, the first `len` bytes masked
    /// by the same redactors (what the recording hashed and kept).
    fn redact_write(
        &self,
        direction: Direction,
        conn: ConnId,
        peer: SocketAddr,
        buf: &[u8],
    ) -> Option<Vec<u8>> {
        let redaction = self.redaction.as_ref()?;
        let gate = self.gate.borrow();
        let event = gate.next_event_of(backend::task_id())?;
        gate.redaction(event.seq)?;
        let len = match (&event.kind, direction) {
            (
                EventKind::TcpWrite {
                    conn: c,
                    result: Ok(written),
                },
                Direction::TcpWrite,
            )
            | (
                EventKind::UdpSend {
                    socket: c,
                    result: Ok(written),
                    ..
                },
                Direction::UdpSend,
            ) if *c == conn => (written.len as usize).min(buf.len()),
            _ => return None,
        };
        drop(gate);
        let mut masked = buf[..len].to_vec();
        redaction.mask(direction, conn, peer, &buf[..len], &mut masked);
        Some(masked)
    }

    /// A write was released: the stream's redaction context moves on, as
    /// it did in the recording.
    fn wrote(&self, direction: Direction, conn: ConnId, bytes: &[u8]) {
        if let Some(redaction) = &self.redaction {
            redaction.advance(direction, conn, bytes);
        }
    }

    pub(crate) fn forget_conn(&self, conn: ConnId) {
        if let Some(redaction) = &self.redaction {
            redaction.forget(conn);
        }
    }

    /// Say on stderr that the service was handed a redacted read.
    fn report_redacted(&self, used: &RedactedUse) {
        let count = self.gate.borrow().redacted_uses();
        if count <= REDACTED_REPORTS_MAX {
            eprintln!("deja: replay: {used}");
        }
        if count == REDACTED_REPORTS_MAX {
            eprintln!(
                "deja: replay: more redacted reads are counted, not listed ({REDACTED_REPORTS_MAX} shown)"
            );
        }
    }

    /// An asynchronous call of the running task: its recorded outcome when
    /// the cursor gets there. After a divergence nothing is released.
    pub(crate) fn poll_call(&self, cx: &mut Context<'_>, call: &Call<'_>) -> Poll<Event> {
        if self.stopped() {
            return Poll::Pending;
        }
        let provisional = backend::task_id();
        let Some(task) = self.try_resolve(provisional, call, call.waits_for_input()) else {
            // Not known yet: wait, and try again at the next adoption.
            self.wait_at_gate(provisional, call, cx);
            return Poll::Pending;
        };
        let mut gate = self.gate.borrow_mut();
        let passed = gate.released();
        match gate.poll(task, call) {
            Ok(Gated::Ready(event)) => {
                let event = event.clone();
                let used = gate
                    .last_redacted_use()
                    .filter(|used| used.seq == event.seq)
                    .cloned();
                drop(gate);
                if let Some(used) = used {
                    self.report_redacted(&used);
                }
                // Keep the buffer for the task's next wait; empty = not waiting.
                if let Some(text) = self.pending.borrow_mut().get_mut(&task) {
                    text.clear();
                }
                self.released(&event, call);
                self.watch(&event);
                Poll::Ready(event)
            }
            Ok(Gated::Wait) => {
                drop(gate);
                self.wait_at_gate(task, call, cx);
                self.woke_if_passed(passed);
                Poll::Pending
            }
            Err(divergence) => {
                drop(gate);
                self.set_stop(Stop::Diverged(divergence));
                Poll::Pending
            }
        }
    }

    /// A synchronous call of `task`: `Some(event)` with its recorded
    /// outcome, or `None` past the end of the task's log (or after a stop).
    pub(crate) fn claim(&self, task: TaskId, call: &Call<'_>) -> Option<Event> {
        if self.stopped() {
            return None;
        }
        let task = self.resolve(task, call);
        let mut gate = self.gate.borrow_mut();
        let passed = gate.released();
        match gate.claim(task, call) {
            Ok(Claimed::Event(event)) => {
                let event = event.clone();
                drop(gate);
                if matches!(call, Call::TaskEnd { .. }) {
                    self.pending.borrow_mut().remove(&task);
                } else if let Some(text) = self
                    .pending
                    .borrow_mut()
                    .get_mut(&task)
                    .filter(|_| !matches!(call, Call::LibClockMono | Call::LibClockWall))
                {
                    // It runs: whatever it waited on is its past.
                    text.clear();
                }
                self.released(&event, call);
                self.watch(&event);
                Some(event)
            }
            // A library reading in a poll the recording did not make: an
            // earlier reading's value, not this task's event.
            Ok(Claimed::Repeated(event)) => Some(event.clone()),
            Ok(Claimed::BeyondLog | Claimed::Unrecorded) => {
                drop(gate);
                self.woke_if_passed(passed);
                None
            }
            Err(divergence) => {
                drop(gate);
                self.set_stop(Stop::Diverged(divergence));
                None
            }
        }
    }

    /// `task` waits at the gate with `call`: noted for stall reports, and
    /// its waker kept for when the cursor reaches it.
    fn wait_at_gate(&self, task: TaskId, call: &Call<'_>, cx: &Context<'_>) {
        // Every call the task waits on (a read and a timer in a
        // `select!`): the list empties when the task takes an event.
        let mut pending = self.pending.borrow_mut();
        let text = pending.entry(task).or_default();
        let start = text.len();
        if start > 0 {
            text.push_str(WAITS_SEPARATOR);
        }
        let _ = write!(text, "{call}");
        let new = &text[start..];
        let new = new.strip_prefix(WAITS_SEPARATOR).unwrap_or(new);
        let known = text[..start].split(WAITS_SEPARATOR).any(|old| old == new);
        if known || text[..start].matches(WAITS_SEPARATOR).count() + 1 >= WAITS_SHOWN_MAX {
            text.truncate(start);
        }
        drop(pending);
        let mut waiters = self.waiters.borrow_mut();
        let wakers = waiters.entry(task).or_default();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
    }

    /// The gate passed events without releasing one (library clock
    /// readings the replay did not make): the cursor moved, so whoever it
    /// points at now must be woken.
    fn woke_if_passed(&self, passed_before: usize) {
        if self.gate.borrow().released() != passed_before {
            self.wake_cursor();
        }
    }

    /// Show the debugger the event its task just took.
    fn watch(&self, event: &Event) {
        if let Some(debugger) = &self.debugger {
            debugger.on_event(self, event);
        }
    }

    /// Fold what the cursor passed into the digest, then wake whoever the
    /// cursor now points at, or stop at the end of the log.
    ///
    /// Events go into the digest in log order as the cursor passes them,
    /// not when their calls are made: a synchronous call is claimed when
    /// its task runs, and a task woken from another thread (a
    /// `spawn_blocking` job finishing) runs a little earlier or later in
    /// each replay. A write's bytes follow its event: writes wait for the
    /// cursor, so they are released at their place in the log.
    fn released(&self, event: &Event, call: &Call<'_>) {
        {
            self.fold_passed();
            let mut digest = self.digest.borrow_mut();
            if let Call::TcpWrite { bytes, .. } | Call::UdpSend { bytes, .. } = call {
                let len = match &event.kind {
                    EventKind::TcpWrite {
                        result: Ok(written),
                        ..
                    }
                    | EventKind::UdpSend {
                        result: Ok(written),
                        ..
                    } => (written.len as usize).min(bytes.len()),
                    _ => 0,
                };
                digest.update(&bytes[..len]);
            }
        }
        self.wake_cursor();
    }

    /// Fold the events the cursor passed into the digest, in log order,
    /// and tell the stall watchdog the replay moved.
    fn fold_passed(&self) {
        let gate = self.gate.borrow();
        let mut digest = self.digest.borrow_mut();
        let from = self.digested.get();
        for passed in gate.passed_since(from) {
            digest.update(&passed.seq.to_le_bytes());
            digest.update(&passed.task.0.to_le_bytes());
            digest.update(&passed.mono_ns.to_le_bytes());
            digest.update(passed.kind.name().as_bytes());
        }
        self.digested.set(gate.released());
        if let Some(watch) = &*self.watch.borrow() {
            watch.progressed();
        }
    }

    /// Whether the log marks the recording's driver turns: the runtime's
    /// own turns then wait for them (see [`Replay::driver_turn`]).
    pub(crate) fn has_turns(&self) -> bool {
        self.gate.borrow().has_turns()
    }

    /// The runtime's driver turns (its `epoll_wait`, see
    /// `intercept/driver.rs`). When the cursor is at a recorded turn it is
    /// passed: the runtime's clock moves to the turn's time (tokio fires
    /// the timers that came due there, as the recording's did), and the
    /// tasks the turn woke in the recording are woken now, in the order
    /// the recording's driver queued them, before anything they wake.
    /// Returns whether a recorded turn was passed.
    pub(crate) fn driver_turn(&self) -> bool {
        if self.stopped() {
            return false;
        }
        let (turn, woken) = {
            let mut gate = self.gate.borrow_mut();
            let Some(turn) = gate.pass_turn().cloned() else {
                return false;
            };
            (turn, gate.woken_by_turn(TURN_SCAN_EVENTS))
        };
        self.fold_passed();
        // A breakpoint may stop at a turn too (`kind=turn`, `t>=`, `seq=`):
        // in the driver, before the tasks it woke run.
        self.watch(&turn);
        for task in woken {
            let wakers = self.waiters.borrow_mut().remove(&task);
            for waker in wakers.into_iter().flatten() {
                waker.wake();
            }
        }
        self.wake_cursor();
        true
    }

    /// Wake the task the cursor waits for; at the end of the log, stop.
    pub(crate) fn wake_cursor(&self) {
        let gate = self.gate.borrow();
        match gate.cursor_task() {
            Some(task) => {
                // An adoption next: the tasks still waiting under a
                // provisional id try again (see `Replay::try_resolve`).
                let adoption = matches!(
                    gate.cursor_event().map(|event| &event.kind),
                    Some(EventKind::TaskAdopted { .. })
                );
                drop(gate);
                let mut waiters = self.waiters.borrow_mut();
                let mut wakers = waiters.remove(&task).unwrap_or_default();
                if adoption {
                    let provisional: Vec<TaskId> = waiters
                        .keys()
                        .copied()
                        .filter(|&t| is_provisional(t))
                        .collect();
                    for waiting in provisional {
                        wakers.extend(waiters.remove(&waiting).unwrap_or_default());
                    }
                }
                drop(waiters);
                for waker in wakers {
                    waker.wake();
                }
            }
            None => {
                let stop = match gate.tail() {
                    LogTail::Exit { .. } => Stop::Exited,
                    LogTail::Cut => Stop::RecordingEnded,
                    LogTail::Gap(_) => Stop::Diverged(gate.stalled(&[])),
                };
                drop(gate);
                self.set_stop(stop);
            }
        }
    }

    /// No task can run: report the stall.
    pub(crate) fn stall(&self) {
        let pending: Vec<(TaskId, String)> = self
            .pending
            .borrow()
            .iter()
            .filter(|(_, call)| !call.is_empty())
            .map(|(task, call)| (*task, call.clone()))
            .collect();
        let report = self.gate.borrow().stalled(&pending);
        self.set_stop(Stop::Diverged(report));
    }
}

/// The running task's asynchronous `call`, released by the gate (pending
/// forever on a thread that does not replay).
pub(crate) fn poll(cx: &mut Context<'_>, call: &Call<'_>) -> Poll<Event> {
    with_replay(|replay| replay.poll_call(cx, call)).unwrap_or(Poll::Pending)
}

/// The running task writes `buf` on `conn`: the bytes to compare with the
/// recorded write (masked, if the recording redacted it), or `None` for
/// `buf` itself.
pub(crate) fn redact_write(
    direction: Direction,
    conn: ConnId,
    peer: SocketAddr,
    buf: &[u8],
) -> Option<Vec<u8>> {
    with_replay(|replay| replay.redact_write(direction, conn, peer, buf)).flatten()
}

/// The running task's write of `bytes` on `conn` was released.
pub(crate) fn wrote(direction: Direction, conn: ConnId, bytes: &[u8]) {
    with_replay(|replay| replay.wrote(direction, conn, bytes));
}

/// Run `f` with the thread's replay, if this thread replays.
pub(crate) fn with_replay<R>(f: impl FnOnce(&Replay) -> R) -> Option<R> {
    crate::backend::with_mode(f)
}
