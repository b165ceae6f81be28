//! `deja record`: run the service with recording on, then say what it wrote.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context;
use deja_recorder::writer::{read_recorder_summary, INDEX_FILE_NAME};
use deja_recorder::{LogEnd, RunMeta, RunReader};
use serde::Deserialize;

use crate::args::RecordArgs;
use crate::{child, print_hint, print_note, print_warning};

/// How many times to draw a fresh run id when the run directory exists.
const RUN_ID_ATTEMPTS: usize = 16;

/// Run CMD with `DEJA_MODE=record`; exit with its exit code.
pub(crate) fn run(args: &RecordArgs) -> anyhow::Result<ExitCode> {
    let (program, program_args) = args
        .command
        .split_first()
        .expect("clap requires CMD for record");
    let service = match &args.service {
        Some(service) => service.clone(),
        None => default_service(program),
    };
    // An output that cannot be written does not stop the service: it runs
    // live (the runtime says so too) and this reports what was not recorded.
    let out_error = fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))
        .err();
    let meta = fresh_run(&args.out, &service);
    let run_dir = args.out.join(meta.dir_name());

    let mut command = Command::new(program);
    command
        .args(program_args)
        .env("DEJA_MODE", "record")
        .env("DEJA_TRACE", &args.out)
        .env("DEJA_SERVICE", &service)
        .env("DEJA_RUN_ID", &meta.run_id);
    if let Some(mib) = args.flight {
        command.env("DEJA_FLIGHT_MIB", mib.to_string());
    }
    let status = child::run(command)?;

    if args.flight.is_some() {
        report_kept(&args.out, &meta);
    } else if run_dir.is_dir() {
        report(&run_dir);
    } else if let Some(err) = out_error {
        print_warning(&format!(
            "{} ran live, nothing was recorded: {err:#}",
            program.to_string_lossy()
        ));
        print_hint("choose a writable directory with --out");
    } else {
        print_warning(&format!(
            "{} did not record: {} was not written",
            program.to_string_lossy(),
            run_dir.display()
        ));
        print_hint("the command must use the deja runtime, e.g. `#[deja::main]` on its main; if it printed `deja: warning: cannot record`, its output directory could not be written");
    }
    Ok(child::exit_code(status))
}

/// CMD's file name without extension (`./target/debug/echo-svc` →
/// `echo-svc`); `service` if it has none.
fn default_service(program: &OsStr) -> String {
    Path::new(program)
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .filter(|stem| !stem.is_empty())
        .unwrap_or_else(|| "service".to_string())
}

/// A run id (as the runtime would choose it) whose directory under `out`
/// does not exist yet, so what is there afterwards is this run's.
fn fresh_run(out: &Path, service: &str) -> RunMeta {
    let mut meta = RunMeta::current(service);
    for _ in 1..RUN_ID_ATTEMPTS {
        if !out.join(meta.dir_name()).exists() {
            break;
        }
        meta = RunMeta::current(service);
    }
    meta
}

/// Flight mode: the kept windows (the ring itself is gone after a clean
/// exit, and left behind, readable, after a crash).
fn report_kept(out: &Path, meta: &RunMeta) {
    let prefix = format!("{}-kept", meta.dir_name());
    let mut kept: Vec<_> = fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix))
        })
        .collect();
    kept.sort();
    for dir in &kept {
        report(dir);
    }
    let ring = out.join(format!("{}.flight", meta.dir_name()));
    if ring.is_dir() {
        print_warning(&format!(
            "the flight ring {} was left behind (the service did not exit cleanly); it reads like a run",
            ring.display()
        ));
    } else if kept.is_empty() {
        print_note("flight recorder: no window was kept (send SIGUSR2, or call deja::flight::keep(), to keep one)");
    }
}

/// `deja: recorded DIR (N events, SIZE)`, and a warning if the log does not
/// end cleanly.
fn report(run_dir: &Path) {
    let (events, warning) = count_events(run_dir);
    if events == 0
        && warning
            .as_deref()
            .is_some_and(|w| w.starts_with("empty run: "))
    {
        // Killed, or out of disk, between creating the run directory and
        // writing its first record: say that, not "recorded (0 events)".
        print_warning(&format!(
            "nothing was recorded: {} holds no events (the service ended, or could not write, \
             before its first one)",
            run_dir.display()
        ));
        return;
    }
    print_note(&format!(
        "recorded {} ({events} events, {})",
        run_dir.display(),
        super::stats::human_bytes(dir_bytes(run_dir))
    ));
    if let Some(warning) = warning {
        print_warning(&warning);
    }
    if let Some(summary) = read_recorder_summary(run_dir) {
        if summary.events_after_close > 0 {
            print_note(&format!(
                "{} event(s) of tasks still running at exit were not recorded (a recording ends \
                 at the service's exit)",
                summary.events_after_close
            ));
        }
        if summary.events_dropped > 0 || summary.last_write_error.is_some() {
            print_warning(&format!(
                "the recorder lost {} of {} events{}; `deja stats {}` shows the gaps",
                summary.events_dropped,
                summary.events_produced,
                summary
                    .last_write_error
                    .as_ref()
                    .map(|err| format!(
                        " ({} write outage(s), last error: {err})",
                        summary.write_outages
                    ))
                    .unwrap_or_default(),
                run_dir.display()
            ));
        }
    }
}

/// The parts of `index.json` the summary needs.
#[derive(Deserialize)]
struct Index {
    segments: Vec<IndexSegment>,
}

/// One segment in `index.json`.
#[derive(Deserialize)]
struct IndexSegment {
    events: u64,
    closed: bool,
}

/// The number of events, from `index.json` when it describes a closed run
/// (the writer rewrites it on close), else by reading the log; and how the
/// log ends, if not cleanly.
fn count_events(run_dir: &Path) -> (u64, Option<String>) {
    let index = fs::read(run_dir.join(INDEX_FILE_NAME))
        .ok()
        .and_then(|json| serde_json::from_slice::<Index>(&json).ok());
    if let Some(index) = index {
        if !index.segments.is_empty() && index.segments.iter().all(|segment| segment.closed) {
            return (
                index.segments.iter().map(|segment| segment.events).sum(),
                None,
            );
        }
    }
    let mut reader = match RunReader::open(run_dir) {
        Ok(reader) => reader,
        Err(err) => return (0, Some(err.to_string())),
    };
    let mut events = 0;
    for item in reader.by_ref() {
        match item {
            Ok(_) => events += 1,
            Err(err) => return (events, Some(err.to_string())),
        }
    }
    (events, reader.end().and_then(LogEnd::warning))
}

/// Total size of the files in the run directory.
fn dir_bytes(run_dir: &Path) -> u64 {
    fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(fs::Metadata::is_file)
        .map(|metadata| metadata.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_service_is_the_program_name() {
        assert_eq!(
            default_service(OsStr::new("./target/debug/echo-svc")),
            "echo-svc"
        );
        assert_eq!(default_service(OsStr::new("sh")), "sh");
        assert_eq!(default_service(OsStr::new("/")), "service");
    }
}
