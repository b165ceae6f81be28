//! A simulated host's side of every operation: the simulated world
//! answers (its clock, its network, the host's seed), and every result is
//! logged as record mode logs it.

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use deja_recorder::{EventKind, SignalKind, TaskId, TaskOutcome, EVENT_PAYLOAD_BYTES_MAX};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::executor::TaskKey;
use super::{net, sockets, Host, TimerKey};
use crate::backend::{
    self, Backend, BoxFuture, Clock, ListenerIo, NewSocket, NewStream, OwnExecutor, OwnTask,
    TaskCtx, TimerIo, TimerTarget, UdpIo,
};

impl Backend for Host {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }

    fn root_seed(&self) -> Option<[u8; 32]> {
        Some(self.root_seed)
    }

    fn adopt(&self, tokio_id: tokio::task::Id) -> Option<Arc<TaskCtx>> {
        Host::adopt(self, tokio_id)
    }

    fn spawn(&self) -> Option<TaskId> {
        let child = self.next_task();
        self.record(EventKind::Spawn { child, name: None });
        Some(child)
    }

    fn own_executor(&self) -> Option<&dyn OwnExecutor> {
        Some(self)
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
        self.record_clock_mono()
    }

    fn clock_wall(&self) -> Option<i64> {
        Some(self.record_clock_wall())
    }

    fn timer(&self, target: TimerTarget) -> Pin<Box<dyn TimerIo>> {
        Box::pin(Timer {
            timer: backend::next_timer_id(),
            deadline_ns: match target {
                TimerTarget::After(ns) => self.mono_ns().saturating_add(ns),
                TimerTarget::At(ns) => ns,
            },
            duration_ns: target.duration_ns(),
            key: None,
        })
    }

    /// No OS entropy in a simulation: the host's seed stands in.
    fn entropy(&self, chunk: &mut [u8]) {
        self.entropy_from_seed(chunk);
    }

    fn libc_clock(
        &self,
        clock: Clock,
        _task: Option<TaskId>,
        _real: &mut dyn FnMut() -> i64,
    ) -> Option<i64> {
        match backend::current_task() {
            Some(_) => Some(Host::libc_clock(self, clock)),
            // tokio's scheduler and timer driver, while the world steps
            // the host's runtime: its virtual clock, unlogged.
            None => super::tokio_rt::driver_clock(self, clock),
        }
    }

    fn libc_entropy(
        &self,
        out: &mut [u8],
        _task: Option<TaskId>,
        _real: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> bool {
        if backend::current_task().is_none() {
            return false;
        }
        self.entropy_from_seed(out);
        true
    }

    fn foreign_connect(&self, _peer: &str, _task: Option<TaskId>) -> Option<bool> {
        None
    }

    fn driver_wait(&self, _wait: &mut dyn FnMut(i32) -> i32, _timeout_ms: i32) -> Option<i32> {
        None
    }

    /// Nobody sends a simulated process a signal: it waits forever.
    fn signal(&self, _kinds: &'static [SignalKind]) -> BoxFuture<'static, io::Result<SignalKind>> {
        Box::pin(std::future::pending())
    }

    fn tcp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn ListenerIo>>> {
        Box::pin(std::future::ready(sockets::tcp_bind(&addr)))
    }

    fn tcp_connect(&self, addr: String) -> BoxFuture<'static, io::Result<NewStream>> {
        Box::pin(sockets::tcp_connect(addr))
    }

    fn udp_bind(&self, addr: String) -> BoxFuture<'static, io::Result<NewSocket<dyn UdpIo>>> {
        Box::pin(std::future::ready(sockets::udp_bind(&addr)))
    }

    fn lookup(&self, host: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        Box::pin(std::future::ready(net::lookup(&host)))
    }
}

impl Host {
    /// Fill `out` for one of this host's tasks: from the host's seed,
    /// logged like an OS draw.
    fn entropy_from_seed(&self, out: &mut [u8]) {
        for chunk in out.chunks_mut(EVENT_PAYLOAD_BYTES_MAX) {
            let (task, index) = backend::next_rng_index();
            let mut rng =
                ChaCha20Rng::from_seed(backend::derive_seed(&self.root_seed, task, index));
            rng.fill_bytes(chunk);
            self.record(EventKind::Entropy {
                bytes: chunk.to_vec(),
            });
        }
    }
}

impl OwnExecutor for Host {
    fn spawn_own(&self, body: Pin<Box<dyn Future<Output = ()>>>) -> Option<Box<dyn OwnTask>> {
        let host = net::current_host().ok()?;
        let key = super::spawn_task(&host, body)?;
        Some(Box::new(SimTask(key)))
    }

    fn task_panicked(&self, message: String) {
        super::task_panicked(message);
    }
}

/// A task on the simulation's executor.
struct SimTask(TaskKey);

impl OwnTask for SimTask {
    fn abort(&self) {
        super::abort(self.0);
    }
}

/// A timer on the simulated clock.
struct Timer {
    timer: u64,
    deadline_ns: u64,
    duration_ns: Option<u64>,
    key: Option<TimerKey>,
}

impl TimerIo for Timer {
    fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Polled outside its simulation (it ended): never fires.
        let Ok(host) = net::current_host() else {
            return Poll::Pending;
        };
        std::task::ready!(super::poll_timer(
            cx,
            &host,
            this.deadline_ns,
            &mut this.key
        ));
        host.record(backend::timer_fired(
            this.timer,
            this.deadline_ns,
            this.duration_ns,
        ));
        Poll::Ready(())
    }
}
