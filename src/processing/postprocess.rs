//! Model output to what people see and what the metadata records, on the model's device: depth
//! colour maps, segmentation palettes, classification scores.

use std::collections::VecDeque;

use tch::{Device, Kind, Tensor};

use super::ProcessingError;
use super::colormap::{colormap_table, palette};
use crate::config::{DepthRange, OverlayConfig, OverlayMode, Task};
use crate::frames::FrameResults;

/// Weight of the newest frame in the `ema` depth range: the range follows a scene change within
/// about 20 frames (under a second at 25 fps) while frame-to-frame noise in the extremes, which
/// makes `per_frame` flicker, is damped tenfold.
pub const EMA_WEIGHT: f64 = 0.1;

/// Upper bound on f32 elements of resized logits held at once by segmentation post-processing:
/// 150 ADE20K classes at 1920x1080 would otherwise take 1.2 GB.
const SEGMENTATION_BUDGET: i64 = 1 << 25;

/// An annotated frame and what was measured on it.
#[derive(Debug)]
pub struct Annotated {
    /// uint8 [H, W, 3] RGB on the device ([H, 2W, 3] for `side_by_side`). Classification frames
    /// pass through unchanged: their label is drawn by the output bin.
    pub frame: Tensor,
    pub results: FrameResults,
    /// With [`Annotator::with_raw_depth`]: [H, W] GRAY16_LE samples, the depth range mapped linearly onto
    /// 0..=65535 (not inverted). tch has no uint16 kind, so the tensor is `Int16` holding the u16
    /// bit patterns; [`depth16_to_vec`] reads them back as `u16`.
    pub raw_depth: Option<Tensor>,
}

/// Copies a [`Annotated::raw_depth`] tensor to the host as u16 samples in row-major order.
pub fn depth16_to_vec(raw: &Tensor) -> Result<Vec<u16>, ProcessingError> {
    let values = Vec::<i16>::try_from(raw.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
    Ok(values.into_iter().map(|v| v as u16).collect())
}

/// Turns model outputs into annotated frames. One per pipeline: it holds the EMA depth range and
/// the classification score history, and the lookup tables already uploaded to the device.
pub struct Annotator {
    overlay: OverlayConfig,
    /// Also make the raw 16-bit depth (for `depth16` sinks).
    raw_depth: bool,
    task: Task,
    labels: Vec<String>,
    ema: Option<(f64, f64)>,
    history: VecDeque<Vec<f64>>,
    /// Colormap or palette as uint8 [N, 3] on the device it was last used on.
    table: Option<Tensor>,
}

impl Annotator {
    pub fn new(overlay: &OverlayConfig, task: Task, labels: Vec<String>) -> Self {
        Self {
            overlay: overlay.clone(),
            raw_depth: false,
            task,
            labels,
            ema: None,
            history: VecDeque::new(),
            table: None,
        }
    }

    /// Also produce [`Annotated::raw_depth`] for depth models.
    pub fn with_raw_depth(mut self, raw_depth: bool) -> Self {
        self.raw_depth = raw_depth;
        self
    }

    /// The depth range the next `ema` frame starts from, if any frame was seen.
    pub fn ema_range(&self) -> Option<(f64, f64)> {
        self.ema
    }

    /// frame: uint8 [H, W, 3] on the device; output: the model output for this one frame (depth
    /// [h', w'], segmentation logits [C, h', w'], classification logits [C]; a leading batch
    /// dimension of 1 is accepted). Returns the annotated uint8 frame (on the device; [H, 2W, 3]
    /// for side_by_side) plus the per-frame results.
    pub fn annotate(
        &mut self,
        frame: &Tensor,
        output: &Tensor,
    ) -> Result<Annotated, ProcessingError> {
        let size = frame.size();
        if size.len() != 3 || size[2] != 3 || frame.kind() != Kind::Uint8 {
            return Err(ProcessingError::Frame {
                index: 0,
                reason: format!(
                    "expected a uint8 [H, W, 3] frame to annotate, got {:?} {size:?}",
                    frame.kind()
                ),
            });
        }
        if output.device() != frame.device() {
            return Err(ProcessingError::Output(format!(
                "on {:?} while the frame is on {:?}: both must be on the model's device",
                output.device(),
                frame.device()
            )));
        }
        let (height, width) = (size[0], size[1]);
        let output = squeeze_batch(output, self.task)?;
        match self.task {
            Task::Depth => self.depth(frame, &output, height, width),
            Task::Segmentation => self.segmentation(frame, &output, height, width),
            Task::Classification => self.classification(frame, &output),
        }
    }

    fn depth(
        &mut self,
        frame: &Tensor,
        depth: &Tensor,
        height: i64,
        width: i64,
    ) -> Result<Annotated, ProcessingError> {
        // A non-finite value (an f16 overflow) must not reach the stats or the table index.
        let depth = resize_depth(depth, height, width)?.f_nan_to_num(0.0, 0.0, 0.0)?;
        let stats = Tensor::f_stack(
            &[depth.f_min()?, depth.f_mean(Kind::Float)?, depth.f_max()?],
            0,
        )?;
        let stats = Vec::<f64>::try_from(stats.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)?;
        let (min, mean, max) = (stats[0], stats[1], stats[2]);
        let (lo, hi) = match self.overlay.range {
            DepthRange::PerFrame => (min, max),
            DepthRange::Fixed([lo, hi]) => (lo, hi),
            DepthRange::Ema => {
                let range = match self.ema {
                    None => (min, max),
                    Some((lo, hi)) => (lo + EMA_WEIGHT * (min - lo), hi + EMA_WEIGHT * (max - hi)),
                };
                self.ema = Some(range);
                range
            }
        };
        let unit = if hi - lo > f64::EPSILON * hi.abs().max(lo.abs()).max(1e-30) {
            depth
                .f_sub_scalar(lo)?
                .f_div_scalar(hi - lo)?
                .f_clamp(0.0, 1.0)?
        } else {
            // A flat map (or an empty range): the low end of the colormap, not a division by 0.
            depth.f_zeros_like()?
        };
        let raw_depth = if self.raw_depth {
            let v = unit
                .f_mul_scalar(65535.0)?
                .f_round()?
                .f_to_kind(Kind::Int)?;
            // Values above i16::MAX wrap explicitly into the u16 bit pattern.
            let wrapped = v.f_sub(&v.f_gt(32767)?.f_to_kind(Kind::Int)?.f_mul_scalar(65536)?)?;
            Some(wrapped.f_to_kind(Kind::Int16)?)
        } else {
            None
        };
        let shown = if self.overlay.invert {
            unit.f_neg()?.f_add_scalar(1.0)?
        } else {
            unit
        };
        let index = shown
            .f_mul_scalar(255.0)?
            .f_round()?
            .f_to_kind(Kind::Int64)?;
        let colormap = self.overlay.colormap;
        let table = self.table(frame.device(), 256, || colormap_table(colormap))?;
        let map = lookup(&table, &index, height, width)?;
        Ok(Annotated {
            frame: compose(frame, &map, self.overlay.mode, self.overlay.alpha)?,
            results: FrameResults::Depth { min, mean, max },
            raw_depth,
        })
    }

    fn segmentation(
        &mut self,
        frame: &Tensor,
        logits: &Tensor,
        height: i64,
        width: i64,
    ) -> Result<Annotated, ProcessingError> {
        let classes = logits.size()[0];
        let labels = segmentation_labels(logits, height, width)?;
        let counts = labels
            .f_flatten(0, -1)?
            .f_bincount::<Tensor>(None, classes)?;
        let counts = Vec::<i64>::try_from(counts.f_to_device(Device::Cpu)?)?;
        let total = (height * width) as f64;
        let mut histogram: Vec<(String, f64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(class, n)| (self.label(class), *n as f64 / total))
            .collect();
        histogram.sort_by(|a, b| b.1.total_cmp(&a.1));
        let table = self.table(frame.device(), classes, || palette(classes as usize))?;
        let map = lookup(&table, &labels, height, width)?;
        Ok(Annotated {
            frame: compose(frame, &map, self.overlay.mode, self.overlay.alpha)?,
            results: FrameResults::Segmentation { histogram },
            raw_depth: None,
        })
    }

    fn classification(
        &mut self,
        frame: &Tensor,
        logits: &Tensor,
    ) -> Result<Annotated, ProcessingError> {
        let probabilities = logits.f_to_kind(Kind::Float)?.f_softmax(0, Kind::Float)?;
        let probabilities = Vec::<f64>::try_from(
            probabilities
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?,
        )?;
        if self
            .history
            .front()
            .is_some_and(|p| p.len() != probabilities.len())
        {
            self.history.clear();
        }
        self.history.push_back(probabilities);
        while self.history.len() > self.overlay.smoothing_frames.max(1) as usize {
            self.history.pop_front();
        }
        let mut mean = vec![0.0; self.history[0].len()];
        for p in &self.history {
            for (m, v) in mean.iter_mut().zip(p) {
                *m += v / self.history.len() as f64;
            }
        }
        let mut order: Vec<usize> = (0..mean.len()).collect();
        order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
        let top_k = order
            .into_iter()
            .take(self.overlay.top_k.max(1) as usize)
            .filter(|&class| mean[class] >= self.overlay.min_score)
            .map(|class| (self.label(class), mean[class]))
            .collect();
        Ok(Annotated {
            frame: frame.shallow_clone(),
            results: FrameResults::Classes { top_k },
            raw_depth: None,
        })
    }

    fn label(&self, class: usize) -> String {
        self.labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    /// The lookup table on `device`, uploaded again only when the device or the size changes
    /// (a segmentation model's class count is only known from its first output).
    fn table(
        &mut self,
        device: Device,
        entries: i64,
        make: impl FnOnce() -> Vec<[u8; 3]>,
    ) -> Result<Tensor, ProcessingError> {
        if let Some(t) = &self.table
            && t.device() == device
            && t.size()[0] == entries
        {
            return Ok(t.shallow_clone());
        }
        let flat: Vec<u8> = make().into_iter().flatten().collect();
        let t = Tensor::f_from_slice(&flat)?
            .f_view([-1, 3])?
            .f_to_device(device)?;
        self.table = Some(t.shallow_clone());
        Ok(t)
    }
}

fn squeeze_batch(output: &Tensor, task: Task) -> Result<Tensor, ProcessingError> {
    let want = match task {
        Task::Depth => 2,
        Task::Segmentation => 3,
        Task::Classification => 1,
    };
    let size = output.size();
    let t = if size.len() == want + 1 && size[0] == 1 {
        output.f_squeeze_dim(0)?
    } else {
        output.shallow_clone()
    };
    let ok = t.dim() == want && t.size().iter().all(|&d| d > 0);
    if !ok {
        let expected = match task {
            Task::Depth => "depth [h, w]",
            Task::Segmentation => "logits [C, h, w]",
            Task::Classification => "logits [C]",
        };
        return Err(ProcessingError::Output(format!(
            "expected {expected} for one frame, got {size:?}"
        )));
    }
    Ok(t)
}

fn lookup(
    table: &Tensor,
    index: &Tensor,
    height: i64,
    width: i64,
) -> Result<Tensor, ProcessingError> {
    Ok(table
        .f_index_select(0, &index.f_flatten(0, -1)?)?
        .f_view([height, width, 3])?)
}

/// Puts the map on or beside the frame. Both are uint8 [H, W, 3].
fn compose(
    frame: &Tensor,
    map: &Tensor,
    mode: OverlayMode,
    alpha: f64,
) -> Result<Tensor, ProcessingError> {
    Ok(match mode {
        OverlayMode::MapOnly => map.shallow_clone(),
        OverlayMode::SideBySide => Tensor::f_cat(&[frame, map], 1)?,
        OverlayMode::Blend => {
            // In place on one f32 copy: at full HD every extra temporary is a 25 MB pass.
            let mut out = frame.f_to_kind(Kind::Float)?;
            let _ = out.f_lerp_(&map.f_to_kind(Kind::Float)?, alpha)?;
            let _ = out.f_round_()?;
            let _ = out.f_clamp_(0.0, 255.0)?;
            out.f_to_kind(Kind::Uint8)?
        }
    })
}

/// A depth prediction [h, w] resized to [height, width] as transformers'
/// `post_process_depth_estimation` (bicubic, align_corners false), in f32.
pub fn resize_depth(depth: &Tensor, height: i64, width: i64) -> Result<Tensor, ProcessingError> {
    let (h, w) = depth.size2()?;
    Ok(depth
        .f_to_kind(Kind::Float)?
        .f_view([1, 1, h, w])?
        .f_upsample_bicubic2d([height, width], false, None, None)?
        .f_view([height, width])?)
}

/// The class map [height, width] (int64) of segmentation logits [C, h, w], as transformers'
/// `post_process_semantic_segmentation`: bilinear resize (align_corners false), argmax over
/// classes (the first of equal maxima).
pub fn segmentation_labels(
    logits: &Tensor,
    height: i64,
    width: i64,
) -> Result<Tensor, ProcessingError> {
    segmentation_labels_with_budget(logits, height, width, SEGMENTATION_BUDGET)
}

/// [`segmentation_labels`] holding at most about `budget` resized f32 values at once: the
/// classes are resized a slice at a time (each channel's interpolation is independent, so the
/// values are the same as a full resize) and the running maximum keeps the earliest class on ties.
#[doc(hidden)]
pub fn segmentation_labels_with_budget(
    logits: &Tensor,
    height: i64,
    width: i64,
    budget: i64,
) -> Result<Tensor, ProcessingError> {
    let (classes, h, w) = logits.size3()?;
    let logits = logits.f_to_kind(Kind::Float)?.f_view([1, classes, h, w])?;
    let chunk = (budget / (height * width).max(1)).clamp(1, classes);
    let mut best: Option<(Tensor, Tensor)> = None;
    let mut start = 0;
    while start < classes {
        let n = chunk.min(classes - start);
        let resized = logits
            .f_narrow(1, start, n)?
            .f_upsample_bilinear2d([height, width], false, None, None)?
            .f_squeeze_dim(0)?;
        let (value, index) = resized.f_max_dim(0, false)?;
        let index = index.f_add_scalar(start)?;
        best = Some(match best {
            None => (value, index),
            Some((best_value, best_index)) => {
                let better = value.f_gt_tensor(&best_value)?;
                (
                    value.f_where_self(&better, &best_value)?,
                    index.f_where_self(&better, &best_index)?,
                )
            }
        });
        start += n;
    }
    best.map(|(_, index)| index)
        .ok_or_else(|| ProcessingError::Output("segmentation logits with no classes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_serialize_for_jsonl() {
        let r = FrameResults::Classes {
            top_k: vec![("letter".into(), 0.75)],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"kind":"classes","top_k":[{"label":"letter","score":0.75}]}"#
        );
        let r = FrameResults::Depth {
            min: 0.0,
            mean: 1.5,
            max: 3.0,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"kind":"depth","min":0.0,"mean":1.5,"max":3.0}"#
        );
        let r = FrameResults::Segmentation {
            histogram: vec![("sky".into(), 0.5)],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"kind":"segmentation","histogram":[{"label":"sky","fraction":0.5}]}"#
        );
    }
}
