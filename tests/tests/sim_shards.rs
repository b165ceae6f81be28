//! `deja sim --shard K/N` on the double-charge simulation: the shards run
//! every seed of the sweep exactly once, `deja sim merge` of their reports
//! equals the unsharded sweep's report, JUnit XML has one case per seed,
//! and merging refuses a missing shard, a shard twice and a damaged report.

use std::path::Path;
use std::process::{Command, Output};

use deja_replayer::sweep::SweepRecord;
use deja_tests::e2e::{run_bounded, workspace_bin};

const SEEDS: &str = "30";
const SHARDS: u64 = 3;

fn deja_sim(dir: &Path, args: &[&str]) -> Output {
    run_bounded(
        Command::new(workspace_bin("deja"))
            .current_dir(dir)
            .args([
                "sim", "--seeds", SEEDS, "--all", "--jobs", "2", "--out", "logs",
            ])
            .args(args)
            .arg("--")
            .arg(workspace_bin("double-charge"))
            .arg("sim"),
    )
}

fn deja(dir: &Path, args: &[&str]) -> Output {
    run_bounded(
        Command::new(workspace_bin("deja"))
            .current_dir(dir)
            .args(args),
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn shards_merge_into_the_unsharded_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let whole = deja_sim(
        dir.path(),
        &["--report", "whole.json", "--junit", "whole.xml"],
    );
    // Double charge fails some seeds: the merge must carry failures too.
    assert_eq!(whole.status.code(), Some(1), "{}", stderr(&whole));
    let whole = SweepRecord::read(&dir.path().join("whole.json")).unwrap();
    assert_eq!(whole.seeds_run(), 30);
    assert!(whole.complete);
    assert!(!whole.failures.is_empty());

    let mut reports = Vec::new();
    let mut runs_per_seed = [0u32; 30];
    for index in 1..=SHARDS {
        let shard = format!("{index}/{SHARDS}");
        let report = format!("shard-{index}.json");
        let junit = format!("shard-{index}.xml");
        let output = deja_sim(
            dir.path(),
            &["--shard", &shard, "--report", &report, "--junit", &junit],
        );
        let text = stderr(&output);
        assert!(text.contains(&format!("(shard {shard}: ")), "{text}");
        let record = SweepRecord::read(&dir.path().join(&report)).unwrap();
        assert_eq!(
            output.status.code(),
            Some(if record.failures.is_empty() { 0 } else { 1 }),
            "{text}"
        );
        for seed in 0..30u64 {
            if record.ran_seed(seed) {
                runs_per_seed[seed as usize] += 1;
            }
        }
        let xml = std::fs::read_to_string(dir.path().join(&junit)).unwrap();
        assert_eq!(xml.matches("<testcase ").count() as u64, record.seeds_run());
        assert_eq!(xml.matches("<failure ").count(), record.failures.len());
        reports.push(report);
    }
    assert_eq!(
        runs_per_seed, [1; 30],
        "every seed runs in exactly one shard"
    );

    // Shards in any order.
    reports.reverse();
    let mut args = vec![
        "sim",
        "merge",
        "--report",
        "merged.json",
        "--junit",
        "merged.xml",
    ];
    args.extend(reports.iter().map(String::as_str));
    let merged = deja(dir.path(), &args);
    let text = stderr(&merged);
    assert_eq!(
        merged.status.code(),
        Some(1),
        "failures make exit 1: {text}"
    );
    assert!(text.contains("rerun: deja sim --seed "), "{text}");
    let mut merged = SweepRecord::read(&dir.path().join("merged.json")).unwrap();
    merged.wall_ms = whole.wall_ms;
    assert_eq!(merged, whole);
    let merged_xml = std::fs::read_to_string(dir.path().join("merged.xml")).unwrap();
    let whole_xml = std::fs::read_to_string(dir.path().join("whole.xml")).unwrap();
    let cases = |xml: &str| -> Vec<String> {
        xml.lines()
            .filter(|line| line.contains("<testcase "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(cases(&merged_xml), cases(&whole_xml));
}

#[test]
fn merge_refuses_a_missing_shard_a_duplicate_and_a_damaged_report() {
    let dir = tempfile::tempdir().unwrap();
    for index in 1..=2 {
        let shard = format!("{index}/{SHARDS}");
        let report = format!("shard-{index}.json");
        deja_sim(dir.path(), &["--shard", &shard, "--report", &report]);
    }
    let missing = deja(
        dir.path(),
        &["sim", "merge", "shard-1.json", "shard-2.json"],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("shards missing: 3"),
        "{}",
        stderr(&missing)
    );

    let twice = deja(
        dir.path(),
        &[
            "sim",
            "merge",
            "shard-1.json",
            "shard-1.json",
            "shard-2.json",
        ],
    );
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        stderr(&twice).contains("shard 1/3 appears twice"),
        "{}",
        stderr(&twice)
    );

    std::fs::write(dir.path().join("bad.json"), b"not json").unwrap();
    let damaged = deja(dir.path(), &["sim", "merge", "shard-1.json", "bad.json"]);
    assert_eq!(damaged.status.code(), Some(1));
    assert!(
        stderr(&damaged).contains("bad.json is not a deja sim report"),
        "{}",
        stderr(&damaged)
    );

    for bad in ["0/3", "4/3", "x"] {
        let usage = deja_sim(dir.path(), &["--shard", bad]);
        assert_eq!(usage.status.code(), Some(2), "{bad}: {}", stderr(&usage));
        assert!(stderr(&usage).contains("K/N"), "{}", stderr(&usage));
    }
}
