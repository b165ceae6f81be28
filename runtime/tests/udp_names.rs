//! tokio's UDP surface recorded and replayed: `lookup_host`, `send_to`
//! and `connect` with `"host:port"`, `send`/`recv` on a connected socket.
//! The peer is a plain std socket on a thread of its own (not recorded);
//! it is gone before the replays, which answer the lookups and datagrams
//! from the log.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{record_with, replay_with};
use deja::net::UdpSocket;

/// Replays of the one recording.
const REPLAYS: usize = 5;
/// Datagrams on the connected socket.
const PINGS: usize = 8;

/// Echoes datagrams until it has answered `count`, then ends.
fn echo_peer(count: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..count {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                return;
            };
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    (addr, thread)
}

async fn service(port: u16, heard: Arc<Mutex<Vec<String>>>) -> io::Result<()> {
    let name = format!("localhost:{port}");
    let addrs: Vec<SocketAddr> = deja::net::lookup_host(name.as_str()).await?.collect();
    heard
        .lock()
        .unwrap()
        .push(format!("lookup {}", addrs.len()));
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    // `localhost` may answer ::1 first; the peer listens on IPv4.
    let peer = SocketAddr::from(([127, 0, 0, 1], port));
    socket
        .send_to(b"hello", &name.replace("localhost", "127.0.0.1"))
        .await?;
    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf).await?;
    heard
        .lock()
        .unwrap()
        .push(format!("{from} {}", String::from_utf8_lossy(&buf[..n])));
    socket.connect(peer).await?;
    for i in 0..PINGS {
        socket.send(format!("ping {i}").as_bytes()).await?;
        let n = socket.recv(&mut buf).await?;
        heard
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    Ok(())
}

#[test]
fn lookups_and_connected_udp_replay_without_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, peer) = echo_peer(1 + PINGS);
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&recorded);
    let run = record_with(dir.path(), "udp-names", move || service(addr.port(), heard));
    peer.join().unwrap();
    let recorded = recorded.lock().unwrap().clone();
    assert_eq!(recorded.len(), 2 + PINGS, "{recorded:?}");
    assert!(recorded[0].starts_with("lookup "), "{recorded:?}");
    assert_eq!(recorded[1], format!("{addr} hello"));

    let events = deja::recorder::RunReader::open(&run)
        .unwrap()
        .map(|event| event.unwrap().kind.name())
        .filter(|name| *name == "lookup")
        .count();
    assert_eq!(events, 1, "one lookup: addresses are not looked up");

    let mut digests = Vec::new();
    for _ in 0..REPLAYS {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let replay_heard = Arc::clone(&heard);
        let (result, stats) = replay_with(&run, "udp-names", move || {
            service(addr.port(), replay_heard)
        });
        result.expect("the replay completes");
        assert_eq!(stats.events, stats.log_events, "every event replayed");
        assert_eq!(*heard.lock().unwrap(), recorded);
        digests.push(stats.digest);
    }
    digests.dedup();
    assert_eq!(digests.len(), 1, "one digest: {digests:x?}");
}

#[test]
fn a_changed_name_diverges_at_the_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, peer) = echo_peer(1 + PINGS);
    let run = record_with(dir.path(), "udp-names", move || {
        service(addr.port(), Arc::default())
    });
    peer.join().unwrap();
    let (result, _) = replay_with(&run, "udp-names", move || {
        service(addr.port() ^ 1, Arc::default())
    });
    let report = result.expect_err("another name diverges").to_string();
    assert!(report.contains("lookup"), "{report}");
}
