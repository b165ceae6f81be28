//! `connect`, interposed: a library that opens its own sockets.
//!
//! deja sees the network through `deja::net`. A library that connects
//! with its own `tokio::net` (or std) socket (reqwest, sqlx and others
//! open their own) talks to the world behind deja's back: in a recording
//! nothing it receives is logged, and a replay, which opens no sockets,
//! cannot give it the same answers. deja's own sockets connect while
//! marked [`super::internal`]; any other `connect` made by a task is a
//! foreign socket:
//!
//! - record: logged as a mark named [`deja_recorder::FOREIGN_SOCKET_MARK`] (its value is
//!   the address), counted, and warned about once on stderr; the
//!   connection goes ahead;
//! - replay: the mark is taken from the log (so the replay still matches),
//!   the connect fails with `ECONNREFUSED`, and the replay says so once,
//!   naming the address; a divergence that follows carries the note.

use std::sync::atomic::{AtomicPtr, Ordering};

use super::intercepting;
use crate::backend;

type ConnectFn =
    unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int;

static REAL_CONNECT: AtomicPtr<libc::c_void> = AtomicPtr::new(std::ptr::null_mut());

/// The C library's `connect`.
///
/// # Safety
/// As the C function.
unsafe fn real_connect(
    fd: libc::c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> libc::c_int {
    let mut function = REAL_CONNECT.load(Ordering::Acquire);
    if function.is_null() {
        // SAFETY: a NUL-terminated name; RTLD_NEXT looks past this executable.
        function = unsafe { libc::dlsym(libc::RTLD_NEXT, c"connect".as_ptr()) };
        if function.is_null() {
            // SAFETY: the system call takes the same arguments.
            return unsafe { libc::syscall(libc::SYS_connect, fd, addr, len) as libc::c_int };
        }
        REAL_CONNECT.store(function, Ordering::Release);
    }
    // SAFETY: the C library's connect has this signature.
    unsafe {
        let function: ConnectFn = std::mem::transmute(function);
        function(fd, addr, len)
    }
}

/// The peer of a `connect`, as text (`None` for a Unix socket or junk:
/// deja only minds the network).
///
/// # Safety
/// `addr` is null or points to `len` readable bytes.
unsafe fn peer_of(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<String> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family is readable.
    let family = unsafe { (*addr).sa_family } as libc::c_int;
    match family {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: checked the family and the length.
            let v4 = unsafe { &*addr.cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(format!("{ip}:{}", u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: checked the family and the length.
            let v6 = unsafe { &*addr.cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(format!("[{ip}]:{}", u16::from_be(v6.sin6_port)))
        }
        _ => None,
    }
}

/// What a task's foreign `connect` does: `Some(refused)` in replay,
/// `None` to go ahead.
fn foreign_connect(peer: &str) -> Option<bool> {
    intercepting(|| {
        backend::try_with(|backend| backend.foreign_connect(peer, backend::current_task()))
            .flatten()
    })
}

/// The C library's `connect`, as deja sees it (see [`self`]).
///
/// # Safety
/// As the C function.
// Exported by `no_mangle`, not by Rust's visibility.
#[allow(unreachable_pub)]
#[no_mangle]
pub unsafe extern "C" fn connect(
    fd: libc::c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> libc::c_int {
    // SAFETY: the caller's pointer and length.
    if let Some(peer) = unsafe { peer_of(addr, len) } {
        if foreign_connect(&peer) == Some(true) {
            // SAFETY: errno is thread-local and always writable.
            unsafe { *libc::__errno_location() = libc::ECONNREFUSED };
            return -1;
        }
    }
    // SAFETY: forwarded as given.
    unsafe { real_connect(fd, addr, len) }
}
