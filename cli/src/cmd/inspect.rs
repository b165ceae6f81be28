//! `deja inspect`: the run's events, filtered, one per line.

use std::io::{self, Write};
use std::process::ExitCode;

use deja_recorder::{Event, LogEnd, ReadError, RunReader};

use crate::args::InspectArgs;
use crate::{exit, print_warning};

/// Stream the run, printing the events that pass the filters.
pub(crate) fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let mut reader = RunReader::open(&args.run_dir)?;
    let mut out = super::stdout();
    let streamed = stream(&mut reader, args, &mut out).and_then(|read| {
        out.flush()?;
        Ok(read)
    });
    match streamed {
        Ok(None) => {}
        Ok(Some(read_error)) => return Err(read_error.into()),
        Err(write_error) => return super::write_failed(write_error),
    }
    // `end` is known only if the whole log was read (not when --to stopped it).
    if let Some(warning) = reader.end().and_then(LogEnd::warning) {
        print_warning(&warning);
    }
    Ok(ExitCode::from(exit::SUCCESS))
}

/// Print matching events until the log ends or passes `--to`. A read
/// error comes back as `Ok(Some(_))` once the events before it are out;
/// `Err` is a write error.
fn stream(
    reader: &mut RunReader,
    args: &InspectArgs,
    out: &mut impl Write,
) -> io::Result<Option<ReadError>> {
    for item in reader {
        let event = match item {
            Ok(event) => event,
            Err(err) => return Ok(Some(err)),
        };
        // Seqs strictly increase (the reader checks it), so nothing later can match.
        if args.to.is_some_and(|to| event.seq > to) {
            break;
        }
        if !selected(args, &event) {
            continue;
        }
        if args.json {
            serde_json::to_writer(&mut *out, &event)?;
            out.write_all(b"\n")?;
        } else {
            writeln!(out, "{event}")?;
        }
    }
    Ok(None)
}

fn selected(args: &InspectArgs, event: &Event) -> bool {
    args.from.is_none_or(|from| event.seq >= from)
        && args.task.is_none_or(|task| event.task.0 == task)
        && (args.kinds.is_empty() || args.kinds.iter().any(|filter| filter.matches(&event.kind)))
}
