//! One request across services: the events causally connected to a mark,
//! the critical path through them, and where the time went.
//!
//! A mark (`deja::mark("order", id)`) sits somewhere inside a request. The
//! request is found without any change to the protocol, from TCP's
//! request/response shape:
//!
//! 1. **Origin.** From the mark, walk back through its task to the read
//!    that brought the request in, a read on a connection this service
//!    *accepted* (the first read since the last reply on it). That read's
//!    bytes were written by another logged service: continue from that
//!    write. The walk ends at a task that never received the request (a
//!    client: the origin is the start of its exchange, the connect or the
//!    first write since the last answer on that connection), or at a read
//!    whose sender is not logged (the origin is that read).
//! 2. **End.** At the origin's task: the last read of the answer on the
//!    exchange's connection (for a client), or the last write of the reply
//!    (for an unlogged sender).
//! 3. **Events.** Every event that happens after the origin and before the
//!    end, in the happens-before order that a task's own order, matched
//!    messages, connects (to their accepts) and spawns make. Concurrent
//!    requests on other tasks are not in it; events of the same task
//!    before the request or after its answer are not either.
//! 4. **Critical path.** From the end back to the origin, each event's
//!    latest predecessor (corrected wall time): the one it waited for.
//!    Each step is charged to a place: a service running, waiting on a
//!    timer or on input from outside the request, or the network between
//!    two services.
//!
//! Datagrams inside a request are followed; a request carried by UDP alone
//! is not found (UDP has no connection to tell a request from its answer).

use std::collections::{HashMap, HashSet, VecDeque};

use deja_recorder::{ConnId, Event, EventKind, ReadOutcome};
use serde::Serialize;

use crate::breakpoint::MarkPattern;
use crate::timeline::{At, Link, Timeline};

/// Most services a walk from a mark to its origin crosses; a longer chain
/// means the logs contradict each other (a cycle), not a deep call graph.
const HOPS_MAX: usize = 256;

/// Where a step of the critical path spent its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "place")]
pub enum Place {
    /// A service's task running between two of its events.
    Running {
        /// The run.
        run: usize,
    },
    /// A service waiting for a timer.
    Timer {
        /// The run.
        run: usize,
    },
    /// A service waiting for input from outside the request (a read or
    /// accept whose cause is not in it).
    Waiting {
        /// The run.
        run: usize,
    },
    /// A service connecting to another (the TCP handshake).
    Connecting {
        /// The run.
        run: usize,
    },
    /// A task of a service starting another.
    Spawn {
        /// The run.
        run: usize,
    },
    /// A message between two services: from the send to the receive.
    Network {
        /// The sender's run.
        from: usize,
        /// The receiver's run.
        to: usize,
    },
}

/// One step of the critical path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The event the step starts at.
    pub from: At,
    /// The event it ends at.
    pub to: At,
    /// Its length on the corrected clock, ns (0 when clocks disagree).
    pub ns: i64,
    /// Where the time went.
    #[serde(flatten)]
    pub place: Place,
}

/// A request: the events of every service causally between its origin and
/// its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestView {
    /// The mark that found it.
    pub mark: At,
    /// Where it started.
    pub origin: At,
    /// Where it ended.
    pub end: At,
    /// Its events, in timeline order.
    pub events: Vec<At>,
    /// The critical path, origin to end.
    pub critical_path: Vec<Step>,
    /// End minus origin, ns on the corrected clock.
    pub total_ns: i64,
}

impl RequestView {
    /// Time spent per place along the critical path, longest first.
    pub fn time_by_place(&self) -> Vec<(Place, i64)> {
        let mut totals: Vec<(Place, i64)> = Vec::new();
        for step in &self.critical_path {
            match totals.iter_mut().find(|(place, _)| *place == step.place) {
                Some((_, ns)) => *ns += step.ns,
                None => totals.push((step.place, step.ns)),
            }
        }
        totals.sort_by_key(|&(_, ns)| std::cmp::Reverse(ns));
        totals
    }

    /// True if `at` is on the critical path.
    pub fn is_critical(&self, at: At) -> bool {
        self.origin == at || self.critical_path.iter().any(|step| step.to == at)
    }
}

/// What finding requests needs beyond the timeline: each event's
/// neighbours in its task, spawn links, positions in the merged order, and
/// which connections each service accepted.
#[derive(Debug)]
pub struct Requests<'t> {
    timeline: &'t Timeline,
    /// Per run, per event: the previous and next event of the same task.
    prev: Vec<Vec<Option<u32>>>,
    next: Vec<Vec<Option<u32>>>,
    /// Per run, per event: its position in the merged order.
    position: Vec<Vec<u32>>,
    /// A task's first event → the spawn that created the task.
    spawned_by: HashMap<At, At>,
    /// A spawn → the child's first event.
    first_of_child: HashMap<At, At>,
    /// Per run: connections it accepted (the others it connected).
    accepted: Vec<HashSet<u64>>,
}

impl<'t> Requests<'t> {
    /// Index `timeline` for request views: linear in its events.
    pub fn new(timeline: &'t Timeline) -> Requests<'t> {
        let mut prev = Vec::with_capacity(timeline.runs.len());
        let mut next = Vec::with_capacity(timeline.runs.len());
        let mut spawned_by = HashMap::new();
        let mut first_of_child = HashMap::new();
        let mut accepted = Vec::with_capacity(timeline.runs.len());
        for (run, log) in timeline.runs.iter().enumerate() {
            let n = log.events.len();
            let (mut p, mut q) = (vec![None; n], vec![None; n]);
            let mut last: HashMap<u64, u32> = HashMap::new();
            let mut spawns: HashMap<u64, usize> = HashMap::new();
            let mut conns = HashSet::new();
            for (index, event) in log.events.iter().enumerate() {
                let i = u32::try_from(index).expect("a log indexes in u32");
                match last.insert(event.task.0, i) {
                    Some(before) => {
                        p[index] = Some(before);
                        q[before as usize] = Some(i);
                    }
                    None => {
                        if let Some(&spawn) = spawns.get(&event.task.0) {
                            let (spawn, child) = (At { run, index: spawn }, At { run, index });
                            spawned_by.insert(child, spawn);
                            first_of_child.insert(spawn, child);
                        }
                    }
                }
                match &event.kind {
                    EventKind::Spawn { child, .. } => {
                        spawns.insert(child.0, index);
                    }
                    EventKind::TcpAccept { result: Ok(a), .. } => {
                        conns.insert(a.conn.0);
                    }
                    _ => {}
                }
            }
            prev.push(p);
            next.push(q);
            accepted.push(conns);
        }
        let mut position: Vec<Vec<u32>> = timeline
            .runs
            .iter()
            .map(|log| vec![0; log.events.len()])
            .collect();
        for (i, at) in timeline.order.iter().enumerate() {
            position[at.run][at.index] = u32::try_from(i).expect("a timeline indexes in u32");
        }
        Requests {
            timeline,
            prev,
            next,
            position,
            spawned_by,
            first_of_child,
            accepted,
        }
    }

    /// Every mark event matching `pattern` (`VALUE`, `NAME:VALUE`, or
    /// `NAME:*` for any value), in timeline order.
    pub fn marks(&self, pattern: &str) -> Vec<At> {
        let pattern = MarkPattern::new(pattern);
        self.all_marks()
            .into_iter()
            .filter(|at| match &self.timeline.event(*at).kind {
                EventKind::Mark { name, value } => pattern.matches_one(name, value),
                _ => false,
            })
            .collect()
    }

    /// Every mark event, in timeline order.
    pub fn all_marks(&self) -> Vec<At> {
        self.timeline
            .order
            .iter()
            .copied()
            .filter(|at| matches!(self.timeline.event(*at).kind, EventKind::Mark { .. }))
            .collect()
    }

    /// The requests that `marks` sit in, one per distinct origin, in the
    /// order of their first mark.
    pub fn views(&self, marks: &[At]) -> Vec<RequestView> {
        let mut seen = HashSet::new();
        marks
            .iter()
            .filter_map(|&mark| {
                let view = self.view(mark);
                seen.insert(view.origin).then_some(view)
            })
            .collect()
    }

    /// The request that the event at `mark` sits in.
    pub fn view(&self, mark: At) -> RequestView {
        let (origin, end) = self.bounds(mark);
        let events = self.between(origin, end);
        let critical_path = self.critical_path(origin, end, &events);
        let mut ordered: Vec<At> = events.into_iter().collect();
        ordered.sort_by_key(|at| self.position[at.run][at.index]);
        RequestView {
            mark,
            origin,
            end,
            events: ordered,
            critical_path,
            total_ns: self.timeline.corrected_wall_ns(end)
                - self.timeline.corrected_wall_ns(origin),
        }
    }

    /// The timeline the requests are found in.
    pub fn timeline(&self) -> &'t Timeline {
        self.timeline
    }

    /// The spawn that started `at`'s task, if `at` is its first event.
    pub fn spawn_of(&self, at: At) -> Option<At> {
        self.spawned_by.get(&at).copied()
    }

    fn event(&self, at: At) -> &Event {
        self.timeline.event(at)
    }

    fn prev(&self, at: At) -> Option<At> {
        self.prev[at.run][at.index].map(|i| At {
            run: at.run,
            index: i as usize,
        })
    }

    fn next(&self, at: At) -> Option<At> {
        self.next[at.run][at.index].map(|i| At {
            run: at.run,
            index: i as usize,
        })
    }

    /// Walk a task backwards from `at` (inclusive).
    fn back_from(&self, at: At) -> impl Iterator<Item = At> + '_ {
        std::iter::successors(Some(at), move |&at| self.prev(at))
    }

    /// Walk back from `at` (inclusive) through its task, and on through
    /// the task that spawned it, before the spawn.
    fn back_through_spawns(&self, at: At) -> impl Iterator<Item = At> + '_ {
        std::iter::successors(Some(at), move |&at| {
            self.prev(at).or_else(|| self.spawned_by.get(&at).copied())
        })
    }

    /// Walk a task forwards from `at` (inclusive).
    fn on_from(&self, at: At) -> impl Iterator<Item = At> + '_ {
        std::iter::successors(Some(at), move |&at| self.next(at))
    }

    /// A read with data, on a connection of this run: its connection.
    fn read_conn(&self, at: At) -> Option<u64> {
        match &self.event(at).kind {
            EventKind::TcpRead {
                conn,
                result: ReadOutcome::Data(_),
            } => Some(conn.0),
            _ => None,
        }
    }

    fn write_conn(&self, at: At) -> Option<u64> {
        match &self.event(at).kind {
            EventKind::TcpWrite {
                conn,
                result: Ok(_),
                ..
            } => Some(conn.0),
            _ => None,
        }
    }

    fn connect_conn(&self, at: At) -> Option<u64> {
        match &self.event(at).kind {
            EventKind::TcpConnect {
                conn: ConnId(conn),
                result: Ok(_),
                ..
            } => Some(*conn),
            _ => None,
        }
    }

    /// Origin and end of the request `mark` is in.
    fn bounds(&self, mark: At) -> (At, At) {
        let mut at = mark;
        for _ in 0..HOPS_MAX {
            // The read that brought the request into this task.
            let ingress = self.back_through_spawns(at).find(|&e| {
                self.read_conn(e)
                    .is_some_and(|c| self.accepted[e.run].contains(&c))
            });
            let Some(ingress) = ingress else {
                return self.exchange(at);
            };
            let conn = self.read_conn(ingress);
            // Its first read: back over reads of the conn, to its last reply.
            let first = self
                .back_from(ingress)
                .take_while(|&e| self.write_conn(e) != conn)
                .filter(|&e| self.read_conn(e) == conn)
                .last()
                .unwrap_or(ingress);
            match self
                .timeline
                .cause_of(first)
                .filter(|m| m.link != Link::Connection)
            {
                Some(m) => at = m.cause,
                None => {
                    // The sender is not logged: the request starts here
                    // and ends with the last write of the reply.
                    let mut replied = false;
                    let mut end = first;
                    for e in self.on_from(first) {
                        if self.write_conn(e) == conn {
                            replied = true;
                            end = e;
                        } else if replied && self.read_conn(e) == conn {
                            break;
                        }
                    }
                    return (first, end);
                }
            }
        }
        (mark, mark)
    }

    /// A client's exchange around `at`: on the connection of the first
    /// write (or connect) at or after `at`, from the exchange's start to
    /// the last read of its answer.
    fn exchange(&self, at: At) -> (At, At) {
        let Some((conn, first_write)) = self.on_from(at).find_map(|e| {
            self.write_conn(e)
                .or_else(|| self.connect_conn(e))
                .map(|c| (c, e))
        }) else {
            return (at, at);
        };
        let conn = Some(conn);
        // Start: back from the write over this exchange's writes (to the
        // last read of the connection), taking its connect if reached.
        let mut origin = first_write;
        for e in self.back_from(first_write).skip(1) {
            if self.read_conn(e) == conn {
                break;
            }
            if self.write_conn(e) == conn {
                origin = e;
            }
            if self.connect_conn(e) == conn {
                origin = e;
                break;
            }
        }
        // A mark before the exchange starts it when it is the first sign.
        let origin = if self.position[at.run][at.index] < self.position[origin.run][origin.index]
            && self.read_conn(at).is_none()
        {
            at
        } else {
            origin
        };
        // End: the last read of the answer, before the next write.
        let mut end = first_write;
        let mut answered = false;
        for e in self.on_from(first_write).skip(1) {
            if self.read_conn(e) == conn {
                answered = true;
                end = e;
            } else if self.write_conn(e) == conn {
                if answered {
                    break;
                }
                end = e;
            } else if answered
                && matches!(self.event(e).kind, EventKind::TcpClose { conn: c } if Some(c.0) == conn)
            {
                break;
            }
        }
        (origin, end)
    }

    /// Causal predecessors of `at`: its task's previous event, the send
    /// that caused it, the spawn that started its task.
    fn predecessors(&self, at: At) -> impl Iterator<Item = (At, Edge)> + '_ {
        let task = self.prev(at).map(|p| (p, Edge::Task));
        let message = self.timeline.cause_of(at).map(|m| (m.cause, Edge::Message));
        let connection = self
            .timeline
            .connect_of(at)
            .map(|m| (m.cause, Edge::Message));
        let spawn = self.spawned_by.get(&at).map(|&s| (s, Edge::Spawn));
        task.into_iter()
            .chain(message)
            .chain(connection)
            .chain(spawn)
    }

    fn successors(&self, at: At) -> impl Iterator<Item = At> + '_ {
        self.next(at)
            .into_iter()
            .chain(self.timeline.effects_of(at).map(|m| m.effect))
            .chain(self.first_of_child.get(&at).copied())
    }

    /// Events after `origin` and before `end` in happens-before.
    fn between(&self, origin: At, end: At) -> HashSet<At> {
        // A connect's accept may come first in the merged order: both
        // return during the handshake.
        let lowest = std::iter::once(origin)
            .chain(self.timeline.effects_of(origin).map(|m| m.effect))
            .map(|at| self.position[at.run][at.index])
            .min()
            .unwrap_or(0);
        // Ancestors of the end that come after the origin in the merged
        // order (which every happens-before respects).
        let mut ancestors = HashSet::from([end]);
        let mut queue = VecDeque::from([end]);
        while let Some(at) = queue.pop_front() {
            for (before, _) in self.predecessors(at) {
                if self.position[before.run][before.index] >= lowest && ancestors.insert(before) {
                    queue.push_back(before);
                }
            }
        }
        // Of those, the descendants of the origin.
        let mut inside = HashSet::new();
        if ancestors.contains(&origin) {
            inside.insert(origin);
            queue.push_back(origin);
        }
        while let Some(at) = queue.pop_front() {
            for after in self.successors(at) {
                if ancestors.contains(&after) && inside.insert(after) {
                    queue.push_back(after);
                }
            }
        }
        inside
    }

    fn critical_path(&self, origin: At, end: At, events: &HashSet<At>) -> Vec<Step> {
        let wall = |at: At| self.timeline.corrected_wall_ns(at);
        let mut steps = Vec::new();
        let mut at = end;
        while at != origin && steps.len() <= events.len() {
            // The predecessor that came last is the one `at` waited for;
            // on a tie, a message or spawn (they explain the wait).
            let Some((before, edge)) = self
                .predecessors(at)
                .filter(|(p, _)| events.contains(p))
                .max_by_key(|&(p, edge)| (wall(p), edge != Edge::Task))
            else {
                break;
            };
            let place = match edge {
                Edge::Message => Place::Network {
                    from: before.run,
                    to: at.run,
                },
                Edge::Spawn => Place::Spawn { run: at.run },
                Edge::Task => match &self.event(at).kind {
                    EventKind::TimerFired { .. } | EventKind::TimerSlept { .. } => {
                        Place::Timer { run: at.run }
                    }
                    EventKind::TcpConnect { .. } => Place::Connecting { run: at.run },
                    // Input that came from outside the request: waited for.
                    // (Input from inside it was there already: the gap is
                    // the service busy before reading it.)
                    EventKind::TcpRead { .. }
                    | EventKind::TcpAccept { .. }
                    | EventKind::UdpRecv { .. }
                    | EventKind::Signal { .. }
                        if !self
                            .predecessors(at)
                            .any(|(p, edge)| edge == Edge::Message && events.contains(&p)) =>
                    {
                        Place::Waiting { run: at.run }
                    }
                    _ => Place::Running { run: at.run },
                },
            };
            steps.push(Step {
                from: before,
                to: at,
                ns: (wall(at) - wall(before)).max(0),
                place,
            });
            at = before;
        }
        steps.reverse();
        steps
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    Task,
    Message,
    Spawn,
}
