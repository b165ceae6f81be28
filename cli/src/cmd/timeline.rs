//! `deja timeline RUN_DIR...`: several services' logs in one causal order.

use std::io::Write;
use std::process::ExitCode;

use std::collections::HashSet;

use anyhow::Context;
use deja_replayer::request::{Place, RequestView, Requests};
use deja_replayer::timeline::{At, Link, Timeline};

use crate::args::{TimelineArgs, TimelineFormat};
use crate::cmd::{stdout, write_failed};
use crate::{exit, Hinted};

pub(crate) fn run(args: &TimelineArgs) -> anyhow::Result<ExitCode> {
    let timeline = Timeline::load(&args.runs)?;
    // Request views: for --request, and for OTLP (a trace per request).
    // Only those need the request index (a pass over every event).
    let requests = (args.request.is_some() || args.format == TimelineFormat::Otlp)
        .then(|| Requests::new(&timeline));
    let views = match (&args.request, args.format, &requests) {
        (_, _, None) => None,
        (Some(pattern), _, Some(requests)) => {
            let marks = requests.marks(pattern);
            if marks.is_empty() {
                return Err(Hinted::error(
                    format!("no mark matches {pattern:?} in these {} logs", timeline.runs.len()),
                    "list the marks with `deja inspect RUN_DIR --kind mark`; match one by VALUE, NAME:VALUE or NAME:*",
                ));
            }
            Some(requests.views(&marks))
        }
        (None, _, Some(requests)) => {
            let marks = requests.all_marks();
            if marks.is_empty() {
                return Err(Hinted::error(
                    format!("no marks in these {} logs", timeline.runs.len()),
                    "OTLP traces are built per request, found from its marks: call deja::mark(\"request\", id) where the service handles one",
                ));
            }
            Some(requests.views(&marks))
        }
    };
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(stdout()),
    };
    let written = match (args.format, &views) {
        (TimelineFormat::Text, None) => write_text(&timeline, &mut out),
        (TimelineFormat::Json, None) => write_json(&timeline, &mut out),
        (TimelineFormat::Perfetto, None) => {
            deja_replayer::perfetto::write_trace(&timeline, &mut out)
        }
        (TimelineFormat::Text, Some(views)) => views
            .iter()
            .try_for_each(|view| write_request_text(&timeline, view, &mut out)),
        (TimelineFormat::Json, Some(views)) => views
            .iter()
            .try_for_each(|view| write_request_json(&timeline, view, &mut out)),
        (TimelineFormat::Perfetto, Some(views)) => {
            let keep: HashSet<At> = views
                .iter()
                .flat_map(|v| v.events.iter().copied())
                .collect();
            deja_replayer::perfetto::write_trace_of(&timeline, &|at| keep.contains(&at), &mut out)
        }
        (TimelineFormat::Otlp, views) => deja_replayer::otlp::write_traces(
            requests.as_ref().expect("OTLP builds the request index"),
            views.as_deref().unwrap_or(&[]),
            &mut out,
        ),
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

/// Width of the widest service name, for aligned columns.
fn service_width(timeline: &Timeline) -> usize {
    timeline
        .runs
        .iter()
        .map(|run| run.service.len())
        .max()
        .unwrap_or(0)
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
    let width = service_width(timeline);
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

fn place_name(timeline: &Timeline, place: Place) -> String {
    let service = |run: usize| timeline.runs[run].service.as_str();
    match place {
        Place::Running { run } => format!("{} running", service(run)),
        Place::Timer { run } => format!("{} waiting on a timer", service(run)),
        Place::Waiting { run } => format!("{} waiting for input", service(run)),
        Place::Connecting { run } => format!("{} connecting", service(run)),
        Place::Spawn { run } => format!("{} starting a task", service(run)),
        Place::Network { from, to } => format!("network {} → {}", service(from), service(to)),
    }
}

fn mark_text(timeline: &Timeline, at: At) -> String {
    match &timeline.event(at).kind {
        deja_recorder::EventKind::Mark { name, value } => {
            format!("{name}:{}", String::from_utf8_lossy(value))
        }
        _ => name(timeline, at),
    }
}

fn write_request_text(
    timeline: &Timeline,
    view: &RequestView,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut services: Vec<&str> = view
        .events
        .iter()
        .map(|at| timeline.runs[at.run].service.as_str())
        .collect();
    services.sort_unstable();
    services.dedup();
    writeln!(
        out,
        "request {} ({}): {} events in {} services ({}), {:.3} ms from {} to {}",
        mark_text(timeline, view.mark),
        name(timeline, view.mark),
        view.events.len(),
        services.len(),
        services.join(", "),
        view.total_ns as f64 / 1e6,
        name(timeline, view.origin),
        name(timeline, view.end),
    )?;
    writeln!(out, "where the time went (critical path):")?;
    let total = view.total_ns.max(1) as f64;
    for (place, ns) in view.time_by_place().into_iter().filter(|(_, ns)| *ns > 0) {
        writeln!(
            out,
            "  {:>10.3} ms {:>5.1}%  {}",
            ns as f64 / 1e6,
            ns as f64 * 100.0 / total,
            place_name(timeline, place)
        )?;
    }
    writeln!(out, "critical path:")?;
    for step in &view.critical_path {
        writeln!(
            out,
            "  {:>10.3} ms  {} -> {}  {}",
            step.ns as f64 / 1e6,
            name(timeline, step.from),
            name(timeline, step.to),
            place_name(timeline, step.place)
        )?;
    }
    writeln!(out, "events (causal order; * on the critical path):")?;
    let width = service_width(timeline);
    let origin = timeline.corrected_wall_ns(view.origin);
    for &at in &view.events {
        write!(
            out,
            "{} {:>12} {:<width$} {}",
            if view.is_critical(at) { '*' } else { ' ' },
            seconds(timeline.corrected_wall_ns(at) - origin),
            timeline.runs[at.run].service,
            timeline.event(at)
        )?;
        if let Some(cause) = timeline.cause_of(at) {
            write!(out, "  <- {}", name(timeline, cause.cause))?;
        }
        writeln!(out)?;
    }
    writeln!(out)
}

fn write_request_json(
    timeline: &Timeline,
    view: &RequestView,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let at_json = |at: At| {
        serde_json::json!({
            "run": at.run,
            "service": timeline.runs[at.run].service,
            "seq": timeline.event(at).seq,
        })
    };
    let events: Vec<serde_json::Value> = view
        .events
        .iter()
        .map(|&at| {
            serde_json::json!({
                "run": at.run,
                "service": timeline.runs[at.run].service,
                "corrected_wall_ns": timeline.corrected_wall_ns(at),
                "critical": view.is_critical(at),
                "event": timeline.event(at),
            })
        })
        .collect();
    let steps: Vec<serde_json::Value> = view
        .critical_path
        .iter()
        .map(|step| {
            serde_json::json!({
                "from": at_json(step.from),
                "to": at_json(step.to),
                "ns": step.ns,
                "place": place_name(timeline, step.place),
            })
        })
        .collect();
    let places: Vec<serde_json::Value> = view
        .time_by_place()
        .into_iter()
        .map(|(place, ns)| serde_json::json!({"place": place_name(timeline, place), "ns": ns}))
        .collect();
    let line = serde_json::json!({
        "mark": mark_text(timeline, view.mark),
        "mark_at": at_json(view.mark),
        "origin": at_json(view.origin),
        "end": at_json(view.end),
        "total_ns": view.total_ns,
        "time_by_place": places,
        "critical_path": steps,
        "events": events,
    });
    serde_json::to_writer(&mut *out, &line)?;
    writeln!(out)
}
