//! BiT (ResNet v1.5 "bottleneck" with weight-standardized convolutions and GroupNorm), the
//! convolutional half of DPT-hybrid (`dpt.embeddings.backbone.bit.*`).
//!
//! Only `layer_type: bottleneck` is ported: it is what DPT-hybrid checkpoints use; the
//! pre-activation variant belongs to BiT image classifiers, which visiond does not serve.

use serde::Deserialize;
use tch::Tensor;

use crate::models::ModelError;
use crate::models::nn::hf_config::{backbone_out_indices, config_error};
use crate::models::nn::layers::{Activation, Conv2d, GroupNorm, Padding, TResult};
use crate::models::nn::weights::{Weights, WeightsPath};

/// Every BiT convolution is weight-standardized with this eps.
const WS_EPS: f64 = 1e-8;
/// `BitGroupNormActivation` default.
const GN_EPS: f64 = 1e-5;

/// `BitConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BitConfig {
    pub num_channels: i64,
    pub embedding_size: i64,
    pub hidden_sizes: Vec<i64>,
    pub depths: Vec<usize>,
    pub layer_type: String,
    pub hidden_act: String,
    pub global_padding: Option<String>,
    pub num_groups: i64,
    pub embedding_dynamic_padding: bool,
    pub output_stride: i64,
    pub width_factor: i64,
    pub out_features: Option<Vec<String>>,
    pub out_indices: Option<Vec<i64>>,
}

impl Default for BitConfig {
    fn default() -> Self {
        Self {
            num_channels: 3,
            embedding_size: 64,
            hidden_sizes: vec![256, 512, 1024, 2048],
            depths: vec![3, 4, 6, 3],
            layer_type: "preactivation".into(),
            hidden_act: "relu".into(),
            global_padding: None,
            num_groups: 32,
            embedding_dynamic_padding: false,
            output_stride: 32,
            width_factor: 1,
            out_features: None,
            out_indices: None,
        }
    }
}

/// timm's `make_divisible`: channel counts rounded to a multiple of 8, never more than 10% down.
fn make_div(value: f64) -> i64 {
    let divisor = 8;
    let rounded = ((value + divisor as f64 / 2.0) as i64 / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * value {
        rounded + divisor
    } else {
        rounded
    }
}

/// transformers' `get_padding_value`: static symmetric padding where it is exact, TF-SAME
/// (computed per input) otherwise.
fn conv_padding(global: Option<&str>, kernel: i64, stride: i64, dilation: i64) -> Padding {
    let symmetric = ((stride - 1) + dilation * (kernel - 1)) / 2;
    match global.map(str::to_ascii_lowercase).as_deref() {
        Some("same") if stride == 1 && (dilation * (kernel - 1)) % 2 == 0 => {
            Padding::Fixed(symmetric)
        }
        Some("same") => Padding::TfSame,
        Some("valid") => Padding::Fixed(0),
        _ => Padding::Fixed(symmetric),
    }
}

struct NormAct {
    norm: GroupNorm,
    act: Option<Activation>,
}

impl NormAct {
    fn forward(&self, x: &Tensor) -> TResult {
        let y = self.norm.forward(x)?;
        match self.act {
            Some(act) => act.forward(&y),
            None => Ok(y),
        }
    }
}

struct Bottleneck {
    downsample: Option<(Conv2d, NormAct)>,
    conv1: Conv2d,
    norm1: NormAct,
    conv2: Conv2d,
    norm2: NormAct,
    conv3: Conv2d,
    norm3: NormAct,
    act: Activation,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> TResult {
        let shortcut = match &self.downsample {
            Some((conv, norm)) => norm.forward(&conv.forward(x)?)?,
            None => x.shallow_clone(),
        };
        let h = self.norm1.forward(&self.conv1.forward(x)?)?;
        let h = self.norm2.forward(&self.conv2.forward(&h)?)?;
        let h = self.norm3.forward(&self.conv3.forward(&h)?)?;
        self.act.forward(&h.f_add(&shortcut)?)
    }
}

pub struct Bit {
    stem: Conv2d,
    /// Without global SAME padding the stem pads by one after its convolution.
    stem_pad: bool,
    stem_norm: NormAct,
    pool_dynamic: bool,
    stages: Vec<Vec<Bottleneck>>,
    /// Indices into [stem, stage1, …] of the maps `forward` returns.
    out: Vec<usize>,
    out_channels: Vec<i64>,
}

impl Bit {
    /// `p` is the `….bit` prefix (`embedder.*`, `encoder.stages.*`).
    pub fn load(p: &WeightsPath, cfg: &BitConfig, weights: &Weights) -> Result<Self, ModelError> {
        if cfg.layer_type != "bottleneck" {
            return Err(config_error(
                weights,
                format!(
                    "BiT layer_type {:?} is not supported (DPT-hybrid uses \"bottleneck\")",
                    cfg.layer_type
                ),
            ));
        }
        let act = Activation::from_name(&cfg.hidden_act).ok_or_else(|| {
            config_error(
                weights,
                format!("unknown BiT hidden_act {:?}", cfg.hidden_act),
            )
        })?;
        if cfg.num_groups <= 0 {
            return Err(config_error(weights, "BiT num_groups must be positive"));
        }
        let global = cfg.global_padding.as_deref();
        let groups = cfg.num_groups;
        let norm = |p: &WeightsPath, ch: i64, act: Option<Activation>| NormAct {
            norm: GroupNorm::load(p, groups, ch, GN_EPS),
            act,
        };
        let conv = |p: &WeightsPath, cin, cout, k, stride, dilation| {
            Conv2d::load(p, cin, cout, k, false)
                .with_stride(stride)
                .with_dilation(dilation)
                .with_padding(conv_padding(global, k, stride, dilation))
                .standardized(WS_EPS)
        };

        let emb = p.pp("embedder");
        let stem = conv(
            &emb.pp("convolution"),
            cfg.num_channels,
            cfg.embedding_size,
            7,
            2,
            1,
        );
        let stem_pad = !matches!(global.map(str::to_ascii_uppercase).as_deref(), Some("SAME"));
        let stem_norm = norm(&emb.pp("norm"), cfg.embedding_size, Some(act));

        let mut stages = Vec::new();
        let mut stage_channels = vec![cfg.embedding_size];
        let mut prev = cfg.embedding_size;
        let mut current_stride = 4;
        let mut dilation = 1;
        for (s, (&depth, &hidden)) in cfg.depths.iter().zip(&cfg.hidden_sizes).enumerate() {
            let out = make_div((hidden * cfg.width_factor) as f64);
            let mut stride = if s == 0 { 1 } else { 2 };
            if current_stride >= cfg.output_stride {
                dilation *= stride;
                stride = 1;
            }
            current_stride *= stride;
            let mut first_dilation = if dilation == 1 || dilation == 2 { 1 } else { 2 };
            let sp = p.pp("encoder").pp("stages").pp(s).pp("layers");
            let mut layers = Vec::new();
            for l in 0..depth {
                let lp = sp.pp(l);
                let layer_stride = if l == 0 { stride } else { 1 };
                let mid = make_div(out as f64 * 0.25);
                let downsample = (l == 0).then(|| {
                    let dp = lp.pp("downsample");
                    (
                        conv(&dp.pp("conv"), prev, out, 1, layer_stride, 1),
                        norm(&dp.pp("norm"), out, None),
                    )
                });
                layers.push(Bottleneck {
                    downsample,
                    conv1: conv(&lp.pp("conv1"), prev, mid, 1, 1, 1),
                    norm1: norm(&lp.pp("norm1"), mid, Some(act)),
                    conv2: conv(&lp.pp("conv2"), mid, mid, 3, layer_stride, first_dilation),
                    norm2: norm(&lp.pp("norm2"), mid, Some(act)),
                    conv3: conv(&lp.pp("conv3"), mid, out, 1, 1, 1),
                    norm3: norm(&lp.pp("norm3"), out, None),
                    act,
                });
                prev = out;
                first_dilation = dilation;
            }
            stages.push(layers);
            stage_channels.push(out);
        }

        let out = backbone_out_indices(
            cfg.out_indices.as_deref(),
            cfg.out_features.as_deref(),
            stages.len(),
            weights,
        )?;
        let out_channels = out.iter().map(|&i| stage_channels[i]).collect();
        Ok(Self {
            stem,
            stem_pad,
            stem_norm,
            pool_dynamic: cfg.embedding_dynamic_padding,
            stages,
            out,
            out_channels,
        })
    }

    /// Channels of the maps `forward` returns, in order.
    pub fn out_channels(&self) -> &[i64] {
        &self.out_channels
    }

    /// The feature maps of the configured output stages.
    pub fn forward(&self, x: &Tensor) -> TResult<Vec<Tensor>> {
        let mut h = self.stem.forward(x)?;
        if self.stem_pad {
            h = h.f_constant_pad_nd([1, 1, 1, 1])?;
        }
        h = self.stem_norm.forward(&h)?;
        if self.pool_dynamic {
            h = Padding::tf_same_pad(&h, 3, 2, 1)?;
        }
        h = h.f_max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)?;

        let mut hidden = vec![h.shallow_clone()];
        for stage in &self.stages {
            for layer in stage {
                h = layer.forward(&h)?;
            }
            hidden.push(h.shallow_clone());
        }
        Ok(self
            .out
            .iter()
            .map(|&i| hidden[i].shallow_clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_div_matches_timm() {
        assert_eq!(make_div(64.0), 64);
        assert_eq!(make_div(8.0), 8);
        assert_eq!(make_div(12.0), 16);
        assert_eq!(make_div(256.0 * 0.25), 64);
        assert_eq!(make_div(2.0), 8);
    }

    #[test]
    fn same_padding_is_asymmetric_for_strided_kernels() {
        assert_eq!(conv_padding(Some("SAME"), 7, 2, 1), Padding::TfSame);
        assert_eq!(conv_padding(Some("SAME"), 3, 1, 1), Padding::Fixed(1));
        assert_eq!(conv_padding(None, 7, 2, 1), Padding::Fixed(3));
        let x = Tensor::zeros([1, 1, 384, 384], (tch::Kind::Float, tch::Device::Cpu));
        // 7×7 stride 2 on 384 pads (2, 3) as TensorFlow does.
        assert_eq!(
            Padding::tf_same_pad(&x, 7, 2, 1).unwrap().size(),
            [1, 1, 389, 389]
        );
        let x = Tensor::zeros([1, 1, 96, 96], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(
            Padding::tf_same_pad(&x, 3, 2, 1).unwrap().size(),
            [1, 1, 97, 97]
        );
    }
}
