//! A pipeline's publishing side: appsrc → convert/scale → [label] → encoder → tee → sinks,
//! and, for `depth16` sinks, a second appsrc of 16-bit depth → FFV1 → Matroska.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::recorder::{self, Recorder, RecorderInlet, Timeline};
use super::rtsp_server::{RtspFeed, RtspMounts};
use super::snapshot::LatestFrame;
use super::{MediaError, bus, quote, registry};
use crate::config::{EncoderConfig, FileSink, PipelineConfig, SinkConfig, WhenFull};
use crate::frames::{DropCounter, Frame, Pixels, Processed};

const APPSRC: &str = "visiond_appsrc";
const OUT_SIZE: &str = "visiond_outsize";
const LABEL: &str = "visiond_label";
const ENCODER: &str = "visiond_encoder";
const DEPTH_APPSRC: &str = "visiond_depth16";
/// Prefix of the appsinks that feed `file` sinks' recordings (the sink's index follows).
const RECORDING: &str = "visiond_recording_";

/// How `textoverlay` draws a classification label: top left, on a shaded box. The still-image
/// path (`visiond infer --overlay`) draws with the same properties, so a PNG shows what a viewer
/// of the stream sees.
pub const LABEL_STYLE: &str = "valignment=top halignment=left shaded-background=true \
     scale-mode=display font-desc=\"Sans Bold 14\"";

/// What a pipeline's output is asked to be: the settings it is built (and rebuilt) from.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSettings {
    /// The visiond pipeline's name, for messages.
    pub pipeline: String,
    pub sinks: Vec<SinkConfig>,
    pub encoder: EncoderConfig,
    /// A live source: the encoder's appsrc is live too.
    pub live: bool,
    /// The pipeline's queue policy, which the encoder's own queue follows.
    pub when_full: WhenFull,
    /// Draw each frame's label (classification models).
    pub draw_label: bool,
}

impl OutputSettings {
    /// `encoder.element: auto` is resolved here, to the encoder this machine has.
    pub fn new(config: &PipelineConfig, live: bool, when_full: WhenFull, draw_label: bool) -> Self {
        let mut encoder = config.encoder.clone();
        if let Some(element) = registry::resolve_encoder(&encoder.element) {
            encoder.element = element;
        }
        Self {
            pipeline: config.name.clone(),
            sinks: config.sinks.clone(),
            encoder,
            live,
            when_full,
            draw_label,
        }
    }

    /// Whether there is any video to publish (a pipeline may write metadata only).
    pub fn has_video(&self) -> bool {
        !self.sinks.is_empty()
    }

    fn what(&self) -> String {
        format!("the output of pipeline {}", self.pipeline)
    }
}

/// Where an output counts what it drops; they outlive each life of the output (a rebuilt
/// output counts on).
#[derive(Debug, Clone, Default)]
pub struct OutputCounters {
    /// Frames the encoder's bounded queue dropped (leaky policies).
    pub encoder_queue: Arc<DropCounter>,
    /// Frames an RTSP media's bounded queue dropped while its clients were paused or slow.
    pub rtsp_media: Arc<DropCounter>,
}

/// The running output pipeline of one visiond pipeline: the state built from its settings.
pub struct VideoOutput {
    pipeline: gst::Pipeline,
    /// The annotated video chain, when the pipeline has video sinks.
    video: Option<VideoChain>,
    /// The 16-bit depth chain, when the pipeline has `depth16` sinks.
    depth: Option<DepthChain>,
    feeds: Vec<RtspFeed>,
    /// One per `file` sink, in sink order: each recording lives and fails on its own.
    recordings: Vec<Recording>,
    /// Where the frames are on the wall clock, for the recordings.
    timeline: Timeline,
    pipeline_name: String,
    /// Finite sources: recordings wait for room rather than drop a frame.
    block: bool,
}

/// A `file` sink: what feeds it, and its running recording while it is up.
struct Recording {
    sink: FileSink,
    inlet: RecorderInlet,
    running: Option<Recorder>,
}

struct VideoChain {
    queue: AppsrcQueue,
    out_size: gst::Element,
    label: Option<gst::Element>,
    /// The frames the appsrc currently announces (format, size, rate, colour).
    input_format: Option<gst_video::VideoInfo>,
    /// Fixed at the first frame: later size changes are scaled to it, so recordings and
    /// clients never see a resolution change.
    output_size: Option<(u32, u32)>,
}

struct DepthChain {
    queue: AppsrcQueue,
    input_format: Option<gst_video::VideoInfo>,
    /// Frames pushed, so that a file without any is removed.
    frames: u64,
    path: std::path::PathBuf,
}

/// Builds the sink description for one sink (after the tee). A `file` sink ends in an
/// appsink that feeds its recording (a pipeline of its own, see [`super::recorder`]).
fn sink_branch(index: usize, sink: &SinkConfig) -> String {
    match sink {
        SinkConfig::File(_) => format!(
            "queue max-size-buffers=0 max-size-bytes=0 max-size-time=2000000000 ! appsink name={RECORDING}{index} sync=false enable-last-sample=false"
        ),
        SinkConfig::Udp(udp) => format!(
            "queue ! rtph264pay config-interval=1 pt=96 ! udpsink host={} port={} sync=false async=false",
            quote(&udp.host),
            udp.port
        ),
        SinkConfig::Rtsp(_) => format!(
            "queue leaky=downstream max-size-buffers=60 ! appsink name=visiond_rtsp_{index} sync=false max-buffers=60 drop=true enable-last-sample=false"
        ),
        SinkConfig::Launch(launch) => format!("queue ! {}", launch.pipeline),
        SinkConfig::Display(display) => format!(
            "queue ! avdec_h264 ! videoconvert ! autovideosink sync={}",
            display.sync
        ),
        SinkConfig::Depth16(depth) => format!(
            "queue ! avenc_ffv1 ! matroskamux ! filesink location={} sync=false",
            quote(&depth.path.display().to_string())
        ),
    }
}

/// Moves `depth16` recordings that a new output would overwrite out of the way (a `file`
/// sink's recording does this itself when it starts).
pub fn set_aside_recordings(settings: &OutputSettings) {
    for sink in &settings.sinks {
        if let SinkConfig::Depth16(depth) = sink {
            recorder::set_aside(&settings.pipeline, &depth.path);
        }
    }
}

/// Frames an output appsrc holds before the encoder takes them.
pub const ENCODER_QUEUE: u64 = 8;

/// The appsrc's queue, bounded and following the pipeline's `queue.when_full` like every other
/// hop: under `block` the pusher waits for room itself (nothing lost, see
/// [`AppsrcQueue::push`]), `drop_oldest` / `drop_newest` leak a frame (counted by the pusher)
/// so a slow encoder never holds up a live source. appsrc's own `block=true` is not used: its
/// wait ends only when the appsrc stops, never on an error downstream of it.
fn appsrc_queue(live: bool, policy: WhenFull) -> String {
    let leak = match policy {
        WhenFull::Block => "",
        WhenFull::DropOldest => " leaky-type=downstream",
        WhenFull::DropNewest => " leaky-type=upstream",
    };
    format!("is-live={live} max-buffers={ENCODER_QUEUE} max-bytes=0{leak}")
}

/// The whole output description, or `None` when the pipeline has no sinks (metadata only).
pub fn description(settings: &OutputSettings) -> Result<Option<String>, MediaError> {
    let (live, policy) = (settings.live, settings.when_full);
    let is_depth = |sink: &&SinkConfig| matches!(sink, SinkConfig::Depth16(_));
    let mut chains = Vec::new();
    let video: Vec<(usize, &SinkConfig)> = settings
        .sinks
        .iter()
        .enumerate()
        .filter(|(_, sink)| !is_depth(sink))
        .collect();
    if !video.is_empty() {
        let mut text = format!(
            "appsrc name={APPSRC} format=time {} \
             ! videoconvert ! videoscale ! capsfilter name={OUT_SIZE}",
            appsrc_queue(live, policy)
        );
        if settings.draw_label {
            text.push_str(&format!(
                " ! videoconvert ! textoverlay name={LABEL} {LABEL_STYLE}"
            ));
        }
        let encoder = &settings.encoder;
        let format =
            registry::encoder_input(&encoder.element, encoder.format).map_err(|reason| {
                MediaError::Build {
                    what: settings.what(),
                    reason: format!("encoder.format: {reason}"),
                }
            })?;
        let profile = encoder
            .profile
            .map(|p| format!(",profile={}", p.caps_name()))
            .unwrap_or_default();
        text.push_str(&format!(
            " ! videoconvert ! video/x-raw,format={} ! {} name={ENCODER} ! video/x-h264{profile} \
             ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au \
             ! tee name=visiond_tee allow-not-linked=true",
            format.caps_name(),
            encoder.element
        ));
        for (index, sink) in video {
            text.push_str(&format!(" visiond_tee. ! {}", sink_branch(index, sink)));
        }
        chains.push(text);
    }
    let depth: Vec<(usize, &SinkConfig)> = settings
        .sinks
        .iter()
        .enumerate()
        .filter(|(_, sink)| is_depth(sink))
        .collect();
    if !depth.is_empty() {
        let mut text = format!(
            "appsrc name={DEPTH_APPSRC} format=time {} \
             ! tee name=visiond_depth_tee allow-not-linked=true",
            appsrc_queue(live, policy)
        );
        for (index, sink) in depth {
            text.push_str(&format!(
                " visiond_depth_tee. ! {}",
                sink_branch(index, sink)
            ));
        }
        chains.push(text);
    }
    Ok((!chains.is_empty()).then(|| chains.join(" ")))
}

/// Sets the encoder for live use: short keyframe interval (a late RTSP client waits at
/// most that long), the bitrate, low-latency tuning, then the user's own properties.
fn configure_encoder(encoder: &gst::Element, config: &EncoderConfig) -> Result<(), MediaError> {
    let has = |name: &str| encoder.find_property(name).is_some();
    let interval = config.keyframe_interval;
    if config.element == "x264enc" {
        encoder.set_property_from_str("tune", "zerolatency");
        encoder.set_property_from_str("speed-preset", "ultrafast");
        // zerolatency turns sliced threads on: every frame then arrives as several slices,
        // which ffmpeg/libav and browsers over RTSP decode as corrupt keyframes.
        encoder.set_property("sliced-threads", false);
    }
    for key in ["key-int-max", "gop-size", "iframeinterval", "idrinterval"] {
        if has(key) {
            encoder.set_property_from_str(key, &interval.to_string());
        }
    }
    if has("bitrate") {
        // nvv4l2h264enc counts bits per second; the others kilobits.
        let value = if config.element.starts_with("nvv4l2") {
            u64::from(config.bitrate_kbps) * 1000
        } else {
            u64::from(config.bitrate_kbps)
        };
        encoder.set_property_from_str("bitrate", &value.to_string());
    }
    for (key, value) in &config.properties {
        if !has(key) {
            return Err(MediaError::Property {
                key: format!("encoder.properties.{key}"),
                element: config.element.clone(),
            });
        }
        encoder.set_property_from_str(key, value);
    }
    Ok(())
}

impl VideoOutput {
    /// Builds and starts the output `settings` describe; `rtsp` serves its `rtsp` sinks.
    /// Earlier recordings at its paths are set aside first, so a rebuilt output never
    /// overwrites one. `None` when the pipeline has no sinks (metadata only).
    pub fn start(
        settings: &OutputSettings,
        rtsp: Option<&RtspMounts>,
        counters: &OutputCounters,
    ) -> Result<Option<Self>, MediaError> {
        set_aside_recordings(settings);
        let output = Self::build(settings, rtsp, counters)?;
        if let Some(output) = &output {
            output
                .pipeline
                .set_state(gst::State::Playing)
                .map_err(|_| MediaError::Start {
                    what: settings.what(),
                    cause: bus::take_error(&output.pipeline),
                })?;
        }
        Ok(output)
    }

    /// Builds (not yet playing) the output `settings` describe.
    pub fn build(
        settings: &OutputSettings,
        rtsp: Option<&RtspMounts>,
        counters: &OutputCounters,
    ) -> Result<Option<Self>, MediaError> {
        let drops = counters.encoder_queue.clone();
        let Some(text) = description(settings)? else {
            return Ok(None);
        };
        let what = settings.what();
        let pipeline = registry::launch(&text, &what)?;
        let by_name = |name: &str| registry::named::<gst::Element>(&pipeline, name, &what);
        let appsrc_named = |name: &str| registry::named::<gst_app::AppSrc>(&pipeline, name, &what);
        let policy = settings.when_full;
        let video = match pipeline.by_name(APPSRC) {
            None => None,
            Some(_) => {
                configure_encoder(&by_name(ENCODER)?, &settings.encoder)?;
                Some(VideoChain {
                    queue: AppsrcQueue::new(appsrc_named(APPSRC)?, policy, drops.clone(), &what),
                    out_size: by_name(OUT_SIZE)?,
                    label: if settings.draw_label {
                        Some(by_name(LABEL)?)
                    } else {
                        None
                    },
                    input_format: None,
                    output_size: None,
                })
            }
        };
        let depth = match pipeline.by_name(DEPTH_APPSRC) {
            None => None,
            Some(_) => Some(DepthChain {
                queue: AppsrcQueue::new(
                    appsrc_named(DEPTH_APPSRC)?,
                    policy,
                    drops.clone(),
                    &format!("the depth16 output of pipeline {}", settings.pipeline),
                ),
                input_format: None,
                frames: 0,
                path: settings
                    .sinks
                    .iter()
                    .find_map(|sink| match sink {
                        SinkConfig::Depth16(depth) => Some(depth.path.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
            }),
        };
        let feeds = connect_rtsp(settings, rtsp, &pipeline, &counters.rtsp_media)?;
        let timeline = Timeline::default();
        let recordings = connect_recordings(settings, &pipeline, &timeline)?;
        Ok(Some(Self {
            pipeline,
            video,
            depth,
            feeds,
            recordings,
            timeline,
            pipeline_name: settings.pipeline.clone(),
            block: policy == WhenFull::Block,
        }))
    }

    /// How many `file` sinks (recordings) the output has.
    pub fn recording_count(&self) -> usize {
        self.recordings.len()
    }

    /// How recording `index` is named in the control plane: `file <path>`.
    pub fn recording_name(&self, index: usize) -> String {
        self.recordings
            .get(index)
            .map(|r| format!("file {}", r.sink.path.display()))
            .unwrap_or_default()
    }

    /// Starts (or restarts) recording `index`; it is up until it fails. Segments its
    /// retention deletes are counted in `deleted`.
    pub fn start_recording(
        &mut self,
        index: usize,
        deleted: &Arc<AtomicU64>,
    ) -> Result<(), MediaError> {
        let Some(recording) = self.recordings.get_mut(index) else {
            return Ok(());
        };
        if let Some(running) = recording.running.take() {
            running.abort();
        }
        recording.running = Some(Recorder::start(
            &self.pipeline_name,
            &recording.sink,
            &recording.inlet,
            self.block,
            deleted.clone(),
        )?);
        Ok(())
    }

    /// The recordings that failed since the last call, with why; each is taken down (a file
    /// without frames removed) and stays down until [`Self::start_recording`].
    pub fn poll_recordings(&mut self) -> Vec<(usize, MediaError)> {
        let mut failed = Vec::new();
        for (index, recording) in self.recordings.iter_mut().enumerate() {
            let Some(error) = recording.running.as_ref().and_then(Recorder::poll_error) else {
                continue;
            };
            if let Some(running) = recording.running.take() {
                running.abort();
            }
            failed.push((index, error));
        }
        failed
    }

    pub fn pipeline(&self) -> &gst::Pipeline {
        &self.pipeline
    }

    /// Publishes one frame with its source PTS (and its 16-bit depth, for `depth16` sinks).
    /// The annotated picture is moved into the output (the metadata does not need it).
    /// Under `block` it waits for room, but never past an error of the output (returned) or
    /// `give_up` (then `Ok(false)`: the frame was let go).
    pub fn push(
        &mut self,
        processed: &mut Processed,
        give_up: &dyn Fn() -> bool,
    ) -> Result<bool, MediaError> {
        let gate = Gate {
            pipeline: &self.pipeline,
            give_up,
        };
        self.mark_for_recordings(&processed.frame);
        if let Some(video) = &mut self.video
            && !video.push(processed, &gate)?
        {
            return Ok(false);
        }
        if let Some(depth) = &mut self.depth
            && !depth.push(processed, &gate)?
        {
            return Ok(false);
        }
        Ok(true)
    }

    /// Ends the stream, waits (at most `timeout`) for every sink to finish (mp4 files get their
    /// index written), and stops the pipeline.
    pub fn finish(self, timeout: std::time::Duration) -> Result<(), MediaError> {
        if let Some(video) = &self.video {
            let _ = video.queue.appsrc.end_of_stream();
        }
        if let Some(depth) = &self.depth {
            let _ = depth.queue.appsrc.end_of_stream();
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut result = bus::wait_for_eos(&self.pipeline, timeout);
        for feed in &self.feeds {
            feed.end();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        self.close_files(deadline, &mut result);
        result
    }

    /// Stops at once without draining (the pipeline already failed); recordings still get
    /// what they hold written, briefly.
    pub fn abort(self) {
        for feed in &self.feeds {
            feed.end();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        self.close_files(deadline, &mut Ok(()));
    }

    /// Finishes every running recording by `deadline`, and removes files without frames.
    fn close_files(self, deadline: std::time::Instant, result: &mut Result<(), MediaError>) {
        for recording in self.recordings {
            if let Some(running) = recording.running {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let finished = running.finish(left.max(std::time::Duration::from_millis(200)));
                if result.is_ok() {
                    *result = finished;
                }
            }
        }
        if let Some(depth) = &self.depth {
            recorder::remove_if_empty(&self.pipeline_name, &depth.path, depth.frames);
        }
    }

    /// Lets `latest` capture the frames the encoder takes (while someone looks at them).
    pub fn watch_snapshot(&self, latest: &Arc<LatestFrame>) {
        if let Some(pad) = self
            .pipeline
            .by_name(ENCODER)
            .and_then(|encoder| encoder.static_pad("sink"))
        {
            latest.watch_pad(&pad);
        }
    }

    /// An error the output pipeline reported since the last call.
    pub fn poll_error(&self) -> Option<MediaError> {
        bus::take_error(&self.pipeline).map(MediaError::Bus)
    }
}

impl VideoOutput {
    /// Notes where `frame` is on the wall clock for the recordings. Where the source came back
    /// after an outage, asks the encoder for a keyframe on this very frame, so that a
    /// segmented recording starts its new segment exactly there.
    fn mark_for_recordings(&self, frame: &Frame) {
        if self.recordings.is_empty() {
            return;
        }
        self.timeline.note(frame);
        if !frame.resumed {
            return;
        }
        if let (Some(pts), Some(encoder)) = (frame.pts, self.pipeline.by_name(ENCODER)) {
            // The appsrc's segment starts at 0, so running time is the timestamp. The event
            // is taken before this frame is pushed, so it reaches the encoder first.
            let event = gst_video::UpstreamForceKeyUnitEvent::builder()
                .running_time(pts)
                .all_headers(true)
                .build();
            encoder.send_event(event);
        }
    }
}

/// Connects each `file` sink's appsink to the inlet its recordings are fed through; they
/// read the output's `timeline`.
fn connect_recordings(
    settings: &OutputSettings,
    pipeline: &gst::Pipeline,
    timeline: &Timeline,
) -> Result<Vec<Recording>, MediaError> {
    let mut recordings = Vec::new();
    for (index, sink) in settings.sinks.iter().enumerate() {
        let SinkConfig::File(file) = sink else {
            continue;
        };
        let appsink = registry::named::<gst_app::AppSink>(
            pipeline,
            &format!("{RECORDING}{index}"),
            &settings.what(),
        )?;
        let inlet = RecorderInlet::new(timeline.clone());
        let feed = inlet.clone();
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    feed.push(&sample);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        recordings.push(Recording {
            sink: file.clone(),
            inlet,
            running: None,
        });
    }
    Ok(recordings)
}

/// Mounts each `rtsp` sink on the server and feeds it from its branch's appsink.
fn connect_rtsp(
    settings: &OutputSettings,
    rtsp: Option<&RtspMounts>,
    pipeline: &gst::Pipeline,
    drops: &Arc<DropCounter>,
) -> Result<Vec<RtspFeed>, MediaError> {
    let mut feeds = Vec::new();
    for (index, sink) in settings.sinks.iter().enumerate() {
        let SinkConfig::Rtsp(mount) = sink else {
            continue;
        };
        let mounts = rtsp.ok_or_else(|| {
            MediaError::Rtsp("an rtsp sink needs the RTSP server, which is not running".into())
        })?;
        let feed = mounts.mount(&mount.mount, drops.clone())?;
        let appsink = registry::named::<gst_app::AppSink>(
            pipeline,
            &format!("visiond_rtsp_{index}"),
            &settings.what(),
        )?;
        let publish = feed.clone();
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(buffer) = sample.buffer_owned() {
                        publish.push(&buffer);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        feeds.push(feed);
    }
    Ok(feeds)
}

/// An output appsrc and the accounting of what its bounded queue drops.
struct AppsrcQueue {
    appsrc: gst_app::AppSrc,
    policy: WhenFull,
    drops: Arc<DropCounter>,
    what: String,
}

impl AppsrcQueue {
    fn new(appsrc: gst_app::AppSrc, policy: WhenFull, drops: Arc<DropCounter>, what: &str) -> Self {
        Self {
            appsrc,
            policy,
            drops,
            what: what.to_string(),
        }
    }

    /// Queues `buffer`; `Ok(false)` when it was let go because the gate said to give up.
    fn push(&self, buffer: gst::Buffer, gate: &Gate<'_>) -> Result<bool, MediaError> {
        let queued = || self.appsrc.property::<u64>("current-level-buffers");
        if self.policy == WhenFull::Block {
            while queued() >= ENCODER_QUEUE {
                // Nothing downstream takes frames any more when it failed: say so rather than
                // wait for room that will not come.
                if let Some(error) = bus::take_error(gate.pipeline) {
                    return Err(error.into());
                }
                if (gate.give_up)() {
                    return Ok(false);
                }
                std::thread::sleep(ROOM_POLL);
            }
        } else if queued() >= ENCODER_QUEUE {
            // A full leaky queue drops a frame on this push (the oldest or this one): count it.
            self.drops.add();
        }
        self.appsrc
            .push_buffer(buffer)
            .map(|_| true)
            .map_err(|e| MediaError::Refused {
                what: self.what.clone(),
                reason: format!("{e:?}"),
            })
    }
}

/// How often a `block` push waiting for room in the encoder's queue looks again (and at the
/// output's errors and its way out).
const ROOM_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// What a push that waits for room watches: the output's bus (an error there means the room
/// will never come) and its way out (the drain after a stop was abandoned).
struct Gate<'a> {
    pipeline: &'a gst::Pipeline,
    give_up: &'a dyn Fn() -> bool,
}

/// Stamps a buffer with the frame's timing. Sources keep PTS increasing across reconnects
/// and loops (`PtsContinuity`), so it is used as it is.
fn stamp(buffer: &mut gst::Buffer, processed: &Processed) {
    let buffer = buffer.make_mut();
    buffer.set_pts(processed.frame.pts);
    buffer.set_dts(gst::ClockTime::NONE);
    buffer.set_duration(processed.frame.duration);
}

/// Announces new caps on `appsrc` when the frames' format changed; true when it did.
fn announce(
    appsrc: &gst_app::AppSrc,
    current: &mut Option<gst_video::VideoInfo>,
    info: &gst_video::VideoInfo,
) -> Result<bool, MediaError> {
    if current.as_ref() == Some(info) {
        return Ok(false);
    }
    let caps = info.to_caps().map_err(|e| {
        MediaError::Frame(format!(
            "cannot describe a {}x{} {:?} frame: {e}",
            info.width(),
            info.height(),
            info.format()
        ))
    })?;
    appsrc.set_caps(Some(&caps));
    *current = Some(info.clone());
    Ok(true)
}

impl VideoChain {
    /// Publishes the frame's picture in the format it comes in (I420 made on the model's
    /// device, or the source's own frame without a model): the encoder's `videoconvert` has
    /// nothing to do for the 4:2:0 formats encoders take.
    fn push(&mut self, processed: &mut Processed, gate: &Gate<'_>) -> Result<bool, MediaError> {
        let (mut buffer, info) = match processed.annotated.take() {
            Some(image) => (image.bytes.into_buffer(), image.layout.info),
            None => match std::mem::replace(&mut processed.frame.pixels, Pixels::Taken) {
                Pixels::Host(buffer) => (buffer, processed.frame.layout.info.clone()),
                _ => {
                    return Err(MediaError::Frame(
                        "the frame has no picture to publish".into(),
                    ));
                }
            },
        };
        let info = with_fps(info, processed.frame.fps)?;
        self.fix_output_size(&info);
        announce(&self.queue.appsrc, &mut self.input_format, &info)?;
        if let (Some(label), Some(text)) = (&self.label, &processed.label) {
            label.set_property("text", text);
        }
        stamp(&mut buffer, processed);
        self.queue.push(buffer, gate)
    }
}

impl VideoChain {
    /// Fixes the output size at the first frame's (even, as 4:2:0 encoders need). It must be
    /// set before the appsrc announces its first caps: the caps event leaves on the appsrc's
    /// own thread at once, and reaching the scaler before the size filter has its caps, it
    /// would negotiate the odd size that the encoder then refuses.
    fn fix_output_size(&mut self, info: &gst_video::VideoInfo) {
        if self.output_size.is_some() {
            return;
        }
        let size = (info.width() & !1, info.height() & !1);
        self.out_size.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("width", size.0 as i32)
                .field("height", size.1 as i32)
                .build(),
        );
        self.output_size = Some(size);
    }
}

/// `info` at the frame's rate (a picture made on the device knows no rate).
fn with_fps(
    info: gst_video::VideoInfo,
    fps: gst::Fraction,
) -> Result<gst_video::VideoInfo, MediaError> {
    if info.fps() == fps {
        return Ok(info);
    }
    let mut caps = info
        .to_caps()
        .map_err(|e| MediaError::Frame(format!("cannot describe the frame: {e}")))?;
    caps.make_mut().set("framerate", fps);
    gst_video::VideoInfo::from_caps(&caps)
        .map_err(|e| MediaError::Frame(format!("cannot describe the frame: {e}")))
}

impl DepthChain {
    fn push(&mut self, processed: &Processed, gate: &Gate<'_>) -> Result<bool, MediaError> {
        let frame = &processed.frame;
        let Some(samples) = &processed.raw_depth else {
            return Err(MediaError::Frame(
                "the model produced no depth map for this frame".into(),
            ));
        };
        let (width, height) = (frame.width, frame.height);
        if samples.len() != width as usize * height as usize {
            return Err(MediaError::Frame(format!(
                "depth map has {} samples for a {width}x{height} frame",
                samples.len()
            )));
        }
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Gray16Le, width, height)
            .fps(frame.fps)
            .build()
            .map_err(|e| {
                MediaError::Frame(format!("cannot describe a {width}x{height} depth map: {e}"))
            })?;
        announce(&self.queue.appsrc, &mut self.input_format, &info)?;
        let row = width as usize * 2;
        let stride = (row + 3) & !3;
        let mut bytes = vec![0u8; stride * height as usize];
        for (y, line) in samples.chunks_exact(width as usize).enumerate() {
            for (x, sample) in line.iter().enumerate() {
                bytes[y * stride + 2 * x..y * stride + 2 * x + 2]
                    .copy_from_slice(&sample.to_le_bytes());
            }
        }
        let mut buffer = gst::Buffer::from_slice(bytes);
        stamp(&mut buffer, processed);
        let pushed = self.queue.push(buffer, gate)?;
        if pushed {
            self.frames += 1;
        }
        Ok(pushed)
    }
}

/// Packed RGB into a buffer laid out the way GStreamer expects RGB (rows padded to 4 bytes).
pub fn rgb_buffer(data: Vec<u8>, width: u32, height: u32) -> gst::Buffer {
    let row = width as usize * 3;
    let stride = (row + 3) & !3;
    if stride == row {
        // The annotated frame's memory becomes the buffer's: no copy on the frame path.
        return gst::Buffer::from_slice(data);
    }
    let mut padded = vec![0u8; stride * height as usize];
    for (y, line) in data.chunks_exact(row).enumerate() {
        padded[y * stride..y * stride + row].copy_from_slice(line);
    }
    gst::Buffer::from_slice(padded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LaunchSink;
    use crate::frames::{Frame, FrameLayout, PixelFormat};

    fn rgb_frame(width: u32, height: u32) -> Processed {
        let fps = gst::Fraction::new(30, 1);
        let layout = FrameLayout::standard(PixelFormat::Rgb, width, height, fps).unwrap();
        let size = layout.info.size();
        Processed::passthrough(Frame {
            pipeline: 0,
            seq: 0,
            pts: Some(gst::ClockTime::ZERO),
            duration: Some(gst::ClockTime::from_mseconds(33)),
            captured: std::time::Instant::now(),
            width,
            height,
            fps,
            layout,
            pixels: Pixels::Host(gst::Buffer::with_size(size).unwrap()),
            resumed: false,
        })
    }

    #[test]
    fn the_output_size_is_fixed_before_the_first_caps_leave_the_appsrc() {
        gst::init().unwrap();
        let settings = OutputSettings {
            pipeline: "odd".into(),
            sinks: vec![SinkConfig::Launch(LaunchSink {
                pipeline: "fakesink".into(),
            })],
            encoder: EncoderConfig {
                element: "x264enc".into(),
                ..EncoderConfig::default()
            },
            live: false,
            when_full: WhenFull::Block,
            draw_label: false,
        };
        let mut output = VideoOutput::start(&settings, None, &OutputCounters::default())
            .unwrap()
            .unwrap();
        let appsrc = output.video.as_ref().unwrap().queue.appsrc.clone();
        let out_size = output.video.as_ref().unwrap().out_size.clone();
        // Whether the appsrc had announced caps already when the size filter got its size:
        // from the moment it has, its caps event may be downstream, ahead of the size.
        let announced_first = Arc::new(std::sync::Mutex::new(None::<bool>));
        out_size.connect_notify(Some("caps"), {
            let announced_first = announced_first.clone();
            move |_, _| {
                *announced_first.lock().unwrap() = Some(appsrc.caps().is_some());
            }
        });
        output.push(&mut rgb_frame(81, 61), &|| false).unwrap();
        assert_eq!(
            *announced_first.lock().unwrap(),
            Some(false),
            "the output size must be fixed before the appsrc announces its caps"
        );
        let caps = out_size.property::<gst::Caps>("caps");
        let size = caps.structure(0).map(|s| {
            (
                s.get::<i32>("width").unwrap_or(0),
                s.get::<i32>("height").unwrap_or(0),
            )
        });
        assert_eq!(size, Some((80, 60)), "{caps}");
        output.abort();
    }

    #[test]
    fn odd_widths_are_padded_to_gstreamer_strides() {
        gst::init().unwrap();
        let data: Vec<u8> = (0..(5 * 3 * 2)).map(|v| v as u8).collect();
        let buffer = rgb_buffer(data.clone(), 5, 2);
        let map = buffer.map_readable().unwrap();
        assert_eq!(map.len(), 16 * 2);
        assert_eq!(&map[16..31], &data[15..30]);
    }
}
