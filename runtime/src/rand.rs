//! Randomness: ChaCha generators derived from one root seed per run.
//!
//! The root seed is drawn from the OS once and recorded; the k-th
//! generator a task asks for is derived from (root seed, task id, k), so
//! replay hands every task the same numbers without logging each draw.
//! [`fill_bytes`] is for raw OS entropy, recorded by value.

use std::cell::Cell;

use deja_recorder::{EventKind, TaskId, EVENT_PAYLOAD_BYTES_MAX};
use deja_replayer::gate::Call;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};

pub use rand::Rng;

use crate::context::{self, Ctx};

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
    let root = context::with(|ctx| match ctx {
        Ctx::Live => None,
        Ctx::Record(recording) => Some(*recording.root_seed()),
        Ctx::Replay(replay) => Some(replay.root_seed()),
        Ctx::Sim(host) => Some(host.root_seed),
    });
    match root {
        None => DejaRng(ChaCha20Rng::from_seed(os_seed())),
        Some(root) => {
            let (task, index) = context::next_rng_index();
            DejaRng(ChaCha20Rng::from_seed(derive_seed(&root, task, index)))
        }
    }
}

/// Derive the seed of generator `index` of `task`: ChaCha20 keyed by the
/// root seed, stream = task, 32 bytes at word position 8 × index.
fn derive_seed(root: &[u8; 32], task: TaskId, index: u64) -> [u8; 32] {
    let mut master = ChaCha20Rng::from_seed(*root);
    master.set_stream(task.0);
    master.set_word_pos(u128::from(index) * 8);
    let mut seed = [0u8; 32];
    master.fill_bytes(&mut seed);
    seed
}

/// The seed of a task's `select!` start sequence.
pub(crate) fn select_seed(root: &[u8; 32], task: TaskId) -> u64 {
    let seed = derive_seed(root, task, u64::MAX);
    u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"))
}

/// 32 bytes of OS entropy.
pub(crate) fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    crate::intercept::internal(|| getrandom::fill(&mut seed))
        .expect("the OS entropy source failed");
    seed
}

/// Fill `out` for one of `host`'s tasks: from the host's seed (no OS
/// entropy in a simulation), logged like an OS draw.
pub(crate) fn sim_entropy(host: &crate::sim::Host, out: &mut [u8]) {
    for chunk in out.chunks_mut(EVENT_PAYLOAD_BYTES_MAX) {
        let (task, index) = context::next_rng_index();
        let mut rng = ChaCha20Rng::from_seed(derive_seed(&host.root_seed, task, index));
        rng.fill_bytes(chunk);
        host.record(EventKind::Entropy {
            bytes: chunk.to_vec(),
        });
    }
}

/// Fill `dest` with OS entropy, recorded by value (replay returns the
/// recorded bytes). Prefer [`rng`]; this is for keys and nonces that must
/// come from the OS.
pub fn fill_bytes(dest: &mut [u8]) {
    for chunk in dest.chunks_mut(EVENT_PAYLOAD_BYTES_MAX) {
        context::with(|ctx| match ctx {
            Ctx::Live => crate::intercept::internal(|| getrandom::fill(chunk))
                .expect("the OS entropy source failed"),
            Ctx::Record(recording) => {
                crate::intercept::internal(|| getrandom::fill(chunk))
                    .expect("the OS entropy source failed");
                recording.record(EventKind::Entropy {
                    bytes: chunk.to_vec(),
                });
            }
            Ctx::Replay(replay) => {
                match replay.claim(context::task_id(), &Call::Entropy { len: chunk.len() }) {
                    Some(deja_recorder::Event {
                        kind: EventKind::Entropy { bytes },
                        ..
                    }) if bytes.len() == chunk.len() => chunk.copy_from_slice(&bytes),
                    _ => chunk.fill(0),
                }
            }
            // No OS entropy in a simulation: the host's seed stands in.
            Ctx::Sim(host) => sim_entropy(host, chunk),
        });
    }
}

thread_local! {
    /// Live-mode `select!` starts outside any deja task.
    static LIVE_SELECT: Cell<u64> = Cell::new(u64::from_le_bytes(
        os_seed()[..8].try_into().expect("8 bytes"),
    ));
}

/// Which branch a `select!` of `branches` branches polls first: uniform,
/// and the same in replay as in the recording.
#[doc(hidden)]
pub fn select_start(branches: usize) -> usize {
    debug_assert!(branches > 0);
    let draw = context::next_select_draw().unwrap_or_else(|| LIVE_SELECT.with(context::splitmix64));
    // Multiply-shift: unbiased enough for a handful of branches.
    ((u128::from(draw) * branches as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ_by_task_and_index_and_repeat() {
        let root = [7u8; 32];
        let a = derive_seed(&root, TaskId(1), 0);
        assert_eq!(a, derive_seed(&root, TaskId(1), 0));
        assert_ne!(a, derive_seed(&root, TaskId(1), 1));
        assert_ne!(a, derive_seed(&root, TaskId(2), 0));
        assert_ne!(a, derive_seed(&[8u8; 32], TaskId(1), 0));
    }

    #[test]
    fn select_start_stays_in_range() {
        for branches in 1..6 {
            for _ in 0..200 {
                assert!(select_start(branches) < branches);
            }
        }
    }
}
