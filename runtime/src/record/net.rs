//! Record's sockets: tokio's, with every result logged (accepted peers,
//! the exact bytes and chunking of every read, the length and hash of
//! every write, errors and EOF).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use deja_recorder::{
    Accepted, ConnId, Connected, EventKind, IoErrorKind, ReadOutcome, EVENT_PAYLOAD_BYTES_MAX,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Recording;
use crate::backend::{
    self, live, BoxFuture, ListenerIo, NewSocket, NewStream, ReadIo, StreamIo, UdpIo, WriteIo,
};
use crate::redact::Direction;

/// Logs the close of a socket when its last handle drops.
#[derive(Debug)]
struct Close {
    conn: ConnId,
    udp: bool,
    recording: Arc<Recording>,
}

impl Drop for Close {
    fn drop(&mut self) {
        let conn = self.conn;
        self.recording.record(match self.udp {
            true => EventKind::UdpClose { socket: conn },
            false => EventKind::TcpClose { conn },
        });
        self.recording.forget_conn(conn);
    }
}

impl Close {
    fn new(conn: ConnId, udp: bool, recording: &Arc<Recording>) -> Close {
        Close {
            conn,
            udp,
            recording: Arc::clone(recording),
        }
    }
}

/// Log a bind's result under a new id; `event` makes its event.
fn log_bind<S>(
    recording: &Recording,
    bound: &io::Result<(S, SocketAddr)>,
    event: impl FnOnce(ConnId, Result<SocketAddr, IoErrorKind>) -> EventKind,
) -> ConnId {
    let id = recording.next_conn();
    let result = bound
        .as_ref()
        .map(|(_, local)| *local)
        .map_err(|err| err.kind().into());
    recording.record(event(id, result));
    id
}

pub(super) async fn tcp_bind(
    recording: Arc<Recording>,
    addr: String,
) -> io::Result<NewSocket<dyn ListenerIo>> {
    let bound = live::bind_tcp(&addr).await;
    let listener = log_bind(&recording, &bound, |listener, result| {
        EventKind::TcpListen {
            listener,
            addr,
            result,
        }
    });
    let (io, local) = bound?;
    Ok(NewSocket {
        conn: listener,
        local,
        io: Box::new(Listener {
            listener,
            local,
            io,
            _close: Close::new(listener, false, &recording),
            recording,
        }),
    })
}

pub(super) async fn tcp_connect(recording: Arc<Recording>, addr: String) -> io::Result<NewStream> {
    // deja's own connect: not a foreign socket.
    let connected = backend::Internal(async {
        let io = tokio::net::TcpStream::connect(addr.as_str()).await?;
        let (local, peer) = (io.local_addr()?, io.peer_addr()?);
        Ok::<_, io::Error>((io, local, peer))
    })
    .await;
    let conn = recording.next_conn();
    recording.record(EventKind::TcpConnect {
        conn,
        addr,
        result: match &connected {
            Ok((_, local, peer)) => Ok(Connected {
                local: *local,
                peer: *peer,
            }),
            Err(err) => Err(err.kind().into()),
        },
    });
    let (io, local, peer) = connected?;
    Ok(Stream::boxed(conn, local, peer, io, recording))
}

pub(super) async fn udp_bind(
    recording: Arc<Recording>,
    addr: String,
) -> io::Result<NewSocket<dyn UdpIo>> {
    let bound = live::bind_udp(&addr).await;
    let socket = log_bind(&recording, &bound, |socket, result| EventKind::UdpBind {
        socket,
        addr,
        result,
    });
    let (io, local) = bound?;
    Ok(NewSocket {
        conn: socket,
        local,
        io: Box::new(Udp {
            socket,
            io,
            _close: Close::new(socket, true, &recording),
            recording,
        }),
    })
}

pub(super) async fn lookup(recording: Arc<Recording>, host: String) -> io::Result<Vec<SocketAddr>> {
    let answer = live::lookup(&host).await;
    recording.record(EventKind::Lookup {
        host,
        result: answer
            .as_ref()
            .map(Clone::clone)
            .map_err(|err| err.kind().into()),
    });
    answer
}

struct Listener {
    listener: ConnId,
    local: SocketAddr,
    io: tokio::net::TcpListener,
    recording: Arc<Recording>,
    _close: Close,
}

impl ListenerIo for Listener {
    fn accept(&self) -> BoxFuture<'_, io::Result<NewStream>> {
        Box::pin(async move {
            let accepted = self.io.accept().await.map(|(stream, peer)| {
                let conn = self.recording.next_conn();
                let local = stream.local_addr().unwrap_or(self.local);
                (conn, stream, peer, local)
            });
            self.recording.record(EventKind::TcpAccept {
                listener: self.listener,
                result: match &accepted {
                    Ok((conn, _, peer, local)) => Ok(Accepted {
                        conn: *conn,
                        peer: *peer,
                        local: *local,
                    }),
                    Err(err) => Err(err.kind().into()),
                },
            });
            let (conn, stream, peer, local) = accepted?;
            Ok(Stream::boxed(
                conn,
                local,
                peer,
                stream,
                Arc::clone(&self.recording),
            ))
        })
    }
}

/// A recorded stream, or one half of it (`S` is tokio's stream or one of
/// its owned halves): both halves share the close.
struct Stream<S> {
    io: S,
    conn: ConnId,
    peer: SocketAddr,
    recording: Arc<Recording>,
    close: Arc<Close>,
}

impl Stream<tokio::net::TcpStream> {
    fn boxed(
        conn: ConnId,
        local: SocketAddr,
        peer: SocketAddr,
        io: tokio::net::TcpStream,
        recording: Arc<Recording>,
    ) -> NewStream {
        let close = Arc::new(Close::new(conn, false, &recording));
        NewStream {
            conn,
            local,
            peer,
            io: Box::new(Stream {
                io,
                conn,
                peer,
                recording,
                close,
            }),
        }
    }
}

impl<S> Stream<S> {
    fn with<T>(&self, io: T) -> Stream<T> {
        Stream {
            io,
            conn: self.conn,
            peer: self.peer,
            recording: Arc::clone(&self.recording),
            close: Arc::clone(&self.close),
        }
    }
}

impl StreamIo for Stream<tokio::net::TcpStream> {
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.set_nodelay(nodelay)
    }

    fn into_split(self: Box<Self>) -> (Box<dyn ReadIo>, Box<dyn WriteIo>) {
        let this = *self;
        let placeholder = this.with(());
        let (read, write) = this.io.into_split();
        (
            Box::new(placeholder.with(read)),
            Box::new(placeholder.with(write)),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stream<S> {
    /// Read from the socket and log exactly what came back. One read never
    /// returns more than an event may carry.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let limit = buf.remaining().min(EVENT_PAYLOAD_BYTES_MAX);
        let mut limited = buf.take(limit);
        let result = ready!(Pin::new(&mut this.io).poll_read(cx, &mut limited));
        match result {
            Ok(()) => {
                let n = limited.filled().len();
                if n == 0 {
                    this.recording.record(EventKind::TcpRead {
                        conn: this.conn,
                        result: ReadOutcome::Eof,
                    });
                } else {
                    // The service gets the real bytes; the log gets them masked.
                    this.recording
                        .record_read(this.conn, this.peer, limited.filled());
                }
                // SAFETY: the inner read initialized and filled these n bytes.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(err) => {
                this.recording.record(EventKind::TcpRead {
                    conn: this.conn,
                    result: ReadOutcome::Error(err.kind().into()),
                });
                Poll::Ready(Err(err))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let result = ready!(Pin::new(&mut this.io).poll_write(cx, buf));
        let conn = this.conn;
        match &result {
            Ok(n) => this.recording.record_write(
                Direction::TcpWrite,
                conn,
                this.peer,
                &buf[..(*n).min(buf.len())],
                |written| EventKind::TcpWrite {
                    conn,
                    result: Ok(written),
                },
            ),
            Err(err) => this.recording.record(EventKind::TcpWrite {
                conn,
                result: Err(err.kind().into()),
            }),
        }
        Poll::Ready(result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
        this.recording.record(EventKind::TcpShutdown {
            conn: this.conn,
            result: result.as_ref().map(|_| ()).map_err(|err| err.kind().into()),
        });
        Poll::Ready(result)
    }
}

struct Udp {
    socket: ConnId,
    io: tokio::net::UdpSocket,
    recording: Arc<Recording>,
    _close: Close,
}

impl UdpIo for Udp {
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let result = ready!(self.io.poll_send_to(cx, buf, target));
        let socket = self.socket;
        match &result {
            Ok(n) => self.recording.record_write(
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
            Err(err) => self.recording.record(EventKind::UdpSend {
                socket,
                peer: target,
                result: Err(err.kind().into()),
            }),
        }
        Poll::Ready(result)
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let result = ready!(live::poll_recv_real(&self.io, cx, buf));
        match &result {
            // The service gets the real bytes; the log gets them masked.
            Ok((n, peer)) => {
                self.recording
                    .record_datagram(self.socket, *peer, &buf[..(*n).min(buf.len())]);
            }
            Err(err) => self.recording.record(EventKind::UdpRecv {
                socket: self.socket,
                result: Err(err.kind().into()),
            }),
        }
        Poll::Ready(result)
    }
}
