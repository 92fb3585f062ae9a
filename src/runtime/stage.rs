//! [`FrameStager`] on libtorch: a frame's bytes to the model's device, converted to RGB and put
//! through the image processor there, in the source's own streaming thread.
//!
//! On the CPU the tensors read GStreamer's memory in place: no copy at all. The mapped buffer
//! belongs to the tensors' storage ([`native::tensor_over_bytes`]), so it stays mapped exactly
//! as long as any tensor reads it, whoever holds that tensor. On CUDA the bytes are copied once
//! into page-locked memory (which frees GStreamer's buffer, often from a decoder's small pool,
//! at once), then to the device without blocking; where the model has side streams
//! ([`SideStreams`]) the copy and the kernels after it are queued on the source thread's own
//! side stream, and an event after them tells the model's stream (which waits for it on the
//! device, never the host) when the frame is ready.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gstreamer as gst;
use tch::{Device, Kind, Tensor};

use super::contract::{FrameFormats, FrameStager, StageCounters, StageError};
use super::native::{self, CudaEvent, SideStreams};
use crate::frames::{DevicePixels, Frame, FrameLayout, PixelFormat, Pixels};
use crate::processing::{Preprocessor, Yuv420};

/// A frame on the model's device, ready for a batch.
pub(super) struct StagedFrame {
    /// uint8 [H, W, 3] RGB on the device.
    pub rgb: Tensor,
    /// [1, 3, h, w] in the model's precision: the frame through the image processor.
    pub pixel_values: Tensor,
    /// The frame's bytes as the device holds them (on the CPU, GStreamer's mapped buffer,
    /// which this tensor's storage owns).
    pub input: Tensor,
    /// On CUDA: recorded on the side stream the frame was staged on, after its last kernel.
    /// The model's stream waits for it before reading the tensors above.
    pub ready: Option<CudaEvent>,
}

impl std::fmt::Debug for StagedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedFrame")
            .field("rgb", &self.rgb.size())
            .field("pixel_values", &self.pixel_values.size())
            .field("device", &self.rgb.device())
            .finish()
    }
}

impl DevicePixels for StagedFrame {
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The formats sources deliver to a model, and the one its annotated pictures go out in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FramePlan {
    pub inputs: Vec<PixelFormat>,
    pub picture: PixelFormat,
}

impl FramePlan {
    pub fn new(formats: FrameFormats, device: Device) -> Self {
        let native = match formats {
            FrameFormats::Native => true,
            FrameFormats::Rgb => false,
            // Measured (docs/performance.md, "The frame path"): on CUDA the device converts at
            // no cost to the host; on a CPU GStreamer's SIMD conversion beats libtorch's integer
            // ops.
            FrameFormats::Auto => device != Device::Cpu,
        };
        let inputs = if native {
            vec![PixelFormat::I420, PixelFormat::Nv12, PixelFormat::Rgb]
        } else {
            vec![PixelFormat::Rgb]
        };
        // The encoder takes I420. On CUDA the device makes it (half the bytes to copy back, no
        // CPU conversion); on a CPU the encoder chain's `videoconvert` makes the same bytes
        // faster than libtorch's integer ops (`make demo`: 47 -> 200 frames/s).
        let picture = if device == Device::Cpu {
            PixelFormat::Rgb
        } else {
            PixelFormat::I420
        };
        Self { inputs, picture }
    }
}

/// Stages frames for one model: its device, precision and image processor.
pub struct TorchStager {
    device: Device,
    /// Decided once for the model (see [`SideStreams`]).
    side_streams: SideStreams,
    kind: Kind,
    preprocessor: Arc<Preprocessor>,
    plan: FramePlan,
    frames: AtomicU64,
    host_copies: AtomicU64,
    host_bytes: AtomicU64,
}

impl TorchStager {
    pub(super) fn new(
        device: Device,
        kind: Kind,
        preprocessor: Arc<Preprocessor>,
        plan: FramePlan,
    ) -> Self {
        Self {
            device,
            side_streams: SideStreams::for_device(device),
            kind,
            preprocessor,
            plan,
            frames: AtomicU64::new(0),
            host_copies: AtomicU64::new(0),
            host_bytes: AtomicU64::new(0),
        }
    }

    /// The format annotated pictures are handed to the encoder in.
    pub(super) fn picture_format(&self) -> PixelFormat {
        self.plan.picture
    }

    pub(super) fn preprocessor(&self) -> Arc<Preprocessor> {
        self.preprocessor.clone()
    }

    /// Whether this model's frames are staged (and its results copied back) on side streams.
    pub(super) fn side_streams(&self) -> SideStreams {
        self.side_streams
    }

    /// The frame's bytes on the device (1-D uint8). On the CPU they are GStreamer's mapped
    /// buffer, which the tensor's storage owns: it is unmapped when the last tensor reading it
    /// is dropped, never before.
    fn upload(&self, buffer: gst::Buffer, layout: &FrameLayout) -> Result<Tensor, String> {
        let mapping = buffer
            .into_mapped_buffer_readable()
            .map_err(|_| "the frame buffer cannot be mapped".to_string())?;
        layout.check(mapping.len()).map_err(|e| e.to_string())?;
        let len = mapping.len() as u64;
        let host = native::tensor_over_bytes(mapping).map_err(|e| e.to_string())?;
        if self.device == Device::Cpu {
            return Ok(host);
        }
        // One host copy, into page-locked memory; dropping `host` unmaps GStreamer's buffer,
        // which goes back to its pool.
        let pinned = native::pin_memory(&host).map_err(|e| e.to_string())?;
        drop(host);
        self.host_copies.fetch_add(1, Ordering::Relaxed);
        self.host_bytes.fetch_add(len, Ordering::Relaxed);
        pinned
            .f_to_device_(self.device, Kind::Uint8, true, false)
            .map_err(|e| e.to_string())
    }

    /// Stages one frame's pixels (its buffer) on the device. With side streams on this thread's
    /// own, so that the copy to the device and the conversion overlap the model's work on the
    /// main stream instead of queueing behind it; the frame's `ready` event says when its
    /// tensors are done.
    pub(super) fn stage_pixels(
        &self,
        buffer: gst::Buffer,
        layout: &FrameLayout,
    ) -> Result<StagedFrame, String> {
        let (SideStreams::On, Device::Cuda(index)) = (self.side_streams, self.device) else {
            return self.stage_here(buffer, layout);
        };
        native::on_side_stream(index, || {
            let mut staged = self.stage_here(buffer, layout)?;
            staged.ready = Some(CudaEvent::record(index).map_err(|e| e.to_string())?);
            Ok(staged)
        })
        .map_err(|e| e.to_string())?
    }

    /// Stages on this thread's current stream.
    fn stage_here(&self, buffer: gst::Buffer, layout: &FrameLayout) -> Result<StagedFrame, String> {
        tch::no_grad(|| {
            let input = self.upload(buffer, layout)?;
            let rgb = to_rgb(&input, layout).map_err(|e| e.to_string())?;
            let pixel_values = self
                .preprocessor
                .run(&[rgb.shallow_clone()], self.kind)
                .map_err(|e| e.to_string())?;
            self.frames.fetch_add(1, Ordering::Relaxed);
            Ok(StagedFrame {
                rgb,
                pixel_values,
                input,
                ready: None,
            })
        })
    }
}

impl FrameStager for TorchStager {
    fn formats(&self) -> Vec<PixelFormat> {
        self.plan.inputs.clone()
    }

    fn stage(&self, frame: &mut Frame) -> Result<(), StageError> {
        let fail = |reason: String| StageError {
            pipeline: frame.pipeline,
            seq: frame.seq,
            device: format!("{:?}", self.device),
            reason,
        };
        let buffer = match std::mem::replace(&mut frame.pixels, Pixels::Taken) {
            Pixels::Host(buffer) => buffer,
            other => {
                frame.pixels = other;
                return Ok(());
            }
        };
        let staged = self.stage_pixels(buffer, &frame.layout).map_err(fail)?;
        frame.pixels = Pixels::Device(Box::new(staged));
        Ok(())
    }

    fn counters(&self) -> StageCounters {
        StageCounters {
            frames: self.frames.load(Ordering::Relaxed),
            host_copies: self.host_copies.load(Ordering::Relaxed),
            host_bytes_copied: self.host_bytes.load(Ordering::Relaxed),
        }
    }
}

/// One plane of `bytes` as a [rows, columns, channels] view (no copy). The layout passed
/// `check` against these bytes: every number here is within their length, so fits an i64 (and
/// libtorch refuses a view past the storage's end).
fn plane(
    bytes: &Tensor,
    layout: &FrameLayout,
    index: usize,
    channels: i64,
) -> Result<Tensor, tch::TchError> {
    let (rows, row_bytes) = layout.plane_extent(index);
    let plane = layout.planes[index];
    bytes.f_as_strided(
        [rows as i64, row_bytes as i64 / channels, channels],
        [plane.stride as i64, channels, 1],
        plane.offset as i64,
    )
}

/// A frame's bytes (1-D uint8 on the device) as uint8 RGB [H, W, 3] (on CUDA by one fused
/// kernel where it has proven itself, see [`super::fused`]).
pub(super) fn to_rgb(
    bytes: &Tensor,
    layout: &FrameLayout,
) -> Result<Tensor, crate::processing::ProcessingError> {
    let luma = |t: Tensor| t.f_squeeze_dim(2);
    match layout.format {
        PixelFormat::Rgb => Ok(plane(bytes, layout, 0, 3)?),
        PixelFormat::I420 => {
            let (y, u, v) = (
                luma(plane(bytes, layout, 0, 1)?)?,
                luma(plane(bytes, layout, 1, 1)?)?,
                luma(plane(bytes, layout, 2, 1)?)?,
            );
            super::fused::to_rgb(
                Yuv420::I420 {
                    y: &y,
                    u: &u,
                    v: &v,
                },
                &colour(layout),
            )
        }
        PixelFormat::Nv12 => {
            let (y, uv) = (
                luma(plane(bytes, layout, 0, 1)?)?,
                plane(bytes, layout, 1, 2)?,
            );
            super::fused::to_rgb(Yuv420::Nv12 { y: &y, uv: &uv }, &colour(layout))
        }
    }
}

fn colour(layout: &FrameLayout) -> crate::frames::YuvColour {
    // A YUV layout always has its colour; BT.601 limited stands in for a defect.
    layout.colour.unwrap_or(crate::frames::YuvColour {
        kr: 0.299,
        kb: 0.114,
        full_range: false,
        chroma_h_cosited: false,
        chroma_v_cosited: false,
    })
}

/// Test hook: a staged frame's tensors (its bytes as the device holds them, and its RGB), to
/// check where they live. They own what they read (on the CPU the frame's mapped buffer, held
/// by their storage), so they stay valid after the frame is gone.
#[doc(hidden)]
pub fn staged_tensors(frame: &Frame) -> Option<(Tensor, Tensor)> {
    let Pixels::Device(pixels) = &frame.pixels else {
        return None;
    };
    let staged = pixels.as_any().downcast_ref::<StagedFrame>()?;
    Some((staged.input.shallow_clone(), staged.rgb.shallow_clone()))
}
