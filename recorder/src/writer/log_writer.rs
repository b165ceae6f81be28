//! Synchronous segment writer: frames, rotation, footers, the index.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::fault::{self, FaultPlan};
use super::flight::{
    FlightWindow, FLIGHT_FILE_NAME, FLIGHT_SEGMENTS, FLIGHT_SEGMENT_BYTES_MIN, KEPT_WINDOWS_MAX,
};
use super::summary::RecorderSummary;
use super::{WriteError, WriterConfig};
use crate::event::Event;
use crate::format::layout::{FrameHeader, SegmentHeader};
use crate::format::{
    codec, segment_file_name, Footer, FOOTER_BYTES, FRAME_EVENTS_MAX, FRAME_HEADER_BYTES,
    FRAME_PAYLOAD_BYTES_MAX, FRAME_RAW_BYTES_MAX, FRAME_RAW_BYTES_TARGET,
};
use crate::meta::RunMeta;

/// Name of the run directory's summary file.
pub const INDEX_FILE_NAME: &str = "index.json";

/// Writes events to a run directory on the caller's thread.
///
/// [`crate::Recorder`] runs one of these on its background thread; the
/// simulator and tools that already hold every event use it directly.
/// Events must be handed over in increasing `seq` order.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    meta: RunMeta,
    config: WriterConfig,
    segment: OpenSegment,
    finished_segments: Vec<SegmentSummary>,
    frame: FrameBuilder,
    totals: WriterTotals,
    /// A write failed: the pending frame and any partial record must go
    /// before the next write (see [`LogWriter::repair`]).
    needs_repair: bool,
    /// The recorder's own counts, for `index.json` on close.
    recorder: Option<RecorderSummary>,
    /// Why `index.json` could not be written at close (the segments, with
    /// their footers, are complete all the same).
    index_error: Option<String>,
    ring: Option<Ring>,
}

/// Flight mode: the ring's budget and what it has let go.
#[derive(Debug)]
struct Ring {
    budget: u64,
    /// Where kept windows go (the ring directory's parent).
    out_dir: PathBuf,
    /// Events in deleted segments.
    dropped_events: u64,
    /// Windows kept so far.
    kept: u32,
}

/// Running totals of what a writer has put on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterTotals {
    /// Events written.
    pub events: u64,
    /// Frames written.
    pub frames: u64,
    /// Segments opened.
    pub segments: u32,
    /// Bytes written to segment files (headers, frames, footers).
    pub bytes_on_disk: u64,
    /// Uncompressed (encoded) event bytes.
    pub bytes_raw: u64,
    /// The last seq written (in a complete frame).
    pub last_seq: Option<u64>,
}

#[derive(Debug)]
struct OpenSegment {
    index: u32,
    path: PathBuf,
    file: File,
    bytes: u64,
    frames: u64,
    events: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    frames_crc: u32,
    /// Its footer is written: no more frames go into it.
    sealed: bool,
}

/// The batch being encoded into the next frame.
struct FrameBuilder {
    raw: Vec<u8>,
    events: u32,
    first_seq: u64,
    last_seq: Option<u64>,
    out: Vec<u8>,
    compressor: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for FrameBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBuilder")
            .field("raw_len", &self.raw.len())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
struct SegmentSummary {
    file: String,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    frames: u64,
    events: u64,
    bytes: u64,
    closed: bool,
}

#[derive(Serialize)]
struct Index<'a> {
    format_version: u32,
    service: &'a str,
    run_id: &'a str,
    segments: Vec<&'a SegmentSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorder: Option<&'a RecorderSummary>,
}

impl LogWriter {
    /// Create `<out_dir>/<service>-<run_id>/` (mode 0700) and its first
    /// segment; in flight mode (`config.flight_bytes`) the ring
    /// `<out_dir>/<service>-<run_id>.flight/` instead.
    pub fn create(
        out_dir: &Path,
        meta: RunMeta,
        mut config: WriterConfig,
    ) -> Result<Self, WriteError> {
        let Some(budget) = config.flight_bytes else {
            let dir = out_dir.join(meta.dir_name());
            create_run_dir(out_dir, &dir)?;
            return Self::create_in(dir, meta, config);
        };
        let dir = out_dir.join(format!("{}.flight", meta.dir_name()));
        create_run_dir(out_dir, &dir)?;
        config.segment_bytes_max = (budget / FLIGHT_SEGMENTS)
            .max(FLIGHT_SEGMENT_BYTES_MIN)
            .min(config.segment_bytes_max);
        let mut writer = Self::create_in(dir, meta, config)?;
        writer.ring = Some(Ring {
            budget,
            out_dir: out_dir.to_path_buf(),
            dropped_events: 0,
            kept: 0,
        });
        writer.describe_ring()?;
        Ok(writer)
    }

    /// Write into `dir`, which must exist and hold no segments yet.
    pub fn create_in(
        dir: PathBuf,
        mut meta: RunMeta,
        config: WriterConfig,
    ) -> Result<Self, WriteError> {
        config.validate();
        meta.clamp();
        let compressor =
            zstd::bulk::Compressor::new(config.compression_level).map_err(|source| {
                WriteError::Io {
                    path: dir.clone(),
                    source,
                }
            })?;
        let mut totals = WriterTotals::default();
        let faults = config.faults.as_deref();
        let segment = OpenSegment::create(&dir, 0, &meta, &mut totals, faults)?;
        Ok(LogWriter {
            dir,
            meta,
            config,
            segment,
            finished_segments: Vec::new(),
            frame: FrameBuilder {
                raw: Vec::with_capacity(FRAME_RAW_BYTES_MAX),
                events: 0,
                first_seq: 0,
                last_seq: None,
                out: Vec::with_capacity(FRAME_HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX),
                compressor,
            },
            totals,
            ring: None,
            needs_repair: false,
            recorder: None,
            index_error: None,
        })
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What has been written so far.
    pub fn totals(&self) -> WriterTotals {
        self.totals
    }

    /// Encode `events` into frames and write them. Every event handed over
    /// is in the OS's hands when this returns (not yet fsynced).
    ///
    /// On an error, the events after [`WriterTotals::last_seq`] are not
    /// written; the next call repairs the segment first, so a writer can
    /// carry on after a full disk frees up.
    pub fn write(&mut self, events: &[Event]) -> Result<(), WriteError> {
        self.repair()?;
        let result = events
            .iter()
            .try_for_each(|event| self.push(event))
            .and_then(|()| self.flush_frame());
        self.needs_repair |= result.is_err();
        result
    }

    fn push(&mut self, event: &Event) -> Result<(), WriteError> {
        let frame = &mut self.frame;
        assert!(
            frame.last_seq.is_none_or(|last| last < event.seq),
            "events must be written in increasing seq order"
        );
        if frame.events == 0 {
            frame.first_seq = event.seq;
        }
        frame.last_seq = Some(event.seq);
        codec::encode_into(event, &mut frame.raw).expect("events always encode");
        frame.events += 1;
        assert!(
            frame.raw.len() <= FRAME_RAW_BYTES_MAX,
            "one event never exceeds EVENT_PAYLOAD_BYTES_MAX plus overhead"
        );
        if frame.raw.len() >= FRAME_RAW_BYTES_TARGET || frame.events as usize == FRAME_EVENTS_MAX {
            self.flush_frame()?;
        }
        Ok(())
    }

    /// Compress the pending batch and write it as one frame.
    fn flush_frame(&mut self) -> Result<(), WriteError> {
        if self.frame.events == 0 {
            return Ok(());
        }
        // Rotate lazily, before a frame that would go into a full segment,
        // so a run never ends with an empty segment.
        // A sealed segment (footer written, next one not created yet: a
        // rotation that failed half way) takes no more frames.
        if self.segment.sealed
            || (self.segment.frames > 0 && self.segment.bytes >= self.config.segment_bytes_max)
        {
            self.rotate()?;
        }
        let frame = &mut self.frame;
        frame.out.clear();
        frame.out.resize(FRAME_HEADER_BYTES, 0);
        let payload = frame
            .compressor
            .compress(&frame.raw)
            .map_err(|source| self.segment.io_error(source))?;
        assert!(payload.len() <= FRAME_PAYLOAD_BYTES_MAX, "zstd's bound");
        let header = FrameHeader {
            payload_len: payload.len() as u32,
            raw_len: frame.raw.len() as u32,
            events: frame.events,
            first_seq: frame.first_seq,
            payload_crc: crc32c::crc32c(&payload),
        };
        frame.out[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
        frame.out.extend_from_slice(&payload);

        let segment = &mut self.segment;
        fault::write_all(&mut segment.file, &frame.out, self.config.faults.as_deref())
            .map_err(|source| segment.io_error(source))?;
        segment.bytes += frame.out.len() as u64;
        segment.frames += 1;
        segment.events += u64::from(frame.events);
        segment.first_seq.get_or_insert(frame.first_seq);
        segment.last_seq = frame.last_seq;
        segment.frames_crc =
            crc32c::crc32c_append(segment.frames_crc, &header.payload_crc.to_le_bytes());
        self.totals.frames += 1;
        self.totals.events += u64::from(frame.events);
        self.totals.bytes_on_disk += frame.out.len() as u64;
        self.totals.bytes_raw += frame.raw.len() as u64;
        self.totals.last_seq = frame.last_seq;
        frame.raw.clear();
        frame.events = 0;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WriteError> {
        if !self.segment.sealed {
            self.close_segment(true)?;
        }
        let next = self.segment.index + 1;
        let faults = self.config.faults.as_deref();
        let segment = OpenSegment::create(&self.dir, next, &self.meta, &mut self.totals, faults)?;
        let done = std::mem::replace(&mut self.segment, segment);
        self.finished_segments.push(done.summary(true));
        self.trim_ring();
        self.write_index()
    }

    /// Flight mode: delete the oldest closed segments while the ring is
    /// over its budget. A segment that cannot be deleted stays (and is
    /// retried at the next rotation): the ring is best effort on disk, and
    /// never a reason to stop recording.
    fn trim_ring(&mut self) {
        let Some(ring) = &mut self.ring else { return };
        let mut held: u64 =
            self.finished_segments.iter().map(|s| s.bytes).sum::<u64>() + self.segment.bytes;
        while held > ring.budget && !self.finished_segments.is_empty() {
            let oldest = &self.finished_segments[0];
            if fs::remove_file(self.dir.join(&oldest.file)).is_err() {
                break;
            }
            held -= oldest.bytes;
            ring.dropped_events += oldest.events;
            self.finished_segments.remove(0);
        }
        // Best effort, like the deletion: the ring's description only
        // matters if the process dies and leaves the ring behind.
        let _ = self.describe_ring();
    }

    /// Flight mode: the ring's own `flight.json`, so a ring left behind by
    /// a crash reads as a window too.
    fn describe_ring(&self) -> Result<(), WriteError> {
        match self.flight_window("ring", None) {
            Some(window) => write_json(&self.dir, FLIGHT_FILE_NAME, &window),
            None => Ok(()),
        }
    }

    /// Flight mode: what the ring holds now, as a window description:
    /// its first seq is the first event of its oldest segment (or, with
    /// nothing written yet, the first seq after the deleted ones).
    fn flight_window(&self, reason: &str, last_seq: Option<u64>) -> Option<FlightWindow> {
        let ring = self.ring.as_ref()?;
        Some(FlightWindow {
            first_seq: self
                .finished_segments
                .iter()
                .find_map(|s| s.first_seq)
                .or(self.segment.first_seq)
                .unwrap_or(ring.dropped_events),
            last_seq,
            events_before: ring.dropped_events,
            ring_bytes: ring.budget,
            reason: reason.to_string(),
        })
    }

    /// Flight mode: freeze the ring into `<service>-<run id>-kept<N>/`
    /// next to it and return that directory. Everything handed to
    /// [`LogWriter::write`] so far is in the window; the ring goes on.
    pub fn keep(&mut self, reason: &str) -> Result<PathBuf, WriteError> {
        let Some(ring) = &self.ring else {
            return Err(WriteError::Io {
                path: self.dir.clone(),
                source: io::Error::other("not a flight recording: nothing to keep"),
            });
        };
        if ring.kept >= KEPT_WINDOWS_MAX {
            return Err(WriteError::Io {
                path: self.dir.clone(),
                source: io::Error::other(format!(
                    "already kept {KEPT_WINDOWS_MAX} windows of this run"
                )),
            });
        }
        let kept_dir = ring
            .out_dir
            .join(format!("{}-kept{}", self.meta.dir_name(), ring.kept + 1));
        let out_dir = ring.out_dir.clone();
        self.flush_frame()?;
        create_run_dir(&out_dir, &kept_dir)?;
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WriteError::Io { path, source }
        };
        for segment in &self.finished_segments {
            let (from, to) = (self.dir.join(&segment.file), kept_dir.join(&segment.file));
            // Closed segments never change again: a hard link is a copy.
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).map_err(io_error(&to))?;
            }
        }
        // The open segment: its bytes so far, closed with a final footer.
        let open = &self.segment;
        let to = kept_dir.join(segment_file_name(open.index));
        {
            use io::Read as _;
            let mut bytes = Vec::with_capacity(open.bytes as usize + FOOTER_BYTES);
            File::open(&open.path)
                .and_then(|file| file.take(open.bytes).read_to_end(&mut bytes))
                .map_err(io_error(&open.path))?;
            let footer = Footer {
                frames: open.frames,
                events: open.events,
                last_seq: open.last_seq,
                frames_crc: open.frames_crc,
                continues: false,
            };
            bytes.extend_from_slice(&footer.encode());
            create_private_file(&to)
                .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
                .map_err(io_error(&to))?;
        }
        let mut segments: Vec<&SegmentSummary> = self.finished_segments.iter().collect();
        let mut last = open.summary(true);
        last.bytes += FOOTER_BYTES as u64;
        segments.push(&last);
        let window = self
            .flight_window(reason, segments.iter().rev().find_map(|s| s.last_seq))
            .expect("keep runs in flight mode");
        write_json(&kept_dir, INDEX_FILE_NAME, &self.index(segments))?;
        write_json(&kept_dir, FLIGHT_FILE_NAME, &window)?;
        sync_dir(&kept_dir);
        if let Some(ring) = &mut self.ring {
            ring.kept += 1;
        }
        Ok(kept_dir)
    }

    /// Footer, fsync, and (for the last segment) the directory entry.
    fn close_segment(&mut self, continues: bool) -> Result<(), WriteError> {
        let segment = &mut self.segment;
        let footer = Footer {
            frames: segment.frames,
            events: segment.events,
            last_seq: segment.last_seq,
            frames_crc: segment.frames_crc,
            continues,
        };
        let bytes = footer.encode();
        let faults = self.config.faults.as_deref();
        fault::write_all(&mut segment.file, &bytes, faults)
            .and_then(|()| fault::sync_all(&segment.file, faults))
            .map_err(|source| segment.io_error(source))?;
        segment.bytes += bytes.len() as u64;
        segment.sealed = true;
        self.totals.bytes_on_disk += bytes.len() as u64;
        Ok(())
    }

    /// Write what is pending, the footer, fsync, and the index. In flight
    /// mode the ring is then deleted: only kept windows outlive the run.
    pub fn finish(mut self) -> Result<WriterTotals, WriteError> {
        self.finish_in_place()
    }

    /// [`LogWriter::finish`], keeping the writer for [`LogWriter::abandon`]
    /// when it fails.
    pub(super) fn finish_in_place(&mut self) -> Result<WriterTotals, WriteError> {
        self.repair()?;
        let result = self.finish_segments();
        self.needs_repair |= result.is_err();
        result
    }

    fn finish_segments(&mut self) -> Result<WriterTotals, WriteError> {
        self.flush_frame()?;
        if self.segment.sealed {
            // A rotation failed half way: the run ends in a fresh segment.
            self.rotate()?;
        }
        self.close_segment(false)?;
        let last = self.segment.summary(true);
        self.finished_segments.push(last);
        if self.ring.is_some() {
            // Best effort: a ring left behind is still a readable run.
            let _ = fs::remove_dir_all(&self.dir);
            return Ok(self.totals);
        }
        // The footer is written: the log is complete. An index that cannot
        // be written is only a summary missing, said apart.
        if let Err(err) = self.write_index() {
            self.index_error = Some(err.to_string());
        }
        sync_dir(&self.dir);
        Ok(self.totals)
    }

    /// Why `index.json` could not be written when the log was finished,
    /// if it could not.
    pub fn index_error(&self) -> Option<&str> {
        self.index_error.as_deref()
    }

    fn index<'a>(&'a self, segments: Vec<&'a SegmentSummary>) -> Index<'a> {
        Index {
            format_version: crate::format::FORMAT_VERSION,
            service: &self.meta.service,
            run_id: &self.meta.run_id,
            segments,
            recorder: self.recorder.as_ref(),
        }
    }

    /// After a failed write: forget the frame being built (its events are
    /// lost; [`WriterTotals::last_seq`] is the last one on disk) and cut
    /// the segment back to its last complete record, so the file reads
    /// cleanly and the next frame starts at a record boundary. A rotation
    /// that failed after the footer leaves the segment sealed and removes
    /// the next segment's partial file. Does nothing if no write failed.
    pub fn repair(&mut self) -> Result<(), WriteError> {
        if !self.needs_repair {
            return Ok(());
        }
        self.frame.raw.clear();
        self.frame.events = 0;
        let segment = &mut self.segment;
        if segment.sealed {
            let next = self.dir.join(segment_file_name(segment.index + 1));
            match fs::remove_file(&next) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    return Err(WriteError::Io {
                        path: next,
                        source: err,
                    })
                }
                _ => {}
            }
        }
        segment
            .file
            .set_len(segment.bytes)
            .and_then(|()| segment.file.seek(SeekFrom::Start(segment.bytes)))
            .map_err(|source| segment.io_error(source))?;
        self.needs_repair = false;
        Ok(())
    }

    /// Give up on a run whose last writes failed: repair what can be
    /// repaired and leave the last segment without a footer, so a reader
    /// reports an unclean end after the last event on disk instead of a
    /// clean log that silently misses its tail. `index.json` is rewritten
    /// if the disk takes it. Best effort: nothing here fails.
    pub fn abandon(mut self) -> WriterTotals {
        let _ = self.repair();
        let _ = self.write_index();
        self.totals
    }

    /// The recorder's own counts, written into `index.json` (as
    /// `"recorder"`) on rotation and close.
    pub fn set_recorder_summary(&mut self, summary: RecorderSummary) {
        self.recorder = Some(summary);
    }

    fn write_index(&self) -> Result<(), WriteError> {
        let mut segments: Vec<&SegmentSummary> = self.finished_segments.iter().collect();
        let open = self.segment.summary(false);
        if self.finished_segments.last().map(|s| &s.file) != Some(&open.file) {
            segments.push(&open);
        }
        write_json(&self.dir, INDEX_FILE_NAME, &self.index(segments))
    }
}

/// Write `value` as `dir/name`, through a temporary file and a rename so a
/// reader never sees half of it.
fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), WriteError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let json = serde_json::to_vec_pretty(value).expect("plain data always serializes");
    let io_error = |source| WriteError::Io {
        path: tmp.clone(),
        source,
    };
    create_private_file(&tmp)
        .and_then(|mut file| file.write_all(&json))
        .map_err(io_error)?;
    fs::rename(&tmp, dir.join(name)).map_err(io_error)
}

impl OpenSegment {
    fn create(
        dir: &Path,
        index: u32,
        meta: &RunMeta,
        totals: &mut WriterTotals,
        faults: Option<&FaultPlan>,
    ) -> Result<Self, WriteError> {
        let path = dir.join(segment_file_name(index));
        let header = SegmentHeader {
            segment_index: index,
            run: meta.clone(),
        }
        .encode();
        let mut file = create_private_file(&path).map_err(|source| WriteError::Io {
            path: path.clone(),
            source,
        })?;
        fault::write_all(&mut file, &header, faults).map_err(|source| WriteError::Io {
            path: path.clone(),
            source,
        })?;
        totals.segments += 1;
        totals.bytes_on_disk += header.len() as u64;
        Ok(OpenSegment {
            index,
            path,
            file,
            bytes: header.len() as u64,
            frames: 0,
            events: 0,
            first_seq: None,
            last_seq: None,
            frames_crc: 0,
            sealed: false,
        })
    }

    fn io_error(&self, source: io::Error) -> WriteError {
        WriteError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn summary(&self, closed: bool) -> SegmentSummary {
        SegmentSummary {
            file: segment_file_name(self.index),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            frames: self.frames,
            events: self.events,
            bytes: self.bytes,
            closed,
        }
    }
}

/// Create the run directory with mode 0700: logs hold request payloads.
fn create_run_dir(out_dir: &Path, dir: &Path) -> Result<(), WriteError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Io { path, source }
    };
    fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// Create a new file readable by its owner only (0600).
fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Make new directory entries durable. Best effort: some filesystems refuse
/// to fsync a directory, and the data itself is already synced.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}
