//! Benchmarks of deja's log: what recording costs the service, and how fast
//! the writer and the reader go.
//!
//! Every group uses the same synthetic mix, per 100 events: 40 clock
//! readings (20 `ClockMono`, 20 `ClockWall`), 10 `TimerFired`, 25 `TcpRead`
//! of 64 B to 4 KiB (log-uniform sizes) cut from HTTP/1.1 requests and
//! responses with JSON bodies, 15 `TcpWrite` (length and XXH3 hash, bytes
//! not kept), 5 named `Spawn`s and 5 `Mark`s.
//!
//! - `enqueue/mix`: [`Recorder::record`] on the service's thread, building
//!   the kind included (the read's `buf.to_vec()`, the write's hash, the
//!   names' `String`s), into a real recorder whose background writer drains
//!   concurrently, at the design's rate of 1 M events/s: 1000-event chunks
//!   are timed, one per millisecond. Target: median ≤ 100 ns/event.
//! - `enqueue/mix_saturated`: the same as fast as the writer keeps up: the
//!   chunks follow each other, and the bench waits (untimed) only while
//!   more than 40 Ki events are in flight. The writer is then always busy,
//!   encoding and freeing what the service allocated.
//! - `enqueue/push_only`: as `mix_saturated` with the kinds built beforehand
//!   (untimed): the recorder's own cost (lock, seq, clock read, `Vec::push`).
//!
//! - `hot_path/recorder_record`, `hot_path/sync_channel_send`,
//!   `hot_path/mutex_vecdeque_push`: the recorder's hot path (as
//!   `push_only`) side by side with a plain enqueue of the same prebuilt
//!   events: a `sync_channel` send (a consumer thread receives them one by
//!   one) and a `Mutex<VecDeque>` push (a consumer swaps the deque out at
//!   1 Ki events or every 10 ms, as the writer does). The difference is
//!   what deja adds per event: seq, clock read, gap check, and sharing the
//!   machine with a writer that encodes and compresses.
//!
//!   No enqueue bench ever fills the queue, so the cheap drop path is never
//!   measured; each prints the recorder's stats, drops included. Their runs
//!   go to `/dev/shm` when it exists (`$TMPDIR` otherwise), so that disk
//!   writeback does not compete for the CPU with the two threads measured.
//! - `writer/level/N`: [`LogWriter::write`] of 64 Ki-event batches on the
//!   bench's thread (encode, zstd level N, checksums, `write(2)` into the
//!   page cache; rotation and its fsync when a segment fills). Prints
//!   events/s, MB/s, bytes on disk per event and the compression ratio.
//!   Target: ≥ 1 M events/s at the default level (1).
//! - `reader/open_and_iterate`: [`RunReader::open`] and iterating a run of
//!   500 K events written at level 1 (from the page cache), every check
//!   included. Target: ≥ 2 M events/s.
//!
//! Run with `cargo bench -p deja-recorder --bench log` (about 70 s of
//! measuring); temp files go under `$TMPDIR` (and `/dev/shm`), at most
//! about 200 MB at a time. Criterion prints slope or mean estimates; the
//! medians are in `target/criterion/<group>/<bench>/new/estimates.json`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use deja_recorder::format::{parse_segment_file_name, segment_file_name};
use deja_recorder::{
    ConnId, Event, EventKind, LogEnd, LogWriter, ReadOutcome, Recorder, RecorderStats, RunMeta,
    RunReader, TaskId, WriterConfig, WriterTotals, Written,
};

/// Operations in the precomputed plan (a power of two, so wrapping is a mask).
const PLAN_OPS: usize = 64 << 10;
/// Bytes of HTTP-ish text reads and writes are cut from.
const POOL_BYTES: usize = 4 << 20;
/// Events timed together in the enqueue group.
const ENQUEUE_CHUNK: u64 = 1000;
/// Events queued or being written above which the enqueue bench waits for
/// the writer: well under the queue's 64 Ki events and 16 MiB.
const IN_FLIGHT_MAX: u64 = 40 << 10;
/// The rate the paced enqueue benches record at: the design's 1 M events/s.
const PACED_EVENTS_PER_SEC: f64 = 1e6;
/// Events per `LogWriter::write` call in the writer group.
const WRITER_BATCH: usize = 64 << 10;
/// Events in the run the reader group reads.
const READER_EVENTS: usize = 500_000;

/// splitmix64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A size between `lo` and `hi` whose logarithm is uniform.
    fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let size = lo as f64 * (hi as f64 / lo as f64).powf(unit);
        (size as usize).clamp(lo, hi)
    }
}

const PATHS: [&str; 6] = [
    "/api/v1/orders",
    "/api/v1/cart",
    "/api/v1/users",
    "/api/v1/inventory",
    "/api/v1/payments",
    "/healthz",
];
const WORDS: [&str; 16] = [
    "express",
    "gift",
    "wrap",
    "fragile",
    "leave",
    "at",
    "door",
    "back",
    "office",
    "ring",
    "bell",
    "twice",
    "no",
    "substitutions",
    "please",
    "thanks",
];
const STATUSES: [&str; 4] = ["200 OK", "200 OK", "201 Created", "404 Not Found"];
const TASK_NAMES: [&str; 4] = ["conn-handler", "request", "db-pool-worker", "metrics-flush"];
const MARK_NAMES: [&str; 3] = ["order", "request_id", "user"];

fn json_body(rng: &mut Rng) -> String {
    let mut body = String::new();
    let items = 1 + rng.below(10);
    let mut total = 0;
    write!(
        body,
        r#"{{"customer":"cust-{:06}","ts":"2024-03-14T09:{:02}:{:02}.{:06}Z","items":["#,
        rng.below(1_000_000),
        rng.below(60),
        rng.below(60),
        rng.below(1_000_000)
    )
    .unwrap();
    for item in 0..items {
        let (qty, price) = (1 + rng.below(5), 99 + rng.below(20_000));
        total += qty * price;
        let comma = if item == 0 { "" } else { "," };
        write!(
            body,
            r#"{comma}{{"sku":"SKU-{:05}","qty":{qty},"price_cents":{price}}}"#,
            rng.below(100_000)
        )
        .unwrap();
    }
    write!(body, r#"],"total_cents":{total},"note":""#).unwrap();
    for word in 0..rng.below(8) {
        if word > 0 {
            body.push(' ');
        }
        body.push_str(rng.pick(&WORDS));
    }
    body.push_str("\"}");
    body
}

/// Concatenated HTTP/1.1 requests and responses: what a service's sockets
/// carry, with realistic redundancy (headers) and entropy (ids, prices).
fn http_pool(rng: &mut Rng) -> Vec<u8> {
    let mut out = String::with_capacity(POOL_BYTES + (8 << 10));
    while out.len() < POOL_BYTES {
        let body = json_body(rng);
        let request_id = rng.next();
        if rng.below(2) == 0 {
            write!(
                out,
                "POST {}/{} HTTP/1.1\r\nHost: shop.internal:8080\r\nUser-Agent: checkout-client/2.3.1\r\nAccept: application/json\r\nContent-Type: application/json\r\nX-Request-Id: {request_id:016x}\r\nContent-Length: {}\r\n\r\n{body}",
                rng.pick(&PATHS),
                rng.below(1_000_000),
                body.len()
            )
            .unwrap();
        } else {
            write!(
                out,
                "HTTP/1.1 {}\r\nDate: Thu, 14 Mar 2024 09:{:02}:{:02} GMT\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nX-Request-Id: {request_id:016x}\r\nContent-Length: {}\r\n\r\n{body}",
                rng.pick(&STATUSES),
                rng.below(60),
                rng.below(60),
                body.len()
            )
            .unwrap();
        }
    }
    out.into_bytes()
}

/// One planned event: the values the runtime would have in hand.
#[derive(Clone, Copy)]
enum Op {
    Mono(u64),
    Wall(i64),
    Timer {
        timer: u64,
        deadline_ns: u64,
    },
    Read {
        conn: u64,
        start: u32,
        len: u32,
    },
    Write {
        conn: u64,
        start: u32,
        len: u32,
    },
    Spawn {
        child: u64,
        name: &'static str,
    },
    Mark {
        name: &'static str,
        start: u32,
        len: u32,
    },
}

/// The mix, precomputed so the timed loops only build and record.
struct Mix {
    pool: Vec<u8>,
    ops: Vec<(TaskId, Op)>,
}

impl Mix {
    fn new() -> Mix {
        let mut rng = Rng(0x00de_7a00_5eed);
        let pool = http_pool(&mut rng);
        let slice = |rng: &mut Rng, len: usize| {
            let start = rng.below((pool.len() - len) as u64) as u32;
            (start, len as u32)
        };
        // Per 100: 20 + 20 clock, 10 timer, 25 reads, 15 writes, 5 spawns, 5 marks.
        let mut block: Vec<u8> = [(0, 20), (1, 20), (2, 10), (3, 25), (4, 15), (5, 5), (6, 5)]
            .into_iter()
            .flat_map(|(kind, count)| std::iter::repeat_n(kind, count))
            .collect();
        assert_eq!(block.len(), 100);
        let mut ops = Vec::with_capacity(PLAN_OPS);
        let mut now_ns = 0u64;
        let mut next_child = 1;
        while ops.len() < PLAN_OPS {
            for i in (1..block.len()).rev() {
                block.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for &kind in &block {
                now_ns += 200 + rng.below(5_000);
                let task = TaskId(rng.below(16));
                let conn = 1 + rng.below(64);
                let op = match kind {
                    0 => Op::Mono(now_ns),
                    1 => Op::Wall(1_710_407_000_000_000_000 + now_ns as i64),
                    2 => Op::Timer {
                        timer: rng.below(256),
                        deadline_ns: now_ns - rng.below(100_000).min(now_ns),
                    },
                    3 | 4 => {
                        let len = rng.log_uniform(64, 4096);
                        let (start, len) = slice(&mut rng, len);
                        if kind == 3 {
                            Op::Read { conn, start, len }
                        } else {
                            Op::Write { conn, start, len }
                        }
                    }
                    5 => {
                        next_child += 1;
                        Op::Spawn {
                            child: next_child,
                            name: rng.pick(&TASK_NAMES),
                        }
                    }
                    _ => {
                        let len = 8 + rng.below(17) as usize;
                        let (start, len) = slice(&mut rng, len);
                        Op::Mark {
                            name: rng.pick(&MARK_NAMES),
                            start,
                            len,
                        }
                    }
                };
                ops.push((task, op));
            }
        }
        ops.truncate(PLAN_OPS);
        Mix { pool, ops }
    }

    fn bytes(&self, start: u32, len: u32) -> &[u8] {
        &self.pool[start as usize..(start + len) as usize]
    }

    /// Build the kind as the runtime would: copy what was read, hash what
    /// was written, own the names.
    #[inline]
    fn kind(&self, op: Op) -> EventKind {
        match op {
            Op::Mono(ns) => EventKind::ClockMono { ns },
            Op::Wall(unix_ns) => EventKind::ClockWall { unix_ns },
            Op::Timer { timer, deadline_ns } => EventKind::TimerFired { timer, deadline_ns },
            Op::Read { conn, start, len } => EventKind::TcpRead {
                conn: ConnId(conn),
                result: ReadOutcome::Data(self.bytes(start, len).to_vec()),
            },
            Op::Write { conn, start, len } => EventKind::TcpWrite {
                conn: ConnId(conn),
                result: Ok(Written::of(self.bytes(start, len), false)),
            },
            Op::Spawn { child, name } => EventKind::Spawn {
                child: TaskId(child),
                name: Some(name.to_owned()),
            },
            Op::Mark { name, start, len } => EventKind::Mark {
                name: name.to_owned(),
                value: self.bytes(start, len).to_vec(),
            },
        }
    }

    /// `count` events of the mix with seqs from `first_seq`, as the writer
    /// would receive them.
    fn events(&self, first_seq: u64, count: usize) -> Vec<Event> {
        (0..count)
            .map(|i| {
                let (task, op) = self.ops[i % PLAN_OPS];
                Event {
                    seq: first_seq + i as u64,
                    task,
                    mono_ns: 1_000 * (first_seq + i as u64),
                    kind: self.kind(op),
                }
            })
            .collect()
    }
}

/// Cycles through the plan.
struct Cursor(usize);

impl Cursor {
    #[inline]
    fn next(&mut self, mix: &Mix) -> (TaskId, Op) {
        let op = mix.ops[self.0];
        self.0 = (self.0 + 1) & (PLAN_OPS - 1);
        op
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("deja-bench-")
        .tempdir()
        .expect("creating a temp dir")
}

/// A temp dir in memory if possible: see the module doc.
fn memory_temp_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        return temp_dir();
    }
    tempfile::Builder::new()
        .prefix("deja-bench-")
        .tempdir_in(shm)
        .expect("creating a temp dir in /dev/shm")
}

/// Block (untimed) while the writer is far enough behind that the queue
/// could fill.
fn wait_for_writer(recorder: &Recorder) {
    loop {
        let stats = recorder.stats();
        if stats.queued.saturating_sub(stats.written.events) <= IN_FLIGHT_MAX {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Delete all but the run's two newest segments: the recorder never
/// reads them back, and the enqueue benches write about 1 GB.
fn prune_segments(dir: &std::path::Path) {
    let mut segments: Vec<u32> = std::fs::read_dir(dir)
        .expect("listing the run")
        .filter_map(|entry| parse_segment_file_name(entry.ok()?.file_name().to_str()?))
        .collect();
    segments.sort_unstable();
    for &index in segments.iter().rev().skip(2) {
        let _ = std::fs::remove_file(dir.join(segment_file_name(index)));
    }
}

fn report_recorder(name: &str, stats: &RecorderStats) {
    println!(
        "{name}: recorder queued {} events, dropped {}, gaps {}, wrote {} events in {} segments ({:.0} MB on disk)",
        stats.queued,
        stats.dropped,
        stats.gaps,
        stats.written.events,
        stats.written.segments,
        stats.written.bytes_on_disk as f64 / 1e6
    );
    if stats.dropped > 0 || stats.write_error.is_some() {
        println!(
            "{name}: WARNING: {} events dropped (write error: {:?}); the figure above includes the cheap drop path",
            stats.dropped, stats.write_error
        );
    }
}

/// Where the kinds come from in an enqueue bench.
#[derive(Clone, Copy)]
enum Feed {
    /// Built inside the timed loop, as the runtime does.
    Build,
    /// Built beforehand, untimed: only `record` is timed.
    Prebuilt,
}

/// Spaces the timed chunks so the recorder sees at most a given rate.
struct Pacer {
    chunk: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    fn new(events_per_sec: Option<f64>) -> Pacer {
        Pacer {
            chunk: events_per_sec.map(|rate| Duration::from_secs_f64(ENQUEUE_CHUNK as f64 / rate)),
            next: None,
        }
    }

    /// Sleep until the next chunk is due. A late chunk is not made up for
    /// by bursting.
    fn wait(&mut self) {
        let Some(chunk) = self.chunk else { return };
        let now = Instant::now();
        let next = *self.next.get_or_insert(now);
        if next > now {
            std::thread::sleep(next - now);
        }
        self.next = Some(next.max(Instant::now()) + chunk);
    }
}

fn enqueue_bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    mix: &Mix,
    name: &str,
    feed: Feed,
    events_per_sec: Option<f64>,
) {
    let out = memory_temp_dir();
    let recorder = Recorder::create(
        out.path(),
        RunMeta::new("bench", &format!("enqueue-{}", name.replace('/', "-"))),
        WriterConfig::default(),
    )
    .expect("creating the recorder");
    let mut cursor = Cursor(0);
    let mut pacer = Pacer::new(events_per_sec);
    let mut kinds = Vec::with_capacity(ENQUEUE_CHUNK as usize);
    // `name` may carry its group ("hot_path/x"); the id is the last part.
    let id = name.rsplit('/').next().unwrap_or(name);
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(ENQUEUE_CHUNK);
                wait_for_writer(&recorder);
                pacer.wait();
                match feed {
                    Feed::Build => {
                        let start = Instant::now();
                        for _ in 0..n {
                            let (task, op) = cursor.next(mix);
                            black_box(recorder.record(task, mix.kind(op)));
                        }
                        timed += start.elapsed();
                    }
                    Feed::Prebuilt => {
                        kinds.extend((0..n).map(|_| {
                            let (task, op) = cursor.next(mix);
                            (task, mix.kind(op))
                        }));
                        let start = Instant::now();
                        for (task, kind) in kinds.drain(..) {
                            black_box(recorder.record(task, kind));
                        }
                        timed += start.elapsed();
                    }
                }
                left -= n;
            }
            prune_segments(recorder.dir());
            timed
        });
    });
    let label = match name.contains('/') {
        true => name.to_string(),
        false => format!("enqueue/{name}"),
    };
    report_recorder(&label, &recorder.close().expect("closing"));
}

fn enqueue(c: &mut Criterion) {
    let mix = Mix::new();
    let mut group = c.benchmark_group("enqueue");
    // With `iter_custom` criterion budgets wall time, waits included: each
    // bench takes about warm-up + measurement.
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .sample_size(50);
    let paced = Some(PACED_EVENTS_PER_SEC);
    enqueue_bench(&mut group, &mix, "mix", Feed::Build, paced);
    enqueue_bench(&mut group, &mix, "mix_saturated", Feed::Build, None);
    enqueue_bench(&mut group, &mix, "push_only", Feed::Prebuilt, None);
    group.finish();
}

/// A plain bounded enqueue to compare the recorder's hot path with: the
/// same `(task, kind)` pushed, a consumer thread dropping what it takes.
#[derive(Clone, Copy)]
enum PlainQueue {
    /// `std::sync::mpsc::sync_channel` of the recorder's queue capacity; the
    /// consumer receives one event at a time.
    SyncChannel,
    /// `Mutex<VecDeque>` push; the consumer swaps the deque out when woken
    /// at 1 Ki events or every 10 ms, like the recorder's writer.
    MutexVecDeque,
}

/// The `Mutex<VecDeque>` queue and its consumer's wake-up.
#[derive(Default)]
struct DequeQueue {
    items: std::sync::Mutex<std::collections::VecDeque<(TaskId, EventKind)>>,
    wake: std::sync::Condvar,
    closed: std::sync::atomic::AtomicBool,
    taken: std::sync::atomic::AtomicU64,
}

/// Queue length at which the deque's consumer is woken: the recorder's
/// `WRITER_WAKE_EVENTS`.
const DEQUE_WAKE_EVENTS: usize = 1 << 10;
/// The deque consumer's wake-up interval: the recorder's `FLUSH_INTERVAL_MS`.
const DEQUE_INTERVAL: Duration = Duration::from_millis(10);

/// `hot_path/*`: the recorder's per-event cost against a plain enqueue of
/// the same prebuilt events (built untimed, like `enqueue/push_only`),
/// as fast as the consumer keeps up. The recorder's figure includes what
/// the plain queues skip: the seq, the clock read, the gap check, and a
/// writer that encodes and compresses on the other core.
fn hot_path(c: &mut Criterion) {
    let mix = Mix::new();
    let mut group = c.benchmark_group("hot_path");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    enqueue_bench(
        &mut group,
        &mix,
        "hot_path/recorder_record",
        Feed::Prebuilt,
        None,
    );
    plain_enqueue_bench(
        &mut group,
        &mix,
        "sync_channel_send",
        PlainQueue::SyncChannel,
    );
    plain_enqueue_bench(
        &mut group,
        &mix,
        "mutex_vecdeque_push",
        PlainQueue::MutexVecDeque,
    );
    group.finish();
}

fn plain_enqueue_bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    mix: &Mix,
    name: &str,
    queue: PlainQueue,
) {
    use std::sync::atomic::Ordering;
    let mut cursor = Cursor(0);
    let mut kinds = Vec::with_capacity(ENQUEUE_CHUNK as usize);
    let mut pushed = 0u64;
    let deque = std::sync::Arc::new(DequeQueue::default());
    let (tx, rx) = std::sync::mpsc::sync_channel::<(TaskId, EventKind)>(64 << 10);
    let consumer = match queue {
        PlainQueue::SyncChannel => std::thread::spawn(move || {
            let mut taken = 0u64;
            for event in rx {
                drop(black_box(event));
                taken += 1;
            }
            taken
        }),
        PlainQueue::MutexVecDeque => {
            drop(rx);
            let deque = std::sync::Arc::clone(&deque);
            std::thread::spawn(move || {
                let mut batch = std::collections::VecDeque::new();
                loop {
                    let closed = {
                        let mut items = deque.items.lock().unwrap();
                        if items.len() < DEQUE_WAKE_EVENTS && !deque.closed.load(Ordering::Acquire)
                        {
                            items = deque.wake.wait_timeout(items, DEQUE_INTERVAL).unwrap().0;
                        }
                        std::mem::swap(&mut *items, &mut batch);
                        deque.closed.load(Ordering::Acquire) && batch.is_empty()
                    };
                    deque.taken.fetch_add(batch.len() as u64, Ordering::Release);
                    batch.clear();
                    if closed {
                        return deque.taken.load(Ordering::Acquire);
                    }
                }
            })
        }
    };
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(ENQUEUE_CHUNK);
                // As wait_for_writer: never let the consumer fall far behind.
                while let PlainQueue::MutexVecDeque = queue {
                    if pushed - deque.taken.load(Ordering::Acquire) <= IN_FLIGHT_MAX {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                kinds.extend((0..n).map(|_| {
                    let (task, op) = cursor.next(mix);
                    (task, mix.kind(op))
                }));
                let start = Instant::now();
                match queue {
                    PlainQueue::SyncChannel => {
                        for event in kinds.drain(..) {
                            black_box(tx.send(event)).expect("the consumer runs");
                        }
                    }
                    PlainQueue::MutexVecDeque => {
                        for event in kinds.drain(..) {
                            let mut items = deque.items.lock().unwrap();
                            items.push_back(event);
                            if items.len() == DEQUE_WAKE_EVENTS {
                                deque.wake.notify_one();
                            }
                        }
                    }
                }
                timed += start.elapsed();
                pushed += n;
                left -= n;
            }
            timed
        });
    });
    drop(tx);
    deque.closed.store(true, Ordering::Release);
    deque.wake.notify_one();
    let taken = consumer.join().expect("the consumer thread");
    println!("hot_path/{name}: {pushed} events pushed, {taken} taken by the consumer");
}

/// What the writer benches wrote, summed over all their samples.
#[derive(Default)]
struct WriterRun {
    time: Duration,
    totals: WriterTotals,
}

fn writer(c: &mut Criterion) {
    let mix = Mix::new();
    let mut batch = mix.events(0, WRITER_BATCH);
    let mut group = c.benchmark_group("writer");
    group
        .throughput(Throughput::Elements(WRITER_BATCH as u64))
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10);
    let out = temp_dir();
    let runs = Cell::new(0u32);
    for level in [-1, 1, 3] {
        let mut run = WriterRun::default();
        group.bench_with_input(BenchmarkId::new("level", level), &level, |b, &level| {
            b.iter_custom(|iters| {
                // A fresh writer per sample bounds the disk used; creating
                // it and finishing it (fsync) are not timed.
                runs.set(runs.get() + 1);
                let config = WriterConfig {
                    compression_level: level,
                    ..WriterConfig::default()
                };
                let meta = RunMeta::new("bench", &format!("writer-{}", runs.get()));
                let mut writer = LogWriter::create(out.path(), meta, config).expect("creating");
                let dir = writer.dir().to_path_buf();
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    writer.write(&batch).expect("writing");
                    timed += start.elapsed();
                    for event in &mut batch {
                        event.seq += WRITER_BATCH as u64;
                    }
                }
                let totals = writer.finish().expect("finishing");
                run.time += timed;
                run.totals.events += totals.events;
                run.totals.bytes_raw += totals.bytes_raw;
                run.totals.bytes_on_disk += totals.bytes_on_disk;
                std::fs::remove_dir_all(dir).expect("removing the run");
                timed
            });
        });
        let secs = run.time.as_secs_f64();
        let totals = run.totals;
        println!(
            "writer/level/{level}: {:.2} M events/s, {:.0} MB/s encoded, {:.0} MB/s to disk; \
             {:.1} B/event encoded, {:.1} B/event on disk, compression {:.2}x \
             (mean over {} events incl. warm-up)",
            totals.events as f64 / secs / 1e6,
            totals.bytes_raw as f64 / secs / 1e6,
            totals.bytes_on_disk as f64 / secs / 1e6,
            totals.bytes_raw as f64 / totals.events as f64,
            totals.bytes_on_disk as f64 / totals.events as f64,
            totals.bytes_raw as f64 / totals.bytes_on_disk as f64,
            totals.events,
        );
    }
    group.finish();
}

fn reader(c: &mut Criterion) {
    let mix = Mix::new();
    let out = temp_dir();
    let mut writer = LogWriter::create(
        out.path(),
        RunMeta::new("bench", "reader"),
        WriterConfig::default(),
    )
    .expect("creating");
    let dir = writer.dir().to_path_buf();
    for first in (0..READER_EVENTS).step_by(WRITER_BATCH) {
        let count = WRITER_BATCH.min(READER_EVENTS - first);
        writer
            .write(&mix.events(first as u64, count))
            .expect("writing");
    }
    let totals = writer.finish().expect("finishing");
    println!(
        "reader: run of {} events, {} segments, {:.1} MB on disk ({:.1} MB encoded)",
        totals.events,
        totals.segments,
        totals.bytes_on_disk as f64 / 1e6,
        totals.bytes_raw as f64 / 1e6
    );

    let mut group = c.benchmark_group("reader");
    group
        .throughput(Throughput::Elements(READER_EVENTS as u64))
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(10);
    group.bench_function("open_and_iterate", |b| {
        b.iter(|| {
            let mut reader = RunReader::open(&dir).expect("opening");
            let mut events = 0;
            for event in reader.by_ref() {
                black_box(event.expect("reading"));
                events += 1;
            }
            assert_eq!(events, READER_EVENTS);
            assert_eq!(reader.end(), Some(&LogEnd::Clean));
        });
    });
    group.finish();
}

// What `criterion_group!` and `criterion_main!` expand to, without the
// undocumented `pub fn` the workspace's `missing_docs` lint flags.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    enqueue(&mut criterion);
    hot_path(&mut criterion);
    writer(&mut criterion);
    reader(&mut criterion);
    criterion.final_summary();
}
