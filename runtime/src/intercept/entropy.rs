//! `getrandom` and `getentropy`, interposed.

use std::sync::atomic::{AtomicPtr, Ordering};

use super::intercepting;
use crate::backend;

type GetrandomFn =
    unsafe extern "C" fn(*mut libc::c_void, libc::size_t, libc::c_uint) -> libc::ssize_t;

/// The C library's `getrandom`; null: not looked up yet.
static REAL_GETRANDOM: AtomicPtr<libc::c_void> = AtomicPtr::new(std::ptr::null_mut());
/// "No C library definition: use the system call."
const USE_SYSCALL: *mut libc::c_void = usize::MAX as *mut libc::c_void;

/// The C library's `getrandom`, never this file's.
///
/// # Safety
/// As the C function: `buf` is writable for `len` bytes.
pub(crate) unsafe fn real_getrandom(
    buf: *mut libc::c_void,
    len: libc::size_t,
    flags: libc::c_uint,
) -> libc::ssize_t {
    let mut function = REAL_GETRANDOM.load(Ordering::Acquire);
    if function.is_null() {
        // SAFETY: a NUL-terminated name; RTLD_NEXT looks past this executable.
        let found = unsafe { libc::dlsym(libc::RTLD_NEXT, c"getrandom".as_ptr()) };
        function = if found.is_null() { USE_SYSCALL } else { found };
        REAL_GETRANDOM.store(function, Ordering::Release);
    }
    // SAFETY: the C library's getrandom has this signature; the buffer is the caller's.
    unsafe {
        if function == USE_SYSCALL {
            real_getrandom_syscall(buf, len, flags)
        } else {
            let function: GetrandomFn = std::mem::transmute(function);
            function(buf, len, flags)
        }
    }
}

/// The system call itself, past deja's `syscall` (see `super::syscall`).
///
/// # Safety
/// As the system call: `buf` is writable for `len` bytes.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn real_getrandom_syscall(
    buf: *mut libc::c_void,
    len: libc::size_t,
    flags: libc::c_uint,
) -> libc::ssize_t {
    let args = [
        buf as libc::c_long,
        len as libc::c_long,
        flags as libc::c_long,
        0,
        0,
        0,
    ];
    // SAFETY: getrandom's arguments, as the caller gave them.
    unsafe { super::syscall::raw(libc::SYS_getrandom, args) as libc::ssize_t }
}

/// The system call itself, through the C library's `syscall` (deja
/// defines its own only on x86-64 and AArch64).
///
/// # Safety
/// As the system call: `buf` is writable for `len` bytes.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn real_getrandom_syscall(
    buf: *mut libc::c_void,
    len: libc::size_t,
    flags: libc::c_uint,
) -> libc::ssize_t {
    // SAFETY: getrandom's arguments, as the caller gave them.
    unsafe { libc::syscall(libc::SYS_getrandom, buf, len, flags) as libc::ssize_t }
}

/// Fill `out` from the OS, retrying short reads and interrupts, as a
/// recording must log every byte the service got.
fn real_fill(out: &mut [u8]) -> bool {
    let mut filled = 0;
    // Bounded: getrandom returns at least 256 bytes a call once the pool is ready.
    for _ in 0..out.len() / 256 + 64 {
        if filled == out.len() {
            return true;
        }
        let rest = &mut out[filled..];
        // SAFETY: `rest` is writable for its length.
        let got = unsafe { real_getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got > 0 {
            filled += got as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
    filled == out.len()
}

/// Fill `out` the way the thread's mode says, or `false`: use the C library.
fn fill(out: &mut [u8]) -> bool {
    intercepting(|| {
        backend::try_with(|backend| {
            backend
                .libc_entropy(out, super::reading_task(), &mut real_fill)
                .then_some(())
        })
        .flatten()
    })
    .is_some()
}

/// A `getrandom` system call made through the C library's `syscall`
/// (getrandom 0.2, so ring): `Some(len)` when deja filled the buffer, or
/// `None`: make the system call.
///
/// # Safety
/// As the system call: `buf` is writable for `len` bytes.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) unsafe fn fill_for_syscall(buf: *mut u8, len: usize) -> Option<usize> {
    if buf.is_null() || len == 0 || len > isize::MAX as usize {
        return None;
    }
    // SAFETY: the caller hands us `len` writable bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    fill(out).then_some(len)
}

/// The C library's `getrandom`, as deja sees it (see [`super`]).
///
/// # Safety
/// As the C function: `buf` is writable for `len` bytes.
// Exported by `no_mangle`, not by Rust's visibility.
#[allow(unreachable_pub)]
#[no_mangle]
pub unsafe extern "C" fn getrandom(
    buf: *mut libc::c_void,
    len: libc::size_t,
    flags: libc::c_uint,
) -> libc::ssize_t {
    if !buf.is_null() && len > 0 && len <= isize::MAX as usize {
        // SAFETY: the caller hands us `len` writable bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        if fill(out) {
            return len as libc::ssize_t;
        }
    }
    // SAFETY: forwarded as given.
    unsafe { real_getrandom(buf, len, flags) }
}

/// The C library's `getentropy`, as deja sees it: at most 256 bytes.
///
/// # Safety
/// As the C function: `buf` is writable for `len` bytes.
// Exported by `no_mangle`, not by Rust's visibility.
#[allow(unreachable_pub)]
#[no_mangle]
pub unsafe extern "C" fn getentropy(buf: *mut libc::c_void, len: libc::size_t) -> libc::c_int {
    const GETENTROPY_BYTES_MAX: usize = 256;
    if len > GETENTROPY_BYTES_MAX {
        // SAFETY: errno is thread-local and always writable.
        unsafe { *libc::__errno_location() = libc::EIO };
        return -1;
    }
    if buf.is_null() || len == 0 {
        return 0;
    }
    // SAFETY: the caller hands us `len` writable bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    if fill(out) || real_fill(out) {
        0
    } else {
        -1
    }
}
