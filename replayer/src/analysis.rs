//! Log analysis: summary statistics of a run, what `deja stats` reports.
//!
//! [`RunStats::compute`] streams the run once, holding one frame and a few
//! counters: memory stays bounded whatever the log's size (the only set
//! that grows is the distinct task ids).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use deja_recorder::format::FORMAT_VERSION;
use deja_recorder::writer::flight::FlightWindow;
use deja_recorder::writer::{read_recorder_summary, RecorderSummary};
use deja_recorder::{Event, EventKind, GapReason, LogEnd, ReadError, RunReader};
use serde::{Serialize, Serializer};

/// Who recorded a run, where and when: the first segment header's facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunFacts {
    /// Service name.
    pub service: String,
    /// The run's unique id.
    pub run_id: String,
    /// Host name of the recording machine.
    pub host: String,
    /// Process id of the recording process.
    pub pid: u32,
    /// Wall-clock start of the run, nanoseconds since the Unix epoch.
    pub start_wall_unix_ns: i64,
    /// The deja version that wrote the run.
    pub deja_version: String,
    /// The log format version of the segments.
    pub format_version: u32,
}

/// Library code in a run: what deja adopted, and what it could not order
/// or reproduce.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Unseen {
    /// Tasks library code started with `tokio::spawn`, adopted at their
    /// first intercepted call (`task_adopted` events).
    pub adopted_tasks: u64,
    /// Intercepted calls made outside any task (a thread the service
    /// started, `spawn_blocking`): logged, but replay orders them only by
    /// luck.
    pub outside_task_events: u64,
    /// Connections library code opened with sockets of its own (marks
    /// named [`deja_recorder::FOREIGN_SOCKET_MARK`]): their traffic is not
    /// in the log, and replay refuses them.
    pub foreign_sockets: u64,
    /// The first few foreign peers, for the report.
    pub foreign_peers: Vec<String>,
}

/// Foreign peers listed by name in [`Unseen::foreign_peers`].
const FOREIGN_PEERS_SHOWN: usize = 8;

/// The task id the runtime gives calls made outside any task.
const TASK_OUTSIDE: u64 = u64::MAX;

/// Summary statistics of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunStats {
    /// The header's facts; `None` only when the log was cut inside the
    /// first segment's header.
    pub run: Option<RunFacts>,
    /// Events read.
    pub events: u64,
    /// Events per fine kind name ([`EventKind::name`], e.g. `tcp_read`).
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Events per class name ([`deja_recorder::KindClass::name`], e.g. `recv`).
    pub by_class: BTreeMap<&'static str, u64>,
    /// Distinct task ids seen.
    pub tasks: u64,
    /// What the log says about code deja does not see directly (see
    /// [`Unseen`]).
    pub unseen: Unseen,
    /// The first event's seq.
    pub first_seq: Option<u64>,
    /// The last event's seq.
    pub last_seq: Option<u64>,
    /// The first event's `mono_ns`.
    pub first_mono_ns: Option<u64>,
    /// The last event's `mono_ns`.
    pub last_mono_ns: Option<u64>,
    /// From the first event's `mono_ns` to the last one's (0 for fewer than two events).
    pub duration_ns: u64,
    /// `Gap` events: places where the recorder lost events.
    pub gaps: u64,
    /// Events lost in total (the sum of every gap's `lost`).
    pub lost_events: u64,
    /// Gaps and events lost per reason (`write_failed`, `queue_full`,
    /// `event_too_large`); only reasons that occur.
    pub gaps_by_reason: BTreeMap<&'static str, GapCount>,
    /// The recorder's own counts from `index.json`, when it wrote them:
    /// they also cover events lost after the last one written, which no
    /// gap event can (a write outage that lasted to the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorder: Option<RecorderSummary>,
    /// For a kept flight-recorder window: where it starts and why it was
    /// kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flight: Option<FlightWindow>,
    /// Segment files.
    pub segments: u32,
    /// Frames.
    pub frames: u64,
    /// Bytes of the segment files.
    pub bytes_on_disk: u64,
    /// Compressed frame payload bytes.
    pub bytes_compressed: u64,
    /// Uncompressed (encoded) event bytes.
    pub bytes_raw: u64,
    /// `bytes_on_disk / events`; `None` without events.
    pub bytes_per_event: Option<f64>,
    /// `bytes_raw / bytes_compressed`; `None` without frames.
    pub compression_ratio: Option<f64>,
    /// How the log ends: a torn tail or unclean shutdown deserves a warning
    /// ([`LogEnd::warning`]).
    #[serde(serialize_with = "serialize_end")]
    pub end: LogEnd,
}

impl RunStats {
    /// Read every event of the run directory `dir` and summarize it.
    ///
    /// Fails like [`RunReader`] does: on I/O errors, an unsupported
    /// version, or corruption anywhere before the tail.
    pub fn compute(dir: impl AsRef<Path>) -> Result<RunStats, ReadError> {
        let recorder = read_recorder_summary(dir.as_ref());
        // A malformed flight.json is not worth failing stats for: the
        // reader already decided whether the segments are a window.
        let flight = FlightWindow::read(dir.as_ref()).ok().flatten();
        let mut reader = RunReader::open(dir)?;
        let mut tally = Tally::default();
        for event in reader.by_ref() {
            tally.add(&event?);
        }
        let end = reader
            .end()
            .cloned()
            .expect("a reader that ended without error knows how the log ends");
        let read = reader.stats();
        let run = reader.header().map(|header| RunFacts {
            service: header.run.service.clone(),
            run_id: header.run.run_id.clone(),
            host: header.run.host.clone(),
            pid: header.run.pid,
            start_wall_unix_ns: header.run.start_wall_unix_ns,
            deja_version: header.run.deja_version.clone(),
            format_version: FORMAT_VERSION,
        });
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        Ok(RunStats {
            run,
            events: tally.events,
            by_kind: tally.by_kind,
            by_class: tally.by_class,
            tasks: tally.tasks.len() as u64,
            unseen: tally.unseen,
            first_seq: tally.first.map(|(seq, _)| seq),
            last_seq: tally.last.map(|(seq, _)| seq),
            first_mono_ns: tally.first.map(|(_, ns)| ns),
            last_mono_ns: tally.last.map(|(_, ns)| ns),
            duration_ns: match (tally.first, tally.last) {
                (Some((_, first)), Some((_, last))) => last.saturating_sub(first),
                _ => 0,
            },
            gaps: tally.gaps,
            lost_events: tally.lost,
            gaps_by_reason: tally.by_reason,
            recorder,
            flight,
            segments: read.segments,
            frames: read.frames,
            bytes_on_disk: read.bytes_on_disk,
            bytes_compressed: read.bytes_compressed,
            bytes_raw: read.bytes_raw,
            bytes_per_event: ratio(read.bytes_on_disk, tally.events),
            compression_ratio: ratio(read.bytes_raw, read.bytes_compressed),
            end,
        })
    }
}

/// Gaps of one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GapCount {
    /// `Gap` events.
    pub gaps: u64,
    /// Events they account for.
    pub lost: u64,
}

/// A gap reason as a JSON key.
pub fn gap_reason_key(reason: GapReason) -> &'static str {
    match reason {
        GapReason::QueueFull => "queue_full",
        GapReason::EventTooLarge => "event_too_large",
        GapReason::WriteFailed => "write_failed",
    }
}

/// Running counts while the run streams past.
#[derive(Debug, Default)]
struct Tally {
    events: u64,
    by_kind: BTreeMap<&'static str, u64>,
    by_class: BTreeMap<&'static str, u64>,
    tasks: BTreeSet<u64>,
    unseen: Unseen,
    /// (seq, mono_ns) of the first and last events.
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    gaps: u64,
    lost: u64,
    by_reason: BTreeMap<&'static str, GapCount>,
}

impl Tally {
    fn add(&mut self, event: &Event) {
        self.events += 1;
        *self.by_kind.entry(event.kind.name()).or_default() += 1;
        *self.by_class.entry(event.kind.class().name()).or_default() += 1;
        self.tasks.insert(event.task.0);
        if event.task.0 == TASK_OUTSIDE {
            self.unseen.outside_task_events += 1;
        }
        match &event.kind {
            EventKind::TaskAdopted { .. } => self.unseen.adopted_tasks += 1,
            EventKind::Mark { name, value } if name == deja_recorder::FOREIGN_SOCKET_MARK => {
                self.unseen.foreign_sockets += 1;
                let peer = String::from_utf8_lossy(value).into_owned();
                if self.unseen.foreign_peers.len() < FOREIGN_PEERS_SHOWN
                    && !self.unseen.foreign_peers.contains(&peer)
                {
                    self.unseen.foreign_peers.push(peer);
                }
            }
            _ => {}
        }
        self.first.get_or_insert((event.seq, event.mono_ns));
        self.last = Some((event.seq, event.mono_ns));
        if let EventKind::Gap { lost, reason, .. } = event.kind {
            self.gaps += 1;
            self.lost = self.lost.saturating_add(lost);
            let count = self.by_reason.entry(gap_reason_key(reason)).or_default();
            count.gaps += 1;
            count.lost = count.lost.saturating_add(lost);
        }
    }
}

/// `LogEnd` as JSON: `{"state": "clean" | "unclean" | "torn_tail", ...}`.
fn serialize_end<S: Serializer>(end: &LogEnd, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct EndJson {
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        partial_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    }
    let (state, file, offset, partial_bytes) = match end {
        LogEnd::Clean => ("clean", None, None, None),
        LogEnd::Unclean { file, offset, .. } => ("unclean", Some(file), Some(*offset), None),
        LogEnd::TornTail {
            file,
            offset,
            partial_bytes,
            ..
        } => ("torn_tail", Some(file), Some(*offset), Some(*partial_bytes)),
    };
    EndJson {
        state,
        file: file.map(|file| file.display().to_string()),
        offset,
        partial_bytes,
        warning: end.warning(),
    }
    .serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deja_recorder::{GapReason, LogWriter, RunMeta, TaskId, WriterConfig};

    fn event(seq: u64, task: u64, mono_ns: u64, kind: EventKind) -> Event {
        Event {
            seq,
            task: TaskId(task),
            mono_ns,
            kind,
        }
    }

    #[test]
    fn counts_kinds_tasks_gaps_and_sizes() {
        let out = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(
            out.path(),
            RunMeta::new("svc", "run"),
            WriterConfig::default(),
        )
        .unwrap();
        writer
            .write(&[
                event(0, 0, 1_000, EventKind::ClockMono { ns: 1_000 }),
                event(1, 3, 2_000, EventKind::ClockWall { unix_ns: 5 }),
            ])
            .unwrap();
        writer
            .write(&[
                event(
                    5,
                    3,
                    3_000,
                    EventKind::Gap {
                        first_lost_seq: 2,
                        lost: 3,
                        reason: GapReason::QueueFull,
                    },
                ),
                event(6, 7, 10_000, EventKind::Exit { code: 0 }),
            ])
            .unwrap();
        let dir = writer.dir().to_path_buf();
        let totals = writer.finish().unwrap();

        let stats = RunStats::compute(&dir).unwrap();
        assert_eq!(stats.events, 4);
        assert_eq!(stats.by_kind["clock_mono"], 1);
        assert_eq!(stats.by_kind["gap"], 1);
        assert_eq!(stats.by_class["time"], 2);
        assert_eq!(stats.by_class["exit"], 1);
        assert_eq!(stats.tasks, 3);
        assert_eq!((stats.first_seq, stats.last_seq), (Some(0), Some(6)));
        assert_eq!(stats.duration_ns, 9_000);
        assert_eq!((stats.gaps, stats.lost_events), (1, 3));
        assert_eq!(
            stats.gaps_by_reason["queue_full"],
            GapCount { gaps: 1, lost: 3 }
        );
        assert_eq!(
            stats.recorder, None,
            "LogWriter alone writes no recorder counts"
        );
        assert_eq!((stats.segments, stats.frames), (1, 2));
        assert_eq!(stats.bytes_on_disk, totals.bytes_on_disk);
        assert_eq!(stats.bytes_raw, totals.bytes_raw);
        assert_eq!(stats.end, LogEnd::Clean);
        let run = stats.run.as_ref().unwrap();
        assert_eq!((run.service.as_str(), run.run_id.as_str()), ("svc", "run"));
        assert_eq!(run.format_version, FORMAT_VERSION);

        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["events"], 4);
        assert_eq!(json["end"]["state"], "clean");
        assert_eq!(json["gaps_by_reason"]["queue_full"]["lost"], 3);
        assert!(json["end"].get("warning").is_none());
    }

    #[test]
    fn an_empty_run_has_no_ratios() {
        let out = tempfile::tempdir().unwrap();
        let writer = LogWriter::create(
            out.path(),
            RunMeta::new("svc", "run"),
            WriterConfig::default(),
        )
        .unwrap();
        let dir = writer.dir().to_path_buf();
        writer.finish().unwrap();
        let stats = RunStats::compute(&dir).unwrap();
        assert_eq!(stats.events, 0);
        assert_eq!(stats.bytes_per_event, None);
        assert_eq!(stats.compression_ratio, None);
        assert_eq!(stats.duration_ns, 0);
    }
}

/// Most references listed by name in [`WindowReferences`]'s text; the
/// rest are counted.
const WINDOW_REFERENCES_LISTED: usize = 5;

/// What a log that starts mid-run (a flight-recorder window) refers to
/// from before its start: tasks that act in it but were spawned earlier,
/// and sockets used in it but opened earlier. Each comes with the seq
/// where the window first refers to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WindowReferences {
    /// The window's first seq.
    pub first_seq: Option<u64>,
    /// Tasks spawned before the window: (task, first seq in the window).
    pub tasks: Vec<(u64, u64)>,
    /// Sockets opened before the window: (socket id, first seq in it).
    pub sockets: Vec<(u64, u64)>,
}

impl WindowReferences {
    /// Find the references of `events` (a window, in seq order) to what
    /// came before them.
    pub fn of(events: &[Event]) -> WindowReferences {
        let mut known_tasks = BTreeSet::new();
        let mut known_sockets = BTreeSet::new();
        let mut refs = WindowReferences {
            first_seq: events.first().map(|e| e.seq),
            ..WindowReferences::default()
        };
        for event in events {
            if let EventKind::Spawn { child, .. } = &event.kind {
                known_tasks.insert(child.0);
            }
            if known_tasks.insert(event.task.0) {
                refs.tasks.push((event.task.0, event.seq));
            }
            let opened = match &event.kind {
                EventKind::TcpListen { listener, .. } => Some(listener.0),
                EventKind::TcpConnect { conn, .. } => Some(conn.0),
                EventKind::UdpBind { socket, .. } => Some(socket.0),
                _ => None,
            };
            if let EventKind::TcpAccept { result: Ok(a), .. } = &event.kind {
                known_sockets.insert(a.conn.0);
            }
            if let Some(socket) = opened {
                known_sockets.insert(socket);
            } else if let Some(socket) = event.kind.conn() {
                if known_sockets.insert(socket.0) {
                    refs.sockets.push((socket.0, event.seq));
                }
            }
        }
        refs
    }
}

impl std::fmt::Display for WindowReferences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |items: &[(u64, u64)], what: &str| {
            let mut text: Vec<String> = items
                .iter()
                .take(WINDOW_REFERENCES_LISTED)
                .map(|(id, seq)| format!("{what} {id} at seq {seq}"))
                .collect();
            if items.len() > WINDOW_REFERENCES_LISTED {
                text.push(format!("{} more", items.len() - WINDOW_REFERENCES_LISTED));
            }
            text.join(", ")
        };
        write!(
            f,
            "the window refers to {} tasks and {} sockets that began before it",
            self.tasks.len(),
            self.sockets.len()
        )?;
        if !self.tasks.is_empty() {
            write!(f, " ({})", list(&self.tasks, "task"))?;
        }
        if !self.sockets.is_empty() {
            write!(f, " ({})", list(&self.sockets, "conn"))?;
        }
        Ok(())
    }
}
