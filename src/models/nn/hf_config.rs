//! Reading the hyper-parameters of a Hugging Face `config.json`.
//!
//! Each architecture deserializes its own small struct whose serde defaults are transformers'
//! config defaults, so a checkpoint that omits a key behaves as it does in Python.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::weights::Weights;
use crate::models::ModelError;

/// A config problem, reported against the checkpoint it belongs to.
pub fn config_error(weights: &Weights, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint {
        path: weights.origin().to_path_buf(),
        reason: format!("config.json: {reason}"),
    }
}

/// Deserializes `value` into `T`; `what` names the section for the error message.
pub fn parse<T: DeserializeOwned>(
    value: &Value,
    weights: &Weights,
    what: &str,
) -> Result<T, ModelError> {
    T::deserialize(value).map_err(|e| config_error(weights, format!("{what}: {e}")))
}

/// `image_size` / `patch_size`: an int or a `[height, width]` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size2 {
    Square(i64),
    Pair([i64; 2]),
}

impl Size2 {
    pub fn hw(self) -> (i64, i64) {
        match self {
            Size2::Square(s) => (s, s),
            Size2::Pair([h, w]) => (h, w),
        }
    }

    /// The single side of a square size; ViT-style models only support square patches.
    pub fn square(self, weights: &Weights, what: &str) -> Result<i64, ModelError> {
        match self.hw() {
            (h, w) if h == w && h > 0 => Ok(h),
            (h, w) => Err(config_error(
                weights,
                format!("{what} {h}x{w}: only square, positive sizes are supported"),
            )),
        }
    }
}

/// Number of labels as transformers derives it: the size of `id2label`, else `num_labels`,
/// else 2.
pub fn num_labels(config: &Value) -> i64 {
    if let Some(map) = config.get("id2label").and_then(Value::as_object) {
        return map.len() as i64;
    }
    config
        .get("num_labels")
        .and_then(Value::as_i64)
        .unwrap_or(2)
}

/// Output stages of a transformers backbone (`BackboneConfigMixin`): indices into
/// `["stem", "stage1", …]`, from `out_indices` or else `out_features`; the last stage when
/// neither is given.
pub fn backbone_out_indices(
    out_indices: Option<&[i64]>,
    out_features: Option<&[String]>,
    num_stages: usize,
    weights: &Weights,
) -> Result<Vec<usize>, ModelError> {
    let count = num_stages as i64 + 1;
    let resolve = |i: i64| -> Result<usize, ModelError> {
        let index = if i < 0 { count + i } else { i };
        if (0..count).contains(&index) {
            Ok(index as usize)
        } else {
            Err(config_error(
                weights,
                format!("backbone out index {i} is outside stem..stage{num_stages}"),
            ))
        }
    };
    if let Some(indices) = out_indices {
        return indices.iter().map(|&i| resolve(i)).collect();
    }
    if let Some(features) = out_features {
        return features
            .iter()
            .map(|name| match name.as_str() {
                "stem" => Ok(0),
                other => other
                    .strip_prefix("stage")
                    .and_then(|n| n.parse::<i64>().ok())
                    .ok_or_else(|| {
                        config_error(weights, format!("unknown backbone out feature {other:?}"))
                    })
                    .and_then(resolve),
            })
            .collect();
    }
    Ok(vec![num_stages])
}
