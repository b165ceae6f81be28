//! Record's side of every operation: do it for real, log the result.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use deja_recorder::{EventKind, SignalKind, TaskId, TaskOutcome};

use super::{net, Recording};
use crate::backend::{
    self, live, Backend, BoxFuture, Clock, ListenerIo, NewSocket, NewStream, TaskCtx, TimerIo,
    TimerTarget, UdpIo,
};

impl Backend for Arc<Recording> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }

    fn root_seed(&self) -> Option<[u8; 32]> {
        Some(*Recording::root_seed(self))
    }

    fn adopt(&self, tokio_id: tokio::task::Id) -> Option<Arc<TaskCtx>> {
        Recording::adopt(self, tokio_id)
    }

    fn spawn(&self) -> Option<TaskId> {
        let child = self.next_task();
        self.record(EventKind::Spawn { child, name: None });
        Some(child)
    }

    fn task_end(&self, task: TaskId, outcome: TaskOutcome) {
        self.record_for(task, EventKind::TaskEnd { outcome });
    }

    fn mark(&self, name: &str, value: &[u8]) {
        self.record(EventKind::Mark {
            name: name.to_string(),
            value: value.to_vec(),
        });
    }

    fn mark_end(&self, name: &str) {
        self.record(EventKind::MarkEnd {
            name: name.to_string(),
        });
    }

    fn clock_mono(&self) -> u64 {
        self.record_clock()
    }

    fn clock_wall(&self) -> Option<i64> {
        let unix_ns = unix_ns(backend::internal(std::time::SystemTime::now));
        self.record(EventKind::ClockWall { unix_ns });
        Some(unix_ns)
    }

    fn timer(&self, target: TimerTarget) -> Pin<Box<dyn TimerIo>> {
        let origin = self.origin();
        let deadline = match target {
            // deja's own reading, not the service's: unlogged.
            TimerTarget::After(ns) => {
                backend::internal(tokio::time::Instant::now) + std::time::Duration::from_nanos(ns)
            }
            TimerTarget::At(ns) => {
                tokio::time::Instant::from_std(origin + std::time::Duration::from_nanos(ns))
            }
        };
        Box::pin(Timer {
            sleep: tokio::time::sleep_until(deadline),
            timer: backend::next_timer_id(),
            deadline_ns: live::nanos(deadline.into_std().saturating_duration_since(origin)),
            duration_ns: target.duration_ns(),
            recording: Arc::clone(self),
        })
    }

    fn entropy(&self, chunk: &mut [u8]) {
        live::real_entropy(chunk);
        self.record(EventKind::Entropy {
            bytes: chunk.to_vec(),
        });
    }

    fn libc_clock(
        &self,
        clock: Clock,
        task: Option<TaskId>,
        real: &mut dyn FnMut() -> i64,
    ) -> Option<i64> {
        let Some(task) = task else {
            // The driver's first monotonic reading after a turn is the
            // turn's time (see `driver.rs`).
            return match clock {
                Clock::Mono => self.driver_clock(real),
                Clock::Wall => None,
            };
        };
        let value = real();
        self.record_libc_clock(task, clock, value);
        Some(value)
    }

    fn libc_entropy(
        &self,
        out: &mut [u8],
        task: Option<TaskId>,
        real: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> bool {
        let Some(task) = task else {
            return false;
        };
        if !real(out) {
            return false; // the C library reports the failure
        }
        for chunk in out.chunks(deja_recorder::EVENT_PAYLOAD_BYTES_MAX) {
            self.record_libc_entropy(task, chunk);
        }
        true
    }

    fn foreign_connect(&self, peer: &str, task: Option<TaskId>) -> Option<bool> {
        task?;
        self.foreign_socket(peer);
        Some(false)
    }

    fn driver_wait(&self, wait: &mut dyn FnMut(i32) -> i32, timeout_ms: i32) -> Option<i32> {
        Recording::driver_wait(self, wait, timeout_ms)
    }

    fn signal(&self, kinds: &'static [SignalKind]) -> BoxFuture<'static, io::Result<SignalKind>> {
        let recording = Arc::clone(self);
        Box::pin(async move {
            let signal = live::wait_signal(kinds).await?;
            recording.record(EventKind::Signal { signal });
            Ok(signal)
        })
    }

    fn tcp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn ListenerIo>>> {
        Box::pin(net::tcp_bind(Arc::clone(self), addr))
    }

    fn tcp_connect(&self, addr: String) -> BoxFuture<'static, io::Result<NewStream>> {
        Box::pin(net::tcp_connect(Arc::clone(self), addr))
    }

    fn udp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn UdpIo>>> {
        Box::pin(net::udp_bind(Arc::clone(self), addr))
    }

    fn lookup(&self, host: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        Box::pin(net::lookup(Arc::clone(self), host))
    }
}

fn unix_ns(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// A tokio timer whose firing is logged.
struct Timer {
    sleep: tokio::time::Sleep,
    timer: u64,
    deadline_ns: u64,
    duration_ns: Option<u64>,
    recording: Arc<Recording>,
}

impl TimerIo for Timer {
    fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `sleep` is structurally pinned, never moved out; the
        // other fields are never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let sleep = unsafe { Pin::new_unchecked(&mut this.sleep) };
        ready!(std::future::Future::poll(sleep, cx));
        let event = backend::timer_fired(this.timer, this.deadline_ns, this.duration_ns);
        this.recording.record(event);
        Poll::Ready(())
    }
}
