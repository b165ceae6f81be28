//! The run's identity and context, kept in every segment header.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest kept name field (service, run id, host, version), in bytes.
const NAME_BYTES_MAX: usize = 256;
/// Budget for argv in the header: a long command line fits, a hostile one
/// is cut (and `context_truncated` says so).
const ARGV_BYTES_MAX: usize = 32 << 10;
/// Budget for the recorded environment variables.
const ENV_BYTES_MAX: usize = 16 << 10;
const _: () = assert!(
    4 * NAME_BYTES_MAX + ARGV_BYTES_MAX + ENV_BYTES_MAX + (8 << 10)
        <= crate::format::HEADER_BODY_BYTES_MAX
);

/// Environment variables recorded by default besides every `DEJA_*` one.
/// Never secrets: the header is not redacted.
pub const RECORDED_ENV_DEFAULT: &[&str] = &["RUST_LOG", "TZ", "LANG"];

/// Who recorded a run, where and when. Replay compares argv and env with
/// the replaying process and warns on a difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Service name (`DEJA_SERVICE`); the run directory is `<service>-<run_id>`.
    pub service: String,
    /// Unique id of this run: UTC start time plus a random suffix.
    pub run_id: String,
    /// Host name of the recording machine.
    pub host: String,
    /// Process id of the recording process.
    pub pid: u32,
    /// Wall-clock start of the run, nanoseconds since the Unix epoch.
    pub start_wall_unix_ns: i64,
    /// The root seed every `deja::rand` generator derives from, if recorded.
    pub root_seed: Option<[u8; 32]>,
    /// The deja version that wrote the run.
    pub deja_version: String,
    /// The service's command line.
    pub argv: Vec<String>,
    /// Chosen environment variables, in name order.
    pub env: Vec<(String, String)>,
    /// argv or env were cut to fit the header.
    pub context_truncated: bool,
}

impl RunMeta {
    /// A run with the given names and everything else empty or zero: for
    /// tests and tools that need byte-stable output.
    pub fn new(service: &str, run_id: &str) -> RunMeta {
        RunMeta {
            service: sanitize(service),
            run_id: sanitize(run_id),
            host: String::new(),
            pid: 0,
            start_wall_unix_ns: 0,
            root_seed: None,
            deja_version: env!("CARGO_PKG_VERSION").to_string(),
            argv: Vec::new(),
            env: Vec::new(),
            context_truncated: false,
        }
    }

    /// Name the run `run_id`, made safe for a directory name as
    /// [`RunMeta::new`] does: `DEJA_RUN_ID=x/../../y` must not put the run
    /// outside the trace directory.
    pub fn set_run_id(&mut self, run_id: &str) {
        self.run_id = sanitize(run_id);
    }

    /// Describe the current process: host, pid, now, argv, and the
    /// `DEJA_*` variables plus [`RECORDED_ENV_DEFAULT`].
    pub fn current(service: &str) -> RunMeta {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let pid = std::process::id();
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(key, _)| key.starts_with("DEJA_") || RECORDED_ENV_DEFAULT.contains(&&**key))
            .collect();
        env.sort();
        let suffix = (now.subsec_nanos() ^ pid.rotate_left(16)) & 0xffff;
        RunMeta {
            run_id: format!("{}-{suffix:04x}", utc_stamp(now.as_secs())),
            host: host_name(),
            pid,
            start_wall_unix_ns: i64::try_from(now.as_nanos()).unwrap_or(i64::MAX),
            argv: std::env::args_os()
                .enumerate()
                .map(|(at, arg)| {
                    let arg = arg.to_string_lossy().into_owned();
                    match (at, std::env::current_dir()) {
                        (0, Ok(cwd)) => absolute_program(&arg, &cwd),
                        _ => arg,
                    }
                })
                .collect(),
            env,
            ..RunMeta::new(service, "")
        }
    }

    /// The run directory's name: `<service>-<run_id>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.service, self.run_id)
    }

    /// Cut every field to its budget so the header always fits its cap.
    pub(crate) fn clamp(&mut self) {
        for name in [
            &mut self.service,
            &mut self.run_id,
            &mut self.host,
            &mut self.deja_version,
        ] {
            truncate_utf8(name, NAME_BYTES_MAX);
        }
        let argv_cut = keep_within(&mut self.argv, ARGV_BYTES_MAX, |arg| arg.len());
        let env_cut = keep_within(&mut self.env, ENV_BYTES_MAX, |(k, v)| k.len() + v.len());
        self.context_truncated |= argv_cut || env_cut;
    }
}

/// Keep the longest prefix of `items` whose sizes sum within `budget`
/// (each item costs 8 more bytes for its length prefixes). True if cut.
fn keep_within<T>(items: &mut Vec<T>, budget: usize, size: impl Fn(&T) -> usize) -> bool {
    let mut used = 0;
    let keep = items
        .iter()
        .take_while(|item| {
            used += size(item) + 8;
            used <= budget
        })
        .count();
    let cut = keep < items.len();
    items.truncate(keep);
    cut
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The program as the header keeps it: a relative path (`./kv`,
/// `target/debug/kv`) made absolute against the directory it was started
/// from, so `deja replay RUN` starts it from anywhere; a bare name (found
/// on `PATH`) or an absolute path is kept as it is.
pub fn absolute_program(arg0: &str, cwd: &Path) -> String {
    let path = Path::new(arg0);
    if path.is_absolute() || !arg0.contains('/') {
        return arg0.to_string();
    }
    let mut absolute = cwd.to_path_buf();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            other => absolute.push(other),
        }
    }
    absolute.to_string_lossy().into_owned()
}

/// A command line as one line to paste into a POSIX shell: words made of
/// `[A-Za-z0-9-_./=:,+@%]` stay as they are, every other word is single-quoted.
pub fn shell_line<S: AsRef<str>>(words: &[S]) -> String {
    let quoted: Vec<String> = words
        .iter()
        .map(|word| {
            let word = word.as_ref();
            let plain = word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain && !word.is_empty() {
                word.to_string()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

/// Keep names safe for a directory name: `[A-Za-z0-9._-]`, others become `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success when the name fits, and we stop at the first NUL anyway.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// A Unix time in UTC: `(year, month, day, hour, minute, second)`
/// (Howard Hinnant's civil-from-days; valid for negative times too).
pub fn utc_civil(unix_secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
    )
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time, as run ids use it.
fn utc_stamp(unix_secs: u64) -> String {
    let (year, month, day, hour, minute, second) =
        utc_civil(i64::try_from(unix_secs).unwrap_or(i64::MAX));
    format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z")
}

#[cfg(test)]
impl RunMeta {
    pub(crate) fn for_tests(service: &str) -> RunMeta {
        RunMeta {
            argv: vec!["svc".into(), "--port".into(), "0".into()],
            env: vec![("DEJA_MODE".into(), "record".into())],
            root_seed: Some([7; 32]),
            ..RunMeta::new(service, "test")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_program_is_kept_absolute_and_a_bare_name_as_is() {
        let cwd = Path::new("/srv/app");
        assert_eq!(absolute_program("./kv", cwd), "/srv/app/kv");
        assert_eq!(
            absolute_program("target/debug/kv", cwd),
            "/srv/app/target/debug/kv"
        );
        assert_eq!(absolute_program("../bin/kv", cwd), "/srv/app/../bin/kv");
        assert_eq!(absolute_program("kv", cwd), "kv");
        assert_eq!(absolute_program("/usr/bin/kv", cwd), "/usr/bin/kv");
    }

    #[test]
    fn a_run_id_cannot_climb_out_of_the_trace_directory() {
        let mut meta = RunMeta::new("svc", "r");
        meta.set_run_id("x/../../escape2");
        assert!(!meta.run_id.contains('/'), "{}", meta.run_id);
        assert_eq!(meta.run_id, "x_.._.._escape2");
    }

    #[test]
    fn shell_lines_quote_only_what_needs_it() {
        assert_eq!(
            shell_line(&["bin/sim", "test_name", "--exact", "a=b:c"]),
            "bin/sim test_name --exact a=b:c"
        );
        assert_eq!(
            shell_line(&["say", "it's", "", "a b"]),
            r"say 'it'\''s' '' 'a b'"
        );
    }

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z"); // a leap day
        assert_eq!(utc_stamp(1_795_435_199), "20261123T115959Z");
    }

    #[test]
    fn service_names_are_made_path_safe() {
        assert_eq!(RunMeta::new("a/b c", "x").service, "a_b_c");
    }

    #[test]
    fn clamp_cuts_hostile_context_and_says_so() {
        let mut meta = RunMeta::new("svc", "run");
        meta.argv = vec!["x".repeat(1000); 1000];
        meta.host = "é".repeat(1000);
        meta.clamp();
        assert!(meta.context_truncated);
        assert!(meta.argv.len() < 40);
        assert!(meta.host.len() <= NAME_BYTES_MAX);
    }

    #[test]
    fn current_describes_this_process() {
        let meta = RunMeta::current("svc");
        assert_eq!(meta.pid, std::process::id());
        assert!(meta.start_wall_unix_ns > 0);
        assert!(meta.dir_name().starts_with("svc-2"));
    }
}
