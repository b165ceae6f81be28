//! `deja`: record and replay a tokio service, libraries included.
//!
//! One binary, four modes (from `DEJA_MODE`): `live` is plain
//! tokio; `record` runs on tokio and logs every nondeterministic input
//! (clock readings, timer firings, entropy, every byte received and
//! its chunking, accepts, connects, errors, spawns, signals, the exit
//! status); `replay` runs the same code on one thread with a virtual
//! clock and every input taken from the log, and stops with a
//! divergence report where the code stops matching it; [`sim`] runs
//! several services in one process on virtual time over a seeded,
//! fault-injecting network, and writes logs `replay` replays.
//!
//! Library code needs no change: tasks it starts with `tokio::spawn` are
//! adopted, its `tokio::time` timers run on the recorded clock, and its
//! clock and entropy reads (`std::time`, uuid, `rand::rng()`, std
//! `HashMap` keys) are interposed at the C library and recorded per task.
//! With features `axum` and `hyper`, `axum::serve` takes a
//! [`net::TcpListener`] and hyper-util's client a `net::Connector`; with
//! `postgres` and `redis`, `net::postgres::connect` and
//! `net::redis::connect` give tokio-postgres and redis clients on deja
//! sockets.
//!
//! Converting a tokio service is a matter of imports:
//!
//! | tokio / std / rand | deja |
//! |---|---|
//! | `#[tokio::main]` | `#[deja::main]` |
//! | `tokio::spawn` | `deja::spawn` |
//! | `tokio::net::{TcpListener, TcpStream, UdpSocket, lookup_host}` | `deja::net::...` |
//! | `tokio::time::{sleep, timeout, interval, Instant}` | `deja::time::...` |
//! | `std::time::SystemTime::now()` | `deja::time::SystemTime::now()` |
//! | `rand::rng()` | `deja::rand::rng()` |
//! | `tokio::select!` | `deja::select!` |
//! | `std::collections::HashMap` | `deja::collections::HashMap` |
//! | `tokio::io::{AsyncReadExt, ...}` | `deja::io::...` (the same traits) |
//!
//! ```
//! use deja::io::{AsyncReadExt, AsyncWriteExt};
//! use deja::net::{TcpListener, TcpStream};
//! use deja::rand::Rng;
//! use deja::time::{sleep, Duration};
//!
//! // `#[deja::main] async fn main()` does this, with the mode from DEJA_MODE.
//! let mut runtime = deja::Builder::new().build()?;
//! runtime.block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     let server = deja::spawn(async move {
//!         let (mut conn, _peer) = listener.accept().await?;
//!         let mut buf = [0u8; 64];
//!         let n = conn.read(&mut buf).await?;
//!         deja::mark("request", &buf[..n]);
//!         let jitter = deja::rand::rng().random_range(0..5);
//!         sleep(Duration::from_millis(jitter)).await;
//!         conn.write_all(&buf[..n]).await
//!     });
//!     let mut client = TcpStream::connect(addr).await?;
//!     client.write_all(b"ping").await?;
//!     let mut reply = [0u8; 4];
//!     client.read_exact(&mut reply).await?;
//!     assert_eq!(&reply, b"ping");
//!     server.await.expect("server task")?;
//!     Ok::<(), std::io::Error>(())
//! })??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A replay can stop at the exact event with breakpoints ([`debug`]): from
//! the command line (`deja replay RUN --break 'mark=order-42,kind=send'`),
//! in gdb (`--gdb`), or in a test with a callback
//! ([`Builder::on_break`]).
//!
//! What replay guarantees, and what it does not, is in ARCHITECTURE.md:
//! the order of all intercepted operations across tasks and every value
//! they returned, and (recording on one thread, the default) how tasks
//! interleave; not files, threads the service starts, or sockets a
//! library opens itself (`runtime/service-clippy.toml` flags those).

mod backend;
mod intercept;
mod record;
mod replay;
mod runtime;
#[doc(hidden)]
pub mod __select {
    pub use crate::select::{poll_branch, Branch};
}
mod select;

pub mod sim;

pub mod collections;
pub mod debug;
pub mod flight;
pub mod net;
pub mod rand;
pub mod redact;
pub mod signal;
pub mod task;
pub mod time;

/// Async I/O traits and helpers: tokio's, re-exported.
pub mod io {
    pub use tokio::io::*;
}

pub use deja_macros::main;
pub use deja_recorder as recorder;
pub use replay::ReplayStats;
pub use runtime::{
    run_main, run_main_with, Builder, Error, MainResult, Mode, Runtime, EXIT_DIVERGENCE,
    STALL_WAIT_DEFAULT, TRACE_DIR_DEFAULT,
};
pub use select::SELECT_BRANCHES_MAX;
pub use task::{mark, mark_end, mark_scope, spawn, JoinHandle, MarkScope};

#[doc(hidden)]
pub use tokio as __tokio;
