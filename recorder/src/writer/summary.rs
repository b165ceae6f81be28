//! The recorder's own account of a run, kept in `index.json`.
//!
//! The segments say where events are missing (each hole is covered by a
//! `Gap` event), but not what the recorder dropped after the last event it
//! could write, when a write outage lasted to the end. The recorder's
//! counters fill that in: `index.json` gets a `"recorder"` object on close
//! (and on every rotation), which `deja stats` shows. Readers that do not
//! know the field ignore it; runs written before it simply lack it.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::log_writer::INDEX_FILE_NAME;

/// Largest `index.json` read back: a run of 100 000 segments summarizes in
/// about 20 MiB; anything larger is not an index deja wrote.
const INDEX_BYTES_MAX: u64 = 32 << 20;

/// The recorder's counters as of its last index write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecorderSummary {
    /// Seqs handed out: every event recorded, written or not, plus the gap
    /// events. `events_written + events_dropped` equals this.
    pub events_produced: u64,
    /// Events in complete frames on disk (gap events included).
    pub events_written: u64,
    /// Events lost: queue full, too large, or a failed write.
    pub events_dropped: u64,
    /// Events of tasks still running when the recording closed (at the
    /// service's exit): not recorded, and not part of the run. Runs written
    /// before this field counted them in `events_dropped`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub events_after_close: u64,
    /// Times the disk refused writes and the writer recovered or gave up.
    pub write_outages: u64,
    /// The last write error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_write_error: Option<String>,
    /// True when an outage lasted to the end: the log stops at the last
    /// event written, with no gap event for what came after.
    #[serde(default)]
    pub ended_in_outage: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The `"recorder"` object of a run directory's `index.json`, if the file
/// is there, small enough, well formed and has one.
pub fn read_recorder_summary(run_dir: &Path) -> Option<RecorderSummary> {
    #[derive(Deserialize)]
    struct IndexRecorder {
        recorder: Option<RecorderSummary>,
    }
    let file = crate::reader::open_regular(&run_dir.join(INDEX_FILE_NAME)).ok()?;
    let mut json = Vec::new();
    file.take(INDEX_BYTES_MAX).read_to_end(&mut json).ok()?;
    serde_json::from_slice::<IndexRecorder>(&json)
        .ok()?
        .recorder
}
