//! The replay gate: releases every task's intercepted calls in the
//! recorded order, and says exactly where the code stopped matching the log.
//!
//! The runtime's deterministic executor asks the gate at every intercepted
//! call. Task T's k-th call must match the log's k-th event of T (same kind,
//! same target), and is released only when the global cursor reaches that
//! event's seq. A task that polls several calls at once (`select!`,
//! `timeout`, `join!`) may have calls that are not its next event; those
//! wait. Only a call of the same kind on the same target with different
//! content (a write with other bytes, a mark with another value) is an
//! immediate divergence; anything else that never matches shows up as a
//! stall, which the executor reports through [`Gate::stalled`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use deja_recorder::event::{redacted_bytes, write_ranges};
use deja_recorder::{content_hash, ConnId, Event, EventKind, ReadOutcome, TaskId, TaskOutcome};

/// Events shown before the divergence point in a report.
pub const REPORT_CONTEXT_EVENTS: usize = 8;

/// An intercepted operation as the replaying code performs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call<'a> {
    /// `Instant::now()`.
    ClockMono,
    /// `SystemTime::now()`.
    ClockWall,
    /// A monotonic reading made through the C library (see
    /// [`Gate::claim`]: not held to program order).
    LibClockMono,
    /// A wall reading made through the C library.
    LibClockWall,
    /// A timer (per-task id) waiting to fire.
    Timer {
        /// The runtime's timer id.
        timer: u64,
    },
    /// The run's root seed.
    RootSeed,
    /// OS entropy of this many bytes.
    Entropy {
        /// Bytes asked for.
        len: usize,
    },
    /// `TcpListener::bind(addr)`.
    TcpListen {
        /// The address as given.
        addr: &'a str,
    },
    /// `accept` on a listener.
    TcpAccept {
        /// The listener.
        listener: ConnId,
    },
    /// `TcpStream::connect(addr)`.
    TcpConnect {
        /// The target as given.
        addr: &'a str,
    },
    /// A read on a stream.
    TcpRead {
        /// The stream.
        conn: ConnId,
    },
    /// A write of these bytes on a stream.
    TcpWrite {
        /// The stream.
        conn: ConnId,
        /// What the code offers to write.
        bytes: &'a [u8],
    },
    /// `shutdown` on a stream.
    TcpShutdown {
        /// The stream.
        conn: ConnId,
    },
    /// Dropping a stream or listener.
    TcpClose {
        /// The stream or listener.
        conn: ConnId,
    },
    /// `UdpSocket::bind(addr)`.
    UdpBind {
        /// The address as given.
        addr: &'a str,
    },
    /// `send_to(bytes, peer)`.
    UdpSend {
        /// The socket.
        socket: ConnId,
        /// The destination.
        peer: SocketAddr,
        /// The datagram.
        bytes: &'a [u8],
    },
    /// `recv_from`.
    UdpRecv {
        /// The socket.
        socket: ConnId,
    },
    /// A name lookup (`deja::net::lookup_host`).
    Lookup {
        /// The name and port as given.
        host: &'a str,
    },
    /// `deja::spawn`.
    Spawn,
    /// A task started by `tokio::spawn` makes its first intercepted call
    /// (see [`Gate::next_adoption`]).
    Adopt,
    /// The task finished.
    TaskEnd {
        /// How.
        outcome: TaskOutcome,
    },
    /// `deja::mark(name, value)`.
    Mark {
        /// The name.
        name: &'a str,
        /// The value.
        value: &'a [u8],
    },
    /// Waiting for a signal.
    Signal,
    /// The process is exiting with this code.
    Exit {
        /// The exit code.
        code: i32,
    },
}

impl Call<'_> {
    /// True for calls that wait for the outside world (a read, an accept, a
    /// timer, a signal): one may still be pending when a recording ends.
    pub fn waits_for_input(&self) -> bool {
        matches!(
            self,
            Call::Timer { .. }
                | Call::TcpAccept { .. }
                | Call::TcpRead { .. }
                | Call::UdpRecv { .. }
                | Call::Signal
        )
    }

    /// True for calls with an effect the recording would show (a write, a
    /// spawn, a mark): one the log does not have is a divergence. Readings
    /// and drops are not: they may race the recording's end.
    pub fn is_effect(&self) -> bool {
        !matches!(
            self,
            Call::ClockMono
                | Call::ClockWall
                | Call::LibClockMono
                | Call::LibClockWall
                | Call::Entropy { .. }
                | Call::RootSeed
                | Call::TaskEnd { .. }
                | Call::TcpClose { .. }
                | Call::Adopt
        ) && !self.waits_for_input()
    }
}

impl fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::ClockMono => f.write_str("clock_mono"),
            Call::ClockWall => f.write_str("clock_wall"),
            Call::LibClockMono => f.write_str("lib_clock_mono"),
            Call::LibClockWall => f.write_str("lib_clock_wall"),
            Call::Timer { timer } => write!(f, "timer_fired timer={timer}"),
            Call::RootSeed => f.write_str("root_seed"),
            Call::Entropy { len } => write!(f, "entropy {len}B"),
            Call::TcpListen { addr } => write!(f, "tcp_listen addr={addr}"),
            Call::TcpAccept { listener } => write!(f, "tcp_accept listener={listener}"),
            Call::TcpConnect { addr } => write!(f, "tcp_connect addr={addr}"),
            Call::TcpRead { conn } => write!(f, "tcp_read conn={conn}"),
            Call::TcpWrite { conn, bytes } => write!(
                f,
                "tcp_write conn={conn} len={} hash={:016x} \"{}\"",
                bytes.len(),
                content_hash(bytes),
                preview(bytes)
            ),
            Call::TcpShutdown { conn } => write!(f, "tcp_shutdown conn={conn}"),
            Call::TcpClose { conn } => write!(f, "tcp_close conn={conn}"),
            Call::UdpBind { addr } => write!(f, "udp_bind addr={addr}"),
            Call::UdpSend {
                socket,
                peer,
                bytes,
            } => write!(f, "udp_send conn={socket} peer={peer} len={}", bytes.len()),
            Call::UdpRecv { socket } => write!(f, "udp_recv conn={socket}"),
            Call::Lookup { host } => write!(f, "lookup host={host}"),
            Call::Spawn => f.write_str("spawn"),
            Call::Adopt => f.write_str("task_adopted"),
            Call::TaskEnd { outcome } => write!(f, "task_end outcome={outcome:?}"),
            Call::Mark { name, value } => write!(f, "mark {name}=\"{}\"", preview(value)),
            Call::Signal => f.write_str("signal"),
            Call::Exit { code } => write!(f, "exit code={code}"),
        }
    }
}

/// A clock reading made through the C library: not held to program order
/// (see [`Gate::claim`]).
fn is_reading_call(call: &Call<'_>) -> bool {
    matches!(call, Call::LibClockMono | Call::LibClockWall)
}

fn is_reading(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::LibClockMono { .. } | EventKind::LibClockWall { .. }
    )
}

fn preview(bytes: &[u8]) -> String {
    const SHOWN: usize = 32;
    let mut text = bytes[..bytes.len().min(SHOWN)].escape_ascii().to_string();
    if bytes.len() > SHOWN {
        text.push_str("...");
    }
    text
}

/// How a call relates to a recorded event.
#[derive(Debug, PartialEq, Eq)]
enum Match {
    /// The event is this call's outcome.
    Same,
    /// Same operation on the same target, different content: a divergence.
    Conflict(String),
    /// A different operation: maybe another pending call of the task.
    Other,
}

fn match_call(call: &Call<'_>, event: &EventKind) -> Match {
    use EventKind as E;
    let same = |yes: bool| if yes { Match::Same } else { Match::Other };
    match (call, event) {
        (Call::ClockMono, E::ClockMono { .. })
        | (Call::ClockWall, E::ClockWall { .. })
        | (Call::LibClockMono, E::LibClockMono { .. })
        | (Call::LibClockWall, E::LibClockWall { .. }) => Match::Same,
        (Call::Timer { timer }, E::TimerFired { timer: t, .. }) => same(timer == t),
        (Call::RootSeed, E::RootSeed { .. }) => Match::Same,
        (Call::Entropy { len }, E::Entropy { bytes }) if *len == bytes.len() => Match::Same,
        (Call::Entropy { len }, E::Entropy { bytes }) => Match::Conflict(format!(
            "asked for {len} bytes of entropy, the recording drew {}",
            bytes.len()
        )),
        (Call::TcpListen { addr }, E::TcpListen { addr: a, .. })
        | (Call::TcpConnect { addr }, E::TcpConnect { addr: a, .. })
        | (Call::UdpBind { addr }, E::UdpBind { addr: a, .. })
        | (Call::Lookup { host: addr }, E::Lookup { host: a, .. }) => {
            if addr == a {
                Match::Same
            } else {
                Match::Conflict(format!("address {addr:?}, the recording used {a:?}"))
            }
        }
        (Call::TcpAccept { listener }, E::TcpAccept { listener: l, .. }) => same(listener == l),
        (Call::TcpRead { conn }, E::TcpRead { conn: c, .. })
        | (Call::TcpShutdown { conn }, E::TcpShutdown { conn: c, .. })
        | (Call::TcpClose { conn }, E::TcpClose { conn: c })
        | (Call::UdpRecv { socket: conn }, E::UdpRecv { socket: c, .. }) => same(conn == c),
        (Call::TcpWrite { conn, bytes }, E::TcpWrite { conn: c, result }) if conn == c => {
            check_write(bytes, result)
        }
        (
            Call::UdpSend {
                socket,
                peer,
                bytes,
            },
            E::UdpSend {
                socket: s,
                peer: p,
                result,
            },
        ) if socket == s => {
            if peer != p {
                return Match::Conflict(format!("sent to {peer}, the recording sent to {p}"));
            }
            check_write(bytes, result)
        }
        (Call::Spawn, E::Spawn { .. }) | (Call::Adopt, E::TaskAdopted { .. }) => Match::Same,
        (Call::TaskEnd { outcome }, E::TaskEnd { outcome: o }) => {
            if outcome == o {
                Match::Same
            } else {
                Match::Conflict(format!("task ended {outcome:?}, the recording ended {o:?}"))
            }
        }
        (Call::Mark { name, value }, E::Mark { name: n, value: v }) if name == n => {
            if value == &v.as_slice() {
                Match::Same
            } else {
                Match::Conflict(format!(
                    "mark {name} is \"{}\", the recording has \"{}\"",
                    preview(value),
                    preview(v)
                ))
            }
        }
        (Call::Signal, E::Signal { .. }) => Match::Same,
        (Call::Exit { code }, E::Exit { code: c }) => {
            if code == c {
                Match::Same
            } else {
                Match::Conflict(format!("exit code {code}, the recording exited {c}"))
            }
        }
        _ => Match::Other,
    }
}

/// A recorded event as the call that made it, for conflict reports: a mark
/// with its name and value (a mark of another name is the usual change),
/// anything else by its kind.
fn recorded_call(event: &EventKind) -> String {
    match event {
        EventKind::Mark { name, value } => format!("mark {name}=\"{}\"", preview(value)),
        other => other.name().to_string(),
    }
}

/// A write offering `bytes` matches a recorded write that accepted the
/// first `len` of them with the same hash.
fn check_write(
    bytes: &[u8],
    result: &Result<deja_recorder::Written, deja_recorder::IoErrorKind>,
) -> Match {
    let Ok(written) = result else {
        return Match::Same; // the recorded error is the outcome, whatever the bytes
    };
    let len = written.len as usize;
    if let Some(recorded) = &written.bytes {
        // The recording kept the bytes: compare them, not just the hash.
        if bytes.get(..len) != Some(recorded.as_slice()) {
            return Match::Conflict(format!(
                "writes \"{}\", the recording wrote \"{}\"",
                preview(&bytes[..len.min(bytes.len())]),
                preview(recorded)
            ));
        }
        return Match::Same;
    }
    if bytes.len() < len {
        return Match::Conflict(format!(
            "writes {} bytes, the recording wrote {len}",
            bytes.len()
        ));
    }
    if content_hash(&bytes[..len]) != written.hash {
        return Match::Conflict(format!(
            "writes other bytes: \"{}\" (hash {:016x}), the recording wrote {len} bytes with hash {:016x}",
            preview(&bytes[..len]),
            content_hash(&bytes[..len]),
            written.hash
        ));
    }
    Match::Same
}

/// What the gate says to a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Gated<'a> {
    /// The call happens now and returns what this event recorded.
    Ready(&'a Event),
    /// Not yet: other tasks' events come first, or this call is not the
    /// task's next recorded operation.
    Wait,
}

/// Why replay stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DivergenceKind {
    /// Same operation on the same target, different content.
    Conflict(String),
    /// The task makes a call after its last recorded event.
    ExtraCall,
    /// The log is incomplete here (a `Gap` event): replay cannot go on.
    LogIncomplete,
    /// No task can make progress: the event at the cursor is never asked for.
    Stalled,
}

/// A replay divergence: where, who, what was recorded, what happened instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// What kind of divergence.
    pub kind: DivergenceKind,
    /// The task whose call diverged (for a stall: the task that owns the
    /// event at the cursor).
    pub task: TaskId,
    /// The recorded event that should have happened, if any.
    pub expected: Option<Event>,
    /// What the code did instead (its pending calls, for a stall).
    pub actual: String,
    /// The last events released before the divergence, oldest first.
    pub recent: Vec<Event>,
    /// The last redacted read or datagram replay handed to the service
    /// before the divergence (the diverging task's own, else any task's):
    /// the service saw masks there, which may be why it went another way.
    pub after_redacted: Option<RedactedUse>,
}

/// A redacted read or datagram that replay handed to the service: the
/// service saw the masks the recording logged, not the bytes it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedactedUse {
    /// The seq of the read or datagram.
    pub seq: u64,
    /// The task that consumed it.
    pub task: TaskId,
    /// The stream or socket it came from.
    pub conn: Option<ConnId>,
    /// The masked byte ranges `[start, end)` within its payload.
    pub ranges: Vec<(u32, u32)>,
}

impl fmt::Display for RedactedUse {
    /// `seq 12 (task 1, conn 3): 12 redacted bytes consumed at offsets 30..42;
    /// the service saw masks, not the recorded data`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {} (task {}", self.seq, self.task)?;
        if let Some(conn) = self.conn {
            write!(f, ", conn {conn}")?;
        }
        write!(
            f,
            "): {} redacted bytes consumed at offsets ",
            redacted_bytes(&self.ranges)
        )?;
        write_ranges(f, &self.ranges)?;
        f.write_str("; the service saw masks, not the recorded data")
    }
}

impl Divergence {
    /// The first differing seq, if the log has an event there.
    pub fn seq(&self) -> Option<u64> {
        self.expected.as_ref().map(|event| event.seq)
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.seq().map_or_else(
            || "after the end of the log".to_string(),
            |seq| format!("at seq {seq}"),
        );
        let what = match &self.kind {
            DivergenceKind::Conflict(why) => why.clone(),
            DivergenceKind::ExtraCall => "a call the recording does not have".into(),
            DivergenceKind::LogIncomplete => "the recording lost events here (gap)".into(),
            DivergenceKind::Stalled => "no task can make progress".into(),
        };
        writeln!(f, "replay diverged {at} in task {}: {what}", self.task)?;
        match &self.expected {
            Some(event) => writeln!(f, "  expected: {event}")?,
            None => writeln!(
                f,
                "  expected: nothing (task {} has no more events)",
                self.task
            )?,
        }
        writeln!(f, "  actual:   {}", self.actual)?;
        if !self.recent.is_empty() {
            writeln!(f, "  last events before it:")?;
            for event in &self.recent {
                writeln!(f, "    {event}")?;
            }
        }
        if let Some(used) = &self.after_redacted {
            writeln!(
                f,
                "  note: this divergence follows consumption of redacted data at {used}"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Divergence {}

#[derive(Debug, Default)]
struct TaskTrack {
    /// Indices into the gate's events, in order.
    events: Vec<usize>,
    /// Position in `events` of the task's next event not yet released or claimed.
    next: usize,
}

/// How the recording ends, which decides what "the end of the log" means
/// for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTail {
    /// The service exited (the last event is `Exit`): replay ends there too.
    Exit {
        /// The recorded exit code.
        code: i32,
    },
    /// The recording lost events (the first `Gap`): replay cannot go past it.
    Gap(Event),
    /// The recording stops without an exit (killed, or still running):
    /// replay ends when it reaches the last event.
    Cut,
}

/// What [`Gate::claim`] hands back for a synchronous call.
#[derive(Debug, PartialEq, Eq)]
pub enum Claimed<'a> {
    /// The call's recorded outcome. It is released when the cursor reaches it.
    Event(&'a Event),
    /// The task has no recorded events left: the recording ended (or the
    /// service exited) before this call happened. The runtime answers with a
    /// neutral value and the call has no effect on the replay.
    BeyondLog,
    /// A clock reading the recording did not make here (see
    /// [`Gate::claim`]): the runtime answers with virtual time.
    Unrecorded,
}

/// The recorded order, and the cursor that walks it.
#[derive(Debug)]
pub struct Gate {
    events: Vec<Event>,
    /// Claimed synchronous calls, by event index, not yet passed by the cursor.
    claimed: Vec<bool>,
    cursor: usize,
    tasks: BTreeMap<TaskId, TaskTrack>,
    tail: LogTail,
    beyond_log: u64,
    /// `Redacted` markers, by the seq of the event they describe. They are
    /// not matched against calls: no call makes them.
    redacted: BTreeMap<u64, Vec<(u32, u32)>>,
    /// The last redacted read each task consumed.
    redacted_used: BTreeMap<TaskId, RedactedUse>,
    /// The last redacted read any task consumed.
    last_redacted_use: Option<RedactedUse>,
    /// Redacted reads consumed so far.
    redacted_uses: u64,
    /// Tasks whose first event is `TaskAdopted`, in log order, not yet
    /// handed out by [`Gate::next_adoption`].
    adoptions: std::collections::VecDeque<TaskId>,
    /// Recorded clock readings no call took, and readings made with none
    /// recorded (see [`Gate::claim`]).
    readings_unmatched: u64,
    /// The log marks driver turns.
    has_turns: bool,
    /// The time of the last turn passed.
    turn_ns: u64,
}

impl Gate {
    /// A gate over a run's events (in seq order, as the reader returns them).
    /// Events after the first `Gap` are unusable (the lost events' tasks
    /// are unknown) and are dropped: replay stops at the gap. `Redacted`
    /// markers are taken out of the order (no call makes them) and kept
    /// by the seq of the event they describe.
    pub fn new(mut events: Vec<Event>) -> Gate {
        let mut redacted = BTreeMap::new();
        events.retain(|event| match &event.kind {
            EventKind::Redacted { seq_of, ranges } => {
                redacted.insert(*seq_of, ranges.clone());
                false
            }
            _ => true,
        });
        let tail = match events
            .iter()
            .position(|event| matches!(event.kind, EventKind::Gap { .. }))
        {
            Some(gap) => {
                let gap_event = events[gap].clone();
                events.truncate(gap);
                LogTail::Gap(gap_event)
            }
            None => match events.last() {
                Some(Event {
                    kind: EventKind::Exit { code },
                    ..
                }) => LogTail::Exit { code: *code },
                _ => LogTail::Cut,
            },
        };
        let mut tasks: BTreeMap<TaskId, TaskTrack> = BTreeMap::new();
        let mut adoptions = std::collections::VecDeque::new();
        let mut has_turns = false;
        for (index, event) in events.iter().enumerate() {
            // Driver turns are nobody's calls: only `pass_turn` takes them.
            if matches!(event.kind, EventKind::DriverTurn { .. }) {
                has_turns = true;
                continue;
            }
            let track = tasks.entry(event.task).or_default();
            if track.events.is_empty() && matches!(event.kind, EventKind::TaskAdopted { .. }) {
                adoptions.push_back(event.task);
            }
            track.events.push(index);
        }
        Gate {
            claimed: vec![false; events.len()],
            events,
            cursor: 0,
            tasks,
            tail,
            beyond_log: 0,
            redacted,
            redacted_used: BTreeMap::new(),
            last_redacted_use: None,
            redacted_uses: 0,
            adoptions,
            readings_unmatched: 0,
            has_turns,
            turn_ns: 0,
        }
    }

    /// Whether the log marks its driver turns (`DriverTurn`): a recording
    /// made on one thread by a deja that logs them.
    pub fn has_turns(&self) -> bool {
        self.has_turns
    }

    /// The time of the last driver turn passed: what the runtime's own
    /// clock readings (tokio's timer wheel) see between turns.
    pub fn turn_ns(&self) -> u64 {
        self.turn_ns
    }

    /// The replay's driver turns: when the cursor is at a recorded turn,
    /// pass it and return it. Afterwards the events up to the next turn
    /// are those the recording ran in that turn's batch.
    pub fn pass_turn(&mut self) -> Option<&Event> {
        let index = self.cursor;
        let event = self.events.get(index)?;
        if !matches!(event.kind, EventKind::DriverTurn { .. }) {
            return None;
        }
        self.turn_ns = event.mono_ns;
        self.claimed[index] = true;
        self.skip_claimed();
        Some(&self.events[index])
    }

    /// The tasks a driver turn woke, as far as the log shows: of the
    /// events from the cursor up to the next turn (at most `scan` of
    /// them), the tasks whose first event there waits for input (a read,
    /// an accept, a datagram, a timer), in log order. The recording's
    /// driver queued them in that order, before anything they woke.
    pub fn woken_by_turn(&self, scan: usize) -> Vec<TaskId> {
        let mut seen: Vec<TaskId> = Vec::new();
        let mut woken = Vec::new();
        for event in self.events.iter().skip(self.cursor).take(scan) {
            if matches!(event.kind, EventKind::DriverTurn { .. }) {
                break;
            }
            if self.claimed_at(event) || seen.contains(&event.task) {
                continue;
            }
            seen.push(event.task);
            if matches!(
                event.kind,
                EventKind::TcpRead { .. }
                    | EventKind::TcpAccept { .. }
                    | EventKind::UdpRecv { .. }
                    | EventKind::TcpConnect { .. }
                    | EventKind::TimerFired { .. }
                    | EventKind::Signal { .. }
            ) {
                woken.push(event.task);
            }
        }
        woken
    }

    fn claimed_at(&self, event: &Event) -> bool {
        self.position_of(event.seq)
            .is_some_and(|index| self.claimed[index])
    }

    /// The logical id of a task library code started with `tokio::spawn`
    /// whose first intercepted call is `call`: of the recording's adopted
    /// tasks not handed out yet, the first in log order whose first event
    /// after its adoption is that call (the same operation on the same
    /// socket; library clock readings are passed, as replay passes them),
    /// else the first. The recording adopted a task at its first *logged*
    /// call (a read is logged when it completes), replay at its first
    /// call (a read asks the gate when first polled), so the order alone
    /// would swap two connections' tasks whose bytes came in the other
    /// order. `None` once the log's are used up.
    ///
    /// With `exact`, only a task whose first call matches is handed out
    /// (`None` otherwise, and nothing is taken): a read still pending is
    /// not logged, so a task may poll one before its first logged call.
    pub fn next_adoption(&mut self, call: &Call<'_>, exact: bool) -> Option<TaskId> {
        let first_call_matches = |task: &TaskId| {
            let Some(track) = self.tasks.get(task) else {
                return false;
            };
            let mut after = track
                .events
                .iter()
                .skip(1)
                .map(|&index| &self.events[index].kind);
            if is_reading_call(call) {
                return after.next().is_some_and(is_reading);
            }
            after
                .find(|kind| !is_reading(kind))
                .is_some_and(|kind| match_call(call, kind) != Match::Other)
        };
        let position = match self.adoptions.iter().position(first_call_matches) {
            Some(position) => position,
            None if exact => return None,
            None => 0,
        };
        self.adoptions.remove(position)
    }

    /// The masked ranges of the event with this seq, if the recording
    /// redacted it.
    pub fn redaction(&self, seq: u64) -> Option<&[(u32, u32)]> {
        self.redacted.get(&seq).map(Vec::as_slice)
    }

    /// Events the recording redacted (reads, datagrams and writes).
    pub fn redacted_events(&self) -> usize {
        self.redacted.len()
    }

    /// Redacted reads and datagrams handed to the service so far.
    pub fn redacted_uses(&self) -> u64 {
        self.redacted_uses
    }

    /// The last redacted read or datagram handed to the service.
    pub fn last_redacted_use(&self) -> Option<&RedactedUse> {
        self.last_redacted_use.as_ref()
    }

    /// Task `task`'s next recorded event (not yet released or claimed):
    /// what its next call must match.
    pub fn next_event_of(&self, task: TaskId) -> Option<&Event> {
        self.next_index(task).map(|index| &self.events[index])
    }

    /// Note a released read or datagram that the recording redacted.
    fn note_consumed(&mut self, index: usize) {
        let event = &self.events[index];
        let Some(ranges) = self.redacted.get(&event.seq) else {
            return;
        };
        let consumed = matches!(
            event.kind,
            EventKind::TcpRead {
                result: ReadOutcome::Data(_),
                ..
            } | EventKind::UdpRecv { result: Ok(_), .. }
        );
        if !consumed {
            return;
        }
        let used = RedactedUse {
            seq: event.seq,
            task: event.task,
            conn: event.kind.conn(),
            ranges: ranges.clone(),
        };
        self.redacted_uses += 1;
        self.redacted_used.insert(event.task, used.clone());
        self.last_redacted_use = Some(used);
    }

    /// How the recording ends.
    pub fn tail(&self) -> &LogTail {
        &self.tail
    }

    /// The next event to be released, if any.
    pub fn cursor_event(&self) -> Option<&Event> {
        self.events.get(self.cursor)
    }

    /// The events the cursor passed from position `from` on (see
    /// [`Gate::released`]), in log order.
    pub fn passed_since(&self, from: usize) -> &[Event] {
        &self.events[from.min(self.cursor)..self.cursor]
    }

    /// How many events have been released.
    pub fn released(&self) -> usize {
        self.cursor
    }

    /// Usable events in the log (up to the first gap).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True if the log has no usable events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// True once every recorded event has been released.
    pub fn finished(&self) -> bool {
        self.cursor == self.events.len()
    }

    /// Synchronous calls made after their task's last recorded event.
    pub fn beyond_log_calls(&self) -> u64 {
        self.beyond_log
    }

    /// The last event the cursor passed.
    pub fn last_released(&self) -> Option<&Event> {
        self.cursor.checked_sub(1).map(|last| &self.events[last])
    }

    /// The first recorded event of `task`.
    pub fn first_of(&self, task: TaskId) -> Option<&Event> {
        let index = *self.tasks.get(&task)?.events.first()?;
        Some(&self.events[index])
    }

    /// Virtual monotonic time: the time of the last released event.
    pub fn now_ns(&self) -> u64 {
        self.cursor
            .checked_sub(1)
            .map_or(0, |last| self.events[last].mono_ns)
    }

    /// Where the event with this seq sits in the log (0 for the first).
    pub fn position_of(&self, seq: u64) -> Option<usize> {
        self.events
            .binary_search_by_key(&seq, |event| event.seq)
            .ok()
    }

    /// The log's events with seq below `seq`, the last `count` of them.
    pub fn events_before(&self, seq: u64, count: usize) -> &[Event] {
        let end = self.events.partition_point(|event| event.seq < seq);
        &self.events[end.saturating_sub(count)..end]
    }

    /// The last `count` events `task` has taken (released or claimed),
    /// oldest first.
    pub fn taken_by(&self, task: TaskId, count: usize) -> Vec<&Event> {
        let Some(track) = self.tasks.get(&task) else {
            return Vec::new();
        };
        track.events[track.next.saturating_sub(count)..track.next]
            .iter()
            .map(|&index| &self.events[index])
            .collect()
    }

    /// Tasks that have taken an event and not yet ended, with the last
    /// event each took.
    pub fn live_tasks(&self) -> Vec<(TaskId, &Event)> {
        self.tasks
            .iter()
            .filter_map(|(task, track)| {
                let last = &self.events[*track.events.get(track.next.checked_sub(1)?)?];
                let ended = matches!(
                    last.kind,
                    EventKind::TaskEnd { .. } | EventKind::Exit { .. }
                );
                (!ended).then_some((*task, last))
            })
            .collect()
    }

    /// Task `task` makes the asynchronous `call`: release it, make it
    /// wait, or diverge.
    ///
    /// A call past the task's last event waits if it waits for input (a
    /// read, an accept, a timer: it was still pending when the recording
    /// ended) and diverges otherwise, when the recording is complete.
    pub fn poll(&mut self, task: TaskId, call: &Call<'_>) -> Result<Gated<'_>, Box<Divergence>> {
        if !is_reading_call(call) {
            self.pass_readings(task);
        }
        let Some(index) = self.next_index(task) else {
            if call.waits_for_input() || !matches!(self.tail, LogTail::Exit { .. }) {
                return Ok(Gated::Wait);
            }
            return Err(self.divergence(DivergenceKind::ExtraCall, task, None, call.to_string()));
        };
        match match_call(call, &self.events[index].kind) {
            // Not reported before the cursor gets there: an earlier event
            // may differ too, and the report names the first one. The
            // task is woken when the cursor reaches its event.
            Match::Conflict(_) if index != self.cursor => Ok(Gated::Wait),
            Match::Conflict(why) => Err(self.divergence(
                DivergenceKind::Conflict(why),
                task,
                Some(index),
                call.to_string(),
            )),
            Match::Other => Ok(Gated::Wait),
            Match::Same if index != self.cursor => Ok(Gated::Wait),
            Match::Same => {
                debug_assert_eq!(self.events[index].task, task);
                self.take_next(task);
                self.note_consumed(index);
                self.cursor += 1;
                self.skip_claimed();
                Ok(Gated::Ready(&self.events[index]))
            }
        }
    }

    /// Task `task` makes a synchronous `call` (a clock reading, a spawn, a
    /// mark, a drop): it cannot wait, so it takes the task's next event now
    /// and the cursor passes it when it gets there. Program order inside a
    /// task is exact, so anything but the same operation is a divergence.
    ///
    /// Clock readings made through the C library are the exception: a
    /// library may read the clock on every poll of its task (hyper reads
    /// it for its `Date` header), and replay does not poll a task exactly
    /// as often as the recording's scheduler did. A reading is not an
    /// effect, so a task's recorded library readings that its next other
    /// call finds still pending are passed, and a library reading with
    /// none recorded next is [`Claimed::Unrecorded`]; both are counted
    /// ([`Gate::readings_unmatched`]). Readings through `deja::time` stay
    /// in program order like every other call.
    pub fn claim(&mut self, task: TaskId, call: &Call<'_>) -> Result<Claimed<'_>, Box<Divergence>> {
        if is_reading_call(call) {
            let recorded_here = self
                .next_index(task)
                .is_some_and(|index| match_call(call, &self.events[index].kind) == Match::Same);
            if !recorded_here && self.next_index(task).is_some() {
                self.readings_unmatched += 1;
                return Ok(Claimed::Unrecorded);
            }
        } else {
            self.pass_readings(task);
        }
        let Some(index) = self.next_index(task) else {
            if call.is_effect() && matches!(self.tail, LogTail::Exit { .. }) {
                return Err(self.divergence(
                    DivergenceKind::ExtraCall,
                    task,
                    None,
                    call.to_string(),
                ));
            }
            self.beyond_log += 1;
            return Ok(Claimed::BeyondLog);
        };
        match match_call(call, &self.events[index].kind) {
            Match::Same => {
                self.take_next(task);
                self.claimed[index] = true;
                self.skip_claimed();
                Ok(Claimed::Event(&self.events[index]))
            }
            Match::Conflict(why) => Err(self.divergence(
                DivergenceKind::Conflict(why),
                task,
                Some(index),
                call.to_string(),
            )),
            Match::Other => Err(self.divergence(
                DivergenceKind::Conflict(format!(
                    "the task did {call}, the recording did {}",
                    recorded_call(&self.events[index].kind)
                )),
                task,
                Some(index),
                call.to_string(),
            )),
        }
    }

    /// Pass `task`'s recorded clock readings ahead of its next other
    /// event: the replay went on without making them (see [`Gate::claim`]).
    fn pass_readings(&mut self, task: TaskId) {
        let mut passed = false;
        while let Some(index) = self.next_index(task) {
            if !is_reading(&self.events[index].kind) {
                break;
            }
            self.take_next(task);
            self.claimed[index] = true;
            self.readings_unmatched += 1;
            passed = true;
        }
        if passed {
            self.skip_claimed();
        }
    }

    /// Clock readings recorded but not made in replay, plus readings made
    /// in replay but not recorded there (see [`Gate::claim`]).
    pub fn readings_unmatched(&self) -> u64 {
        self.readings_unmatched
    }

    fn take_next(&mut self, task: TaskId) {
        self.tasks.get_mut(&task).expect("indexed").next += 1;
    }

    /// Move the cursor past events whose synchronous calls already happened.
    fn skip_claimed(&mut self) {
        while self.cursor < self.events.len() && self.claimed[self.cursor] {
            self.cursor += 1;
        }
    }

    /// The task whose event is at the cursor: the one the executor must
    /// let run next.
    pub fn cursor_task(&self) -> Option<TaskId> {
        self.cursor_event().map(|event| event.task)
    }

    fn next_index(&self, task: TaskId) -> Option<usize> {
        let track = self.tasks.get(&task)?;
        track.events.get(track.next).copied()
    }

    /// The executor found no runnable task before the log's end: report
    /// which event nobody asks for, and what each task waits on instead
    /// (`pending`: task and a description of its pending calls).
    /// At the end of a log that stops at a gap, the report is the gap.
    pub fn stalled(&self, pending: &[(TaskId, String)]) -> Box<Divergence> {
        let Some(event) = self.cursor_event() else {
            let (task, actual) = pending
                .first()
                .cloned()
                .unwrap_or((TaskId::MAIN, "nothing".into()));
            if let LogTail::Gap(gap) = &self.tail {
                let mut report =
                    self.divergence(DivergenceKind::LogIncomplete, gap.task, None, actual);
                report.expected = Some(gap.clone());
                return report;
            }
            return self.divergence(DivergenceKind::ExtraCall, task, None, actual);
        };
        let task = event.task;
        let mut actual = Vec::with_capacity(pending.len() + 1);
        if !pending.iter().any(|(t, _)| *t == task) {
            // The usual cause when the code changed: the task now waits on
            // something outside the log before it gets to this call.
            actual.push(format!(
                "task {task} never made this call: it is blocked on something deja does not \
                 record (a lock, a channel, a join) or no longer runs this code"
            ));
        }
        actual.extend(
            pending
                .iter()
                .map(|(t, calls)| format!("task {t} waits on {calls}")),
        );
        let actual = actual.join("; ");
        self.divergence(DivergenceKind::Stalled, task, Some(self.cursor), actual)
    }

    fn divergence(
        &self,
        kind: DivergenceKind,
        task: TaskId,
        expected: Option<usize>,
        actual: String,
    ) -> Box<Divergence> {
        // The log just before the differing event; a conflict can be seen
        // before the cursor gets there (the task runs ahead to its call).
        let context_end = expected.unwrap_or(self.cursor).min(self.events.len());
        let recent_from = context_end.saturating_sub(REPORT_CONTEXT_EVENTS);
        Box::new(Divergence {
            kind,
            task,
            expected: expected.map(|index| self.events[index].clone()),
            actual,
            recent: self.events[recent_from..context_end].to_vec(),
            after_redacted: self
                .redacted_used
                .get(&task)
                .or(self.last_redacted_use.as_ref())
                .cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deja_recorder::{ReadOutcome, Written};

    fn event(seq: u64, task: u64, kind: EventKind) -> Event {
        Event {
            seq,
            task: TaskId(task),
            mono_ns: seq * 10,
            kind,
        }
    }

    fn read(conn: u64) -> EventKind {
        EventKind::TcpRead {
            conn: ConnId(conn),
            result: ReadOutcome::Data(b"x".to_vec()),
        }
    }

    /// Two tasks whose reads were recorded interleaved: 1, 2, 1.
    fn interleaved() -> Gate {
        Gate::new(vec![
            event(0, 1, read(10)),
            event(1, 2, read(20)),
            event(2, 1, read(10)),
        ])
    }

    #[test]
    fn a_changed_write_ahead_of_the_cursor_waits_so_the_first_change_is_reported() {
        let write = |conn: u64, bytes: &[u8]| EventKind::TcpWrite {
            conn: ConnId(conn),
            result: Ok(deja_recorder::Written::of(bytes, false)),
        };
        let mut gate = Gate::new(vec![
            event(0, 1, write(10, b"a")),
            event(1, 2, write(20, b"b")),
        ]);
        let changed = |conn: u64, bytes: &'static [u8]| Call::TcpWrite {
            conn: ConnId(conn),
            bytes,
        };
        // Task 2's write differs too, but task 1's, earlier in the log, is
        // the first difference.
        assert_eq!(gate.poll(TaskId(2), &changed(20, b"B")), Ok(Gated::Wait));
        let err = gate.poll(TaskId(1), &changed(10, b"A")).unwrap_err();
        assert_eq!((err.seq(), err.task), (Some(0), TaskId(1)));
    }

    #[test]
    fn calls_are_released_in_the_recorded_interleaving() {
        let mut gate = interleaved();
        let t1 = Call::TcpRead { conn: ConnId(10) };
        let t2 = Call::TcpRead { conn: ConnId(20) };
        // Task 2 is early: it waits for task 1's first read.
        assert_eq!(gate.poll(TaskId(2), &t2), Ok(Gated::Wait));
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(e)) if e.seq == 0));
        // Task 1 is early for its second read: task 2 goes first.
        assert_eq!(gate.poll(TaskId(1), &t1), Ok(Gated::Wait));
        assert_eq!(gate.cursor_task(), Some(TaskId(2)));
        assert!(matches!(gate.poll(TaskId(2), &t2), Ok(Gated::Ready(e)) if e.seq == 1));
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(e)) if e.seq == 2));
        assert!(gate.finished());
        assert_eq!(gate.now_ns(), 20);
    }

    #[test]
    fn the_context_of_a_hit_comes_from_the_taken_events() {
        let mut gate = interleaved();
        let t1 = Call::TcpRead { conn: ConnId(10) };
        assert!(gate.live_tasks().is_empty());
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(_))));
        let seqs = |events: Vec<&Event>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(gate.taken_by(TaskId(1), 5)), [0]);
        assert!(gate.taken_by(TaskId(2), 5).is_empty());
        let live: Vec<(TaskId, u64)> = gate.live_tasks().iter().map(|(t, e)| (*t, e.seq)).collect();
        assert_eq!(live, [(TaskId(1), 0)]);
        let before: Vec<u64> = gate.events_before(2, 1).iter().map(|e| e.seq).collect();
        assert_eq!(before, [1]);
        assert!(gate.events_before(0, 4).is_empty());
    }

    #[test]
    fn a_write_with_other_bytes_diverges_at_once_with_a_report() {
        let mut gate = Gate::new(vec![
            event(0, 0, EventKind::ClockMono { ns: 5 }),
            event(
                1,
                0,
                EventKind::TcpWrite {
                    conn: ConnId(3),
                    result: Ok(Written::of(b"CHARGE 42", false)),
                },
            ),
        ]);
        assert!(gate.poll(TaskId(0), &Call::ClockMono).is_ok());
        let err = gate
            .poll(
                TaskId(0),
                &Call::TcpWrite {
                    conn: ConnId(3),
                    bytes: b"CHARGE 43",
                },
            )
            .unwrap_err();
        assert_eq!(err.seq(), Some(1));
        assert!(matches!(err.kind, DivergenceKind::Conflict(_)));
        assert_eq!(err.recent.len(), 1);
        let report = err.to_string();
        assert!(
            report.contains("replay diverged at seq 1 in task 0"),
            "{report}"
        );
        assert!(report.contains("CHARGE 43"), "{report}");
        assert!(report.contains("expected: #1"), "{report}");
    }

    #[test]
    fn a_longer_buffer_matches_a_partial_write() {
        let mut gate = Gate::new(vec![event(
            0,
            0,
            EventKind::TcpWrite {
                conn: ConnId(3),
                result: Ok(Written::of(b"CHARGE", false)),
            },
        )]);
        let call = Call::TcpWrite {
            conn: ConnId(3),
            bytes: b"CHARGE 42",
        };
        assert!(matches!(gate.poll(TaskId(0), &call), Ok(Gated::Ready(_))));
    }

    #[test]
    fn an_effect_past_the_tasks_last_event_diverges_in_a_complete_log() {
        let mut gate = Gate::new(vec![
            event(0, 1, EventKind::ClockMono { ns: 1 }),
            event(1, 0, EventKind::Exit { code: 0 }),
        ]);
        assert!(gate.poll(TaskId(1), &Call::ClockMono).is_ok());
        // A read still pending at exit is normal...
        assert_eq!(
            gate.poll(TaskId(1), &Call::TcpRead { conn: ConnId(1) }),
            Ok(Gated::Wait)
        );
        // ...a write the recording never made is not.
        let write = Call::TcpWrite {
            conn: ConnId(1),
            bytes: b"late",
        };
        let err = gate.poll(TaskId(1), &write).unwrap_err();
        assert_eq!(err.kind, DivergenceKind::ExtraCall);
        assert!(err.to_string().contains("after the end of the log"));
    }

    #[test]
    fn calls_past_the_end_of_a_cut_log_wait_or_read_beyond_it() {
        let mut gate = Gate::new(vec![event(0, 1, EventKind::ClockMono { ns: 1 })]);
        assert_eq!(gate.tail(), &LogTail::Cut);
        assert!(gate.poll(TaskId(1), &Call::ClockMono).is_ok());
        let write = Call::TcpWrite {
            conn: ConnId(1),
            bytes: b"late",
        };
        assert_eq!(gate.poll(TaskId(1), &write), Ok(Gated::Wait));
        assert_eq!(
            gate.claim(TaskId(1), &Call::ClockMono),
            Ok(Claimed::BeyondLog)
        );
        assert_eq!(gate.beyond_log_calls(), 1);
    }

    #[test]
    fn claims_take_values_early_and_the_cursor_passes_them_later() {
        let mut gate = Gate::new(vec![
            event(0, 1, read(10)),
            event(1, 2, EventKind::ClockMono { ns: 77 }),
            event(
                2,
                2,
                EventKind::Spawn {
                    child: TaskId(3),
                    name: None,
                },
            ),
            event(3, 1, read(10)),
        ]);
        // Task 2 runs early: its clock reading and spawn are claimed now.
        let Ok(Claimed::Event(clock)) = gate.claim(TaskId(2), &Call::ClockMono) else {
            panic!("clock not claimed")
        };
        assert_eq!(clock.kind, EventKind::ClockMono { ns: 77 });
        assert!(matches!(
            gate.claim(TaskId(2), &Call::Spawn),
            Ok(Claimed::Event(e)) if e.seq == 2
        ));
        assert_eq!(gate.cursor_task(), Some(TaskId(1)));
        let t1 = Call::TcpRead { conn: ConnId(10) };
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(e)) if e.seq == 0));
        // The claimed events are passed: task 1's second read is next.
        assert_eq!(gate.cursor_event().map(|e| e.seq), Some(3));
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(e)) if e.seq == 3));
        assert!(gate.finished());
    }

    #[test]
    fn a_claim_of_another_operation_diverges_at_once() {
        let mut gate = Gate::new(vec![event(0, 1, EventKind::Entropy { bytes: vec![7] })]);
        let err = gate
            .claim(
                TaskId(1),
                &Call::Mark {
                    name: "x",
                    value: b"",
                },
            )
            .unwrap_err();
        assert_eq!(err.seq(), Some(0));
        assert!(
            err.to_string().contains("the recording did entropy"),
            "{err}"
        );
    }

    #[test]
    fn clock_readings_not_made_in_replay_are_passed_and_extra_ones_are_unrecorded() {
        let mark = EventKind::Mark {
            name: "m".into(),
            value: vec![],
        };
        let mut gate = Gate::new(vec![
            event(0, 1, EventKind::LibClockMono { ns: 1 }),
            event(1, 1, EventKind::LibClockWall { unix_ns: 2 }),
            event(2, 1, mark),
            event(3, 1, EventKind::LibClockMono { ns: 3 }),
        ]);
        let mark_call = Call::Mark {
            name: "m",
            value: b"",
        };
        // The first reading is made; the wall reading is not: the mark passes it.
        assert!(matches!(
            gate.claim(TaskId(1), &Call::LibClockMono),
            Ok(Claimed::Event(_))
        ));
        assert!(matches!(
            gate.claim(TaskId(1), &mark_call),
            Ok(Claimed::Event(_))
        ));
        // A wall reading where a monotonic one was recorded: unrecorded,
        // and the recorded one is still there for the monotonic reading.
        assert_eq!(
            gate.claim(TaskId(1), &Call::LibClockWall),
            Ok(Claimed::Unrecorded)
        );
        match gate.claim(TaskId(1), &Call::LibClockMono) {
            Ok(Claimed::Event(event)) => assert_eq!(event.seq, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(gate.readings_unmatched(), 2);
        assert!(gate.finished());
    }

    #[test]
    fn a_deja_clock_reading_the_code_no_longer_makes_diverges_at_it() {
        let mark = EventKind::Mark {
            name: "m".into(),
            value: vec![],
        };
        let mut gate = Gate::new(vec![
            event(0, 1, EventKind::ClockWall { unix_ns: 2 }),
            event(1, 1, mark),
        ]);
        let call = Call::Mark {
            name: "m",
            value: b"",
        };
        let err = gate.claim(TaskId(1), &call).unwrap_err();
        assert_eq!(err.seq(), Some(0));
    }

    #[test]
    fn a_mark_of_another_name_names_the_recorded_mark() {
        let recorded = EventKind::Mark {
            name: "apply".into(),
            value: b"2".to_vec(),
        };
        let mut gate = Gate::new(vec![event(0, 1, recorded)]);
        let call = Call::Mark {
            name: "defer",
            value: b"2",
        };
        let err = gate.claim(TaskId(1), &call).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"the task did mark defer="2", the recording did mark apply="2""#),
            "{err}"
        );
    }

    #[test]
    fn a_stall_says_when_the_expected_task_waits_outside_the_log() {
        let gate = interleaved();
        let expected = gate.cursor_event().expect("an event at the cursor").task;
        let err = gate.stalled(&[]);
        assert_eq!(err.task, expected);
        assert!(
            err.to_string().contains(&format!(
                "task {expected} never made this call: it is blocked"
            )),
            "{err}"
        );
    }

    #[test]
    fn a_different_operation_waits_and_the_stall_names_both_sides() {
        let mut gate = interleaved();
        // Task 1 now reads another connection: not conclusive on its own.
        assert_eq!(
            gate.poll(TaskId(1), &Call::TcpRead { conn: ConnId(99) }),
            Ok(Gated::Wait)
        );
        let err = gate.stalled(&[(TaskId(1), "tcp_read conn=99".into())]);
        assert_eq!(err.kind, DivergenceKind::Stalled);
        assert_eq!(err.seq(), Some(0));
        assert!(
            err.to_string().contains("task 1 waits on tcp_read conn=99"),
            "{err}"
        );
    }

    #[test]
    fn replay_stops_at_the_first_gap() {
        let mut gate = Gate::new(vec![
            event(0, 0, EventKind::ClockMono { ns: 1 }),
            event(
                3,
                0,
                EventKind::Gap {
                    first_lost_seq: 1,
                    lost: 2,
                    reason: deja_recorder::GapReason::QueueFull,
                },
            ),
            event(4, 0, EventKind::ClockMono { ns: 2 }),
        ]);
        assert!(matches!(gate.tail(), LogTail::Gap(_)));
        assert_eq!(gate.len(), 1);
        assert!(gate.poll(TaskId(0), &Call::ClockMono).is_ok());
        assert!(gate.finished());
        let err = gate.stalled(&[]);
        assert_eq!(err.kind, DivergenceKind::LogIncomplete);
        assert_eq!(err.seq(), Some(3));
    }

    /// Task 1 reads a redacted request (seq 0, marker seq 1), task 2 reads
    /// a plain one, then task 1 writes.
    fn redacted_log() -> Gate {
        Gate::new(vec![
            event(0, 1, read(10)),
            event(
                1,
                1,
                EventKind::Redacted {
                    seq_of: 0,
                    ranges: vec![(0, 1)],
                },
            ),
            event(2, 2, read(20)),
            event(
                3,
                1,
                EventKind::TcpWrite {
                    conn: ConnId(10),
                    result: Ok(Written::of(b"200", false)),
                },
            ),
        ])
    }

    #[test]
    fn redacted_markers_are_not_calls_and_their_reads_are_counted() {
        let mut gate = redacted_log();
        assert_eq!((gate.len(), gate.redacted_events()), (3, 1));
        assert_eq!(gate.redaction(0), Some(&[(0, 1)][..]));
        assert_eq!(gate.redaction(2), None);
        let t1 = Call::TcpRead { conn: ConnId(10) };
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(e)) if e.seq == 0));
        let used = gate.last_redacted_use().expect("noted").clone();
        assert_eq!(
            (used.seq, used.task, used.conn),
            (0, TaskId(1), Some(ConnId(10)))
        );
        assert_eq!(
            used.to_string(),
            "seq 0 (task 1, conn 10): 1 redacted bytes consumed at offsets 0..1; \
             the service saw masks, not the recorded data"
        );
        // The marker is not task 1's next event: its write is.
        assert_eq!(gate.next_event_of(TaskId(1)).map(|e| e.seq), Some(3));
        let t2 = Call::TcpRead { conn: ConnId(20) };
        assert!(matches!(gate.poll(TaskId(2), &t2), Ok(Gated::Ready(e)) if e.seq == 2));
        assert_eq!(gate.redacted_uses(), 1);
        let write = Call::TcpWrite {
            conn: ConnId(10),
            bytes: b"200",
        };
        assert!(matches!(gate.poll(TaskId(1), &write), Ok(Gated::Ready(e)) if e.seq == 3));
        assert!(gate.finished());
    }

    #[test]
    fn a_divergence_after_a_redacted_read_says_so() {
        let mut gate = redacted_log();
        let t1 = Call::TcpRead { conn: ConnId(10) };
        assert!(gate.poll(TaskId(1), &t1).is_ok());
        let t2 = Call::TcpRead { conn: ConnId(20) };
        assert!(gate.poll(TaskId(2), &t2).is_ok());
        let err = gate
            .poll(
                TaskId(1),
                &Call::TcpWrite {
                    conn: ConnId(10),
                    bytes: b"401",
                },
            )
            .unwrap_err();
        assert_eq!(err.seq(), Some(3));
        assert_eq!(err.after_redacted.as_ref().map(|used| used.seq), Some(0));
        assert!(
            err.to_string()
                .contains("note: this divergence follows consumption of redacted data at seq 0"),
            "{err}"
        );
        // Without a redacted read there is no note.
        let mut plain = interleaved();
        let err = plain
            .poll(
                TaskId(1),
                &Call::TcpWrite {
                    conn: ConnId(10),
                    bytes: b"x",
                },
            )
            .map(|_| ())
            .err();
        assert!(err.is_none_or(|err| err.after_redacted.is_none()));
    }

    #[test]
    fn marks_with_another_value_diverge() {
        let mut gate = Gate::new(vec![event(
            0,
            0,
            EventKind::Mark {
                name: "order".into(),
                value: b"42".to_vec(),
            },
        )]);
        let err = gate
            .claim(
                TaskId(0),
                &Call::Mark {
                    name: "order",
                    value: b"43",
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("mark order is \"43\""), "{err}");
    }
}
