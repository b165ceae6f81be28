//! The command line's shape (clap derive).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use deja_replayer::breakpoint::{Breakpoint, KindFilter};
use deja_replayer::sweep::Shard;

/// deja: deterministic record and replay for Rust network services.
#[derive(Debug, Parser)]
#[command(name = "deja", version, propagate_version = true)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Parse `std::env::args`, with the checks clap cannot express.
    pub(crate) fn parse_checked() -> Result<Cli, clap::Error> {
        let cli = Cli::try_parse()?;
        if let Command::Inspect(InspectArgs {
            from: Some(from),
            to: Some(to),
            ..
        }) = &cli.command
        {
            if from > to {
                return Err(Cli::command().error(
                    ErrorKind::ArgumentConflict,
                    format!("--from {from} is after --to {to}: no event can match"),
                ));
            }
        }
        if let Command::Replay(ReplayArgs {
            gdb: true,
            on_break: Some(action),
            ..
        }) = &cli.command
        {
            if *action != OnBreakArg::Trap {
                return Err(Cli::command().error(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "--gdb stops in gdb at each hit (trap); it cannot also --on-break {}",
                        action.env_value()
                    ),
                ));
            }
        }
        Ok(cli)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a service with recording on: `deja record [--out DIR] -- CMD [ARGS...]`.
    ///
    /// CMD runs with its output passed through and DEJA_MODE=record,
    /// DEJA_TRACE=DIR, DEJA_SERVICE and DEJA_RUN_ID set; it must use the
    /// deja runtime (`#[deja::main]`). SIGINT, SIGTERM and SIGHUP sent to
    /// deja are passed on to CMD. deja exits with CMD's exit code
    /// (128 + N if signal N killed it).
    Record(RecordArgs),
    /// Replay a recorded run: `deja replay RUN_DIR [--break SPEC]... [-- CMD [ARGS...]]`.
    ///
    /// CMD (by default the recorded command line) runs with its output
    /// passed through and DEJA_MODE=replay, DEJA_TRACE=RUN_DIR set (and
    /// DEJA_BREAK, DEJA_ON_BREAK, DEJA_UNTIL for breakpoints). deja exits
    /// with CMD's exit code: the recorded run's on success, 0 when
    /// --until or `quit` ended it, 3 when replay diverged, 1 for an
    /// unreadable log (128 + N if signal N killed it).
    Replay(ReplayArgs),
    /// Print a run's events, one line (or JSON object) per event.
    Inspect(InspectArgs),
    /// Read every event and check every checksum; exit 4 on corruption.
    Verify(VerifyArgs),
    /// Summarize a run: events by kind, tasks, duration, sizes, gaps.
    Stats(StatsArgs),
    /// Compare two runs of a service: the first operation where they differ.
    ///
    /// Events are aligned by task and by operation index within the task;
    /// times, seqs, clock readings, root seeds, connection ids and the
    /// ports in results are ignored (they differ between two good runs).
    /// The first difference is the earliest in RUN_A's seq order; it is
    /// shown with the task's operations just before it, in both runs.
    /// Exit codes, like diff(1) but with deja's 1 for errors: 0 when the
    /// runs match, 5 when they differ, 1 for an unreadable log, 2 usage.
    Diff(DiffArgs),
    /// Run a simulation once per seed: `deja sim [--seeds N] -- CMD [ARGS...]`.
    ///
    /// CMD builds a `deja::sim::Sim` from DEJA_SEED (the fixtures' `sim`
    /// subcommand does) and runs with DEJA_MODE=sim, DEJA_SEED and
    /// DEJA_TRACE=DIR set, its output captured; it exits 0 when the seed
    /// passes. Seeds run in parallel; the first failing seed's output (its
    /// seed, `reproduce:` and `replay:` lines) is printed. deja exits 0
    /// when every seed passed, 1 when one failed or timed out. `--shard
    /// K/N` runs one part of the seeds on one machine, `--report` and
    /// `--junit` write what ran, and `deja sim merge` combines the shards.
    Sim(SimArgs),
    /// Merge several services' logs into one causal timeline: `deja timeline RUN_DIR...`.
    ///
    /// Reads are matched to the writes that produced their bytes (TCP
    /// streams by address pair and byte offset), datagrams by addresses
    /// and content, connects to accepts; the merged order puts every cause
    /// before its effect. Prints each pair of hosts' clock offset with its
    /// bounds and every receive stamped before its send.
    Timeline(TimelineArgs),
}

/// `deja timeline`.
#[derive(Debug, Args)]
pub(crate) struct TimelineArgs {
    /// The run directories, one per service (the first one's clock is the reference).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub(crate) runs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) format: TimelineFormat,
    /// Only the request around a mark: `VALUE`, `NAME:VALUE` or `NAME:*`
    /// (every request with such a mark). Shows its events across services,
    /// its critical path and where the time went.
    #[arg(long, value_name = "MARK")]
    pub(crate) request: Option<String>,
    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `deja timeline --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TimelineFormat {
    /// One line per event, causal order, with clock offsets first.
    Text,
    /// JSON lines: a header (runs, clocks, anomalies), then one object per event.
    Json,
    /// Chrome trace event JSON for ui.perfetto.dev or chrome://tracing:
    /// a track per service and task, an arrow per matched message.
    Perfetto,
    /// OTLP JSON traces (Jaeger imports them): one trace per request, for
    /// every mark or those `--request` picks; a span per task.
    Otlp,
}

/// `deja record`.
#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// Where to write runs; the run goes to `DIR/<service>-<run id>`.
    /// Created if missing.
    #[arg(long, value_name = "DIR", default_value = "deja-runs")]
    pub(crate) out: PathBuf,
    /// The service's name, used in the run directory's name
    /// [default: CMD's file name].
    #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    pub(crate) service: Option<String>,
    /// Flight recorder: keep only the last MiB of log in a ring, and keep
    /// a window (`DIR/<service>-<run id>-keptN`) on SIGUSR2, on a panic,
    /// or when the service calls `deja::flight::keep()`.
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub(crate) flight: Option<u64>,
    /// The service to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
}

/// `deja sim`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct SimArgs {
    /// `deja sim merge`.
    #[command(subcommand)]
    pub(crate) action: Option<SimAction>,
    /// How many seeds to run, from --from.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) seeds: u64,
    /// The first seed.
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub(crate) from: u64,
    /// Run just this seed (overrides --seeds and --from).
    #[arg(long, value_name = "SEED")]
    pub(crate) seed: Option<u64>,
    /// Seeds at a time [default: the number of cores].
    #[arg(long, value_name = "J", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) jobs: Option<u16>,
    /// Run every seed and report every failure, instead of stopping at the first.
    #[arg(long)]
    pub(crate) all: bool,
    /// Where failing seeds write their per-host logs. Created if missing.
    #[arg(long, value_name = "DIR", default_value = "deja-runs")]
    pub(crate) out: PathBuf,
    /// Seconds one seed may run before it is killed and counted as failed.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) timeout: u64,
    /// Run only shard K of N (K from 1): a contiguous block of the seeds,
    /// the same on every machine; shards 1/N to N/N cover the seeds
    /// exactly once. For a CI matrix or a Kubernetes Indexed Job
    /// (`--shard $((JOB_COMPLETION_INDEX + 1))/N`).
    #[arg(long, value_name = "K/N", conflicts_with = "seed")]
    pub(crate) shard: Option<Shard>,
    /// Write what ran and failed as JSON, for `deja sim merge`.
    #[arg(long, value_name = "FILE")]
    pub(crate) report: Option<PathBuf>,
    /// Write JUnit XML (one test case per seed) for the CI system.
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
    /// The simulation to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
}

/// `deja sim`'s subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SimAction {
    /// Combine the reports of every shard of one sweep: `deja sim merge
    /// REPORT...`. Prints the whole sweep's summary, refuses reports of
    /// different sweeps, a shard twice or a missing shard, and exits 1
    /// when a seed failed.
    Merge(SimMergeArgs),
}

/// `deja sim merge`.
#[derive(Debug, Args)]
pub(crate) struct SimMergeArgs {
    /// The shards' reports (`deja sim --shard K/N --report FILE`).
    #[arg(required = true, value_name = "REPORT")]
    pub(crate) reports: Vec<PathBuf>,
    /// Write the merged report as JSON.
    #[arg(long, value_name = "FILE")]
    pub(crate) report: Option<PathBuf>,
    /// Write the merged JUnit XML (one test case per seed).
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
}

/// `deja replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The run directory (it contains 00000000.deja).
    pub(crate) run_dir: PathBuf,
    /// Stop at events matching SPEC: terms joined by commas, all of which
    /// must match: seq=N, task=N, kind=K[|K...] (recv, send, accept,
    /// connect, close, time, timer, rand, spawn, mark, or a fine kind such
    /// as tcp_write), mark=VALUE (or NAME:VALUE; a mark in scope for the
    /// event's task), conn=N, t>=DURATION (1.5s, 200ms), after=N (seq > N).
    /// Repeat for OR.
    #[arg(long = "break", value_name = "SPEC", value_parser = parse_breakpoint)]
    pub(crate) breaks: Vec<Breakpoint>,
    /// End the replay (exit 0) at the first event with seq >= SEQ.
    #[arg(long, value_name = "SEQ")]
    pub(crate) until: Option<u64>,
    /// What a hit does: pause at a prompt (the default when stdin is a
    /// terminal: continue, step, next KIND, print, events N, tasks, quit,
    /// read from stdin), trap (SIGTRAP for an attached debugger), or print
    /// and go on (the default otherwise).
    #[arg(long, value_enum, value_name = "ACTION")]
    pub(crate) on_break: Option<OnBreakArg>,
    /// Hits and the outcome as JSON lines on stdout; the service's own
    /// stdout goes to stderr.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run the service under gdb with `--on-break trap`: gdb stops at each
    /// hit with the service's own stack.
    #[arg(long, conflicts_with = "json")]
    pub(crate) gdb: bool,
    /// The service to run and its arguments, after `--`
    /// [default: the recorded command line].
    #[arg(last = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
}

/// `--on-break`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnBreakArg {
    /// An interactive prompt in the replaying process.
    Pause,
    /// Raise SIGTRAP for gdb or lldb.
    Trap,
    /// Print the hit and its context, then continue.
    Print,
}

impl OnBreakArg {
    /// The `DEJA_ON_BREAK` value.
    pub(crate) fn env_value(self) -> &'static str {
        match self {
            OnBreakArg::Pause => "pause",
            OnBreakArg::Trap => "trap",
            OnBreakArg::Print => "print",
        }
    }
}

fn parse_breakpoint(spec: &str) -> Result<Breakpoint, String> {
    spec.parse::<Breakpoint>()
        .map_err(|err| format!("term `{}` (byte {}): {}", err.term, err.offset, err.why))
}

/// `deja inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The run directory (it contains 00000000.deja).
    pub(crate) run_dir: PathBuf,
    /// Only events with seq >= SEQ.
    #[arg(long, value_name = "SEQ")]
    pub(crate) from: Option<u64>,
    /// Only events with seq <= SEQ (reading stops after it).
    #[arg(long, value_name = "SEQ")]
    pub(crate) to: Option<u64>,
    /// Only events of task T.
    #[arg(long, value_name = "T")]
    pub(crate) task: Option<u64>,
    /// Only events of class or kind K; repeat to allow several. Classes:
    /// time, timer, rand, listen, accept, connect, recv, send, close, spawn,
    /// end, mark, signal, exit, gap. Kinds are finer, e.g. tcp_read or
    /// udp_recv (an unknown K lists them all).
    #[arg(long = "kind", value_name = "K", value_parser = KindFilter::parse)]
    pub(crate) kinds: Vec<KindFilter>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `deja verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The run directory (it contains 00000000.deja).
    pub(crate) run_dir: PathBuf,
}

/// `deja stats`.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// The run directory (it contains 00000000.deja).
    pub(crate) run_dir: PathBuf,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `deja diff`.
#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The reference run directory (the good run): the first difference
    /// is the earliest in its order.
    pub(crate) run_a: PathBuf,
    /// The run directory to compare with it.
    pub(crate) run_b: PathBuf,
    /// How many of the task's operations before the difference to show.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub(crate) context: u16,
    /// One JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
