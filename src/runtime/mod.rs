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
//!   exactly the daemon's path;
//! - [`graphs`]: how a forward runs: eagerly, or padded to fixed batch sizes and replayed from
//!   CUDA graphs ([`ModelRunner`]);
//! - [`remote`]: [`BatchInference`] on a model served by an inference server (KServe v2 over
//!   gRPC: Triton, MLServer): processing stays here, the forward goes over the network;
//! - [`native`]: the C++ shim for what tch does not bind (CUDA graphs, channels-last tensors,
//!   TF32 switches, the profiler).

pub(crate) mod batch;
mod contract;
mod download;
pub mod fused;
pub mod graphs;
mod load;
pub mod native;
pub mod remote;
mod stage;
pub mod tensors;

pub use batch::TorchInference;
pub use contract::{
    Admission, Annotation, BatchInference, FrameFailure, FrameFormats, FrameStager, HostFrames,
    InferenceError, ModelRuntime, Pipelined, RemoteFailure, StageCounters, StageError,
};
pub use download::download_picture;
pub use graphs::{Execution, ModelRunner};
pub use load::{LoadError, ModelLoader, apply_tf32, load, load_with, loader};
pub use stage::{TorchStager, staged_tensors};

/// The libtorch this build binds: the PyPI wheel `scripts/setup` installs, pinned by tch.
pub const LIBTORCH_VERSION: &str = "2.11.0";
