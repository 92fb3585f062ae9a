//! DINOv2 (`Dinov2Model` / `Dinov2Backbone`): the encoder behind DPT-DINOv2 and
//! Depth-Anything, and `Dinov2ForImageClassification`.

use serde::Deserialize;
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::config::Task;
use crate::models::nn::hf_config::{Size2, backbone_out_indices, config_error, num_labels, parse};
use crate::models::nn::layers::{
    Activation, Block, GridInterp, LayerNorm, Linear, Mlp, PatchEmbed, Placement, QkvBias,
    SelfAttention, SizeCache, TResult, image_input, require_patch_multiple, resize_position_grid,
};
use crate::models::nn::weights::{Weights, WeightsPath};
use crate::models::{ModelError, VisionModel};

/// `Dinov2Config`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Dinov2Config {
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub mlp_ratio: f64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub image_size: Size2,
    pub patch_size: Size2,
    pub num_channels: i64,
    pub qkv_bias: bool,
    pub use_swiglu_ffn: bool,
    pub apply_layernorm: bool,
    pub reshape_hidden_states: bool,
    pub out_features: Option<Vec<String>>,
    pub out_indices: Option<Vec<i64>>,
}

impl Default for Dinov2Config {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            mlp_ratio: 4.0,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-6,
            image_size: Size2::Square(224),
            patch_size: Size2::Square(14),
            num_channels: 3,
            qkv_bias: true,
            use_swiglu_ffn: false,
            apply_layernorm: true,
            reshape_hidden_states: true,
            out_features: None,
            out_indices: None,
        }
    }
}

impl Dinov2Config {
    /// Backbone taps as indices into `hidden_states` (0 = embeddings, i = after layer i).
    pub fn out_stages(&self, weights: &Weights) -> Result<Vec<usize>, ModelError> {
        backbone_out_indices(
            self.out_indices.as_deref(),
            self.out_features.as_deref(),
            self.num_hidden_layers,
            weights,
        )
    }
}

pub struct Dinov2Encoder {
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    position: Tensor,
    /// Side of the learnt (square) position grid.
    grid: i64,
    patch: i64,
    layers: Vec<Block>,
    layernorm: LayerNorm,
    /// Per patch grid: the position embeddings resized to it.
    positions: SizeCache<Tensor>,
}

impl Dinov2Encoder {
    /// `p` is the model prefix (`dinov2` or `backbone`).
    pub fn load(
        p: &WeightsPath,
        cfg: &Dinov2Config,
        weights: &Weights,
    ) -> Result<Self, ModelError> {
        let d = cfg.hidden_size;
        if cfg.num_attention_heads <= 0 || d % cfg.num_attention_heads != 0 {
            return Err(config_error(
                weights,
                format!(
                    "hidden_size {d} is not a multiple of num_attention_heads {}",
                    cfg.num_attention_heads
                ),
            ));
        }
        let act = Activation::from_name(&cfg.hidden_act).ok_or_else(|| {
            config_error(weights, format!("unknown hidden_act {:?}", cfg.hidden_act))
        })?;
        let patch = cfg.patch_size.square(weights, "patch_size")?;
        let image = cfg.image_size.square(weights, "image_size")?;
        let grid = image / patch;
        let emb = p.pp("embeddings");
        let eps = cfg.layer_norm_eps;
        let qkv = if cfg.qkv_bias {
            QkvBias::All
        } else {
            QkvBias::None
        };
        let hidden = (d as f64 * cfg.mlp_ratio) as i64;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let lp = p.pp("encoder").pp("layer").pp(i);
                let mp = lp.pp("mlp");
                let mlp = if cfg.use_swiglu_ffn {
                    let h = (hidden * 2 / 3 + 7) / 8 * 8;
                    Mlp::SwiGlu {
                        w_in: Linear::load(&mp.pp("weights_in"), d, 2 * h, true),
                        w_out: Linear::load(&mp.pp("weights_out"), h, d, true),
                    }
                } else {
                    Mlp::Plain {
                        fc1: Linear::load(&mp.pp("fc1"), d, hidden, true),
                        act,
                        fc2: Linear::load(&mp.pp("fc2"), hidden, d, true),
                    }
                };
                Block {
                    norm1: LayerNorm::load(&lp.pp("norm1"), d, eps),
                    attention: SelfAttention::load(
                        &lp.pp("attention"),
                        d,
                        cfg.num_attention_heads,
                        qkv,
                    ),
                    scale1: Some(lp.pp("layer_scale1").get("lambda1", &[d])),
                    norm2: LayerNorm::load(&lp.pp("norm2"), d, eps),
                    mlp,
                    scale2: Some(lp.pp("layer_scale2").get("lambda1", &[d])),
                }
            })
            .collect();
        Ok(Self {
            patch_embed: PatchEmbed::load(&emb.pp("patch_embeddings"), cfg.num_channels, d, patch),
            cls_token: emb.get("cls_token", &[1, 1, d]),
            position: emb.get("position_embeddings", &[1, 1 + grid * grid, d]),
            grid,
            patch,
            layers,
            layernorm: LayerNorm::load(&p.pp("layernorm"), d, eps),
            positions: SizeCache::default(),
        })
    }

    pub fn patch_size(&self) -> i64 {
        self.patch
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `[CLS; patches] + positions` for an input of `h`×`w` patches.
    fn embed(&self, x: &Tensor, h: i64, w: i64) -> TResult {
        let patches = self.patch_embed.forward(x)?;
        let b = patches.size()[0];
        let cls = self.cls_token.f_expand([b, -1, -1], false)?;
        let tokens = Tensor::f_cat(&[cls, patches], 1)?;
        // transformers 5.17 keeps the learnt grid only when the token count matches *and* the
        // input is square, otherwise resizes it bicubically to (h, w) in f32.
        if h * w == self.grid * self.grid && h == w {
            tokens.f_add(&self.position)
        } else {
            let resized = self.positions.get_or_try((h, w), || {
                resize_position_grid(&self.position, self.grid, h, w, GridInterp::Bicubic)
            })?;
            tokens.f_add(&resized)
        }
    }

    /// `hidden_states[i]` for each `i` in `stages` (0 = embeddings, i = output of layer i),
    /// in the order asked; layers past the deepest one asked for are not run.
    pub fn hidden_states(
        &self,
        x: &Tensor,
        h: i64,
        w: i64,
        stages: &[usize],
    ) -> TResult<Vec<Tensor>> {
        let last = stages.iter().copied().max().unwrap_or(0);
        let mut states = vec![self.embed(x, h, w)?];
        for layer in self.layers.iter().take(last) {
            let next = layer.forward(&states[states.len() - 1], None)?;
            states.push(next);
        }
        Ok(stages.iter().map(|&s| states[s].shallow_clone()).collect())
    }

    pub fn layernorm(&self, x: &Tensor) -> TResult {
        self.layernorm.forward(x)
    }
}

pub struct Dinov2ForImageClassification {
    encoder: Dinov2Encoder,
    classifier: Linear,
    channels: i64,
    info: Placement,
}

pub const DINOV2_CLASSIFICATION: &str = "Dinov2ForImageClassification";

impl Dinov2ForImageClassification {
    pub fn load(config: &Value, weights: &Weights) -> Result<Self, ModelError> {
        let cfg: Dinov2Config = parse(config, weights, DINOV2_CLASSIFICATION)?;
        let root = weights.root();
        let labels = num_labels(config);
        if labels <= 0 {
            return Err(config_error(
                weights,
                "a classifier needs at least one label",
            ));
        }
        Ok(Self {
            encoder: Dinov2Encoder::load(&root.pp("dinov2"), &cfg, weights)?,
            classifier: Linear::load(&root.pp("classifier"), 2 * cfg.hidden_size, labels, true),
            channels: cfg.num_channels,
            info: Placement::of(&root),
        })
    }
}

impl VisionModel for Dinov2ForImageClassification {
    fn task(&self) -> Task {
        Task::Classification
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let name = DINOV2_CLASSIFICATION;
        let (x, _, h, w) = image_input(name, pixel_values, self.channels, &self.info)?;
        let (gh, gw) = require_patch_multiple(name, h, w, self.encoder.patch_size())?;
        let last = self.encoder.num_layers();
        let states = self.encoder.hidden_states(&x, gh, gw, &[last])?;
        let seq = self.encoder.layernorm(&states[0])?;
        let n = seq.size()[1];
        let cls = seq.f_select(1, 0)?;
        let patch_mean = seq
            .f_narrow(1, 1, n - 1)?
            .f_mean_dim(1, false, Kind::Float)?
            .f_to_kind(seq.kind())?;
        let pooled = Tensor::f_cat(&[cls, patch_mean], 1)?;
        Ok(self.classifier.forward(&pooled)?)
    }
}
