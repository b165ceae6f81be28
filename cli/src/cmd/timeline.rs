//! `deja timeline RUN_DIR...`: several services' logs in one causal order.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use deja_replayer::timeline::{At, Link, Timeline};

use crate::args::{TimelineArgs, TimelineFormat};
use crate::cmd::{stdout, write_failed};
use crate::exit;

pub(crate) fn run(args: &TimelineArgs) -> anyhow::Result<ExitCode> {
    let timeline = Timeline::load(&args.runs)?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(stdout()),
    };
    let written = match args.format {
        TimelineFormat::Text => write_text(&timeline, &mut out),
        TimelineFormat::Json => write_json(&timeline, &mut out),
        TimelineFormat::Perfetto => deja_replayer::perfetto::write_trace(&timeline, &mut out),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::from(exit::SUCCESS)),
        Err(err) => write_failed(err),
    }
}

fn seconds(ns: i64) -> String {
    format!(
        "{}{:.6}s",
        if ns < 0 { "-" } else { "+" },
        ns.unsigned_abs() as f64 / 1e9
    )
}

fn name(timeline: &Timeline, at: At) -> String {
    format!(
        "{}#{}",
        timeline.runs[at.run].service,
        timeline.event(at).seq
    )
}

fn write_text(timeline: &Timeline, out: &mut dyn Write) -> std::io::Result<()> {
    let events = timeline.order.len();
    let bytes = timeline
        .matches
        .iter()
        .filter(|m| matches!(m.link, Link::Bytes { .. }))
        .count();
    let datagrams = timeline
        .matches
        .iter()
        .filter(|m| m.link == Link::Datagram)
        .count();
    let connections = timeline.matches.len() - bytes - datagrams;
    writeln!(
        out,
        "timeline: {} runs, {events} events, {bytes} reads matched to writes, {datagrams} datagrams, {connections} connections, {} receives from outside these logs",
        timeline.runs.len(),
        timeline.unmatched_receives
    )?;
    let width = timeline
        .runs
        .iter()
        .map(|run| run.service.len())
        .max()
        .unwrap_or(0);
    for (i, run) in timeline.runs.iter().enumerate() {
        writeln!(
            out,
            "  run {i}: {:<width$}  {} events  clock {} from {}'s  ({})",
            run.service,
            run.events.len(),
            seconds(timeline.run_offsets_ns[i]),
            timeline.runs[0].service,
            run.dir.display()
        )?;
    }
    if !timeline.clocks.is_empty() {
        writeln!(
            out,
            "clock offsets (B's clock minus A's, from matched messages):"
        )?;
        for clock in &timeline.clocks {
            let bound = |b: Option<i64>| b.map_or_else(|| "?".to_string(), seconds);
            writeln!(
                out,
                "  {} - {}: {}  in [{}, {}]  ({} messages A→B, {} B→A){}",
                timeline.runs[clock.b].service,
                timeline.runs[clock.a].service,
                seconds(clock.estimate_ns),
                bound(clock.lower_ns),
                bound(clock.upper_ns),
                clock.samples.0,
                clock.samples.1,
                if clock.inconsistent() {
                    "  INCONSISTENT: the bounds cross (a clock jumped?)"
                } else {
                    ""
                }
            )?;
        }
    }
    if !timeline.effects_before_causes.is_empty() {
        writeln!(
            out,
            "effects before causes ({}; raw clocks):",
            timeline.effects_before_causes.len()
        )?;
        for flagged in &timeline.effects_before_causes {
            writeln!(
                out,
                "  {} received {} before {} sent it",
                name(timeline, flagged.link.effect),
                seconds(flagged.by_ns),
                name(timeline, flagged.link.cause)
            )?;
        }
    }
    if timeline.order_conflicts > 0 {
        writeln!(
            out,
            "warning: {} events could not be placed after their cause: the logs contradict each other",
            timeline.order_conflicts
        )?;
    }
    let origin = timeline
        .order
        .first()
        .map_or(0, |at| timeline.corrected_wall_ns(*at));
    for &at in &timeline.order {
        let event = timeline.event(at);
        write!(
            out,
            "{:>12} {:<width$} {event}",
            seconds(timeline.corrected_wall_ns(at) - origin),
            timeline.runs[at.run].service
        )?;
        if let Some(cause) = timeline.cause_of(at) {
            write!(out, "  <- {}", name(timeline, cause.cause))?;
        }
        for effect in timeline.effects_of(at) {
            if effect.link != Link::Connection {
                write!(out, "  -> {}", name(timeline, effect.effect))?;
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

fn write_json(timeline: &Timeline, out: &mut dyn Write) -> std::io::Result<()> {
    let runs: Vec<serde_json::Value> = timeline
        .runs
        .iter()
        .enumerate()
        .map(|(i, run)| {
            serde_json::json!({
                "run": i,
                "service": run.service,
                "dir": run.dir.display().to_string(),
                "events": run.events.len(),
                "start_wall_ns": run.start_wall_ns,
                "clock_offset_ns": timeline.run_offsets_ns[i],
            })
        })
        .collect();
    let header = serde_json::json!({
        "runs": runs,
        "clocks": timeline.clocks,
        "effects_before_causes": timeline.effects_before_causes,
        "unmatched_receives": timeline.unmatched_receives,
        "order_conflicts": timeline.order_conflicts,
    });
    // JSON lines: the header, then one object per event in causal order.
    serde_json::to_writer(&mut *out, &header)?;
    writeln!(out)?;
    for &at in &timeline.order {
        let event = timeline.event(at);
        let cause = timeline.cause_of(at).map(|m| {
            serde_json::json!({
                "run": m.cause.run,
                "seq": timeline.event(m.cause).seq,
                "link": m.link,
            })
        });
        let line = serde_json::json!({
            "run": at.run,
            "service": timeline.runs[at.run].service,
            "wall_ns": timeline.runs[at.run].wall_ns(at.index),
            "corrected_wall_ns": timeline.corrected_wall_ns(at),
            "event": event,
            "cause": cause,
        });
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
    }
    Ok(())
}
