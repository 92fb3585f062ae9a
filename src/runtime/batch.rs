//! [`BatchInference`] on libtorch.
//!
//! The frames come staged ([`super::stage`]): on the device, converted, through the image
//! processor. Per batch the worker only launches work: one forward per group of frames whose
//! processed sizes agree, post-processing for the whole group at once, and the results left on
//! the device ([`super::download`]) for each pipeline's output thread to copy back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tch::Tensor;

use super::contract::{
    Annotation, BatchInference, FrameFailure, FrameFormats, FrameStager, InferenceError,
    ModelRuntime,
};
use super::download::TorchResult;
use super::graphs::ModelRunner;
use super::native::{self, CudaEvent};
use super::stage::{FramePlan, StagedFrame, TorchStager};
use super::tensors::{self, ForwardError};
use crate::frames::{Frame, Pixels, Processed};
use crate::models::checkpoint::ModelInfo;
use crate::models::device::torch_kind;
use crate::processing::{AnnotatedOnDevice, Annotator, BatchItem, Preprocessor, annotate_batch};

/// A model with its image processor, its stager and one annotator per pipeline using it.
pub struct TorchInference {
    /// The model, run eagerly or replayed from CUDA graphs.
    model: ModelRunner,
    frames: BatchFrames,
}

/// A staged frame and where it sits in the batch it came in.
pub(super) struct Staged {
    pub position: usize,
    pub frame: Frame,
    pub pixels: StagedFrame,
}

/// Everything of a batch but its forward: the staged frames taken out and grouped by processed
/// size, and each group's output annotated per pipeline into results left on the device.
/// Shared by the forward run here ([`TorchInference`]) and the one run by a server
/// ([`super::remote`]).
pub(super) struct BatchFrames {
    info: ModelInfo,
    stager: Arc<TorchStager>,
    annotators: Vec<Annotator>,
    /// Pipeline index -> its annotator in `annotators`.
    slots: HashMap<usize, usize>,
}

/// A batch's frames grouped for their forwards, and those that could not be taken.
pub(super) struct Grouped {
    /// Frames whose processed sizes agree, each group in the order its frames came.
    pub groups: Vec<Vec<Staged>>,
    pub failed: Vec<(usize, FrameFailure)>,
}

impl BatchFrames {
    pub(super) fn new(info: ModelInfo, stager: Arc<TorchStager>) -> Self {
        Self {
            info,
            stager,
            annotators: Vec::new(),
            slots: HashMap::new(),
        }
    }

    pub(super) fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub(super) fn attach(&mut self, pipeline: usize, annotation: &Annotation) {
        let annotator = Annotator::new(
            &annotation.overlay,
            self.info.task,
            self.info.id2label.clone(),
        )
        .with_raw_depth(annotation.raw_depth)
        .with_picture(annotation.picture);
        self.slots.insert(pipeline, self.annotators.len());
        self.annotators.push(annotator);
    }

    /// Takes each frame's staged pixels and groups the frames whose processed sizes agree
    /// (each group shares one forward).
    pub(super) fn group(&self, frames: Vec<Frame>) -> Grouped {
        let mut groups: BTreeMap<Vec<i64>, Vec<Staged>> = BTreeMap::new();
        let mut failed = Vec::new();
        for (position, mut frame) in frames.into_iter().enumerate() {
            match self.take_staged(&mut frame) {
                Ok(pixels) => groups
                    .entry(pixels.pixel_values.size())
                    .or_default()
                    .push(Staged {
                        position,
                        frame,
                        pixels,
                    }),
                Err(error) => failed.push((
                    position,
                    FrameFailure {
                        frame: Box::new(frame),
                        error: Arc::new(error),
                    },
                )),
            }
        }
        Grouped {
            groups: groups.into_values().collect(),
            failed,
        }
    }

    /// The frame's staged pixels, ordered before the work this thread launches next; a frame
    /// that reaches the worker unstaged is staged here.
    fn take_staged(&self, frame: &mut Frame) -> Result<StagedFrame, InferenceError> {
        let staged = self.take_pixels(frame)?;
        self.join_main_stream(&staged)
            .map_err(|reason| InferenceError::Upload {
                device: format!("{:?}", self.info.device),
                reason,
            })?;
        Ok(staged)
    }

    /// A frame staged on a side stream: this thread's stream waits (on the device) for its
    /// event, and the allocator is told this stream reads its tensors, so their memory is not
    /// reused on the side stream before the model is done with them.
    fn join_main_stream(&self, staged: &StagedFrame) -> Result<(), String> {
        let (Some(ready), tch::Device::Cuda(index)) = (&staged.ready, self.info.device) else {
            return Ok(());
        };
        ready
            .block(index)
            .and_then(|()| native::record_stream(&staged.pixel_values, index))
            .and_then(|()| native::record_stream(&staged.rgb, index))
            .map_err(|e| e.to_string())
    }

    fn take_pixels(&self, frame: &mut Frame) -> Result<StagedFrame, InferenceError> {
        match std::mem::replace(&mut frame.pixels, Pixels::Taken) {
            Pixels::Device(pixels) => pixels
                .into_any()
                .downcast::<StagedFrame>()
                .map(|b| *b)
                .map_err(|_| InferenceError::NotStaged),
            Pixels::Host(buffer) => {
                self.stager
                    .stage_pixels(buffer, &frame.layout)
                    .map_err(|reason| InferenceError::Upload {
                        device: format!("{:?}", self.info.device),
                        reason,
                    })
            }
            Pixels::Taken => Err(InferenceError::NotStaged),
        }
    }

    /// A group's results from its forward's output (f32 on the device): each frame annotated
    /// and left on the device, or the forward's error for every frame of the group.
    pub(super) fn finish(
        &mut self,
        group: Vec<Staged>,
        output: Result<Tensor, InferenceError>,
    ) -> Vec<(usize, Result<Processed, FrameFailure>)> {
        let output = match output {
            Ok(output) => output,
            Err(error) => return fail_group(group, error),
        };
        let annotated = self.annotate(&group, &output);
        let ready = self.results_ready();
        group
            .into_iter()
            .zip(annotated)
            .map(|(s, annotated)| {
                let outcome = match annotated {
                    Ok(annotated) => {
                        let pending = TorchResult {
                            annotated,
                            ready: ready.clone(),
                            format: self.stager.picture_format(),
                            fps: s.frame.fps,
                        };
                        Ok(Processed::pending(s.frame, Box::new(pending)))
                    }
                    Err(error) => Err(FrameFailure {
                        frame: Box::new(s.frame),
                        error: Arc::new(error),
                    }),
                };
                (s.position, outcome)
            })
            .collect()
    }

    /// On CUDA, an event after the group's post-processing, for the output threads to wait on
    /// (without one they copy on the main stream, behind whatever was launched since: slower,
    /// never wrong).
    fn results_ready(&self) -> Option<Arc<CudaEvent>> {
        let tch::Device::Cuda(index) = self.info.device else {
            return None;
        };
        if !self.stager.side_streams().on() {
            return None;
        }
        match CudaEvent::record(index) {
            Ok(event) => Some(Arc::new(event)),
            Err(e) => {
                tracing::debug!(model = %self.info.name, "no results event: {e}");
                None
            }
        }
    }

    /// The group's post-processing, one result per frame in order.
    fn annotate(
        &mut self,
        group: &[Staged],
        output: &Tensor,
    ) -> Vec<Result<AnnotatedOnDevice, InferenceError>> {
        let slots: Vec<Option<usize>> = group
            .iter()
            .map(|s| self.slots.get(&s.frame.pipeline).copied())
            .collect();
        if slots.iter().any(Option::is_none) {
            // A pipeline never attached: a defect, reported for each of its frames.
            return group
                .iter()
                .map(|s| Err(InferenceError::NotAttached(s.frame.pipeline)))
                .collect();
        }
        let items: Vec<BatchItem<'_>> = group
            .iter()
            .zip(slots.into_iter().flatten())
            .map(|(s, annotator)| BatchItem {
                annotator,
                frame: &s.pixels.rgb,
            })
            .collect();
        tch::no_grad(|| annotate_batch(&mut self.annotators, &items, output))
            .into_iter()
            .map(|r| r.map_err(InferenceError::Postprocessing))
            .collect()
    }
}

/// Every frame of a group fails with one shared error.
pub(super) fn fail_group(
    group: Vec<Staged>,
    error: InferenceError,
) -> Vec<(usize, Result<Processed, FrameFailure>)> {
    let error = Arc::new(error);
    group
        .into_iter()
        .map(|s| {
            let failure = FrameFailure {
                frame: Box::new(s.frame),
                error: error.clone(),
            };
            (s.position, Err(failure))
        })
        .collect()
}

impl TorchInference {
    pub fn new(model: ModelRunner, info: ModelInfo, preprocessor: Preprocessor) -> Self {
        let plan = FramePlan::new(FrameFormats::Auto, info.device);
        let stager = TorchStager::new(
            info.device,
            torch_kind(info.dtype),
            Arc::new(preprocessor),
            plan,
        );
        if info.device.is_cuda() {
            // Which way this model's frames go, said once: a shim without CUDA keeps them on
            // the default stream rather than failing each one.
            tracing::info!(model = %info.name, "{}", stager.side_streams());
        }
        Self {
            model,
            frames: BatchFrames::new(info, Arc::new(stager)),
        }
    }

    /// Takes frames from sources in `formats` instead of the device's default.
    pub fn with_frames(mut self, formats: FrameFormats) -> Self {
        let info = self.frames.info.clone();
        let stager = TorchStager::new(
            info.device,
            torch_kind(info.dtype),
            self.frames.stager.preprocessor(),
            FramePlan::new(formats, info.device),
        );
        self.frames = BatchFrames::new(info, Arc::new(stager));
        self
    }

    /// What the model's pipelines' sources call to stage their frames.
    pub fn stager(&self) -> Arc<dyn FrameStager> {
        self.frames.stager.clone()
    }

    /// The model ready for a worker, with its stager.
    pub fn into_runtime(self) -> ModelRuntime {
        let task = self.frames.info.task;
        let cuda_device = match self.frames.info.device {
            tch::Device::Cuda(index) => Some(index),
            _ => None,
        };
        ModelRuntime {
            stager: self.stager(),
            inference: Box::new(self),
            task,
            cuda_device,
        }
    }

    /// Forward of frames that share a processed size (f32 output on the device).
    fn forward(&mut self, group: &[Staged]) -> Result<Tensor, InferenceError> {
        let inputs: Vec<&Tensor> = group.iter().map(|s| &s.pixels.pixel_values).collect();
        let name = &self.frames.info.name;
        Tensor::f_cat(&inputs, 0)
            .map_err(|e| InferenceError::Preprocessing(e.into()))
            .and_then(|batch| {
                tensors::forward(&mut self.model, &batch).map_err(|e| match e {
                    ForwardError::Preprocessing(e) => InferenceError::Preprocessing(e),
                    ForwardError::Model(error) => InferenceError::Model {
                        model: name.clone(),
                        error: Box::new(error),
                    },
                })
            })
    }
}

impl BatchInference for TorchInference {
    fn attach(&mut self, pipeline: usize, annotation: &Annotation) {
        self.frames.attach(pipeline, annotation);
    }

    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>> {
        let count = frames.len();
        let mut results: Vec<Option<Result<Processed, FrameFailure>>> =
            (0..count).map(|_| None).collect();
        let grouped = self.frames.group(frames);
        for (position, failure) in grouped.failed {
            results[position] = Some(Err(failure));
        }
        for group in grouped.groups {
            let output = self.forward(&group);
            for (position, outcome) in self.frames.finish(group, output) {
                results[position] = Some(outcome);
            }
        }
        results.into_iter().flatten().collect()
    }
}
