//! Writing a run: the [`Recorder`] the service's threads push into, and the
//! [`LogWriter`] its background thread drives.
//!
//! Memory is bounded: the queue holds at most [`QUEUE_EVENTS_MAX`] events
//! and [`QUEUE_PAYLOAD_BYTES_MAX`] payload bytes, and the writer holds at most
//! one more such batch while it encodes it, plus one frame's buffers. With
//! the defaults that is under 64 MiB in the worst case and a few MiB in
//! the common one.

pub mod flight;
mod log_writer;
mod queue;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use log_writer::{LogWriter, WriterTotals, INDEX_FILE_NAME};
use queue::Queue;
pub use queue::Recorded;

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Events accepted into the queue (gap events included).
    pub queued: u64,
    /// Events lost: queue full, too large, after close, or not writable.
    pub dropped: u64,
    /// `Gap` events queued.
    pub gaps: u64,
    /// What the writer has put on disk (complete after [`Recorder::close`]).
    pub written: WriterTotals,
    /// The first write error, if the writer stopped writing.
    pub write_error: Option<String>,
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
    /// A pending [`Recorder::keep`]: its reason and where to answer.
    keep: Option<(String, std::sync::mpsc::Sender<Result<PathBuf, String>>)>,
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
                .spawn(move || writer_loop(writer, &queue, &shared, config.flush_interval))
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
            queued: counters.queued,
            dropped: counters.dropped,
            gaps: counters.gaps,
            written: progress.totals,
            write_error: progress.error.clone(),
        }
    }

    /// Write everything queued, the footer, fsync, and stop the writer.
    /// Later records are dropped and counted. Calling it again returns the
    /// same result.
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

/// The writer thread: drain, write, repeat; on close, finish the segment.
/// After a write error it keeps draining (so the service never notices)
/// and counts what it could not write.
fn writer_loop(
    mut writer: LogWriter,
    queue: &Queue,
    shared: &Mutex<WriterProgress>,
    interval: Duration,
) -> WriterOutcome {
    // Swapped with the queue's Vec on every drain, so the two buffers'
    // capacities are recycled and this one needs none to start with.
    let mut batch = Vec::new();
    let mut failed: Option<WriteError> = None;
    loop {
        let closing = queue.take(&mut batch, interval);
        if failed.is_none() && !batch.is_empty() {
            if let Err(err) = writer.write(&batch) {
                tracing::warn!(error = %err, "deja recorder cannot write; dropping events from now on");
                lock(shared).error = Some(err.to_string());
                failed = Some(err);
            }
        }
        if failed.is_some() {
            queue.count_lost(batch.len() as u64);
        }
        let keep = lock(shared).keep.take();
        if let Some((reason, answer)) = keep {
            let result = match &failed {
                Some(err) => Err(format!("the recorder stopped writing: {err}")),
                None => writer.keep(&reason).map_err(|err| err.to_string()),
            };
            let _ = answer.send(result);
        }
        lock(shared).totals = writer.totals();
        // Dropping the events here frees their payloads off the service's threads.
        batch.clear();
        if closing {
            return match failed {
                Some(err) => Err(err),
                None => writer.finish(),
            };
        }
    }
}
