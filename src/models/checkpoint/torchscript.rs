//! Any other model, brought in as a TorchScript module (`torch.jit.script`/`trace` + `save`).
//!
//! The module maps `pixel_values` [B, 3, H, W] to the task's output; the task is declared by
//! the caller because a module carries no such metadata. The output is checked against that
//! declaration on every call, so a wrong `task:` fails with a clear message, not a panic
//! somewhere in post-processing.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::jit::{CModule, IValue};
use tch::{Device, Kind, Tensor};

use crate::config::Task;
use crate::models::{ModelError, VisionModel};

pub struct TorchScriptModel {
    module: CModule,
    task: Task,
    path: PathBuf,
}

impl TorchScriptModel {
    /// Loads the module straight onto `device`, in eval mode, cast to `kind`.
    pub fn load(path: &Path, task: Task, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let mut module =
            CModule::load_on_device(path, device).map_err(|e| ModelError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("cannot load the TorchScript module: {e}"),
            })?;
        // Dropout and batch-norm statistics must be in inference mode.
        module.f_set_eval()?;
        if kind != Kind::Float {
            module.to(device, kind, false);
        }
        Ok(Self {
            module,
            task,
            path: path.to_path_buf(),
        })
    }

    fn output_error(&self, reason: String) -> ModelError {
        ModelError::Output {
            model: self.path.display().to_string(),
            reason,
        }
    }

    /// The output tensor: a plain tensor, the first tensor of a tuple/list, or the
    /// `predicted_depth`/`logits` entry of a dict (what HF-style wrappers return).
    fn main_tensor(&self, output: IValue) -> Result<Tensor, ModelError> {
        let wanted = match self.task {
            Task::Depth => "predicted_depth",
            Task::Segmentation | Task::Classification => "logits",
        };
        let found = match output {
            IValue::Tensor(tensor) => Some(tensor),
            IValue::Tuple(items) | IValue::GenericList(items) => {
                items.into_iter().find_map(|item| match item {
                    IValue::Tensor(tensor) => Some(tensor),
                    _ => None,
                })
            }
            IValue::TensorList(tensors) => tensors.into_iter().next(),
            IValue::GenericDict(entries) => {
                entries
                    .into_iter()
                    .find_map(|(key, value)| match (key, value) {
                        (IValue::String(key), IValue::Tensor(tensor)) if key == wanted => {
                            Some(tensor)
                        }
                        _ => None,
                    })
            }
            _ => None,
        };
        found.ok_or_else(|| {
            self.output_error(format!(
                "the module returned no tensor (expected a tensor, a tuple starting with one, or a dict with `{wanted}`)"
            ))
        })
    }
}

impl VisionModel for TorchScriptModel {
    fn task(&self) -> Task {
        self.task
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let batch = pixel_values.size().first().copied().unwrap_or(0);
        // No autograd graph: inference only, and it keeps activation memory flat.
        let output = tch::no_grad(|| {
            self.module
                .forward_is(&[IValue::Tensor(pixel_values.shallow_clone())])
        })?;
        let output = self.main_tensor(output)?;
        let shape = output.size();
        let expected = match self.task {
            Task::Depth => "[B, H, W] (or [B, 1, H, W])",
            Task::Segmentation => "[B, C, H, W]",
            Task::Classification => "[B, C]",
        };
        let output = match (self.task, shape.len()) {
            (Task::Depth, 3) | (Task::Segmentation, 4) | (Task::Classification, 2) => output,
            // Many depth exports keep the channel axis; transformers' predicted_depth drops it.
            (Task::Depth, 4) if shape[1] == 1 => output.squeeze_dim(1),
            _ => {
                return Err(self.output_error(format!(
                    "declared task {} expects output {expected}, but the module returned {shape:?}",
                    self.task
                )));
            }
        };
        if shape.first() != Some(&batch) {
            return Err(self.output_error(format!(
                "the module returned {shape:?} for a batch of {batch}: the first axis must be the batch"
            )));
        }
        Ok(output)
    }
}

/// Class names for a TorchScript classifier or segmenter: a JSON list, a JSON id→name object
/// (an `id2label`, or a whole config.json holding one), or plain text with one name per line.
pub fn read_labels(file: &Path) -> Result<Vec<String>, ModelError> {
    let invalid = |reason: String| ModelError::Checkpoint {
        path: file.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| invalid(format!("cannot read the labels file: {e}")))?;
    let is_json = file.extension().is_some_and(|e| e == "json");
    if !is_json {
        // Trailing blank lines are an editor artefact, not classes.
        let lines: Vec<String> = text.lines().map(|l| l.trim().to_owned()).collect();
        let end = lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |i| i + 1);
        return Ok(lines[..end].to_vec());
    }
    let value: Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
    match &value {
        Value::Array(names) => names
            .iter()
            .enumerate()
            .map(|(id, name)| {
                name.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("entry {id} is not a string")))
            })
            .collect(),
        Value::Object(map) if map.contains_key("id2label") => super::files::id2label(&value, file),
        Value::Object(_) => {
            let wrapped = serde_json::json!({ "id2label": value });
            super::files::id2label(&wrapped, file)
        }
        _ => Err(invalid(
            "expected a JSON list of names or an id→name object".to_owned(),
        )),
    }
}
