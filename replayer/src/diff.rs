//! Where two runs of the same service part ways: what `deja diff` reports.
//!
//! [`diff_runs`] streams two run directories and aligns their events by
//! **(logical task id, index of the event within that task)**: the k-th
//! intercepted operation of task T in run A is compared with the k-th
//! operation of task T in run B. Task ids are allocated at spawns and
//! program order within a task is exact, so this alignment survives a
//! different interleaving of the tasks, which a comparison in seq order
//! would not.
//!
//! # What is compared
//!
//! "What the operation was and what it returned", minus what differs
//! between two good runs of the same service ([`same_operation`]):
//!
//! | compared | ignored |
//! |---|---|
//! | the kind ([`EventKind::name`]) of every event | `seq`, `mono_ns`: the global order and the times |
//! | reads and datagrams: the exact bytes (and chunking), EOF, the error kind | clock readings (`ns`, `unix_ns`), timer deadlines |
//! | writes and sends: length and content hash, or the error kind | the root seed, and entropy's bytes (their length counts) |
//! | connects, listens, binds: the address string the service asked for, success or the error kind, and the IP addresses of the result | connection ids, and every port in a result (a client's ephemeral port, a listener bound to port 0) |
//! | accepts: success or the error kind, the peer's and local IP | |
//! | spawns: the child's task id and name; task ends: the outcome | |
//! | marks: name and value; signals; the exit code; timer ids | |
//!
//! A `Gap` (events the recorder lost) in one run only is a difference: the
//! alignment cannot be trusted past it.
//!
//! # Which difference is first
//!
//! Many operations usually differ once two runs part ways; the report names
//! the one **earliest in run A's seq order**. Run A is the reference (the
//! good run, or the one being explained): everything A did before that
//! point, in every task, B did too with the same results, so the first
//! difference has no earlier difference in A that could have caused it,
//! and it is what to look at first. Swap the runs for B's view.
//!
//! One refinement: a **conflict** (both runs have an operation at the
//! position, and they differ) comes before any **absence** (one run's task
//! did fewer operations, or the run has no such task). An absence is often
//! only where a log stops: a simulation that stops at a broken invariant, a
//! recording killed or ended by `Exit` while tasks still waited for input.
//! A conflict is a positive difference in what the service did. Absences
//! are ordered by A's seq too; an operation A lacks sorts at the end of A.
//!
//! Once a task differs, its later operations are not compared (they are
//! misaligned); [`DiffReport::differing_tasks`] counts such tasks.
//!
//! # Memory
//!
//! Both runs are read once, in step, one frame at a time. Per task the diff
//! keeps two counters and, until the task ends in both runs, the last
//! `context` matched pairs of events. Besides that it holds the events one
//! run has read that the other has not reached yet: the reader pulls from
//! the run that is behind, so this is bounded by how far the two runs'
//! interleavings drift apart, but a task that exists in one run only keeps
//! all its events (at worst, the events of that run).
//!
//! ```no_run
//! let report = deja_replayer::diff::diff_runs("runs/good", "runs/bad", 3)?;
//! match &report.first {
//!     None => println!("no difference"),
//!     Some(diff) => println!("task {} operation {} differs", diff.task, diff.index),
//! }
//! # Ok::<(), deja_recorder::ReadError>(())
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;

use deja_recorder::{Event, EventKind, LogEnd, ReadError, ReadOutcome, RunReader};
use serde::Serialize;

/// How many tasks [`DiffReport::tasks_only_in_a`] and
/// [`DiffReport::tasks_only_in_b`] list (the counts are exact).
pub const TASKS_LISTED_MAX: usize = 32;

/// The result of comparing two runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiffReport {
    /// Run A's summary.
    pub a: RunSide,
    /// Run B's summary.
    pub b: RunSide,
    /// Operations (aligned pairs of events) that matched.
    pub matched: u64,
    /// Tasks with at least one aligned operation that differs, or that
    /// did more operations in one run than in the other (including tasks
    /// that exist in one run only).
    pub differing_tasks: u64,
    /// Of those, the tasks whose only difference is that they did fewer
    /// operations in one run (often where that run's log ends).
    pub shorter_tasks: u64,
    /// Tasks that run A has and run B does not: how many.
    pub only_in_a: u64,
    /// Tasks that run B has and run A does not: how many.
    pub only_in_b: u64,
    /// Ids of the tasks only in A (the first [`TASKS_LISTED_MAX`]).
    pub tasks_only_in_a: Vec<u64>,
    /// Ids of the tasks only in B (the first [`TASKS_LISTED_MAX`]).
    pub tasks_only_in_b: Vec<u64>,
    /// The first difference in run A's seq order; `None` when the runs match.
    pub first: Option<Difference>,
}

impl DiffReport {
    /// True when every aligned operation matched and neither run has an
    /// operation the other lacks.
    pub fn same(&self) -> bool {
        self.first.is_none()
    }
}

/// One run's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSide {
    /// The run directory as given.
    pub dir: String,
    /// The service named in the run's header (`None` when the log ends
    /// inside its first header).
    pub service: Option<String>,
    /// Events read.
    pub events: u64,
    /// Distinct tasks.
    pub tasks: u64,
    /// How the log ends, as a warning when it was not closed cleanly
    /// ([`LogEnd::warning`]).
    pub end_warning: Option<String>,
}

/// The first point where the runs differ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    /// The logical task.
    pub task: u64,
    /// The operation's index within the task (0 is its first event).
    pub index: u64,
    /// Run A's event there, or `None` (see [`Difference::a_missing`]).
    pub a: Option<Event>,
    /// Run B's event there, or `None` (see [`Difference::b_missing`]).
    pub b: Option<Event>,
    /// Why A has no such operation.
    pub a_missing: Option<Missing>,
    /// Why B has no such operation.
    pub b_missing: Option<Missing>,
    /// What differs, in words.
    pub why: String,
    /// The task's operations just before it, in A (they matched B's).
    pub before_a: Vec<Event>,
    /// The same operations in B.
    pub before_b: Vec<Event>,
}

/// Why a run has no event at an aligned position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Missing {
    /// The run has no such task at all.
    NoSuchTask,
    /// The task did fewer operations: the log ends while it still runs.
    DidFewer {
        /// How many operations the task did in that run.
        operations: u64,
    },
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::NoSuchTask => f.write_str("no such task in this run"),
            Missing::DidFewer { operations } => write!(
                f,
                "the task did only {operations} operations: the log ends while it still runs"
            ),
        }
    }
}

/// True when `a` and `b` are the same operation with the same results,
/// ignoring what differs between two good runs (see the module docs).
pub fn same_operation(a: &EventKind, b: &EventKind) -> bool {
    use EventKind as K;
    fn ip<E: PartialEq>(a: &Result<SocketAddr, E>, b: &Result<SocketAddr, E>) -> bool {
        match (a, b) {
            (Ok(a), Ok(b)) => a.ip() == b.ip(),
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }
    fn written<E: PartialEq>(
        a: &Result<deja_recorder::Written, E>,
        b: &Result<deja_recorder::Written, E>,
    ) -> bool {
        match (a, b) {
            (Ok(a), Ok(b)) => (a.len, a.hash) == (b.len, b.hash),
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }
    match (a, b) {
        (K::ClockMono { .. }, K::ClockMono { .. })
        | (K::ClockWall { .. }, K::ClockWall { .. })
        | (K::LibClockMono { .. }, K::LibClockMono { .. })
        | (K::LibClockWall { .. }, K::LibClockWall { .. })
        | (K::RootSeed { .. }, K::RootSeed { .. })
        | (K::TcpClose { .. }, K::TcpClose { .. })
        | (K::UdpClose { .. }, K::UdpClose { .. })
        | (K::Gap { .. }, K::Gap { .. }) => true,
        (K::MarkEnd { name: a }, K::MarkEnd { name: b }) => a == b,
        (K::TimerFired { timer: a, .. }, K::TimerFired { timer: b, .. }) => a == b,
        (
            K::TimerSlept {
                timer: a,
                duration_ns: da,
                ..
            },
            K::TimerSlept {
                timer: b,
                duration_ns: db,
                ..
            },
        ) => a == b && da == db,
        (K::Entropy { bytes: a }, K::Entropy { bytes: b }) => a.len() == b.len(),
        (
            K::TcpListen {
                addr: addr_a,
                result: a,
                ..
            },
            K::TcpListen {
                addr: addr_b,
                result: b,
                ..
            },
        )
        | (
            K::UdpBind {
                addr: addr_a,
                result: a,
                ..
            },
            K::UdpBind {
                addr: addr_b,
                result: b,
                ..
            },
        ) => addr_a == addr_b && ip(a, b),
        (K::TcpAccept { result: a, .. }, K::TcpAccept { result: b, .. }) => match (a, b) {
            (Ok(a), Ok(b)) => a.peer.ip() == b.peer.ip() && a.local.ip() == b.local.ip(),
            (Err(a), Err(b)) => a == b,
            _ => false,
        },
        (
            K::TcpConnect {
                addr: addr_a,
                result: a,
                ..
            },
            K::TcpConnect {
                addr: addr_b,
                result: b,
                ..
            },
        ) => {
            addr_a == addr_b
                && match (a, b) {
                    (Ok(a), Ok(b)) => a.peer.ip() == b.peer.ip() && a.local.ip() == b.local.ip(),
                    (Err(a), Err(b)) => a == b,
                    _ => false,
                }
        }
        (K::TcpRead { result: a, .. }, K::TcpRead { result: b, .. }) => a == b,
        (K::TcpWrite { result: a, .. }, K::TcpWrite { result: b, .. }) => written(a, b),
        (K::TcpShutdown { result: a, .. }, K::TcpShutdown { result: b, .. }) => a == b,
        (
            K::UdpSend {
                peer: peer_a,
                result: a,
                ..
            },
            K::UdpSend {
                peer: peer_b,
                result: b,
                ..
            },
        ) => peer_a.ip() == peer_b.ip() && written(a, b),
        (K::UdpRecv { result: a, .. }, K::UdpRecv { result: b, .. }) => match (a, b) {
            (Ok(a), Ok(b)) => a.peer.ip() == b.peer.ip() && a.bytes == b.bytes,
            (Err(a), Err(b)) => a == b,
            _ => false,
        },
        (
            K::Spawn {
                child: child_a,
                name: name_a,
            },
            K::Spawn {
                child: child_b,
                name: name_b,
            },
        ) => child_a == child_b && name_a == name_b,
        (K::TaskEnd { outcome: a }, K::TaskEnd { outcome: b }) => a == b,
        (
            K::Mark {
                name: name_a,
                value: a,
            },
            K::Mark {
                name: name_b,
                value: b,
            },
        ) => name_a == name_b && a == b,
        (K::Signal { signal: a }, K::Signal { signal: b }) => a == b,
        (K::Exit { code: a }, K::Exit { code: b }) => a == b,
        // The masked ranges; `seq_of` is a seq, which differs between runs.
        (K::Redacted { ranges: a, .. }, K::Redacted { ranges: b, .. }) => a == b,
        // tokio's task ids are handed out per process: never the same twice.
        (K::TaskAdopted { .. }, K::TaskAdopted { .. }) => true,
        // The name; DNS answers rotate between runs as ports do.
        (K::Lookup { host: a, .. }, K::Lookup { host: b, .. }) => a == b,
        _ => false,
    }
}

/// What differs between two events that are not [`same_operation`], in words.
fn why(a: &EventKind, b: &EventKind) -> String {
    if a.name() != b.name() {
        return format!("A did {}, B did {}", a.name(), b.name());
    }
    let what = match a {
        EventKind::TcpRead {
            result: ReadOutcome::Data(_),
            ..
        }
        | EventKind::UdpRecv { .. } => "read other bytes",
        EventKind::TcpRead { .. } => "read returned otherwise",
        EventKind::TcpWrite { .. } | EventKind::UdpSend { .. } => "wrote other bytes",
        EventKind::Mark { .. } => "marked another value",
        EventKind::Spawn { .. } => "spawned another task",
        EventKind::TaskEnd { .. } => "the task ended otherwise",
        EventKind::Exit { .. } => "exited with another code",
        EventKind::Entropy { .. } => "drew another amount of entropy",
        EventKind::TimerFired { .. } => "another timer fired",
        EventKind::TimerSlept { .. } => "another timer or duration",
        _ => "another address or result",
    };
    format!("same operation ({}), {what}", a.name())
}

/// Which run an event comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

fn other_side(side: Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

/// What the diff keeps per task.
#[derive(Debug, Default)]
struct Task {
    /// Events read per run.
    count_a: u64,
    count_b: u64,
    /// The seq of A's last event of this task.
    last_seq_a: Option<u64>,
    /// Aligned pairs compared so far (all matched unless `differs`).
    matched: u64,
    /// Events of the run that is ahead in this task, not compared yet.
    pending: VecDeque<Event>,
    /// Which run `pending` comes from (meaningless when it is empty).
    pending_side: Option<Side>,
    /// The last matched pairs (at most `context`).
    context: VecDeque<(Event, Event)>,
    /// The task differs; its later events are not compared.
    differs: bool,
    /// Both runs ended the task: nothing more to compare.
    done: bool,
}

/// The diff's running state.
struct Differ {
    context: usize,
    tasks: BTreeMap<u64, Task>,
    matched: u64,
    differing_tasks: u64,
    /// Tasks that differ only by doing fewer operations in one run.
    shorter_tasks: u64,
    /// The first difference so far, with its key: conflicts before
    /// absences, then A's seq order.
    first: Option<(Key, Difference)>,
    /// Events waiting in pending queues, from A and from B.
    waiting_a: u64,
    waiting_b: u64,
}

impl Differ {
    fn new(context: usize) -> Differ {
        Differ {
            context,
            tasks: BTreeMap::new(),
            matched: 0,
            differing_tasks: 0,
            shorter_tasks: 0,
            first: None,
            waiting_a: 0,
            waiting_b: 0,
        }
    }

    /// The next event of `side`'s run.
    fn add(&mut self, side: Side, event: Event) {
        let task_id = event.task.0;
        let context = self.context;
        let task = self.tasks.entry(task_id).or_default();
        match side {
            Side::A => {
                task.count_a += 1;
                task.last_seq_a = Some(event.seq);
            }
            Side::B => task.count_b += 1,
        }
        if task.differs {
            return;
        }
        let other = match task.pending_side {
            Some(pending) if pending != side && !task.pending.is_empty() => {
                task.pending.pop_front()
            }
            _ => None,
        };
        let Some(other) = other else {
            task.pending_side = Some(side);
            task.pending.push_back(event);
            *self.waiting(side) += 1;
            return;
        };
        *self.waiting(other_side(side)) -= 1;
        let task = self.tasks.get_mut(&task_id).expect("a known task");
        let (a, b) = match side {
            Side::A => (event, other),
            Side::B => (other, event),
        };
        if same_operation(&a.kind, &b.kind) {
            task.matched += 1;
            self.matched += 1;
            if matches!(a.kind, EventKind::TaskEnd { .. }) {
                task.done = true;
                task.context = VecDeque::new();
            } else if context > 0 {
                if task.context.len() == context {
                    task.context.pop_front();
                }
                task.context.push_back((a, b));
            }
            return;
        }
        let key = Key {
            absence: false,
            seq: a.seq,
        };
        let why = why(&a.kind, &b.kind);
        let difference = difference(task_id, task, Some(a), Some(b), why);
        self.differ(key, difference);
    }

    /// Events of `side` waiting for the other run.
    fn waiting(&mut self, side: Side) -> &mut u64 {
        match side {
            Side::A => &mut self.waiting_a,
            Side::B => &mut self.waiting_b,
        }
    }

    /// Record that a task differs; keep the difference if it is the first
    /// in A's order.
    fn differ(&mut self, key: Key, difference: Difference) {
        let task = self.tasks.get_mut(&difference.task).expect("a known task");
        task.differs = true;
        task.context = VecDeque::new();
        let dropped = std::mem::take(&mut task.pending).len() as u64;
        if let Some(side) = task.pending_side {
            *self.waiting(side) -= dropped;
        }
        self.differing_tasks += 1;
        if key.absence {
            self.shorter_tasks += 1;
        }
        if self.first.as_ref().is_none_or(|(first, _)| key < *first) {
            self.first = Some((key, difference));
        }
    }

    /// Both runs ended: what one run did in a task beyond the other.
    fn finish(&mut self) {
        let mut extra = Vec::new();
        for (&id, task) in &mut self.tasks {
            if task.differs || task.pending.is_empty() {
                continue;
            }
            let event = task.pending.front().cloned().expect("not empty");
            let (key, a, b, why) = match task.pending_side {
                Some(Side::A) => {
                    let why = format!(
                        "A did {}, B did nothing more in this task",
                        event.kind.name()
                    );
                    (event.seq, Some(event), None, why)
                }
                _ => {
                    let why = format!(
                        "B did {}, A did nothing more in this task",
                        event.kind.name()
                    );
                    (u64::MAX, None, Some(event), why)
                }
            };
            let key = Key {
                absence: true,
                seq: key,
            };
            extra.push((key, difference(id, task, a, b, why)));
        }
        for (key, difference) in extra {
            self.differ(key, difference);
        }
    }
}

/// Where a difference sorts: every conflict (both runs have an operation
/// there, and they differ) before every absence (one run has none), then
/// by A's seq (an operation A lacks sorts at the end of A).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    absence: bool,
    seq: u64,
}

/// The difference at `task`'s next aligned position.
fn difference(id: u64, task: &Task, a: Option<Event>, b: Option<Event>, why: String) -> Difference {
    let missing = |present: &Option<Event>, count: u64| {
        present.is_none().then_some(if count == 0 {
            Missing::NoSuchTask
        } else {
            Missing::DidFewer { operations: count }
        })
    };
    Difference {
        task: id,
        index: task.matched,
        a_missing: missing(&a, task.count_a),
        b_missing: missing(&b, task.count_b),
        a,
        b,
        why,
        before_a: task.context.iter().map(|(a, _)| a.clone()).collect(),
        before_b: task.context.iter().map(|(_, b)| b.clone()).collect(),
    }
}

/// One run being read.
struct Stream {
    reader: RunReader,
    events: u64,
    done: bool,
}

impl Stream {
    /// The run's next event, library clock readings and driver turns
    /// left out: a library may read the clock on every poll, and two good
    /// runs poll and batch differently (replay passes such readings too).
    fn next(&mut self) -> Result<Option<Event>, ReadError> {
        if self.done {
            return Ok(None);
        }
        match self.reader.by_ref().find(|event| {
            !matches!(
                event,
                Ok(Event {
                    kind: EventKind::LibClockMono { .. }
                        | EventKind::LibClockWall { .. }
                        | EventKind::DriverTurn { .. },
                    ..
                })
            )
        }) {
            Some(Ok(event)) => {
                self.events += 1;
                Ok(Some(event))
            }
            Some(Err(err)) => Err(err),
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }

    fn side(self, dir: &Path, tasks: u64) -> RunSide {
        RunSide {
            dir: dir.display().to_string(),
            service: self.reader.header().map(|h| h.run.service.clone()),
            events: self.events,
            tasks,
            end_warning: self.reader.end().and_then(LogEnd::warning),
        }
    }
}

/// Compare run directories `a` and `b` (see the module docs), keeping
/// `context` operations before the difference.
///
/// Fails like [`RunReader`] does, on either run: I/O errors, an
/// unsupported version, corruption before the tail (the error names the
/// file and offset).
pub fn diff_runs(
    a: impl AsRef<Path>,
    b: impl AsRef<Path>,
    context: usize,
) -> Result<DiffReport, ReadError> {
    let (dir_a, dir_b) = (a.as_ref(), b.as_ref());
    let mut stream_a = Stream {
        reader: RunReader::open(dir_a)?,
        events: 0,
        done: false,
    };
    let mut stream_b = Stream {
        reader: RunReader::open(dir_b)?,
        events: 0,
        done: false,
    };
    let mut differ = Differ::new(context);
    // Pull from the run that is behind: fewer events waiting for the other.
    while !(stream_a.done && stream_b.done) {
        let side = if stream_b.done || (!stream_a.done && differ.waiting_a <= differ.waiting_b) {
            Side::A
        } else {
            Side::B
        };
        let stream = match side {
            Side::A => &mut stream_a,
            Side::B => &mut stream_b,
        };
        let Some(event) = stream.next()? else {
            continue;
        };
        differ.add(side, event);
    }
    differ.finish();

    let tasks_a = differ.tasks.values().filter(|t| t.count_a > 0).count() as u64;
    let tasks_b = differ.tasks.values().filter(|t| t.count_b > 0).count() as u64;
    let only = |pick: fn(&Task) -> bool| -> (u64, Vec<u64>) {
        let ids = differ
            .tasks
            .iter()
            .filter(|(_, task)| pick(task))
            .map(|(id, _)| *id);
        (
            ids.clone().count() as u64,
            ids.take(TASKS_LISTED_MAX).collect(),
        )
    };
    let (only_in_a, tasks_only_in_a) = only(|t| t.count_b == 0);
    let (only_in_b, tasks_only_in_b) = only(|t| t.count_a == 0);
    Ok(DiffReport {
        a: stream_a.side(dir_a, tasks_a),
        b: stream_b.side(dir_b, tasks_b),
        matched: differ.matched,
        differing_tasks: differ.differing_tasks,
        shorter_tasks: differ.shorter_tasks,
        only_in_a,
        only_in_b,
        tasks_only_in_a,
        tasks_only_in_b,
        first: differ.first.map(|(_, difference)| difference),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use deja_recorder::{
        Accepted, ConnId, LogWriter, RunMeta, TaskId, TaskOutcome, WriterConfig, Written,
    };
    use std::path::PathBuf;

    /// Write a run of `ops` (task, kind) with seqs from `first_seq` and
    /// times `ns_per_op` apart; its directory.
    fn run(
        out: &Path,
        id: &str,
        ops: &[(u64, EventKind)],
        first_seq: u64,
        ns_per_op: u64,
    ) -> PathBuf {
        let mut writer =
            LogWriter::create(out, RunMeta::new("svc", id), WriterConfig::default()).unwrap();
        let events: Vec<Event> = ops
            .iter()
            .enumerate()
            .map(|(i, (task, kind))| Event {
                seq: first_seq + i as u64,
                task: TaskId(*task),
                mono_ns: (i as u64 + 1) * ns_per_op,
                kind: kind.clone(),
            })
            .collect();
        writer.write(&events).unwrap();
        let dir = writer.dir().to_path_buf();
        writer.finish().unwrap();
        dir
    }

    fn read(conn: u64, bytes: &[u8]) -> EventKind {
        EventKind::TcpRead {
            conn: ConnId(conn),
            result: ReadOutcome::Data(bytes.to_vec()),
        }
    }

    fn write(conn: u64, bytes: &[u8]) -> EventKind {
        EventKind::TcpWrite {
            conn: ConnId(conn),
            result: Ok(Written::of(bytes, false)),
        }
    }

    fn accept(conn: u64, peer_port: u16) -> EventKind {
        EventKind::TcpAccept {
            listener: ConnId(0),
            result: Ok(Accepted {
                conn: ConnId(conn),
                peer: SocketAddr::from(([127, 0, 0, 1], peer_port)),
                local: SocketAddr::from(([127, 0, 0, 1], 7000)),
            }),
        }
    }

    fn spawn(child: u64) -> EventKind {
        EventKind::Spawn {
            child: TaskId(child),
            name: None,
        }
    }

    fn end() -> EventKind {
        EventKind::TaskEnd {
            outcome: TaskOutcome::Completed,
        }
    }

    /// A server: main accepts twice and spawns a handler per connection;
    /// each handler reads, looks at the clock, writes, ends. `conn_base`
    /// and `port` vary what differs innocently between runs; `reply` is
    /// what handler 2 writes; `interleave` runs the two handlers' events
    /// alternately instead of one after the other.
    fn server(
        conn_base: u64,
        port: u16,
        clock: u64,
        reply: &[u8],
        interleave: bool,
    ) -> Vec<(u64, EventKind)> {
        let mut ops = vec![
            (
                0,
                EventKind::RootSeed {
                    seed: [conn_base as u8; 32],
                },
            ),
            (0, accept(conn_base + 1, port)),
            (0, spawn(1)),
            (0, accept(conn_base + 2, port + 1)),
            (0, spawn(2)),
        ];
        let handler = |task: u64, conn: u64, reply: &[u8]| {
            vec![
                (task, read(conn, b"GET\n")),
                (task, EventKind::ClockMono { ns: clock * task }),
                (task, write(conn, reply)),
                (task, end()),
            ]
        };
        let one = handler(1, conn_base + 1, b"ok\n");
        let two = handler(2, conn_base + 2, reply);
        if interleave {
            for (x, y) in one.into_iter().zip(two) {
                ops.push(x);
                ops.push(y);
            }
        } else {
            ops.extend(one);
            ops.extend(two);
        }
        ops.push((0, EventKind::Exit { code: 0 }));
        ops
    }

    #[test]
    fn runs_that_differ_only_in_times_seqs_seeds_conn_ids_and_ports_are_the_same() {
        let out = tempfile::tempdir().unwrap();
        let a = run(
            out.path(),
            "a",
            &server(0, 40_000, 5, b"ok\n", false),
            0,
            1_000,
        );
        // Every run starts at seq 0 (the reader checks it); B's seqs differ
        // from A's where its tasks interleave otherwise.
        let b = run(
            out.path(),
            "b",
            &server(10, 51_000, 7, b"ok\n", true),
            0,
            9_999,
        );
        let report = diff_runs(&a, &b, 3).unwrap();
        assert!(report.same(), "{:?}", report.first);
        assert_eq!(report.matched, 5 + 4 + 4 + 1);
        assert_eq!((report.a.events, report.b.events), (14, 14));
        assert_eq!((report.a.tasks, report.b.tasks), (3, 3));
        assert_eq!(report.differing_tasks, 0);
        assert_eq!((report.only_in_a, report.only_in_b), (0, 0));
        assert_eq!(report.a.service.as_deref(), Some("svc"));
        assert_eq!(report.a.end_warning, None);
    }

    #[test]
    fn a_changed_write_is_the_first_difference_at_its_task_and_index() {
        let out = tempfile::tempdir().unwrap();
        let a = run(
            out.path(),
            "a",
            &server(0, 40_000, 5, b"ok\n", false),
            0,
            1_000,
        );
        let b = run(
            out.path(),
            "b",
            &server(0, 40_000, 5, b"no\n", true),
            0,
            1_000,
        );
        let report = diff_runs(&a, &b, 2).unwrap();
        let first = report.first.as_ref().expect("a difference");
        assert_eq!((first.task, first.index), (2, 2));
        assert!(matches!(
            first.a.as_ref().unwrap().kind,
            EventKind::TcpWrite { .. }
        ));
        assert_eq!(first.why, "same operation (tcp_write), wrote other bytes");
        assert_eq!(first.before_a.len(), 2);
        assert!(matches!(first.before_a[0].kind, EventKind::TcpRead { .. }));
        assert!(matches!(
            first.before_b[1].kind,
            EventKind::ClockMono { .. }
        ));
        assert_eq!(report.differing_tasks, 1);
        // Every event but the write and, after it, task 2's end (not compared).
        assert_eq!(report.matched, 14 - 2);
    }

    #[test]
    fn the_first_difference_is_the_earliest_in_run_a() {
        let out = tempfile::tempdir().unwrap();
        // A: task 1 then task 2; both differ in B, where task 2 comes first.
        let ops_a = [(1, write(1, b"x")), (2, write(2, b"y"))];
        let ops_b = [(2, write(2, b"Y")), (1, write(1, b"X"))];
        let a = run(out.path(), "a", &ops_a, 0, 1);
        let b = run(out.path(), "b", &ops_b, 0, 1);
        let report = diff_runs(&a, &b, 3).unwrap();
        assert_eq!(report.first.as_ref().unwrap().task, 1);
        assert_eq!(report.differing_tasks, 2);
        // From B's side, task 2 comes first.
        let report = diff_runs(&b, &a, 3).unwrap();
        assert_eq!(report.first.as_ref().unwrap().task, 2);
    }

    #[test]
    fn an_extra_task_shows_at_its_spawn_and_in_the_spawn_structure() {
        let out = tempfile::tempdir().unwrap();
        let ops_a = [(0, read(1, b"a")), (0, EventKind::Exit { code: 0 })];
        let ops_b = [
            (0, read(1, b"a")),
            (0, spawn(1)),
            (1, EventKind::ClockWall { unix_ns: 3 }),
            (1, end()),
            (0, EventKind::Exit { code: 0 }),
        ];
        let a = run(out.path(), "a", &ops_a, 0, 1);
        let b = run(out.path(), "b", &ops_b, 0, 1);
        let report = diff_runs(&a, &b, 3).unwrap();
        let first = report.first.as_ref().unwrap();
        assert_eq!((first.task, first.index), (0, 1));
        assert_eq!(first.why, "A did exit, B did spawn");
        assert_eq!(first.before_a.len(), 1);
        assert_eq!((report.only_in_a, report.only_in_b), (0, 1));
        assert_eq!(report.tasks_only_in_b, [1]);
        assert_eq!((report.a.tasks, report.b.tasks), (1, 2));
        assert_eq!(report.differing_tasks, 2, "main, and the task A lacks");
    }

    #[test]
    fn a_shorter_run_lacks_the_operations_after_its_end() {
        let out = tempfile::tempdir().unwrap();
        let full = server(0, 40_000, 5, b"ok\n", false);
        // B was cut after handler 1 read: main and handler 1 did fewer.
        let a = run(out.path(), "a", &full, 0, 1);
        let b = run(out.path(), "b", &full[..6], 0, 1);
        let report = diff_runs(&a, &b, 3).unwrap();
        let first = report.first.as_ref().unwrap();
        // Handler 1's clock reading (seq 6) comes before main's exit in A.
        assert_eq!((first.task, first.index), (1, 1));
        assert!(first.b.is_none());
        assert_eq!(first.b_missing, Some(Missing::DidFewer { operations: 1 }));
        assert_eq!(
            first.why,
            "A did clock_mono, B did nothing more in this task"
        );
        assert_eq!(report.tasks_only_in_a, [2]);
        assert_eq!(report.differing_tasks, 3);

        // The other way round, the difference sits where A's task stopped.
        let report = diff_runs(&b, &a, 3).unwrap();
        let first = report.first.as_ref().unwrap();
        assert_eq!(first.a_missing, Some(Missing::DidFewer { operations: 5 }));
        assert_eq!(first.task, 0, "what A lacks sorts at its end, by task");
        assert_eq!(report.shorter_tasks, 3);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["first"]["a_missing"]["reason"], "did_fewer");
    }

    #[test]
    fn a_conflict_comes_before_an_earlier_absence() {
        let out = tempfile::tempdir().unwrap();
        // B's task 1 stops early (its log ends); task 2 differs later in A.
        let ops_a = [
            (1, read(1, b"a")),
            (1, read(1, b"b")),
            (2, read(2, b"PAID")),
        ];
        let ops_b = [(1, read(1, b"a")), (2, read(2, b"UNPAID"))];
        let a = run(out.path(), "a", &ops_a, 0, 1);
        let b = run(out.path(), "b", &ops_b, 0, 1);
        let report = diff_runs(&a, &b, 3).unwrap();
        let first = report.first.as_ref().unwrap();
        assert_eq!((first.task, first.index), (2, 0));
        assert_eq!(first.why, "same operation (tcp_read), read other bytes");
        assert_eq!((report.differing_tasks, report.shorter_tasks), (2, 1));
    }

    #[test]
    fn ignored_fields_are_ignored_and_compared_ones_compared() {
        let connect = |port: u16, local: u16, addr: &str| EventKind::TcpConnect {
            conn: ConnId(u64::from(port)),
            addr: addr.to_string(),
            result: Ok(deja_recorder::Connected {
                local: SocketAddr::from(([10, 0, 0, 1], local)),
                peer: SocketAddr::from(([10, 0, 0, 2], port)),
            }),
        };
        assert!(same_operation(
            &connect(1, 2, "pay:1"),
            &connect(3, 4, "pay:1")
        ));
        assert!(!same_operation(
            &connect(1, 2, "pay:1"),
            &connect(1, 2, "pay:2")
        ));
        assert!(same_operation(
            &EventKind::Entropy { bytes: vec![1, 2] },
            &EventKind::Entropy { bytes: vec![3, 4] }
        ));
        assert!(!same_operation(&read(1, b"PAID"), &read(1, b"UNPAID")));
        assert!(!same_operation(
            &EventKind::Mark {
                name: "order".into(),
                value: b"1".to_vec()
            },
            &EventKind::Mark {
                name: "order".into(),
                value: b"2".to_vec()
            },
        ));
        assert!(!same_operation(&spawn(1), &spawn(2)));
        assert!(!same_operation(
            &EventKind::ClockMono { ns: 1 },
            &EventKind::ClockWall { unix_ns: 1 }
        ));
    }
}
