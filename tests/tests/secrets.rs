//! Secrets: a service recorded with redactors never puts the masked bytes
//! on disk (raw segment files, their decompressed frames, the index), its
//! run is private to its owner (0700 / 0600), and its log replays: to the
//! end when the service does not depend on the secret, and to a divergence
//! that names the redacted read when it does.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use deja::io::{AsyncReadExt, AsyncWriteExt};
use deja::net::TcpListener;
use deja::{Builder, Error, Mode};
use deja_recorder::format::FRAME_RAW_BYTES_MAX;
use deja_recorder::{Event, EventKind, ReadOutcome, RunReader};
use deja_tests::{segment_files, SegmentLayout, FRAME_HEADER_BYTES};

/// The bearer token: must never reach the disk.
const TOKEN: &str = "s3cr3t-7f9c2e1a40d6";
/// A test card number (passes Luhn): must never reach the disk either.
const CARD: &str = "4111111111111111";
/// What must not be found anywhere in the run, not even in part.
const FORBIDDEN: [&str; 3] = [TOKEN, "s3cr3t", CARD];
const SERVICE: &str = "secrets";
/// Bound on how long the plain client waits for the service.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the service does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logic {
    /// Echo the request back: never looks at the token.
    Echo,
    /// Answer 401 unless the token is the right one.
    CheckToken,
}

/// The service: accepts `requests` connections one after the other, reads
/// each request to EOF and answers it. The listener's address goes to the
/// plain client through `addr` (record only).
async fn service(
    addr: Option<mpsc::Sender<SocketAddr>>,
    requests: usize,
    logic: Logic,
) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    if let Some(addr) = addr {
        let _ = addr.send(listener.local_addr()?);
    }
    for _ in 0..requests {
        let (mut conn, _peer) = listener.accept().await?;
        let mut request = Vec::new();
        conn.read_to_end(&mut request).await?;
        let response = match logic {
            // The reply carries a secret of the service's own, which replay
            // writes in the clear again: it must mask it to compare.
            Logic::Echo => [
                format!("HTTP/1.1 200 OK\r\nAuthorization: Bearer {TOKEN}-reply\r\n\r\n")
                    .as_bytes(),
                &request,
            ]
            .concat(),
            Logic::CheckToken => {
                let wanted = format!("\r\nAuthorization: Bearer {TOKEN}\r\n");
                let authorized = request
                    .windows(wanted.len())
                    .any(|window| window == wanted.as_bytes());
                if authorized {
                    b"HTTP/1.1 200 OK\r\n\r\nwelcome\n".to_vec()
                } else {
                    b"HTTP/1.1 401 Unauthorized\r\n\r\n".to_vec()
                }
            }
        };
        conn.write_all(&response).await?;
        conn.shutdown().await?;
    }
    Ok(())
}

/// Request `i`: the token in a header and the card number in the body.
/// Request 1 is sent in two writes that cut the token, so the service
/// (usually) reads it in two chunks.
fn request_parts(i: usize) -> Vec<Vec<u8>> {
    let request = format!(
        "POST /pay/{i} HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: text/plain\r\n\r\ncard={CARD}&amount=42\n"
    );
    let bytes = request.into_bytes();
    if i == 1 {
        let cut = request_cut(&bytes);
        vec![bytes[..cut].to_vec(), bytes[cut..].to_vec()]
    } else {
        vec![bytes]
    }
}

/// Inside the token: "...Bearer s3cr" | "3t-...".
fn request_cut(bytes: &[u8]) -> usize {
    let at = bytes
        .windows(TOKEN.len())
        .position(|window| window == TOKEN.as_bytes())
        .expect("the token is in the request");
    at + 4
}

/// A plain (not deja) client on its own thread: one connection per
/// request, the request, a half-close, the whole response.
fn client(
    addr: mpsc::Receiver<SocketAddr>,
    requests: usize,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        let addr = addr
            .recv_timeout(CLIENT_TIMEOUT)
            .expect("the service's address");
        (0..requests)
            .map(|i| {
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                stream.set_nodelay(true).unwrap();
                for (n, part) in request_parts(i).iter().enumerate() {
                    if n > 0 {
                        // Let the service read the first part on its own.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    stream.write_all(part).expect("write");
                }
                stream.shutdown(std::net::Shutdown::Write).unwrap();
                let mut response = Vec::new();
                stream.read_to_end(&mut response).expect("read response");
                response
            })
            .collect()
    })
}

fn builder() -> Builder {
    Builder::new()
        .service(SERVICE)
        .redact(deja::redact::http_header("authorization"))
        .redact(deja::redact::digits_run(13..=19).luhn())
}

/// Record the service with its redactors (and kept write bytes: they
/// must be masked too); returns the run and what the client got back.
fn record(out: &Path, requests: usize, logic: Logic) -> (PathBuf, Vec<Vec<u8>>) {
    let mut runtime = builder()
        .mode(Mode::Record)
        .trace_dir(out)
        .keep_write_bytes(true)
        .worker_threads(1)
        .build()
        .expect("record runtime");
    let dir = runtime.run_dir().expect("run dir").to_path_buf();
    let (tx, rx) = mpsc::channel();
    let client = client(rx, requests);
    runtime
        .block_on(service(Some(tx), requests, logic))
        .expect("recorded run")
        .expect("service ok");
    drop(runtime);
    (dir, client.join().expect("client"))
}

fn replay(dir: &Path, requests: usize, logic: Logic) -> (Result<(), Error>, deja::ReplayStats) {
    let mut runtime = builder()
        .mode(Mode::Replay)
        .trace_dir(dir)
        .stall_wait(Duration::from_millis(500))
        .build()
        .expect("replay runtime");
    let result = runtime
        .block_on(service(None, requests, logic))
        .map(|output| output.expect("service ok"));
    let stats = runtime.replay_stats().expect("replay stats");
    (result, stats)
}

fn events(dir: &Path) -> Vec<Event> {
    RunReader::open(dir)
        .expect("open run")
        .collect::<Result<_, _>>()
        .expect("read run")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn assert_no_secret(what: &str, bytes: &[u8]) {
    for secret in FORBIDDEN {
        assert!(
            !contains(bytes, secret.as_bytes()),
            "{what} holds {secret:?}"
        );
    }
}

/// Every frame payload of every segment, decompressed.
fn decompressed_frames(dir: &Path) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for path in segment_files(dir) {
        let bytes = std::fs::read(&path).unwrap();
        for frame in SegmentLayout::of(&bytes).frames {
            let payload = &bytes[(frame.start + FRAME_HEADER_BYTES) as usize..frame.end as usize];
            frames
                .push(zstd::bulk::decompress(payload, FRAME_RAW_BYTES_MAX).expect("a zstd frame"));
        }
    }
    frames
}

#[test]
fn masked_bytes_never_reach_the_log_files_and_redacted_events_are_marked() {
    let out = tempfile::tempdir().unwrap();
    let requests = 3;
    let (dir, responses) = record(out.path(), requests, Logic::Echo);

    // The service saw the real bytes: the echo carries them back.
    for response in &responses {
        assert!(
            contains(response, TOKEN.as_bytes()),
            "the service saw a mask"
        );
        assert!(contains(response, CARD.as_bytes()));
    }

    // Raw files: segments, index, anything else in the run.
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_no_secret(&path.display().to_string(), &std::fs::read(&path).unwrap());
        files += 1;
    }
    assert!(files >= 2, "segments and index.json");

    // Decompressed frames: the secrets are gone, the masks are there.
    let frames = decompressed_frames(&dir);
    assert!(!frames.is_empty());
    let all: Vec<u8> = frames.concat();
    assert_no_secret("a decompressed frame", &all);
    let masked_token = format!(
        "Authorization: {}",
        "*".repeat("Bearer ".len() + TOKEN.len())
    );
    assert!(contains(&all, masked_token.as_bytes()) || contains(&all, b"Authorization: *"));
    assert!(contains(
        &all,
        format!("card={}&", "*".repeat(CARD.len())).as_bytes()
    ));

    // Every redacted read and write is followed by its marker, whose
    // ranges are masks in the logged payload.
    let events = events(&dir);
    let payload = |event: &Event| -> Option<Vec<u8>> {
        match &event.kind {
            EventKind::TcpRead {
                result: ReadOutcome::Data(bytes),
                ..
            } => Some(bytes.clone()),
            EventKind::TcpWrite {
                result: Ok(written),
                ..
            } => written.bytes.as_ref().map(|bytes| bytes.to_vec()),
            _ => None,
        }
    };
    let mut redacted_reads = 0;
    let mut redacted_writes = 0;
    for marker in &events {
        let EventKind::Redacted { seq_of, ranges } = &marker.kind else {
            continue;
        };
        let target = events
            .iter()
            .find(|event| event.seq == *seq_of)
            .expect("a marker names a logged event");
        assert!(target.seq < marker.seq && target.task == marker.task);
        let bytes = payload(target).expect("a redacted read or kept write");
        for &(start, end) in ranges {
            assert!(bytes[start as usize..end as usize]
                .iter()
                .all(|&b| b == b'*'));
        }
        match target.kind {
            EventKind::TcpRead { .. } => redacted_reads += 1,
            _ => redacted_writes += 1,
        }
    }
    assert!(
        redacted_reads >= requests,
        "{redacted_reads} redacted reads"
    );
    assert_eq!(redacted_writes, requests, "every echo was redacted");

    // The run is private to its owner.
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "run directory");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

#[test]
fn a_service_that_ignores_the_secret_replays_to_the_end_and_counts_what_it_consumed() {
    let out = tempfile::tempdir().unwrap();
    let requests = 3;
    let (dir, _) = record(out.path(), requests, Logic::Echo);
    let (result, stats) = replay(&dir, requests, Logic::Echo);
    if let Err(err) = result {
        panic!("replay of the redacted run failed: {err}");
    }
    assert_eq!(stats.events, stats.log_events, "every event released");
    // Each request brought at least one redacted read; the echoes were
    // redacted writes, which replay masked the same way to compare them.
    assert!(stats.redacted_consumed >= requests as u64, "{stats:?}");
    assert!(
        stats.redacted_events >= stats.redacted_consumed + requests as u64,
        "{stats:?}"
    );
    // Replaying twice gives the same digest.
    let (again, stats_again) = replay(&dir, requests, Logic::Echo);
    again.expect("second replay");
    assert_eq!(stats.digest, stats_again.digest);
}

#[test]
fn a_service_that_checks_the_secret_diverges_naming_the_redacted_read() {
    let out = tempfile::tempdir().unwrap();
    let (dir, responses) = record(out.path(), 1, Logic::CheckToken);
    assert!(
        responses[0].starts_with(b"HTTP/1.1 200 OK"),
        "the recorded service saw the real token"
    );
    let (result, stats) = replay(&dir, 1, Logic::CheckToken);
    let Err(Error::Diverged(divergence)) = result else {
        panic!("replay must diverge: the service saw a masked token");
    };
    // The divergence is the reply (401 instead of 200), right after the
    // service consumed the redacted request.
    let events = events(&dir);
    let diverged_at = divergence.seq().expect("a recorded event");
    let reply = events
        .iter()
        .find(|event| event.seq == diverged_at)
        .unwrap();
    assert!(
        matches!(reply.kind, EventKind::TcpWrite { .. }),
        "{divergence}"
    );
    let last_redacted_read = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Redacted { seq_of, .. } => Some(*seq_of),
            _ => None,
        })
        .filter(|seq| {
            *seq < diverged_at
                && events.iter().any(|event| {
                    event.seq == *seq && matches!(event.kind, EventKind::TcpRead { .. })
                })
        })
        .max()
        .expect("a redacted read before the reply");
    let used = divergence
        .after_redacted
        .as_ref()
        .expect("named in the report");
    assert_eq!(used.seq, last_redacted_read);
    let report = divergence.to_string();
    assert!(
        report.contains(&format!(
            "this divergence follows consumption of redacted data at seq {last_redacted_read} (task 0, conn "
        )),
        "{report}"
    );
    assert!(report.contains("the service saw masks"), "{report}");
    assert!(stats.redacted_consumed >= 1);
}

/// A UDP service: echoes `datagrams` datagrams back to their senders.
async fn udp_echo(addr: Option<mpsc::Sender<SocketAddr>>, datagrams: usize) -> std::io::Result<()> {
    let socket = deja::net::UdpSocket::bind("127.0.0.1:0").await?;
    if let Some(addr) = addr {
        let _ = addr.send(socket.local_addr()?);
    }
    let mut buf = vec![0u8; 2048];
    for _ in 0..datagrams {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        socket.send_to(&buf[..n], peer).await?;
    }
    Ok(())
}

#[test]
fn udp_datagrams_and_sends_are_redacted_and_replay() {
    let out = tempfile::tempdir().unwrap();
    let datagrams = 2;
    let mut runtime = builder()
        .mode(Mode::Record)
        .trace_dir(out.path())
        .keep_write_bytes(true)
        .build()
        .expect("record runtime");
    let dir = runtime.run_dir().expect("run dir").to_path_buf();
    let (tx, rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        let addr = rx
            .recv_timeout(CLIENT_TIMEOUT)
            .expect("the service's address");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        let mut echoes = Vec::new();
        for i in 0..datagrams {
            let message = format!("PING {i}\r\nAuthorization: Bearer {TOKEN}\r\ncard={CARD}\n");
            socket.send_to(message.as_bytes(), addr).unwrap();
            let mut buf = [0u8; 2048];
            let (n, _) = socket.recv_from(&mut buf).expect("echo");
            echoes.push(buf[..n].to_vec());
        }
        echoes
    });
    runtime
        .block_on(udp_echo(Some(tx), datagrams))
        .expect("recorded run")
        .expect("service ok");
    drop(runtime);
    for echo in client.join().expect("client") {
        assert!(contains(&echo, TOKEN.as_bytes()), "the service saw a mask");
    }
    let all: Vec<u8> = decompressed_frames(&dir).concat();
    assert_no_secret("a decompressed frame", &all);
    assert!(contains(&all, b"Authorization: *"));

    let mut replay = builder()
        .mode(Mode::Replay)
        .trace_dir(&dir)
        .stall_wait(Duration::from_millis(500))
        .build()
        .expect("replay runtime");
    let result = replay.block_on(udp_echo(None, datagrams));
    if let Err(err) = result {
        panic!("replay of the redacted UDP run failed: {err}");
    }
    let stats = replay.replay_stats().expect("stats");
    assert_eq!(stats.redacted_consumed, datagrams as u64, "{stats:?}");
    assert_eq!(stats.redacted_events, 2 * datagrams as u64, "{stats:?}");
}
