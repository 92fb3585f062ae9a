#!/usr/bin/env python3
"""Export a transformers depth / segmentation / classification model to TorchScript (model.pt).

    ~/.cache/visiond/fixtures-venv/bin/python tools/export_torchscript.py MODEL --size 384x384 -o model.pt \
        [--check-size 480x640] [--device cpu|cuda] [--fp16]

MODEL is a local directory (config.json + weights) or a hub id (needs network). The exported module
takes pixel_values [B,3,H,W] (already pre-processed as the model's image processor would) and returns
the main output tensor only: predicted_depth [B,H',W'] for *ForDepthEstimation, logits otherwise.

It uses torch.jit.trace on a wrapper, so Python control flow and Python-int sizes are frozen at the
example size: export at the size visiond will feed. With transformers 5.17, DINOv2/BEiT classifiers
trace size-generic (they always interpolate position embeddings while tracing); DPT traces are only
valid where the fusion "resize residual if shapes differ" branches go the same way as at the example
size, and Depth-Anything's head resize target is frozen (output stays the example size). DPT-hybrid
only accepts its configured size anyway. --check-size runs the traced and the eager model on another
size and reports whether the trace generalises. The example size itself is always checked against
eager and the script fails if they differ.
"""

import argparse
import warnings

import torch
import transformers
from torch import nn


class MainOutput(nn.Module):
    def __init__(self, model, key):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=pixel_values), self.key)


def first_line(e):
    lines = [l for l in str(e).splitlines() if l.strip()]
    return lines[-1] if lines else ""


def parse_size(s):
    h, w = (int(v) for v in s.lower().split("x"))
    return h, w


def load(model_id, device, dtype):
    config = transformers.AutoConfig.from_pretrained(model_id)
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise SystemExit(f"{model_id}: config.json names no known architecture ({arch!r})")
    model = cls.from_pretrained(model_id, attn_implementation="eager", dtype=dtype).to(device).eval()
    key = "predicted_depth" if arch.endswith("ForDepthEstimation") else "logits"
    return model, key


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model directory or hub id")
    ap.add_argument("--size", required=True, type=parse_size, help="example input HxW, e.g. 384x384")
    ap.add_argument("-o", "--out", default="model.pt")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--check-size", type=parse_size, help="another HxW to compare traced vs eager on")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true", help="trace in float16 (GPU)")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # --check-size is the real test
    transformers.logging.disable_progress_bar()

    dtype = torch.float16 if args.fp16 else torch.float32
    model, key = load(args.model, args.device, dtype)
    wrapper = MainOutput(model, key).eval()
    h, w = args.size
    example = torch.randn(args.batch, 3, h, w, device=args.device, dtype=dtype)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example, strict=False, check_trace=False)
        traced = torch.jit.freeze(traced) if args.device == "cpu" else traced
        eager_out, traced_out = wrapper(example), traced(example)
    tol = 1e-2 if args.fp16 else 1e-4
    diff = (eager_out - traced_out).abs().max().item()
    print(f"{key} {list(traced_out.shape)} at {h}x{w}: traced vs eager max |diff| {diff:.3g}")
    if diff > tol * max(1.0, eager_out.abs().max().item()):
        raise SystemExit("traced module does not reproduce the eager model at the example size")
    traced.save(args.out)
    print(f"wrote {args.out}")

    if args.check_size:
        ch, cw = args.check_size
        x = torch.randn(args.batch, 3, ch, cw, device=args.device, dtype=dtype)
        with torch.no_grad():
            try:
                ref = wrapper(x)
            except Exception as e:  # noqa: BLE001
                print(f"eager model rejects {ch}x{cw}: {type(e).__name__}: {first_line(e)}")
                return
            try:
                got = torch.jit.load(args.out, map_location=args.device)(x)
            except Exception as e:  # noqa: BLE001
                print(f"traced module fails at {ch}x{cw} (specialised to the example size): {type(e).__name__}: "
                      f"{first_line(e)}")
                return
        if got.shape != ref.shape:
            print(f"traced module at {ch}x{cw}: shape {list(got.shape)} != eager {list(ref.shape)}: size-specialised")
            return
        d = (got - ref).abs().max().item()
        ok = d <= tol * max(1.0, ref.abs().max().item())
        print(f"{ch}x{cw}: traced vs eager max |diff| {d:.3g} -> {'generalises' if ok else 'DOES NOT generalise'}")


if __name__ == "__main__":
    main()
