//! The native architectures, one file each, and the zoo that picks one from a checkpoint's
//! `config.json` and builds it from its weights.

pub mod beit;
pub mod bit;
pub mod depth_anything;
pub mod dinov2;
pub mod dpt;
pub mod vit;

use std::path::Path;

use serde_json::Value;

use self::beit::{BEIT_CLASSIFICATION, BeitForImageClassification};
use self::depth_anything::{
    DEPTH_ANYTHING, DEPTH_ANYTHING_KNOWN_UNUSED, DepthAnythingForDepthEstimation,
};
use self::dinov2::{DINOV2_CLASSIFICATION, Dinov2ForImageClassification};
use self::dpt::{
    DPT_DEPTH, DPT_KNOWN_UNUSED, DPT_SEGMENTATION, DptForDepthEstimation,
    DptForSemanticSegmentation,
};
use crate::models::nn::weights::Weights;
use crate::models::{ModelError, VisionModel};

/// The `architectures[0]` values a native port exists for.
pub const SUPPORTED: &[&str] = &[
    DPT_DEPTH,
    DPT_SEGMENTATION,
    BEIT_CLASSIFICATION,
    DINOV2_CLASSIFICATION,
    DEPTH_ANYTHING,
];

/// What an architecture computes, without building it (a served model's processor folder has
/// its config.json but no weights).
pub fn task_of(architecture: &str) -> Option<crate::config::Task> {
    use crate::config::Task;
    match architecture {
        DPT_DEPTH | DEPTH_ANYTHING => Some(Task::Depth),
        DPT_SEGMENTATION => Some(Task::Segmentation),
        BEIT_CLASSIFICATION | DINOV2_CLASSIFICATION => Some(Task::Classification),
        _ => None,
    }
}

/// Stored-but-unused entries: old checkpoints keep BEiT's relative position index buffers,
/// and the masked-image-modelling token is for pre-training only.
const BEIT_KNOWN_UNUSED: &[&str] = &["*relative_position_index", "*embeddings.mask_token"];
const DINOV2_KNOWN_UNUSED: &[&str] = &["*embeddings.mask_token"];

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

/// Builds the model `architecture` names from its config and weights, then checks that every
/// parameter the config implies was present with the right shape (naming all that were not).
/// DPT picks its backbone from `is_hybrid` and `backbone_config.model_type`.
pub fn build(
    architecture: &str,
    config: &Value,
    weights: Weights,
) -> Result<Box<dyn VisionModel>, ModelError> {
    let (model, known_unused): (Box<dyn VisionModel>, &[&str]) = match architecture {
        DPT_DEPTH => (
            Box::new(DptForDepthEstimation::load(config, &weights)?),
            DPT_KNOWN_UNUSED,
        ),
        DPT_SEGMENTATION => (
            Box::new(DptForSemanticSegmentation::load(config, &weights)?),
            DPT_KNOWN_UNUSED,
        ),
        BEIT_CLASSIFICATION => (
            Box::new(BeitForImageClassification::load(config, &weights)?),
            BEIT_KNOWN_UNUSED,
        ),
        DINOV2_CLASSIFICATION => (
            Box::new(Dinov2ForImageClassification::load(config, &weights)?),
            DINOV2_KNOWN_UNUSED,
        ),
        DEPTH_ANYTHING => (
            Box::new(DepthAnythingForDepthEstimation::load(config, &weights)?),
            DEPTH_ANYTHING_KNOWN_UNUSED,
        ),
        other => {
            return Err(ModelError::UnsupportedArchitecture {
                path: weights.origin().to_path_buf(),
                architecture: other.to_string(),
                supported: SUPPORTED.iter().map(|s| s.to_string()).collect(),
            });
        }
    };
    weights.finish(known_unused)?;
    Ok(model)
}
