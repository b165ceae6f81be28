//! `deja diff`: exit 0 for the same run, 5 for runs that differ, 1 with
//! the damaged file and offset for a corrupt one.

mod common;

use common::{deja, flip_byte, frames, sample_run, segment};
use serde_json::Value;

#[test]
fn a_run_matches_itself_and_a_shorter_one_differs() {
    let out = tempfile::tempdir().unwrap();
    let long = sample_run(&out.path().join("long"), 20);
    let short = sample_run(&out.path().join("short"), 12);

    let run = deja(["diff".as_ref(), long.as_os_str(), long.as_os_str()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "no difference: 20 operations in 4 tasks match\n"
    );
    assert_eq!(run.stderr, "");

    let run = deja([
        "diff".as_ref(),
        long.as_os_str(),
        short.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(run.code, 5, "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    // Sample events: task = seq % 4, so seq 12 (task 0, its fourth event)
    // is the first that the shorter run lacks.
    assert_eq!(report["first"]["task"], 0);
    assert_eq!(report["first"]["index"], 3);
    assert_eq!(report["first"]["a"]["seq"], 12);
    assert_eq!(report["first"]["b"], Value::Null);
    assert_eq!(report["first"]["b_missing"]["reason"], "did_fewer");
    assert_eq!(report["first"]["before_a"].as_array().unwrap().len(), 3);
    assert_eq!(
        (report["a"]["events"].clone(), report["b"]["events"].clone()),
        (20.into(), 12.into())
    );
    assert_eq!(report["differing_tasks"], 4);

    let run = deja(["diff".as_ref(), long.as_os_str(), short.as_os_str()]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stdout
            .starts_with("runs differ at task 0, operation 3 "),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("  B  (no such operation: the task did only 3 operations"));
}

#[test]
fn a_corrupt_run_is_an_error_naming_the_file_and_offset() {
    let out = tempfile::tempdir().unwrap();
    let good = sample_run(&out.path().join("good"), 10);
    let bad = sample_run(&out.path().join("bad"), 10);
    let (frames, _) = frames(&segment(&bad));
    flip_byte(&segment(&bad), frames[3].payload_middle());
    let run = deja(["diff".as_ref(), good.as_os_str(), bad.as_os_str()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    let segment = segment(&bad);
    assert!(
        run.stderr.contains(&segment.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("corrupt at byte"), "{}", run.stderr);
    assert!(run.stderr.contains("hint: ") && run.stderr.contains("deja verify"));
}
