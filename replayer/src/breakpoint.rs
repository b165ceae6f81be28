//! Breakpoint specs: where a replay stops.
//!
//! A spec is a comma-separated AND of terms; a [`Breakpoints`] set is the
//! OR of several specs (several `--break` flags, or `;` in `DEJA_BREAK`):
//!
//! | term | matches an event... |
//! |---|---|
//! | `seq=1234` | with that seq |
//! | `task=7` | of logical task 7 |
//! | `kind=recv` | of that class or fine kind; `kind=recv\|send` is either |
//! | `mark=order-42` | of a task with a mark of that value in scope (`mark=NAME:VALUE` names it too, `mark=NAME:*` any value of it) |
//! | `own-mark=order-42` | that is itself that mark (`own-mark=NAME:VALUE` too): the mark call, not the events in its scope |
//! | `conn=3` | on socket 3 (including the accept or connect that made it) |
//! | `t>=1.5s` | at or after that virtual time since the start (`t<=` too) |
//! | `after=1000` | with seq > 1000 |
//!
//! Marks are *in scope* for the task that made them from the mark on, and
//! for the tasks it spawns afterwards; a later mark of the same name
//! replaces the value, and `deja::mark_end` (or the end of a
//! `deja::mark_scope` guard) takes the name out of the task's scope. So
//! `mark=order-42,kind=send` stops at every send of the task that handles
//! order 42, which is how a user who knows only an order id finds the
//! moment it went wrong.
//!
//! ```
//! use deja_replayer::breakpoint::{Breakpoint, Breakpoints};
//!
//! let set = Breakpoints::parse_env("kind=send,task=3; seq=40")?;
//! assert_eq!(set.len(), 2);
//! let err = "kind=send,taks=3".parse::<Breakpoint>().unwrap_err();
//! assert_eq!(err.term, "taks=3");
//! # Ok::<(), deja_replayer::breakpoint::SpecError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::str::FromStr;

use deja_recorder::{ConnId, Event, EventKind, KindClass, TaskId};

/// Marks kept in scope per task; the oldest name goes first beyond this,
/// so a task that marks a new name per request cannot grow without bound.
pub const MARKS_IN_SCOPE_MAX: usize = 32;

/// Specs in one set: more is a typo or a generated list gone wrong, and
/// every replayed event is checked against each.
pub const BREAKPOINTS_MAX: usize = 256;
const _: () = assert!(BREAKPOINTS_MAX <= u16::MAX as usize);

/// The terms a spec understands, for error messages.
const TERMS_HELP: &str = "seq=N, task=N, kind=K[|K...], mark=VALUE, own-mark=VALUE, conn=N, \
     t>=DURATION, t<=DURATION, after=N";

/// One event filter for `kind=` terms and `deja inspect --kind`: a coarse
/// class or a fine kind name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindFilter {
    /// A class such as `recv` (see [`KindClass`]).
    Class(KindClass),
    /// A fine kind such as `tcp_read` (see [`EventKind::NAMES`]).
    Kind(&'static str),
}

impl KindFilter {
    /// Parse a class name, else a kind name (case-insensitive). The error
    /// lists every name that would have worked.
    pub fn parse(name: &str) -> Result<KindFilter, String> {
        let name = name.trim().to_ascii_lowercase();
        if let Some(class) = KindClass::from_name(&name) {
            return Ok(KindFilter::Class(class));
        }
        if let Some(kind) = EventKind::NAMES.into_iter().find(|kind| *kind == name) {
            return Ok(KindFilter::Kind(kind));
        }
        let classes: Vec<&str> = KindClass::ALL.iter().map(|class| class.name()).collect();
        Err(format!(
            "unknown kind {name:?}\n  classes: {}\n  kinds:   {}",
            classes.join(", "),
            EventKind::NAMES.join(", ")
        ))
    }

    /// Does `kind` pass this filter?
    pub fn matches(self, kind: &EventKind) -> bool {
        match self {
            KindFilter::Class(class) => kind.class() == class,
            KindFilter::Kind(name) => kind.name() == name,
        }
    }
}

impl fmt::Display for KindFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KindFilter::Class(class) => f.write_str(class.name()),
            KindFilter::Kind(name) => f.write_str(name),
        }
    }
}

/// A spec that does not parse: which term, where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad breakpoint term `{term}` in `{spec}` (byte {offset}): {why}")]
pub struct SpecError {
    /// The whole spec.
    pub spec: String,
    /// The offending term, as written.
    pub term: String,
    /// Byte offset of the term in the spec.
    pub offset: usize,
    /// What is wrong, and what would be right.
    pub why: String,
}

impl KindFilter {
    /// The fine kinds this filter passes, as bits by [`EventKind::index`].
    fn mask(self) -> u32 {
        EventKind::NAMES
            .iter()
            .zip(EventKind::CLASSES)
            .enumerate()
            .filter(|(_, (name, class))| match self {
                KindFilter::Class(want) => *class == want,
                KindFilter::Kind(want) => **name == want,
            })
            .fold(0, |mask, (index, _)| mask | 1 << index)
    }
}

/// What a mark term looks for: a value, or (text with a colon) also a
/// name and a value; `NAME:*` is any value of that name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MarkPattern {
    text: String,
    named: Option<(String, String)>,
}

impl MarkPattern {
    pub(crate) fn new(text: &str) -> MarkPattern {
        MarkPattern {
            text: text.to_string(),
            named: text
                .split_once(':')
                .map(|(name, value)| (name.to_string(), value.to_string())),
        }
    }

    fn matches(&self, scope: &[(String, Vec<u8>)]) -> bool {
        scope
            .iter()
            .any(|(name, value)| self.matches_one(name, value))
    }

    pub(crate) fn matches_one(&self, name: &str, value: &[u8]) -> bool {
        value == self.text.as_bytes()
            || self.named.as_ref().is_some_and(|(want_name, want_value)| {
                name == want_name && (want_value == "*" || value == want_value.as_bytes())
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Seq(u64),
    Task(TaskId),
    /// Fine kinds as bits by [`EventKind::index`].
    Kinds(u32),
    Mark(MarkPattern),
    /// The event is itself a mark matching this.
    OwnMark(MarkPattern),
    Conn(ConnId),
    AtLeast {
        ns: u64,
    },
    AtMost {
        ns: u64,
    },
    After(u64),
}

/// A spec's terms folded into one filter: ranges, masks and equalities
/// checked without a branch per term, because every replayed event meets
/// every spec. Contradictory terms (`seq=1,seq=2`) leave an empty range.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Filter {
    seq_min: u64,
    seq_max: u64,
    t_min: u64,
    t_max: u64,
    /// Fine kinds as bits by [`EventKind::index`].
    kinds: u32,
    /// `task=`: the id, and all ones in `task_mask` (zero: any task).
    task: u64,
    task_mask: u64,
    /// `conn=`: likewise.
    conn: u64,
    conn_mask: u64,
    marks: Vec<MarkPattern>,
    /// `own-mark=`: patterns the event's own mark must match.
    own_marks: Vec<MarkPattern>,
}

/// What the filters read of an event, computed once per event.
struct View {
    seq: u64,
    t: u64,
    kind_bit: u32,
    task: u64,
    /// The socket the event is on, and the one an accept made
    /// ([`NO_CONN`] when none).
    conn: u64,
    made_conn: u64,
}

/// No socket: conn ids count up from 0 and never get here.
const NO_CONN: u64 = u64::MAX;

impl View {
    #[inline]
    fn of(event: &Event) -> View {
        View {
            seq: event.seq,
            t: event.mono_ns,
            kind_bit: 1 << event.kind.index(),
            task: event.task.0,
            conn: event.kind.conn().map_or(NO_CONN, |conn| conn.0),
            made_conn: match &event.kind {
                EventKind::TcpAccept {
                    result: Ok(accepted),
                    ..
                } => accepted.conn.0,
                _ => NO_CONN,
            },
        }
    }
}

impl Filter {
    fn new(terms: Vec<Term>) -> Filter {
        let mut filter = Filter {
            seq_min: 0,
            seq_max: u64::MAX,
            t_min: 0,
            t_max: u64::MAX,
            kinds: u32::MAX,
            task: 0,
            task_mask: 0,
            conn: 0,
            conn_mask: 0,
            marks: Vec::new(),
            own_marks: Vec::new(),
        };
        let mut never = false;
        for term in terms {
            match term {
                Term::Seq(seq) => {
                    filter.seq_min = filter.seq_min.max(seq);
                    filter.seq_max = filter.seq_max.min(seq);
                }
                Term::After(seq) => {
                    never |= seq == u64::MAX;
                    filter.seq_min = filter.seq_min.max(seq.saturating_add(1));
                }
                Term::AtLeast { ns } => filter.t_min = filter.t_min.max(ns),
                Term::AtMost { ns } => filter.t_max = filter.t_max.min(ns),
                Term::Kinds(mask) => filter.kinds &= mask,
                Term::Task(task) => {
                    never |= filter.task_mask != 0 && filter.task != task.0;
                    filter.task = task.0;
                    filter.task_mask = u64::MAX;
                }
                Term::Conn(conn) => {
                    never |= (filter.conn_mask != 0 && filter.conn != conn.0) || conn.0 == NO_CONN;
                    filter.conn = conn.0;
                    filter.conn_mask = u64::MAX;
                }
                Term::Mark(pattern) => filter.marks.push(pattern),
                Term::OwnMark(pattern) => {
                    filter.kinds &= KindFilter::Kind("mark").mask();
                    filter.own_marks.push(pattern);
                }
            }
        }
        if never {
            (filter.seq_min, filter.seq_max) = (u64::MAX, 0);
        }
        filter
    }

    /// Every term but marks, without branches.
    #[inline]
    fn quick(&self, view: &View) -> bool {
        (view.seq >= self.seq_min)
            & (view.seq <= self.seq_max)
            & (view.t >= self.t_min)
            & (view.t <= self.t_max)
            & (self.kinds & view.kind_bit != 0)
            & ((view.task ^ self.task) & self.task_mask == 0)
            & (((view.conn ^ self.conn) & self.conn_mask == 0)
                | ((view.made_conn ^ self.conn) & self.conn_mask == 0))
    }

    fn matches(&self, view: &View, event: &Event, scopes: &MarkScopes) -> bool {
        self.quick(view)
            && (self.marks.is_empty() || {
                let scope = scopes.of(event.task);
                self.marks.iter().all(|pattern| pattern.matches(scope))
            })
            && (self.own_marks.is_empty()
                || match &event.kind {
                    EventKind::Mark { name, value } => self
                        .own_marks
                        .iter()
                        .all(|pattern| pattern.matches_one(name, value)),
                    _ => false,
                })
    }
}

/// One spec: every term must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breakpoint {
    text: String,
    filter: Filter,
}

impl Breakpoint {
    /// The spec as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Does `event` stop here, with `scopes` the marks in scope per task?
    pub fn matches(&self, event: &Event, scopes: &MarkScopes) -> bool {
        self.filter.matches(&View::of(event), event, scopes)
    }
}

impl fmt::Display for Breakpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Breakpoint {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Breakpoint, SpecError> {
        let text = spec.trim().to_string();
        let mut terms = Vec::new();
        let mut offset = 0;
        for raw in spec.split(',') {
            let term_offset = offset + (raw.len() - raw.trim_start().len());
            offset += raw.len() + 1;
            let term = raw.trim();
            let error = |why: String| SpecError {
                spec: text.clone(),
                term: term.to_string(),
                offset: term_offset,
                why,
            };
            if term.is_empty() {
                return Err(error(format!(
                    "empty term; a spec is terms joined by commas: {TERMS_HELP}"
                )));
            }
            terms.push(parse_term(term).map_err(error)?);
        }
        Ok(Breakpoint {
            text,
            filter: Filter::new(terms),
        })
    }
}

fn parse_term(term: &str) -> Result<Term, String> {
    if let Some(value) = term.strip_prefix("t>=") {
        return parse_duration(value).map(|ns| Term::AtLeast { ns });
    }
    if let Some(value) = term.strip_prefix("t<=") {
        return parse_duration(value).map(|ns| Term::AtMost { ns });
    }
    let Some((key, value)) = term.split_once('=') else {
        return Err(format!("expected KEY=VALUE, one of {TERMS_HELP}"));
    };
    let (key, value) = (key.trim(), value.trim());
    let number = |what: &str| {
        value
            .parse::<u64>()
            .map_err(|_| format!("{what} must be a whole number, not {value:?}"))
    };
    match key {
        "seq" => number("seq").map(Term::Seq),
        "task" => number("task").map(|task| Term::Task(TaskId(task))),
        "conn" => number("conn").map(|conn| Term::Conn(ConnId(conn))),
        "after" => number("after").map(Term::After),
        "kind" => value
            .split('|')
            .map(KindFilter::parse)
            .try_fold(0, |mask, filter| filter.map(|filter| mask | filter.mask()))
            .map(Term::Kinds),
        "mark" if value.is_empty() => {
            Err("mark needs a value: mark=order-42 or mark=order:42".into())
        }
        "mark" => Ok(Term::Mark(MarkPattern::new(value))),
        "own-mark" if value.is_empty() => {
            Err("own-mark needs a value: own-mark=order-42 or own-mark=order:42".into())
        }
        "own-mark" => Ok(Term::OwnMark(MarkPattern::new(value))),
        "t" => Err("time terms are t>=DURATION or t<=DURATION (1.5s, 200ms, 50us, 10ns)".into()),
        other => Err(format!(
            "unknown term {other:?}; expected one of {TERMS_HELP}"
        )),
    }
}

/// `1.5s`, `200ms`, `50us`, `10ns`, or bare seconds, to nanoseconds.
fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration (1.5s, 200ms, 50us, 10ns)");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "" | "s" => 1e9,
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "ns" => 1.0,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let ns = value * scale;
    if !ns.is_finite() || ns < 0.0 || ns > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(ns.round() as u64)
}

/// Several specs: an event stops the replay if any matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breakpoints {
    specs: Vec<Breakpoint>,
    uses_marks: bool,
    /// For each fine kind (by [`EventKind::index`]), the specs that can
    /// match it, in order: an event meets only those.
    by_kind: Vec<Vec<u16>>,
}

impl Breakpoints {
    /// No breakpoints.
    pub fn new() -> Breakpoints {
        Breakpoints::default()
    }

    /// Add a spec (beyond [`BREAKPOINTS_MAX`], the spec is refused).
    pub fn push(&mut self, spec: Breakpoint) -> Result<(), SpecError> {
        if self.specs.len() >= BREAKPOINTS_MAX {
            return Err(SpecError {
                term: spec.text.clone(),
                spec: spec.text,
                offset: 0,
                why: format!("at most {BREAKPOINTS_MAX} breakpoints"),
            });
        }
        self.uses_marks |= !spec.filter.marks.is_empty();
        if self.by_kind.is_empty() {
            self.by_kind = vec![Vec::new(); EventKind::NAMES.len()];
        }
        let index = u16::try_from(self.specs.len()).expect("BREAKPOINTS_MAX fits u16");
        for (kind, specs) in self.by_kind.iter_mut().enumerate() {
            if spec.filter.kinds >> kind & 1 == 1 {
                specs.push(index);
            }
        }
        self.specs.push(spec);
        Ok(())
    }

    /// Specs separated by `;` (the `DEJA_BREAK` form); empty pieces are skipped.
    pub fn parse_env(text: &str) -> Result<Breakpoints, SpecError> {
        let mut set = Breakpoints::new();
        for spec in text.split(';').filter(|spec| !spec.trim().is_empty()) {
            set.push(spec.parse()?)?;
        }
        Ok(set)
    }

    /// The `DEJA_BREAK` form of this set.
    pub fn to_env(&self) -> String {
        self.specs
            .iter()
            .map(Breakpoint::text)
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The specs, in the order given.
    pub fn specs(&self) -> &[Breakpoint] {
        &self.specs
    }

    /// How many specs.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// True with no specs.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// True if some spec has a `mark=` term (so scopes must be tracked).
    pub fn uses_marks(&self) -> bool {
        self.uses_marks
    }

    /// The index of the first spec that `event` matches.
    #[inline]
    pub fn first_match(&self, event: &Event, scopes: &MarkScopes) -> Option<usize> {
        let candidates = self.by_kind.get(event.kind.index())?;
        let view = View::of(event);
        candidates
            .iter()
            .map(|&index| usize::from(index))
            .find(|&index| {
                let filter = &self.specs[index].filter;
                // A mark spec sleeps until some task has made its mark.
                (filter.marks.is_empty() || scopes.armed(index))
                    && filter.matches(&view, event, scopes)
            })
    }

    /// A mark was made: wake the specs that look for it.
    fn arm(&self, name: &str, value: &[u8], scopes: &mut MarkScopes) {
        for (index, spec) in self.specs.iter().enumerate() {
            if spec
                .filter
                .marks
                .iter()
                .any(|pattern| pattern.matches_one(name, value))
            {
                scopes.arm(index);
            }
        }
    }
}

/// Task ids are unique small integers: they hash as themselves. A
/// `mark=` spec looks its task up on every replayed event.
#[derive(Clone, Copy, Debug, Default)]
struct TaskIdHasher(u64);

impl std::hash::Hasher for TaskIdHasher {
    fn finish(&self) -> u64 {
        // Spread the bits: hashbrown uses the top 7 bits as a tag.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type TaskMap<V> = HashMap<TaskId, V, BuildHasherDefault<TaskIdHasher>>;

/// The marks in scope for each live task, updated event by event.
#[derive(Clone, Debug, Default)]
pub struct MarkScopes {
    scopes: TaskMap<Vec<(String, Vec<u8>)>>,
    /// Specs (by index) with a `mark=` term whose mark some task has made.
    armed: Vec<bool>,
}

impl MarkScopes {
    /// No marks yet.
    pub fn new() -> MarkScopes {
        MarkScopes::default()
    }

    /// Take in an event before it is matched: a mark enters its task's
    /// scope (replacing a mark of the same name), a spawned task starts
    /// with a copy of its parent's scope.
    pub fn enter(&mut self, event: &Event) {
        match &event.kind {
            EventKind::Mark { name, value } => {
                let scope = self.scopes.entry(event.task).or_default();
                match scope.iter_mut().find(|(have, _)| have == name) {
                    Some(slot) => slot.1.clone_from(value),
                    None => {
                        if scope.len() == MARKS_IN_SCOPE_MAX {
                            scope.remove(0);
                        }
                        scope.push((name.clone(), value.clone()));
                    }
                }
            }
            EventKind::MarkEnd { name } => {
                if let Some(scope) = self.scopes.get_mut(&event.task) {
                    scope.retain(|(have, _)| have != name);
                }
            }
            EventKind::Spawn { child, .. } => {
                if let Some(parent) = self.scopes.get(&event.task) {
                    let inherited = parent.clone();
                    self.scopes.insert(*child, inherited);
                }
            }
            _ => {}
        }
    }

    /// Take in an event for `points`: as [`MarkScopes::enter`], and a
    /// mark wakes the specs that look for it.
    #[inline]
    pub fn enter_for(&mut self, event: &Event, points: &Breakpoints) {
        if let EventKind::Mark { name, value } = &event.kind {
            if points.uses_marks() {
                points.arm(name, value, self);
            }
        }
        self.enter(event);
    }

    fn arm(&mut self, index: usize) {
        if self.armed.len() <= index {
            self.armed.resize(index + 1, false);
        }
        self.armed[index] = true;
    }

    fn armed(&self, index: usize) -> bool {
        self.armed.get(index).copied().unwrap_or(false)
    }

    /// Drop `task`'s scope (it ended).
    pub fn forget(&mut self, task: TaskId) {
        self.scopes.remove(&task);
    }

    /// The marks in scope for `task`, oldest first.
    pub fn of(&self, task: TaskId) -> &[(String, Vec<u8>)] {
        self.scopes.get(&task).map_or(&[], Vec::as_slice)
    }
}

/// Marks as `name="value"` pairs for a hit's context line.
pub fn format_marks(scope: &[(String, Vec<u8>)]) -> String {
    if scope.is_empty() {
        return "(none)".into();
    }
    scope
        .iter()
        .map(|(name, value)| {
            const SHOWN: usize = 48;
            let more = if value.len() > SHOWN { "..." } else { "" };
            let shown = &value[..value.len().min(SHOWN)];
            format!("{name}=\"{}\"{more}", shown.escape_ascii())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use deja_recorder::{Accepted, ReadOutcome, TaskOutcome, Written};

    fn event(seq: u64, task: u64, kind: EventKind) -> Event {
        Event {
            seq,
            task: TaskId(task),
            mono_ns: seq * 100_000_000,
            kind,
        }
    }

    fn mark(name: &str, value: &str) -> EventKind {
        EventKind::Mark {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn write(conn: u64) -> EventKind {
        EventKind::TcpWrite {
            conn: ConnId(conn),
            result: Ok(Written::of(b"ok", false)),
        }
    }

    /// The seqs where a replay watching `spec` would stop.
    fn hits(spec: &str, events: &[Event]) -> Vec<u64> {
        let mut watch = crate::watch::Watch::new(Breakpoints::parse_env(spec).unwrap(), None);
        events
            .iter()
            .filter(|event| watch.on_event(event).is_some())
            .map(|event| event.seq)
            .collect()
    }

    fn run() -> Vec<Event> {
        vec![
            event(0, 0, EventKind::ClockMono { ns: 0 }),
            event(
                1,
                0,
                EventKind::TcpAccept {
                    listener: ConnId(1),
                    result: Ok(Accepted {
                        conn: ConnId(2),
                        peer: "127.0.0.1:9".parse().unwrap(),
                        local: "127.0.0.1:8".parse().unwrap(),
                    }),
                },
            ),
            event(
                2,
                0,
                EventKind::Spawn {
                    child: TaskId(1),
                    name: None,
                },
            ),
            event(
                3,
                1,
                EventKind::TcpRead {
                    conn: ConnId(2),
                    result: ReadOutcome::Data(b"get a".to_vec()),
                },
            ),
            event(4, 1, mark("order", "order-42")),
            event(
                5,
                1,
                EventKind::Spawn {
                    child: TaskId(2),
                    name: None,
                },
            ),
            event(6, 2, write(2)),
            event(7, 1, write(2)),
            event(8, 1, mark("order", "order-43")),
            event(9, 1, write(2)),
            event(
                10,
                2,
                EventKind::TaskEnd {
                    outcome: TaskOutcome::Completed,
                },
            ),
            event(11, 2, write(2)),
        ]
    }

    #[test]
    fn each_term_selects_its_events() {
        let events = run();
        assert_eq!(hits("seq=3", &events), [3]);
        assert_eq!(hits("task=2", &events), [6, 10, 11]);
        assert_eq!(hits("kind=send", &events), [6, 7, 9, 11]);
        assert_eq!(hits("kind=accept|tcp_read", &events), [1, 3]);
        assert_eq!(hits("conn=2", &events), [1, 3, 6, 7, 9, 11]);
        assert_eq!(hits("conn=1", &events), [1]);
        assert_eq!(hits("t>=0.9s", &events), [9, 10, 11]);
        assert_eq!(hits("t<=100ms", &events), [0, 1]);
        assert_eq!(hits("after=9", &events), [10, 11]);
    }

    #[test]
    fn a_mark_end_takes_the_mark_out_of_its_tasks_scope() {
        let mut events = run();
        // Task 1 ends its order mark after its write at 7: its mark at 8
        // and write at 9 are back in scope of order-43 only, and nothing
        // of task 1 after the end matches order-42.
        events.insert(
            7,
            event(
                7,
                1,
                EventKind::MarkEnd {
                    name: "order".into(),
                },
            ),
        );
        for (at, event) in events.iter_mut().enumerate() {
            event.seq = at as u64;
        }
        // 4 mark, 5 spawn, 6 (task 2) write, 7 mark_end, 8 write (task 1,
        // out of scope now), 9 mark order-43, 10 write, 11 end of task 2.
        assert_eq!(hits("mark=order-42,task=1", &events), [4, 5]);
        assert_eq!(hits("mark=order:order-43", &events), [9, 10]);
        // Task 2 inherited the scope at its spawn: the end is task 1's.
        assert_eq!(hits("mark=order-42,task=2", &events), [6, 11]);
    }

    #[test]
    fn a_mark_pattern_matches_a_value_a_named_value_or_any_value_of_a_name() {
        let matches = |pattern: &str, name: &str, value: &str| {
            MarkPattern::new(pattern).matches_one(name, value.as_bytes())
        };
        assert!(matches("42", "order", "42"));
        assert!(matches("order:42", "order", "42"));
        assert!(!matches("order:42", "user", "42"));
        assert!(matches("order:*", "order", "7"));
        assert!(!matches("order:*", "user", "7"));
        assert!(!matches("43", "order", "42"));
    }

    #[test]
    fn marks_are_in_scope_for_their_task_and_its_children_until_replaced() {
        let events = run();
        // Task 1 marks order-42 at 4; task 2, spawned at 5, inherits it;
        // task 1 moves to order-43 at 8; task 2 ends at 10 (its later
        // event 11 has no scope left).
        assert_eq!(hits("mark=order-42", &events), [4, 5, 6, 7, 10]);
        assert_eq!(hits("mark=order:order-43", &events), [8, 9]);
        assert_eq!(hits("mark=other:order-43", &events), Vec::<u64>::new());
        assert_eq!(hits("mark=order-42,kind=send", &events), [6, 7]);
        // Only the mark itself, not the events in its scope.
        assert_eq!(hits("own-mark=order:order-42", &events), [4]);
        assert_eq!(hits("own-mark=order-43", &events), [8]);
    }

    #[test]
    fn comma_is_and_semicolon_is_or() {
        let events = run();
        assert_eq!(hits("task=1,kind=send", &events), [7, 9]);
        assert_eq!(hits("task=1,kind=send;seq=0", &events), [0, 7, 9]);
        assert_eq!(hits("task=1,task=2", &events), Vec::<u64>::new());
    }

    #[test]
    fn bad_terms_are_named_with_their_offset() {
        let err = "kind=send, taks=3".parse::<Breakpoint>().unwrap_err();
        assert_eq!((err.term.as_str(), err.offset), ("taks=3", 11));
        assert!(
            err.why.contains("unknown term") && err.why.contains("seq=N"),
            "{err}"
        );
        assert!(err.to_string().contains("`taks=3`"), "{err}");

        for (spec, term, why) in [
            ("seq=x", "seq=x", "whole number"),
            ("kind=sned", "kind=sned", "unknown kind"),
            ("t>=5parsecs", "t>=5parsecs", "not a duration"),
            ("t=5s", "t=5s", "t>=DURATION"),
            ("seq=1,,task=2", "", "empty term"),
            ("mark=", "mark=", "needs a value"),
            ("task", "task", "KEY=VALUE"),
        ] {
            let err = spec.parse::<Breakpoint>().unwrap_err();
            assert_eq!(err.term, term, "{spec}");
            assert!(err.why.contains(why), "{spec}: {err}");
        }
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration("2"), Ok(2_000_000_000));
        assert_eq!(parse_duration("200ms"), Ok(200_000_000));
        assert_eq!(parse_duration("50us"), Ok(50_000));
        assert_eq!(parse_duration("10ns"), Ok(10));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e999s").is_err());
    }

    #[test]
    fn the_env_form_round_trips() {
        let set = Breakpoints::parse_env(" seq=1 ;kind=recv|send,task=2;").unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.to_env(), "seq=1;kind=recv|send,task=2");
        assert_eq!(Breakpoints::parse_env(&set.to_env()).unwrap(), set);
    }

    #[test]
    fn scopes_are_bounded() {
        let mut scopes = MarkScopes::new();
        for i in 0..(MARKS_IN_SCOPE_MAX as u64 + 10) {
            scopes.enter(&event(i, 0, mark(&format!("m{i}"), "v")));
        }
        assert_eq!(scopes.of(TaskId(0)).len(), MARKS_IN_SCOPE_MAX);
        assert_eq!(scopes.of(TaskId(0))[0].0, "m10");
    }

    #[test]
    fn kind_filters_parse_classes_then_kinds() {
        assert_eq!(
            KindFilter::parse("recv"),
            Ok(KindFilter::Class(KindClass::Recv))
        );
        assert_eq!(
            KindFilter::parse("TCP_READ"),
            Ok(KindFilter::Kind("tcp_read"))
        );
        let err = KindFilter::parse("bogus").unwrap_err();
        assert!(err.contains("udp_recv") && err.contains("timer"), "{err}");

        let read = EventKind::TcpRead {
            conn: ConnId(1),
            result: ReadOutcome::Eof,
        };
        assert!(KindFilter::Class(KindClass::Recv).matches(&read));
        assert!(KindFilter::Kind("tcp_read").matches(&read));
        assert!(!KindFilter::Kind("udp_recv").matches(&read));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn term() -> impl Strategy<Value = String> {
            let kind = proptest::sample::select(
                KindClass::ALL
                    .iter()
                    .map(|class| class.name())
                    .chain(EventKind::NAMES)
                    .collect::<Vec<_>>(),
            );
            prop_oneof![
                any::<u64>().prop_map(|n| format!("seq={n}")),
                any::<u64>().prop_map(|n| format!("task={n}")),
                any::<u64>().prop_map(|n| format!("conn={n}")),
                any::<u64>().prop_map(|n| format!("after={n}")),
                proptest::collection::vec(kind, 1..4).prop_map(|k| format!("kind={}", k.join("|"))),
                "[a-z0-9:-]{1,12}".prop_map(|v| format!("mark={v}")),
                (
                    0u64..1_000_000,
                    prop_oneof![Just("s"), Just("ms"), Just("us"), Just("ns")]
                )
                    .prop_map(|(n, unit)| format!("t>={n}{unit}")),
                (0u64..1_000_000).prop_map(|n| format!("t<={n}ms")),
            ]
        }

        fn spec() -> impl Strategy<Value = String> {
            proptest::collection::vec(term(), 1..5).prop_map(|terms| terms.join(","))
        }

        proptest! {
            /// The DEJA_BREAK form is what --break passes to the service:
            /// printing a set and parsing it back gives the same set.
            #[test]
            fn env_form_round_trips(specs in proptest::collection::vec(spec(), 1..6)) {
                let set = Breakpoints::parse_env(&specs.join(";")).unwrap();
                prop_assert_eq!(set.len(), specs.len());
                let again = Breakpoints::parse_env(&set.to_env()).unwrap();
                prop_assert_eq!(again, set);
            }

            /// Any text parses or fails with the offending term, never panics.
            #[test]
            fn any_text_parses_or_names_a_term(text in "\\PC{0,40}") {
                match text.parse::<Breakpoint>() {
                    Ok(spec) => prop_assert_eq!(spec.text(), text.trim()),
                    Err(err) => prop_assert!(text.contains(err.term.as_str())),
                }
            }
        }
    }
}
