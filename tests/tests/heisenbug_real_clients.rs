//! Real clients, caught in a recording and replayed exactly: the
//! Redis-compatible `resp-kv` server under `redis-benchmark -P 32` loses a
//! command whose bytes are split across two reads, and answers its tail
//! `-ERR Protocol error`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use deja::debug::{BreakHit, Resume};
use deja::recorder::{ConnId, Event, EventKind, ReadOutcome, TaskId};
use deja::Error;
use deja_fixtures::heisenbug::{self, Attempt, Caught, Outside};
use deja_fixtures::resp::{self, Books, ConnView, Load, Options, Shared, SERVICE};
use deja_tests::e2e::log_events;
use deja_tests::heisenbug::assert_diverges_at;

/// Record attempts before giving up: on loopback a pipelined batch of 32
/// commands (about 1.4 KiB) never fits one 1 KiB read, so the first batch
/// of every benchmark connection splits a command; one attempt suffices,
/// three leave room for a run that fails for another reason.
const ATTEMPTS_MAX: u32 = 3;
/// Replays that must all agree.
const REPLAYS: u32 = 20;
/// Requests per benchmark test: enough for several batches per
/// connection, few enough to keep the test well under a second when the
/// bug does not cut the run short.
const REQUESTS: u32 = 4_000;

/// Record the server under pipelined load until a command is lost.
fn catch(out: &Path) -> (Caught<Books>, Options) {
    let mut options = None;
    if !resp::tools_installed() {
        eprintln!("real-clients: redis-benchmark/redis-cli missing; the in-process driver runs");
    }
    let caught = heisenbug::record_until_bug(
        "real-clients",
        ATTEMPTS_MAX,
        |_| {
            let outside = Outside::new()?;
            let load = Load {
                requests: REQUESTS,
                ..Load::default()
            };
            let (attempt, report, used) = resp::record(&outside, out, false, load)?;
            eprintln!(
                "real-clients: {} ({:?}); {:?}",
                report.driver,
                report.rps,
                report.bug()
            );
            // The clients saw what the server's books say.
            assert_eq!(report.error_replies, attempt.outcome.errors.len() as u64);
            assert_eq!(report.first_error, attempt.outcome.first_error_mark());
            assert_eq!(report.bug().is_some(), attempt.outcome.bug().is_some());
            options = Some(used);
            Ok::<Attempt<Books>, anyhow::Error>(attempt)
        },
        Books::bug,
    )
    .expect("recording the lost command");
    (caught, options.expect("an attempt ran"))
}

fn replay_books(
    run: &Path,
    options: &Options,
    configure: impl FnOnce(deja::Builder) -> deja::Builder,
    shared: &Shared,
) -> Result<deja::ReplayStats, Error> {
    heisenbug::replay(run, SERVICE, configure, |ready| {
        resp::serve(options.clone(), Arc::clone(shared), ready)
    })
}

/// Length of the first RESP command (an array of bulk strings) in
/// `bytes`, if it is all there. Written apart from the server's parser,
/// so the test does not trust the code under test to find the split.
fn command_len(bytes: &[u8]) -> Option<usize> {
    fn line(bytes: &[u8], at: usize, prefix: u8) -> Option<(usize, usize)> {
        if *bytes.get(at)? != prefix {
            return None;
        }
        let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&bytes[at + 1..end])
            .ok()?
            .parse()
            .ok()?;
        Some((n, end + 2))
    }
    let (args, mut at) = line(bytes, 0, b'*')?;
    for _ in 0..args {
        let (len, start) = line(bytes, at, b'$')?;
        at = start + len + 2;
        if bytes.len() < at {
            return None;
        }
    }
    Some(at)
}

/// Bytes of whole commands at the start of `stream`.
fn whole_commands(stream: &[u8]) -> usize {
    let mut at = 0;
    while let Some(len) = command_len(&stream[at..]) {
        at += len;
    }
    at
}

#[test]
fn replay_reproduces_the_lost_command_20_times_out_of_20() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    eprintln!(
        "caught after {} attempt(s): {}",
        caught.attempts, caught.bug
    );
    let started = std::time::Instant::now();
    let (replayed, digest) = heisenbug::replay_times(REPLAYS, || {
        let shared = Shared::default();
        let stats = replay_books(&caught.run, &options, |b| b, &shared)?;
        let books = shared.lock().unwrap().clone();
        Ok((books, stats))
    })
    .unwrap();
    assert_eq!(replayed, caught.outcome, "replay gives the recorded books");
    assert_eq!(replayed.bug(), Some(caught.bug.clone()));
    eprintln!(
        "{REPLAYS} replays in {:?} (offline), digest {digest:016x}: {}",
        started.elapsed(),
        caught.bug
    );
}

/// What a callback saw at the `cmd` mark of the first command answered
/// with an error.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    task: TaskId,
    view: ConnView,
    errors_before: usize,
}

#[test]
fn a_breakpoint_on_the_split_command_sees_its_head_dropped_by_the_previous_read() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let first = caught.outcome.errors[0].clone();
    let mark = resp::cmd_mark(first.conn, first.cmd);
    let spec = format!("mark=cmd:{mark},kind=mark");
    let shared = Shared::default();
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let result = {
        let (shared_in_cb, seen) = (Arc::clone(&shared), Arc::clone(&seen));
        replay_books(
            &caught.run,
            &options,
            move |builder| {
                builder
                    .break_at(&spec)
                    .unwrap()
                    .on_break(move |hit: &BreakHit<'_>| {
                        let books = shared_in_cb.lock().unwrap();
                        *seen.lock().unwrap() = Some(Seen {
                            seq: hit.seq(),
                            task: hit.task(),
                            view: books.conns[&first.conn].clone(),
                            errors_before: books.errors.len(),
                        });
                        Resume::Stop
                    })
            },
            &shared,
        )
    };
    let seen = seen.lock().unwrap().clone().expect("the breakpoint hit");
    match result {
        Err(Error::Halted { seq, .. }) => assert_eq!(seq, seen.seq),
        other => panic!("expected the callback's stop, got {other:?}"),
    }
    eprintln!(
        "stopped at seq {} ({mark}): dropped {:?}, this read starts {:?}",
        seen.seq,
        String::from_utf8_lossy(&seen.view.dropped),
        String::from_utf8_lossy(&seen.view.last_read[..seen.view.last_read.len().min(40)])
    );
    // Right before the faulty command: nothing answered with an error yet.
    assert_eq!(seen.errors_before, 0, "{seen:?}");
    assert_eq!(seen.view.commands, first.cmd - 1, "{seen:?}");
    // The state that explains the bug: the previous read ended with the
    // head of a command, which the parser dropped; this read starts with
    // the rest, which is no command on its own but completes the head.
    let view = &seen.view;
    assert!(view.dropped.starts_with(b"*"), "{view:?}");
    assert!(command_len(&view.dropped).is_none(), "{view:?}");
    assert!(!view.last_read.starts_with(b"*"), "{view:?}");
    let joined = [view.dropped.as_slice(), &view.last_read].concat();
    let len = command_len(&joined).expect("head and tail make one command");
    assert!(len > view.dropped.len(), "{view:?}");
    // And that is exactly how the recording chunked the stream: one task
    // serves every connection, so the last read before the stop is the
    // one that brought the tail, and that connection's read before it
    // ended with the head.
    let events = log_events(&caught.run);
    let data = |e: &Event| match &e.kind {
        EventKind::TcpRead {
            conn,
            result: ReadOutcome::Data(bytes),
        } => Some((*conn, bytes.clone())),
        _ => None,
    };
    let (conn, last) = events
        .iter()
        .filter(|e| e.task == seen.task && e.seq < seen.seq)
        .filter_map(data)
        .next_back()
        .expect("a read before the stop");
    assert_eq!(last, view.last_read);
    let previous = events
        .iter()
        .filter(|e| e.seq < seen.seq)
        .filter_map(data)
        .filter(|(c, _)| *c == conn)
        .map(|(_, bytes)| bytes)
        .nth_back(1)
        .expect("two reads on the connection");
    assert!(previous.ends_with(&view.dropped));
    assert!(whole_commands(&previous) < previous.len());
}

#[test]
fn the_fixed_parser_diverges_at_the_reply_to_the_first_split_command() {
    let out = tempfile::tempdir().unwrap();
    let (caught, options) = catch(out.path());
    let expected = first_split_reply(&log_events(&caught.run));
    let fixed = Options {
        fixed: true,
        ..options
    };
    let shared = Shared::default();
    assert_diverges_at(replay_books(&caught.run, &fixed, |b| b, &shared), expected);
}

/// Where keeping the partial tail first changes behaviour, from the log
/// alone: per connection, the first read after which the stream ends
/// mid-command, then the next read (which brings the rest); the first
/// operation after that which differs is the reply write (the buggy
/// server answers an error where the fixed one runs the command), or, if
/// that read still did not complete the command, whatever the buggy
/// server did next. The earliest over all connections. Returns its seq
/// and task.
fn first_split_reply(events: &[Event]) -> (u64, TaskId) {
    use std::collections::BTreeMap;
    let mut streams: BTreeMap<ConnId, Vec<u8>> = BTreeMap::new();
    let mut splits: BTreeMap<ConnId, (TaskId, u64)> = BTreeMap::new();
    let mut first: Option<(u64, TaskId)> = None;
    for event in events {
        let EventKind::TcpRead {
            conn,
            result: ReadOutcome::Data(bytes),
        } = &event.kind
        else {
            continue;
        };
        let stream = streams.entry(*conn).or_default();
        stream.extend_from_slice(bytes);
        let ends_mid_command = whole_commands(stream) < stream.len();
        match splits.get(conn) {
            None if ends_mid_command => {
                splits.insert(*conn, (event.task, event.seq));
            }
            Some(&(task, split)) if split != u64::MAX => {
                // The read after the split.
                let after = events
                    .iter()
                    .filter(|e| e.seq > event.seq && e.task == task);
                let conn = *conn;
                let differs = if whole_commands(stream)
                    > whole_commands(&stream[..stream.len() - bytes.len()])
                {
                    after.clone().find(
                        |e| matches!(e.kind, EventKind::TcpWrite { conn: c, .. } if c == conn),
                    )
                } else {
                    after.clone().next()
                };
                let differs = differs.expect("the buggy server answers the tail");
                if first.is_none_or(|(seq, _)| differs.seq < seq) {
                    first = Some((differs.seq, task));
                }
                splits.insert(conn, (task, u64::MAX));
            }
            _ => {}
        }
    }
    first.expect("a lost command means a read ended mid-command")
}
