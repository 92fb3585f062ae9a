//! Models: the checkpoint a `path:` names, or the hub snapshot in the local cache (never
//! downloaded here), inspected by the loader itself without reading a tensor; label files; and
//! whether the device asked for exists on this machine.

use std::path::Path;

use crate::config::{ConfigError, FileErrors, ModelConfig, ModelSource};
use crate::models::checkpoint::{self, CheckpointFormat, hub};
use crate::models::device;

pub fn check(
    name: &str,
    model: &ModelConfig,
    errors: &mut FileErrors<'_>,
    warnings: &mut Vec<ConfigError>,
) {
    let key = format!("models.{name}");
    let task_declared = model.task.is_some();
    match &model.source {
        ModelSource::Path(path) => {
            if let Err(message) = check_files(path, task_declared) {
                errors.push(format!("{key}.path"), message);
            }
        }
        ModelSource::Hub { repo, revision } => {
            check_hub(&key, repo, revision, task_declared, errors, warnings);
        }
    }
    if let Err(message) = device::torch_device(model.device) {
        errors.push(format!("{key}.device"), message);
    }
    if let Some(labels) = &model.labels
        && !labels.is_file()
    {
        errors.push(
            format!("{key}.labels"),
            format!("label file {} does not exist", labels.display()),
        );
    }
}

/// What a model path must hold: config.json parses, the architecture is supported, every
/// weight file is there.
fn check_files(path: &Path, task_declared: bool) -> Result<(), String> {
    let files = checkpoint::inspect(path).map_err(|e| e.to_string())?;
    match files.format {
        CheckpointFormat::TorchScript { module } if !task_declared => Err(format!(
            "{} is a TorchScript model: set `task` (depth, segmentation or classification)",
            module.display()
        )),
        _ => Ok(()),
    }
}

/// A hub model is checked in the local cache only. A miss is an error when offline (the
/// daemon could not start it), otherwise a warning (it is downloaded at start).
fn check_hub(
    key: &str,
    repo: &str,
    revision: &str,
    task_declared: bool,
    errors: &mut FileErrors<'_>,
    warnings: &mut Vec<ConfigError>,
) {
    let settings = hub::HubSettings::from_env();
    match hub::resolve(&settings, repo, revision, hub::Fetch::CacheOnly) {
        Ok(dir) => {
            if let Err(message) = check_files(&dir, task_declared) {
                errors.push(format!("{key}.hub"), message);
            }
        }
        Err(error) if settings.offline => errors.push(format!("{key}.hub"), error.to_string()),
        Err(_) => warnings.push(ConfigError {
            file: errors.file.to_string(),
            key: format!("{key}.hub"),
            message: format!(
                "{repo}@{revision} is not in the Hugging Face cache ({}); it will be downloaded at start ({})",
                settings.cache_dir.display(),
                hub::fetch_command(repo, revision)
            ),
        }),
    }
}
