//! Name lookups: a DNS answer is an input like a read, so it is logged
//! and replayed (`EventKind::Lookup`); a simulation answers from its hosts.

use std::io;
use std::net::SocketAddr;

use super::ToAddr;
use crate::backend;

pub use crate::backend::live::LOOKUP_ADDRS_MAX;

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
    backend::with(|backend| backend.lookup(text.to_string())).await
}
