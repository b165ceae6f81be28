//! Reading one segment file record by record.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::{ReadError, ReadStats};
use crate::event::Event;
use crate::format::layout::{FrameHeader, LayoutError, SegmentPrefix};
use crate::format::{
    codec, Footer, SegmentHeader, FOOTER_BYTES, FOOTER_MAGIC, FRAME_HEADER_BYTES, FRAME_MAGIC,
    SEGMENT_MAGIC, SEGMENT_PREFIX_BYTES, ZSTD_WINDOW_LOG_MAX,
};
use crate::meta::RunMeta;

/// Read buffer: a few frames' worth of headers without a syscall each.
const READ_BUFFER_BYTES: usize = 256 << 10;

/// How a segment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SegmentEnd {
    Footer { continues: bool, offset: u64 },
    NoFooter { offset: u64 },
    Torn { offset: u64, partial_bytes: u64 },
}

impl SegmentEnd {
    pub(super) fn offset(&self) -> u64 {
        match self {
            SegmentEnd::Footer { offset, .. }
            | SegmentEnd::NoFooter { offset }
            | SegmentEnd::Torn { offset, .. } => *offset,
        }
    }
}

/// The frame being handed out event by event.
#[derive(Debug, Default)]
struct CurrentFrame {
    offset: u64,
    first_seq: u64,
    events_left: u32,
    raw_pos: usize,
}

pub(super) struct SegmentReader {
    path: PathBuf,
    file: BufReader<File>,
    file_len: u64,
    /// Offset of the next unread record.
    offset: u64,
    header: Option<SegmentHeader>,
    frame: CurrentFrame,
    payload: Vec<u8>,
    raw: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
    frames: u64,
    events: u64,
    last_seq: Option<u64>,
    frames_crc: u32,
    end: Option<SegmentEnd>,
}

impl std::fmt::Debug for SegmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentReader")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

enum Record {
    Frame(FrameHeader),
    Footer(Footer),
}

impl SegmentReader {
    /// Open a segment and read its header. `run` is the run's identity
    /// from the first segment, which every later one must share.
    pub(super) fn open(path: PathBuf, run: Option<&RunMeta>) -> Result<Self, ReadError> {
        let io_error = |source| ReadError::Io {
            path: path.clone(),
            source,
        };
        let file = super::open_regular(&path).map_err(io_error)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        let mut decompressor = zstd::bulk::Decompressor::new().map_err(io_error)?;
        decompressor
            .window_log_max(ZSTD_WINDOW_LOG_MAX)
            .map_err(io_error)?;
        let mut reader = SegmentReader {
            file: BufReader::with_capacity(READ_BUFFER_BYTES, file),
            path,
            file_len,
            offset: 0,
            header: None,
            frame: CurrentFrame::default(),
            payload: Vec::new(),
            raw: Vec::new(),
            decompressor,
            frames: 0,
            events: 0,
            last_seq: None,
            frames_crc: 0,
            end: None,
        };
        reader.read_header(run)?;
        Ok(reader)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn file_len(&self) -> u64 {
        self.file_len
    }

    pub(super) fn header(&self) -> Option<&SegmentHeader> {
        self.header.as_ref()
    }

    pub(super) fn end(&self) -> Option<&SegmentEnd> {
        self.end.as_ref()
    }

    pub(super) fn corrupt(&self, offset: u64, what: String) -> ReadError {
        ReadError::Corrupt {
            path: self.path.clone(),
            offset,
            what,
        }
    }

    /// Corruption in the frame being handed out.
    pub(super) fn corrupt_here(&self, what: String) -> ReadError {
        self.corrupt(self.frame.offset, what)
    }

    fn remaining(&self) -> u64 {
        self.file_len - self.offset
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        self.file.read_exact(buf).map_err(|source| ReadError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn layout_error(&self, offset: u64, err: LayoutError) -> ReadError {
        match err {
            LayoutError::NotADejaLog => ReadError::NotADejaLog {
                path: self.path.clone(),
            },
            LayoutError::UnsupportedVersion(found) => ReadError::UnsupportedVersion {
                path: self.path.clone(),
                found,
                supported: crate::format::FORMAT_VERSION,
            },
            LayoutError::Corrupt(what) => self.corrupt(offset, what),
        }
    }

    fn torn(&mut self) {
        self.end = Some(SegmentEnd::Torn {
            offset: self.offset,
            partial_bytes: self.remaining(),
        });
    }

    fn read_header(&mut self, run: Option<&RunMeta>) -> Result<(), ReadError> {
        if self.remaining() < SEGMENT_PREFIX_BYTES as u64 {
            // Torn only if what is there could be the start of a header.
            let mut start = [0u8; SEGMENT_PREFIX_BYTES];
            let present = self.remaining() as usize;
            self.read_exact(&mut start[..present])?;
            self.offset = 0;
            let magic = present.min(SEGMENT_MAGIC.len());
            if start[..magic] != SEGMENT_MAGIC[..magic] {
                return Err(self.layout_error(0, LayoutError::NotADejaLog));
            }
            self.torn();
            return Ok(());
        }
        let mut prefix = [0u8; SEGMENT_PREFIX_BYTES];
        self.read_exact(&mut prefix)?;
        let prefix = SegmentPrefix::decode(&prefix).map_err(|err| self.layout_error(0, err))?;
        if self.remaining() < u64::from(prefix.body_len) {
            // A body cut short never decodes (the encoding is self-
            // delimiting); one that does decode from the bytes present is
            // whole, so its length field is damaged, not torn.
            let mut present = vec![0u8; self.remaining() as usize];
            self.read_exact(&mut present)?;
            if let Ok((_, used)) = codec::decode_from::<SegmentHeader>(&present) {
                return Err(self.corrupt(
                    0,
                    format!(
                        "segment header claims a {}-byte body, but the file holds a whole {used}-byte one followed by {} more bytes",
                        prefix.body_len,
                        present.len() - used
                    ),
                ));
            }
            self.offset = 0;
            self.torn();
            return Ok(());
        }
        let mut body = vec![0u8; prefix.body_len as usize];
        self.read_exact(&mut body)?;
        let header = prefix
            .decode_body(&body)
            .map_err(|err| self.layout_error(0, err))?;
        if let Some(run) = run {
            if header.run.run_id != run.run_id || header.run.service != run.service {
                return Err(self.corrupt(
                    0,
                    format!(
                        "segment belongs to run {}, not {}",
                        header.run.dir_name(),
                        run.dir_name()
                    ),
                ));
            }
        }
        self.header = Some(header);
        Ok(())
    }

    /// The next event of this segment, or `None` once it has ended (see
    /// [`SegmentReader::end`]).
    pub(super) fn next_event(&mut self, stats: &mut ReadStats) -> Result<Option<Event>, ReadError> {
        while self.frame.events_left == 0 {
            if self.end.is_some() {
                return Ok(None);
            }
            self.finish_frame()?;
            match self.read_record()? {
                Some(Record::Frame(header)) => self.load_frame(header, stats)?,
                Some(Record::Footer(footer)) => self.check_footer(footer)?,
                None => {}
            }
        }
        self.decode_event().map(Some)
    }

    fn finish_frame(&self) -> Result<(), ReadError> {
        if self.frame.raw_pos != self.raw.len() {
            return Err(self.corrupt_here(format!(
                "frame holds {} bytes after its last event",
                self.raw.len() - self.frame.raw_pos
            )));
        }
        Ok(())
    }

    /// Read the next record's header; `None` (with `end` set) at the end.
    fn read_record(&mut self) -> Result<Option<Record>, ReadError> {
        let at = self.offset;
        let remaining = self.remaining();
        if remaining == 0 {
            self.end = Some(SegmentEnd::NoFooter { offset: at });
            return Ok(None);
        }
        if remaining < 4 {
            self.torn();
            return Ok(None);
        }
        let mut magic = [0u8; 4];
        self.file
            .read_exact(&mut magic)
            .map_err(|source| ReadError::Io {
                path: self.path.clone(),
                source,
            })?;
        let (record_bytes, is_frame) = match magic {
            FRAME_MAGIC => (FRAME_HEADER_BYTES, true),
            FOOTER_MAGIC => (FOOTER_BYTES, false),
            _ => {
                return Err(self.corrupt(
                    at,
                    format!("expected a frame or footer, found bytes {:02x?}", magic),
                ))
            }
        };
        if remaining < record_bytes as u64 {
            self.torn();
            return Ok(None);
        }
        let mut bytes = [0u8; FOOTER_BYTES];
        bytes[..4].copy_from_slice(&magic);
        self.offset += 4;
        let mut rest = [0u8; FOOTER_BYTES];
        self.read_exact(&mut rest[..record_bytes - 4])?;
        bytes[4..record_bytes].copy_from_slice(&rest[..record_bytes - 4]);
        if is_frame {
            let header =
                FrameHeader::decode(bytes[..FRAME_HEADER_BYTES].try_into().expect("sized"))
                    .map_err(|err| self.layout_error(at, err))?;
            Ok(Some(Record::Frame(header)))
        } else {
            let footer = Footer::decode(&bytes).map_err(|err| self.layout_error(at, err))?;
            Ok(Some(Record::Footer(footer)))
        }
    }

    /// Read, check and inflate one frame's payload. The header's lengths
    /// are already within their caps; the payload must also be in the file
    /// before anything is allocated for it.
    fn load_frame(&mut self, header: FrameHeader, stats: &mut ReadStats) -> Result<(), ReadError> {
        let at = self.offset - FRAME_HEADER_BYTES as u64;
        if self.remaining() < u64::from(header.payload_len) {
            self.offset = at;
            self.torn();
            return Ok(());
        }
        self.payload.resize(header.payload_len as usize, 0);
        let mut payload = std::mem::take(&mut self.payload);
        let read = self.read_exact(&mut payload);
        self.payload = payload;
        read?;
        if crc32c::crc32c(&self.payload) != header.payload_crc {
            return Err(self.corrupt(at, "frame payload checksum mismatch".into()));
        }
        check_zstd_window(&self.payload).map_err(|what| self.corrupt(at, what))?;
        self.raw.clear();
        self.raw.reserve_exact(header.raw_len as usize);
        let inflated = self
            .decompressor
            .decompress_to_buffer(&self.payload, &mut self.raw)
            .map_err(|err| self.corrupt(at, format!("frame payload does not decompress: {err}")))?;
        if inflated != header.raw_len as usize {
            return Err(self.corrupt(
                at,
                format!(
                    "frame inflates to {inflated} bytes, header says {}",
                    header.raw_len
                ),
            ));
        }
        self.frames += 1;
        self.frames_crc = crc32c::crc32c_append(self.frames_crc, &header.payload_crc.to_le_bytes());
        stats.frames += 1;
        stats.bytes_compressed += u64::from(header.payload_len);
        stats.bytes_raw += u64::from(header.raw_len);
        self.frame = CurrentFrame {
            offset: at,
            first_seq: header.first_seq,
            events_left: header.events,
            raw_pos: 0,
        };
        Ok(())
    }

    fn decode_event(&mut self) -> Result<Event, ReadError> {
        let (event, used) = codec::decode_from::<Event>(&self.raw[self.frame.raw_pos..])
            .map_err(|err| self.corrupt_here(format!("event does not decode: {err}")))?;
        let first_of_frame = self.frame.raw_pos == 0;
        self.frame.raw_pos += used;
        self.frame.events_left -= 1;
        if first_of_frame && event.seq != self.frame.first_seq {
            return Err(self.corrupt_here(format!(
                "frame header says it starts at seq {}, its first event is seq {}",
                self.frame.first_seq, event.seq
            )));
        }
        self.events += 1;
        self.last_seq = Some(event.seq);
        Ok(event)
    }

    fn check_footer(&mut self, footer: Footer) -> Result<(), ReadError> {
        let at = self.offset - FOOTER_BYTES as u64;
        let expected = Footer {
            frames: self.frames,
            events: self.events,
            last_seq: self.last_seq,
            frames_crc: self.frames_crc,
            continues: footer.continues,
        };
        if footer != expected {
            return Err(self.corrupt(
                at,
                format!("footer {footer:?} does not match the frames read ({expected:?})"),
            ));
        }
        if self.remaining() != 0 {
            return Err(self.corrupt(
                self.offset,
                format!("{} bytes after the footer", self.remaining()),
            ));
        }
        self.end = Some(SegmentEnd::Footer {
            continues: footer.continues,
            offset: at,
        });
        Ok(())
    }
}

/// A payload must be exactly one zstd frame whose window is within
/// `ZSTD_WINDOW_LOG_MAX`: one-shot decompression ignores the decompressor's
/// `window_log_max` (zstd enforces it only when streaming), and skips any
/// skippable or further frames after the first.
fn check_zstd_window(payload: &[u8]) -> Result<(), String> {
    const ZSTD_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
    match zstd::zstd_safe::find_frame_compressed_size(payload) {
        Ok(size) if size == payload.len() && payload[..4] == ZSTD_MAGIC => {}
        _ => return Err("frame payload is not exactly one zstd frame".into()),
    }
    // Frame_Header_Descriptor, then (unless Single_Segment, where the
    // window is the content size, bounded by the output buffer) the
    // Window_Descriptor: 2^(10 + exponent) plus mantissa eighths of that.
    let single_segment = payload[4] & 0x20 != 0;
    if !single_segment {
        let descriptor = payload[5];
        let base = 1u64 << (10 + u32::from(descriptor >> 3));
        let window = base + (base >> 3) * u64::from(descriptor & 7);
        if window > 1 << ZSTD_WINDOW_LOG_MAX {
            return Err(format!(
                "frame payload declares a {window}-byte zstd window, over the {}-byte limit",
                1u64 << ZSTD_WINDOW_LOG_MAX
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_file_is_torn_only_if_it_starts_like_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000.deja");
        for start in [&b""[..], b"DEJA", b"DEJALOG\0\x01\0\0\0"] {
            std::fs::write(&path, start).unwrap();
            let reader = SegmentReader::open(path.clone(), None).unwrap();
            assert_eq!(
                reader.end(),
                Some(&SegmentEnd::Torn {
                    offset: 0,
                    partial_bytes: start.len() as u64
                })
            );
        }
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            SegmentReader::open(path, None),
            Err(ReadError::NotADejaLog { .. })
        ));
    }
}
