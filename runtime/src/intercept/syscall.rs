//! The C library's `syscall`, interposed for one number: `SYS_getrandom`.
//!
//! getrandom 0.2 (under ring's `SystemRandom`, so rustls with ring; rand
//! 0.8's `OsRng`; ahash) does not call the C library's `getrandom` on
//! Linux: it makes the system call itself, through
//! `syscall(SYS_getrandom, buf, len, flags)`. `syscall` is one more C
//! library entry point deja can define in the executable, so a draw
//! through it is handled as a `getrandom` call (logged in record, handed
//! back in replay); every other number goes to the kernel unchanged.
//!
//! `syscall` is variadic in C, and stable Rust cannot define a variadic
//! function, so it is defined with the number and six `long` arguments.
//! On x86-64 and AArch64 Linux a variadic call passes integer and pointer
//! arguments exactly where a call with that many `long` parameters does
//! (registers, then the stack on x86-64), so the definition sees what the
//! caller passed; the slots a caller did not fill hold what they held, and
//! the kernel ignores them, as it does with the C library's `syscall`.
//! The other numbers are not forwarded to the C library's `syscall` but
//! made here (one instruction, errno set as the C library's wrapper sets
//! it): so this path never goes through the dynamic loader, which a first
//! `dlsym` from inside a futex wake (std's locks call `syscall`) could
//! have to wait for.
//!
//! Other architectures keep the C library's `syscall`; there getrandom
//! 0.2's draws are not seen (ARCHITECTURE.md, "Library code").

use libc::c_long;

/// The C library's `syscall`, as deja sees it (see [`self`](super::syscall)).
///
/// # Safety
/// As the C function: the arguments are what system call `number` takes.
// Exported by `no_mangle`, not by Rust's visibility.
#[allow(unreachable_pub)]
#[no_mangle]
pub unsafe extern "C" fn syscall(
    number: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    if number == libc::SYS_getrandom {
        // getrandom(buf, len, flags): `len` is a size_t, the whole register.
        // SAFETY: the caller hands us `len` writable bytes at `buf`.
        if let Some(got) = unsafe { super::entropy::fill_for_syscall(a1 as *mut u8, a2 as usize) } {
            return got as c_long;
        }
    }
    // SAFETY: as the caller's own system call.
    unsafe { raw(number, [a1, a2, a3, a4, a5, a6]) }
}

/// System call `number` with `args`, as the C library's `syscall` makes
/// it: a result in [-4095, -1] is an error, returned as -1 with errno set.
///
/// # Safety
/// The arguments are what system call `number` takes.
pub(crate) unsafe fn raw(number: c_long, args: [c_long; 6]) -> c_long {
    // SAFETY: the caller's system call; both sequences follow the kernel's
    // calling convention and clobber only what the kernel does.
    let ret = unsafe { instruction(number, args) };
    if (-4095..0).contains(&ret) {
        // SAFETY: errno is thread-local and always writable.
        unsafe { *libc::__errno_location() = -ret as libc::c_int };
        -1
    } else {
        ret
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn instruction(number: c_long, args: [c_long; 6]) -> c_long {
    let ret: c_long;
    // SAFETY: the caller's system call. `syscall` clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn instruction(number: c_long, args: [c_long; 6]) -> c_long {
    let ret: c_long;
    // SAFETY: the caller's system call. `svc 0` returns in x0.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") number,
            inlateout("x0") args[0] => ret,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            in("x5") args[5],
            options(nostack),
        );
    }
    ret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_numbers_reach_the_kernel() {
        // SAFETY: getpid takes no arguments.
        let pid = unsafe { syscall(libc::SYS_getpid, 0, 0, 0, 0, 0, 0) };
        assert_eq!(pid, i64::from(std::process::id()));
    }

    #[test]
    fn an_error_is_minus_one_with_errno() {
        // SAFETY: closing a descriptor that is not open touches nothing.
        let ret = unsafe { syscall(libc::SYS_close, -1, 0, 0, 0, 0, 0) };
        assert_eq!(ret, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn getrandom_outside_a_runtime_is_real() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        // SAFETY: the buffers are writable for their lengths.
        let (got_a, got_b) = unsafe {
            (
                libc::syscall(libc::SYS_getrandom, a.as_mut_ptr(), a.len(), 0),
                libc::syscall(libc::SYS_getrandom, b.as_mut_ptr(), b.len(), 0),
            )
        };
        assert_eq!((got_a, got_b), (32, 32));
        assert_ne!(a, b, "two draws of 32 bytes from the OS");
    }
}
