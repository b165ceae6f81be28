//! tokio-postgres (feature `postgres`): [`connect`], a drop-in for
//! `tokio_postgres::Config::connect` that opens a deja [`TcpStream`] and
//! logs in over it with [`Config::connect_raw`].
//!
//! Everything the client receives (the server's SCRAM-SHA-256 challenge,
//! rows, notices, errors) is a read of that stream, and its SCRAM nonce
//! comes from `rand::rng()`, so a recording replays with the server gone.
//!
//! With the `rustls` feature too, `connect_tls` does the same over TLS.

#[cfg(feature = "rustls")]
mod tls;
#[cfg(feature = "rustls")]
pub use tls::{connect_tls, PgTlsConnection, RustlsStream};

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::tls::{NoTlsStream, TlsConnect};
use tokio_postgres::{Client, Config, Connection, NoTls};

use super::TcpStream;

/// The connection half of [`connect`]'s result: drive it with
/// `tokio::spawn`, as with tokio-postgres's own `connect`.
pub type PgConnection = Connection<TcpStream, NoTlsStream>;

/// Connect to the first host of `config` that answers, over a deja
/// [`TcpStream`], and log in (any authentication tokio-postgres supports
/// without TLS: SCRAM-SHA-256, PostgreSQL's default, MD5, cleartext,
/// trust). As `Config::connect(NoTls)` does, it tries the hosts in order,
/// each with its port (one port for all, or 5432), uses `hostaddr` when
/// set, and bounds each attempt by the connect timeout, if any (on the
/// recorded clock).
///
/// Not done here, as `Config::connect` would: unix-socket hosts (an error:
/// deja records TCP only), `target_session_attrs=read-write` and
/// `load_balance_hosts=random` (ignored), TCP keepalives (off).
///
/// ```no_run
/// let mut runtime = deja::Builder::new().build()?;
/// runtime.block_on(async {
///     let config: tokio_postgres::Config =
///         "host=127.0.0.1 port=5432 user=app password=secret dbname=app".parse()?;
///     let (client, connection) = deja::net::postgres::connect(&config).await?; // was config.connect(NoTls)
///     tokio::spawn(connection);
///     let row = client.query_one("SELECT $1::TEXT", &[&"hello"]).await?;
///     let hello: &str = row.get(0);
///     println!("{hello}");
///     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// })??;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
pub async fn connect(config: &Config) -> Result<(Client, PgConnection), ConnectError> {
    connect_with(config, |_host| Ok(NoTls)).await
}

/// [`connect`], with `tls(host)` for each host's TLS connector (the host's
/// name, or its `hostaddr`, for the server's certificate).
async fn connect_with<T>(
    config: &Config,
    mut tls: impl FnMut(&str) -> Result<T, ConnectError>,
) -> Result<(Client, Connection<TcpStream, T::Stream>), ConnectError>
where
    T: TlsConnect<TcpStream>,
{
    let hosts = config.get_hosts();
    let hostaddrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let attempts = hosts.len().max(hostaddrs.len());
    if attempts == 0 {
        return Err(ConnectError::Config("no host to connect to".into()));
    }
    let mut last = None;
    for index in 0..attempts {
        let port = match ports {
            [] => 5432,
            [port] => *port,
            ports => *ports.get(index).ok_or_else(|| {
                ConnectError::Config(format!(
                    "{} ports for {attempts} hosts: give one, or one per host",
                    ports.len()
                ))
            })?,
        };
        let (addr, host) = match (hostaddrs.get(index), hosts.get(index)) {
            (Some(ip), Some(Host::Tcp(name))) => (
                std::net::SocketAddr::new(*ip, port).to_string(),
                name.clone(),
            ),
            (Some(ip), _) => (
                std::net::SocketAddr::new(*ip, port).to_string(),
                ip.to_string(),
            ),
            (None, Some(Host::Tcp(name))) => (format!("{name}:{port}"), name.clone()),
            (None, Some(other)) => {
                last = Some(ConnectError::Config(format!(
                    "{other:?}: deja connects over TCP only"
                )));
                continue;
            }
            (None, None) => unreachable!("index < max(hosts, hostaddrs)"),
        };
        let tls = match tls(&host) {
            Ok(tls) => tls,
            Err(err) => {
                last = Some(err);
                continue;
            }
        };
        match attempt(config, &addr, config.get_connect_timeout().copied(), tls).await {
            Ok(connected) => return Ok(connected),
            Err(err) => last = Some(err),
        }
    }
    Err(last.expect("at least one attempt"))
}

async fn attempt<T>(
    config: &Config,
    addr: &str,
    timeout: Option<Duration>,
    tls: T,
) -> Result<(Client, Connection<TcpStream, T::Stream>), ConnectError>
where
    T: TlsConnect<TcpStream>,
{
    let login = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| ConnectError::Io(addr.to_string(), err))?;
        config
            .connect_raw(stream, tls)
            .await
            .map_err(ConnectError::Postgres)
    };
    match timeout {
        None => login.await,
        Some(limit) => tokio::time::timeout(limit, login).await.map_err(|_| {
            ConnectError::Io(
                addr.to_string(),
                io::Error::new(io::ErrorKind::TimedOut, "connect timeout"),
            )
        })?,
    }
}

/// Why [`connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The configuration names no usable host (or mismatched ports).
    Config(String),
    /// The TCP connection to the address failed.
    Io(String, io::Error),
    /// The host's name is no name a TLS certificate can be for
    /// (`connect_tls`).
    ServerName(String),
    /// The server or the login failed (a wrong password, an unknown
    /// database, a protocol error).
    Postgres(tokio_postgres::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Config(why) => write!(f, "postgres config: {why}"),
            ConnectError::Io(addr, err) => write!(f, "connecting to postgres at {addr}: {err}"),
            ConnectError::ServerName(host) => {
                write!(f, "postgres host {host:?} is not a TLS server name")
            }
            ConnectError::Postgres(err) => write!(f, "postgres: {err}"),
        }
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ConnectError::Config(_) | ConnectError::ServerName(_) => None,
            ConnectError::Io(_, err) => Some(err),
            ConnectError::Postgres(err) => Some(err),
        }
    }
}
