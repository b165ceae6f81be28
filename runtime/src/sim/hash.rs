//! A fast, fixed hasher for the simulator's own tables (connection ends,
//! timers, link policies), which are looked up on every segment and timer.
//!
//! SipHash with a `RandomState` cost 7-9 % of a simulation (issue 19) and
//! drew entropy on the simulation's thread. The keys here are small
//! integers the simulator makes itself, not input an attacker chooses, so
//! the multiply-rotate hash rustc uses for its own tables (`FxHasher`)
//! is enough, and a fixed hasher makes iteration order a function of the
//! run alone.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// `FxHasher`'s multiplier (rustc-hash 1.x): an odd constant, so the
/// low bits of sequential keys stay distinct.
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// rustc's `FxHasher`, word at a time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` keyed with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_keys_spread_over_the_low_bits() {
        let buckets: std::collections::BTreeSet<u64> = (0..1024u64)
            .map(|key| {
                let mut hasher = FastHasher::default();
                hasher.write_u64(key);
                hasher.finish() & 1023
            })
            .collect();
        assert_eq!(buckets.len(), 1024);
    }
}
