//! What the CLI tests share: running the binary, writing runs, finding
//! frames in a segment file to damage them.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) use deja_tests::recorder;

/// What one run of `deja` did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// stdout's lines.
    pub(crate) fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Never a panic, whatever the input.
    pub(crate) fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "deja panicked:\n{}",
            self.stderr
        );
    }
}

/// The `deja` binary this test crate was built with.
pub(crate) fn deja_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_deja"));
    command.args(args).stdin(Stdio::null());
    command
}

/// Run `deja ARGS` to completion.
pub(crate) fn deja<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = deja_command(args).output().expect("run deja");
    let run = Run {
        code: output
            .status
            .code()
            .expect("deja exited, not killed by a signal"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    };
    run.assert_no_panic();
    run
}

/// A closed run of `count` sample events (one frame each): seq = i,
/// task = i % 4, mono_ns = i * 1000, kinds cycling through clock_mono,
/// tcp_read, spawn, mark, clock_wall.
pub(crate) fn sample_run(out: &Path, count: u64) -> PathBuf {
    deja_tests::write_run(
        out,
        &deja_tests::sample_events(count),
        recorder::WriterConfig::default(),
    )
}

/// The run's first segment file.
pub(crate) fn segment(dir: &Path) -> PathBuf {
    deja_tests::only_segment(dir)
}

/// A frame's place in a segment file.
pub(crate) use deja_tests::FrameSpan as FrameAt;

/// A segment file's frames, and the offset after the last one (where the
/// footer is, or the end of the file).
pub(crate) fn frames(segment: &Path) -> (Vec<FrameAt>, u64) {
    let layout = deja_tests::SegmentLayout::of(&std::fs::read(segment).unwrap());
    let after = layout
        .frames
        .last()
        .map_or(layout.header_end, |frame| frame.end);
    (layout.frames, after)
}

/// Cut `file` to `len` bytes.
pub(crate) fn truncate(file: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Flip every bit of the byte at `offset`.
pub(crate) fn flip_byte(file: &Path, offset: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[offset as usize] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

/// Parse stdout as JSON lines and return each object's `seq`.
pub(crate) fn json_seqs(run: &Run) -> Vec<u64> {
    run.lines()
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
            value["seq"].as_u64().expect("seq")
        })
        .collect()
}
