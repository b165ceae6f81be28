//! What the simulated network does to traffic: latency, loss,
//! duplication, reordering and bandwidth, per link.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// How long a packet takes on a link, drawn from the simulation's seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    /// Always the same.
    Fixed(Duration),
    /// Uniform between the bounds (inclusive).
    Uniform(Duration, Duration),
    /// `min` plus an exponential tail with the given mean: most packets
    /// are fast, a few are very slow (what real networks do).
    Exponential {
        /// The floor.
        min: Duration,
        /// Mean of the tail above the floor.
        mean: Duration,
    },
}

/// The longest latency a draw returns: a tail that never ends would stall
/// a simulation forever.
const LATENCY_DRAW_MAX: Duration = Duration::from_secs(60);

impl Latency {
    pub(crate) fn draw(&self, rng: &mut ChaCha20Rng) -> u64 {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let drawn = match *self {
            Latency::Fixed(d) => ns(d),
            Latency::Uniform(a, b) => {
                let (lo, hi) = (ns(a.min(b)), ns(a.max(b)));
                rng.random_range(lo..=hi)
            }
            Latency::Exponential { min, mean } => {
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                ns(min).saturating_add((-u.ln() * mean.as_nanos() as f64) as u64)
            }
        };
        drawn.min(ns(LATENCY_DRAW_MAX))
    }
}

/// How one link (a pair of hosts, both directions) treats traffic. The
/// simulation's default applies to every link without its own.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkPolicy {
    pub(crate) latency: Latency,
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    pub(crate) reorder: f64,
    pub(crate) reorder_window: Duration,
    pub(crate) bandwidth: Option<u64>,
    pub(crate) split_writes: f64,
    pub(crate) retransmit: Duration,
}

impl Default for LinkPolicy {
    fn default() -> Self {
        LinkPolicy {
            latency: Latency::Uniform(Duration::from_micros(100), Duration::from_millis(2)),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window: Duration::from_millis(10),
            bandwidth: None,
            split_writes: 0.0,
            retransmit: Duration::from_millis(200),
        }
    }
}

impl LinkPolicy {
    /// One-way latency of every packet.
    pub fn latency(&mut self, latency: Latency) -> &mut Self {
        self.latency = latency;
        self
    }

    /// Probability that a packet is lost. UDP datagrams vanish; TCP
    /// segments arrive one retransmission timeout late, as TCP would.
    pub fn loss(&mut self, probability: f64) -> &mut Self {
        self.loss = probability.clamp(0.0, 1.0);
        self
    }

    /// Probability that a UDP datagram arrives twice.
    pub fn duplicate(&mut self, probability: f64) -> &mut Self {
        self.duplicate = probability.clamp(0.0, 1.0);
        self
    }

    /// Probability that a UDP datagram is held back by up to `window`,
    /// so later ones overtake it.
    pub fn reorder(&mut self, probability: f64, window: Duration) -> &mut Self {
        self.reorder = probability.clamp(0.0, 1.0);
        self.reorder_window = window;
        self
    }

    /// Bytes per second each direction carries (unlimited by default).
    pub fn bandwidth(&mut self, bytes_per_second: u64) -> &mut Self {
        self.bandwidth = Some(bytes_per_second.max(1));
        self
    }

    /// Probability that a TCP write reaches the peer in two segments cut
    /// at a random byte, so readers see every chunking a real network
    /// can produce (parsers that assume one read per message break).
    pub fn split_writes(&mut self, probability: f64) -> &mut Self {
        self.split_writes = probability.clamp(0.0, 1.0);
        self
    }

    /// How late a lost TCP segment arrives (default 200 ms): the first
    /// retransmission timeout. Each further loss of the same segment (with
    /// the link's loss probability) doubles it, as TCP's exponential
    /// backoff does; after 8 losses in a row both ends of the connection
    /// are reset.
    pub fn retransmit_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.retransmit = timeout;
        self
    }
}
