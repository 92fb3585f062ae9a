"""Side-by-side model benchmark, transformers half: builds checkpoints of the published
architectures with random weights (real shapes), saves them for visiond, and times the
transformers forward on this machine.

    ~/.cache/visiond/fixtures-venv/bin/python tools/bench_models.py --out /tmp/visiond-bench [--iters 10]
    cargo bench --bench models -- --dir /tmp/visiond-bench [--iters 10]

Same inputs (random normal pixel_values, seed 0), same batch sizes, f32, eager attention,
torch.no_grad, the machine's default thread count. Prints median ms per batch and images/s.
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
)


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
    "dit-base": dit_base,
    "dinov2-small-imagenet1k": dinov2_small_classifier,
    "depth-anything-v2-small": depth_anything_small,
    "dpt-hybrid-midas": dpt_hybrid,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    print(f"transformers, f32, eager, {torch.get_num_threads()} threads, median of {args.iters}")
    results = {}
    for name, make in MODELS.items():
        if args.only and name not in args.only:
            continue
        model, size = make()
        model.config._attn_implementation = "eager"
        model.eval()
        target = args.out / name
        if not (target / "model.safetensors").exists():
            model.save_pretrained(target)
        (target / "bench.json").write_text(json.dumps({"size": size, "batches": batches}))
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
    (args.out / "transformers.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
