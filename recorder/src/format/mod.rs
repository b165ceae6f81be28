//! The on-disk log format, version 1.
//!
//! A run is a directory of segments `00000000.deja`, `00000001.deja`, ...
//! rotated by size, plus `index.json` (a convenience summary; the segments
//! are the truth). All integers are little-endian.
//!
//! ```text
//! segment  := header frame* footer?
//! header   := "DEJALOG\0" version:u32 body_len:u32 crc:u32 body
//!             crc = crc32c(version ++ body_len ++ body); body = bincode(SegmentHeader)
//! frame    := "DJFR" payload_len:u32 raw_len:u32 events:u32 first_seq:u64
//!             payload_crc:u32 header_crc:u32 payload
//!             payload = zstd(bincode(event) * events), raw_len bytes once inflated
//!             header_crc = crc32c(the 28 bytes before it)
//! footer   := "DJFT" frames:u64 events:u64 last_seq:u64 frames_crc:u32
//!             flags:u32 crc:u32
//!             frames_crc = crc32c over every frame's payload_crc, in order
//! ```
//!
//! The frame header has its own checksum so that a flipped length can never
//! pass for a torn tail: only a file that ends inside a frame whose header
//! is intact (or ends inside the header itself) is torn.

pub(crate) mod codec;
pub(crate) mod layout;

pub use layout::{Footer, SegmentHeader};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// First bytes of every segment.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"DEJALOG\0";
/// First bytes of every frame.
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"DJFR";
/// First bytes of the footer.
pub(crate) const FOOTER_MAGIC: [u8; 4] = *b"DJFT";

/// Fixed part of the segment header: magic, version, body length, crc.
pub(crate) const SEGMENT_PREFIX_BYTES: usize = 8 + 4 + 4 + 4;
/// Frame header: magic, payload_len, raw_len, events, first_seq, two crcs.
pub(crate) const FRAME_HEADER_BYTES: usize = 4 + 4 + 4 + 4 + 8 + 4 + 4;
/// Footer: magic, frames, events, last_seq, frames_crc, flags, crc.
pub(crate) const FOOTER_BYTES: usize = 4 + 8 + 8 + 8 + 4 + 4 + 4;

/// Largest encoded segment header body. argv and the recorded environment
/// are clamped to fit; 64 KiB is far more than a sane command line needs.
pub const HEADER_BODY_BYTES_MAX: usize = 64 << 10;

/// The writer closes a frame once its uncompressed batch reaches this size:
/// 256 KiB compresses well and keeps a frame's decode latency under a ms.
pub const FRAME_RAW_BYTES_TARGET: usize = 256 << 10;

/// Worst-case encoding overhead of one event beyond its payload (ids,
/// varints, socket addresses, a mark name).
pub const EVENT_OVERHEAD_BYTES_MAX: usize = 4 << 10;

/// Largest uncompressed frame a reader accepts: the target plus one
/// worst-case event, rounded up. This is the reader's decompression cap.
pub const FRAME_RAW_BYTES_MAX: usize = 2 << 20;

/// Largest compressed payload a reader accepts: zstd's worst-case expansion
/// of `FRAME_RAW_BYTES_MAX` is 1/256 plus a small constant.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = FRAME_RAW_BYTES_MAX + (FRAME_RAW_BYTES_MAX >> 7);

/// Most events in one frame: bounds the reader's decoded batch (16 Ki
/// events of ~100 B in memory is under 2 MiB).
pub const FRAME_EVENTS_MAX: usize = 16 << 10;

/// zstd window the reader allows (8 MiB). Frames are decoded in one shot
/// into a buffer of `raw_len`, so the window never needs more.
pub(crate) const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Rotation threshold a writer uses unless configured otherwise.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// Footer flag: the run continues in the next segment.
pub(crate) const FOOTER_FLAG_CONTINUES: u32 = 1 << 0;
/// Footer flag: `last_seq` is meaningful (the segment holds events).
pub(crate) const FOOTER_FLAG_HAS_EVENTS: u32 = 1 << 1;

const _: () = assert!(
    FRAME_RAW_BYTES_TARGET + crate::event::EVENT_PAYLOAD_BYTES_MAX + EVENT_OVERHEAD_BYTES_MAX
        <= FRAME_RAW_BYTES_MAX
);
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_EVENTS_MAX <= u32::MAX as usize);
const _: () = assert!((1usize << ZSTD_WINDOW_LOG_MAX) >= FRAME_RAW_BYTES_MAX);

/// The file name of segment `index` inside a run directory.
pub fn segment_file_name(index: u32) -> String {
    format!("{index:08}.deja")
}

/// Parse a segment file name back to its index.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".deja")?;
    if stem.len() != 8 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Append the log's encoding of `event` to `out` (as written inside a
/// frame, before compression): a canonical byte form for digests that
/// must cover every field, such as simulation's determinism check.
pub fn encode_event(event: &crate::Event, out: &mut Vec<u8>) {
    // Encoding into a Vec cannot fail for an event: every field is plain data.
    codec::encode_into(event, out).expect("an event always encodes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(3), "00000003.deja");
        assert_eq!(parse_segment_file_name("00000003.deja"), Some(3));
        assert_eq!(parse_segment_file_name("3.deja"), None);
        assert_eq!(parse_segment_file_name("0000000x.deja"), None);
        assert_eq!(parse_segment_file_name("00000003.dej"), None);
    }
}
