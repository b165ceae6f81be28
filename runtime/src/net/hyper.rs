//! hyper (feature `hyper`): [`Connector`], a hyper-util connector that
//! opens deja [`TcpStream`]s, for `hyper_util::client::legacy::Client`.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::{Scheme, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;

use super::TcpStream;

/// The future of [`Connector`]'s `call`: the connection, or why there is
/// none.
pub type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

/// Connects hyper-util's pooled client ([`Client`]) over deja: a
/// drop-in for hyper-util's `HttpConnector`. Every connection is a
/// [`TcpStream::connect`], so its connect, reads and writes are recorded
/// (and replayed).
///
/// It takes `http://host[:port]` URIs (port 80 by default) and connects to
/// `host:port` as written: the host name is resolved by the system, and
/// the log keeps the name. It speaks no TLS itself: an `https` URI is an
/// error that says so, as is a URI without a scheme or host, unless
/// [`enforce_http(false)`](Connector::enforce_http) lets a TLS connector
/// wrapped around it (hyper-rustls's `HttpsConnector`) have the TCP
/// stream for an `https` URI (port 443 by default), as with
/// `HttpConnector`.
///
/// Like `HttpConnector`, it leaves `TCP_NODELAY` off unless
/// [`set_nodelay`](Connector::set_nodelay) turns it on.
///
/// ```no_run
/// use http_body_util::{BodyExt, Empty};
/// use hyper::body::Bytes;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
///
/// let mut runtime = deja::Builder::new().build()?;
/// runtime.block_on(async {
///     let client: Client<_, Empty<Bytes>> =
///         Client::builder(TokioExecutor::new()).build(deja::net::Connector::new());
///     let response = client.get("http://127.0.0.1:3000/".parse()?).await?;
///     let body = response.into_body().collect().await?.to_bytes();
///     println!("{}", String::from_utf8_lossy(&body));
///     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// })??;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
///
/// For HTTPS, hyper-rustls's connector wraps this one, with
/// [`enforce_http(false)`](Connector::enforce_http): see `deja::net::tls`
/// (feature `rustls`).
///
/// [`Client`]: hyper_util::client::legacy::Client
#[derive(Clone)]
pub struct Connector {
    nodelay: bool,
    enforce_http: bool,
}

impl Default for Connector {
    fn default() -> Connector {
        Connector {
            nodelay: false,
            enforce_http: true,
        }
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("nodelay", &self.nodelay)
            .field("enforce_http", &self.enforce_http)
            .finish()
    }
}

impl Connector {
    /// A connector for `http://` URIs, with `TCP_NODELAY` off.
    pub fn new() -> Connector {
        Connector::default()
    }

    /// Whether only `http://` URIs are taken (on by default, as with
    /// `HttpConnector::enforce_http`). Off, any scheme is taken (the port
    /// is the URI's, else 443 for `https`, else 80) and the connection is
    /// plain TCP: for a TLS connector that wraps this one, such as
    /// hyper-rustls's `HttpsConnector`.
    pub fn enforce_http(&mut self, is_enforced: bool) {
        self.enforce_http = is_enforced;
    }

    /// Set `TCP_NODELAY` to `nodelay` on every new connection (off by
    /// default, as with `HttpConnector`). A failure to set it is logged and
    /// does not fail the connection.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.nodelay = nodelay;
    }

    async fn connect(self, uri: Uri) -> io::Result<TokioIo<TcpStream>> {
        let addr = host_port(&uri, self.enforce_http)?;
        let stream = TcpStream::connect(addr.as_str()).await?;
        if let Err(err) = stream.set_nodelay(self.nodelay) {
            tracing::warn!("deja: set_nodelay on a connection to {addr}: {err}");
        }
        Ok(TokioIo::new(stream))
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        Box::pin(self.clone().connect(uri))
    }
}

/// hyper-util's metadata for a deja connection: nothing beyond the
/// defaults (no ALPN, no proxy).
impl Connection for TcpStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// `host:port` to connect to for `uri`: the host as written (an IPv6
/// literal keeps its brackets), the port from the URI or the scheme's.
/// With `enforce_http`, only `http` URIs.
fn host_port(uri: &Uri, enforce_http: bool) -> io::Result<String> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{why}: {uri}"));
    let default_port = match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP => 80,
        Some(scheme) if *scheme == Scheme::HTTPS && enforce_http => {
            return Err(invalid(
                "deja::net::Connector speaks no TLS: for https, wrap it in a TLS connector \
                 (hyper-rustls's HttpsConnector) and turn enforce_http off",
            ))
        }
        Some(scheme) if *scheme == Scheme::HTTPS => 443,
        Some(_) if enforce_http => return Err(invalid("deja::net::Connector: scheme is not http")),
        Some(_) => 80,
        None => return Err(invalid("deja::net::Connector: URI has no scheme")),
    };
    let host = match uri.host() {
        Some(host) if !host.is_empty() => host,
        _ => return Err(invalid("deja::net::Connector: URI has no host")),
    };
    let port = uri.port_u16().unwrap_or(default_port);
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(uri: &str) -> io::Result<String> {
        host_port(&uri.parse().expect("a valid URI"), true)
    }

    #[test]
    fn host_and_port_from_the_uri() {
        assert_eq!(addr("http://example.com/x").unwrap(), "example.com:80");
        assert_eq!(addr("http://example.com:8080").unwrap(), "example.com:8080");
        assert_eq!(addr("http://127.0.0.1:3000/a?b").unwrap(), "127.0.0.1:3000");
        assert_eq!(addr("http://[::1]:3000/").unwrap(), "[::1]:3000");
        assert_eq!(addr("http://[::1]/").unwrap(), "[::1]:80");
    }

    #[test]
    fn https_is_refused_while_http_is_enforced() {
        let err = addr("https://example.com/").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(
            text.contains("https") && text.contains("TLS") && text.contains("enforce_http"),
            "{text}"
        );
    }

    #[test]
    fn without_enforce_http_any_scheme_is_plain_tcp() {
        let addr = |uri: &str| host_port(&uri.parse().expect("a valid URI"), false);
        assert_eq!(addr("https://example.com/").unwrap(), "example.com:443");
        assert_eq!(addr("https://127.0.0.1:8443/").unwrap(), "127.0.0.1:8443");
        assert_eq!(addr("http://example.com/").unwrap(), "example.com:80");
        assert_eq!(addr("ws://example.com/").unwrap(), "example.com:80");
        assert!(addr("/just/a/path").is_err());
    }

    #[test]
    fn no_scheme_or_other_scheme_is_an_error() {
        assert_eq!(
            addr("example.com:80").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(addr("/just/a/path").is_err());
        assert!(addr("ftp://example.com/").is_err());
    }

    #[test]
    fn connector_is_clone_send_sync_debug() {
        fn check<T: Clone + Send + Sync + fmt::Debug + 'static>() {}
        check::<Connector>();
        assert_eq!(
            format!("{:?}", Connector::new()),
            "Connector { nodelay: false, enforce_http: true }"
        );
    }
}
