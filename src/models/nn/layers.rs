//! Building blocks shared by the architectures: each loads its parameters by Hugging Face name
//! through [`WeightsPath`] and runs inference only.
//!
//! Forward functions use tch's fallible `f_*` calls so that a shape libtorch rejects becomes a
//! [`ModelError::Torch`] instead of a panic inside a pipeline thread.

use std::collections::HashMap;
use std::sync::Mutex;

use tch::{Kind, TchError, Tensor};

use super::weights::WeightsPath;
use crate::models::ModelError;

pub type TResult<T = Tensor> = Result<T, TchError>;

/// The activations transformers' `ACT2FN` maps config strings to, for those our checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf form.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
    Silu,
    QuickGelu,
}

impl Activation {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "quick_gelu" => Self::QuickGelu,
            _ => return None,
        })
    }

    pub fn forward(self, x: &Tensor) -> TResult {
        match self {
            Self::Gelu => x.f_gelu("none"),
            Self::GeluTanh => x.f_gelu("tanh"),
            Self::Relu => x.f_relu(),
            Self::Silu => x.f_silu(),
            Self::QuickGelu => x.f_mul(&x.f_mul_scalar(1.702)?.f_sigmoid()?),
        }
    }
}

pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(p: &WeightsPath, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        Self {
            weight: p.get("weight", &[out_dim, in_dim]),
            bias: bias.then(|| p.get("bias", &[out_dim])),
        }
    }

    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> TResult {
        x.f_linear(&self.weight, self.bias.as_ref())
    }
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    dim: i64,
}

impl LayerNorm {
    pub fn load(p: &WeightsPath, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.get("weight", &[dim]),
            bias: p.get("bias", &[dim]),
            eps,
            dim,
        }
    }

    pub fn forward(&self, x: &Tensor) -> TResult {
        x.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// The same zero padding on both sides of each axis (PyTorch `padding=`).
    Fixed(i64),
    /// TensorFlow "SAME": computed per input size, the odd pixel going to the bottom/right.
    TfSame,
}

impl Padding {
    /// TF-SAME total padding along one axis (timm/transformers `DynamicPad2d`).
    fn tf_same_total(size: i64, kernel: i64, stride: i64, dilation: i64) -> i64 {
        let out = (size + stride - 1) / stride;
        ((out - 1) * stride + (kernel - 1) * dilation + 1 - size).max(0)
    }

    /// Pads `x` as TF-SAME would for this window; a no-op when nothing is needed.
    pub fn tf_same_pad(x: &Tensor, kernel: i64, stride: i64, dilation: i64) -> TResult {
        let size = x.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        let ph = Self::tf_same_total(h, kernel, stride, dilation);
        let pw = Self::tf_same_total(w, kernel, stride, dilation);
        if ph == 0 && pw == 0 {
            return Ok(x.shallow_clone());
        }
        x.f_constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2])
    }
}

pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: Padding,
    dilation: i64,
    kernel: i64,
}

impl Conv2d {
    /// A square `kernel` convolution with stride 1 and no padding; adjust with the `with_*`
    /// methods.
    pub fn load(p: &WeightsPath, in_ch: i64, out_ch: i64, kernel: i64, bias: bool) -> Self {
        Self {
            weight: p.get("weight", &[out_ch, in_ch, kernel, kernel]),
            bias: bias.then(|| p.get("bias", &[out_ch])),
            stride: 1,
            padding: Padding::Fixed(0),
            dilation: 1,
            kernel,
        }
    }

    pub fn with_stride(mut self, stride: i64) -> Self {
        self.stride = stride;
        self
    }

    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    pub fn with_dilation(mut self, dilation: i64) -> Self {
        self.dilation = dilation;
        self
    }

    /// On CUDA, keeps the weight in channels-last (NHWC) memory order: cuDNN then runs the
    /// convolution in NHWC, which its tensor-core kernels prefer, without converting the
    /// weight on every call. Used where the inputs are already NHWC (the DPT neck reads token
    /// grids, which are NHWC views) and the ops between convolutions keep it. A no-op on the
    /// CPU.
    pub fn channels_last_on_cuda(mut self) -> Self {
        self.weight = channels_last_on_cuda(self.weight);
        self
    }

    /// Weight standardization (BiT): each output filter becomes (w − mean) / √(var + eps) over
    /// in·k·k with the biased variance. The weights are frozen, so it is done once here, in f32.
    pub fn standardized(mut self, eps: f64) -> Self {
        let kind = self.weight.kind();
        let shape = self.weight.size();
        let w = self.weight.to_kind(Kind::Float).reshape([shape[0], -1]);
        let mean = w.mean_dim(1, true, Kind::Float);
        let centered = &w - &mean;
        let var = centered.square().mean_dim(1, true, Kind::Float);
        self.weight = (centered / (var + eps).sqrt())
            .reshape(shape.as_slice())
            .to_kind(kind);
        self
    }

    pub fn forward(&self, x: &Tensor) -> TResult {
        let (input, pad) = match self.padding {
            Padding::Fixed(p) => (x.shallow_clone(), p),
            Padding::TfSame => (
                Padding::tf_same_pad(x, self.kernel, self.stride, self.dilation)?,
                0,
            ),
        };
        input.f_conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [pad, pad],
            [self.dilation, self.dilation],
            1,
        )
    }
}

/// `nn.ConvTranspose2d(c, c, kernel_size=f, stride=f)`: the DPT reassemble upsampling.
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
}

impl ConvTranspose2d {
    pub fn load(p: &WeightsPath, in_ch: i64, out_ch: i64, kernel: i64, stride: i64) -> Self {
        Self {
            weight: p.get("weight", &[in_ch, out_ch, kernel, kernel]),
            bias: Some(p.get("bias", &[out_ch])),
            stride,
        }
    }

    /// See [`Conv2d::channels_last_on_cuda`].
    pub fn channels_last_on_cuda(mut self) -> Self {
        self.weight = channels_last_on_cuda(self.weight);
        self
    }

    pub fn forward(&self, x: &Tensor) -> TResult {
        x.f_conv_transpose2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [0, 0],
            [0, 0],
            1,
            [1, 1],
        )
    }
}

pub struct GroupNorm {
    groups: i64,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl GroupNorm {
    pub fn load(p: &WeightsPath, groups: i64, channels: i64, eps: f64) -> Self {
        Self {
            groups,
            weight: p.get("weight", &[channels]),
            bias: p.get("bias", &[channels]),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> TResult {
        x.f_group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// `nn.BatchNorm2d` in eval mode: running statistics only.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
}

impl BatchNorm {
    pub fn load(p: &WeightsPath, channels: i64, eps: f64) -> Self {
        Self {
            weight: p.get("weight", &[channels]),
            bias: p.get("bias", &[channels]),
            running_mean: p.get("running_mean", &[channels]),
            running_var: p.get("running_var", &[channels]),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> TResult {
        x.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.0,
            self.eps,
            true,
        )
    }
}

/// Which of query/key/value carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvBias {
    All,
    None,
    /// BEiT: query and value only.
    NoKey,
}

/// Multi-head self-attention under the ViT names (`attention.{query,key,value}`,
/// `output.dense`), with q/k/v computed by one batched matrix product at run time.
///
/// The three projections are stacked at load into one [3, D, D] weight (transposed) and a
/// [3, 1, D] bias, so a forward is one `baddbmm` over the same input (broadcast, not copied)
/// whose output [3, B·N, D] holds q, k and v each contiguous. Heads are then views of the
/// layout transformers' own attention passes to SDPA ([B, N, H, d] seen as [B, H, N, d]), so
/// SDPA picks the same fused kernel (cuDNN's on Hopper, flash elsewhere) for both.
pub struct SelfAttention {
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    out: Linear,
    heads: i64,
    head_dim: i64,
}

impl SelfAttention {
    /// `p` is the `….attention` prefix that holds `attention.*` and `output.dense`.
    pub fn load(p: &WeightsPath, dim: i64, heads: i64, bias: QkvBias) -> Self {
        let a = p.pp("attention");
        let q = a.pp("query");
        let k = a.pp("key");
        let v = a.pp("value");
        // x @ Wᵀ for each projection: the transposed weights, stacked.
        let qkv_weight = Tensor::stack(
            &[
                q.get("weight", &[dim, dim]).tr(),
                k.get("weight", &[dim, dim]).tr(),
                v.get("weight", &[dim, dim]).tr(),
            ],
            0,
        )
        .contiguous();
        let zeros = || Tensor::zeros([dim], (p.kind(), p.device()));
        let [bq, bk, bv] = match bias {
            QkvBias::None => [zeros(), zeros(), zeros()],
            QkvBias::All => [
                q.get("bias", &[dim]),
                k.get("bias", &[dim]),
                v.get("bias", &[dim]),
            ],
            QkvBias::NoKey => [q.get("bias", &[dim]), zeros(), v.get("bias", &[dim])],
        };
        Self {
            qkv_weight,
            qkv_bias: Tensor::stack(&[bq, bk, bv], 0).unsqueeze(1),
            out: Linear::load(&p.pp("output").pp("dense"), dim, dim, true),
            heads,
            head_dim: dim / heads,
        }
    }

    /// `x` [B, N, D]; `bias` an additive score bias broadcastable to [B, heads, N, N].
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> TResult {
        let (b, n, d) = x.size3()?;
        let rows = x.f_reshape([1, b * n, d])?.f_expand([3, b * n, d], false)?;
        let qkv = self.qkv_bias.f_baddbmm(&rows, &self.qkv_weight, 1.0, 1.0)?;
        let heads = |i: i64| {
            qkv.f_select(0, i)?
                .f_view([b, n, self.heads, self.head_dim])?
                .f_transpose(1, 2)
        };
        let context = Tensor::f_scaled_dot_product_attention(
            &heads(0)?,
            &heads(1)?,
            &heads(2)?,
            bias,
            0.0,
            false,
            None,
            false,
        )?;
        let context = context.f_transpose(1, 2)?.f_reshape([b, n, d])?;
        self.out.forward(&context)
    }
}

pub enum Mlp {
    /// fc1 → activation → fc2.
    Plain {
        fc1: Linear,
        act: Activation,
        fc2: Linear,
    },
    /// DINOv2 `use_swiglu_ffn`: silu(x1)·x2 on the two halves of `weights_in`.
    SwiGlu { w_in: Linear, w_out: Linear },
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> TResult {
        match self {
            Mlp::Plain { fc1, act, fc2 } => fc2.forward(&act.forward(&fc1.forward(x)?)?),
            Mlp::SwiGlu { w_in, w_out } => {
                let h = w_in.forward(x)?;
                let halves = h.f_chunk(2, -1)?;
                w_out.forward(&halves[0].f_silu()?.f_mul(&halves[1])?)
            }
        }
    }
}

/// A pre-LayerNorm transformer layer: `x + s1·Attn(LN1 x)`, then `x + s2·MLP(LN2 x)`, where the
/// per-channel scales are BEiT's `lambda_1/2` or DINOv2's layer scale, absent for ViT.
pub struct Block {
    pub norm1: LayerNorm,
    pub attention: SelfAttention,
    pub scale1: Option<Tensor>,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub scale2: Option<Tensor>,
}

impl Block {
    pub fn forward(&self, x: &Tensor, attn_bias: Option<&Tensor>) -> TResult {
        let mut h = self.attention.forward(&self.norm1.forward(x)?, attn_bias)?;
        if let Some(s) = &self.scale1 {
            h = h.f_mul(s)?;
        }
        let x = x.f_add(&h)?;
        let mut h = self.mlp.forward(&self.norm2.forward(&x)?)?;
        if let Some(s) = &self.scale2 {
            h = h.f_mul(s)?;
        }
        x.f_add(&h)
    }
}

/// `nn.Conv2d(C, D, kernel_size=P, stride=P)` flattened to tokens [B, h·w, D].
pub struct PatchEmbed {
    projection: Conv2d,
}

impl PatchEmbed {
    pub fn load(p: &WeightsPath, channels: i64, dim: i64, patch: i64) -> Self {
        Self {
            projection: Conv2d::load(&p.pp("projection"), channels, dim, patch, true)
                .with_stride(patch),
        }
    }

    pub fn forward(&self, x: &Tensor) -> TResult {
        self.projection
            .forward(x)?
            .f_flatten(2, -1)?
            .f_transpose(1, 2)
    }
}

/// Interpolation used to resize learnt position-embedding grids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridInterp {
    Bilinear,
    Bicubic,
}

/// Resizes position embeddings [1, 1 + g·g, D] (one class position then a g×g grid) to an
/// h×w grid, align_corners false, computed in f32 and cast back so that half-precision models
/// get the same positions as f32 ones.
pub fn resize_position_grid(pos: &Tensor, grid: i64, h: i64, w: i64, mode: GridInterp) -> TResult {
    let kind = pos.kind();
    let dim = pos.size().last().copied().unwrap_or(0);
    let class_pos = pos.f_narrow(1, 0, 1)?;
    let grid_pos = pos
        .f_narrow(1, 1, grid * grid)?
        .f_reshape([1, grid, grid, dim])?
        .f_permute([0, 3, 1, 2])?
        .f_to_kind(Kind::Float)?;
    let resized = match mode {
        GridInterp::Bilinear => {
            grid_pos.f_upsample_bilinear2d([h, w], false, None::<f64>, None::<f64>)?
        }
        GridInterp::Bicubic => {
            grid_pos.f_upsample_bicubic2d([h, w], false, None::<f64>, None::<f64>)?
        }
    };
    let resized = resized
        .f_to_kind(kind)?
        .f_permute([0, 2, 3, 1])?
        .f_reshape([1, h * w, dim])?;
    Tensor::f_cat(&[class_pos, resized], 1)
}

/// Bilinear resize of a [B, C, H, W] map to `size`.
pub fn resize_bilinear(x: &Tensor, size: (i64, i64), align_corners: bool) -> TResult {
    x.f_upsample_bilinear2d([size.0, size.1], align_corners, None::<f64>, None::<f64>)
}

/// Spatial size of a [B, C, H, W] map.
pub fn spatial(x: &Tensor) -> (i64, i64) {
    let s = x.size();
    (s[s.len() - 2], s[s.len() - 1])
}

/// Checks that `x` is a [B, channels, H, W] batch and brings it to the model's kind and
/// device; returns it with (B, H, W).
pub fn image_input(
    model: &str,
    x: &Tensor,
    channels: i64,
    like: &Placement,
) -> Result<(Tensor, i64, i64, i64), ModelError> {
    let size = x.size();
    let (h, w) = match size.as_slice() {
        [.., h, w] => (*h, *w),
        _ => (0, 0),
    };
    if size.len() != 4 || size[1] != channels || size[0] < 1 {
        return Err(ModelError::InputSize {
            model: model.to_string(),
            height: h,
            width: w,
            reason: format!("expected pixel_values [B, {channels}, H, W], got {size:?}"),
        });
    }
    let x = x.f_to_device(like.device)?.f_to_kind(like.kind)?;
    Ok((x, size[0], h, w))
}

/// The model's kind and device, kept by models to bring inputs to them.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub kind: Kind,
    pub device: tch::Device,
}

impl Placement {
    pub fn of(p: &WeightsPath) -> Self {
        Self {
            kind: p.kind(),
            device: p.device(),
        }
    }
}

/// The error for an input whose sides are not whole numbers of patches.
pub fn require_patch_multiple(
    model: &str,
    h: i64,
    w: i64,
    patch: i64,
) -> Result<(i64, i64), ModelError> {
    if h < patch || w < patch || h % patch != 0 || w % patch != 0 {
        return Err(ModelError::InputSize {
            model: model.to_string(),
            height: h,
            width: w,
            reason: format!(
                "height and width must be positive multiples of the patch size {patch}"
            ),
        });
    }
    Ok((h / patch, w / patch))
}

/// Python-style index into a list of `len` items (negative counts from the end).
pub fn py_index(index: i64, len: usize) -> Option<usize> {
    let len = len as i64;
    let i = if index < 0 { len + index } else { index };
    (0..len).contains(&i).then_some(i as usize)
}

/// The same values in channels-last (NHWC) memory order, shape unchanged [N, C, H, W].
pub fn to_channels_last(x: &Tensor) -> TResult {
    x.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])
}

/// A weight moved to channels-last order on CUDA, unchanged elsewhere (and on failure, which
/// only costs speed).
fn channels_last_on_cuda(weight: Tensor) -> Tensor {
    if weight.device().is_cuda() && weight.dim() == 4 {
        to_channels_last(&weight).unwrap_or(weight)
    } else {
        weight
    }
}

/// An additive attention bias [.., N, N] stored with its rows padded to a multiple of 8
/// elements and seen through a narrowed view: SDPA's memory-efficient kernel needs 16-byte
/// aligned rows and would otherwise pad (copy) the bias on every call.
pub fn aligned_attention_bias(bias: &Tensor) -> TResult {
    let mut size = bias.size();
    let n = size.last().copied().unwrap_or(0);
    let padded = (n + 7) / 8 * 8;
    if padded == n {
        return bias.f_contiguous();
    }
    if let Some(last) = size.last_mut() {
        *last = padded;
    }
    let storage = Tensor::f_zeros(size.as_slice(), (bias.kind(), bias.device()))?;
    let last = storage.dim() as i64 - 1;
    storage.f_narrow(last, 0, n)?.f_copy_(bias)?;
    storage.f_narrow(last, 0, n)
}

/// Tensors a model derives from its weights for one input size (resized position grids,
/// attention biases): computed on first use, then kept. They are constants of the model at
/// that size, so later forwards skip that work, and a forward at a size seen before does no
/// host work at all (which CUDA graph capture requires). At most [`SizeCache::LIMIT`] sizes
/// are kept; beyond, values are computed per call.
pub struct SizeCache<T> {
    entries: Mutex<HashMap<(i64, i64), T>>,
}

/// A value handed out of a [`SizeCache`]: tensors sharing the cached storage.
pub trait Shared {
    fn share(&self) -> Self;
}

impl Shared for Tensor {
    fn share(&self) -> Self {
        self.shallow_clone()
    }
}

impl Shared for Vec<Option<Tensor>> {
    fn share(&self) -> Self {
        self.iter()
            .map(|t| t.as_ref().map(Tensor::shallow_clone))
            .collect()
    }
}

impl<T> Default for SizeCache<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Shared> SizeCache<T> {
    pub const LIMIT: usize = 16;

    pub fn get_or_try(&self, key: (i64, i64), make: impl FnOnce() -> TResult<T>) -> TResult<T> {
        if let Some(found) = self.lock().get(&key) {
            return Ok(found.share());
        }
        let value = make()?;
        let mut entries = self.lock();
        if entries.len() < Self::LIMIT {
            entries.insert(key, value.share());
        }
        Ok(value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, i64), T>> {
        // A panic while holding the lock cannot leave a half-written entry behind.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tch::Device;

    #[test]
    fn aligned_bias_keeps_values_with_rows_padded_to_eight() {
        let bias = Tensor::randn([1, 3, 5, 5], (Kind::Float, Device::Cpu));
        let aligned = aligned_attention_bias(&bias).unwrap();
        assert_eq!(aligned.size(), [1, 3, 5, 5]);
        assert_eq!(aligned.stride(), [120, 40, 8, 1]);
        assert_eq!((&aligned - &bias).abs().max().double_value(&[]), 0.0);
        // Already aligned: left as it is (contiguous).
        let wide = Tensor::randn([2, 8, 8], (Kind::Float, Device::Cpu));
        assert_eq!(aligned_attention_bias(&wide).unwrap().stride(), [64, 8, 1]);
    }

    #[test]
    fn channels_last_is_nhwc_in_memory() {
        let x = Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([1, 2, 3, 4]);
        let y = to_channels_last(&x).unwrap();
        assert_eq!(y.size(), [1, 2, 3, 4]);
        assert_eq!(y.stride(), [24, 1, 8, 2]);
        assert_eq!((&y - &x).abs().max().double_value(&[]), 0.0);
        // Weights stay as they are off CUDA.
        let w = Tensor::zeros([4, 2, 3, 3], (Kind::Float, Device::Cpu));
        assert_eq!(channels_last_on_cuda(w).stride(), [18, 9, 3, 1]);
    }

    #[test]
    fn a_size_cache_computes_once_per_size_and_shares_storage() {
        let cache: SizeCache<Tensor> = SizeCache::default();
        let calls = Cell::new(0);
        let make = || {
            calls.set(calls.get() + 1);
            Ok(Tensor::ones([2], (Kind::Float, Device::Cpu)))
        };
        let first = cache.get_or_try((4, 4), make).unwrap();
        let again = cache.get_or_try((4, 4), make).unwrap();
        assert_eq!(calls.get(), 1);
        assert_eq!(first.data_ptr(), again.data_ptr());
        drop(cache.get_or_try((4, 5), make).unwrap());
        assert_eq!(calls.get(), 2);
        // A failure is returned and not kept.
        let failed = cache.get_or_try((9, 9), || Err(TchError::Kind("no".into())));
        assert!(failed.is_err());
        drop(cache.get_or_try((9, 9), make).unwrap());
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn attention_matches_separate_projections() {
        // The stacked q/k/v product gives what three Linear layers and SDPA give.
        let _guard = tch::no_grad_guard();
        let (b, n, d, h) = (2, 5, 8, 2);
        let x = Tensor::randn([b, n, d], (Kind::Float, Device::Cpu));
        let w: Vec<Tensor> = (0..4)
            .map(|_| Tensor::randn([d, d], (Kind::Float, Device::Cpu)))
            .collect();
        let bias = Tensor::randn([d], (Kind::Float, Device::Cpu));
        let mut named = std::collections::HashMap::new();
        for (i, name) in ["query", "key", "value"].iter().enumerate() {
            named.insert(format!("a.attention.{name}.weight"), w[i].shallow_clone());
        }
        named.insert("a.attention.query.bias".into(), bias.shallow_clone());
        named.insert("a.attention.value.bias".into(), bias.shallow_clone());
        named.insert("a.output.dense.weight".into(), w[3].shallow_clone());
        named.insert("a.output.dense.bias".into(), bias.shallow_clone());
        let weights =
            crate::models::nn::weights::Weights::new(named, Device::Cpu, Kind::Float, "test");
        let attention = SelfAttention::load(&weights.root().pp("a"), d, h, QkvBias::NoKey);
        let mask = Tensor::randn([1, h, n, n], (Kind::Float, Device::Cpu));
        let got = attention.forward(&x, Some(&mask)).unwrap();
        let split = |t: Tensor| t.view([b, n, h, d / h]).transpose(1, 2);
        let q = split(x.linear(&w[0], Some(&bias)));
        let k = split(x.linear(&w[1], None::<Tensor>));
        let v = split(x.linear(&w[2], Some(&bias)));
        let scores = q.matmul(&k.transpose(-1, -2)) / ((d / h) as f64).sqrt() + &mask;
        let context = scores.softmax(-1, Kind::Float).matmul(&v);
        let expected = context
            .transpose(1, 2)
            .reshape([b, n, d])
            .linear(&w[3], Some(&bias));
        let error = (&got - &expected).abs().max().double_value(&[]);
        assert!(error < 1e-4, "{error}");
    }
}
