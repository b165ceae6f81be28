//! Every single flipped bit of a log is caught: reading fails with a
//! `ReadError` (never a clean end, never a torn tail that hides the damage,
//! never a panic), and every frame before the damaged one still comes back
//! intact before the error.

use std::fs;
use std::path::Path;
use std::time::Instant;

use deja_recorder::{ReadError, WriterConfig};
use deja_tests::{read_run, sample_events, segment_files, write_run, SegmentLayout};

/// Where a byte sits in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Header,
    /// In frame `index` (its header or payload), which starts at `start`.
    Frame {
        index: usize,
        start: u64,
    },
    Footer {
        start: u64,
    },
}

fn place(layout: &SegmentLayout, byte: u64) -> Place {
    if byte < layout.header_end {
        return Place::Header;
    }
    for (index, frame) in layout.frames.iter().enumerate() {
        if byte < frame.end {
            return Place::Frame {
                index,
                start: frame.start,
            };
        }
    }
    Place::Footer {
        start: layout.footer_start.expect("a closed segment has a footer"),
    }
}

/// Flip every bit of every segment of `run`, one at a time, in a scratch
/// copy, and check each is reported. Returns how many bits were flipped.
fn check_every_bit(run: &Path) -> usize {
    let (all, end) = read_run(run);
    end.expect("the undamaged run reads");
    let segments = segment_files(run);
    let scratch = tempfile::tempdir().unwrap();
    let originals: Vec<Vec<u8>> = segments.iter().map(|p| fs::read(p).unwrap()).collect();
    for (path, bytes) in segments.iter().zip(&originals) {
        fs::write(scratch.path().join(path.file_name().unwrap()), bytes).unwrap();
    }
    let mut events_before = 0usize;
    let mut flipped = 0;
    for (path, original) in segments.iter().zip(&originals) {
        let layout = SegmentLayout::of(original);
        let target = scratch.path().join(path.file_name().unwrap());
        let mut bytes = original.clone();
        for bit in 0..original.len() * 8 {
            let byte = bit / 8;
            bytes[byte] ^= 1 << (bit % 8);
            fs::write(&target, &bytes).unwrap();
            let (events, result) = read_run(scratch.path());
            bytes[byte] ^= 1 << (bit % 8);
            let here = format!(
                "bit {bit} (byte {byte}, bit {}) of {}",
                bit % 8,
                target.display()
            );
            let err = match result {
                Ok(end) => panic!(
                    "{here}: not detected; read {} events, end {end:?}",
                    events.len()
                ),
                Err(err) => err,
            };
            let where_ = place(&layout, byte as u64);
            // Frames strictly before the damaged one come back intact;
            // nothing of the damaged one does.
            let intact = events_before
                + match where_ {
                    Place::Header => 0,
                    Place::Frame { index, .. } => layout.frames[..index]
                        .iter()
                        .map(|f| f.events as usize)
                        .sum(),
                    Place::Footer { .. } => layout.events() as usize,
                };
            assert_eq!(
                events,
                all[..intact],
                "{here} ({where_:?}): expected the first {intact} events before the error {err}"
            );
            check_error(&err, where_, &target, &here);
            flipped += 1;
        }
        fs::write(&target, original).unwrap();
        events_before += layout.events() as usize;
    }
    assert_eq!(events_before, all.len());
    flipped
}

/// The error names the damaged file, and for a frame or footer the offset
/// the damaged record starts at.
fn check_error(err: &ReadError, place: Place, target: &Path, here: &str) {
    match (place, err) {
        (
            Place::Header,
            ReadError::NotADejaLog { path }
            | ReadError::UnsupportedVersion { path, .. }
            | ReadError::Corrupt {
                path, offset: 0, ..
            },
        ) if path == target => {}
        (
            Place::Frame { start, .. } | Place::Footer { start },
            ReadError::Corrupt { path, offset, .. },
        ) if path == target && *offset == start => {}
        _ => panic!("{here} ({place:?}): unexpected error {err:?}"),
    }
}

#[test]
fn every_bit_of_a_small_log_is_caught() {
    let out = tempfile::tempdir().unwrap();
    let run = write_run(out.path(), &sample_events(6), WriterConfig::default());
    assert_eq!(segment_files(&run).len(), 1);
    let frames = SegmentLayout::of(&fs::read(&segment_files(&run)[0]).unwrap()).frames;
    assert_eq!(frames.len(), 6, "one frame per event");
    let started = Instant::now();
    let flipped = check_every_bit(&run);
    println!("{flipped} bits flipped in {:?}", started.elapsed());
    assert_eq!(
        flipped,
        SegmentLayout::of(&fs::read(&segment_files(&run)[0]).unwrap()).len as usize * 8
    );
}

#[test]
fn every_bit_of_a_rotated_log_is_caught() {
    let out = tempfile::tempdir().unwrap();
    // A frame per segment: damage in an earlier segment's footer or header
    // must not pass for the run's end.
    let config = WriterConfig {
        segment_bytes_max: 1,
        ..WriterConfig::default()
    };
    let run = write_run(out.path(), &sample_events(3), config);
    assert_eq!(segment_files(&run).len(), 3);
    let started = Instant::now();
    let flipped = check_every_bit(&run);
    println!("{flipped} bits flipped in {:?}", started.elapsed());
}
