//! Fault injection for the writer's segment writes, for tests.
//!
//! A [`FaultPlan`] in [`super::WriterConfig::faults`] makes a writer's disk
//! fill up after a number of bytes, stay full for a while, or be slow, so
//! tests can make the recorder fail writes and fall behind
//! deterministically, without a real small filesystem. It sits on the
//! segment writes only (headers, frames, footers and their fsync); without a
//! plan a write costs one `Option` check per frame.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use deja_recorder::writer::FaultPlan;
//! use deja_recorder::WriterConfig;
//!
//! // The disk is full after 4 KiB, and frees up 200 ms later.
//! let plan = Arc::new(FaultPlan::disk_full_after(4096).fail_for(Duration::from_millis(200)));
//! let config = WriterConfig { faults: Some(Arc::clone(&plan)), ..WriterConfig::default() };
//! # let _ = config;
//! ```

use std::fs::File;
use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What goes wrong with a writer's disk, and for how long.
#[derive(Debug)]
pub struct FaultPlan {
    fail_after_bytes: Option<u64>,
    fail_for: Option<Duration>,
    delay_per_write: Duration,
    errno: i32,
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Bytes the plan let through to segment files.
    written: u64,
    /// When the first injected failure happened.
    failing_since: Option<Instant>,
    /// The outage is over: the disk "freed up", writes pass from now on.
    healed: bool,
    /// Writes (and fsyncs) failed on purpose.
    injected: u64,
}

impl FaultPlan {
    /// Writes fail with `ENOSPC` once `bytes` bytes have been written to
    /// segment files; the write that crosses the limit writes the bytes up
    /// to it first, as a filling disk does, leaving a partial record.
    /// Writes keep failing until the writer closes unless
    /// [`FaultPlan::fail_for`] says otherwise.
    pub fn disk_full_after(bytes: u64) -> FaultPlan {
        FaultPlan {
            fail_after_bytes: Some(bytes),
            ..FaultPlan::slow(Duration::ZERO)
        }
    }

    /// Every segment write sleeps `delay` first: a slow disk, so the writer
    /// falls behind and the queue overflows.
    pub fn slow(delay: Duration) -> FaultPlan {
        FaultPlan {
            fail_after_bytes: None,
            fail_for: None,
            delay_per_write: delay,
            errno: libc::ENOSPC,
            state: Mutex::new(FaultState::default()),
        }
    }

    /// Failures stop `duration` after the first one (space was freed).
    pub fn fail_for(mut self, duration: Duration) -> FaultPlan {
        self.fail_for = Some(duration);
        self
    }

    /// Also sleep `delay` before every segment write.
    pub fn with_delay(mut self, delay: Duration) -> FaultPlan {
        self.delay_per_write = delay;
        self
    }

    /// Fail with this OS error instead of `ENOSPC` (e.g. `libc::EIO`).
    pub fn with_errno(mut self, errno: i32) -> FaultPlan {
        self.errno = errno;
        self
    }

    /// How many writes and fsyncs failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// True while the plan makes operations fail; starts the outage clock
    /// at the first failure and ends the outage once `fail_for` is over.
    fn failing(&self, state: &mut FaultState, incoming: u64) -> bool {
        if state.healed {
            return false;
        }
        let full = self
            .fail_after_bytes
            .is_some_and(|limit| state.written.saturating_add(incoming) > limit);
        if !full && state.failing_since.is_none() {
            return false;
        }
        let since = *state.failing_since.get_or_insert_with(Instant::now);
        if self
            .fail_for
            .is_some_and(|duration| since.elapsed() >= duration)
        {
            state.healed = true;
            return false;
        }
        true
    }

    fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }

    /// `file.write_all(bytes)`, with the plan's delay and failures.
    fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        if !self.delay_per_write.is_zero() {
            std::thread::sleep(self.delay_per_write);
        }
        let mut state = self.lock();
        if !self.failing(&mut state, bytes.len() as u64) {
            file.write_all(bytes)?;
            state.written += bytes.len() as u64;
            return Ok(());
        }
        state.injected += 1;
        // A filling disk takes what fits, then refuses the rest.
        let room = self
            .fail_after_bytes
            .map_or(0, |limit| limit.saturating_sub(state.written));
        let partial = &bytes[..bytes.len().min(room as usize)];
        file.write_all(partial)?;
        state.written += partial.len() as u64;
        Err(self.error())
    }

    /// `file.sync_all()`, failing while the plan fails writes.
    fn sync_all(&self, file: &File) -> io::Result<()> {
        let mut state = self.lock();
        if state.failing_since.is_some() && self.failing(&mut state, 0) {
            state.injected += 1;
            return Err(self.error());
        }
        drop(state);
        file.sync_all()
    }
}

/// Write `bytes` to a segment file, through `faults` when there is a plan.
pub(super) fn write_all(
    file: &mut File,
    bytes: &[u8],
    faults: Option<&FaultPlan>,
) -> io::Result<()> {
    match faults {
        None => file.write_all(bytes),
        Some(plan) => plan.write_all(file, bytes),
    }
}

/// fsync a segment file, through `faults` when there is a plan.
pub(super) fn sync_all(file: &File, faults: Option<&FaultPlan>) -> io::Result<()> {
    match faults {
        None => file.sync_all(),
        Some(plan) => plan.sync_all(file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_takes_what_fits_then_fails_until_healed() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        let plan = FaultPlan::disk_full_after(10).fail_for(Duration::from_millis(30));
        write_all(&mut file, &[1; 6], Some(&plan)).unwrap();
        let err = write_all(&mut file, &[2; 6], Some(&plan)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(
            file.metadata().unwrap().len(),
            10,
            "the partial write landed"
        );
        assert!(sync_all(&file, Some(&plan)).is_err());
        assert_eq!(plan.injected(), 2);
        std::thread::sleep(Duration::from_millis(40));
        write_all(&mut file, &[3; 6], Some(&plan)).unwrap();
        sync_all(&file, Some(&plan)).unwrap();
        assert_eq!(plan.injected(), 2);
    }
}
