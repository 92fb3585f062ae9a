//! From "where is the model" to a model on a device.
//!
//! - [`source_from_spec`]: a `--model` value (a local path or a hub id) as a [`ModelSource`].
//! - [`resolve_model_dir`]: a local folder, or the hub snapshot folder (cache, then download).
//! - [`files::inspect`]: the cheap check (`visiond check`): config.json parses, the
//!   architecture is known, the weight files exist. No tensor is read.
//! - [`load`] / [`open`]: weights read once, moved to the requested device and dtype, the
//!   architecture built through [`crate::models::arch::build`] (or a TorchScript module loaded).
//!
//! Only safetensors are read: a `pytorch_model.bin` is a Python pickle, which libtorch cannot
//! read without Python and which can run code when unpickled.

pub mod files;
pub mod hub;
pub mod torchscript;

use std::fmt;
use std::path::{Path, PathBuf};

use tch::Device;

pub use self::files::{
    CONFIG_FILE, CheckpointFiles, CheckpointFormat, SAFETENSORS_FILE, TORCHSCRIPT_ARCHITECTURE,
    TORCHSCRIPT_FILE, WeightFiles, inspect,
};
use self::hub::{Fetch, HubSettings};
use self::torchscript::TorchScriptModel;
use crate::config::{
    DEFAULT_REVISION, DType, DeviceSpec, ModelSource, Task, is_repo_id, is_valid_revision,
};
use crate::models::nn::weights::Weights;
use crate::models::{ModelError, VisionModel, arch, device};

/// `--model` semantics: a value naming an existing file or folder is local; otherwise an
/// `org/name` value is a hub id (at `revision`, default `main`). A revision only applies to hub
/// ids: passing one with a local path is an error, so that it is never silently ignored.
pub fn source_from_spec(spec: &str, revision: Option<&str>) -> Result<ModelSource, ModelError> {
    let path = Path::new(spec);
    if path.exists() {
        if let Some(revision) = revision {
            return Err(ModelError::NotFound {
                spec: spec.to_owned(),
                reason: format!(
                    "is a local path, so revision {revision} does not apply (revisions are for hub ids such as Intel/dpt-large)"
                ),
            });
        }
        return Ok(ModelSource::Path(path.to_path_buf()));
    }
    if !is_repo_id(spec) {
        return Err(ModelError::NotFound {
            spec: spec.to_owned(),
            reason: "no such file or folder, and not a Hugging Face hub id (org/name)".to_owned(),
        });
    }
    let revision = revision.unwrap_or(DEFAULT_REVISION);
    if !is_valid_revision(revision) {
        return Err(ModelError::NotFound {
            spec: spec.to_owned(),
            reason: format!("revision '{revision}' is not a branch, tag, refs/pr/N or commit hash"),
        });
    }
    Ok(ModelSource::Hub {
        repo: spec.to_owned(),
        revision: revision.to_owned(),
    })
}

/// A short name for logs and summaries: the hub id, or the folder's own name.
pub fn display_name(source: &ModelSource) -> String {
    match source {
        ModelSource::Hub { repo, .. } => repo.clone(),
        ModelSource::Path(path) => {
            let path = if path.is_file() {
                path.parent().unwrap_or(path)
            } else {
                path
            };
            path.canonicalize()
                .ok()
                .as_deref()
                .and_then(Path::file_name)
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string())
        }
    }
}

/// The folder (or TorchScript file) a source stands for. Hub ids go through the local
/// Hugging Face cache; with [`Fetch::Download`] a miss is downloaded unless `HF_HUB_OFFLINE`.
pub fn resolve_model_dir(source: &ModelSource, fetch: Fetch) -> Result<PathBuf, ModelError> {
    match source {
        ModelSource::Path(path) => {
            if path.exists() {
                Ok(path.clone())
            } else {
                Err(ModelError::NotFound {
                    spec: path.display().to_string(),
                    reason: "no such file or folder".to_owned(),
                })
            }
        }
        ModelSource::Hub { repo, revision } => {
            self::hub::resolve(&HubSettings::from_env(), repo, revision, fetch)
        }
    }
}

/// What a loaded model is, for summaries, metadata and validation.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Display name: the hub id, or the folder's name.
    pub name: String,
    pub source: ModelSource,
    /// The folder (or TorchScript file) actually loaded.
    pub path: PathBuf,
    /// `DPTForDepthEstimation`, …, or `TorchScript`.
    pub architecture: String,
    pub task: Task,
    /// Class names indexed by id (config.json `id2label`, or the TorchScript labels file).
    pub id2label: Vec<String>,
    pub patch_size: Option<i64>,
    /// The checkpoint's native input size (height, width), when the config says.
    pub image_size: Option<[i64; 2]>,
    pub device: Device,
    pub dtype: DType,
}

impl ModelInfo {
    /// The name of class `id`: its label, or `class {id}` when none is known.
    pub fn label(&self, id: usize) -> String {
        self.id2label
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("class {id}"))
    }

    /// The output tensor's transformers name: `predicted_depth` or `logits`.
    pub fn output_name(&self) -> &'static str {
        output_name(self.task)
    }
}

/// The output tensor's transformers name for a task.
pub fn output_name(task: Task) -> &'static str {
    match task {
        Task::Depth => "predicted_depth",
        Task::Segmentation | Task::Classification => "logits",
    }
}

/// A model ready for inference, and what it is.
pub struct LoadedModel {
    pub model: Box<dyn VisionModel>,
    pub info: ModelInfo,
}

impl fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// How to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    pub dtype: DType,
    /// TorchScript only, and required there: what the module computes. A Hugging Face
    /// checkpoint knows its task; declaring a different one is an error.
    pub task: Option<Task>,
    /// TorchScript only: class names (one per line, or JSON list / id→name object).
    pub labels: Option<PathBuf>,
}

/// Resolves, inspects and loads in one go (downloading hub ids unless `HF_HUB_OFFLINE`).
pub fn open(source: &ModelSource, options: &LoadOptions) -> Result<LoadedModel, ModelError> {
    let path = resolve_model_dir(source, Fetch::Download)?;
    let files = inspect(&path)?;
    load(source, &files, options)
}

/// Loads what [`inspect`] found on the requested device and dtype, for inference only.
pub fn load(
    source: &ModelSource,
    files: &CheckpointFiles,
    options: &LoadOptions,
) -> Result<LoadedModel, ModelError> {
    let device = device::torch_device(options.device).map_err(ModelError::Device)?;
    let kind = device::torch_kind(options.dtype);
    match &files.format {
        CheckpointFormat::Safetensors {
            config_file,
            config,
            architecture,
            weights,
        } => {
            if options.labels.is_some() {
                return Err(ModelError::Checkpoint {
                    path: config_file.clone(),
                    reason: "a labels file only applies to TorchScript models; this checkpoint's class names come from its id2label".to_owned(),
                });
            }
            let id2label = files::id2label(config, config_file)?;
            // Errors about the checkpoint as a whole (config values, missing parameters) name
            // the folder: it is what the person pointed at.
            let tensors = Weights::read_safetensors(&weights.files(), device, kind, &files.dir)?;
            let model = arch::build(architecture, config, tensors)?;
            let task = model.task();
            if let Some(declared) = options.task.filter(|declared| *declared != task) {
                return Err(ModelError::Checkpoint {
                    path: config_file.clone(),
                    reason: format!(
                        "{architecture} computes {task}, not the declared task {declared}"
                    ),
                });
            }
            tracing::debug!(
                model = %source,
                architecture = %architecture,
                device = ?device,
                "model loaded"
            );
            Ok(LoadedModel {
                model,
                info: ModelInfo {
                    name: display_name(source),
                    source: source.clone(),
                    path: files.dir.clone(),
                    architecture: architecture.clone(),
                    task,
                    id2label,
                    patch_size: files::config_int(config, "patch_size"),
                    image_size: files::config_image_size(config),
                    device,
                    dtype: options.dtype,
                },
            })
        }
        CheckpointFormat::TorchScript { module } => {
            let task = options.task.ok_or_else(|| ModelError::Checkpoint {
                path: module.clone(),
                reason: "a TorchScript model needs its task declared: depth, segmentation or classification (--task, or `task:` in the config)".to_owned(),
            })?;
            let id2label = match &options.labels {
                Some(file) => self::torchscript::read_labels(file)?,
                None => Vec::new(),
            };
            let model = TorchScriptModel::load(module, task, device, kind)?;
            Ok(LoadedModel {
                model: Box::new(model),
                info: ModelInfo {
                    name: display_name(source),
                    source: source.clone(),
                    path: module.clone(),
                    architecture: TORCHSCRIPT_ARCHITECTURE.to_owned(),
                    task,
                    id2label,
                    patch_size: None,
                    image_size: None,
                    device,
                    dtype: options.dtype,
                },
            })
        }
    }
}
