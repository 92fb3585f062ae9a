//! A configured model (`models.<name>` in the daemon file) loaded with its image processor.

use std::sync::atomic::{AtomicBool, Ordering};

use tch::Device;

use super::batch::TorchInference;
use super::contract::{FrameFormats, ModelRuntime};
use super::graphs::{Execution, ModelRunner};
use super::{native, tensors};
use crate::config::{Config, DType, ModelConfig};
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
    if let Some(remote) = &model.remote {
        return super::remote::load(name, model, remote, formats);
    }
    let options = LoadOptions {
        device: model.device,
        dtype: model.dtype,
        task: model.task,
        labels: model.labels.clone(),
    };
    let loaded = checkpoint::open(&model.source, &options)?;
    let tf32 = apply_tf32(name, loaded.info.device, model.dtype, model.allow_tf32);
    let preprocessor = tensors::preprocessor_for(&loaded.info, model.input_size)?;
    let execution = Execution::for_device(name, loaded.info.device, model.cuda_graphs);
    tracing::info!(
        model = name,
        checkpoint = %loaded.info.name,
        architecture = %loaded.info.architecture,
        device = ?loaded.info.device,
        dtype = %loaded.info.dtype,
        tf32 = tf32.unwrap_or("n/a"),
        cuda_graphs = execution.uses_graphs(),
        "model loaded"
    );
    let runner = ModelRunner::for_model(loaded.model, &loaded.info, execution);
    Ok(TorchInference::new(runner, loaded.info, preprocessor)
        .with_frames(formats)
        .into_runtime())
}

/// Set once a model asked for IEEE f32: libtorch's TF32 switches are process-wide, so from
/// then on no model gets TF32 (precision asked for wins over speed).
static IEEE_REQUIRED: AtomicBool = AtomicBool::new(false);

/// Applies a model's `allow_tf32` to libtorch's process-wide switches when it runs f32 on
/// CUDA (the only case TF32 concerns). Returns what the model gets ("on"/"off"), or `None`
/// where TF32 does not apply.
pub fn apply_tf32(model: &str, device: Device, dtype: DType, allow: bool) -> Option<&'static str> {
    if dtype != DType::F32 || !matches!(device, Device::Cuda(_)) {
        return None;
    }
    if !allow {
        IEEE_REQUIRED.store(true, Ordering::SeqCst);
    }
    let effective = allow && !IEEE_REQUIRED.load(Ordering::SeqCst);
    if allow && !effective {
        tracing::warn!(
            model,
            "allow_tf32 is true but another f32 CUDA model turned TF32 off (libtorch's switch is process-wide)"
        );
    }
    if let Err(error) = native::set_tf32(effective) {
        tracing::warn!(model, %error, "cannot set libtorch's TF32 switches");
        return None;
    }
    Some(if effective { "on" } else { "off" })
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
