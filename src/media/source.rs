//! A pipeline's source session: one life of the GStreamer pipeline that decodes whatever the
//! config names into frames, from build to `Null`.
//!
//! Frames come in the format the decoder made when the consumer takes it (NV12 or I420 for a
//! model whose runtime converts on its device: half the bytes of RGB, no CPU conversion), else
//! converted by `videoconvert`. Where GStreamer's `nvcodec` plugin is present its NVDEC decoders
//! (`nvh264dec`, `nvh265dec`, primary rank) are used, their CUDA memory downloaded
//! (`cudadownload`) for the appsink.
//!
//! The settings (the pipeline's [`SourceConfig`], what the user asked for) stay with the
//! caller; a [`SourceSession`] is the running state built from them. It plays, rewinds and
//! drains, and says what happened as [`SourceEvent`]s; deciding what to do about an event
//! (reconnect, give up, finish) is the supervisor's policy, not the session's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::bus;
use super::error::BusError;
use super::{MediaError, quote, registry, secret};
use crate::config::{SourceConfig, SourceKind, V4l2Format};
use crate::frames::{Frame, FrameIdentity, FrameLayout, PixelFormat, Pixels};

/// Name of the appsink every source description ends in.
const APPSINK: &str = "visiond_appsink";
const MAX_SIZE_FILTER: &str = "visiond_max_size";
const MAX_SIZE_SCALER: &str = "visiond_scale";

/// What a running source reports. (A source plays from its first frame on, which the
/// supervisor sees in the frames themselves: reaching GStreamer's `Playing` state is not
/// enough, a camera that accepts the connection and sends nothing gets there too.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// The stream ended (a file's end, a camera closing the stream).
    Ended,
    /// An element posted an error; the session is over.
    Failed(BusError),
}

/// One life of a source pipeline. Dropping it stops the pipeline (state `Null`).
pub struct SourceSession {
    pipeline: gst::Pipeline,
    bus: gst::Bus,
    what: String,
    /// A file source: errors about what the data is say "not a video file".
    is_file: bool,
    /// Where the last frame delivered ends, in running time (nanoseconds), to tell a
    /// truncated file from a whole one.
    reached_ns: Arc<AtomicU64>,
}

/// How far a finite source got before it ended, against the length it announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub reached: Duration,
    pub length: Duration,
}

impl Progress {
    /// Ended well before its announced length: the data stopped (a truncated file).
    pub fn is_truncated(&self) -> bool {
        self.reached + Duration::from_millis(500) < self.length
    }
}

impl SourceSession {
    /// Builds the pipeline `source` describes, delivering frames in one of `formats`
    /// (preferred first); every frame goes to `deliver` on GStreamer's streaming thread
    /// (blocking there is how a `block` queue slows a finite source down). An error here means
    /// the description cannot be built at all: retrying cannot help.
    pub fn open(
        source: &SourceConfig,
        formats: &[PixelFormat],
        identity: Arc<FrameIdentity>,
        deliver: impl Fn(Frame) + Send + Sync + 'static,
    ) -> Result<Self, MediaError> {
        registry::init()?;
        let what = format!("source {source}");
        let decoders = Decoders::of_this_machine();
        let text = description(source, formats, decoders)?;
        let pipeline = registry::launch(&text, &what)?;
        if let Some(max_size) = source.max_size {
            limit_size(&pipeline, max_size, &what)?;
        }
        let appsink = registry::named::<gst_app::AppSink>(&pipeline, APPSINK, &what)?;
        let reached_ns = Arc::new(AtomicU64::new(0));
        let reached = reached_ns.clone();
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let (frame, end) = take_frame(sink, &identity)?;
                    if let Some(end) = end {
                        reached.fetch_max(end.nseconds(), Ordering::Relaxed);
                    }
                    deliver(frame);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let bus = pipeline.bus().ok_or_else(|| MediaError::Element {
            what: what.clone(),
            element: "bus".into(),
        })?;
        Ok(Self {
            pipeline,
            bus,
            what,
            is_file: matches!(&source.kind, SourceKind::Uri(uri) if uri.starts_with("file://")),
            reached_ns,
        })
    }

    /// How far the source got against the length it announced; `None` when it announced
    /// none (live sources). Asked at its end, before the session is dropped.
    pub fn progress(&self) -> Option<Progress> {
        let length = self.pipeline.query_duration::<gst::ClockTime>()?;
        Some(Progress {
            reached: Duration::from_nanos(self.reached_ns.load(Ordering::Relaxed)),
            length: Duration::from_nanos(length.nseconds()),
        })
    }

    pub fn play(&self) -> Result<(), MediaError> {
        self.pipeline
            .set_state(gst::State::Playing)
            .map(|_| ())
            .map_err(|_| MediaError::Start {
                what: self.what.clone(),
                cause: bus::take_error(&self.pipeline),
            })
    }

    /// The next event, waiting at most `wait`.
    pub fn next_event(&self, wait: Duration) -> Option<SourceEvent> {
        let message = self.bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(wait.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )?;
        match message.view() {
            gst::MessageView::Eos(_) => Some(SourceEvent::Ended),
            gst::MessageView::Error(error) => {
                let mut failure = BusError::from_message(error);
                if is_not_media(&error.error()) {
                    let what = if self.is_file { "file" } else { "stream" };
                    failure.message = format!("not a video {what} ({})", failure.message);
                }
                Some(SourceEvent::Failed(failure))
            }
            _ => None,
        }
    }

    /// Seeks back to the start (`loop: true`); frames keep their increasing timestamps.
    pub fn rewind(&self) -> Result<(), MediaError> {
        self.pipeline
            .seek_simple(
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                gst::ClockTime::ZERO,
            )
            .map_err(|error| MediaError::Build {
                what: format!("a rewind of {}", self.what),
                reason: error.to_string(),
            })
    }

    /// Shutdown: lets what the source has produced flow out (EOS), within `grace`.
    pub fn drain(&self, grace: Duration) -> Result<(), MediaError> {
        let deadline = Instant::now() + grace;
        // Let a state change still in progress (the source starting, its first frame
        // prerolling) settle first: `send_event` holds the pipeline's state lock while the
        // source takes its live lock, which the streaming thread holds while it waits for
        // preroll to end, which needs that same state lock: a deadlock no grace period ends.
        let _ = self
            .pipeline
            .state(gst::ClockTime::from_nseconds(grace.as_nanos() as u64));
        self.pipeline.send_event(gst::event::Eos::new());
        bus::wait_for_eos(
            &self.pipeline,
            deadline.saturating_duration_since(Instant::now()),
        )
    }
}

impl Drop for SourceSession {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Whether GStreamer's error says the data is not something it can decode as video (random
/// bytes, a text file, audio only), rather than that something broke.
fn is_not_media(error: &gst::glib::Error) -> bool {
    error.matches(gst::CoreError::MissingPlugin)
        || error.matches(gst::StreamError::TypeNotFound)
        || error.matches(gst::StreamError::WrongType)
        || error.matches(gst::StreamError::CodecNotFound)
}

/// The frame in an appsink sample, stamped with its pipeline identity, and where it ends in
/// running time.
fn take_frame(
    sink: &gst_app::AppSink,
    identity: &FrameIdentity,
) -> Result<(Frame, Option<gst::ClockTime>), gst::FlowError> {
    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
    let captured = Instant::now();
    let (Some(buffer), Some(caps)) = (sample.buffer_owned(), sample.caps()) else {
        return Err(gst::FlowError::Error);
    };
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|_| {
        gst::element_error!(
            sink,
            gst::StreamError::Format,
            ("appsink received caps that are not raw video: {caps}")
        );
        gst::FlowError::NotNegotiated
    })?;
    // A decoder may lay its planes out its own way (video meta) rather than as the caps say.
    let meta = buffer.meta::<gst_video::VideoMeta>();
    let layout = FrameLayout::from_info(&info, meta.as_ref().map(|m| (m.offset(), m.stride())))
        .ok_or_else(|| {
            gst::element_error!(
                sink,
                gst::StreamError::Format,
                ("appsink received frames in a format the frame path does not carry: {caps}")
            );
            gst::FlowError::NotNegotiated
        })?;
    // Running time, not the raw buffer PTS: segments (concat, seeks, a loop rewinding)
    // restart PTS while running time keeps increasing.
    let running = buffer.pts().map(|pts| {
        sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>())
            .and_then(|s| s.to_running_time(pts))
            .unwrap_or(pts)
    });
    let end = running.map(|r| r + buffer.duration().unwrap_or(gst::ClockTime::ZERO));
    let stamp = running.map(|running| identity.stamp(running, buffer.duration()));
    let frame = Frame {
        pipeline: identity.pipeline(),
        seq: identity.next_seq(),
        pts: stamp.map(|s| s.pts),
        duration: buffer.duration(),
        captured,
        resumed: stamp.is_some_and(|s| s.resumed),
        width: info.width(),
        height: info.height(),
        fps: info.fps(),
        layout,
        pixels: Pixels::Host(buffer),
    };
    Ok((frame, end))
}

/// Which hardware decoders GStreamer will pick on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decoders {
    /// GStreamer's `nvcodec` plugin registered its elements (an NVIDIA GPU and driver are
    /// present): its NVDEC decoders win `decodebin`'s choice and output CUDA memory.
    pub nvdec: bool,
}

impl Decoders {
    pub fn of_this_machine() -> Self {
        Self {
            nvdec: gst::ElementFactory::find("cudadownload").is_some(),
        }
    }

    /// What follows `decodebin` / `uridecodebin`: NVDEC's CUDA memory copied to system memory
    /// (a software decoder's frames pass `cudadownload` untouched).
    fn after_decodebin(self) -> &'static str {
        if self.nvdec { " ! cudadownload" } else { "" }
    }

    /// `uridecodebin`'s caps: what counts as decoded. With NVDEC, its CUDA memory too (else
    /// `uridecodebin` finds no element for it and fails with "missing a plug-in").
    fn raw_caps(self) -> &'static str {
        if self.nvdec {
            "\"video/x-raw;video/x-raw(memory:CUDAMemory)\""
        } else {
            "video/x-raw"
        }
    }
}

/// The gst-launch text of the decoding part (everything before the common tail).
fn head(source: &SourceConfig, decoders: Decoders) -> Result<String, MediaError> {
    Ok(match &source.kind {
        SourceKind::Test(test) => {
            let live = test.frames.is_none();
            let count = test
                .frames
                .map(|n| format!(" num-buffers={n}"))
                .unwrap_or_default();
            format!(
                "videotestsrc pattern={} is-live={live}{count} ! video/x-raw,width={},height={},framerate={}/1",
                test.pattern.gst_name(),
                test.width,
                test.height,
                test.fps
            )
        }
        SourceKind::V4l2(v4l2) => {
            let mut fields = String::new();
            for (name, value) in [
                ("width", v4l2.width),
                ("height", v4l2.height),
                ("framerate", v4l2.fps),
            ] {
                if let Some(value) = value {
                    let rate = if name == "framerate" { "/1" } else { "" };
                    fields.push_str(&format!(",{name}={value}{rate}"));
                }
            }
            let device = quote(&v4l2.device.display().to_string());
            match v4l2.format {
                Some(V4l2Format::Mjpeg) => {
                    format!("v4l2src device={device} ! image/jpeg{fields} ! jpegdec")
                }
                Some(V4l2Format::Raw) => format!("v4l2src device={device} ! video/x-raw{fields}"),
                None if fields.is_empty() => format!(
                    "v4l2src device={device} ! decodebin{}",
                    decoders.after_decodebin()
                ),
                None => format!(
                    "v4l2src device={device} ! capsfilter caps=\"ANY{fields}\" ! decodebin{}",
                    decoders.after_decodebin()
                ),
            }
        }
        SourceKind::Launch(launch) => launch.clone(),
        SourceKind::Uri(uri) if source.kind.is_rtsp() => {
            let mut text = format!(
                "rtspsrc name=visiond_rtspsrc location={} protocols={} latency={}",
                quote(uri),
                source.rtsp.transport.gst_name(),
                source.rtsp.latency_ms
            );
            if let Some(credentials) = &source.credentials {
                let password =
                    secret(&credentials.password_env, "source.credentials.password_env")?;
                text.push_str(&format!(
                    " user-id={} user-pw={}",
                    quote(&credentials.username),
                    quote(&password)
                ));
            }
            text.push_str(" visiond_rtspsrc. ! application/x-rtp,media=video ! decodebin");
            text.push_str(decoders.after_decodebin());
            text
        }
        SourceKind::Uri(uri) => format!(
            "uridecodebin uri={} caps={}{}",
            quote(uri),
            decoders.raw_caps(),
            decoders.after_decodebin()
        ),
    })
}

/// The full gst-launch description: decode, optional rate cap and downscale, an appsink taking
/// `formats` (a decoder's own format passes `videoconvert` untouched when it is one of them).
/// Holds credentials when the source has them: never log it.
pub fn description(
    source: &SourceConfig,
    formats: &[PixelFormat],
    decoders: Decoders,
) -> Result<String, MediaError> {
    let mut text = head(source, decoders)?;
    text.push_str(" ! videoconvert");
    if let Some(fps) = source.fps {
        let rate = gst::Fraction::approximate_f64(fps).ok_or_else(|| MediaError::Build {
            what: format!("source {source}"),
            reason: format!("source.fps {fps} is not a usable frame rate"),
        })?;
        // drop-only: a camera slower than the cap is not padded with duplicated frames.
        text.push_str(&format!(
            " ! videorate drop-only=true ! video/x-raw,framerate={}/{}",
            rate.numer(),
            rate.denom()
        ));
    }
    if source.max_size.is_some() {
        text.push_str(&format!(
            " ! videoscale name={MAX_SIZE_SCALER} ! capsfilter name={MAX_SIZE_FILTER}"
        ));
    }
    let formats = match formats {
        [] => "RGB".to_string(),
        [one] => one.caps_name().to_string(),
        many => format!(
            "{{{}}}",
            many.iter()
                .map(|f| f.caps_name())
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    text.push_str(&format!(
        " ! videoconvert ! capsfilter caps=\"video/x-raw,format={formats}\" ! appsink name={APPSINK} sync=false max-buffers=2 drop=false enable-last-sample=false"
    ));
    Ok(text)
}

/// Keeps the longest side at most `max_size`, following the source's size as it changes:
/// the caps filter is rewritten whenever new caps reach the scaler.
fn limit_size(pipeline: &gst::Pipeline, max_size: u32, what: &str) -> Result<(), MediaError> {
    let filter = registry::named::<gst::Element>(pipeline, MAX_SIZE_FILTER, what)?;
    let pad = registry::named::<gst::Element>(pipeline, MAX_SIZE_SCALER, what)?
        .static_pad("sink")
        .ok_or_else(|| MediaError::Element {
            what: what.to_string(),
            element: format!("{MAX_SIZE_SCALER} sink pad"),
        })?;
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(event)) = &info.data
            && let gst::EventView::Caps(caps) = event.view()
            && let Ok(video) = gst_video::VideoInfo::from_caps(caps.caps())
        {
            let (width, height) = fit(video.width(), video.height(), max_size);
            let caps = gst::Caps::builder("video/x-raw")
                .field("width", width as i32)
                .field("height", height as i32)
                .build();
            filter.set_property("caps", &caps);
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// The size with the longest side at most `max_size`, aspect kept, even dimensions (many
/// encoders need them).
pub fn fit(width: u32, height: u32, max_size: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= max_size {
        return (width, height);
    }
    let scale = f64::from(max_size) / f64::from(longest);
    // Rounding down keeps the longest side within max_size.
    let even = |v: u32| ((f64::from(v) * scale / 2.0).floor() as u32 * 2).max(2);
    (even(width), even(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_source() -> SourceConfig {
        SourceConfig {
            kind: SourceKind::Uri("file:///clips/door.mp4".into()),
            ..SourceConfig::placeholder()
        }
    }

    #[test]
    fn nvdec_output_is_accepted_and_downloaded_where_nvcodec_is_present() {
        let formats = [PixelFormat::I420, PixelFormat::Nv12, PixelFormat::Rgb];
        let plain = description(&file_source(), &formats, Decoders { nvdec: false }).unwrap();
        assert!(
            plain.starts_with(
                "uridecodebin uri=\"file:///clips/door.mp4\" caps=video/x-raw ! videoconvert"
            ),
            "{plain}"
        );
        assert!(!plain.contains("cuda"), "{plain}");
        let nvdec = description(&file_source(), &formats, Decoders { nvdec: true }).unwrap();
        assert!(
            nvdec.contains(
                "caps=\"video/x-raw;video/x-raw(memory:CUDAMemory)\" ! cudadownload ! videoconvert"
            ),
            "{nvdec}"
        );
        let rtsp = SourceConfig {
            kind: SourceKind::Uri("rtsp://camera/stream".into()),
            ..SourceConfig::placeholder()
        };
        let text = description(&rtsp, &formats, Decoders { nvdec: true }).unwrap();
        assert!(
            text.contains("! decodebin ! cudadownload ! videoconvert"),
            "{text}"
        );
        // Test patterns never meet a decoder.
        let test = description(
            &SourceConfig::placeholder(),
            &formats,
            Decoders { nvdec: true },
        )
        .unwrap();
        assert!(!test.contains("cuda"), "{test}");
    }

    #[test]
    fn the_appsink_takes_the_consumers_formats() {
        let text = description(
            &file_source(),
            &[PixelFormat::I420, PixelFormat::Nv12],
            Decoders::default(),
        )
        .unwrap();
        assert!(
            text.contains("capsfilter caps=\"video/x-raw,format={I420,NV12}\" ! appsink"),
            "{text}"
        );
        let text = description(&file_source(), &[PixelFormat::Rgb], Decoders::default()).unwrap();
        assert!(
            text.contains("caps=\"video/x-raw,format=RGB\" ! appsink"),
            "{text}"
        );
        // Every such description parses.
        gst::init().unwrap();
        gst::parse::launch(&text.replace(
            "uridecodebin uri=\"file:///clips/door.mp4\" caps=video/x-raw",
            "videotestsrc",
        ))
        .unwrap();
    }

    #[test]
    fn fit_keeps_aspect_and_even_sizes() {
        assert_eq!(fit(1920, 1080, 640), (640, 360));
        assert_eq!(fit(640, 480, 1280), (640, 480));
        assert_eq!(fit(1080, 1920, 641), (360, 640));
    }
}
