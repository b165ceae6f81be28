//! The `deja` command line.
//!
//! `main` parses the arguments ([`args`]), runs one command ([`cmd`]) and
//! turns the outcome into one of the design's exit codes ([`exit`]). Errors
//! are printed here, on one line, followed by a hint when there is one.

mod args;
mod child;
mod cmd;

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use deja_recorder::format::segment_file_name;
use deja_recorder::ReadError;

use args::{Cli, Command};

/// Exit codes, as the design fixes them (plus `DIFFERENT`, see ARCHITECTURE.md).
pub(crate) mod exit {
    /// Success (also for a torn tail or unclean shutdown, with a warning).
    pub(crate) const SUCCESS: u8 = 0;
    /// Error: bad input, unreadable log, I/O.
    pub(crate) const ERROR: u8 = 1;
    /// Usage: unknown flag, missing argument, bad value.
    pub(crate) const USAGE: u8 = 2;
    /// Replay diverged from the recording (the replaying service's outcome
    /// says so; its own exit code 3 is not taken for one).
    pub(crate) const DIVERGENCE: u8 = 3;
    /// `deja verify` found corruption.
    pub(crate) const CORRUPTION: u8 = 4;
    /// `deja diff`: the runs differ. Not in the design's table: diff(1)
    /// uses 1 for this, which deja already uses for errors.
    pub(crate) const DIFFERENT: u8 = 5;
}

fn main() -> ExitCode {
    let cli = match Cli::parse_checked() {
        Ok(cli) => cli,
        Err(err) => {
            // `--help` and `--version` come here too, on stdout, as success.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            });
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            print_error(&one_line(&err));
            if let Some(hint) = hint(&err) {
                print_hint(&hint);
            }
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Run one command; `Err` is exit code 1, anything else comes back as a code.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Record(args) => cmd::record::run(&args),
        Command::Replay(args) => cmd::replay::run(&args),
        Command::Inspect(args) => cmd::inspect::run(&args),
        Command::Verify(args) => cmd::verify::run(&args),
        Command::Stats(args) => cmd::stats::run(&args),
        Command::Diff(args) => cmd::diff::run(&args),
        Command::Sim(args) => cmd::sim::run(&args),
        Command::Timeline(args) => cmd::timeline::run(&args),
    }
}

/// The error and its causes on one line. A cause whose text its parent
/// already ends with (as `ReadError::Io` does with its OS error) is not
/// repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// What to try next, for the errors we can say something useful about.
fn hint(err: &anyhow::Error) -> Option<String> {
    if let Some(hinted) = err.chain().find_map(|cause| cause.downcast_ref::<Hinted>()) {
        return Some(hinted.hint.clone());
    }
    err.chain()
        .find_map(|cause| cause.downcast_ref::<ReadError>())
        .and_then(read_error_hint)
}

/// An error a command knows what to suggest for: `main` prints `message`
/// as the error, then `hint`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Hinted {
    pub(crate) message: String,
    pub(crate) hint: String,
}

impl Hinted {
    pub(crate) fn error(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
        Hinted {
            message: message.into(),
            hint: hint.into(),
        }
        .into()
    }
}

/// A hint for an error reading a run.
fn read_error_hint(err: &ReadError) -> Option<String> {
    let run_dir_hint = || {
        format!(
            "pass the run directory written by `deja record` (it contains {})",
            segment_file_name(0)
        )
    };
    match err {
        ReadError::Io { path, source } => Some(match source.kind() {
            io::ErrorKind::NotADirectory
                if path.extension().is_some_and(|ext| ext == "deja") =>
            {
                let parent = path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or_else(|| Path::new("."));
                format!(
                    "pass the directory that holds the segment files: {}",
                    parent.display()
                )
            }
            io::ErrorKind::PermissionDenied => {
                "run directories are private (mode 0700) to the user who recorded them; run deja as that user".to_string()
            }
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => run_dir_hint(),
            _ => return None,
        }),
        ReadError::NoSegments { .. } => Some(run_dir_hint()),
        ReadError::NotADejaLog { .. } => Some(format!(
            "the file is named like a segment but is not one; {}",
            run_dir_hint()
        )),
        ReadError::MissingSegment { dir, .. } => Some(verify_hint(dir)),
        ReadError::Corrupt { path, .. } => Some(verify_hint(
            path.parent().unwrap_or_else(|| Path::new(".")),
        )),
        ReadError::UnsupportedVersion { .. } => None,
    }
}

fn verify_hint(dir: &Path) -> String {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    format!(
        "the log is damaged; `deja verify {}` says how much of it is intact",
        dir.display()
    )
}

/// `deja: error: MESSAGE` on stderr.
pub(crate) fn print_error(message: &str) {
    let _ = writeln!(io::stderr().lock(), "deja: error: {message}");
}

/// `deja: warning: MESSAGE` on stderr.
pub(crate) fn print_warning(message: &str) {
    let _ = writeln!(io::stderr().lock(), "deja: warning: {message}");
}

/// `deja: MESSAGE` on stderr: more about the error just printed.
pub(crate) fn print_note(message: &str) {
    let _ = writeln!(io::stderr().lock(), "deja: {message}");
}

/// `hint: MESSAGE` on stderr.
pub(crate) fn print_hint(message: &str) {
    let _ = writeln!(io::stderr().lock(), "hint: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let err = anyhow::Error::new(ReadError::Io {
            path: "runs/x".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        let line = one_line(&err);
        assert_eq!(line.matches("not found").count(), 1, "{line}");
        assert!(line.starts_with("cannot read runs/x: "), "{line}");

        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&err), "outer: inner");
    }

    #[test]
    fn a_segment_file_given_for_a_directory_points_at_its_parent() {
        let err = ReadError::Io {
            path: "runs/svc-1/00000000.deja".into(),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        };
        let hint = read_error_hint(&err).unwrap();
        assert!(hint.ends_with(": runs/svc-1"), "{hint}");
    }
}
