//! Breakpoints through the replay API: a callback stops at the exact
//! event, sees the service's own state there, and never changes the replay.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use deja::debug::{BreakHit, Halt, Resume};
use deja::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use deja::net::{TcpListener, TcpStream};
use deja::recorder::EventKind;
use deja::{Builder, Error, Mode};

const CLIENTS: usize = 3;
const ORDERS_PER_CLIENT: usize = 4;

/// Orders the service has applied, in the order it applied them.
type Ledger = Arc<Mutex<Vec<String>>>;

/// An order service: each connection sends `order-N` lines; the handler
/// marks the order, applies it to the ledger, then replies `ok order-N`.
async fn orders(ledger: Ledger) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = deja::spawn(async move {
        let mut handlers = Vec::new();
        for _ in 0..CLIENTS {
            let (conn, _) = listener.accept().await?;
            let ledger = Arc::clone(&ledger);
            handlers.push(deja::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Some(order) = lines.next_line().await? {
                    deja::mark("order", &order);
                    ledger.lock().unwrap().push(order.clone());
                    write.write_all(format!("ok {order}\n").as_bytes()).await?;
                }
                Ok::<(), std::io::Error>(())
            }));
        }
        for handler in handlers {
            handler.await.expect("handler")?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        clients.push(deja::spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            let (read, mut write) = stream.into_split();
            let mut replies = BufReader::new(read).lines();
            for n in 0..ORDERS_PER_CLIENT {
                let order = format!("order-{}", client * 10 + n);
                write.write_all(format!("{order}\n").as_bytes()).await?;
                let reply = replies.next_line().await?.unwrap_or_default();
                assert_eq!(reply, format!("ok {order}"));
            }
            Ok::<(), std::io::Error>(())
        }));
    }
    for client in clients {
        client.await.expect("client")?;
    }
    server.await.expect("server")
}

fn record(out: &std::path::Path) -> PathBuf {
    let mut runtime = Builder::new()
        .mode(Mode::Record)
        .trace_dir(out)
        .service("orders")
        .build()
        .unwrap();
    let run = runtime.run_dir().unwrap().to_path_buf();
    runtime
        .block_on(orders(Ledger::default()))
        .unwrap()
        .unwrap();
    run
}

fn replay_builder(run: &std::path::Path) -> Builder {
    Builder::new()
        .mode(Mode::Replay)
        .trace_dir(run)
        .service("orders")
}

/// What the callback saw at one hit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    seq: u64,
    task: u64,
    is_write: bool,
    order_mark: Option<String>,
    ledger: Vec<String>,
}

#[test]
fn a_callback_stops_at_the_order_and_sees_the_ledger_there() {
    let out = tempfile::tempdir().unwrap();
    let run = record(out.path());

    let ledger = Ledger::default();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let mut runtime = {
        let ledger = Arc::clone(&ledger);
        let seen = Arc::clone(&seen);
        replay_builder(&run)
            .break_at("mark=order-12,kind=send")
            .unwrap()
            .on_break(move |hit: &BreakHit<'_>| {
                seen.lock().unwrap().push(Seen {
                    seq: hit.seq(),
                    task: hit.task().0,
                    is_write: matches!(hit.event().kind, EventKind::TcpWrite { .. }),
                    order_mark: hit
                        .mark("order")
                        .map(|value| String::from_utf8_lossy(value).into_owned()),
                    ledger: ledger.lock().unwrap().clone(),
                });
                Resume::Stop
            })
            .build()
            .unwrap()
    };
    let result = runtime.block_on(orders(Arc::clone(&ledger)));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let hit = &seen[0];
    // The reply to order 12 is being written: the order is in the ledger,
    // and it is the last order its handler applied.
    assert!(hit.is_write, "{hit:?}");
    assert_eq!(hit.order_mark.as_deref(), Some("order-12"));
    assert!(hit.ledger.contains(&"order-12".to_string()), "{hit:?}");
    assert!(!hit.ledger.contains(&"order-13".to_string()), "{hit:?}");
    // The callback stopped the replay right there.
    match result {
        Err(Error::Halted { seq, why }) => {
            assert_eq!(seq, hit.seq);
            assert_eq!(why, Halt::Callback);
        }
        other => panic!("expected a halt, got {other:?}"),
    }
    let stats = runtime.replay_stats().unwrap();
    assert!(stats.events < stats.log_events, "{stats:?}");
    assert_eq!(ledger.lock().unwrap().as_slice(), hit.ledger.as_slice());
}

#[test]
fn breakpoints_that_continue_leave_the_replay_unchanged_every_time() {
    let out = tempfile::tempdir().unwrap();
    let run = record(out.path());
    let writes = deja::recorder::RunReader::open(&run)
        .unwrap()
        .filter(|event| matches!(event.as_ref().unwrap().kind, EventKind::TcpWrite { .. }))
        .count();

    let mut plain = replay_builder(&run).build().unwrap();
    plain.block_on(orders(Ledger::default())).unwrap().unwrap();
    let plain = plain.replay_stats().unwrap();
    assert_eq!(plain.events, plain.log_events);

    let mut first_hits = None;
    for _ in 0..5 {
        let hits: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let record_hits = Arc::clone(&hits);
        let mut runtime = replay_builder(&run)
            .break_at("kind=send")
            .unwrap()
            .break_at("seq=1")
            .unwrap()
            .on_break(move |hit: &BreakHit<'_>| {
                record_hits.lock().unwrap().push((hit.seq(), hit.task().0));
                Resume::Continue
            })
            .build()
            .unwrap();
        runtime
            .block_on(orders(Ledger::default()))
            .unwrap()
            .unwrap();
        let stats = runtime.replay_stats().unwrap();
        assert_eq!(stats, plain, "breakpoints changed the replay");
        let hits = hits.lock().unwrap().clone();
        assert_eq!(hits.len(), writes + 1, "every send and seq 1: {hits:?}");
        // Same hits, in the same order, every time.
        match &first_hits {
            None => first_hits = Some(hits),
            Some(first) => assert_eq!(first, &hits),
        }
    }
}

#[test]
fn until_ends_the_replay_successfully_at_the_seq() {
    let out = tempfile::tempdir().unwrap();
    let run = record(out.path());
    let mut runtime = replay_builder(&run).until(20).build().unwrap();
    match runtime.block_on(orders(Ledger::default())) {
        Err(Error::Halted { seq, why }) => {
            assert!(seq >= 20, "{seq}");
            assert_eq!(why, Halt::Until(20));
        }
        other => panic!("expected a halt, got {other:?}"),
    }
}

#[test]
fn a_bad_spec_names_its_term() {
    let err = Builder::new().break_at("kind=send,tsk=3").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`tsk=3`"), "{text}");
    assert!(err.hint().is_some());
}
