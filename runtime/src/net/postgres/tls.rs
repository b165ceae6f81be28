//! tokio-postgres over TLS (features `postgres` and `rustls`): the
//! connector tokio-postgres's `connect_raw` takes, with rustls on a deja
//! [`TcpStream`], and channel binding for SCRAM-SHA-256-PLUS.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};
use tokio_postgres::{Client, Config, Connection};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use super::{connect_with, ConnectError};
use crate::net::TcpStream;

/// The connection half of [`connect_tls`]'s result: drive it with
/// `tokio::spawn`.
pub type PgTlsConnection = Connection<TcpStream, RustlsStream>;

/// [`connect`](super::connect) with TLS: as
/// `Config::connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))`
/// would, it asks each server for TLS as the config's `sslmode` says
/// (`prefer`, tokio-postgres's default, goes on without TLS when the
/// server has none; `require` fails), verifies the server's certificate
/// for the host's name (or its `hostaddr`) with `tls`, and logs in inside
/// TLS. With a server that offers SCRAM-SHA-256-PLUS (PostgreSQL with
/// TLS does), the login binds the channel (`tls-server-end-point`, from
/// the server's certificate), so `channel_binding=require` works.
///
/// The handshake replays like any rustls handshake over deja (see
/// [`tls`](crate::net::tls): `tls` should be built with
/// `deja::net::tls::provider()`), the login and queries like
/// [`connect`](super::connect)'s.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use tokio_rustls::rustls::{ClientConfig, RootCertStore};
///
/// # fn roots() -> RootCertStore { RootCertStore::empty() }
/// let mut runtime = deja::Builder::new().build()?;
/// runtime.block_on(async {
///     let config: tokio_postgres::Config =
///         "host=db.internal user=app password=secret dbname=app sslmode=require".parse()?;
///     let tls = ClientConfig::builder_with_provider(deja::net::tls::provider())
///         .with_safe_default_protocol_versions()?
///         .with_root_certificates(roots())
///         .with_no_client_auth();
///     // was `config.connect(MakeRustlsConnect::new(tls))`
///     let (client, connection) = deja::net::postgres::connect_tls(&config, Arc::new(tls)).await?;
///     tokio::spawn(connection);
///     let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?;
///     let ssl: bool = row.get(0);
///     assert!(ssl);
///     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// })??;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
pub async fn connect_tls(
    config: &Config,
    tls: Arc<ClientConfig>,
) -> Result<(Client, PgTlsConnection), ConnectError> {
    let connector = TlsConnector::from(tls);
    connect_with(config, |host| {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| ConnectError::ServerName(host.to_string()))?;
        Ok(RustlsConnect {
            connector: connector.clone(),
            name,
        })
    })
    .await
}

/// tokio-postgres's TLS connector for one host: rustls over a deja stream.
struct RustlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl TlsConnect<TcpStream> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream to PostgreSQL: rustls over a deja [`TcpStream`].
pub struct RustlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl fmt::Debug for RustlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (stream, session) = self.0.get_ref();
        f.debug_struct("RustlsStream")
            .field("stream", stream)
            .field("protocol_version", &session.protocol_version())
            .finish()
    }
}

impl TlsStream for RustlsStream {
    /// `tls-server-end-point` (RFC 5929): the server's certificate hashed
    /// with its signature's hash; none when that hash is not one of
    /// SHA-256, -384, -512 (MD5 and SHA-1 count as SHA-256), as for an
    /// Ed25519 or RSA-PSS certificate (PostgreSQL offers no binding for
    /// those either).
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| tls_server_end_point(leaf))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The `tls-server-end-point` channel binding of a DER certificate, or
/// `None` (see [`RustlsStream::channel_binding`]).
fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let hash = end_point_hash(signature_algorithm(cert)?)?;
    Some(ring::digest::digest(hash, cert).as_ref().to_vec())
}

const DER_SEQUENCE: u8 = 0x30;
const DER_OID: u8 = 0x06;

/// The DER element at the start of `der`: its tag, its contents and what
/// follows it; `None` when it does not fit (lengths up to 4 octets).
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (len, rest) = rest.split_at(octets);
        let len = len
            .iter()
            .fold(0usize, |len, &octet| (len << 8) | usize::from(octet));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The contents of the element at the start of `der` when its tag is `tag`,
/// and what follows it.
fn der_expect(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = der_element(der)?;
    (found == tag).then_some((contents, rest))
}

/// A certificate's `signatureAlgorithm` OID (its contents):
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
/// AlgorithmIdentifier, signature }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_expect(cert, DER_SEQUENCE)?;
    let (_tbs, rest) = der_expect(certificate, DER_SEQUENCE)?;
    let (algorithm, _) = der_expect(rest, DER_SEQUENCE)?;
    let (oid, _) = der_expect(algorithm, DER_OID)?;
    Some(oid)
}

/// RFC 5929, 4.1: the hash of the certificate's signature algorithm, with
/// MD5 and SHA-1 replaced by SHA-256.
fn end_point_hash(oid: &[u8]) -> Option<&'static ring::digest::Algorithm> {
    use ring::digest::{SHA256, SHA384, SHA512};
    // 1.2.840.113549.1.1.n: PKCS #1 RSA signatures.
    const RSA: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    // 1.2.840.10045.4: ECDSA signatures.
    const ECDSA: [u8; 6] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    if let Some(&[n]) = oid.strip_prefix(&RSA[..]) {
        return match n {
            // md5WithRSAEncryption, sha1WithRSAEncryption, sha256WithRSAEncryption
            4 | 5 | 11 => Some(&SHA256),
            12 => Some(&SHA384),
            13 => Some(&SHA512),
            _ => None,
        };
    }
    match oid.strip_prefix(&ECDSA[..])? {
        // ecdsa-with-SHA1, ecdsa-with-SHA256
        [0x01] | [0x03, 0x02] => Some(&SHA256),
        [0x03, 0x03] => Some(&SHA384),
        [0x03, 0x04] => Some(&SHA512),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn ecdsa_certificates_bind_with_their_signature_hash() {
        let p256 = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256).as_deref(),
            Some(ring::digest::digest(&ring::digest::SHA256, &p256).as_ref())
        );
        let p384 = certificate(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            tls_server_end_point(&p384).as_deref(),
            Some(ring::digest::digest(&ring::digest::SHA384, &p384).as_ref())
        );
    }

    #[test]
    fn ed25519_certificates_have_no_binding() {
        assert_eq!(
            tls_server_end_point(&certificate(&rcgen::PKCS_ED25519)),
            None
        );
    }

    #[test]
    fn rsa_oids_map_to_their_hash() {
        let oid = |n| [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, n];
        assert!(std::ptr::eq(
            end_point_hash(&oid(5)).unwrap(),
            &ring::digest::SHA256
        ));
        assert!(std::ptr::eq(
            end_point_hash(&oid(11)).unwrap(),
            &ring::digest::SHA256
        ));
        assert!(std::ptr::eq(
            end_point_hash(&oid(12)).unwrap(),
            &ring::digest::SHA384
        ));
        assert!(std::ptr::eq(
            end_point_hash(&oid(13)).unwrap(),
            &ring::digest::SHA512
        ));
        assert!(
            end_point_hash(&oid(10)).is_none(),
            "RSA-PSS: the hash is in its parameters"
        );
    }

    #[test]
    fn a_cut_or_garbled_certificate_has_no_binding_and_no_panic() {
        let cert = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        for end in 0..cert.len() {
            assert_eq!(tls_server_end_point(&cert[..end]), None, "cut at {end}");
        }
        for at in 0..cert.len() {
            let mut garbled = cert.clone();
            garbled[at] ^= 0xff;
            let _ = tls_server_end_point(&garbled);
        }
        assert_eq!(
            tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(tls_server_end_point(&[0x30, 0x80]), None);
    }
}
