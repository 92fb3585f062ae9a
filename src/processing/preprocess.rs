//! uint8 RGB frames to `pixel_values`, on the frames' device, reproducing the transformers PIL
//! image processors.
//!
//! PIL resizes in two 1-D passes, horizontal first, each with an antialiased kernel (support
//! widened by the downscale factor) and each rounded to uint8. libtorch's `_upsample_*2d_aa`
//! kernels are the same filters, so one call per axis with round + clamp in between reproduces
//! PIL to within one uint8 step; a single 2-D call (no intermediate rounding) is off by up to 9
//! steps. The passes run in f32: libtorch's uint8 CPU path uses its own fixed-point rounding and
//! lands up to 2 steps away from PIL on bicubic.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::ProcessingError;
use super::config::{self, ProcessorConfig, Resample, ResizeRule};

/// A checkpoint's image processor, run as tensor ops on the device of the frames.
#[derive(Debug)]
pub struct Preprocessor {
    config: ProcessorConfig,
    /// Stop after the resize and crop, returning uint8: for a served model that rescales,
    /// normalises and pads itself (`remote.input: uint8`).
    resized_only: bool,
}

impl Preprocessor {
    /// From a checkpoint folder's `preprocessor_config.json`, or the built-in defaults of
    /// `architecture` (config.json's `architectures[0]`) when the folder has none (logged).
    /// `size_override` is the model's configured `input_size`, `[height, width]`.
    pub fn from_model_dir(
        dir: &Path,
        architecture: &str,
        size_override: Option<[u32; 2]>,
    ) -> Result<Self, ProcessingError> {
        let path = config::config_path(dir);
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => ProcessorConfig::parse(&path, &text, architecture)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let model_config = config::read_model_config(dir);
                let config = ProcessorConfig::defaults_for(architecture, model_config.as_ref())
                    .ok_or_else(|| ProcessingError::NoProcessor {
                        dir: dir.to_path_buf(),
                        architecture: architecture.to_string(),
                    })?;
                tracing::info!(
                    dir = %dir.display(),
                    architecture,
                    processor = ?config,
                    "no {}: using the architecture's published processor settings",
                    config::FILE_NAME
                );
                config
            }
            Err(e) => {
                return Err(ProcessingError::Read {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        if let Some([height, width]) = size_override {
            if height == 0 || width == 0 {
                return Err(ProcessingError::SizeOverride {
                    height,
                    width,
                    reason: "both sides must be positive".into(),
                });
            }
            let change = config.override_size(height.into(), width.into());
            tracing::info!(dir = %dir.display(), "input_size overrides the image processor: {change}");
        }
        Self::from_config(config)
    }

    /// From settings built elsewhere (TorchScript models carry no processor file).
    pub fn from_config(config: ProcessorConfig) -> Result<Self, ProcessingError> {
        Ok(Self {
            config,
            resized_only: false,
        })
    }

    /// This processor without its last steps (rescale, normalise, pad): [`Preprocessor::run`]
    /// returns the resized (and cropped) image as uint8, whatever kind it is asked for.
    pub fn resized_only(mut self) -> Self {
        self.resized_only = true;
        self
    }

    /// The processed size when it is the same for every frame (a fixed resize or crop), else
    /// `None` (it follows the frame's size).
    pub fn fixed_output_size(&self) -> Option<(i64, i64)> {
        let fixed = match (self.config.center_crop, self.config.resize) {
            (Some([h, w]), _) => (h, w),
            (None, Some(ResizeRule::Exact { height, width })) => (height, width),
            (
                None,
                Some(ResizeRule::Dpt {
                    height,
                    width,
                    keep_aspect_ratio: false,
                    multiple,
                }),
            ) => {
                let constrain =
                    |v: i64| ((v as f64 / multiple as f64).round_ties_even() as i64) * multiple;
                (constrain(height), constrain(width))
            }
            _ => return None,
        };
        match (self.config.pad_to_multiple, self.resized_only) {
            (Some(m), false) => Some(((fixed.0 + m - 1) / m * m, (fixed.1 + m - 1) / m * m)),
            _ => Some(fixed),
        }
    }

    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    /// The size a frame is resized to, before any crop or pad.
    fn resized_size(&self, height: i64, width: i64) -> (i64, i64) {
        match self.config.resize {
            None => (height, width),
            Some(ResizeRule::Exact { height, width }) => (height, width),
            Some(ResizeRule::ShortestEdge(edge)) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: int(edge * long / short), the product exact, the division rounded once.
                let new_long = ((edge * long) as f64 / short as f64) as i64;
                if width <= height {
                    (new_long, edge)
                } else {
                    (edge, new_long)
                }
            }
            Some(ResizeRule::Dpt {
                height: target_h,
                width: target_w,
                keep_aspect_ratio,
                multiple,
            }) => {
                let mut scale_h = target_h as f64 / height as f64;
                let mut scale_w = target_w as f64 / width as f64;
                if keep_aspect_ratio {
                    // Scale as little as possible: the factor closer to 1 wins for both sides.
                    if (1.0 - scale_w).abs() < (1.0 - scale_h).abs() {
                        scale_h = scale_w;
                    } else {
                        scale_w = scale_h;
                    }
                }
                let constrain = |value: f64| {
                    let m = multiple as f64;
                    ((value / m).round_ties_even() * m) as i64
                };
                (
                    constrain(scale_h * height as f64),
                    constrain(scale_w * width as f64),
                )
            }
        }
    }

    /// Processed (model input) size for a frame of this size: frames whose sizes map to the same
    /// value can share a batch. A side of 0 (a DPT side rounded to no multiple at all) marks a
    /// frame the processor cannot take; [`Preprocessor::run`] reports it.
    pub fn output_size(&self, height: i64, width: i64) -> (i64, i64) {
        let (mut h, mut w) = self.resized_size(height, width);
        if let Some([ch, cw]) = self.config.center_crop {
            (h, w) = (ch, cw);
        }
        if let Some(m) = self.config.pad_to_multiple
            && !self.resized_only
        {
            h = (h + m - 1).div_euclid(m) * m;
            w = (w + m - 1).div_euclid(m) * m;
        }
        (h, w)
    }

    /// frames: uint8 [H, W, 3] RGB tensors already on the target device (sizes may differ but
    /// must share `output_size`); returns [B, 3, h, w] in `kind` on the same device.
    pub fn run(&self, frames: &[Tensor], kind: Kind) -> Result<Tensor, ProcessingError> {
        let Some(first) = frames.first() else {
            return Err(ProcessingError::Batch("no frames".into()));
        };
        let device = first.device();
        let mut sizes = Vec::with_capacity(frames.len());
        for (index, frame) in frames.iter().enumerate() {
            let (h, w) = check_frame(index, frame, device)?;
            let (rh, rw) = self.resized_size(h, w);
            if rh <= 0 || rw <= 0 {
                return Err(ProcessingError::Frame {
                    index,
                    reason: format!(
                        "a {h}x{w} frame resizes to {rh}x{rw} under {}: too thin to process",
                        self.config.source
                    ),
                });
            }
            sizes.push((h, w));
        }
        let expected = self.output_size(sizes[0].0, sizes[0].1);
        if let Some(index) = sizes
            .iter()
            .position(|&(h, w)| self.output_size(h, w) != expected)
        {
            return Err(ProcessingError::Batch(format!(
                "frame {index} ({}x{}) processes to {:?}, frame 0 ({}x{}) to {expected:?}: \
                 batch only frames with equal output_size",
                sizes[index].0,
                sizes[index].1,
                self.output_size(sizes[index].0, sizes[index].1),
                sizes[0].0,
                sizes[0].1
            )));
        }

        // Each frame is resized on its own: its [1, 3, H, W] view of the HWC frame is channels-last
        // and copies nothing, where stacking full-size frames first would cost a transposing copy
        // of every frame (4 full-HD frames: 3x slower on CPU). Only the small resized frames are
        // concatenated.
        let mut parts = Vec::with_capacity(frames.len());
        for frame in frames {
            let chw = frame.f_permute([2, 0, 1])?.f_unsqueeze(0)?;
            parts.push(self.resize_and_crop(&chw)?);
        }
        let batch = if parts.len() == 1 {
            parts.swap_remove(0)
        } else {
            Tensor::f_cat(&parts, 0)?
        };
        if self.resized_only {
            // Whole numbers 0..=255 already (PIL's rounding): the cast is exact.
            return Ok(batch.f_to_kind(Kind::Uint8)?);
        }
        self.normalize_and_pad(batch)?
            .f_to_kind(kind)
            .map_err(Into::into)
    }

    /// uint8 [1, 3, H, W] -> f32 [1, 3, h, w] holding whole numbers 0..=255, as PIL's output.
    fn resize_and_crop(&self, batch: &Tensor) -> Result<Tensor, ProcessingError> {
        let (_, _, height, width) = batch.size4()?;
        let mut x = batch.f_to_kind(Kind::Float)?;
        if self.config.resize.is_some() {
            let (h, w) = self.resized_size(height, width);
            x = resize_like_pil(&x, h, w, self.config.resample)?;
        }
        if let Some([ch, cw]) = self.config.center_crop {
            x = center_crop(&x, ch, cw)?;
        }
        Ok(x)
    }

    /// `x` is a tensor this call owns (made by the resize), so it is updated in place.
    fn normalize_and_pad(&self, mut x: Tensor) -> Result<Tensor, ProcessingError> {
        if let Some(factor) = self.config.rescale {
            let _ = x.f_mul_scalar_(factor)?;
        }
        if let (Some(mean), Some(std)) = (self.config.mean, self.config.std) {
            // Scalars per channel rather than [1, 3, 1, 1] tensors: nothing but the frame is ever
            // copied to the device.
            for c in 0..3 {
                let mut channel = x.f_narrow(1, c as i64, 1)?;
                let _ = channel.f_sub_scalar_(mean[c])?;
                let _ = channel.f_div_scalar_(std[c])?;
            }
        }
        if let Some(m) = self.config.pad_to_multiple {
            let (_, _, h, w) = x.size4()?;
            let (ph, pw) = ((h + m - 1) / m * m - h, (w + m - 1) / m * m - w);
            if ph > 0 || pw > 0 {
                // Centred, the odd pixel on the bottom/right, zeros after normalizing.
                x = x.f_constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2])?;
            }
        }
        Ok(x)
    }
}

fn check_frame(
    index: usize,
    frame: &Tensor,
    device: Device,
) -> Result<(i64, i64), ProcessingError> {
    let fail = |reason: String| ProcessingError::Frame { index, reason };
    let size = frame.size();
    if size.len() != 3 || size[2] != 3 {
        return Err(fail(format!(
            "expected uint8 [H, W, 3] RGB, got shape {size:?}"
        )));
    }
    if frame.kind() != Kind::Uint8 {
        return Err(fail(format!("expected uint8 RGB, got {:?}", frame.kind())));
    }
    if frame.device() != device {
        return Err(fail(format!(
            "on {:?} while frame 0 is on {device:?}",
            frame.device()
        )));
    }
    if size[0] == 0 || size[1] == 0 {
        return Err(fail(format!("empty frame {}x{}", size[0], size[1])));
    }
    Ok((size[0], size[1]))
}

/// PIL's `Image.resize` for bilinear / bicubic on f32 [B, C, H, W] holding uint8 values: the
/// horizontal pass, then the vertical one, each rounded and clamped to 0..=255; a pass whose
/// axis keeps its size is skipped, as PIL skips it.
pub fn resize_like_pil(
    x: &Tensor,
    height: i64,
    width: i64,
    resample: Resample,
) -> Result<Tensor, ProcessingError> {
    let (_, _, h, w) = x.size4()?;
    let pass = |x: &Tensor, size: [i64; 2]| -> Result<Tensor, ProcessingError> {
        let y = match resample {
            Resample::Bilinear => x.f_internal_upsample_bilinear2d_aa(size, false, None, None)?,
            Resample::Bicubic => x.f_internal_upsample_bicubic2d_aa(size, false, None, None)?,
        };
        Ok(y.f_round()?.f_clamp(0.0, 255.0)?)
    };
    let mut y = x.shallow_clone();
    if w != width {
        y = pass(&y, [h, width])?;
    }
    if h != height {
        y = pass(&y, [height, width])?;
    }
    Ok(y)
}

/// transformers' `center_crop`: offset `(size - crop) // 2`, zero padding (offset
/// `ceil((crop - size) / 2)`) along an axis that is smaller than the crop.
fn center_crop(x: &Tensor, crop_h: i64, crop_w: i64) -> Result<Tensor, ProcessingError> {
    let (_, _, h, w) = x.size4()?;
    let mut y = x.shallow_clone();
    let (pad_h, pad_w) = ((crop_h - h).max(0), (crop_w - w).max(0));
    if pad_h > 0 || pad_w > 0 {
        let (top, left) = ((pad_h + 1) / 2, (pad_w + 1) / 2);
        y = y.f_constant_pad_nd([left, pad_w - left, top, pad_h - top])?;
    }
    let (_, _, h, w) = y.size4()?;
    Ok(y.f_narrow(2, (h - crop_h) / 2, crop_h)?
        .f_narrow(3, (w - crop_w) / 2, crop_w)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dpt(keep: bool, multiple: i64, size: i64) -> Preprocessor {
        let mut c = ProcessorConfig::defaults_for("DepthAnythingForDepthEstimation", None).unwrap();
        c.resize = Some(ResizeRule::Dpt {
            height: size,
            width: size,
            keep_aspect_ratio: keep,
            multiple,
        });
        Preprocessor::from_config(c).unwrap()
    }

    #[test]
    fn dpt_rounds_half_to_even() {
        // 112x238 at 56: width 0.5 * 238 = 119 = 8.5 multiples of 14 -> 8 (112), not 9.
        assert_eq!(dpt(true, 14, 56).output_size(112, 238), (56, 112));
        assert_eq!(dpt(true, 14, 518).output_size(1080, 1920), (518, 924));
    }

    #[test]
    fn thin_frames_are_rejected_not_panicked() {
        let p = dpt(true, 14, 56);
        assert_eq!(p.output_size(3, 500).0, 0);
        let frame = Tensor::zeros([3, 500, 3], (Kind::Uint8, Device::Cpu));
        let e = p.run(&[frame], Kind::Float).unwrap_err().to_string();
        assert!(e.contains("too thin"), "{e}");
    }

    #[test]
    fn rejects_wrong_frames() {
        let p = dpt(false, 1, 32);
        let e = p
            .run(
                &[Tensor::zeros([8, 8, 4], (Kind::Uint8, Device::Cpu))],
                Kind::Float,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame 0: expected uint8 [H, W, 3]"), "{e}");
        let e = p
            .run(
                &[Tensor::zeros([8, 8, 3], (Kind::Float, Device::Cpu))],
                Kind::Float,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected uint8 RGB, got Float"), "{e}");
        assert!(p.run(&[], Kind::Float).is_err());
    }

    #[test]
    fn mixed_output_sizes_are_not_batched() {
        let p = dpt(true, 14, 56);
        let a = Tensor::zeros([56, 56, 3], (Kind::Uint8, Device::Cpu));
        let b = Tensor::zeros([56, 112, 3], (Kind::Uint8, Device::Cpu));
        let e = p.run(&[a, b], Kind::Float).unwrap_err().to_string();
        assert!(
            e.contains("batch only frames with equal output_size"),
            "{e}"
        );
    }
}
