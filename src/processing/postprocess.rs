//! Model output to what people see and what the metadata records, on the model's device: depth
//! colour maps, segmentation palettes, classification scores.

use std::collections::VecDeque;
use std::sync::Arc;

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

/// An annotated frame whose results are still on the device: what a batch leaves for the
/// output thread to copy back, so that the model's thread never waits for the device.
#[derive(Debug)]
pub struct AnnotatedOnDevice {
    /// As [`Annotated::frame`].
    pub frame: Tensor,
    pub results: DeviceResults,
    /// As [`Annotated::raw_depth`].
    pub raw_depth: Option<Tensor>,
}

impl AnnotatedOnDevice {
    /// Copies the results to the host (waits for the device).
    pub fn into_host(self) -> Result<Annotated, ProcessingError> {
        Ok(Annotated {
            results: self.results.to_host()?,
            frame: self.frame,
            raw_depth: self.raw_depth,
        })
    }
}

/// A frame's results on the device, with what reading them needs.
#[derive(Debug)]
pub enum DeviceResults {
    /// f64 [3]: min, mean, max of the depth map at frame size.
    Depth { stats: Tensor },
    /// f64 [C]: the class probabilities averaged over the smoothing window.
    Classes {
        mean: Tensor,
        labels: Arc<Vec<String>>,
        top_k: u32,
        min_score: f64,
    },
    /// int64 [C]: pixels per class.
    Segmentation {
        counts: Tensor,
        pixels: i64,
        labels: Arc<Vec<String>>,
    },
}

fn label(labels: &[String], class: usize) -> String {
    labels
        .get(class)
        .cloned()
        .unwrap_or_else(|| format!("class {class}"))
}

impl DeviceResults {
    /// The results as the metadata records them (copies them from the device).
    pub fn to_host(&self) -> Result<FrameResults, ProcessingError> {
        Ok(match self {
            Self::Depth { stats } => {
                let stats = Vec::<f64>::try_from(stats.f_to_device(Device::Cpu)?)?;
                FrameResults::Depth {
                    min: stats[0],
                    mean: stats[1],
                    max: stats[2],
                }
            }
            Self::Classes {
                mean,
                labels,
                top_k,
                min_score,
            } => {
                let mean = Vec::<f64>::try_from(mean.f_to_device(Device::Cpu)?)?;
                let mut order: Vec<usize> = (0..mean.len()).collect();
                order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(a.cmp(&b)));
                let top_k = order
                    .into_iter()
                    .take((*top_k).max(1) as usize)
                    .filter(|&class| mean[class] >= *min_score)
                    .map(|class| (label(labels, class), mean[class]))
                    .collect();
                FrameResults::Classes { top_k }
            }
            Self::Segmentation {
                counts,
                pixels,
                labels,
            } => {
                let counts = Vec::<i64>::try_from(counts.f_to_device(Device::Cpu)?)?;
                let total = *pixels as f64;
                let mut histogram: Vec<(String, f64)> = counts
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(class, n)| (label(labels, class), *n as f64 / total))
                    .collect();
                histogram.sort_by(|a, b| b.1.total_cmp(&a.1));
                FrameResults::Segmentation { histogram }
            }
        })
    }
}

/// Copies a [`Annotated::raw_depth`] tensor to the host as u16 samples in row-major order.
pub fn depth16_to_vec(raw: &Tensor) -> Result<Vec<u16>, ProcessingError> {
    let values = Vec::<i16>::try_from(raw.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
    Ok(values.into_iter().map(|v| v as u16).collect())
}

/// Turns model outputs into annotated frames. One per pipeline: it holds the EMA depth range and
/// the classification score history (on the device), and the lookup tables already uploaded.
pub struct Annotator {
    overlay: OverlayConfig,
    /// Also make the raw 16-bit depth (for `depth16` sinks).
    raw_depth: bool,
    /// Draw the overlay; without it the annotated frame is the frame itself.
    picture: bool,
    task: Task,
    labels: Arc<Vec<String>>,
    /// f64 [2] on the device: the `ema` depth range so far.
    ema: Option<Tensor>,
    /// f64 [C] probabilities of the last frames, on the device.
    history: VecDeque<Tensor>,
    /// Colormap or palette as uint8 [N, 3] on the device it was last used on.
    table: Option<Tensor>,
}

/// One frame of a batch to annotate: which annotator (its pipeline's) and its RGB pixels
/// (uint8 [H, W, 3] on the device).
pub struct BatchItem<'a> {
    pub annotator: usize,
    pub frame: &'a Tensor,
}

impl Annotator {
    pub fn new(overlay: &OverlayConfig, task: Task, labels: Vec<String>) -> Self {
        Self {
            overlay: overlay.clone(),
            raw_depth: false,
            picture: true,
            task,
            labels: Arc::new(labels),
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

    /// Draw the overlay (the default); `false` when nothing shows the picture: the results are
    /// the same, and the annotated frame is the frame as it came.
    pub fn with_picture(mut self, picture: bool) -> Self {
        self.picture = picture;
        self
    }

    /// The depth range the next `ema` frame starts from, if any frame was seen.
    pub fn ema_range(&self) -> Option<(f64, f64)> {
        let range = Vec::<f64>::try_from(self.ema.as_ref()?.f_to_device(Device::Cpu).ok()?).ok()?;
        Some((range[0], range[1]))
    }

    /// frame: uint8 [H, W, 3] on the device; output: the model output for this one frame (depth
    /// [h', w'], segmentation logits [C, h', w'], classification logits [C]; a leading batch
    /// dimension of 1 is accepted). Returns the annotated uint8 frame (on the device; [H, 2W, 3]
    /// for side_by_side) plus the per-frame results. A batch of one of [`annotate_batch`].
    pub fn annotate(
        &mut self,
        frame: &Tensor,
        output: &Tensor,
    ) -> Result<Annotated, ProcessingError> {
        let output = squeeze_batch(output, self.task)?.f_unsqueeze(0)?;
        let item = BatchItem {
            annotator: 0,
            frame,
        };
        annotate_batch(std::slice::from_mut(self), &[item], &output)
            .pop()
            .ok_or_else(|| ProcessingError::Batch("no result for the frame".into()))??
            .into_host()
    }

    /// The depth range this frame is shown in (f64 [2] on the device), given its statistics
    /// (f64 [3]: min, mean, max); `ema` moves its running range.
    fn range(&mut self, stats: &Tensor) -> Result<Tensor, ProcessingError> {
        let min_max = Tensor::f_stack(&[stats.f_get(0)?, stats.f_get(2)?], 0)?;
        Ok(match self.overlay.range {
            DepthRange::PerFrame => min_max,
            DepthRange::Fixed([lo, hi]) => Tensor::f_stack(
                &[
                    min_max.f_get(0)?.f_full_like(lo)?,
                    min_max.f_get(1)?.f_full_like(hi)?,
                ],
                0,
            )?,
            DepthRange::Ema => {
                let range = match &self.ema {
                    None => min_max,
                    Some(previous) => {
                        previous.f_add(&min_max.f_sub(previous)?.f_mul_scalar(EMA_WEIGHT)?)?
                    }
                };
                self.ema = Some(range.shallow_clone());
                range
            }
        })
    }

    /// Adds a frame's probabilities (f64 [C]) to the history; returns the smoothed ones.
    fn smooth(&mut self, probabilities: Tensor) -> Result<Tensor, ProcessingError> {
        if self
            .history
            .front()
            .is_some_and(|p| p.size() != probabilities.size())
        {
            self.history.clear();
        }
        self.history.push_back(probabilities);
        while self.history.len() > self.overlay.smoothing_frames.max(1) as usize {
            self.history.pop_front();
        }
        let history: Vec<&Tensor> = self.history.iter().collect();
        Ok(Tensor::f_stack(&history, 0)?.f_mean_dim(0, false, Kind::Double)?)
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

    fn segmentation(
        &mut self,
        frame: &Tensor,
        logits: &Tensor,
    ) -> Result<AnnotatedOnDevice, ProcessingError> {
        let (height, width, _) = frame.size3()?;
        let classes = logits.size()[0];
        let labels = segmentation_labels(logits, height, width)?;
        // scatter_add rather than bincount, whose output size is read back from the device.
        let flat = labels.f_flatten(0, -1)?;
        let counts = Tensor::f_zeros([classes], (Kind::Int64, flat.device()))?.f_scatter_add(
            0,
            &flat,
            &flat.f_ones_like()?,
        )?;
        let frame = if self.picture {
            let table = self.table(frame.device(), classes, || palette(classes as usize))?;
            let map = lookup(&table, &labels, height, width)?;
            compose(frame, &map, self.overlay.mode, self.overlay.alpha)?
        } else {
            frame.shallow_clone()
        };
        Ok(AnnotatedOnDevice {
            frame,
            results: DeviceResults::Segmentation {
                counts,
                pixels: height * width,
                labels: self.labels.clone(),
            },
            raw_depth: None,
        })
    }
}

/// A batch's frames annotated: `outputs` holds the model's output for every item in order
/// ([N, h', w'] depth, [N, C, h', w'] segmentation logits, [N, C] classification logits).
/// Stateless steps run once for the whole batch (frames of one size and overlay together);
/// only the tiny per-pipeline steps (the `ema` range, score smoothing) go frame by frame, in
/// order. Nothing is copied to the host: results stay on the device ([`DeviceResults`]).
/// A frame that cannot be annotated fails alone.
pub fn annotate_batch(
    annotators: &mut [Annotator],
    items: &[BatchItem<'_>],
    outputs: &Tensor,
) -> Vec<Result<AnnotatedOnDevice, ProcessingError>> {
    let mut results: Vec<Option<Result<AnnotatedOnDevice, ProcessingError>>> =
        items.iter().map(|_| None).collect();
    let mut valid = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match check_item(annotators, item, outputs) {
            Ok(()) => valid.push(i),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let Some(&first) = valid.first() else {
        return results.into_iter().flatten().collect();
    };
    let task = annotators[items[first].annotator].task;
    let done = match check_outputs(outputs, items.len(), task) {
        Err(e) => {
            let message = e.to_string();
            valid
                .iter()
                .map(|&i| (i, Err(ProcessingError::Output(message.clone()))))
                .collect()
        }
        Ok(()) => match task {
            Task::Depth => depth_batch(annotators, items, &valid, outputs),
            Task::Segmentation => valid
                .iter()
                .map(|&i| {
                    let item = &items[i];
                    let logits = outputs.f_get(i as i64).map_err(ProcessingError::from);
                    (
                        i,
                        logits
                            .and_then(|l| annotators[item.annotator].segmentation(item.frame, &l)),
                    )
                })
                .collect(),
            Task::Classification => classification_batch(annotators, items, &valid, outputs),
        },
    };
    for (i, result) in done {
        results[i] = Some(result);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ProcessingError::Batch("frame left out".into()))))
        .collect()
}

fn check_item(
    annotators: &[Annotator],
    item: &BatchItem<'_>,
    outputs: &Tensor,
) -> Result<(), ProcessingError> {
    let frame = item.frame;
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
    if outputs.device() != frame.device() {
        return Err(ProcessingError::Output(format!(
            "on {:?} while the frame is on {:?}: both must be on the model's device",
            outputs.device(),
            frame.device()
        )));
    }
    if item.annotator >= annotators.len() {
        return Err(ProcessingError::Batch(format!(
            "no annotator {} (of {})",
            item.annotator,
            annotators.len()
        )));
    }
    Ok(())
}

/// `outputs` must hold one output per item, of the task's shape.
fn check_outputs(outputs: &Tensor, count: usize, task: Task) -> Result<(), ProcessingError> {
    let want = match task {
        Task::Depth => 2,
        Task::Segmentation => 3,
        Task::Classification => 1,
    };
    let size = outputs.size();
    let ok = size.len() == want + 1 && size[0] == count as i64 && size.iter().all(|&d| d > 0);
    if !ok {
        return Err(ProcessingError::Output(format!(
            "expected {count} outputs of {} dimensions, got {size:?}",
            want
        )));
    }
    Ok(())
}

type Done = Vec<(usize, Result<AnnotatedOnDevice, ProcessingError>)>;

/// Items (by index) grouped by a key, keeping first-seen order.
fn group_by<K: PartialEq>(indices: &[usize], key: impl Fn(usize) -> K) -> Vec<(K, Vec<usize>)> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for &i in indices {
        let k = key(i);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    groups
}

/// The rows `indices` of `x`, gathered on its device (an index tensor would have to be copied
/// there from the host, which waits for everything queued on the device first).
fn rows(x: &Tensor, indices: &[usize]) -> Result<Tensor, ProcessingError> {
    let picked: Vec<Tensor> = indices
        .iter()
        .map(|&i| x.f_get(i as i64))
        .collect::<Result<_, _>>()?;
    Ok(Tensor::f_stack(&picked, 0)?)
}

fn depth_batch(
    annotators: &mut [Annotator],
    items: &[BatchItem<'_>],
    valid: &[usize],
    outputs: &Tensor,
) -> Done {
    let mut done = Done::new();
    let sizes = group_by(valid, |i| {
        let s = items[i].frame.size();
        (s[0], s[1])
    });
    for ((height, width), members) in sizes {
        match depth_group(annotators, items, &members, outputs, height, width) {
            Ok(group) => done.extend(group),
            Err(e) => {
                let message = e.to_string();
                done.extend(
                    members
                        .into_iter()
                        .map(|i| (i, Err(ProcessingError::Output(message.clone())))),
                );
            }
        }
    }
    done
}

/// Depth frames of one size: resized and measured together, ranged one by one (in order),
/// coloured and composed together per overlay style.
fn depth_group(
    annotators: &mut [Annotator],
    items: &[BatchItem<'_>],
    members: &[usize],
    outputs: &Tensor,
    height: i64,
    width: i64,
) -> Result<Done, ProcessingError> {
    let device = outputs.device();
    let chosen = rows(outputs, members)?;
    // A non-finite value (an f16 overflow) must not reach the stats or the table index.
    let depth = resize_depth_batch(&chosen, height, width)?.f_nan_to_num(0.0, 0.0, 0.0)?;
    let stats = Tensor::f_stack(
        &[
            depth.f_amin(&[1i64, 2][..], false)?,
            depth.f_mean_dim(&[1i64, 2][..], false, Kind::Float)?,
            depth.f_amax(&[1i64, 2][..], false)?,
        ],
        1,
    )?
    .f_to_kind(Kind::Double)?;
    let mut ranges = Vec::with_capacity(members.len());
    for (j, &i) in members.iter().enumerate() {
        ranges.push(annotators[items[i].annotator].range(&stats.f_get(j as i64)?)?);
    }
    let positions: Vec<usize> = (0..members.len()).collect();
    let styles = group_by(&positions, |j| {
        let a = &annotators[items[members[j]].annotator];
        let o = &a.overlay;
        (
            o.mode,
            o.colormap,
            o.alpha.to_bits(),
            o.invert,
            a.raw_depth,
            a.picture,
        )
    });
    let mut done = Done::new();
    for ((mode, colormap, alpha, invert, raw, picture), group) in styles {
        let frames: Vec<&Tensor> = group.iter().map(|&j| items[members[j]].frame).collect();
        // The range only shapes what is drawn: metadata alone needs the stats above.
        let unit = if raw || picture {
            let lo_hi = Tensor::f_stack(&group.iter().map(|&j| &ranges[j]).collect::<Vec<_>>(), 0)?;
            Some(unit_depth(&rows(&depth, &group)?, &lo_hi)?)
        } else {
            None
        };
        let raw_depth = match (&unit, raw) {
            (Some(unit), true) => Some(depth16(unit)?),
            _ => None,
        };
        let composed = match unit {
            Some(unit) if picture => {
                let shown = if invert {
                    unit.f_neg()?.f_add_scalar(1.0)?
                } else {
                    unit
                };
                let index = shown
                    .f_mul_scalar(255.0)?
                    .f_round()?
                    .f_to_kind(Kind::Int64)?;
                let first = items[members[group[0]]].annotator;
                let table = annotators[first].table(device, 256, || colormap_table(colormap))?;
                let map = table.f_index_select(0, &index.f_flatten(0, -1)?)?.f_view([
                    group.len() as i64,
                    height,
                    width,
                    3,
                ])?;
                Some(compose(
                    &Tensor::f_stack(&frames, 0)?,
                    &map,
                    mode,
                    f64::from_bits(alpha),
                )?)
            }
            _ => None,
        };
        for (k, &j) in group.iter().enumerate() {
            let frame = match &composed {
                Some(composed) => composed.f_get(k as i64)?,
                None => frames[k].shallow_clone(),
            };
            done.push((
                members[j],
                Ok(AnnotatedOnDevice {
                    frame,
                    results: DeviceResults::Depth {
                        stats: stats.f_get(j as i64)?,
                    },
                    raw_depth: raw_depth.as_ref().map(|r| r.f_get(k as i64)).transpose()?,
                }),
            ));
        }
    }
    Ok(done)
}

/// Depth [N, H, W] as 0..=1 within each frame's range (f64 [N, 2]: lo, hi); a flat map (or an
/// empty range) is the low end of the colormap, not a division by 0.
fn unit_depth(depth: &Tensor, lo_hi: &Tensor) -> Result<Tensor, ProcessingError> {
    let (lo, hi) = (lo_hi.f_select(1, 0)?, lo_hi.f_select(1, 1)?);
    let spread = hi.f_sub(&lo)?;
    let scale = hi
        .f_abs()?
        .f_maximum(&lo.f_abs()?)?
        .f_clamp_min(1e-30)?
        .f_mul_scalar(f64::EPSILON)?;
    let usable = spread.f_gt_tensor(&scale)?.f_view([-1, 1, 1])?;
    let as_frames = |t: &Tensor| t.f_to_kind(Kind::Float).and_then(|t| t.f_view([-1, 1, 1]));
    let unit = depth
        .f_sub(&as_frames(&lo)?)?
        .f_div(&as_frames(&spread)?)?
        .f_clamp(0.0, 1.0)?;
    Ok(unit.f_where_self(&usable, &unit.f_zeros_like()?)?)
}

/// 0..=1 depth as GRAY16_LE samples held in Int16 (the u16 bit patterns).
fn depth16(unit: &Tensor) -> Result<Tensor, ProcessingError> {
    let v = unit
        .f_mul_scalar(65535.0)?
        .f_round()?
        .f_to_kind(Kind::Int)?;
    // Values above i16::MAX wrap explicitly into the u16 bit pattern.
    let wrapped = v.f_sub(&v.f_gt(32767)?.f_to_kind(Kind::Int)?.f_mul_scalar(65536)?)?;
    Ok(wrapped.f_to_kind(Kind::Int16)?)
}

fn classification_batch(
    annotators: &mut [Annotator],
    items: &[BatchItem<'_>],
    valid: &[usize],
    outputs: &Tensor,
) -> Done {
    let probabilities = outputs
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_softmax(1, Kind::Float))
        .and_then(|t| t.f_to_kind(Kind::Double));
    valid
        .iter()
        .map(|&i| {
            let item = &items[i];
            let result = probabilities
                .as_ref()
                .map_err(|e| ProcessingError::Output(e.to_string()))
                .and_then(|p| Ok(p.f_get(i as i64)?))
                .and_then(|p| {
                    let annotator = &mut annotators[item.annotator];
                    Ok(AnnotatedOnDevice {
                        frame: item.frame.shallow_clone(),
                        results: DeviceResults::Classes {
                            mean: annotator.smooth(p)?,
                            labels: annotator.labels.clone(),
                            top_k: annotator.overlay.top_k,
                            min_score: annotator.overlay.min_score,
                        },
                        raw_depth: None,
                    })
                });
            (i, result)
        })
        .collect()
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

/// Puts the map on or beside the frame. Both are uint8 [H, W, 3], or batches of them.
fn compose(
    frame: &Tensor,
    map: &Tensor,
    mode: OverlayMode,
    alpha: f64,
) -> Result<Tensor, ProcessingError> {
    Ok(match mode {
        OverlayMode::MapOnly => map.shallow_clone(),
        OverlayMode::SideBySide => Tensor::f_cat(&[frame, map], -2)?,
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

/// Depth predictions [N, h, w] resized to [N, height, width], each as [`resize_depth`].
fn resize_depth_batch(depth: &Tensor, height: i64, width: i64) -> Result<Tensor, ProcessingError> {
    Ok(depth
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(1)?
        .f_upsample_bicubic2d([height, width], false, None, None)?
        .f_squeeze_dim(1)?)
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
