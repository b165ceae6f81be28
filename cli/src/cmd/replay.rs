//! `deja replay`: check the run, then run the service with replay on.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use deja_recorder::format::segment_file_name;
use deja_recorder::RunReader;

use crate::args::ReplayArgs;
use crate::{child, exit, print_error, print_hint, print_warning};

/// Run CMD (by default the recorded command line) with `DEJA_MODE=replay`
/// and exit with its exit code: the runtime in CMD exits like the recorded
/// run on success, [`exit::DIVERGENCE`] when replay diverged and
/// [`exit::ERROR`] for a bad log. deja checks only that the run opens and
/// its header reads; the events are CMD's to read.
pub(crate) fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let reader = RunReader::open(&args.run_dir)?;
    let Some(header) = reader.header() else {
        anyhow::bail!(
            "{}: the log ends inside its header (byte 0): the run recorded nothing to replay",
            args.run_dir.join(segment_file_name(0)).display()
        );
    };
    let argv: Vec<OsString> = if args.command.is_empty() {
        let recorded = &header.run;
        if recorded.argv.is_empty() {
            print_error(&format!(
                "{} recorded no command line; say what to run",
                args.run_dir.display()
            ));
            print_hint(&format!(
                "deja replay {} -- CMD [ARGS...]",
                args.run_dir.display()
            ));
            return Ok(ExitCode::from(exit::USAGE));
        }
        if recorded.context_truncated {
            print_warning(
                "the recorded command line may have been cut to fit the log header; \
                 pass the command after `--` if replay does not start",
            );
        }
        recorded.argv.iter().map(OsString::from).collect()
    } else {
        args.command.clone()
    };
    drop(reader);

    let (program, program_args) = argv.split_first().expect("argv is not empty");
    let mut command = Command::new(program);
    command
        .args(program_args)
        .env("DEJA_MODE", "replay")
        .env("DEJA_TRACE", &args.run_dir)
        .env_remove("DEJA_RUN_ID");
    let status = child::run(command)?;
    Ok(child::exit_code(status))
}
