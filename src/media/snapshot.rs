//! The latest published frame of a pipeline, as a JPEG for the status page: captured at the
//! encoder's input only while someone is looking (so an unwatched pipeline pays nothing), and
//! encoded only when asked, at most a few times a second.
//!
//! The work a request can cause is bounded per pipeline: one snapshot is made at a time (one
//! blocking thread at most, for the encoding; waiting for a frame holds none), the requests
//! that come meanwhile wait for its result and share it, and beyond [`MAX_WAITING`] of them
//! the others are refused at once ([`Snapshot::Busy`]) and counted. A snapshot carries when
//! its frame was captured, so that a stale picture (a stalled camera) says how old it is.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::Semaphore;

use super::{MediaError, bus, registry};

/// How long after a request frames keep being captured: the status page asks every two
/// seconds, so a watched pipeline has its latest frame ready.
const WATCH: Duration = Duration::from_secs(5);

/// An encoded snapshot is served again for this long instead of encoding another.
const REUSE: Duration = Duration::from_millis(300);

/// Longest a snapshot may take to encode.
const ENCODE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many requests may wait for the snapshot being made; more are refused at once.
pub const MAX_WAITING: usize = 16;

/// How often a request waiting for a first frame looks for it.
const FRAME_POLL: Duration = Duration::from_millis(20);

/// A frame as the encoder's input saw it, and when.
#[derive(Clone)]
struct Captured {
    sample: gst::Sample,
    at: Instant,
    wall: SystemTime,
}

/// A snapshot as JPEG, with the moment its frame was captured at the encoder's input.
#[derive(Debug, Clone)]
pub struct Jpeg {
    pub bytes: Arc<[u8]>,
    pub captured: Instant,
    /// The same moment on the wall clock (for `Last-Modified`).
    pub captured_wall: SystemTime,
}

impl Jpeg {
    /// How old its frame is now.
    pub fn age(&self) -> Duration {
        self.captured.elapsed()
    }
}

/// What a snapshot request gets.
#[derive(Debug, Clone)]
pub enum Snapshot {
    Jpeg(Jpeg),
    /// No frame came within the wait.
    NoFrame,
    /// Too many requests are already waiting for this pipeline's snapshot.
    Busy,
    /// The frame could not be encoded.
    Failed(String),
}

/// A pipeline's latest frame, shared between its output thread (which captures) and the
/// control plane (which asks).
pub struct LatestFrame {
    epoch: Instant,
    /// Capture frames until this many milliseconds after `epoch`.
    watched_until_ms: AtomicU64,
    frame: Mutex<Option<Captured>>,
    /// One snapshot is made at a time; the permit stays with the encoding even when the
    /// request that started it goes away.
    maker: Arc<Semaphore>,
    /// Requests waiting for `maker`.
    waiting: AtomicUsize,
    /// Requests refused because [`MAX_WAITING`] were already waiting.
    refused: AtomicU64,
    /// The last snapshot made, and when: the answer for every request that was waiting then.
    last: Mutex<Option<(Instant, Snapshot)>>,
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
            maker: Arc::new(Semaphore::new(1)),
            waiting: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }
}

/// Counts a request among the waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
            *frame = Some(Captured {
                sample,
                at: Instant::now(),
                wall: SystemTime::now(),
            });
        }
    }

    /// Installs the capture on `pad` (the encoder's input).
    pub fn watch_pad(self: &Arc<Self>, pad: &gst::Pad) {
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

    /// Requests refused so far because too many were waiting.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The latest frame as a JPEG, starting the capture if nobody was looking; then a new
    /// frame is waited for, up to `wait`, and only when none comes is the one kept from the
    /// last time served (its age tells how old it is).
    pub async fn snapshot(&self, wait: Duration) -> Snapshot {
        let asked = Instant::now();
        let was_watched = self.watched();
        let until = (self.epoch.elapsed() + WATCH).as_millis() as u64;
        self.watched_until_ms.store(until, Ordering::Relaxed);
        if let Some(jpeg) = self.made_since(asked.checked_sub(REUSE).unwrap_or(asked)) {
            return jpeg;
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Snapshot::Busy;
        }
        let waiting = Waiting(&self.waiting);
        let Ok(permit) = self.maker.clone().acquire_owned().await else {
            return Snapshot::Failed("the snapshot maker is closed".into());
        };
        drop(waiting);
        // Whatever was made while this request waited is its answer too.
        if let Some(made) = self.made_since(asked) {
            return made;
        }
        let newer_than = if was_watched { None } else { Some(asked) };
        let Some(frame) = self.frame_within(wait, newer_than).await else {
            return self.made(Snapshot::NoFrame);
        };
        // Encoding is GStreamer work: off the control plane's runtime threads, holding the
        // permit until it is done.
        let encoded = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            encode_jpeg(&frame.sample).map(|bytes| Jpeg {
                bytes: bytes.into(),
                captured: frame.at,
                captured_wall: frame.wall,
            })
        })
        .await;
        self.made(match encoded {
            Ok(Ok(jpeg)) => Snapshot::Jpeg(jpeg),
            Ok(Err(error)) => Snapshot::Failed(error.to_string()),
            Err(error) => Snapshot::Failed(error.to_string()),
        })
    }

    /// A snapshot made at or after `since`: a JPEG, or another answer (no frame, an error)
    /// given to a request that was already waiting.
    fn made_since(&self, since: Instant) -> Option<Snapshot> {
        let last = self.last.lock().ok()?;
        let (at, snapshot) = last.as_ref()?;
        (*at >= since).then(|| snapshot.clone())
    }

    /// Keeps `snapshot` for the requests waiting, and returns it.
    fn made(&self, snapshot: Snapshot) -> Snapshot {
        if let Ok(mut last) = self.last.lock() {
            *last = Some((Instant::now(), snapshot.clone()));
        }
        snapshot
    }

    /// The frame held, once it is newer than `newer_than` (when given); waits up to `wait`
    /// for one, then takes whatever is held.
    async fn frame_within(&self, wait: Duration, newer_than: Option<Instant>) -> Option<Captured> {
        let deadline = Instant::now() + wait;
        loop {
            let frame = self.frame.lock().ok().and_then(|frame| frame.clone());
            let fresh = frame
                .as_ref()
                .is_some_and(|f| newer_than.is_none_or(|t| f.at >= t));
            if fresh || Instant::now() >= deadline {
                return frame;
            }
            tokio::time::sleep(FRAME_POLL).await;
        }
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
