//! Still images through GStreamer, for `visiond infer --image/--overlay`: a PNG or JPEG decoded
//! to packed RGB the way a source decodes video (`decodebin ! videoconvert ! RGB appsink`), and an
//! RGB frame encoded to PNG the way the output bin converts it (the classification label drawn
//! by `textoverlay` with the output's style).

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::output::{LABEL_STYLE, rgb_buffer};
use crate::frames::{RgbImage, pack_rgb_rows};

/// Longest a still image may take to decode or encode.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a still image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StillError {
    /// The file is not a picture GStreamer can decode (the file's fault).
    #[error("{0}")]
    Undecodable(String),
    /// GStreamer itself failed (missing plugins, a write error).
    #[error("{0}")]
    Failed(String),
}

/// The text of the first error on the pipeline's bus, without GStreamer's debug string (which
/// names source files and functions, not the picture).
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(error) = message.view() {
            return Some(error.error().to_string());
        }
    }
    None
}

fn launch(description: &str) -> Result<gst::Pipeline, StillError> {
    super::registry::init().map_err(|e| StillError::Failed(e.to_string()))?;
    gst::parse::launch(description)
        .map_err(|e| StillError::Failed(format!("GStreamer cannot build `{description}`: {e}")))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| StillError::Failed("GStreamer did not build a pipeline".into()))
}

fn element(pipeline: &gst::Pipeline, name: &str) -> Result<gst::Element, StillError> {
    pipeline
        .by_name(name)
        .ok_or_else(|| StillError::Failed(format!("the pipeline has no element {name}")))
}

/// Decodes the first picture of `path` (PNG, JPEG, anything `decodebin` takes) to uint8 RGB.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, StillError> {
    let pipeline = launch(
        "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=RGB \
         ! appsink name=sink sync=false max-buffers=1",
    )?;
    element(&pipeline, "src")?.set_property("location", path);
    let sink = element(&pipeline, "sink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| StillError::Failed("sink is not an appsink".into()))?;
    let result = pull_first(&pipeline, &sink);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn pull_first(pipeline: &gst::Pipeline, sink: &gst_app::AppSink) -> Result<RgbImage, StillError> {
    let undecodable = |pipeline: &gst::Pipeline, fallback: &str| {
        StillError::Undecodable(bus_error(pipeline).unwrap_or_else(|| fallback.to_string()))
    };
    if pipeline.set_state(gst::State::Playing).is_err() {
        return Err(undecodable(pipeline, "the decoder did not start"));
    }
    // An error (not a picture at all) ends nothing on the appsink: watch the bus between waits.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let sample = loop {
        if let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(20)) {
            break sample;
        }
        if let Some(error) = bus_error(pipeline) {
            return Err(StillError::Undecodable(error));
        }
        if sink.is_eos() {
            return Err(undecodable(pipeline, "no picture in it"));
        }
        if std::time::Instant::now() > deadline {
            return Err(StillError::Failed(format!(
                "no picture decoded within {} s",
                TIMEOUT.as_secs()
            )));
        }
    };
    let caps = sample
        .caps()
        .ok_or_else(|| StillError::Failed("decoded picture without caps".into()))?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|_| {
        StillError::Failed(format!("decoded to caps that are not raw video: {caps}"))
    })?;
    let buffer = sample
        .buffer()
        .ok_or_else(|| StillError::Failed("decoded picture without a buffer".into()))?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|_| StillError::Failed("the decoded picture cannot be mapped".into()))?;
    let plane = frame
        .plane_data(0)
        .map_err(|e| StillError::Failed(format!("the decoded picture: {e}")))?;
    let stride = usize::try_from(frame.plane_stride()[0])
        .map_err(|_| StillError::Failed("negative row stride".into()))?;
    let (width, height) = (info.width(), info.height());
    let data = pack_rgb_rows(plane, width, height, stride)
        .map_err(|e| StillError::Failed(e.to_string()))?;
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// Writes `image` as a PNG, with `label` drawn as the output bin draws a classification label.
pub fn encode_png(image: &RgbImage, path: &Path, label: Option<&str>) -> Result<(), StillError> {
    let overlay = if label.is_some() {
        format!(" ! textoverlay name=label {LABEL_STYLE} ! videoconvert")
    } else {
        String::new()
    };
    let pipeline = launch(&format!(
        "appsrc name=src format=time ! videoconvert{overlay} ! pngenc ! filesink name=sink"
    ))?;
    element(&pipeline, "sink")?.set_property("location", path);
    if let Some(text) = label {
        element(&pipeline, "label")?.set_property("text", text);
    }
    let appsrc = element(&pipeline, "src")?
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| StillError::Failed("src is not an appsrc".into()))?;
    let result = push_one(&pipeline, &appsrc, image);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn push_one(
    pipeline: &gst::Pipeline,
    appsrc: &gst_app::AppSrc,
    image: &RgbImage,
) -> Result<(), StillError> {
    let (width, height) = (image.width, image.height);
    if image.data.len() != width as usize * height as usize * 3 {
        return Err(StillError::Failed(format!(
            "{} bytes are not a {width}x{height} RGB picture",
            image.data.len()
        )));
    }
    let caps = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, width, height)
        .build()
        .and_then(|info| info.to_caps())
        .map_err(|e| {
            StillError::Failed(format!("cannot describe a {width}x{height} picture: {e}"))
        })?;
    appsrc.set_caps(Some(&caps));
    if pipeline.set_state(gst::State::Playing).is_err() {
        return Err(StillError::Failed(format!(
            "the PNG encoder did not start{}",
            bus_error(pipeline)
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )));
    }
    let mut buffer = rgb_buffer(image.data.clone(), width, height);
    {
        let buffer = buffer.make_mut();
        buffer.set_pts(gst::ClockTime::ZERO);
        buffer.set_duration(gst::ClockTime::from_seconds(1));
    }
    appsrc
        .push_buffer(buffer)
        .map_err(|e| StillError::Failed(format!("the PNG encoder refused the picture: {e:?}")))?;
    let _ = appsrc.end_of_stream();
    super::bus::wait_for_eos(pipeline, TIMEOUT).map_err(|e| StillError::Failed(e.to_string()))
}
