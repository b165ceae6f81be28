//! Hash collections that iterate in the same order in record and replay.
//!
//! `std::collections::HashMap` seeds its hasher from OS randomness, so a
//! service that sends, writes or spawns in map order diverges on replay.
//! These aliases use [`DetState`], seeded from the task's deja RNG: the
//! order is random across runs, and identical in a replay.

use std::hash::{BuildHasher, DefaultHasher, Hasher};

use rand_core::RngCore;

/// A `HashMap` with a deterministic, replayable hasher.
pub type HashMap<K, V> = std::collections::HashMap<K, V, DetState>;
/// A `HashSet` with a deterministic, replayable hasher.
pub type HashSet<T> = std::collections::HashSet<T, DetState>;

/// A `BuildHasher` whose keys come from [`crate::rand::rng`].
#[derive(Clone, Debug)]
pub struct DetState {
    key: u64,
}

impl Default for DetState {
    fn default() -> Self {
        DetState {
            key: crate::rand::rng().next_u64(),
        }
    }
}

impl BuildHasher for DetState {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        // DefaultHasher::new() has fixed keys; mixing our key in first
        // makes the order depend on it.
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(self.key);
        hasher
    }
}
