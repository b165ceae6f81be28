//! `deja::select!`: `tokio::select!` with a replayable choice.
//!
//! tokio's `select!` starts polling at a random branch drawn from a
//! per-thread RNG that only `--cfg tokio_unstable` can seed, so two ready
//! branches can go either way on replay. `deja::select!` is just as fair,
//! but draws the start branch from the task's deja RNG (derived from the
//! recorded root seed) and then polls in order (`biased`), so the same
//! branch wins in the replay.

/// Wait on several futures and run the branch of the first to complete,
/// like `tokio::select!` (without `biased;`, which it does for you).
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
    // Normalize each branch into one bracketed token tree.
    (@parse [$($done:tt)*] $pat:pat = $fut:expr, if $cond:expr => $body:block $(,)? $($rest:tt)*) => {
        $crate::select!(@parse [$($done)* [$pat = $fut, if $cond => $body,]] $($rest)*)
    };
    (@parse [$($done:tt)*] $pat:pat = $fut:expr => $body:block $(,)? $($rest:tt)*) => {
        $crate::select!(@parse [$($done)* [$pat = $fut => $body,]] $($rest)*)
    };
    (@parse [$($done:tt)*] $pat:pat = $fut:expr, if $cond:expr => $body:expr, $($rest:tt)*) => {
        $crate::select!(@parse [$($done)* [$pat = $fut, if $cond => $body,]] $($rest)*)
    };
    (@parse [$($done:tt)*] $pat:pat = $fut:expr => $body:expr, $($rest:tt)*) => {
        $crate::select!(@parse [$($done)* [$pat = $fut => { $body },]] $($rest)*)
    };
    (@parse [$($done:tt)*] $pat:pat = $fut:expr, if $cond:expr => $body:expr) => {
        $crate::select!(@parse [$($done)* [$pat = $fut, if $cond => { $body },]])
    };
    (@parse [$($done:tt)*] $pat:pat = $fut:expr => $body:expr) => {
        $crate::select!(@parse [$($done)* [$pat = $fut => { $body },]])
    };
    (@parse [$($done:tt)*] else => $else:expr $(,)?) => {
        $crate::select!(@start [$($done)*] [else => { $else },])
    };
    (@parse [$($done:tt)*]) => {
        $crate::select!(@start [$($done)*] [])
    };
    // Count the branches, draw the start, expand one rotation per start.
    (@start [$($branch:tt)+] [$($else:tt)*]) => {{
        let __deja_start = $crate::rand::select_start(
            <[()]>::len(&[$($crate::select!(@unit $branch)),+])
        );
        $crate::select!(@rotate __deja_start; [0]; []; [$($branch)+]; [$($else)*])
    }};
    (@unit $branch:tt) => { () };
    // One `if start == k` arm per rotation: branches k.. then ..k.
    (@rotate $start:ident; [$($k:tt)*]; [$($front:tt)*]; [$head:tt $($back:tt)*]; [$($else:tt)*]) => {
        if $start == $($k)* {
            $crate::select!(@emit [$head $($back)* $($front)*] [$($else)*])
        } else {
            $crate::select!(@rotate $start; [$($k)* + 1]; [$($front)* $head]; [$($back)*]; [$($else)*])
        }
    };
    (@rotate $start:ident; [$($k:tt)*]; [$($front:tt)*]; []; [$($else:tt)*]) => {
        ::core::unreachable!("select start out of range")
    };
    (@emit [$([$($branch:tt)*])*] [$($else:tt)*]) => {
        $crate::__tokio::select! { biased; $($($branch)*)* $($else)* }
    };
    ($($tokens:tt)*) => {
        $crate::select!(@parse [] $($tokens)*)
    };
}
