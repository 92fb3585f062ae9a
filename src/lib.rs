//! visiond: vision transformers on live GStreamer video, through libtorch.
//!
//! # Layout
//! - [`config`]: the daemon and pipeline YAML schema, loading, and validation that reports every
//!   error at once with its file and key path.
//! - [`models`]: native ports of the Hugging Face checkpoints (DPT, DPT-hybrid, DPT-DINOv2,
//!   Depth-Anything, BEiT/DiT, DINOv2) and their loading: `models::checkpoint` (folder →
//!   model), `models::hub` (Hugging Face cache and downloads), `models::torchscript`.
//! - [`control`]: the control plane on tokio: the HTTP server (`/healthz`, `/readyz`,
//!   `/api/pipelines`, Prometheus `/metrics`) reading the engine's shared view, and signals.
//! - [`infer`]: `visiond infer`, one model on one tensor.
//! - [`logging`]: tracing setup (text or JSON, `RUST_LOG` override).
//! - [`media`]: GStreamer: source pipelines into appsinks, output pipelines from appsrcs,
//!   the RTSP server, bus errors.
//! - [`pipeline`]: the frame path on OS threads: frames, bounded hops with drop policies, the
//!   batched inference worker, per-pipeline supervision with reconnects, the engine.
//! - [`processing`]: the Hugging Face image processors and the output overlays (depth colour
//!   maps, segmentation palettes, class scores) as tensor ops on the inference device.

pub mod config;
pub mod control;
pub mod infer;
pub mod logging;
pub mod media;
pub mod models;
pub mod pipeline;
pub mod processing;
