#![cfg(feature = "rustls")]
//! tokio-postgres over TLS (`deja::net::postgres::connect_tls`, rustls
//! with ring) against a real PostgreSQL that the test starts with a
//! certificate rcgen made (`deja_fixtures::servers::Postgres::start_tls`).
//!
//! The service connects with `sslmode=require` and
//! `channel_binding=require` (so the login is SCRAM-SHA-256-PLUS, bound to
//! the server's certificate), checks in `pg_stat_ssl` that its session is
//! encrypted, and inserts rows in a transaction. It is recorded, the server
//! is stopped, and the recording replays 10 times in this process (fresh
//! threads; unnamed statements only, as tokio-postgres names prepared
//! statements from a process-wide counter) to the recorded answers and one
//! digest. A service that inserts another value diverges at that write.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deja::{Builder, Error, Mode};
use deja_fixtures::servers::Postgres;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// The service name the recording is made under.
const SERVICE: &str = "postgres-tls";
/// Replays of the recording.
const REPLAYS: usize = 10;
/// Rows the transaction inserts.
const ROWS: usize = 5;
/// Any single step longer than this is a hang, not slowness.
const STEP: Duration = Duration::from_secs(20);
/// How long a replay waits before it calls a stall one.
const STALL_WAIT: Duration = Duration::from_millis(500);

/// A test CA, and a certificate for `localhost` it signed: the chain and
/// key in PEM for the server, the CA for the client.
fn make_certs() -> (String, String, CertificateDer<'static>) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "deja test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    (
        format!("{}{}", leaf.pem(), ca.pem()),
        key.serialize_pem(),
        ca.der().clone(),
    )
}

/// The service: log in over TLS, check the session is encrypted, insert
/// `ROWS` rows in a transaction; what it saw goes to `out`.
async fn service(
    config: tokio_postgres::Config,
    root: CertificateDer<'static>,
    changed: bool,
    out: Arc<Mutex<Vec<String>>>,
) -> io::Result<()> {
    let mut roots = RootCertStore::empty();
    roots.add(root).map_err(io::Error::other)?;
    let tls = ClientConfig::builder_with_provider(deja::net::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (mut client, connection) = deja::net::postgres::connect_tls(&config, Arc::new(tls))
        .await
        .map_err(io::Error::other)?;
    let driver = tokio::spawn(connection);
    let mut seen = Vec::new();

    let messages = client
        .simple_query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .map_err(io::Error::other)?;
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            seen.push(format!(
                "ssl={} version={}",
                row.get(0).unwrap_or("?"),
                row.get(1).unwrap_or("?")
            ));
        }
    }

    client
        .batch_execute("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, note text)")
        .await
        .map_err(io::Error::other)?;
    let transaction = client.transaction().await.map_err(io::Error::other)?;
    for i in 0..ROWS {
        let note = if changed && i == ROWS / 2 {
            format!("changed {i}")
        } else {
            format!("note {i}")
        };
        let rows = transaction
            .query_typed(
                "INSERT INTO notes (note) VALUES ($1) RETURNING id, note",
                &[(&note, Type::TEXT)],
            )
            .await
            .map_err(io::Error::other)?;
        for row in rows {
            let (id, note): (i32, String) = (row.get(0), row.get(1));
            seen.push(format!("inserted {id}: {note}"));
        }
    }
    transaction.commit().await.map_err(io::Error::other)?;

    drop(client);
    tokio::time::timeout(STEP, driver)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the connection did not end"))?
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    *out.lock().unwrap() = seen;
    Ok(())
}

/// Record the service under `out`: the run directory and what it saw.
fn record(
    out: &Path,
    config: tokio_postgres::Config,
    root: CertificateDer<'static>,
) -> (PathBuf, Vec<String>) {
    let out = out.to_path_buf();
    std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Record)
            .trace_dir(&out)
            .service(SERVICE)
            .build()
            .expect("record runtime");
        let dir = runtime.run_dir().expect("run dir").to_path_buf();
        let seen = Arc::new(Mutex::new(Vec::new()));
        runtime
            .block_on(service(config, root, false, Arc::clone(&seen)))
            .expect("recorded run")
            .expect("the service works");
        drop(runtime);
        let seen = seen.lock().unwrap().clone();
        (dir, seen)
    })
    .join()
    .expect("the recording's thread")
}

/// Replay `dir`: how it ended, what the service saw, the digest.
fn replay(
    dir: &Path,
    config: tokio_postgres::Config,
    root: CertificateDer<'static>,
    changed: bool,
) -> (Result<(), Error>, Vec<String>, u64) {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut runtime = Builder::new()
            .mode(Mode::Replay)
            .trace_dir(&dir)
            .service(SERVICE)
            .stall_wait(STALL_WAIT)
            .build()
            .expect("replay runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let result = runtime
            .block_on(service(config, root, changed, Arc::clone(&seen)))
            .map(|output| output.expect("the service works in replay"));
        let digest = runtime.replay_stats().unwrap_or_default().digest;
        let seen = seen.lock().unwrap().clone();
        (result, seen, digest)
    })
    .join()
    .expect("the replay's thread")
}

#[test]
fn tokio_postgres_over_tls_with_channel_binding_replays_with_the_server_stopped() {
    let (chain, key, root) = make_certs();
    let Some(mut pg) = Postgres::start_tls("real_postgres_tls", &chain, &key) else {
        return;
    };
    // The certificate is for `localhost`; the address is 127.0.0.1.
    let config: tokio_postgres::Config = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={} password={} dbname={} \
         sslmode=require channel_binding=require",
        pg.port(),
        pg.user(),
        pg.password(),
        pg.dbname()
    )
    .parse()
    .expect("config");

    let out = tempfile::tempdir().expect("tempdir");
    let (dir, recorded) = record(out.path(), config.clone(), root.clone());
    assert_eq!(recorded.len(), 1 + ROWS, "{recorded:?}\n{}", pg.log());
    assert!(
        recorded[0].starts_with("ssl=t version=TLSv1.3"),
        "the session is encrypted: {recorded:?}"
    );
    pg.stop();

    let mut digests = BTreeSet::new();
    for round in 0..REPLAYS {
        let (result, seen, digest) = replay(&dir, config.clone(), root.clone(), false);
        if let Err(err) = result {
            panic!("replay {round} failed: {err}");
        }
        assert_eq!(seen, recorded, "replay {round} saw other answers");
        digests.insert(digest);
    }
    assert_eq!(digests.len(), 1, "replays gave digests {digests:x?}");
    eprintln!("postgres over TLS: {REPLAYS}/{REPLAYS} replays, one digest");

    let (result, _, _) = replay(&dir, config, root, true);
    match result {
        Err(Error::Diverged(divergence)) => {
            let text = divergence.to_string();
            assert!(
                text.contains("write"),
                "the divergence is at a write: {text}"
            );
        }
        other => panic!("another insert must diverge, got {other:?}"),
    }
}
