//! Native ports of the supported Hugging Face vision checkpoints, and how they are found and
//! loaded, in three layers:
//!
//! - [`nn`]: layers, weights and `config.json` reading, the blocks every port is made of;
//! - [`arch`]: one file per architecture, and the zoo that builds one from a checkpoint;
//! - [`checkpoint`]: finding and loading checkpoints: local folders, the Hugging Face cache
//!   ([`checkpoint::hub`]), safetensors, TorchScript ([`checkpoint::torchscript`]).

pub mod arch;
pub mod checkpoint;
pub mod device;
pub mod nn;

use std::path::PathBuf;

use tch::Tensor;

use crate::config::Task;

/// A loaded model, ready for inference. Forward runs under `tch::no_grad` in the caller.
pub trait VisionModel: Send {
    fn task(&self) -> Task;
    /// `pixel_values` [B, 3, H, W] in the model's dtype and device. Returns the main output
    /// under its transformers meaning (`predicted_depth` or `logits`). A size the architecture
    /// cannot take is an error, never a panic.
    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{}: checkpoint does not match its config.json:{}", path.display(), parameter_list(missing, wrong_shape))]
    Parameters {
        path: PathBuf,
        missing: Vec<String>,
        wrong_shape: Vec<String>,
    },
    #[error("{model}: input {height}x{width} not accepted: {reason}")]
    InputSize {
        model: String,
        height: i64,
        width: i64,
        reason: String,
    },
    #[error("{0}")]
    Torch(#[from] tch::TchError),
    /// A `--model`/`path:` value that is neither an existing folder nor a hub id.
    #[error("{spec}: {reason}")]
    NotFound { spec: String, reason: String },
    /// A hub checkpoint that is not in the local cache and could not be downloaded.
    #[error(
        "{repo} (revision {revision}) is not available: {reason}\n  looked in the Hugging Face cache at {}\n  fetch it with: {command}",
        cache.display()
    )]
    HubMiss {
        repo: String,
        revision: String,
        cache: PathBuf,
        reason: String,
        command: String,
    },
    /// config.json names an architecture no port exists for.
    #[error("{}: architecture {architecture} is not supported (supported: {})", path.display(), supported.join(", "))]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: Vec<String>,
    },
    /// The requested device cannot be used on this machine.
    #[error("{0}")]
    Device(String),
    /// A model (TorchScript) returned something that does not fit its declared task.
    #[error("{model}: {reason}")]
    Output { model: String, reason: String },
}

fn parameter_list(missing: &[String], wrong_shape: &[String]) -> String {
    let mut out = String::new();
    if !missing.is_empty() {
        out.push_str(&format!(
            "\n  missing parameters ({}): {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    if !wrong_shape.is_empty() {
        out.push_str(&format!(
            "\n  wrong shapes ({}): {}",
            wrong_shape.len(),
            wrong_shape.join("; ")
        ));
    }
    out
}
