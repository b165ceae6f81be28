//! Replay's sockets: none exist. Every result (a bind, an accept, the
//! bytes and chunking of a read, a write's length) is the recorded one,
//! released by the gate when the cursor gets there.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use deja_recorder::{ConnId, Event, EventKind, IoErrorKind, ReadOutcome};
use deja_replayer::gate::Call;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{poll, redact_write, with_replay, wrote};
use crate::backend::{
    self, BoxFuture, ListenerIo, NewSocket, NewStream, ReadIo, StreamIo, UdpIo, WriteIo,
};
use crate::redact::Direction;

pub(crate) fn to_error(kind: IoErrorKind) -> io::Error {
    io::Error::from(io::ErrorKind::from(kind))
}

/// Wait at the gate for the running task's `call`.
pub(crate) async fn replay_call(call: Call<'_>) -> Event {
    std::future::poll_fn(|cx| poll(cx, &call)).await
}

/// The recorded outcome did not have the expected shape: the log and the
/// code disagree in a way the gate cannot see (a corrupt or foreign log).
pub(crate) fn unexpected(event: &Event) -> io::Error {
    io::Error::other(format!(
        "deja replay: unexpected recorded event {event} for this call"
    ))
}

/// Claims the close of a socket when its last handle drops.
#[derive(Debug)]
struct Close {
    conn: ConnId,
    udp: bool,
}

impl Drop for Close {
    fn drop(&mut self) {
        let conn = self.conn;
        let call = match self.udp {
            true => Call::UdpClose { socket: conn },
            false => Call::TcpClose { conn },
        };
        with_replay(|replay| {
            replay.forget_conn(conn);
            replay.claim(backend::task_id(), &call)
        });
    }
}

pub(super) async fn tcp_bind(addr: String) -> io::Result<NewSocket<dyn ListenerIo>> {
    let event = replay_call(Call::TcpListen { addr: &addr }).await;
    match event.kind {
        EventKind::TcpListen {
            listener,
            result: Ok(local),
            ..
        } => Ok(NewSocket {
            conn: listener,
            local,
            io: Box::new(Listener {
                listener,
                _close: Close {
                    conn: listener,
                    udp: false,
                },
            }),
        }),
        EventKind::TcpListen {
            result: Err(kind), ..
        } => Err(to_error(kind)),
        _ => Err(unexpected(&event)),
    }
}

pub(super) async fn tcp_connect(addr: String) -> io::Result<NewStream> {
    let event = replay_call(Call::TcpConnect { addr: &addr }).await;
    match event.kind {
        EventKind::TcpConnect {
            conn,
            result: Ok(connected),
            ..
        } => Ok(Stream::boxed(conn, connected.local, connected.peer)),
        EventKind::TcpConnect {
            result: Err(kind), ..
        } => Err(to_error(kind)),
        _ => Err(unexpected(&event)),
    }
}

pub(super) async fn udp_bind(addr: String) -> io::Result<NewSocket<dyn UdpIo>> {
    let event = replay_call(Call::UdpBind { addr: &addr }).await;
    match event.kind {
        EventKind::UdpBind {
            socket,
            result: Ok(local),
            ..
        } => Ok(NewSocket {
            conn: socket,
            local,
            io: Box::new(Udp {
                socket,
                _close: Close {
                    conn: socket,
                    udp: true,
                },
            }),
        }),
        EventKind::UdpBind {
            result: Err(kind), ..
        } => Err(to_error(kind)),
        _ => Err(unexpected(&event)),
    }
}

pub(super) async fn lookup(host: String) -> io::Result<Vec<SocketAddr>> {
    let event = replay_call(Call::Lookup { host: &host }).await;
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

struct Listener {
    listener: ConnId,
    _close: Close,
}

impl ListenerIo for Listener {
    fn accept(&self) -> BoxFuture<'_, io::Result<NewStream>> {
        Box::pin(async move {
            let event = replay_call(Call::TcpAccept {
                listener: self.listener,
            })
            .await;
            match event.kind {
                EventKind::TcpAccept {
                    result: Ok(accepted),
                    ..
                } => Ok(Stream::boxed(accepted.conn, accepted.local, accepted.peer)),
                EventKind::TcpAccept {
                    result: Err(kind), ..
                } => Err(to_error(kind)),
                _ => Err(unexpected(&event)),
            }
        })
    }
}

/// A replayed stream, or one half of it: both halves share the close.
struct Stream {
    conn: ConnId,
    peer: SocketAddr,
    reads: ReplayReads,
    _close: Arc<Close>,
}

impl Stream {
    fn boxed(conn: ConnId, local: SocketAddr, peer: SocketAddr) -> NewStream {
        NewStream {
            conn,
            local,
            peer,
            io: Box::new(Stream {
                conn,
                peer,
                reads: ReplayReads::default(),
                _close: Arc::new(Close { conn, udp: false }),
            }),
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
            peer: self.peer,
            reads: ReplayReads::default(),
            _close: Arc::clone(&self._close),
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
        let this = self.get_mut();
        this.reads.poll_read(this.conn, cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write((self.conn, self.peer), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let call = Call::TcpShutdown { conn: self.conn };
        let event = ready!(poll(cx, &call));
        Poll::Ready(match event.kind {
            EventKind::TcpShutdown { result, .. } => result.map_err(to_error),
            _ => Err(unexpected(&event)),
        })
    }
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
        let event = ready!(poll(cx, &call));
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

fn poll_write(
    (conn, peer): (ConnId, SocketAddr),
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        return Poll::Ready(Ok(0));
    }
    // Compared as the recording logged it: masked by the same redactors.
    let masked = redact_write(Direction::TcpWrite, conn, peer, buf);
    let call = Call::TcpWrite {
        conn,
        bytes: masked.as_deref().unwrap_or(buf),
    };
    let event = ready!(poll(cx, &call));
    Poll::Ready(match event.kind {
        EventKind::TcpWrite {
            result: Ok(written),
            ..
        } => {
            let n = (written.len as usize).min(buf.len());
            wrote(Direction::TcpWrite, conn, &buf[..n]);
            Ok(n)
        }
        EventKind::TcpWrite {
            result: Err(kind), ..
        } => Err(to_error(kind)),
        _ => Err(unexpected(&event)),
    })
}

struct Udp {
    socket: ConnId,
    _close: Close,
}

impl UdpIo for Udp {
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        // Compared as the recording logged it: masked by the same redactors.
        let masked = redact_write(Direction::UdpSend, self.socket, target, buf);
        let call = Call::UdpSend {
            socket: self.socket,
            peer: target,
            bytes: masked.as_deref().unwrap_or(buf),
        };
        let event = ready!(poll(cx, &call));
        Poll::Ready(match event.kind {
            EventKind::UdpSend {
                result: Ok(written),
                ..
            } => Ok((written.len as usize).min(buf.len())),
            EventKind::UdpSend {
                result: Err(kind), ..
            } => Err(to_error(kind)),
            _ => Err(unexpected(&event)),
        })
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let call = Call::UdpRecv {
            socket: self.socket,
        };
        let event = ready!(poll(cx, &call));
        Poll::Ready(match event.kind {
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
        })
    }
}
