//! One module per subcommand, and what they share: writing to stdout.

pub(crate) mod diff;
pub(crate) mod inspect;
pub(crate) mod record;
pub(crate) mod replay;
pub(crate) mod sim;
pub(crate) mod stats;
pub(crate) mod timeline;
pub(crate) mod verify;

use std::io::{self, BufWriter, StdoutLock, Write};
use std::process::ExitCode;

use anyhow::Context;

use crate::exit;

/// Locked, buffered stdout.
pub(crate) fn stdout() -> BufWriter<StdoutLock<'static>> {
    BufWriter::new(io::stdout().lock())
}

/// How a command ends when writing to stdout failed. A closed pipe
/// (`deja inspect RUN | head`) means the reader has seen enough: quiet
/// success. Any other write error is an error.
pub(crate) fn write_failed(err: io::Error) -> anyhow::Result<ExitCode> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        return Ok(ExitCode::from(exit::SUCCESS));
    }
    Err(err).context("cannot write to stdout")
}

/// Write `text` to stdout and succeed (see [`write_failed`]).
pub(crate) fn print(text: &str) -> anyhow::Result<ExitCode> {
    let mut out = stdout();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::from(exit::SUCCESS)),
        Err(err) => write_failed(err),
    }
}
