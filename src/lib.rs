//! visiond: vision transformers on live GStreamer video, through libtorch.
//!
//! # Layout
//! Each module owns one step; arrows only point down this list (a module uses those below it).
//!
//! - [`daemon`]: `visiond run`: the engine, the control plane, signals and systemd, and the
//!   loop that applies reloads and pipeline writes one at a time.
//! - [`control`]: the control plane on tokio: HTTP (`/healthz`, `/readyz`, `/api/pipelines`,
//!   Prometheus `/metrics`) reading the engine's shared view, and signals.
//! - [`bench`]: `visiond bench`: a model's forward alone (`--model`), or the whole frame path
//!   on synthetic streams (`--streams`).
//! - [`infer`]: `visiond infer`, one model on one image or tensor, through the runtime's path.
//! - [`pipeline`]: the frame path on OS threads: plan → build → spawn, the source's
//!   supervision, the batching worker, the output stage, counters. No tensors.
//! - [`preflight`]: checks that probe the machine before start: model files, the Hugging Face
//!   cache, CUDA, writable directories, GStreamer elements.
//! - [`runtime`]: the libtorch boundary: a configured model with its processor, batch
//!   inference, the upload/download helpers.
//! - [`media`]: GStreamer: the source session, the output, the RTSP server, the bus, the
//!   registry, still images.
//! - [`processing`]: the Hugging Face image processors and the output overlays as tensor ops
//!   on the inference device.
//! - [`models`]: native ports of the checkpoints: [`models::nn`] (layers, weights),
//!   [`models::arch`] (one file per architecture), [`models::checkpoint`] (folders, hub cache,
//!   safetensors, TorchScript).
//! - [`logging`]: tracing setup (text or JSON, `RUST_LOG` override).
//! - [`frames`]: what travels the frame path: frames, results, bounded hops.
//! - [`config`]: the daemon and pipeline files as typed data, with shape checks, and
//!   [`config::redact`], which masks the credentials they may hold wherever they are shown.
//!   Pure data.
//!
//! `docs/architecture.md` draws the data flow and names the module that owns each step.

pub mod bench;
pub mod config;
pub mod control;
pub mod daemon;
pub mod frames;
pub mod infer;
pub mod logging;
pub mod media;
pub mod models;
pub mod pipeline;
pub mod preflight;
pub mod processing;
pub mod publish;
pub mod runtime;
