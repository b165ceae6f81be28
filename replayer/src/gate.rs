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
use std::time::Duration;

use deja_recorder::event::{redacted_bytes, write_ranges};
use deja_recorder::{content_hash, ConnId, Event, EventKind, ReadOutcome, TaskId, TaskOutcome};

/// Events shown before the divergence point in a report.
pub const REPORT_CONTEXT_EVENTS: usize = 8;

/// How far back from the cursor a library reading in a poll the recording
/// did not make looks for the last reading of its clock (see
/// [`Gate::claim`]): a busy service reads the clock every few events, and
/// a scan this long costs microseconds; none found, it reads virtual time.
const REPEAT_SCAN_EVENTS_MAX: usize = 4096;

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
        /// What the code armed it for: checked against the recording.
        target: TimerTarget,
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
    /// Dropping a UDP socket.
    UdpClose {
        /// The socket.
        socket: ConnId,
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
    /// `deja::mark_end(name)`.
    MarkEnd {
        /// The name.
        name: &'a str,
    },
    /// Waiting for a signal.
    Signal,
    /// The process is exiting with this code.
    Exit {
        /// The exit code.
        code: i32,
    },
}

/// What a timer was armed for, as the replaying code computed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerTarget {
    /// `sleep(d)`, `timeout(d)`: a duration from when it was armed.
    After {
        /// The duration in nanoseconds.
        duration_ns: u64,
    },
    /// `sleep_until(t)`, `timeout_at(t)`, an `interval`'s ticks: an instant.
    At {
        /// The deadline in run nanoseconds.
        deadline_ns: u64,
    },
}

impl fmt::Display for TimerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerTarget::After { duration_ns } => {
                write!(f, "sleep {:?}", Duration::from_nanos(*duration_ns))
            }
            TimerTarget::At { deadline_ns } => {
                write!(f, "deadline +{}", seconds(*deadline_ns))
            }
        }
    }
}

/// Run nanoseconds as `1.002000000s`.
fn seconds(ns: u64) -> String {
    format!("{}.{:09}s", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// A timer armed for `target` matches a recorded firing whose deadline
/// was `deadline_ns` (and whose duration was `duration_ns`, when the
/// recording kept it): a deadline is compared exactly, a duration too. A
/// `sleep(d)` against a log that kept only the deadline (written before
/// `TimerSlept` existed) cannot be checked: the instant it was armed at
/// is not in the log.
fn check_timer(target: &TimerTarget, deadline_ns: u64, duration_ns: Option<u64>) -> Match {
    let recorded = match duration_ns {
        Some(duration) => format!(
            "the recording slept {:?} (deadline +{})",
            Duration::from_nanos(duration),
            seconds(deadline_ns)
        ),
        None => format!("the recording's deadline was +{}", seconds(deadline_ns)),
    };
    let same = match (target, duration_ns) {
        (TimerTarget::At { deadline_ns: at }, _) => *at == deadline_ns,
        (TimerTarget::After { duration_ns: d }, Some(recorded)) => *d == recorded,
        (TimerTarget::After { .. }, None) => true,
    };
    if same {
        Match::Same
    } else {
        Match::Conflict(format!(
            "the timer was armed otherwise: {target} here, {recorded}"
        ))
    }
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
                | Call::UdpClose { .. }
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
            Call::Timer { timer, target } => write!(f, "timer_fired timer={timer} {target}"),
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
            Call::UdpClose { socket } => write!(f, "udp_close conn={socket}"),
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
            Call::MarkEnd { name } => write!(f, "mark_end {name}"),
            Call::Signal => f.write_str("signal"),
            Call::Exit { code } => write!(f, "exit code={code}"),
        }
    }
}

/// A recorded event that waited for the world (input, a timer, a signal).
fn waits_for_input(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::TcpRead { .. }
            | EventKind::TcpAccept { .. }
            | EventKind::UdpRecv { .. }
            | EventKind::Signal { .. }
            | EventKind::TimerFired { .. }
            | EventKind::TimerSlept { .. }
    )
}

/// A write or datagram sent: it completes at once, as a rule.
fn is_write(call: &Call<'_>) -> bool {
    matches!(call, Call::TcpWrite { .. } | Call::UdpSend { .. })
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

/// An event a synchronous call claims (see [`Gate::claim`]); the others
/// are polled and released at the cursor.
fn is_claimed_kind(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::ClockMono { .. }
            | EventKind::ClockWall { .. }
            | EventKind::LibClockMono { .. }
            | EventKind::LibClockWall { .. }
            | EventKind::RootSeed { .. }
            | EventKind::Entropy { .. }
            | EventKind::Spawn { .. }
            | EventKind::TaskEnd { .. }
            | EventKind::TaskAdopted { .. }
            | EventKind::Mark { .. }
            | EventKind::MarkEnd { .. }
            | EventKind::TcpClose { .. }
            | EventKind::UdpClose { .. }
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
        (Call::Timer { timer, target }, E::TimerFired { timer: t, deadline_ns }) if timer == t => {
            check_timer(target, *deadline_ns, None)
        }
        (
            Call::Timer { timer, target },
            E::TimerSlept {
                timer: t,
                deadline_ns,
                duration_ns,
            },
        ) if timer == t => check_timer(target, *deadline_ns, Some(*duration_ns)),
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
        | (Call::UdpClose { socket: conn }, E::UdpClose { socket: c })
        // Logs written before `udp_close` existed have a UDP socket's
        // close as `tcp_close`.
        | (Call::UdpClose { socket: conn }, E::TcpClose { conn: c })
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
        (Call::MarkEnd { name }, E::MarkEnd { name: n }) => {
            if name == n {
                Match::Same
            } else {
                Match::Conflict(format!("mark {name} ends, the recording ended mark {n}"))
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
/// first `len` of them with the same hash. A mismatch says where the two
/// first differ and shows the bytes around there on both sides, when the
/// recording kept its bytes; when it kept only a hash, it says so and
/// shows this write's bytes.
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
        let replayed = &bytes[..len.min(bytes.len())];
        if replayed == recorded.as_slice() {
            return Match::Same;
        }
        let offset = replayed
            .iter()
            .zip(recorded.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(replayed.len().min(recorded.len()));
        let (start, end) = window_around(offset, replayed.len().max(recorded.len()));
        return Match::Conflict(format!(
            "writes other bytes: they first differ at byte {offset} of {len} \
             (\"{}\" here, the recording wrote \"{}\")\n    recorded:\n{}    this write:\n{}",
            preview(&replayed[offset.min(replayed.len())..]),
            preview(&recorded[offset.min(recorded.len())..]),
            hex_window(recorded, start, end),
            hex_window(replayed, start, end),
        ));
    }
    let shown = &bytes[..len.min(bytes.len())];
    let what = if bytes.len() < len {
        format!("writes {} bytes, the recording wrote {len}", bytes.len())
    } else if content_hash(shown) != written.hash {
        format!(
            "writes other bytes: \"{}\" (hash {:016x}), the recording wrote {len} bytes with hash {:016x}",
            preview(shown),
            content_hash(shown),
            written.hash,
        )
    } else {
        return Match::Same;
    };
    let end = shown.len().min(HASH_ONLY_SHOWN_BYTES);
    Match::Conflict(format!(
        "{what}; it kept only the hash, so where they differ is unknown (record with \
         DEJA_KEEP_WRITES=1 to keep the bytes)\n    this write{}:\n{}",
        if shown.len() > end {
            format!(" (its first {end} of {} bytes)", shown.len())
        } else {
            String::new()
        },
        hex_window(shown, 0, end),
    ))
}

/// Bytes shown before the first difference of two writes.
const WINDOW_BEFORE_BYTES: usize = 32;
/// Bytes shown of a write around its first difference: four rows.
const WINDOW_BYTES: usize = 64;
/// Bytes of a write shown when the recording kept only its hash.
const HASH_ONLY_SHOWN_BYTES: usize = 256;

/// The rows of a hex dump around `offset` in bytes of length `len`,
/// starting on a 16-byte row.
fn window_around(offset: usize, len: usize) -> (usize, usize) {
    let start = offset.saturating_sub(WINDOW_BEFORE_BYTES) / 16 * 16;
    (start, (start + WINDOW_BYTES).min(len.max(start)))
}

/// `bytes[start..end]` (clamped) as hex dump rows: offset, 16 bytes in
/// hex, and the same as text (`.` for what is not printable).
fn hex_window(bytes: &[u8], start: usize, end: usize) -> String {
    use fmt::Write as _;
    let end = end.min(bytes.len());
    let mut out = String::new();
    if start >= end {
        let _ = writeln!(out, "      {start:>8}  (ends here: {} bytes)", bytes.len());
        return out;
    }
    for row in (start..end).step_by(16) {
        let chunk = &bytes[row..(row + 16).min(end)];
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "      {row:>8}  {:<47}  |{text}|", hex.join(" "));
    }
    out
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
            Some(event) if event.task != self.task && self.kind == DivergenceKind::ExtraCall => {
                writeln!(f, "  expected: {event}")?;
                writeln!(
                    f,
                    "  (task {} has no more events: the call came where the log has this one)",
                    self.task
                )?;
            }
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
    /// A library clock reading in a poll the recording did not make (see
    /// [`Gate::claim`]): the runtime answers with this reading, the last
    /// of that clock the cursor passed or the task took, so the time
    /// stands still. It is not the task's event and is not taken.
    Repeated(&'a Event),
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
    /// Events whose place in the log replay does not hold anyone to (see
    /// [`Gate::claim`]): library clock readings, adoptions, and every
    /// event of a task library code started or of a thread outside any task.
    soft: Vec<bool>,
    /// Tasks whose first event is `TaskAdopted` (started by library code).
    adopted: std::collections::BTreeSet<TaskId>,
    /// Synchronous calls are held to their place in the log (see
    /// [`Gate::set_strict_order`]).
    strict_order: bool,
    /// Tasks parked at the gate: their last call waits (for the cursor, or
    /// as a pending branch of a `select!`) and they took no event since.
    waiting: std::collections::BTreeSet<TaskId>,
    /// The task that took the last event (released or claimed).
    last_taker: Option<TaskId>,
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
        let mut adopted = std::collections::BTreeSet::new();
        for (index, event) in events.iter().enumerate() {
            // Driver turns are nobody's calls: only `pass_turn` takes them.
            if matches!(event.kind, EventKind::DriverTurn { .. }) {
                has_turns = true;
                continue;
            }
            let track = tasks.entry(event.task).or_default();
            if track.events.is_empty() && matches!(event.kind, EventKind::TaskAdopted { .. }) {
                adoptions.push_back(event.task);
                adopted.insert(event.task);
            }
            track.events.push(index);
        }
        let soft = events
            .iter()
            .map(|event| {
                is_reading(&event.kind)
                    || matches!(event.kind, EventKind::TaskAdopted { .. })
                    || event.task == TaskId::OUTSIDE
                    || adopted.contains(&event.task)
            })
            .collect();
        Gate {
            waiting: std::collections::BTreeSet::new(),
            last_taker: None,
            soft,
            adopted,
            strict_order: true,
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
        let EventKind::DriverTurn { clock_ns, .. } = self.events.get(index)?.kind else {
            return None;
        };
        self.turn_ns = clock_ns;
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
        let batch = self.events.iter().enumerate().skip(self.cursor).take(scan);
        for (index, event) in batch {
            if matches!(event.kind, EventKind::DriverTurn { .. }) {
                break;
            }
            // A library reading the clock before its read says nothing
            // about what woke the task.
            if is_reading(&event.kind) || self.claimed[index] || seen.contains(&event.task) {
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
                    | EventKind::TimerSlept { .. }
                    | EventKind::Signal { .. }
            ) {
                woken.push(event.task);
            }
        }
        woken
    }

    /// Hold synchronous calls to their place in the log (the default), or
    /// not: a recording made on several worker threads (`DEJA_WORKERS`)
    /// ran tasks in parallel, so the order of two tasks' synchronous calls
    /// there says nothing about what caused what, and only each task's own
    /// order is checked.
    pub fn set_strict_order(&mut self, strict: bool) {
        self.strict_order = strict;
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

    /// Task `task`'s next recorded event (not yet released or claimed),
    /// library clock readings aside: what its next call must match.
    pub fn next_event_of(&self, task: TaskId) -> Option<&Event> {
        self.next_other_index(task).map(|index| &self.events[index])
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
    ///
    /// The task's library clock readings still pending before its event
    /// are passed only if the event would be taken now; otherwise they
    /// stay for the poll that goes on (see [`Gate::claim`]).
    pub fn poll(&mut self, task: TaskId, call: &Call<'_>) -> Result<Gated<'_>, Box<Divergence>> {
        if !is_reading_call(call) && !self.keeps_readings(task) {
            self.pass_readings(task);
        }
        let Some(index) = self.next_other_index(task) else {
            if call.waits_for_input() || !matches!(self.tail, LogTail::Exit { .. }) {
                return Ok(Gated::Wait);
            }
            let here = self.where_it_differs(task, self.events.len());
            return Err(self.divergence(DivergenceKind::ExtraCall, task, here, call.to_string()));
        };
        match match_call(call, &self.events[index].kind) {
            // A write with other bytes by a task still running since it
            // took its last event: in a recording on one thread nothing
            // else was logged in between (a write completes at once), so it
            // differs there. On several threads other tasks logged events
            // meanwhile, and one of those may differ first: that conflict,
            // like any, is reported when the cursor gets there.
            Match::Conflict(why)
                if is_write(call) && self.strict_order && self.last_taker == Some(task) =>
            {
                let here = self.where_it_differs(task, index).unwrap_or(index);
                let why = if here == index {
                    why
                } else {
                    format!(
                        "task {task} went on from its last event to this write, whose recorded \
                         twin is #{}: {why}",
                        self.events[index].seq
                    )
                };
                Err(self.divergence(
                    DivergenceKind::Conflict(why),
                    task,
                    Some(here),
                    call.to_string(),
                ))
            }
            // Not reported before the cursor gets there: an earlier event
            // may differ too, and the report names the first one. The
            // task is woken when the cursor reaches its event.
            Match::Conflict(_) if index != self.cursor => {
                self.waiting.insert(task);
                Ok(Gated::Wait)
            }
            Match::Conflict(why) => Err(self.divergence(
                DivergenceKind::Conflict(why),
                task,
                Some(index),
                call.to_string(),
            )),
            Match::Other => {
                self.waiting.insert(task);
                Ok(Gated::Wait)
            }
            Match::Same if index != self.cursor => {
                self.waiting.insert(task);
                Ok(Gated::Wait)
            }
            Match::Same => {
                debug_assert_eq!(self.events[index].task, task);
                self.waiting.remove(&task);
                self.last_taker = Some(task);
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
    /// call finds still pending are passed when that call goes on (one
    /// that waits leaves them for the task's next poll), and a library
    /// reading with
    /// none recorded next is [`Claimed::Unrecorded`]; both are counted
    /// ([`Gate::readings_unmatched`]). Readings through `deja::time` stay
    /// in program order like every other call.
    ///
    /// Which of a task's pending readings a library reading gets follows
    /// the recording's polls. The recording ran one task at a time, so the
    /// readings of the poll that went on to the task's next other event E
    /// are the ones right before E in the log, with nothing between them
    /// (the *final block*); readings further back were made by polls that
    /// waited. A library that reads the clock at the start of every poll
    /// and writes what it read (hyper's `Date` header) must get the final
    /// block's readings in the poll that goes on, whatever replay's polls
    /// before it. So, in a recording made on one thread:
    /// - when the replay is where the recording was at E (every event
    ///   before it replayed but the task's readings: its poll goes on to
    ///   E), the readings before the final block are passed and the
    ///   reading is the final block's next one;
    /// - when E waits (it is polled: a read, a write, a timer), the
    ///   replay is not there yet and only the final block is left, this
    ///   poll will wait, and the recording did not make it: the
    ///   reading is [`Claimed::Repeated`], the last reading of that clock
    ///   the cursor passed or the task took (the time stands still), and
    ///   the final block stays for the poll that goes on;
    /// - otherwise readings are handed out in order.
    ///
    /// A replay that polls the task as the recording did gets every
    /// reading in order; one that polls it fewer times or more often gets
    /// the final block in the poll that goes on.
    pub fn claim(&mut self, task: TaskId, call: &Call<'_>) -> Result<Claimed<'_>, Box<Divergence>> {
        if is_reading_call(call) {
            if let Some(repeated) = self.place_reading(task, call) {
                self.readings_unmatched += 1;
                return Ok(match repeated {
                    Some(index) => Claimed::Repeated(&self.events[index]),
                    None => Claimed::Unrecorded,
                });
            }
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
                let here = self.where_it_differs(task, self.events.len());
                return Err(self.divergence(
                    DivergenceKind::ExtraCall,
                    task,
                    here,
                    call.to_string(),
                ));
            }
            self.beyond_log += 1;
            return Ok(Claimed::BeyondLog);
        };
        let kind = match_call(call, &self.events[index].kind);
        // Where this call happens in the log, if that is not its place.
        let here = match kind {
            // Out of place only if a task that has not made its call yet
            // comes first; reported where the replay is.
            Match::Same => self
                .first_unreplayed(task, index, true)
                .and_then(|_| self.first_unreplayed(task, index, false)),
            _ => self.where_it_differs(task, index),
        }
        .unwrap_or(index);
        match kind {
            Match::Same if here != index => Err(self.divergence(
                DivergenceKind::Conflict(format!(
                    "task {task} did {call} here, the recording did it at seq {} ({} event(s) later)",
                    self.events[index].seq,
                    index - here
                )),
                task,
                Some(here),
                call.to_string(),
            )),
            Match::Same => {
                self.waiting.remove(&task);
                self.last_taker = Some(task);
                self.take_next(task);
                self.claimed[index] = true;
                self.skip_claimed();
                Ok(Claimed::Event(&self.events[index]))
            }
            Match::Conflict(why) if here == index => Err(self.divergence(
                DivergenceKind::Conflict(why),
                task,
                Some(index),
                call.to_string(),
            )),
            Match::Other if here == index => Err(self.divergence(
                DivergenceKind::Conflict(format!(
                    "the task did {call}, the recording did {}",
                    recorded_call(&self.events[index].kind)
                )),
                task,
                Some(index),
                call.to_string(),
            )),
            Match::Conflict(_) | Match::Other => Err(self.divergence(
                DivergenceKind::Conflict(format!(
                    "task {task} did {call} here, where the recording has another task's event; \
                     the task's next recorded event is #{} {}",
                    self.events[index].seq,
                    recorded_call(&self.events[index].kind)
                )),
                task,
                Some(here),
                call.to_string(),
            )),
        }
    }

    /// The position of the first event before `limit` that the replay has
    /// not got to and that the recording held before task `task`'s
    /// synchronous call at `limit`: the cursor's event, unless it and
    /// those after it are events whose place nobody is held to (library
    /// clock readings, adoptions, tasks of library code) or already
    /// claimed. `None` when there is none (the call is in its place).
    ///
    /// A recording runs the service on one thread: a task that makes a
    /// synchronous call runs from its last awaited event to that call
    /// with nothing else logged in between, so in a faithful replay
    /// every event before the call has been replayed when the call comes.
    /// A task of library code is not held to that (tokio schedules it,
    /// not the log), nor is any task of a recording made on several
    /// threads.
    ///
    /// With `skip_waiting`, events of tasks parked at the gate do not
    /// count, from the call each is parked on up to its next wait for
    /// input: those tasks made their calls and wait only for their turn.
    /// Replay wakes a task parked at the gate when the cursor gets to its
    /// event, so it runs after tasks that a channel or a join woke
    /// meanwhile, where the recording's scheduler ran it as soon as its
    /// I/O was ready; a synchronous call of such a woken task comes
    /// before their events, harmlessly. A task that is not parked at the
    /// gate has not got to its call yet: an event of its before this call
    /// is one the program has not made.
    fn first_unreplayed(&self, task: TaskId, limit: usize, skip_waiting: bool) -> Option<usize> {
        if !self.strict_order || self.adopted.contains(&task) || task == TaskId::OUTSIDE {
            return None;
        }
        // Parked tasks whose run of events reached one that waits for input.
        let mut blocked = std::collections::BTreeSet::new();
        (self.cursor..limit).find(|&at| {
            if self.claimed[at] || self.soft[at] {
                return false;
            }
            let event = &self.events[at];
            if !skip_waiting || !self.waiting.contains(&event.task) {
                return true;
            }
            if self.next_other_index(event.task) == Some(at) {
                return false; // the call it is parked on
            }
            // What it does after that call without new input is made too;
            // from its next wait for input on, it is not.
            blocked.contains(&event.task) || {
                let waits = waits_for_input(&event.kind);
                if waits {
                    blocked.insert(event.task);
                }
                waits
            }
        })
    }

    /// Where a call the recording does not have (or another one) first
    /// makes the log differ: right after the task's last event if it is
    /// still running since it took that event (nothing else was logged in
    /// between in the recording), else at the first event nobody has
    /// asked for yet.
    fn where_it_differs(&self, task: TaskId, limit: usize) -> Option<usize> {
        if self.last_taker != Some(task) {
            return self.first_unreplayed(task, limit, true);
        }
        // Its last event may have been taken ahead of the cursor (past
        // events of tasks parked at the gate): the call follows that one.
        let track = self.tasks.get(&task)?;
        let last = track
            .next
            .checked_sub(1)
            .and_then(|at| track.events.get(at).copied());
        // Not clamped to the cursor: events right after it that other
        // tasks took ahead of the cursor came after this call in the
        // recording.
        let from = last.map_or(self.cursor, |last| last + 1);
        self.first_unreplayed(task, limit, false)
            .map(|_| (from..limit).find(|&at| !self.soft[at]))?
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

    /// Where task `task`'s library reading `call` goes (see
    /// [`Gate::claim`]): `None` to take its next pending reading (stale
    /// readings passed first when its poll goes on), `Some` for a poll
    /// the recording did not make, with the reading to repeat if any.
    fn place_reading(&mut self, task: TaskId, call: &Call<'_>) -> Option<Option<usize>> {
        if !self.strict_order {
            return None;
        }
        let next = self.next_index(task)?;
        let other = self.next_other_index(task)?;
        if next == other {
            return None; // no reading pending: unrecorded, as before
        }
        // The final block: the task's readings right before its event.
        let block = (next..other)
            .rev()
            .take_while(|&at| self.events[at].task == task && is_reading(&self.events[at].kind))
            .last()
            .unwrap_or(other);
        if self.reaches(task, other) {
            if next < block {
                self.pass_readings_before(task, block);
            }
            return None;
        }
        if next < block || is_claimed_kind(&self.events[other].kind) {
            // A poll that waited in the recording too; or the task's next
            // event does not wait, so this poll may well go on to it.
            return None;
        }
        // The latest reading of this clock the replay got past, or this
        // task took: no later than any other task's write now due sees
        // in the recording, and never behind the task's own.
        let repeatable = |at: &usize| {
            let event = &self.events[*at];
            (*at < self.cursor || (self.claimed[*at] && event.task == task))
                && match_call(call, &event.kind) == Match::Same
        };
        Some(
            (0..next)
                .rev()
                .take(REPEAT_SCAN_EVENTS_MAX)
                .find(repeatable),
        )
    }

    /// Whether task `task`'s pending readings stay for its next poll: it
    /// has some, and its next other event would not be taken now, so the
    /// call it makes now waits (see [`Gate::claim`]).
    fn keeps_readings(&self, task: TaskId) -> bool {
        if !self.strict_order {
            return false;
        }
        match (self.next_index(task), self.next_other_index(task)) {
            (Some(next), Some(other)) => next != other && !self.reaches(task, other),
            _ => false,
        }
    }

    /// Task `task`'s next event that is not a library clock reading.
    fn next_other_index(&self, task: TaskId) -> Option<usize> {
        let track = self.tasks.get(&task)?;
        track.events[track.next.min(track.events.len())..]
            .iter()
            .copied()
            .find(|&at| !is_reading(&self.events[at].kind))
    }

    /// Whether the replay is where the recording was when task `task` made
    /// the call for its event at `at`: every event before it replayed,
    /// the task's own pending readings aside (for a polled event: it
    /// would be released now). Not [`Gate::first_unreplayed`]'s
    /// allowances: the driver turns and parked tasks' events between a
    /// task's polls are what tell its polls apart.
    fn reaches(&self, task: TaskId, at: usize) -> bool {
        (self.cursor..at).all(|between| self.claimed[between] || self.events[between].task == task)
    }

    /// Pass `task`'s pending readings before position `limit`.
    fn pass_readings_before(&mut self, task: TaskId, limit: usize) {
        while let Some(index) = self.next_index(task).filter(|&index| index < limit) {
            if !is_reading(&self.events[index].kind) {
                break;
            }
            self.take_next(task);
            self.claimed[index] = true;
            self.readings_unmatched += 1;
        }
        self.skip_claimed();
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
        // The events replayed just before the differing one: those the
        // cursor passed, and those claimed ahead of it (a conflict can be
        // seen before the cursor gets there, when the task runs ahead to
        // its call); never an event the replay did not get to.
        let context_end = expected.unwrap_or(self.cursor).min(self.events.len());
        let mut recent: Vec<Event> = (0..context_end)
            .rev()
            .filter(|&at| at < self.cursor || self.claimed[at])
            .take(REPORT_CONTEXT_EVENTS)
            .map(|at| self.events[at].clone())
            .collect();
        recent.reverse();
        Box::new(Divergence {
            kind,
            task,
            expected: expected.map(|index| self.events[index].clone()),
            actual,
            recent,
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

    #[test]
    fn a_driver_turn_is_passed_only_by_the_driver_and_names_the_tasks_it_woke() {
        let turn = |seq| Event {
            seq,
            task: TaskId::OUTSIDE,
            mono_ns: seq * 10,
            kind: EventKind::DriverTurn {
                ready: 2,
                clock_ns: seq * 10 + 1,
            },
        };
        let write = EventKind::TcpWrite {
            conn: ConnId(30),
            result: Ok(deja_recorder::Written::of(b"w", false)),
        };
        let mut gate = Gate::new(vec![
            turn(0),
            event(1, 1, read(10)),
            event(2, 2, EventKind::LibClockMono { ns: 5 }),
            event(3, 2, read(20)),
            event(4, 3, write.clone()),
            event(5, 1, write),
            turn(6),
            event(7, 4, read(40)),
        ]);
        assert!(gate.has_turns());
        // A task's call waits while the cursor is at a turn.
        let call = Call::TcpRead { conn: ConnId(10) };
        assert!(matches!(gate.poll(TaskId(1), &call), Ok(Gated::Wait)));
        assert_eq!(gate.pass_turn().map(|event| event.seq), Some(0));
        assert_eq!(
            gate.turn_ns(),
            1,
            "the clock the driver read after the turn"
        );
        // Task 1 and task 2 (its clock reading aside) were woken by the
        // turn; task 3 writes first, so something else woke it. The
        // scan stops at the next turn.
        assert_eq!(gate.woken_by_turn(64), vec![TaskId(1), TaskId(2)]);
        assert!(gate.pass_turn().is_none(), "the cursor is at task 1's read");
        assert!(matches!(gate.poll(TaskId(1), &call), Ok(Gated::Ready(_))));
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
    fn a_changed_write_of_a_recording_on_several_threads_waits_for_its_place() {
        // Recorded on two workers: task 1's write was logged while task 0
        // ran on to its own. A program whose writes all differ diverges
        // first at task 1's, even when replay runs task 0 to its write
        // first.
        let write = |bytes: &[u8], conn| EventKind::TcpWrite {
            conn: ConnId(conn),
            result: Ok(Written::of(bytes, false)),
        };
        let mut gate = Gate::new(vec![
            event(0, 0, EventKind::ClockMono { ns: 5 }),
            event(1, 1, write(b"one", 4)),
            event(2, 0, write(b"zero", 3)),
        ]);
        gate.set_strict_order(false);
        assert!(gate.poll(TaskId(0), &Call::ClockMono).is_ok());
        let zero = Call::TcpWrite {
            conn: ConnId(3),
            bytes: b"ZERO",
        };
        assert!(matches!(gate.poll(TaskId(0), &zero), Ok(Gated::Wait)));
        let one = Call::TcpWrite {
            conn: ConnId(4),
            bytes: b"ONE",
        };
        let err = gate.poll(TaskId(1), &one).unwrap_err();
        assert_eq!(err.seq(), Some(1), "{err}");
    }

    #[test]
    fn a_write_with_kept_bytes_shows_where_they_differ_on_both_sides() {
        let recorded = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Sat, 05 Dec 2026 17:00:00 GMT\r\n\r\nok";
        let mut replayed = recorded.to_vec();
        // In the Date header, deep in the reply: 17:00 becomes 19:00.
        let at = 1 + recorded.windows(5).position(|w| w == b"17:00").unwrap();
        replayed[at] = b'9';
        let mut gate = Gate::new(vec![event(
            0,
            1,
            EventKind::TcpWrite {
                conn: ConnId(3),
                result: Ok(Written::of(recorded, true)),
            },
        )]);
        let call = Call::TcpWrite {
            conn: ConnId(3),
            bytes: &replayed,
        };
        let report = gate.poll(TaskId(1), &call).unwrap_err().to_string();
        assert!(
            report.contains(&format!("first differ at byte {at} of {}", recorded.len())),
            "{report}"
        );
        // Both sides, around the difference: the recorded 17:00:00 and the
        // replayed 19:00:00.
        assert!(report.contains("2026 17:00|"), "{report}");
        assert!(report.contains("2026 19:00|"), "{report}");
    }

    #[test]
    fn a_write_with_only_a_hash_says_so_and_shows_this_side() {
        let mut gate = Gate::new(vec![event(
            0,
            1,
            EventKind::TcpWrite {
                conn: ConnId(3),
                result: Ok(Written::of(b"CHARGE 42", false)),
            },
        )]);
        let call = Call::TcpWrite {
            conn: ConnId(3),
            bytes: b"CHARGE 43",
        };
        let report = gate.poll(TaskId(1), &call).unwrap_err().to_string();
        assert!(report.contains("kept only the hash"), "{report}");
        assert!(report.contains("DEJA_KEEP_WRITES=1"), "{report}");
        assert!(report.contains("|CHARGE 43|"), "{report}");
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
        // Reported where it happened: the log's exit was next.
        assert_eq!(err.seq(), Some(1));
        assert!(
            err.to_string().contains("task 1 has no more events"),
            "{err}"
        );
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

    /// Task 1 reads twice; task 2 reads a clock and spawns in between.
    fn clock_and_spawn_between_reads() -> Gate {
        Gate::new(vec![
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
        ])
    }

    #[test]
    fn a_synchronous_call_before_its_place_diverges_at_the_first_event_not_replayed() {
        let mut gate = clock_and_spawn_between_reads();
        // Task 2 reads the clock before task 1's read was replayed: in the
        // recording (one thread) it came after it.
        let err = gate.claim(TaskId(2), &Call::ClockMono).unwrap_err();
        assert_eq!((err.seq(), err.task), (Some(0), TaskId(2)));
        assert!(err.recent.is_empty(), "nothing was replayed: {err}");
        assert!(
            err.to_string()
                .contains("task 2 did clock_mono here, the recording did it at seq 1"),
            "{err}"
        );
    }

    #[test]
    fn synchronous_calls_in_their_place_are_passed_by_the_cursor() {
        let mut gate = clock_and_spawn_between_reads();
        let t1 = Call::TcpRead { conn: ConnId(10) };
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(e)) if e.seq == 0));
        let Ok(Claimed::Event(clock)) = gate.claim(TaskId(2), &Call::ClockMono) else {
            panic!("clock not claimed")
        };
        assert_eq!(clock.kind, EventKind::ClockMono { ns: 77 });
        assert!(matches!(
            gate.claim(TaskId(2), &Call::Spawn),
            Ok(Claimed::Event(e)) if e.seq == 2
        ));
        assert_eq!(gate.cursor_event().map(|e| e.seq), Some(3));
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(e)) if e.seq == 3));
        assert!(gate.finished());
    }

    #[test]
    fn a_recording_on_several_threads_lets_synchronous_calls_run_ahead() {
        let mut gate = clock_and_spawn_between_reads();
        gate.set_strict_order(false);
        assert!(matches!(
            gate.claim(TaskId(2), &Call::ClockMono),
            Ok(Claimed::Event(e)) if e.seq == 1
        ));
        assert!(matches!(
            gate.claim(TaskId(2), &Call::Spawn),
            Ok(Claimed::Event(e)) if e.seq == 2
        ));
        let t1 = Call::TcpRead { conn: ConnId(10) };
        assert!(matches!(gate.poll(TaskId(1), &t1), Ok(Gated::Ready(e)) if e.seq == 0));
        assert_eq!(gate.cursor_event().map(|e| e.seq), Some(3));
    }

    #[test]
    fn library_tasks_and_readings_do_not_hold_a_synchronous_call_back() {
        let mark = EventKind::Mark {
            name: "m".into(),
            value: vec![],
        };
        let mut gate = Gate::new(vec![
            event(0, 5, EventKind::TaskAdopted { tokio_id: 9 }),
            event(1, 5, read(50)),
            event(2, 1, EventKind::LibClockMono { ns: 3 }),
            event(3, 2, mark),
        ]);
        // Task 5 (library code: tokio schedules it) has not read yet, and
        // task 1's library reading is not made: task 2's mark is in place.
        let call = Call::Mark {
            name: "m",
            value: b"",
        };
        assert!(matches!(gate.claim(TaskId(2), &call), Ok(Claimed::Event(e)) if e.seq == 3));
    }

    #[test]
    fn an_extra_mark_after_a_write_diverges_right_after_the_write() {
        let write = EventKind::TcpWrite {
            conn: ConnId(10),
            result: Ok(Written::of(b"ok", false)),
        };
        let mut gate = Gate::new(vec![
            event(0, 1, write),
            event(1, 2, read(20)),
            event(2, 2, read(20)),
            event(3, 1, read(10)),
        ]);
        let ok = Call::TcpWrite {
            conn: ConnId(10),
            bytes: b"ok",
        };
        assert!(matches!(gate.poll(TaskId(1), &ok), Ok(Gated::Ready(_))));
        // Task 1 marks after its write; its next recorded event is seq 3,
        // but the first event that differs is the one after the write.
        let extra = Call::Mark {
            name: "sent",
            value: b"",
        };
        let err = gate.claim(TaskId(1), &extra).unwrap_err();
        assert_eq!((err.seq(), err.task), (Some(1), TaskId(1)));
        let recent: Vec<u64> = err.recent.iter().map(|e| e.seq).collect();
        assert_eq!(recent, [0], "only replayed events: {err}");
        assert!(
            err.to_string().contains("next recorded event is #3"),
            "{err}"
        );
    }

    #[test]
    fn a_task_woken_before_a_parked_one_runs_ahead_and_its_extra_call_follows_its_last() {
        let mut gate = Gate::new(vec![
            event(0, 3, read(30)),
            event(1, 1, read(10)),
            event(
                2,
                2,
                EventKind::Spawn {
                    child: TaskId(9),
                    name: None,
                },
            ),
            event(3, 2, read(20)),
        ]);
        // Task 1 is parked at the gate on its read; once the cursor gets
        // there, task 2 (woken by a channel) may run before it and take
        // its spawn: task 1's read is a call already made.
        let t1 = Call::TcpRead { conn: ConnId(10) };
        assert_eq!(gate.poll(TaskId(1), &t1), Ok(Gated::Wait));
        let t3 = Call::TcpRead { conn: ConnId(30) };
        assert!(matches!(gate.poll(TaskId(3), &t3), Ok(Gated::Ready(_))));
        assert!(matches!(gate.claim(TaskId(2), &Call::Spawn), Ok(Claimed::Event(e)) if e.seq == 2));
        // Its next call is one the recording does not have: the log
        // differs right after its spawn, not at the cursor.
        let err = gate.claim(TaskId(2), &Call::Spawn).unwrap_err();
        assert_eq!(err.seq(), Some(3), "{err}");
    }

    #[test]
    fn a_timer_armed_for_another_duration_or_deadline_diverges_with_both_values() {
        let slept = EventKind::TimerSlept {
            timer: 0,
            deadline_ns: 1_124_000,
            duration_ns: 124_000,
        };
        let tick = EventKind::TimerFired {
            timer: 1,
            deadline_ns: 100_000_000,
        };
        let mut gate = Gate::new(vec![event(0, 1, slept.clone()), event(1, 1, tick.clone())]);
        let after = |duration_ns| Call::Timer {
            timer: 0,
            target: TimerTarget::After { duration_ns },
        };
        let err = gate.poll(TaskId(1), &after(263_000)).unwrap_err();
        assert_eq!(err.seq(), Some(0));
        let report = err.to_string();
        assert!(report.contains("sleep 263µs here"), "{report}");
        assert!(report.contains("the recording slept 124µs"), "{report}");

        let mut gate = Gate::new(vec![event(0, 1, slept), event(1, 1, tick)]);
        assert!(matches!(
            gate.poll(TaskId(1), &after(124_000)),
            Ok(Gated::Ready(_))
        ));
        let at = |deadline_ns| Call::Timer {
            timer: 1,
            target: TimerTarget::At { deadline_ns },
        };
        let err = gate.poll(TaskId(1), &at(1_000_000_000)).unwrap_err();
        assert_eq!(err.seq(), Some(1));
        assert!(
            err.to_string().contains("deadline +1.000000000s here"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("the recording's deadline was +0.100000000s"),
            "{err}"
        );
        assert!(matches!(
            gate.poll(TaskId(1), &at(100_000_000)),
            Ok(Gated::Ready(_))
        ));
    }

    #[test]
    fn a_sleep_in_a_log_without_durations_is_checked_by_its_id_alone() {
        // Logs written before `TimerSlept` kept only the deadline.
        let mut gate = Gate::new(vec![event(
            0,
            1,
            EventKind::TimerFired {
                timer: 0,
                deadline_ns: 5,
            },
        )]);
        let call = Call::Timer {
            timer: 0,
            target: TimerTarget::After { duration_ns: 999 },
        };
        assert!(matches!(gate.poll(TaskId(1), &call), Ok(Gated::Ready(_))));
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

    // Issue 16: hyper's `Date` header at a second boundary. hyper's
    // connection task reads the wall clock at the start of every poll
    // (`date::update`) and renders the header from the latest reading
    // when it writes in that poll. Recorded: a poll that waited read
    // ...538.999947, the poll that went on read ...539.000092 and wrote
    // second 539. Replay must hand that poll the later reading.
    const BEFORE_SECOND: i64 = 538_999_947_000;
    const AFTER_SECOND: i64 = 539_000_092_000;

    fn wall(unix_ns: i64) -> EventKind {
        EventKind::LibClockWall { unix_ns }
    }

    fn driver_turn(seq: u64) -> Event {
        Event {
            seq,
            task: TaskId::OUTSIDE,
            mono_ns: seq * 10,
            kind: EventKind::DriverTurn {
                ready: 1,
                clock_ns: seq * 10 + 1,
            },
        }
    }

    /// The whole second a library wall reading gives hyper's `Date`
    /// header: `None` when the recording has no reading there (replay
    /// answers with virtual time).
    fn date_second(claimed: Result<Claimed<'_>, Box<Divergence>>) -> Option<i64> {
        match claimed.expect("a reading never diverges") {
            Claimed::Event(Event {
                kind: EventKind::LibClockWall { unix_ns },
                ..
            })
            | Claimed::Repeated(Event {
                kind: EventKind::LibClockWall { unix_ns },
                ..
            }) => Some(unix_ns.div_euclid(1_000_000_000)),
            _ => None,
        }
    }

    #[test]
    fn hyper_date_at_a_second_boundary_when_replay_polls_the_task_fewer_times() {
        let mark = EventKind::Mark {
            name: "m".into(),
            value: vec![],
        };
        let mut gate = Gate::new(vec![
            event(0, 1, wall(BEFORE_SECOND)),
            event(1, 2, mark),
            event(2, 1, wall(AFTER_SECOND)),
            event(3, 1, read(10)),
        ]);
        // Replay runs task 2 first: its mark is in place (a reading is
        // nobody's place), and task 1's read is next for the cursor.
        let mark_call = Call::Mark {
            name: "m",
            value: b"",
        };
        assert!(matches!(
            gate.claim(TaskId(2), &mark_call),
            Ok(Claimed::Event(_))
        ));
        // Task 1's one poll reads the clock, then its read is released:
        // the recording read 539 in the poll that went on to it.
        assert_eq!(
            date_second(gate.claim(TaskId(1), &Call::LibClockWall)),
            Some(539)
        );
        let read_call = Call::TcpRead { conn: ConnId(10) };
        assert!(matches!(
            gate.poll(TaskId(1), &read_call),
            Ok(Gated::Ready(_))
        ));
        assert_eq!(gate.readings_unmatched(), 1, "the waiting poll's reading");
        assert!(gate.finished());
    }

    #[test]
    fn hyper_date_at_a_second_boundary_when_a_waiting_poll_came_first() {
        let mut gate = Gate::new(vec![
            event(0, 1, wall(BEFORE_SECOND)),
            driver_turn(1),
            event(2, 1, wall(AFTER_SECOND)),
            event(3, 1, read(10)),
        ]);
        let read_call = Call::TcpRead { conn: ConnId(10) };
        // The poll that waited, as recorded: its reading, its read waits
        // for the turn.
        assert_eq!(
            date_second(gate.claim(TaskId(1), &Call::LibClockWall)),
            Some(538)
        );
        assert!(matches!(gate.poll(TaskId(1), &read_call), Ok(Gated::Wait)));
        assert!(gate.pass_turn().is_some());
        // The poll the turn woke reads the clock and goes on: the reading
        // recorded there is still there for it.
        assert_eq!(gate.cursor_task(), Some(TaskId(1)));
        assert_eq!(
            date_second(gate.claim(TaskId(1), &Call::LibClockWall)),
            Some(539)
        );
        assert!(matches!(
            gate.poll(TaskId(1), &read_call),
            Ok(Gated::Ready(_))
        ));
        assert_eq!(gate.readings_unmatched(), 0);
        assert!(gate.finished());
    }

    #[test]
    fn hyper_date_at_a_second_boundary_when_replay_polls_the_task_more_often() {
        let mut gate = Gate::new(vec![
            event(0, 2, wall(BEFORE_SECOND)),
            driver_turn(1),
            event(2, 1, wall(AFTER_SECOND)),
            event(3, 1, read(10)),
        ]);
        assert_eq!(
            date_second(gate.claim(TaskId(2), &Call::LibClockWall)),
            Some(538)
        );
        // Task 1 is polled before the turn that woke it in the recording:
        // a poll the recording did not make, which waits. The time stands
        // still for it: the last wall reading the replay got past.
        let read_call = Call::TcpRead { conn: ConnId(10) };
        assert_eq!(
            date_second(gate.claim(TaskId(1), &Call::LibClockWall)),
            Some(538)
        );
        assert!(matches!(gate.poll(TaskId(1), &read_call), Ok(Gated::Wait)));
        assert!(gate.pass_turn().is_some());
        // The poll the recording made gets its reading.
        assert_eq!(gate.cursor_task(), Some(TaskId(1)));
        assert_eq!(
            date_second(gate.claim(TaskId(1), &Call::LibClockWall)),
            Some(539)
        );
        assert!(matches!(
            gate.poll(TaskId(1), &read_call),
            Ok(Gated::Ready(_))
        ));
        assert_eq!(gate.readings_unmatched(), 1, "the extra poll's reading");
        assert!(gate.finished());
    }

    #[test]
    fn library_readings_made_poll_for_poll_as_recorded_are_handed_out_in_order() {
        let mut gate = Gate::new(vec![
            event(0, 1, wall(1)),
            event(1, 2, read(20)),
            event(2, 1, wall(2)),
            event(3, 1, EventKind::LibClockMono { ns: 3 }),
            event(4, 1, wall(4)),
            event(5, 1, read(10)),
        ]);
        let reading = |gate: &mut Gate, call: Call<'_>| match gate.claim(TaskId(1), &call) {
            Ok(Claimed::Event(event)) => event.seq,
            other => panic!("{other:?}"),
        };
        let read_call = Call::TcpRead { conn: ConnId(10) };
        // A poll that waits, then one that reads three times and goes on.
        assert_eq!(reading(&mut gate, Call::LibClockWall), 0);
        assert!(matches!(gate.poll(TaskId(1), &read_call), Ok(Gated::Wait)));
        assert!(matches!(
            gate.poll(TaskId(2), &Call::TcpRead { conn: ConnId(20) }),
            Ok(Gated::Ready(_))
        ));
        assert_eq!(reading(&mut gate, Call::LibClockWall), 2);
        assert_eq!(reading(&mut gate, Call::LibClockMono), 3);
        assert_eq!(reading(&mut gate, Call::LibClockWall), 4);
        assert!(matches!(
            gate.poll(TaskId(1), &read_call),
            Ok(Gated::Ready(_))
        ));
        assert_eq!(gate.readings_unmatched(), 0);
        assert!(gate.finished());
    }

    #[test]
    fn a_library_tasks_readings_before_a_mark_are_handed_out_poll_for_poll() {
        // A task of library code (not held to its place in the log) whose
        // next event after two polls is a synchronous one: its first poll
        // waited on something the log does not show.
        let mut gate = Gate::new(vec![
            event(0, 5, EventKind::TaskAdopted { tokio_id: 9 }),
            event(1, 5, wall(1)),
            event(2, 2, read(20)),
            driver_turn(3),
            event(4, 5, wall(4)),
            event(
                5,
                5,
                EventKind::Mark {
                    name: "m".into(),
                    value: vec![],
                },
            ),
        ]);
        assert!(matches!(
            gate.claim(TaskId(5), &Call::Adopt),
            Ok(Claimed::Event(_))
        ));
        let reading = |gate: &mut Gate| match gate.claim(TaskId(5), &Call::LibClockWall) {
            Ok(Claimed::Event(event)) => event.seq,
            other => panic!("{other:?}"),
        };
        assert_eq!(reading(&mut gate), 1, "the poll that waited");
        assert!(matches!(
            gate.poll(TaskId(2), &Call::TcpRead { conn: ConnId(20) }),
            Ok(Gated::Ready(_))
        ));
        assert!(gate.pass_turn().is_some());
        assert_eq!(reading(&mut gate), 4, "the poll that goes on");
        assert!(matches!(
            gate.claim(
                TaskId(5),
                &Call::Mark {
                    name: "m",
                    value: b""
                }
            ),
            Ok(Claimed::Event(_))
        ));
        assert_eq!(gate.readings_unmatched(), 0);
        assert!(gate.finished());
    }
}
