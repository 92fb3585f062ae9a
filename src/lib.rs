//! visiond: vision transformers on live GStreamer video, through libtorch.
//!
//! # Layout
//! - [`models`]: native ports of the Hugging Face checkpoints (DPT, DPT-hybrid, DPT-DINOv2,
//!   Depth-Anything, BEiT/DiT, DINOv2) and their loading: `models::checkpoint` (folder →
//!   model), `models::hub` (Hugging Face cache and downloads), `models::torchscript`.
//! - [`infer`]: `visiond infer`, one model on one tensor.

pub mod infer;
pub mod models;
