//! A served model's processor: its `config.json` (architecture, task, class names) and
//! `preprocessor_config.json`, from a folder or the hub, with no weights anywhere.

use std::path::{Path, PathBuf};

use crate::config::{ModelConfig, ModelSource, RemoteInput};
use crate::models::ModelError;
use crate::models::arch;
use crate::models::checkpoint::hub::{self, Fetch, HubSettings};
use crate::models::checkpoint::{CONFIG_FILE, ModelInfo, display_name, files};
use crate::models::device;
use crate::processing::Preprocessor;
use crate::runtime::LoadError;

/// A served model's processor, ready to stage frames.
#[derive(Debug)]
pub struct Processor {
    /// What the model is (its device and dtype are where and how frames are processed here).
    pub info: ModelInfo,
    pub preprocessor: Preprocessor,
}

/// The folder holding the processor's files: the `path`, or the hub snapshot (fetching only
/// config.json and preprocessor_config.json on a miss, with [`Fetch::Download`]).
pub fn folder(source: &ModelSource, fetch: Fetch) -> Result<PathBuf, ModelError> {
    match source {
        ModelSource::Path(path) if path.is_dir() => Ok(path.clone()),
        ModelSource::Path(path) => Err(ModelError::NotFound {
            spec: path.display().to_string(),
            reason: "no such folder (a served model's processor is a folder holding config.json and preprocessor_config.json)".to_owned(),
        }),
        ModelSource::Hub { repo, revision } => {
            hub::resolve_processor(&HubSettings::from_env(), repo, revision, fetch)
        }
    }
}

/// Reads the processor of a served model: config.json must name an architecture whose task is
/// known (or the model declares `task`), and the image processor must be one visiond runs.
pub fn open(model: &ModelConfig, fetch: Fetch) -> Result<Processor, LoadError> {
    let dir = folder(&model.source, fetch)?;
    read(&dir, model)
}

/// [`open`] on a folder already found.
pub fn read(dir: &Path, model: &ModelConfig) -> Result<Processor, LoadError> {
    let config_file = dir.join(CONFIG_FILE);
    let config = files::read_config(&config_file)?;
    let architecture = arch::architecture_of(&config, &config_file)?;
    let task = match (arch::task_of(&architecture), model.task) {
        (Some(known), Some(declared)) if known != declared => {
            return Err(ModelError::Checkpoint {
                path: config_file,
                reason: format!(
                    "{architecture} computes {known}, not the declared task {declared}"
                ),
            }
            .into());
        }
        (Some(task), _) | (None, Some(task)) => task,
        (None, None) => {
            return Err(ModelError::Checkpoint {
                path: config_file,
                reason: format!(
                    "visiond cannot tell what {architecture} computes: set the model's `task` (depth, segmentation or classification)"
                ),
            }
            .into());
        }
    };
    let id2label = files::id2label(&config, &config_file)?;
    let device = device::torch_device(model.device).map_err(ModelError::Device)?;
    let mut preprocessor = Preprocessor::from_model_dir(dir, &architecture, model.input_size)?;
    if model
        .remote
        .as_ref()
        .is_some_and(|remote| remote.input == RemoteInput::Uint8)
    {
        preprocessor = preprocessor.resized_only();
    }
    let info = ModelInfo {
        name: display_name(&model.source),
        source: model.source.clone(),
        path: dir.to_path_buf(),
        architecture,
        task,
        id2label,
        patch_size: files::config_int(&config, "patch_size"),
        image_size: files::config_image_size(&config),
        device,
        dtype: model.dtype,
    };
    Ok(Processor { info, preprocessor })
}
