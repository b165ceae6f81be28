//! Seeds: every generator of a run derives from its root seed, so replay
//! and the simulation hand every task the same numbers without logging
//! each draw.

use deja_recorder::TaskId;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// Derive the seed of generator `index` of `task`: ChaCha20 keyed by the
/// root seed, stream = task, 32 bytes at word position 8 × index.
pub(crate) fn derive_seed(root: &[u8; 32], task: TaskId, index: u64) -> [u8; 32] {
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
    super::internal(|| getrandom::fill(&mut seed)).expect("the OS entropy source failed");
    seed
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
}
