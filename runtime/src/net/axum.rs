//! axum (feature `axum`): [`TcpListener`] is an [`axum::serve::Listener`],
//! so `axum::serve(listener, router)` runs on deja sockets.

use std::io;
use std::net::SocketAddr;

use super::{TcpListener, TcpStream};
use crate::time::{sleep, Duration};

/// How long to wait before accepting again after an accept error that is
/// not about one connection (out of file descriptors, say): axum's own
/// tokio listener waits as long.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// `axum::serve` on a deja listener: every accept, read and write goes
/// through deja, so it is recorded (and, once replay supports the
/// `tokio::spawn` that `axum::serve` makes per connection, replayed).
///
/// `accept` never fails, as the trait requires. Like axum's impl for
/// `tokio::net::TcpListener`, an error about one connection (refused,
/// aborted, reset) is skipped and the next connection accepted at once;
/// any other error is logged with `tracing` at `error` level and accepting
/// resumes after a pause of one second on deja's timer
/// ([`crate::time::sleep`], so a replay sees the same timer).
///
/// ```
/// use axum::{routing::get, Router};
/// use deja::net::TcpListener;
///
/// let mut runtime = deja::Builder::new().build()?;
/// runtime.block_on(async {
///     let app = Router::new().route("/", get(|| async { "hello" }));
///     let listener = TcpListener::bind("127.0.0.1:0").await?;
///     println!("listening on {}", listener.local_addr()?);
///     axum::serve(listener, app)
///         // A real service waits for `deja::signal::shutdown()` here.
///         .with_graceful_shutdown(async {})
///         .await
/// })??;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl ::axum::serve::Listener for TcpListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match TcpListener::accept(self).await {
                Ok(accepted) => return accepted,
                Err(err) => accept_error(err).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// After a failed accept: return at once for an error about one
/// connection, else log it and pause.
async fn accept_error(err: io::Error) {
    if is_connection_error(&err) {
        tracing::debug!("deja: accept error (skipped): {err}");
        return;
    }
    tracing::error!(
        "deja: accept error: {err}; accepting again in {:?}",
        ACCEPT_ERROR_PAUSE
    );
    sleep(ACCEPT_ERROR_PAUSE).await;
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Listener` bounds hold (`Send + 'static` listener; `Unpin +
    /// Send + 'static` stream), and `accept`'s future is `Send`.
    #[test]
    fn listener_bounds() {
        fn listener<L: ::axum::serve::Listener<Io = TcpStream, Addr = SocketAddr>>() {}
        fn io<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>() {}
        listener::<TcpListener>();
        io::<TcpStream>();
    }

    #[test]
    fn connection_errors_retry_at_once() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
        ] {
            assert!(is_connection_error(&io::Error::from(kind)));
        }
        assert!(!is_connection_error(&io::Error::other("EMFILE")));
    }
}
