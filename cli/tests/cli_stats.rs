//! `deja stats`: the right counts, gaps and sizes, as JSON and as a table.

mod common;

use std::path::{Path, PathBuf};

use common::recorder::{Event, EventKind, GapReason, LogWriter, RunMeta, TaskId, WriterConfig};
use common::{deja, flip_byte, frames, sample_run, segment, truncate, Run};
use serde_json::Value;

fn stats_json(dir: &Path) -> (Run, Value) {
    let run = deja(["stats".as_ref(), dir.as_os_str(), "--json".as_ref()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.lines().len(), 1, "one JSON object: {}", run.stdout);
    let value = serde_json::from_str(&run.stdout).expect("JSON");
    (run, value)
}

/// Seqs 0 and 1, then 2..=4 lost (a gap at seq 5), then seq 6; two frames.
fn gap_run(out: &Path) -> PathBuf {
    let event = |seq, task, kind| Event {
        seq,
        task: TaskId(task),
        mono_ns: seq * 1_000_000,
        kind,
    };
    let mut meta = RunMeta::new("gappy", "run-1");
    meta.host = "box".into();
    meta.pid = 4242;
    meta.start_wall_unix_ns = 1_795_435_200_000_000_000;
    let mut writer = LogWriter::create(out, meta, WriterConfig::default()).unwrap();
    writer
        .write(&[
            event(0, 0, EventKind::ClockMono { ns: 0 }),
            event(
                1,
                1,
                EventKind::Mark {
                    name: "order".into(),
                    value: b"42".to_vec(),
                },
            ),
        ])
        .unwrap();
    writer
        .write(&[
            event(
                5,
                1,
                EventKind::Gap {
                    first_lost_seq: 2,
                    lost: 3,
                    reason: GapReason::QueueFull,
                },
            ),
            event(6, 2, EventKind::Exit { code: 0 }),
        ])
        .unwrap();
    let dir = writer.dir().to_path_buf();
    writer.finish().unwrap();
    dir
}

#[test]
fn counts_events_kinds_gaps_and_lost_events() {
    let out = tempfile::tempdir().unwrap();
    let dir = gap_run(out.path());
    let (run, stats) = stats_json(&dir);
    assert_eq!(run.stderr, "");
    assert_eq!(stats["events"], 4);
    assert_eq!(
        stats["by_kind"],
        serde_json::json!({"clock_mono": 1, "mark": 1, "gap": 1, "exit": 1})
    );
    assert_eq!(
        stats["by_class"],
        serde_json::json!({"time": 1, "mark": 1, "gap": 1, "exit": 1})
    );
    assert_eq!(stats["gaps"], 1);
    assert_eq!(stats["lost_events"], 3);
    assert_eq!(stats["tasks"], 3);
    assert_eq!(
        (&stats["first_seq"], &stats["last_seq"]),
        (&0.into(), &6.into())
    );
    assert_eq!(stats["duration_ns"], 6_000_000);
    assert_eq!(stats["segments"], 1);
    assert_eq!(stats["frames"], 2);
    assert_eq!(stats["end"]["state"], "clean");

    let run_facts = &stats["run"];
    assert_eq!(run_facts["service"], "gappy");
    assert_eq!(run_facts["run_id"], "run-1");
    assert_eq!(run_facts["host"], "box");
    assert_eq!(run_facts["pid"], 4242);
    assert_eq!(
        run_facts["start_wall_unix_ns"],
        1_795_435_200_000_000_000i64
    );
    assert_eq!(run_facts["deja_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(run_facts["format_version"], 1);

    let on_disk = std::fs::metadata(segment(&dir)).unwrap().len();
    assert_eq!(stats["bytes_on_disk"], on_disk);
    assert_eq!(
        stats["bytes_per_event"].as_f64(),
        Some(on_disk as f64 / 4.0)
    );
    let ratio = stats["bytes_raw"].as_f64().unwrap() / stats["bytes_compressed"].as_f64().unwrap();
    assert_eq!(stats["compression_ratio"].as_f64(), Some(ratio));
}

#[test]
fn counts_a_sample_run_by_kind_and_class() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 20);
    let (_, stats) = stats_json(&dir);
    assert_eq!(stats["events"], 20);
    assert_eq!(
        stats["by_kind"],
        serde_json::json!({
            "clock_mono": 4, "tcp_read": 4, "spawn": 4, "mark": 4, "clock_wall": 4,
        })
    );
    assert_eq!(
        stats["by_class"],
        serde_json::json!({"time": 8, "recv": 4, "spawn": 4, "mark": 4})
    );
    assert_eq!(stats["tasks"], 4);
    assert_eq!(stats["gaps"], 0);
    assert_eq!(stats["lost_events"], 0);
    assert_eq!(stats["frames"], 20);
    assert_eq!(stats["duration_ns"], 19_000);
}

#[test]
fn the_table_shows_the_same_facts() {
    let out = tempfile::tempdir().unwrap();
    let dir = gap_run(out.path());
    let run = deja(["stats".as_ref(), dir.as_os_str()]);
    assert_eq!(run.code, 0, "{run:?}");
    let row = |label: &str| -> String {
        let line = run
            .lines()
            .into_iter()
            .find(|line| line.split("  ").next() == Some(label))
            .unwrap_or_else(|| panic!("no {label} row in\n{}", run.stdout));
        line[label.len()..].trim().to_string()
    };
    assert_eq!(row("service"), "gappy");
    assert_eq!(row("events"), "4 (seq 0 to 6)");
    assert_eq!(
        row("gaps"),
        "lost 3 events in 1 gap (queue full: 1 gap, 3 events)"
    );
    assert_eq!(row("tasks"), "3");
    assert_eq!(row("started"), "2026-11-23T12:00:00.000000000Z");
    assert_eq!(row("duration"), "0.006000000s");
    assert_eq!(row("log end"), "clean");
    // The summary's values start in one column.
    let column = |label: &str| {
        let line = run
            .lines()
            .into_iter()
            .find(|l| l.starts_with(label))
            .unwrap();
        line.len() - line[label.len()..].trim_start().len()
    };
    assert_eq!(column("service"), column("compression"));
    assert!(run.stdout.contains("\nkind "), "{}", run.stdout);
}

#[test]
fn a_torn_run_is_summarized_with_a_warning() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let (frames, _) = frames(&segment(&dir));
    truncate(&segment(&dir), frames[8].payload_middle());
    let (run, stats) = stats_json(&dir);
    assert!(
        run.stderr.starts_with("deja: warning: torn tail"),
        "{}",
        run.stderr
    );
    assert_eq!(stats["events"], 8);
    assert_eq!(stats["end"]["state"], "torn_tail");
    assert_eq!(stats["end"]["offset"], frames[8].start);
}

#[test]
fn a_corrupt_run_is_an_error_pointing_at_verify() {
    let out = tempfile::tempdir().unwrap();
    let dir = sample_run(out.path(), 10);
    let (frames, _) = frames(&segment(&dir));
    flip_byte(&segment(&dir), frames[3].payload_middle());
    let run = deja(["stats".as_ref(), dir.as_os_str()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("corrupt at byte"), "{}", run.stderr);
    assert!(run.stderr.contains("hint: ") && run.stderr.contains("deja verify"));
}
