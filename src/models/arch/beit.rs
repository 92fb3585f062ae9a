//! `BeitForImageClassification`, the class DiT checkpoints use: ViT-style layers whose key has
//! no bias and whose branches are scaled by `lambda_1/2`, absolute position embeddings and/or
//! relative position biases (per layer or shared), mean pooling or CLS pooling.

use serde::Deserialize;
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::config::Task;
use crate::models::nn::hf_config::{Size2, config_error, num_labels, parse};
use crate::models::nn::layers::{
    Activation, Block, GridInterp, LayerNorm, Linear, Mlp, PatchEmbed, Placement, QkvBias,
    SelfAttention, SizeCache, TResult, aligned_attention_bias, image_input, require_patch_multiple,
    resize_bilinear, resize_position_grid,
};
use crate::models::nn::weights::{Weights, WeightsPath};
use crate::models::{ModelError, VisionModel};

pub const BEIT_CLASSIFICATION: &str = "BeitForImageClassification";

/// `BeitConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct BeitConfig {
    hidden_size: i64,
    num_hidden_layers: usize,
    num_attention_heads: i64,
    intermediate_size: i64,
    hidden_act: String,
    layer_norm_eps: f64,
    image_size: Size2,
    patch_size: Size2,
    num_channels: i64,
    use_absolute_position_embeddings: bool,
    use_relative_position_bias: bool,
    use_shared_relative_position_bias: bool,
    layer_scale_init_value: f64,
    use_mean_pooling: bool,
}

impl Default for BeitConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            image_size: Size2::Square(224),
            patch_size: Size2::Square(16),
            num_channels: 3,
            use_absolute_position_embeddings: false,
            use_relative_position_bias: false,
            use_shared_relative_position_bias: false,
            layer_scale_init_value: 0.1,
            use_mean_pooling: true,
        }
    }
}

/// `BeitRelativePositionBias`: a learnt table over relative offsets within the pre-training
/// window (plus 3 entries for CLS↔token), expanded to a [heads, N, N] score bias.
struct RelativePositionBias {
    table: Tensor,
    /// Pre-training window (rows, columns) of patches.
    window: (i64, i64),
    heads: i64,
}

impl RelativePositionBias {
    fn load(p: &WeightsPath, window: (i64, i64), heads: i64) -> Self {
        let distances = (2 * window.0 - 1) * (2 * window.1 - 1) + 3;
        let table = p.get("relative_position_bias_table", &[distances, heads]);
        Self {
            table,
            window,
            heads,
        }
    }

    /// transformers' `generate_relative_position_index` for an h×w window, CLS first.
    fn index(h: i64, w: i64) -> Vec<i64> {
        let area = h * w;
        let distances = (2 * h - 1) * (2 * w - 1) + 3;
        let n = area + 1;
        let mut index = vec![0i64; (n * n) as usize];
        for p in 0..area {
            let (pi, pj) = (p / w, p % w);
            for q in 0..area {
                let (qi, qj) = (q / w, q % w);
                let rel = (pi - qi + h - 1) * (2 * w - 1) + (pj - qj + w - 1);
                index[((p + 1) * n + q + 1) as usize] = rel;
            }
        }
        for i in 0..n {
            index[i as usize] = distances - 3; // CLS → token
            index[(i * n) as usize] = distances - 2; // token → CLS
        }
        index[0] = distances - 1; // CLS → CLS
        index
    }

    /// The [1, heads, N, N] bias for an h×w patch grid. Other windows than the pre-training
    /// one resize the offset table bilinearly first, reading it as transformers 5.17 does
    /// (stored rows × columns, viewed as (2·Ww−1, 2·Wh−1)). Uploads the gather index: called
    /// once per window through the model's cache, never inside a steady-state forward.
    fn compute(&self, window: (i64, i64)) -> TResult {
        let (h, w) = window;
        let (old_h, old_w) = (2 * self.window.0 - 1, 2 * self.window.1 - 1);
        let (new_h, new_w) = (2 * h - 1, 2 * w - 1);
        let old_count = old_h * old_w;
        let table = if (new_h, new_w) == (old_h, old_w) {
            self.table.shallow_clone()
        } else {
            let sub = self
                .table
                .f_narrow(0, 0, old_count)?
                .f_reshape([1, old_w, old_h, self.heads])?
                .f_permute([0, 3, 1, 2])?;
            let resized = resize_bilinear(&sub, (new_h, new_w), false)?
                .f_permute([0, 2, 3, 1])?
                .f_reshape([new_h * new_w, self.heads])?;
            Tensor::f_cat(&[resized, self.table.f_narrow(0, old_count, 3)?], 0)?
        };
        let n = h * w + 1;
        let index = Tensor::from_slice(&Self::index(h, w)).f_to_device(table.device())?;
        table
            .f_index_select(0, &index)?
            .f_reshape([n, n, self.heads])?
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)
    }
}

pub struct BeitForImageClassification {
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    /// Absolute position embeddings and the side of their square grid.
    position: Option<(Tensor, i64)>,
    shared_bias: Option<RelativePositionBias>,
    layers: Vec<(Block, Option<RelativePositionBias>)>,
    /// `beit.layernorm` on the sequence (CLS pooling) or `beit.pooler.layernorm` on the mean of
    /// the patch tokens (mean pooling).
    final_norm: LayerNorm,
    mean_pooling: bool,
    classifier: Linear,
    patch: i64,
    channels: i64,
    info: Placement,
    /// Per patch grid: each layer's whole score bias (its own plus the shared one), as the
    /// additive mask SDPA takes.
    biases: SizeCache<Vec<Option<Tensor>>>,
    /// Per patch grid: the position embeddings resized to it.
    positions: SizeCache<Tensor>,
}

impl BeitForImageClassification {
    pub fn load(config: &Value, weights: &Weights) -> Result<Self, ModelError> {
        let cfg: BeitConfig = parse(config, weights, BEIT_CLASSIFICATION)?;
        let root = weights.root();
        let beit = root.pp("beit");
        let d = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        if heads <= 0 || d % heads != 0 {
            return Err(config_error(
                weights,
                format!("hidden_size {d} is not a multiple of num_attention_heads {heads}"),
            ));
        }
        let act = Activation::from_name(&cfg.hidden_act).ok_or_else(|| {
            config_error(weights, format!("unknown hidden_act {:?}", cfg.hidden_act))
        })?;
        let patch = cfg.patch_size.square(weights, "patch_size")?;
        let (ih, iw) = cfg.image_size.hw();
        let window = (ih / patch, iw / patch);
        let labels = num_labels(config);
        if labels <= 0 {
            return Err(config_error(
                weights,
                "a classifier needs at least one label",
            ));
        }

        let emb = beit.pp("embeddings");
        let position = if cfg.use_absolute_position_embeddings {
            if window.0 != window.1 {
                return Err(config_error(
                    weights,
                    "absolute position embeddings need a square image_size",
                ));
            }
            let count = 1 + window.0 * window.1;
            Some((emb.get("position_embeddings", &[1, count, d]), window.0))
        } else {
            None
        };
        let encoder = beit.pp("encoder");
        let shared_bias = if cfg.use_shared_relative_position_bias {
            Some(RelativePositionBias::load(
                &encoder.pp("relative_position_bias"),
                window,
                heads,
            ))
        } else {
            None
        };
        let eps = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = encoder.pp("layer").pp(i);
            // transformers keeps plain 1.0 scales (no parameter) when the init value is 0.
            let scaled = cfg.layer_scale_init_value > 0.0;
            let block = Block {
                norm1: LayerNorm::load(&lp.pp("layernorm_before"), d, eps),
                attention: SelfAttention::load(&lp.pp("attention"), d, heads, QkvBias::NoKey),
                scale1: scaled.then(|| lp.get("lambda_1", &[d])),
                norm2: LayerNorm::load(&lp.pp("layernorm_after"), d, eps),
                mlp: Mlp::Plain {
                    fc1: Linear::load(
                        &lp.pp("intermediate").pp("dense"),
                        d,
                        cfg.intermediate_size,
                        true,
                    ),
                    act,
                    fc2: Linear::load(&lp.pp("output").pp("dense"), cfg.intermediate_size, d, true),
                },
                scale2: scaled.then(|| lp.get("lambda_2", &[d])),
            };
            let bias = if cfg.use_relative_position_bias {
                Some(RelativePositionBias::load(
                    &lp.pp("attention")
                        .pp("attention")
                        .pp("relative_position_bias"),
                    window,
                    heads,
                ))
            } else {
                None
            };
            layers.push((block, bias));
        }
        let final_norm = if cfg.use_mean_pooling {
            LayerNorm::load(&beit.pp("pooler").pp("layernorm"), d, eps)
        } else {
            LayerNorm::load(&beit.pp("layernorm"), d, eps)
        };
        Ok(Self {
            patch_embed: PatchEmbed::load(&emb.pp("patch_embeddings"), cfg.num_channels, d, patch),
            cls_token: emb.get("cls_token", &[1, 1, d]),
            position,
            shared_bias,
            layers,
            final_norm,
            mean_pooling: cfg.use_mean_pooling,
            classifier: Linear::load(&root.pp("classifier"), d, labels, true),
            patch,
            channels: cfg.num_channels,
            info: Placement::of(&root),
            biases: SizeCache::default(),
            positions: SizeCache::default(),
        })
    }

    /// Each layer's score bias for an h×w grid: its own relative bias plus the shared one.
    fn layer_biases(&self, window: (i64, i64)) -> TResult<Vec<Option<Tensor>>> {
        let shared = match &self.shared_bias {
            Some(bias) => Some(bias.compute(window)?),
            None => None,
        };
        self.layers
            .iter()
            .map(|(_, own)| {
                let total = match (own, &shared) {
                    (Some(own), Some(shared)) => Some(own.compute(window)?.f_add(shared)?),
                    (Some(own), None) => Some(own.compute(window)?),
                    (None, Some(shared)) => Some(shared.shallow_clone()),
                    (None, None) => None,
                };
                total.as_ref().map(aligned_attention_bias).transpose()
            })
            .collect()
    }

    fn logits(&self, x: &Tensor, h: i64, w: i64) -> TResult {
        let patches = self.patch_embed.forward(x)?;
        let b = patches.size()[0];
        let cls = self.cls_token.f_expand([b, -1, -1], false)?;
        let mut tokens = Tensor::f_cat(&[cls, patches], 1)?;
        if let Some((position, grid)) = &self.position {
            // Kept as learnt only for the pre-training token count on a square input.
            tokens = if h * w == grid * grid && h == w {
                tokens.f_add(position)?
            } else {
                let resized = self.positions.get_or_try((h, w), || {
                    resize_position_grid(position, *grid, h, w, GridInterp::Bicubic)
                })?;
                tokens.f_add(&resized)?
            };
        }
        let biases = self
            .biases
            .get_or_try((h, w), || self.layer_biases((h, w)))?;
        for ((block, _), bias) in self.layers.iter().zip(biases.iter()) {
            tokens = block.forward(&tokens, bias.as_ref())?;
        }
        let pooled = if self.mean_pooling {
            let n = tokens.size()[1];
            let mean = tokens
                .f_narrow(1, 1, n - 1)?
                .f_mean_dim(1, false, Kind::Float)?
                .f_to_kind(tokens.kind())?;
            self.final_norm.forward(&mean)?
        } else {
            self.final_norm.forward(&tokens)?.f_select(1, 0)?
        };
        self.classifier.forward(&pooled)
    }
}

impl VisionModel for BeitForImageClassification {
    fn task(&self) -> Task {
        Task::Classification
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let name = BEIT_CLASSIFICATION;
        let (x, _, h, w) = image_input(name, pixel_values, self.channels, &self.info)?;
        let (gh, gw) = require_patch_multiple(name, h, w, self.patch)?;
        Ok(self.logits(&x, gh, gw)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_matches_transformers() {
        // BeitRelativePositionBias.generate_relative_position_index((2, 2)) and ((2, 3)).
        let two_by_two = [
            [11, 9, 9, 9, 9],
            [10, 4, 3, 1, 0],
            [10, 5, 4, 2, 1],
            [10, 7, 6, 4, 3],
            [10, 8, 7, 5, 4],
        ];
        assert_eq!(RelativePositionBias::index(2, 2), two_by_two.concat());
        let two_by_three = [
            [17, 15, 15, 15, 15, 15, 15],
            [16, 7, 6, 5, 2, 1, 0],
            [16, 8, 7, 6, 3, 2, 1],
            [16, 9, 8, 7, 4, 3, 2],
            [16, 12, 11, 10, 7, 6, 5],
            [16, 13, 12, 11, 8, 7, 6],
            [16, 14, 13, 12, 9, 8, 7],
        ];
        assert_eq!(RelativePositionBias::index(2, 3), two_by_three.concat());
    }
}
