//! redis (feature `redis`): [`connect`], a drop-in for
//! `redis::Client::get_multiplexed_async_connection` that runs the
//! crate's `MultiplexedConnection` over a deja [`TcpStream`].
//!
//! Every reply is a read of that stream, and the connection's response
//! timeout is a tokio timer, which deja runs on the recorded clock: a
//! recording replays with the server gone, timeouts included.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, RedisResult,
};

use super::TcpStream;

/// How long [`connect`] waits for the connection and its handshake:
/// redis's own default (`AsyncConnectionConfig`'s connection timeout).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// The future that drives a [`MultiplexedConnection`]: run it with
/// `tokio::spawn`. It ends when the last clone of the connection is
/// dropped (after closing the socket), or when the server goes away.
pub type Driver = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Connect to `info` (`"redis://127.0.0.1:6379/"`, a `ConnectionInfo`, ...)
/// over a deja [`TcpStream`] with redis's default configuration (a 500 ms
/// response timeout, a 1 s connection timeout), as
/// `MultiplexedConnection::new` does over a stream: the connection, whose
/// clones share it, and the [`Driver`] to spawn. (redis's
/// `Client::get_multiplexed_async_connection` spawns the driver itself;
/// here the service does, and can await it at shutdown, so that the
/// socket closes inside a task.)
///
/// ```no_run
/// use redis::AsyncCommands;
///
/// let mut runtime = deja::Builder::new().build()?;
/// runtime.block_on(async {
///     // was: redis::Client::open(url)?.get_multiplexed_async_connection().await?
///     let (mut con, driver) = deja::net::redis::connect("redis://127.0.0.1:6379/").await?;
///     let driver = tokio::spawn(driver);
///     let () = con.set("greeting", "hello").await?;
///     let greeting: String = con.get("greeting").await?;
///     println!("{greeting}");
///     drop(con);
///     driver.await.expect("the driver task");
///     Ok::<(), redis::RedisError>(())
/// })??;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
pub async fn connect(
    info: impl IntoConnectionInfo,
) -> RedisResult<(MultiplexedConnection, Driver)> {
    connect_with_config(info, AsyncConnectionConfig::new(), Some(CONNECTION_TIMEOUT)).await
}

/// [`connect`] with a configuration of your own (response timeout, push
/// sender, pipeline buffer, ...), as
/// `Client::get_multiplexed_async_connection_with_config`. The config's
/// connection timeout cannot be read back from it, so it is given here
/// again: `connection_timeout` bounds the TCP connect and the handshake
/// (`None`: no bound).
pub async fn connect_with_config(
    info: impl IntoConnectionInfo,
    config: AsyncConnectionConfig,
    connection_timeout: Option<Duration>,
) -> RedisResult<(MultiplexedConnection, Driver)> {
    let info = info.into_connection_info()?;
    let addr = match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "deja connects to redis over plain TCP only",
                format!("{other:?}"),
            )))
        }
    };
    let setup = async {
        let stream = TcpStream::connect(addr.as_str()).await?;
        MultiplexedConnection::new_with_config(info.redis_settings(), stream, config).await
    };
    let (connection, driver) = match connection_timeout {
        None => setup.await?,
        Some(limit) => tokio::time::timeout(limit, setup)
            .await
            .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??,
    };
    Ok((connection, Box::pin(driver)))
}
