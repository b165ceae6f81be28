//! Writing a run: the [`Recorder`] the service's threads push into, and the
//! [`LogWriter`] its background thread drives.
//!
//! Memory is bounded: the queue holds at most [`QUEUE_EVENTS_MAX`] events
//! and [`QUEUE_PAYLOAD_BYTES_MAX`] payload bytes, and the writer holds at most
//! one more such batch while it encodes it, plus one frame's buffers. With
//! the defaults that is under 64 MiB in the worst case and a few MiB in
//! the common one.

pub mod fault;
pub mod flight;
mod log_writer;
mod queue;
mod summary;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use fault::FaultPlan;
pub use log_writer::{LogWriter, WriterTotals, INDEX_FILE_NAME};
use queue::Queue;
pub use queue::Recorded;
pub use summary::{read_recorder_summary, RecorderSummary};

use crate::event::{EventKind, TaskId};
use crate::format::SEGMENT_BYTES_DEFAULT;
use crate::meta::RunMeta;

/// Queue capacity in events. At 1 M events/s a writer stalled for 50 ms
/// (disk, scheduling) faces 50 K events, so 64 Ki absorbs that.
pub const QUEUE_EVENTS_MAX: usize = 64 << 10;

/// Queue capacity in payload bytes (read data, marks, entropy): 16 MiB is
/// 50 ms of 320 MB/s of recorded reads.
pub const QUEUE_PAYLOAD_BYTES_MAX: usize = 16 << 20;

/// How often the writer writes what is queued: a crash loses at most this
/// much (plus one write), within the design's 100 ms. Short, because the
/// batch is encoded in one CPU burst: on a busy 2-core machine 50 ms
/// batches cost the kv fixture 20-30% at p99, 10 ms batches under 8%.
pub const FLUSH_INTERVAL_MS: u64 = 10;

/// Upper bound on a configured flush interval.
pub const FLUSH_INTERVAL_MS_MAX: u64 = 100;

/// How long [`Recorder::keep`] waits for the writer to freeze the ring:
/// the writer wakes every flush interval, and copying the open segment
/// is a few MiB at most; past this the disk is the problem.
pub const KEEP_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed write (disk full, I/O error), how long the writer sheds
/// events before it tries again: each try costs a truncate and a frame's
/// encode, so a full disk is not hammered, and recording resumes within a
/// second of space coming back.
pub const WRITE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bound on a configured retry interval: a longer outage than this
/// between tries would lose a minute of events to a disk that came back.
pub const WRITE_RETRY_INTERVAL_MAX: Duration = Duration::from_secs(60);

/// How a run is written.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Rotate to a new segment once one reaches this many bytes.
    pub segment_bytes_max: u64,
    /// zstd level for frames; 1 favours speed (about 2.5x on request logs).
    pub compression_level: i32,
    /// Writer wake-up interval, at most [`FLUSH_INTERVAL_MS_MAX`].
    pub flush_interval: Duration,
    /// Queue capacity in events (at least 2).
    pub queue_events_max: usize,
    /// Queue capacity in payload bytes.
    pub queue_payload_bytes_max: usize,
    /// Flight mode: keep only the most recent this many bytes of log, in
    /// a ring (at least [`flight::FLIGHT_BYTES_MIN`]); windows are kept on
    /// request ([`Recorder::keep`]).
    pub flight_bytes: Option<u64>,
    /// After a failed write, shed events this long before trying again
    /// (at most [`WRITE_RETRY_INTERVAL_MAX`]).
    pub write_retry_interval: Duration,
    /// Injected disk faults, for tests ([`FaultPlan`]); `None` in real use.
    pub faults: Option<Arc<FaultPlan>>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            compression_level: 1,
            flush_interval: Duration::from_millis(FLUSH_INTERVAL_MS),
            queue_events_max: QUEUE_EVENTS_MAX,
            queue_payload_bytes_max: QUEUE_PAYLOAD_BYTES_MAX,
            flight_bytes: None,
            write_retry_interval: WRITE_RETRY_INTERVAL,
            faults: None,
        }
    }
}

impl WriterConfig {
    fn validate(&self) {
        assert!(
            self.flush_interval <= Duration::from_millis(FLUSH_INTERVAL_MS_MAX),
            "flush_interval above {FLUSH_INTERVAL_MS_MAX} ms breaks the crash-loss bound"
        );
        assert!(
            self.queue_events_max >= 2,
            "queue_events_max must be at least 2"
        );
        assert!(
            self.segment_bytes_max > 0,
            "segment_bytes_max must be positive"
        );
        assert!(
            self.flight_bytes
                .is_none_or(|bytes| bytes >= flight::FLIGHT_BYTES_MIN),
            "a flight ring needs at least FLIGHT_BYTES_MIN bytes"
        );
        assert!(
            self.write_retry_interval <= WRITE_RETRY_INTERVAL_MAX,
            "write_retry_interval above {WRITE_RETRY_INTERVAL_MAX:?} loses events to a disk that came back"
        );
    }
}

/// Why a run could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file or directory operation failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread panicked (a bug in deja).
    #[error("the deja writer thread panicked")]
    WriterPanicked,
}

/// Counters describing a recording so far.
///
/// Every seq handed out is written or dropped: after [`Recorder::close`],
/// `produced == written.events + dropped`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Seqs handed out: events recorded (kept or not) plus gap events.
    pub produced: u64,
    /// Events accepted into the queue (gap events included).
    pub queued: u64,
    /// Events lost: queue full, too large, or not writable.
    pub dropped: u64,
    /// Events recorded after close, by tasks still running while the
    /// process exits: not part of the run (it ended at its exit), so not
    /// counted in `produced` or `dropped`.
    pub after_close: u64,
    /// `Gap` events queued.
    pub gaps: u64,
    /// What the writer has put on disk (complete after [`Recorder::close`]).
    pub written: WriterTotals,
    /// Write outages: spells of failed writes, each warned about once
    /// through `tracing` and ended by a `WriteFailed` gap when writing
    /// worked again (or by the end of the run).
    pub write_outages: u64,
    /// True while the writer is in an outage (after close: the run ended
    /// in one, so the log stops without a footer).
    pub in_outage: bool,
    /// The last write error, if a write ever failed.
    pub write_error: Option<String>,
    /// `index.json` could not be written at close (this error, naming the
    /// file): the segments and their footers are complete, only the
    /// summary `deja stats` reads first is missing or stale.
    pub index_error: Option<String>,
}

/// The recording side of a run: cheap to call from any thread.
///
/// ```
/// use deja_recorder::{EventKind, Recorder, RunMeta, RunReader, TaskId, WriterConfig};
///
/// let out = tempfile::tempdir()?;
/// let recorder = Recorder::create(out.path(), RunMeta::current("demo"), WriterConfig::default())?;
/// recorder.record(TaskId::MAIN, EventKind::ClockMono { ns: 42 });
/// let stats = recorder.close()?;
/// assert_eq!(stats.written.events, 1);
///
/// let events: Vec<_> = RunReader::open(recorder.dir())?.collect::<Result<_, _>>()?;
/// assert_eq!(events[0].kind, EventKind::ClockMono { ns: 42 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    queue: Arc<Queue>,
    writer: Mutex<Option<JoinHandle<WriterOutcome>>>,
    shared: Arc<Mutex<WriterProgress>>,
    closed_stats: Mutex<Option<Result<RecorderStats, String>>>,
}

#[derive(Debug, Default)]
struct WriterProgress {
    totals: WriterTotals,
    error: Option<String>,
    index_error: Option<String>,
    /// A pending [`Recorder::keep`]: its reason and where to answer.
    keep: Option<(String, std::sync::mpsc::Sender<Result<PathBuf, String>>)>,
    outages: u64,
    in_outage: bool,
}

type WriterOutcome = Result<WriterTotals, WriteError>;

impl Recorder {
    /// Create `<out_dir>/<service>-<run_id>/` and start the writer thread.
    pub fn create(
        out_dir: &Path,
        meta: RunMeta,
        config: WriterConfig,
    ) -> Result<Recorder, WriteError> {
        let writer = LogWriter::create(out_dir, meta, config.clone())?;
        Ok(Self::start(writer, config))
    }

    fn start(writer: LogWriter, config: WriterConfig) -> Recorder {
        let dir = writer.dir().to_path_buf();
        let queue = Arc::new(Queue::new(
            config.queue_events_max,
            config.queue_payload_bytes_max,
        ));
        let shared = Arc::new(Mutex::new(WriterProgress::default()));
        let thread = {
            let queue = Arc::clone(&queue);
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("deja-writer".into())
                .spawn(move || writer_loop(writer, &queue, &shared, &config))
                .expect("spawning the deja writer thread")
        };
        Recorder {
            dir,
            queue,
            writer: Mutex::new(Some(thread)),
            shared,
            closed_stats: Mutex::new(None),
        }
    }

    /// The run directory being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record an event now: assigns its seq and stamps the monotonic time
    /// since the run started. Never blocks on disk.
    pub fn record(&self, task: TaskId, kind: EventKind) -> Recorded {
        self.queue.push(task, None, kind)
    }

    /// Record an event at a given time (virtual time in simulation).
    pub fn record_at(&self, task: TaskId, mono_ns: u64, kind: EventKind) -> Recorded {
        self.queue.push(task, Some(mono_ns), kind)
    }

    /// Nanoseconds since the run started, on the clock [`Recorder::record`] stamps with.
    pub fn elapsed_ns(&self) -> u64 {
        self.queue.elapsed_ns()
    }

    /// The run's origin on the real `CLOCK_MONOTONIC`, in nanoseconds
    /// ([`crate::clock::mono_ns`]): a reading `r` is `r - origin_ns()`
    /// into the run.
    pub fn origin_ns(&self) -> u64 {
        self.queue.origin_ns()
    }

    /// The instant the run's monotonic clock counts from.
    pub fn origin(&self) -> std::time::Instant {
        self.queue.origin()
    }

    /// Flight mode: freeze the ring (every event recorded before this
    /// call included) into a kept run directory and return it. Waits for
    /// the writer thread, at most [`KEEP_TIMEOUT`]; callable from any
    /// thread, a panic hook included.
    pub fn keep(&self, reason: &str) -> Result<PathBuf, WriteError> {
        let failed = |message: String| WriteError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(message),
        };
        if lock(&self.writer).is_none() {
            return Err(failed("the recording is closed".into()));
        }
        let (answer, wait) = std::sync::mpsc::channel();
        lock(&self.shared).keep = Some((reason.to_string(), answer));
        match wait.recv_timeout(KEEP_TIMEOUT) {
            Ok(result) => result.map_err(failed),
            Err(_) => {
                lock(&self.shared).keep = None;
                Err(failed(format!(
                    "the writer did not freeze the ring within {KEEP_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> RecorderStats {
        let counters = self.queue.counters();
        let progress = lock(&self.shared);
        RecorderStats {
            produced: counters.produced,
            queued: counters.queued,
            dropped: counters.dropped,
            after_close: counters.after_close,
            gaps: counters.gaps,
            written: progress.totals,
            write_outages: progress.outages,
            in_outage: progress.in_outage,
            write_error: progress.error.clone(),
            index_error: progress.index_error.clone(),
        }
    }

    /// Write everything queued, the footer, fsync, and stop the writer.
    /// Later records are dropped and counted. Calling it again returns the
    /// same result.
    ///
    /// Write failures do not make this fail: they are in the stats
    /// (`dropped`, `write_outages`, `write_error`) and in the log (gaps,
    /// or no footer when the disk never came back). It fails only if the
    /// writer thread panicked.
    pub fn close(&self) -> Result<RecorderStats, WriteError> {
        let mut closed = lock(&self.closed_stats);
        if let Some(result) = &*closed {
            return result.clone().map_err(|message| WriteError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(message),
            });
        }
        self.queue.close();
        let handle = lock(&self.writer).take().expect("joined only here");
        let outcome = handle.join().unwrap_or(Err(WriteError::WriterPanicked));
        let result = match outcome {
            Ok(totals) => {
                lock(&self.shared).totals = totals;
                Ok(self.stats())
            }
            Err(err) => Err(err),
        };
        *closed = Some(
            result
                .as_ref()
                .map(Clone::clone)
                .map_err(ToString::to_string),
        );
        result
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A spell of failed writes, from the first failure to the write that
/// worked again.
#[derive(Debug)]
struct Outage {
    since: Instant,
    retry_at: Instant,
    /// Events lost since it began (what the writer held and what the
    /// queue shed), for the recovery message.
    dropped_at_start: u64,
}

/// The writer thread: drain, write, repeat; on close, finish the segment.
///
/// A failed write starts an outage: the segment is cut back to its last
/// complete frame, the queue sheds every event (the service never waits)
/// into one pending `WriteFailed` gap, and one warning goes out through
/// `tracing`. Every `write_retry_interval` the writer lets events in again
/// and writes: the batch starts with the gap, which covers every seq from
/// the first one not on disk. If that works the outage is over; if not,
/// shedding goes on. An outage that lasts to close leaves the log without
/// a footer, so a reader reports where it stops.
/// Why a flight window cannot be kept during a write outage.
const OUTAGE_KEEP: &str = "the recorder cannot write (an outage: disk full?); nothing kept";

fn writer_loop(
    mut writer: LogWriter,
    queue: &Queue,
    shared: &Mutex<WriterProgress>,
    config: &WriterConfig,
) -> WriterOutcome {
    // Swapped with the queue's Vec on every drain, so the two buffers'
    // capacities are recycled and this one needs none to start with.
    let mut batch = Vec::new();
    // What the queue held when an outage began, freed here off its lock.
    let mut spill = Vec::new();
    let mut outage: Option<Outage> = None;
    let mut outages = 0u64;
    loop {
        // A keep asked for before this take covers every event recorded
        // before it was asked for: they are all in this take's batch.
        let keep = lock(shared).keep.take();
        let closing = queue.take(&mut batch, config.flush_interval);
        if let Some(current) = &outage {
            // Shedding: the queue drops events into the pending gap, so
            // this batch is normally empty; whatever is here is in the hole.
            queue.count_lost(batch.len() as u64);
            batch.clear();
            if !closing && Instant::now() < current.retry_at {
                if let Some((_, answer)) = keep {
                    let _ = answer.send(Err(OUTAGE_KEEP.into()));
                }
                continue;
            }
            // Try again: the next batch starts with the gap.
            queue.end_outage();
            queue.take(&mut batch, Duration::ZERO);
        }
        if !batch.is_empty() {
            match writer.write(&batch) {
                Ok(()) => {
                    if let Some(ended) = outage.take() {
                        let lost = queue.counters().dropped - ended.dropped_at_start;
                        tracing::info!(
                            lost_events = lost,
                            outage_ms = ended.since.elapsed().as_millis() as u64,
                            "deja recorder writes again; a gap in the log covers the events lost"
                        );
                        lock(shared).in_outage = false;
                    }
                }
                Err(err) => {
                    // Everything after the last complete frame is lost.
                    let on_disk = writer.totals().last_seq;
                    let lost = batch.iter().filter(|e| Some(e.seq) > on_disk).count();
                    let dropped_before = queue.counters().dropped;
                    queue.count_lost(lost as u64);
                    let first_lost = on_disk.map_or(0, |seq| seq + 1);
                    queue.begin_outage(first_lost, &mut spill);
                    let now = Instant::now();
                    match &mut outage {
                        Some(current) => {
                            current.retry_at = now + config.write_retry_interval;
                            tracing::debug!(error = %err, "deja recorder still cannot write");
                        }
                        None => {
                            outages += 1;
                            tracing::warn!(
                                error = %err,
                                retry_ms = config.write_retry_interval.as_millis() as u64,
                                "deja recorder cannot write; dropping events (counted, and marked by a gap in the log) until writing works again"
                            );
                            outage = Some(Outage {
                                since: now,
                                retry_at: now + config.write_retry_interval,
                                dropped_at_start: dropped_before,
                            });
                        }
                    }
                    let mut progress = lock(shared);
                    progress.error = Some(err.to_string());
                    progress.outages = outages;
                    progress.in_outage = true;
                }
            }
        }
        if let Some((reason, answer)) = keep {
            let result = match &outage {
                Some(_) => Err(OUTAGE_KEEP.into()),
                None => writer.keep(&reason).map_err(|err| err.to_string()),
            };
            let _ = answer.send(result);
        }
        lock(shared).totals = writer.totals();
        // Dropping the events here frees their payloads off the service's threads.
        batch.clear();
        spill.clear();
        if closing {
            return Ok(finish(writer, queue, shared, outage.is_some(), outages));
        }
    }
}

/// Close the run: footer, fsync, index (with the recorder's counts). A
/// run that ends in an outage, or whose footer cannot be written, is
/// abandoned without a footer: its reader reports an unclean end after the
/// last event on disk, and the index (if the disk takes it) says why.
fn finish(
    mut writer: LogWriter,
    queue: &Queue,
    shared: &Mutex<WriterProgress>,
    in_outage: bool,
    mut outages: u64,
) -> WriterTotals {
    let summary = |writer: &LogWriter, progress: &WriterProgress, outages, ended_in_outage| {
        let counters = queue.counters();
        RecorderSummary {
            events_produced: counters.produced,
            events_written: writer.totals().events,
            events_dropped: counters.dropped,
            events_after_close: counters.after_close,
            write_outages: outages,
            last_write_error: progress.error.clone(),
            ended_in_outage,
        }
    };
    if !in_outage {
        let note = summary(&writer, &lock(shared), outages, false);
        writer.set_recorder_summary(note);
        match writer.finish_in_place() {
            Ok(totals) => {
                if let Some(err) = writer.index_error() {
                    tracing::warn!(error = %err, "deja recorder cannot write the run's index; the log is complete");
                    lock(shared).index_error = Some(err.to_string());
                }
                return totals;
            }
            Err(err) => {
                outages += 1;
                tracing::warn!(error = %err, "deja recorder cannot close the log; it ends without a footer");
                let mut progress = lock(shared);
                progress.error = Some(err.to_string());
                progress.outages = outages;
            }
        }
    }
    let mut progress = lock(shared);
    progress.in_outage = true;
    let note = summary(&writer, &progress, outages, true);
    drop(progress);
    tracing::warn!(
        events_dropped = note.events_dropped,
        "deja recorder closed during a write outage; the log ends at the last event written"
    );
    writer.set_recorder_summary(note);
    writer.abandon()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, GapReason};
    use crate::reader::{LogEnd, RunReader};

    fn mark(i: u64) -> EventKind {
        EventKind::Mark {
            name: "m".into(),
            value: i.to_le_bytes().to_vec(),
        }
    }

    fn read_all(dir: &Path) -> (Vec<Event>, LogEnd) {
        let mut reader = RunReader::open(dir).expect("open");
        let events = reader
            .by_ref()
            .collect::<Result<Vec<_>, _>>()
            .expect("the log reads back without error");
        (events, reader.end().cloned().expect("ended"))
    }

    fn gaps(events: &[Event]) -> Vec<(u64, u64, GapReason)> {
        events
            .iter()
            .filter_map(|event| match event.kind {
                EventKind::Gap {
                    first_lost_seq,
                    lost,
                    reason,
                } => Some((first_lost_seq, lost, reason)),
                _ => None,
            })
            .collect()
    }

    fn faulty(plan: FaultPlan) -> WriterConfig {
        WriterConfig {
            flush_interval: Duration::from_millis(2),
            write_retry_interval: Duration::from_millis(20),
            faults: Some(Arc::new(plan)),
            ..WriterConfig::default()
        }
    }

    /// Longest a test records while waiting for the writer to reach a state.
    const WAIT_MAX: Duration = Duration::from_secs(10);

    /// Record marks (a few per millisecond) until `done` says so, for at
    /// most [`WAIT_MAX`]; returns how many.
    fn record_until(recorder: &Recorder, mut done: impl FnMut(&RecorderStats) -> bool) -> u64 {
        let started = Instant::now();
        let mut i = 0;
        while !done(&recorder.stats()) {
            assert!(started.elapsed() < WAIT_MAX, "{:?}", recorder.stats());
            for _ in 0..4 {
                recorder.record(TaskId::MAIN, mark(i));
                i += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        i
    }

    /// Issue 18: when only `index.json` cannot be written at close, the
    /// stats name that file and the log still ends clean with its footer
    /// (it used to be reported as "the log ends without a footer").
    #[test]
    fn an_index_that_cannot_be_written_at_close_is_named_and_the_log_is_clean() {
        let out = tempfile::tempdir().unwrap();
        let recorder = Recorder::create(
            out.path(),
            RunMeta::new("idx", "run"),
            WriterConfig::default(),
        )
        .unwrap();
        recorder.record(TaskId::MAIN, mark(0));
        // The index goes through `index.json.tmp`: a directory there
        // makes that one write fail.
        std::fs::create_dir(recorder.dir().join("index.json.tmp")).unwrap();
        let stats = recorder.close().unwrap();
        let error = stats.index_error.as_deref().expect("the index error");
        assert!(error.contains("index.json.tmp"), "{error}");
        assert!(!stats.in_outage, "{stats:?}");
        assert_eq!(stats.write_outages, 0, "{stats:?}");
        let (events, end) = read_all(recorder.dir());
        assert_eq!((events.len(), end), (1, LogEnd::Clean));
    }

    /// Issue 18: events of tasks still running when the recording closed
    /// (at the service's exit) are not losses: `deja record` and `deja
    /// stats` must not call them dropped.
    #[test]
    fn events_after_close_are_counted_apart_from_losses() {
        let out = tempfile::tempdir().unwrap();
        let recorder = Recorder::create(
            out.path(),
            RunMeta::new("late", "run"),
            WriterConfig::default(),
        )
        .unwrap();
        recorder.record(TaskId::MAIN, EventKind::ClockMono { ns: 1 });
        let stats = recorder.close().unwrap();
        for _ in 0..4 {
            recorder.record(TaskId(3), EventKind::ClockMono { ns: 2 });
        }
        let after = recorder.stats();
        assert_eq!((after.dropped, after.after_close), (0, 4), "{after:?}");
        assert_eq!(after.produced, stats.produced, "{after:?}");
        assert_eq!(after.produced, after.written.events + after.dropped);
        let summary = super::summary::read_recorder_summary(recorder.dir()).unwrap();
        assert_eq!(summary.events_dropped, 0);
    }

    #[test]
    fn a_disk_that_fills_then_frees_up_leaves_one_write_failed_gap() {
        let out = tempfile::tempdir().unwrap();
        let plan = FaultPlan::disk_full_after(4 << 10).fail_for(Duration::from_millis(150));
        let config = faulty(plan);
        let plan = Arc::clone(config.faults.as_ref().unwrap());
        let recorder = Recorder::create(out.path(), RunMeta::new("full", "run"), config).unwrap();
        let mut recorded = record_until(&recorder, |stats| stats.in_outage);
        recorded += record_until(&recorder, |stats| !stats.in_outage);
        let written = recorder.stats().written.events;
        recorded += record_until(&recorder, |stats| stats.written.events > written + 100);
        let stats = recorder
            .close()
            .expect("a write outage does not fail close");
        assert!(plan.injected() >= 2, "the disk failed more than one try");
        assert_eq!(stats.write_outages, 1, "{stats:?}");
        assert!(!stats.in_outage);
        assert!(stats
            .write_error
            .as_deref()
            .unwrap()
            .contains("No space left"));
        assert_eq!(stats.produced, stats.written.events + stats.dropped);

        let (events, end) = read_all(recorder.dir());
        assert_eq!(end, LogEnd::Clean);
        assert_eq!(events.len() as u64, stats.written.events);
        let gaps = gaps(&events);
        assert_eq!(gaps.len(), 1, "one outage, one gap: {gaps:?}");
        assert_eq!(gaps[0].2, GapReason::WriteFailed);
        assert_eq!(gaps[0].1, stats.dropped, "the gap covers every lost event");
        assert!(
            stats.gaps >= 2,
            "the first try after the failure failed too"
        );
        assert_eq!(
            stats.produced,
            recorded + stats.gaps,
            "every mark plus each try's gap (the failed tries' gaps are in the hole)"
        );
        assert_eq!(events.last().unwrap().seq + 1, stats.produced);
        let summary = read_recorder_summary(recorder.dir()).expect("index summary");
        assert_eq!(summary.events_dropped, stats.dropped);
        assert_eq!(summary.write_outages, 1);
        assert!(!summary.ended_in_outage);
    }

    #[test]
    fn an_outage_that_lasts_to_close_ends_the_log_unclean_and_counts_the_tail() {
        let out = tempfile::tempdir().unwrap();
        let config = faulty(FaultPlan::disk_full_after(4 << 10).with_errno(libc::EIO));
        let recorder = Recorder::create(out.path(), RunMeta::new("full", "run"), config).unwrap();
        let recorded = record_until(&recorder, |stats| stats.in_outage);
        let stats = recorder
            .close()
            .expect("a write outage does not fail close");
        assert_eq!(stats.write_outages, 1);
        assert!(stats.in_outage);
        assert_eq!(stats.produced, stats.written.events + stats.dropped);
        assert!(stats.dropped > 0);

        let (events, end) = read_all(recorder.dir());
        assert_eq!(events.len() as u64, stats.written.events);
        assert!(gaps(&events).is_empty());
        let last = events.last().map(|event| event.seq);
        assert!(
            matches!(end, LogEnd::Unclean { last_seq, .. } if last_seq == last),
            "{end:?}"
        );
        // Every recorded mark is on disk or dropped (the failed gap tries
        // took seqs too, and are dropped with the rest).
        assert!(stats.produced >= recorded);
        let summary = read_recorder_summary(recorder.dir()).expect("index summary");
        assert!(summary.ended_in_outage);
        assert_eq!(summary.events_dropped, stats.dropped);
    }

    #[test]
    fn a_slow_disk_makes_the_queue_overflow_into_queue_full_gaps() {
        let out = tempfile::tempdir().unwrap();
        let config = WriterConfig {
            queue_events_max: 64,
            ..faulty(FaultPlan::slow(Duration::from_millis(5)))
        };
        let recorder = Recorder::create(out.path(), RunMeta::new("slow", "run"), config).unwrap();
        for i in 0..20_000 {
            recorder.record(TaskId::MAIN, mark(i));
        }
        let stats = recorder.close().unwrap();
        assert!(
            stats.dropped > 0,
            "a 64-event queue behind a slow disk overflows"
        );
        assert_eq!(stats.write_outages, 0);
        assert_eq!(stats.produced, stats.written.events + stats.dropped);
        let (events, end) = read_all(recorder.dir());
        assert_eq!(end, LogEnd::Clean);
        let gaps = gaps(&events);
        assert!(gaps.iter().all(|gap| gap.2 == GapReason::QueueFull));
        assert_eq!(gaps.iter().map(|gap| gap.1).sum::<u64>(), stats.dropped);
    }

    /// Fill the disk at every offset of a small run with rotations, let it
    /// free up, and go on: whatever record the failure cut (header, frame,
    /// footer, fsync), the run reads back clean with the hole covered.
    #[test]
    fn a_failure_at_any_byte_is_repaired_and_the_run_reads_clean() {
        let mut offsets_tried = 0;
        for limit in (40..3_000).step_by(23) {
            let out = tempfile::tempdir().unwrap();
            let plan =
                Arc::new(FaultPlan::disk_full_after(limit).fail_for(Duration::from_millis(1)));
            let config = WriterConfig {
                segment_bytes_max: 300,
                faults: Some(Arc::clone(&plan)),
                ..WriterConfig::default()
            };
            let Ok(mut writer) = LogWriter::create(out.path(), RunMeta::new("cut", "run"), config)
            else {
                continue; // the first header did not fit: Recorder::create fails
            };
            let dir = writer.dir().to_path_buf();
            let mut seq = 0;
            let mut failed = false;
            while seq < 60 {
                let mut batch = Vec::new();
                if failed {
                    std::thread::sleep(Duration::from_millis(2));
                    let first = writer.totals().last_seq.map_or(0, |last| last + 1);
                    batch.push(Event {
                        seq,
                        task: TaskId::MAIN,
                        mono_ns: seq,
                        kind: EventKind::Gap {
                            first_lost_seq: first,
                            lost: seq - first,
                            reason: GapReason::WriteFailed,
                        },
                    });
                    seq += 1;
                }
                batch.push(Event {
                    seq,
                    task: TaskId::MAIN,
                    mono_ns: seq,
                    kind: mark(seq),
                });
                seq += 1;
                failed = writer.write(&batch).is_err();
            }
            assert!(!failed || plan.injected() > 0);
            writer
                .finish()
                .unwrap_or_else(|err| panic!("limit {limit}: {err}"));
            let (events, end) = read_all(&dir);
            assert_eq!(end, LogEnd::Clean, "limit {limit}");
            assert_eq!(events.last().unwrap().seq, 59, "limit {limit}");
            offsets_tried += usize::from(plan.injected() > 0);
        }
        assert!(offsets_tried > 100, "{offsets_tried} runs saw a failure");
    }
}
