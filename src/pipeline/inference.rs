//! Batched inference on libtorch for the worker: frames in, annotated frames and results out.
//!
//! Per batch: one host→device copy per frame (uint8), preprocessing as tensor ops on the
//! device, one forward per group of frames whose processed sizes agree, post-processing on
//! the device, and one device→host copy per annotated frame.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::engine::ModelRuntime;
use super::frame::{Frame, Processed, RgbImage, pack_rgb_rows};
use super::worker::BatchInference;
use crate::config::{Config, ModelConfig, PipelineConfig};
use crate::models::checkpoint::{self, LoadOptions, ModelInfo, ModelSource};
use crate::models::{ModelError, Task, VisionModel};
use crate::processing::{Annotator, FrameResults, Preprocessor, ProcessingError, depth16_to_vec};

/// A frame on the device, with its position in the batch it came in.
type Uploaded = (usize, Frame, Tensor);

/// A model with its image processor and one annotator per pipeline using it.
pub struct TorchInference {
    model: Box<dyn VisionModel>,
    info: ModelInfo,
    preprocessor: Preprocessor,
    annotators: HashMap<usize, Annotator>,
}

impl TorchInference {
    pub fn new(
        model: Box<dyn VisionModel>,
        info: ModelInfo,
        preprocessor: Preprocessor,
        pipelines: &[(usize, &PipelineConfig)],
    ) -> Self {
        let annotators = pipelines
            .iter()
            .map(|(index, pipeline)| {
                let mut overlay = pipeline.overlay.clone();
                overlay.raw_depth = pipeline
                    .sinks
                    .iter()
                    .any(|s| matches!(s, crate::config::SinkConfig::Depth16(_)));
                (
                    *index,
                    Annotator::new(&overlay, info.task, info.id2label.clone()),
                )
            })
            .collect();
        Self {
            model,
            info,
            preprocessor,
            annotators,
        }
    }

    /// Uploads one frame as uint8 [H, W, 3] on the model's device.
    fn upload(&self, frame: &Frame) -> Result<Tensor, String> {
        let map = frame
            .buffer
            .map_readable()
            .map_err(|_| "frame buffer cannot be mapped".to_string())?;
        let packed_len = frame.width as usize * 3 * frame.height as usize;
        // Unpadded rows (the usual case) go straight from GStreamer's memory into the tensor;
        // only padded ones need packing first.
        if frame.stride == frame.width as usize * 3 && map.len() >= packed_len {
            upload_rgb(
                &map[..packed_len],
                frame.height,
                frame.width,
                self.info.device,
            )
        } else {
            let packed = pack_rgb_rows(&map, frame.width, frame.height, frame.stride)?;
            upload_rgb(&packed, frame.height, frame.width, self.info.device)
        }
    }

    /// Preprocess, forward and annotate frames that share a processed size.
    fn run_group(
        &mut self,
        frames: &[(Frame, Tensor)],
    ) -> Result<Vec<Result<Processed, String>>, String> {
        let inputs: Vec<Tensor> = frames.iter().map(|(_, t)| t.shallow_clone()).collect();
        let (_, output) = preprocess_and_forward(
            self.model.as_ref(),
            &self.preprocessor,
            self.info.dtype.kind(),
            &inputs,
        )
        .map_err(|e| match e {
            ForwardError::Preprocessing(e) => format!("preprocessing: {e}"),
            ForwardError::Model(e) => format!("model {}: {e}", self.info.name),
        })?;
        let mut results = Vec::with_capacity(frames.len());
        for (i, (frame, pixels)) in frames.iter().enumerate() {
            results.push(tch::no_grad(|| {
                self.annotate(frame, pixels, &output, i as i64)
            }));
        }
        Ok(results)
    }

    fn annotate(
        &mut self,
        frame: &Frame,
        pixels: &Tensor,
        output: &Tensor,
        i: i64,
    ) -> Result<Processed, String> {
        let annotator = self
            .annotators
            .get_mut(&frame.pipeline)
            .ok_or_else(|| format!("no annotator for pipeline {}", frame.pipeline))?;
        let one = output.f_get(i).map_err(|e| e.to_string())?;
        let annotated = annotator
            .annotate(pixels, &one)
            .map_err(|e| format!("post-processing: {e}"))?;
        let label = label_text(&annotated.results);
        let results = serde_json::to_value(&annotated.results).map_err(|e| e.to_string())?;
        // Classification frames are published unchanged (the label is drawn by the output).
        let image = if self.info.task == Task::Classification {
            None
        } else {
            Some(download(&annotated.frame)?)
        };
        let raw_depth = match &annotated.raw_depth {
            Some(raw) => Some(depth16_to_vec(raw).map_err(|e| format!("raw depth: {e}"))?),
            None => None,
        };
        Ok(Processed {
            frame: frame.clone(),
            annotated: image,
            results: Some(results),
            label,
            raw_depth,
        })
    }
}

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
        tensor
            .f_to_device(device)
            .map_err(|e| format!("cannot copy the frame to {device:?}: {e}"))
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
    model: &dyn VisionModel,
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

/// The text drawn onto classification video: the best class and its score, `""` when no class
/// reaches `min_score`; `None` for other tasks (their picture is the annotation).
pub fn label_text(results: &FrameResults) -> Option<String> {
    match results {
        FrameResults::Classes { top_k } => Some(
            top_k
                .first()
                .map(|(label, score)| format!("{label} {:.0}%", score * 100.0))
                .unwrap_or_default(),
        ),
        _ => None,
    }
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
        .map_err(|e| format!("cannot copy the annotated frame to the host: {e}"))?;
    let data = Vec::<u8>::try_from(host.f_flatten(0, -1).map_err(|e| e.to_string())?)
        .map_err(|e| format!("cannot read the annotated frame: {e}"))?;
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

impl BatchInference for TorchInference {
    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, (Frame, String)>> {
        let count = frames.len();
        let mut results: Vec<Option<Result<Processed, (Frame, String)>>> =
            (0..count).map(|_| None).collect();
        // Frames whose processed sizes agree share one forward; the others get their own.
        let mut groups: BTreeMap<(i64, i64), Vec<Uploaded>> = BTreeMap::new();
        for (position, frame) in frames.into_iter().enumerate() {
            match self.upload(&frame) {
                Ok(pixels) => {
                    let size = self
                        .preprocessor
                        .output_size(i64::from(frame.height), i64::from(frame.width));
                    groups
                        .entry(size)
                        .or_default()
                        .push((position, frame, pixels));
                }
                Err(error) => results[position] = Some(Err((frame, error))),
            }
        }
        for (_, group) in groups {
            let (positions, members): (Vec<usize>, Vec<(Frame, Tensor)>) =
                group.into_iter().map(|(p, f, t)| (p, (f, t))).unzip();
            match self.run_group(&members) {
                Ok(outcomes) => {
                    for ((position, (frame, _)), outcome) in
                        positions.iter().zip(members).zip(outcomes)
                    {
                        results[*position] = Some(outcome.map_err(|error| (frame, error)));
                    }
                }
                Err(error) => {
                    for (position, (frame, _)) in positions.into_iter().zip(members) {
                        results[position] = Some(Err((frame, error.clone())));
                    }
                }
            }
        }
        results.into_iter().flatten().collect()
    }
}

/// Where a configured model comes from.
pub fn model_source(model: &ModelConfig) -> Result<ModelSource, String> {
    match (&model.path, &model.hub) {
        (Some(path), _) => Ok(ModelSource::Path(path.clone())),
        (None, Some(repo)) => Ok(ModelSource::Hub {
            repo: repo.clone(),
            revision: model.revision.clone().unwrap_or_else(|| "main".to_string()),
        }),
        (None, None) => Err("the model has neither `path` nor `hub`".to_string()),
    }
}

/// Loads a configured model with its image processor: what `visiond run` gives the engine.
pub fn load(
    name: &str,
    model: &ModelConfig,
    pipelines: &[(usize, &PipelineConfig)],
) -> Result<ModelRuntime, String> {
    let source = model_source(model)?;
    let options = LoadOptions {
        device: model.device,
        dtype: model.dtype,
        task: model.task,
        labels: model.labels.clone(),
    };
    let loaded = checkpoint::open(&source, &options).map_err(|e| e.to_string())?;
    let preprocessor =
        preprocessor_for(&loaded.info, model.input_size).map_err(|e| e.to_string())?;
    tracing::info!(
        model = name,
        checkpoint = %loaded.info.name,
        architecture = %loaded.info.architecture,
        device = ?loaded.info.device,
        dtype = ?loaded.info.dtype,
        pipelines = pipelines.len(),
        "model loaded"
    );
    let task = loaded.info.task;
    Ok(ModelRuntime {
        inference: Box::new(TorchInference::new(
            loaded.model,
            loaded.info,
            preprocessor,
            pipelines,
        )),
        task,
    })
}

/// The engine's model factory for a config.
pub fn factory(
    config: &Config,
) -> impl Fn(&str, &[(usize, &PipelineConfig)]) -> Result<ModelRuntime, String> + '_ {
    move |name: &str, pipelines: &[(usize, &PipelineConfig)]| {
        let model = config
            .daemon
            .models
            .get(name)
            .ok_or_else(|| format!("model {name} is not defined"))?;
        load(name, model, pipelines)
    }
}
