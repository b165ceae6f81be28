//! One causal timeline from the logs of several services.
//!
//! Each log is a total order of one process's events. Across processes,
//! the only order deja can trust is cause before effect: bytes written by
//! A on a stream A→B happen before B's read that returns them. Streams are
//! matched without any change to the protocol: a TCP connection is the
//! pair of addresses A's connect (or accept) reports and B's accept (or
//! connect) reports mirrored, and its n-th use in both logs when ports are
//! reused; its bytes are matched by offset. A read depends on the write
//! that produced its last byte (earlier writes come before that one in
//! A's own log). UDP datagrams are matched by sender and receiver address
//! and content hash, in order.
//!
//! The merged order follows every log's own order and every match; among
//! events free to go next, the one with the earliest wall-clock time
//! (corrected by the estimated clock offsets) goes first. Wall clocks are
//! only hints: per pair of hosts, a message A→B says B's clock minus A's
//! is at most (B's receive time − A's send time), a message B→A that it is
//! at least (B's send time − A's receive time); the estimate is the middle
//! of those bounds. A receive stamped before its send (on raw clocks) is an
//! effect before its cause, and is reported with both events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use deja_recorder::{content_hash, Event, EventKind, ReadError, ReadOutcome, RunReader};
use serde::Serialize;

/// One service's log, loaded.
#[derive(Clone, Debug)]
pub struct Run {
    /// The run directory.
    pub dir: PathBuf,
    /// Its service name (from the header).
    pub service: String,
    /// The wall clock when it started, ns since the Unix epoch.
    pub start_wall_ns: i64,
    /// Its events, in seq order.
    pub events: Vec<Event>,
}

impl Run {
    /// Read the run directory `dir` whole.
    pub fn load(dir: &Path) -> Result<Run, ReadError> {
        let mut reader = RunReader::open(dir)?;
        let mut events = Vec::new();
        for event in reader.by_ref() {
            events.push(event?);
        }
        let (service, start_wall_ns) = reader
            .header()
            .map(|header| (header.run.service.clone(), header.run.start_wall_unix_ns))
            .unwrap_or_default();
        Ok(Run {
            dir: dir.to_path_buf(),
            service,
            start_wall_ns,
            events,
        })
    }

    /// The wall-clock time of event `index`, as this host's clock read it.
    pub fn wall_ns(&self, index: usize) -> i64 {
        self.start_wall_ns
            .saturating_add(i64::try_from(self.events[index].mono_ns).unwrap_or(i64::MAX))
    }
}

/// An event of the timeline: run (index in the order the logs were
/// given) and position in that run's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct At {
    /// Which log.
    pub run: usize,
    /// Which event of it (its index; equal to its seq in a log without gaps).
    pub index: usize,
}

/// What a match joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Bytes of a TCP stream: the write that produced the read's last byte.
    Bytes {
        /// Stream offset of the read's first byte.
        from: u64,
        /// Stream offset just past its last byte.
        to: u64,
    },
    /// A UDP datagram.
    Datagram,
    /// A connect and the accept on the other side (not an order: both
    /// return after the handshake).
    Connection,
}

/// A cause in one log and its effect in another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Match {
    /// The send (write, send_to, connect).
    pub cause: At,
    /// The receive (read, recv_from, accept).
    pub effect: At,
    /// What joins them.
    pub link: Link,
}

/// Clock offset between two hosts, from their matched messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClockOffset {
    /// The reference run.
    pub a: usize,
    /// The other run.
    pub b: usize,
    /// Lower bound of b's clock minus a's, ns (from messages b→a).
    pub lower_ns: Option<i64>,
    /// Upper bound of b's clock minus a's, ns (from messages a→b).
    pub upper_ns: Option<i64>,
    /// The estimate: the middle of the bounds, or the one bound there is.
    pub estimate_ns: i64,
    /// Messages a→b and b→a the bounds come from.
    pub samples: (usize, usize),
}

impl ClockOffset {
    /// True when both bounds exist and contradict each other (a clock
    /// jumped, or the matches are wrong).
    pub fn inconsistent(&self) -> bool {
        matches!((self.lower_ns, self.upper_ns), (Some(lo), Some(hi)) if lo > hi)
    }
}

/// A receive whose wall time is before its send's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EffectBeforeCause {
    /// The match.
    pub link: Match,
    /// How far before, ns.
    pub by_ns: i64,
}

/// Several logs merged into one causal order.
#[derive(Debug)]
pub struct Timeline {
    /// The logs, in the order given.
    pub runs: Vec<Run>,
    /// Every event of every log, causes before effects.
    pub order: Vec<At>,
    /// Matched causes and effects across logs.
    pub matches: Vec<Match>,
    /// Clock offsets between pairs of runs with messages both ways or one.
    pub clocks: Vec<ClockOffset>,
    /// Estimated offset of each run's clock from the first run's, ns.
    pub run_offsets_ns: Vec<i64>,
    /// Receives stamped before their sends.
    pub effects_before_causes: Vec<EffectBeforeCause>,
    /// Reads and datagrams received whose sender is not among the logs.
    pub unmatched_receives: usize,
    /// Events emitted before their cause because the logs contradict
    /// each other (0 for consistent logs).
    pub order_conflicts: usize,
    /// Index of each match by its effect.
    effect_of: HashMap<At, usize>,
    /// Matches by their cause.
    causes_of: HashMap<At, Vec<usize>>,
    /// Connection matches by their accept.
    connect_of: HashMap<At, usize>,
}

/// One direction of a TCP connection in one log: its n-th use of the
/// address pair (ports get reused).
type StreamKey = (SocketAddr, SocketAddr, u32);

impl Timeline {
    /// Load `dirs` and merge them.
    pub fn load(dirs: &[PathBuf]) -> Result<Timeline, ReadError> {
        let runs = dirs
            .iter()
            .map(|dir| Run::load(dir))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Timeline::build(runs))
    }

    /// Merge loaded runs.
    pub fn build(runs: Vec<Run>) -> Timeline {
        let matches = match_events(&runs);
        let mut effect_of = HashMap::new();
        let mut causes_of: HashMap<At, Vec<usize>> = HashMap::new();
        let mut connect_of = HashMap::new();
        for (i, m) in matches.iter().enumerate() {
            if m.link == Link::Connection {
                connect_of.insert(m.effect, i);
            } else {
                effect_of.insert(m.effect, i);
            }
            causes_of.entry(m.cause).or_default().push(i);
        }
        let clocks = clock_offsets(&runs, &matches);
        let run_offsets_ns = run_offsets(runs.len(), &clocks);
        let effects_before_causes = matches
            .iter()
            .filter(|m| m.link != Link::Connection)
            .filter_map(|m| {
                let sent = runs[m.cause.run].wall_ns(m.cause.index);
                let received = runs[m.effect.run].wall_ns(m.effect.index);
                (received < sent).then_some(EffectBeforeCause {
                    link: *m,
                    by_ns: sent - received,
                })
            })
            .collect();
        let unmatched_receives =
            runs.iter()
                .enumerate()
                .flat_map(|(run, r)| {
                    r.events.iter().enumerate().filter_map(move |(index, e)| {
                        is_receive(&e.kind).then_some(At { run, index })
                    })
                })
                .filter(|at| !effect_of.contains_key(at))
                .count();
        let mut timeline = Timeline {
            runs,
            order: Vec::new(),
            matches,
            clocks,
            run_offsets_ns,
            effects_before_causes,
            unmatched_receives,
            order_conflicts: 0,
            effect_of,
            causes_of,
            connect_of,
        };
        timeline.merge();
        timeline
    }

    /// The event at `at`.
    pub fn event(&self, at: At) -> &Event {
        &self.runs[at.run].events[at.index]
    }

    /// The event's wall time corrected to the first run's clock.
    pub fn corrected_wall_ns(&self, at: At) -> i64 {
        self.runs[at.run]
            .wall_ns(at.index)
            .saturating_sub(self.run_offsets_ns[at.run])
    }

    /// The match whose effect is `at` (its cause in another log).
    pub fn cause_of(&self, at: At) -> Option<&Match> {
        self.effect_of.get(&at).map(|&i| &self.matches[i])
    }

    /// The connect matched to the accept at `at`.
    pub fn connect_of(&self, at: At) -> Option<&Match> {
        self.connect_of.get(&at).map(|&i| &self.matches[i])
    }

    /// The matches whose cause is `at`.
    pub fn effects_of(&self, at: At) -> impl Iterator<Item = &Match> {
        self.causes_of
            .get(&at)
            .into_iter()
            .flatten()
            .map(|&i| &self.matches[i])
    }

    fn merge(&mut self) {
        let total: usize = self.runs.iter().map(|r| r.events.len()).sum();
        let mut next = vec![0usize; self.runs.len()];
        let mut order = Vec::with_capacity(total);
        while order.len() < total {
            let mut best: Option<(i64, At)> = None;
            let mut fallback: Option<(i64, At)> = None;
            for run in 0..self.runs.len() {
                if next[run] >= self.runs[run].events.len() {
                    continue;
                }
                let at = At {
                    run,
                    index: next[run],
                };
                let key = (self.corrected_wall_ns(at), at);
                let ready = match self.effect_of.get(&at) {
                    Some(&m) => {
                        let cause = self.matches[m].cause;
                        next[cause.run] > cause.index
                    }
                    None => true,
                };
                let slot = if ready { &mut best } else { &mut fallback };
                if slot.is_none_or(|current| key < current) {
                    *slot = Some(key);
                }
            }
            let at = match (best, fallback) {
                (Some((_, at)), _) => at,
                (None, Some((_, at))) => {
                    // Every head waits for another: the logs contradict
                    // each other (a cycle). Go on, and count it.
                    self.order_conflicts += 1;
                    at
                }
                (None, None) => break,
            };
            order.push(at);
            next[at.run] += 1;
        }
        self.order = order;
    }
}

fn is_receive(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::TcpRead {
            result: ReadOutcome::Data(_),
            ..
        } | EventKind::UdpRecv { result: Ok(_), .. }
    )
}

/// Written byte ranges of one stream direction: (end offset, event).
#[derive(Default)]
struct Writes {
    spans: Vec<(u64, usize, usize)>,
}

fn match_events(runs: &[Run]) -> Vec<Match> {
    // One pass over every log collects both sides; the matching needs
    // every log's sends before any receive can be paired.
    // Writes by stream: key (writer local, writer peer, n).
    let mut writes: HashMap<StreamKey, (usize, Writes)> = HashMap::new();
    // Connects by their direction's key.
    let mut connects: HashMap<StreamKey, At> = HashMap::new();
    // Datagrams sent: (sender, receiver port, hash, length), in order.
    let mut datagrams: HashMap<(SocketAddr, u16, u64, u32), VecDeque<At>> = HashMap::new();
    let mut accepts: Vec<(At, StreamKey)> = Vec::new();
    // Reads: the event, its direction's key, and its stream offsets.
    let mut reads: Vec<(At, StreamKey, u64, u64)> = Vec::new();
    let mut received: Vec<(At, (SocketAddr, u16, u64, u32))> = Vec::new();
    for (run, log) in runs.iter().enumerate() {
        let mut conns: HashMap<u64, StreamKey> = HashMap::new();
        let mut uses: HashMap<(SocketAddr, SocketAddr), u32> = HashMap::new();
        // Bytes written and read so far, per connection.
        let mut offsets: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut udp_local: HashMap<u64, SocketAddr> = HashMap::new();
        for (index, event) in log.events.iter().enumerate() {
            let here = At { run, index };
            match &event.kind {
                EventKind::TcpConnect {
                    conn,
                    result: Ok(c),
                    ..
                } => {
                    let key = stream_key(&mut uses, c.local, c.peer);
                    conns.insert(conn.0, key);
                    connects.insert(key, here);
                }
                EventKind::TcpAccept { result: Ok(a), .. } => {
                    let key = stream_key(&mut uses, a.local, a.peer);
                    conns.insert(a.conn.0, key);
                    accepts.push((here, key));
                }
                EventKind::TcpWrite {
                    conn,
                    result: Ok(w),
                } => {
                    if let Some(key) = conns.get(&conn.0) {
                        let written = &mut offsets.entry(conn.0).or_default().0;
                        *written += u64::from(w.len);
                        writes
                            .entry(*key)
                            .or_insert_with(|| (run, Writes::default()))
                            .1
                            .spans
                            .push((*written, run, index));
                    }
                }
                EventKind::TcpRead {
                    conn,
                    result: ReadOutcome::Data(bytes),
                } => {
                    if let Some(key) = conns.get(&conn.0) {
                        let read = &mut offsets.entry(conn.0).or_default().1;
                        let from = *read;
                        *read += bytes.len() as u64;
                        reads.push((here, *key, from, *read));
                    }
                }
                EventKind::UdpBind {
                    socket,
                    result: Ok(local),
                    ..
                } => {
                    udp_local.insert(socket.0, *local);
                }
                EventKind::UdpSend {
                    socket,
                    peer,
                    result: Ok(w),
                } => {
                    if let Some(local) = udp_local.get(&socket.0) {
                        datagrams
                            .entry((*local, peer.port(), w.hash, w.len))
                            .or_default()
                            .push_back(here);
                    }
                }
                EventKind::UdpRecv {
                    socket,
                    result: Ok(datagram),
                } => {
                    if let Some(local) = udp_local.get(&socket.0) {
                        let len = u32::try_from(datagram.bytes.len()).unwrap_or(u32::MAX);
                        let key = (
                            datagram.peer,
                            local.port(),
                            content_hash(&datagram.bytes),
                            len,
                        );
                        received.push((here, key));
                    }
                }
                _ => {}
            }
        }
    }

    let mut matches = Vec::new();
    for (here, (local, peer, n)) in accepts {
        // The connect on the other side uses the mirrored pair.
        if let Some(connect) = connects.get(&(peer, local, n)) {
            if connect.run != here.run {
                matches.push(Match {
                    cause: *connect,
                    effect: here,
                    link: Link::Connection,
                });
            }
        }
    }
    for (here, (local, peer, n), from, to) in reads {
        // Bytes flow from the peer: its writes on (peer, local).
        let Some((writer, spans)) = writes.get(&(peer, local, n)) else {
            continue;
        };
        if *writer == here.run {
            continue; // a connection to itself
        }
        // The write holding byte `to - 1`: the first span ending past it.
        let i = spans.spans.partition_point(|(end, _, _)| *end < to);
        if let Some(&(_, run, index)) = spans.spans.get(i) {
            matches.push(Match {
                cause: At { run, index },
                effect: here,
                link: Link::Bytes { from, to },
            });
        }
    }
    for (here, key) in received {
        if let Some(sent) = datagrams.get_mut(&key).and_then(VecDeque::pop_front) {
            if sent.run != here.run {
                matches.push(Match {
                    cause: sent,
                    effect: here,
                    link: Link::Datagram,
                });
            }
        }
    }
    matches
}

/// The key of a connection's direction local→peer: its n-th use.
fn stream_key(
    uses: &mut HashMap<(SocketAddr, SocketAddr), u32>,
    local: SocketAddr,
    peer: SocketAddr,
) -> StreamKey {
    let n = uses.entry((local, peer)).or_default();
    let key = (local, peer, *n);
    *n += 1;
    key
}

/// Lower bound, upper bound, messages a→b, messages b→a.
type Bounds = (Option<i64>, Option<i64>, usize, usize);

fn clock_offsets(runs: &[Run], matches: &[Match]) -> Vec<ClockOffset> {
    // For pair (a, b) with a < b: offset = clock_b - clock_a.
    let mut bounds: BTreeMap<(usize, usize), Bounds> = BTreeMap::new();
    for m in matches.iter().filter(|m| m.link != Link::Connection) {
        let sent = runs[m.cause.run].wall_ns(m.cause.index);
        let received = runs[m.effect.run].wall_ns(m.effect.index);
        let (a, b) = (m.cause.run.min(m.effect.run), m.cause.run.max(m.effect.run));
        let entry = bounds.entry((a, b)).or_insert((None, None, 0, 0));
        if m.cause.run == a {
            // a -> b: clock_b - clock_a <= received - sent.
            let upper = received - sent;
            entry.1 = Some(entry.1.map_or(upper, |u: i64| u.min(upper)));
            entry.2 += 1;
        } else {
            // b -> a: clock_b - clock_a >= sent - received.
            let lower = sent - received;
            entry.0 = Some(entry.0.map_or(lower, |l: i64| l.max(lower)));
            entry.3 += 1;
        }
    }
    bounds
        .into_iter()
        .map(|((a, b), (lower, upper, ab, ba))| ClockOffset {
            a,
            b,
            lower_ns: lower,
            upper_ns: upper,
            estimate_ns: match (lower, upper) {
                (Some(lo), Some(hi)) => lo + (hi - lo) / 2,
                (Some(bound), None) | (None, Some(bound)) => bound,
                (None, None) => 0,
            },
            samples: (ab, ba),
        })
        .collect()
}

/// Each run's offset from run 0, through the pairs that have estimates
/// (breadth first from run 0; runs not connected to it get 0).
fn run_offsets(runs: usize, clocks: &[ClockOffset]) -> Vec<i64> {
    let mut offsets = vec![None; runs];
    if runs == 0 {
        return Vec::new();
    }
    offsets[0] = Some(0i64);
    let mut queue = VecDeque::from([0usize]);
    while let Some(run) = queue.pop_front() {
        let base = offsets[run].unwrap_or(0);
        for clock in clocks {
            let (other, offset) = if clock.a == run {
                (clock.b, base + clock.estimate_ns)
            } else if clock.b == run {
                (clock.a, base - clock.estimate_ns)
            } else {
                continue;
            };
            if offsets[other].is_none() {
                offsets[other] = Some(offset);
                queue.push_back(other);
            }
        }
    }
    offsets.into_iter().map(|o| o.unwrap_or(0)).collect()
}
