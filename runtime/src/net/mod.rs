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
