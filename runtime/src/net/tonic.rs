//! tonic (feature `tonic`): gRPC on deja sockets.
//!
//! - Server: [`TcpListenerStream`] turns a deja [`TcpListener`] into the
//!   stream of connections that tonic's `serve_with_incoming` takes, and
//!   [`TcpStream`] implements tonic's [`Connected`] with tonic's own
//!   [`TcpConnectInfo`], so `Request::remote_addr()` and
//!   `Request::local_addr()` work in handlers (in replay, they are the
//!   recorded addresses).
//! - Client: `Endpoint::connect_with_connector(deja::net::Connector::new())`
//!   (the `hyper` feature's [`Connector`](super::Connector), which this
//!   feature turns on) gives a tonic `Channel` over deja streams.
//!
//! [`TcpListenerStream`] shows both.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::{TcpListener, TcpStream};

type Accepting = Pin<Box<dyn Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send>>;

/// The connections a deja [`TcpListener`] accepts, as a [`Stream`] (like
/// tokio-stream's `TcpListenerStream`): for tonic's
/// `Server::serve_with_incoming` and `Router::serve_with_incoming`.
///
/// Every accept is the listener's [`accept`](TcpListener::accept), so it is
/// recorded (and replayed). An accept error is an item of the stream, as
/// with tokio-stream's: tonic skips it (logging it at `trace` level) and
/// polls again at once, which accepts again. The stream never ends by
/// itself; tonic drops it at shutdown.
///
/// An accept in progress is kept between polls, so no connection is lost
/// when the stream is polled again.
///
/// ```no_run
/// use deja::net::{Connector, TcpListener, TcpListenerStream};
/// use tonic::transport::{Endpoint, Server};
///
/// # fn service() -> tonic::service::Routes { tonic::service::Routes::default() }
/// let mut runtime = deja::Builder::new().build()?;
/// runtime.block_on(async {
///     // The server: tonic services (here `service()`; with tonic-build,
///     // `.add_service(GreeterServer::new(greeter))`) on a deja listener.
///     let listener = TcpListener::bind("127.0.0.1:50051").await?;
///     let server = deja::spawn(
///         Server::builder()
///             .add_routes(service())
///             .serve_with_incoming(TcpListenerStream::new(listener)),
///     );
///
///     // A client: a channel over deja streams, for any generated client
///     // (`GreeterClient::new(channel)`).
///     let channel = Endpoint::from_static("http://127.0.0.1:50051")
///         .connect_with_connector(Connector::new())
///         .await?;
///     # drop(channel);
///     server.await??;
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })??;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TcpListenerStream {
    listener: Arc<TcpListener>,
    accepting: Option<Accepting>,
}

impl fmt::Debug for TcpListenerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListenerStream")
            .field("listener", &self.listener)
            .field("accepting", &self.accepting.is_some())
            .finish()
    }
}

impl TcpListenerStream {
    /// The connections `listener` accepts.
    pub fn new(listener: TcpListener) -> TcpListenerStream {
        TcpListenerStream {
            listener: Arc::new(listener),
            accepting: None,
        }
    }

    /// The listener.
    pub fn get_ref(&self) -> &TcpListener {
        &self.listener
    }
}

impl Stream for TcpListenerStream {
    type Item = io::Result<TcpStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let accepting = this.accepting.get_or_insert_with(|| {
            let listener = Arc::clone(&this.listener);
            Box::pin(async move { listener.accept().await })
        });
        let accepted = std::task::ready!(accepting.as_mut().poll(cx));
        this.accepting = None;
        Poll::Ready(Some(accepted.map(|(stream, _peer)| stream)))
    }
}

/// tonic's connection info for a deja stream: its local and peer
/// addresses (the recorded ones, in replay), as tonic gives for
/// `tokio::net::TcpStream`.
impl Connected for TcpStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local_addr().ok(),
            remote_addr: self.peer_addr().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serve_with_incoming` asks of the stream and its items, and
    /// what `connect_with_connector` asks of the connector.
    #[test]
    fn tonic_bounds() {
        fn incoming<S: Stream<Item = io::Result<IO>> + Send + 'static, IO>() {}
        fn io<T>()
        where
            T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
        {
        }
        fn connector<C>()
        where
            C: tower_service::Service<http::Uri> + Send + 'static,
            C::Response: hyper::rt::Read + hyper::rt::Write + Send + Unpin,
            C::Future: Send,
            Box<dyn std::error::Error + Send + Sync>: From<C::Error>,
        {
        }
        incoming::<TcpListenerStream, TcpStream>();
        io::<TcpStream>();
        connector::<super::super::Connector>();
    }
}
