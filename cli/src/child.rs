//! Running the service as a child process, for `deja record` and `deja
//! replay`: stdio inherited (its output passes straight through), SIGINT,
//! SIGTERM and SIGHUP sent to deja passed on to it, and its exit status
//! turned into deja's exit code.
//!
//! Forwarding uses a plain `sigaction` handler that reads the child's pid
//! from a static and calls `kill(2)`, both async-signal-safe. The signals
//! are blocked from before the spawn until the pid is stored, so one that
//! arrives in between is delivered (and forwarded) when they are unblocked
//! instead of being lost. The child, between fork and exec, puts back the
//! handlers and mask deja started with, so it inherits what it would have
//! without deja in between (a signal ignored by `nohup` stays ignored, and
//! is not forwarded either).
//!
//! A signal the terminal sends (Ctrl-C, hangup) goes to the whole
//! foreground process group, which includes the child: deja does not
//! forward those a second time, or the service would see (and record) every
//! Ctrl-C twice.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;

use crate::exit;

/// The signals deja passes on to the child.
const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// An `SA_SIGINFO` signal handler.
type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// The running child's pid; 0 when there is none (the handler then does nothing).
static CHILD_PID: AtomicI32 = AtomicI32::new(0);

/// Spawn `command` (stdio inherited), pass signals on while it runs, and
/// wait for it. `Err` only if it could not be started.
pub(crate) fn run(mut command: Command) -> anyhow::Result<ExitStatus> {
    let forwarding = Forwarding::install();
    let previous = forwarding.previous.clone();
    let previous_mask = forwarding.previous_mask;
    // SAFETY: the closure only calls sigaction and pthread_sigmask, which
    // are async-signal-safe, on data copied before the fork.
    unsafe {
        command.pre_exec(move || {
            restore(&previous, &previous_mask);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", command.get_program().to_string_lossy()))?;
    let pid = i32::try_from(child.id()).expect("pids fit in pid_t");
    forwarding.start(pid);
    wait_until_exited(pid);
    // The child is a zombie until reaped below, so its pid cannot have been
    // reused by the time forwarding stops.
    drop(forwarding);
    child.wait().context("cannot wait for the service to exit")
}

/// deja's exit code for the child's status: its exit code, or 128 + N if
/// signal N killed it (as shells report it).
pub(crate) fn exit_code(status: ExitStatus) -> ExitCode {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(exit::ERROR),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
        (None, None) => exit::ERROR,
    };
    ExitCode::from(code)
}

/// Block until the child has exited, without reaping it (`WNOWAIT`).
fn wait_until_exited(pid: libc::pid_t) {
    loop {
        // SAFETY: `info` is a valid out-pointer for waitid; zeroed is a
        // valid siginfo_t.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // On an unexpected error, `Child::wait` (which reaps) still follows.
            return;
        }
    }
}

/// Signal forwarding, in force from [`Forwarding::install`] until dropped;
/// the signals stay blocked until [`Forwarding::start`].
struct Forwarding {
    /// The handlers before ours, restored on drop and in the child.
    previous: Vec<(libc::c_int, libc::sigaction)>,
    /// The signal mask before ours, restored by `start`, on drop and in
    /// the child.
    previous_mask: libc::sigset_t,
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding").finish_non_exhaustive()
    }
}

impl Forwarding {
    /// Block the forwarded signals and install the handler.
    fn install() -> Forwarding {
        // SAFETY: sigset_t and sigaction are plain C structs for which
        // all-zero is valid, and every pointer passed points at one of them.
        // deja is single-threaded, so the thread mask is the process's.
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            for signal in FORWARDED {
                libc::sigaddset(&mut block, signal);
            }
            let mut previous_mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut previous_mask);

            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: Handler = forward;
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous = Vec::with_capacity(FORWARDED.len());
            for signal in FORWARDED {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction == libc::SIG_IGN
                {
                    // Ignored (as under `nohup`): leave it so, for the child too.
                    continue;
                }
                if libc::sigaction(signal, &action, &mut old) == 0 {
                    previous.push((signal, old));
                }
            }
            Forwarding {
                previous,
                previous_mask,
            }
        }
    }

    /// Forward to `pid` from now on, and deliver what arrived meanwhile.
    fn start(&self, pid: libc::pid_t) {
        CHILD_PID.store(pid, Ordering::SeqCst);
        self.restore_mask();
    }

    fn restore_mask(&self) {
        // SAFETY: a valid mask saved by `install`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous_mask, std::ptr::null_mut());
        }
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        CHILD_PID.store(0, Ordering::SeqCst);
        restore(&self.previous, &self.previous_mask);
    }
}

/// Put back the handlers, then the mask, saved by [`Forwarding::install`].
/// Async-signal-safe (it runs in the child between fork and exec).
fn restore(previous: &[(libc::c_int, libc::sigaction)], mask: &libc::sigset_t) {
    // SAFETY: actions and mask saved by `install`.
    unsafe {
        for (signal, old) in previous {
            libc::sigaction(*signal, old, std::ptr::null_mut());
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
}

/// The handler: pass `signal` on to the child, unless the terminal sent it
/// to the child's process group already.
extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let pid = CHILD_PID.load(Ordering::SeqCst);
    if pid <= 0 || child_got_it_already(pid, info) {
        return;
    }
    let errno = errno::save();
    // SAFETY: kill is async-signal-safe. The pid is a child not yet reaped.
    unsafe {
        libc::kill(pid, signal);
    }
    errno::restore(errno);
}

/// Was this a terminal-generated signal (sent by the kernel to the
/// foreground process group) and is the child in our process group?
#[cfg(any(target_os = "linux", target_os = "android"))]
fn child_got_it_already(pid: libc::pid_t, info: *const libc::siginfo_t) -> bool {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t;
    // getpgid and getpgrp are plain system calls.
    unsafe {
        !info.is_null()
            && (*info).si_code == libc::SI_KERNEL
            && libc::getpgid(pid) == libc::getpgrp()
    }
}

/// Elsewhere the sender cannot be told apart: always forward.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn child_got_it_already(_: libc::pid_t, _: *const libc::siginfo_t) -> bool {
    false
}

/// Keeping `errno` intact across the handler, which interrupts arbitrary code.
mod errno {
    /// The current `errno`.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn save() -> libc::c_int {
        // SAFETY: the thread's errno location is always valid.
        unsafe { *libc::__errno_location() }
    }

    /// Set `errno` back.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn restore(value: libc::c_int) {
        // SAFETY: as in `save`.
        unsafe { *libc::__errno_location() = value }
    }

    /// The current `errno`.
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    pub(super) fn save() -> libc::c_int {
        // SAFETY: the thread's errno location is always valid.
        unsafe { *libc::__error() }
    }

    /// Set `errno` back.
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    pub(super) fn restore(value: libc::c_int) {
        // SAFETY: as in `save`.
        unsafe { *libc::__error() = value }
    }

    /// Not tracked on this platform.
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd"
    )))]
    pub(super) fn save() -> libc::c_int {
        0
    }

    /// Not tracked on this platform.
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd"
    )))]
    pub(super) fn restore(_: libc::c_int) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_pass_through_and_signals_add_128() {
        let code = |status| format!("{:?}", exit_code(status));
        assert_eq!(
            code(ExitStatus::from_raw(7 << 8)),
            format!("{:?}", ExitCode::from(7))
        );
        assert_eq!(
            code(ExitStatus::from_raw(libc::SIGTERM)),
            format!("{:?}", ExitCode::from(143))
        );
    }
}
