//! `deja stats`: a run's summary, as an aligned table or one JSON object.

use std::fmt::Write as _;
use std::process::ExitCode;

use deja_recorder::KindClass;
use deja_replayer::analysis::RunStats;

use crate::args::StatsArgs;
use crate::print_warning;

/// Compute the summary (one streaming pass) and print it.
pub(crate) fn run(args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let stats = RunStats::compute(&args.run_dir)?;
    if let Some(warning) = stats.end.warning() {
        print_warning(&warning);
    }
    let text = if args.json {
        let mut json = serde_json::to_string(&stats)?;
        json.push('\n');
        json
    } else {
        table(&stats)
    };
    super::print(&text)
}

/// The human-readable summary.
fn table(stats: &RunStats) -> String {
    let mut rows: Vec<(&str, String)> = Vec::new();
    if let Some(run) = &stats.run {
        let or_dash = |text: &str| {
            if text.is_empty() {
                "-".to_string()
            } else {
                text.to_string()
            }
        };
        rows.extend([
            ("service", or_dash(&run.service)),
            ("run id", or_dash(&run.run_id)),
            ("host", or_dash(&run.host)),
            ("pid", run.pid.to_string()),
            ("deja version", or_dash(&run.deja_version)),
            ("format version", run.format_version.to_string()),
            ("started", utc(run.start_wall_unix_ns)),
        ]);
    } else {
        rows.push(("header", "missing (the log ends inside it)".to_string()));
    }
    let seqs = match (stats.first_seq, stats.last_seq) {
        (Some(first), Some(last)) => format!(" (seq {first} to {last})"),
        _ => String::new(),
    };
    rows.extend([
        ("duration", seconds(stats.duration_ns)),
        ("events", format!("{}{seqs}", stats.events)),
        ("tasks", tasks(stats)),
        ("gaps", gaps(stats)),
    ]);
    if stats.unseen.outside_task_events > 0 {
        rows.push((
            "outside tasks",
            format!(
                "{} events from threads that are not tasks (a thread the service started, spawn_blocking): replay orders them only by luck",
                stats.unseen.outside_task_events
            ),
        ));
    }
    if stats.unseen.foreign_sockets > 0 {
        rows.push((
            "foreign sockets",
            format!(
                "{} connections opened by library code with sockets of its own ({}): not recorded, refused in replay; connect through deja::net",
                stats.unseen.foreign_sockets,
                stats.unseen.foreign_peers.join(", ")
            ),
        ));
    }
    if let Some(recorder) = &stats.recorder {
        rows.push(("recorder", recorder_line(recorder)));
    }
    if let Some(window) = &stats.flight {
        rows.push((
            "flight window",
            if window.holds_the_start() {
                format!("kept on {}; holds the run from its start, so it replays", window.reason)
            } else {
                format!(
                    "kept on {}; starts at seq {} ({} earlier events left the {} ring), so it does not replay; inspect, timeline and diff read it",
                    window.reason,
                    window.first_seq,
                    window.events_before,
                    human_bytes(window.ring_bytes)
                )
            },
        ));
    }
    rows.extend([
        ("segments", stats.segments.to_string()),
        ("frames", stats.frames.to_string()),
        (
            "on disk",
            match stats.bytes_per_event {
                Some(per_event) => {
                    format!("{}, {per_event:.1} B/event", bytes(stats.bytes_on_disk))
                }
                None => bytes(stats.bytes_on_disk),
            },
        ),
        (
            "compression",
            match stats.compression_ratio {
                Some(ratio) => format!(
                    "{ratio:.2}x ({} raw, {} compressed)",
                    human_bytes(stats.bytes_raw),
                    human_bytes(stats.bytes_compressed)
                ),
                None => "-".to_string(),
            },
        ),
        (
            "log end",
            match &stats.end {
                deja_recorder::LogEnd::Clean => "clean".to_string(),
                deja_recorder::LogEnd::Unclean { .. } => "unclean shutdown (no footer)".to_string(),
                deja_recorder::LogEnd::TornTail { partial_bytes, .. } => {
                    format!("torn tail ({partial_bytes} bytes ignored)")
                }
            },
        ),
    ]);
    let mut out = String::new();
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    for (label, value) in &rows {
        let _ = writeln!(out, "{label:<width$}  {value}");
    }

    let by_class: Vec<(&str, u64)> = KindClass::ALL
        .iter()
        .filter_map(|class| Some((class.name(), *stats.by_class.get(class.name())?)))
        .collect();
    let mut by_kind: Vec<(&str, u64)> = stats.by_kind.iter().map(|(k, n)| (*k, *n)).collect();
    by_kind.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts(&mut out, "class", &by_class, stats.events);
    counts(&mut out, "kind", &by_kind, stats.events);
    out
}

/// `lost 300 events in 2 gaps (write failed: 1 gap, 280 events; queue
/// full: 1 gap, 20 events)`, or `none`.
fn tasks(stats: &RunStats) -> String {
    match stats.unseen.adopted_tasks {
        0 => stats.tasks.to_string(),
        adopted => format!(
            "{} ({adopted} started by library code with tokio::spawn, adopted)",
            stats.tasks
        ),
    }
}

fn gaps(stats: &RunStats) -> String {
    if stats.gaps == 0 {
        return "none".to_string();
    }
    let reasons: Vec<String> = stats
        .gaps_by_reason
        .iter()
        .map(|(reason, count)| {
            format!(
                "{}: {} gap{}, {} event{}",
                reason.replace('_', " "),
                count.gaps,
                plural(count.gaps),
                count.lost,
                plural(count.lost)
            )
        })
        .collect();
    format!(
        "lost {} event{} in {} gap{} ({})",
        stats.lost_events,
        plural(stats.lost_events),
        stats.gaps,
        plural(stats.gaps),
        reasons.join("; ")
    )
}

/// The recorder's own account from `index.json`.
fn recorder_line(recorder: &deja_recorder::writer::RecorderSummary) -> String {
    let mut line = format!(
        "dropped {} of {} events, {} write outage{}",
        recorder.events_dropped,
        recorder.events_produced,
        recorder.write_outages,
        plural(recorder.write_outages)
    );
    if let Some(error) = &recorder.last_write_error {
        let _ = write!(line, " (last error: {error})");
    }
    if recorder.ended_in_outage {
        line.push_str("; the run ended in an outage: events after the last one are lost");
    }
    if recorder.events_after_close > 0 {
        let _ = write!(
            line,
            "; {} event{} of tasks still running at exit not recorded (the run ends at its exit)",
            recorder.events_after_close,
            plural(recorder.events_after_close)
        );
    }
    line
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A table of event counts with their share of all events.
fn counts(out: &mut String, heading: &str, rows: &[(&str, u64)], total: u64) {
    if rows.is_empty() {
        return;
    }
    let name_width = rows
        .iter()
        .map(|(name, _)| name.len())
        .chain([heading.len()])
        .max()
        .unwrap_or(0);
    let count_width = rows
        .iter()
        .map(|(_, count)| count.to_string().len())
        .chain(["events".len()])
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "\n{heading:<name_width$}  {:>count_width$}  {:>6}",
        "events", "share"
    );
    for (name, count) in rows {
        let share = *count as f64 * 100.0 / total.max(1) as f64;
        let _ = writeln!(
            out,
            "{name:<name_width$}  {count:>count_width$}  {share:>5.1}%"
        );
    }
}

/// `1.500000000s`.
fn seconds(ns: u64) -> String {
    format!("{}.{:09}s", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// `1234 B`, or `1234567 B (1.2 MiB)`.
fn bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{n} B ({})", human_bytes(n))
    }
}

/// `1234 B`, `1.2 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Nanoseconds since the Unix epoch as UTC, RFC 3339.
fn utc(unix_ns: i64) -> String {
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let (year, month, day, hour, minute, second) =
        deja_recorder::meta::utc_civil(unix_ns.div_euclid(1_000_000_000));
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{nanos:09}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_match_known_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            utc(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(utc(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            utc(1_795_435_199_500_000_000),
            "2026-11-23T11:59:59.500000000Z"
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1536 B (1.5 KiB)");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(seconds(1_500_000_000), "1.500000000s");
    }
}
