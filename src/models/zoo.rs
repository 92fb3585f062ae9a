//! From a checkpoint's `config.json` architecture name to a loaded native model.

use serde_json::Value;

use super::beit::{BEIT_CLASSIFICATION, BeitForImageClassification};
use super::depth_anything::{
    DEPTH_ANYTHING, DEPTH_ANYTHING_KNOWN_UNUSED, DepthAnythingForDepthEstimation,
};
use super::dinov2::{DINOV2_CLASSIFICATION, Dinov2ForImageClassification};
use super::dpt::{
    DPT_DEPTH, DPT_KNOWN_UNUSED, DPT_SEGMENTATION, DptForDepthEstimation,
    DptForSemanticSegmentation,
};
use super::weights::Weights;
use super::{ModelError, VisionModel};

/// The `architectures[0]` values a native port exists for.
pub const SUPPORTED: &[&str] = &[
    DPT_DEPTH,
    DPT_SEGMENTATION,
    BEIT_CLASSIFICATION,
    DINOV2_CLASSIFICATION,
    DEPTH_ANYTHING,
];

/// Stored-but-unused entries: old checkpoints keep BEiT's relative position index buffers,
/// and the masked-image-modelling token is for pre-training only.
const BEIT_KNOWN_UNUSED: &[&str] = &["*relative_position_index", "*embeddings.mask_token"];
const DINOV2_KNOWN_UNUSED: &[&str] = &["*embeddings.mask_token"];

/// `architectures[0]` of a `config.json`.
pub fn architecture(config: &Value) -> Option<&str> {
    config.get("architectures")?.get(0)?.as_str()
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
