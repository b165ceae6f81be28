//! A simulated host's sockets: handles on the simulated network
//! (`net.rs`), which logs every result as record mode does.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use deja_recorder::{ConnId, EventKind};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::net::{self, SimSocket};
use crate::backend::{
    BoxFuture, ListenerIo, NewSocket, NewStream, ReadIo, StreamIo, UdpIo, WriteIo,
};

/// Logs the close of a socket when its last handle drops, and closes it
/// in the simulated network.
#[derive(Debug)]
struct Close {
    conn: ConnId,
    socket: SimSocket,
}

impl Drop for Close {
    fn drop(&mut self) {
        let event = match self.socket {
            SimSocket::Udp { .. } => EventKind::UdpClose { socket: self.conn },
            SimSocket::Listener { .. } | SimSocket::Stream { .. } => {
                EventKind::TcpClose { conn: self.conn }
            }
        };
        if let Ok(host) = net::current_host() {
            host.record(event);
        }
        net::close(self.socket);
    }
}

pub(super) fn tcp_bind(addr: &str) -> io::Result<NewSocket<dyn ListenerIo>> {
    let (listener, local, socket) = net::tcp_bind(addr)?;
    Ok(NewSocket {
        conn: listener,
        local,
        io: Box::new(Listener {
            listener,
            socket,
            _close: Close {
                conn: listener,
                socket,
            },
        }),
    })
}

pub(super) async fn tcp_connect(addr: String) -> io::Result<NewStream> {
    let (conn, local, peer, socket) = net::tcp_connect(&addr).await?;
    Ok(Stream::boxed(conn, local, peer, socket))
}

pub(super) fn udp_bind(addr: &str) -> io::Result<NewSocket<dyn UdpIo>> {
    let (socket, local, sim_socket) = net::udp_bind(addr)?;
    Ok(NewSocket {
        conn: socket,
        local,
        io: Box::new(Udp {
            socket,
            local,
            sim_socket,
            _close: Close {
                conn: socket,
                socket: sim_socket,
            },
        }),
    })
}

struct Listener {
    listener: ConnId,
    socket: SimSocket,
    _close: Close,
}

impl ListenerIo for Listener {
    fn accept(&self) -> BoxFuture<'_, io::Result<NewStream>> {
        Box::pin(async move {
            let (conn, local, peer, socket) = net::tcp_accept(self.listener, self.socket).await?;
            Ok(Stream::boxed(conn, local, peer, socket))
        })
    }
}

/// A simulated stream, or one half of it: both halves share the close.
struct Stream {
    conn: ConnId,
    key: u64,
    /// The write half: dropping it shuts the write side down, as tokio's.
    write_half: bool,
    close: Arc<Close>,
}

impl Stream {
    fn boxed(conn: ConnId, local: SocketAddr, peer: SocketAddr, socket: SimSocket) -> NewStream {
        let SimSocket::Stream { key } = socket else {
            unreachable!("a simulated stream is made from a stream socket")
        };
        NewStream {
            conn,
            local,
            peer,
            io: Box::new(Stream {
                conn,
                key,
                write_half: false,
                close: Arc::new(Close { conn, socket }),
            }),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.write_half {
            net::half_close(self.key);
        }
    }
}

impl StreamIo for Stream {
    fn set_nodelay(&self, _nodelay: bool) -> io::Result<()> {
        Ok(())
    }

    fn into_split(self: Box<Self>) -> (Box<dyn ReadIo>, Box<dyn WriteIo>) {
        let write = Stream {
            conn: self.conn,
            key: self.key,
            write_half: true,
            close: Arc::clone(&self.close),
        };
        (self, Box::new(write))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        net::poll_read(self.key, self.conn, cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        net::poll_write(self.key, self.conn, cx, buf, super::keep_write_bytes())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(net::shutdown(self.key, self.conn))
    }
}

struct Udp {
    socket: ConnId,
    local: SocketAddr,
    sim_socket: SimSocket,
    _close: Close,
}

impl UdpIo for Udp {
    fn poll_send_to(
        &self,
        _cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(net::udp_send(
            self.socket,
            self.local,
            buf,
            target,
            super::keep_write_bytes(),
        ))
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        net::poll_udp_recv(self.socket, self.sim_socket, cx, buf)
    }
}
