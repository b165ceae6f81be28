//! The table of heisenbug fixtures the heisenbug tests share: one row
//! per fixture. `tests/tests/heisenbug.rs` puts each through the
//! in-process trial, `tests/tests/heisenbug_hunt.rs` hunts each as
//! processes, as `fixtures/hunt.sh` does. A row whose fixture sets
//! `Heisenbug::REPLAY_OFFLINE` (last-item, on real PostgreSQL and Redis)
//! has its trial's replays done here, as processes without a network:
//! [`replays_offline`] and [`fixed_offline`].

use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use deja_fixtures::heisenbug::{Caught, Fixture, Heisenbug, Recorded, Replays, REPLAYS};
use deja_fixtures::servers;
use deja_recorder::TaskId;

use crate::e2e::{deja_offline, offline_available, replay_summary, run_bounded, workspace_bin};

/// Calls macro `$each` with every heisenbug fixture, one row each:
/// `test_name: FixtureType,` (a type implementing
/// `deja_fixtures::heisenbug::Heisenbug`). A new fixture is one row here.
///
/// ```
/// macro_rules! names {
///     ($($test:ident: $fixture:ty,)*) => {
///         vec![$(<$fixture as deja_fixtures::heisenbug::Fixture>::NAME),*]
///     };
/// }
/// let names: Vec<&str> = deja_tests::heisenbugs!(names);
/// assert!(names.contains(&"double-charge"));
/// ```
#[macro_export]
macro_rules! heisenbugs {
    ($each:ident) => {
        $each! {
            double_charge: deja_fixtures::double_charge::DoubleCharge,
            lost_update: deja_fixtures::lost_update::LostUpdate,
            out_of_order: deja_fixtures::out_of_order::OutOfOrder,
            clock_edge: deja_fixtures::clock_edge::ClockEdge,
            timeout_cascade: deja_fixtures::timeout_cascade::TimeoutCascade,
            real_clients: deja_fixtures::resp::RespKv,
            last_item: deja_fixtures::last_item::LastItem,
        }
    };
}

/// Exit code of a replay that diverged.
const EXIT_DIVERGENCE: i32 = 3;
/// `DEJA_STALL_MS` for the fix's replay when the fix stalls (waits on a
/// lock the log does not have): as the hunt does, a tenth of deja's
/// default second.
const FIX_STALL_MS: &str = "100";

/// The [`REPLAYS`] replays of a caught recording as processes, offline:
/// `deja replay RUN -- NAME serve --listen 127.0.0.1:0 DEPS...` under
/// `unshare --net` ([`deja_offline`]: no network at all, not even
/// loopback), after the recording's dependencies stopped (the attempt's
/// `Outside` is dropped when it ends: last-item's PostgreSQL and Redis
/// are stopped by PID). Every replay must complete, which means the
/// service wrote what the recording wrote (deja checks each write against
/// the recording's hash): the same responses. All must give one digest
/// over the same events, and `serve` must print the same summary and
/// verdict each time (its last lines, `SERVICE: ...`). Where `unshare
/// --net` does not work, this fails with `CI=true`; elsewhere it says so
/// in one loud `SKIPPED` line and replays with the network up (the
/// servers still stopped).
pub fn replays_offline<H: Heisenbug>(
    caught: &Caught<Recorded<H>>,
) -> anyhow::Result<Replays<H::Ledger>> {
    let how = offline_or_say(&format!("heisenbug {}", H::NAME));
    let started = Instant::now();
    let mut first: Option<Replayed> = None;
    for n in 1..=REPLAYS {
        let replayed = replay_serve::<H>(caught, &[])
            .with_context(|| format!("replay {n} of {REPLAYS}, {how}"))?;
        match &first {
            None => first = Some(replayed),
            Some(first) => anyhow::ensure!(
                replayed == *first,
                "replay {n} of {REPLAYS}: {replayed:?}; replay 1: {first:?}"
            ),
        }
    }
    let first = first.context("no replay")?;
    let replays = Replays {
        ledger: None,
        summary: first.summary,
        verdict: first.verdict,
        digest: u64::from_str_radix(&first.digest, 16)
            .with_context(|| format!("digest {:?}", first.digest))?,
        times: REPLAYS,
        took: started.elapsed(),
        how: how.into(),
    };
    replays.announce(H::NAME);
    Ok(replays)
}

/// The fixed service (`serve --fixed`) replayed offline against the buggy
/// recording, as [`replays_offline`] replays: it must stop with a
/// divergence (exit 3) at `expected`, the (seq, task) the fixture
/// computed from the log ([`Heisenbug::fix_diverges_at`]). Returns deja's
/// report (stderr), for [`Heisenbug::check_divergence`].
pub fn fixed_offline<H: Heisenbug>(
    caught: &Caught<Recorded<H>>,
    expected: (u64, TaskId),
) -> anyhow::Result<String> {
    let mut replay = serve_replay::<H>(caught, &["--fixed"]);
    if H::FIX_STALLS {
        replay.env("DEJA_STALL_MS", FIX_STALL_MS);
    }
    let output = run_bounded(&mut replay);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    anyhow::ensure!(
        output.status.code() == Some(EXIT_DIVERGENCE),
        "the fixed service, replayed: exit {:?}, expected {EXIT_DIVERGENCE} (a divergence):\n{stderr}",
        output.status.code()
    );
    let (seq, task) = expected;
    let at = format!("deja: replay diverged at seq {seq} in task {task}:");
    anyhow::ensure!(
        stderr.lines().any(|line| line.starts_with(&at)),
        "expected `{at} ...`:\n{stderr}"
    );
    Ok(stderr)
}

/// What one replay in a process showed.
#[derive(Debug, PartialEq, Eq)]
struct Replayed {
    events: u64,
    digest: String,
    summary: String,
    verdict: Option<String>,
}

/// Runs one replay of `serve` (plus `extra` flags); it must complete.
fn replay_serve<H: Heisenbug>(
    caught: &Caught<Recorded<H>>,
    extra: &[&str],
) -> anyhow::Result<Replayed> {
    let output = run_bounded(&mut serve_replay::<H>(caught, extra));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let Some((events, digest)) = replay_summary(&stderr).filter(|_| output.status.success()) else {
        anyhow::bail!(
            "exit {:?}, no `replay complete`:\n{stderr}",
            output.status.code()
        );
    };
    // `serve` ends with its summary, then the verdict if the bug showed.
    let prefix = format!("{}: ", H::SERVICE);
    let mut said = stderr.lines().filter_map(|line| line.strip_prefix(&prefix));
    let summary = said
        .next()
        .with_context(|| format!("no `{prefix}SUMMARY` line:\n{stderr}"))?
        .to_string();
    Ok(Replayed {
        events,
        digest,
        summary,
        verdict: said.next().map(str::to_string),
    })
}

/// `deja replay RUN -- NAME serve --listen 127.0.0.1:0 DEPS... EXTRA...`,
/// offline where that works.
fn serve_replay<H: Heisenbug>(caught: &Caught<Recorded<H>>, extra: &[&str]) -> Command {
    let mut replay = deja_offline();
    replay
        .arg("replay")
        .arg(&caught.run)
        .arg("--")
        .arg(workspace_bin(<H as Fixture>::NAME))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(&caught.outcome.serve_args)
        .args(extra);
    replay
}

/// How the replays run: offline where `unshare --net` works; else a
/// failure in CI, and one loud line elsewhere.
fn offline_or_say(test: &str) -> &'static str {
    if offline_available() {
        return "through deja replay under unshare --net";
    }
    assert!(
        !servers::in_ci(),
        "{test}: `unshare --net` does not work here and CI=true: the replays must run offline \
         (.ci/run runs as root)"
    );
    servers::skip_line(
        test,
        "`unshare --net` does not work here (not root, no user namespaces): the replays run \
         with the network up (the servers stopped)",
    );
    "through deja replay (network up)"
}
