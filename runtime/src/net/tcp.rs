//! TCP: listeners and streams. Each holds the socket of the backend that
//! made it (`crate::backend::{ListenerIo, StreamIo}`): tokio's in live
//! mode, tokio's with every result logged in record mode, the log's in
//! replay, the simulated network's in a simulation.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use deja_recorder::ConnId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ToAddr;
use crate::backend::{self, ListenerIo, NewStream, ReadIo, StreamIo, WriteIo};

/// A TCP listener, like `tokio::net::TcpListener`.
pub struct TcpListener {
    listener: ConnId,
    local: SocketAddr,
    io: Box<dyn ListenerIo>,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("listener", &self.listener)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TcpListener {
    /// Bind to `addr` (`"127.0.0.1:0"`, a `SocketAddr`, ...).
    pub async fn bind(addr: impl ToAddr) -> io::Result<TcpListener> {
        let addr = addr.to_addr_string();
        let bound = backend::with(|backend| backend.tcp_bind(addr)).await?;
        Ok(TcpListener {
            listener: bound.conn,
            local: bound.local,
            io: bound.io,
        })
    }

    /// Accept a connection: the stream and the peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let stream = TcpStream::from(self.io.accept().await?);
        let peer = stream.peer;
        Ok((stream, peer))
    }

    /// The bound address (as recorded, in replay).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A TCP stream, like `tokio::net::TcpStream` (tokio `AsyncRead` and
/// `AsyncWrite`).
pub struct TcpStream {
    conn: ConnId,
    local: SocketAddr,
    peer: SocketAddr,
    io: Box<dyn StreamIo>,
}

impl From<NewStream> for TcpStream {
    fn from(stream: NewStream) -> TcpStream {
        TcpStream {
            conn: stream.conn,
            local: stream.local,
            peer: stream.peer,
            io: stream.io,
        }
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("conn", &self.conn)
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TcpStream {
    /// Connect to `addr`.
    pub async fn connect(addr: impl ToAddr) -> io::Result<TcpStream> {
        let addr = addr.to_addr_string();
        let stream = backend::with(|backend| backend.tcp_connect(addr)).await?;
        Ok(TcpStream::from(stream))
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Set `TCP_NODELAY` (a no-op in replay).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.set_nodelay(nodelay)
    }

    /// Split into halves that can move to different tasks. The connection
    /// closes (one `TcpClose` event) when both halves are dropped.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let TcpStream { conn, peer, io, .. } = self;
        let (read, write) = io.into_split();
        (
            OwnedReadHalf {
                conn,
                peer,
                io: read,
            },
            OwnedWriteHalf {
                conn,
                peer,
                io: write,
            },
        )
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

/// The read half of [`TcpStream::into_split`].
pub struct OwnedReadHalf {
    conn: ConnId,
    peer: SocketAddr,
    io: Box<dyn ReadIo>,
}

impl fmt::Debug for OwnedReadHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedReadHalf")
            .field("conn", &self.conn)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for OwnedReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_read(cx, buf)
    }
}

/// The write half of [`TcpStream::into_split`]. Dropping it shuts the
/// write side down, as with tokio.
pub struct OwnedWriteHalf {
    conn: ConnId,
    peer: SocketAddr,
    io: Box<dyn WriteIo>,
}

impl fmt::Debug for OwnedWriteHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedWriteHalf")
            .field("conn", &self.conn)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl AsyncWrite for OwnedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}
