//! What the heisenbug tests (`tests/tests/heisenbug_*.rs`) check the same
//! way: that a fixed service diverges exactly where expected, and what
//! comes right after a breakpoint.

use std::time::Duration;

use deja_recorder::{Event, TaskId};

/// How long a replay of a fix waits before it calls a stall a divergence:
/// a fix that makes a task wait on a lock stalls, and in-process nothing
/// else can wake it, so waiting the default second only slows the test.
pub const FIX_STALL_WAIT: Duration = Duration::from_millis(50);

/// `builder` with [`FIX_STALL_WAIT`], for replays of a fixed service.
pub fn quick_stall(builder: deja::Builder) -> deja::Builder {
    builder.stall_wait(FIX_STALL_WAIT)
}

/// Asserts that a replay diverged at `expected` (seq, task) and returns
/// the report, which it also prints.
pub fn assert_diverges_at(
    replayed: Result<deja::ReplayStats, deja::Error>,
    expected: (u64, TaskId),
) -> String {
    let divergence = match replayed {
        Err(deja::Error::Diverged(divergence)) => divergence,
        Err(err) => panic!("expected a divergence, got {err}"),
        Ok(stats) => panic!("the fixed code followed the buggy recording to its end: {stats:?}"),
    };
    let report = divergence.to_string();
    eprintln!("{report}");
    assert_eq!(divergence.seq(), Some(expected.0), "{report}");
    assert_eq!(divergence.task, expected.1, "{report}");
    report
}

/// The first event of `task` after seq `after` (a breakpoint's stop):
/// the operation the stop came right before.
pub fn next_event_of(events: &[Event], task: TaskId, after: u64) -> &Event {
    events
        .iter()
        .find(|event| event.seq > after && event.task == task)
        .unwrap_or_else(|| panic!("task {task} has no event after seq {after}"))
}

/// A mark's value (or any logged bytes) as text.
pub fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}
