//! A video frame on its way through a pipeline, and what comes out of the model for it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gstreamer as gst;

use super::pixels::{FrameLayout, Pixels, VideoImage};
use super::results::FrameResults;

/// One decoded frame with the identity it keeps end to end.
#[derive(Debug)]
pub struct Frame {
    /// Index of the pipeline in the running config.
    pub pipeline: usize,
    /// Counts from 0 per pipeline, across reconnects.
    pub seq: u64,
    pub pts: Option<gst::ClockTime>,
    pub duration: Option<gst::ClockTime>,
    /// When the appsink handed the frame over: latency is measured from here.
    pub captured: Instant,
    /// The first frame after the source was lost and came back (a reconnect): the stream has
    /// a hole before it as long as the outage, which its timestamp keeps (see
    /// [`PtsContinuity`]). Recordings start a new segment here.
    pub resumed: bool,
    pub width: u32,
    pub height: u32,
    /// The source's frame rate (0/1 when variable): encoders and muxers need it to give the
    /// last frame its duration.
    pub fps: gst::Fraction,
    /// Format, planes and colour of the pixels as the source made them.
    pub layout: FrameLayout,
    pub pixels: Pixels,
}

/// A frame buffer that cannot hold the picture its caps announce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame buffer of {len} bytes (stride {stride}) is too small for {width}x{height} RGB")]
pub struct FrameTooSmall {
    pub len: usize,
    pub stride: usize,
    pub width: u32,
    pub height: u32,
}

/// RGB rows of `stride` bytes (GStreamer pads rows to 4 bytes) as tightly packed RGB,
/// `height * width * 3` bytes.
pub fn pack_rgb_rows(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, FrameTooSmall> {
    // A u32 side times 3 fits a 64-bit usize (see `FrameLayout`); the stride, from the caps or
    // a decoder's meta, is checked: a size past usize is too small a buffer, never a wrap.
    let row = width as usize * 3;
    let rows = height as usize;
    let needed = stride
        .checked_mul(rows.saturating_sub(1))
        .and_then(|start| start.checked_add(row));
    if stride < row || needed.is_none_or(|needed| data.len() < needed) {
        return Err(FrameTooSmall {
            len: data.len(),
            stride,
            width,
            height,
        });
    }
    let mut packed = Vec::with_capacity(row * rows);
    if stride == row {
        packed.extend_from_slice(&data[..row * rows]);
    } else {
        for y in 0..rows {
            packed.extend_from_slice(&data[y * stride..y * stride + row]);
        }
    }
    Ok(packed)
}

/// Tightly packed RGB pixels made by post-processing (the annotated frame).
#[derive(Debug, Clone)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// What the output stage receives for each frame.
#[derive(Debug)]
pub struct Processed {
    pub frame: Frame,
    /// The picture to publish; `None` publishes the source frame unchanged (`model: none`).
    pub annotated: Option<VideoImage>,
    /// Per-frame model results for the metadata line (depth stats, top-k, histogram).
    pub results: Option<FrameResults>,
    /// Text drawn onto the video (classification label and score).
    pub label: Option<String>,
    /// The depth map as 16-bit samples at frame size, for `depth16` sinks.
    pub raw_depth: Option<Vec<u16>>,
    /// The model's result, still on its device: [`Processed::resolve`] copies it back.
    pub pending: Option<Box<dyn PendingResult>>,
}

/// A model's result for one frame, left on the model's device by the worker so that the copy
/// back to the host happens in the pipeline's output thread, not on the model's.
pub trait PendingResult: Send + std::fmt::Debug {
    /// Copies the result to the host (waiting for the device to finish it); the picture only
    /// when asked (a pipeline without video sinks has no use for it).
    fn download(self: Box<Self>, picture: bool) -> Result<Downloaded, String>;
}

/// A result copied back to the host.
#[derive(Debug)]
pub struct Downloaded {
    /// The picture to publish (annotated, or the frame itself for classification).
    pub picture: Option<VideoImage>,
    pub results: FrameResults,
    pub raw_depth: Option<Vec<u16>>,
}

impl Processed {
    pub fn passthrough(frame: Frame) -> Self {
        Self {
            frame,
            annotated: None,
            results: None,
            label: None,
            raw_depth: None,
            pending: None,
        }
    }

    /// A frame whose result is still on the model's device.
    pub fn pending(frame: Frame, pending: Box<dyn PendingResult>) -> Self {
        Self {
            pending: Some(pending),
            ..Self::passthrough(frame)
        }
    }

    /// Copies a pending result back to the host, in the calling thread (the output's); its
    /// picture only when `picture`.
    pub fn resolve(&mut self, picture: bool) -> Result<(), String> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let downloaded = pending.download(picture)?;
        self.annotated = downloaded.picture;
        self.label = downloaded.results.label();
        self.results = Some(downloaded.results);
        self.raw_depth = downloaded.raw_depth;
        Ok(())
    }
}

/// Keeps a pipeline's timestamps increasing for its whole life, on the wall clock's pace.
///
/// Every source session (a reconnect) starts its running time again at 0. Its first frame is
/// placed after the previous session's last one by the time that really passed between them
/// (measured on the monotonic clock), so an outage stays in the timestamps as a hole of its
/// length: a recording's time keeps mapping to the wall clock. Within a session a source that
/// rewinds (`loop`) starts its running time again too; such frames continue one frame after
/// the last timestamp, so encoders, recordings and metadata readers see one stream whose
/// timestamps only increase, never twice the same.
#[derive(Debug, Default)]
pub struct PtsContinuity {
    offset: gst::ClockTime,
    /// The last timestamp given, and when.
    last: Option<(gst::ClockTime, Instant)>,
    /// A new session began and has not delivered its first frame yet.
    session_began: bool,
}

/// A frame's place in its pipeline's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub pts: gst::ClockTime,
    /// The first frame after an outage (see [`Frame::resumed`]).
    pub resumed: bool,
}

impl PtsContinuity {
    /// A new source session begins: its running time starts again from 0.
    pub fn begin_session(&mut self) {
        self.session_began = true;
    }

    /// The timestamp of a frame at running time `pts`, handed over at `now`.
    pub fn next(
        &mut self,
        pts: gst::ClockTime,
        duration: Option<gst::ClockTime>,
        now: Instant,
    ) -> Stamp {
        let step = duration
            .filter(|d| !d.is_zero())
            .unwrap_or(gst::ClockTime::from_mseconds(1));
        let resumed = std::mem::take(&mut self.session_began) && self.last.is_some();
        let mut out = pts + self.offset;
        if let Some((last, at)) = self.last {
            if resumed {
                let passed = gst::ClockTime::from_nseconds(
                    u64::try_from(now.saturating_duration_since(at).as_nanos()).unwrap_or(u64::MAX),
                );
                let target = last + passed.max(step);
                self.offset = target.saturating_sub(pts);
                out = pts + self.offset;
            } else if out <= last {
                self.offset = last + step - pts;
                out = last + step;
            }
        }
        self.last = Some((out, now));
        Stamp { pts: out, resumed }
    }
}

/// Gives one pipeline's frames their identity for the pipeline's whole life, across every
/// source session (reconnects, loops): its index, a sequence number counting from 0, and
/// timestamps that keep increasing on the wall clock's pace.
#[derive(Debug)]
pub struct FrameIdentity {
    pipeline: usize,
    next_seq: AtomicU64,
    continuity: Mutex<PtsContinuity>,
}

impl FrameIdentity {
    pub fn new(pipeline: usize) -> Self {
        Self {
            pipeline,
            next_seq: AtomicU64::new(0),
            continuity: Mutex::new(PtsContinuity::default()),
        }
    }

    pub fn pipeline(&self) -> usize {
        self.pipeline
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Called by the supervisor before each source session: the first frame of a session
    /// after an earlier one is placed by the time that passed (see [`PtsContinuity`]).
    pub fn begin_session(&self) {
        if let Ok(mut continuity) = self.continuity.lock() {
            continuity.begin_session();
        }
    }

    /// The timestamp of a frame at `running` time, handed over now.
    pub fn stamp(&self, running: gst::ClockTime, duration: Option<gst::ClockTime>) -> Stamp {
        match self.continuity.lock() {
            Ok(mut continuity) => continuity.next(running, duration, Instant::now()),
            Err(_) => Stamp {
                pts: running,
                resumed: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rewinds_continue_one_frame_after_the_last_timestamp() {
        let ms = gst::ClockTime::from_mseconds;
        let now = Instant::now();
        let mut pts = PtsContinuity::default();
        let got: Vec<u64> = [0, 40, 80, 0, 40, 20]
            .into_iter()
            .map(|t| pts.next(ms(t), Some(ms(40)), now).pts.mseconds())
            .collect();
        assert_eq!(got, vec![0, 40, 80, 120, 160, 200]);
    }

    #[test]
    fn rgb_rows_whose_size_overflows_are_too_small_a_buffer_not_a_wrapped_size() {
        let data = [7u8; 64];
        // stride * (height - 1) wraps past usize: before, a debug build panicked and a release
        // build compared the buffer against the wrapped (small) number.
        let error = pack_rgb_rows(&data, 2, 3, usize::MAX / 2 + 1).unwrap_err();
        assert_eq!(
            error,
            FrameTooSmall {
                len: 64,
                stride: usize::MAX / 2 + 1,
                width: 2,
                height: 3,
            }
        );
        assert!(pack_rgb_rows(&data, u32::MAX, u32::MAX, u32::MAX as usize * 3).is_err());
        assert!(pack_rgb_rows(&data, 2, u32::MAX, usize::MAX).is_err());
        // Sizes that fit are packed as before: 2x3 RGB in rows of 8 bytes.
        let rows: Vec<u8> = (0..22).collect();
        assert_eq!(
            pack_rgb_rows(&rows, 2, 3, 8).unwrap(),
            [
                0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18, 19, 20, 21
            ]
        );
    }

    #[test]
    fn a_new_session_resumes_after_the_time_that_passed() {
        let ms = gst::ClockTime::from_mseconds;
        let start = Instant::now();
        let at = |t: u64| start + Duration::from_millis(t);
        let mut pts = PtsContinuity::default();
        let frame = |pts: &mut PtsContinuity, running: u64, now: u64| {
            let stamp = pts.next(ms(running), Some(ms(40)), at(now));
            (stamp.pts.mseconds(), stamp.resumed)
        };
        // The first session: nothing resumes, even though one began.
        pts.begin_session();
        assert_eq!(frame(&mut pts, 0, 0), (0, false));
        assert_eq!(frame(&mut pts, 40, 40), (40, false));
        // The camera is lost after 40 ms of running time and is back 5 s later; its new
        // session starts at running time 300 ms.
        pts.begin_session();
        assert_eq!(frame(&mut pts, 300, 5_040), (5_040, true));
        assert_eq!(frame(&mut pts, 340, 5_080), (5_080, false));
        // A session that reconnects at once is still after the last frame, by a frame.
        pts.begin_session();
        assert_eq!(frame(&mut pts, 0, 5_080), (5_120, true));
    }
}
