//! The golden log of format version 1 in `fixtures/golden/v1/` must keep
//! reading, event for event, in every later build.
//!
//! Regenerate (only when deliberately creating a new golden, never to make
//! this test pass): `DEJA_REGENERATE_GOLDEN=1 cargo test -p deja-tests --test log_golden`.

use std::net::SocketAddr;
use std::path::PathBuf;

use deja_recorder::format::FORMAT_VERSION;
use deja_recorder::{
    Accepted, ConnId, Connected, Datagram, Event, EventKind, GapReason, IoErrorKind, LogEnd,
    LogWriter, ReadOutcome, RunMeta, SignalKind, TaskId, TaskOutcome, WriterConfig, Written,
};

/// Every event kind of format v1 at least once, in a plausible order.
fn golden_v1_events() -> Vec<Event> {
    let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:51234".parse().unwrap();
    let peer6: SocketAddr = "[::1]:9000".parse().unwrap();
    let kinds = vec![
        (0, EventKind::RootSeed { seed: [0xab; 32] }),
        (
            0,
            EventKind::ClockWall {
                unix_ns: 1_795_435_200_000_000_000,
            },
        ),
        (0, EventKind::ClockMono { ns: 1_000 }),
        (
            0,
            EventKind::TcpListen {
                listener: ConnId(1),
                addr: "127.0.0.1:7000".into(),
                result: Ok(local),
            },
        ),
        (
            0,
            EventKind::TcpAccept {
                listener: ConnId(1),
                result: Ok(Accepted {
                    conn: ConnId(2),
                    peer,
                    local,
                }),
            },
        ),
        (
            0,
            EventKind::Spawn {
                child: TaskId(1),
                name: Some("conn".into()),
            },
        ),
        (
            1,
            EventKind::TcpRead {
                conn: ConnId(2),
                result: ReadOutcome::Data(b"GET /order/42 HTTP/1.1\r\n\r\n".to_vec()),
            },
        ),
        (
            1,
            EventKind::Mark {
                name: "order".into(),
                value: b"42".to_vec(),
            },
        ),
        (
            1,
            EventKind::Entropy {
                bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
            },
        ),
        (
            1,
            EventKind::TcpConnect {
                conn: ConnId(3),
                addr: "payments:9000".into(),
                result: Ok(Connected { local, peer: peer6 }),
            },
        ),
        (
            1,
            EventKind::TcpWrite {
                conn: ConnId(3),
                result: Ok(Written::of(b"CHARGE 42\n", true)),
            },
        ),
        (
            1,
            EventKind::TimerFired {
                timer: 7,
                deadline_ns: 5_000_000,
            },
        ),
        (
            1,
            EventKind::TcpRead {
                conn: ConnId(3),
                result: ReadOutcome::Error(IoErrorKind::ConnectionReset),
            },
        ),
        (
            1,
            EventKind::TcpRead {
                conn: ConnId(2),
                result: ReadOutcome::Eof,
            },
        ),
        (
            1,
            EventKind::TcpWrite {
                conn: ConnId(2),
                result: Err(IoErrorKind::BrokenPipe),
            },
        ),
        (
            1,
            EventKind::TcpShutdown {
                conn: ConnId(2),
                result: Ok(()),
            },
        ),
        (1, EventKind::TcpClose { conn: ConnId(2) }),
        (
            1,
            EventKind::TaskEnd {
                outcome: TaskOutcome::Completed,
            },
        ),
        (
            0,
            EventKind::UdpBind {
                socket: ConnId(4),
                addr: "0.0.0.0:0".into(),
                result: Err(IoErrorKind::AddrInUse),
            },
        ),
        (
            0,
            EventKind::UdpSend {
                socket: ConnId(4),
                peer,
                result: Ok(Written::of(b"ping", false)),
            },
        ),
        (
            0,
            EventKind::UdpRecv {
                socket: ConnId(4),
                result: Ok(Datagram {
                    peer,
                    bytes: b"pong".to_vec(),
                }),
            },
        ),
        (
            0,
            EventKind::Signal {
                signal: SignalKind::Terminate,
            },
        ),
        (0, EventKind::Exit { code: 3 }),
    ];
    let mut events: Vec<Event> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, (task, kind))| Event {
            seq: i as u64,
            task: TaskId(task),
            mono_ns: i as u64 * 1_000_000,
            kind,
        })
        .collect();
    // Seqs 23..26 lost, then the gap that says so, then one more event.
    events.push(Event {
        seq: 26,
        task: TaskId(0),
        mono_ns: 30_000_000,
        kind: EventKind::Gap {
            first_lost_seq: 23,
            lost: 3,
            reason: GapReason::QueueFull,
        },
    });
    events.push(Event {
        seq: 27,
        task: TaskId(0),
        mono_ns: 31_000_000,
        kind: EventKind::ClockMono { ns: 31_000_000 },
    });
    events
}

fn golden_meta() -> RunMeta {
    RunMeta {
        host: "golden-host".into(),
        pid: 4242,
        start_wall_unix_ns: 1_795_435_200_000_000_000,
        root_seed: Some([0xab; 32]),
        deja_version: "0.1.0".into(),
        argv: vec!["checkout".into(), "--port".into(), "7000".into()],
        env: vec![("DEJA_MODE".into(), "record".into())],
        ..RunMeta::new("golden", "v1")
    }
}

fn golden_run_dir() -> PathBuf {
    deja_fixtures::golden_dir().join("v1").join("golden-v1")
}

/// Write the golden run: small segments so it holds a rotation (a footer
/// that continues) and several frames per segment.
fn regenerate() {
    let dir = golden_run_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let config = WriterConfig {
        segment_bytes_max: 600,
        ..WriterConfig::default()
    };
    let mut writer = LogWriter::create(dir.parent().unwrap(), golden_meta(), config).unwrap();
    for chunk in golden_v1_events().chunks(3) {
        writer.write(chunk).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn golden_v1_log_still_reads() {
    if std::env::var_os("DEJA_REGENERATE_GOLDEN").is_some() {
        regenerate();
    }
    assert_eq!(
        FORMAT_VERSION, 1,
        "a new format version needs its own golden directory"
    );
    let dir = golden_run_dir();
    let (events, end) = deja_tests::read_run(&dir);
    assert_eq!(end.expect("golden log reads"), LogEnd::Clean);
    let expected = golden_v1_events();
    for (got, want) in events.iter().zip(&expected) {
        assert_eq!(got, want, "golden event #{} differs", want.seq);
    }
    assert_eq!(events.len(), expected.len());

    let reader = deja_recorder::RunReader::open(&dir).unwrap();
    let header = reader.header().expect("header");
    assert_eq!(header.run, golden_meta());
    let segments = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("deja".as_ref()))
        .count();
    assert!(
        segments >= 2,
        "the golden log must span a rotation, has {segments} segment(s)"
    );
}
