"""Real-shape checkpoints with random weights of the published models visiond serves, for
benchmarks: built from transformers config objects (no hub access), saved for visiond and
tools/hf_bench.py, and optionally timed here.

    ~/.cache/visiond/fixtures-venv/bin/python tools/bench_models.py --out /tmp/visiond-bench [--iters 10]
    cargo bench --bench models -- --dir /tmp/visiond-bench [--iters 10]

    # only build them (on a GPU box: built on the GPU, saved in f16, a few seconds each):
    python tools/bench_models.py --out /tmp/ckpt --make-only --device cuda --save-dtype f16 \
        [--only dpt-large dit-base ...]

Each folder also gets bench.json with the input size the model is benchmarked at (the size
its published image processor produces). The timing here: same inputs (random normal
pixel_values, seed 0), f32, eager attention, torch.no_grad, median ms per batch and images/s.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    Dinov2ForImageClassification,
    DPTConfig,
    DPTForDepthEstimation,
    DPTForSemanticSegmentation,
)


def dpt_large():
    config = DPTConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        image_size=384, patch_size=16, backbone_out_indices=[5, 11, 17, 23],
        neck_hidden_sizes=[256, 512, 1024, 1024], readout_type="project",
    )
    return DPTForDepthEstimation(config), 384


def dpt_large_ade():
    # Intel/dpt-large-ade: 150 ADE20K classes, BatchNorm in the fusion residuals, an auxiliary
    # head (unused at inference), position grid for 384 run at the processor's 480.
    config = DPTConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        image_size=384, patch_size=16, backbone_out_indices=[5, 11, 17, 23],
        neck_hidden_sizes=[256, 512, 1024, 1024], readout_type="project",
        use_batch_norm_in_fusion_residual=True, use_auxiliary_head=True,
        num_labels=150, semantic_loss_ignore_index=255,
    )
    return DPTForSemanticSegmentation(config), 480


def dit_base():
    config = BeitConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        patch_size=16, image_size=224, layer_scale_init_value=0.1, use_mean_pooling=True,
        use_absolute_position_embeddings=True, use_relative_position_bias=False,
        use_shared_relative_position_bias=False, num_labels=16, layer_norm_eps=1e-12,
    )
    return BeitForImageClassification(config), 224


def dinov2_small_classifier():
    config = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
        image_size=518, layerscale_value=1.0, num_labels=1000,
    )
    return Dinov2ForImageClassification(config), 224


def depth_anything_small():
    backbone = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
        image_size=518, out_features=["stage3", "stage6", "stage9", "stage12"],
        apply_layernorm=True, reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=384, patch_size=14,
        neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
    )
    return DepthAnythingForDepthEstimation(config), 518


def dpt_hybrid():
    config = DPTConfig.from_dict({
        "is_hybrid": True, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "image_size": 384, "patch_size": 16,
        "backbone_out_indices": [2, 5, 8, 11], "readout_type": "project",
        "reassemble_factors": [1, 1, 1, 0.5], "neck_hidden_sizes": [256, 512, 768, 768],
        "backbone_featmap_shape": [1, 1024, 24, 24], "neck_ignore_stages": [0, 1],
        "backbone_config": {
            "global_padding": "same", "layer_type": "bottleneck", "depths": [3, 4, 9],
            "out_features": ["stage1", "stage2", "stage3"], "embedding_dynamic_padding": True,
            "hidden_sizes": [256, 512, 1024, 2048], "num_groups": 32,
        },
    })
    return DPTForDepthEstimation(config), 384


MODELS = {
    "dpt-large": dpt_large,
    "dpt-large-ade": dpt_large_ade,
    "dit-base": dit_base,
    "dinov2-small-imagenet1k": dinov2_small_classifier,
    "depth-anything-v2-small": depth_anything_small,
    "dpt-hybrid-midas": dpt_hybrid,
}


def build(name, device, save_dtype, out):
    """Builds `name` on `device` and saves it under out/name (unless already there)."""
    target = out / name
    with torch.device(device):
        model, size = MODELS[name]()
    model.eval()
    if not (target / "model.safetensors").exists():
        model.to({"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[save_dtype])
        model.save_pretrained(target)
        model.float()
    return model, size, target


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS))
    parser.add_argument("--make-only", action="store_true", help="build and save, do not time")
    parser.add_argument("--device", default="cpu", help="where the random weights are drawn")
    parser.add_argument("--save-dtype", default="f32", choices=["f32", "f16", "bf16"])
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    if not args.make_only:
        print(f"transformers, f32, eager, {torch.get_num_threads()} threads, median of {args.iters}")
    results = {}
    for name in MODELS:
        if args.only and name not in args.only:
            continue
        model, size, target = build(name, args.device, args.save_dtype, args.out)
        (target / "bench.json").write_text(json.dumps({"size": size, "batches": batches}))
        if args.make_only:
            print(f"  {name}: {target} ({size}x{size})", flush=True)
            continue
        model.config._attn_implementation = "eager"
        model.to("cpu")
        for batch in batches:
            pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            times = []
            with torch.no_grad():
                for _ in range(args.iters + 1):
                    start = time.perf_counter()
                    model(pixel_values=pixels)
                    times.append((time.perf_counter() - start) * 1e3)
            ms = statistics.median(times[1:])
            results[f"{name} b{batch}"] = ms
            print(f"  {name:26s} {size}x{size} batch {batch}: {ms:9.1f} ms  {batch * 1e3 / ms:7.2f} img/s")
        del model
    if results:
        (args.out / "transformers.json").write_text(json.dumps(results, indent=1))

if __name__ == "__main__":
    main()
