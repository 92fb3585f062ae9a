//! The `models:` section of the daemon file, and the words a model is described with (task,
//! device, precision, where its checkpoint comes from), shared by the config, the loader and
//! the command line. Pure data: nothing here touches the file system or libtorch.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::error::FileErrors;
use super::remote::{RemoteConfig, RemoteSection};

/// The hub revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

/// What a model computes, which decides its post-processing and its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// `predicted_depth` [B, H', W'] (relative inverse depth or metric depth).
    Depth,
    /// `logits` [B, C, H', W'].
    Segmentation,
    /// `logits` [B, C].
    Classification,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Depth, Task::Segmentation, Task::Classification];

    /// The name written in configs, flags and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Depth => "depth",
            Self::Segmentation => "segmentation",
            Self::Classification => "classification",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|task| task.as_str() == text)
            .ok_or_else(|| {
                format!("unknown task '{text}': expected depth, segmentation or classification")
            })
    }
}

/// `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto` (the first GPU when CUDA works, else CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unparsable =
            || format!("unparsable device '{text}': expected cpu, cuda, cuda:N or auto");
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:").ok_or_else(unparsable)?;
                index.parse().map(Self::Cuda).map_err(|_| unparsable())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// Numeric precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|dtype| dtype.as_str() == text)
            .ok_or_else(|| format!("unknown dtype '{text}': expected f32, f16 or bf16"))
    }
}

/// Serde for the types above through their one `FromStr`/`Display`, so the spelling in YAML,
/// on the command line and in messages can never drift apart.
macro_rules! serde_via_str {
    ($($type:ty),*) => {$(
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}

serde_via_str!(Task, DeviceSpec, DType);

/// Where a model's checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local checkpoint folder, or a TorchScript file.
    Path(PathBuf),
    /// A Hugging Face hub repository at a revision (branch, tag, `refs/pr/N` or commit hash).
    Hub { repo: String, revision: String },
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Hub { repo, revision } => write!(f, "{repo}@{revision}"),
        }
    }
}

/// `org/name`, with the characters the hub allows (letters, digits, `-`, `_`, `.`).
pub fn is_repo_id(text: &str) -> bool {
    let part_ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 96
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !part.starts_with(['-', '.'])
            && !part.ends_with(['-', '.'])
            && !part.contains("--")
            && !part.contains("..")
    };
    match text.split_once('/') {
        Some((org, name)) => part_ok(org) && part_ok(name),
        None => false,
    }
}

/// A branch, tag, `refs/pr/N` or commit hash: no empty, `.` or `..` segments, since the
/// revision becomes a path under `refs/`.
pub fn is_valid_revision(revision: &str) -> bool {
    !revision.is_empty()
        && !revision.starts_with('/')
        && revision
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
        && !revision.contains(['\\', '\0'])
}

/// A model shared by every pipeline that names it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The checkpoint; for a served model (`remote`), the folder or hub repository its
    /// processor comes from (config.json and preprocessor_config.json, no weights).
    pub source: ModelSource,
    /// Served by an inference server rather than run here: image processing and
    /// post-processing stay on `device`, the forward runs on the server.
    pub remote: Option<RemoteConfig>,
    pub device: DeviceSpec,
    pub dtype: DType,
    pub batch: BatchConfig,
    /// Required for TorchScript models, which carry no config.json to say what they compute.
    pub task: Option<Task>,
    /// Optional label file (one per line) for TorchScript classifiers and segmenters.
    pub labels: Option<PathBuf>,
    /// Overrides the processor's input size, `[height, width]` (e.g. run DPT at 512).
    pub input_size: Option<[u32; 2]>,
    /// f32 on CUDA: let matrix products and convolutions use TF32 tensor cores (PyTorch's
    /// `allow_tf32`). libtorch's switch is process-wide.
    pub allow_tf32: bool,
    /// On CUDA: capture the forward as CUDA graphs (per batch and input size) and replay them.
    pub cuda_graphs: bool,
}

/// A `models.<name>` entry as written; [`ModelSection::parse`] makes the [`ModelConfig`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A checkpoint folder (config.json + model.safetensors) or a TorchScript `model.pt`,
    /// resolved against the daemon file's directory. Exactly one of `path` and `hub`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A Hugging Face hub id (`Intel/dpt-large`), looked up in the standard HF cache.
    #[serde(default)]
    pub hub: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub dtype: DType,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default)]
    pub labels: Option<PathBuf>,
    #[serde(default)]
    pub input_size: Option<[u32; 2]>,
    #[serde(default)]
    pub allow_tf32: Option<bool>,
    #[serde(default)]
    pub cuda_graphs: Option<bool>,
    /// A model served elsewhere (see [`RemoteSection`]); needs `processor`, excludes `path`/`hub`.
    #[serde(default)]
    pub remote: Option<RemoteSection>,
    /// A served model's processor: `{ path }` or `{ hub, revision }`.
    #[serde(default)]
    pub processor: Option<ProcessorSection>,
}

/// `models.<name>.processor`: where a served model's config.json and preprocessor_config.json
/// are (a folder, or a hub repository of which only those two files are fetched).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSection {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub hub: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
}

impl ModelSection {
    /// The typed model, or `None` after reporting why not under `key` (`models.<name>`).
    /// Every problem of the entry is reported, not only the first.
    pub fn parse(self, key: &str, errors: &mut FileErrors<'_>) -> Option<ModelConfig> {
        let before = errors.len();
        let (source, remote) = match self.remote {
            Some(remote) => {
                for (name, set) in [
                    ("path", self.path.is_some()),
                    ("hub", self.hub.is_some()),
                    ("revision", self.revision.is_some()),
                    ("labels", self.labels.is_some()),
                    ("allow_tf32", self.allow_tf32.is_some()),
                    ("cuda_graphs", self.cuda_graphs.is_some()),
                ] {
                    if set {
                        errors.push(
                            format!("{key}.{name}"),
                            "not for a served model (`remote`): its forward runs on the server, and its processor comes from `processor:` (config.json + preprocessor_config.json)",
                        );
                    }
                }
                let remote = remote.parse(&format!("{key}.remote"), errors);
                let source = match self.processor {
                    Some(processor) => source_of(
                        &format!("{key}.processor"),
                        processor.path,
                        processor.hub,
                        processor.revision,
                        errors,
                    ),
                    None => {
                        errors.push(
                            format!("{key}.processor"),
                            "a served model needs `processor: { path: DIR }` or `processor: { hub: org/name }`: its config.json and preprocessor_config.json (no weights)",
                        );
                        None
                    }
                };
                (source, remote)
            }
            None => {
                if self.processor.is_some() {
                    errors.push(
                        format!("{key}.processor"),
                        "only for a served model (`remote`); a local model's processor comes from its own folder",
                    );
                }
                let source = source_of(key, self.path, self.hub, self.revision, errors);
                (source, None)
            }
        };
        if self.batch.max_size == 0 {
            errors.push(format!("{key}.batch.max_size"), "must be at least 1");
        }
        if let Some([height, width]) = self.input_size
            && (height == 0 || width == 0)
        {
            errors.push(
                format!("{key}.input_size"),
                "height and width must be positive",
            );
        }
        if errors.len() > before {
            return None;
        }
        Some(ModelConfig {
            source: source?,
            remote,
            device: self.device,
            dtype: self.dtype,
            batch: self.batch,
            task: self.task,
            labels: self.labels,
            input_size: self.input_size,
            allow_tf32: self.allow_tf32.unwrap_or(true),
            cuda_graphs: self.cuda_graphs.unwrap_or(true),
        })
    }
}

/// `path` or `hub` (+ `revision`), exactly one, under `key`.
fn source_of(
    key: &str,
    path: Option<PathBuf>,
    hub: Option<String>,
    revision: Option<String>,
    errors: &mut FileErrors<'_>,
) -> Option<ModelSource> {
    match (path, hub) {
        (Some(_), Some(_)) => {
            errors.push(key, "set either `path` or `hub`, not both");
            None
        }
        (None, None) => {
            errors.push(
                key,
                "set `path` (a checkpoint folder) or `hub` (a Hugging Face id such as Intel/dpt-large)",
            );
            None
        }
        (Some(path), None) => {
            if revision.is_some() {
                errors.push(format!("{key}.revision"), "only meaningful with `hub`");
            }
            Some(ModelSource::Path(path))
        }
        (None, Some(repo)) => {
            let revision = revision.unwrap_or_else(|| DEFAULT_REVISION.to_string());
            if !is_repo_id(&repo) {
                errors.push(
                    format!("{key}.hub"),
                    format!("'{repo}' is not a hub id; expected org/name, e.g. Intel/dpt-large"),
                );
            } else if !is_valid_revision(&revision) {
                errors.push(
                    format!("{key}.revision"),
                    format!("'{revision}' is not a revision name"),
                );
            }
            Some(ModelSource::Hub { repo, revision })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(default = "default_batch_size")]
    pub max_size: usize,
    #[serde(default = "default_batch_wait_ms")]
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_size: default_batch_size(),
            max_wait_ms: default_batch_wait_ms(),
        }
    }
}

fn default_batch_size() -> usize {
    4
}

fn default_batch_wait_ms() -> u64 {
    5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_it_is_written() {
        for task in Task::ALL {
            assert_eq!(task.to_string().parse::<Task>(), Ok(task));
        }
        for dtype in DType::ALL {
            assert_eq!(dtype.to_string().parse::<DType>(), Ok(dtype));
        }
        for device in [DeviceSpec::Auto, DeviceSpec::Cpu, DeviceSpec::Cuda(3)] {
            assert_eq!(device.to_string().parse::<DeviceSpec>(), Ok(device));
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        let yaml: Task = serde_yaml::from_str("classification").unwrap();
        assert_eq!(yaml, Task::Classification);
    }

    #[test]
    fn hub_ids_and_revisions() {
        assert!(is_repo_id("Intel/dpt-large"));
        assert!(!is_repo_id("dpt-large"));
        assert!(!is_repo_id("a/b/c"));
        assert!(is_valid_revision("refs/pr/3"));
        assert!(!is_valid_revision("../x"));
    }
}
