//! One `file` sink: a recording with a GStreamer pipeline of its own, fed the output's encoded
//! H.264 (appsrc → h264parse → muxer → file). Apart from the encoding pipeline so that a full
//! disk or a failed write ends this recording alone: the RTSP, UDP and other sinks of the same
//! output, and the metadata, go on, and the recording is retried by itself.
//!
//! mp4 is written fragmented (a `moof` fragment per second after a header written first), so
//! a recording cut at any moment (SIGKILL, power loss, a full disk) plays up to its last
//! complete fragment; Matroska is readable up to its last cluster by construction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::{MediaError, bus, quote, registry};
use crate::config::{Container, FileSink};

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

/// splitmuxsink needs a printf pattern for the segment number.
pub fn segment_pattern(path: &Path) -> String {
    let text = path.display().to_string();
    if text.contains('%') {
        return text;
    }
    match (path.file_stem(), path.extension()) {
        (Some(stem), Some(ext)) => path
            .with_file_name(format!(
                "{}-%05d.{}",
                stem.to_string_lossy(),
                ext.to_string_lossy()
            ))
            .display()
            .to_string(),
        _ => format!("{text}-%05d"),
    }
}

/// The name of segment `index` of `pattern` (a plain `%d` / `%0Nd`), or `None` for patterns
/// of another shape.
fn segment_name(pattern: &str, index: u32) -> Option<String> {
    let start = pattern.find('%')?;
    let end = pattern[start..].find('d').map(|d| start + d)?;
    let digits = &pattern[start + 1..end];
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let width: usize = digits.trim_start_matches('0').parse().unwrap_or(0);
    Some(format!(
        "{}{index:0width$}{}",
        &pattern[..start],
        &pattern[end + 1..]
    ))
}

/// The first segment number whose file does not exist yet, so a restarted pipeline (or
/// daemon) continues the numbering instead of overwriting earlier segments. Patterns other
/// than a plain `%d` / `%0Nd` start at 0.
pub fn next_segment_index(pattern: &str) -> u32 {
    (0..u32::MAX)
        .find(|&i| segment_name(pattern, i).is_none_or(|name| !Path::new(&name).exists()))
        .unwrap_or(0)
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

/// What the output's appsink hands each encoded frame to: the running recording's appsrc, or
/// nothing while the recording is down.
#[derive(Clone, Default)]
pub struct RecorderInlet(Arc<Mutex<Option<Feed>>>);

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
    /// Subtracted from every timestamp: each file starts at 0.
    base: Option<gst::ClockTime>,
}

impl RecorderInlet {
    /// Passes one encoded frame on; while the recording is down it is not recorded.
    pub fn push(&self, sample: &gst::Sample) {
        let Ok(mut feed) = self.0.lock() else {
            return;
        };
        let Some(current) = feed.as_mut() else {
            return;
        };
        let Some(buffer) = sample.buffer() else {
            return;
        };
        if !current.started {
            if buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                return;
            }
            current.started = true;
            current.appsrc.set_caps(sample.caps_owned().as_ref());
        }
        let base = *current.base.get_or_insert(
            buffer
                .dts()
                .or(buffer.pts())
                .unwrap_or(gst::ClockTime::ZERO),
        );
        let mut buffer = buffer.copy();
        {
            let buffer = buffer.make_mut();
            buffer.set_pts(buffer.pts().map(|t| t.saturating_sub(base)));
            buffer.set_dts(buffer.dts().map(|t| t.saturating_sub(base)));
        }
        loop {
            if current.failed.load(Ordering::Relaxed) {
                *feed = None;
                return;
            }
            let queued: u64 = current.appsrc.property("current-level-buffers");
            if queued < RECORDER_QUEUE {
                break;
            }
            if !current.block {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match current.appsrc.push_buffer(buffer) {
            Ok(_) => {
                current.frames.fetch_add(1, Ordering::Relaxed);
            }
            // Flushing or stopped: the recording failed and is being taken down.
            Err(_) => *feed = None,
        }
    }

    fn attach(&self, feed: Feed) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(feed);
        }
    }

    fn detach(&self) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = None;
        }
    }
}

/// One life of a recording: its pipeline, from start to `Null`.
pub struct Recorder {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    inlet: RecorderInlet,
    frames: Arc<AtomicU64>,
    /// The file this life writes (the first segment of a segmented recording).
    path: PathBuf,
    pipeline_name: String,
}

impl Recorder {
    /// Starts recording `sink` for pipeline `pipeline_name`, fed through `inlet`. An earlier
    /// file at its path is set aside first. `block`: the appsrc waits for room (finite
    /// sources lose nothing) instead of dropping.
    pub fn start(
        pipeline_name: &str,
        sink: &FileSink,
        inlet: &RecorderInlet,
        block: bool,
    ) -> Result<Self, MediaError> {
        let what = format!(
            "the recording {} of pipeline {pipeline_name}",
            sink.path.display()
        );
        let container = container_of(sink);
        let (tail, path) = match sink.segment_s {
            Some(seconds) => {
                let pattern = segment_pattern(&sink.path);
                let index = next_segment_index(&pattern);
                let first = segment_name(&pattern, index).map_or(sink.path.clone(), PathBuf::from);
                let tail = format!(
                    // async-finalize: each segment gets its own muxer made from the factory
                    // and the properties below (fragmented mp4), which splitmuxsink applies
                    // only in that mode; it also closes a segment without holding up the next.
                    "splitmuxsink name={SPLITMUX} async-finalize=true location={} max-size-time={} muxer-factory={} start-index={index}",
                    quote(&pattern),
                    seconds * 1_000_000_000,
                    match container {
                        Container::Mp4 => "mp4mux",
                        Container::Mkv => "matroskamux",
                    }
                );
                (tail, first)
            }
            None => {
                set_aside(pipeline_name, &sink.path);
                let tail = format!(
                    "{} ! filesink location={} sync=false buffer-mode=unbuffered",
                    muxer(container),
                    quote(&sink.path.display().to_string())
                );
                (tail, sink.path.clone())
            }
        };
        // The queue bound is kept by the inlet (it waits or drops before pushing), so that a
        // push never blocks on a recording that failed.
        let text = format!(
            "appsrc name=visiond_recording format=time max-buffers=0 max-bytes=0 max-time=0 ! h264parse ! {tail}"
        );
        let build_error = |reason: String| MediaError::Build {
            what: what.clone(),
            reason,
        };
        let pipeline = registry::launch(&text, &what)?;
        if let Some(splitmux) = pipeline.by_name(SPLITMUX) {
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
        let appsrc = registry::named::<gst_app::AppSrc>(&pipeline, "visiond_recording", &what)?;
        let failed = Arc::new(AtomicBool::new(false));
        if let Some(bus) = pipeline.bus() {
            let failed = failed.clone();
            bus.set_sync_handler(move |_, message| {
                if message.type_() == gst::MessageType::Error {
                    failed.store(true, Ordering::Relaxed);
                }
                gst::BusSyncReply::Pass
            });
        }
        if pipeline.set_state(gst::State::Playing).is_err() {
            let cause = bus::take_error(&pipeline);
            let _ = pipeline.set_state(gst::State::Null);
            remove_if_empty(pipeline_name, &path, 0);
            return Err(MediaError::Start { what, cause });
        }
        let frames = Arc::new(AtomicU64::new(0));
        inlet.attach(Feed {
            appsrc: appsrc.clone(),
            frames: frames.clone(),
            failed,
            block,
            started: false,
            base: None,
        });
        Ok(Self {
            pipeline,
            appsrc,
            inlet: inlet.clone(),
            frames,
            path,
            pipeline_name: pipeline_name.to_string(),
        })
    }

    /// Frames handed to this life of the recording.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// An error the recording reported since the last call (a full disk, a failed write).
    pub fn poll_error(&self) -> Option<MediaError> {
        bus::take_error(&self.pipeline).map(MediaError::Bus)
    }

    /// Ends the recording: what was queued is written and the file finalized (within
    /// `timeout`). A file without frames is removed.
    pub fn finish(self, timeout: Duration) -> Result<(), MediaError> {
        self.inlet.detach();
        let _ = self.appsrc.end_of_stream();
        let result = bus::wait_for_eos(&self.pipeline, timeout);
        let _ = self.pipeline.set_state(gst::State::Null);
        remove_if_empty(&self.pipeline_name, &self.path, self.frames());
        result
    }

    /// Stops at once (the recording failed); a file without frames is removed.
    pub fn abort(self) {
        // Null first: a push blocked on a full appsrc returns (flushing) and frees the inlet.
        let _ = self.pipeline.set_state(gst::State::Null);
        self.inlet.detach();
        remove_if_empty(&self.pipeline_name, &self.path, self.frames());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_numbering_continues_after_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("door-%05d.mkv").display().to_string();
        assert_eq!(next_segment_index(&pattern), 0);
        for i in 0..3 {
            std::fs::write(dir.path().join(format!("door-{i:05}.mkv")), "").unwrap();
        }
        assert_eq!(next_segment_index(&pattern), 3);
    }

    #[test]
    fn segment_patterns_get_a_counter() {
        assert_eq!(
            segment_pattern(Path::new("/rec/door.mp4")),
            "/rec/door-%05d.mp4"
        );
        assert_eq!(
            segment_pattern(Path::new("/rec/door-%03d.mkv")),
            "/rec/door-%03d.mkv"
        );
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
