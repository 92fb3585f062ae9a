#!/usr/bin/env python3
"""Generate visiond's test fixtures: tiny random-weight Hugging Face checkpoints and the
outputs transformers computes for them.

Usage (from the repository root):

    scripts/setup            # once: torch==2.11.0 venv at ~/.cache/visiond/torch-2.11.0
    tools/fixtures-venv      # once: ~/.cache/visiond/fixtures-venv (transformers==5.17.0 + that torch)
    ~/.cache/visiond/fixtures-venv/bin/python tools/make_fixtures.py [--out tests/fixtures] [--only NAME ...] [--processors]

Writes
    <out>/models/<name>/                 save_pretrained output: config.json, model.safetensors (f32),
                                         preprocessor_config.json where the architecture has a processor
    <out>/reference/<name>/<case>.safetensors   pixel_values [B,3,H,W] f32 and the model output under its
                                         transformers name (predicted_depth [B,H',W'] or logits)
    <out>/reference/<name>/cases.json    the cases: input/output shapes, forward kwargs, notes, output stats
plus the loader-error variants models/dpt-vit-sharded (index + shards) and models/dpt-vit-bin-only
(pytorch_model.bin + config.json), and models/torchscript-depth/model.pt (a TorchScript module).
    <out>/processors/<case>.safetensors  an input image (uint8 [H,W,3]) and the PIL image processor's pixel_values,
                                         or a post-processing reference on a fixture model output
    <out>/processors/cases.json          the processors (preprocessor_config.json, output sizes) and the cases
With neither --only nor --processors everything is generated; --processors alone generates only processors/
(it reads the committed reference/ outputs for the post-processing cases).

Every model is built from a config object (no hub access), every parameter and BatchNorm running
statistic is drawn at random from fixed seeds, and the outputs are computed with model.eval() under
torch.no_grad() on the CPU in float32, eager attention. Rerunning reproduces the files bit for bit on
the same torch/transformers versions (pinned and asserted below).
"""

import argparse
import json
import math
import os
import re
import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

TORCH_VERSION = "2.11.0"
TRANSFORMERS_VERSION = "5.17.0"
assert torch.__version__.startswith(TORCH_VERSION), f"need torch {TORCH_VERSION}, got {torch.__version__}"
assert transformers.__version__ == TRANSFORMERS_VERSION, (
    f"need transformers=={TRANSFORMERS_VERSION}, got {transformers.__version__}"
)

from transformers import (  # noqa: E402
    BeitConfig,
    BeitForImageClassification,
    BeitImageProcessorPil,
    BitConfig,
    BitImageProcessorPil,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    Dinov2ForImageClassification,
    DPTConfig,
    DPTForDepthEstimation,
    DPTForSemanticSegmentation,
    DPTImageProcessorPil,
)

torch.set_num_threads(1)  # reproducible reductions
torch.use_deterministic_algorithms(True)

BILINEAR, BICUBIC = 2, 3  # PIL resample codes as stored in preprocessor_config.json
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]


def seed_of(*parts):
    return zlib.crc32("/".join(parts).encode())


# --------------------------------------------------------------------------------------------
# randomisation
# --------------------------------------------------------------------------------------------
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)
AFFINE = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def randomize(model, seed):
    """Overwrite every parameter and BatchNorm running statistic with random values.

    Linear/conv weights ~ N(0, 1/fan_in) (keeps activations O(1) through the stack), biases ~ N(0, 0.2),
    norm weights ~ 1 + N(0, 0.2), norm biases ~ N(0, 0.2), BatchNorm running_mean ~ N(0, 0.3) and
    running_var ~ U(0.5, 2), layer scales ~ 0.5 + N(0, 0.25), cls/mask tokens, position embeddings and
    relative-position tables ~ N(0, 0.5). Fails on any parameter it does not know how to draw.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    done = set()
    with torch.no_grad():
        for mname, mod in model.named_modules():
            prefix = f"{mname}." if mname else ""
            params = dict(mod.named_parameters(recurse=False))
            if isinstance(mod, NORMS):
                if "weight" in params:
                    normal(params["weight"], 0.2, 1.0)
                if "bias" in params:
                    normal(params["bias"], 0.2)
                if isinstance(mod, nn.BatchNorm2d):
                    normal(mod.running_mean, 0.3)
                    mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) * 1.5 + 0.5)
            elif isinstance(mod, AFFINE):
                if isinstance(mod, nn.Linear):
                    fan_in = mod.in_features
                elif isinstance(mod, nn.ConvTranspose2d):  # kernel == stride: one input pixel per output
                    fan_in = mod.in_channels
                else:
                    fan_in = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
                normal(params["weight"], 1.0 / math.sqrt(fan_in))
                if "bias" in params:
                    normal(params["bias"], 0.2)
            else:
                for pname, p in params.items():
                    if "lambda" in pname:  # BEiT lambda_1/2, DINOv2 layer_scale*.lambda1
                        normal(p, 0.25, 0.5)
                    elif pname in ("cls_token", "mask_token", "position_embeddings", "relative_position_bias_table"):
                        normal(p, 0.5)
                    else:
                        raise ValueError(f"randomize: no rule for parameter {prefix}{pname} in {type(mod).__name__}")
            done.update(prefix + n for n in params)
    missing = {n for n, _ in model.named_parameters()} - done
    if missing:
        raise ValueError(f"randomize: parameters not drawn: {sorted(missing)}")


def calibrate_final_relu(model, conv, x, positive=0.85, forward=None):
    """Shift the bias of the conv feeding the final ReLU so that ~`positive` of its outputs on `x`
    are > 0: random weights otherwise tend to give an all-zero depth map."""
    seen = []
    hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.detach().flatten()))
    with torch.no_grad():
        (forward or model)(x)
    hook.remove()
    pre = seen[0]
    with torch.no_grad():
        conv.bias -= torch.quantile(pre, 1.0 - positive) - 0.05 * pre.std()


# --------------------------------------------------------------------------------------------
# model specs
# --------------------------------------------------------------------------------------------
# Each spec: name -> dict(build=fn() -> (model, processor or None), output=..., cases=[...], notes=[...],
# calibrate=fn(model) -> conv or None). A case: name, shape [B,3,H,W], optional kwargs (passed to the
# forward), optional forward (custom callable(model, x) instead of model(x)), note.

TINY_VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
TINY_NECK = dict(neck_hidden_sizes=[8, 16, 24, 32], fusion_hidden_size=16)


def dpt_vit_config(readout_type, **over):
    cfg = dict(
        **TINY_VIT,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        image_size=64,
        patch_size=16,
        qkv_bias=True,
        is_hybrid=False,
        backbone_out_indices=[0, 1, 2, 3],
        readout_type=readout_type,
        reassemble_factors=[4, 2, 1, 0.5],
        **TINY_NECK,
        add_projection=False,
        use_batch_norm_in_fusion_residual=False,
    )
    cfg.update(over)
    return DPTConfig(**cfg)


def dpt_processor(size, resample=BILINEAR, mean=HALF, std=HALF, **kw):
    return DPTImageProcessorPil(
        size={"height": size, "width": size},
        resample=resample,
        image_mean=mean,
        image_std=std,
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_pad=False,
        **kw,
    )


def dpt_depth_explicit_grid(model, x):
    """DPTForDepthEstimation.forward for a ViT backbone, except that the neck is told the patch grid
    (H/P, W/P), as the forward already does for a `backbone_config` backbone. transformers 5.17 passes
    no grid for the ViT path and reassembles sqrt(N) x sqrt(N), so non-square inputs fail there."""
    cfg = model.config
    out = model.dpt(x, output_hidden_states=True)
    hs = [h for i, h in enumerate(out.hidden_states[1:]) if i in cfg.backbone_out_indices]
    feats = model.neck(hs, x.shape[2] // cfg.patch_size, x.shape[3] // cfg.patch_size)
    return model.head(feats)


NON_SQUARE_VIT_NOTE = (
    "transformers 5.17 cannot run this: DPTForDepthEstimation (ViT path) calls the neck without "
    "patch_height/patch_width and DPTReassembleStage reshapes to torch_int(sqrt(N)) x same, which raises "
    "for H != W. Reference computed with transformers' own modules: model.dpt(..., output_hidden_states=True), "
    "taps at backbone_out_indices, model.neck(hidden_states, H//16, W//16), model.head (i.e. the reshape "
    "uses the true (H/P, W/P) grid). A port that supports non-square DPT-ViT should match this."
)


def dpt_vit_cases():
    return [
        dict(name="native", shape=[1, 3, 64, 64], note="4x4 grid = position-embedding grid (bilinear resize is an identity)"),
        dict(name="odd_grid", shape=[1, 3, 80, 80], note="5x5 grid: position embeddings bilinear-resized 4x4->5x5; "
             "0.5 reassemble gives 3x3, fusion resizes residuals 5->6, 10->12, 20->24 (bilinear, align_corners=False)"),
        dict(name="non_square", shape=[1, 3, 64, 96], forward=dpt_depth_explicit_grid, transformers_forward=False,
             note=NON_SQUARE_VIT_NOTE),
        dict(name="batch2", shape=[2, 3, 64, 64]),
    ]


def build_dpt_vit(readout_type):
    def build():
        return DPTForDepthEstimation(dpt_vit_config(readout_type)), dpt_processor(64)
    return build


def build_dpt_hybrid():
    bit = BitConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[32, 48, 64, 128],  # as in the real config: 4 sizes, 3 depths (zip truncates)
        depths=[2, 2, 1],
        layer_type="bottleneck",
        hidden_act="relu",
        global_padding="same",
        num_groups=4,
        embedding_dynamic_padding=True,
        out_features=["stage1", "stage2", "stage3"],
    )
    cfg = DPTConfig(
        **TINY_VIT,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        image_size=64,
        patch_size=16,
        qkv_bias=True,
        is_hybrid=True,
        backbone_config=bit,
        backbone_featmap_shape=[1, 64, 4, 4],
        backbone_out_indices=[0, 1, 2, 3],
        neck_ignore_stages=[0, 1],
        readout_type="project",
        reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=[32, 48, 32, 32],
        fusion_hidden_size=16,
        add_projection=False,
        use_batch_norm_in_fusion_residual=False,
    )
    return DPTForDepthEstimation(cfg), dpt_processor(64)


def tiny_dinov2(**over):
    cfg = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=4,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=56,
        patch_size=14,
        qkv_bias=True,
        layerscale_value=1.0,
        drop_path_rate=0.0,
        use_swiglu_ffn=False,
    )
    cfg.update(over)
    return Dinov2Config(**cfg)


def build_dpt_dinov2():
    backbone = tiny_dinov2(out_indices=[1, 2, 3, 4], apply_layernorm=False, reshape_hidden_states=False)
    cfg = DPTConfig(
        backbone_config=backbone,
        readout_type="project",
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=256,  # add_projection's head.projection is hard-coded Conv2d(256, 256)
        add_projection=True,
        use_bias_in_fusion_residual=False,
        use_batch_norm_in_fusion_residual=False,
    )
    proc = DPTImageProcessorPil(
        do_resize=False,
        do_rescale=False,
        do_normalize=True,
        image_mean=[123.675, 116.28, 103.53],
        image_std=[58.395, 57.12, 57.375],
        do_pad=True,
        size_divisor=14,
    )
    return DPTForDepthEstimation(cfg), proc


def build_dpt_ade():
    labels = ["wall", "building", "sky", "floor", "tree"]
    cfg = dpt_vit_config(
        "project",
        use_batch_norm_in_fusion_residual=True,
        use_auxiliary_head=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)},
    )
    return DPTForSemanticSegmentation(cfg), dpt_processor(64)


def beit_config(labels, **over):
    cfg = dict(
        **TINY_VIT,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        image_size=64,
        patch_size=16,
        use_mask_token=False,
        use_absolute_position_embeddings=False,
        use_relative_position_bias=False,
        use_shared_relative_position_bias=False,
        layer_scale_init_value=0.1,
        drop_path_rate=0.0,
        use_mean_pooling=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)},
    )
    cfg.update(over)
    return BeitConfig(**cfg)


def beit_processor(size):
    return BeitImageProcessorPil(
        size={"height": size, "width": size},
        resample=BILINEAR,
        do_center_crop=False,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=HALF,
        image_std=HALF,
        do_reduce_labels=False,
    )


def build_dit():
    labels = ["letter", "form", "email", "handwritten"]
    return BeitForImageClassification(beit_config(labels, use_absolute_position_embeddings=True)), beit_processor(64)


def build_beit_relpos():
    labels = ["cat", "dog", "bird"]
    return BeitForImageClassification(beit_config(labels, use_relative_position_bias=True)), beit_processor(64)


def build_dinov2_cls():
    labels = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]
    cfg = tiny_dinov2(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={l: i for i, l in enumerate(labels)})
    # Real checkpoint: image_size 518 (37x37 positions), processor shortest edge 256 + centre crop 224
    # (16x16 grid). Scaled: 4x4 positions, shortest edge 48, crop 42 (3x3 grid).
    proc = BitImageProcessorPil(
        size={"shortest_edge": 48},
        crop_size={"height": 42, "width": 42},
        resample=BICUBIC,
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    return Dinov2ForImageClassification(cfg), proc


def build_depth_anything():
    backbone = tiny_dinov2(out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False)
    cfg = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
        max_depth=1,
    )
    proc = dpt_processor(56, resample=BICUBIC, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         keep_aspect_ratio=True, ensure_multiple_of=14)
    return DepthAnythingForDepthEstimation(cfg), proc


class TinyDepthNet(nn.Module):
    """A stand-in for a user's TorchScript depth model: [B,3,H,W] -> [B,H,W] (H, W even)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        h = nn.functional.interpolate(h, size=[x.shape[2], x.shape[3]], mode="bilinear", align_corners=False)
        return torch.relu(self.conv3(h)).squeeze(1)


def dpt_calib(m):
    return m.head.head[4]


SPECS = {
    "dpt-vit": dict(
        build=build_dpt_vit("project"), output="predicted_depth", calibrate=dpt_calib, cases=dpt_vit_cases(),
        notes=["DPT-ViT as Intel/dpt-large, scaled: hidden 32, 4 layers, 2 heads, patch 16, image 64, "
               "backbone_out_indices [0,1,2,3], readout project, neck [8,16,24,32], fusion 16."],
    ),
    "dpt-vit-add": dict(
        build=build_dpt_vit("add"), output="predicted_depth", calibrate=dpt_calib, cases=dpt_vit_cases(),
        notes=["As dpt-vit with readout_type add. add_projection stays false: the head projection is hard-coded "
               "nn.Conv2d(256, 256) in transformers, so add_projection forces fusion_hidden_size 256 (~40 MB "
               "of fusion weights); it is covered by dpt-dinov2 instead."],
    ),
    "dpt-vit-ignore": dict(
        build=build_dpt_vit("ignore"), output="predicted_depth", calibrate=dpt_calib, cases=dpt_vit_cases(),
        notes=["As dpt-vit with readout_type ignore (no readout_projects parameters)."],
    ),
    "dpt-hybrid": dict(
        build=build_dpt_hybrid, output="predicted_depth", calibrate=dpt_calib,
        cases=[dict(name="native", shape=[1, 3, 64, 64]), dict(name="batch2", shape=[2, 3, 64, 64])],
        notes=["DPT-hybrid as Intel/dpt-hybrid-midas, scaled: BiT bottleneck, depths [2,2,1], hidden_sizes "
               "[32,48,64,128] (4th unused, as in the real config), embedding 16, 4 groups, SAME padding; ViT "
               "hidden 32, 4 layers, patch 16 (= BiT stride), image 64; neck [32,48,32,32], reassemble [1,1,1,0.5].",
               "Input must be exactly image_size: DPTViTHybridEmbeddings raises ValueError for any other size "
               "(DPTModel never passes interpolate_pos_encoding)."],
    ),
    "dpt-dinov2": dict(
        build=build_dpt_dinov2, output="predicted_depth", calibrate=dpt_calib,
        cases=[
            dict(name="square", shape=[1, 3, 56, 56], note="4x4 grid = position grid: no interpolation (count and H==W match)"),
            dict(name="non_square", shape=[1, 3, 42, 56], note="3x4 grid, bicubic position resize; output 64x64 "
                 "(0.5 reassemble of 3 rows gives 2, fusion upsamples and resizes residuals)"),
            dict(name="other_grid", shape=[1, 3, 70, 70], note="5x5 grid != 4x4 position grid; output 96x96"),
        ],
        notes=["DPT with Dinov2 backbone_config as facebook/dpt-dinov2-small-kitti, scaled: dinov2 hidden 32, "
               "4 layers, 2 heads, patch 14, image 56 (4x4 position grid), out_indices [1,2,3,4], apply_layernorm "
               "false, reshape_hidden_states false; readout project, add_projection true, fusion 256 (forced by the "
               "hard-coded head.projection Conv2d(256,256)), use_bias_in_fusion_residual false. "
               "Top-level hidden_size etc. are DPTConfig defaults and unused (the backbone's are used).",
               "Output is not the input size: 16 * (fused grid), see cases."],
    ),
    "dpt-ade": dict(
        build=build_dpt_ade, output="logits", calibrate=None,
        cases=[
            dict(name="native", shape=[1, 3, 64, 64]),
            dict(name="larger", shape=[1, 3, 96, 96], note="6x6 grid: position embeddings bilinear-resized 4x4->6x6"),
            dict(name="batch2", shape=[2, 3, 64, 64]),
        ],
        notes=["DPTForSemanticSegmentation as Intel/dpt-large-ade, scaled (as dpt-vit) with "
               "use_batch_norm_in_fusion_residual true (residual convs without bias) and 5 labels. "
               "auxiliary_head.* is in the checkpoint and unused by the logits.",
               "Non-square inputs fail in transformers 5.17 for the same reason as DPT-ViT depth (sqrt reshape)."],
    ),
    "dit": dict(
        build=build_dit, output="logits", calibrate=None,
        cases=[
            dict(name="native", shape=[1, 3, 64, 64]),
            dict(name="larger", shape=[1, 3, 96, 96], note="6x6 grid: bicubic position resize 4x4->6x6"),
            dict(name="non_square", shape=[1, 3, 64, 96], kwargs={"interpolate_pos_encoding": True},
                 note="4x6 grid: bicubic position resize. interpolate_pos_encoding=True passed, but for absolute "
                      "position embeddings BEiT interpolates whenever the grid differs or H != W regardless of the "
                      "flag (it only changes the relative-position-bias path); output identical without it"),
            dict(name="batch2", shape=[2, 3, 64, 64]),
        ],
        notes=["BeitForImageClassification as microsoft/dit-base-finetuned-rvlcdip, scaled: hidden 32, 4 layers, "
               "patch 16, image 64, mean pooling, layer_scale_init_value 0.1 (lambdas randomised), absolute "
               "position embeddings, no relative position bias, 4 labels."],
    ),
    "beit-relpos": dict(
        build=build_beit_relpos, output="logits", calibrate=None,
        cases=[
            dict(name="native", shape=[1, 3, 64, 64]),
            dict(name="larger", shape=[1, 3, 96, 96],
                 note="supported by transformers 5.17 without any flag: the relative_position_bias_table is "
                      "bilinear-resized (align_corners=False) from (2*4-1)^2 to (2*6-1)^2 and re-indexed"),
            dict(name="non_square", shape=[1, 3, 64, 96],
                 note="supported as well: table resized to (2*4-1)x(2*6-1)"),
        ],
        notes=["BeitForImageClassification with per-layer use_relative_position_bias true, no absolute position "
               "embeddings, mean pooling, 3 labels. interpolate_pos_encoding=True would additionally resize the "
               "bias to (N+1)x(N+1), which it already is: no effect."],
    ),
    "dinov2-cls": dict(
        build=build_dinov2_cls, output="logits", calibrate=None,
        cases=[
            dict(name="native", shape=[1, 3, 56, 56], note="4x4 grid = position grid: no interpolation"),
            dict(name="other_grid", shape=[1, 3, 42, 42], note="3x3 grid (the processor's crop): bicubic resize"),
            dict(name="non_square", shape=[1, 3, 42, 70], note="3x5 grid"),
            dict(name="batch2", shape=[2, 3, 56, 56]),
        ],
        notes=["Dinov2ForImageClassification as facebook/dinov2-small-imagenet1k-1-layer, scaled: hidden 32, "
               "4 layers, 2 heads, patch 14, image 56, eps 1e-6, layerscale (randomised), 5 labels; "
               "logits = classifier(concat(CLS, mean(patch tokens))) after the final layernorm."],
    ),
    "depth-anything": dict(
        build=build_depth_anything, output="predicted_depth", calibrate=lambda m: m.head.conv3,
        cases=[
            dict(name="square", shape=[1, 3, 56, 56]),
            dict(name="square_70", shape=[1, 3, 70, 70], note="5x5 grid != 4x4 position grid"),
            dict(name="non_square", shape=[1, 3, 42, 70], note="3x5 grid"),
            dict(name="batch2", shape=[2, 3, 56, 56]),
        ],
        notes=["DepthAnythingForDepthEstimation as depth-anything/Depth-Anything-V2-Small-hf, scaled: dinov2 "
               "hidden 32, 4 layers, patch 14, image 56, out_indices [1,2,3,4], apply_layernorm true; "
               "reassemble_hidden_size 32, neck [8,16,24,32], fusion 16, head_hidden 8, relative, max_depth 1. "
               "Output is the input size (head resizes to (h*14, w*14))."],
    ),
}


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
def to_json(obj):
    """json.dumps with short lists of numbers kept on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text) + "\n"


def stats(t):
    t = t.double()
    return {"min": round(t.min().item(), 6), "max": round(t.max().item(), 6), "mean": round(t.mean().item(), 6),
            "std": round(t.std().item(), 6), "zero_fraction": round((t == 0).double().mean().item(), 4)}


def case_input(name, case):
    g = torch.Generator().manual_seed(seed_of(name, case["name"], "input"))
    return torch.randn(case["shape"], generator=g, dtype=torch.float32)


def run_case(model, spec, case, x):
    with torch.no_grad():
        if "forward" in case:
            return case["forward"](model, x)
        return getattr(model(x, **case.get("kwargs", {})), spec["output"])


def write_model_dir(model, processor, path):
    if path.exists():
        shutil.rmtree(path)
    model.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)


def generate(name, spec, out):
    torch.manual_seed(seed_of(name, "init"))  # constructor init; overwritten below anyway
    model, processor = spec["build"]()
    model.config._attn_implementation = "eager"
    model.eval()
    randomize(model, seed_of(name, "weights"))
    if spec["calibrate"] is not None:
        first = spec["cases"][0]
        calibrate_final_relu(model, spec["calibrate"](model), case_input(name, first),
                             forward=lambda x: run_case(model, spec, first, x))

    model_dir = out / "models" / name
    write_model_dir(model, processor, model_dir)

    # The checkpoint must load back in transformers and give the same numbers.
    reloaded = type(model).from_pretrained(model_dir, attn_implementation="eager").eval()
    sd_a, sd_b = model.state_dict(), reloaded.state_dict()
    assert sd_a.keys() == sd_b.keys(), f"{name}: reload changed the parameter set"
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), f"{name}: reload changed {k}"

    ref_dir = out / "reference" / name
    if ref_dir.exists():
        shutil.rmtree(ref_dir)
    ref_dir.mkdir(parents=True)
    cases = []
    for case in spec["cases"]:
        x = case_input(name, case)
        # The reference comes from the checkpoint as saved (what a loader sees); the in-memory model may
        # differ in the last ulp (different GEMM paths for differently allocated weights).
        y = run_case(reloaded, spec, case, x).contiguous()
        y_mem = run_case(model, spec, case, x)
        diff = (y - y_mem).abs().max().item()
        assert diff <= 1e-5 * max(1.0, y.abs().max().item()), f"{name}/{case['name']}: reloaded model differs by {diff}"
        if case.get("transformers_forward", True) is False:
            try:
                with torch.no_grad():
                    reloaded(x)
            except Exception as e:  # noqa: BLE001
                failure = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            else:
                raise AssertionError(f"{name}/{case['name']}: expected transformers' forward to fail")
        if case.get("kwargs"):
            with torch.no_grad():
                y3 = getattr(reloaded(x), spec["output"])
            flag_matters = not torch.equal(y, y3)
        save_file({"pixel_values": x.contiguous(), spec["output"]: y}, ref_dir / f"{case['name']}.safetensors")
        entry = {
            "name": case["name"],
            "file": f"{case['name']}.safetensors",
            "pixel_values": list(x.shape),
            "output": spec["output"],
            "output_shape": list(y.shape),
            "forward_kwargs": case.get("kwargs", {}),
            "transformers_forward": case.get("transformers_forward", True),
        }
        if case.get("note"):
            entry["note"] = case["note"]
        if not entry["transformers_forward"]:
            entry["transformers_forward_error"] = failure
        if case.get("kwargs"):
            entry["same_output_without_kwargs"] = not flag_matters
        entry["output_stats"] = stats(y)
        cases.append(entry)
        s = entry["output_stats"]
        print(f"  {name}/{case['name']:<11} in {list(x.shape)} -> {spec['output']} {list(y.shape)} "
              f"min {s['min']:.4f} max {s['max']:.4f} std {s['std']:.4f} zeros {s['zero_fraction']:.3f}")
        if spec["output"] == "predicted_depth":
            assert s["zero_fraction"] < 0.5, f"{name}/{case['name']}: depth mostly zero"
        assert math.isfinite(s["max"]) and abs(s["max"]) < 1e3 and s["std"] > 1e-3, f"{name}/{case['name']}: bad scale"

    meta = {
        "model": name,
        "model_dir": f"models/{name}",
        "class": type(reloaded).__name__,
        "output": spec["output"],
        "generated_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "attn_implementation": "eager", "device": "cpu", "dtype": "float32"},
        "notes": spec["notes"],
        "cases": cases,
    }
    (ref_dir / "cases.json").write_text(to_json(meta))
    return model, model_dir


def make_loader_variants(model_dir, out):
    """dpt-vit-sharded: same weights, sharded safetensors with an index; dpt-vit-bin-only: only a
    pytorch_model.bin (torch.save of the same state dict, same key names) + config.json."""
    model = DPTForDepthEstimation.from_pretrained(model_dir)
    sharded = out / "models" / "dpt-vit-sharded"
    if sharded.exists():
        shutil.rmtree(sharded)
    model.save_pretrained(sharded, max_shard_size="200KB")
    shutil.copy(model_dir / "preprocessor_config.json", sharded / "preprocessor_config.json")
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert (sharded / "model.safetensors.index.json").exists() and len(shards) >= 2, shards
    merged = {}
    for s in shards:
        merged.update(load_file(sharded / s))
    single = load_file(model_dir / "model.safetensors")
    assert merged.keys() == single.keys() and all(torch.equal(merged[k], single[k]) for k in single)
    print(f"  dpt-vit-sharded: {len(shards)} shards + index")

    bin_only = out / "models" / "dpt-vit-bin-only"
    if bin_only.exists():
        shutil.rmtree(bin_only)
    bin_only.mkdir(parents=True)
    shutil.copy(model_dir / "config.json", bin_only / "config.json")
    torch.save(dict(sorted(single.items())), bin_only / "pytorch_model.bin")
    print("  dpt-vit-bin-only: pytorch_model.bin + config.json")


def pin_serialization_id(path, seed):
    """torch.jit.save writes a random `.data/serialization_id` record; overwrite it in place (same
    length, stored uncompressed) with a seeded value and fix the CRCs, so model.pt is reproducible."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/.data/serialization_id"))
    assert info.compress_type == zipfile.ZIP_STORED
    name = info.filename.encode()
    off = info.header_offset
    assert data[off:off + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack_from("<HH", data, off + 26)
    start = off + 30 + name_len + extra_len
    new = str(seed).rjust(info.file_size, "0")[-info.file_size:].encode()
    data[start:start + info.file_size] = new
    crc = zlib.crc32(new)
    struct.pack_into("<I", data, off + 14, crc)
    if info.flag_bits & 0x08:  # data descriptor after the data
        dd = start + info.file_size
        dd += 4 if data[dd:dd + 4] == b"PK\x07\x08" else 0
        struct.pack_into("<I", data, dd, crc)
    cd = data.find(b"PK\x01\x02", start)
    while cd >= 0:
        n_len = struct.unpack_from("<H", data, cd + 28)[0]
        if data[cd + 46:cd + 46 + n_len] == name:
            struct.pack_into("<I", data, cd + 16, crc)
            break
        cd = data.find(b"PK\x01\x02", cd + 4)
    else:
        raise ValueError("central directory entry for serialization_id not found")
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None


def make_torchscript(out):
    name = "torchscript-depth"
    torch.manual_seed(seed_of(name, "init"))
    net = TinyDepthNet().eval()
    randomize(net, seed_of(name, "weights"))
    cases = [
        dict(name="native", shape=[1, 3, 32, 32]),
        dict(name="non_square", shape=[1, 3, 32, 48]),
        dict(name="batch2", shape=[2, 3, 32, 32]),
    ]
    calibrate_final_relu(net, net.conv3, case_input(name, cases[0]))
    scripted = torch.jit.script(net)
    model_dir = out / "models" / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    scripted.save(str(model_dir / "model.pt"))
    pin_serialization_id(model_dir / "model.pt", seed_of(name, "serialization_id"))
    loaded = torch.jit.load(str(model_dir / "model.pt"))
    ref_dir = out / "reference" / name
    if ref_dir.exists():
        shutil.rmtree(ref_dir)
    ref_dir.mkdir(parents=True)
    entries = []
    for case in cases:
        x = case_input(name, case)
        with torch.no_grad():
            y = net(x).contiguous()
            assert torch.equal(y, loaded(x)), "scripted module differs from eager"
        save_file({"pixel_values": x, "predicted_depth": y}, ref_dir / f"{case['name']}.safetensors")
        s = stats(y)
        entries.append({"name": case["name"], "file": f"{case['name']}.safetensors", "pixel_values": list(x.shape),
                        "output": "predicted_depth", "output_shape": list(y.shape), "forward_kwargs": {},
                        "transformers_forward": False, "output_stats": s})
        print(f"  {name}/{case['name']:<11} in {list(x.shape)} -> predicted_depth {list(y.shape)} "
              f"min {s['min']:.4f} max {s['max']:.4f} std {s['std']:.4f} zeros {s['zero_fraction']:.3f}")
        assert s["zero_fraction"] < 0.5
    meta = {
        "model": name,
        "model_dir": f"models/{name}",
        "class": "torch.jit.ScriptModule (TinyDepthNet in tools/make_fixtures.py, torch.jit.script)",
        "output": "predicted_depth",
        "generated_with": {"torch": torch.__version__, "device": "cpu", "dtype": "float32"},
        "notes": ["model.pt maps pixel_values [B,3,H,W] (H, W even) to depth [B,H,W]: conv3x3/2+ReLU, conv3x3+ReLU, "
                  "bilinear resize to (H,W) (align_corners=False), conv1x1 + ReLU, squeeze(1). Scripted, so any size works."],
        "cases": entries,
    }
    (ref_dir / "cases.json").write_text(to_json(meta))


# --------------------------------------------------------------------------------------------
# image processors and post-processing (--processors)
# --------------------------------------------------------------------------------------------
def processor_images():
    """Deterministic uint8 RGB test images [H, W, 3], all non-square: crops of scikit-image's bundled
    photos (real texture and edges), a scaled-down photo, and a synthetic high-frequency pattern
    (colour zone plate + 1-px checkerboard) that punishes any resampling mismatch."""
    import numpy as np
    from PIL import Image
    from skimage import data

    coffee = np.array(Image.fromarray(data.coffee()).reduce(3))  # 400x600 -> 133x200, box filter
    astronaut = data.astronaut()[20:200, 140:290]  # 180x150 portrait crop
    page = data.page()[:120, :190]  # grayscale text
    page = np.stack([page] * 3, axis=-1)
    small = data.astronaut()[200:236, 220:247]  # 36x27: enlarged by every processor

    h, w = 97, 131
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r2 = (y - h / 2) ** 2 + (x - w / 2) ** 2
    pattern = np.stack([127.5 + 127.5 * np.cos(0.02 * r2 + phase) for phase in (0.0, 2.1, 4.2)], axis=-1)
    checker = ((y.astype(int) + x.astype(int)) % 2 * 255)[..., None]
    pattern[h // 2 :, : w // 3] = checker[h // 2 :, : w // 3]
    pattern = np.clip(np.round(pattern), 0, 255).astype(np.uint8)
    tiny = pattern[:23, 40:71]  # 23x31

    images = dict(coffee=coffee, astronaut=astronaut, page=page, small=small, pattern=pattern, tiny=tiny)
    for name, im in images.items():
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 and im.shape[0] != im.shape[1], name
        images[name] = np.ascontiguousarray(im)
    return images


def processor_specs():
    """name -> (processor, architecture it stands for, what it mirrors). Sizes scaled down from the real
    checkpoints' (384 -> 48, 518 -> 56, 224 -> 48, shortest edge 256 / crop 224 -> 48 / 42)."""
    return {
        "dpt": (DPTImageProcessorPil(size={"height": 48, "width": 48}, resample=BILINEAR, keep_aspect_ratio=False,
                                     ensure_multiple_of=1, do_rescale=True, do_normalize=True, image_mean=HALF,
                                     image_std=HALF, do_pad=False),
                "DPTForDepthEstimation", "Intel/dpt-large, dpt-hybrid-midas, dpt-large-ade: fixed size, bilinear"),
        "dpt_override": (DPTImageProcessorPil(size={"height": 40, "width": 24}, resample=BILINEAR,
                                              keep_aspect_ratio=False, ensure_multiple_of=1, do_rescale=True,
                                              do_normalize=True, image_mean=HALF, image_std=HALF, do_pad=False),
                         "DPTForDepthEstimation", "dpt with the size overridden to 40x24 (visiond input_size)"),
        "depth_anything": (DPTImageProcessorPil(size={"height": 56, "width": 56}, resample=BICUBIC,
                                                keep_aspect_ratio=True, ensure_multiple_of=14, do_rescale=True,
                                                do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                                                do_pad=False),
                           "DepthAnythingForDepthEstimation",
                           "Depth-Anything-V2: keep aspect ratio, multiple of 14, bicubic"),
        "dpt_dinov2": (DPTImageProcessorPil(do_resize=False, do_rescale=False, do_normalize=True,
                                            image_mean=[123.675, 116.28, 103.53], image_std=[58.395, 57.12, 57.375],
                                            do_pad=True, size_divisor=14),
                       "DPTForDepthEstimation", "facebook/dpt-dinov2-*: no resize, mean/std on 0-255, centred zero pad "
                       "to a multiple of 14"),
        "beit": (BeitImageProcessorPil(size={"height": 48, "width": 48}, resample=BILINEAR, do_center_crop=False,
                                       crop_size={"height": 48, "width": 48}, do_rescale=True, do_normalize=True,
                                       image_mean=HALF, image_std=HALF, do_reduce_labels=False),
                 "BeitForImageClassification", "microsoft/dit-*: fixed size, bilinear, no crop"),
        "bit": (BitImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 42, "width": 42},
                                     resample=BICUBIC, do_resize=True, do_center_crop=True, do_rescale=True,
                                     do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                                     do_convert_rgb=True),
                "Dinov2ForImageClassification", "facebook/dinov2-*-imagenet1k: shortest edge, bicubic, centre crop"),
    }


# case name -> (processor spec, image, size_override or None). Shrinking, enlarging and mixed, all non-square.
PROCESSOR_CASES = [
    ("dpt_shrink_photo", "dpt", "coffee", None),
    ("dpt_shrink_pattern", "dpt", "pattern", None),
    ("dpt_enlarge", "dpt", "small", None),
    ("dpt_override_mixed", "dpt_override", "tiny", [40, 24]),
    ("dpt_override_shrink", "dpt_override", "page", [40, 24]),
    ("depth_anything_shrink_photo", "depth_anything", "coffee", None),
    ("depth_anything_shrink_pattern", "depth_anything", "pattern", None),
    ("depth_anything_enlarge", "depth_anything", "small", None),
    ("dpt_dinov2_photo", "dpt_dinov2", "coffee", None),
    ("dpt_dinov2_pattern", "dpt_dinov2", "pattern", None),
    ("beit_shrink_text", "beit", "page", None),
    ("beit_shrink_pattern", "beit", "pattern", None),
    ("beit_enlarge", "beit", "tiny", None),
    ("bit_landscape", "bit", "coffee", None),
    ("bit_portrait", "bit", "astronaut", None),
    ("bit_pattern", "bit", "pattern", None),
    ("bit_enlarge", "bit", "small", None),
]

# Frame sizes whose processed size is recorded per processor: camera sizes, the fixture images, degenerate
# ones, and 112x238, where depth_anything's width lands on 8.5 multiples of 14 (Python rounds half to even).
OUTPUT_SIZE_PROBES = [[1080, 1920], [1920, 1080], [720, 1280], [480, 640], [112, 238], [112, 210], [133, 200],
                      [180, 150], [36, 27], [97, 131], [23, 31], [1, 1], [3, 500]]


def make_processor_fixtures(out):
    """tests/fixtures/processors/: for each case the input image (uint8 [H,W,3]) and the PIL processor's
    pixel_values (f32 [1,3,h,w]); the post-processing references; cases.json describing them."""
    import tempfile

    import numpy as np

    proc_dir = out / "processors"
    if proc_dir.exists():
        shutil.rmtree(proc_dir)
    proc_dir.mkdir(parents=True)
    images = processor_images()
    specs = processor_specs()

    processors = {}
    for name, (proc, arch, mirrors) in specs.items():
        assert type(proc).__name__.endswith("Pil"), "the PIL processors are the reference"
        with tempfile.TemporaryDirectory() as tmp:
            proc.save_pretrained(tmp)  # what a checkpoint folder holds
            config = json.loads((Path(tmp) / "preprocessor_config.json").read_text())
        sizes = []
        for h, w in OUTPUT_SIZE_PROBES:
            try:
                pv = proc(images=np.zeros((h, w, 3), np.uint8), input_data_format="channels_last",
                          return_tensors="pt")["pixel_values"]
            except ValueError as e:  # e.g. a side rounded to 0 multiples: a frame the processor rejects
                sizes.append({"frame": [h, w], "processed": None, "error": str(e).splitlines()[0][:120]})
                continue
            sizes.append({"frame": [h, w], "processed": list(pv.shape[2:])})
        processors[name] = {"class": type(proc).__name__, "architecture": arch, "mirrors": mirrors,
                            "preprocessor_config": config, "output_sizes": sizes}

    cases = []
    for case, spec, image_name, override in PROCESSOR_CASES:
        proc = specs[spec][0]
        image = images[image_name]
        pv = proc(images=image, input_data_format="channels_last", return_tensors="pt")["pixel_values"]
        pv = pv.float().contiguous()
        assert pv.shape[0] == 1
        save_file({"image": torch.from_numpy(image), "pixel_values": pv}, proc_dir / f"{case}.safetensors")
        cases.append({"name": case, "file": f"{case}.safetensors", "processor": spec, "image": image_name,
                      "image_shape": list(image.shape), "size_override": override,
                      "pixel_values_shape": list(pv.shape)})
        print(f"  {case:<30} {spec:<15} {image_name:<9} {list(image.shape)} -> {list(pv.shape)}")

    # Post-processing, on fixture model outputs: depth to a frame size (bicubic, as post_process_depth_estimation)
    # and segmentation logits to a frame size then argmax (post_process_semantic_segmentation).
    from transformers.modeling_outputs import DepthEstimatorOutput, SemanticSegmenterOutput

    dpt = specs["dpt"][0]
    post = []
    for case, source, target in [("depth_enlarge", "depth-anything/non_square", [100, 150]),
                                 ("depth_shrink", "dpt-dinov2/square", [45, 30])]:
        depth = load_file(out / "reference" / f"{source}.safetensors")["predicted_depth"]
        got = dpt.post_process_depth_estimation(DepthEstimatorOutput(predicted_depth=depth),
                                                target_sizes=[tuple(target)])[0]["predicted_depth"]
        assert list(got.shape) == target
        save_file({"predicted_depth": depth.contiguous(), "resized": got.contiguous()}, proc_dir / f"{case}.safetensors")
        post.append({"name": case, "file": f"{case}.safetensors", "kind": "depth", "source": f"reference/{source}",
                     "input_shape": list(depth.shape), "target_size": target,
                     "function": "DPTImageProcessorPil.post_process_depth_estimation"})
    for case, source, target in [("segmentation_enlarge", "dpt-ade/native", [90, 120]),
                                 ("segmentation_shrink", "dpt-ade/larger", [75, 50])]:
        logits = load_file(out / "reference" / f"{source}.safetensors")["logits"]
        seg = dpt.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits),
                                                     target_sizes=[tuple(target)])[0]
        resized = torch.nn.functional.interpolate(logits, size=target, mode="bilinear", align_corners=False)[0]
        top2 = resized.topk(2, dim=0).values
        margin = (top2[0] - top2[1]).min().item()
        save_file({"logits": logits.contiguous(), "segmentation": seg.contiguous()}, proc_dir / f"{case}.safetensors")
        post.append({"name": case, "file": f"{case}.safetensors", "kind": "segmentation", "source": f"reference/{source}",
                     "input_shape": list(logits.shape), "target_size": target,
                     "function": "DPTImageProcessorPil.post_process_semantic_segmentation",
                     "smallest_top2_margin": margin})
        print(f"  {case:<30} {list(logits.shape)} -> {target}, smallest top-2 logit margin {margin:.2e}")

    meta = {
        "generated_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "pillow": __import__("PIL").__version__, "scikit_image": __import__("skimage").__version__},
        "notes": ["pixel_values come from the PIL processor classes (the reference: transformers 5.x may pick a "
                  "torchvision backend for DPTImageProcessor etc. when torchvision is installed).",
                  "preprocessor_config is what save_pretrained writes for that processor; a case with size_override "
                  "is the processor built with that size, to be reproduced from the 48x48 `dpt` config plus the override.",
                  "output_sizes: pixel_values' spatial size for a frame of each probe size (zeros image)."],
        "processors": processors,
        "cases": cases,
        "postprocess": post,
    }
    (proc_dir / "cases.json").write_text(to_json(meta))


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # TorchScript serialises some module attributes in set order: pin string hashing.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures")
    ap.add_argument("--only", nargs="*", help="generate only these fixtures (names as in models/)")
    ap.add_argument("--processors", action="store_true",
                    help="generate tests/fixtures/processors (image processor and post-processing references); "
                         "alone it generates only those, with --only both")
    args = ap.parse_args()
    known = list(SPECS) + ["torchscript-depth"]
    only = args.only or ([] if args.processors else known)
    unknown = set(only) - set(known)
    if unknown:
        sys.exit(f"unknown fixtures {sorted(unknown)}; known: {known}")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in only:
        print(name)
        if name == "torchscript-depth":
            make_torchscript(args.out)
            continue
        _, model_dir = generate(name, SPECS[name], args.out)
        if name == "dpt-vit":
            make_loader_variants(model_dir, args.out)
    if args.processors or not args.only:
        print("processors")
        make_processor_fixtures(args.out)
    for p in args.out.rglob("*"):  # safetensors writes 0600 files
        if p.is_file():
            p.chmod(0o644)


if __name__ == "__main__":
    main()
