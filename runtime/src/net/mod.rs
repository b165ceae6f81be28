//! The network: drop-in `TcpListener`, `TcpStream`, `UdpSocket` and
//! `lookup_host`.
//!
//! Record mode wraps tokio's sockets and logs every result (accepted
//! peers, the exact bytes and chunking of every read, the length and hash
//! of every write, errors and EOF). Replay opens no socket at all: every
//! result comes from the log.
//!
//! Optional integrations, off by default:
//!
//! - feature `axum`: [`TcpListener`] implements `axum::serve::Listener`, so
//!   `axum::serve(listener, router)` (and its graceful shutdown) runs on
//!   deja sockets.
//! - feature `hyper`: `Connector` connects hyper-util's pooled
//!   `client::legacy::Client` over deja [`TcpStream`]s (HTTP; for HTTPS,
//!   hyper-rustls's connector wraps it, see `tls` with `rustls`).
//! - feature `postgres`: `postgres::connect(&config)`, tokio-postgres's
//!   `Client` and `Connection` over a deja [`TcpStream`] (password
//!   authentication, SCRAM-SHA-256 included); with `rustls` too,
//!   `postgres::connect_tls(&config, tls)` over TLS.
//! - feature `redis`: `redis::connect(url)`, the redis crate's
//!   `MultiplexedConnection` over a deja [`TcpStream`], with its default
//!   response timeout.
//! - feature `tonic`: `TcpListenerStream` for tonic's
//!   `Server::serve_with_incoming` on a deja listener (with tonic's
//!   `Connected` for [`TcpStream`], so handlers see the peer), and tonic's
//!   `Endpoint::connect_with_connector` with `Connector` (it turns on
//!   `hyper`).
//! - feature `rustls`: `tls`, tokio-rustls's `TlsAcceptor` and
//!   `TlsConnector` over deja [`TcpStream`]s with ring (the handshake's
//!   randomness and clock readings are recorded and replayed).

mod addr;
#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "hyper")]
mod hyper;
mod lookup;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
mod tcp;
#[cfg(feature = "rustls")]
pub mod tls;
#[cfg(feature = "tonic")]
mod tonic;
mod udp;

#[cfg(feature = "tonic")]
pub use self::tonic::TcpListenerStream;
pub use addr::ToAddr;
#[cfg(feature = "hyper")]
pub use hyper::{Connecting, Connector};
pub use lookup::{lookup_host, LOOKUP_ADDRS_MAX};
pub use tcp::{OwnedReadHalf, OwnedWriteHalf, TcpListener, TcpStream};
pub use udp::UdpSocket;

use std::io;
use std::sync::Arc;

use deja_recorder::{ConnId, EventKind, IoErrorKind};
use deja_replayer::gate::Call;

use crate::context::{self, Ctx};
use crate::record::Recording;
use crate::replay::with_replay;

/// How a socket was made: decides where its results come from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    Live,
    Record(Arc<Recording>),
    Replay,
    /// A simulated socket (its state lives in the simulated world).
    Sim(crate::sim::net::SimSocket),
}

/// Records (or, in replay, claims) the close of a socket when the last
/// handle to it drops.
#[derive(Debug)]
pub(crate) struct CloseOnDrop {
    conn: ConnId,
    origin: Origin,
    /// A UDP socket: its close is `udp_close`, not `tcp_close`.
    udp: bool,
}

impl CloseOnDrop {
    /// A TCP stream or listener.
    pub(crate) fn new(conn: ConnId, origin: Origin) -> Arc<CloseOnDrop> {
        Arc::new(CloseOnDrop {
            conn,
            origin,
            udp: false,
        })
    }

    /// A UDP socket.
    pub(crate) fn udp(socket: ConnId, origin: Origin) -> Arc<CloseOnDrop> {
        Arc::new(CloseOnDrop {
            conn: socket,
            origin,
            udp: true,
        })
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let (event, call) = if self.udp {
            let socket = self.conn;
            (EventKind::UdpClose { socket }, Call::UdpClose { socket })
        } else {
            let conn = self.conn;
            (EventKind::TcpClose { conn }, Call::TcpClose { conn })
        };
        match &self.origin {
            Origin::Live => {}
            Origin::Record(recording) => {
                recording.record(event);
                recording.forget_conn(self.conn);
            }
            Origin::Replay => {
                with_replay(|replay| {
                    replay.forget_conn(self.conn);
                    replay.claim(context::task_id(), &call)
                });
            }
            Origin::Sim(socket) => {
                context::with(|ctx| {
                    if let Ctx::Sim(host) = ctx {
                        host.record(event);
                    }
                });
                crate::sim::net::close(*socket);
            }
        }
    }
}

/// Where a new socket's results come from, on the current thread.
pub(crate) enum Mode {
    Live,
    Record(Arc<Recording>),
    Replay,
    Sim,
}

/// The current thread's mode for a new socket.
pub(crate) fn mode() -> Mode {
    match context::current() {
        Ctx::Live => Mode::Live,
        Ctx::Record(recording) => Mode::Record(recording),
        Ctx::Replay(_) => Mode::Replay,
        Ctx::Sim(_) => Mode::Sim,
    }
}

pub(crate) fn to_error(kind: IoErrorKind) -> io::Error {
    io::Error::from(io::ErrorKind::from(kind))
}

/// Wait at the gate for the running task's `call`.
pub(crate) async fn replay_call(call: Call<'_>) -> deja_recorder::Event {
    std::future::poll_fn(|cx| crate::replay::poll(cx, &call)).await
}

/// The recorded outcome did not have the expected shape: the log and the
/// code disagree in a way the gate cannot see (a corrupt or foreign log).
pub(crate) fn unexpected(event: &deja_recorder::Event) -> io::Error {
    io::Error::other(format!(
        "deja replay: unexpected recorded event {event} for this call"
    ))
}
