//! The command line's shape (clap derive).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use deja_recorder::{EventKind, KindClass};

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
    /// Replay a recorded run: `deja replay RUN_DIR [-- CMD [ARGS...]]`.
    ///
    /// CMD (by default the recorded command line) runs with its output
    /// passed through and DEJA_MODE=replay, DEJA_TRACE=RUN_DIR set. deja
    /// exits with CMD's exit code: the recorded run's on success, 3 when
    /// replay diverged, 1 for an unreadable log (128 + N if signal N
    /// killed it).
    Replay(ReplayArgs),
    /// Print a run's events, one line (or JSON object) per event.
    Inspect(InspectArgs),
    /// Read every event and check every checksum; exit 4 on corruption.
    Verify(VerifyArgs),
    /// Summarize a run: events by kind, tasks, duration, sizes, gaps.
    Stats(StatsArgs),
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
    /// The service to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
}

/// `deja replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The run directory (it contains 00000000.deja).
    pub(crate) run_dir: PathBuf,
    /// The service to run and its arguments, after `--`
    /// [default: the recorded command line].
    #[arg(last = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
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

/// Every fine kind name ([`EventKind::name`]), in declaration order.
pub(crate) const KIND_NAMES: [&str; 21] = [
    "clock_mono",
    "clock_wall",
    "timer_fired",
    "root_seed",
    "entropy",
    "tcp_listen",
    "tcp_accept",
    "tcp_connect",
    "tcp_read",
    "tcp_write",
    "tcp_shutdown",
    "tcp_close",
    "udp_bind",
    "udp_send",
    "udp_recv",
    "spawn",
    "task_end",
    "mark",
    "signal",
    "exit",
    "gap",
];

/// One `--kind`: a coarse class or a fine kind name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KindFilter {
    /// A class such as `recv`.
    Class(KindClass),
    /// A fine kind such as `tcp_read`.
    Kind(&'static str),
}

impl KindFilter {
    /// Parse a class name, else a kind name (case-insensitive).
    pub(crate) fn parse(name: &str) -> Result<KindFilter, String> {
        let name = name.trim().to_ascii_lowercase();
        if let Some(class) = KindClass::from_name(&name) {
            return Ok(KindFilter::Class(class));
        }
        if let Some(kind) = KIND_NAMES.into_iter().find(|kind| *kind == name) {
            return Ok(KindFilter::Kind(kind));
        }
        let classes: Vec<&str> = KindClass::ALL.iter().map(|class| class.name()).collect();
        Err(format!(
            "unknown kind\n  classes: {}\n  kinds:   {}",
            classes.join(", "),
            KIND_NAMES.join(", ")
        ))
    }

    /// Does `kind` pass this filter?
    pub(crate) fn matches(self, kind: &EventKind) -> bool {
        match self {
            KindFilter::Class(class) => kind.class() == class,
            KindFilter::Kind(name) => kind.name() == name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deja_recorder::{
        ConnId, GapReason, IoErrorKind, ReadOutcome, SignalKind, TaskId, TaskOutcome,
    };

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// One of every kind. The match below stops compiling when a variant
    /// is added, which is the cue to extend this list and [`KIND_NAMES`].
    fn one_of_each() -> Vec<EventKind> {
        let addr = "127.0.0.1:1".parse().unwrap();
        let err = IoErrorKind::Other;
        let kinds = vec![
            EventKind::ClockMono { ns: 0 },
            EventKind::ClockWall { unix_ns: 0 },
            EventKind::TimerFired {
                timer: 0,
                deadline_ns: 0,
            },
            EventKind::RootSeed { seed: [0; 32] },
            EventKind::Entropy { bytes: vec![] },
            EventKind::TcpListen {
                listener: ConnId(0),
                addr: String::new(),
                result: Err(err),
            },
            EventKind::TcpAccept {
                listener: ConnId(0),
                result: Err(err),
            },
            EventKind::TcpConnect {
                conn: ConnId(0),
                addr: String::new(),
                result: Err(err),
            },
            EventKind::TcpRead {
                conn: ConnId(0),
                result: ReadOutcome::Eof,
            },
            EventKind::TcpWrite {
                conn: ConnId(0),
                result: Err(err),
            },
            EventKind::TcpShutdown {
                conn: ConnId(0),
                result: Ok(()),
            },
            EventKind::TcpClose { conn: ConnId(0) },
            EventKind::UdpBind {
                socket: ConnId(0),
                addr: String::new(),
                result: Err(err),
            },
            EventKind::UdpSend {
                socket: ConnId(0),
                peer: addr,
                result: Err(err),
            },
            EventKind::UdpRecv {
                socket: ConnId(0),
                result: Err(err),
            },
            EventKind::Spawn {
                child: TaskId(1),
                name: None,
            },
            EventKind::TaskEnd {
                outcome: TaskOutcome::Completed,
            },
            EventKind::Mark {
                name: String::new(),
                value: vec![],
            },
            EventKind::Signal {
                signal: SignalKind::Hangup,
            },
            EventKind::Exit { code: 0 },
            EventKind::Gap {
                first_lost_seq: 0,
                lost: 1,
                reason: GapReason::QueueFull,
            },
        ];
        for kind in &kinds {
            match kind {
                EventKind::ClockMono { .. }
                | EventKind::ClockWall { .. }
                | EventKind::TimerFired { .. }
                | EventKind::RootSeed { .. }
                | EventKind::Entropy { .. }
                | EventKind::TcpListen { .. }
                | EventKind::TcpAccept { .. }
                | EventKind::TcpConnect { .. }
                | EventKind::TcpRead { .. }
                | EventKind::TcpWrite { .. }
                | EventKind::TcpShutdown { .. }
                | EventKind::TcpClose { .. }
                | EventKind::UdpBind { .. }
                | EventKind::UdpSend { .. }
                | EventKind::UdpRecv { .. }
                | EventKind::Spawn { .. }
                | EventKind::TaskEnd { .. }
                | EventKind::Mark { .. }
                | EventKind::Signal { .. }
                | EventKind::Exit { .. }
                | EventKind::Gap { .. } => {}
            }
        }
        kinds
    }

    #[test]
    fn kind_names_are_exactly_the_event_kinds() {
        let names: Vec<&str> = one_of_each().iter().map(EventKind::name).collect();
        assert_eq!(names, KIND_NAMES);
    }

    #[test]
    fn filters_parse_classes_then_kinds() {
        assert_eq!(
            KindFilter::parse("recv"),
            Ok(KindFilter::Class(KindClass::Recv))
        );
        assert_eq!(
            KindFilter::parse("TCP_READ"),
            Ok(KindFilter::Kind("tcp_read"))
        );
        let err = KindFilter::parse("bogus").unwrap_err();
        assert!(err.contains("udp_recv") && err.contains("timer"), "{err}");

        let read = EventKind::TcpRead {
            conn: ConnId(1),
            result: ReadOutcome::Eof,
        };
        assert!(KindFilter::Class(KindClass::Recv).matches(&read));
        assert!(KindFilter::Kind("tcp_read").matches(&read));
        assert!(!KindFilter::Kind("udp_recv").matches(&read));
    }
}
