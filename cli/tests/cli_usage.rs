//! Usage errors exit 2, help exits 0, and bad input is a one-line error
//! with a hint (exit 1), never a panic.

mod common;

use common::{deja, Run};

#[test]
fn help_and_version_exit_0() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["--version"],
        &["help"],
        &["record", "--help"],
        &["replay", "--help"],
        &["inspect", "--help"],
        &["verify", "--help"],
        &["stats", "--help"],
        &["diff", "--help"],
    ] {
        let run = deja(args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(!run.stdout.is_empty(), "{args:?}");
    }
    let run = deja(["--help"]);
    for command in ["record", "replay", "inspect", "verify", "stats", "diff"] {
        assert!(run.stdout.contains(command), "{}", run.stdout);
    }
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["inspect"],
        &["inspect", "dir", "--bogus"],
        &["inspect", "dir", "--from", "minus-one"],
        &["inspect", "dir", "--task"],
        &["stats", "dir", "extra"],
        &["verify", "dir", "--json"],
        &["diff", "a"],
        &["diff", "a", "b", "--context", "-1"],
    ] {
        let run = deja(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert_eq!(run.stdout, "", "{args:?}");
        // Bare `deja` prints the help, the others an error; on stderr either way.
        assert!(
            run.stderr.starts_with("error: ") || run.stderr.contains("Usage: deja"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

fn assert_error_with_hint(run: &Run, hint: &str) {
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(lines[0].starts_with("deja: error: "), "{}", lines[0]);
    assert!(lines[1].starts_with("hint: "), "{}", lines[1]);
    assert!(lines[1].contains(hint), "{}", lines[1]);
}

#[test]
fn a_missing_directory_is_an_error_with_a_hint() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("no-such-run");
    for command in ["inspect", "verify", "stats"] {
        let run = deja([command.as_ref(), missing.as_os_str()]);
        assert_error_with_hint(&run, "pass the run directory written by `deja record`");
        assert!(run.stderr.contains("no-such-run"), "{}", run.stderr);
        // The OS error is said once.
        assert_eq!(
            run.stderr.matches("os error 2").count(),
            1,
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_file_or_a_directory_of_other_files_is_an_error_with_a_hint() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("notes.txt");
    std::fs::write(&file, "not a run").unwrap();
    let other = out.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("README"), "not a run").unwrap();
    for command in ["inspect", "verify", "stats"] {
        for path in [&file, &other] {
            let run = deja([command.as_ref(), path.as_os_str()]);
            assert_error_with_hint(&run, "00000000.deja");
        }
    }
}

/// Issue 18: an empty directory is a run killed before its first segment:
/// every command reads it as an empty run, with one warning saying so.
#[test]
fn an_empty_directory_is_an_empty_run() {
    let out = tempfile::tempdir().unwrap();
    let empty = out.path().join("svc-run");
    std::fs::create_dir(&empty).unwrap();
    for command in ["inspect", "verify", "stats"] {
        let run = deja([command.as_ref(), empty.as_os_str()]);
        assert_eq!(run.code, 0, "{command}: {run:?}");
        assert_eq!(
            run.stderr.matches("empty run: ").count(),
            1,
            "{command}: {run:?}"
        );
    }
}

#[test]
fn a_segment_file_instead_of_its_directory_gets_pointed_at_the_directory() {
    let out = tempfile::tempdir().unwrap();
    let dir = common::sample_run(out.path(), 3);
    let run = deja(["stats".as_ref(), common::segment(&dir).as_os_str()]);
    assert_error_with_hint(&run, &dir.display().to_string());
}

#[test]
fn garbage_segments_are_errors_for_inspect_and_stats() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("garbage");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("00000000.deja"), [0xa5; 1000]).unwrap();
    std::fs::write(dir.join("index.json"), "{").unwrap();
    for command in ["inspect", "stats"] {
        let run = deja([command.as_ref(), dir.as_os_str()]);
        assert_error_with_hint(&run, "not one");
        assert!(run.stderr.contains("not a deja log"), "{}", run.stderr);
    }
}
