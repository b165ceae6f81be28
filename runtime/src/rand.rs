//! Randomness: ChaCha generators derived from one root seed per run.
//!
//! The root seed is drawn from the OS once and recorded; the k-th
//! generator a task asks for is derived from (root seed, task id, k), so
//! replay hands every task the same numbers without logging each draw.
//! [`fill_bytes`] is for raw OS entropy, recorded by value.

use std::cell::Cell;

use deja_recorder::EVENT_PAYLOAD_BYTES_MAX;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};

pub use rand::Rng;

use crate::backend;

/// A deja random number generator (ChaCha20). Implements the `rand_core`
/// traits, so `rand::Rng` methods (`random_range`, ...) work on it.
#[derive(Clone, Debug)]
pub struct DejaRng(ChaCha20Rng);

impl RngCore for DejaRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
}

impl CryptoRng for DejaRng {}

/// A fresh generator for the running task: seeded from the OS in live
/// mode, derived from the run's root seed in record and replay.
pub fn rng() -> DejaRng {
    match backend::with(|backend| backend.root_seed()) {
        None => DejaRng(ChaCha20Rng::from_seed(backend::os_seed())),
        Some(root) => {
            let (task, index) = backend::next_rng_index();
            DejaRng(ChaCha20Rng::from_seed(backend::derive_seed(
                &root, task, index,
            )))
        }
    }
}

/// Fill `dest` with OS entropy, recorded by value (replay returns the
/// recorded bytes). Prefer [`rng`]; this is for keys and nonces that must
/// come from the OS.
pub fn fill_bytes(dest: &mut [u8]) {
    for chunk in dest.chunks_mut(EVENT_PAYLOAD_BYTES_MAX) {
        backend::with(|backend| backend.entropy(chunk));
    }
}

thread_local! {
    /// Live-mode `select!` starts outside any deja task.
    static LIVE_SELECT: Cell<u64> = Cell::new(u64::from_le_bytes(
        backend::os_seed()[..8].try_into().expect("8 bytes"),
    ));
}

/// Which branch a `select!` of `branches` branches polls first: uniform,
/// and the same in replay as in the recording.
#[doc(hidden)]
pub fn select_start(branches: usize) -> usize {
    debug_assert!(branches > 0);
    let draw = backend::next_select_draw().unwrap_or_else(|| LIVE_SELECT.with(backend::splitmix64));
    // Multiply-shift: unbiased enough for a handful of branches.
    ((u128::from(draw) * branches as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_start_stays_in_range() {
        for branches in 1..6 {
            for _ in 0..200 {
                assert!(select_start(branches) < branches);
            }
        }
    }
}
