#!/usr/bin/env python3
"""transformers' half of `visiond bench --model`: the same checkpoint, input size, batch sizes
and dtypes through transformers eager (PyTorch ops one by one, transformers' default attention,
which is SDPA where the architecture has it; no torch.compile), timed the same way, printed as the same JSON lines.

    ~/.cache/visiond/fixtures-venv/bin/python tools/hf_bench.py --model DIR [DIR ...] [--device cpu|cuda]
        [--dtype f32,f16,bf16] [--batch 1,8,32] [--size HxW] [--iters N] [--warmup N]
        [--threads N] [--attn default|sdpa|eager] [--json] [--trace FILE]

Per (dtype, batch): random normal pixel_values on the device, --warmup untimed forwards, then
--iters forwards each timed from the call until the device is idle (torch.cuda.synchronize),
under torch.inference_mode(). ms_p50/ms_p90 by nearest rank, img_per_s = batch / p50. FLOPs
per image from torch.utils.flop_counter on one image (matrix products, convolutions,
attention; 2 per multiply-add), the convention visiond's counter follows (torch's counter
has no formula for the CPU flash-attention kernel, so on the CPU it leaves attention out).

The default input size is what the checkpoint's image processor makes of a 1024x1024 image;
pass --size where the folder has no preprocessor_config.json.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import transformers

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def parse_size(text):
    h, _, w = text.lower().partition("x")
    try:
        size = (int(h), int(w))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not HxW (e.g. 384x384)")
    if min(size) <= 0:
        raise argparse.ArgumentTypeError(f"'{text}': sides must be positive")
    return size


def parse_list(kind):
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        if kind is int:
            values = [int(item) for item in items]
            if not values or min(values) < 1:
                raise argparse.ArgumentTypeError(f"'{text}': batch sizes must be positive")
            return values
        for item in items:
            if item not in DTYPES:
                raise argparse.ArgumentTypeError(f"unknown dtype '{item}': expected f32, f16 or bf16")
        return items

    return parse


def percentile(sorted_values, p):
    """Nearest rank, as visiond's bench."""
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def load(model_dir, dtype, device, attn):
    config = json.loads((Path(model_dir) / "config.json").read_text())
    architecture = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, architecture or "", None)
    if cls is None:
        sys.exit(f"{model_dir}: config.json names no transformers class (architectures: {architecture})")
    # transformers' own choice is SDPA wherever the architecture (or its backbone) has it;
    # Depth-Anything refuses the keyword at its top level.
    kwargs = {} if attn == "default" else {"attn_implementation": attn}
    model = cls.from_pretrained(model_dir, dtype=dtype, **kwargs)
    return model.to(device).eval(), architecture


def default_size(model_dir):
    """What the checkpoint's (PIL) image processor makes of a 1024x1024 image."""
    import numpy as np

    config_file = Path(model_dir) / "preprocessor_config.json"
    if not config_file.is_file():
        sys.exit(f"{model_dir}: no preprocessor_config.json to choose an input size; pass --size HxW")
    name = json.loads(config_file.read_text()).get("image_processor_type", "")
    cls = getattr(transformers, name.removesuffix("Fast") + "Pil", None)
    if cls is None:
        sys.exit(f"{model_dir}: no PIL image processor for {name!r}; pass --size HxW")
    processor = cls.from_pretrained(model_dir)
    image = np.zeros((1024, 1024, 3), dtype=np.uint8)
    shape = processor(images=image, return_tensors="pt")["pixel_values"].shape
    return int(shape[-2]), int(shape[-1])


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model, pixels):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(pixel_values=pixels)
    return counter.get_total_flops()


def time_batches(model, pixels, device, warmup, iters):
    with torch.inference_mode():
        for _ in range(warmup):
            model(pixel_values=pixels)
        synchronize(device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model(pixel_values=pixels)
            synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return percentile(times, 50), percentile(times, 90)


def write_trace(model, pixels, device, path):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities, record_shapes=True) as prof:
        model(pixel_values=pixels)
        synchronize(device)
    prof.export_chrome_trace(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, nargs="+",
                        help="checkpoint folder(s) (config.json + weights), timed one after the other")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", type=parse_list(str), default=["f32"])
    parser.add_argument("--batch", type=parse_list(int), default=[1, 8, 32])
    parser.add_argument("--size", type=parse_size)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--attn", default="default", choices=["default", "sdpa", "eager"],
                        help="attention implementation (default: transformers' choice, SDPA where supported)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--trace", help="Chrome trace of one timed batch of the first dtype and largest "
                        "batch (torch.profiler: operators, and on CUDA the kernels); {model} is replaced "
                        "by the model's folder name")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.json:
        print(f"{'model':<28} {'device':<7} {'dtype':<5} {'batch':>5} {'input':>9} {'ms p50':>9} "
              f"{'ms p90':>9} {'img/s':>10} {'GFLOP/s':>9}")
    for model_dir in args.model:
        bench_model(model_dir, args, device)


def bench_model(model_dir, args, device):
    height, width = args.size or default_size(model_dir)
    name = Path(model_dir).resolve().name
    for dtype in args.dtype:
        model, architecture = load(model_dir, DTYPES[dtype], device, args.attn)
        generator = torch.Generator().manual_seed(0)
        one = torch.randn(1, 3, height, width, generator=generator).to(device, DTYPES[dtype])
        flops = count_flops(model, one)
        for batch in sorted(set(args.batch)):
            pixels = torch.randn(batch, 3, height, width, generator=generator).to(device, DTYPES[dtype])
            p50, p90 = time_batches(model, pixels, device, args.warmup, args.iters)
            if args.trace and dtype == args.dtype[0] and batch == max(args.batch):
                write_trace(model, pixels, device, args.trace.replace("{model}", name))
            result = {
                "tool": "transformers",
                "model": name,
                "architecture": architecture,
                "device": str(device) if device.type != "cuda" else f"cuda:{device.index or 0}",
                "dtype": dtype,
                "batch": batch,
                "height": height,
                "width": width,
                "iters": args.iters,
                "ms_p50": p50,
                "ms_p90": p90,
                "img_per_s": batch * 1e3 / p50,
                "gflop_per_img": flops / 1e9 if flops else None,
                "gflop_per_s": flops / 1e9 * batch * 1e3 / p50 if flops else None,
                "attn": args.attn,
                "threads": torch.get_num_threads(),
            }
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                gflops = f"{result['gflop_per_s']:.1f}" if flops else "-"
                print(f"{name:<28} {result['device']:<7} {dtype:<5} {batch:>5} {f'{height}x{width}':>9} "
                      f"{p50:>9.2f} {p90:>9.2f} {result['img_per_s']:>10.1f} {gflops:>9}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
