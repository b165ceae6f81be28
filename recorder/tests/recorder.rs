//! The `Recorder` under real threads: order, drops and gaps, flushing, close.

use std::time::{Duration, Instant};

use deja_recorder::{
    EventKind, LogEnd, Recorded, Recorder, RunMeta, RunReader, TaskId, WriterConfig,
};

fn mark(i: u64) -> EventKind {
    EventKind::Mark {
        name: "i".into(),
        value: i.to_le_bytes().to_vec(),
    }
}

fn read_all(dir: &std::path::Path) -> (Vec<deja_recorder::Event>, LogEnd) {
    let mut reader = RunReader::open(dir).expect("open");
    let events = reader
        .by_ref()
        .collect::<Result<Vec<_>, _>>()
        .expect("read");
    (events, reader.end().cloned().expect("end"))
}

#[test]
fn concurrent_threads_get_a_total_order_the_log_keeps() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 20_000;
    let out = tempfile::tempdir().unwrap();
    let recorder = Recorder::create(
        out.path(),
        RunMeta::new("threads", "run"),
        WriterConfig::default(),
    )
    .unwrap();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let recorder = &recorder;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    recorder.record(TaskId(thread), mark(i));
                }
            });
        }
    });
    let stats = recorder.close().unwrap();
    let (events, end) = read_all(recorder.dir());
    assert_eq!(end, LogEnd::Clean);
    assert_eq!(events.len() as u64, stats.queued);
    assert_eq!(
        stats.queued + stats.dropped,
        THREADS * PER_THREAD + stats.gaps
    );
    // Each thread's own events appear in the order it recorded them, and
    // monotonic time never goes backwards along seq order.
    let mut next_per_thread = [0u64; THREADS as usize];
    let mut last_ns = 0;
    for event in &events {
        assert!(
            event.mono_ns >= last_ns,
            "time went backwards at seq {}",
            event.seq
        );
        last_ns = event.mono_ns;
        if let EventKind::Mark { value, .. } = &event.kind {
            let i = u64::from_le_bytes(value[..].try_into().unwrap());
            let next = &mut next_per_thread[event.task.0 as usize];
            assert!(
                i >= *next,
                "thread {} out of order at seq {}",
                event.task,
                event.seq
            );
            *next = i + 1;
        }
    }
}

#[test]
fn a_tiny_queue_drops_counts_and_the_gaps_account_for_every_lost_seq() {
    let out = tempfile::tempdir().unwrap();
    let config = WriterConfig {
        queue_events_max: 8,
        flush_interval: Duration::from_millis(20),
        ..WriterConfig::default()
    };
    let recorder = Recorder::create(out.path(), RunMeta::new("tiny", "run"), config).unwrap();
    let mut dropped = 0;
    for i in 0..50_000u64 {
        if let Recorded::Dropped(_) = recorder.record(TaskId::MAIN, mark(i)) {
            dropped += 1;
        }
    }
    let stats = recorder.close().unwrap();
    assert!(
        dropped > 0,
        "an 8-event queue must overflow under 50 K events"
    );
    assert_eq!(stats.dropped, dropped);
    let (events, end) = read_all(recorder.dir());
    assert_eq!(end, LogEnd::Clean);
    let (mut gaps, mut lost) = (0, 0);
    for event in &events {
        if let EventKind::Gap { lost: n, .. } = event.kind {
            gaps += 1;
            lost += n;
        }
    }
    // The reader already checked that each gap covers exactly its hole.
    assert_eq!(gaps, stats.gaps);
    assert_eq!(lost, dropped, "every dropped event is inside some gap");
    assert_eq!(
        events.last().unwrap().seq + 1,
        50_000 + gaps,
        "every seq is an event or lost"
    );
}

#[test]
fn events_reach_disk_without_close_within_the_flush_interval() {
    let out = tempfile::tempdir().unwrap();
    let recorder = Recorder::create(
        out.path(),
        RunMeta::new("flush", "run"),
        WriterConfig::default(),
    )
    .unwrap();
    recorder.record(TaskId::MAIN, mark(1));
    let started = Instant::now();
    // Bounded poll: the design allows 100 ms; give a loaded CI box 20x that.
    let seen = loop {
        let mut reader = RunReader::open(recorder.dir()).unwrap();
        let events: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        if !events.is_empty() {
            assert!(matches!(
                reader.end(),
                Some(LogEnd::Unclean {
                    last_seq: Some(0),
                    ..
                })
            ));
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "event not flushed after 2 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("first event visible on disk after {seen:?}");
    recorder.close().unwrap();
}

#[test]
fn close_is_idempotent_and_later_events_are_counted_after_close() {
    let out = tempfile::tempdir().unwrap();
    let recorder = Recorder::create(
        out.path(),
        RunMeta::new("close", "run"),
        WriterConfig::default(),
    )
    .unwrap();
    recorder.record(TaskId::MAIN, mark(0));
    let first = recorder.close().unwrap();
    assert!(matches!(
        recorder.record(TaskId::MAIN, mark(1)),
        Recorded::Dropped(1)
    ));
    let second = recorder.close().unwrap();
    assert_eq!(first, second);
    // Not lost from the run (it ended at close): counted apart (issue 18).
    assert_eq!(
        (recorder.stats().dropped, recorder.stats().after_close),
        (0, 1)
    );
    let (events, end) = read_all(recorder.dir());
    assert_eq!((events.len(), end), (1, LogEnd::Clean));
}

#[test]
fn run_directory_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let out = tempfile::tempdir().unwrap();
    let recorder = Recorder::create(
        out.path(),
        RunMeta::new("perm", "run"),
        WriterConfig::default(),
    )
    .unwrap();
    recorder.close().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(recorder.dir()), 0o700);
    assert_eq!(mode(&recorder.dir().join("00000000.deja")), 0o600);
}

#[test]
fn an_unwritable_output_is_an_error_naming_the_path() {
    let err = Recorder::create(
        std::path::Path::new("/proc/deja-cannot-write-here"),
        RunMeta::new("x", "y"),
        WriterConfig::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/proc/deja-cannot-write-here"),
        "{err}"
    );
}

/// A FIFO where a segment belongs is refused at once: opening it plainly
/// would wait for a writer, and every command would hang.
#[test]
fn a_fifo_in_place_of_a_segment_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("00000000.deja");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let run = dir.path().to_path_buf();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(deja_recorder::RunReader::open(&run).map(|_| ()));
    });
    let outcome = result
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the reader answers instead of hanging");
    let err = outcome.expect_err("a FIFO is no segment");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

/// A run whose first frame was cut out whole (no checksum covers that)
/// reads as corruption naming the missing start, not as a good log.
#[test]
fn a_run_that_does_not_start_at_seq_zero_is_corrupt() {
    use deja_recorder::{Event, EventKind, LogWriter, RunMeta, TaskId, WriterConfig};
    let out = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::create(
        out.path(),
        RunMeta::new("svc", "run"),
        WriterConfig::default(),
    )
    .unwrap();
    let event = |seq| Event {
        seq,
        task: TaskId::MAIN,
        mono_ns: seq,
        kind: EventKind::ClockMono { ns: seq },
    };
    writer.write(&[event(10), event(11)]).unwrap();
    let dir = writer.dir().to_path_buf();
    writer.finish().unwrap();
    let err = deja_recorder::RunReader::open(&dir)
        .unwrap()
        .find_map(Result::err)
        .expect("the missing start is an error");
    assert!(err.is_corruption(), "{err}");
    assert!(err.to_string().contains("not #0"), "{err}");
}

/// Issue 18: a run directory killed before its first segment reads as an
/// empty run that ended unclean (like a 0-byte segment), not as "not a run
/// directory"; a directory holding something else is still refused.
#[test]
fn an_empty_run_directory_reads_as_an_empty_run() {
    let out = tempfile::tempdir().unwrap();
    let empty = out.path().join("svc-20260101T000000Z-0000");
    std::fs::create_dir(&empty).unwrap();
    let (events, end) = read_all(&empty);
    assert!(events.is_empty());
    let warning = end.warning().expect("not a clean end");
    assert!(warning.starts_with("empty run: "), "{warning}");
    assert!(deja_recorder::RunReader::open(&empty)
        .unwrap()
        .header()
        .is_none());

    // A 0-byte first segment says the same.
    let zero = out.path().join("zero");
    std::fs::create_dir(&zero).unwrap();
    std::fs::write(zero.join("00000000.deja"), b"").unwrap();
    let (events, end) = read_all(&zero);
    assert!(events.is_empty());
    assert!(end.warning().unwrap().starts_with("empty run: "));

    let other = out.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    assert!(matches!(
        deja_recorder::RunReader::open(&other),
        Err(deja_recorder::ReadError::NoSegments { .. })
    ));
}
