//! Faults never hurt the service: a full or failing disk, an unwritable
//! output directory and a writer that falls behind leave every response
//! intact, and the log says honestly what it lost (gaps with the right
//! reason, every seq accounted for, the recorder's counts in index.json).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::{TcpListener, TcpStream};
use deja::recorder::writer::{read_recorder_summary, FaultPlan, RecorderSummary};
use deja::recorder::{Event, EventKind, GapReason, LogEnd, RunReader, WriterConfig};
use deja::time::{sleep, timeout, Duration};
// The tests' own stopwatches: not the service's clock, so not recorded.
use deja::{Builder, Mode};
use deja_tests::e2e::{run_bounded, workspace_bin, CHILD_TIMEOUT};
use std::time::Instant;

/// Longest one request may take before the test calls the service hurt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a service keeps serving while a test waits for a fault to
/// start or end.
const RUN_MAX: Duration = Duration::from_secs(20);
/// Request size: random bytes, so the log does not compress them away.
const REQUEST_BYTES: usize = 512;

/// Deterministic, incompressible bytes (xorshift64).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An echo server and one client in one deja runtime. The client sends
/// requests until `done(i)` says stop (bounded by [`RUN_MAX`]) and checks
/// every answer; counts those answered correctly in `answered_out`.
async fn echo_until(
    mut done: impl FnMut(usize) -> bool + Send,
    answered_out: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = deja::spawn(async move {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = vec![0u8; 4 * REQUEST_BYTES];
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            conn.write_all(&buf[..n]).await?;
        }
    });
    let mut stream = TcpStream::connect(addr).await?;
    let started = Instant::now();
    let mut answered = 0;
    while !done(answered) {
        assert!(started.elapsed() < RUN_MAX, "the fault never came or went");
        let request = noise(answered as u64, REQUEST_BYTES);
        stream.write_all(&request).await?;
        let mut back = vec![0u8; REQUEST_BYTES];
        timeout(REQUEST_TIMEOUT, stream.read_exact(&mut back))
            .await
            .expect("the service answers in time")?;
        assert_eq!(back, request, "request {answered} answered wrongly");
        answered += 1;
        answered_out.store(answered, Ordering::Relaxed);
        sleep(Duration::from_millis(1)).await;
    }
    drop(stream);
    server.await.expect("server task")
}

/// Record `echo_until(done)` with `config`; the run directory and how many
/// requests were answered.
fn record(
    out: &Path,
    config: WriterConfig,
    done: impl FnMut(usize) -> bool + Send,
) -> (Option<PathBuf>, usize) {
    let mut runtime = Builder::new()
        .mode(Mode::Record)
        .trace_dir(out)
        .service("echo")
        .worker_threads(2)
        .writer_config(config)
        .build()
        .expect("a runtime starts whatever the disk does");
    let dir = runtime.run_dir().map(Path::to_path_buf);
    let answered = Arc::new(AtomicUsize::new(0));
    runtime
        .block_on(echo_until(done, Arc::clone(&answered)))
        .expect("the run completes")
        .expect("the service never saw an error");
    (dir, answered.load(Ordering::Relaxed))
}

/// The log's events (read without error) and how it ends.
fn read_log(dir: &Path) -> (Vec<Event>, LogEnd) {
    let mut reader = RunReader::open(dir).expect("open the run");
    let events = reader
        .by_ref()
        .collect::<Result<Vec<_>, _>>()
        .expect("the log reads back without error");
    (events, reader.end().cloned().expect("ended"))
}

/// Gap reasons and what they account for.
fn gaps(events: &[Event]) -> Vec<(GapReason, u64)> {
    events
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::Gap { reason, lost, .. } => Some((reason, lost)),
            _ => None,
        })
        .collect()
}

/// Every seq is an event on disk or lost: written + dropped = produced,
/// and the gaps account for every drop that a later event follows.
fn assert_accounted(events: &[Event], summary: &RecorderSummary) {
    assert_eq!(
        summary.events_written + summary.events_dropped,
        summary.events_produced,
        "{summary:?}"
    );
    assert_eq!(events.len() as u64, summary.events_written, "{summary:?}");
    let in_gaps: u64 = gaps(events).iter().map(|(_, lost)| lost).sum();
    let last = events.last().map_or(0, |event| event.seq + 1);
    assert_eq!(
        events.len() as u64 + in_gaps,
        last,
        "seqs 0..{last} covered"
    );
    if !summary.ended_in_outage {
        // Only the exit's own close can drop after the last event.
        assert_eq!(in_gaps, summary.events_dropped, "{summary:?}");
    }
}

fn faulty(plan: &Arc<FaultPlan>) -> WriterConfig {
    WriterConfig {
        write_retry_interval: std::time::Duration::from_millis(50),
        faults: Some(Arc::clone(plan)),
        ..WriterConfig::default()
    }
}

#[test]
fn a_disk_that_fills_and_frees_up_costs_the_service_nothing_and_the_log_one_gap() {
    let out = tempfile::tempdir().unwrap();
    let plan = Arc::new(
        FaultPlan::disk_full_after(32 << 10).fail_for(std::time::Duration::from_millis(300)),
    );
    // Serve until the disk has failed, then for 600 ms more (past the
    // outage and a few retries).
    let mut failed_at: Option<Instant> = None;
    let watch = Arc::clone(&plan);
    let (dir, answered) = record(out.path(), faulty(&plan), move |_| {
        if watch.injected() > 0 {
            failed_at.get_or_insert_with(Instant::now);
        }
        failed_at.is_some_and(|at| at.elapsed() > Duration::from_millis(600))
    });
    assert!(plan.injected() >= 2, "the disk refused the first try too");
    let dir = dir.expect("recording");
    let (events, end) = read_log(&dir);
    assert_eq!(end, LogEnd::Clean, "the disk came back: a clean close");
    let summary = read_recorder_summary(&dir).expect("recorder counts in index.json");
    assert_eq!(summary.write_outages, 1, "{summary:?}");
    assert!(summary.events_dropped > 0);
    assert!(summary.last_write_error.unwrap().contains("No space left"));
    let gaps = gaps(&events);
    assert_eq!(gaps.len(), 1, "one outage, one gap: {gaps:?}");
    assert_eq!(gaps[0].0, GapReason::WriteFailed);
    assert_accounted(&events, &read_recorder_summary(&dir).unwrap());
    assert!(
        matches!(events.last().unwrap().kind, EventKind::Exit { code: 0 }),
        "recording resumed: the exit is in the log"
    );
    eprintln!(
        "answered {answered} requests; lost {} of {} events in one gap",
        gaps[0].1, summary.events_produced
    );
}

#[test]
fn a_disk_that_never_comes_back_ends_the_log_unclean_and_the_service_still_exits_0() {
    let out = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::disk_full_after(32 << 10).with_errno(libc::EIO));
    let watch = Arc::clone(&plan);
    let mut failed_at: Option<Instant> = None;
    let (dir, _) = record(out.path(), faulty(&plan), move |_| {
        if watch.injected() > 0 {
            failed_at.get_or_insert_with(Instant::now);
        }
        failed_at.is_some_and(|at| at.elapsed() > Duration::from_millis(300))
    });
    let dir = dir.expect("recording");
    let (events, end) = read_log(&dir);
    assert!(
        matches!(&end, LogEnd::Unclean { last_seq, .. } if *last_seq == events.last().map(|e| e.seq)),
        "{end:?}"
    );
    assert!(gaps(&events).is_empty(), "no write worked after the outage");
    let summary = read_recorder_summary(&dir).expect("index.json is not on the failing disk");
    assert!(summary.ended_in_outage);
    assert!(summary
        .last_write_error
        .as_deref()
        .unwrap()
        .contains("Input/output"));
    assert_accounted(&events, &summary);
}

#[test]
fn a_slow_disk_makes_queue_full_gaps_not_slow_answers() {
    let out = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::slow(std::time::Duration::from_millis(30)));
    let config = WriterConfig {
        queue_events_max: 64,
        ..faulty(&plan)
    };
    let started = Instant::now();
    let (dir, answered) = record(out.path(), config, |answered| answered == 400);
    let took = started.elapsed();
    let dir = dir.expect("recording");
    let (events, end) = read_log(&dir);
    assert_eq!(end, LogEnd::Clean);
    let gaps = gaps(&events);
    assert!(
        !gaps.is_empty(),
        "a 64-event queue behind a 30 ms disk overflows"
    );
    assert!(gaps
        .iter()
        .all(|(reason, _)| *reason == GapReason::QueueFull));
    let summary = read_recorder_summary(&dir).unwrap();
    assert_eq!(summary.write_outages, 0);
    assert_accounted(&events, &summary);
    eprintln!(
        "{answered} requests in {took:?} behind a 30 ms/write disk; {} of {} events lost in {} gaps",
        summary.events_dropped,
        summary.events_produced,
        gaps.len()
    );
}

/// A directory below a regular file cannot be created, even by root
/// (ENOTDIR), unlike one without write permission.
fn unwritable_out(scratch: &Path) -> PathBuf {
    let file = scratch.join("not-a-directory");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(b"x"))
        .unwrap();
    file.join("runs")
}

#[test]
fn an_unwritable_output_directory_runs_the_service_live() {
    let scratch = tempfile::tempdir().unwrap();
    let out = unwritable_out(scratch.path());
    let runtime = Builder::new()
        .mode(Mode::Record)
        .trace_dir(&out)
        .service("echo")
        .build()
        .expect("cannot record is not cannot start");
    assert_eq!(runtime.mode(), Mode::Live);
    assert!(runtime.run_dir().is_none());
    drop(runtime);
    let (dir, answered) = record(&out, WriterConfig::default(), |answered| answered == 50);
    assert_eq!((dir, answered), (None, 50));
}

#[test]
fn deja_record_into_an_unwritable_directory_serves_kv_live_and_says_so() {
    let scratch = tempfile::tempdir().unwrap();
    let out = unwritable_out(scratch.path());
    let stderr_path = scratch.path().join("record.stderr");
    let mut record = Command::new(workspace_bin("deja"));
    record
        .arg("record")
        .arg("--out")
        .arg(&out)
        .arg("--")
        .arg(workspace_bin("kv"))
        .args(["--listen", "127.0.0.1:0", "--max-conns", "4"])
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let service = deja_fixtures::kv_server::KvServer::start(record).expect("kv starts");
    let load = run_bounded(Command::new(workspace_bin("kv-load")).args([
        "--addr",
        &service.addr().to_string(),
        "--clients",
        "4",
        "--requests",
        "50",
        "--seed",
        "3",
    ]));
    let load_out = String::from_utf8_lossy(&load.stdout);
    assert!(
        load.status.success() && load_out.contains("errors=0"),
        "{load_out}"
    );
    let mut service = service;
    let status = service
        .wait_timeout(CHILD_TIMEOUT)
        .expect("waiting for deja record")
        .expect("deja record exits once kv does");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("deja: warning: cannot record"), "{stderr}");
    assert!(
        stderr.contains("ran live, nothing was recorded"),
        "{stderr}"
    );
}

/// Size of the real filesystem the tmpfs test records into.
const TMPFS_BYTES: u64 = 512 << 10;
/// Room left beside the ballast: a few frames' worth, so the recording
/// runs into a real ENOSPC within a second.
const TMPFS_ROOM_BYTES: u64 = 48 << 10;

/// A small tmpfs, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount one, or say why not (not root, no mount permission).
    fn mount() -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let size = format!("size={TMPFS_BYTES}");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(dir.path())
            .status()
            .map_err(|err| format!("mount: {err}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free bytes, from statvfs.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string and a zeroed out-parameter.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return 0;
        }
        stat.f_bavail as u64 * stat.f_bsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

#[test]
fn a_real_full_tmpfs_that_frees_up_costs_the_service_nothing() {
    let tmpfs = match Tmpfs::mount() {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("skipped: cannot mount a {TMPFS_BYTES}-byte tmpfs ({why}); the FaultPlan tests cover the same paths");
            return;
        }
    };
    let ballast = tmpfs.path().join("ballast");
    std::fs::write(
        &ballast,
        vec![0u8; (tmpfs.free() - TMPFS_ROOM_BYTES) as usize],
    )
    .unwrap();
    let out = tmpfs.path().join("runs");
    let config = WriterConfig {
        write_retry_interval: std::time::Duration::from_millis(100),
        ..WriterConfig::default()
    };
    // Serve until the disk is full and the writer has met it, free the
    // ballast, and serve 600 ms more.
    let mut full_at: Option<Instant> = None;
    let mut freed_at: Option<Instant> = None;
    let (dir, answered) = record(&out, config, |_| {
        if full_at.is_none() && tmpfs.free() == 0 {
            full_at = Some(Instant::now());
        }
        if freed_at.is_none() && full_at.is_some_and(|at| at.elapsed() > Duration::from_millis(200))
        {
            std::fs::remove_file(&ballast).unwrap();
            freed_at = Some(Instant::now());
        }
        freed_at.is_some_and(|at| at.elapsed() > Duration::from_millis(600))
    });
    let dir = dir.expect("recording");
    let (events, end) = read_log(&dir);
    assert_eq!(end, LogEnd::Clean);
    let summary = read_recorder_summary(&dir).expect("recorder counts");
    // Usually one outage; a frame that fits in the last free bytes can
    // end it early and the next one starts another, each with its gap.
    assert!(summary.write_outages >= 1, "{summary:?}");
    assert!(summary
        .last_write_error
        .as_deref()
        .unwrap()
        .contains("No space left"));
    let gaps = gaps(&events);
    assert!(
        gaps.iter()
            .any(|(reason, _)| *reason == GapReason::WriteFailed),
        "{gaps:?}"
    );
    assert_accounted(&events, &summary);

    // deja stats shows it, as text and JSON.
    let stats = run_bounded(Command::new(workspace_bin("deja")).arg("stats").arg(&dir));
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.status.success(), "{text}");
    let outages = summary.write_outages;
    let write_failed_gaps = gaps
        .iter()
        .filter(|(reason, _)| *reason == GapReason::WriteFailed)
        .count();
    assert!(
        text.contains(&format!(
            "write failed: {write_failed_gaps} gap{}",
            if write_failed_gaps == 1 { "" } else { "s" }
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "dropped {} of {} events, {outages} write outage",
            summary.events_dropped, summary.events_produced
        )),
        "{text}"
    );
    let json = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["stats", "--json"])
            .arg(&dir),
    );
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        json["gaps_by_reason"]["write_failed"]["gaps"],
        write_failed_gaps as u64
    );
    assert_eq!(json["recorder"]["events_dropped"], summary.events_dropped);
    eprintln!("{answered} requests answered; deja stats:\n{text}");
}
