//! Export a [`Timeline`] as Chrome trace event JSON, which
//! ui.perfetto.dev and chrome://tracing open: one process per service, one
//! thread per task, a 1 µs slice per event (named by its kind, its fields
//! in `args`), and a flow arrow from every send to the receive it caused.
//!
//! Timestamps are microseconds from the timeline's first event, on the
//! first run's clock (every run corrected by its estimated offset).

use std::io::{self, Write};

use serde_json::json;

use crate::timeline::{At, Link, Timeline};

/// Width of an event's slice, µs: flows attach to slices, and a slice
/// needs a width to be seen.
const SLICE_US: f64 = 1.0;

/// Write `timeline` as a trace event JSON object (`{"traceEvents": [...]}`),
/// one trace event per line.
pub fn write_trace(timeline: &Timeline, out: &mut dyn Write) -> io::Result<()> {
    write_trace_of(timeline, &|_| true, out)
}

/// Write the events of `timeline` that `keep` selects (a request view,
/// say), and the messages between them.
pub fn write_trace_of(
    timeline: &Timeline,
    keep: &dyn Fn(At) -> bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let origin = timeline
        .order
        .iter()
        .find(|at| keep(**at))
        .map_or(0, |at| timeline.corrected_wall_ns(*at));
    let mut first = true;
    let mut emit = |out: &mut dyn Write, value: serde_json::Value| -> io::Result<()> {
        out.write_all(if first {
            b"{\"traceEvents\":[\n"
        } else {
            b",\n"
        })?;
        first = false;
        serde_json::to_writer(&mut *out, &value)?;
        Ok(())
    };
    for (run, log) in timeline.runs.iter().enumerate() {
        let mut tasks: Vec<u64> = log
            .events
            .iter()
            .enumerate()
            .filter(|(index, _)| keep(At { run, index: *index }))
            .map(|(_, e)| e.task.0)
            .collect();
        if tasks.is_empty() {
            continue;
        }
        emit(
            out,
            json!({"ph": "M", "name": "process_name", "pid": run + 1, "tid": 0,
                   "args": {"name": log.service}}),
        )?;
        tasks.sort_unstable();
        tasks.dedup();
        for task in tasks {
            emit(
                out,
                json!({"ph": "M", "name": "thread_name", "pid": run + 1, "tid": task,
                       "args": {"name": format!("task {task}")}}),
            )?;
        }
    }
    let ts = |at| (timeline.corrected_wall_ns(at) - origin) as f64 / 1e3;
    for &at in timeline.order.iter().filter(|at| keep(**at)) {
        let event = timeline.event(at);
        emit(
            out,
            json!({
                "ph": "X",
                "name": event.kind.name(),
                "cat": event.kind.class().name(),
                "pid": at.run + 1,
                "tid": event.task.0,
                "ts": ts(at),
                "dur": SLICE_US,
                "args": {"seq": event.seq, "event": event.kind.to_string()},
            }),
        )?;
    }
    for (id, m) in timeline.matches.iter().enumerate() {
        if m.link == Link::Connection || !keep(m.cause) || !keep(m.effect) {
            continue;
        }
        let (cause, effect) = (timeline.event(m.cause), timeline.event(m.effect));
        let name = match m.link {
            Link::Datagram => "datagram",
            _ => "bytes",
        };
        emit(
            out,
            json!({"ph": "s", "id": id, "name": name, "cat": "message",
                   "pid": m.cause.run + 1, "tid": cause.task.0, "ts": ts(m.cause)}),
        )?;
        emit(
            out,
            json!({"ph": "f", "bp": "e", "id": id, "name": name, "cat": "message",
                   "pid": m.effect.run + 1, "tid": effect.task.0, "ts": ts(m.effect)}),
        )?;
    }
    if first {
        out.write_all(b"{\"traceEvents\":[")?;
    }
    out.write_all(b"\n],\"displayTimeUnit\":\"ns\"}\n")
}
