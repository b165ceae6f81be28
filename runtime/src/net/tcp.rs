//! TCP: listeners and streams that record (or replay) every result.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use deja_recorder::{Accepted, ConnId, Connected, EventKind, ReadOutcome, EVENT_PAYLOAD_BYTES_MAX};
use deja_replayer::gate::Call;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{mode, replay_call, to_error, unexpected, CloseOnDrop, Mode, Origin, ToAddr};
use crate::record::Recording;
use crate::redact::Direction;
use crate::sim::net::{self as sim, SimSocket};

/// Connection ids mean nothing in live mode.
const LIVE_CONN: ConnId = ConnId(u64::MAX);

/// A TCP listener, like `tokio::net::TcpListener`.
pub struct TcpListener {
    listener: ConnId,
    local: SocketAddr,
    /// `None` in replay: no socket exists.
    io: Option<tokio::net::TcpListener>,
    origin: Origin,
    _close: Arc<CloseOnDrop>,
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
        let text = addr.to_addr_string();
        match mode() {
            Mode::Live => {
                let io = tokio::net::TcpListener::bind(text.as_str()).await?;
                let local = io.local_addr()?;
                Ok(TcpListener::new(LIVE_CONN, local, Some(io), Origin::Live))
            }
            Mode::Sim => {
                let (listener, local, socket) = sim::tcp_bind(&text)?;
                Ok(TcpListener::new(listener, local, None, Origin::Sim(socket)))
            }
            Mode::Record(recording) => {
                let bound = bind_real(&text).await;
                let listener = recording.next_conn();
                recording.record(EventKind::TcpListen {
                    listener,
                    addr: text,
                    result: bound
                        .as_ref()
                        .map(|(_, local)| *local)
                        .map_err(|err| err.kind().into()),
                });
                let (io, local) = bound?;
                Ok(TcpListener::new(
                    listener,
                    local,
                    Some(io),
                    Origin::Record(recording),
                ))
            }
            Mode::Replay => {
                let event = replay_call(Call::TcpListen { addr: &text }).await;
                match event.kind {
                    EventKind::TcpListen {
                        listener,
                        result: Ok(local),
                        ..
                    } => Ok(TcpListener::new(listener, local, None, Origin::Replay)),
                    EventKind::TcpListen {
                        result: Err(kind), ..
                    } => Err(to_error(kind)),
                    _ => Err(unexpected(&event)),
                }
            }
        }
    }

    fn new(
        listener: ConnId,
        local: SocketAddr,
        io: Option<tokio::net::TcpListener>,
        origin: Origin,
    ) -> TcpListener {
        TcpListener {
            listener,
            local,
            io,
            _close: CloseOnDrop::new(listener, origin.clone()),
            origin,
        }
    }

    /// Accept a connection: the stream and the peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match (&self.origin, &self.io) {
            (Origin::Live, Some(io)) => {
                let (stream, peer) = io.accept().await?;
                let local = stream.local_addr().unwrap_or(self.local);
                Ok((TcpStream::real(LIVE_CONN, local, peer, stream, None), peer))
            }
            (Origin::Record(recording), Some(io)) => {
                let accepted = io.accept().await;
                let result = match accepted {
                    Ok((stream, peer)) => {
                        let conn = recording.next_conn();
                        let local = stream.local_addr().unwrap_or(self.local);
                        Ok((conn, stream, peer, local))
                    }
                    Err(err) => Err(err),
                };
                recording.record(EventKind::TcpAccept {
                    listener: self.listener,
                    result: match &result {
                        Ok((conn, _, peer, local)) => Ok(Accepted {
                            conn: *conn,
                            peer: *peer,
                            local: *local,
                        }),
                        Err(err) => Err(err.kind().into()),
                    },
                });
                let (conn, stream, peer, local) = result?;
                let stream =
                    TcpStream::real(conn, local, peer, stream, Some(Arc::clone(recording)));
                Ok((stream, peer))
            }
            (Origin::Sim(socket), _) => {
                let (conn, local, peer, stream) = sim::tcp_accept(self.listener, *socket).await?;
                Ok((TcpStream::simulated(conn, local, peer, stream), peer))
            }
            _ => {
                let event = replay_call(Call::TcpAccept {
                    listener: self.listener,
                })
                .await;
                match event.kind {
                    EventKind::TcpAccept {
                        result: Ok(accepted),
                        ..
                    } => Ok((
                        TcpStream::replayed(accepted.conn, accepted.local, accepted.peer),
                        accepted.peer,
                    )),
                    EventKind::TcpAccept {
                        result: Err(kind), ..
                    } => Err(to_error(kind)),
                    _ => Err(unexpected(&event)),
                }
            }
        }
    }

    /// The bound address (as recorded, in replay).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn bind_real(addr: &str) -> io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let io = tokio::net::TcpListener::bind(addr).await?;
    let local = io.local_addr()?;
    Ok((io, local))
}

/// A TCP stream, like `tokio::net::TcpStream` (tokio `AsyncRead` and
/// `AsyncWrite`).
pub struct TcpStream {
    conn: ConnId,
    local: SocketAddr,
    peer: SocketAddr,
    io: StreamIo,
    close: Arc<CloseOnDrop>,
}

enum StreamIo {
    Real {
        io: tokio::net::TcpStream,
        /// `None` in live mode.
        recording: Option<Arc<Recording>>,
    },
    Replay(ReplayReads),
    Sim {
        key: u64,
    },
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
    fn real(
        conn: ConnId,
        local: SocketAddr,
        peer: SocketAddr,
        io: tokio::net::TcpStream,
        recording: Option<Arc<Recording>>,
    ) -> TcpStream {
        let origin = match &recording {
            Some(recording) => Origin::Record(Arc::clone(recording)),
            None => Origin::Live,
        };
        TcpStream {
            conn,
            local,
            peer,
            io: StreamIo::Real { io, recording },
            close: CloseOnDrop::new(conn, origin),
        }
    }

    fn replayed(conn: ConnId, local: SocketAddr, peer: SocketAddr) -> TcpStream {
        TcpStream {
            conn,
            local,
            peer,
            io: StreamIo::Replay(ReplayReads::default()),
            close: CloseOnDrop::new(conn, Origin::Replay),
        }
    }

    fn simulated(
        conn: ConnId,
        local: SocketAddr,
        peer: SocketAddr,
        socket: SimSocket,
    ) -> TcpStream {
        let SimSocket::Stream { key } = socket else {
            unreachable!("a simulated stream is made from a stream socket")
        };
        TcpStream {
            conn,
            local,
            peer,
            io: StreamIo::Sim { key },
            close: CloseOnDrop::new(conn, Origin::Sim(socket)),
        }
    }

    /// Connect to `addr`.
    pub async fn connect(addr: impl ToAddr) -> io::Result<TcpStream> {
        let text = addr.to_addr_string();
        match mode() {
            Mode::Sim => {
                let (conn, local, peer, socket) = sim::tcp_connect(&text).await?;
                Ok(TcpStream::simulated(conn, local, peer, socket))
            }
            Mode::Live => {
                let io = tokio::net::TcpStream::connect(text.as_str()).await?;
                let (local, peer) = (io.local_addr()?, io.peer_addr()?);
                Ok(TcpStream::real(LIVE_CONN, local, peer, io, None))
            }
            Mode::Record(recording) => {
                let connected = connect_real(&text).await;
                let conn = recording.next_conn();
                recording.record(EventKind::TcpConnect {
                    conn,
                    addr: text,
                    result: match &connected {
                        Ok((_, local, peer)) => Ok(Connected {
                            local: *local,
                            peer: *peer,
                        }),
                        Err(err) => Err(err.kind().into()),
                    },
                });
                let (io, local, peer) = connected?;
                Ok(TcpStream::real(conn, local, peer, io, Some(recording)))
            }
            Mode::Replay => {
                let event = replay_call(Call::TcpConnect { addr: &text }).await;
                match event.kind {
                    EventKind::TcpConnect {
                        conn,
                        result: Ok(connected),
                        ..
                    } => Ok(TcpStream::replayed(conn, connected.local, connected.peer)),
                    EventKind::TcpConnect {
                        result: Err(kind), ..
                    } => Err(to_error(kind)),
                    _ => Err(unexpected(&event)),
                }
            }
        }
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
        match &self.io {
            StreamIo::Real { io, .. } => io.set_nodelay(nodelay),
            StreamIo::Replay(_) | StreamIo::Sim { .. } => Ok(()),
        }
    }

    /// Split into halves that can move to different tasks. The connection
    /// closes (one `TcpClose` event) when both halves are dropped.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let TcpStream {
            conn,
            peer,
            io,
            close,
            ..
        } = self;
        match io {
            StreamIo::Real { io, recording } => {
                let (read, write) = io.into_split();
                (
                    OwnedReadHalf {
                        conn,
                        peer,
                        io: ReadIo::Real {
                            io: read,
                            recording: recording.clone(),
                        },
                        _close: Arc::clone(&close),
                    },
                    OwnedWriteHalf {
                        conn,
                        peer,
                        io: WriteIo::Real {
                            io: write,
                            recording,
                        },
                        _close: close,
                    },
                )
            }
            StreamIo::Replay(reads) => (
                OwnedReadHalf {
                    conn,
                    peer,
                    io: ReadIo::Replay(reads),
                    _close: Arc::clone(&close),
                },
                OwnedWriteHalf {
                    conn,
                    peer,
                    io: WriteIo::Replay,
                    _close: close,
                },
            ),
            StreamIo::Sim { key } => (
                OwnedReadHalf {
                    conn,
                    peer,
                    io: ReadIo::Sim { key },
                    _close: Arc::clone(&close),
                },
                OwnedWriteHalf {
                    conn,
                    peer,
                    io: WriteIo::Sim { key },
                    _close: close,
                },
            ),
        }
    }
}

async fn connect_real(addr: &str) -> io::Result<(tokio::net::TcpStream, SocketAddr, SocketAddr)> {
    // deja's own connect: not a foreign socket.
    let io = crate::intercept::Internal(tokio::net::TcpStream::connect(addr)).await?;
    let (local, peer) = (io.local_addr()?, io.peer_addr()?);
    Ok((io, local, peer))
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.io {
            StreamIo::Real { io, recording } => {
                poll_read_real(io, recording.as_deref(), (this.conn, this.peer), cx, buf)
            }
            StreamIo::Replay(reads) => reads.poll_read(this.conn, cx, buf),
            StreamIo::Sim { key } => sim::poll_read(*key, this.conn, cx, buf),
        }
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.io {
            StreamIo::Real { io, recording } => {
                poll_write_real(io, recording.as_deref(), (this.conn, this.peer), cx, buf)
            }
            StreamIo::Replay(_) => poll_write_replay((this.conn, this.peer), cx, buf),
            StreamIo::Sim { key } => {
                sim::poll_write(*key, this.conn, cx, buf, crate::sim::keep_write_bytes())
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamIo::Real { io, .. } => Pin::new(io).poll_flush(cx),
            StreamIo::Replay(_) | StreamIo::Sim { .. } => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.io {
            StreamIo::Real { io, recording } => {
                poll_shutdown_real(io, recording.as_deref(), this.conn, cx)
            }
            StreamIo::Replay(_) => poll_shutdown_replay(this.conn, cx),
            StreamIo::Sim { key } => Poll::Ready(sim::shutdown(*key, this.conn)),
        }
    }
}

/// The read half of [`TcpStream::into_split`].
pub struct OwnedReadHalf {
    conn: ConnId,
    peer: SocketAddr,
    io: ReadIo,
    _close: Arc<CloseOnDrop>,
}

enum ReadIo {
    Real {
        io: tokio::net::tcp::OwnedReadHalf,
        recording: Option<Arc<Recording>>,
    },
    Replay(ReplayReads),
    Sim {
        key: u64,
    },
}

impl fmt::Debug for OwnedReadHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedReadHalf")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for OwnedReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.io {
            ReadIo::Real { io, recording } => {
                poll_read_real(io, recording.as_deref(), (this.conn, this.peer), cx, buf)
            }
            ReadIo::Replay(reads) => reads.poll_read(this.conn, cx, buf),
            ReadIo::Sim { key } => sim::poll_read(*key, this.conn, cx, buf),
        }
    }
}

/// The write half of [`TcpStream::into_split`]. Dropping it shuts the
/// write side down, as with tokio.
pub struct OwnedWriteHalf {
    conn: ConnId,
    peer: SocketAddr,
    io: WriteIo,
    _close: Arc<CloseOnDrop>,
}

enum WriteIo {
    Real {
        io: tokio::net::tcp::OwnedWriteHalf,
        recording: Option<Arc<Recording>>,
    },
    Replay,
    Sim {
        key: u64,
    },
}

impl Drop for OwnedWriteHalf {
    fn drop(&mut self) {
        // Like tokio: dropping the write half shuts the write side down.
        if let WriteIo::Sim { key } = self.io {
            sim::half_close(key);
        }
    }
}

impl fmt::Debug for OwnedWriteHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedWriteHalf")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl AsyncWrite for OwnedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.io {
            WriteIo::Real { io, recording } => {
                poll_write_real(io, recording.as_deref(), (this.conn, this.peer), cx, buf)
            }
            WriteIo::Replay => poll_write_replay((this.conn, this.peer), cx, buf),
            WriteIo::Sim { key } => {
                sim::poll_write(*key, this.conn, cx, buf, crate::sim::keep_write_bytes())
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            WriteIo::Real { io, .. } => Pin::new(io).poll_flush(cx),
            WriteIo::Replay | WriteIo::Sim { .. } => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.io {
            WriteIo::Real { io, recording } => {
                poll_shutdown_real(io, recording.as_deref(), this.conn, cx)
            }
            WriteIo::Replay => poll_shutdown_replay(this.conn, cx),
            WriteIo::Sim { key } => Poll::Ready(sim::shutdown(*key, this.conn)),
        }
    }
}

/// Read from the socket; in record mode log exactly what came back. One
/// read never returns more than an event may carry.
fn poll_read_real<R: AsyncRead + Unpin>(
    io: &mut R,
    recording: Option<&Recording>,
    (conn, peer): (ConnId, SocketAddr),
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let Some(recording) = recording else {
        return Pin::new(io).poll_read(cx, buf);
    };
    if buf.remaining() == 0 {
        return Poll::Ready(Ok(()));
    }
    let limit = buf.remaining().min(EVENT_PAYLOAD_BYTES_MAX);
    let mut limited = buf.take(limit);
    let result = ready!(Pin::new(io).poll_read(cx, &mut limited));
    match result {
        Ok(()) => {
            let n = limited.filled().len();
            if n == 0 {
                recording.record(EventKind::TcpRead {
                    conn,
                    result: ReadOutcome::Eof,
                });
            } else {
                // The service gets the real bytes; the log gets them masked.
                recording.record_read(conn, peer, limited.filled());
            }
            // SAFETY: the inner read initialized and filled these n bytes.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            Poll::Ready(Ok(()))
        }
        Err(err) => {
            recording.record(EventKind::TcpRead {
                conn,
                result: ReadOutcome::Error(err.kind().into()),
            });
            Poll::Ready(Err(err))
        }
    }
}

fn poll_write_real<W: AsyncWrite + Unpin>(
    io: &mut W,
    recording: Option<&Recording>,
    (conn, peer): (ConnId, SocketAddr),
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let Some(recording) = recording else {
        return Pin::new(io).poll_write(cx, buf);
    };
    if buf.is_empty() {
        return Poll::Ready(Ok(0));
    }
    let result = ready!(Pin::new(io).poll_write(cx, buf));
    match &result {
        Ok(n) => recording.record_write(
            Direction::TcpWrite,
            conn,
            peer,
            &buf[..(*n).min(buf.len())],
            |written| EventKind::TcpWrite {
                conn,
                result: Ok(written),
            },
        ),
        Err(err) => recording.record(EventKind::TcpWrite {
            conn,
            result: Err(err.kind().into()),
        }),
    }
    Poll::Ready(result)
}

fn poll_shutdown_real<W: AsyncWrite + Unpin>(
    io: &mut W,
    recording: Option<&Recording>,
    conn: ConnId,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let result = ready!(Pin::new(io).poll_shutdown(cx));
    if let Some(recording) = recording {
        recording.record(EventKind::TcpShutdown {
            conn,
            result: result.as_ref().map(|_| ()).map_err(|err| err.kind().into()),
        });
    }
    Poll::Ready(result)
}

/// A replayed stream's reads: recorded chunks, handed out as recorded. If
/// the code reads into a smaller buffer than it did when recording, the
/// rest of the chunk is kept for its next read.
#[derive(Default)]
struct ReplayReads {
    leftover: Vec<u8>,
    at: usize,
}

impl ReplayReads {
    fn poll_read(
        &mut self,
        conn: ConnId,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.at < self.leftover.len() {
            self.hand_out(buf);
            return Poll::Ready(Ok(()));
        }
        let call = Call::TcpRead { conn };
        let event = ready!(crate::replay::poll(cx, &call));
        match event.kind {
            EventKind::TcpRead {
                result: ReadOutcome::Data(bytes),
                ..
            } => {
                self.leftover = bytes;
                self.at = 0;
                self.hand_out(buf);
                Poll::Ready(Ok(()))
            }
            EventKind::TcpRead {
                result: ReadOutcome::Eof,
                ..
            } => Poll::Ready(Ok(())),
            EventKind::TcpRead {
                result: ReadOutcome::Error(kind),
                ..
            } => Poll::Ready(Err(to_error(kind))),
            _ => Poll::Ready(Err(unexpected(&event))),
        }
    }

    fn hand_out(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.leftover.len() - self.at);
        buf.put_slice(&self.leftover[self.at..self.at + n]);
        self.at += n;
        if self.at == self.leftover.len() {
            self.leftover = Vec::new();
            self.at = 0;
        }
    }
}

fn poll_write_replay(
    (conn, peer): (ConnId, SocketAddr),
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        return Poll::Ready(Ok(0));
    }
    // Compared as the recording logged it: masked by the same redactors.
    let masked = crate::replay::redact_write(Direction::TcpWrite, conn, peer, buf);
    let call = Call::TcpWrite {
        conn,
        bytes: masked.as_deref().unwrap_or(buf),
    };
    let event = ready!(crate::replay::poll(cx, &call));
    Poll::Ready(match event.kind {
        EventKind::TcpWrite {
            result: Ok(written),
            ..
        } => {
            let n = (written.len as usize).min(buf.len());
            crate::replay::wrote(Direction::TcpWrite, conn, &buf[..n]);
            Ok(n)
        }
        EventKind::TcpWrite {
            result: Err(kind), ..
        } => Err(to_error(kind)),
        _ => Err(unexpected(&event)),
    })
}

fn poll_shutdown_replay(conn: ConnId, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let call = Call::TcpShutdown { conn };
    let event = ready!(crate::replay::poll(cx, &call));
    Poll::Ready(match event.kind {
        EventKind::TcpShutdown { result, .. } => result.map_err(to_error),
        _ => Err(unexpected(&event)),
    })
}
