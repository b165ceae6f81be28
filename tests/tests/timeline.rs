//! `deja timeline`: the shop fixture's three services (gateway, orders,
//! payments) and its users, logged by a simulation with payments' clock
//! 250 ms ahead. The merged order puts every cause first; the offset
//! estimate's bounds hold the true offset; a request view finds the slow
//! order's fraud check; Perfetto and OTLP exports pass their schemas.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use deja::sim::Sim;
use deja::time::Duration;
use deja_fixtures::shop::{self, call, serve, PORT};
use deja_replayer::request::{Place, Requests};
use deja_replayer::timeline::{Link, Timeline};
use deja_tests::e2e::{run_bounded, workspace_bin};

/// Payments' wall clock runs this far ahead.
const SKEW: Duration = shop::PAYMENTS_CLOCK_AHEAD;
const REQUESTS: usize = 12;

fn shop(seed: u64, logs: &Path) -> Sim {
    shop::sim(seed, REQUESTS, logs)
}

fn logs_of(report: &deja::sim::SimReport, hosts: &[&str]) -> Vec<PathBuf> {
    hosts
        .iter()
        .map(|host| {
            report
                .logs
                .iter()
                .find(|log| log.file_name().unwrap().to_string_lossy().starts_with(host))
                .unwrap_or_else(|| panic!("no log of {host}: {:?}", report.logs))
                .clone()
        })
        .collect()
}

#[test]
fn the_timeline_orders_causes_first_and_bounds_the_injected_clock_offset() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(3, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let timeline = Timeline::load(&runs).unwrap();

    // Every request crosses three links both ways: 4 × 2 reads per request.
    let reads = timeline
        .matches
        .iter()
        .filter(|m| matches!(m.link, Link::Bytes { .. }))
        .count();
    assert_eq!(reads, REQUESTS * 6, "every read matched to its write");
    assert_eq!(timeline.unmatched_receives, 0);
    assert_eq!(timeline.order_conflicts, 0);
    let position: std::collections::HashMap<_, _> = timeline
        .order
        .iter()
        .enumerate()
        .map(|(i, at)| (*at, i))
        .collect();
    for m in timeline
        .matches
        .iter()
        .filter(|m| m.link != Link::Connection)
    {
        assert!(
            position[&m.cause] < position[&m.effect],
            "cause first: {m:?}"
        );
    }

    // orders is run 1, payments run 2: payments' clock minus orders'.
    let clock = timeline
        .clocks
        .iter()
        .find(|c| (c.a, c.b) == (1, 2))
        .expect("orders and payments exchanged messages");
    let truth = SKEW.as_nanos() as i64;
    let (lower, upper) = (clock.lower_ns.unwrap(), clock.upper_ns.unwrap());
    println!(
        "payments - orders: estimate {} ns in [{lower}, {upper}], truth {truth}",
        clock.estimate_ns
    );
    assert!(
        lower <= truth && truth <= upper,
        "the truth lies inside the bounds"
    );
    assert!((clock.estimate_ns - truth).abs() <= (upper - lower) / 2 + 1);
    assert!(upper - lower < 6_000_000, "bounds within two link delays");
    // gateway and orders share a clock: their offset's bounds hold 0.
    let same = timeline
        .clocks
        .iter()
        .find(|c| (c.a, c.b) == (0, 1))
        .unwrap();
    assert!(same.lower_ns.unwrap() <= 0 && 0 <= same.upper_ns.unwrap());

    // On raw clocks, every reply from payments arrives "before" it left.
    assert_eq!(timeline.effects_before_causes.len(), REQUESTS);
    for flagged in &timeline.effects_before_causes {
        assert_eq!((flagged.link.cause.run, flagged.link.effect.run), (2, 1));
        assert!(flagged.by_ns > 200_000_000, "{flagged:?}");
    }
}

#[test]
fn deja_timeline_prints_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(4, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let text = run_bounded(
        Command::new(workspace_bin("deja"))
            .arg("timeline")
            .args(&runs),
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(
        text.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    assert!(stdout.starts_with("timeline: 4 runs,"), "{stdout}");
    assert!(stdout.contains("payments - orders: +0.2"), "{stdout}");
    assert!(
        stdout.contains("effects before causes (12; raw clocks)"),
        "{stdout}"
    );
    assert!(stdout.contains("<- payments#"), "{stdout}");

    let json = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["timeline", "--format", "json"])
            .args(&runs),
    );
    assert_eq!(json.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&json.stdout);
    let mut lines = stdout.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["runs"].as_array().unwrap().len(), 4);
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let total: u64 = header["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["events"].as_u64().unwrap())
        .sum();
    assert_eq!(events.len() as u64, total);
    assert!(events
        .iter()
        .any(|e| e["cause"]["link"]["bytes"].is_object()));
}

#[test]
fn the_perfetto_export_is_a_valid_trace_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(5, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let file = dir.path().join("trace.json");
    let exported = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["timeline", "--format", "perfetto", "--out"])
            .arg(&file)
            .args(&runs),
    );
    assert_eq!(exported.status.code(), Some(0));
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).expect("one JSON document");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let mut processes = Vec::new();
    let mut flows: std::collections::HashMap<u64, (Option<f64>, Option<f64>)> = Default::default();
    let mut slices = 0;
    for event in events {
        let ph = event["ph"].as_str().expect("every event has a phase");
        assert!(event["pid"].is_u64() && event["tid"].is_u64(), "{event}");
        match ph {
            "M" => {
                let name = event["args"]["name"].as_str().unwrap().to_string();
                if event["name"] == "process_name" {
                    processes.push(name);
                }
            }
            "X" => {
                slices += 1;
                assert!(event["ts"].as_f64().unwrap() >= 0.0, "{event}");
                assert!(event["dur"].as_f64().unwrap() > 0.0);
                assert!(event["name"].is_string() && event["cat"].is_string());
            }
            "s" | "f" => {
                let id = event["id"].as_u64().unwrap();
                let ts = event["ts"].as_f64();
                let entry = flows.entry(id).or_default();
                if ph == "s" {
                    entry.0 = ts;
                } else {
                    assert_eq!(event["bp"], "e", "flows bind to the enclosing slice");
                    entry.1 = ts;
                }
            }
            other => panic!("unexpected phase {other}"),
        }
    }
    processes.sort();
    assert_eq!(processes, ["gateway", "orders", "payments", "users"]);
    let total: usize = runs
        .iter()
        .map(|run| {
            Timeline::load(std::slice::from_ref(run))
                .unwrap()
                .order
                .len()
        })
        .sum();
    assert_eq!(slices, total, "one slice per event");
    assert_eq!(flows.len(), REQUESTS * 6, "one arrow per matched read");
    for (id, (start, finish)) in flows {
        let (start, finish) = (start.unwrap(), finish.unwrap());
        assert!(start <= finish, "flow {id} goes forward in time");
    }
}

/// Peak resident memory of this process, KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// About a million events over three logs. Slow in a debug build: run
/// with `cargo test --release -p deja-tests --test timeline -- --ignored`.
#[test]
#[ignore = "a measurement: a million events"]
fn a_million_events_merge_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::new(1);
    sim.always_write_logs().log_dir(dir.path());
    sim.write_logs(true).keep_write_bytes(false);
    sim.host("gateway", || {
        serve(|line| async move { call(&format!("orders:{PORT}"), &line).await })
    });
    sim.host("orders", || serve(|line| async move { Ok(line) }));
    sim.client("users", async {
        let mut tasks = Vec::new();
        for user in 0..16 {
            tasks.push(deja::spawn(async move {
                for i in 0..2_900 {
                    call(&format!("gateway:{PORT}"), &format!("u{user} {i}")).await?;
                }
                Ok::<(), io::Error>(())
            }));
        }
        for task in tasks {
            task.await.expect("user")?;
        }
        Ok::<(), io::Error>(())
    });
    sim.time_limit(Duration::from_secs(24 * 3600));
    let report = sim.run().expect("runs");
    let runs = logs_of(&report, &["gateway", "orders", "users"]);
    let before = peak_rss_kib();
    let started = std::time::Instant::now();
    let timeline = Timeline::load(&runs).unwrap();
    let merged = started.elapsed();
    let events = timeline.order.len();
    println!(
        "timeline of {events} events in 3 logs: {:.2}s, peak RSS {} MiB (before loading: {} MiB), {} matches",
        merged.as_secs_f64(),
        peak_rss_kib() / 1024,
        before / 1024,
        timeline.matches.len()
    );
    assert!(events >= 1_000_000, "{events}");
    assert_eq!(timeline.order_conflicts, 0);
    let started = std::time::Instant::now();
    let requests = Requests::new(&timeline);
    let indexed = started.elapsed();
    // One user's call in the middle: its request view.
    let middle = timeline.order[events / 2];
    let started = std::time::Instant::now();
    let view = requests.view(middle);
    println!(
        "request index: {:.2}s, peak RSS {} MiB; one request view: {} events in {:.1} ms",
        indexed.as_secs_f64(),
        peak_rss_kib() / 1024,
        view.events.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(view.events.len() < 100, "a request, not the run");
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid schema")
}

fn assert_valid(validator: &jsonschema::Validator, document: &serde_json::Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(document)
        .take(5)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what} fails its schema: {errors:#?}");
}

/// Every data-carrying read and write in `events` mentions `order` (and no
/// other order): the view holds that request and nothing else.
fn payloads_name_only(timeline: &Timeline, events: &[deja_replayer::timeline::At], order: &str) {
    for &at in events {
        let text = timeline.event(at).to_string();
        if let Some(quoted) = text.split('"').nth(1) {
            let ids: Vec<&str> = quoted
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| w.starts_with('o') && w[1..].parse::<u32>().is_ok())
                .collect();
            assert!(
                ids.iter().all(|id| *id == order),
                "{order}'s request holds {text}"
            );
        }
    }
}

#[test]
fn the_request_view_of_the_slow_order_charges_its_time_to_the_fraud_check() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(3, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let timeline = Timeline::load(&runs).unwrap();
    let requests = Requests::new(&timeline);

    let marks = requests.marks(&format!("order:{}", shop::SLOW_ORDER));
    assert_eq!(marks.len(), 1);
    let view = requests.view(marks[0]);
    // It starts and ends at the user: the connect, and the read of the answer.
    assert_eq!((view.origin.run, view.end.run), (3, 3));
    assert!(timeline
        .event(view.origin)
        .to_string()
        .contains("tcp_connect"));
    assert!(timeline
        .event(view.end)
        .to_string()
        .contains("ORDERED o7 PAID o7"));
    let services: HashSet<usize> = view.events.iter().map(|at| at.run).collect();
    assert_eq!(services.len(), 4, "all four services take part");
    payloads_name_only(&timeline, &view.events, shop::SLOW_ORDER);

    // The critical path runs from the origin to the end without a break,
    // and its steps add up to the request's length.
    let path = &view.critical_path;
    assert_eq!(path.first().unwrap().from, view.origin);
    assert_eq!(path.last().unwrap().to, view.end);
    for pair in path.windows(2) {
        assert_eq!(pair[0].to, pair[1].from);
    }
    let sum: i64 = path.iter().map(|step| step.ns).sum();
    assert!(
        (sum - view.total_ns).abs() < 10_000,
        "{sum} vs {}",
        view.total_ns
    );
    // Where the time went: the fraud check first, then the rest.
    let places = view.time_by_place();
    let fraud_check = shop::FRAUD_CHECK.as_nanos() as i64;
    assert_eq!(
        places[0],
        (Place::Timer { run: 2 }, fraud_check),
        "{places:?}"
    );
    assert!(places.contains(&(Place::Timer { run: 1 }, shop::ORDER_WRITE.as_nanos() as i64)));
    let network: i64 = places
        .iter()
        .filter(|(place, _)| matches!(place, Place::Network { .. }))
        .map(|(_, ns)| ns)
        .sum();
    // Six one-way trips, each within the link's delay (clock-corrected,
    // so within the offset estimate's error too).
    assert!(
        network > 6 * 150_000 && network < 6 * 4_000_000,
        "{network}"
    );

    // A fast order's request holds no fraud check.
    let fast = requests.view(requests.marks("order:o3")[0]);
    assert!(fast.total_ns < view.total_ns - fraud_check / 2);
    assert!(!fast
        .time_by_place()
        .iter()
        .any(|(place, ns)| *place == Place::Timer { run: 2 } && *ns > 0));
}

#[test]
fn every_order_is_a_request_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(6, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let timeline = Timeline::load(&runs).unwrap();
    let requests = Requests::new(&timeline);
    let views = requests.views(&requests.marks("order:*"));
    assert_eq!(views.len(), REQUESTS);
    let mut seen = HashSet::new();
    for (i, view) in views.iter().enumerate() {
        payloads_name_only(&timeline, &view.events, &format!("o{i}"));
        for at in &view.events {
            assert!(seen.insert(*at), "{at:?} is in two requests");
        }
        // Causes inside the view come before their effects.
        let position: HashMap<_, _> = view
            .events
            .iter()
            .enumerate()
            .map(|(i, at)| (*at, i))
            .collect();
        for at in &view.events {
            if let Some(m) = timeline.cause_of(*at) {
                if let Some(cause) = position.get(&m.cause) {
                    assert!(*cause < position[at]);
                }
            }
        }
    }
    // The same logs give the same views.
    let again = Timeline::load(&runs).unwrap();
    let again = Requests::new(&again);
    assert_eq!(again.views(&again.marks("order:*")), views);
}

#[test]
fn deja_timeline_request_prints_where_the_time_went() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(3, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let out = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["timeline", "--request", "order:o7"])
            .args(&runs),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let first = lines.next().unwrap();
    assert!(first.starts_with("request order:o7 (orders#"), "{first}");
    assert!(
        first.contains("in 4 services (gateway, orders, payments, users)"),
        "{first}"
    );
    assert_eq!(lines.next(), Some("where the time went (critical path):"));
    let top = lines.next().unwrap();
    assert!(
        top.contains("40.000 ms") && top.ends_with("payments waiting on a timer"),
        "{top}"
    );
    assert!(
        stdout.contains("\n*"),
        "critical events are starred: {stdout}"
    );

    let json = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["timeline", "--format", "json", "--request", "o7"])
            .args(&runs),
    );
    assert_eq!(json.status.code(), Some(0));
    let view: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON line");
    assert_eq!(view["mark"], "order:o7");
    assert_eq!(
        view["time_by_place"][0]["place"],
        "payments waiting on a timer"
    );
    assert_eq!(view["time_by_place"][0]["ns"], 40_000_000);

    let missing = run_bounded(
        Command::new(workspace_bin("deja"))
            .args(["timeline", "--request", "order:o99"])
            .args(&runs),
    );
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.starts_with("deja: error: no mark matches \"order:o99\" in these 4 logs\nhint: "),
        "{stderr}"
    );
}

#[test]
fn the_otlp_export_has_a_trace_per_request_with_valid_ids_and_parent_links() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(5, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let file = dir.path().join("traces.json");
    let export = || {
        let out = run_bounded(
            Command::new(workspace_bin("deja"))
                .args(["timeline", "--format", "otlp", "--out"])
                .arg(&file)
                .args(&runs),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&file).unwrap()
    };
    let bytes = export();
    assert_eq!(export(), bytes, "the same logs export the same ids");
    let document: serde_json::Value = serde_json::from_slice(&bytes).expect("one JSON document");
    assert_valid(
        &schema("otlp-trace.schema.json"),
        &document,
        "the OTLP export",
    );

    // Spans by trace, with their service.
    let mut traces: HashMap<String, Vec<(String, serde_json::Value)>> = HashMap::new();
    for resource in document["resourceSpans"].as_array().unwrap() {
        let service = resource["resource"]["attributes"][0]["value"]["stringValue"]
            .as_str()
            .unwrap()
            .to_string();
        for span in resource["scopeSpans"][0]["spans"].as_array().unwrap() {
            traces
                .entry(span["traceId"].as_str().unwrap().to_string())
                .or_default()
                .push((service.clone(), span.clone()));
        }
    }
    assert_eq!(traces.len(), REQUESTS, "one trace per order");
    let mut span_ids = HashSet::new();
    for spans in traces.values() {
        let ids: HashMap<&str, &serde_json::Value> = spans
            .iter()
            .map(|(_, span)| (span["spanId"].as_str().unwrap(), span))
            .collect();
        assert_eq!(ids.len(), spans.len(), "span ids are unique in a trace");
        let roots: Vec<_> = spans
            .iter()
            .filter(|(_, span)| span.get("parentSpanId").is_none())
            .collect();
        assert_eq!(roots.len(), 1, "one root span");
        assert_eq!(roots[0].0, "users", "the request starts at the user");
        let services: HashSet<&str> = spans.iter().map(|(service, _)| service.as_str()).collect();
        assert_eq!(services.len(), 4);
        for (_, span) in spans {
            assert!(span_ids.insert(span["spanId"].as_str().unwrap().to_string()));
            let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
            let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
            assert!(start <= end);
            // The parent chain is in this trace and reaches the root.
            let mut at: &serde_json::Value = span;
            for _ in 0..=spans.len() {
                match at.get("parentSpanId") {
                    None => break,
                    Some(parent) => {
                        at = ids
                            .get(parent.as_str().unwrap())
                            .copied()
                            .unwrap_or_else(|| panic!("parent of {span} is in its trace"))
                    }
                }
            }
            assert!(at.get("parentSpanId").is_none(), "no parent cycle: {span}");
        }
        // orders' span for the order is a child of gateway's.
        let orders = spans
            .iter()
            .find(|(_, span)| {
                span["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("orders: order o")
            })
            .expect("a span named after the mark");
        let parent = ids[orders.1["parentSpanId"].as_str().unwrap()];
        assert!(parent["name"]
            .as_str()
            .unwrap()
            .starts_with("gateway: task"));
    }
}

#[test]
fn perfetto_exports_pass_the_trace_event_schema() {
    let dir = tempfile::tempdir().unwrap();
    let report = shop(7, dir.path()).run().expect("the shop works");
    let runs = logs_of(&report, &["gateway", "orders", "payments", "users"]);
    let validator = schema("trace-event.schema.json");
    for request in [None, Some("order:o7")] {
        let file = dir.path().join("trace.json");
        let mut cmd = Command::new(workspace_bin("deja"));
        cmd.args(["timeline", "--format", "perfetto", "--out"])
            .arg(&file);
        if let Some(request) = request {
            cmd.args(["--request", request]);
        }
        let out = run_bounded(cmd.args(&runs));
        assert_eq!(out.status.code(), Some(0));
        let trace: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_valid(&validator, &trace, "the Perfetto export");
        let slices = trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .count();
        match request {
            None => assert!(slices > 400, "{slices}"),
            Some(_) => assert!((20..40).contains(&slices), "one request: {slices}"),
        }
    }
    // The schema rejects what the viewers cannot read.
    let broken = serde_json::json!({"traceEvents": [{"ph": "X", "name": "read", "pid": 1, "tid": 0, "ts": 1.0}]});
    assert!(!validator.is_valid(&broken), "a slice without a duration");
}
