//! `deja verify`: 0 for an intact log, 0 with a warning for what a crash
//! leaves (torn tail, missing footer), 4 with file and byte offset for
//! damage anywhere else.

mod common;

use common::{deja, flip_byte, frames, recorder, sample_run, segment, truncate, Run};

fn verify(dir: &std::path::Path) -> Run {
    deja(["verify".as_ref(), dir.as_os_str()])
}

#[test]
fn a_clean_run_is_ok() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let run = verify(&dir);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "ok: 10 events in 1 segment(s), 10 frames, last seq 9\n"
    );
    assert_eq!(run.stderr, "");
}

#[test]
fn a_rotated_run_is_ok_across_segments() {
    let out = tempfile::tempdir().unwrap();
    let config = recorder::WriterConfig {
        segment_bytes_max: 1, // rotate after every frame
        ..Default::default()
    };
    let dir = deja_tests::write_run(out.path(), &deja_tests::sample_events(4), config);
    let run = verify(&dir);
    assert_eq!(run.code, 0, "{run:?}");
    // One frame per segment; rotation is lazy, so no empty segment at the end.
    assert_eq!(
        run.stdout,
        "ok: 4 events in 4 segment(s), 4 frames, last seq 3\n"
    );

    // A segment missing from the middle is damage.
    std::fs::remove_file(dir.join("00000002.deja")).unwrap();
    let run = verify(&dir);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("00000002.deja"), "{}", run.stderr);
}

#[test]
fn a_run_cut_inside_a_frame_is_ok_with_a_torn_tail_warning() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let (frames, _) = frames(&segment(&dir));
    truncate(&segment(&dir), frames[9].payload_middle());
    let run = verify(&dir);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "ok: 9 events in 1 segment(s), 9 frames, last seq 8\n"
    );
    assert!(
        run.stderr.starts_with(&format!(
            "deja: warning: torn tail: {} ends inside a record at byte {}",
            segment(&dir).display(),
            frames[9].start
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn a_run_cut_inside_a_frame_header_is_a_torn_tail_too() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let (frames, _) = frames(&segment(&dir));
    truncate(&segment(&dir), frames[9].start + 10);
    let run = verify(&dir);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("ok: 9 events"), "{}", run.stdout);
    assert!(
        run.stderr.starts_with("deja: warning: torn tail"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_run_cut_at_a_frame_boundary_is_ok_with_an_unclean_shutdown_warning() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let (frames, footer) = frames(&segment(&dir));

    // Only the footer is missing: every event is there.
    truncate(&segment(&dir), footer);
    let run = verify(&dir);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "ok: 10 events in 1 segment(s), 10 frames, last seq 9\n"
    );
    assert!(
        run.stderr.starts_with("deja: warning: unclean shutdown: ")
            && run.stderr.contains(&format!("no footer at byte {footer}"))
            && run.stderr.contains("after seq 9"),
        "{}",
        run.stderr
    );

    // Cut between two earlier frames.
    truncate(&segment(&dir), frames[6].start);
    let run = verify(&dir);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "ok: 6 events in 1 segment(s), 6 frames, last seq 5\n"
    );
    assert!(run.stderr.contains("unclean shutdown"), "{}", run.stderr);
}

#[test]
fn a_flipped_payload_byte_is_corruption_with_file_and_offset() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let file = segment(&dir);
    let (frames, _) = frames(&file);
    flip_byte(&file, frames[5].payload_middle());
    let run = verify(&dir);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(run.stdout, "");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stderr);
    assert_eq!(
        lines[0],
        format!(
            "deja: error: {}: corrupt at byte {}: frame payload checksum mismatch",
            file.display(),
            frames[5].start
        )
    );
    assert!(lines[0].contains("00000000.deja"));
    assert_eq!(
        lines[1],
        "deja: 5 events before the damage are intact (seq 0 to 4)"
    );
    assert!(
        lines[2].starts_with("hint: ") && lines[2].contains("--to 4"),
        "{}",
        lines[2]
    );
}

#[test]
fn a_flipped_frame_header_byte_is_corruption_not_a_torn_tail() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let file = segment(&dir);
    let (frames, _) = frames(&file);
    // The payload length of the last frame: a torn tail if it were trusted.
    flip_byte(&file, frames[9].start + 5);
    let run = verify(&dir);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("corrupt at byte {}", frames[9].start)),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("9 events before the damage are intact"));
}

#[test]
fn files_that_are_not_deja_logs_are_corruption() {
    let out = tempfile::tempdir().unwrap();
    for garbage in [&b"hello"[..], &[0x5a; 4096][..]] {
        let dir = out.path().join(format!("garbage-{}", garbage.len()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("00000000.deja"), garbage).unwrap();
        let run = verify(&dir);
        assert_eq!(run.code, 4, "{run:?}");
        assert!(run.stderr.contains("not a deja log"), "{}", run.stderr);
        assert!(run
            .stderr
            .contains("no events before the damage are intact"));
    }
}

#[test]
fn unreadable_input_is_an_error_not_corruption() {
    let out = tempfile::tempdir().unwrap();
    // A directory with no segments but something else is not a run; an
    // empty one is a run killed before its first segment (issue 18:
    // `a_run_directory_left_empty_reads_as_an_empty_run`).
    let other = out.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    for dir in [out.path().join("missing"), other] {
        let run = verify(&dir);
        assert_eq!(run.code, 1, "{run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{}", run.stderr);
        assert!(lines[0].starts_with("deja: error: "), "{}", lines[0]);
        assert!(lines[1].starts_with("hint: "), "{}", lines[1]);
    }
}
