//! Faults drawn from the seed: partitions and crashes at random times,
//! so a sweep explores failure schedules nobody wrote down.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::Control;

/// Most faults one run schedules: bounds the agenda however small the
/// mean interval is.
const CHAOS_FAULTS_MAX: usize = 10_000;
/// The ChaCha stream chaos draws from: apart from the network's, so that
/// turning chaos on does not change the network's draws.
const CHAOS_STREAM: u64 = u64::MAX;

/// Random faults: each kind strikes after exponential intervals with the
/// given mean and lasts an exponential time with the given mean.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chaos {
    partitions: Option<(Duration, Duration)>,
    crashes: Option<(Duration, Duration)>,
}

impl Chaos {
    /// Cut a random pair of hosts apart about every `every`, for about
    /// `lasting` (then heal that pair).
    pub fn partitions(&mut self, every: Duration, lasting: Duration) -> &mut Self {
        self.partitions = Some((every, lasting));
        self
    }

    /// Crash a random server about every `every` and restart it about
    /// `down_for` later (clients are never crashed: they run once).
    pub fn crashes(&mut self, every: Duration, down_for: Duration) -> &mut Self {
        self.crashes = Some((every, down_for));
        self
    }

    /// The faults of one run: (virtual ns, control), before `limit`.
    pub(crate) fn schedule(
        &self,
        seed: u64,
        hosts: usize,
        servers: &[usize],
        limit: u64,
    ) -> Vec<(u64, Control)> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(CHAOS_STREAM);
        let mut faults = Vec::new();
        if let Some((every, lasting)) = self.partitions {
            if hosts >= 2 {
                let mut at = 0u64;
                while faults.len() < CHAOS_FAULTS_MAX {
                    at = at.saturating_add(exponential(&mut rng, every));
                    if at >= limit {
                        break;
                    }
                    let a = rng.random_range(0..hosts);
                    let b = (a + rng.random_range(1..hosts)) % hosts;
                    let heal = at.saturating_add(exponential(&mut rng, lasting));
                    faults.push((at, Control::Partition(a, b)));
                    faults.push((heal, Control::Heal(a, b)));
                }
            }
        }
        if let Some((every, down_for)) = self.crashes {
            if !servers.is_empty() {
                let mut at = 0u64;
                while faults.len() < CHAOS_FAULTS_MAX {
                    at = at.saturating_add(exponential(&mut rng, every));
                    if at >= limit {
                        break;
                    }
                    let host = servers[rng.random_range(0..servers.len())];
                    let back = at.saturating_add(exponential(&mut rng, down_for));
                    faults.push((at, Control::Crash(host)));
                    faults.push((back, Control::Restart(host)));
                }
            }
        }
        faults
    }
}

/// An exponential draw with mean `mean`, in ns (at least 1).
fn exponential(rng: &mut ChaCha20Rng, mean: Duration) -> u64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    ((-u.ln() * mean.as_nanos() as f64) as u64).max(1)
}
