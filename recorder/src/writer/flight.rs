//! The flight recorder's ring: a run directory that keeps only its most
//! recent segments, and the kept windows frozen out of it.
//!
//! In flight mode the writer writes `<service>-<run id>.flight/` with small
//! segments ([`FLIGHT_SEGMENTS`] to the budget) and deletes the oldest
//! closed segment whenever the ring outgrows its budget. Keeping a window
//! freezes what the ring holds into `<service>-<run id>-kept<N>/`: hard
//! links to the closed segments, a copy of the open one closed with a
//! final footer, an `index.json`, and a [`FLIGHT_FILE_NAME`] that says
//! where the window starts. The reader accepts such a directory although
//! its segments do not start at 0.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Segments the ring is cut into: the window loses at most one segment
/// (1/8 of the budget) when the oldest is deleted.
pub const FLIGHT_SEGMENTS: u64 = 8;

/// Smallest ring budget: below a MiB a segment would hold too few frames
/// to be worth a file.
pub const FLIGHT_BYTES_MIN: u64 = 1 << 20;

/// Smallest ring segment.
pub(crate) const FLIGHT_SEGMENT_BYTES_MIN: u64 = 128 << 10;

/// Most windows one run keeps: each is a directory of hard links, cheap,
/// but a signal storm must not fill the disk with them.
pub const KEPT_WINDOWS_MAX: u32 = 64;

/// The file that marks a kept flight-recorder window.
pub const FLIGHT_FILE_NAME: &str = "flight.json";

/// What a kept window says about itself ([`FLIGHT_FILE_NAME`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightWindow {
    /// The seq of the window's first event.
    pub first_seq: u64,
    /// The seq of its last event.
    pub last_seq: Option<u64>,
    /// Events the ring had dropped before the window began.
    pub events_before: u64,
    /// The ring's budget, bytes.
    pub ring_bytes: u64,
    /// Why the window was kept: `signal`, `panic`, `api`, ...
    pub reason: String,
}

/// Largest `flight.json` read: a few hundred bytes in practice.
const FLIGHT_FILE_BYTES_MAX: u64 = 64 << 10;

impl FlightWindow {
    /// Read the window description of `dir`, if it is a kept window.
    /// A missing file is `Ok(None)`; an unreadable or malformed one is an
    /// error message naming the file.
    pub fn read(dir: &Path) -> Result<Option<FlightWindow>, String> {
        let path = dir.join(FLIGHT_FILE_NAME);
        let read = crate::reader::open_regular(&path).and_then(|file| {
            use std::io::Read as _;
            let mut bytes = Vec::new();
            file.take(FLIGHT_FILE_BYTES_MAX).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|err| {
                format!("{}: not a flight window description: {err}", path.display())
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(format!("cannot read {}: {err}", path.display())),
        }
    }

    /// True when the window holds the run from its first event: the ring
    /// never wrapped, so the window replays like a whole recording.
    pub fn holds_the_start(&self) -> bool {
        self.first_seq == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind, TaskId};
    use crate::reader::{LogEnd, RunReader};
    use crate::writer::{LogWriter, WriterConfig};
    use crate::RunMeta;
    use std::fs;

    /// Mark events with hard-to-compress values, ~2 KiB each.
    fn events(from: u64, count: u64) -> Vec<Event> {
        let mut state = from.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (from..from + count)
            .map(|seq| {
                let value: Vec<u8> = (0..2048)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                Event {
                    seq,
                    task: TaskId::MAIN,
                    mono_ns: seq * 1000,
                    kind: EventKind::Mark {
                        name: "payload".into(),
                        value,
                    },
                }
            })
            .collect()
    }

    fn dir_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum()
    }

    fn read_seqs(dir: &Path) -> (Vec<u64>, Option<LogEnd>) {
        let mut reader = RunReader::open(dir).unwrap();
        let seqs = reader.by_ref().map(|e| e.unwrap().seq).collect();
        (seqs, reader.end().cloned())
    }

    #[test]
    fn the_ring_keeps_the_most_recent_window_and_kept_windows_read_back() {
        let out = tempfile::tempdir().unwrap();
        let budget = FLIGHT_BYTES_MIN;
        let config = WriterConfig {
            flight_bytes: Some(budget),
            ..WriterConfig::default()
        };
        let meta = RunMeta::new("svc", "run1");
        let mut writer = LogWriter::create(out.path(), meta, config).unwrap();
        let ring = out.path().join("svc-run1.flight");
        assert_eq!(writer.dir(), ring);
        // ~8 MiB through a 1 MiB ring.
        for batch in 0..40 {
            writer.write(&events(batch * 100, 100)).unwrap();
            assert!(
                dir_bytes(&ring) <= budget + budget / FLIGHT_SEGMENTS + (64 << 10),
                "the ring stays within its budget plus one segment"
            );
        }
        let kept = writer.keep("api").unwrap();
        assert_eq!(kept, out.path().join("svc-run1-kept1"));
        let window = FlightWindow::read(&kept).unwrap().unwrap();
        assert!(window.first_seq > 0 && !window.holds_the_start());
        assert_eq!(window.events_before, window.first_seq);
        assert_eq!(window.last_seq, Some(3999));
        assert_eq!(window.reason, "api");
        let (seqs, end) = read_seqs(&kept);
        assert_eq!(end, Some(LogEnd::Clean), "a kept window ends cleanly");
        assert_eq!(seqs.first(), Some(&window.first_seq));
        assert_eq!(seqs.last(), Some(&3999));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no holes");
        assert!(
            seqs.len() as u64 * 2048 >= budget / 2,
            "the window is most of the ring"
        );

        // The ring goes on; a second window ends later.
        writer.write(&events(4000, 100)).unwrap();
        let second = writer.keep("signal").unwrap();
        let (seqs, _) = read_seqs(&second);
        assert_eq!(seqs.last(), Some(&4099));
        // The first window is unchanged by the ring moving on.
        assert_eq!(read_seqs(&kept).0.last(), Some(&3999));

        writer.finish().unwrap();
        assert!(!ring.exists(), "the ring goes with the run");
        assert!(kept.is_dir() && second.is_dir());
    }

    #[test]
    fn a_window_kept_before_the_ring_wraps_holds_the_start() {
        let out = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            flight_bytes: Some(FLIGHT_BYTES_MIN),
            ..WriterConfig::default()
        };
        let mut writer = LogWriter::create(out.path(), RunMeta::new("svc", "r"), config).unwrap();
        writer.write(&events(0, 10)).unwrap();
        let kept = writer.keep("panic").unwrap();
        let window = FlightWindow::read(&kept).unwrap().unwrap();
        assert!(window.holds_the_start());
        assert_eq!(read_seqs(&kept).0, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_recorder_keeps_every_event_recorded_before_the_call() {
        let out = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            flight_bytes: Some(FLIGHT_BYTES_MIN),
            ..WriterConfig::default()
        };
        let recorder =
            crate::Recorder::create(out.path(), RunMeta::new("svc", "r"), config).unwrap();
        for round in 0..20u64 {
            for _ in 0..50 {
                recorder.record(TaskId::MAIN, EventKind::ClockMono { ns: round });
            }
            // Right after the records, while the writer may be mid-batch.
            let kept = recorder.keep("api").unwrap();
            let (seqs, _) = read_seqs(&kept);
            assert_eq!(seqs.last(), Some(&(round * 50 + 49)), "{kept:?}");
        }
        recorder.close().unwrap();
    }

    #[test]
    fn a_plain_run_is_not_flight_and_cannot_keep() {
        let out = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(
            out.path(),
            RunMeta::new("svc", "r"),
            WriterConfig::default(),
        )
        .unwrap();
        assert!(writer.keep("api").is_err());
        assert_eq!(FlightWindow::read(writer.dir()).unwrap(), None);
    }

    #[test]
    fn a_segment_hole_without_the_flight_file_is_still_corruption() {
        let out = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            flight_bytes: Some(FLIGHT_BYTES_MIN),
            ..WriterConfig::default()
        };
        let mut writer = LogWriter::create(out.path(), RunMeta::new("svc", "r"), config).unwrap();
        for batch in 0..30 {
            writer.write(&events(batch * 100, 100)).unwrap();
        }
        let kept = writer.keep("api").unwrap();
        fs::remove_file(kept.join(FLIGHT_FILE_NAME)).unwrap();
        let err = RunReader::open(&kept).unwrap_err();
        assert!(err.to_string().contains("is missing"), "{err}");
    }
}
