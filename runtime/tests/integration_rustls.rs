#![cfg(feature = "rustls")]
//! TLS with rustls, unchanged, over deja streams: tokio-rustls's
//! `TlsAcceptor` on a deja listener and `TlsConnector` over a deja
//! `TcpStream`, with ring (`deja::net::tls::provider()`), certificates made
//! by rcgen at test time.
//!
//! The client opens three connections and makes several requests on each:
//! a full TLS 1.3 handshake, one that resumes it with the ticket the first
//! got, and a TLS 1.2 one. Every request carries a nonce and every answer
//! a token, both drawn from ring's generator. The server is in the
//! recorded service too (with a certificate made beforehand or by the
//! service itself, and with one client or four at once), or outside it (a
//! tokio-rustls server on a plain tokio runtime on a thread of its own,
//! which deja does not record and replay does not start), or both ends
//! are simulated hosts (a seed must run alike twice). A recording must replay 10 times to the
//! recorded answers (nonces, tokens, versions, resumption) and one digest;
//! a client that sends another request, or offers ALPN, must diverge at
//! the write that differs.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deja::net::{TcpListener, TcpStream};
use deja::recorder::{EventKind, RunReader};
use deja::Error;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

mod common;
use common::{record_with, replay_with};

/// The service name the recordings are made under.
const SERVICE: &str = "rustls-echo";
/// Connections the client opens: a full TLS 1.3 handshake, a resumed one,
/// a TLS 1.2 one.
const CONNECTIONS: usize = 3;
/// Requests on each connection.
const REQUESTS: usize = 4;
/// Replays of each recording.
const REPLAYS: usize = 10;
/// Clients at once against the in-service server, in the concurrent case.
const CONCURRENT_CLIENTS: usize = 4;
/// Any single step longer than this is a hang, not slowness.
const STEP: Duration = Duration::from_secs(10);
/// The name the server's certificate is for.
const SERVER_NAME: &str = "localhost";

/// A server certificate, its key, and the root that issued it.
struct Certs {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    root: CertificateDer<'static>,
}

/// A test CA and a certificate for `localhost` and 127.0.0.1 it signed (ECDSA P-256,
/// ring's key generation: entropy, recorded when made inside the service).
fn make_certs() -> Certs {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "deja test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let leaf = CertificateParams::new(vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    Certs {
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        root: ca.der().clone(),
    }
}

fn server_config(certs: &Certs) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(deja::net::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(certs.chain.clone(), certs.key.clone_key())
        .expect("the server's certificate and key");
    Arc::new(config)
}

/// The client's configuration, TLS 1.3 and 1.2 or 1.2 only, offering
/// `alpn`.
fn client_config(certs: &Certs, tls12_only: bool, alpn: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(certs.root.clone()).expect("the test root");
    let builder = ClientConfig::builder_with_provider(deja::net::tls::provider());
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut config = builder
        .expect("ring supports the versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"deja/1".to_vec()];
    }
    Arc::new(config)
}

/// `len` bytes from ring's generator (rustls's own `SecureRandom`), as hex.
fn ring_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    deja::net::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .expect("ring's generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server's side of one connection: answer every line with the line
/// in capitals and a token from ring, until the client closes.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(tls: S) -> io::Result<()> {
    let mut tls = BufReader::new(tls);
    for _ in 0..REQUESTS + 1 {
        let mut line = String::new();
        if tls.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let answer = format!("{} {}\n", line.trim().to_uppercase(), ring_hex(8));
        tls.get_mut().write_all(answer.as_bytes()).await?;
    }
    Err(io::Error::other("more requests than the client makes"))
}

async fn timed<T>(
    what: &str,
    future: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(STEP, future).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} took over {STEP:?}"),
        )
    })?
}

/// How the client differs from the recorded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// It does not.
    None,
    /// Its first request says something else.
    Request,
    /// It offers ALPN `deja/1` (a different ClientHello).
    Alpn,
}

/// Where the TLS server is.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// In the service, on a deja listener; its certificate made beforehand.
    InService,
    /// In the service, which makes its certificate itself at start.
    InServiceOwnCert,
    /// In the service, with `CONCURRENT_CLIENTS` clients at once, each a
    /// `tokio::spawn`ed task.
    InServiceConcurrent,
    /// Outside the service, at this address.
    Outside(SocketAddr),
}

impl Peer {
    fn clients(self) -> usize {
        match self {
            Peer::InServiceConcurrent => CONCURRENT_CLIENTS,
            _ => 1,
        }
    }
}

/// What a run saw.
#[derive(Default)]
struct Seen {
    answers: Mutex<Vec<String>>,
    /// Client handshakes completed (kept when a replay stops early).
    handshakes: AtomicUsize,
}

/// A client: `CONNECTIONS` connections to `addr`, `REQUESTS` each; what
/// it saw.
async fn client(
    addr: String,
    certs: Arc<Certs>,
    change: Change,
    seen: Arc<Seen>,
) -> io::Result<Vec<String>> {
    let alpn = change == Change::Alpn;
    let tls13 = TlsConnector::from(client_config(&certs, false, alpn));
    let tls12 = TlsConnector::from(client_config(&certs, true, alpn));
    let mut answers = Vec::new();
    for c in 0..CONNECTIONS {
        let connector = if c == CONNECTIONS - 1 { &tls12 } else { &tls13 };
        let stream = timed("connect", TcpStream::connect(&addr)).await?;
        let name = ServerName::try_from(SERVER_NAME).expect("a DNS name");
        let tls = timed("handshake", connector.connect(name, stream)).await?;
        seen.handshakes.fetch_add(1, Ordering::SeqCst);
        let (_, session) = tls.get_ref();
        let handshake = format!(
            "connection {c}: {:?} {:?}",
            session.protocol_version(),
            session.handshake_kind()
        );
        answers.push(handshake);
        let mut tls = BufReader::new(tls);
        for r in 0..REQUESTS {
            let word = if change == Change::Request && c == 0 && r == 0 {
                "other"
            } else {
                "request"
            };
            let request = format!("{word} c{c} r{r} {}\n", ring_hex(8));
            timed("request", tls.get_mut().write_all(request.as_bytes())).await?;
            let mut answer = String::new();
            if timed("answer", tls.read_line(&mut answer)).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            answers.push(format!("{} -> {}", request.trim(), answer.trim()));
        }
        timed("close", tls.get_mut().shutdown()).await?;
    }
    Ok(answers)
}

/// The recorded service: the client, and in-service peers' server (an
/// accept loop spawned with `tokio::spawn`, a task per connection, as
/// servers are written).
async fn service(
    peer: Peer,
    certs: Option<Arc<Certs>>,
    change: Change,
    seen: Arc<Seen>,
) -> io::Result<()> {
    let certs = match certs {
        Some(certs) => certs,
        None => Arc::new(make_certs()),
    };
    let (addr, server) = match peer {
        Peer::Outside(addr) => (addr, None),
        Peer::InService | Peer::InServiceOwnCert | Peer::InServiceConcurrent => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let acceptor = TlsAcceptor::from(server_config(&certs));
            let server = tokio::spawn(async move {
                let mut connections = Vec::new();
                for _ in 0..CONNECTIONS * peer.clients() {
                    let (stream, _peer) = timed("accept", listener.accept()).await?;
                    let acceptor = acceptor.clone();
                    connections.push(tokio::spawn(async move {
                        let tls = timed("server handshake", acceptor.accept(stream)).await?;
                        echo(tls).await
                    }));
                }
                for connection in connections {
                    connection.await.map_err(io::Error::other)??;
                }
                Ok::<(), io::Error>(())
            });
            (addr, Some(server))
        }
    };
    // The change is the first client's.
    let clients: Vec<_> = (0..peer.clients())
        .map(|i| {
            let change = if i == 0 { change } else { Change::None };
            let addr = addr.to_string();
            tokio::spawn(client(addr, Arc::clone(&certs), change, Arc::clone(&seen)))
        })
        .collect();
    for client in clients {
        let answers = client.await.map_err(io::Error::other)??;
        seen.answers.lock().unwrap().extend(answers);
    }
    if let Some(server) = server {
        timed("server", async { server.await.map_err(io::Error::other)? }).await?;
    }
    Ok(())
}

/// A tokio-rustls server deja knows nothing of: a plain tokio runtime on a
/// thread of its own, serving `CONNECTIONS` connections one at a time;
/// the thread returns how many it served.
fn outside_server(certs: Arc<Certs>) -> (SocketAddr, std::thread::JoinHandle<io::Result<usize>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
    listener.set_nonblocking(true).expect("non-blocking");
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let acceptor = TlsAcceptor::from(server_config(&certs));
            for served in 0..CONNECTIONS {
                let (stream, _peer) = match tokio::time::timeout(STEP, listener.accept()).await {
                    Ok(accepted) => accepted?,
                    Err(_) => return Ok(served),
                };
                let tls = timed("server handshake", acceptor.accept(stream)).await?;
                timed("echo", echo(tls)).await?;
            }
            Ok(CONNECTIONS)
        })
    });
    (addr, thread)
}

fn record(peer: Peer, certs: Option<Arc<Certs>>, out: &Path) -> (PathBuf, Vec<String>) {
    let seen = Arc::new(Seen::default());
    let run = Arc::clone(&seen);
    let dir = record_with(out, SERVICE, move || {
        service(peer, certs, Change::None, run)
    });
    let answers = seen.answers.lock().unwrap().clone();
    check_answers(&answers, peer.clients());
    (dir, answers)
}

fn replay(
    peer: Peer,
    certs: Option<Arc<Certs>>,
    dir: &Path,
    change: Change,
) -> (Result<(), Error>, Arc<Seen>, u64) {
    let seen = Arc::new(Seen::default());
    let run = Arc::clone(&seen);
    let (result, stats) = replay_with(dir, SERVICE, move || service(peer, certs, change, run));
    (result, seen, stats.digest)
}

/// Every request of every client answered; each client's handshakes
/// were the ones planned.
fn check_answers(answers: &[String], clients: usize) {
    let per_client = CONNECTIONS * (1 + REQUESTS);
    assert_eq!(answers.len(), clients * per_client, "{answers:#?}");
    for client in answers.chunks(per_client) {
        let handshakes: Vec<&String> = client.iter().step_by(1 + REQUESTS).collect();
        assert_eq!(
            handshakes,
            [
                "connection 0: Some(TLSv1_3) Some(Full)",
                "connection 1: Some(TLSv1_3) Some(Resumed)",
                "connection 2: Some(TLSv1_2) Some(Full)",
            ],
            "a full handshake, a resumed one, TLS 1.2"
        );
    }
    let tokens: BTreeSet<&str> = answers
        .iter()
        .filter(|a| a.contains(" -> "))
        .map(|a| a.rsplit(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        tokens.len(),
        clients * CONNECTIONS * REQUESTS,
        "every token is new: {answers:#?}"
    );
}

/// The entropy events of a recording's log.
fn entropy_events(dir: &Path) -> usize {
    RunReader::open(dir)
        .expect("the run's log")
        .filter(|event| {
            matches!(
                event.as_ref().expect("an event").kind,
                EventKind::Entropy { .. }
            )
        })
        .count()
}

/// Replay `REPLAYS` times: the recorded answers and one digest each time.
fn replays_exactly(peer: Peer, certs: Option<Arc<Certs>>, dir: &Path, recorded: &[String]) {
    let mut digests = BTreeSet::new();
    for round in 0..REPLAYS {
        let (result, seen, digest) = replay(peer, certs.clone(), dir, Change::None);
        if let Err(err) = result {
            panic!("{peer:?}: replay {round} failed: {err}");
        }
        assert_eq!(
            *seen.answers.lock().unwrap(),
            recorded,
            "{peer:?}: replay {round} saw other answers"
        );
        digests.insert(digest);
    }
    assert_eq!(
        digests.len(),
        1,
        "{peer:?}: replays gave digests {digests:x?}"
    );
    eprintln!("{peer:?}: {REPLAYS}/{REPLAYS} replays, one digest");
}

/// A changed client diverges at a write, after `handshakes_before`
/// handshakes completed (a range: at least, at most).
fn diverges(
    peer: Peer,
    certs: Option<Arc<Certs>>,
    dir: &Path,
    change: Change,
    handshakes_before: std::ops::RangeInclusive<usize>,
) {
    let (result, seen, _) = replay(peer, certs, dir, change);
    match result {
        Err(Error::Diverged(divergence)) => {
            let expected = divergence.expected.as_ref().map(|event| &event.kind);
            assert!(
                matches!(expected, Some(EventKind::TcpWrite { .. })),
                "{change:?}: the divergence is at a write: {divergence}"
            );
            let done = seen.handshakes.load(Ordering::SeqCst);
            assert!(
                handshakes_before.contains(&done),
                "{change:?}: {done} handshakes before the divergence, not {handshakes_before:?}: {divergence}"
            );
        }
        Err(other) => panic!("{change:?}: a changed client must diverge, not fail: {other}"),
        Ok(()) => panic!("{change:?}: a changed client must diverge, but the replay passed"),
    }
}

/// Both ends on deja: handshakes (full, resumed, TLS 1.2) and requests
/// replay exactly; a changed request diverges after the first handshake,
/// an ALPN offer at the first ClientHello.
#[test]
fn tls_both_ends_on_deja_replays_exactly() {
    let out = tempfile::tempdir().expect("tempdir");
    let certs = Some(Arc::new(make_certs()));
    let (dir, recorded) = record(Peer::InService, certs.clone(), out.path());
    // Both ends' randoms, key shares and signatures, and the tokens: far
    // more than the runtime's own few draws.
    let draws = entropy_events(&dir);
    eprintln!("{draws} entropy events in the recording");
    assert!(
        draws >= CONNECTIONS * 4 + 2 * CONNECTIONS * REQUESTS,
        "{draws} entropy events"
    );
    replays_exactly(Peer::InService, certs.clone(), &dir, &recorded);
    diverges(Peer::InService, certs.clone(), &dir, Change::Request, 1..=1);
    diverges(Peer::InService, certs, &dir, Change::Alpn, 0..=0);
}

/// `CONCURRENT_CLIENTS` clients at once, each a task of its own: their
/// handshakes and requests interleave, and replay them alike.
#[test]
fn tls_concurrent_clients_replay_exactly() {
    let out = tempfile::tempdir().expect("tempdir");
    let certs = Some(Arc::new(make_certs()));
    let peer = Peer::InServiceConcurrent;
    let (dir, recorded) = record(peer, certs.clone(), out.path());
    replays_exactly(peer, certs.clone(), &dir, &recorded);
    diverges(
        peer,
        certs,
        &dir,
        Change::Alpn,
        0..=CONCURRENT_CLIENTS * CONNECTIONS,
    );
}

/// The server makes its key and certificate with rcgen inside the recorded
/// service: replay hands ring the same entropy, so the same certificate.
#[test]
fn tls_with_a_certificate_made_in_the_service_replays_exactly() {
    let out = tempfile::tempdir().expect("tempdir");
    let (dir, recorded) = record(Peer::InServiceOwnCert, None, out.path());
    replays_exactly(Peer::InServiceOwnCert, None, &dir, &recorded);
}

/// The recorded client talks to a real tokio-rustls server outside deja;
/// replay runs without it.
#[test]
fn tls_client_of_an_outside_server_replays_without_it() {
    let out = tempfile::tempdir().expect("tempdir");
    let certs = Arc::new(make_certs());
    let (addr, server) = outside_server(Arc::clone(&certs));
    let peer = Peer::Outside(addr);
    let (dir, recorded) = record(peer, Some(Arc::clone(&certs)), out.path());
    let served = server
        .join()
        .expect("the outside server")
        .expect("the outside server ran");
    assert_eq!(served, CONNECTIONS);
    // The server is gone: replay must not need it.
    let certs = Some(certs);
    replays_exactly(peer, certs.clone(), &dir, &recorded);
    diverges(peer, certs.clone(), &dir, Change::Request, 1..=1);
    diverges(peer, certs, &dir, Change::Alpn, 0..=0);
}

/// Seeds the simulation test checks, each run twice.
const SIM_SEEDS: u64 = 4;

/// The in-service server as a simulated host: an accept loop with a task
/// per connection, for `CONNECTIONS` connections.
async fn sim_server(certs: Arc<Certs>) -> io::Result<()> {
    let listener = TcpListener::bind("0.0.0.0:7443").await?;
    let acceptor = TlsAcceptor::from(server_config(&certs));
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        let (stream, _peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        connections.push(tokio::spawn(async move {
            echo(acceptor.accept(stream).await?).await
        }));
    }
    for connection in connections {
        connection.await.map_err(io::Error::other)??;
    }
    Ok(())
}

/// TLS between two simulated hosts: ring's entropy and rustls's clock
/// come from the seed, so a seed runs alike twice (every host's events,
/// and the answers), and seeds differ (randoms, so tokens).
#[test]
fn tls_in_a_simulation_is_deterministic() {
    use deja::sim::{check_determinism, Latency, Sim};
    let certs = Arc::new(make_certs());
    let runs: Arc<Mutex<Vec<Arc<Seen>>>> = Arc::default();
    for seed in 0..SIM_SEEDS {
        let report = check_determinism(seed, |seed| {
            let seen = Arc::new(Seen::default());
            runs.lock().unwrap().push(Arc::clone(&seen));
            let mut sim = Sim::new(seed);
            sim.net().latency(Latency::Uniform(
                Duration::from_millis(1),
                Duration::from_millis(5),
            ));
            let server_certs = Arc::clone(&certs);
            sim.host("server", move || sim_server(Arc::clone(&server_certs)));
            let client_certs = Arc::clone(&certs);
            sim.client("client", async move {
                let answers = client(
                    "server:7443".into(),
                    client_certs,
                    Change::None,
                    Arc::clone(&seen),
                )
                .await?;
                *seen.answers.lock().unwrap() = answers;
                Ok::<(), io::Error>(())
            });
            sim
        })
        .unwrap_or_else(|difference| panic!("seed {seed}: {difference}"));
        assert!(report.tokio_steps > 0, "{report:?}");
    }
    let runs: Vec<Vec<String>> = runs
        .lock()
        .unwrap()
        .iter()
        .map(|seen| seen.answers.lock().unwrap().clone())
        .collect();
    assert_eq!(runs.len() as u64, 2 * SIM_SEEDS);
    for pair in runs.chunks(2) {
        check_answers(&pair[0], 1);
        assert_eq!(pair[0], pair[1], "both runs of a seed answer alike");
    }
    let distinct: BTreeSet<&Vec<String>> = runs.iter().collect();
    assert_eq!(
        distinct.len() as u64,
        SIM_SEEDS,
        "each seed draws its own tokens"
    );
}

/// HTTPS through hyper-util's pooled client: hyper-rustls's
/// `HttpsConnector` around `deja::net::Connector` (`enforce_http(false)`),
/// against a hyper server on tokio-rustls on a deja listener.
#[cfg(feature = "hyper")]
mod https {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;

    /// Requests, each on a connection of its own (the pool keeps none
    /// idle), so every one after the first resumes a TLS 1.3 session.
    const HTTPS_REQUESTS: usize = 4;

    /// The handler: the path, the body in capitals, a token from ring.
    async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = request.uri().path().to_string();
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let answer = format!(
            "{path} {} {}",
            String::from_utf8_lossy(&body).to_uppercase(),
            ring_hex(8)
        );
        Ok(Response::new(Full::new(Bytes::from(answer))))
    }

    /// The service: the HTTPS server and `HTTPS_REQUESTS` calls.
    async fn service(certs: Arc<Certs>, changed: bool, seen: Arc<Seen>) -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(server_config(&certs));
        let server = tokio::spawn(async move {
            let mut connections = Vec::new();
            for _ in 0..HTTPS_REQUESTS {
                let (stream, _peer) = timed("accept", listener.accept()).await?;
                let acceptor = acceptor.clone();
                connections.push(tokio::spawn(async move {
                    let tls = timed("server handshake", acceptor.accept(stream)).await?;
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(handle))
                        .await
                        .map_err(io::Error::other)
                }));
            }
            for connection in connections {
                connection.await.map_err(io::Error::other)??;
            }
            Ok::<(), io::Error>(())
        });

        let mut http = deja::net::Connector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(ClientConfig::clone(&client_config(&certs, false, false)))
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https);
        let mut answers = Vec::new();
        for i in 0..HTTPS_REQUESTS {
            let word = if changed && i == 1 { "other" } else { "body" };
            let request = Request::builder()
                .method(Method::POST)
                .uri(format!("https://127.0.0.1:{}/echo/{i}", addr.port()))
                .body(Full::new(Bytes::from(format!(
                    "{word} {i} {}",
                    ring_hex(4)
                ))))
                .map_err(io::Error::other)?;
            let response = timed("request", async {
                client.request(request).await.map_err(io::Error::other)
            })
            .await?;
            let status = response.status();
            let body = timed("body", async {
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(io::Error::other)
            })
            .await?
            .to_bytes();
            if status != StatusCode::OK {
                return Err(io::Error::other(format!("status {status}")));
            }
            answers.push(String::from_utf8_lossy(&body).into_owned());
        }
        drop(client);
        timed("server", async { server.await.map_err(io::Error::other)? }).await?;
        *seen.answers.lock().unwrap() = answers;
        Ok(())
    }

    fn replay(
        certs: &Arc<Certs>,
        dir: &Path,
        changed: bool,
    ) -> (Result<(), Error>, Vec<String>, u64) {
        let seen = Arc::new(Seen::default());
        let run = Arc::clone(&seen);
        let certs = Arc::clone(certs);
        let (result, stats) = replay_with(dir, SERVICE, move || service(certs, changed, run));
        let answers = seen.answers.lock().unwrap().clone();
        (result, answers, stats.digest)
    }

    #[test]
    fn https_through_hyper_rustls_on_deja_connector_replays_exactly() {
        let out = tempfile::tempdir().expect("tempdir");
        let certs = Arc::new(make_certs());
        let seen = Arc::new(Seen::default());
        let run = Arc::clone(&seen);
        let record_certs = Arc::clone(&certs);
        let dir = record_with(out.path(), SERVICE, move || {
            service(record_certs, false, run)
        });
        let recorded = seen.answers.lock().unwrap().clone();
        assert_eq!(recorded.len(), HTTPS_REQUESTS, "{recorded:?}");
        for (i, answer) in recorded.iter().enumerate() {
            assert!(
                answer.starts_with(&format!("/echo/{i} BODY {i} ")),
                "{answer}"
            );
        }

        let mut digests = BTreeSet::new();
        for round in 0..REPLAYS {
            let (result, answers, digest) = replay(&certs, &dir, false);
            if let Err(err) = result {
                panic!("https replay {round} failed: {err}");
            }
            assert_eq!(answers, recorded, "https replay {round} saw other answers");
            digests.insert(digest);
        }
        assert_eq!(digests.len(), 1, "https replays gave digests {digests:x?}");
        eprintln!("https: {REPLAYS}/{REPLAYS} replays, one digest");

        match replay(&certs, &dir, true).0 {
            Err(Error::Diverged(divergence)) => {
                let expected = divergence.expected.as_ref().map(|event| &event.kind);
                assert!(
                    matches!(expected, Some(EventKind::TcpWrite { .. })),
                    "the divergence is at a write: {divergence}"
                );
            }
            other => panic!("another request body must diverge, got {other:?}"),
        }
    }
}
