//! `deja inspect`: every event once, filters that select exactly the
//! right seqs, JSON that round-trips, and clean ends for torn logs and
//! closed pipes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{deja, deja_command, flip_byte, frames, json_seqs, sample_run, segment, truncate};
use deja_tests::recorder::Event;

#[test]
fn prints_one_line_per_event_in_seq_order() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let run = deja(["inspect".as_ref(), dir.as_os_str()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stderr, "");
    let lines = run.lines();
    assert_eq!(lines.len(), 10, "{}", run.stdout);
    for (seq, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("#{seq} ")), "{line}");
    }
    assert!(lines[1].contains("tcp_read") && lines[1].contains("GET /item/1"));
    assert!(lines[6].contains("task=2"), "{}", lines[6]);
}

#[test]
fn json_lines_round_trip_to_the_events_written() {
    let out = tempfile::tempdir().unwrap();
    let kinds = deja_tests::sample_events(10);
    let dir = deja_tests::write_run(out.path(), &kinds, Default::default());
    let run = deja(["inspect".as_ref(), dir.as_os_str(), "--json".as_ref()]);
    assert_eq!(run.code, 0, "{run:?}");
    let events: Vec<Event> = run
        .lines()
        .iter()
        .map(|line| serde_json::from_str(line).expect("an Event per line"))
        .collect();
    assert_eq!(events, deja_tests::number(&kinds));
}

#[test]
fn filters_select_exactly_the_right_seqs() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 20);
    let dir = dir.to_str().unwrap();
    // Sample kinds cycle with i % 5: clock_mono, tcp_read, spawn, mark,
    // clock_wall; task = i % 4.
    let cases: &[(&[&str], Vec<u64>)] = &[
        (&[], (0..20).collect()),
        (&["--from", "3", "--to", "6"], vec![3, 4, 5, 6]),
        (&["--from", "17"], vec![17, 18, 19]),
        (&["--to", "2"], vec![0, 1, 2]),
        (&["--from", "4", "--to", "4"], vec![4]),
        (&["--task", "1"], vec![1, 5, 9, 13, 17]),
        (&["--task", "9"], vec![]),
        (&["--kind", "mark"], vec![3, 8, 13, 18]),
        (&["--kind", "tcp_read"], vec![1, 6, 11, 16]),
        (&["--kind", "udp_recv"], vec![]),
        (&["--kind", "time"], vec![0, 4, 5, 9, 10, 14, 15, 19]),
        (&["--kind", "clock_wall"], vec![4, 9, 14, 19]),
        (
            &["--kind", "recv", "--kind", "spawn"],
            vec![1, 2, 6, 7, 11, 12, 16, 17],
        ),
        (&["--kind", "time", "--task", "0"], vec![0, 4]),
        (
            &["--kind", "recv", "--task", "0", "--from", "2", "--to", "17"],
            vec![16],
        ),
    ];
    for (filters, expected) in cases {
        let mut args = vec!["inspect", dir, "--json"];
        args.extend_from_slice(filters);
        let run = deja(&args);
        assert_eq!(run.code, 0, "{filters:?}: {run:?}");
        assert_eq!(&json_seqs(&run), expected, "{filters:?}");

        // The text form selects the same events.
        args.retain(|arg| *arg != "--json");
        let text = deja(&args);
        let text_seqs: Vec<u64> = text
            .lines()
            .iter()
            .map(|line| {
                line[1..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(&text_seqs, expected, "{filters:?} (text)");
    }
}

#[test]
fn an_unknown_kind_is_a_usage_error_listing_the_valid_ones() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 3);
    let run = deja([
        "inspect".as_ref(),
        dir.as_os_str(),
        "--kind".as_ref(),
        "tcp_reed".as_ref(),
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stdout, "");
    for name in ["tcp_reed", "recv", "timer", "gap", "tcp_read", "udp_recv"] {
        assert!(run.stderr.contains(name), "{name} missing: {}", run.stderr);
    }
}

#[test]
fn from_after_to_is_a_usage_error() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 3);
    let dir = dir.to_str().unwrap();
    let run = deja(["inspect", dir, "--from", "5", "--to", "2"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--from 5 is after --to 2"), "{run:?}");
}

#[test]
fn a_torn_tail_prints_everything_before_it_and_warns() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let (frames, _) = frames(&segment(&dir));
    truncate(&segment(&dir), frames[9].payload_middle());
    let run = deja(["inspect".as_ref(), dir.as_os_str(), "--json".as_ref()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json_seqs(&run), (0..9).collect::<Vec<_>>());
    assert!(
        run.stderr.starts_with("deja: warning: torn tail: "),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("after seq 8"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1);
}

#[test]
fn to_stops_reading_before_damage_further_on() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let (frames, _) = frames(&segment(&dir));
    flip_byte(&segment(&dir), frames[7].payload_middle());

    let run = deja([
        "inspect".as_ref(),
        dir.as_os_str(),
        "--json".as_ref(),
        "--to".as_ref(),
        "5".as_ref(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json_seqs(&run), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(run.stderr, "");

    // Without --to it prints the intact events, then fails on the damage.
    let run = deja(["inspect".as_ref(), dir.as_os_str(), "--json".as_ref()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(json_seqs(&run), (0..7).collect::<Vec<_>>());
    assert!(
        run.stderr.starts_with("deja: error: ")
            && run
                .stderr
                .contains(&format!("corrupt at byte {}", frames[7].start)),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: "), "{}", run.stderr);
}

#[test]
fn a_closed_pipe_ends_quietly_with_success() {
    let out = tempfile::tempdir().unwrap();
    // Far more output than a pipe buffer holds, so deja is still writing
    // when the reader goes away.
    let dir = sample_run(out.path(), 5_000);
    let mut child = deja_command(["inspect".as_ref(), dir.as_os_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("#0 "), "{first}");
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}
