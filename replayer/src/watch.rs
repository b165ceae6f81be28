//! Watching a replay for breakpoints: which event stops it, and what the
//! user asked for next (continue, step, next KIND, stop).
//!
//! The runtime shows every event to a [`Watch`] as its task takes it (the
//! gate releases an asynchronous call, or a synchronous call claims its
//! event). That is replay execution order: seq order, except that a task's
//! synchronous calls (clock readings, marks, spawns) happen when the task
//! makes them, which can be before another task's event of lower seq. The
//! order is the same in every replay of a log.
//!
//! ```
//! use deja_replayer::breakpoint::Breakpoints;
//! use deja_replayer::watch::{PromptCommand, Trigger, Watch};
//! use deja_recorder::{Event, EventKind, TaskId};
//!
//! let mut watch = Watch::new(Breakpoints::parse_env("kind=time")?, None);
//! let clock = Event { seq: 4, task: TaskId(1), mono_ns: 9, kind: EventKind::ClockMono { ns: 9 } };
//! assert_eq!(watch.on_event(&clock), Some(Trigger::Breakpoint(0)));
//! assert_eq!(PromptCommand::parse("next recv"), Ok(PromptCommand::Next("recv".parse()?)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use deja_recorder::{Event, EventKind, TaskId};

use crate::breakpoint::{Breakpoints, KindFilter, MarkScopes};

/// Why the replay stops at an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The spec at this index in the set matched.
    Breakpoint(usize),
    /// The user asked for the next event (`step`).
    Step,
    /// The user asked for the next event of a kind (`next KIND`).
    Next(KindFilter),
    /// The `--until` seq was reached: the replay ends here.
    Until(u64),
}

/// What happens after a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Run to the next breakpoint.
    Continue,
    /// Stop at the next event, whatever it is.
    Step,
    /// Stop at the next event of this kind.
    Next(KindFilter),
    /// End the replay here.
    Stop,
}

/// Breakpoints, `--until`, stepping state and mark scopes of one replay.
#[derive(Debug)]
pub struct Watch {
    points: Breakpoints,
    until: Option<u64>,
    stepping: Option<Resume>,
    scopes: MarkScopes,
    ended: Option<TaskId>,
    hits: u64,
}

impl Watch {
    /// Watch for `points`, and end at the first event with seq >= `until`.
    pub fn new(points: Breakpoints, until: Option<u64>) -> Watch {
        Watch {
            points,
            until,
            stepping: None,
            scopes: MarkScopes::new(),
            ended: None,
            hits: 0,
        }
    }

    /// The breakpoints.
    pub fn breakpoints(&self) -> &Breakpoints {
        &self.points
    }

    /// Stops so far (breakpoints and steps).
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// The marks in scope for `task` now.
    pub fn marks(&self, task: TaskId) -> &[(String, Vec<u8>)] {
        self.scopes.of(task)
    }

    /// Take in the event a task just took; `Some` if the replay stops here.
    #[inline]
    pub fn on_event(&mut self, event: &Event) -> Option<Trigger> {
        // A task that ended keeps its scope until the next event, so a
        // stop at its end still shows its marks.
        if let Some(ended) = self.ended.take() {
            self.scopes.forget(ended);
        }
        self.scopes.enter_for(event, &self.points);
        let trigger = self.trigger(event);
        if matches!(event.kind, EventKind::TaskEnd { .. }) {
            self.ended = Some(event.task);
        }
        if matches!(
            trigger,
            Some(Trigger::Breakpoint(_) | Trigger::Step | Trigger::Next(_))
        ) {
            self.hits += 1;
            self.stepping = None;
        }
        trigger
    }

    #[inline]
    fn trigger(&self, event: &Event) -> Option<Trigger> {
        if let Some(until) = self.until {
            if event.seq >= until {
                return Some(Trigger::Until(until));
            }
        }
        match self.stepping {
            Some(Resume::Step) => return Some(Trigger::Step),
            Some(Resume::Next(kind)) if kind.matches(&event.kind) => {
                return Some(Trigger::Next(kind))
            }
            _ => {}
        }
        self.points
            .first_match(event, &self.scopes)
            .map(Trigger::Breakpoint)
    }

    /// How to go on after a stop.
    pub fn resume(&mut self, how: Resume) {
        self.stepping = match how {
            Resume::Step | Resume::Next(_) => Some(how),
            Resume::Continue | Resume::Stop => None,
        };
    }
}

/// Most events `events N` prints.
pub const PROMPT_EVENTS_MAX: usize = 1000;

/// A command at the `pause` prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptCommand {
    /// `continue` (`c`): run to the next breakpoint.
    Continue,
    /// `step` (`s`): stop at the next event.
    Step,
    /// `next KIND` (`n KIND`): stop at the next event of that kind.
    Next(KindFilter),
    /// `print` (`p`): show the stop again.
    Print,
    /// `events N` (`e N`): the last N events of the log up to this one.
    Events(usize),
    /// `tasks` (`t`): each live task, what it waits on, its last event.
    Tasks,
    /// `quit` (`q`): end the replay here.
    Quit,
    /// `help` (`h`, `?`).
    Help,
}

impl PromptCommand {
    /// Parse one prompt line (an empty line is not a command).
    pub fn parse(line: &str) -> Result<PromptCommand, String> {
        let mut words = line.split_whitespace();
        let word = words.next().unwrap_or("");
        let arg = words.next();
        if let Some(extra) = words.next() {
            return Err(format!("unexpected {extra:?}; try `help`"));
        }
        let no_arg = |command: PromptCommand| match arg {
            None => Ok(command),
            Some(arg) => Err(format!("{word} takes no argument (got {arg:?})")),
        };
        match word {
            "continue" | "c" | "cont" => no_arg(PromptCommand::Continue),
            "step" | "s" => no_arg(PromptCommand::Step),
            "next" | "n" => match arg {
                Some(kind) => KindFilter::parse(kind).map(PromptCommand::Next),
                None => Err("next needs a kind: next send, next recv, next mark, ...".into()),
            },
            "print" | "p" => no_arg(PromptCommand::Print),
            "events" | "e" => {
                let count = match arg {
                    None => 10,
                    Some(n) => n
                        .parse::<usize>()
                        .map_err(|_| format!("events takes a count, not {n:?}"))?,
                };
                Ok(PromptCommand::Events(count.min(PROMPT_EVENTS_MAX)))
            }
            "tasks" | "t" => no_arg(PromptCommand::Tasks),
            "quit" | "q" | "exit" => no_arg(PromptCommand::Quit),
            "help" | "h" | "?" => no_arg(PromptCommand::Help),
            "" => Err("empty command".into()),
            other => Err(format!("unknown command {other:?}; try `help`")),
        }
    }

    /// The prompt's help text.
    pub const HELP: &'static str = "\
commands:
  continue, c     run to the next breakpoint
  step, s         stop at the next event
  next KIND, n    stop at the next event of KIND (send, recv, mark, tcp_write, ...)
  print, p        show this stop again
  events [N], e   the last N events of the log up to this one (default 10)
  tasks, t        each live task: what it waits on, its last event
  quit, q         end the replay here (exit 0)
  an empty line repeats step or next";
}

impl FromStr for KindFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<KindFilter, String> {
        KindFilter::parse(text)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Breakpoint(index) => write!(f, "breakpoint {}", index + 1),
            Trigger::Step => f.write_str("step"),
            Trigger::Next(kind) => write!(f, "next {kind}"),
            Trigger::Until(seq) => write!(f, "until {seq}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deja_recorder::{ConnId, ReadOutcome};

    fn read(seq: u64) -> Event {
        Event {
            seq,
            task: TaskId(1),
            mono_ns: seq,
            kind: EventKind::TcpRead {
                conn: ConnId(2),
                result: ReadOutcome::Eof,
            },
        }
    }

    fn clock(seq: u64) -> Event {
        Event {
            seq,
            task: TaskId(1),
            mono_ns: seq,
            kind: EventKind::ClockMono { ns: seq },
        }
    }

    #[test]
    fn step_and_next_stop_once_then_breakpoints_resume() {
        let mut watch = Watch::new(Breakpoints::parse_env("seq=1").unwrap(), None);
        assert_eq!(watch.on_event(&clock(0)), None);
        assert_eq!(watch.on_event(&read(1)), Some(Trigger::Breakpoint(0)));
        watch.resume(Resume::Step);
        assert_eq!(watch.on_event(&clock(2)), Some(Trigger::Step));
        watch.resume(Resume::Next("recv".parse().unwrap()));
        assert_eq!(watch.on_event(&clock(3)), None);
        assert!(matches!(watch.on_event(&read(4)), Some(Trigger::Next(_))));
        watch.resume(Resume::Continue);
        assert_eq!(watch.on_event(&read(5)), None);
        assert_eq!(watch.hits(), 3);
    }

    #[test]
    fn until_wins_over_everything() {
        let mut watch = Watch::new(Breakpoints::parse_env("seq=3").unwrap(), Some(3));
        assert_eq!(watch.on_event(&clock(2)), None);
        assert_eq!(watch.on_event(&clock(3)), Some(Trigger::Until(3)));
    }

    #[test]
    fn prompt_commands_parse_with_short_forms_and_clear_errors() {
        use PromptCommand as P;
        assert_eq!(P::parse("c"), Ok(P::Continue));
        assert_eq!(P::parse(" step "), Ok(P::Step));
        assert_eq!(P::parse("next send"), Ok(P::Next("send".parse().unwrap())));
        assert_eq!(P::parse("events 3"), Ok(P::Events(3)));
        assert_eq!(P::parse("events"), Ok(P::Events(10)));
        assert_eq!(
            P::parse("events 99999999"),
            Ok(P::Events(PROMPT_EVENTS_MAX))
        );
        assert_eq!(P::parse("tasks"), Ok(P::Tasks));
        assert_eq!(P::parse("q"), Ok(P::Quit));
        assert!(P::parse("next").unwrap_err().contains("needs a kind"));
        assert!(P::parse("next sned").unwrap_err().contains("unknown kind"));
        assert!(P::parse("events x").unwrap_err().contains("count"));
        assert!(P::parse("step 2").unwrap_err().contains("no argument"));
        assert!(P::parse("frobnicate").unwrap_err().contains("help"));
    }
}
