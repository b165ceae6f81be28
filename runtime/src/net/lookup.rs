//! Name lookups: a DNS answer is an input like a read, so it is logged
//! and replayed (`EventKind::Lookup`); a simulation answers from its hosts.

use std::io;
use std::net::SocketAddr;

use deja_recorder::EventKind;
use deja_replayer::gate::Call;

use super::{mode, replay_call, to_error, unexpected, Mode, ToAddr};
use crate::sim::net as sim;

/// Most addresses one lookup keeps: a resolver answer longer than this
/// is cut (no real service dials past the first few, and the log bounds
/// every event's payload).
pub const LOOKUP_ADDRS_MAX: usize = 64;

/// Look up `host` (`"name:port"`, or an address, which resolves to
/// itself), like `tokio::net::lookup_host`: recorded, replayed from the
/// log, and answered by the simulated network's host names in a
/// simulation (`"payment:7000"`).
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// for addr in deja::net::lookup_host("localhost:7000").await? {
///     println!("{addr}");
/// }
/// # Ok(())
/// # }
/// ```
pub async fn lookup_host(host: impl ToAddr) -> io::Result<impl Iterator<Item = SocketAddr>> {
    let text = host.to_addr_string();
    Ok(lookup(&text).await?.into_iter())
}

/// `target` as one address: an address as it is (no lookup, no event),
/// a name through [`lookup_host`], its first answer.
pub(crate) async fn resolve_one(target: impl ToAddr) -> io::Result<SocketAddr> {
    if let Some(addr) = target.to_socket_addr() {
        return Ok(addr);
    }
    let text = target.to_addr_string();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    lookup(&text).await?.into_iter().next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{text}: the name has no addresses"),
        )
    })
}

async fn lookup(text: &str) -> io::Result<Vec<SocketAddr>> {
    match mode() {
        Mode::Live => real(text).await,
        Mode::Sim => sim::lookup(text),
        Mode::Record(recording) => {
            let answer = real(text).await;
            recording.record(EventKind::Lookup {
                host: text.to_string(),
                result: answer
                    .as_ref()
                    .map(Clone::clone)
                    .map_err(|err| err.kind().into()),
            });
            answer
        }
        Mode::Replay => {
            let event = replay_call(Call::Lookup { host: text }).await;
            match event.kind {
                EventKind::Lookup {
                    result: Ok(addrs), ..
                } => Ok(addrs),
                EventKind::Lookup {
                    result: Err(kind), ..
                } => Err(to_error(kind)),
                _ => Err(unexpected(&event)),
            }
        }
    }
}

async fn real(text: &str) -> io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(text).await?.collect();
    addrs.truncate(LOOKUP_ADDRS_MAX);
    Ok(addrs)
}
