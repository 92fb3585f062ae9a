//! The contract between the pipelines' inference worker and a model: frames in, annotated
//! frames and typed results out. No tensor crosses it.

use std::sync::Arc;

use crate::config::{OverlayConfig, Task};
use crate::frames::{Frame, Processed};
use crate::models::ModelError;
use crate::processing::ProcessingError;

/// What a worker runs on a batch.
pub trait BatchInference: Send {
    /// Declares a pipeline whose frames will come, with how its frames are annotated. Called
    /// once per pipeline before its first frame.
    fn attach(&mut self, _pipeline: usize, _annotation: &Annotation) {}

    /// Processes frames (possibly from several pipelines) and returns one result per frame, in
    /// order. A failure of one frame must not lose the others.
    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>>;
}

/// A frame the model could not process, and why.
#[derive(Debug)]
pub struct FrameFailure {
    pub frame: Frame,
    /// Shared: a failed forward fails every frame of its batch with the same error.
    pub error: Arc<InferenceError>,
}

/// How one pipeline's frames are annotated.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub overlay: OverlayConfig,
    /// Also make the raw 16-bit depth map (the pipeline has a `depth16` sink).
    pub raw_depth: bool,
}

/// A model made ready for a worker.
pub struct ModelRuntime {
    pub inference: Box<dyn BatchInference>,
    pub task: Task,
}

/// Why a frame or a batch could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("frame buffer cannot be mapped")]
    Unmappable,
    #[error("{0}")]
    Frame(#[from] crate::frames::FrameTooSmall),
    #[error("cannot copy the frame to {device}: {reason}")]
    Upload { device: String, reason: String },
    #[error("preprocessing: {0}")]
    Preprocessing(ProcessingError),
    #[error("model {model}: {error}")]
    Model {
        model: String,
        error: Box<ModelError>,
    },
    #[error("post-processing: {0}")]
    Postprocessing(ProcessingError),
    #[error("cannot copy the annotated frame to the host: {0}")]
    Download(String),
    #[error("no annotation was attached for pipeline {0}")]
    NotAttached(usize),
}
