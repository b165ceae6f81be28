//! Real servers for tests: a throwaway PostgreSQL cluster and a
//! `redis-server`, each started by the test on a free port of 127.0.0.1,
//! waited for (bounded) and stopped by PID when dropped (SIGTERM, then
//! SIGKILL after [`STOP_TIMEOUT`]).
//!
//! A test that cannot find a server outside CI prints one loud line
//! (`SKIPPED: ... not installed; .ci/run installs it`) and returns; with
//! `CI=true` a missing server fails the test. `.ci/run` installs both
//! (Debian's `postgresql` and `redis-server`).
//!
//! PostgreSQL refuses to run as root: when the test runs as root (as CI
//! does) `initdb` and `postgres` run as the `postgres` system user, which
//! owns the cluster's temporary directory.
//!
//! ```no_run
//! let Some(pg) = deja_tests::servers::Postgres::start("my_test") else {
//!     return; // not installed, outside CI: skipped, and said so
//! };
//! let url = format!(
//!     "host=127.0.0.1 port={} user={} password={} dbname={}",
//!     pg.port(),
//!     pg.user(),
//!     pg.password(),
//!     pg.dbname()
//! );
//! # let _ = url;
//! // ... the test; dropping `pg` stops the server and removes its files.
//! ```

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Longest a server may take to accept connections (`initdb` excluded).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `initdb` may take.
pub const INITDB_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server has to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Start attempts, each on a new free port (another process may take the
/// port between our probe and the server's bind).
const START_ATTEMPTS: u32 = 3;

/// Whether this is CI (`CI=true`), where a missing server is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// A server `what` is not installed: in CI, fail the test; elsewhere say
/// so in one line that `cargo test`'s capture does not hide.
fn missing(test: &str, what: &str) {
    assert!(
        !in_ci(),
        "{test}: {what} not installed, and CI=true: .ci/run must install it"
    );
    // Straight to stderr, not through `eprintln!`, which the test harness
    // captures and shows only for failing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: {what} not installed; .ci/run installs it"
    );
}

/// `name` on PATH, else under `/usr/lib/postgresql/*/bin` (Debian keeps the
/// server binaries there), newest major version first.
fn find_binary(name: &str, postgres_lib: bool) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Some(candidate);
            }
        }
    }
    if !postgres_lib {
        return None;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin").join(name)))
        })
        .filter(|(_, path)| is_executable(path))
        .collect();
    versions.sort();
    versions.pop().map(|(_, path)| path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

/// The uid and gid of the account PostgreSQL runs as when we are root.
#[derive(Clone, Copy, Debug)]
struct Account {
    uid: u32,
    gid: u32,
}

/// `None` if we are not root (the server runs as us); the `postgres`
/// account if we are.
fn postgres_account() -> Result<Option<Account>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam with a valid C string; the record is copied out
    // before any other passwd call on this thread.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(
            "running as root, and there is no `postgres` user to run PostgreSQL as \
             (PostgreSQL refuses to run as root; Debian's package creates the user)"
                .into(),
        );
    }
    // SAFETY: non-null record from getpwnam.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some(Account { uid, gid }))
}

fn chown(path: &Path, account: Option<Account>) {
    let Some(account) = account else { return };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
    // SAFETY: chown(2) on a valid C string.
    let rc = unsafe { libc::chown(c_path.as_ptr(), account.uid, account.gid) };
    assert_eq!(
        rc,
        0,
        "chown {} to the postgres user: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A command that runs as `account` (when we are root), in `dir`, with its
/// output appended to `log`.
fn command(program: &Path, account: Option<Account>, dir: &Path, log: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir).stdin(Stdio::null());
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("opening the server log");
    let err = out.try_clone().expect("cloning the log handle");
    command.stdout(out).stderr(err);
    if let Some(account) = account {
        // std drops the supplementary groups when root changes uid.
        command.uid(account.uid).gid(account.gid);
    }
    command
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A server process the test started: stopped by PID when dropped.
#[derive(Debug)]
struct Process {
    name: &'static str,
    child: Option<Child>,
}

impl Process {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Has it exited already? (Reaps it if so.)
    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => false,
            Some(Ok(Some(_)) | Err(_)) | None => true,
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after [`STOP_TIMEOUT`];
    /// waits for it either way.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = writeln!(
            std::io::stderr(),
            "{}: pid {pid} still running {STOP_TIMEOUT:?} after SIGTERM; SIGKILL",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait until `ready` says so (true), the process exits (false: maybe
/// the port was taken, try another), or [`START_TIMEOUT`] passes (panics).
fn wait_ready(process: &mut Process, log: &Path, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ready() {
            return true;
        }
        if process.exited() {
            return false;
        }
        if Instant::now() >= deadline {
            process.stop();
            panic!(
                "{} (pid {:?}) did not accept connections within {START_TIMEOUT:?}; its log:\n{}",
                process.name,
                process.pid(),
                read_log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A throwaway PostgreSQL cluster: `initdb` in a temporary directory,
/// SCRAM-SHA-256 password authentication for TCP clients from 127.0.0.1
/// (`password_encryption = scram-sha-256`, `pg_hba.conf`: `host all all
/// 127.0.0.1/32 scram-sha-256`), listening on 127.0.0.1 on a free port,
/// its unix sockets in the temporary directory.
#[derive(Debug)]
pub struct Postgres {
    // Field order: the server stops before its directory is removed.
    process: Process,
    port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl Postgres {
    /// The cluster's superuser, made by `initdb` with [`Postgres::PASSWORD`].
    pub const USER: &'static str = "deja";
    /// Its password (stored as a SCRAM-SHA-256 verifier).
    pub const PASSWORD: &'static str = "deja-s3cret";
    /// The database `initdb` makes.
    pub const DBNAME: &'static str = "postgres";

    /// Start a cluster for `test`. `None` (after the loud `SKIPPED` line)
    /// if PostgreSQL is not installed outside CI; in CI that panics, as
    /// does any failure to start an installed server.
    pub fn start(test: &str) -> Option<Postgres> {
        Postgres::start_with(test, None)
    }

    /// [`Postgres::start`], with TLS (`ssl = on`) on the certificate chain
    /// and key given in PEM; clients may still connect without TLS.
    pub fn start_tls(test: &str, cert_chain_pem: &str, key_pem: &str) -> Option<Postgres> {
        Postgres::start_with(test, Some((cert_chain_pem, key_pem)))
    }

    fn start_with(test: &str, tls: Option<(&str, &str)>) -> Option<Postgres> {
        let (Some(initdb), Some(postgres)) =
            (find_binary("initdb", true), find_binary("postgres", true))
        else {
            missing(test, "PostgreSQL (initdb, postgres)");
            return None;
        };
        let account = postgres_account().unwrap_or_else(|why| panic!("{test}: {why}"));
        // The `postgres` user must reach the directory, and a unix socket's
        // path must stay under 108 bytes: /tmp when TMPDIR may be neither.
        let base = std::env::temp_dir();
        let base = if account.is_some() || base.as_os_str().len() > 60 {
            PathBuf::from("/tmp")
        } else {
            base
        };
        let dir = tempfile::Builder::new()
            .prefix("deja-pg-")
            .tempdir_in(&base)
            .expect("temporary directory for the cluster");
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let pwfile = root.join("pwfile");
        let log = root.join("server.log");
        std::fs::write(&pwfile, Postgres::PASSWORD).expect("writing the password file");
        std::fs::write(&log, "").expect("creating the log");
        for path in [&root, &pwfile, &log] {
            chown(path, account);
        }

        let mut init = command(&initdb, account, &root, &log);
        init.arg("-D")
            .arg(&data)
            .args(["-U", Postgres::USER, "-A", "scram-sha-256", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let mut init = Process {
            name: "initdb",
            child: Some(init.spawn().expect("spawning initdb")),
        };
        let deadline = Instant::now() + INITDB_TIMEOUT;
        let status = loop {
            if let Some(status) = init
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                break status;
            }
            if Instant::now() >= deadline {
                init.stop();
                panic!(
                    "initdb took longer than {INITDB_TIMEOUT:?}:\n{}",
                    read_log(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        init.child = None;
        assert!(
            status.success(),
            "initdb failed ({status}):\n{}",
            read_log(&log)
        );

        std::fs::write(
            data.join("pg_hba.conf"),
            "# deja-tests: password (SCRAM-SHA-256) from 127.0.0.1 and the socket\n\
             local all all scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("writing pg_hba.conf");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("opening postgresql.conf");
        writeln!(
            conf,
            "\n# deja-tests\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 20\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off",
            root.display()
        )
        .expect("writing postgresql.conf");
        if let Some((cert_chain_pem, key_pem)) = tls {
            // The server reads them as its own user; the key must be 0600.
            let cert = data.join("server.crt");
            let key = data.join("server.key");
            std::fs::write(&cert, cert_chain_pem).expect("writing server.crt");
            std::fs::write(&key, key_pem).expect("writing server.key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("server.key 0600");
            for path in [&cert, &key] {
                chown(path, account);
            }
            writeln!(
                conf,
                "ssl = on\n\
                 ssl_cert_file = 'server.crt'\n\
                 ssl_key_file = 'server.key'"
            )
            .expect("writing postgresql.conf");
        }
        drop(conf);

        for _attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let mut server = command(&postgres, account, &root, &log);
            server.arg("-D").arg(&data).arg("-p").arg(port.to_string());
            let mut process = Process {
                name: "postgres",
                child: Some(server.spawn().expect("spawning postgres")),
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            // Listening is not enough: until startup ends, connections are
            // refused with "the database system is starting up".
            let ready = wait_ready(&mut process, &log, || {
                read_log(&log).contains("database system is ready to accept connections")
                    && accepts(addr)
            });
            if ready {
                return Some(Postgres {
                    process,
                    port,
                    log,
                    dir,
                });
            }
        }
        panic!(
            "postgres exited {START_ATTEMPTS} times before accepting connections:\n{}",
            read_log(&log)
        );
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// [`Postgres::USER`].
    pub fn user(&self) -> &'static str {
        Postgres::USER
    }

    /// [`Postgres::PASSWORD`].
    pub fn password(&self) -> &'static str {
        Postgres::PASSWORD
    }

    /// [`Postgres::DBNAME`].
    pub fn dbname(&self) -> &'static str {
        Postgres::DBNAME
    }

    /// The postmaster's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The temporary directory (data directory, sockets, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What `initdb` and the server have logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Stop the server now (SIGTERM, then SIGKILL after
    /// [`STOP_TIMEOUT`]); the directory stays until drop.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// A `redis-server` on a free port of 127.0.0.1, persisting nothing
/// (`--save '' --appendonly no`), working in a temporary directory.
#[derive(Debug)]
pub struct Redis {
    process: Process,
    port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl Redis {
    /// Start one for `test`. `None` (after the loud `SKIPPED` line) if
    /// `redis-server` is not installed outside CI; in CI that panics, as
    /// does any failure to start an installed server.
    pub fn start(test: &str) -> Option<Redis> {
        let Some(binary) = find_binary("redis-server", false) else {
            missing(test, "redis-server");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("deja-redis-")
            .tempdir()
            .expect("temporary directory for redis");
        let log = dir.path().join("server.log");
        for _attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let mut server = command(&binary, None, dir.path(), &log);
            server
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(["--daemonize", "no", "--logfile", ""]);
            let mut process = Process {
                name: "redis-server",
                child: Some(server.spawn().expect("spawning redis-server")),
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if wait_ready(&mut process, &log, || pings(addr)) {
                return Some(Redis {
                    process,
                    port,
                    log,
                    dir,
                });
            }
        }
        panic!(
            "redis-server exited {START_ATTEMPTS} times before accepting connections:\n{}",
            read_log(&log)
        );
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The temporary directory it works in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Stop the server now (SIGTERM, then SIGKILL after
    /// [`STOP_TIMEOUT`]).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// Does a Redis server at `addr` answer `PING` with `+PONG`?
fn pings(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    if conn.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    conn.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Is anything accepting connections at `addr`? (After `stop`, nothing
/// should be: a replay must not need the server.)
pub fn listening(addr: SocketAddr) -> bool {
    accepts(addr)
}
