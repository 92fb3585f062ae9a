//! The libtorch boundary: everything the frame path knows of a model goes through here.
//!
//! - [`BatchInference`] and [`ModelRuntime`]: the contract the pipelines' inference worker
//!   uses (frames in, annotated frames and typed results out), with no tensor in sight;
//! - [`load`]: a configured model with its image processor, ready for a worker;
//! - [`TorchInference`]: that contract on libtorch (upload, preprocess, forward, annotate);
//! - [`tensors`]: the one-frame helpers `visiond infer` shares with it, so a still image takes
//!   exactly the daemon's path.

mod batch;
mod contract;
mod load;
pub mod tensors;

pub use batch::TorchInference;
pub use contract::{Annotation, BatchInference, FrameFailure, InferenceError, ModelRuntime};
pub use load::{LoadError, ModelLoader, load, loader};

/// The libtorch this build binds: the PyPI wheel `scripts/setup` installs, pinned by tch.
pub const LIBTORCH_VERSION: &str = "2.11.0";
