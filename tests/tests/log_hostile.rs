//! Hostile segment files: arbitrary bytes never panic the reader and it
//! always terminates; lengths at and past their caps (with valid header
//! checksums, so only the length checks can reject them) and zstd frames
//! declaring huge windows are rejected without allocating more than the
//! format's named caps.
//!
//! Allocation is measured with a counting global allocator, so every test
//! in this binary runs under one lock (`serial`) to keep the others' memory
//! out of the measurement. libzstd allocates its context with its own
//! `malloc`, outside this count; in one-shot decompression it allocates
//! nothing else (no window buffer), so the count covers every buffer whose
//! size comes from the file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use deja_recorder::format::{FRAME_EVENTS_MAX, FRAME_PAYLOAD_BYTES_MAX, FRAME_RAW_BYTES_MAX};
use deja_recorder::{Event, LogEnd, LogWriter, ReadError, RunMeta, RunReader, WriterConfig};
use deja_tests::{number, sample_events, write_run, SegmentLayout};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Counting allocator.

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrink(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grow(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grow(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Count old and new blocks as both live while moving: the worst case.
        grow(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        shrink(if new.is_null() {
            new_size
        } else {
            layout.size()
        });
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Run `f` and return its result with the most bytes it had allocated at
/// once (beyond what was live when it started).
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = f();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (result, peak)
}

/// What reading may allocate at most: one payload, one inflated frame,
/// and 1 MiB for the read buffer, the header and bookkeeping.
const READ_BYTES_BOUND: usize = FRAME_PAYLOAD_BYTES_MAX + FRAME_RAW_BYTES_MAX + (1 << 20);

/// What reading may allocate when a length is rejected before any payload
/// buffer is sized by it.
const REJECTED_BYTES_BOUND: usize = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

/// Every test of this binary holds this, so allocation peaks are its own.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

// ---------------------------------------------------------------------------
// Helpers.

/// How a bounded read ended.
#[derive(Debug)]
enum Outcome {
    End(LogEnd),
    Failed(ReadError),
}

/// Read `dir` as a run, stopping after `max_items` items: the events read,
/// and how it ended. Panics if the reader has not ended by then.
fn read_bounded(dir: &Path, max_items: usize) -> (Vec<Event>, Outcome) {
    let mut reader = match RunReader::open(dir) {
        Ok(reader) => reader,
        Err(err) => return (Vec::new(), Outcome::Failed(err)),
    };
    let mut events = Vec::new();
    for _ in 0..max_items {
        match reader.next() {
            Some(Ok(event)) => events.push(event),
            Some(Err(err)) => {
                assert!(reader.next().is_none(), "the reader goes on after an error");
                return (events, Outcome::Failed(err));
            }
            None => {
                let end = reader
                    .end()
                    .cloned()
                    .expect("a finished reader knows its end");
                return (events, Outcome::End(end));
            }
        }
    }
    panic!("the reader did not end within {max_items} items");
}

/// Most items a file of `len` bytes can yield: each frame takes at least a
/// header and holds at most `FRAME_EVENTS_MAX` events.
fn item_bound(len: usize) -> usize {
    (len / 32 + 1) * FRAME_EVENTS_MAX + 2
}

/// Write `bytes` as the only segment of a scratch run in `dir` and read it,
/// measuring the peak allocation of opening and reading.
fn read_segment(dir: &Path, bytes: &[u8]) -> ((Vec<Event>, Outcome), usize) {
    let path = dir.join(deja_recorder::format::segment_file_name(0));
    fs::write(&path, bytes).unwrap();
    peak_allocation(|| read_bounded(dir, item_bound(bytes.len())))
}

/// A one-segment run of `count` sample events, one frame each: its bytes.
fn sample_segment(count: u64) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let run = write_run(out.path(), &sample_events(count), WriterConfig::default());
    fs::read(deja_tests::only_segment(&run)).unwrap()
}

/// A frame header with the given fields and a correct header checksum.
fn frame_header(payload_len: u32, raw_len: u32, events: u32, first_seq: u64, crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(b"DJFR");
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&events.to_le_bytes());
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out
}

/// A real frame's parts: the segment header before it, its fields and payload.
struct RealFrame {
    segment_header: Vec<u8>,
    payload: Vec<u8>,
    raw: Vec<u8>,
    events: u32,
    first_seq: u64,
}

fn real_frame() -> RealFrame {
    let bytes = sample_segment(1);
    let layout = SegmentLayout::of(&bytes);
    let frame = layout.frames[0];
    let payload = bytes[(frame.start + 32) as usize..frame.end as usize].to_vec();
    let raw = zstd::bulk::decompress(&payload, FRAME_RAW_BYTES_MAX).unwrap();
    RealFrame {
        segment_header: bytes[..layout.header_end as usize].to_vec(),
        payload,
        raw,
        events: frame.events,
        first_seq: frame.first_seq,
    }
}

// ---------------------------------------------------------------------------
// (a) Arbitrary bytes.

fn assert_terminates_within_bounds(bytes: &[u8]) -> (Vec<Event>, Outcome) {
    let dir = tempfile::tempdir().unwrap();
    let (read, peak) = read_segment(dir.path(), bytes);
    assert!(
        peak < READ_BYTES_BOUND,
        "reading {} hostile bytes allocated {peak} bytes at once",
        bytes.len()
    );
    read
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            // Past the magic, to reach the version and length checks.
            proptest::collection::vec(any::<u8>(), 0..2048)
                .prop_map(|tail| [&b"DEJALOG\0\x01\0\0\0"[..], &tail].concat()),
        ]
    ) {
        let _serial = serial();
        assert_terminates_within_bounds(&bytes);
    }

    #[test]
    fn a_valid_header_then_arbitrary_bytes_never_panics(
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
        frame_magic in any::<bool>(),
    ) {
        let _serial = serial();
        let header = real_frame().segment_header;
        let magic: &[u8] = if frame_magic { b"DJFR" } else { b"" };
        let (events, _) = assert_terminates_within_bounds(&[&header, magic, &tail].concat());
        prop_assert!(events.is_empty(), "{} events out of noise", events.len());
    }

    #[test]
    fn a_valid_log_with_bytes_overwritten_never_panics_and_never_lies(
        writes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let _serial = serial();
        let original = sample_segment(12);
        let mut bytes = original.clone();
        for (index, byte) in &writes {
            let at = index.index(bytes.len());
            bytes[at] = *byte;
        }
        let (events, outcome) = assert_terminates_within_bounds(&bytes);
        let all = number(&sample_events(12));
        prop_assert!(events.len() <= all.len());
        prop_assert_eq!(&events[..], &all[..events.len()], "events that were never written");
        if bytes != original {
            prop_assert!(
                !matches!(outcome, Outcome::End(LogEnd::Clean)),
                "damage read as a clean log: {:?}", writes
            );
        }
    }

    /// Past every checksum: a frame whose checksums are right but whose
    /// events are damaged bytes reaches the event decoder.
    #[test]
    fn damaged_events_behind_valid_checksums_never_panic(
        writes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        events in 1u32..6,
    ) {
        let _serial = serial();
        let (header, mut raw) = three_event_frame();
        let raw_len = raw.len();
        for (index, byte) in &writes {
            let at = index.index(raw_len);
            raw[at] = *byte;
        }
        raw.truncate(1 + cut.index(raw_len));
        let payload = zstd::bulk::compress(&raw, 1).unwrap();
        let frame = [
            frame_header(payload.len() as u32, raw.len() as u32, events, 0, crc32c::crc32c(&payload)),
            payload,
        ]
        .concat();
        let (read, _) = assert_terminates_within_bounds(&[header, frame].concat());
        let all = number(&sample_events(3));
        prop_assert!(read.len() <= all.len());
        if writes.is_empty() && raw.len() == raw_len {
            prop_assert_eq!(&read[..], &all[..(events as usize).min(3)]);
        }
    }
}

/// A segment header and the raw (inflated) bytes of one frame holding
/// three sample events.
fn three_event_frame() -> (Vec<u8>, Vec<u8>) {
    let out = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::create(
        out.path(),
        RunMeta::new("hostile", "run"),
        WriterConfig::default(),
    )
    .unwrap();
    writer.write(&number(&sample_events(3))).unwrap();
    let run = writer.dir().to_path_buf();
    writer.finish().unwrap();
    let bytes = fs::read(deja_tests::only_segment(&run)).unwrap();
    let layout = SegmentLayout::of(&bytes);
    assert_eq!(layout.frames.len(), 1);
    let frame = layout.frames[0];
    let payload = &bytes[(frame.start + 32) as usize..frame.end as usize];
    let raw = zstd::bulk::decompress(payload, FRAME_RAW_BYTES_MAX).unwrap();
    (bytes[..layout.header_end as usize].to_vec(), raw)
}

// ---------------------------------------------------------------------------
// (b) Lengths at and past their caps.

/// What a hand-built frame must read as.
#[derive(Debug)]
enum Want {
    /// Corrupt at the frame's offset.
    Corrupt,
    /// A torn tail at the frame's offset.
    Torn,
}

/// Read the real segment header followed by `frame` and check the outcome
/// and the peak allocation.
fn check_frame(what: &str, header: &[u8], frame: &[u8], want: Want, bound: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let bytes = [header, frame].concat();
    let ((events, outcome), peak) = read_segment(dir.path(), &bytes);
    let at = header.len() as u64;
    println!("{what}: {outcome:?}; peak allocation {peak} bytes");
    assert!(events.is_empty(), "{what}: {} events", events.len());
    match (&want, &outcome) {
        (Want::Corrupt, Outcome::Failed(ReadError::Corrupt { offset, .. })) if *offset == at => {}
        (
            Want::Torn,
            Outcome::End(LogEnd::TornTail {
                offset,
                partial_bytes,
                ..
            }),
        ) if *offset == at && *partial_bytes == frame.len() as u64 => {}
        _ => panic!("{what}: expected {want:?} at byte {at}, got {outcome:?}"),
    }
    assert!(
        peak < bound,
        "{what}: reading allocated {peak} bytes at once, over {bound}"
    );
    peak
}

#[test]
fn payload_lengths_at_and_past_the_cap_are_rejected_without_allocating_them() {
    let _serial = serial();
    let real = real_frame();
    let crc = crc32c::crc32c(&real.payload);
    let raw_len = real.raw.len() as u32;
    let cap = FRAME_PAYLOAD_BYTES_MAX as u32;
    for (payload_len, want) in [
        (0, Want::Corrupt),
        (cap + 1, Want::Corrupt),
        (u32::MAX, Want::Corrupt),
        // Within the cap but longer than the file: a write cut short.
        (cap, Want::Torn),
    ] {
        let frame = [
            frame_header(payload_len, raw_len, real.events, real.first_seq, crc),
            real.payload.clone(),
        ]
        .concat();
        check_frame(
            &format!("payload_len {payload_len}"),
            &real.segment_header,
            &frame,
            want,
            REJECTED_BYTES_BOUND,
        );
    }

    // A payload really at the cap (the real one padded with zeros): read,
    // then rejected by its checksum, or (with a matching checksum) by zstd.
    let mut padded = real.payload.clone();
    padded.resize(FRAME_PAYLOAD_BYTES_MAX, 0);
    for (what, crc) in [
        ("a cap-sized payload with a wrong checksum", crc),
        (
            "a cap-sized payload with trailing zeros",
            crc32c::crc32c(&padded),
        ),
    ] {
        let frame = [
            frame_header(cap, raw_len, real.events, real.first_seq, crc),
            padded.clone(),
        ]
        .concat();
        check_frame(
            what,
            &real.segment_header,
            &frame,
            Want::Corrupt,
            READ_BYTES_BOUND,
        );
    }
}

#[test]
fn raw_lengths_and_event_counts_at_and_past_the_cap_are_rejected_without_allocating_them() {
    let _serial = serial();
    let real = real_frame();
    let crc = crc32c::crc32c(&real.payload);
    let payload_len = real.payload.len() as u32;
    let cap = FRAME_RAW_BYTES_MAX as u32;
    for (raw_len, bound) in [
        (0, REJECTED_BYTES_BOUND),
        (cap + 1, REJECTED_BYTES_BOUND),
        (u32::MAX, REJECTED_BYTES_BOUND),
        // Accepted by the length check, then the payload inflates to less.
        (cap, READ_BYTES_BOUND),
    ] {
        let frame = [
            frame_header(payload_len, raw_len, real.events, real.first_seq, crc),
            real.payload.clone(),
        ]
        .concat();
        check_frame(
            &format!("raw_len {raw_len}"),
            &real.segment_header,
            &frame,
            Want::Corrupt,
            bound,
        );
    }
    let raw_len = real.raw.len() as u32;
    for events in [0, FRAME_EVENTS_MAX as u32 + 1, u32::MAX] {
        let frame = [
            frame_header(payload_len, raw_len, events, real.first_seq, crc),
            real.payload.clone(),
        ]
        .concat();
        check_frame(
            &format!("events {events}"),
            &real.segment_header,
            &frame,
            Want::Corrupt,
            REJECTED_BYTES_BOUND,
        );
    }
}

// ---------------------------------------------------------------------------
// (c) zstd frames declaring huge windows.

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Window_Descriptor for a 2^31-byte window: exponent 21 (10 + 21 = 31),
/// mantissa 0.
const WINDOW_2_POW_31: u8 = 21 << 3;

/// A zstd block header: last block, the given type (0 raw, 1 RLE) and size.
fn block_header(block_type: u32, size: u32) -> [u8; 3] {
    let value = 1 | (block_type << 1) | (size << 3);
    let bytes = value.to_le_bytes();
    [bytes[0], bytes[1], bytes[2]]
}

#[test]
fn zstd_frames_declaring_huge_windows_are_rejected_with_bounded_allocation() {
    let _serial = serial();
    let real = real_frame();
    let raw_len = real.raw.len() as u32;

    // Window 2^31, Frame_Content_Size 2^40 (8-byte field, not single
    // segment), then one RLE block of raw_len bytes.
    let mut huge_content = ZSTD_MAGIC.to_vec();
    huge_content.push(0b1100_0000);
    huge_content.push(WINDOW_2_POW_31);
    huge_content.extend_from_slice(&(1u64 << 40).to_le_bytes());
    huge_content.extend_from_slice(&block_header(1, raw_len));
    huge_content.push(0);

    // Window 2^31 and no content size; one raw block holding the real
    // frame's events: everything else about it is valid.
    let mut huge_window = ZSTD_MAGIC.to_vec();
    huge_window.push(0);
    huge_window.push(WINDOW_2_POW_31);
    huge_window.extend_from_slice(&block_header(0, raw_len));
    huge_window.extend_from_slice(&real.raw);
    assert_eq!(
        zstd::bulk::decompress(&huge_window, real.raw.len()).unwrap(),
        real.raw,
        "the hand-built frame is valid zstd"
    );

    // A skippable frame (which one-shot decompression steps over) in front
    // of the real payload: not what a writer writes, so not accepted.
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18];
    skippable.extend_from_slice(&4u32.to_le_bytes());
    skippable.extend_from_slice(b"junk");
    skippable.extend_from_slice(&real.payload);

    for (what, payload) in [
        ("2^31 window, 2^40 content size", huge_content),
        ("2^31 window, valid content", huge_window),
        ("a skippable frame, then the real one", skippable),
    ] {
        let frame = [
            frame_header(
                payload.len() as u32,
                raw_len,
                real.events,
                real.first_seq,
                crc32c::crc32c(&payload),
            ),
            payload,
        ]
        .concat();
        check_frame(
            what,
            &real.segment_header,
            &frame,
            Want::Corrupt,
            READ_BYTES_BOUND,
        );
    }
}
