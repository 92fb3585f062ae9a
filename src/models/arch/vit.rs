//! The ViT encoder inside DPT (`dpt.embeddings.*`, `dpt.encoder.layer.*`): pre-LN layers whose
//! raw outputs are tapped at `backbone_out_indices`, with either patch embeddings or, for
//! DPT-hybrid, BiT features as tokens.

use serde::Deserialize;
use tch::Tensor;

use super::bit::{Bit, BitConfig};
use crate::models::ModelError;
use crate::models::nn::hf_config::{Size2, config_error};
use crate::models::nn::layers::{
    Activation, Block, Conv2d, GridInterp, LayerNorm, Linear, Mlp, PatchEmbed, QkvBias,
    SelfAttention, SizeCache, TResult, resize_position_grid,
};
use crate::models::nn::weights::{Weights, WeightsPath};

/// The ViT part of `DPTConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VitConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub image_size: Size2,
    pub patch_size: Size2,
    pub num_channels: i64,
    pub qkv_bias: bool,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            image_size: Size2::Square(384),
            patch_size: Size2::Square(16),
            num_channels: 3,
            qkv_bias: true,
        }
    }
}

impl VitConfig {
    pub fn activation(&self, weights: &Weights) -> Result<Activation, ModelError> {
        Activation::from_name(&self.hidden_act).ok_or_else(|| {
            config_error(weights, format!("unknown hidden_act {:?}", self.hidden_act))
        })
    }

    /// Patch side and (rows, columns) of the learnt position grid.
    pub fn grid(&self, weights: &Weights) -> Result<(i64, i64, i64), ModelError> {
        let patch = self.patch_size.square(weights, "patch_size")?;
        let (h, w) = self.image_size.hw();
        if h <= 0 || w <= 0 {
            return Err(config_error(weights, "image_size must be positive"));
        }
        Ok((patch, h / patch, w / patch))
    }

    fn check_heads(&self, weights: &Weights) -> Result<(), ModelError> {
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(config_error(
                weights,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        Ok(())
    }
}

/// A ViT layer under DPT's names (`layernorm_before`, `attention.*`, `intermediate.dense`, …).
pub fn vit_block(p: &WeightsPath, cfg: &VitConfig, act: Activation) -> Block {
    let d = cfg.hidden_size;
    let qkv = if cfg.qkv_bias {
        QkvBias::All
    } else {
        QkvBias::None
    };
    Block {
        norm1: LayerNorm::load(&p.pp("layernorm_before"), d, cfg.layer_norm_eps),
        attention: SelfAttention::load(&p.pp("attention"), d, cfg.num_attention_heads, qkv),
        scale1: None,
        norm2: LayerNorm::load(&p.pp("layernorm_after"), d, cfg.layer_norm_eps),
        mlp: Mlp::Plain {
            fc1: Linear::load(
                &p.pp("intermediate").pp("dense"),
                d,
                cfg.intermediate_size,
                true,
            ),
            act,
            fc2: Linear::load(&p.pp("output").pp("dense"), cfg.intermediate_size, d, true),
        },
        scale2: None,
    }
}

pub struct VitEncoder {
    layers: Vec<Block>,
}

impl VitEncoder {
    /// `p` is the `….encoder` prefix.
    pub fn load(p: &WeightsPath, cfg: &VitConfig, weights: &Weights) -> Result<Self, ModelError> {
        cfg.check_heads(weights)?;
        let act = cfg.activation(weights)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| vit_block(&p.pp("layer").pp(i), cfg, act))
            .collect();
        Ok(Self { layers })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Outputs of the layers in `taps` (0-based), in the order asked; layers after the deepest
    /// tap are not run since nothing reads them.
    pub fn forward_taps(&self, tokens: Tensor, taps: &[usize]) -> TResult<Vec<Tensor>> {
        let last = taps.iter().copied().max().map_or(0, |m| m + 1);
        let mut outputs = Vec::with_capacity(last);
        let mut x = tokens;
        for layer in self.layers.iter().take(last) {
            x = layer.forward(&x, None)?;
            outputs.push(x.shallow_clone());
        }
        Ok(taps.iter().map(|&t| outputs[t].shallow_clone()).collect())
    }
}

/// DPT's patch embeddings: `[CLS; patches] + position embeddings` bilinearly resized to the
/// input's grid.
pub struct VitEmbeddings {
    patch: PatchEmbed,
    cls_token: Tensor,
    position: Tensor,
    grid: i64,
    /// Per patch grid: the position embeddings resized to it.
    positions: SizeCache<Tensor>,
}

impl VitEmbeddings {
    /// `p` is the `….embeddings` prefix.
    pub fn load(p: &WeightsPath, cfg: &VitConfig, weights: &Weights) -> Result<Self, ModelError> {
        let (patch, gh, gw) = cfg.grid(weights)?;
        if gh != gw {
            return Err(config_error(weights, "only square image_size is supported"));
        }
        let d = cfg.hidden_size;
        Ok(Self {
            patch: PatchEmbed::load(&p.pp("patch_embeddings"), cfg.num_channels, d, patch),
            cls_token: p.get("cls_token", &[1, 1, d]),
            position: p.get("position_embeddings", &[1, 1 + gh * gw, d]),
            grid: gh,
            positions: SizeCache::default(),
        })
    }

    /// Tokens [B, 1 + h·w, D] for an input whose patch grid is h×w.
    pub fn forward(&self, x: &Tensor, h: i64, w: i64) -> TResult {
        let patches = self.patch.forward(x)?;
        let b = patches.size()[0];
        let cls = self.cls_token.f_expand([b, -1, -1], false)?;
        let tokens = Tensor::f_cat(&[cls, patches], 1)?;
        // A same-size bilinear resize (align_corners false) is the identity: skip it.
        if h == self.grid && w == self.grid {
            tokens.f_add(&self.position)
        } else {
            let resized = self.positions.get_or_try((h, w), || {
                resize_position_grid(&self.position, self.grid, h, w, GridInterp::Bilinear)
            })?;
            tokens.f_add(&resized)
        }
    }
}

/// DPT-hybrid embeddings: BiT stage maps, the deepest projected to tokens.
pub struct HybridEmbeddings {
    bit: Bit,
    projection: Conv2d,
    cls_token: Tensor,
    position: Tensor,
    grid: i64,
}

impl HybridEmbeddings {
    /// `p` is `dpt.embeddings`; `featmap_channels` is `backbone_featmap_shape[1]`.
    pub fn load(
        p: &WeightsPath,
        cfg: &VitConfig,
        bit_cfg: &BitConfig,
        featmap_channels: i64,
        weights: &Weights,
    ) -> Result<Self, ModelError> {
        let (_, gh, gw) = cfg.grid(weights)?;
        if gh != gw {
            return Err(config_error(weights, "only square image_size is supported"));
        }
        let bit = Bit::load(&p.pp("backbone").pp("bit"), bit_cfg, weights)?;
        if bit.out_channels().len() != 3 {
            return Err(config_error(
                weights,
                format!(
                    "DPT-hybrid needs 3 BiT output stages, backbone_config gives {}",
                    bit.out_channels().len()
                ),
            ));
        }
        let d = cfg.hidden_size;
        Ok(Self {
            bit,
            projection: Conv2d::load(&p.pp("projection"), featmap_channels, d, 1, true),
            cls_token: p.get("cls_token", &[1, 1, d]),
            position: p.get("position_embeddings", &[1, 1 + gh * gw, d]),
            grid: gh,
        })
    }

    /// Channels of the two shallow BiT maps that go straight to the neck.
    pub fn residual_channels(&self) -> [i64; 2] {
        let c = self.bit.out_channels();
        [c[0], c[1]]
    }

    /// Tokens [B, 1 + h·w, D] and the two shallow BiT maps.
    pub fn forward(&self, x: &Tensor, h: i64, w: i64) -> TResult<(Tensor, [Tensor; 2])> {
        let maps = self.bit.forward(x)?;
        let tokens = self
            .projection
            .forward(&maps[2])?
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?;
        let b = tokens.size()[0];
        let cls = self.cls_token.f_expand([b, -1, -1], false)?;
        let tokens = Tensor::f_cat(&[cls, tokens], 1)?;
        let tokens = if h == self.grid && w == self.grid {
            tokens.f_add(&self.position)?
        } else {
            tokens.f_add(&resize_position_grid(
                &self.position,
                self.grid,
                h,
                w,
                GridInterp::Bilinear,
            )?)?
        };
        Ok((tokens, [maps[0].shallow_clone(), maps[1].shallow_clone()]))
    }
}
