//! The contract between the pipelines and a model: what the source threads call to stage
//! frames on the model's device ([`FrameStager`]), what the inference worker calls on a batch
//! ([`BatchInference`]: staged frames in, results left on the device out), and what the output
//! threads call to copy a result back ([`crate::frames::PendingResult`]). No tensor crosses it.

use std::sync::Arc;

use crate::config::{OverlayConfig, Task};
use crate::frames::{Frame, PixelFormat, Processed};
use crate::models::ModelError;
use crate::processing::ProcessingError;

/// What a worker runs on a batch.
pub trait BatchInference: Send {
    /// Declares a pipeline whose frames will come, with how its frames are annotated. Called
    /// once per pipeline before its first frame.
    fn attach(&mut self, _pipeline: usize, _annotation: &Annotation) {}

    /// Processes frames (possibly from several pipelines) and returns one result per frame, in
    /// order. A failure of one frame must not lose the others. Frames come staged by the
    /// model's [`FrameStager`]; results may be left on the device ([`Processed::pending`]) for
    /// the output thread to copy back.
    fn process(&mut self, frames: Vec<Frame>) -> Vec<Result<Processed, FrameFailure>>;

    /// A model whose batches run elsewhere (an inference server) and overlap: the worker then
    /// submits batches and collects their results through [`Pipelined`] instead of calling
    /// [`BatchInference::process`]. `None` for a model run in this process.
    fn pipelined(&mut self) -> Option<&mut dyn Pipelined> {
        None
    }

    /// A served model's client counters, for `/metrics`.
    fn remote_stats(&self) -> Option<Arc<super::remote::RemoteStats>> {
        None
    }
}

/// Inference whose batches are sent off without waiting and come back later, several at once
/// (`max_in_flight`), so that one batch's round trip hides behind the next.
pub trait Pipelined {
    /// Whether a batch may go out now.
    fn admission(&self) -> Admission;

    /// Sends a batch; never blocks. Its results come back through [`Pipelined::collect`],
    /// failures included (a frame the request could not carry fails there).
    fn submit(&mut self, frames: Vec<Frame>);

    /// Ready whenever something changed: a batch came back, or the server came or went.
    fn wakeups(&self) -> crossbeam_channel::Receiver<()>;

    /// The results of the batches that came back, in the order the batches were submitted
    /// (each pipeline's frames stay in order), one per frame.
    fn collect(&mut self) -> Vec<Result<Processed, FrameFailure>>;
}

/// Whether a [`Pipelined`] model takes a batch now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Open,
    /// As many batches are outstanding as it may have: wait for one to come back.
    Full,
    /// The server cannot take requests (down, not ready, or serving another model), and why:
    /// the frames that reach the model meanwhile are dropped as `unavailable`.
    Waiting(String),
}

/// Why a served model's request failed, which decides how its frames' loss is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RemoteFailure {
    /// No answer within `timeout_ms`.
    Timeout,
    /// The server could not be reached, or is not ready.
    Unavailable,
    /// The server refused the request or answered something unusable.
    Error,
}

impl RemoteFailure {
    pub const ALL: [RemoteFailure; 3] = [Self::Timeout, Self::Unavailable, Self::Error];

    /// The metrics' `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
        }
    }
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pipeline's own threads call before a frame enters the model's queue: the copy to the
/// model's device (and what can be prepared there) happens in each source's streaming thread,
/// so many streams share that work and the model's thread only launches batches.
pub trait FrameStager: Send + Sync {
    /// The pixel formats the source should deliver, preferred first (its appsink's caps).
    fn formats(&self) -> Vec<PixelFormat>;

    /// Moves the frame's pixels to the model's device ([`crate::frames::Pixels::Device`]).
    fn stage(&self, frame: &mut Frame) -> Result<(), StageError>;

    /// What staging has done so far.
    fn counters(&self) -> StageCounters;
}

/// A stager that leaves frames in GStreamer's buffers, in the formats decoders make: for
/// inference that reads host memory (stand-ins, models outside libtorch).
pub struct HostFrames;

impl FrameStager for HostFrames {
    fn formats(&self) -> Vec<PixelFormat> {
        vec![PixelFormat::I420, PixelFormat::Nv12, PixelFormat::Rgb]
    }

    fn stage(&self, _frame: &mut Frame) -> Result<(), StageError> {
        Ok(())
    }

    fn counters(&self) -> StageCounters {
        StageCounters::default()
    }
}

/// What a [`FrameStager`] did: frames staged and every host-side copy of their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCounters {
    pub frames: u64,
    /// Copies of a frame's bytes made on the host (into page-locked memory for the device);
    /// 0 where the device reads GStreamer's own memory (the CPU).
    pub host_copies: u64,
    pub host_bytes_copied: u64,
}

/// Why a frame could not be staged.
#[derive(Debug, thiserror::Error)]
#[error("cannot stage frame {seq} of pipeline {pipeline} on {device}: {reason}")]
pub struct StageError {
    pub pipeline: usize,
    pub seq: u64,
    pub device: String,
    pub reason: String,
}

/// The pixel format a model takes frames in from its sources (the encoder always gets I420
/// made on the device). Both give the same RGB, to the bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameFormats {
    /// The faster of the two on the model's device: `Native` on CUDA; on the CPU, as measured
    /// with `visiond bench --streams` (see docs/performance.md, "The frame path").
    #[default]
    Auto,
    /// What the decoder makes (NV12, I420), converted to RGB on the device.
    Native,
    /// RGB converted by GStreamer (`videoconvert`) in the source.
    Rgb,
}

/// A frame the model could not process, and why.
#[derive(Debug)]
pub struct FrameFailure {
    /// Boxed: a frame is large next to the results that usually come back.
    pub frame: Box<Frame>,
    /// Shared: a failed forward fails every frame of its batch with the same error.
    pub error: Arc<InferenceError>,
}

/// How one pipeline's frames are annotated.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub overlay: OverlayConfig,
    /// Also make the raw 16-bit depth map (the pipeline has a `depth16` sink).
    pub raw_depth: bool,
    /// Some sink shows the annotated picture: without one the overlay is not drawn at all
    /// (a metadata-only pipeline needs the numbers, not a full-size blend per frame).
    pub picture: bool,
}

/// A model made ready for a worker, with the stager its pipelines' sources call.
pub struct ModelRuntime {
    pub inference: Box<dyn BatchInference>,
    pub stager: Arc<dyn FrameStager>,
    pub task: Task,
    /// The CUDA device it runs on (`None` on the CPU), for the GPU memory metric.
    pub cuda_device: Option<usize>,
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
    #[error("{0}")]
    Stage(#[from] StageError),
    #[error("the frame was not staged on the model's device")]
    NotStaged,
    /// A served model's request failed.
    #[error("served model {model}: {failure}: {message}")]
    Remote {
        model: String,
        failure: RemoteFailure,
        message: String,
    },
}

impl InferenceError {
    /// How a served model's request failed, for the loss's reason.
    pub fn remote_failure(&self) -> Option<RemoteFailure> {
        match self {
            Self::Remote { failure, .. } => Some(*failure),
            _ => None,
        }
    }
}
