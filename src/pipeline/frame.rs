//! A video frame on its way through a pipeline, and what comes out of the model for it.

use std::time::Instant;

use gstreamer as gst;

/// One decoded RGB frame with the identity it keeps end to end.
#[derive(Debug, Clone)]
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
    /// Packed RGB rows of `stride` bytes (GStreamer pads rows to 4 bytes).
    pub buffer: gst::Buffer,
    pub stride: usize,
}

/// RGB rows of `stride` bytes (GStreamer pads rows to 4 bytes) as tightly packed RGB,
/// `height * width * 3` bytes.
pub fn pack_rgb_rows(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, String> {
    let row = width as usize * 3;
    let rows = height as usize;
    if stride < row || data.len() < stride * rows.saturating_sub(1) + row {
        return Err(format!(
            "frame buffer of {} bytes (stride {stride}) is too small for {width}x{height} RGB",
            data.len(),
        ));
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
    pub annotated: Option<RgbImage>,
    /// Per-frame model results for the metadata line (depth stats, top-k, histogram).
    pub results: Option<serde_json::Value>,
    /// Text drawn onto the video (classification label and score).
    pub label: Option<String>,
    /// The depth map as 16-bit samples at frame size, for `depth16` sinks.
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
        }
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
}
