//! From "where is the model" to a model on a device.
//!
//! - [`ModelSource`]: what a person wrote (`--model`, `path:`/`hub:` in the config).
//! - [`resolve_model_dir`]: a local folder, or the hub snapshot folder (cache, then download).
//! - [`inspect`]: the cheap check (`visiond check`): config.json parses, the architecture is
//!   known, the weight files exist. No tensor is read.
//! - [`load`] / [`open`]: weights read once, moved to the requested device and dtype, the
//!   architecture built through [`super::zoo::build`] (or a TorchScript module loaded).
//!
//! Only safetensors are read: a `pytorch_model.bin` is a Python pickle, which libtorch cannot
//! read without Python and which can run code when unpickled.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::Device;

use super::device::{DType, DeviceSpec};
use super::hub::{self, Fetch, HubSettings};
use super::torchscript::{self, TorchScriptModel};
use super::weights::Weights;
use super::{ModelError, Task, VisionModel, zoo};

pub const CONFIG_FILE: &str = "config.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const PYTORCH_BIN_FILE: &str = "pytorch_model.bin";
pub const PYTORCH_BIN_INDEX_FILE: &str = "pytorch_model.bin.index.json";
pub const TORCHSCRIPT_FILE: &str = "model.pt";

/// The architecture name [`ModelInfo::architecture`] carries for TorchScript modules.
pub const TORCHSCRIPT_ARCHITECTURE: &str = "TorchScript";

/// Where a model comes from, as a person wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local checkpoint folder, or a TorchScript file.
    Path(PathBuf),
    /// A Hugging Face hub repository at a revision (branch, tag, `refs/pr/N` or commit hash).
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// `--model` semantics: a value naming an existing file or folder is local; otherwise an
    /// `org/name` value is a hub id (at `revision`, default `main`). A revision only applies to
    /// hub ids: passing one with a local path is an error, so that it is never silently ignored.
    pub fn parse(spec: &str, revision: Option<&str>) -> Result<Self, ModelError> {
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
            return Ok(Self::Path(path.to_path_buf()));
        }
        if !hub::is_repo_id(spec) {
            return Err(ModelError::NotFound {
                spec: spec.to_owned(),
                reason: "no such file or folder, and not a Hugging Face hub id (org/name)"
                    .to_owned(),
            });
        }
        let revision = revision.unwrap_or(hub::DEFAULT_REVISION);
        if !hub::is_valid_revision(revision) {
            return Err(ModelError::NotFound {
                spec: spec.to_owned(),
                reason: format!(
                    "revision '{revision}' is not a branch, tag, refs/pr/N or commit hash"
                ),
            });
        }
        Ok(Self::Hub {
            repo: spec.to_owned(),
            revision: revision.to_owned(),
        })
    }

    /// A short name for logs and summaries: the hub id, or the folder's own name.
    pub fn name(&self) -> String {
        match self {
            Self::Hub { repo, .. } => repo.clone(),
            Self::Path(path) => {
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
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Hub { repo, revision } => write!(f, "{repo}@{revision}"),
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
            hub::resolve(&HubSettings::from_env(), repo, revision, fetch)
        }
    }
}

/// What [`inspect`] found in a model folder.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    /// The folder; for a lone TorchScript file, the folder that holds it.
    pub dir: PathBuf,
    pub format: CheckpointFormat,
}

#[derive(Debug, Clone)]
pub enum CheckpointFormat {
    /// A Hugging Face checkpoint: config.json plus safetensors.
    Safetensors {
        config_file: PathBuf,
        config: Value,
        /// `architectures[0]`, or derived from `model_type` (see [`architecture_of`]).
        architecture: String,
        weights: WeightFiles,
    },
    /// A TorchScript module; its task is declared by the caller.
    TorchScript { module: PathBuf },
}

/// The safetensors file(s) of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    Single(PathBuf),
    /// `model.safetensors.index.json` and every shard its `weight_map` names, sorted.
    Sharded {
        index: PathBuf,
        shards: Vec<PathBuf>,
    },
}

impl WeightFiles {
    /// Every file to read.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Self::Single(file) => vec![file.clone()],
            Self::Sharded { shards, .. } => shards.clone(),
        }
    }

    /// The file errors about the checkpoint as a whole are reported against.
    pub fn origin(&self) -> &Path {
        match self {
            Self::Single(file) => file,
            Self::Sharded { index, .. } => index,
        }
    }
}

impl CheckpointFiles {
    /// The architecture name (`DPTForDepthEstimation`, or `TorchScript`).
    pub fn architecture(&self) -> &str {
        match &self.format {
            CheckpointFormat::Safetensors { architecture, .. } => architecture,
            CheckpointFormat::TorchScript { .. } => TORCHSCRIPT_ARCHITECTURE,
        }
    }
}

/// Cheap check of a model folder (or TorchScript file): config.json parses and names a
/// supported architecture, and the weight files exist (shards included). Reads no tensor, so
/// `visiond check` can run it on every configured model before start.
pub fn inspect(path: &Path) -> Result<CheckpointFiles, ModelError> {
    if path.is_file() {
        // A lone file can only be a TorchScript module: a HF checkpoint is always a folder.
        let is_torchscript = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pt" | "pth" | "ts" | "torchscript")
        );
        if !is_torchscript {
            return Err(ModelError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "expected a model folder ({CONFIG_FILE} + {SAFETENSORS_FILE}) or a TorchScript file (.pt)"
                ),
            });
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        return Ok(CheckpointFiles {
            dir,
            format: CheckpointFormat::TorchScript {
                module: path.to_path_buf(),
            },
        });
    }
    if !path.is_dir() {
        return Err(ModelError::NotFound {
            spec: path.display().to_string(),
            reason: "no such file or folder".to_owned(),
        });
    }
    let dir = path.to_path_buf();
    if let Some(weights) = safetensors_files(&dir)? {
        let config_file = dir.join(CONFIG_FILE);
        let config = read_config(&config_file)?;
        let architecture = architecture_of(&config, &config_file)?;
        if !zoo::SUPPORTED.contains(&architecture.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                path: config_file,
                architecture,
                supported: zoo::SUPPORTED.iter().map(|a| a.to_string()).collect(),
            });
        }
        return Ok(CheckpointFiles {
            dir,
            format: CheckpointFormat::Safetensors {
                config_file,
                config,
                architecture,
                weights,
            },
        });
    }
    let module = dir.join(TORCHSCRIPT_FILE);
    if module.is_file() {
        return Ok(CheckpointFiles {
            dir,
            format: CheckpointFormat::TorchScript { module },
        });
    }
    for bin in [PYTORCH_BIN_FILE, PYTORCH_BIN_INDEX_FILE] {
        let file = dir.join(bin);
        if file.is_file() {
            return Err(ModelError::Checkpoint {
                reason: bin_only_reason(BinOnly::Folder(&dir)),
                path: file,
            });
        }
    }
    Err(ModelError::Checkpoint {
        path: dir,
        reason: format!(
            "no model weights: looked for {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} (sharded), \
             {TORCHSCRIPT_FILE} (TorchScript) and {PYTORCH_BIN_FILE}"
        ),
    })
}

/// Where a `.bin`-only checkpoint was found, for [`bin_only_reason`].
pub(crate) enum BinOnly<'a> {
    /// A local folder holding `pytorch_model.bin`.
    Folder(&'a Path),
    /// A hub repository at a revision (nothing downloaded).
    Hub { repo: &'a str, revision: &'a str },
}

/// Why a `.bin`-only checkpoint cannot be loaded, and the two ways out: a revision that has
/// safetensors, or a one-off conversion.
pub(crate) fn bin_only_reason(found: BinOnly<'_>) -> String {
    // Python string literals: Rust's `{:?}` escapes quotes and backslashes the same way.
    let convert = |dir: &Path| {
        let bin = format!("{:?}", dir.join(PYTORCH_BIN_FILE).display().to_string());
        let out = format!("{:?}", dir.join(SAFETENSORS_FILE).display().to_string());
        format!(
            "      import torch; from safetensors.torch import save_file\n      \
             save_file({{k: v.clone().contiguous() for k, v in torch.load({bin}, map_location=\"cpu\").items()}}, {out}, metadata={{\"format\": \"pt\"}})"
        )
    };
    let (revision_hint, conversion) = match found {
        BinOnly::Folder(dir) => (
            "if it came from the Hugging Face hub, many checkpoints carry safetensors on a \
             pull-request revision: download that one instead (revision refs/pr/N)"
                .to_owned(),
            format!(
                "or convert it once, in python3 with torch and safetensors installed:\n{}",
                // Absolute, so the snippet works from any working directory.
                convert(&dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()))
            ),
        ),
        BinOnly::Hub { repo, revision } => (
            format!(
                "many hub checkpoints carry safetensors on a pull-request revision: find the \
                 refs/pr/N that adds {SAFETENSORS_FILE} on https://huggingface.co/{repo}/discussions \
                 and pass it as the revision (--revision refs/pr/N, or `revision:` in the config)"
            ),
            format!(
                "or download it (hf download {repo} --revision {revision} --local-dir DIR) and \
                 convert it once, in python3 with torch and safetensors installed, then use DIR \
                 as the model path:\n{}",
                convert(Path::new("DIR"))
            ),
        ),
    };
    format!(
        "only PyTorch pickle weights ({PYTORCH_BIN_FILE}) found, and visiond loads safetensors only\n  \
         - {revision_hint}\n  \
         - {conversion}"
    )
}

/// `Some` when the folder holds safetensors weights: the single file, or the index and all
/// its shards (a shard the index names but the folder lacks is an error naming it).
fn safetensors_files(dir: &Path) -> Result<Option<WeightFiles>, ModelError> {
    let single = dir.join(SAFETENSORS_FILE);
    if single.is_file() {
        return Ok(Some(WeightFiles::Single(single)));
    }
    let index = dir.join(SAFETENSORS_INDEX_FILE);
    if !index.is_file() {
        return Ok(None);
    }
    let shard_names = shard_names(&index)?;
    let missing: Vec<&str> = shard_names
        .iter()
        .filter(|name| !dir.join(name).is_file())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ModelError::Checkpoint {
            path: index,
            reason: format!(
                "weight_map names shard(s) missing from {}: {}",
                dir.display(),
                missing.join(", ")
            ),
        });
    }
    let shards = shard_names.iter().map(|name| dir.join(name)).collect();
    Ok(Some(WeightFiles::Sharded { index, shards }))
}

/// The distinct file names a `model.safetensors.index.json` maps tensors to, sorted.
pub(crate) fn shard_names(index: &Path) -> Result<BTreeSet<String>, ModelError> {
    let value = read_json(index)?;
    let invalid = |reason: &str| ModelError::Checkpoint {
        path: index.to_path_buf(),
        reason: reason.to_owned(),
    };
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("no `weight_map` object"))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            invalid(&format!(
                "weight_map entry {tensor} is not a file name string"
            ))
        })?;
        // Shards live beside the index: a name that climbs out of the folder is not one.
        let plain = Path::new(file)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(invalid(&format!(
                "weight_map entry {tensor} points outside the folder: {file}"
            )));
        }
        names.insert(file.to_owned());
    }
    if names.is_empty() {
        return Err(invalid("`weight_map` is empty"));
    }
    Ok(names)
}

fn read_json(file: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(file).map_err(|e| ModelError::Checkpoint {
        path: file.to_path_buf(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "not found".to_owned()
        } else {
            format!("cannot read: {e}")
        },
    })?;
    // serde_json's message ends in "at line L column C", which is what a person needs.
    serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
        path: file.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// Reads and parses a `config.json`, which must be a JSON object.
pub fn read_config(file: &Path) -> Result<Value, ModelError> {
    let value = read_json(file)?;
    if !value.is_object() {
        return Err(ModelError::Checkpoint {
            path: file.to_path_buf(),
            reason: "expected a JSON object".to_owned(),
        });
    }
    Ok(value)
}

/// The architecture a config asks for: `architectures[0]`; when a config lacks it (hand-made
/// or very old ones), the transformers class its `model_type` stands for. The folder name is
/// never consulted: folders get renamed, configs do not.
pub fn architecture_of(config: &Value, config_file: &Path) -> Result<String, ModelError> {
    let invalid = |reason: String| ModelError::Checkpoint {
        path: config_file.to_path_buf(),
        reason,
    };
    if let Some(first) = config
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|list| list.first())
    {
        return first
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| invalid(format!("architectures[0] is not a string: {first}")));
    }
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                "names no architecture: neither `architectures` nor `model_type` is set".to_owned(),
            )
        })?;
    let backbone = config
        .get("backbone_config")
        .and_then(|b| b.get("model_type"))
        .and_then(Value::as_str);
    let label_count = config
        .get("id2label")
        .and_then(Value::as_object)
        .map_or(0, |labels| labels.len());
    let architecture = match model_type {
        // DPT depth checkpoints carry transformers' two placeholder labels at most; a
        // segmentation head has one label per class (150 for ADE20K).
        "dpt" if label_count > 2 => "DPTForSemanticSegmentation",
        "dpt" => "DPTForDepthEstimation",
        "depth_anything" => "DepthAnythingForDepthEstimation",
        "beit" => "BeitForImageClassification",
        "dinov2" => "Dinov2ForImageClassification",
        other => {
            let with_backbone = backbone
                .map(|b| format!(" (backbone {b})"))
                .unwrap_or_default();
            return Err(invalid(format!(
                "has no `architectures`, and model_type {other}{with_backbone} is not one visiond can infer an architecture from (dpt, depth_anything, beit, dinov2)"
            )));
        }
    };
    tracing::info!(
        config = %config_file.display(),
        model_type,
        backbone = backbone.unwrap_or("none"),
        architecture,
        "config.json has no `architectures`: derived the architecture from model_type"
    );
    Ok(architecture.to_owned())
}

/// `id2label` as a list indexed by class id. Absent or null: empty. Ids must be 0..N-1.
pub fn id2label(config: &Value, config_file: &Path) -> Result<Vec<String>, ModelError> {
    let invalid = |reason: String| ModelError::Checkpoint {
        path: config_file.to_path_buf(),
        reason,
    };
    let Some(map) = config.get("id2label").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let map = map
        .as_object()
        .ok_or_else(|| invalid("id2label is not an object".to_owned()))?;
    let mut labels = vec![None; map.len()];
    for (key, name) in map {
        let id: usize = key
            .parse()
            .map_err(|_| invalid(format!("id2label key '{key}' is not a class id")))?;
        let name = name
            .as_str()
            .ok_or_else(|| invalid(format!("id2label[{key}] is not a string")))?;
        let slot = labels.get_mut(id).ok_or_else(|| {
            invalid(format!(
                "id2label ids must be 0..{} but it has id {id}",
                map.len() - 1
            ))
        })?;
        *slot = Some(name.to_owned());
    }
    // Keys are distinct and all below len, so every slot is filled.
    Ok(labels.into_iter().flatten().collect())
}

/// An integer config value, at the top level or in `backbone_config`.
fn config_int(config: &Value, key: &str) -> Option<i64> {
    config
        .get(key)
        .and_then(Value::as_i64)
        .or_else(|| config.get("backbone_config")?.get(key)?.as_i64())
}

/// `image_size` as (height, width): an integer or a [h, w] list, top level or backbone.
fn config_image_size(config: &Value) -> Option<[i64; 2]> {
    let parse = |value: &Value| match value {
        Value::Number(n) => n.as_i64().map(|side| [side, side]),
        Value::Array(sides) => match sides.as_slice() {
            [h, w] => Some([h.as_i64()?, w.as_i64()?]),
            _ => None,
        },
        _ => None,
    };
    config.get("image_size").and_then(parse).or_else(|| {
        config
            .get("backbone_config")
            .and_then(|b| b.get("image_size"))
            .and_then(parse)
    })
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
    let device = options.device.resolve().map_err(ModelError::Device)?;
    let kind = options.dtype.kind();
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
            let id2label = id2label(config, config_file)?;
            // Errors about the checkpoint as a whole (config values, missing parameters) name
            // the folder: it is what the person pointed at.
            let tensors = Weights::read_safetensors(&weights.files(), device, kind, &files.dir)?;
            let model = zoo::build(architecture, config, tensors)?;
            let task = model.task();
            if let Some(declared) = options.task.filter(|declared| *declared != task) {
                return Err(ModelError::Checkpoint {
                    path: config_file.clone(),
                    reason: format!(
                        "{architecture} computes {}, not the declared task {}",
                        task_name(task),
                        task_name(declared)
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
                    name: source.name(),
                    source: source.clone(),
                    path: files.dir.clone(),
                    architecture: architecture.clone(),
                    task,
                    id2label,
                    patch_size: config_int(config, "patch_size"),
                    image_size: config_image_size(config),
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
                Some(file) => torchscript::read_labels(file)?,
                None => Vec::new(),
            };
            let model = TorchScriptModel::load(module, task, device, kind)?;
            Ok(LoadedModel {
                model: Box::new(model),
                info: ModelInfo {
                    name: source.name(),
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

/// The task's name as written in configs and flags.
pub fn task_name(task: Task) -> &'static str {
    match task {
        Task::Depth => "depth",
        Task::Segmentation => "segmentation",
        Task::Classification => "classification",
    }
}

/// Parses a task name as written in configs and flags.
pub fn parse_task(text: &str) -> Result<Task, String> {
    match text {
        "depth" => Ok(Task::Depth),
        "segmentation" => Ok(Task::Segmentation),
        "classification" => Ok(Task::Classification),
        other => Err(format!(
            "unknown task '{other}': expected depth, segmentation or classification"
        )),
    }
}
