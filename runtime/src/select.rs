//! `deja::select!`: `tokio::select!` with a replayable choice.
//!
//! tokio's `select!` starts polling at a random branch drawn from a
//! per-thread RNG that only `--cfg tokio_unstable` can seed, so two ready
//! branches can go either way on replay. `deja::select!` is just as fair,
//! but draws the start branch from the task's deja RNG (derived from the
//! recorded root seed) and polls the branches in order from there, so the
//! same branch wins in the replay. It is its own implementation (not a
//! wrapper of tokio's), so the service `clippy.toml` can ban
//! `tokio::select!` outright.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Most branches one `deja::select!` takes.
pub const SELECT_BRANCHES_MAX: usize = 8;

/// Which branch completed, with its output.
#[doc(hidden)]
#[derive(Debug)]
pub enum Branch<T0 = (), T1 = (), T2 = (), T3 = (), T4 = (), T5 = (), T6 = (), T7 = ()> {
    B0(T0),
    B1(T1),
    B2(T2),
    B3(T3),
    B4(T4),
    B5(T5),
    B6(T6),
    B7(T7),
    /// Every branch is disabled: the `else` branch runs.
    Else,
}

/// Poll a pinned branch future; `None` while it is pending.
#[doc(hidden)]
pub fn poll_branch<F: Future>(future: Pin<&mut F>, cx: &mut Context<'_>) -> Option<F::Output> {
    match future.poll(cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Wait on several futures and run the branch of the first to complete,
/// like `tokio::select!`: `pattern = future (, if condition)? => handler`,
/// an optional `else => handler` when every branch is disabled, at most
/// [`SELECT_BRANCHES_MAX`] branches. A completed future whose output does
/// not match its pattern disables its branch. All future expressions are
/// evaluated first; a branch whose condition is false is never polled.
///
/// ```
/// # deja::Builder::new().build().unwrap().block_on(async {
/// let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
/// tx.send(7).await.unwrap();
/// let got = deja::select! {
///     Some(v) = rx.recv() => v,
///     _ = deja::time::sleep(deja::time::Duration::from_secs(5)) => 0,
/// };
/// assert_eq!(got, 7);
/// # }).unwrap();
/// ```
#[macro_export]
macro_rules! select {
    // Normalize each branch to [index Variant (pat) (future) (condition) (handler)],
    // taking indices and variants from the lists in order.
    // `else` first: a keyword cannot even be tried as a pattern.
    (@parse [$($done:tt)*] [$($is:tt)*] [$($vs:ident)*] else => $else:expr $(,)?) => {
        $crate::select!(@emit [$($done)*] [$($vs)*] ($else))
    };
    (@parse [$($done:tt)*] [$i:tt $($is:tt)*] [$v:ident $($vs:ident)*]
        $pat:pat = $fut:expr, if $cond:expr => $body:block $(,)? $($rest:tt)*) => {
        $crate::select!(@parse [$($done)* [$i $v ($pat) ($fut) ($cond) ($body)]] [$($is)*] [$($vs)*] $($rest)*)
    };
    (@parse [$($done:tt)*] [$i:tt $($is:tt)*] [$v:ident $($vs:ident)*]
        $pat:pat = $fut:expr => $body:block $(,)? $($rest:tt)*) => {
        $crate::select!(@parse [$($done)* [$i $v ($pat) ($fut) (true) ($body)]] [$($is)*] [$($vs)*] $($rest)*)
    };
    (@parse [$($done:tt)*] [$i:tt $($is:tt)*] [$v:ident $($vs:ident)*]
        $pat:pat = $fut:expr, if $cond:expr => $body:expr $(, $($rest:tt)*)?) => {
        $crate::select!(@parse [$($done)* [$i $v ($pat) ($fut) ($cond) ($body)]] [$($is)*] [$($vs)*] $($($rest)*)?)
    };
    (@parse [$($done:tt)*] [$i:tt $($is:tt)*] [$v:ident $($vs:ident)*]
        $pat:pat = $fut:expr => $body:expr $(, $($rest:tt)*)?) => {
        $crate::select!(@parse [$($done)* [$i $v ($pat) ($fut) (true) ($body)]] [$($is)*] [$($vs)*] $($($rest)*)?)
    };
    (@parse [$($done:tt)*] [$($is:tt)*] [$($vs:ident)*]) => {
        $crate::select!(@emit [$($done)*] [$($vs)*] (::core::panic!(
            "deja::select!: every branch is disabled and there is no `else`"
        )))
    };
    (@infer $v:ident) => { _ };
    (@unused $v:ident) => { () };
    (@parse [$($done:tt)*] [] [] $($rest:tt)+) => {
        ::core::compile_error!("deja::select! takes at most 8 branches")
    };
    (@emit [$([$i:tt $v:ident ($pat:pat) ($fut:expr) ($cond:expr) ($body:expr)])+] [$($unused:ident)*] ($else:expr)) => {{
        let mut __deja_futures = ($($fut,)+);
        let mut __deja_enabled = [$($cond),+];
        let __deja_count = __deja_enabled.len();
        let __deja_start = $crate::rand::select_start(__deja_count);
        let __deja_output: $crate::__select::Branch<
            $($crate::select!(@infer $v),)+
            $($crate::select!(@unused $unused),)*
        > = ::std::future::poll_fn(|__deja_cx| {
            for __deja_step in 0..__deja_count {
                let __deja_index = (__deja_start + __deja_step) % __deja_count;
                if !__deja_enabled[__deja_index] {
                    continue;
                }
                $(
                    if __deja_index == $i {
                        // SAFETY: the tuple lives on this stack frame and is
                        // never moved after this point; only pinned
                        // references to its fields escape.
                        let __deja_future = unsafe {
                            ::std::pin::Pin::new_unchecked(&mut __deja_futures.$i)
                        };
                        if let ::core::option::Option::Some(__deja_out) =
                            $crate::__select::poll_branch(__deja_future, __deja_cx)
                        {
                            #[allow(unused_variables)]
                            let __deja_matches = match &__deja_out {
                                $pat => true,
                                #[allow(unreachable_patterns)]
                                _ => false,
                            };
                            if __deja_matches {
                                return ::std::task::Poll::Ready($crate::__select::Branch::$v(__deja_out));
                            }
                            __deja_enabled[__deja_index] = false;
                        }
                    }
                )+
            }
            if __deja_enabled.iter().any(|enabled| *enabled) {
                ::std::task::Poll::Pending
            } else {
                ::std::task::Poll::Ready($crate::__select::Branch::Else)
            }
        })
        .await;
        #[allow(unreachable_patterns, unused_variables)]
        match __deja_output {
            $(
                $crate::__select::Branch::$v(__deja_out) => match __deja_out {
                    $pat => $body,
                    _ => ::core::unreachable!("the pattern matched when the branch completed"),
                },
            )+
            _ => $else,
        }
    }};
    ($($tokens:tt)*) => {
        $crate::select!(@parse [] [0 1 2 3 4 5 6 7] [B0 B1 B2 B3 B4 B5 B6 B7] $($tokens)*)
    };
}
