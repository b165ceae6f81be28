//! End-to-end tests across deja's crates live in `tests/tests/`, named by
//! area (`log_*.rs` for the format); the CLI's own tests are in `cli/tests/`
//! because they need its binary;
//! this library holds what they share: deterministic sample events,
//! proptest strategies for every event kind, and run-writing helpers.
//!
//! ```
//! let out = tempfile::tempdir()?;
//! let dir = deja_tests::write_run(out.path(), &deja_tests::sample_events(3), Default::default());
//! let (events, end) = deja_tests::read_run(&dir);
//! assert_eq!(events.len(), 3);
//! assert_eq!(end.unwrap(), deja_tests::recorder::LogEnd::Clean);
//! # Ok::<(), std::io::Error>(())
//! ```

pub use deja_recorder as recorder;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use deja_recorder::{
    Accepted, ConnId, Connected, Datagram, Event, EventKind, GapReason, IoErrorKind, LogEnd,
    LogWriter, ReadError, ReadOutcome, RunMeta, RunReader, SignalKind, TaskId, TaskOutcome,
    WriterConfig, Written,
};
use proptest::prelude::*;

/// A deterministic event stream: the same `i` always gives the same event,
/// so a reader can check what it got against what was sent.
pub fn sample_kind(i: u64) -> EventKind {
    match i % 5 {
        0 => EventKind::ClockMono { ns: i * 1000 },
        1 => EventKind::TcpRead {
            conn: ConnId(i % 7),
            result: ReadOutcome::Data(format!("GET /item/{i} HTTP/1.1\r\n").into_bytes()),
        },
        2 => EventKind::Spawn {
            child: TaskId(i),
            name: None,
        },
        3 => EventKind::Mark {
            name: "order".into(),
            value: i.to_le_bytes().to_vec(),
        },
        _ => EventKind::ClockWall {
            unix_ns: 1_700_000_000_000_000_000 + i as i64,
        },
    }
}

/// `count` sample kinds.
pub fn sample_events(count: u64) -> Vec<EventKind> {
    (0..count).map(sample_kind).collect()
}

/// Number the kinds as a recorder would: seq = index, task = index % 4,
/// time = index microseconds.
pub fn number(kinds: &[EventKind]) -> Vec<Event> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| Event {
            seq: i as u64,
            task: TaskId(i as u64 % 4),
            mono_ns: i as u64 * 1000,
            kind: kind.clone(),
        })
        .collect()
}

/// Write `kinds` (numbered by [`number`]) as a closed run under `out` with a
/// fixed [`RunMeta`], one `LogWriter::write` call per event so each event
/// is its own frame; returns the run directory.
pub fn write_run(out: &Path, kinds: &[EventKind], config: WriterConfig) -> PathBuf {
    let mut writer =
        LogWriter::create(out, RunMeta::new("sample", "run"), config).expect("create run");
    for event in number(kinds) {
        writer.write(std::slice::from_ref(&event)).expect("write");
    }
    let dir = writer.dir().to_path_buf();
    writer.finish().expect("finish");
    dir
}

/// Read a run to its end: the events read before any error, and how it ended.
pub fn read_run(dir: &Path) -> (Vec<Event>, Result<LogEnd, ReadError>) {
    let mut reader = match RunReader::open(dir) {
        Ok(reader) => reader,
        Err(err) => return (Vec::new(), Err(err)),
    };
    let mut events = Vec::new();
    for item in reader.by_ref() {
        match item {
            Ok(event) => events.push(event),
            Err(err) => return (events, Err(err)),
        }
    }
    let end = reader
        .end()
        .cloned()
        .expect("a finished reader knows its end");
    (events, Ok(end))
}

/// The single segment file of a run written by [`write_run`] without rotation.
pub fn only_segment(dir: &Path) -> PathBuf {
    dir.join(deja_recorder::format::segment_file_name(0))
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn arb_io_error() -> impl Strategy<Value = IoErrorKind> {
    prop_oneof![
        Just(IoErrorKind::ConnectionReset),
        Just(IoErrorKind::ConnectionRefused),
        Just(IoErrorKind::TimedOut),
        Just(IoErrorKind::BrokenPipe),
        Just(IoErrorKind::Other),
    ]
}

fn arb_written() -> impl Strategy<Value = Written> {
    (arb_bytes(64), any::<bool>()).prop_map(|(bytes, keep)| Written::of(&bytes, keep))
}

fn arb_result<T: std::fmt::Debug + Clone>(
    ok: impl Strategy<Value = T>,
) -> impl Strategy<Value = Result<T, IoErrorKind>> {
    prop_oneof![ok.prop_map(Ok), arb_io_error().prop_map(Err)]
}

/// Any event kind except `Gap` (whose seqs must line up with the stream's
/// holes), with payloads up to 300 bytes.
pub fn arb_event_kind() -> impl Strategy<Value = EventKind> {
    let conn = any::<u64>().prop_map(ConnId);
    prop_oneof![
        any::<u64>().prop_map(|ns| EventKind::ClockMono { ns }),
        any::<i64>().prop_map(|unix_ns| EventKind::ClockWall { unix_ns }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(timer, deadline_ns)| EventKind::TimerFired { timer, deadline_ns }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(timer, deadline_ns, duration_ns)| {
            EventKind::TimerSlept {
                timer,
                deadline_ns,
                duration_ns,
            }
        }),
        conn.clone()
            .prop_map(|socket| EventKind::UdpClose { socket }),
        "[a-z.]{0,12}".prop_map(|name| EventKind::MarkEnd { name }),
        any::<[u8; 32]>().prop_map(|seed| EventKind::RootSeed { seed }),
        arb_bytes(64).prop_map(|bytes| EventKind::Entropy { bytes }),
        (conn.clone(), "[a-z0-9.:]{0,20}", arb_result(arb_addr())).prop_map(
            |(listener, addr, result)| EventKind::TcpListen {
                listener,
                addr,
                result
            }
        ),
        (
            conn.clone(),
            arb_result((conn.clone(), arb_addr(), arb_addr()))
        )
            .prop_map(|(listener, result)| EventKind::TcpAccept {
                listener,
                result: result.map(|(conn, peer, local)| Accepted { conn, peer, local }),
            }),
        (
            conn.clone(),
            "[a-z0-9.:]{0,20}",
            arb_result((arb_addr(), arb_addr()))
        )
            .prop_map(|(conn, addr, result)| EventKind::TcpConnect {
                conn,
                addr,
                result: result.map(|(local, peer)| Connected { local, peer }),
            }),
        (
            conn.clone(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..300).prop_map(ReadOutcome::Data),
                Just(ReadOutcome::Eof),
                arb_io_error().prop_map(ReadOutcome::Error),
            ]
        )
            .prop_map(|(conn, result)| EventKind::TcpRead { conn, result }),
        (conn.clone(), arb_result(arb_written()))
            .prop_map(|(conn, result)| EventKind::TcpWrite { conn, result }),
        (conn.clone(), arb_result(Just(())))
            .prop_map(|(conn, result)| EventKind::TcpShutdown { conn, result }),
        conn.clone().prop_map(|conn| EventKind::TcpClose { conn }),
        (conn.clone(), "[a-z0-9.:]{0,20}", arb_result(arb_addr())).prop_map(
            |(socket, addr, result)| EventKind::UdpBind {
                socket,
                addr,
                result
            }
        ),
        (conn.clone(), arb_addr(), arb_result(arb_written())).prop_map(|(socket, peer, result)| {
            EventKind::UdpSend {
                socket,
                peer,
                result,
            }
        }),
        (conn, arb_result((arb_addr(), arb_bytes(128)))).prop_map(|(socket, result)| {
            EventKind::UdpRecv {
                socket,
                result: result.map(|(peer, bytes)| Datagram { peer, bytes }),
            }
        }),
        (any::<u64>(), proptest::option::of("\\PC{0,12}")).prop_map(|(child, name)| {
            EventKind::Spawn {
                child: TaskId(child),
                name,
            }
        }),
        prop_oneof![
            Just(TaskOutcome::Completed),
            Just(TaskOutcome::Panicked),
            Just(TaskOutcome::Cancelled)
        ]
        .prop_map(|outcome| EventKind::TaskEnd { outcome }),
        ("\\PC{0,12}", arb_bytes(64)).prop_map(|(name, value)| EventKind::Mark { name, value }),
        prop_oneof![
            Just(SignalKind::Interrupt),
            Just(SignalKind::Terminate),
            any::<i32>().prop_map(SignalKind::Other)
        ]
        .prop_map(|signal| EventKind::Signal { signal }),
        any::<i32>().prop_map(|code| EventKind::Exit { code }),
        (
            any::<u64>(),
            proptest::collection::vec((any::<u32>(), any::<u32>()), 0..8)
        )
            .prop_map(|(seq_of, ranges)| EventKind::Redacted { seq_of, ranges }),
    ]
}

/// Any well-formed event stream: kinds from [`arb_event_kind`] with
/// increasing seqs, where some stretches of seqs are lost and the `Gap`
/// event that follows accounts for them exactly.
pub fn arb_event_stream(max_len: usize) -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec(
        (arb_event_kind(), 0u64..4, any::<u64>(), any::<u64>()),
        0..max_len,
    )
    .prop_map(|items| {
        let mut next_seq = 0u64;
        let mut events = Vec::with_capacity(items.len());
        for (kind, lost_roll, task, mono_ns) in items {
            // One stretch in four loses 1..=3 seqs before a gap event.
            if lost_roll == 0 && !events.is_empty() {
                let lost = 1 + task % 3;
                events.push(Event {
                    seq: next_seq + lost,
                    task: TaskId(task % 8),
                    mono_ns,
                    kind: EventKind::Gap {
                        first_lost_seq: next_seq,
                        lost,
                        reason: GapReason::QueueFull,
                    },
                });
                next_seq += lost + 1;
            }
            events.push(Event {
                seq: next_seq,
                task: TaskId(task % 8),
                mono_ns,
                kind,
            });
            next_seq += 1;
        }
        events
    })
}

/// Where the records of an intact segment file sit (the byte layout of
/// `deja_recorder::format`): for tests that cut or damage a log exactly at,
/// or inside, a given record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    /// End of the segment header: where the first frame starts.
    pub header_end: u64,
    /// Every frame, in file order.
    pub frames: Vec<FrameSpan>,
    /// Where the 40-byte footer starts, if the segment has one.
    pub footer_start: Option<u64>,
    /// The file's length.
    pub len: u64,
}

/// One frame of a [`SegmentLayout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    /// Offset of its 32-byte header.
    pub start: u64,
    /// Offset just past its payload.
    pub end: u64,
    /// Events in it (the header's `events` field).
    pub events: u32,
    /// The header's `first_seq` field.
    pub first_seq: u64,
}

/// Segment header prefix: magic, version, body length, crc.
pub const SEGMENT_PREFIX_BYTES: u64 = 20;
/// Frame header: magic, payload_len, raw_len, events, first_seq, two crcs.
pub const FRAME_HEADER_BYTES: u64 = 32;
/// Footer: magic, frames, events, last_seq, frames_crc, flags, crc.
pub const FOOTER_BYTES: u64 = 40;

impl FrameSpan {
    /// Offset of the byte in the middle of the payload: damage or a cut
    /// there lands inside the frame, past its header.
    pub fn payload_middle(&self) -> u64 {
        let payload_start = self.start + FRAME_HEADER_BYTES;
        payload_start + (self.end - payload_start) / 2
    }
}

impl SegmentLayout {
    /// Walk the frame headers of an intact segment file (header, frames,
    /// optional footer). Panics if `bytes` is not laid out that way.
    pub fn of(bytes: &[u8]) -> SegmentLayout {
        let len = bytes.len() as u64;
        let u32_at = |at: u64| {
            let at = at as usize;
            u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
        };
        assert!(len >= SEGMENT_PREFIX_BYTES && bytes.starts_with(b"DEJALOG\0"));
        let header_end = SEGMENT_PREFIX_BYTES + u64::from(u32_at(12));
        let mut frames = Vec::new();
        let mut at = header_end;
        while at + FRAME_HEADER_BYTES <= len && &bytes[at as usize..at as usize + 4] == b"DJFR" {
            let end = at + FRAME_HEADER_BYTES + u64::from(u32_at(at + 4));
            assert!(
                end <= len,
                "frame at byte {at} runs past the end of the file"
            );
            let first_seq = u64::from_le_bytes(
                bytes[at as usize + 16..at as usize + 24]
                    .try_into()
                    .unwrap(),
            );
            frames.push(FrameSpan {
                start: at,
                end,
                events: u32_at(at + 12),
                first_seq,
            });
            at = end;
        }
        let footer_start = (at < len).then_some(at);
        if let Some(footer) = footer_start {
            assert!(
                len - footer == FOOTER_BYTES
                    && &bytes[footer as usize..footer as usize + 4] == b"DJFT",
                "expected a footer or the end at byte {footer}"
            );
        }
        SegmentLayout {
            header_end,
            frames,
            footer_start,
            len,
        }
    }

    /// Events in the whole segment.
    pub fn events(&self) -> u64 {
        self.frames
            .iter()
            .map(|frame| u64::from(frame.events))
            .sum()
    }

    /// Record boundaries a writer can stop at: the end of the header and
    /// the end of every frame (not the end of the footer).
    pub fn boundaries(&self) -> Vec<u64> {
        std::iter::once(self.header_end)
            .chain(self.frames.iter().map(|frame| frame.end))
            .collect()
    }
}

/// The segment files of a run directory, in order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for index in 0u32.. {
        let path = dir.join(deja_recorder::format::segment_file_name(index));
        if !path.exists() {
            break;
        }
        files.push(path);
    }
    files
}
pub mod e2e;
pub mod heisenbug;
pub mod servers;
