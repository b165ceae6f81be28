//! Seed sweeps split across machines: shards, the report each shard
//! writes, JUnit XML for the CI system, and merging shard reports.
//!
//! A sweep of seeds `start..end` split `N` ways gives shard `K` (1-based,
//! like a CI matrix) one contiguous block; the blocks differ in size by at
//! most one seed and their union is the whole range, whatever `N` is. Both
//! `deja sim --shard K/N` and `deja::sim::Sweep::shard` use [`Shard`], so a
//! seed belongs to the same shard either way.
//!
//! ```
//! use deja_replayer::sweep::{merge, Shard, SweepRecord};
//!
//! let shard: Shard = "2/4".parse()?;
//! assert_eq!(shard.seeds(0..10), 2..5);
//!
//! // Each shard records what it ran; merging gives the whole sweep.
//! let records: Vec<SweepRecord> = (1..=4)
//!     .map(|k| {
//!         let shard = Shard::new(k, 4).unwrap();
//!         let mut record = SweepRecord::new("sim", 0..10, Some(shard));
//!         for seed in shard.seeds(0..10) {
//!             record.passed(seed);
//!         }
//!         record.finish(true, std::time::Duration::from_millis(5));
//!         record
//!     })
//!     .collect();
//! let merged = merge(records)?;
//! assert_eq!(merged.seeds_run(), 10);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{self, Write};
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The environment variable that shards a sweep without changing code:
/// `DEJA_SHARD=K/N` (a CI matrix sets it per job).
pub const SHARD_ENV: &str = "DEJA_SHARD";
/// The version of [`SweepRecord`]'s JSON; `merge` refuses other versions.
pub const RECORD_FORMAT: u32 = 1;
/// Failures whose output a record keeps: a sweep of a broken build can
/// fail every one of 100,000 seeds, and the first few outputs are the
/// ones anybody reads (the rest keep their verdict and rerun command).
pub const FAILURE_OUTPUTS_MAX: usize = 100;
/// Output kept per failure (its end, where the report is).
pub const FAILURE_OUTPUT_BYTES_MAX: usize = 16 << 10;

/// One of `count` parts of a seed range: `index` is 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u64,
    count: u64,
}

/// A shard spec that is not `K/N` with `1 <= K <= N`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad shard {spec:?}: expected K/N with 1 <= K <= N (shard 1/4 is the first of four)")]
pub struct ShardError {
    spec: String,
}

impl Shard {
    /// Shard `index` of `count`, 1-based.
    pub fn new(index: u64, count: u64) -> Result<Shard, ShardError> {
        if count == 0 || index == 0 || index > count {
            return Err(ShardError {
                spec: format!("{index}/{count}"),
            });
        }
        Ok(Shard { index, count })
    }

    /// Which shard, from 1.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// How many shards.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// This shard's block of `all`: contiguous, sizes differing by at most
    /// one between shards, the blocks of shards 1..=N covering `all`
    /// exactly once.
    pub fn seeds(&self, all: Range<u64>) -> Range<u64> {
        let len = all.end.saturating_sub(all.start);
        // u128: `len * index` overflows u64 for sweeps near u64::MAX.
        let bound = |k: u64| {
            let offset = u128::from(len) * u128::from(k) / u128::from(self.count);
            all.start + u64::try_from(offset).expect("offset <= len")
        };
        bound(self.index - 1)..bound(self.index)
    }

    /// `DEJA_SHARD`, if set.
    pub fn from_env() -> Result<Option<Shard>, ShardError> {
        match std::env::var(SHARD_ENV) {
            Ok(spec) => spec.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(spec)) => Err(ShardError {
                spec: spec.to_string_lossy().into_owned(),
            }),
        }
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(spec: &str) -> Result<Shard, ShardError> {
        let bad = || ShardError {
            spec: spec.to_string(),
        };
        let (index, count) = spec.trim().split_once('/').ok_or_else(bad)?;
        let index = index.trim().parse().map_err(|_| bad())?;
        let count = count.trim().parse().map_err(|_| bad())?;
        Shard::new(index, count).map_err(|_| bad())
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Shard, D::Error> {
        let spec = String::deserialize(deserializer)?;
        spec.parse().map_err(serde::de::Error::custom)
    }
}

/// Seeds `start..end`, as the JSON writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRange {
    /// The first seed.
    pub start: u64,
    /// One past the last seed.
    pub end: u64,
}

impl From<Range<u64>> for SeedRange {
    fn from(range: Range<u64>) -> SeedRange {
        SeedRange {
            start: range.start,
            end: range.end,
        }
    }
}

impl SeedRange {
    fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// A seed that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedFailure {
    /// The seed.
    pub seed: u64,
    /// Why, in a few words (`exit code 1`, `timed out after 120s`, the
    /// simulation's failure line).
    pub why: String,
    /// A command that runs this seed again.
    pub rerun: String,
    /// The end of its output; empty past [`FAILURE_OUTPUTS_MAX`] failures.
    #[serde(default)]
    pub output: String,
}

/// What one sweep (or one shard of it) ran and found: what `deja sim
/// --report` writes and `deja sim merge` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// The simulation: its command line, or the test that ran it.
    pub command: String,
    /// The whole sweep's seeds, before sharding.
    pub seeds: SeedRange,
    /// Which shard this is; `None` for a whole sweep or a merge.
    pub shard: Option<Shard>,
    /// The seeds that ran to a verdict, as sorted, disjoint ranges.
    pub ran: Vec<SeedRange>,
    /// The failing seeds, lowest first.
    pub failures: Vec<SeedFailure>,
    /// Whether every seed of its share ran (false after stopping at the
    /// first failure, or when interrupted).
    pub complete: bool,
    /// Wall time, in milliseconds (a merge keeps the longest shard's).
    pub wall_ms: u64,
}

impl SweepRecord {
    /// An empty record of `seeds` (the whole sweep's range).
    pub fn new(command: impl Into<String>, seeds: Range<u64>, shard: Option<Shard>) -> Self {
        SweepRecord {
            format: RECORD_FORMAT,
            command: command.into(),
            seeds: seeds.into(),
            shard,
            ran: Vec::new(),
            failures: Vec::new(),
            complete: false,
            wall_ms: 0,
        }
    }

    /// The seeds this record is responsible for: its shard's block, or all.
    pub fn share(&self) -> Range<u64> {
        let all = self.seeds.start..self.seeds.end;
        match self.shard {
            Some(shard) => shard.seeds(all),
            None => all,
        }
    }

    /// Note that `seed` passed.
    pub fn passed(&mut self, seed: u64) {
        add_seed(&mut self.ran, seed);
    }

    /// Note that `seed` failed.
    pub fn failed(
        &mut self,
        seed: u64,
        why: impl Into<String>,
        rerun: impl Into<String>,
        output: &str,
    ) {
        add_seed(&mut self.ran, seed);
        let output = if self.failures.len() < FAILURE_OUTPUTS_MAX {
            tail(output, FAILURE_OUTPUT_BYTES_MAX).to_string()
        } else {
            String::new()
        };
        let failure = SeedFailure {
            seed,
            why: why.into(),
            rerun: rerun.into(),
            output,
        };
        let at = self.failures.partition_point(|f| f.seed < seed);
        self.failures.insert(at, failure);
    }

    /// Close the record: whether the share ran to its end, and how long.
    pub fn finish(&mut self, complete: bool, wall: Duration) {
        self.complete = complete;
        self.wall_ms = u64::try_from(wall.as_millis()).unwrap_or(u64::MAX);
    }

    /// How many seeds ran to a verdict.
    pub fn seeds_run(&self) -> u64 {
        self.ran.iter().map(SeedRange::len).sum()
    }

    /// Whether `seed` ran.
    pub fn ran_seed(&self, seed: u64) -> bool {
        let at = self.ran.partition_point(|range| range.end <= seed);
        self.ran.get(at).is_some_and(|range| range.start <= seed)
    }

    /// Write the record as JSON to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::write(path, json)
    }

    /// Read a record `write` wrote.
    pub fn read(path: &Path) -> Result<SweepRecord, MergeError> {
        let bytes = std::fs::read(path).map_err(|source| MergeError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let record: SweepRecord =
            serde_json::from_slice(&bytes).map_err(|err| MergeError::Parse {
                path: path.display().to_string(),
                detail: err.to_string(),
            })?;
        if record.format != RECORD_FORMAT {
            return Err(MergeError::Parse {
                path: path.display().to_string(),
                detail: format!(
                    "report format {} (this deja reads {RECORD_FORMAT})",
                    record.format
                ),
            });
        }
        record.check().map_err(|detail| MergeError::Parse {
            path: path.display().to_string(),
            detail,
        })?;
        Ok(record)
    }

    /// What a hand-edited or damaged record can get wrong.
    fn check(&self) -> Result<(), String> {
        let share = self.share();
        let mut previous_end = None;
        for range in &self.ran {
            if range.start >= range.end || previous_end.is_some_and(|end| range.start <= end) {
                return Err("`ran` is not sorted, disjoint, non-empty ranges".into());
            }
            if range.start < share.start || range.end > share.end {
                return Err(format!(
                    "seeds {}..{} ran outside its share {}..{}",
                    range.start, range.end, share.start, share.end
                ));
            }
            previous_end = Some(range.end);
        }
        if let Some(failure) = self.failures.iter().find(|f| !self.ran_seed(f.seed)) {
            return Err(format!(
                "failing seed {} is not among the seeds run",
                failure.seed
            ));
        }
        Ok(())
    }

    /// The one-line summary `deja sim` prints: `deja sim: 40 seeds of
    /// 0..40 (shard 2/4: 10..20) in 0.52s (77 seeds/s): 2 failed: 3, 17`.
    pub fn summary(&self) -> String {
        let seconds = self.wall_ms as f64 / 1000.0;
        let mut line = format!(
            "deja sim: {} seeds of {}..{}",
            self.seeds_run(),
            self.seeds.start,
            self.seeds.end
        );
        if let Some(shard) = self.shard {
            let share = self.share();
            line.push_str(&format!(" (shard {shard}: {}..{})", share.start, share.end));
        }
        line.push_str(&format!(
            " in {seconds:.2}s ({:.1} seeds/s)",
            self.seeds_run() as f64 / seconds.max(1e-3)
        ));
        match self.failures.as_slice() {
            [] => line.push_str(": all passed"),
            failures => {
                let seeds: Vec<String> = failures.iter().map(|f| f.seed.to_string()).collect();
                line.push_str(&format!(": {} failed: {}", seeds.len(), seeds.join(", ")));
            }
        }
        if !self.complete {
            line.push_str(" (stopped early)");
        }
        line
    }

    /// Write JUnit XML: one test case per seed run, failures with their
    /// rerun command and output. What GitHub Actions, GitLab, Jenkins and
    /// Buildkite display.
    pub fn write_junit(&self, out: &mut impl Write) -> io::Result<()> {
        let suite = match self.shard {
            Some(shard) => format!("deja sim {} (shard {shard})", self.command),
            None => format!("deja sim {}", self.command),
        };
        let seconds = self.wall_ms as f64 / 1000.0;
        writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        writeln!(
            out,
            r#"<testsuites name="deja sim" tests="{}" failures="{}" time="{seconds:.3}">"#,
            self.seeds_run(),
            self.failures.len()
        )?;
        writeln!(
            out,
            r#"  <testsuite name="{}" tests="{}" failures="{}" time="{seconds:.3}">"#,
            xml_escape(&suite),
            self.seeds_run(),
            self.failures.len()
        )?;
        let mut failures = self.failures.iter().peekable();
        for range in &self.ran {
            for seed in range.start..range.end {
                write!(
                    out,
                    r#"    <testcase classname="deja.sim" name="seed {seed}""#
                )?;
                match failures.next_if(|f| f.seed == seed) {
                    None => writeln!(out, "/>")?,
                    Some(failure) => {
                        writeln!(out, ">")?;
                        writeln!(
                            out,
                            r#"      <failure message="{}" type="seed failed">rerun: {}"#,
                            xml_escape(&failure.why),
                            xml_escape(&failure.rerun)
                        )?;
                        if !failure.output.is_empty() {
                            writeln!(out, "{}", xml_escape(failure.output.trim_end()))?;
                        }
                        writeln!(out, "</failure>")?;
                        writeln!(out, "    </testcase>")?;
                    }
                }
            }
        }
        writeln!(out, "  </testsuite>")?;
        writeln!(out, "</testsuites>")
    }

    /// [`SweepRecord::write_junit`] to a file.
    pub fn write_junit_file(&self, path: &Path) -> io::Result<()> {
        let mut out = io::BufWriter::new(std::fs::File::create(path)?);
        self.write_junit(&mut out)?;
        out.flush()
    }
}

/// Why shard records do not merge.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A report cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The report.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A report is not a sweep report deja can read.
    #[error("{path} is not a deja sim report: {detail}")]
    Parse {
        /// The report.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// No reports.
    #[error("no reports to merge")]
    Empty,
    /// Reports of different sweeps.
    #[error("the reports are of different sweeps: {0}")]
    Mismatch(String),
    /// A shard appears twice.
    #[error("shard {0} appears twice")]
    Duplicate(Shard),
    /// Shards are missing.
    #[error("shards missing: {}", list(.0))]
    Missing(Vec<u64>),
}

fn list(indexes: &[u64]) -> String {
    indexes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Merge the records of every shard of one sweep into the record the
/// unsharded sweep would have written. Refuses records of different
/// sweeps (command, seed range, shard count), duplicates, and gaps.
pub fn merge(records: Vec<SweepRecord>) -> Result<SweepRecord, MergeError> {
    let first = records.first().ok_or(MergeError::Empty)?;
    if records.len() == 1 && first.shard.is_none() {
        return Ok(records.into_iter().next().expect("one record"));
    }
    let count = match first.shard {
        Some(shard) => shard.count(),
        None => {
            return Err(MergeError::Mismatch(
                "an unsharded report among shards".into(),
            ))
        }
    };
    let mut merged = SweepRecord::new(
        first.command.clone(),
        first.seeds.start..first.seeds.end,
        None,
    );
    merged.complete = true;
    let mut by_index: Vec<(u64, SweepRecord)> = Vec::with_capacity(records.len());
    for record in records {
        if record.command != merged.command || record.seeds != merged.seeds {
            return Err(MergeError::Mismatch(format!(
                "`{}` seeds {}..{} beside `{}` seeds {}..{}",
                record.command,
                record.seeds.start,
                record.seeds.end,
                merged.command,
                merged.seeds.start,
                merged.seeds.end
            )));
        }
        let shard = match record.shard {
            Some(shard) if shard.count() == count => shard,
            Some(shard) => {
                return Err(MergeError::Mismatch(format!(
                    "shard {shard} beside shards of {count}"
                )))
            }
            None => {
                return Err(MergeError::Mismatch(
                    "an unsharded report among shards".into(),
                ))
            }
        };
        if by_index.iter().any(|(index, _)| *index == shard.index()) {
            return Err(MergeError::Duplicate(shard));
        }
        by_index.push((shard.index(), record));
    }
    if by_index.len() as u64 != count {
        let present: std::collections::BTreeSet<u64> = by_index.iter().map(|(i, _)| *i).collect();
        // At most a screenful: a missing-shards list of 100,000 helps nobody.
        let missing: Vec<u64> = (1..=count)
            .filter(|i| !present.contains(i))
            .take(20)
            .collect();
        return Err(MergeError::Missing(missing));
    }
    by_index.sort_by_key(|(index, _)| *index);
    for (_, record) in by_index {
        merged.complete &= record.complete;
        merged.wall_ms = merged.wall_ms.max(record.wall_ms);
        // Shards' blocks are in seed order, so appending keeps `ran` sorted.
        for range in record.ran {
            match merged.ran.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => merged.ran.push(range),
            }
        }
        merged.failures.extend(record.failures);
    }
    Ok(merged)
}

fn add_seed(ran: &mut Vec<SeedRange>, seed: u64) {
    let at = ran.partition_point(|range| range.end < seed);
    match ran.get_mut(at) {
        Some(range) if range.start <= seed && seed < range.end => {}
        Some(range) if range.end == seed => {
            range.end += 1;
            // Joins the next range when it starts right after.
            if ran.get(at + 1).is_some_and(|next| next.start == seed + 1) {
                let next = ran.remove(at + 1);
                ran[at].end = next.end;
            }
        }
        Some(range) if range.start == seed + 1 => range.start = seed,
        _ => ran.insert(at, (seed..seed + 1).into()),
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Text as XML character data or attribute value: the five entities
/// escaped, characters XML 1.0 forbids (most control characters) dropped.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shard_specs_parse_and_refuse() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard::new(1, 4).unwrap());
        assert_eq!(" 4 / 4 ".parse::<Shard>().unwrap().to_string(), "4/4");
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "1/2/3", "-1/4", ""] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.to_string().contains("K/N"), "{bad}: {err}");
        }
    }

    proptest! {
        #[test]
        fn shards_cover_the_range_exactly_once(start in 0u64..1_000, len in 0u64..5_000, count in 1u64..64) {
            let all = start..start + len;
            let mut next = all.start;
            for index in 1..=count {
                let block = Shard::new(index, count).unwrap().seeds(all.clone());
                prop_assert_eq!(block.start, next);
                let size = block.end - block.start;
                prop_assert!(size == len / count || size == len / count + 1);
                next = block.end;
            }
            prop_assert_eq!(next, all.end);
        }

        #[test]
        fn seeds_noted_in_any_order_make_sorted_disjoint_ranges(seeds in proptest::collection::vec(0u64..200, 0..300)) {
            let mut record = SweepRecord::new("t", 0..200, None);
            for &seed in &seeds {
                record.passed(seed);
            }
            let distinct: std::collections::BTreeSet<u64> = seeds.iter().copied().collect();
            prop_assert_eq!(record.seeds_run(), distinct.len() as u64);
            prop_assert!(record.check().is_ok());
            for seed in 0..200 {
                prop_assert_eq!(record.ran_seed(seed), distinct.contains(&seed));
            }
            for pair in record.ran.windows(2) {
                prop_assert!(pair[0].end < pair[1].start, "ranges touch: {:?}", record.ran);
            }
        }
    }

    fn shard_record(index: u64, count: u64, failing: &[u64]) -> SweepRecord {
        let shard = Shard::new(index, count).unwrap();
        let mut record = SweepRecord::new("sim --x", 10..110, Some(shard));
        for seed in shard.seeds(10..110) {
            if failing.contains(&seed) {
                record.failed(
                    seed,
                    "exit code 1",
                    format!("deja sim --seed {seed} -- sim --x"),
                    "out",
                );
            } else {
                record.passed(seed);
            }
        }
        record.finish(true, Duration::from_millis(index * 10));
        record
    }

    #[test]
    fn merged_shards_equal_the_unsharded_sweep() {
        let failing = [12, 47, 48, 109];
        let mut whole = SweepRecord::new("sim --x", 10..110, None);
        for seed in 10..110 {
            if failing.contains(&seed) {
                whole.failed(
                    seed,
                    "exit code 1",
                    format!("deja sim --seed {seed} -- sim --x"),
                    "out",
                );
            } else {
                whole.passed(seed);
            }
        }
        whole.finish(true, Duration::from_millis(30));
        // Shards arrive in any order.
        let records = vec![
            shard_record(3, 3, &failing),
            shard_record(1, 3, &failing),
            shard_record(2, 3, &failing),
        ];
        let merged = merge(records).unwrap();
        assert_eq!(merged, whole);
    }

    #[test]
    fn merge_refuses_gaps_duplicates_and_strangers() {
        let err = merge(vec![shard_record(1, 3, &[]), shard_record(3, 3, &[])]).unwrap_err();
        assert_eq!(err.to_string(), "shards missing: 2");
        let err = merge(vec![shard_record(1, 2, &[]), shard_record(1, 2, &[])]).unwrap_err();
        assert_eq!(err.to_string(), "shard 1/2 appears twice");
        let err = merge(vec![shard_record(1, 2, &[]), shard_record(2, 3, &[])]).unwrap_err();
        assert!(
            err.to_string().contains("shard 2/3 beside shards of 2"),
            "{err}"
        );
        let mut other = shard_record(2, 2, &[]);
        other.command = "other".into();
        let err = merge(vec![shard_record(1, 2, &[]), other]).unwrap_err();
        assert!(err.to_string().contains("different sweeps"), "{err}");
        assert!(matches!(merge(Vec::new()), Err(MergeError::Empty)));
    }

    #[test]
    fn damaged_reports_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.json");
        std::fs::write(&path, b"{\"format\": 1").unwrap();
        let err = SweepRecord::read(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{} is not a deja sim report", path.display())),
            "{err}"
        );

        let mut record = shard_record(1, 2, &[]);
        record.ran.push(SeedRange { start: 90, end: 95 });
        record.write(&path).unwrap();
        let err = SweepRecord::read(&path).unwrap_err();
        assert!(err.to_string().contains("outside its share"), "{err}");

        let mut record = shard_record(1, 2, &[]);
        record.format = 9;
        record.write(&path).unwrap();
        assert!(SweepRecord::read(&path)
            .unwrap_err()
            .to_string()
            .contains("format 9"));
    }

    #[test]
    fn junit_has_a_case_per_seed_and_escapes_output() {
        let mut record = SweepRecord::new("sim <x>", 0..3, None);
        record.passed(0);
        record.failed(
            1,
            "exit \"code\" 1",
            "deja sim --seed 1 -- sim",
            "a < b & \u{1}c",
        );
        record.passed(2);
        record.finish(true, Duration::from_millis(1500));
        let mut xml = Vec::new();
        record.write_junit(&mut xml).unwrap();
        let xml = String::from_utf8(xml).unwrap();
        assert_eq!(xml.matches("<testcase ").count(), 3, "{xml}");
        assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
        assert!(
            xml.contains(r#"tests="3" failures="1" time="1.500""#),
            "{xml}"
        );
        assert!(xml.contains("name=\"deja sim sim &lt;x&gt;\""), "{xml}");
        assert!(xml.contains("message=\"exit &quot;code&quot; 1\""), "{xml}");
        assert!(xml.contains("a &lt; b &amp; c"), "{xml}");
    }

    #[test]
    fn outputs_past_the_cap_are_dropped_but_failures_kept() {
        let mut record = SweepRecord::new("t", 0..1_000, None);
        let long = "x".repeat(FAILURE_OUTPUT_BYTES_MAX * 2);
        for seed in 0..(FAILURE_OUTPUTS_MAX as u64 + 10) {
            record.failed(seed, "boom", "again", &long);
        }
        assert_eq!(record.failures.len(), FAILURE_OUTPUTS_MAX + 10);
        assert_eq!(record.failures[0].output.len(), FAILURE_OUTPUT_BYTES_MAX);
        assert!(record.failures.last().unwrap().output.is_empty());
    }
}
