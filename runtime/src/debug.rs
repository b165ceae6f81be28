//! Breakpoints: stop a replay at the exact event, then look around.
//!
//! A replay watches every event as its task takes it. A hit prints the
//! event with its context (the task's marks in scope, its previous events,
//! the log before it) and then acts, as chosen by `DEJA_ON_BREAK` or
//! [`Builder::break_action`](crate::Builder::break_action):
//!
//! - [`OnBreak::Print`]: print and go on.
//! - [`OnBreak::Pause`] (the default when stdin is a terminal): a prompt in
//!   the replaying process reads `continue`, `step`, `next KIND`, `print`,
//!   `events N`, `tasks`, `quit` from stdin, a terminal or a pipe.
//! - [`OnBreak::Trap`]: raise `SIGTRAP` in the service, so gdb or lldb
//!   stops with the service's own stack (`deja replay --gdb` sets this up).
//! - A callback, [`Builder::on_break`](crate::Builder::on_break), for tests:
//!   it sees the [`BreakHit`] and says how to go on.
//!
//! Breakpoints never change the replay: a replay with them has the digest
//! of a replay without.
//!
//! ```no_run
//! use deja::debug::{BreakHit, Resume};
//!
//! let mut runtime = deja::Builder::new()
//!     .mode(deja::Mode::Replay)
//!     .trace_dir("deja-runs/kv-20261123T091500Z-1a2b")
//!     .break_at("mark=order-42,kind=send")?
//!     .on_break(|hit: &BreakHit<'_>| {
//!         eprintln!("order 42 sends at seq {} in task {}", hit.seq(), hit.task());
//!         Resume::Stop
//!     })
//!     .build()?;
//! # Ok::<(), deja::Error>(())
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deja_recorder::{Event, TaskId};

pub use deja_replayer::breakpoint::{Breakpoint, Breakpoints, KindFilter, SpecError};
pub use deja_replayer::watch::{Resume, Trigger};

/// What a breakpoint hit does (besides the callback, which wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBreak {
    /// Print the hit and its context, then continue.
    Print,
    /// Print, then read commands at a prompt.
    Pause,
    /// Print, then raise `SIGTRAP` for an attached debugger.
    Trap,
}

impl std::str::FromStr for OnBreak {
    type Err = String;

    fn from_str(text: &str) -> Result<OnBreak, String> {
        match text {
            "print" => Ok(OnBreak::Print),
            "pause" => Ok(OnBreak::Pause),
            "trap" => Ok(OnBreak::Trap),
            other => Err(format!("{other:?} is not an action (pause, trap, print)")),
        }
    }
}

/// Why a replay ended early, on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// The `--until` seq was reached.
    Until(u64),
    /// `quit` at the prompt.
    Quit,
    /// A callback returned [`Resume::Stop`].
    Callback,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::Until(seq) => write!(f, "--until {seq}"),
            Halt::Quit => f.write_str("quit at the prompt"),
            Halt::Callback => f.write_str("the breakpoint callback stopped it"),
        }
    }
}

/// A breakpoint hit, as the callback sees it.
#[derive(Debug)]
pub struct BreakHit<'a> {
    pub(crate) event: &'a Event,
    pub(crate) trigger: Trigger,
    pub(crate) spec: Option<&'a Breakpoint>,
    pub(crate) index: usize,
    pub(crate) log_events: usize,
    pub(crate) marks: &'a [(String, Vec<u8>)],
    pub(crate) task_events: Vec<&'a Event>,
}

impl<'a> BreakHit<'a> {
    /// The event the replay stopped at (its task just took it).
    pub fn event(&self) -> &'a Event {
        self.event
    }

    /// Its seq.
    pub fn seq(&self) -> u64 {
        self.event.seq
    }

    /// Its task.
    pub fn task(&self) -> TaskId {
        self.event.task
    }

    /// Virtual time of the event since the start of the run.
    pub fn virtual_time(&self) -> Duration {
        Duration::from_nanos(self.event.mono_ns)
    }

    /// Where the event sits in the log: 0 for the first event.
    pub fn position(&self) -> usize {
        self.index
    }

    /// Usable events in the log.
    pub fn log_events(&self) -> usize {
        self.log_events
    }

    /// Why the replay stopped here.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// The spec that matched (none for a step).
    pub fn spec(&self) -> Option<&'a Breakpoint> {
        self.spec
    }

    /// The marks in scope for the task, oldest first.
    pub fn marks(&self) -> &'a [(String, Vec<u8>)] {
        self.marks
    }

    /// The value of the mark `name` in scope, if any.
    pub fn mark(&self, name: &str) -> Option<&'a [u8]> {
        self.marks
            .iter()
            .find(|(have, _)| have == name)
            .map(|(_, value)| value.as_slice())
    }

    /// The task's events up to and including this one (the last few).
    pub fn task_events(&self) -> &[&'a Event] {
        &self.task_events
    }
}

/// A breakpoint callback.
pub(crate) type Callback = Arc<Mutex<dyn FnMut(&BreakHit<'_>) -> Resume + Send>>;

/// Breakpoint settings of a replay (part of the builder).
#[derive(Clone, Default)]
pub(crate) struct DebugConfig {
    pub(crate) breakpoints: Breakpoints,
    pub(crate) until: Option<u64>,
    pub(crate) on_break: Option<OnBreak>,
    pub(crate) json_fd: Option<i32>,
    /// `DEJA_JSON_FD` carries only the outcome line (`DEJA_JSON_OUTCOME_ONLY`,
    /// set by `deja replay` without `--json`): hits are printed and
    /// prompted as without a JSON channel.
    pub(crate) outcome_only: bool,
    pub(crate) callback: Option<Callback>,
}

impl std::fmt::Debug for DebugConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugConfig")
            .field("breakpoints", &self.breakpoints)
            .field("until", &self.until)
            .field("on_break", &self.on_break)
            .field("json_fd", &self.json_fd)
            .field("outcome_only", &self.outcome_only)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

impl DebugConfig {
    /// True if the replay needs watching at all.
    pub(crate) fn is_active(&self) -> bool {
        !self.breakpoints.is_empty()
            || self.until.is_some()
            || self.json_fd.is_some()
            || self.callback.is_some()
    }
}
