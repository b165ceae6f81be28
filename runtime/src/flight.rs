//! The flight recorder: record all the time, keep only the last N MiB,
//! and keep a window when something goes wrong.
//!
//! With `DEJA_FLIGHT_MIB=N` (or `deja record --flight N`, or
//! [`crate::Builder::flight`]) a recording writes a ring of segments under
//! `<service>-<run id>.flight/` and deletes the oldest past N MiB. The ring
//! is frozen into `<service>-<run id>-kept<K>/` when:
//!
//! - the process receives SIGUSR2,
//! - a task or main panics (before the panic unwinds),
//! - the service calls [`keep`].
//!
//! A clean exit deletes the ring; only kept windows remain.
//!
//! A window that holds the run's start (the ring had not wrapped) replays
//! like any recording. One that starts later cannot be re-executed (the
//! service's memory at the window's start is not in the log), and replay
//! says so, listing the tasks and connections the window refers to that
//! began before it; `deja inspect`, `stats`, `timeline` and `diff` read it.
//!
//! ```no_run
//! // After detecting something odd, keep the last minutes for later.
//! match deja::flight::keep() {
//!     Ok(dir) => eprintln!("kept {}", dir.display()),
//!     Err(err) => eprintln!("nothing kept: {err}"),
//! }
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

use deja_recorder::WriteError;

use crate::record::Recording;

/// Why [`keep`] kept nothing.
#[derive(Debug, thiserror::Error)]
pub enum FlightError {
    /// The process is not recording in flight mode.
    #[error("not a flight recording: record with DEJA_FLIGHT_MIB=N or `deja record --flight N`")]
    NotFlight,
    /// Freezing the ring failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The flight recording of this process, if one is running.
static ACTIVE: Mutex<Option<Weak<Recording>>> = Mutex::new(None);

fn active() -> Option<Arc<Recording>> {
    ACTIVE
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .as_ref()
        .and_then(Weak::upgrade)
}

/// Freeze the flight recorder's ring into a kept run directory and return
/// it. Everything recorded before the call is in the window. Blocks until
/// the writer has done it (at most [`deja_recorder::writer::KEEP_TIMEOUT`]).
pub fn keep() -> Result<PathBuf, FlightError> {
    keep_for("api")
}

fn keep_for(reason: &str) -> Result<PathBuf, FlightError> {
    let recording = active().ok_or(FlightError::NotFlight)?;
    // Keeping waits for the writer, reading the clock: deja's own
    // readings, not the service's.
    Ok(crate::backend::internal(|| recording.keep(reason))?)
}

/// Announce a kept window (or why none was kept) on stderr: the one place
/// an operator looks after a signal or a crash.
fn keep_and_say(reason: &str) {
    match keep_for(reason) {
        Ok(dir) => eprintln!("deja: flight recorder kept {} ({reason})", dir.display()),
        Err(FlightError::NotFlight) => {}
        Err(err) => eprintln!("deja: flight recorder could not keep a window ({reason}): {err}"),
    }
}

/// Make `recording` the process's flight recording: SIGUSR2 and panics
/// keep windows of it from now on.
pub(crate) fn activate(recording: &Arc<Recording>, tokio: &tokio::runtime::Runtime) {
    *ACTIVE.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(Arc::downgrade(recording));
    static PANIC_HOOK: Once = Once::new();
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            keep_and_say("panic");
            previous(info);
        }));
    });
    count_usr2_deliveries();
    // The listener is deja's own task, on the real runtime: not a task of
    // the service, and never recorded.
    tokio.spawn(crate::backend::Internal(async {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
            eprintln!("deja: flight recorder cannot listen for SIGUSR2; keep windows with deja::flight::keep()");
            return;
        };
        while usr2.recv().await.is_some() {
            // Keeping waits for the writer thread: off the worker.
            let _ = tokio::task::spawn_blocking(answer_usr2).await;
        }
    }));
}

/// SIGUSR2 deliveries, counted by a signal handler of deja's own beside
/// tokio's: tokio passes a delivery to the listener task only at its
/// driver's next turn, and a SIGTERM right behind it can end the service
/// before that turn comes.
static USR2_DELIVERED: AtomicU64 = AtomicU64::new(0);
/// Deliveries the listener task has answered with a keep.
static USR2_ANSWERED: AtomicU64 = AtomicU64::new(0);

fn count_usr2_deliveries() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the action only increments an atomic, which is
        // async-signal-safe; signal-hook-registry chains it with tokio's.
        let registered = unsafe {
            signal_hook_registry::register(libc::SIGUSR2, || {
                USR2_DELIVERED.fetch_add(1, Ordering::SeqCst);
            })
        };
        if registered.is_err() {
            eprintln!("deja: flight recorder cannot count SIGUSR2 deliveries; a SIGUSR2 right before the exit may keep nothing");
        }
    });
}

/// Keep one window for every SIGUSR2 delivered and not yet answered. The
/// listener task and the end of the recording both call this, one at a
/// time, so a delivery is answered once, by whichever comes first.
fn answer_usr2() {
    static ANSWERING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = ANSWERING
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let delivered = USR2_DELIVERED.load(Ordering::SeqCst);
    if delivered > USR2_ANSWERED.load(Ordering::SeqCst) {
        USR2_ANSWERED.store(delivered, Ordering::SeqCst);
        keep_and_say("signal");
    }
}

/// The recording ends: nothing is kept from here on, but a SIGUSR2 that
/// came before the end and that the listener had no turn to answer (a
/// SIGTERM right behind it) is answered now, with everything recorded.
pub(crate) fn deactivate() {
    answer_usr2();
    *ACTIVE.lock().unwrap_or_else(|poison| poison.into_inner()) = None;
}
