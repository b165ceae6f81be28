//! Live mode: plain tokio and the OS, nothing logged. Also the real
//! operations record mode makes before it logs their results.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use deja_recorder::{ConnId, SignalKind, TaskId, TaskOutcome};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    Backend, BoxFuture, Clock, ListenerIo, NewSocket, NewStream, ReadIo, StreamIo, TaskCtx,
    TimerIo, TimerTarget, UdpIo, WriteIo,
};

/// Connection ids mean nothing in live mode.
const LIVE_CONN: ConnId = ConnId(u64::MAX);

/// Most addresses one lookup keeps: a resolver answer longer than this
/// is cut (no real service dials past the first few, and the log bounds
/// every event's payload).
pub const LOOKUP_ADDRS_MAX: usize = 64;

/// The live backend: a thread outside any deja runtime.
#[derive(Debug)]
pub(crate) struct Live;

/// The origin of live-mode instants: first use in the process.
pub(crate) fn live_origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// `duration` in nanoseconds, saturating.
pub(crate) fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Backend for Live {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }

    fn root_seed(&self) -> Option<[u8; 32]> {
        None
    }

    fn adopt(&self, _tokio_id: tokio::task::Id) -> Option<Arc<TaskCtx>> {
        None
    }

    fn spawn(&self) -> Option<TaskId> {
        None
    }

    fn task_end(&self, _task: TaskId, _outcome: TaskOutcome) {}

    fn mark(&self, _name: &str, _value: &[u8]) {}

    fn mark_end(&self, _name: &str) {}

    fn clock_mono(&self) -> u64 {
        nanos(super::internal(|| live_origin().elapsed()))
    }

    fn clock_wall(&self) -> Option<i64> {
        None
    }

    fn timer(&self, target: TimerTarget) -> Pin<Box<dyn TimerIo>> {
        Box::pin(LiveTimer(match target {
            TimerTarget::After(ns) => tokio::time::sleep(std::time::Duration::from_nanos(ns)),
            TimerTarget::At(ns) => tokio::time::sleep_until(tokio::time::Instant::from_std(
                live_origin() + std::time::Duration::from_nanos(ns),
            )),
        }))
    }

    fn entropy(&self, chunk: &mut [u8]) {
        real_entropy(chunk);
    }

    fn libc_clock(
        &self,
        _clock: Clock,
        _task: Option<TaskId>,
        _real: &mut dyn FnMut() -> i64,
    ) -> Option<i64> {
        None
    }

    fn libc_entropy(
        &self,
        _out: &mut [u8],
        _task: Option<TaskId>,
        _real: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> bool {
        false
    }

    fn foreign_connect(&self, _peer: &str, _task: Option<TaskId>) -> Option<bool> {
        None
    }

    fn driver_wait(&self, _wait: &mut dyn FnMut(i32) -> i32, _timeout_ms: i32) -> Option<i32> {
        None
    }

    fn signal(&self, kinds: &'static [SignalKind]) -> BoxFuture<'static, io::Result<SignalKind>> {
        Box::pin(wait_signal(kinds))
    }

    fn tcp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn ListenerIo>>> {
        Box::pin(async move {
            let (io, local) = bind_tcp(&addr).await?;
            Ok(NewSocket {
                conn: LIVE_CONN,
                local,
                io: Box::new(LiveListener { io, local }) as Box<dyn ListenerIo>,
            })
        })
    }

    fn tcp_connect(&self, addr: String) -> BoxFuture<'static, io::Result<NewStream>> {
        Box::pin(async move {
            let io = tokio::net::TcpStream::connect(addr.as_str()).await?;
            let (local, peer) = (io.local_addr()?, io.peer_addr()?);
            Ok(live_stream(io, local, peer))
        })
    }

    fn udp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn UdpIo>>> {
        Box::pin(async move {
            let (io, local) = bind_udp(&addr).await?;
            Ok(NewSocket {
                conn: LIVE_CONN,
                local,
                io: Box::new(LiveUdp(io)) as Box<dyn UdpIo>,
            })
        })
    }

    fn lookup(&self, host: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { lookup(&host).await })
    }
}

/// OS entropy into `chunk`, as deja's own work.
pub(crate) fn real_entropy(chunk: &mut [u8]) {
    super::internal(|| getrandom::fill(chunk)).expect("the OS entropy source failed");
}

/// A tokio timer.
struct LiveTimer(tokio::time::Sleep);

impl TimerIo for LiveTimer {
    fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: the sleep is structurally pinned, never moved out.
        unsafe { self.map_unchecked_mut(|timer| &mut timer.0) }.poll(cx)
    }
}

use std::future::Future as _;

/// Bind a real TCP listener.
pub(crate) async fn bind_tcp(addr: &str) -> io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let io = tokio::net::TcpListener::bind(addr).await?;
    let local = io.local_addr()?;
    Ok((io, local))
}

/// Bind a real UDP socket.
pub(crate) async fn bind_udp(addr: &str) -> io::Result<(tokio::net::UdpSocket, SocketAddr)> {
    let io = tokio::net::UdpSocket::bind(addr).await?;
    let local = io.local_addr()?;
    Ok((io, local))
}

/// Resolve `host` for real, keeping at most [`LOOKUP_ADDRS_MAX`] addresses.
pub(crate) async fn lookup(host: &str) -> io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(host).await?.collect();
    addrs.truncate(LOOKUP_ADDRS_MAX);
    Ok(addrs)
}

/// Wait for the first of `kinds` for real.
#[cfg(unix)]
pub(crate) async fn wait_signal(kinds: &[SignalKind]) -> io::Result<SignalKind> {
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

/// Wait for the first of `kinds` for real.
#[cfg(not(unix))]
pub(crate) async fn wait_signal(kinds: &[SignalKind]) -> io::Result<SignalKind> {
    if kinds.contains(&SignalKind::Interrupt) {
        tokio::signal::ctrl_c().await?;
        return Ok(SignalKind::Interrupt);
    }
    std::future::pending().await
}

struct LiveListener {
    io: tokio::net::TcpListener,
    local: SocketAddr,
}

impl ListenerIo for LiveListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<NewStream>> {
        Box::pin(async move {
            let (io, peer) = self.io.accept().await?;
            let local = io.local_addr().unwrap_or(self.local);
            Ok(live_stream(io, local, peer))
        })
    }
}

fn live_stream(io: tokio::net::TcpStream, local: SocketAddr, peer: SocketAddr) -> NewStream {
    NewStream {
        conn: LIVE_CONN,
        local,
        peer,
        io: Box::new(LiveStream { io }),
    }
}

struct LiveStream {
    io: tokio::net::TcpStream,
}

impl StreamIo for LiveStream {
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.set_nodelay(nodelay)
    }

    fn into_split(self: Box<Self>) -> (Box<dyn ReadIo>, Box<dyn WriteIo>) {
        let (read, write) = self.io.into_split();
        (Box::new(read), Box::new(write))
    }
}

impl AsyncRead for LiveStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for LiveStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

struct LiveUdp(tokio::net::UdpSocket);

impl UdpIo for LiveUdp {
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        self.0.poll_send_to(cx, buf, target)
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        poll_recv_real(&self.0, cx, buf)
    }
}

/// tokio's `poll_recv_from`, with the length received.
pub(crate) fn poll_recv_real(
    io: &tokio::net::UdpSocket,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<(usize, SocketAddr)>> {
    let mut read = ReadBuf::new(buf);
    let from = std::task::ready!(io.poll_recv_from(cx, &mut read))?;
    Poll::Ready(Ok((read.filled().len(), from)))
}
