//! What a model folder holds: the file names Hugging Face checkpoints use, and the cheap
//! inspection (`visiond check` runs it on every configured model) that finds config.json, the
//! architecture and every weight file without reading a tensor.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::models::ModelError;
use crate::models::arch;

pub const CONFIG_FILE: &str = "config.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const PYTORCH_BIN_FILE: &str = "pytorch_model.bin";
pub const PYTORCH_BIN_INDEX_FILE: &str = "pytorch_model.bin.index.json";
pub const TORCHSCRIPT_FILE: &str = "model.pt";

/// The architecture name [`ModelInfo::architecture`] carries for TorchScript modules.
pub const TORCHSCRIPT_ARCHITECTURE: &str = "TorchScript";

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
        let architecture = arch::architecture_of(&config, &config_file)?;
        if !arch::SUPPORTED.contains(&architecture.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                path: config_file,
                architecture,
                supported: arch::SUPPORTED.iter().map(|a| a.to_string()).collect(),
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
pub(crate) fn config_int(config: &Value, key: &str) -> Option<i64> {
    config
        .get(key)
        .and_then(Value::as_i64)
        .or_else(|| config.get("backbone_config")?.get(key)?.as_i64())
}

/// `image_size` as (height, width): an integer or a [h, w] list, top level or backbone.
pub(crate) fn config_image_size(config: &Value) -> Option<[i64; 2]> {
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
