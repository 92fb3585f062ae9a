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

/// Keeps a pipeline's timestamps increasing for its whole life. A rebuilt source (reconnect)
/// or a rewound one (`loop`) starts its running time again at 0; frames after such a restart
/// continue one frame after the last timestamp instead, so recordings, encoders and metadata
/// readers see one continuous stream.
#[derive(Debug, Default)]
pub struct PtsContinuity {
    offset: gst::ClockTime,
    last: Option<gst::ClockTime>,
}

impl PtsContinuity {
    pub fn next(
        &mut self,
        pts: gst::ClockTime,
        duration: Option<gst::ClockTime>,
    ) -> gst::ClockTime {
        let mut out = pts + self.offset;
        if let Some(last) = self.last
            && out <= last
        {
            let step = duration
                .filter(|d| !d.is_zero())
                .unwrap_or(gst::ClockTime::from_mseconds(1));
            self.offset = last + step - pts;
            out = last + step;
        }
        self.last = Some(out);
        out
    }
}

/// Gives one pipeline's frames their identity for the pipeline's whole life, across every
/// source session (reconnects, loops): its index, a sequence number counting from 0, and
/// timestamps that keep increasing.
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

    /// The timestamp of a frame at `running` time, continuing after the previous session's.
    pub fn pts(&self, running: gst::ClockTime, duration: Option<gst::ClockTime>) -> gst::ClockTime {
        match self.continuity.lock() {
            Ok(mut continuity) => continuity.next(running, duration),
            Err(_) => running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_continue_after_the_last_timestamp() {
        let ms = gst::ClockTime::from_mseconds;
        let mut pts = PtsContinuity::default();
        let got: Vec<u64> = [0, 40, 80, 0, 40, 20]
            .into_iter()
            .map(|t| pts.next(ms(t), Some(ms(40))).mseconds())
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
}
