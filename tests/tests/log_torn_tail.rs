//! A log cut at any byte (what a killed process or a full disk leaves) reads
//! back as exactly a prefix of what was written, never as an error: the end
//! is a torn tail when the cut is inside a record (or inside the segment
//! header), an unclean shutdown when it is exactly at a record boundary,
//! and clean only for the whole file.

use std::fs;
use std::path::Path;

use deja_recorder::{EventKind, LogEnd, WriterConfig};
use deja_tests::{number, read_run, sample_events, segment_files, write_run, SegmentLayout};

/// What a reader must report for the last segment cut at `cut`.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Clean,
    Unclean { offset: u64 },
    Torn { offset: u64, partial_bytes: u64 },
}

/// Events kept (counting `events_before`, those of the earlier segments)
/// and the end, for the segment laid out as `layout` cut at `cut`.
fn expected(layout: &SegmentLayout, cut: u64, events_before: u64) -> (u64, Expected) {
    if cut == layout.len {
        return (events_before + layout.events(), Expected::Clean);
    }
    if cut < layout.header_end {
        return (
            events_before,
            Expected::Torn {
                offset: 0,
                partial_bytes: cut,
            },
        );
    }
    let kept: Vec<_> = layout.frames.iter().filter(|f| f.end <= cut).collect();
    let events = events_before + kept.iter().map(|f| u64::from(f.events)).sum::<u64>();
    let boundary = kept.last().map_or(layout.header_end, |f| f.end);
    if cut == boundary {
        (events, Expected::Unclean { offset: boundary })
    } else {
        (
            events,
            Expected::Torn {
                offset: boundary,
                partial_bytes: cut - boundary,
            },
        )
    }
}

/// Cut the last segment of `run` at every byte offset (copying the earlier
/// segments unchanged into a scratch run) and check what a reader makes of
/// each. Returns how many cuts were checked.
fn check_every_cut_of_last_segment(run: &Path, kinds: &[EventKind]) -> usize {
    let all = number(kinds);
    let segments = segment_files(run);
    let (last, earlier) = segments.split_last().expect("at least one segment");
    let scratch = tempfile::tempdir().unwrap();
    let mut events_before = 0;
    for path in earlier {
        let bytes = fs::read(path).unwrap();
        events_before += SegmentLayout::of(&bytes).events();
        fs::write(scratch.path().join(path.file_name().unwrap()), bytes).unwrap();
    }
    let bytes = fs::read(last).unwrap();
    let layout = SegmentLayout::of(&bytes);
    assert!(
        layout.frames.len() >= 5,
        "the last segment should hold several frames: {layout:?}"
    );
    let target = scratch.path().join(last.file_name().unwrap());
    for cut in 0..=bytes.len() {
        fs::write(&target, &bytes[..cut]).unwrap();
        let (events, end) = read_run(scratch.path());
        let end = end.unwrap_or_else(|err| {
            panic!(
                "cut at byte {cut} of {} ({layout:?}): read failed: {err}",
                target.display()
            )
        });
        let (count, want) = expected(&layout, cut as u64, events_before);
        assert_eq!(
            events,
            all[..count as usize],
            "cut at byte {cut} of {}: not the first {count} events",
            target.display()
        );
        let last_seq = count.checked_sub(1);
        let got = match end {
            LogEnd::Clean => Expected::Clean,
            LogEnd::Unclean {
                last_seq: seq,
                file,
                offset,
            } => {
                assert_eq!(
                    (seq, &file),
                    (last_seq, &target),
                    "cut at byte {cut}: unclean end"
                );
                Expected::Unclean { offset }
            }
            LogEnd::TornTail {
                last_seq: seq,
                file,
                offset,
                partial_bytes,
            } => {
                assert_eq!(
                    (seq, &file),
                    (last_seq, &target),
                    "cut at byte {cut}: torn end"
                );
                Expected::Torn {
                    offset,
                    partial_bytes,
                }
            }
        };
        assert_eq!(
            got,
            want,
            "cut at byte {cut} of {} ({} bytes; header ends at {}, frames end at {:?})",
            target.display(),
            layout.len,
            layout.header_end,
            layout.frames.iter().map(|f| f.end).collect::<Vec<_>>()
        );
    }
    bytes.len() + 1
}

#[test]
fn a_single_segment_cut_at_every_byte_reads_as_a_prefix() {
    let out = tempfile::tempdir().unwrap();
    let kinds = sample_events(30);
    let run = write_run(out.path(), &kinds, WriterConfig::default());
    assert_eq!(segment_files(&run).len(), 1);
    let cuts = check_every_cut_of_last_segment(&run, &kinds);
    assert!(cuts > 30 * 32, "{cuts} cuts");
}

#[test]
fn the_last_of_several_segments_cut_at_every_byte_reads_as_a_prefix() {
    let out = tempfile::tempdir().unwrap();
    let kinds = sample_events(40);
    let config = WriterConfig {
        segment_bytes_max: 500,
        ..WriterConfig::default()
    };
    let run = write_run(out.path(), &kinds, config);
    let segments = segment_files(&run).len();
    assert!(
        segments >= 3,
        "expected rotation, got {segments} segment(s)"
    );
    check_every_cut_of_last_segment(&run, &kinds);
}
