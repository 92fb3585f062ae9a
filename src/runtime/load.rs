//! A configured model (`models.<name>` in the daemon file) loaded with its image processor.

use super::batch::TorchInference;
use super::contract::{FrameFormats, ModelRuntime};
use super::tensors;
use crate::config::{Config, ModelConfig};
use crate::models::ModelError;
use crate::models::checkpoint::{self, LoadOptions};
use crate::processing::ProcessingError;

/// Why a configured model could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Processor(#[from] ProcessingError),
    #[error("model {0} is not defined")]
    Undefined(String),
}

/// Makes a named model ready for a worker. The engine calls it once per model in use; tests
/// pass their own to run the engine on chosen models.
pub type ModelLoader<'a> = dyn Fn(&str) -> Result<ModelRuntime, LoadError> + 'a;

/// Loads a configured model with its image processor: what `visiond run` gives the engine.
pub fn load(name: &str, model: &ModelConfig) -> Result<ModelRuntime, LoadError> {
    load_with(name, model, FrameFormats::Auto)
}

/// [`load`], with sources delivering frames in `formats`.
pub fn load_with(
    name: &str,
    model: &ModelConfig,
    formats: FrameFormats,
) -> Result<ModelRuntime, LoadError> {
    let options = LoadOptions {
        device: model.device,
        dtype: model.dtype,
        task: model.task,
        labels: model.labels.clone(),
    };
    let loaded = checkpoint::open(&model.source, &options)?;
    let preprocessor = tensors::preprocessor_for(&loaded.info, model.input_size)?;
    tracing::info!(
        model = name,
        checkpoint = %loaded.info.name,
        architecture = %loaded.info.architecture,
        device = ?loaded.info.device,
        dtype = %loaded.info.dtype,
        "model loaded"
    );
    Ok(TorchInference::new(loaded.model, loaded.info, preprocessor)
        .with_frames(formats)
        .into_runtime())
}

/// The loader for the models of `config`.
pub fn loader(config: &Config) -> impl Fn(&str) -> Result<ModelRuntime, LoadError> + '_ {
    move |name: &str| {
        let model = config
            .daemon
            .models
            .get(name)
            .ok_or_else(|| LoadError::Undefined(name.to_string()))?;
        load(name, model)
    }
}
