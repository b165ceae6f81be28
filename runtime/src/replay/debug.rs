//! Breakpoint hits during replay: context, the prompt, traps, callbacks,
//! JSON lines. Nothing here touches the gate's order: a replay with
//! breakpoints releases the same events as one without.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};

use deja_recorder::Event;
use deja_replayer::breakpoint::format_marks;
use deja_replayer::watch::{PromptCommand, Resume, Trigger, Watch};

use super::{Replay, ReplayStats, Stop};
use crate::debug::{BreakHit, Callback, DebugConfig, Halt, OnBreak};

/// Events of the task, and of the log, shown with a hit.
const HIT_CONTEXT_EVENTS: usize = 5;

/// Prompt lines read before the prompt gives up on a stuck script: a
/// bound on a loop that reads input.
const PROMPT_LINES_MAX: usize = 100_000;

/// What happens at a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Print,
    Pause,
    Trap,
    Callback,
}

pub(crate) struct Debugger {
    watch: RefCell<Watch>,
    action: Cell<Action>,
    callback: Option<Callback>,
    json: Option<RefCell<std::fs::File>>,
    /// Hits go to `json` too (not only the outcome), instead of stderr.
    hits_to_json: bool,
    /// The last step or next, repeated by an empty prompt line.
    repeat: Cell<Option<PromptCommand>>,
    trap_warned: Cell<bool>,
}

impl Debugger {
    /// `None` when the config asks for nothing: replay then pays nothing.
    pub(crate) fn new(config: DebugConfig, json: Option<std::fs::File>) -> Option<Debugger> {
        if !config.is_active() {
            return None;
        }
        let action = if config.callback.is_some() {
            Action::Callback
        } else {
            match config.on_break {
                Some(OnBreak::Print) => Action::Print,
                Some(OnBreak::Pause) => Action::Pause,
                Some(OnBreak::Trap) => Action::Trap,
                None if (json.is_none() || config.outcome_only)
                    && std::io::stdin().is_terminal() =>
                {
                    Action::Pause
                }
                None => Action::Print,
            }
        };
        Some(Debugger {
            watch: RefCell::new(Watch::new(config.breakpoints, config.until)),
            action: Cell::new(action),
            callback: config.callback,
            hits_to_json: json.is_some() && !config.outcome_only,
            json: json.map(RefCell::new),
            repeat: Cell::new(None),
            trap_warned: Cell::new(false),
        })
    }

    /// The event `event` was just taken by its task: stop there if the
    /// watch says so.
    pub(crate) fn on_event(&self, replay: &Replay, event: &Event) {
        let Some(trigger) = self.watch.borrow_mut().on_event(event) else {
            return;
        };
        if let Trigger::Until(until) = trigger {
            replay.set_stop(Stop::Halted {
                seq: event.seq,
                why: Halt::Until(until),
            });
            return;
        }
        let resume = self.stop_at(replay, event, trigger);
        self.watch.borrow_mut().resume(resume);
        if resume == Resume::Stop {
            let why = match self.action.get() {
                Action::Callback => Halt::Callback,
                _ => Halt::Quit,
            };
            replay.set_stop(Stop::Halted {
                seq: event.seq,
                why,
            });
        }
    }

    fn stop_at(&self, replay: &Replay, event: &Event, trigger: Trigger) -> Resume {
        // Owned copies: the callback and the prompt run with no borrow of
        // the replay held, so they may call into deja.
        let (spec, marks) = {
            let watch = self.watch.borrow();
            let spec = match trigger {
                Trigger::Breakpoint(index) => watch.breakpoints().specs().get(index).cloned(),
                _ => None,
            };
            (spec, watch.marks(event.task).to_vec())
        };
        let (index, log_events, task_events, log_before) = {
            let gate = replay.gate.borrow();
            let task_events: Vec<Event> = gate
                .taken_by(event.task, HIT_CONTEXT_EVENTS)
                .into_iter()
                .cloned()
                .collect();
            (
                gate.position_of(event.seq).unwrap_or(0),
                gate.len(),
                task_events,
                gate.events_before(event.seq, HIT_CONTEXT_EVENTS).to_vec(),
            )
        };
        let hit = BreakHit {
            event,
            trigger,
            spec: spec.as_ref(),
            index,
            log_events,
            marks: &marks,
            task_events: task_events.iter().collect(),
        };
        if let Some(json) = self.json.as_ref().filter(|_| self.hits_to_json) {
            write_json_line(json, &hit_json(&hit));
        }
        let action = self.action.get();
        if action == Action::Callback {
            let callback = self.callback.as_ref().expect("callback action has one");
            let mut callback = callback.lock().unwrap_or_else(|p| p.into_inner());
            return callback(&hit);
        }
        let text = hit_text(&hit, &log_before);
        if action != Action::Print || !self.hits_to_json {
            eprint!("{text}");
        }
        match action {
            Action::Print | Action::Callback => Resume::Continue,
            Action::Trap => {
                self.trap();
                Resume::Continue
            }
            Action::Pause => self.prompt(replay, event, &text),
        }
    }

    fn trap(&self) {
        if debugger_attached() {
            trap_into_debugger();
        } else if !self.trap_warned.replace(true) {
            eprintln!(
                "deja: --on-break trap: no debugger is attached, so the hit is only printed \
                 (run `deja replay RUN_DIR --gdb --break SPEC`)"
            );
        }
    }

    /// Read commands until one resumes the replay.
    fn prompt(&self, replay: &Replay, event: &Event, hit_text: &str) -> Resume {
        let stdin = std::io::stdin();
        let mut line = String::new();
        for _ in 0..PROMPT_LINES_MAX {
            eprint!("(deja) ");
            let _ = std::io::stderr().flush();
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => {
                    eprintln!();
                    eprintln!(
                        "deja: no more commands (stdin closed): hits are printed from here on"
                    );
                    self.action.set(Action::Print);
                    return Resume::Continue;
                }
                Ok(_) => {}
            }
            let command = if line.trim().is_empty() {
                match self.repeat.get() {
                    Some(command) => command,
                    None => continue,
                }
            } else {
                match PromptCommand::parse(&line) {
                    Ok(command) => command,
                    Err(why) => {
                        eprintln!("{why}");
                        continue;
                    }
                }
            };
            match command {
                PromptCommand::Continue => return Resume::Continue,
                PromptCommand::Step => {
                    self.repeat.set(Some(command));
                    return Resume::Step;
                }
                PromptCommand::Next(kind) => {
                    self.repeat.set(Some(command));
                    return Resume::Next(kind);
                }
                PromptCommand::Quit => return Resume::Stop,
                PromptCommand::Print => eprint!("{hit_text}"),
                PromptCommand::Events(count) => {
                    let gate = replay.gate.borrow();
                    let mut text = String::new();
                    for before in gate.events_before(event.seq, count.saturating_sub(1)) {
                        let _ = writeln!(text, "  {before}");
                    }
                    let _ = writeln!(text, "> {event}");
                    eprint!("{text}");
                }
                PromptCommand::Tasks => eprint!("{}", tasks_text(replay, event)),
                PromptCommand::Help => eprintln!("{}", PromptCommand::HELP),
            }
        }
        eprintln!("deja: {PROMPT_LINES_MAX} prompt lines without a resume: continuing");
        Resume::Continue
    }

    /// The final JSON line: how the replay ended.
    pub(crate) fn outcome(&self, stop: Option<&Stop>, stats: &ReplayStats, exit_code: i32) {
        let Some(json) = &self.json else {
            return;
        };
        let (status, extra) = match stop {
            Some(Stop::Exited) => ("exited", serde_json::Value::Null),
            Some(Stop::RecordingEnded) | None => ("recording_ended", serde_json::Value::Null),
            Some(Stop::Halted { seq, why }) => (
                "stopped",
                serde_json::json!({ "seq": seq, "why": why.to_string() }),
            ),
            Some(Stop::Diverged(divergence)) => (
                "diverged",
                serde_json::json!({
                    "seq": divergence.seq(),
                    "task": divergence.task.0,
                    "report": divergence.to_string(),
                }),
            ),
        };
        let line = serde_json::json!({
            "type": "outcome",
            "status": status,
            "exit_code": exit_code,
            "events": stats.events,
            "log_events": stats.log_events,
            "digest": format!("{:016x}", stats.digest),
            "virtual_ns": stats.virtual_ns,
            "redacted_consumed": stats.redacted_consumed,
            "hits": self.watch.borrow().hits(),
            "detail": extra,
        });
        write_json_line(json, &line);
    }
}

fn hit_json(hit: &BreakHit<'_>) -> serde_json::Value {
    let marks: serde_json::Map<String, serde_json::Value> = hit
        .marks
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                String::from_utf8_lossy(value).into_owned().into(),
            )
        })
        .collect();
    serde_json::json!({
        "type": "hit",
        "trigger": hit.trigger.to_string(),
        "spec": hit.spec.map(|spec| spec.text()),
        "seq": hit.event.seq,
        "task": hit.event.task.0,
        "kind": hit.event.kind.name(),
        "t_ns": hit.event.mono_ns,
        "position": hit.index,
        "log_events": hit.log_events,
        "marks": marks,
        "event": hit.event,
    })
}

fn write_json_line(json: &RefCell<std::fs::File>, value: &serde_json::Value) {
    let mut line = value.to_string();
    line.push('\n');
    // A reader that went away must not stop the replay.
    let _ = json.borrow_mut().write_all(line.as_bytes());
}

fn hit_text(hit: &BreakHit<'_>, log_before: &[Event]) -> String {
    let event = hit.event;
    let mut text = String::new();
    let what = match hit.spec {
        Some(spec) => format!("{} `{spec}`", hit.trigger),
        None => hit.trigger.to_string(),
    };
    let _ = writeln!(
        text,
        "deja: {what} at seq {} (event {} of {}), task {}, +{:.6}s",
        event.seq,
        hit.index + 1,
        hit.log_events,
        event.task,
        event.mono_ns as f64 / 1e9
    );
    let _ = writeln!(text, "  event: {event}");
    let _ = writeln!(text, "  marks: {}", format_marks(hit.marks));
    let earlier: Vec<&&Event> = hit
        .task_events
        .iter()
        .filter(|taken| taken.seq != event.seq)
        .collect();
    if !earlier.is_empty() {
        let _ = writeln!(text, "  task {} before it:", event.task);
        for taken in earlier {
            let _ = writeln!(text, "    {taken}");
        }
    }
    if !log_before.is_empty() {
        let _ = writeln!(text, "  log before it:");
        for before in log_before {
            let _ = writeln!(text, "    {before}");
        }
    }
    text
}

/// Each live task: what it waits on, and its last event.
fn tasks_text(replay: &Replay, current: &Event) -> String {
    let gate = replay.gate.borrow();
    let pending = replay.pending.borrow();
    let mut text = String::new();
    for (task, last) in gate.live_tasks() {
        let state = if task == current.task {
            "running (this stop)".to_string()
        } else {
            match pending.get(&task).filter(|call| !call.is_empty()) {
                Some(call) => format!("waits on {call}"),
                None => "waits outside the log (a channel, a join, a lock) or is runnable".into(),
            }
        };
        let _ = writeln!(text, "  task {task:<4} {state}");
        let _ = writeln!(text, "            last: {last}");
    }
    if text.is_empty() {
        text.push_str("  no live tasks\n");
    }
    text
}

/// True if a debugger traces this process (Linux: `TracerPid` in
/// /proc/self/status). Without one, `SIGTRAP` would kill the service.
fn debugger_attached() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("TracerPid:"))
                .map(|pid| pid.trim() != "0")
        })
        .unwrap_or(false)
}

/// The debugger stops here: the frames below are deja's hit handling,
/// then the service's own code that made the call.
#[inline(never)]
fn trap_into_debugger() {
    // SAFETY: raise has no memory-safety preconditions.
    unsafe {
        libc::raise(libc::SIGTRAP);
    }
}

/// The JSON lines fd from `DEJA_JSON_FD`, checked open and made
/// close-on-exec so children of the service do not hold it.
pub(crate) fn open_json_fd(fd: i32) -> Result<std::fs::File, crate::Error> {
    use std::os::fd::FromRawFd;
    let bad = |why: &'static str| crate::Error::BadSetting {
        name: "DEJA_JSON_FD",
        value: fd.to_string(),
        why,
    };
    if fd < 0 {
        return Err(bad("expected an open file descriptor"));
    }
    // SAFETY: fcntl on any integer is safe; it fails on a closed fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(bad("the file descriptor is not open"));
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the fd is open and, by the contract of DEJA_JSON_FD, handed
    // to deja to own (the CLI opens it for this child only).
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}
