//! Signals: ctrl-c and SIGTERM, recorded when delivered, so a replay
//! shuts down exactly where the recording did.

use std::io;

use deja_recorder::EventKind;
use deja_replayer::gate::Call;

pub use deja_recorder::SignalKind;

use crate::context::{self, Ctx};
use crate::net::replay_call;

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

async fn wait_for(kinds: &[SignalKind]) -> io::Result<SignalKind> {
    match context::current() {
        Ctx::Live => wait_real(kinds).await,
        Ctx::Record(recording) => {
            let signal = wait_real(kinds).await?;
            recording.record(EventKind::Signal { signal });
            Ok(signal)
        }
        // Nobody sends a simulated process a signal: it waits forever.
        Ctx::Sim(_) => std::future::pending().await,
        Ctx::Replay(_) => {
            let event = replay_call(Call::Signal).await;
            match event.kind {
                EventKind::Signal { signal } => Ok(signal),
                _ => Err(crate::net::unexpected(&event)),
            }
        }
    }
}

#[cfg(unix)]
async fn wait_real(kinds: &[SignalKind]) -> io::Result<SignalKind> {
    use tokio::signal::unix::{signal, SignalKind as Unix};
    let mut interrupt = match kinds.contains(&SignalKind::Interrupt) {
        true => Some(signal(Unix::interrupt())?),
        false => None,
    };
    let mut terminate = match kinds.contains(&SignalKind::Terminate) {
        true => Some(signal(Unix::terminate())?),
        false => None,
    };
    async fn next(stream: &mut Option<tokio::signal::unix::Signal>) {
        match stream {
            Some(stream) => {
                stream.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        biased;
        () = next(&mut interrupt) => Ok(SignalKind::Interrupt),
        () = next(&mut terminate) => Ok(SignalKind::Terminate),
    }
}

#[cfg(not(unix))]
async fn wait_real(kinds: &[SignalKind]) -> io::Result<SignalKind> {
    if kinds.contains(&SignalKind::Interrupt) {
        tokio::signal::ctrl_c().await?;
        return Ok(SignalKind::Interrupt);
    }
    std::future::pending().await
}
