//! A log cut exactly at a record boundary looks complete, record by record;
//! only the missing footer tells it apart from a closed log. It must read
//! as an unclean shutdown ending at the last event of the kept frames,
//! never as clean.

use std::fs;
use std::path::Path;

use deja_recorder::{LogEnd, LogWriter, RunMeta, WriterConfig};
use deja_tests::{number, read_run, sample_events, segment_files, write_run, SegmentLayout};

/// Copy segments `..keep` of `run` into `scratch` (emptied first), the last
/// of them cut to `cut` bytes.
fn copy_cut(run: &Path, scratch: &Path, keep: usize, cut: u64) {
    for entry in fs::read_dir(scratch).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let segments = segment_files(run);
    for (index, path) in segments[..keep].iter().enumerate() {
        let mut bytes = fs::read(path).unwrap();
        if index + 1 == keep {
            bytes.truncate(cut as usize);
        }
        fs::write(scratch.join(path.file_name().unwrap()), bytes).unwrap();
    }
}

/// For every segment of `run` and every record boundary in it (the end of
/// its header, of each frame, and of its footer when later segments
/// follow), keep the log up to there and check it reads as unclean.
/// Returns how many cuts were checked.
fn check_every_boundary(run: &Path) -> usize {
    let (all, end) = read_run(run);
    assert_eq!(end.unwrap(), LogEnd::Clean);
    let segments = segment_files(run);
    let scratch = tempfile::tempdir().unwrap();
    let mut events_before = 0usize;
    let mut checked = 0;
    for (index, path) in segments.iter().enumerate() {
        let layout = SegmentLayout::of(&fs::read(path).unwrap());
        let mut cuts: Vec<(u64, usize)> = vec![(layout.header_end, events_before)];
        let mut events = events_before;
        for frame in &layout.frames {
            events += frame.events as usize;
            cuts.push((frame.end, events));
        }
        if index + 1 < segments.len() {
            // Killed after the rotated segment's footer, before the next
            // segment was created.
            cuts.push((layout.len, events));
        }
        for (cut, kept) in cuts {
            copy_cut(run, scratch.path(), index + 1, cut);
            let file = scratch.path().join(path.file_name().unwrap());
            let (events, end) = read_run(scratch.path());
            let end = end.unwrap_or_else(|err| {
                panic!("segment {index} cut at byte {cut} ({layout:?}): read failed: {err}")
            });
            assert_eq!(
                events,
                all[..kept],
                "segment {index} cut at byte {cut}: not the first {kept} events"
            );
            let offset = if cut == layout.len {
                layout.footer_start.expect("a rotated segment has a footer")
            } else {
                cut
            };
            let last_seq = all[..kept].last().map(|event| event.seq);
            assert_eq!(
                end,
                LogEnd::Unclean {
                    last_seq,
                    file,
                    offset
                },
                "segment {index} cut at byte {cut} (frame boundary)"
            );
            let warning = end.warning().expect("an unclean end warns");
            assert!(
                warning.contains("unclean shutdown"),
                "segment {index} cut at byte {cut}: warning {warning:?}"
            );
            let seq = last_seq.map_or("no events".to_string(), |seq| format!("seq {seq}"));
            assert!(
                warning.contains(&seq),
                "segment {index} cut at byte {cut}: warning {warning:?} should name {seq}"
            );
            checked += 1;
        }
        events_before = events;
    }
    checked
}

#[test]
fn one_event_frames_cut_at_each_boundary_read_as_unclean() {
    let out = tempfile::tempdir().unwrap();
    let run = write_run(out.path(), &sample_events(30), WriterConfig::default());
    assert_eq!(check_every_boundary(&run), 31);
}

#[test]
fn batched_frames_cut_at_each_boundary_end_at_the_last_kept_event() {
    let out = tempfile::tempdir().unwrap();
    let events = number(&sample_events(120));
    let mut writer = LogWriter::create(
        out.path(),
        RunMeta::new("batched", "run"),
        WriterConfig::default(),
    )
    .unwrap();
    // Frames of 1, 2, 3, ... events, so each boundary's last seq differs
    // from its frame count.
    let mut rest = &events[..];
    let mut size = 1;
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(size.min(rest.len()));
        writer.write(batch).unwrap();
        rest = tail;
        size += 1;
    }
    let run = writer.dir().to_path_buf();
    let totals = writer.finish().unwrap();
    assert_eq!(totals.frames, 15);
    assert_eq!(check_every_boundary(&run), 16);
}

#[test]
fn rotated_runs_cut_at_each_boundary_of_each_segment_read_as_unclean() {
    let out = tempfile::tempdir().unwrap();
    let config = WriterConfig {
        segment_bytes_max: 400,
        ..WriterConfig::default()
    };
    let run = write_run(out.path(), &sample_events(40), config);
    let segments = segment_files(&run).len();
    assert!(
        segments >= 4,
        "expected rotation, got {segments} segment(s)"
    );
    // Every frame end and header end, plus the footer end of every segment
    // but the last.
    assert_eq!(check_every_boundary(&run), 40 + segments + segments - 1);
}
