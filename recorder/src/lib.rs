//! deja's event model and trace log format.
//!
//! A map of the crate:
//! - [`clock`]: the real clock, past the runtime's interposer (what events are stamped with).
//! - [`event`]: what one intercepted operation looks like ([`Event`], [`EventKind`]).
//! - [`mod@format`]: the on-disk layout of segments, frames and footers, its limits and version.
//! - [`meta`]: the run's identity and context ([`RunMeta`]), kept in every segment header.
//! - [`writer`]: the [`Recorder`] a service pushes into (bounded queue, background
//!   thread, never blocks on disk) and the synchronous [`LogWriter`] behind it.
//! - [`reader`]: [`RunReader`], a streaming, distrustful iterator over a run directory.
//!
//! Start here: [`Recorder`] to write, [`RunReader`] to read.
//!
//! ```
//! use deja_recorder::{EventKind, LogEnd, Recorder, RunMeta, RunReader, TaskId, WriterConfig};
//!
//! let out = tempfile::tempdir()?;
//! let recorder = Recorder::create(out.path(), RunMeta::current("checkout"), WriterConfig::default())?;
//! recorder.record(TaskId::MAIN, EventKind::ClockWall { unix_ns: 1_700_000_000_000_000_000 });
//! recorder.record(TaskId::MAIN, EventKind::Mark { name: "order".into(), value: b"42".to_vec() });
//! recorder.close()?;
//!
//! let mut reader = RunReader::open(recorder.dir())?;
//! let events = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
//! assert_eq!(events.len(), 2);
//! assert_eq!(reader.end(), Some(&LogEnd::Clean));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clock;
pub mod event;
pub mod format;
pub mod meta;
pub mod reader;
pub mod writer;

pub use event::{
    content_hash, Accepted, ConnId, Connected, Datagram, Event, EventKind, GapReason, IoErrorKind,
    KindClass, ReadOutcome, SignalKind, TaskId, TaskOutcome, Written, EVENT_PAYLOAD_BYTES_MAX,
    FOREIGN_SOCKET_MARK, REDACTED_RANGES_MAX,
};
pub use meta::RunMeta;
pub use reader::{LogEnd, ReadError, ReadStats, RunReader};
pub use writer::{
    LogWriter, Recorded, Recorder, RecorderStats, WriteError, WriterConfig, WriterTotals,
};
