//! deja's replay engine and log analysis.
//!
//! Today: [`analysis`], what `deja stats` reports. The replay cursor,
//! divergence reports and breakpoints arrive with the runtime issue.
//!
//! ```no_run
//! let stats = deja_replayer::analysis::RunStats::compute("runs/checkout-20261123T091500Z-1a2b")?;
//! println!("{} events", stats.events);
//! # Ok::<(), deja_recorder::ReadError>(())
//! ```

pub mod analysis;
pub mod gate;
