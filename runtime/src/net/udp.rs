//! UDP: datagrams sent and received, recorded by value on receipt.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use deja_recorder::{ConnId, EventKind};
use deja_replayer::gate::Call;

use super::{mode, replay_call, to_error, unexpected, CloseOnDrop, Mode, Origin, ToAddr};
use crate::redact::Direction;
use crate::sim::net as sim;

/// A UDP socket, like `tokio::net::UdpSocket`.
pub struct UdpSocket {
    socket: ConnId,
    local: SocketAddr,
    /// `None` in replay.
    io: Option<tokio::net::UdpSocket>,
    origin: Origin,
    /// Set by [`UdpSocket::connect`]: where `send` goes, whom `recv` hears.
    peer: Mutex<Option<SocketAddr>>,
    _close: Arc<CloseOnDrop>,
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
        let text = addr.to_addr_string();
        let (socket, local, io, origin) = match mode() {
            Mode::Live => {
                let io = tokio::net::UdpSocket::bind(text.as_str()).await?;
                (ConnId(u64::MAX), io.local_addr()?, Some(io), Origin::Live)
            }
            Mode::Sim => {
                let (socket, local, sim_socket) = sim::udp_bind(&text)?;
                (socket, local, None, Origin::Sim(sim_socket))
            }
            Mode::Record(recording) => {
                let bound = bind_real(&text).await;
                let socket = recording.next_conn();
                recording.record(EventKind::UdpBind {
                    socket,
                    addr: text,
                    result: bound
                        .as_ref()
                        .map(|(_, local)| *local)
                        .map_err(|err| err.kind().into()),
                });
                let (io, local) = bound?;
                (socket, local, Some(io), Origin::Record(recording))
            }
            Mode::Replay => {
                let event = replay_call(Call::UdpBind { addr: &text }).await;
                match event.kind {
                    EventKind::UdpBind {
                        socket,
                        result: Ok(local),
                        ..
                    } => (socket, local, None, Origin::Replay),
                    EventKind::UdpBind {
                        result: Err(kind), ..
                    } => return Err(to_error(kind)),
                    _ => return Err(unexpected(&event)),
                }
            }
        };
        Ok(UdpSocket {
            socket,
            local,
            io,
            _close: CloseOnDrop::udp(socket, origin.clone()),
            origin,
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
        match (&self.origin, &self.io) {
            (Origin::Live, Some(io)) => io.send_to(buf, target).await,
            (Origin::Record(recording), Some(io)) => {
                let result = io.send_to(buf, target).await;
                let socket = self.socket;
                match &result {
                    Ok(n) => recording.record_write(
                        Direction::UdpSend,
                        socket,
                        target,
                        &buf[..(*n).min(buf.len())],
                        |written| EventKind::UdpSend {
                            socket,
                            peer: target,
                            result: Ok(written),
                        },
                    ),
                    Err(err) => recording.record(EventKind::UdpSend {
                        socket,
                        peer: target,
                        result: Err(err.kind().into()),
                    }),
                }
                result
            }
            (Origin::Sim(_), _) => sim::udp_send(
                self.socket,
                self.local,
                buf,
                target,
                crate::sim::keep_write_bytes(),
            ),
            _ => {
                // Compared as the recording logged it: masked by the same redactors.
                let masked =
                    crate::replay::redact_write(Direction::UdpSend, self.socket, target, buf);
                let event = replay_call(Call::UdpSend {
                    socket: self.socket,
                    peer: target,
                    bytes: masked.as_deref().unwrap_or(buf),
                })
                .await;
                match event.kind {
                    EventKind::UdpSend {
                        result: Ok(written),
                        ..
                    } => Ok((written.len as usize).min(buf.len())),
                    EventKind::UdpSend {
                        result: Err(kind), ..
                    } => Err(to_error(kind)),
                    _ => Err(unexpected(&event)),
                }
            }
        }
    }

    /// Receive one datagram into `buf` (cut to its length, as the OS does):
    /// the bytes received and the sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match (&self.origin, &self.io) {
            (Origin::Live, Some(io)) => io.recv_from(buf).await,
            (Origin::Record(recording), Some(io)) => {
                let result = io.recv_from(buf).await;
                match &result {
                    // The service gets the real bytes; the log gets them masked.
                    Ok((n, peer)) => {
                        recording.record_datagram(self.socket, *peer, &buf[..(*n).min(buf.len())]);
                    }
                    Err(err) => recording.record(EventKind::UdpRecv {
                        socket: self.socket,
                        result: Err(err.kind().into()),
                    }),
                }
                result
            }
            (Origin::Sim(socket), _) => sim::udp_recv(self.socket, *socket, buf).await,
            _ => {
                let event = replay_call(Call::UdpRecv {
                    socket: self.socket,
                })
                .await;
                match event.kind {
                    EventKind::UdpRecv {
                        result: Ok(datagram),
                        ..
                    } => {
                        let n = datagram.bytes.len().min(buf.len());
                        buf[..n].copy_from_slice(&datagram.bytes[..n]);
                        Ok((n, datagram.peer))
                    }
                    EventKind::UdpRecv {
                        result: Err(kind), ..
                    } => Err(to_error(kind)),
                    _ => Err(unexpected(&event)),
                }
            }
        }
    }
}

async fn bind_real(addr: &str) -> io::Result<(tokio::net::UdpSocket, SocketAddr)> {
    let io = tokio::net::UdpSocket::bind(addr).await?;
    let local = io.local_addr()?;
    Ok((io, local))
}
