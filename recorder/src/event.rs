//! The event model: one [`Event`] per intercepted operation.
//!
//! This module is deja's core vocabulary and deliberately knows nothing about
//! files, threads or tokio. Every variant is append-only: the log format
//! encodes variants by index, so new kinds go at the end of [`EventKind`] and
//! existing ones never change shape without a format version bump.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Largest payload (read bytes, entropy, mark value) one event may carry.
///
/// The runtime caps the buffers it hands to the OS at this size, so a single
/// read never produces a larger event; 1 MiB keeps a frame's worst case small
/// enough for the reader's bounded buffers (see `format::FRAME_RAW_BYTES_MAX`).
pub const EVENT_PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// Logical task id, allocated at spawn events so replay reproduces it exactly.
///
/// Task 0 is the service's main task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub u64);

impl TaskId {
    /// The task that runs the service's entry point.
    pub const MAIN: TaskId = TaskId(0);

    /// What the runtime logs intercepted calls made outside any task under
    /// (a thread the service started): shown as `outside`.
    pub const OUTSIDE: TaskId = TaskId(u64::MAX);
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == TaskId::OUTSIDE {
            return f.write_str("outside");
        }
        write!(f, "{}", self.0)
    }
}

/// Logical id of a socket (TCP listener, TCP stream or UDP socket), allocated
/// by the runtime in creation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One intercepted operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the run's total order, from one counter per process.
    pub seq: u64,
    /// The logical task that performed the operation.
    pub task: TaskId,
    /// Monotonic nanoseconds since the run started (virtual in sim mode).
    pub mono_ns: u64,
    /// What happened, with the values the operation returned.
    pub kind: EventKind,
}

/// Everything the shim intercepts. See the design's "What the shim
/// intercepts"; each variant carries the values replay must hand back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// `Instant::now()`: nanoseconds since the run started.
    ClockMono {
        /// The reading.
        ns: u64,
    },
    /// `SystemTime::now()`: nanoseconds since the Unix epoch (negative before it).
    ClockWall {
        /// The reading.
        unix_ns: i64,
    },
    /// A `sleep`, `timeout` or `interval` tick completed.
    TimerFired {
        /// Runtime-assigned timer id.
        timer: u64,
        /// The deadline it was armed for, in run nanoseconds.
        deadline_ns: u64,
    },
    /// The run's root seed; every `deja::rand` generator derives from it.
    RootSeed {
        /// The 32-byte ChaCha seed.
        seed: [u8; 32],
    },
    /// Bytes drawn directly from OS entropy, recorded by value.
    Entropy {
        /// The bytes returned.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// `TcpListener::bind`.
    TcpListen {
        /// Id given to the listener.
        listener: ConnId,
        /// The address as the service asked for it.
        addr: String,
        /// The bound local address, or the error.
        result: Result<SocketAddr, IoErrorKind>,
    },
    /// `TcpListener::accept` returned.
    TcpAccept {
        /// The listener accepted on.
        listener: ConnId,
        /// The new connection, or the error.
        result: Result<Accepted, IoErrorKind>,
    },
    /// `TcpStream::connect` returned.
    TcpConnect {
        /// Id given to the stream.
        conn: ConnId,
        /// The target as the service asked for it.
        addr: String,
        /// The established connection's addresses, or the error.
        result: Result<Connected, IoErrorKind>,
    },
    /// A read on a TCP stream returned.
    TcpRead {
        /// The stream.
        conn: ConnId,
        /// Bytes (with their exact chunking), end of stream, or the error.
        result: ReadOutcome,
    },
    /// A write on a TCP stream returned.
    TcpWrite {
        /// The stream.
        conn: ConnId,
        /// What was accepted, or the error.
        result: Result<Written, IoErrorKind>,
    },
    /// `shutdown` (write half) on a TCP stream returned.
    TcpShutdown {
        /// The stream.
        conn: ConnId,
        /// Success or the error.
        result: Result<(), IoErrorKind>,
    },
    /// A TCP stream or listener was dropped.
    TcpClose {
        /// The stream or listener.
        conn: ConnId,
    },
    /// `UdpSocket::bind`.
    UdpBind {
        /// Id given to the socket.
        socket: ConnId,
        /// The address as the service asked for it.
        addr: String,
        /// The bound local address, or the error.
        result: Result<SocketAddr, IoErrorKind>,
    },
    /// `UdpSocket::send_to` returned.
    UdpSend {
        /// The socket.
        socket: ConnId,
        /// The destination.
        peer: SocketAddr,
        /// What was sent, or the error.
        result: Result<Written, IoErrorKind>,
    },
    /// `UdpSocket::recv_from` returned.
    UdpRecv {
        /// The socket.
        socket: ConnId,
        /// The datagram, or the error.
        result: Result<Datagram, IoErrorKind>,
    },
    /// `deja::spawn` created a task.
    Spawn {
        /// The child's logical id.
        child: TaskId,
        /// Optional name for humans.
        name: Option<String>,
    },
    /// The recording task finished.
    TaskEnd {
        /// How it finished.
        outcome: TaskOutcome,
    },
    /// `deja::mark(name, value)`: an application annotation.
    Mark {
        /// The mark's name, for example `order`.
        name: String,
        /// Its value, for example the order id.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// A signal was delivered through `deja::signal`.
    Signal {
        /// Which one.
        signal: SignalKind,
    },
    /// The process exited with this status.
    Exit {
        /// The exit code.
        code: i32,
    },
    /// Events were lost from here on: the log is incomplete between
    /// `first_lost_seq` and this event's own `seq`.
    Gap {
        /// The first seq that was not written.
        first_lost_seq: u64,
        /// How many consecutive seqs were lost.
        lost: u64,
        /// Why they were lost.
        reason: GapReason,
    },
    /// The payload of event `seq_of` (a read, a datagram received, or a
    /// write's kept bytes and hash) went through the service's redaction
    /// hook before it was logged: the bytes in `ranges` are masks, not
    /// what the service saw or sent. Recorded by the same task right after
    /// the event it describes; replay does not match it against a call.
    Redacted {
        /// The seq of the redacted event.
        seq_of: u64,
        /// Masked byte ranges `[start, end)` of that event's payload, in
        /// order and disjoint (at most [`REDACTED_RANGES_MAX`]).
        ranges: Vec<(u32, u32)>,
    },
    /// A task that library code started with `tokio::spawn` made its
    /// first intercepted call: from here on it is logical task `self.task`.
    /// It is that task's first event. Replay hands the ids out in log
    /// order, to the tasks in the order their first calls come.
    TaskAdopted {
        /// tokio's id for the task in the recording (it differs between
        /// runs: shown to humans, never matched).
        tokio_id: u64,
    },
    /// A monotonic clock reading made through the C library (`std::time`,
    /// tokio, any crate) by a task. Unlike [`EventKind::ClockMono`] (deja's
    /// own API, in program order), a library may read the clock on every
    /// poll of its task, so replay hands these out as they come and passes
    /// the ones it does not make.
    LibClockMono {
        /// Nanoseconds since the run started.
        ns: u64,
    },
    /// A wall clock reading made through the C library by a task (see
    /// [`EventKind::LibClockMono`]).
    LibClockWall {
        /// Nanoseconds since the Unix epoch (negative before it).
        unix_ns: i64,
    },
    /// A `sleep(duration)` or `timeout(duration)` timer fired: a
    /// [`EventKind::TimerFired`] that also keeps the duration the code
    /// asked for, so replay can check it exactly (the deadline alone
    /// depends on when the timer was armed, which is not logged). Timers
    /// armed for an instant (`sleep_until`, `interval`) log `TimerFired`,
    /// whose deadline is exact.
    TimerSlept {
        /// Runtime-assigned timer id.
        timer: u64,
        /// The deadline it was armed for, in run nanoseconds.
        deadline_ns: u64,
        /// The duration it was armed with, in nanoseconds.
        duration_ns: u64,
    },
    /// A UDP socket was dropped (before this kind existed, logged as
    /// [`EventKind::TcpClose`]).
    UdpClose {
        /// The socket.
        socket: ConnId,
    },
    /// The scope of a mark made with `deja::mark_scope` ended: from here
    /// on the task's events are no longer inside mark `name`.
    MarkEnd {
        /// The mark's name.
        name: String,
    },
    /// A name was looked up (`deja::net::lookup_host`, or a UDP
    /// `send_to`/`connect` given `"host:port"`): DNS answers are inputs.
    Lookup {
        /// The name and port as the service gave them.
        host: String,
        /// The addresses, in the order the resolver gave them, or the error.
        result: Result<Vec<SocketAddr>, IoErrorKind>,
    },
    /// The runtime's driver turned (its `epoll_wait` returned): sockets
    /// that became ready together and timers that came due are handed to
    /// their tasks here, in one batch. Logged by the thread that runs the
    /// tasks (task `outside`), in a recording on one thread. Replay turns
    /// its own driver at these points, so the tasks a turn woke run in the
    /// order the recording ran them, and tokio's timers fire at the turn
    /// they fired at.
    DriverTurn {
        /// Readiness events the turn returned (timers not counted).
        ready: u32,
        /// The runtime's clock as its driver read it right after the turn
        /// (nanoseconds since the run started): the reading tokio fired
        /// timers by.
        clock_ns: u64,
    },
}

/// The name of the mark the runtime logs when library code connects with
/// a socket of its own (not deja's): its value is the peer address. Such a
/// connection's traffic is not in the log, so replay cannot reproduce it.
pub const FOREIGN_SOCKET_MARK: &str = "deja.foreign_socket";

/// Most ranges one [`EventKind::Redacted`] lists. A payload masked in more
/// places is described by fewer, wider ranges (the last one runs to the
/// last masked byte), which keeps the marker small whatever the redactor
/// does to a 1 MiB read.
pub const REDACTED_RANGES_MAX: usize = 64;

/// A connection returned by `accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Id given to the new stream.
    pub conn: ConnId,
    /// The remote address.
    pub peer: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
}

/// The addresses of an established outgoing connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    /// The local address.
    pub local: SocketAddr,
    /// The remote address.
    pub peer: SocketAddr,
}

/// What one read returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOutcome {
    /// These bytes, exactly as one read returned them (never empty).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// End of stream: the read returned 0 bytes into a non-empty buffer.
    Eof,
    /// The read failed.
    Error(IoErrorKind),
}

/// What one write accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// Bytes accepted by the OS.
    pub len: u32,
    /// [`content_hash`] of those bytes, so replay can detect a divergent write.
    pub hash: u64,
    /// The bytes themselves, when the recorder was asked to keep them.
    pub bytes: Option<serde_bytes::ByteBuf>,
}

impl Written {
    /// Describe a write that accepted `bytes`, keeping them only if asked.
    pub fn of(bytes: &[u8], keep_bytes: bool) -> Written {
        Written {
            len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            hash: content_hash(bytes),
            bytes: keep_bytes.then(|| serde_bytes::ByteBuf::from(bytes.to_vec())),
        }
    }
}

/// One received datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram {
    /// The sender.
    pub peer: SocketAddr,
    /// The payload.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// How a task finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// Its future returned.
    Completed,
    /// It panicked.
    Panicked,
    /// It was aborted or dropped before completing.
    Cancelled,
}

/// A signal delivered to the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalKind {
    /// SIGINT / ctrl-c.
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP.
    Hangup,
    /// SIGUSR1.
    User1,
    /// SIGUSR2.
    User2,
    /// Any other signal, by number.
    Other(i32),
}

/// Why events were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GapReason {
    /// The recorder's queue was full: the writer could not keep up.
    QueueFull,
    /// One event was larger than [`EVENT_PAYLOAD_BYTES_MAX`].
    EventTooLarge,
    /// The writer could not write to disk (disk full, I/O error).
    WriteFailed,
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GapReason::QueueFull => "queue full",
            GapReason::EventTooLarge => "event too large",
            GapReason::WriteFailed => "write failed",
        })
    }
}

/// A portable subset of [`std::io::ErrorKind`], stable in the log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // each variant mirrors the std kind of the same name
pub enum IoErrorKind {
    NotFound,
    PermissionDenied,
    ConnectionRefused,
    ConnectionReset,
    ConnectionAborted,
    NotConnected,
    AddrInUse,
    AddrNotAvailable,
    BrokenPipe,
    AlreadyExists,
    WouldBlock,
    InvalidInput,
    InvalidData,
    TimedOut,
    WriteZero,
    Interrupted,
    Unsupported,
    UnexpectedEof,
    OutOfMemory,
    HostUnreachable,
    NetworkUnreachable,
    Other,
}

impl From<std::io::ErrorKind> for IoErrorKind {
    fn from(kind: std::io::ErrorKind) -> Self {
        use std::io::ErrorKind as K;
        match kind {
            K::NotFound => Self::NotFound,
            K::PermissionDenied => Self::PermissionDenied,
            K::ConnectionRefused => Self::ConnectionRefused,
            K::ConnectionReset => Self::ConnectionReset,
            K::ConnectionAborted => Self::ConnectionAborted,
            K::NotConnected => Self::NotConnected,
            K::AddrInUse => Self::AddrInUse,
            K::AddrNotAvailable => Self::AddrNotAvailable,
            K::BrokenPipe => Self::BrokenPipe,
            K::AlreadyExists => Self::AlreadyExists,
            K::WouldBlock => Self::WouldBlock,
            K::InvalidInput => Self::InvalidInput,
            K::InvalidData => Self::InvalidData,
            K::TimedOut => Self::TimedOut,
            K::WriteZero => Self::WriteZero,
            K::Interrupted => Self::Interrupted,
            K::Unsupported => Self::Unsupported,
            K::UnexpectedEof => Self::UnexpectedEof,
            K::OutOfMemory => Self::OutOfMemory,
            K::HostUnreachable => Self::HostUnreachable,
            K::NetworkUnreachable => Self::NetworkUnreachable,
            _ => Self::Other,
        }
    }
}

impl From<IoErrorKind> for std::io::ErrorKind {
    fn from(kind: IoErrorKind) -> Self {
        use std::io::ErrorKind as K;
        match kind {
            IoErrorKind::NotFound => K::NotFound,
            IoErrorKind::PermissionDenied => K::PermissionDenied,
            IoErrorKind::ConnectionRefused => K::ConnectionRefused,
            IoErrorKind::ConnectionReset => K::ConnectionReset,
            IoErrorKind::ConnectionAborted => K::ConnectionAborted,
            IoErrorKind::NotConnected => K::NotConnected,
            IoErrorKind::AddrInUse => K::AddrInUse,
            IoErrorKind::AddrNotAvailable => K::AddrNotAvailable,
            IoErrorKind::BrokenPipe => K::BrokenPipe,
            IoErrorKind::AlreadyExists => K::AlreadyExists,
            IoErrorKind::WouldBlock => K::WouldBlock,
            IoErrorKind::InvalidInput => K::InvalidInput,
            IoErrorKind::InvalidData => K::InvalidData,
            IoErrorKind::TimedOut => K::TimedOut,
            IoErrorKind::WriteZero => K::WriteZero,
            IoErrorKind::Interrupted => K::Interrupted,
            IoErrorKind::Unsupported => K::Unsupported,
            IoErrorKind::UnexpectedEof => K::UnexpectedEof,
            IoErrorKind::OutOfMemory => K::OutOfMemory,
            IoErrorKind::HostUnreachable => K::HostUnreachable,
            IoErrorKind::NetworkUnreachable => K::NetworkUnreachable,
            IoErrorKind::Other => K::Other,
        }
    }
}

/// The content hash written for every write (XXH3-64, seed 0).
///
/// Part of the log format: changing it needs a format version bump.
pub fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Coarse event classes, as breakpoint specs and `deja inspect --kind` name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KindClass {
    /// Clock readings.
    Time,
    /// Timer completions.
    Timer,
    /// Root seed and entropy.
    Rand,
    /// Listen and bind.
    Listen,
    /// Accepts.
    Accept,
    /// Connects.
    Connect,
    /// TCP reads and UDP receives.
    Recv,
    /// TCP writes and UDP sends.
    Send,
    /// Shutdowns and closes.
    Close,
    /// Spawns.
    Spawn,
    /// Task ends.
    End,
    /// Marks.
    Mark,
    /// Signals.
    Signal,
    /// Process exit.
    Exit,
    /// Lost events.
    Gap,
    /// Redaction markers.
    Redacted,
    /// The runtime's driver turns.
    Turn,
}

impl KindClass {
    /// Every class, in display order.
    pub const ALL: [KindClass; 17] = [
        KindClass::Time,
        KindClass::Timer,
        KindClass::Rand,
        KindClass::Listen,
        KindClass::Accept,
        KindClass::Connect,
        KindClass::Recv,
        KindClass::Send,
        KindClass::Close,
        KindClass::Spawn,
        KindClass::End,
        KindClass::Mark,
        KindClass::Signal,
        KindClass::Exit,
        KindClass::Gap,
        KindClass::Redacted,
        KindClass::Turn,
    ];

    /// The class's name as users type it.
    pub fn name(self) -> &'static str {
        match self {
            KindClass::Time => "time",
            KindClass::Timer => "timer",
            KindClass::Rand => "rand",
            KindClass::Listen => "listen",
            KindClass::Accept => "accept",
            KindClass::Connect => "connect",
            KindClass::Recv => "recv",
            KindClass::Send => "send",
            KindClass::Close => "close",
            KindClass::Spawn => "spawn",
            KindClass::End => "end",
            KindClass::Mark => "mark",
            KindClass::Signal => "signal",
            KindClass::Exit => "exit",
            KindClass::Gap => "gap",
            KindClass::Redacted => "redacted",
            KindClass::Turn => "turn",
        }
    }

    /// Parse a class name (as [`KindClass::name`] prints it).
    pub fn from_name(name: &str) -> Option<KindClass> {
        KindClass::ALL
            .into_iter()
            .find(|class| class.name() == name)
    }
}

impl fmt::Display for KindClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl EventKind {
    /// Every fine kind name ([`EventKind::name`]), in declaration order.
    pub const NAMES: [&'static str; 30] = [
        "clock_mono",
        "clock_wall",
        "timer_fired",
        "root_seed",
        "entropy",
        "tcp_listen",
        "tcp_accept",
        "tcp_connect",
        "tcp_read",
        "tcp_write",
        "tcp_shutdown",
        "tcp_close",
        "udp_bind",
        "udp_send",
        "udp_recv",
        "spawn",
        "task_end",
        "mark",
        "signal",
        "exit",
        "gap",
        "redacted",
        "task_adopted",
        "lib_clock_mono",
        "lib_clock_wall",
        "timer_slept",
        "udp_close",
        "mark_end",
        "lookup",
        "driver_turn",
    ];

    /// The class of each kind, in the order of [`EventKind::NAMES`].
    pub const CLASSES: [KindClass; 30] = [
        KindClass::Time,
        KindClass::Time,
        KindClass::Timer,
        KindClass::Rand,
        KindClass::Rand,
        KindClass::Listen,
        KindClass::Accept,
        KindClass::Connect,
        KindClass::Recv,
        KindClass::Send,
        KindClass::Close,
        KindClass::Close,
        KindClass::Listen,
        KindClass::Send,
        KindClass::Recv,
        KindClass::Spawn,
        KindClass::End,
        KindClass::Mark,
        KindClass::Signal,
        KindClass::Exit,
        KindClass::Gap,
        KindClass::Redacted,
        KindClass::Spawn,
        KindClass::Time,
        KindClass::Time,
        KindClass::Timer,
        KindClass::Close,
        KindClass::Mark,
        KindClass::Connect,
        KindClass::Turn,
    ];

    /// The variant's name in snake case, as `inspect` prints it.
    pub fn name(&self) -> &'static str {
        EventKind::NAMES[self.index()]
    }

    /// The variant's position in [`EventKind::NAMES`] (and
    /// [`EventKind::CLASSES`]): filters match kinds as bits of a mask.
    pub fn index(&self) -> usize {
        match self {
            EventKind::ClockMono { .. } => 0,
            EventKind::ClockWall { .. } => 1,
            EventKind::TimerFired { .. } => 2,
            EventKind::RootSeed { .. } => 3,
            EventKind::Entropy { .. } => 4,
            EventKind::TcpListen { .. } => 5,
            EventKind::TcpAccept { .. } => 6,
            EventKind::TcpConnect { .. } => 7,
            EventKind::TcpRead { .. } => 8,
            EventKind::TcpWrite { .. } => 9,
            EventKind::TcpShutdown { .. } => 10,
            EventKind::TcpClose { .. } => 11,
            EventKind::UdpBind { .. } => 12,
            EventKind::UdpSend { .. } => 13,
            EventKind::UdpRecv { .. } => 14,
            EventKind::Spawn { .. } => 15,
            EventKind::TaskEnd { .. } => 16,
            EventKind::Mark { .. } => 17,
            EventKind::Signal { .. } => 18,
            EventKind::Exit { .. } => 19,
            EventKind::Gap { .. } => 20,
            EventKind::Redacted { .. } => 21,
            EventKind::TaskAdopted { .. } => 22,
            EventKind::LibClockMono { .. } => 23,
            EventKind::LibClockWall { .. } => 24,
            EventKind::TimerSlept { .. } => 25,
            EventKind::UdpClose { .. } => 26,
            EventKind::MarkEnd { .. } => 27,
            EventKind::Lookup { .. } => 28,
            EventKind::DriverTurn { .. } => 29,
        }
    }

    /// The coarse class breakpoints and filters use.
    pub fn class(&self) -> KindClass {
        match self {
            EventKind::ClockMono { .. }
            | EventKind::ClockWall { .. }
            | EventKind::LibClockMono { .. }
            | EventKind::LibClockWall { .. } => KindClass::Time,
            EventKind::TimerFired { .. } | EventKind::TimerSlept { .. } => KindClass::Timer,
            EventKind::RootSeed { .. } | EventKind::Entropy { .. } => KindClass::Rand,
            EventKind::TcpListen { .. } | EventKind::UdpBind { .. } => KindClass::Listen,
            EventKind::TcpAccept { .. } => KindClass::Accept,
            EventKind::TcpConnect { .. } | EventKind::Lookup { .. } => KindClass::Connect,
            EventKind::TcpRead { .. } | EventKind::UdpRecv { .. } => KindClass::Recv,
            EventKind::TcpWrite { .. } | EventKind::UdpSend { .. } => KindClass::Send,
            EventKind::TcpShutdown { .. }
            | EventKind::TcpClose { .. }
            | EventKind::UdpClose { .. } => KindClass::Close,
            EventKind::Spawn { .. } | EventKind::TaskAdopted { .. } => KindClass::Spawn,
            EventKind::TaskEnd { .. } => KindClass::End,
            EventKind::Mark { .. } | EventKind::MarkEnd { .. } => KindClass::Mark,
            EventKind::Signal { .. } => KindClass::Signal,
            EventKind::Exit { .. } => KindClass::Exit,
            EventKind::Gap { .. } => KindClass::Gap,
            EventKind::Redacted { .. } => KindClass::Redacted,
            EventKind::DriverTurn { .. } => KindClass::Turn,
        }
    }

    /// The socket this event concerns, if any (`conn=` in breakpoint specs).
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            EventKind::TcpListen { listener, .. } | EventKind::TcpAccept { listener, .. } => {
                Some(*listener)
            }
            EventKind::TcpConnect { conn, .. }
            | EventKind::TcpRead { conn, .. }
            | EventKind::TcpWrite { conn, .. }
            | EventKind::TcpShutdown { conn, .. }
            | EventKind::TcpClose { conn } => Some(*conn),
            EventKind::UdpBind { socket, .. }
            | EventKind::UdpSend { socket, .. }
            | EventKind::UdpRecv { socket, .. }
            | EventKind::UdpClose { socket } => Some(*socket),
            _ => None,
        }
    }

    /// Bytes of variable-size payload the event carries (reads, entropy,
    /// marks, kept write bytes, names). The recorder bounds this per event
    /// and in its queue.
    pub fn payload_len(&self) -> usize {
        match self {
            EventKind::Entropy { bytes } => bytes.len(),
            EventKind::TcpListen { addr, .. }
            | EventKind::TcpConnect { addr, .. }
            | EventKind::UdpBind { addr, .. }
            | EventKind::Lookup { host: addr, .. } => addr.len(),
            EventKind::TcpRead {
                result: ReadOutcome::Data(bytes),
                ..
            } => bytes.len(),
            EventKind::TcpWrite {
                result: Ok(written),
                ..
            }
            | EventKind::UdpSend {
                result: Ok(written),
                ..
            } => written.bytes.as_ref().map_or(0, |b| b.len()),
            EventKind::UdpRecv {
                result: Ok(datagram),
                ..
            } => datagram.bytes.len(),
            EventKind::Spawn { name, .. } => name.as_ref().map_or(0, String::len),
            EventKind::Mark { name, value } => name.len() + value.len(),
            EventKind::MarkEnd { name } => name.len(),
            EventKind::Redacted { ranges, .. } => ranges.len() * REDACTED_RANGE_BYTES,
            _ => 0,
        }
    }
}

/// Bytes one redacted range takes in the log (two `u32`s), for payload accounting.
const REDACTED_RANGE_BYTES: usize = 8;

/// Bytes shown before `inspect` elides a payload.
const PREVIEW_BYTES_MAX: usize = 48;

/// Writes `bytes` as a short, escaped, quoted preview.
fn write_preview(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let shown = &bytes[..bytes.len().min(PREVIEW_BYTES_MAX)];
    write!(f, "{}B \"{}\"", bytes.len(), shown.escape_ascii())?;
    if bytes.len() > shown.len() {
        f.write_str("...")?;
    }
    Ok(())
}

fn write_result<T>(
    f: &mut fmt::Formatter<'_>,
    result: &Result<T, IoErrorKind>,
    ok: impl FnOnce(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    match result {
        Ok(value) => ok(f, value),
        Err(kind) => write!(f, "error={kind:?}"),
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<12}", self.name())?;
        match self {
            EventKind::ClockMono { ns } => write!(f, " ns={ns}"),
            EventKind::ClockWall { unix_ns } => write!(f, " unix_ns={unix_ns}"),
            EventKind::TimerFired { timer, deadline_ns } => {
                write!(f, " timer={timer} deadline_ns={deadline_ns}")
            }
            EventKind::RootSeed { seed } => {
                f.write_str(" seed=")?;
                seed.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            EventKind::Entropy { bytes } => {
                f.write_str(" ")?;
                write_preview(f, bytes)
            }
            EventKind::TcpListen {
                listener,
                addr,
                result,
            } => {
                write!(f, " conn={listener} addr={addr} ")?;
                write_result(f, result, |f, local| write!(f, "local={local}"))
            }
            EventKind::TcpAccept { listener, result } => {
                write!(f, " listener={listener} ")?;
                write_result(f, result, |f, a| {
                    write!(f, "conn={} peer={} local={}", a.conn, a.peer, a.local)
                })
            }
            EventKind::TcpConnect { conn, addr, result } => {
                write!(f, " conn={conn} addr={addr} ")?;
                write_result(f, result, |f, c| {
                    write!(f, "local={} peer={}", c.local, c.peer)
                })
            }
            EventKind::TcpRead { conn, result } => {
                write!(f, " conn={conn} ")?;
                match result {
                    ReadOutcome::Data(bytes) => write_preview(f, bytes),
                    ReadOutcome::Eof => f.write_str("eof"),
                    ReadOutcome::Error(kind) => write!(f, "error={kind:?}"),
                }
            }
            EventKind::TcpWrite { conn, result } => {
                write!(f, " conn={conn} ")?;
                write_result(f, result, write_written)
            }
            EventKind::TcpShutdown { conn, result } => {
                write!(f, " conn={conn} ")?;
                write_result(f, result, |f, ()| f.write_str("ok"))
            }
            EventKind::TcpClose { conn } => write!(f, " conn={conn}"),
            EventKind::DriverTurn { ready, clock_ns } => {
                write!(f, " ready={ready} clock_ns={clock_ns}")
            }
            EventKind::Lookup { host, result } => {
                write!(f, " host={host} ")?;
                write_result(f, result, |f, addrs| {
                    let addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
                    write!(f, "addrs=[{}]", addrs.join(", "))
                })
            }
            EventKind::UdpBind {
                socket,
                addr,
                result,
            } => {
                write!(f, " conn={socket} addr={addr} ")?;
                write_result(f, result, |f, local| write!(f, "local={local}"))
            }
            EventKind::UdpSend {
                socket,
                peer,
                result,
            } => {
                write!(f, " conn={socket} peer={peer} ")?;
                write_result(f, result, write_written)
            }
            EventKind::UdpRecv { socket, result } => {
                write!(f, " conn={socket} ")?;
                write_result(f, result, |f, d| {
                    write!(f, "peer={} ", d.peer)?;
                    write_preview(f, &d.bytes)
                })
            }
            EventKind::Spawn { child, name } => {
                write!(f, " child={child}")?;
                match name {
                    Some(name) => write!(f, " name={name:?}"),
                    None => Ok(()),
                }
            }
            EventKind::TaskEnd { outcome } => write!(f, " outcome={outcome:?}"),
            EventKind::Mark { name, value } => {
                write!(f, " {name}=")?;
                write_preview(f, value)
            }
            EventKind::Signal { signal } => write!(f, " signal={signal:?}"),
            EventKind::Exit { code } => write!(f, " code={code}"),
            EventKind::Gap {
                first_lost_seq,
                lost,
                reason,
            } => write!(
                f,
                " lost={lost} seqs={first_lost_seq}..{} reason={reason}",
                first_lost_seq.saturating_add(*lost)
            ),
            EventKind::Redacted { seq_of, ranges } => {
                write!(f, " of=#{seq_of} bytes={} at=", redacted_bytes(ranges))?;
                write_ranges(f, ranges)
            }
            EventKind::TaskAdopted { tokio_id } => write!(f, " tokio_id={tokio_id}"),
            EventKind::LibClockMono { ns } => write!(f, " ns={ns}"),
            EventKind::LibClockWall { unix_ns } => write!(f, " unix_ns={unix_ns}"),
            EventKind::TimerSlept {
                timer,
                deadline_ns,
                duration_ns,
            } => write!(
                f,
                " timer={timer} deadline_ns={deadline_ns} duration={:?}",
                std::time::Duration::from_nanos(*duration_ns)
            ),
            EventKind::UdpClose { socket } => write!(f, " conn={socket}"),
            EventKind::MarkEnd { name } => write!(f, " {name}"),
        }
    }
}

/// Masked bytes in `ranges` (ranges with `end < start` count as empty).
pub fn redacted_bytes(ranges: &[(u32, u32)]) -> u64 {
    ranges
        .iter()
        .map(|&(start, end)| u64::from(end.saturating_sub(start)))
        .sum()
}

/// Writes ranges as `30..42,50..60`.
pub fn write_ranges(f: &mut impl fmt::Write, ranges: &[(u32, u32)]) -> fmt::Result {
    for (i, (start, end)) in ranges.iter().enumerate() {
        if i > 0 {
            f.write_char(',')?;
        }
        write!(f, "{start}..{end}")?;
    }
    Ok(())
}

fn write_written(f: &mut fmt::Formatter<'_>, written: &Written) -> fmt::Result {
    write!(f, "len={} hash={:016x}", written.len, written.hash)?;
    if let Some(bytes) = &written.bytes {
        f.write_str(" ")?;
        write_preview(f, bytes)?;
    }
    Ok(())
}

impl fmt::Display for Event {
    /// One line: `#seq  +seconds  task=T  kind  fields`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.mono_ns / 1_000_000_000;
        let nanos = self.mono_ns % 1_000_000_000;
        write!(
            f,
            "#{:<8} +{secs}.{nanos:09}s task={:<4} {}",
            self.seq,
            self.task.to_string(),
            self.kind
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every kind. The match below stops compiling when a variant
    /// is added, which is the cue to extend this list and [`EventKind::NAMES`].
    fn one_of_each() -> Vec<EventKind> {
        let addr = "127.0.0.1:1".parse().unwrap();
        let err = IoErrorKind::Other;
        let kinds = vec![
            EventKind::ClockMono { ns: 0 },
            EventKind::ClockWall { unix_ns: 0 },
            EventKind::TimerFired {
                timer: 0,
                deadline_ns: 0,
            },
            EventKind::RootSeed { seed: [0; 32] },
            EventKind::Entropy { bytes: vec![] },
            EventKind::TcpListen {
                listener: ConnId(0),
                addr: String::new(),
                result: Err(err),
            },
            EventKind::TcpAccept {
                listener: ConnId(0),
                result: Err(err),
            },
            EventKind::TcpConnect {
                conn: ConnId(0),
                addr: String::new(),
                result: Err(err),
            },
            EventKind::TcpRead {
                conn: ConnId(0),
                result: ReadOutcome::Eof,
            },
            EventKind::TcpWrite {
                conn: ConnId(0),
                result: Err(err),
            },
            EventKind::TcpShutdown {
                conn: ConnId(0),
                result: Ok(()),
            },
            EventKind::TcpClose { conn: ConnId(0) },
            EventKind::UdpBind {
                socket: ConnId(0),
                addr: String::new(),
                result: Err(err),
            },
            EventKind::UdpSend {
                socket: ConnId(0),
                peer: addr,
                result: Err(err),
            },
            EventKind::UdpRecv {
                socket: ConnId(0),
                result: Err(err),
            },
            EventKind::Spawn {
                child: TaskId(1),
                name: None,
            },
            EventKind::TaskEnd {
                outcome: TaskOutcome::Completed,
            },
            EventKind::Mark {
                name: String::new(),
                value: vec![],
            },
            EventKind::Signal {
                signal: SignalKind::Hangup,
            },
            EventKind::Exit { code: 0 },
            EventKind::Gap {
                first_lost_seq: 0,
                lost: 1,
                reason: GapReason::QueueFull,
            },
            EventKind::Redacted {
                seq_of: 0,
                ranges: vec![(1, 2)],
            },
            EventKind::TaskAdopted { tokio_id: 7 },
            EventKind::LibClockMono { ns: 8 },
            EventKind::LibClockWall { unix_ns: 9 },
            EventKind::TimerSlept {
                timer: 1,
                deadline_ns: 2,
                duration_ns: 3,
            },
            EventKind::UdpClose { socket: ConnId(4) },
            EventKind::MarkEnd { name: "m".into() },
            EventKind::Lookup {
                host: "payment:7000".into(),
                result: Ok(vec!["10.0.0.2:7000".parse().unwrap()]),
            },
            EventKind::DriverTurn {
                ready: 2,
                clock_ns: 3,
            },
        ];
        for kind in &kinds {
            match kind {
                EventKind::ClockMono { .. }
                | EventKind::ClockWall { .. }
                | EventKind::TimerFired { .. }
                | EventKind::RootSeed { .. }
                | EventKind::Entropy { .. }
                | EventKind::TcpListen { .. }
                | EventKind::TcpAccept { .. }
                | EventKind::TcpConnect { .. }
                | EventKind::TcpRead { .. }
                | EventKind::TcpWrite { .. }
                | EventKind::TcpShutdown { .. }
                | EventKind::TcpClose { .. }
                | EventKind::UdpBind { .. }
                | EventKind::UdpSend { .. }
                | EventKind::UdpRecv { .. }
                | EventKind::Spawn { .. }
                | EventKind::TaskEnd { .. }
                | EventKind::Mark { .. }
                | EventKind::Signal { .. }
                | EventKind::Exit { .. }
                | EventKind::Gap { .. }
                | EventKind::Redacted { .. }
                | EventKind::TaskAdopted { .. }
                | EventKind::LibClockMono { .. }
                | EventKind::LibClockWall { .. }
                | EventKind::TimerSlept { .. }
                | EventKind::UdpClose { .. }
                | EventKind::MarkEnd { .. }
                | EventKind::Lookup { .. }
                | EventKind::DriverTurn { .. } => {}
            }
        }
        kinds
    }

    #[test]
    fn kind_names_are_exactly_the_event_kinds() {
        let names: Vec<&str> = one_of_each().iter().map(EventKind::name).collect();
        assert_eq!(names, EventKind::NAMES);
        for (index, kind) in one_of_each().iter().enumerate() {
            assert_eq!(kind.index(), index);
            assert_eq!(EventKind::CLASSES[index], kind.class(), "{}", kind.name());
        }
    }

    #[test]
    fn every_class_name_parses_back() {
        for class in KindClass::ALL {
            assert_eq!(KindClass::from_name(class.name()), Some(class));
        }
        assert_eq!(KindClass::from_name("bogus"), None);
    }

    #[test]
    fn io_error_kinds_round_trip_through_std() {
        for kind in [
            IoErrorKind::ConnectionReset,
            IoErrorKind::TimedOut,
            IoErrorKind::Other,
        ] {
            assert_eq!(IoErrorKind::from(std::io::ErrorKind::from(kind)), kind);
        }
    }

    #[test]
    fn display_is_one_line_and_elides_long_payloads() {
        let event = Event {
            seq: 7,
            task: TaskId(2),
            mono_ns: 1_500_000_000,
            kind: EventKind::TcpRead {
                conn: ConnId(3),
                result: ReadOutcome::Data(b"GET / HTTP/1.1\r\n".repeat(10)),
            },
        };
        let line = event.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("#7 "), "{line}");
        assert!(line.contains("+1.500000000s"), "{line}");
        assert!(line.contains("160B \"GET / HTTP/1.1\\r\\n"), "{line}");
        assert!(line.ends_with("..."), "{line}");
    }

    #[test]
    fn a_redacted_marker_displays_its_target_and_ranges() {
        let kind = EventKind::Redacted {
            seq_of: 12,
            ranges: vec![(30, 42), (50, 52)],
        };
        assert_eq!(
            kind.to_string(),
            "redacted     of=#12 bytes=14 at=30..42,50..52"
        );
        assert_eq!(kind.payload_len(), 16);
        assert_eq!(kind.class(), KindClass::Redacted);
        // Hostile ranges neither panic nor count negative bytes.
        assert_eq!(
            redacted_bytes(&[(9, 3), (0, u32::MAX)]),
            u64::from(u32::MAX)
        );
    }

    /// The variant index is part of the format: `Redacted` was appended,
    /// so every v1 kind keeps its index and old logs keep decoding.
    #[test]
    fn redacted_is_appended_after_every_v1_kind() {
        let gap = EventKind::Gap {
            first_lost_seq: 0,
            lost: 1,
            reason: GapReason::QueueFull,
        };
        let mut bytes = Vec::new();
        crate::format::codec::encode_into(&gap, &mut bytes).unwrap();
        let mut marker = Vec::new();
        let kind = EventKind::Redacted {
            seq_of: 1,
            ranges: vec![],
        };
        crate::format::codec::encode_into(&kind, &mut marker).unwrap();
        assert_eq!((gap.index(), kind.index()), (20, 21));
        assert_eq!((bytes[0], marker[0]), (20, 21), "bincode's variant tag");
    }

    /// The kinds issue 18 added are appended too: every older kind keeps
    /// its bincode variant tag, so logs written before them still read.
    #[test]
    fn timer_slept_udp_close_and_mark_end_are_appended() {
        let kinds = [
            EventKind::TimerSlept {
                timer: 1,
                deadline_ns: 2,
                duration_ns: 3,
            },
            EventKind::UdpClose { socket: ConnId(4) },
            EventKind::MarkEnd { name: "m".into() },
        ];
        for (kind, tag) in kinds.iter().zip(25u8..) {
            let mut bytes = Vec::new();
            crate::format::codec::encode_into(kind, &mut bytes).unwrap();
            assert_eq!((kind.index(), bytes[0]), (usize::from(tag), tag));
        }
        let slept = kinds[0].to_string();
        assert!(slept.contains("duration=3ns"), "{slept}");
    }

    proptest::proptest! {
        /// Any marker survives the log codec unchanged.
        #[test]
        fn redacted_markers_round_trip_through_the_codec(
            seq in proptest::prelude::any::<u64>(),
            seq_of in proptest::prelude::any::<u64>(),
            ranges in proptest::collection::vec(
                (proptest::prelude::any::<u32>(), proptest::prelude::any::<u32>()),
                0..REDACTED_RANGES_MAX,
            ),
        ) {
            let event = Event {
                seq,
                task: TaskId(3),
                mono_ns: 7,
                kind: EventKind::Redacted { seq_of, ranges },
            };
            let mut bytes = Vec::new();
            crate::format::codec::encode_into(&event, &mut bytes).unwrap();
            let (decoded, used): (Event, usize) = crate::format::codec::decode_from(&bytes).unwrap();
            proptest::prop_assert_eq!(used, bytes.len());
            proptest::prop_assert_eq!(decoded, event);
        }
    }

    #[test]
    fn content_hash_is_the_stable_xxh3() {
        // Pinned: the log format depends on this exact function.
        assert_eq!(content_hash(b""), 0x2d06800538d394c2);
    }
}
