//! Signals: ctrl-c and SIGTERM, recorded when delivered, so a replay
//! shuts down exactly where the recording did.

use std::io;

pub use deja_recorder::SignalKind;

use crate::backend;

/// Wait for ctrl-c (SIGINT).
pub async fn ctrl_c() -> io::Result<()> {
    wait_for(&[SignalKind::Interrupt]).await.map(|_| ())
}

/// Wait for SIGTERM.
pub async fn terminate() -> io::Result<()> {
    wait_for(&[SignalKind::Terminate]).await.map(|_| ())
}

/// Wait for the first of ctrl-c and SIGTERM: the usual "shut down now".
pub async fn shutdown() -> io::Result<SignalKind> {
    wait_for(&[SignalKind::Interrupt, SignalKind::Terminate]).await
}

async fn wait_for(kinds: &'static [SignalKind]) -> io::Result<SignalKind> {
    backend::with(|backend| backend.signal(kinds)).await
}
