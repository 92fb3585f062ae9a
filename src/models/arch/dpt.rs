//! DPT (`DPTForDepthEstimation`, `DPTForSemanticSegmentation`): a ViT, ViT+BiT (hybrid) or
//! DINOv2 backbone, the reassemble/fusion neck and a depth or segmentation head.
//!
//! The neck pieces are shared with Depth-Anything, which differs only in how it reads the
//! backbone and how far its fusion layers upsample.
//!
//! On CUDA the neck and head convolutions keep their weights channels-last: the token grids
//! the neck reads are already NHWC views (see [`tokens_to_map`]), and every op between the
//! convolutions (ReLU, adds, BatchNorm, bilinear resizes) keeps NHWC, so cuDNN runs NHWC
//! throughout with no layout conversions. The BiT backbone stays NCHW: CUDA's GroupNorm only
//! takes contiguous NCHW input and would convert every map back.

use serde::Deserialize;
use serde_json::{Value, json};
use tch::Tensor;

use super::bit::BitConfig;
use super::dinov2::{Dinov2Config, Dinov2Encoder};
use super::vit::{HybridEmbeddings, VitConfig, VitEmbeddings, VitEncoder};
use crate::config::Task;
use crate::models::nn::hf_config::{config_error, num_labels, parse};
use crate::models::nn::layers::{
    Activation, BatchNorm, Conv2d, ConvTranspose2d, Linear, Padding, Placement, TResult,
    image_input, py_index, require_patch_multiple, resize_bilinear, spatial,
};
use crate::models::nn::weights::{Weights, WeightsPath};
use crate::models::{ModelError, VisionModel};

pub const DPT_DEPTH: &str = "DPTForDepthEstimation";
pub const DPT_SEGMENTATION: &str = "DPTForSemanticSegmentation";

/// `DPTConfig` beyond the ViT part, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct DptConfig {
    is_hybrid: bool,
    backbone_out_indices: Option<Vec<i64>>,
    readout_type: String,
    reassemble_factors: Vec<f64>,
    neck_hidden_sizes: Vec<i64>,
    fusion_hidden_size: i64,
    head_in_index: i64,
    use_batch_norm_in_fusion_residual: Option<bool>,
    use_bias_in_fusion_residual: Option<bool>,
    add_projection: bool,
    backbone_featmap_shape: Option<Vec<i64>>,
    backbone_config: Option<Value>,
    hidden_act: String,
}

impl Default for DptConfig {
    fn default() -> Self {
        Self {
            is_hybrid: false,
            backbone_out_indices: Some(vec![2, 5, 8, 11]),
            readout_type: "project".into(),
            reassemble_factors: vec![4.0, 2.0, 1.0, 0.5],
            neck_hidden_sizes: vec![96, 192, 384, 768],
            fusion_hidden_size: 256,
            head_in_index: -1,
            use_batch_norm_in_fusion_residual: Some(false),
            use_bias_in_fusion_residual: None,
            add_projection: false,
            backbone_featmap_shape: Some(vec![1, 1024, 24, 24]),
            backbone_config: None,
            hidden_act: "gelu".into(),
        }
    }
}

/// Known-unused checkpoint entries of DPT models (MODELS.md pitfall 10).
pub const DPT_KNOWN_UNUSED: &[&str] = &[
    "dpt.layernorm.",
    "dpt.pooler.",
    "backbone.layernorm.",
    "*embeddings.mask_token",
    "auxiliary_head.",
    // transformers builds it, but the deepest fusion layer has no residual input.
    "neck.fusion_stage.layers.0.residual_layer1.",
];

/// The indices of `0..count` that `wanted` names, ascending and once each: transformers picks
/// taps with `idx in indices` while walking the layers, so order and duplicates in the config
/// do not matter.
fn select_taps(wanted: &[i64], count: usize) -> Vec<usize> {
    (0..count)
        .filter(|&i| wanted.contains(&(i as i64)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Neck pieces (shared with Depth-Anything)

enum Resize {
    Up(ConvTranspose2d),
    Identity,
    Down(Conv2d),
}

/// `reassemble_stage.layers.{i}`: 1×1 projection to the stage width, then a resize by the
/// stage's factor.
pub(crate) struct ReassembleLayer {
    projection: Conv2d,
    resize: Resize,
}

impl ReassembleLayer {
    pub(crate) fn load(
        p: &WeightsPath,
        in_ch: i64,
        out_ch: i64,
        factor: f64,
        weights: &Weights,
    ) -> Result<Self, ModelError> {
        let resize = if factor > 1.0 {
            let k = factor as i64;
            if k as f64 != factor {
                return Err(config_error(
                    weights,
                    format!("reassemble factor {factor} must be a whole number above 1"),
                ));
            }
            Resize::Up(
                ConvTranspose2d::load(&p.pp("resize"), out_ch, out_ch, k, k)
                    .channels_last_on_cuda(),
            )
        } else if factor == 1.0 {
            Resize::Identity
        } else if factor > 0.0 {
            // Python's int(1 / factor).
            let stride = (1.0 / factor) as i64;
            Resize::Down(
                Conv2d::load(&p.pp("resize"), out_ch, out_ch, 3, true)
                    .with_stride(stride)
                    .with_padding(Padding::Fixed(1))
                    .channels_last_on_cuda(),
            )
        } else {
            return Err(config_error(
                weights,
                format!("reassemble factor {factor} must be positive"),
            ));
        };
        Ok(Self {
            projection: Conv2d::load(&p.pp("projection"), in_ch, out_ch, 1, true)
                .channels_last_on_cuda(),
            resize,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> TResult {
        let x = self.projection.forward(x)?;
        match &self.resize {
            Resize::Up(conv) => conv.forward(&x),
            Resize::Identity => Ok(x),
            Resize::Down(conv) => conv.forward(&x),
        }
    }
}

/// Pre-activation residual unit: ReLU → conv → [BN] → ReLU → conv → [BN] → + input.
struct ResidualUnit {
    conv1: Conv2d,
    bn1: Option<BatchNorm>,
    conv2: Conv2d,
    bn2: Option<BatchNorm>,
}

impl ResidualUnit {
    fn load(p: &WeightsPath, ch: i64, batch_norm: bool, bias: bool) -> Self {
        let conv = |name: &str| {
            Conv2d::load(&p.pp(name), ch, ch, 3, bias)
                .with_padding(Padding::Fixed(1))
                .channels_last_on_cuda()
        };
        // nn.BatchNorm2d default eps; DPTConfig has no key for it.
        let bn = |name: &str| batch_norm.then(|| BatchNorm::load(&p.pp(name), ch, 1e-5));
        Self {
            conv1: conv("convolution1"),
            bn1: bn("batch_norm1"),
            conv2: conv("convolution2"),
            bn2: bn("batch_norm2"),
        }
    }

    fn forward(&self, x: &Tensor) -> TResult {
        let mut h = self.conv1.forward(&x.f_relu()?)?;
        if let Some(bn) = &self.bn1 {
            h = bn.forward(&h)?;
        }
        h = self.conv2.forward(&h.f_relu()?)?;
        if let Some(bn) = &self.bn2 {
            h = bn.forward(&h)?;
        }
        h.f_add(x)
    }
}

/// `fusion_stage.layers.{j}`.
pub(crate) struct FusionLayer {
    /// Absent for the deepest layer, which has no residual input.
    residual1: Option<ResidualUnit>,
    residual2: ResidualUnit,
    projection: Conv2d,
}

impl FusionLayer {
    pub(crate) fn load(
        p: &WeightsPath,
        ch: i64,
        deepest: bool,
        batch_norm: bool,
        bias: bool,
    ) -> Self {
        Self {
            residual1: (!deepest)
                .then(|| ResidualUnit::load(&p.pp("residual_layer1"), ch, batch_norm, bias)),
            residual2: ResidualUnit::load(&p.pp("residual_layer2"), ch, batch_norm, bias),
            projection: Conv2d::load(&p.pp("projection"), ch, ch, 1, true).channels_last_on_cuda(),
        }
    }

    /// Merges `residual` (the next shallower map) into `x`, then upsamples (align_corners
    /// true) to `size`, or ×2 when `None`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        size: Option<(i64, i64)>,
    ) -> TResult {
        let mut x = x.shallow_clone();
        if let (Some(unit), Some(residual)) = (&self.residual1, residual) {
            let target = spatial(&x);
            let residual = if spatial(residual) != target {
                resize_bilinear(residual, target, false)?
            } else {
                residual.shallow_clone()
            };
            x = x.f_add(&unit.forward(&residual)?)?;
        }
        x = self.residual2.forward(&x)?;
        let (h, w) = spatial(&x);
        let size = size.unwrap_or((2 * h, 2 * w));
        x = resize_bilinear(&x, size, true)?;
        self.projection.forward(&x)
    }
}

/// How a reassemble stage folds the CLS token into the patch tokens.
pub(crate) enum Readout {
    Ignore,
    Add,
    Project(Linear, Activation),
}

enum NeckStage {
    /// DPT-hybrid stages 0 and 1: BiT maps that are already images.
    Bypass,
    Tokens {
        readout: Readout,
        layer: ReassembleLayer,
    },
}

/// The neck's 3×3 convolutions from each reassembled width to the fusion width (DPT and
/// Depth-Anything alike): `convs.{i}`, no bias.
pub(crate) fn neck_convs(p: &WeightsPath, widths: &[i64], fusion: i64) -> Vec<Conv2d> {
    widths
        .iter()
        .enumerate()
        .map(|(i, &ch)| {
            Conv2d::load(&p.pp(i), ch, fusion, 3, false)
                .with_padding(Padding::Fixed(1))
                .channels_last_on_cuda()
        })
        .collect()
}

/// Tokens [B, 1 + h·w, C] to a map [B, C, h, w], handling the CLS token per `readout`. The map
/// is a view of the tokens, channels-last in memory (no copy).
pub(crate) fn tokens_to_map(tokens: &Tensor, readout: &Readout, h: i64, w: i64) -> TResult {
    let (b, n, c) = tokens.size3()?;
    let cls = tokens.f_select(1, 0)?.f_unsqueeze(1)?;
    let patches = tokens.f_narrow(1, 1, n - 1)?;
    let patches = match readout {
        Readout::Ignore => patches,
        Readout::Add => patches.f_add(&cls)?,
        Readout::Project(linear, act) => {
            // Token first, CLS second, as the checkpoints were trained.
            let cls = cls.f_expand_as(&patches)?;
            act.forward(&linear.forward(&Tensor::f_cat(&[patches, cls], -1)?)?)?
        }
    };
    patches.f_permute([0, 2, 1])?.f_reshape([b, c, h, w])
}

pub(crate) struct DptNeck {
    stages: Vec<NeckStage>,
    convs: Vec<Conv2d>,
    fusion: Vec<FusionLayer>,
}

impl DptNeck {
    fn load(
        p: &WeightsPath,
        cfg: &DptConfig,
        backbone_hidden: i64,
        bypass: usize,
        weights: &Weights,
    ) -> Result<Self, ModelError> {
        let n = cfg.neck_hidden_sizes.len();
        if cfg.reassemble_factors.len() != n || n == 0 {
            return Err(config_error(
                weights,
                format!(
                    "neck_hidden_sizes ({n}) and reassemble_factors ({}) must have the same, non-zero length",
                    cfg.reassemble_factors.len()
                ),
            ));
        }
        let act = Activation::from_name(&cfg.hidden_act).ok_or_else(|| {
            config_error(weights, format!("unknown hidden_act {:?}", cfg.hidden_act))
        })?;
        let rp = p.pp("reassemble_stage");
        let mut stages = Vec::with_capacity(n);
        for (i, (&ch, &factor)) in cfg
            .neck_hidden_sizes
            .iter()
            .zip(&cfg.reassemble_factors)
            .enumerate()
        {
            if i < bypass {
                stages.push(NeckStage::Bypass);
                continue;
            }
            let readout = match cfg.readout_type.as_str() {
                "ignore" => Readout::Ignore,
                "add" => Readout::Add,
                "project" => Readout::Project(
                    Linear::load(
                        &rp.pp("readout_projects").pp(i).pp(0),
                        2 * backbone_hidden,
                        backbone_hidden,
                        true,
                    ),
                    act,
                ),
                other => {
                    return Err(config_error(
                        weights,
                        format!("readout_type {other:?} is not one of ignore, add, project"),
                    ));
                }
            };
            let layer = ReassembleLayer::load(
                &rp.pp("layers").pp(i),
                backbone_hidden,
                ch,
                factor,
                weights,
            )?;
            stages.push(NeckStage::Tokens { readout, layer });
        }
        let f = cfg.fusion_hidden_size;
        let convs = neck_convs(&p.pp("convs"), &cfg.neck_hidden_sizes, f);
        let batch_norm = cfg.use_batch_norm_in_fusion_residual.unwrap_or(false);
        let bias = cfg.use_bias_in_fusion_residual.unwrap_or(!batch_norm);
        let fusion = (0..n)
            .map(|j| {
                FusionLayer::load(
                    &p.pp("fusion_stage").pp("layers").pp(j),
                    f,
                    j == 0,
                    batch_norm,
                    bias,
                )
            })
            .collect();
        Ok(Self {
            stages,
            convs,
            fusion,
        })
    }

    /// Backbone outputs (tokens, or maps for bypassed stages) → fused maps, deepest first.
    fn forward(&self, inputs: &[Tensor], h: i64, w: i64) -> TResult<Vec<Tensor>> {
        let mut features = Vec::with_capacity(inputs.len());
        for ((input, stage), conv) in inputs.iter().zip(&self.stages).zip(&self.convs) {
            let map = match stage {
                NeckStage::Bypass => input.shallow_clone(),
                NeckStage::Tokens { readout, layer } => {
                    layer.forward(&tokens_to_map(input, readout, h, w)?)?
                }
            };
            features.push(conv.forward(&map)?);
        }
        let mut fused: Vec<Tensor> = Vec::with_capacity(features.len());
        for (feature, layer) in features.iter().rev().zip(&self.fusion) {
            let next = match fused.last() {
                None => layer.forward(feature, None, None)?,
                Some(prev) => layer.forward(prev, Some(feature), None)?,
            };
            fused.push(next);
        }
        Ok(fused)
    }
}

// ---------------------------------------------------------------------------------------------
// Backbones

enum Backbone {
    Vit {
        embeddings: VitEmbeddings,
        encoder: VitEncoder,
        taps: Vec<usize>,
        patch: i64,
    },
    Hybrid {
        embeddings: HybridEmbeddings,
        encoder: VitEncoder,
        taps: Vec<usize>,
        patch: i64,
        image: (i64, i64),
    },
    Dinov2 {
        encoder: Dinov2Encoder,
        stages: Vec<usize>,
        layernorm: bool,
    },
}

struct LoadedBackbone {
    backbone: Backbone,
    /// Width of the tokens the neck reassembles.
    hidden: i64,
    /// Number of leading neck stages that take maps directly (hybrid).
    bypass: usize,
    /// Number of neck inputs the backbone produces.
    outputs: usize,
    channels: i64,
}

impl Backbone {
    fn load(
        cfg: &DptConfig,
        config: &Value,
        weights: &Weights,
        allow_dinov2: bool,
        model: &str,
    ) -> Result<LoadedBackbone, ModelError> {
        let root = weights.root();
        let vit: VitConfig = parse(config, weights, model)?;
        if cfg.is_hybrid {
            if cfg.readout_type != "project" {
                return Err(config_error(
                    weights,
                    "DPT-hybrid requires readout_type \"project\"",
                ));
            }
            let bit_value = match &cfg.backbone_config {
                Some(v) if !v.is_null() => v.clone(),
                // DPTConfig's defaults for a hybrid model without backbone_config.
                _ => json!({
                    "global_padding": "same",
                    "layer_type": "bottleneck",
                    "depths": [3, 4, 9],
                    "out_features": ["stage1", "stage2", "stage3"],
                    "embedding_dynamic_padding": true,
                }),
            };
            let bit_cfg: BitConfig = parse(&bit_value, weights, "backbone_config")?;
            let featmap = cfg
                .backbone_featmap_shape
                .as_deref()
                .and_then(|s| s.get(1).copied())
                .ok_or_else(|| config_error(weights, "DPT-hybrid needs backbone_featmap_shape"))?;
            let dpt = root.pp("dpt");
            let embeddings =
                HybridEmbeddings::load(&dpt.pp("embeddings"), &vit, &bit_cfg, featmap, weights)?;
            let encoder = VitEncoder::load(&dpt.pp("encoder"), &vit, weights)?;
            let indices = cfg.backbone_out_indices.clone().unwrap_or_default();
            let taps = select_taps(indices.get(2..).unwrap_or(&[]), encoder.num_layers());
            let (patch, _, _) = vit.grid(weights)?;
            let [c0, c1] = embeddings.residual_channels();
            let expected = cfg.neck_hidden_sizes.get(..2).unwrap_or(&[]);
            if expected != [c0, c1] {
                return Err(config_error(
                    weights,
                    format!(
                        "neck_hidden_sizes {:?} must start with the BiT stage widths [{c0}, {c1}]",
                        cfg.neck_hidden_sizes
                    ),
                ));
            }
            let outputs = 2 + taps.len();
            return Ok(LoadedBackbone {
                backbone: Backbone::Hybrid {
                    embeddings,
                    encoder,
                    taps,
                    patch,
                    image: vit.image_size.hw(),
                },
                hidden: vit.hidden_size,
                bypass: 2,
                outputs,
                channels: vit.num_channels,
            });
        }
        if let Some(backbone) = cfg.backbone_config.as_ref().filter(|v| !v.is_null()) {
            let kind = backbone
                .get("model_type")
                .and_then(Value::as_str)
                .unwrap_or("");
            if kind != "dinov2" || !allow_dinov2 {
                return Err(config_error(
                    weights,
                    format!(
                        "{model} with a {kind:?} backbone_config is not supported (only dinov2 for depth)"
                    ),
                ));
            }
            let dcfg: Dinov2Config = parse(backbone, weights, "backbone_config")?;
            if dcfg.reshape_hidden_states {
                return Err(config_error(
                    weights,
                    "backbone_config.reshape_hidden_states must be false for DPT",
                ));
            }
            let encoder = Dinov2Encoder::load(&root.pp("backbone"), &dcfg, weights)?;
            let out = dcfg.out_stages(weights)?;
            let wanted: Vec<i64> = out.iter().map(|&s| s as i64).collect();
            let stages = select_taps(&wanted, encoder.num_layers() + 1);
            let outputs = stages.len();
            return Ok(LoadedBackbone {
                backbone: Backbone::Dinov2 {
                    encoder,
                    stages,
                    layernorm: dcfg.apply_layernorm,
                },
                hidden: dcfg.hidden_size,
                bypass: 0,
                outputs,
                channels: dcfg.num_channels,
            });
        }
        let dpt = root.pp("dpt");
        let embeddings = VitEmbeddings::load(&dpt.pp("embeddings"), &vit, weights)?;
        let encoder = VitEncoder::load(&dpt.pp("encoder"), &vit, weights)?;
        let indices = cfg.backbone_out_indices.clone().unwrap_or_default();
        let taps = select_taps(&indices, encoder.num_layers());
        let (patch, _, _) = vit.grid(weights)?;
        let outputs = taps.len();
        Ok(LoadedBackbone {
            backbone: Backbone::Vit {
                embeddings,
                encoder,
                taps,
                patch,
            },
            hidden: vit.hidden_size,
            bypass: 0,
            outputs,
            channels: vit.num_channels,
        })
    }

    /// Neck inputs and the token grid (h, w) for an input of `h`×`w` pixels.
    fn features(
        &self,
        model: &str,
        x: &Tensor,
        h: i64,
        w: i64,
    ) -> Result<(Vec<Tensor>, i64, i64), ModelError> {
        match self {
            Backbone::Vit {
                embeddings,
                encoder,
                taps,
                patch,
            } => {
                let (gh, gw) = require_patch_multiple(model, h, w, *patch)?;
                let tokens = embeddings.forward(x, gh, gw)?;
                Ok((encoder.forward_taps(tokens, taps)?, gh, gw))
            }
            Backbone::Hybrid {
                embeddings,
                encoder,
                taps,
                patch,
                image,
            } => {
                if (h, w) != *image {
                    return Err(ModelError::InputSize {
                        model: model.to_string(),
                        height: h,
                        width: w,
                        reason: format!(
                            "DPT-hybrid takes exactly its image_size {}x{} (fixed BiT feature map and position embeddings)",
                            image.0, image.1
                        ),
                    });
                }
                let (gh, gw) = (h / patch, w / patch);
                let (tokens, [m0, m1]) = embeddings.forward(x, gh, gw)?;
                let mut outputs = vec![m0, m1];
                outputs.extend(encoder.forward_taps(tokens, taps)?);
                Ok((outputs, gh, gw))
            }
            Backbone::Dinov2 {
                encoder,
                stages,
                layernorm,
            } => {
                let (gh, gw) = require_patch_multiple(model, h, w, encoder.patch_size())?;
                let mut states = encoder.hidden_states(x, gh, gw, stages)?;
                if *layernorm {
                    states = states
                        .iter()
                        .map(|s| encoder.layernorm(s))
                        .collect::<TResult<_>>()?;
                }
                Ok((states, gh, gw))
            }
        }
    }
}

fn check_outputs(
    loaded: &LoadedBackbone,
    cfg: &DptConfig,
    weights: &Weights,
) -> Result<(), ModelError> {
    let n = cfg.neck_hidden_sizes.len();
    if loaded.outputs != n {
        return Err(config_error(
            weights,
            format!(
                "the backbone taps give {} feature maps but neck_hidden_sizes has {n} entries",
                loaded.outputs
            ),
        ));
    }
    Ok(())
}

fn head_index(cfg: &DptConfig, weights: &Weights) -> Result<usize, ModelError> {
    py_index(cfg.head_in_index, cfg.neck_hidden_sizes.len()).ok_or_else(|| {
        config_error(
            weights,
            format!("head_in_index {} is out of range", cfg.head_in_index),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Models

struct DepthHead {
    projection: Option<Conv2d>,
    conv0: Conv2d,
    conv2: Conv2d,
    conv4: Conv2d,
}

impl DepthHead {
    fn forward(&self, x: &Tensor) -> TResult {
        let mut x = x.shallow_clone();
        if let Some(projection) = &self.projection {
            x = projection.forward(&x)?.f_relu()?;
        }
        let x = self.conv0.forward(&x)?;
        let (h, w) = spatial(&x);
        let x = resize_bilinear(&x, (2 * h, 2 * w), true)?;
        let x = self.conv2.forward(&x)?.f_relu()?;
        self.conv4.forward(&x)?.f_relu()?.f_squeeze_dim(1)
    }
}

/// Backbone and neck, shared by the depth and segmentation models: pixels to the fused map
/// the head reads.
struct DptBody {
    backbone: Backbone,
    neck: DptNeck,
    head_in: usize,
    channels: i64,
    info: Placement,
}

impl DptBody {
    fn load(
        name: &str,
        cfg: &DptConfig,
        config: &Value,
        weights: &Weights,
        depth: bool,
    ) -> Result<Self, ModelError> {
        let loaded = Backbone::load(cfg, config, weights, depth, name)?;
        check_outputs(&loaded, cfg, weights)?;
        let root = weights.root();
        let neck = DptNeck::load(&root.pp("neck"), cfg, loaded.hidden, loaded.bypass, weights)?;
        Ok(Self {
            backbone: loaded.backbone,
            neck,
            head_in: head_index(cfg, weights)?,
            channels: loaded.channels,
            info: Placement::of(&root),
        })
    }

    fn fused(&self, name: &str, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let (x, _, h, w) = image_input(name, pixel_values, self.channels, &self.info)?;
        let (features, gh, gw) = self.backbone.features(name, &x, h, w)?;
        let mut fused = self.neck.forward(&features, gh, gw)?;
        Ok(fused.swap_remove(self.head_in))
    }
}

pub struct DptForDepthEstimation {
    body: DptBody,
    head: DepthHead,
}

impl DptForDepthEstimation {
    pub fn load(config: &Value, weights: &Weights) -> Result<Self, ModelError> {
        let cfg: DptConfig = parse(config, weights, DPT_DEPTH)?;
        let body = DptBody::load(DPT_DEPTH, &cfg, config, weights, true)?;
        let root = weights.root();
        let f = cfg.fusion_hidden_size;
        let hp = root.pp("head");
        let projection = if cfg.add_projection {
            // transformers hard-codes Conv2d(256, 256) here.
            if f != 256 {
                return Err(config_error(
                    weights,
                    format!("add_projection needs fusion_hidden_size 256, not {f}"),
                ));
            }
            Some(
                Conv2d::load(&hp.pp("projection"), 256, 256, 3, true)
                    .with_padding(Padding::Fixed(1))
                    .channels_last_on_cuda(),
            )
        } else {
            None
        };
        let hh = hp.pp("head");
        let head = DepthHead {
            projection,
            conv0: Conv2d::load(&hh.pp(0), f, f / 2, 3, true)
                .with_padding(Padding::Fixed(1))
                .channels_last_on_cuda(),
            conv2: Conv2d::load(&hh.pp(2), f / 2, 32, 3, true)
                .with_padding(Padding::Fixed(1))
                .channels_last_on_cuda(),
            conv4: Conv2d::load(&hh.pp(4), 32, 1, 1, true).channels_last_on_cuda(),
        };
        Ok(Self { body, head })
    }
}

impl VisionModel for DptForDepthEstimation {
    fn task(&self) -> Task {
        Task::Depth
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let fused = self.body.fused(DPT_DEPTH, pixel_values)?;
        Ok(self.head.forward(&fused)?)
    }
}

struct SegmentationHead {
    conv0: Conv2d,
    bn1: BatchNorm,
    conv4: Conv2d,
}

pub struct DptForSemanticSegmentation {
    body: DptBody,
    head: SegmentationHead,
}

impl DptForSemanticSegmentation {
    pub fn load(config: &Value, weights: &Weights) -> Result<Self, ModelError> {
        let cfg: DptConfig = parse(config, weights, DPT_SEGMENTATION)?;
        let body = DptBody::load(DPT_SEGMENTATION, &cfg, config, weights, false)?;
        let root = weights.root();
        let f = cfg.fusion_hidden_size;
        let labels = num_labels(config);
        if labels <= 0 {
            return Err(config_error(
                weights,
                "segmentation needs at least one label",
            ));
        }
        let hh = root.pp("head").pp("head");
        let head = SegmentationHead {
            conv0: Conv2d::load(&hh.pp(0), f, f, 3, false)
                .with_padding(Padding::Fixed(1))
                .channels_last_on_cuda(),
            bn1: BatchNorm::load(&hh.pp(1), f, 1e-5),
            conv4: Conv2d::load(&hh.pp(4), f, labels, 1, true).channels_last_on_cuda(),
        };
        Ok(Self { body, head })
    }
}

impl VisionModel for DptForSemanticSegmentation {
    fn task(&self) -> Task {
        Task::Segmentation
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let fused = self.body.fused(DPT_SEGMENTATION, pixel_values)?;
        let head = &self.head;
        let y = head.conv0.forward(&fused)?;
        let y = head.bn1.forward(&y)?.f_relu()?;
        let y = head.conv4.forward(&y)?;
        let (lh, lw) = spatial(&y);
        Ok(resize_bilinear(&y, (2 * lh, 2 * lw), true)?)
    }
}
