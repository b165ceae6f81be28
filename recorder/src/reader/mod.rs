//! Reading a run back: a streaming iterator over all its segments.
//!
//! The reader trusts nothing on disk. Every length is checked against a
//! named cap before anything is allocated for it, every byte is covered by a
//! checksum, decompression writes into a buffer of the frame's declared
//! size (itself capped), and the event stream is checked for order: seqs
//! strictly increase and every hole is exactly covered by a `Gap` event.
//!
//! How the log ends is reported separately from the events ([`LogEnd`]):
//! a torn last frame or a missing footer is what a killed process leaves,
//! and is not an error; damage anywhere else is.

mod segment;

use std::fs;
use std::path::{Path, PathBuf};

use crate::event::Event;
use crate::format::{parse_segment_file_name, segment_file_name, SegmentHeader};
use segment::{SegmentEnd, SegmentReader};

/// Why a run could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The OS refused a read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no segment files.
    #[error("{}: no segment files (00000000.deja, ...); is this a run directory written by `deja record`?", dir.display())]
    NoSegments {
        /// The directory.
        dir: PathBuf,
    },
    /// Segment files are not numbered 0, 1, 2, ... without holes.
    #[error("{}: segment {missing} is missing; segments must run from 00000000.deja without holes", dir.display())]
    MissingSegment {
        /// The run directory.
        dir: PathBuf,
        /// The expected file name.
        missing: String,
    },
    /// The file does not start with deja's magic bytes.
    #[error("{}: not a deja log (bad magic at byte 0)", path.display())]
    NotADejaLog {
        /// The file.
        path: PathBuf,
    },
    /// The file was written in a format version this build cannot read.
    #[error("{}: log format version {found} is not supported (this deja reads version {supported}); read it with the deja release that wrote it", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Damage before the tail: a checksum, a length or the event order is wrong.
    #[error("{}: corrupt at byte {offset}: {what}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged record within the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

impl ReadError {
    /// True for damage (what `deja verify` exits 4 for), false for I/O
    /// errors and unsupported versions.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            ReadError::Corrupt { .. }
                | ReadError::MissingSegment { .. }
                | ReadError::NotADejaLog { .. }
        )
    }
}

/// How a run's log ends, known once every event has been read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEnd {
    /// Every segment ends with a footer and the last one closes the run.
    Clean,
    /// The log stops at a record boundary with no footer: the process was
    /// killed (or is still writing). Everything up to `last_seq` is intact.
    Unclean {
        /// The last event read.
        last_seq: Option<u64>,
        /// The last segment file.
        file: PathBuf,
        /// Where its footer should have been.
        offset: u64,
    },
    /// The last record was cut short: a write in progress when the process
    /// died. It was ignored; everything before it was read.
    TornTail {
        /// The last event read.
        last_seq: Option<u64>,
        /// The last segment file.
        file: PathBuf,
        /// Where the partial record starts.
        offset: u64,
        /// How many bytes of it are present.
        partial_bytes: u64,
    },
}

impl LogEnd {
    /// A one-line description for warnings (`None` for a clean end).
    pub fn warning(&self) -> Option<String> {
        match self {
            LogEnd::Clean => None,
            LogEnd::Unclean {
                last_seq,
                file,
                offset,
            } => Some(format!(
                "unclean shutdown: {} has no footer at byte {offset}; the log ends after {}",
                file.display(),
                describe_seq(*last_seq)
            )),
            LogEnd::TornTail {
                last_seq: None,
                file,
                offset: 0,
                partial_bytes: 0,
            } => Some(format!(
                "empty run: {} holds nothing (the process was killed, or could not write, before \
                 its first record); the log has no events",
                file.display()
            )),
            LogEnd::TornTail {
                last_seq,
                file,
                offset,
                partial_bytes,
            } => Some(format!(
                "torn tail: {} ends inside a record at byte {offset} ({partial_bytes} bytes ignored); the log ends after {}",
                file.display(),
                describe_seq(*last_seq)
            )),
        }
    }
}

fn describe_seq(seq: Option<u64>) -> String {
    seq.map_or_else(|| "no events".to_string(), |seq| format!("seq {seq}"))
}

/// Sizes seen while reading, for `deja stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Segments opened.
    pub segments: u32,
    /// Frames read.
    pub frames: u64,
    /// Events returned.
    pub events: u64,
    /// Bytes of the segment files.
    pub bytes_on_disk: u64,
    /// Compressed frame payload bytes.
    pub bytes_compressed: u64,
    /// Uncompressed (encoded) event bytes.
    pub bytes_raw: u64,
}

/// Streams every event of a run directory in seq order.
///
/// Yields `Err` at most once, then ends. After the last event,
/// [`RunReader::end`] says how the log ended.
#[derive(Debug)]
pub struct RunReader {
    dir: PathBuf,
    segments: Vec<PathBuf>,
    next_segment: usize,
    current: Option<SegmentReader>,
    header: Option<SegmentHeader>,
    end: Option<LogEnd>,
    done: bool,
    last_seq: Option<u64>,
    stats: ReadStats,
    /// The seq the run must start at: 0, or for a kept flight window the
    /// first seq its `flight.json` names (`None` when that file cannot be
    /// read: whoever needs the window says why).
    expected_first: Option<u64>,
}

impl RunReader {
    /// Open a run directory and read the first segment's header.
    pub fn open(dir: impl AsRef<Path>) -> Result<RunReader, ReadError> {
        let dir = dir.as_ref().to_path_buf();
        let segments = match list_segments(&dir) {
            // A run directory is created before its first segment: a
            // process killed (or out of disk) in between leaves it empty.
            // That is a run that recorded nothing, like a 0-byte segment.
            Err(ReadError::NoSegments { .. }) if is_empty_dir(&dir) => {
                return Ok(RunReader::empty(dir));
            }
            listed => listed?,
        };
        let expected_first = if dir.join(crate::writer::flight::FLIGHT_FILE_NAME).is_file() {
            crate::writer::flight::FlightWindow::read(&dir)
                .ok()
                .flatten()
                .map(|window| window.first_seq)
        } else {
            Some(0)
        };
        let mut reader = RunReader {
            expected_first,
            dir,
            segments,
            next_segment: 0,
            current: None,
            header: None,
            end: None,
            done: false,
            last_seq: None,
            stats: ReadStats::default(),
        };
        reader.open_next_segment()?;
        Ok(reader)
    }

    /// A run directory with nothing in it: no header, no events, and an
    /// end that says the log stops before its first record.
    fn empty(dir: PathBuf) -> RunReader {
        let file = dir.join(segment_file_name(0));
        RunReader {
            expected_first: Some(0),
            dir,
            segments: Vec::new(),
            next_segment: 0,
            current: None,
            header: None,
            end: Some(LogEnd::TornTail {
                last_seq: None,
                file,
                offset: 0,
                partial_bytes: 0,
            }),
            done: true,
            last_seq: None,
            stats: ReadStats::default(),
        }
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first segment's header; `None` only when the log was cut inside it.
    pub fn header(&self) -> Option<&SegmentHeader> {
        self.header.as_ref()
    }

    /// How the log ended; `None` until every event was read without error.
    pub fn end(&self) -> Option<&LogEnd> {
        self.end.as_ref()
    }

    /// Sizes seen so far.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    fn open_next_segment(&mut self) -> Result<(), ReadError> {
        let path = self.segments[self.next_segment].clone();
        let index = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(parse_segment_file_name)
            .expect("listed segments have segment names") as usize;
        self.next_segment += 1;
        let segment = SegmentReader::open(path, self.header.as_ref().map(|h| &h.run))?;
        self.stats.segments += 1;
        self.stats.bytes_on_disk += segment.file_len();
        if let Some(header) = segment.header() {
            if header.segment_index as usize != index {
                return Err(segment.corrupt(
                    0,
                    format!(
                        "header says segment {} but the file is segment {index}",
                        header.segment_index
                    ),
                ));
            }
            if self.header.is_none() {
                self.header = Some(header.clone());
            }
        }
        self.current = Some(segment);
        Ok(())
    }

    fn next_event(&mut self) -> Result<Option<Event>, ReadError> {
        loop {
            let segment = self.current.as_mut().expect("a segment is open until done");
            if let Some(event) = segment.next_event(&mut self.stats)? {
                self.check_order(&event)?;
                self.last_seq = Some(event.seq);
                self.stats.events += 1;
                return Ok(Some(event));
            }
            let end = segment
                .end()
                .expect("a finished segment knows its end")
                .clone();
            let file = segment.path().to_path_buf();
            let is_last = self.next_segment == self.segments.len();
            let last_seq = self.last_seq;
            let log_end = match (end, is_last) {
                (
                    SegmentEnd::Footer {
                        continues: true, ..
                    },
                    false,
                ) => {
                    self.open_next_segment()?;
                    continue;
                }
                (
                    SegmentEnd::Footer {
                        continues: false, ..
                    },
                    true,
                ) => LogEnd::Clean,
                // Killed between rotating and creating the next segment, or
                // killed before writing the footer.
                (
                    SegmentEnd::Footer {
                        continues: true,
                        offset,
                    },
                    true,
                )
                | (SegmentEnd::NoFooter { offset }, true) => LogEnd::Unclean {
                    last_seq,
                    file,
                    offset,
                },
                (
                    SegmentEnd::Torn {
                        offset,
                        partial_bytes,
                    },
                    true,
                ) => LogEnd::TornTail {
                    last_seq,
                    file,
                    offset,
                    partial_bytes,
                },
                (end, false) => {
                    let next = self.segments[self.next_segment].display().to_string();
                    return Err(segment.corrupt(
                        end.offset(),
                        format!(
                            "segment does not end with a continuing footer, but {next} follows"
                        ),
                    ));
                }
            };
            self.end = Some(log_end);
            return Ok(None);
        }
    }

    /// Seqs strictly increase, and a hole is legal only right before the
    /// `Gap` event that accounts for it.
    fn check_order(&self, event: &Event) -> Result<(), ReadError> {
        let segment = self.current.as_ref().expect("open");
        let gap = match &event.kind {
            crate::event::EventKind::Gap {
                first_lost_seq,
                lost,
                ..
            } => Some((*first_lost_seq, *lost)),
            _ => None,
        };
        if let Some((first, lost)) = gap {
            if first.checked_add(lost) != Some(event.seq) || lost == 0 {
                return Err(segment.corrupt_here(format!(
                    "gap event #{} claims seqs {first}..{first}+{lost}, which do not end at its own seq",
                    event.seq
                )));
            }
        }
        let Some(last) = self.last_seq else {
            // The first frame's header says where it starts, but nothing
            // covers a segment's first frame being cut out whole.
            let first = gap.map_or(event.seq, |(first, _)| first);
            match self.expected_first {
                Some(0) if first != 0 => {
                    return Err(segment.corrupt_here(format!(
                        "the run's first event is #{}, not #0: the start of the log is missing",
                        event.seq
                    )));
                }
                Some(expected) if first != expected => {
                    return Err(segment.corrupt_here(format!(
                        "the flight window's first event is #{}, but its flight.json says #{expected}: \
                         a segment of the window is missing or flight.json was changed",
                        event.seq
                    )));
                }
                _ => {}
            }
            return Ok(());
        };
        let expected_first = match gap {
            Some((first, _)) => first,
            None => event.seq,
        };
        if event.seq <= last || expected_first != last + 1 {
            return Err(segment.corrupt_here(format!(
                "seq {} follows seq {last}{}",
                event.seq,
                if event.seq <= last {
                    ": seqs must strictly increase"
                } else {
                    " with no gap event accounting for the events between"
                }
            )));
        }
        Ok(())
    }
}

impl Iterator for RunReader {
    type Item = Result<Event, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_event() {
            Ok(Some(event)) => Some(Ok(event)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

impl std::iter::FusedIterator for RunReader {}

/// Open `path` for reading if it is a regular file. A FIFO put where a
/// segment or `index.json` belongs would block a plain `open` until some
/// writer comes (every command would hang): it is opened without
/// blocking, and refused, like a device or a directory.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a directory)",
        ));
    }
    Ok(file)
}

/// True for a directory with no entries at all.
fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// The run's segment files, in order, checked for holes.
fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let io_error = |source| ReadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut indices = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        if let Some(index) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            indices.push(index);
        }
    }
    if indices.is_empty() {
        return Err(ReadError::NoSegments {
            dir: dir.to_path_buf(),
        });
    }
    indices.sort_unstable();
    // A kept flight-recorder window starts wherever the ring was.
    let first = if dir.join(crate::writer::flight::FLIGHT_FILE_NAME).is_file() {
        indices[0]
    } else {
        0
    };
    for (position, &index) in indices.iter().enumerate() {
        let position = first as usize + position;
        if index as usize != position {
            return Err(ReadError::MissingSegment {
                dir: dir.to_path_buf(),
                missing: segment_file_name(position as u32),
            });
        }
    }
    Ok(indices
        .into_iter()
        .map(|index| dir.join(segment_file_name(index)))
        .collect())
}
