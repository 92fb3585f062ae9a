//! [`BatchInference`] on libtorch.
//!
//! Per batch: one host→device copy per frame (uint8), preprocessing as tensor ops on the
//! device, one forward per group of frames whose processed sizes agree, post-processing on
//! the device, and one device→host copy per annotated frame.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tch::Tensor;

use super::contract::{Annotation, BatchInference, FrameFailure, InferenceError};
use super::graphs::ModelRunner;
use super::tensors::{self, ForwardError};
use crate::config::Task;
use crate::frames::{Frame, Processed, pack_rgb_rows};
use crate::models::checkpoint::ModelInfo;
use crate::models::device::torch_kind;
use crate::processing::{Annotator, Preprocessor, depth16_to_vec};

/// A model with its image processor and one annotator per pipeline using it.
pub struct TorchInference {
    model: ModelRunner,
    info: ModelInfo,
    preprocessor: Preprocessor,
    annotators: HashMap<usize, Annotator>,
}

/// A frame on the device, with its position in the batch it came in.
struct Uploaded {
    position: usize,
    frame: Frame,
    pixels: Tensor,
}

impl TorchInference {
    pub fn new(model: ModelRunner, info: ModelInfo, preprocessor: Preprocessor) -> Self {
        Self {
            model,
            info,
            preprocessor,
            annotators: HashMap::new(),
        }
    }

    /// Uploads one frame as uint8 [H, W, 3] on the model's device.
    fn upload(&self, frame: &Frame) -> Result<Tensor, InferenceError> {
        let map = frame
            .buffer
            .map_readable()
            .map_err(|_| InferenceError::Unmappable)?;
        let packed_len = frame.width as usize * 3 * frame.height as usize;
        let device = self.info.device;
        let upload = |pixels: &[u8]| {
            tensors::upload_rgb(pixels, frame.height, frame.width, device).map_err(|reason| {
                InferenceError::Upload {
                    device: format!("{device:?}"),
                    reason,
                }
            })
        };
        // Unpadded rows (the usual case) go straight from GStreamer's memory into the tensor;
        // only padded ones need packing first.
        if frame.stride == frame.width as usize * 3 && map.len() >= packed_len {
            upload(&map[..packed_len])
        } else {
            upload(&pack_rgb_rows(
                &map,
                frame.width,
                frame.height,
                frame.stride,
            )?)
        }
    }

    /// Preprocess, forward and annotate frames that share a processed size.
    fn run_group(
        &mut self,
        frames: &[Uploaded],
    ) -> Result<Vec<Result<Processed, InferenceError>>, InferenceError> {
        let inputs: Vec<Tensor> = frames.iter().map(|f| f.pixels.shallow_clone()).collect();
        let (_, output) = tensors::preprocess_and_forward(
            &mut self.model,
            &self.preprocessor,
            torch_kind(self.info.dtype),
            &inputs,
        )
        .map_err(|e| match e {
            ForwardError::Preprocessing(e) => InferenceError::Preprocessing(e),
            ForwardError::Model(error) => InferenceError::Model {
                model: self.info.name.clone(),
                error: Box::new(error),
            },
        })?;
        let mut results = Vec::with_capacity(frames.len());
        for (i, uploaded) in frames.iter().enumerate() {
            results.push(tch::no_grad(|| self.annotate(uploaded, &output, i as i64)));
        }
        Ok(results)
    }

    fn annotate(
        &mut self,
        uploaded: &Uploaded,
        output: &Tensor,
        i: i64,
    ) -> Result<Processed, InferenceError> {
        let frame = &uploaded.frame;
        let annotator = self
            .annotators
            .get_mut(&frame.pipeline)
            .ok_or(InferenceError::NotAttached(frame.pipeline))?;
        let one = output
            .f_get(i)
            .map_err(|e| InferenceError::Postprocessing(e.into()))?;
        let annotated = annotator
            .annotate(&uploaded.pixels, &one)
            .map_err(InferenceError::Postprocessing)?;
        // Classification frames are published unchanged (the label is drawn by the output).
        let image = if self.info.task == Task::Classification {
            None
        } else {
            Some(tensors::download(&annotated.frame).map_err(InferenceError::Download)?)
        };
        let raw_depth = match &annotated.raw_depth {
            Some(raw) => Some(depth16_to_vec(raw).map_err(InferenceError::Postprocessing)?),
            None => None,
        };
        Ok(Processed {
            frame: frame.clone(),
            annotated: image,
            label: annotated.results.label(),
            results: Some(annotated.results),
            raw_depth,
        })
    }
}

impl BatchInference for TorchInference {
    fn attach(&mut self, pipeline: usize, annotation: &Annotation) {
        let annotator = Annotator::new(
            &annotation.overlay,
            self.info.task,
            self.info.id2label.clone(),
        )
        .with_raw_depth(annotation.raw_depth);
        self.annotators.insert(pipeline, annotator);
    }

    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>> {
        let count = frames.len();
        let mut results: Vec<Option<Result<Processed, FrameFailure>>> =
            (0..count).map(|_| None).collect();
        let fail = |frame: Frame, error: InferenceError| FrameFailure {
            frame,
            error: Arc::new(error),
        };
        // Frames whose processed sizes agree share one forward; the others get their own.
        let mut groups: BTreeMap<(i64, i64), Vec<Uploaded>> = BTreeMap::new();
        for (position, frame) in frames.into_iter().enumerate() {
            match self.upload(&frame) {
                Ok(pixels) => {
                    let size = self
                        .preprocessor
                        .output_size(i64::from(frame.height), i64::from(frame.width));
                    groups.entry(size).or_default().push(Uploaded {
                        position,
                        frame,
                        pixels,
                    });
                }
                Err(error) => results[position] = Some(Err(fail(frame, error))),
            }
        }
        for (_, group) in groups {
            match self.run_group(&group) {
                Ok(outcomes) => {
                    for (uploaded, outcome) in group.into_iter().zip(outcomes) {
                        results[uploaded.position] =
                            Some(outcome.map_err(|error| fail(uploaded.frame, error)));
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    for uploaded in group {
                        results[uploaded.position] = Some(Err(FrameFailure {
                            frame: uploaded.frame,
                            error: error.clone(),
                        }));
                    }
                }
            }
        }
        results.into_iter().flatten().collect()
    }
}
