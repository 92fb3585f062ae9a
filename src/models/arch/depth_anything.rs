//! `DepthAnythingForDepthEstimation`: a DINOv2 backbone whose taps are layer-normed and lose
//! their CLS token, DPT's reassemble/fusion neck with fusion layers that upsample to the exact
//! size of the next shallower map, and a head that resizes to the input's patch-aligned size.

use serde::Deserialize;
use serde_json::{Value, json};
use tch::Tensor;

use super::dinov2::{Dinov2Config, Dinov2Encoder};
use super::dpt::{FusionLayer, Readout, ReassembleLayer, neck_convs, tokens_to_map};
use crate::config::Task;
use crate::models::nn::hf_config::{Size2, config_error, parse};
use crate::models::nn::layers::{
    Conv2d, Padding, Placement, TResult, image_input, py_index, require_patch_multiple,
    resize_bilinear, spatial,
};
use crate::models::nn::weights::Weights;
use crate::models::{ModelError, VisionModel};

pub const DEPTH_ANYTHING: &str = "DepthAnythingForDepthEstimation";

/// Known-unused checkpoint entries.
pub const DEPTH_ANYTHING_KNOWN_UNUSED: &[&str] = &[
    "*embeddings.mask_token",
    "neck.fusion_stage.layers.0.residual_layer1.",
];

/// `DepthAnythingConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct DepthAnythingConfig {
    backbone_config: Option<Value>,
    patch_size: Size2,
    reassemble_hidden_size: i64,
    reassemble_factors: Vec<f64>,
    neck_hidden_sizes: Vec<i64>,
    fusion_hidden_size: i64,
    head_in_index: i64,
    head_hidden_size: i64,
    depth_estimation_type: String,
    max_depth: Option<f64>,
}

impl Default for DepthAnythingConfig {
    fn default() -> Self {
        Self {
            backbone_config: None,
            patch_size: Size2::Square(14),
            reassemble_hidden_size: 384,
            reassemble_factors: vec![4.0, 2.0, 1.0, 0.5],
            neck_hidden_sizes: vec![48, 96, 192, 384],
            fusion_hidden_size: 64,
            head_in_index: -1,
            head_hidden_size: 32,
            depth_estimation_type: "relative".into(),
            max_depth: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Output {
    /// Relative inverse depth: ReLU.
    Relative,
    /// Metric depth: sigmoid × max_depth.
    Metric,
}

pub struct DepthAnythingForDepthEstimation {
    encoder: Dinov2Encoder,
    stages: Vec<usize>,
    layernorm: bool,
    reassemble: Vec<ReassembleLayer>,
    convs: Vec<Conv2d>,
    fusion: Vec<FusionLayer>,
    head_in: usize,
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    output: Output,
    max_depth: f64,
    patch: i64,
    channels: i64,
    info: Placement,
}

impl DepthAnythingForDepthEstimation {
    pub fn load(config: &Value, weights: &Weights) -> Result<Self, ModelError> {
        let cfg: DepthAnythingConfig = parse(config, weights, DEPTH_ANYTHING)?;
        let backbone = match cfg.backbone_config.as_ref().filter(|v| !v.is_null()) {
            Some(v) => v.clone(),
            // DepthAnythingConfig's default backbone.
            None => json!({
                "model_type": "dinov2",
                "image_size": 518,
                "hidden_size": 384,
                "num_attention_heads": 6,
                "out_indices": [9, 10, 11, 12],
                "reshape_hidden_states": false,
            }),
        };
        let kind = backbone
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("dinov2");
        if kind != "dinov2" {
            return Err(config_error(
                weights,
                format!("{DEPTH_ANYTHING} with a {kind:?} backbone is not supported (only dinov2)"),
            ));
        }
        let dcfg: Dinov2Config = parse(&backbone, weights, "backbone_config")?;
        if dcfg.reshape_hidden_states {
            return Err(config_error(
                weights,
                "backbone_config.reshape_hidden_states must be false for Depth-Anything",
            ));
        }
        let root = weights.root();
        let encoder = Dinov2Encoder::load(&root.pp("backbone"), &dcfg, weights)?;
        let patch = cfg.patch_size.square(weights, "patch_size")?;
        if patch != encoder.patch_size() {
            return Err(config_error(
                weights,
                format!(
                    "patch_size {patch} differs from the backbone's {}",
                    encoder.patch_size()
                ),
            ));
        }
        let out = dcfg.out_stages(weights)?;
        // Ascending and unique, as transformers walks the stages.
        let stages: Vec<usize> = (0..=encoder.num_layers())
            .filter(|s| out.contains(s))
            .collect();
        let n = cfg.neck_hidden_sizes.len();
        if cfg.reassemble_factors.len() != n || stages.len() != n || n == 0 {
            return Err(config_error(
                weights,
                format!(
                    "backbone taps ({}), reassemble_factors ({}) and neck_hidden_sizes ({n}) must have the same, non-zero length",
                    stages.len(),
                    cfg.reassemble_factors.len()
                ),
            ));
        }
        if cfg.reassemble_hidden_size != dcfg.hidden_size {
            return Err(config_error(
                weights,
                format!(
                    "reassemble_hidden_size {} differs from the backbone hidden_size {}",
                    cfg.reassemble_hidden_size, dcfg.hidden_size
                ),
            ));
        }
        let output = match cfg.depth_estimation_type.as_str() {
            "relative" => Output::Relative,
            "metric" => Output::Metric,
            other => {
                return Err(config_error(
                    weights,
                    format!("depth_estimation_type {other:?} is not relative or metric"),
                ));
            }
        };
        let neck = root.pp("neck");
        let reassemble = cfg
            .neck_hidden_sizes
            .iter()
            .zip(&cfg.reassemble_factors)
            .enumerate()
            .map(|(i, (&ch, &factor))| {
                ReassembleLayer::load(
                    &neck.pp("reassemble_stage").pp("layers").pp(i),
                    cfg.reassemble_hidden_size,
                    ch,
                    factor,
                    weights,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let f = cfg.fusion_hidden_size;
        let convs = neck_convs(&neck.pp("convs"), &cfg.neck_hidden_sizes, f);
        let fusion = (0..n)
            .map(|j| {
                FusionLayer::load(
                    &neck.pp("fusion_stage").pp("layers").pp(j),
                    f,
                    j == 0,
                    false,
                    true,
                )
            })
            .collect();
        let head = root.pp("head");
        let hh = cfg.head_hidden_size;
        Ok(Self {
            encoder,
            stages,
            layernorm: dcfg.apply_layernorm,
            reassemble,
            convs,
            fusion,
            head_in: py_index(cfg.head_in_index, n).ok_or_else(|| {
                config_error(
                    weights,
                    format!("head_in_index {} is out of range", cfg.head_in_index),
                )
            })?,
            conv1: Conv2d::load(&head.pp("conv1"), f, f / 2, 3, true)
                .with_padding(Padding::Fixed(1))
                .channels_last_on_cuda(),
            conv2: Conv2d::load(&head.pp("conv2"), f / 2, hh, 3, true)
                .with_padding(Padding::Fixed(1))
                .channels_last_on_cuda(),
            conv3: Conv2d::load(&head.pp("conv3"), hh, 1, 1, true).channels_last_on_cuda(),
            output,
            // transformers: `max_depth if max_depth else 1`.
            max_depth: cfg.max_depth.filter(|&d| d != 0.0).unwrap_or(1.0),
            patch,
            channels: dcfg.num_channels,
            info: Placement::of(&root),
        })
    }

    fn depth(&self, x: &Tensor, gh: i64, gw: i64) -> TResult {
        let mut states = self.encoder.hidden_states(x, gh, gw, &self.stages)?;
        if self.layernorm {
            states = states
                .iter()
                .map(|s| self.encoder.layernorm(s))
                .collect::<TResult<_>>()?;
        }
        let mut features = Vec::with_capacity(states.len());
        for ((state, layer), conv) in states.iter().zip(&self.reassemble).zip(&self.convs) {
            let map = tokens_to_map(state, &Readout::Ignore, gh, gw)?;
            features.push(conv.forward(&layer.forward(&map)?)?);
        }
        features.reverse();
        let mut fused: Vec<Tensor> = Vec::with_capacity(features.len());
        for (j, (feature, layer)) in features.iter().zip(&self.fusion).enumerate() {
            let size = features.get(j + 1).map(spatial);
            let next = match fused.last() {
                None => layer.forward(feature, None, size)?,
                Some(prev) => layer.forward(prev, Some(feature), size)?,
            };
            fused.push(next);
        }
        let y = self.conv1.forward(&fused[self.head_in])?;
        let y = resize_bilinear(&y, (gh * self.patch, gw * self.patch), true)?;
        let y = self.conv2.forward(&y)?.f_relu()?;
        let y = self.conv3.forward(&y)?;
        let y = match self.output {
            Output::Relative => y.f_relu()?,
            Output::Metric => y.f_sigmoid()?,
        };
        y.f_mul_scalar(self.max_depth)?.f_squeeze_dim(1)
    }
}

impl VisionModel for DepthAnythingForDepthEstimation {
    fn task(&self) -> Task {
        Task::Depth
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let (x, _, h, w) = image_input(DEPTH_ANYTHING, pixel_values, self.channels, &self.info)?;
        let (gh, gw) = require_patch_multiple(DEPTH_ANYTHING, h, w, self.patch)?;
        Ok(self.depth(&x, gh, gw)?)
    }
}
