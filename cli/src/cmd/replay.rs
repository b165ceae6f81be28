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
    for name in ["DEJA_BREAK", "DEJA_ON_BREAK", "DEJA_UNTIL", "DEJA_JSON_FD"] {
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
    if args.json {
        return run_json(command);
    }
    let status = child::run(command)?;
    Ok(child::exit_code(status))
}

/// `--json`: the service writes hits and its outcome to a pipe on fd 3,
/// deja copies them to stdout, and the service's stdout goes to stderr so
/// stdout carries nothing but JSON lines.
fn run_json(mut command: Command) -> anyhow::Result<ExitCode> {
    let (read_end, write_end) = pipe()?;
    let write_fd = write_end.as_raw_fd();
    command
        .env("DEJA_JSON_FD", JSON_CHILD_FD.to_string())
        .stdout(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?));
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
    let copier = std::thread::spawn(move || copy_json_lines(read_end));
    let status = child::run(command);
    drop(write_end);
    let saw_outcome = copier.join().unwrap_or(false);
    let status = status?;
    let code = child::exit_code(status);
    if !saw_outcome {
        // The service never got to report (it failed to start, is not a
        // deja service, or was killed): say how it ended.
        let exit_code = status.code().unwrap_or(-1);
        let line = serde_json::json!({
            "type": "outcome",
            "status": "error",
            "exit_code": exit_code,
            "signal": std::os::unix::process::ExitStatusExt::signal(&status),
        });
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    Ok(code)
}

/// Copy lines from the service to stdout; true if an outcome line came.
fn copy_json_lines(read_end: OwnedFd) -> bool {
    let reader = BufReader::new(std::fs::File::from(read_end));
    let mut saw_outcome = false;
    let mut out = io::stdout().lock();
    for line in reader.lines() {
        let Ok(line) = line else { break };
        saw_outcome |= line.contains("\"type\":\"outcome\"");
        // A closed stdout (`| head`) must not block the service: keep reading.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    saw_outcome
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
