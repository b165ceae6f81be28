//! Export request views as OTLP JSON (the OpenTelemetry protocol's JSON
//! encoding of `ExportTraceServiceRequest`), which Jaeger and other
//! OpenTelemetry backends import.
//!
//! Each [`RequestView`] becomes one trace. Each task of a service that
//! takes part in the request becomes one span, from its first event in the
//! request to its last, under `resource.service.name` = the service. A
//! span's parent is the span that caused its first event: the sender of
//! the bytes it read first, else the task that spawned it, else the
//! connect its accept answered. The origin's span is the root. The task's
//! events in the request become the span's events.
//!
//! Ids are derived from the logs, so the same logs export the same ids:
//! the trace id from the origin (service, run directory name, seq), a span
//! id from the trace id, run and task. Times are Unix nanoseconds on the
//! first run's clock (every run corrected by its estimated offset).

use std::collections::BTreeMap;
use std::io::{self, Write};

use deja_recorder::{content_hash, EventKind};
use serde_json::{json, Value};

use crate::request::{RequestView, Requests};
use crate::timeline::{At, Link, Timeline};

/// Span events kept per span: Jaeger and collectors cap them too, and a
/// long-lived task in a long request should not make a span unreadable.
pub const SPAN_EVENTS_MAX: usize = 1000;

/// OTLP `SpanKind` values.
const SPAN_KIND_INTERNAL: u8 = 1;
const SPAN_KIND_SERVER: u8 = 2;
const SPAN_KIND_CLIENT: u8 = 3;

/// Write `views` (found by `requests`) as one OTLP JSON document.
pub fn write_traces(
    requests: &Requests<'_>,
    views: &[RequestView],
    out: &mut dyn Write,
) -> io::Result<()> {
    let timeline = requests.timeline();
    // Spans grouped by service (one resourceSpans entry per run).
    let mut by_run: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for view in views {
        for (run, span) in spans(requests, view) {
            by_run.entry(run).or_default().push(span);
        }
    }
    let resource_spans: Vec<Value> = by_run
        .into_iter()
        .map(|(run, spans)| {
            json!({
                "resource": {"attributes": [
                    attribute("service.name", &timeline.runs[run].service),
                    attribute("deja.run_dir", &timeline.runs[run].dir.display().to_string()),
                ]},
                "scopeSpans": [{
                    "scope": {"name": "deja", "version": env!("CARGO_PKG_VERSION")},
                    "spans": spans,
                }],
            })
        })
        .collect();
    serde_json::to_writer(&mut *out, &json!({"resourceSpans": resource_spans}))?;
    writeln!(out)
}

/// The trace id of `view`: 16 bytes, never all zero.
pub fn trace_id(timeline: &Timeline, view: &RequestView) -> [u8; 16] {
    let origin = view.origin;
    let run = &timeline.runs[origin.run];
    let key = format!(
        "{}\0{}\0{}",
        run.service,
        run.dir.file_name().unwrap_or_default().to_string_lossy(),
        timeline.event(origin).seq
    );
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&content_hash(key.as_bytes()).to_be_bytes());
    id[8..].copy_from_slice(&content_hash(format!("{key}\0trace").as_bytes()).to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

fn span_id(trace: &[u8; 16], run: usize, task: u64) -> [u8; 8] {
    let mut key = trace.to_vec();
    key.extend_from_slice(&(run as u64).to_be_bytes());
    key.extend_from_slice(&task.to_be_bytes());
    let id = content_hash(&key).to_be_bytes();
    if id == [0; 8] {
        [0, 0, 0, 0, 0, 0, 0, 1]
    } else {
        id
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int_attribute(key: &str, value: u64) -> Value {
    // OTLP JSON carries 64-bit integers as strings.
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

/// One span per (run, task) of `view`, with its run.
fn spans(requests: &Requests<'_>, view: &RequestView) -> Vec<(usize, Value)> {
    let timeline = requests.timeline();
    let trace = trace_id(timeline, view);
    // Events of each task, in timeline order.
    let mut tasks: BTreeMap<(usize, u64), Vec<At>> = BTreeMap::new();
    for &at in &view.events {
        tasks
            .entry((at.run, timeline.event(at).task.0))
            .or_default()
            .push(at);
    }
    let root = (view.origin.run, timeline.event(view.origin).task.0);
    let mut out = Vec::with_capacity(tasks.len());
    for (&(run, task), events) in &tasks {
        let first = events[0];
        let last = *events.last().expect("a task in the view has events");
        let parent = if (run, task) == root {
            None
        } else {
            Some(parent_of(requests, first, &tasks).unwrap_or(root))
        };
        let service = &timeline.runs[run].service;
        let mark = events
            .iter()
            .find_map(|&at| match &timeline.event(at).kind {
                EventKind::Mark { name, value } => {
                    Some(format!("{name} {}", String::from_utf8_lossy(value)))
                }
                _ => None,
            });
        let accepting = events.iter().all(|&at| {
            matches!(
                timeline.event(at).kind,
                EventKind::TcpAccept { .. } | EventKind::Spawn { .. }
            )
        });
        let name = match &mark {
            Some(mark) => format!("{service}: {mark}"),
            None if accepting => format!("{service}: accept"),
            None => format!("{service}: task {task}"),
        };
        let kind = if (run, task) == root {
            SPAN_KIND_CLIENT
        } else if timeline.cause_of(first).is_some() || timeline.connect_of(first).is_some() {
            SPAN_KIND_SERVER
        } else {
            SPAN_KIND_INTERNAL
        };
        let span_events: Vec<Value> = events
            .iter()
            .take(SPAN_EVENTS_MAX)
            .map(|&at| {
                let event = timeline.event(at);
                json!({
                    "timeUnixNano": unix_ns(timeline, at),
                    "name": event.kind.name(),
                    "attributes": [
                        int_attribute("deja.seq", event.seq),
                        attribute("deja.event", &event.kind.to_string()),
                        attribute("deja.critical", if view.is_critical(at) { "true" } else { "false" }),
                    ],
                })
            })
            .collect();
        let mut span = json!({
            "traceId": hex(&trace),
            "spanId": hex(&span_id(&trace, run, task)),
            "name": name,
            "kind": kind,
            "startTimeUnixNano": unix_ns(timeline, first),
            "endTimeUnixNano": unix_ns(timeline, last),
            "attributes": [
                int_attribute("deja.task", task),
                int_attribute("deja.first_seq", timeline.event(first).seq),
                int_attribute("deja.last_seq", timeline.event(last).seq),
                int_attribute("deja.events", events.len() as u64),
            ],
            "events": span_events,
            "droppedEventsCount": events.len().saturating_sub(SPAN_EVENTS_MAX),
            "status": {},
        });
        if let Some((parent_run, parent_task)) = parent {
            span["parentSpanId"] = json!(hex(&span_id(&trace, parent_run, parent_task)));
        }
        out.push((run, span));
    }
    out
}

/// The span (run, task) that caused `first`, if it is in the request.
fn parent_of(
    requests: &Requests<'_>,
    first: At,
    tasks: &BTreeMap<(usize, u64), Vec<At>>,
) -> Option<(usize, u64)> {
    let timeline = requests.timeline();
    let task_of = |at: At| (at.run, timeline.event(at).task.0);
    let own = task_of(first);
    let message = timeline
        .cause_of(first)
        .filter(|m| m.link != Link::Connection)
        .map(|m| task_of(m.cause));
    let spawn = requests.spawn_of(first).map(task_of);
    let connection = timeline.connect_of(first).map(|m| task_of(m.cause));
    [message, spawn, connection]
        .into_iter()
        .flatten()
        .find(|parent| *parent != own && tasks.contains_key(parent))
}

/// `at`'s corrected wall time as OTLP wants it: Unix ns, as a string.
fn unix_ns(timeline: &Timeline, at: At) -> String {
    timeline.corrected_wall_ns(at).max(0).to_string()
}
