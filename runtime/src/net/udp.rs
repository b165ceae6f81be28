//! UDP: datagrams sent and received, recorded by value on receipt.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

use deja_recorder::ConnId;

use super::ToAddr;
use crate::backend::{self, UdpIo};

/// A UDP socket, like `tokio::net::UdpSocket`.
pub struct UdpSocket {
    socket: ConnId,
    local: SocketAddr,
    io: Box<dyn UdpIo>,
    /// Set by [`UdpSocket::connect`]: where `send` goes, whom `recv` hears.
    peer: Mutex<Option<SocketAddr>>,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("socket", &self.socket)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl UdpSocket {
    /// Bind to `addr`.
    pub async fn bind(addr: impl ToAddr) -> io::Result<UdpSocket> {
        let addr = addr.to_addr_string();
        let bound = backend::with(|backend| backend.udp_bind(addr)).await?;
        Ok(UdpSocket {
            socket: bound.conn,
            local: bound.local,
            io: bound.io,
            peer: Mutex::new(None),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Connect to `addr` (`"host:port"` is looked up, see
    /// [`lookup_host`](super::lookup_host)): [`send`](Self::send) goes
    /// there and [`recv`](Self::recv) takes only its datagrams, dropping
    /// others as the kernel does for a connected socket. The filter is
    /// deja's, so what was dropped is in the log and replays.
    pub async fn connect(&self, addr: impl ToAddr) -> io::Result<()> {
        let peer = super::lookup::resolve_one(addr).await?;
        *self.peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
        Ok(())
    }

    /// The connected peer.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.connected()
    }

    fn connected(&self) -> io::Result<SocketAddr> {
        self.peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Send one datagram to the connected peer.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let peer = self.connected()?;
        self.send_to_addr(buf, peer).await
    }

    /// Receive one datagram from the connected peer (cut to `buf`).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let peer = self.connected()?;
        loop {
            let (n, from) = self.recv_from(buf).await?;
            if from == peer {
                return Ok(n);
            }
        }
    }

    /// Send one datagram to `target` (an address, or `"host:port"`, looked
    /// up as [`lookup_host`](super::lookup_host) does); returns the bytes
    /// sent.
    pub async fn send_to(&self, buf: &[u8], target: impl ToAddr) -> io::Result<usize> {
        let target = super::lookup::resolve_one(target).await?;
        self.send_to_addr(buf, target).await
    }

    async fn send_to_addr(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.io.poll_send_to(cx, buf, target)).await
    }

    /// Receive one datagram into `buf` (cut to its length, as the OS does):
    /// the bytes received and the sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        std::future::poll_fn(|cx| self.io.poll_recv_from(cx, buf)).await
    }
}
