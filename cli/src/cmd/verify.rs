//! `deja verify`: read every event, check every checksum, say how the log ends.

use std::path::Path;
use std::process::ExitCode;

use deja_recorder::{LogEnd, ReadError, RunReader};

use crate::{exit, print_error, print_hint, print_note, print_warning};

/// The first and last seq of the events read so far.
type SeqRange = Option<(u64, u64)>;

/// Exit 0 if intact (with a warning for a torn tail or unclean shutdown),
/// 4 on corruption, 1 (`Err`) if the run cannot be read at all.
pub(crate) fn run(args: &crate::args::VerifyArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.run_dir;
    let mut reader = match RunReader::open(dir) {
        Ok(reader) => reader,
        Err(err) if err.is_corruption() => return Ok(corrupt(dir, &err, 0, None)),
        Err(err) => return Err(err.into()),
    };
    let mut events = 0u64;
    let mut seqs: SeqRange = None;
    for item in reader.by_ref() {
        match item {
            Ok(event) => {
                events += 1;
                seqs = Some((seqs.map_or(event.seq, |(first, _)| first), event.seq));
            }
            Err(err) if err.is_corruption() => return Ok(corrupt(dir, &err, events, seqs)),
            Err(err) => return Err(err.into()),
        }
    }
    if let Some(warning) = reader.end().and_then(LogEnd::warning) {
        print_warning(&warning);
    }
    let stats = reader.stats();
    let last = seqs.map_or_else(|| "none".to_string(), |(_, last)| last.to_string());
    super::print(&format!(
        "ok: {events} events in {} segment(s), {} frames, last seq {last}\n",
        stats.segments, stats.frames
    ))
}

/// Report damage: where, what is intact before it, what to do.
fn corrupt(dir: &Path, err: &ReadError, events: u64, seqs: SeqRange) -> ExitCode {
    print_error(&err.to_string());
    let hint = match seqs {
        Some((first, last)) => {
            print_note(&format!(
                "{events} events before the damage are intact (seq {first} to {last})"
            ));
            format!(
                "a crash only ever cuts the end of a log, so suspect the disk or the copy; \
                 `deja inspect {} --to {last}` prints the intact events",
                dir.display()
            )
        }
        None => {
            print_note("no events before the damage are intact");
            "a crash only ever cuts the end of a log, so suspect the disk or the copy".to_string()
        }
    };
    print_hint(&hint);
    ExitCode::from(exit::CORRUPTION)
}
