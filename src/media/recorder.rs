//! One `file` sink: a recording with a GStreamer pipeline of its own, fed the output's encoded
//! H.264 (appsrc → h264parse → muxer → file). Apart from the encoding pipeline so that a full
//! disk or a failed write ends this recording alone: the RTSP, UDP and other sinks of the same
//! output, and the metadata, go on, and the recording is retried by itself.
//!
//! mp4 is written fragmented (a `moof` fragment per second after a header written first), so
//! a recording cut at any moment (SIGKILL, power loss, a full disk) plays up to its last
//! complete fragment; Matroska is readable up to its last cluster by construction.
//!
//! A recording's time maps to the wall clock: the frames' timestamps keep an outage as a gap
//! of its length (`frames::PtsContinuity`), each file starts at 0 with decoding timestamps
//! that only increase, and a segmented recording names each segment by its first frame's
//! wall-clock time ([`Timeline`], [`super::segments`]) and starts a new one where the camera
//! came back after an outage.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::flow::{self, FlowWatch};
use super::segments::{Retention, SegmentNames};
use super::{BusError, MediaError, bus, quote, registry};
use crate::config::{Container, FileSink};
use crate::frames::Frame;

/// Length of an mp4 fragment: at most this much of a cut recording is lost (plus what the
/// file system had not written yet).
pub const FRAGMENT_MS: u64 = 1000;

/// The splitmuxsink of a segmented recording.
const SPLITMUX: &str = "visiond_splitmux";

/// A filesink that hands every buffer to the kernel as it comes: a process killed mid-file
/// loses nothing the muxer had written (stdio buffering would hold back 64 KB, headers
/// included).
fn unbuffered_filesink() -> Result<gst::Element, String> {
    gst::ElementFactory::make("filesink")
        .property_from_str("buffer-mode", "unbuffered")
        .property("sync", false)
        .build()
        .map_err(|e| e.to_string())
}

/// `filesink` properties for splitmuxsink's `sink-properties`: unbuffered, not synced to the
/// clock. The buffer mode is an enum, which a structure carries only as a value of the enum's
/// own type; that type exists once a filesink has been made, so make one first and then parse.
fn unbuffered_sink_properties() -> Result<gst::Structure, String> {
    let sink = unbuffered_filesink()?;
    let mode_type = sink.property_value("buffer-mode").type_();
    format!(
        "properties, sync=(boolean)false, buffer-mode=({})unbuffered",
        mode_type.name()
    )
    .parse::<gst::Structure>()
    .map_err(|e| format!("filesink properties: {e}"))
}

/// Encoded frames a recording's appsrc holds before its muxer takes them.
const RECORDER_QUEUE: u64 = 120;

/// The container a file sink writes: its `format`, else its extension.
pub fn container_of(sink: &FileSink) -> Container {
    sink.format
        .unwrap_or(match sink.path.extension().and_then(|e| e.to_str()) {
            Some("mkv") => Container::Mkv,
            _ => Container::Mp4,
        })
}

/// The muxer with its properties, as gst-launch text.
fn muxer(container: Container) -> String {
    match container {
        Container::Mp4 => format!("mp4mux fragment-duration={FRAGMENT_MS}"),
        Container::Mkv => "matroskamux".to_string(),
    }
}

/// The place an earlier recording at `path` is moved to: `<stem>.<unix seconds>.<ext>`, with
/// `-N` added while that name is taken too (two output lives within one second).
pub fn aside_name(path: &Path) -> PathBuf {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = |suffix: String| match path.extension() {
        Some(ext) => path.with_file_name(format!(
            "{stem}.{seconds}{suffix}.{}",
            ext.to_string_lossy()
        )),
        None => path.with_file_name(format!("{stem}.{seconds}{suffix}")),
    };
    let mut candidate = name(String::new());
    let mut n = 1;
    while candidate.exists() {
        candidate = name(format!("-{n}"));
        n += 1;
    }
    candidate
}

/// Moves a recording a new output would overwrite out of the way: a restarted pipeline or
/// daemon never destroys a recording.
pub fn set_aside(pipeline: &str, path: &Path) {
    if !path.exists() {
        return;
    }
    let kept = aside_name(path);
    match std::fs::rename(path, &kept) {
        Ok(()) => tracing::info!(
            pipeline = %pipeline,
            kept = %kept.display(),
            "an earlier recording was kept under a new name"
        ),
        Err(error) => tracing::warn!(
            pipeline = %pipeline,
            path = %path.display(),
            %error,
            "cannot move an earlier recording aside; it will be overwritten"
        ),
    }
}

/// Removes `path` when it holds nothing worth keeping: no frame was written to it, or nothing
/// reached the disk at all (a disk that was already full).
pub fn remove_if_empty(pipeline: &str, path: &Path, frames: u64) {
    let empty = std::fs::metadata(path).is_ok_and(|meta| meta.len() == 0);
    if (frames == 0 || empty) && std::fs::remove_file(path).is_ok() {
        tracing::info!(
            pipeline = %pipeline,
            path = %path.display(),
            "removed a recording without frames"
        );
    }
}

/// Where a pipeline's stream is on the wall clock, as its output saw the frames go by: what
/// a recording needs to name a segment by the time its first frame was taken, and to start a
/// new segment where the source came back after an outage. Shared by the output (which notes
/// every frame) and its recordings (which read it from the encoded stream's threads).
#[derive(Clone, Default)]
pub struct Timeline(Arc<Mutex<TimelineState>>);

#[derive(Default)]
struct TimelineState {
    /// The latest frame's timestamp and the wall-clock time it was taken.
    anchor: Option<(gst::ClockTime, SystemTime)>,
    /// Timestamps of the first frames after outages, the latest last.
    resumes: VecDeque<gst::ClockTime>,
}

/// Outages remembered: far more than can happen while a frame crosses the encoder.
const RESUMES_KEPT: usize = 16;

impl Timeline {
    /// Notes a frame on its way to the encoder.
    pub fn note(&self, frame: &Frame) {
        let Some(pts) = frame.pts else {
            return;
        };
        let taken = SystemTime::now()
            .checked_sub(frame.captured.elapsed())
            .unwrap_or_else(SystemTime::now);
        if let Ok(mut state) = self.0.lock() {
            state.anchor = Some((pts, taken));
            if frame.resumed {
                if state.resumes.len() == RESUMES_KEPT {
                    state.resumes.pop_front();
                }
                state.resumes.push_back(pts);
            }
        }
    }

    /// The wall-clock time of the frame at `pts`. Timestamps advance with the monotonic clock,
    /// outages included, so the latest frame's time tells any other frame's; going from the
    /// latest also follows the wall clock when it is set (NTP after a boot).
    pub fn wall_time(&self, pts: gst::ClockTime) -> Option<SystemTime> {
        let (anchor, taken) = self.0.lock().ok()?.anchor?;
        if pts >= anchor {
            taken.checked_add(Duration::from_nanos((pts - anchor).nseconds()))
        } else {
            taken.checked_sub(Duration::from_nanos((anchor - pts).nseconds()))
        }
    }

    /// Whether the source came back from an outage after `after` and at or before `upto`.
    fn resumed_between(&self, after: Option<gst::ClockTime>, upto: gst::ClockTime) -> bool {
        self.0.lock().is_ok_and(|state| {
            state
                .resumes
                .iter()
                .any(|&at| at <= upto && after.is_none_or(|after| at > after))
        })
    }
}

/// What the output's appsink hands each encoded frame to: the running recording's appsrc, or
/// nothing while the recording is down.
#[derive(Clone, Default)]
pub struct RecorderInlet {
    feed: Arc<Mutex<Option<Feed>>>,
    timeline: Timeline,
    /// Encoded frames this recording did not get: it was down, waiting for a keyframe to
    /// start at, or could not keep up (a live source's recording drops rather than wait).
    missed: Arc<AtomicU64>,
}

struct Feed {
    appsrc: gst_app::AppSrc,
    frames: Arc<AtomicU64>,
    /// Set by the recording's bus the moment it fails, from whichever thread posts the error,
    /// so that nothing waits on a recording that will never take another frame.
    failed: Arc<AtomicBool>,
    /// Wait for room in a full queue (finite sources: lose nothing) instead of dropping.
    block: bool,
    /// A recording starts at a keyframe, so its first frame decodes.
    started: bool,
    /// The file's timestamps.
    clock: FileClock,
    /// The output's running time (the frames' timestamps, see [`Timeline`]) at the
    /// recording's 0. Shared with the segment namer: an encoder's timestamps are its own
    /// (x264enc adds 1000 hours), running time is the same everywhere.
    origin: Arc<Mutex<Option<gst::ClockTime>>>,
    /// The splitmuxsink of a segmented recording: a new segment starts where the source came
    /// back after an outage.
    splitmux: Option<gst::Element>,
    /// The running time of the last frame passed on.
    last_running: Option<gst::ClockTime>,
    /// The source came back after an outage; the segment starts at the next keyframe.
    split_due: bool,
}

/// The least a decoding timestamp moves on when the encoder gave one that does not: more than
/// any muxer's time unit rounds away (Matroska counts milliseconds).
const DTS_STEP: gst::ClockTime = gst::ClockTime::from_mseconds(1);

impl RecorderInlet {
    /// An inlet whose recordings read `timeline`.
    pub fn new(timeline: Timeline) -> Self {
        Self {
            feed: Arc::default(),
            timeline,
            missed: Arc::default(),
        }
    }

    /// Encoded frames the recording did not get so far (see [`RecorderInlet::push`]).
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Passes one encoded frame on; while the recording is down it is not recorded (and
    /// counted as missed).
    pub fn push(&self, sample: &gst::Sample) {
        let miss = || {
            self.missed.fetch_add(1, Ordering::Relaxed);
        };
        let Ok(mut feed) = self.feed.lock() else {
            return miss();
        };
        let Some(current) = feed.as_mut() else {
            return miss();
        };
        let Some(buffer) = sample.buffer() else {
            return;
        };
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        if !current.started {
            if !keyframe {
                return miss();
            }
            current.started = true;
            current.appsrc.set_caps(sample.caps_owned().as_ref());
        }
        loop {
            if current.failed.load(Ordering::Relaxed) {
                *feed = None;
                return miss();
            }
            let queued: u64 = current.appsrc.property("current-level-buffers");
            if queued < RECORDER_QUEUE {
                break;
            }
            if !current.block {
                return miss();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let retimed = current.clock.retime(buffer);
        if let (Some(pts), Some(base)) = (buffer.pts(), current.clock.base) {
            let running = sample
                .segment()
                .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                .and_then(|s| s.to_running_time(pts))
                .unwrap_or(pts);
            let in_recording = pts.saturating_sub(base);
            if let Ok(mut origin) = current.origin.lock() {
                origin.get_or_insert(running.saturating_sub(in_recording));
            }
            current.split_at_resume(&self.timeline, running, in_recording, keyframe);
        }
        match current.appsrc.push_buffer(retimed) {
            Ok(_) => {
                current.frames.fetch_add(1, Ordering::Relaxed);
            }
            // Flushing or stopped: the recording failed and is being taken down.
            Err(_) => {
                *feed = None;
                miss();
            }
        }
    }

    fn attach(&self, feed: Feed) {
        if let Ok(mut slot) = self.feed.lock() {
            *slot = Some(feed);
        }
    }

    fn detach(&self) {
        if let Ok(mut slot) = self.feed.lock() {
            *slot = None;
        }
    }
}

impl Feed {
    /// A segmented recording starts a new segment where the source came back after an
    /// outage, at the first keyframe there (the output asks the encoder for one on that very
    /// frame). The frame is at `running` time, and at `pts` in the recording.
    fn split_at_resume(
        &mut self,
        timeline: &Timeline,
        running: gst::ClockTime,
        pts: gst::ClockTime,
        keyframe: bool,
    ) {
        if self.last_running.is_some() && timeline.resumed_between(self.last_running, running) {
            self.split_due = true;
        }
        self.last_running = Some(running);
        if !(self.split_due && keyframe) {
            return;
        }
        self.split_due = false;
        if let Some(splitmux) = &self.splitmux {
            // At this frame's running time in the recording: splitmuxsink puts the GOP that
            // starts here into a new segment and leaves the one before in the old.
            splitmux.emit_by_name::<()>("split-at-running-time", &[&pts.nseconds()]);
        }
    }
}

/// A recording file's timestamps, made from the encoded stream's.
#[derive(Debug, Default)]
struct FileClock {
    /// Subtracted from every timestamp: each file starts at 0.
    base: Option<gst::ClockTime>,
    /// The last decoding timestamp given.
    last_dts: Option<gst::ClockTime>,
}

impl FileClock {
    /// A copy of `buffer` with timestamps as the recording's file has them: from 0 at its
    /// first frame, and a decoding timestamp that always moves forward (muxers refuse one that
    /// goes back, and a repeated one makes players stutter).
    fn retime(&mut self, buffer: &gst::BufferRef) -> gst::Buffer {
        let stream_start = buffer.dts().or(buffer.pts());
        let base = *self
            .base
            .get_or_insert(stream_start.unwrap_or(gst::ClockTime::ZERO));
        let mut copy = buffer.copy();
        let out = copy.make_mut();
        let pts = buffer.pts().map(|t| t.saturating_sub(base));
        let mut dts = buffer
            .dts()
            .or(buffer.pts())
            .map(|t| t.saturating_sub(base));
        if let (Some(last), Some(at)) = (self.last_dts, dts)
            && at <= last
        {
            dts = Some(last + DTS_STEP);
        }
        out.set_dts(dts);
        self.last_dts = dts.or(self.last_dts);
        // A frame is never shown before it is decoded.
        out.set_pts(match (pts, dts) {
            (Some(pts), Some(dts)) => Some(pts.max(dts)),
            (pts, _) => pts,
        });
        copy
    }
}

/// What a segmented recording needs to name and retire its segments.
struct SegmentKeeper {
    pipeline: String,
    names: SegmentNames,
    retention: Retention,
    timeline: Timeline,
    /// The running time at the recording's 0: a segment's first timestamp plus it is the
    /// running time the timeline knows.
    origin: Arc<Mutex<Option<gst::ClockTime>>>,
    /// The segment being written.
    current: Arc<Mutex<Option<PathBuf>>>,
    /// Segments retention deleted, for the pipeline's metrics.
    deleted: Arc<AtomicU64>,
    /// The last segment's start: names never go back in time. A source faster than real time
    /// (a file) maps its frames to the wall clock only roughly, and a later segment could
    /// otherwise be named before an earlier one.
    last_start: Mutex<Option<SystemTime>>,
}

impl SegmentKeeper {
    /// The name of segment `index`, whose first frame is `first` (splitmuxsink's
    /// `format-location-full`), after retention has made room for it.
    fn open(&self, index: u32, first: Option<&gst::Sample>) -> String {
        let origin = self.origin.lock().ok().and_then(|origin| *origin);
        let start = first
            .and_then(|sample| sample.buffer())
            .and_then(|buffer| buffer.pts().or(buffer.dts()))
            .zip(origin)
            .and_then(|(pts, origin)| self.timeline.wall_time(pts + origin))
            .unwrap_or_else(SystemTime::now);
        let start = match self.last_start.lock() {
            Ok(mut last) => {
                let start = last.map_or(start, |last| start.max(last));
                *last = Some(start);
                start
            }
            Err(_) => start,
        };
        let path = self.names.path(index, start);
        if self.retention.is_set() {
            self.retire();
        }
        if let Ok(mut current) = self.current.lock() {
            *current = Some(path.clone());
        }
        path.display().to_string()
    }

    /// Deletes the segments retention no longer keeps, oldest first.
    fn retire(&self) {
        let segments = self.names.existing();
        for (segment, why) in self.retention.expired(&segments, SystemTime::now()) {
            match std::fs::remove_file(&segment.path) {
                Ok(()) => {
                    self.deleted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        pipeline = %self.pipeline,
                        path = %segment.path.display(),
                        bytes = segment.bytes,
                        started = %humantime::format_rfc3339_seconds(segment.start),
                        limit = why.key(),
                        "deleted a recording segment past its retention"
                    );
                }
                Err(error) => tracing::warn!(
                    pipeline = %self.pipeline,
                    path = %segment.path.display(),
                    %error,
                    "cannot delete a recording segment past its retention"
                ),
            }
        }
    }
}

/// One life of a recording: its pipeline, from start to `Null`.
pub struct Recorder {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    /// Whether the frames it is given are written (leave its appsrc).
    flow: FlowWatch,
    /// The first error its pipeline posted, as the bus's own thread saw it.
    fault: Arc<Mutex<Option<BusError>>>,
    what: String,
    inlet: RecorderInlet,
    frames: Arc<AtomicU64>,
    /// The file this life writes: a segmented recording's current segment once it has one.
    path: PathBuf,
    current_segment: Option<Arc<Mutex<Option<PathBuf>>>>,
    pipeline_name: String,
}

impl Recorder {
    /// Starts recording `sink` for pipeline `pipeline_name`, fed through `inlet`. An earlier
    /// file at its path is set aside first. `block`: the appsrc waits for room (finite
    /// sources lose nothing) instead of dropping. Segments that retention deletes are counted
    /// in `deleted`.
    pub fn start(
        pipeline_name: &str,
        sink: &FileSink,
        inlet: &RecorderInlet,
        block: bool,
        deleted: Arc<AtomicU64>,
    ) -> Result<Self, MediaError> {
        let what = format!(
            "the recording {} of pipeline {pipeline_name}",
            sink.path.display()
        );
        let build_error = |reason: String| MediaError::Build {
            what: what.clone(),
            reason,
        };
        let container = container_of(sink);
        let origin = Arc::new(Mutex::new(None));
        let (tail, keeper) = match sink.segment_s {
            Some(seconds) => {
                let names = SegmentNames::of(&sink.path).ok_or_else(|| {
                    build_error("the file name may hold one counter, %d or %0Nd".into())
                })?;
                let index = names.next_index();
                let tail = format!(
                    // async-finalize: each segment gets its own muxer made from the factory
                    // and the properties below (fragmented mp4), which splitmuxsink applies
                    // only in that mode; it also closes a segment without holding up the next.
                    // Names come from `format-location-full` (start time and counter).
                    "splitmuxsink name={SPLITMUX} async-finalize=true max-size-time={} muxer-factory={} start-index={index}",
                    seconds * 1_000_000_000,
                    match container {
                        Container::Mp4 => "mp4mux",
                        Container::Mkv => "matroskamux",
                    }
                );
                let keeper = SegmentKeeper {
                    pipeline: pipeline_name.to_string(),
                    names,
                    retention: Retention::of(sink),
                    timeline: inlet.timeline.clone(),
                    origin: origin.clone(),
                    current: Arc::default(),
                    deleted,
                    last_start: Mutex::new(None),
                };
                (tail, Some(keeper))
            }
            None => {
                set_aside(pipeline_name, &sink.path);
                let tail = format!(
                    "{} ! filesink location={} sync=false buffer-mode=unbuffered",
                    muxer(container),
                    quote(&sink.path.display().to_string())
                );
                (tail, None)
            }
        };
        // The queue bound is kept by the inlet (it waits or drops before pushing), so that a
        // push never blocks on a recording that failed.
        let text = format!(
            "appsrc name=visiond_recording format=time max-buffers=0 max-bytes=0 max-time=0 ! h264parse ! {tail}"
        );
        let pipeline = registry::launch(&text, &what)?;
        let splitmux = pipeline.by_name(SPLITMUX);
        if let Some(splitmux) = &splitmux {
            // With async-finalize every segment gets a new muxer and file sink made from these
            // properties: fragmented mp4, and a sink that writes each fragment out at once (a
            // buffered one would hold seconds of a small stream in memory, lost on a crash).
            splitmux.set_property(
                "sink-properties",
                unbuffered_sink_properties().map_err(build_error)?,
            );
            if container == Container::Mp4 {
                let properties = gst::Structure::builder("properties")
                    .field("fragment-duration", FRAGMENT_MS as u32)
                    .build();
                splitmux.set_property("muxer-properties", properties);
            }
        }
        let current_segment = keeper.as_ref().map(|keeper| keeper.current.clone());
        if let (Some(splitmux), Some(keeper)) = (&splitmux, keeper) {
            splitmux.connect("format-location-full", false, move |args| {
                let index = args.get(1).and_then(|v| v.get::<u32>().ok()).unwrap_or(0);
                let first = args.get(2).and_then(|v| v.get::<gst::Sample>().ok());
                Some(keeper.open(index, first.as_ref()).to_value())
            });
        }
        let appsrc = registry::named::<gst_app::AppSrc>(&pipeline, "visiond_recording", &what)?;
        let failed = Arc::new(AtomicBool::new(false));
        let fault = Arc::new(Mutex::new(None));
        if let Some(bus) = pipeline.bus() {
            let (failed, fault) = (failed.clone(), fault.clone());
            bus.set_sync_handler(move |_, message| {
                if let gst::MessageView::Error(error) = message.view()
                    && !failed.swap(true, Ordering::Relaxed)
                    && let Ok(mut fault) = fault.lock()
                {
                    // Kept here too: a bus made while the process was out of file
                    // descriptors never hands its messages on.
                    *fault = Some(BusError::from_message(error));
                }
                gst::BusSyncReply::Pass
            });
        }
        let recorder = Self {
            fault,
            flow: FlowWatch::new(&appsrc, flow::STALL),
            what: what.clone(),
            pipeline,
            appsrc,
            inlet: inlet.clone(),
            frames: Arc::new(AtomicU64::new(0)),
            path: sink.path.clone(),
            current_segment,
            pipeline_name: pipeline_name.to_string(),
        };
        if recorder.pipeline.set_state(gst::State::Playing).is_err() {
            let cause = bus::take_error(&recorder.pipeline);
            recorder.abort();
            return Err(MediaError::Start { what, cause });
        }
        inlet.attach(Feed {
            appsrc: recorder.appsrc.clone(),
            frames: recorder.frames.clone(),
            failed,
            block,
            started: false,
            clock: FileClock::default(),
            origin,
            splitmux,
            last_running: None,
            split_due: false,
        });
        Ok(recorder)
    }

    /// Frames handed to this life of the recording.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// An error the recording reported since the last call (a full disk, a failed write), or
    /// that it stopped writing without one (frames wait in its queue, none is taken).
    pub fn poll_error(&self) -> Option<MediaError> {
        let seen = self.fault.lock().ok().and_then(|mut fault| fault.take());
        if let Some(error) = bus::take_error(&self.pipeline).or(seen) {
            return Some(MediaError::Bus(error));
        }
        self.flow.stalled().map(|waited| MediaError::Stalled {
            what: self.what.clone(),
            waited,
        })
    }

    /// The file being written: the current segment of a segmented recording (none before its
    /// first frame).
    fn file(&self) -> Option<PathBuf> {
        match &self.current_segment {
            Some(current) => current.lock().ok().and_then(|c| c.clone()),
            None => Some(self.path.clone()),
        }
    }

    /// Ends the recording: what was queued is written and the file finalized (within
    /// `timeout`). A file without frames is removed.
    pub fn finish(self, timeout: Duration) -> Result<(), MediaError> {
        self.inlet.detach();
        let _ = self.appsrc.end_of_stream();
        let result = bus::wait_for_eos(&self.pipeline, timeout);
        let _ = self.pipeline.set_state(gst::State::Null);
        self.remove_if_empty();
        result
    }

    /// Stops at once (the recording failed); a file without frames is removed.
    pub fn abort(self) {
        // Null first: a push blocked on a full appsrc returns (flushing) and frees the inlet.
        let _ = self.pipeline.set_state(gst::State::Null);
        self.inlet.detach();
        self.remove_if_empty();
    }

    fn remove_if_empty(&self) {
        if let Some(file) = self.file() {
            remove_if_empty(&self.pipeline_name, &file, self.frames());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer with these timestamps in milliseconds.
    fn stamped(pts: Option<u64>, dts: Option<u64>) -> gst::Buffer {
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().unwrap();
        b.set_pts(pts.map(gst::ClockTime::from_mseconds));
        b.set_dts(dts.map(gst::ClockTime::from_mseconds));
        buffer
    }

    #[test]
    fn file_timestamps_start_at_0_and_decoding_times_always_move_on() {
        gst::init().unwrap();
        // x264enc's stream starts 1000 hours in; the encoder repeats, then goes back.
        let start = 3_600_000 * 1000;
        let mut clock = FileClock::default();
        let got: Vec<(u64, u64)> = [
            (0, 0),
            (40, 40),
            (80, 40),  // the same DTS again
            (120, 30), // DTS going back
            (160, 160),
        ]
        .into_iter()
        .map(|(pts, dts)| {
            let out = clock.retime(&stamped(Some(start + pts), Some(start + dts)));
            (out.pts().unwrap().mseconds(), out.dts().unwrap().mseconds())
        })
        .collect();
        assert_eq!(got, vec![(0, 0), (40, 40), (80, 41), (120, 42), (160, 160)]);
        // Without a DTS the PTS decodes; a frame is never shown before it decodes.
        let out = clock.retime(&stamped(Some(start + 100), None));
        assert_eq!(
            (out.pts().unwrap().mseconds(), out.dts().unwrap().mseconds()),
            (161, 161)
        );
    }

    #[test]
    fn the_timeline_tells_wall_times_and_outages() {
        gst::init().unwrap();
        let ms = gst::ClockTime::from_mseconds;
        let timeline = Timeline::default();
        assert_eq!(timeline.wall_time(ms(0)), None);
        let frame = |pts: u64, resumed: bool| Frame {
            pipeline: 0,
            seq: 0,
            pts: Some(ms(pts)),
            duration: None,
            captured: std::time::Instant::now(),
            resumed,
            width: 2,
            height: 2,
            fps: gst::Fraction::new(0, 1),
            layout: crate::frames::FrameLayout::standard(
                crate::frames::PixelFormat::Rgb,
                2,
                2,
                gst::Fraction::new(0, 1),
            )
            .unwrap(),
            pixels: crate::frames::Pixels::Taken,
        };
        let before = SystemTime::now();
        timeline.note(&frame(10_000, false));
        let noted = timeline.wall_time(ms(10_000)).unwrap();
        assert!(noted >= before - Duration::from_millis(50) && noted <= SystemTime::now());
        assert_eq!(
            timeline.wall_time(ms(4_000)).unwrap(),
            noted - Duration::from_secs(6)
        );
        timeline.note(&frame(20_000, true));
        assert!(timeline.resumed_between(Some(ms(10_000)), ms(20_000)));
        assert!(!timeline.resumed_between(Some(ms(20_000)), ms(20_040)));
        assert!(!timeline.resumed_between(Some(ms(5_000)), ms(19_960)));
    }

    #[test]
    fn names_set_aside_in_one_second_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cam.mp4");
        let first = aside_name(&path);
        std::fs::write(&first, "x").unwrap();
        let second = aside_name(&path);
        assert_ne!(first, second);
        assert!(second.to_string_lossy().ends_with("-1.mp4"), "{second:?}");
    }
}
