//! One frame across the libtorch boundary: packed RGB up to the device, through the image
//! processor and the model, and the annotated picture back. The daemon's batches and
//! `visiond infer` both take these steps, so a still image is processed exactly as a frame.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::graphs::ModelRunner;
use crate::frames::RgbImage;
use crate::models::ModelError;
use crate::models::checkpoint::ModelInfo;
use crate::processing::{Preprocessor, ProcessingError};

/// Packed RGB as uint8 [H, W, 3] on `device`: the one host→device copy of a frame.
pub fn upload_rgb(
    pixels: &[u8],
    height: u32,
    width: u32,
    device: Device,
) -> Result<Tensor, String> {
    let tensor = Tensor::f_from_slice(pixels)
        .and_then(|t| t.f_view([i64::from(height), i64::from(width), 3]))
        .map_err(|e| format!("cannot make a tensor of the frame: {e}"))?;
    if device == Device::Cpu {
        Ok(tensor)
    } else {
        tensor.f_to_device(device).map_err(|e| e.to_string())
    }
}

/// Why [`preprocess_and_forward`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    Preprocessing(#[from] ProcessingError),
    #[error("{0}")]
    Model(#[from] ModelError),
}

/// Frames (uint8 [H, W, 3] on the model's device, sharing a processed size) through the image
/// processor and the model, without autograd. Returns the `pixel_values` fed to the model (in
/// `kind`) and the model output in f32 (post-processing works in f32 whatever the model ran
/// in), both on the model's device.
pub fn preprocess_and_forward(
    model: &mut ModelRunner,
    preprocessor: &Preprocessor,
    kind: Kind,
    frames: &[Tensor],
) -> Result<(Tensor, Tensor), ForwardError> {
    tch::no_grad(|| {
        let pixel_values = preprocessor.run(frames, kind)?;
        let output = model.forward(&pixel_values)?;
        let output = output.f_to_kind(Kind::Float).map_err(ModelError::from)?;
        Ok((pixel_values, output))
    })
}

/// `pixel_values` through the model without autograd; the output in f32 on the model's device.
pub fn forward(model: &mut ModelRunner, pixel_values: &Tensor) -> Result<Tensor, ForwardError> {
    tch::no_grad(|| {
        let output = model.forward(pixel_values)?;
        Ok(output.f_to_kind(Kind::Float).map_err(ModelError::from)?)
    })
}

/// Copies an annotated uint8 [H, W, 3] frame to the host.
pub fn download(frame: &Tensor) -> Result<RgbImage, String> {
    let size = frame.size();
    let [height, width, 3] = size[..] else {
        return Err(format!(
            "annotated frame has shape {size:?}, expected [H, W, 3]"
        ));
    };
    let host = frame
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(|e| e.to_string())?;
    let data = Vec::<u8>::try_from(host.f_flatten(0, -1).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    Ok(RgbImage {
        width: width as u32,
        height: height as u32,
        data,
    })
}

/// The image processor of a loaded model: the `preprocessor_config.json` in its folder (for a
/// TorchScript model, the folder holding `model.pt`), else the published defaults of its
/// architecture; `input_size` ([height, width]) overrides the size.
pub fn preprocessor_for(
    info: &ModelInfo,
    input_size: Option<[u32; 2]>,
) -> Result<Preprocessor, ProcessingError> {
    let dir = if info.path.is_file() {
        info.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    } else {
        info.path.clone()
    };
    Preprocessor::from_model_dir(&dir, &info.architecture, input_size)
}
