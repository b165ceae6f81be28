//! deja's replay engine and log analysis.
//!
//! - [`gate`]: the replay cursor. It releases every task's intercepted
//!   calls in the recorded order and reports the first divergence.
//! - [`breakpoint`]: breakpoint specs (`kind=send,mark=order-42`) and the
//!   marks in scope per task.
//! - [`watch`]: which event stops a replay (breakpoints, `step`, `next`,
//!   `--until`) and the `pause` prompt's commands.
//! - [`analysis`]: what `deja stats` reports.
//! - [`timeline`]: several services' logs merged into one causal order,
//!   with clock offsets estimated from matched messages; [`perfetto`]
//!   exports it for ui.perfetto.dev.
//! - [`request`]: one request across services, found from a mark: its
//!   events, critical path and where the time went; [`otlp`] exports
//!   requests as OpenTelemetry traces (Jaeger imports them).
//! - [`sweep`]: seed sweeps split into shards across machines, their
//!   reports, JUnit XML and merging.
//! - [`diff`]: where two runs of a service part ways, what `deja diff`
//!   reports.
//!
//! ```no_run
//! let stats = deja_replayer::analysis::RunStats::compute("runs/checkout-20261123T091500Z-1a2b")?;
//! println!("{} events", stats.events);
//! # Ok::<(), deja_recorder::ReadError>(())
//! ```

pub mod analysis;
pub mod breakpoint;
pub mod diff;
pub mod gate;
pub mod otlp;
pub mod perfetto;
pub mod request;
pub mod sweep;
pub mod timeline;
pub mod watch;
