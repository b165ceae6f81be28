//! End-to-end tests across deja's crates and its CLI live in `tests/tests/`;
//! this library holds what they share.
//!
//! ```
//! let events = deja_tests::sample_events(3);
//! assert_eq!(events.len(), 3);
//! ```

pub use deja_recorder as recorder;
use deja_recorder::{EventKind, ReadOutcome, TaskId};

/// A deterministic event stream: the same `i` always gives the same event,
/// so a reader can check what it got against what was sent.
pub fn sample_kind(i: u64) -> EventKind {
    match i % 5 {
        0 => EventKind::ClockMono { ns: i * 1000 },
        1 => EventKind::TcpRead {
            conn: deja_recorder::ConnId(i % 7),
            result: ReadOutcome::Data(format!("GET /item/{i} HTTP/1.1\r\n").into_bytes()),
        },
        2 => EventKind::Spawn {
            child: TaskId(i),
            name: None,
        },
        3 => EventKind::Mark {
            name: "order".into(),
            value: i.to_le_bytes().to_vec(),
        },
        _ => EventKind::ClockWall {
            unix_ns: 1_700_000_000_000_000_000 + i as i64,
        },
    }
}

/// `count` sample kinds.
pub fn sample_events(count: u64) -> Vec<EventKind> {
    (0..count).map(sample_kind).collect()
}
