#!/usr/bin/env python3
"""Write a Triton model repository entry for a Hugging Face vision checkpoint, ready for
visiond's served models (`models.NAME.remote`).

    python tools/export_triton.py MODEL --repository REPO --name NAME [--version 1]
        [--format torchscript|onnx] [--size HxW] [--input float|uint8] [--fp16]
        [--max-batch 8] [--device cpu|cuda]

MODEL is a checkpoint folder (config.json, preprocessor_config.json, weights) or a hub id.
It writes REPO/NAME/config.pbtxt and REPO/NAME/VERSION/model.pt (TorchScript, Triton's
`pytorch_libtorch` backend) or model.onnx (`onnxruntime_onnx`; needs the `onnx` package), and
prints the `models:` entry for visiond's daemon file.

The served model takes `pixel_values` [B, 3, H, W] and returns the checkpoint's main output
(`predicted_depth` [B, H', W'] or `logits`), with dynamic batching up to --max-batch:

- `--input float` (default): pixel_values as visiond's image processor makes them, FP32 or
  (with --fp16) FP16, the model's own precision;
- `--input uint8`: the resized image as UINT8 (a quarter of FP32's bytes on the network); the
  served model does the processor's last steps itself (rescale, normalise, pad to a multiple),
  read from the checkpoint's preprocessor_config.json. visiond then sends `input: uint8`.

A trace is specialised to --size (the size visiond's processor makes for this checkpoint, e.g.
384x384 for DPT-hybrid): export at that size. Triton's PyTorch backend names outputs
`<name>__<index>`, so the TorchScript output is `predicted_depth__0` (or `logits__0`): the
printed entry sets remote.output_name accordingly.
"""

import argparse
import json
import os

import torch
import transformers
from torch import nn


class Served(nn.Module):
    """The checkpoint's main output from pixel_values, with the processor's last steps first
    when the input is the uint8 image."""

    def __init__(self, model, key, dtype, processor, uint8):
        super().__init__()
        self.model = model
        self.key = key
        self.dtype = dtype
        self.uint8 = uint8
        rescale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
        normalize = processor.get("do_normalize", True)
        mean = processor.get("image_mean", [0.0] * 3) if normalize else [0.0] * 3
        std = processor.get("image_std", [1.0] * 3) if normalize else [1.0] * 3
        self.rescale = float(rescale)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.pad = int(processor.get("size_divisor") or 0) if processor.get("do_pad") else 0

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values
        if self.uint8:
            # In f32 as visiond's processor does, whatever the model's precision.
            x = (x.float() * self.rescale - self.mean) / self.std
            if self.pad > 0:
                h, w = x.shape[-2], x.shape[-1]
                ph, pw = (-h) % self.pad, (-w) % self.pad
                x = nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return getattr(self.model(pixel_values=x.to(self.dtype)), self.key)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--repository", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default="1")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--size", help="HxW the processor makes (default: config image_size)")
    parser.add_argument("--input", choices=["float", "uint8"], default="float")
    parser.add_argument("--fp16", action="store_true", help="weights and float input in FP16")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    config = transformers.AutoConfig.from_pretrained(args.model)
    architecture = config.architectures[0]
    model = getattr(transformers, architecture).from_pretrained(args.model, attn_implementation="eager").eval()
    dtype = torch.float16 if args.fp16 else torch.float32
    model = model.to(args.device, dtype)
    key = "predicted_depth" if "DepthEstimation" in architecture else "logits"
    processor = {}
    try:
        path = transformers.utils.cached_file(args.model, "preprocessor_config.json")
        with open(path) as f:
            processor = json.load(f)
    except Exception as error:  # noqa: BLE001 - any miss means defaults
        if args.input == "uint8":
            raise SystemExit(f"--input uint8 needs the checkpoint's preprocessor_config.json: {error}")
    if args.size:
        height, width = (int(v) for v in args.size.lower().split("x"))
    else:
        side = getattr(config, "image_size", None) or getattr(getattr(config, "backbone_config", None), "image_size", 384)
        height, width = (side, side) if isinstance(side, int) else side
    served = Served(model, key, dtype, processor, args.input == "uint8").to(args.device).eval()
    if args.input == "uint8":
        example = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, device=args.device)
        input_type = "TYPE_UINT8"
    else:
        example = torch.randn(1, 3, height, width, device=args.device).to(dtype)
        input_type = "TYPE_FP16" if args.fp16 else "TYPE_FP32"
    with torch.no_grad():
        reference = served(example)
    output_type = "TYPE_FP16" if reference.dtype == torch.float16 else "TYPE_FP32"
    output_dims = list(reference.shape[1:])

    model_dir = os.path.join(args.repository, args.name)
    version_dir = os.path.join(model_dir, args.version)
    os.makedirs(version_dir, exist_ok=True)
    if args.format == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(served, example, check_trace=False)
            again = traced(example)
        if not torch.allclose(again.float(), reference.float(), atol=1e-4, rtol=1e-4):
            raise SystemExit("the trace does not reproduce the model at the example size")
        traced.save(os.path.join(version_dir, "model.pt"))
        platform, output_name = "pytorch_libtorch", f"{key}__0"
    else:
        output_name = key
        torch.onnx.export(
            served, (example,), os.path.join(version_dir, "model.onnx"),
            input_names=["pixel_values"], output_names=[output_name],
            dynamic_axes={"pixel_values": {0: "batch"}, output_name: {0: "batch"}},
            opset_version=17, dynamo=False,
        )
        platform = "onnxruntime_onnx"
    kind = "KIND_GPU" if args.device.startswith("cuda") else "KIND_CPU"
    dims = lambda values: ", ".join(str(v) for v in values)  # noqa: E731
    pbtxt = f"""name: "{args.name}"
platform: "{platform}"
max_batch_size: {args.max_batch}
input [
  {{ name: "pixel_values", data_type: {input_type}, dims: [ {dims([3, height, width])} ] }}
]
output [
  {{ name: "{output_name}", data_type: {output_type}, dims: [ {dims(output_dims)} ] }}
]
# visiond batches frames itself; Triton merges the batches of several boxes.
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
instance_group [ {{ count: 1, kind: {kind} }} ]
"""
    with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
        f.write(pbtxt)
    remote = f'url: "grpc://TRITON:8001", model: {args.name}, version: "{args.version}"'
    if args.input == "uint8":
        remote += ", input: uint8"
    if output_name != key:
        remote += f", output_name: {output_name}"
    print(f"wrote {model_dir} ({platform}, {args.input} input, {'FP16' if args.fp16 else 'FP32'})")
    print("visiond daemon file:")
    print("models:")
    print(f"  {args.name}:")
    print(f"    remote: {{ {remote} }}")
    print(f"    processor: {{ path: {args.model} }}   # config.json + preprocessor_config.json")
    print(f"    dtype: {'f16' if args.fp16 else 'f32'}")
    print(f"    batch: {{ max_size: {args.max_batch} }}")


if __name__ == "__main__":
    main()
