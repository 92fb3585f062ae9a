//! The way back: a result the worker left on the device, copied to the host by the pipeline's
//! output thread into memory that becomes the GStreamer buffer itself.
//!
//! The picture is laid out on the device exactly as GStreamer lays out its format (rows padded
//! to 4 bytes; on CUDA I420 made from RGB there, so the encoder needs no conversion; on a CPU
//! RGB, which the encoder chain's `videoconvert` turns into the same I420 faster; on CUDA by
//! one fused kernel where it has proven itself, see [`super::fused`]), then copied
//! back in one piece; the host tensor's memory is handed to GStreamer as it is.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::native::{self, CudaEvent};
use crate::frames::{Downloaded, FrameLayout, HostBytes, PendingResult, PixelFormat, VideoImage};
use crate::processing::{AnnotatedOnDevice, ProcessingError, depth16_to_vec};

/// One frame's result on the device.
pub(super) struct TorchResult {
    pub annotated: AnnotatedOnDevice,
    /// On CUDA with side streams: recorded after the batch's post-processing. The copy back
    /// waits for it alone and runs on the output thread's side stream, not behind the batches
    /// launched on the main stream since. Without, the copy queues on the default stream.
    pub ready: Option<Arc<CudaEvent>>,
    /// The picture's format for the encoder: I420 made on the device, or RGB.
    pub format: PixelFormat,
    pub fps: gstreamer::Fraction,
}

impl std::fmt::Debug for TorchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchResult")
            .field("picture", &self.annotated.frame.size())
            .field("format", &self.format)
            .finish()
    }
}

impl PendingResult for TorchResult {
    fn download(self: Box<Self>, picture: bool) -> Result<Downloaded, String> {
        let (Some(ready), Device::Cuda(index)) =
            (self.ready.clone(), self.annotated.frame.device())
        else {
            return self.copy_back(picture);
        };
        ready
            .synchronize()
            .map_err(|e| format!("cannot wait for the result on cuda:{index}: {e}"))?;
        native::on_side_stream(index, move || self.copy_back(picture))
            .map_err(|e| format!("no side stream on cuda:{index} to copy the result back: {e}"))?
    }
}

impl TorchResult {
    fn copy_back(self: Box<Self>, picture: bool) -> Result<Downloaded, String> {
        tch::no_grad(|| {
            let picture = picture
                .then(|| download_picture(&self.annotated.frame, self.format, self.fps))
                .transpose()
                .map_err(|e| format!("cannot copy the annotated frame to the host: {e}"))?;
            let annotated = self.annotated;
            let raw_depth = annotated
                .raw_depth
                .as_ref()
                .map(depth16_to_vec)
                .transpose()
                .map_err(|e| format!("cannot copy the raw depth to the host: {e}"))?;
            let results = annotated
                .results
                .to_host()
                .map_err(|e| format!("cannot copy the results to the host: {e}"))?;
            Ok(Downloaded {
                picture,
                results,
                raw_depth,
            })
        })
    }
}

/// Host memory owned by a CPU tensor.
struct TensorBytes(Tensor);

impl AsRef<[u8]> for TensorBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: a contiguous uint8 CPU tensor (checked when made) owns `numel` bytes at
        // `data_ptr`, and this struct owns the tensor for as long as the slice is borrowed.
        unsafe { std::slice::from_raw_parts(self.0.data_ptr() as *const u8, self.0.numel()) }
    }
}

/// uint8 RGB [H, W, 3] on the device, laid out as GStreamer lays out `format` and copied to the
/// host: the one copy back.
pub fn download_picture(
    rgb: &Tensor,
    format: PixelFormat,
    fps: gstreamer::Fraction,
) -> Result<VideoImage, ProcessingError> {
    let (height, width, _) = rgb.size3()?;
    let layout =
        FrameLayout::standard(format, width as u32, height as u32, fps).ok_or_else(|| {
            ProcessingError::Output(format!("no {format:?} layout for a {width}x{height} frame"))
        })?;
    let size = layout.info.size() as i64;
    let padded =
        (0..layout.planes.len()).any(|p| layout.planes[p].stride != layout.plane_extent(p).1);
    let options = (Kind::Uint8, rgb.device());
    let bytes = if padded {
        Tensor::f_zeros([size], options)?
    } else {
        Tensor::f_empty([size], options)?
    };
    // Plane `index` of the picture's buffer as a [rows, columns, channels] view.
    let plane = |index: usize, channels: i64| -> Result<Tensor, ProcessingError> {
        let (rows, row_bytes) = layout.plane_extent(index);
        let place = layout.planes[index];
        Ok(bytes.f_as_strided(
            [rows as i64, row_bytes as i64 / channels, channels],
            [place.stride as i64, channels, 1],
            place.offset as i64,
        )?)
    };
    match format {
        PixelFormat::Rgb => {
            let (rows, row_bytes) = layout.plane_extent(0);
            plane(0, 3)?.f_copy_(&rgb.f_view([rows as i64, row_bytes as i64 / 3, 3])?)?;
        }
        PixelFormat::I420 | PixelFormat::Nv12 => {
            let colour = layout
                .colour
                .ok_or_else(|| ProcessingError::Output("YUV layout without colour".into()))?;
            let y = plane(0, 1)?.f_squeeze_dim(2)?;
            let (u, v) = if format == PixelFormat::I420 {
                (
                    plane(1, 1)?.f_squeeze_dim(2)?,
                    plane(2, 1)?.f_squeeze_dim(2)?,
                )
            } else {
                let uv = plane(1, 2)?;
                (uv.f_select(2, 0)?, uv.f_select(2, 1)?)
            };
            super::fused::to_yuv420(rgb, [&y, &u, &v], &colour)?;
        }
    }
    let host = if bytes.device() == Device::Cpu {
        bytes
    } else {
        bytes.f_to_device(Device::Cpu)?
    };
    let host = host.f_contiguous()?;
    Ok(VideoImage {
        layout,
        bytes: HostBytes::new(TensorBytes(host)),
    })
}
