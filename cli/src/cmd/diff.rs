//! `deja diff`: where two runs of a service part ways.

use std::fmt::Write as _;
use std::process::ExitCode;

use deja_recorder::Event;
use deja_replayer::diff::{diff_runs, DiffReport, Difference, Missing};

use crate::args::DiffArgs;
use crate::{exit, print_warning};

/// Compare the runs (one streaming pass over each) and print the report;
/// exit 0 when they match, `DIFFERENT` when they do not.
pub(crate) fn run(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let report = diff_runs(&args.run_a, &args.run_b, usize::from(args.context))?;
    for (name, side) in [("A", &report.a), ("B", &report.b)] {
        if let Some(warning) = &side.end_warning {
            print_warning(&format!("run {name}: {warning}"));
        }
    }
    if let (Some(a), Some(b)) = (&report.a.service, &report.b.service) {
        if a != b {
            print_warning(&format!(
                "the runs are of different services ({a} and {b}): expect differences"
            ));
        }
    }
    let text = if args.json {
        let mut json = serde_json::to_string(&report)?;
        json.push('\n');
        json
    } else {
        text(&report)
    };
    let code = super::print(&text)?;
    if code != ExitCode::from(exit::SUCCESS) {
        return Ok(code);
    }
    Ok(ExitCode::from(if report.same() {
        exit::SUCCESS
    } else {
        exit::DIFFERENT
    }))
}

/// The human-readable report.
fn text(report: &DiffReport) -> String {
    let mut out = String::new();
    let Some(first) = &report.first else {
        let _ = writeln!(
            out,
            "no difference: {} operations in {} tasks match",
            report.matched, report.a.tasks
        );
        return out;
    };
    difference(&mut out, first);
    let _ = writeln!(out);
    for (name, side) in [("A", &report.a), ("B", &report.b)] {
        let _ = writeln!(
            out,
            "run {name}: {} ({} events, {} tasks)",
            side.dir, side.events, side.tasks
        );
    }
    for (name, count, ids) in [
        ("A", report.only_in_a, &report.tasks_only_in_a),
        ("B", report.only_in_b, &report.tasks_only_in_b),
    ] {
        if count > 0 {
            let listed: Vec<String> = ids.iter().map(u64::to_string).collect();
            let more = if count > ids.len() as u64 {
                ", ..."
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "tasks only in {name}: {count} ({}{more})",
                listed.join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "{} tasks differ ({} only by doing fewer operations in one run); {} operations matched",
        report.differing_tasks, report.shorter_tasks, report.matched
    );
    out
}

/// The first difference, the event in each run and the context.
fn difference(out: &mut String, first: &Difference) {
    let _ = writeln!(
        out,
        "runs differ at task {}, operation {} (the first difference in run A's order): {}",
        first.task, first.index, first.why
    );
    side(out, "A", first.a.as_ref(), first.a_missing);
    side(out, "B", first.b.as_ref(), first.b_missing);
    if first.before_a.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nbefore it, task {}'s last {} operations (the same in both runs):",
        first.task,
        first.before_a.len()
    );
    for (name, events) in [("A", &first.before_a), ("B", &first.before_b)] {
        for event in events.iter() {
            let _ = writeln!(out, "  {name}  {event}");
        }
    }
}

fn side(out: &mut String, name: &str, event: Option<&Event>, missing: Option<Missing>) {
    match (event, missing) {
        (Some(event), _) => {
            let _ = writeln!(out, "  {name}  {event}");
        }
        (None, Some(missing)) => {
            let _ = writeln!(out, "  {name}  (no such operation: {missing})");
        }
        (None, None) => {
            let _ = writeln!(out, "  {name}  (no such operation)");
        }
    }
}
