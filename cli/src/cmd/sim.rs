//! `deja sim`: run a binary's simulation once per seed, in parallel, and
//! report the failing seeds.
//!
//! The binary builds a `deja::sim::Sim` from `DEJA_SEED` (the fixtures'
//! `sim` subcommand does) and exits 0 when the seed passes; any other
//! exit, or running past the timeout, fails the seed. Each run gets
//! `DEJA_MODE=sim`, `DEJA_SEED` and `DEJA_TRACE` (where a failing seed
//! writes its per-host logs).
//!
//! `--shard K/N` runs one contiguous block of the seeds (the same block on
//! every machine), `--report` and `--junit` write what ran, and `deja sim
//! merge` combines the shards' reports into the whole sweep's
//! (`deja_replayer::sweep`).

use std::io::Read;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use deja_replayer::sweep::{self, SweepRecord};

use crate::args::{SimAction, SimArgs, SimMergeArgs};
use crate::{exit, print_error};

/// How often a running seed is checked for exit or timeout.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Most output kept per seed (the failure report is at its end).
const OUTPUT_BYTES_MAX: usize = 256 << 10;

/// Set by SIGINT or SIGTERM: launch no more seeds.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// How one seed ended.
#[derive(Debug)]
enum Verdict {
    Passed,
    Failed(String),
    TimedOut,
}

#[derive(Debug)]
struct Outcome {
    seed: u64,
    verdict: Verdict,
    output: String,
}

pub(crate) fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    if let Some(SimAction::Merge(merge)) = &args.action {
        return run_merge(merge);
    }
    let (all, share) = match (args.seed, args.shard) {
        (Some(seed), _) => {
            let one = seed..seed.saturating_add(1);
            (one.clone(), one)
        }
        (None, shard) => {
            let all = args.from..args.from.saturating_add(args.seeds);
            let share = shard.map_or(all.clone(), |shard| shard.seeds(all.clone()));
            (all, share)
        }
    };
    let (first, end) = (share.start, share.end);
    let jobs = args
        .jobs
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, interrupted as *const () as libc::sighandler_t);
        libc::signal(
            libc::SIGTERM,
            interrupted as *const () as libc::sighandler_t,
        );
    }
    let total = end - first;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} seeds ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let next = AtomicU64::new(first);
    let stop = AtomicBool::new(false);
    let outcomes: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let launch_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(usize::try_from(total).unwrap_or(usize::MAX)) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) || INTERRUPTED.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                match run_seed(args, seed) {
                    Ok(outcome) => {
                        let failed = !matches!(outcome.verdict, Verdict::Passed);
                        let mut outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
                        outcomes.push(outcome);
                        if failed {
                            let failing = outcomes
                                .iter()
                                .filter(|o| !matches!(o.verdict, Verdict::Passed))
                                .count();
                            bar.set_message(format!("{failing} failed"));
                            if !args.all {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        bar.inc(1);
                    }
                    Err(err) => {
                        *launch_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(err) = launch_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(err);
    }
    let mut outcomes = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    outcomes.sort_by_key(|outcome| outcome.seed);
    let elapsed = started.elapsed();
    let mut record = SweepRecord::new(command_line(args), all, args.shard);
    for outcome in &outcomes {
        match &outcome.verdict {
            Verdict::Passed => record.passed(outcome.seed),
            verdict => record.failed(
                outcome.seed,
                why(args, verdict),
                rerun(args, outcome.seed),
                &outcome.output,
            ),
        }
    }
    let complete = record.seeds_run() == end - first;
    record.finish(complete, elapsed);
    write_outputs(&record, args.report.as_deref(), args.junit.as_deref())?;
    Ok(report(args, &record, &outcomes))
}

/// `deja sim merge`: the shards' reports as the whole sweep's.
fn run_merge(args: &SimMergeArgs) -> anyhow::Result<ExitCode> {
    let records = args
        .reports
        .iter()
        .map(|path| SweepRecord::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = sweep::merge(records)?;
    write_outputs(&merged, args.report.as_deref(), args.junit.as_deref())?;
    if let Some(first) = merged.failures.first() {
        print_failure(&first.output, first.seed, &first.why, &first.rerun);
    }
    eprintln!("{}", merged.summary());
    Ok(ExitCode::from(if merged.failures.is_empty() {
        exit::SUCCESS
    } else {
        exit::ERROR
    }))
}

/// The first failing seed, as a sweep and a merge both show it: its
/// output, then what failed and how to run it again.
fn print_failure(output: &str, seed: u64, why: &str, rerun: &str) {
    let output = output.trim_end();
    if !output.is_empty() {
        eprintln!("{output}");
    }
    eprintln!("deja sim: seed {seed} failed ({why})");
    eprintln!("rerun: {rerun}");
}

fn write_outputs(
    record: &SweepRecord,
    report: Option<&std::path::Path>,
    junit: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if let Some(path) = report {
        record
            .write(path)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    if let Some(path) = junit {
        record
            .write_junit_file(path)
            .with_context(|| format!("cannot write JUnit XML to {}", path.display()))?;
    }
    Ok(())
}

/// The simulation's command line, as one shell line.
fn command_line(args: &SimArgs) -> String {
    let words: Vec<String> = args
        .command
        .iter()
        .map(|word| word.to_string_lossy().into_owned())
        .collect();
    deja_recorder::meta::shell_line(&words)
}

fn rerun(args: &SimArgs, seed: u64) -> String {
    format!("deja sim --seed {seed} -- {}", command_line(args))
}

fn why(args: &SimArgs, verdict: &Verdict) -> String {
    match verdict {
        Verdict::Failed(why) => why.clone(),
        Verdict::TimedOut => format!("timed out after {}s", args.timeout),
        Verdict::Passed => "passed".to_string(),
    }
}

/// Run the command for one seed, its output captured, bounded in time.
fn run_seed(args: &SimArgs, seed: u64) -> anyhow::Result<Outcome> {
    let (program, rest) = args.command.split_first().expect("clap requires CMD");
    let mut child = Command::new(program)
        .args(rest)
        .env("DEJA_MODE", "sim")
        .env("DEJA_SEED", seed.to_string())
        .env("DEJA_TRACE", &args.out)
        .env_remove("DEJA_RUN_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
    let readers = [
        drain(
            child
                .stdout
                .take()
                .map(|out| Box::new(out) as Box<dyn Read + Send>),
        ),
        drain(
            child
                .stderr
                .take()
                .map(|err| Box::new(err) as Box<dyn Read + Send>),
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let verdict = loop {
        match child.try_wait().context("cannot wait for the simulation")? {
            Some(status) if status.success() => break Verdict::Passed,
            Some(status) => {
                use std::os::unix::process::ExitStatusExt;
                break Verdict::Failed(match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit code {code}"),
                    (None, Some(signal)) => format!("killed by signal {signal}"),
                    _ => "failed".to_string(),
                });
            }
            None if Instant::now() >= deadline => {
                kill(&mut child);
                break Verdict::TimedOut;
            }
            None if INTERRUPTED.load(Ordering::Relaxed) => {
                kill(&mut child);
                break Verdict::Failed("interrupted".into());
            }
            None => std::thread::sleep(POLL_INTERVAL),
        }
    };
    let mut output = String::new();
    for reader in readers {
        if let Some(text) = reader.and_then(|handle| handle.join().ok()) {
            output.push_str(&text);
        }
    }
    Ok(Outcome {
        seed,
        verdict,
        output,
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Read a pipe to its end on a thread, keeping the last bytes.
fn drain(pipe: Option<Box<dyn Read + Send>>) -> Option<std::thread::JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 8192];
        // Bounded by the child: the pipe ends when it exits or is killed.
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&chunk[..n]);
            if kept.len() > OUTPUT_BYTES_MAX {
                kept.drain(..kept.len() - OUTPUT_BYTES_MAX);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    }))
}

fn report(args: &SimArgs, record: &SweepRecord, outcomes: &[Outcome]) -> ExitCode {
    if let Some(first) = outcomes
        .iter()
        .find(|o| !matches!(o.verdict, Verdict::Passed))
    {
        print_failure(
            &first.output,
            first.seed,
            &why(args, &first.verdict),
            &rerun(args, first.seed),
        );
    }
    eprintln!("{}", record.summary());
    if INTERRUPTED.load(Ordering::Relaxed) {
        print_error("interrupted: the sweep stopped early");
    }
    if record.failures.is_empty() && !INTERRUPTED.load(Ordering::Relaxed) {
        ExitCode::from(exit::SUCCESS)
    } else {
        ExitCode::from(exit::ERROR)
    }
}
