//! Builds a pipeline's source: whatever the config names, decoded to RGB into an appsink.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use crate::config::{RtspTransport, SourceConfig, V4l2Format};
use crate::pipeline::frame::{Frame, PtsContinuity};

/// Name of the appsink every source description ends in.
const APPSINK: &str = "visiond_appsink";
const MAX_SIZE_FILTER: &str = "visiond_max_size";
const MAX_SIZE_SCALER: &str = "visiond_scale";

/// Text for messages: the URI with any password replaced, so credentials never reach a log.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => uri.to_string(),
    }
}

/// A short description of the source for logs and the control plane (no credentials).
pub fn describe(source: &SourceConfig) -> String {
    if let Some(uri) = &source.uri {
        redact_uri(uri)
    } else if let Some(v4l2) = &source.v4l2 {
        format!("v4l2 {}", v4l2.device.display())
    } else if let Some(test) = &source.test {
        format!("test {}x{}@{}", test.width, test.height, test.fps)
    } else if let Some(launch) = &source.launch {
        format!("launch '{launch}'")
    } else {
        "no source".to_string()
    }
}

/// The gst-launch text of the decoding part (everything before the common RGB tail).
fn head(source: &SourceConfig) -> Result<String, String> {
    if let Some(test) = &source.test {
        let live = test.frames.is_none();
        let count = test
            .frames
            .map(|n| format!(" num-buffers={n}"))
            .unwrap_or_default();
        return Ok(format!(
            "videotestsrc pattern={} is-live={live}{count} ! video/x-raw,width={},height={},framerate={}/1",
            test.pattern.gst_name(),
            test.width,
            test.height,
            test.fps
        ));
    }
    if let Some(v4l2) = &source.v4l2 {
        let mut caps = Vec::new();
        if let Some(width) = v4l2.width {
            caps.push(format!("width={width}"));
        }
        if let Some(height) = v4l2.height {
            caps.push(format!("height={height}"));
        }
        if let Some(fps) = v4l2.fps {
            caps.push(format!("framerate={fps}/1"));
        }
        let fields: String = caps.iter().map(|c| format!(",{c}")).collect();
        let device = quote(&v4l2.device.display().to_string());
        return Ok(match v4l2.format {
            Some(V4l2Format::Mjpeg) => {
                format!("v4l2src device={device} ! image/jpeg{fields} ! jpegdec")
            }
            Some(V4l2Format::Raw) => format!("v4l2src device={device} ! video/x-raw{fields}"),
            None if caps.is_empty() => format!("v4l2src device={device} ! decodebin"),
            None => {
                format!("v4l2src device={device} ! capsfilter caps=\"ANY{fields}\" ! decodebin")
            }
        });
    }
    if let Some(launch) = &source.launch {
        return Ok(launch.clone());
    }
    if let Some(uri) = &source.uri {
        if uri.starts_with("rtsp://") || uri.starts_with("rtsps://") {
            let protocols = match source.rtsp.transport {
                RtspTransport::Tcp => "tcp",
                RtspTransport::Udp => "udp",
            };
            let mut text = format!(
                "rtspsrc name=visiond_rtspsrc location={} protocols={protocols} latency={}",
                quote(uri),
                source.rtsp.latency_ms
            );
            if let Some(credentials) = &source.credentials {
                let password = std::env::var(&credentials.password_env).map_err(|_| {
                    format!(
                        "environment variable {} (source.credentials.password_env) is not set",
                        credentials.password_env
                    )
                })?;
                text.push_str(&format!(
                    " user-id={} user-pw={}",
                    quote(&credentials.username),
                    quote(&password)
                ));
            }
            text.push_str(" visiond_rtspsrc. ! application/x-rtp,media=video ! decodebin");
            return Ok(text);
        }
        return Ok(format!("uridecodebin uri={} caps=video/x-raw", quote(uri)));
    }
    Err("the source names no kind".to_string())
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The full gst-launch description: decode, optional rate cap and downscale, RGB appsink.
/// Holds credentials when the source has them: never log it.
pub fn description(source: &SourceConfig) -> Result<String, String> {
    let mut text = head(source)?;
    text.push_str(" ! videoconvert");
    if let Some(fps) = source.fps {
        let rate = gst::Fraction::approximate_f64(fps)
            .ok_or_else(|| format!("source.fps {fps} is not a usable frame rate"))?;
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
    text.push_str(&format!(
        " ! videoconvert ! video/x-raw,format=RGB ! appsink name={APPSINK} sync=false max-buffers=2 drop=false enable-last-sample=false"
    ));
    Ok(text)
}

/// Builds the source pipeline and hands every frame to `deliver` (on GStreamer's streaming
/// thread; blocking there is how a `block` queue slows a finite source down).
pub fn build(
    source: &SourceConfig,
    pipeline_index: usize,
    next_seq: Arc<AtomicU64>,
    continuity: Arc<Mutex<PtsContinuity>>,
    deliver: impl Fn(Frame) + Send + Sync + 'static,
) -> Result<gst::Pipeline, String> {
    let text = description(source)?;
    let element = gst::parse::launch(&text)
        .map_err(|error| format!("cannot build source {}: {error}", describe(source)))?;
    let pipeline = element
        .downcast::<gst::Pipeline>()
        .map_err(|_| "the source description did not make a pipeline".to_string())?;
    if let Some(max_size) = source.max_size {
        limit_size(&pipeline, max_size)?;
    }
    let appsink = pipeline
        .by_name(APPSINK)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| "the source pipeline has no appsink".to_string())?;
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
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
                // Running time, not the raw buffer PTS: segments (concat, seeks, a loop
                // rewinding) restart PTS while running time keeps increasing.
                let pts = buffer.pts().map(|pts| {
                    let running = sample
                        .segment()
                        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                        .and_then(|s| s.to_running_time(pts))
                        .unwrap_or(pts);
                    match continuity.lock() {
                        Ok(mut continuity) => continuity.next(running, buffer.duration()),
                        Err(_) => running,
                    }
                });
                let frame = Frame {
                    pipeline: pipeline_index,
                    seq: next_seq.fetch_add(1, Ordering::Relaxed),
                    pts,
                    duration: buffer.duration(),
                    captured,
                    width: info.width(),
                    height: info.height(),
                    fps: info.fps(),
                    stride: info.stride()[0] as usize,
                    buffer,
                };
                deliver(frame);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(pipeline)
}

/// Keeps the longest side at most `max_size`, following the source's size as it changes:
/// the caps filter is rewritten whenever new caps reach the scaler.
fn limit_size(pipeline: &gst::Pipeline, max_size: u32) -> Result<(), String> {
    let scaler = pipeline
        .by_name(MAX_SIZE_SCALER)
        .ok_or("the source pipeline lost its scaler")?;
    let filter = pipeline
        .by_name(MAX_SIZE_FILTER)
        .ok_or("the source pipeline lost its size filter")?;
    let pad = scaler
        .static_pad("sink")
        .ok_or("the scaler has no sink pad")?;
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

    #[test]
    fn credentials_never_survive_redaction() {
        assert_eq!(
            redact_uri("rtsp://admin:s3cret@cam.local:554/stream"),
            "rtsp://admin:***@cam.local:554/stream"
        );
        assert_eq!(
            redact_uri("rtsp://cam.local/stream"),
            "rtsp://cam.local/stream"
        );
        assert_eq!(redact_uri("rtsp://a:b@c@host/x"), "rtsp://a:***@host/x");
    }

    #[test]
    fn fit_keeps_aspect_and_even_sizes() {
        assert_eq!(fit(1920, 1080, 640), (640, 360));
        assert_eq!(fit(640, 480, 1280), (640, 480));
        assert_eq!(fit(1080, 1920, 641), (360, 640));
    }
}
