//! visiond: vision transformers on live GStreamer video, through libtorch.
//!
//! # Layout
//! - [`config`]: the daemon and pipeline YAML schema, loading, and validation that reports every
//!   error at once with its file and key path.
//! - [`models`]: native ports of the Hugging Face checkpoints (DPT, DPT-hybrid, DPT-DINOv2,
//!   Depth-Anything, BEiT/DiT, DINOv2) and their loading: `models::checkpoint` (folder →
//!   model), `models::hub` (Hugging Face cache and downloads), `models::torchscript`.
//! - [`infer`]: `visiond infer`, one model on one tensor.
//! - [`logging`]: tracing setup (text or JSON, `RUST_LOG` override).
//! - [`processing`]: the Hugging Face image processors and the output overlays (depth colour
//!   maps, segmentation palettes, class scores) as tensor ops on the inference device.

pub mod config;
pub mod infer;
pub mod logging;
pub mod models;
pub mod processing;
