//! Replay's side of every operation: ask the gate for the recorded result.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use deja_recorder::{Event, EventKind, SignalKind, TaskId, TaskOutcome};
use deja_replayer::gate::{self, Call};

use super::net::{self, replay_call, unexpected};
use super::{poll, Replay};
use crate::backend::{
    self, Backend, BoxFuture, Clock, ListenerIo, NewSocket, NewStream, TaskCtx, TimerIo,
    TimerTarget, UdpIo,
};

/// How long a replay's driver sleeps before it looks again whether the
/// cursor reached a recorded turn.
const TURN_RECHECK_MS: i32 = 2;

impl Backend for Replay {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }

    fn root_seed(&self) -> Option<[u8; 32]> {
        Some(Replay::root_seed(self))
    }

    fn adopt(&self, tokio_id: tokio::task::Id) -> Option<Arc<TaskCtx>> {
        Replay::adopt(self, tokio_id)
    }

    fn spawn(&self) -> Option<TaskId> {
        Some(match self.claim(backend::task_id(), &Call::Spawn) {
            Some(Event {
                kind: EventKind::Spawn { child, .. },
                ..
            }) => child,
            _ => self.beyond_log_task(),
        })
    }

    fn task_end(&self, task: TaskId, outcome: TaskOutcome) {
        self.claim(task, &Call::TaskEnd { outcome });
    }

    fn mark(&self, name: &str, value: &[u8]) {
        self.claim(backend::task_id(), &Call::Mark { name, value });
    }

    fn mark_end(&self, name: &str) {
        self.claim(backend::task_id(), &Call::MarkEnd { name });
    }

    fn clock_mono(&self) -> u64 {
        match self.claim(backend::task_id(), &Call::ClockMono) {
            Some(Event {
                kind: EventKind::ClockMono { ns },
                ..
            }) => ns,
            _ => self.now_ns(),
        }
    }

    fn clock_wall(&self) -> Option<i64> {
        Some(match self.claim(backend::task_id(), &Call::ClockWall) {
            Some(Event {
                kind: EventKind::ClockWall { unix_ns },
                ..
            }) => unix_ns,
            _ => self.wall_ns(),
        })
    }

    fn timer(&self, target: TimerTarget) -> Pin<Box<dyn TimerIo>> {
        Box::pin(Timer {
            timer: backend::next_timer_id(),
            target: match target {
                TimerTarget::After(duration_ns) => gate::TimerTarget::After { duration_ns },
                TimerTarget::At(deadline_ns) => gate::TimerTarget::At { deadline_ns },
            },
        })
    }

    fn entropy(&self, chunk: &mut [u8]) {
        match self.claim(backend::task_id(), &Call::Entropy { len: chunk.len() }) {
            Some(Event {
                kind: EventKind::Entropy { bytes },
                ..
            }) if bytes.len() == chunk.len() => chunk.copy_from_slice(&bytes),
            _ => chunk.fill(0),
        }
    }

    fn libc_clock(
        &self,
        clock: Clock,
        task: Option<TaskId>,
        _real: &mut dyn FnMut() -> i64,
    ) -> Option<i64> {
        Some(Replay::libc_clock(self, clock, task))
    }

    fn libc_entropy(
        &self,
        out: &mut [u8],
        task: Option<TaskId>,
        _real: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> bool {
        Replay::libc_entropy(self, out, task);
        true
    }

    fn foreign_connect(&self, peer: &str, task: Option<TaskId>) -> Option<bool> {
        self.foreign_socket(peer, task);
        Some(true)
    }

    /// When the log's next event is a turn, it is passed and the wait
    /// returns at once (nothing replay needs is in the kernel: replay
    /// opens no sockets; a wake-up left there is taken at the next real
    /// wait). Otherwise the runtime waits as asked, in slices, passing the
    /// turn as soon as the cursor reaches it (a blocking task may get it
    /// there while the driver sleeps).
    fn driver_wait(&self, wait: &mut dyn FnMut(i32) -> i32, timeout_ms: i32) -> Option<i32> {
        if !self.has_turns() {
            return None;
        }
        let pass = || backend::internal(|| self.driver_turn());
        if pass() {
            return Some(0);
        }
        let started = deja_recorder::clock::mono_ns();
        let limit_ns = u64::try_from(timeout_ms).ok().map(|ms| ms * 1_000_000);
        loop {
            let waited_ns = deja_recorder::clock::mono_ns().saturating_sub(started);
            let left_ms = match limit_ns {
                Some(limit) if waited_ns >= limit => return Some(0),
                Some(limit) => {
                    ((limit - waited_ns).div_ceil(1_000_000) as i32).min(TURN_RECHECK_MS)
                }
                None => TURN_RECHECK_MS,
            };
            let ready = wait(left_ms);
            if ready != 0 || pass() {
                return Some(ready);
            }
        }
    }

    fn signal(&self, _kinds: &'static [SignalKind]) -> BoxFuture<'static, io::Result<SignalKind>> {
        Box::pin(async {
            let event = replay_call(Call::Signal).await;
            match event.kind {
                EventKind::Signal { signal } => Ok(signal),
                _ => Err(unexpected(&event)),
            }
        })
    }

    fn tcp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn ListenerIo>>> {
        Box::pin(net::tcp_bind(addr))
    }

    fn tcp_connect(&self, addr: String) -> BoxFuture<'static, io::Result<NewStream>> {
        Box::pin(net::tcp_connect(addr))
    }

    fn udp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn UdpIo>>> {
        Box::pin(net::udp_bind(addr))
    }

    fn lookup(&self, host: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        Box::pin(net::lookup(host))
    }
}

/// A timer: it fires when the gate releases its recorded firing.
struct Timer {
    timer: u64,
    target: gate::TimerTarget,
}

impl TimerIo for Timer {
    fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let call = Call::Timer {
            timer: self.timer,
            target: self.target,
        };
        poll(cx, &call).map(drop)
    }
}
