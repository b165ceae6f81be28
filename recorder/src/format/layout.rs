//! Byte layout of segment headers, frame headers and footers.

use serde::{Deserialize, Serialize};

use super::{
    codec, FOOTER_BYTES, FOOTER_FLAG_CONTINUES, FOOTER_FLAG_HAS_EVENTS, FOOTER_MAGIC,
    FORMAT_VERSION, FRAME_EVENTS_MAX, FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_PAYLOAD_BYTES_MAX,
    FRAME_RAW_BYTES_MAX, HEADER_BODY_BYTES_MAX, SEGMENT_MAGIC, SEGMENT_PREFIX_BYTES,
};
use crate::meta::RunMeta;

/// What every segment starts with: which run it belongs to and where it
/// sits in that run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Position of this segment in the run, from 0.
    pub segment_index: u32,
    /// The run's identity and context.
    pub run: RunMeta,
}

impl SegmentHeader {
    /// Encode as the bytes that open a segment file.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        codec::encode_into(self, &mut body).expect("a header always encodes");
        assert!(
            body.len() <= HEADER_BODY_BYTES_MAX,
            "RunMeta::clamp keeps the header under the cap"
        );
        let mut out = Vec::with_capacity(SEGMENT_PREFIX_BYTES + body.len());
        out.extend_from_slice(&SEGMENT_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[8..16]), &body);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// The fixed prefix of a segment header, read before its body.
#[derive(Debug)]
pub(crate) struct SegmentPrefix {
    pub(crate) body_len: u32,
    crc: u32,
    version_and_len: [u8; 8],
    /// The version field as read: checked against the header's checksum
    /// (which covers it) before it is believed (see [`Self::decode_body`]).
    version: u32,
}

/// Why a header, frame header or footer was rejected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LayoutError {
    NotADejaLog,
    UnsupportedVersion(u32),
    Corrupt(String),
}

impl SegmentPrefix {
    pub(crate) fn decode(bytes: &[u8; SEGMENT_PREFIX_BYTES]) -> Result<Self, LayoutError> {
        if bytes[..8] != SEGMENT_MAGIC {
            return Err(LayoutError::NotADejaLog);
        }
        let version = u32_at(bytes, 8);
        let body_len = u32_at(bytes, 12);
        if version != FORMAT_VERSION && body_len as usize > HEADER_BODY_BYTES_MAX {
            // Another version's header, too long to check here.
            return Err(LayoutError::UnsupportedVersion(version));
        }
        if body_len as usize > HEADER_BODY_BYTES_MAX {
            return Err(LayoutError::Corrupt(format!(
                "segment header claims a {body_len}-byte body, over the {HEADER_BODY_BYTES_MAX}-byte limit"
            )));
        }
        Ok(SegmentPrefix {
            body_len,
            crc: u32_at(bytes, 16),
            version_and_len: bytes[8..16].try_into().expect("8 bytes"),
            version,
        })
    }

    pub(crate) fn decode_body(&self, body: &[u8]) -> Result<SegmentHeader, LayoutError> {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.version_and_len), body);
        if crc != self.crc && self.version != FORMAT_VERSION {
            // The checksum covers the version field: a version that does
            // not check out is damage, not another deja's log.
            return Err(LayoutError::Corrupt(format!(
                "segment header checksum mismatch: its version field reads {}, which the checksum does not confirm (damaged)",
                self.version
            )));
        }
        if crc != self.crc {
            return Err(LayoutError::Corrupt(
                "segment header checksum mismatch".into(),
            ));
        }
        if self.version != FORMAT_VERSION {
            return Err(LayoutError::UnsupportedVersion(self.version));
        }
        match codec::decode_from::<SegmentHeader>(body) {
            Ok((header, used)) if used == body.len() => Ok(header),
            Ok(_) => Err(LayoutError::Corrupt(
                "segment header has trailing bytes".into(),
            )),
            Err(err) => Err(LayoutError::Corrupt(format!(
                "segment header does not decode: {err}"
            ))),
        }
    }
}

/// The header in front of every frame's compressed payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) payload_len: u32,
    pub(crate) raw_len: u32,
    pub(crate) events: u32,
    pub(crate) first_seq: u64,
    pub(crate) payload_crc: u32,
}

impl FrameHeader {
    pub(crate) fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out[0..4].copy_from_slice(&FRAME_MAGIC);
        out[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.events.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Check the header's own checksum, then every length against its cap,
    /// before the caller allocates anything for the payload.
    pub(crate) fn decode(bytes: &[u8; FRAME_HEADER_BYTES]) -> Result<Self, LayoutError> {
        if bytes[..4] != FRAME_MAGIC {
            return Err(LayoutError::Corrupt("bad frame magic".into()));
        }
        if crc32c::crc32c(&bytes[..28]) != u32_at(bytes, 28) {
            return Err(LayoutError::Corrupt(
                "frame header checksum mismatch".into(),
            ));
        }
        let header = FrameHeader {
            payload_len: u32_at(bytes, 4),
            raw_len: u32_at(bytes, 8),
            events: u32_at(bytes, 12),
            first_seq: u64_at(bytes, 16),
            payload_crc: u32_at(bytes, 24),
        };
        let check = |what: &str, value: u32, max: usize| {
            if value == 0 || value as usize > max {
                Err(LayoutError::Corrupt(format!(
                    "frame {what} is {value}, outside 1..={max}"
                )))
            } else {
                Ok(())
            }
        };
        check(
            "payload length",
            header.payload_len,
            FRAME_PAYLOAD_BYTES_MAX,
        )?;
        check("raw length", header.raw_len, FRAME_RAW_BYTES_MAX)?;
        check("event count", header.events, FRAME_EVENTS_MAX)?;
        Ok(header)
    }
}

/// The record that ends a cleanly closed segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Frames in the segment.
    pub frames: u64,
    /// Events in the segment.
    pub events: u64,
    /// The last event's seq, if the segment holds any.
    pub last_seq: Option<u64>,
    /// crc32c over every frame's payload crc, in order.
    pub frames_crc: u32,
    /// The run goes on in the next segment (this one was rotated).
    pub continues: bool,
}

impl Footer {
    pub(crate) fn encode(&self) -> [u8; FOOTER_BYTES] {
        let mut flags = 0;
        if self.continues {
            flags |= FOOTER_FLAG_CONTINUES;
        }
        if self.last_seq.is_some() {
            flags |= FOOTER_FLAG_HAS_EVENTS;
        }
        let mut out = [0u8; FOOTER_BYTES];
        out[0..4].copy_from_slice(&FOOTER_MAGIC);
        out[4..12].copy_from_slice(&self.frames.to_le_bytes());
        out[12..20].copy_from_slice(&self.events.to_le_bytes());
        out[20..28].copy_from_slice(&self.last_seq.unwrap_or(0).to_le_bytes());
        out[28..32].copy_from_slice(&self.frames_crc.to_le_bytes());
        out[32..36].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c(&out[..36]);
        out[36..40].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8; FOOTER_BYTES]) -> Result<Self, LayoutError> {
        if bytes[..4] != FOOTER_MAGIC {
            return Err(LayoutError::Corrupt("bad footer magic".into()));
        }
        if crc32c::crc32c(&bytes[..36]) != u32_at(bytes, 36) {
            return Err(LayoutError::Corrupt("footer checksum mismatch".into()));
        }
        let flags = u32_at(bytes, 32);
        if flags & !(FOOTER_FLAG_CONTINUES | FOOTER_FLAG_HAS_EVENTS) != 0 {
            return Err(LayoutError::Corrupt(format!(
                "unknown footer flags {flags:#x}"
            )));
        }
        Ok(Footer {
            frames: u64_at(bytes, 4),
            events: u64_at(bytes, 12),
            last_seq: (flags & FOOTER_FLAG_HAS_EVENTS != 0).then(|| u64_at(bytes, 20)),
            frames_crc: u32_at(bytes, 28),
            continues: flags & FOOTER_FLAG_CONTINUES != 0,
        })
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frame_headers_round_trip(
            payload_len in 1..=FRAME_PAYLOAD_BYTES_MAX as u32,
            raw_len in 1..=FRAME_RAW_BYTES_MAX as u32,
            events in 1..=FRAME_EVENTS_MAX as u32,
            first_seq: u64,
            payload_crc: u32,
        ) {
            let header = FrameHeader { payload_len, raw_len, events, first_seq, payload_crc };
            prop_assert_eq!(FrameHeader::decode(&header.encode()), Ok(header));
        }

        #[test]
        fn footers_round_trip(
            frames: u64, events: u64, last_seq: Option<u64>, frames_crc: u32, continues: bool,
        ) {
            let footer = Footer { frames, events, last_seq, frames_crc, continues };
            prop_assert_eq!(Footer::decode(&footer.encode()), Ok(footer));
        }

        #[test]
        fn any_flipped_bit_in_a_frame_header_is_caught(bit in 0..FRAME_HEADER_BYTES * 8) {
            let header = FrameHeader {
                payload_len: 100, raw_len: 300, events: 4, first_seq: 9, payload_crc: 7,
            };
            let mut bytes = header.encode();
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(FrameHeader::decode(&bytes).is_err());
        }
    }

    #[test]
    fn segment_headers_round_trip() {
        let header = SegmentHeader {
            segment_index: 2,
            run: RunMeta::for_tests("svc"),
        };
        let bytes = header.encode();
        let prefix = SegmentPrefix::decode(bytes[..SEGMENT_PREFIX_BYTES].try_into().unwrap())
            .expect("prefix");
        assert_eq!(prefix.body_len as usize, bytes.len() - SEGMENT_PREFIX_BYTES);
        assert_eq!(
            prefix.decode_body(&bytes[SEGMENT_PREFIX_BYTES..]),
            Ok(header)
        );
    }

    #[test]
    fn a_damaged_version_field_is_corruption_and_a_checked_one_is_another_version() {
        let header = SegmentHeader {
            segment_index: 0,
            run: RunMeta::for_tests("svc"),
        };
        let mut bytes = header.encode();
        // A flipped bit in the version field: the checksum says so.
        bytes[8] ^= 1;
        let prefix = SegmentPrefix::decode(bytes[..SEGMENT_PREFIX_BYTES].try_into().unwrap())
            .expect("prefix");
        match prefix.decode_body(&bytes[SEGMENT_PREFIX_BYTES..]) {
            Err(LayoutError::Corrupt(why)) => assert!(why.contains("version field"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Another version, written with its checksum: not damage.
        let mut bytes = header.encode();
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&bytes[8..16]),
            &bytes[SEGMENT_PREFIX_BYTES..],
        );
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        let prefix = SegmentPrefix::decode(bytes[..SEGMENT_PREFIX_BYTES].try_into().unwrap())
            .expect("prefix");
        assert_eq!(
            prefix.decode_body(&bytes[SEGMENT_PREFIX_BYTES..]),
            Err(LayoutError::UnsupportedVersion(FORMAT_VERSION + 1))
        );
    }

    #[test]
    fn lengths_at_and_past_the_caps() {
        let at_cap = FrameHeader {
            payload_len: FRAME_PAYLOAD_BYTES_MAX as u32,
            raw_len: FRAME_RAW_BYTES_MAX as u32,
            events: FRAME_EVENTS_MAX as u32,
            first_seq: 0,
            payload_crc: 0,
        };
        assert!(FrameHeader::decode(&at_cap.encode()).is_ok());
        for bad in [0, FRAME_PAYLOAD_BYTES_MAX as u32 + 1, u32::MAX] {
            let header = FrameHeader {
                payload_len: bad,
                ..at_cap
            };
            assert!(FrameHeader::decode(&header.encode()).is_err(), "{bad}");
        }
    }
}
