//! The libtorch boundary: everything the frame path knows of a model goes through here.
//!
//! - [`BatchInference`] and [`ModelRuntime`]: the contract the pipelines' inference worker
//!   uses (frames in, annotated frames and typed results out), with no tensor in sight;
//! - [`load`]: a configured model with its image processor, ready for a worker;
//! - [`FrameStager`]: what the pipelines' source threads call to stage frames on the device
//!   ([`TorchStager`]: copy, convert NV12/I420 to RGB, image processor), and the results' way
//!   back, copied in the output threads ([`download_picture`]);
//! - [`TorchInference`]: the contract on libtorch (forward and post-processing per batch);
//! - [`tensors`]: the one-frame helpers `visiond infer` shares with it, so a still image takes
//!   exactly the daemon's path.

mod batch;
mod contract;
mod download;
mod load;
mod stage;
pub mod tensors;

pub use batch::TorchInference;
pub use contract::{
    Annotation, BatchInference, FrameFailure, FrameFormats, FrameStager, HostFrames,
    InferenceError, ModelRuntime, StageCounters, StageError,
};
pub use download::download_picture;
pub use load::{LoadError, ModelLoader, load, load_with, loader};
pub use stage::{TorchStager, staged_tensors};
