//! The frame path on OS threads, and the engine that runs it: plan → build → spawn.
//!
//! - [`plan`]: each pipeline's facts, derived once from its config and its model's task;
//! - [`build`]: a plan made into pieces (hops, output, supervisor, lane), or a typed error;
//! - [`engine`]: loads the models, plans, builds, spawns; drains on shutdown;
//! - [`supervisor`]: the source's policy (reconnect with [`backoff`], finish, drain);
//! - [`worker`]: one batching inference worker per model, fair across its pipelines;
//! - [`output_stage`]: publishing, metadata lines, rebuilding a failed output;
//! - [`stats`], [`view`], [`metadata`]: counters, what the control plane reads, JSON lines.
//!
//! Nothing here touches tensors: the model is reached through [`crate::runtime`]'s contract.

pub mod backoff;
pub mod build;
pub mod engine;
pub mod metadata;
pub mod output_stage;
pub mod plan;
pub mod stats;
pub mod stop;
pub mod supervisor;
pub mod view;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use crate::media::MediaError;
use crate::runtime::LoadError;

/// Why one pipeline cannot run; the others are not affected.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("model {model} cannot be loaded: {error}")]
    ModelUnavailable {
        model: String,
        error: Arc<LoadError>,
    },
    /// A defect: the engine plans only after loading every model in use.
    #[error("model {0} was not loaded")]
    ModelNotLoaded(String),
    #[error("a depth16 sink needs a depth model, and model {model} is not one")]
    Depth16WithoutDepth { model: String },
    #[error("{0}")]
    Media(#[from] MediaError),
    #[error("cannot open metadata file {}: {reason}", path.display())]
    Metadata { path: PathBuf, reason: String },
    #[error("a {kind} sink publishes on broker '{broker}', which is not connected")]
    Unpublished { kind: &'static str, broker: String },
    #[error("{0}")]
    Publish(#[from] crate::publish::PublishError),
    #[error(
        "metadata[{index}].{kind}.on_change compares the best class, and model {model} is not a classification model"
    )]
    OnChangeWithoutLabels {
        index: usize,
        kind: &'static str,
        model: String,
    },
    #[error("cannot start thread {name}: {reason}")]
    Thread { name: String, reason: String },
}

/// Why the engine could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Media(#[from] MediaError),
    #[error("{0}")]
    Pipeline(#[from] PipelineError),
}
