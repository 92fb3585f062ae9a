//! The latest published frame of a pipeline, as a JPEG for the status page: captured at the
//! encoder's input only while someone is looking (so an unwatched pipeline pays nothing), and
//! encoded only when asked, at most a few times a second.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::{MediaError, bus, registry};

/// How long after a request frames keep being captured: the status page asks every two
/// seconds, so a watched pipeline has its latest frame ready.
const WATCH: Duration = Duration::from_secs(5);

/// An encoded snapshot is served again for this long instead of encoding another.
const REUSE: Duration = Duration::from_millis(300);

/// Longest a snapshot may take to encode.
const ENCODE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pipeline's latest frame, shared between its output thread (which captures) and the
/// control plane (which asks).
pub struct LatestFrame {
    epoch: Instant,
    /// Capture frames until this many milliseconds after `epoch`.
    watched_until_ms: AtomicU64,
    frame: Mutex<Option<gst::Sample>>,
    encoded: Mutex<Option<(Instant, Vec<u8>)>>,
}

impl std::fmt::Debug for LatestFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatestFrame")
            .field("watched", &self.watched())
            .finish_non_exhaustive()
    }
}

impl Default for LatestFrame {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            watched_until_ms: AtomicU64::new(0),
            frame: Mutex::new(None),
            encoded: Mutex::new(None),
        }
    }
}

impl LatestFrame {
    fn watched(&self) -> bool {
        self.epoch.elapsed().as_millis() as u64 <= self.watched_until_ms.load(Ordering::Relaxed)
    }

    /// Keeps `buffer` (a reference, not a copy) when someone is looking.
    pub fn offer(&self, buffer: &gst::Buffer, caps: &gst::Caps) {
        if !self.watched() {
            return;
        }
        let sample = gst::Sample::builder().buffer(buffer).caps(caps).build();
        if let Ok(mut frame) = self.frame.lock() {
            *frame = Some(sample);
        }
    }

    /// Installs the capture on `pad` (the encoder's input).
    pub fn watch_pad(self: &std::sync::Arc<Self>, pad: &gst::Pad) {
        let latest = self.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if latest.watched()
                && let Some(gst::PadProbeData::Buffer(buffer)) = &info.data
                && let Some(caps) = pad.current_caps()
            {
                latest.offer(buffer, &caps);
            }
            gst::PadProbeReturn::Ok
        });
    }

    /// The latest frame as a JPEG, starting the capture if nobody was looking (then the first
    /// frame may take up to `wait` to come). `None` when no frame came.
    pub fn jpeg(&self, wait: Duration) -> Result<Option<Vec<u8>>, MediaError> {
        let until = (self.epoch.elapsed() + WATCH).as_millis() as u64;
        self.watched_until_ms.store(until, Ordering::Relaxed);
        if let Ok(encoded) = self.encoded.lock()
            && let Some((at, jpeg)) = encoded.as_ref()
            && at.elapsed() < REUSE
        {
            return Ok(Some(jpeg.clone()));
        }
        let deadline = Instant::now() + wait;
        let sample = loop {
            let frame = self.frame.lock().ok().and_then(|frame| frame.clone());
            match frame {
                Some(sample) => break sample,
                None if Instant::now() >= deadline => return Ok(None),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let jpeg = encode_jpeg(&sample)?;
        if let Ok(mut encoded) = self.encoded.lock() {
            *encoded = Some((Instant::now(), jpeg.clone()));
        }
        Ok(Some(jpeg))
    }
}

/// One raw video frame (any format videoconvert takes) as a JPEG.
fn encode_jpeg(sample: &gst::Sample) -> Result<Vec<u8>, MediaError> {
    registry::init()?;
    let what = "a snapshot".to_string();
    let pipeline = registry::launch(
        "appsrc name=src format=time ! videoconvert ! jpegenc quality=85 ! appsink name=sink sync=false",
        &what,
    )?;
    let source = registry::named::<gst_app::AppSrc>(&pipeline, "src", &what)?;
    let sink = registry::named::<gst_app::AppSink>(&pipeline, "sink", &what)?;
    source.set_caps(sample.caps_owned().as_ref());
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| MediaError::Start {
            what: what.clone(),
            cause: bus::take_error(&pipeline),
        })?;
    let result = (|| {
        let buffer = sample
            .buffer_owned()
            .ok_or_else(|| MediaError::Frame("the snapshot has no buffer".into()))?;
        source
            .push_buffer(buffer)
            .map_err(|e| MediaError::Refused {
                what: what.clone(),
                reason: format!("{e:?}"),
            })?;
        let _ = source.end_of_stream();
        let timeout = gst::ClockTime::from_nseconds(ENCODE_TIMEOUT.as_nanos() as u64);
        let jpeg = sink
            .try_pull_sample(timeout)
            .and_then(|s| s.buffer_owned())
            .ok_or_else(|| {
                bus::take_error(&pipeline)
                    .map_or(MediaError::Timeout(ENCODE_TIMEOUT), MediaError::Bus)
            })?;
        let map = jpeg
            .map_readable()
            .map_err(|_| MediaError::Frame("the JPEG cannot be read".into()))?;
        Ok(map.to_vec())
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}
