"""Baseline for `cargo bench --bench processing`: the transformers 5.17 PIL image processors
on one random 1920x1080 RGB frame, median milliseconds per frame, on this machine's CPU.

    tools/fixtures-venv
    ~/.cache/visiond/fixtures-venv/bin/python tools/bench_processors.py [--iters 20]

Settings are the published checkpoints' (Intel/dpt-large, microsoft/dit-base-finetuned-rvlcdip,
facebook/dinov2-small-imagenet1k-1-layer, depth-anything/Depth-Anything-V2-Small-hf).
"""
import argparse
import statistics
import time

import numpy as np
import torch
from transformers import BeitImageProcessorPil, BitImageProcessorPil, DPTImageProcessorPil

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

PROCESSORS = {
    "DPT (dpt-large, 384x384 bilinear)": DPTImageProcessorPil(
        size={"height": 384, "width": 384}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ),
    "Depth-Anything (518, keep aspect, x14, bicubic)": DPTImageProcessorPil(
        size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resample=3, image_mean=IMAGENET[0], image_std=IMAGENET[1],
    ),
    "BEiT (DiT, 224x224 bilinear)": BeitImageProcessorPil(
        size={"height": 224, "width": 224}, resample=2, do_center_crop=False,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    ),
    "BiT (DINOv2, shortest 256 bicubic, crop 224)": BitImageProcessorPil(
        size={"shortest_edge": 256}, resample=3, crop_size={"height": 224, "width": 224},
        image_mean=IMAGENET[0], image_std=IMAGENET[1],
    ),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    print(f"transformers PIL processors, 1920x1080 frame, median of {args.iters}, {torch.get_num_threads()} threads")
    for name, processor in PROCESSORS.items():
        times = []
        for _ in range(args.iters + 2):
            start = time.perf_counter()
            out = processor(images=frame, return_tensors="pt")
            times.append((time.perf_counter() - start) * 1e3)
        shape = tuple(out["pixel_values"].shape)
        print(f"  {name:48s} {statistics.median(times[2:]):7.2f} ms/frame  -> {shape}")


if __name__ == "__main__":
    main()
