//! `deja replay`: check the run, then run the service with replay on.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use deja_recorder::format::segment_file_name;
use deja_recorder::RunReader;

use crate::args::ReplayArgs;
use crate::{child, exit, print_error, print_hint, print_warning};

/// The service's fd for JSON lines in `--json` mode (after stdio).
const JSON_CHILD_FD: i32 = 3;

/// Run CMD (by default the recorded command line) with `DEJA_MODE=replay`
/// and exit with what its outcome says (see [`run_reporting`]): 0 when the
/// replay completed, [`exit::DIVERGENCE`] when it diverged, [`exit::ERROR`]
/// for a bad log or a program that never replayed. deja checks only that
/// the run opens and its header reads; the events are CMD's to read.
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

    let mut command = if args.gdb {
        let Some(gdb) = find_in_path("gdb") else {
            print_error("--gdb needs gdb, which is not on PATH");
            print_hint("install gdb (apt-get install gdb), or use --on-break pause");
            return Ok(ExitCode::from(exit::ERROR));
        };
        let mut command = Command::new(gdb);
        command.args(["-q", "-ex", "run", "--args"]).args(&argv);
        command
    } else {
        let (program, program_args) = argv.split_first().expect("argv is not empty");
        let mut command = Command::new(program);
        command.args(program_args);
        command
    };
    command
        .env("DEJA_MODE", "replay")
        .env("DEJA_TRACE", &args.run_dir)
        .env_remove("DEJA_RUN_ID");
    // Only this command's breakpoints apply, not a DEJA_BREAK left in the shell.
    for name in [
        "DEJA_BREAK",
        "DEJA_ON_BREAK",
        "DEJA_UNTIL",
        "DEJA_JSON_FD",
        "DEJA_JSON_OUTCOME_ONLY",
    ] {
        command.env_remove(name);
    }
    if !args.breaks.is_empty() {
        let specs: Vec<&str> = args.breaks.iter().map(|spec| spec.text()).collect();
        command.env("DEJA_BREAK", specs.join(";"));
    }
    if let Some(seq) = args.until {
        command.env("DEJA_UNTIL", seq.to_string());
    }
    let action = if args.gdb {
        Some("trap")
    } else {
        args.on_break.map(|action| action.env_value())
    };
    if let Some(action) = action {
        command.env("DEJA_ON_BREAK", action);
    }
    if args.gdb {
        // gdb's own exit code: the replaying service is its inferior.
        let status = child::run(command)?;
        return Ok(child::exit_code(status));
    }
    run_reporting(command, args.json)
}

/// How the replaying service said the replay ended (its `outcome` line).
#[derive(Debug, Default)]
struct Outcome {
    /// `exited`, `recording_ended`, `stopped`, `diverged` or `error`.
    status: String,
    /// The code the service exits with.
    exit_code: i64,
}

/// Run the service with a pipe on fd 3 (`DEJA_JSON_FD`) on which the
/// runtime reports hits and how the replay ended, and turn that into
/// deja's exit code: 0 for a replay that completed (whatever code the
/// recorded service exited with, which is said on stderr), 3 for a
/// divergence, 1 for an error, and 1 when the program never reported at
/// all: it made no intercepted call, so it is not a deja service and
/// replayed nothing. A service killed by a signal gives 128 + N.
///
/// With `--json` the lines are copied to stdout and the service's stdout
/// goes to stderr, so stdout carries nothing but JSON lines.
fn run_reporting(mut command: Command, json: bool) -> anyhow::Result<ExitCode> {
    let (read_end, write_end) = pipe()?;
    let write_fd = write_end.as_raw_fd();
    command.env("DEJA_JSON_FD", JSON_CHILD_FD.to_string());
    if json {
        command.stdout(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?));
    } else {
        command.env("DEJA_JSON_OUTCOME_ONLY", "1");
    }
    // SAFETY: dup2 and fcntl are async-signal-safe and touch only fds.
    unsafe {
        command.pre_exec(move || {
            if write_fd == JSON_CHILD_FD {
                let flags = libc::fcntl(write_fd, libc::F_GETFD);
                libc::fcntl(write_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(write_fd, JSON_CHILD_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let copier = std::thread::spawn(move || read_json_lines(read_end, json));
    let status = child::run(command);
    drop(write_end);
    let outcome = copier.join().unwrap_or(None);
    let status = status?;
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    let Some(outcome) = outcome else {
        // The service never got to report: killed, or not a deja service.
        let message = match signal {
            Some(signal) => {
                format!("{program} was killed by signal {signal} before the replay ended")
            }
            None => format!(
                "{program} made no intercepted call: is it built with deja? (it exited {} \
                 without replaying anything)",
                status.code().unwrap_or(-1)
            ),
        };
        if json {
            let line = serde_json::json!({
                "type": "outcome",
                "status": "error",
                "exit_code": status.code(),
                "signal": signal,
                "detail": { "message": message },
            });
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        print_error(&message);
        return Ok(match signal {
            Some(_) => child::exit_code(status),
            None => ExitCode::from(exit::ERROR),
        });
    };
    Ok(ExitCode::from(match outcome.status.as_str() {
        "diverged" => exit::DIVERGENCE,
        "exited" => {
            if outcome.exit_code != 0 {
                eprintln!(
                    "deja: replay: the service exited {}, as the recorded run did",
                    outcome.exit_code
                );
            }
            exit::SUCCESS
        }
        "recording_ended" | "stopped" => exit::SUCCESS,
        _ => exit::ERROR,
    }))
}

/// Read the service's JSON lines (copied to stdout with `json`); the
/// outcome line, if one came.
fn read_json_lines(read_end: OwnedFd, json: bool) -> Option<Outcome> {
    let reader = BufReader::new(std::fs::File::from(read_end));
    let mut outcome = None;
    let mut out = io::stdout().lock();
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
            if value["type"] == "outcome" {
                outcome = Some(Outcome {
                    status: value["status"].as_str().unwrap_or("error").to_string(),
                    exit_code: value["exit_code"].as_i64().unwrap_or(-1),
                });
            }
        }
        if json {
            // A closed stdout (`| head`) must not block the service: keep reading.
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    }
    outcome
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|path| path.is_file())
}
