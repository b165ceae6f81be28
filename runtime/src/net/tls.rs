//! TLS with rustls (feature `rustls`): tokio-rustls over deja streams.
//!
//! A deja [`TcpStream`](super::TcpStream) is tokio's `AsyncRead` and
//! `AsyncWrite`, so tokio-rustls's `TlsAcceptor::accept` and
//! `TlsConnector::connect` take it as they take a tokio stream: the lines
//! that change are the ones that make the socket, and the configurations
//! take deja's [`provider`] (ring). Everything TLS sends is then a deja
//! write (its length and hash checked in replay), everything it receives
//! a deja read (handed back from the log in replay), and the handshake's
//! other inputs are intercepted too:
//!
//! - **Randomness.** ring draws every random byte of a connection (the
//!   ClientHello and ServerHello randoms, key shares, ECDSA nonces, TLS 1.3
//!   session tickets and their `ticket_age_add`) from getrandom 0.2, which
//!   on Linux makes the `getrandom` system call itself, through the C
//!   library's `syscall`. deja defines `syscall` in the executable for that
//!   number (x86-64 and AArch64; ARCHITECTURE.md, "Library code"), so
//!   inside the service's tasks each draw is logged in record and handed
//!   back in replay: the same keys, so the same bytes on the wire.
//! - **Time.** rustls reads `SystemTime::now()` to check certificates'
//!   validity and to date session tickets (ticket ages are whole seconds):
//!   library clock readings, logged and handed back.
//!
//! In a simulation (`deja::sim`) both come from the seed, so TLS between
//! simulated hosts is deterministic too.
//!
//! What must be the same in replay, as for any input that is not a socket:
//! the certificates, keys and roots (a file the service reads is not in
//! the log; replay with the same files), and the configurations. A
//! different configuration (another ALPN list, another server name, a TLS
//! version turned off) changes what the handshake writes, and the replay
//! stops with a divergence at that write.
//!
//! Limits:
//!
//! - **A recording can decrypt its traffic.** It holds the ciphertext
//!   received and every random byte the keys came from, which is what
//!   replay needs to run the service to the same plaintext. Keep such logs
//!   as secret as the plaintext (they are written 0600, in 0700
//!   directories), and know that `Builder::redact` sees the ciphertext on
//!   the socket, not the plaintext inside it.
//! - **ring only.** aws-lc-rs (rustls's default provider, which deja does
//!   not build: a large C library) keeps its own random generator in C,
//!   which deja has not examined; use [`provider`], or turn off
//!   tokio-rustls's default features and turn on `ring`.
//! - **Session resumption** replays when a ticket's age reads alike: it is
//!   the difference of two clock readings in whole seconds, and replay
//!   matches library readings by order within a task, so a reading handed
//!   back microseconds off (ARCHITECTURE.md, "Library readings are not in
//!   program order") could fall on the other side of a second and diverge
//!   at the resuming ClientHello's write.
//! - Other architectures than x86-64 and AArch64 (Linux): ring's draws are
//!   not intercepted, and a replay diverges at the first ClientHello.
//!
//! Both ends on deja, in one service:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use deja::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio_rustls::rustls::pki_types::pem::PemObject;
//! use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
//! use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
//! use tokio_rustls::{TlsAcceptor, TlsConnector};
//!
//! let mut runtime = deja::Builder::new().build()?;
//! runtime.block_on(async {
//!     let certs = CertificateDer::pem_file_iter("cert.pem")?.collect::<Result<Vec<_>, _>>()?;
//!     let key = PrivateKeyDer::from_pem_file("key.pem")?;
//!
//!     // The server: was `ServerConfig::builder()` and a tokio listener.
//!     let config = ServerConfig::builder_with_provider(deja::net::tls::provider())
//!         .with_safe_default_protocol_versions()?
//!         .with_no_client_auth()
//!         .with_single_cert(certs.clone(), key)?;
//!     let acceptor = TlsAcceptor::from(Arc::new(config));
//!     let listener = deja::net::TcpListener::bind("127.0.0.1:8443").await?;
//!     let server = deja::spawn(async move {
//!         let (stream, _peer) = listener.accept().await?;
//!         let mut tls = acceptor.accept(stream).await?; // unchanged
//!         let mut request = [0u8; 4];
//!         tls.read_exact(&mut request).await?;
//!         tls.write_all(b"pong").await?;
//!         tls.shutdown().await
//!     });
//!
//!     // The client: was `ClientConfig::builder()` and a tokio stream.
//!     let mut roots = RootCertStore::empty();
//!     roots.add(certs[0].clone())?;
//!     let config = ClientConfig::builder_with_provider(deja::net::tls::provider())
//!         .with_safe_default_protocol_versions()?
//!         .with_root_certificates(roots)
//!         .with_no_client_auth();
//!     let connector = TlsConnector::from(Arc::new(config));
//!     let stream = deja::net::TcpStream::connect("127.0.0.1:8443").await?;
//!     let name = ServerName::try_from("localhost")?;
//!     let mut tls = connector.connect(name, stream).await?; // unchanged
//!     tls.write_all(b"ping").await?;
//!     let mut answer = Vec::new();
//!     tls.read_to_end(&mut answer).await?;
//!     assert_eq!(answer, b"pong");
//!     server.await??;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//!
//! HTTPS with hyper-util's client: hyper-rustls's `HttpsConnector`
//! (`default-features = false, features = ["ring", "http1", "tls12"]`)
//! around a `deja::net::Connector` (feature `hyper`) that lets it have
//! `https` URIs (`enforce_http(false)`), as with hyper-util's
//! `HttpConnector`:
//!
//! ```no_run
//! # #[cfg(feature = "hyper")]
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use http_body_util::Empty;
//! use hyper::body::Bytes;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tokio_rustls::rustls::{ClientConfig, RootCertStore};
//!
//! # fn roots() -> RootCertStore { RootCertStore::empty() }
//! let mut runtime = deja::Builder::new().build()?;
//! runtime.block_on(async {
//!     let tls = ClientConfig::builder_with_provider(deja::net::tls::provider())
//!         .with_safe_default_protocol_versions()?
//!         .with_root_certificates(roots())
//!         .with_no_client_auth();
//!     let mut http = deja::net::Connector::new();
//!     http.enforce_http(false); // the TCP stream of an https URI, for hyper-rustls
//!     let https = hyper_rustls::HttpsConnectorBuilder::new()
//!         .with_tls_config(tls)
//!         .https_or_http()
//!         .enable_http1()
//!         .wrap_connector(http); // was `.build()`, with hyper-util's HttpConnector
//!     let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
//!     let response = client.get("https://api.internal/health".parse()?).await?;
//!     println!("{}", response.status());
//!     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//! })??;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "hyper"))]
//! # fn main() {}
//! ```

use std::sync::Arc;

use tokio_rustls::rustls::crypto::CryptoProvider;

/// rustls's ring provider, whose every random byte deja records and
/// replays (see [the module](self)): for
/// `ServerConfig::builder_with_provider` and
/// `ClientConfig::builder_with_provider`.
///
/// The same as `Arc::new(rustls::crypto::ring::default_provider())`,
/// which rustls 0.23.48 deprecated because ring has no post-quantum key
/// exchange (aws-lc-rs offers X25519MLKEM768): deja takes that trade
/// until it has examined aws-lc-rs's generator (see [the module](self)),
/// and the service's own code does not get the warning. Naming the
/// provider, rather than `ServerConfig::builder()` with the process's
/// default, also works when another crate in the build turns on rustls's
/// aws-lc-rs provider (then rustls has no default of its own, and
/// `builder()` panics).
///
/// ```
/// let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(deja::net::tls::provider())
///     .with_safe_default_protocol_versions()
///     .expect("ring supports TLS 1.2 and 1.3")
///     .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
///     .with_no_client_auth();
/// # drop(config);
/// ```
// Deprecated for having no post-quantum key exchange: see above.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}
