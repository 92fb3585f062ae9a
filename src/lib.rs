//! visiond: vision transformers on live GStreamer video, through libtorch.
//!
//! # Layout
//! - [`models`]: native ports of the Hugging Face checkpoints (DPT, DPT-hybrid, DPT-DINOv2,
//!   Depth-Anything, BEiT/DiT, DINOv2) and their loading.

pub mod models;
