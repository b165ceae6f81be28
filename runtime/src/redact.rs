//! Redaction: keep secrets (an `Authorization` header, a card number) out
//! of the log while the service still sees them.
//!
//! A redactor is given a copy of every payload the recording is about to
//! log (TCP reads, UDP datagrams received, and the bytes of every write,
//! which are hashed and, with `DEJA_KEEP_WRITES`, kept) and masks bytes in
//! place. Lengths never change, so replay still hands the service reads
//! of the recorded sizes, with masks where the secrets were.
//!
//! ```
//! use deja::redact;
//!
//! let builder = deja::Builder::new()
//!     .redact(redact::http_header("authorization"))
//!     .redact(redact::digits_run(13..=19).luhn())
//!     .redact(|ctx: &redact::RedactCtx<'_>, bytes: &mut [u8]| {
//!         // Anything else: mask in place and say whether you did.
//!         let _ = ctx.direction;
//!         redact::mask_all(bytes, b"api-key=")
//!     });
//! # drop(builder);
//! ```
//!
//! What the log says: every redacted event is followed by an
//! [`EventKind::Redacted`](deja_recorder::EventKind::Redacted) marker with
//! the masked ranges. Writes are hashed *after* masking (a hash of a card
//! number is easy to brute-force), and replay masks the service's writes
//! with the same redactors before comparing, so the same binary replays
//! its own redacted logs. Replay reports every redacted read it hands to
//! the service, and a divergence after one says so.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use deja_recorder::{ConnId, REDACTED_RANGES_MAX};

/// The byte masked bytes become: printable, and not a digit, so masking
/// twice changes nothing and a masked card number is no digit run.
pub const MASK: u8 = b'*';

/// Bytes of the same stream and direction just before a chunk that a
/// redactor sees as [`RedactCtx::before`]: enough for a header name and a
/// bearer token or a card number cut by a read boundary, small enough to
/// keep per connection (2 × 1 KiB per open stream).
pub const CONTEXT_BYTES: usize = 1024;

/// What the payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// Bytes a TCP read returned.
    TcpRead,
    /// Bytes a TCP write accepted.
    TcpWrite,
    /// A UDP datagram received.
    UdpRecv,
    /// A UDP datagram sent.
    UdpSend,
}

impl Direction {
    /// True for what the service received (reads and datagrams received).
    pub fn is_inbound(self) -> bool {
        matches!(self, Direction::TcpRead | Direction::UdpRecv)
    }
}

/// Where a payload comes from, for a redactor to decide what to mask.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RedactCtx<'a> {
    /// Read, write, datagram received or sent.
    pub direction: Direction,
    /// The stream or socket (the log's connection id).
    pub conn: ConnId,
    /// The remote address (the datagram's sender or destination for UDP).
    pub peer: SocketAddr,
    /// Up to [`CONTEXT_BYTES`] of the real bytes that came just before
    /// this chunk on the same stream in the same direction (empty for
    /// UDP and at a stream's start). Already logged: only for finding a
    /// secret that a read boundary cut in two.
    pub before: &'a [u8],
}

/// Masks secrets in a payload in place. Returns true if it changed
/// anything. It must be a pure function of its arguments (replay runs it
/// again on the service's writes and compares hashes), must keep the
/// length (it cannot change it), and should be idempotent (masking masked
/// bytes changes nothing), so replay of a service that echoes a masked
/// read writes what the recording logged.
///
/// Implemented for closures `Fn(&RedactCtx<'_>, &mut [u8]) -> bool`.
pub trait Redact: Send + Sync + 'static {
    /// Mask what must not be logged in `bytes`.
    fn redact(&self, ctx: &RedactCtx<'_>, bytes: &mut [u8]) -> bool;
}

impl<F> Redact for F
where
    F: Fn(&RedactCtx<'_>, &mut [u8]) -> bool + Send + Sync + 'static,
{
    fn redact(&self, ctx: &RedactCtx<'_>, bytes: &mut [u8]) -> bool {
        self(ctx, bytes)
    }
}

/// Mask every occurrence of `needle`'s value: the bytes after it up to the
/// next `&`, whitespace, `;`, `"` or the end (a query parameter, a cookie,
/// a JSON-ish `key=value`). Returns true if it masked something.
pub fn mask_all(bytes: &mut [u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return false;
    }
    let mut changed = false;
    let mut at = 0;
    while let Some(found) = find(&bytes[at..], needle) {
        let start = at + found + needle.len();
        let end = bytes[start..]
            .iter()
            .position(|b| matches!(b, b'&' | b';' | b'"' | b' ' | b'\t' | b'\r' | b'\n'))
            .map_or(bytes.len(), |len| start + len);
        changed |= mask(&mut bytes[start..end]);
        at = end.max(start);
    }
    changed
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Mask `bytes`; true if any byte was not a mask already.
fn mask(bytes: &mut [u8]) -> bool {
    let mut changed = false;
    for byte in bytes {
        changed |= *byte != MASK;
        *byte = MASK;
    }
    changed
}

/// The value of an HTTP/1 header (`name` matched case-insensitively at a
/// line start, then `:`): masked from the first non-blank byte after the
/// colon to the end of the line. See [`http_header`].
#[derive(Clone, Debug)]
pub struct HttpHeader {
    name: Vec<u8>,
}

/// Mask the value of header `name` (for example `"authorization"`,
/// `"cookie"`, `"x-api-key"`) in requests and responses.
///
/// A header cut by a read boundary is found through [`RedactCtx::before`]:
/// the part of its value in the later read is masked too, and a value
/// that runs to the end of a read is masked to that end. **Limit:** a
/// header line longer than [`CONTEXT_BYTES`] cut by a read boundary is
/// masked only up to the cut (the rest follows a `before` that no longer
/// shows the header's name); values folded over several lines (obsolete
/// in HTTP/1.1) are masked on their first line only.
pub fn http_header(name: &str) -> HttpHeader {
    HttpHeader {
        name: name.trim().to_ascii_lowercase().into_bytes(),
    }
}

impl Redact for HttpHeader {
    fn redact(&self, ctx: &RedactCtx<'_>, bytes: &mut [u8]) -> bool {
        if self.name.is_empty() {
            return false;
        }
        let joined;
        let (text, offset) = if ctx.before.is_empty() {
            (&*bytes, 0)
        } else {
            joined = [ctx.before, &*bytes].concat();
            (joined.as_slice(), ctx.before.len())
        };
        let mut ranges = Vec::new();
        let name = &self.name;
        let mut line = 0;
        while line < text.len() {
            let line_end = text[line..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |len| line + len);
            let rest = &text[line..line_end];
            if rest.len() > name.len()
                && rest[..name.len()].eq_ignore_ascii_case(name)
                && rest[name.len()] == b':'
            {
                let mut start = line + name.len() + 1;
                while start < line_end && matches!(text[start], b' ' | b'\t') {
                    start += 1;
                }
                let mut end = line_end;
                if end > start && text[end - 1] == b'\r' {
                    end -= 1;
                }
                if end > offset && start < end {
                    ranges.push((start.max(offset) - offset, end - offset));
                }
            }
            line = line_end + 1;
        }
        let mut changed = false;
        for (start, end) in ranges {
            changed |= mask(&mut bytes[start..end]);
        }
        changed
    }
}

/// Runs of ASCII digits, possibly grouped by single spaces or dashes
/// (`4111 1111 1111 1111`), whose digit count is in a range: card numbers
/// (`13..=19`), account numbers. See [`digits_run`].
#[derive(Clone, Debug)]
pub struct DigitsRun {
    digits: RangeInclusive<usize>,
    luhn: bool,
}

/// Mask the digits of every run of `digits` digits (separators kept).
///
/// A run cut by a read boundary is recognised in the later read through
/// [`RedactCtx::before`] and its digits there are masked; **limit:** the
/// digits that were in the earlier read were logged if that part alone
/// was no match. Bigger reads make this rarer; a protocol that sends the
/// number in a recognisable field is better served by a field redactor.
pub fn digits_run(digits: RangeInclusive<usize>) -> DigitsRun {
    DigitsRun {
        digits,
        luhn: false,
    }
}

impl DigitsRun {
    /// Mask only runs that pass the Luhn check (card numbers do; most
    /// other long numbers, like timestamps, do not).
    pub fn luhn(mut self) -> DigitsRun {
        self.luhn = true;
        self
    }
}

/// True if the digits pass the Luhn checksum.
fn luhn_ok(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

impl Redact for DigitsRun {
    fn redact(&self, ctx: &RedactCtx<'_>, bytes: &mut [u8]) -> bool {
        // Only the end of `before` can continue into this chunk.
        let carried = ctx
            .before
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit() || matches!(b, b' ' | b'-'))
            .count();
        let joined;
        let (text, offset) = if carried == 0 {
            (&*bytes, 0)
        } else {
            joined = [&ctx.before[ctx.before.len() - carried..], &*bytes].concat();
            (joined.as_slice(), carried)
        };
        let mut runs = Vec::new();
        let mut at = 0;
        while at < text.len() {
            if !text[at].is_ascii_digit() {
                at += 1;
                continue;
            }
            // A run: digits, with single separators between digits.
            let mut positions = vec![at];
            let mut next = at + 1;
            loop {
                match text.get(next) {
                    Some(b) if b.is_ascii_digit() => {
                        positions.push(next);
                        next += 1;
                    }
                    Some(b' ' | b'-') if text.get(next + 1).is_some_and(u8::is_ascii_digit) => {
                        next += 1;
                    }
                    _ => break,
                }
            }
            if self.digits.contains(&positions.len()) {
                let digits: Vec<u8> = positions.iter().map(|&p| text[p]).collect();
                if !self.luhn || luhn_ok(&digits) {
                    runs.push(positions);
                }
            }
            at = next;
        }
        let mut changed = false;
        for position in runs.into_iter().flatten() {
            if position >= offset {
                changed |= mask(&mut bytes[position - offset..=position - offset]);
            }
        }
        changed
    }
}

/// The redactors a runtime was built with, shared by the record and replay
/// paths, plus each stream's recent bytes per direction.
#[derive(Clone, Default)]
pub(crate) struct Redactors {
    list: Vec<Arc<dyn Redact>>,
}

impl fmt::Debug for Redactors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactors({})", self.list.len())
    }
}

impl Redactors {
    pub(crate) fn push(&mut self, redactor: impl Redact) {
        self.list.push(Arc::new(redactor));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// The redactors in use by one runtime, with the context they need.
#[derive(Debug)]
pub(crate) struct Redaction {
    redactors: Redactors,
    /// The last [`CONTEXT_BYTES`] of each TCP stream, per direction.
    tails: Mutex<HashMap<(ConnId, Direction), Vec<u8>>>,
}

impl Redaction {
    /// `None` when there is nothing to redact: the paths skip all work.
    pub(crate) fn new(redactors: Redactors) -> Option<Redaction> {
        (!redactors.is_empty()).then(|| Redaction {
            redactors,
            tails: Mutex::default(),
        })
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<(ConnId, Direction), Vec<u8>>> {
        self.tails.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run every redactor over `logged` (a copy of `original`, the real
    /// bytes) and return the masked ranges (empty: nothing changed). Does
    /// not move the stream's context on: see [`Redaction::advance`].
    pub(crate) fn mask(
        &self,
        direction: Direction,
        conn: ConnId,
        peer: SocketAddr,
        original: &[u8],
        logged: &mut [u8],
    ) -> Vec<(u32, u32)> {
        let tails = self.tails();
        let before = tails.get(&(conn, direction)).map_or(&[][..], Vec::as_slice);
        let ctx = RedactCtx {
            direction,
            conn,
            peer,
            before,
        };
        let mut changed = false;
        for redactor in &self.redactors.list {
            changed |= redactor.redact(&ctx, logged);
        }
        drop(tails);
        if !changed {
            return Vec::new();
        }
        changed_ranges(original, logged)
    }

    /// `bytes` went by on a TCP stream: keep its end as the next chunk's
    /// context.
    pub(crate) fn advance(&self, direction: Direction, conn: ConnId, bytes: &[u8]) {
        if matches!(direction, Direction::UdpRecv | Direction::UdpSend) || bytes.is_empty() {
            return;
        }
        let mut tails = self.tails();
        let tail = tails.entry((conn, direction)).or_default();
        tail.extend_from_slice(&bytes[bytes.len().saturating_sub(CONTEXT_BYTES)..]);
        let excess = tail.len().saturating_sub(CONTEXT_BYTES);
        tail.drain(..excess);
    }

    /// The stream closed: forget its context.
    pub(crate) fn forget(&self, conn: ConnId) {
        let mut tails = self.tails();
        tails.remove(&(conn, Direction::TcpRead));
        tails.remove(&(conn, Direction::TcpWrite));
    }
}

/// The ranges where `after` differs from `before` (same length), at most
/// [`REDACTED_RANGES_MAX`]: beyond that the last range is widened to the
/// last difference.
pub(crate) fn changed_ranges(before: &[u8], after: &[u8]) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let to_u32 = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
    let mut at = 0;
    let len = before.len().min(after.len());
    while at < len {
        if before[at] == after[at] {
            at += 1;
            continue;
        }
        let start = at;
        while at < len && before[at] != after[at] {
            at += 1;
        }
        if ranges.len() == REDACTED_RANGES_MAX {
            if let Some(last) = ranges.last_mut() {
                last.1 = to_u32(at);
            }
        } else {
            ranges.push((to_u32(start), to_u32(at)));
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(before: &[u8]) -> RedactCtx<'_> {
        RedactCtx {
            direction: Direction::TcpRead,
            conn: ConnId(1),
            peer: "127.0.0.1:9".parse().unwrap(),
            before,
        }
    }

    fn run(redactor: &impl Redact, before: &[u8], chunk: &[u8]) -> String {
        let mut bytes = chunk.to_vec();
        redactor.redact(&ctx(before), &mut bytes);
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn http_header_masks_the_value_to_the_line_end_in_any_case() {
        let auth = http_header("Authorization");
        let request = b"GET / HTTP/1.1\r\nHost: a\r\nauthorization: Bearer s3cr3t\r\nX: 1\r\n\r\n";
        assert_eq!(
            run(&auth, b"", request),
            "GET / HTTP/1.1\r\nHost: a\r\nauthorization: *************\r\nX: 1\r\n\r\n"
        );
        // Not a header name at a line start: untouched.
        assert_eq!(
            run(&auth, b"", b"x-authorization: a\r\n"),
            "x-authorization: a\r\n"
        );
    }

    #[test]
    fn http_header_finds_a_header_cut_by_a_read_boundary() {
        let auth = http_header("authorization");
        // The name in the earlier read, the value in this one.
        assert_eq!(
            run(
                &auth,
                b"GET / HTTP/1.1\r\nAuthori",
                b"zation: Bearer tok\r\n\r\n"
            ),
            "zation: **********\r\n\r\n"
        );
        // The value cut in two: masked to the end of the first read...
        assert_eq!(
            run(&auth, b"GET /\r\n", b"Authorization: Bearer to"),
            "Authorization: *********"
        );
        // ...and its rest in the next one.
        assert_eq!(
            run(
                &auth,
                b"GET /\r\nAuthorization: Bearer to",
                b"ken\r\nHost: a\r\n"
            ),
            "***\r\nHost: a\r\n"
        );
    }

    #[test]
    fn digits_run_masks_card_numbers_with_separators_and_luhn() {
        let cards = digits_run(13..=19);
        assert_eq!(
            run(&cards, b"", b"card=4111 1111 1111 1111&n=42"),
            "card=**** **** **** ****&n=42"
        );
        assert_eq!(run(&cards, b"", b"id=123456789012"), "id=123456789012");
        let luhn = digits_run(13..=19).luhn();
        assert_eq!(run(&luhn, b"", b"4111111111111111"), "****************");
        assert_eq!(run(&luhn, b"", b"4111111111111112"), "4111111111111112");
        // A run cut by a read boundary: this read's digits are masked.
        assert_eq!(run(&cards, b"card=41111111", b"11111111;"), "********;");
    }

    #[test]
    fn masking_is_idempotent() {
        let auth = http_header("authorization");
        let once = run(&auth, b"", b"Authorization: Bearer x\r\n");
        assert_eq!(run(&auth, b"", once.as_bytes()), once);
        let mut bytes = once.into_bytes();
        assert!(!auth.redact(&ctx(b""), &mut bytes));
    }

    #[test]
    fn mask_all_masks_parameter_values() {
        let mut bytes = b"a=1&api-key=xyz&b=2".to_vec();
        assert!(mask_all(&mut bytes, b"api-key="));
        assert_eq!(bytes, b"a=1&api-key=***&b=2");
    }

    #[test]
    fn the_context_keeps_the_last_bytes_of_each_stream_and_direction() {
        let mut redactors = Redactors::default();
        redactors.push(http_header("authorization"));
        let redaction = Redaction::new(redactors).expect("a redactor");
        let peer = "127.0.0.1:9".parse().unwrap();
        let first = b"GET /\r\nAuthorization: Bear";
        let mut logged = first.to_vec();
        let ranges = redaction.mask(Direction::TcpRead, ConnId(3), peer, first, &mut logged);
        assert_eq!(ranges, [(22, 26)]);
        redaction.advance(Direction::TcpRead, ConnId(3), first);
        let second = b"er t\r\n";
        let mut logged = second.to_vec();
        let ranges = redaction.mask(Direction::TcpRead, ConnId(3), peer, second, &mut logged);
        assert_eq!((ranges, logged), (vec![(0, 4)], b"****\r\n".to_vec()));
        // Another direction of the same stream has no context.
        let mut logged = second.to_vec();
        let ranges = redaction.mask(Direction::TcpWrite, ConnId(3), peer, second, &mut logged);
        assert!(ranges.is_empty());
        redaction.advance(Direction::TcpRead, ConnId(3), &[b'x'; 3 * CONTEXT_BYTES]);
        assert_eq!(
            redaction.tails()[&(ConnId(3), Direction::TcpRead)].len(),
            CONTEXT_BYTES
        );
        redaction.forget(ConnId(3));
        assert!(redaction.tails().is_empty());
    }

    #[test]
    fn changed_ranges_are_capped() {
        let before = vec![b'a'; 400];
        let mut after = before.clone();
        for i in (0..400).step_by(4) {
            after[i] = MASK;
        }
        let ranges = changed_ranges(&before, &after);
        assert_eq!(ranges.len(), REDACTED_RANGES_MAX);
        assert_eq!(ranges[0], (0, 1));
        assert_eq!(ranges.last().unwrap().1, 397);
    }

    proptest! {
        /// Ranges cover exactly the changed bytes (below the cap), in order.
        #[test]
        fn changed_ranges_cover_exactly_the_changes(
            before in proptest::collection::vec(any::<u8>(), 0..200),
            flips in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut after = before.clone();
            for flip in &flips {
                if !after.is_empty() {
                    let at = flip.index(after.len());
                    after[at] = after[at].wrapping_add(1);
                }
            }
            let ranges = changed_ranges(&before, &after);
            let mut covered = vec![false; before.len()];
            let mut last_end = 0;
            for &(start, end) in &ranges {
                prop_assert!(start < end && start >= last_end);
                last_end = end;
                for flag in &mut covered[start as usize..end as usize] {
                    *flag = true;
                }
            }
            for (i, flag) in covered.iter().enumerate() {
                prop_assert_eq!(*flag, before[i] != after[i]);
            }
        }

        /// Redactors keep lengths and are idempotent on any input.
        #[test]
        fn redactors_keep_lengths_and_are_idempotent(
            before in proptest::collection::vec(any::<u8>(), 0..64),
            chunk in "[0-9a-zA-Z :\\r\\n-]{0,120}",
        ) {
            let redactors: [&dyn Redact; 2] = [&http_header("authorization"), &digits_run(4..=8)];
            for redactor in redactors {
                let mut once = chunk.as_bytes().to_vec();
                redactor.redact(&ctx(&before), &mut once);
                prop_assert_eq!(once.len(), chunk.len());
                let mut twice = once.clone();
                redactor.redact(&ctx(&before), &mut twice);
                prop_assert_eq!(twice, once);
            }
        }
    }
}
