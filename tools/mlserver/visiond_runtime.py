"""An MLServer custom runtime that serves a Hugging Face vision checkpoint over the Open
Inference Protocol (KServe v2), the way visiond's `remote` models expect it: one input
`pixel_values` [B, 3, H, W] (FP32 or FP16 as processed by visiond, or UINT8 resized images
that this runtime rescales, normalises and pads itself), one output under its transformers
name (`predicted_depth` [B, H', W'] or `logits`).

The tests start MLServer with it on loopback (tests/common/mlserver.rs); it also serves as
an example of the server side for a box without Triton. model-settings.json:

    {"name": "depth", "implementation": "visiond_runtime.VisionModel",
     "parameters": {"uri": "/path/to/checkpoint", "version": "1",
                    "extra": {"input": "float", "delay_ms": 0, "delay_every": 1}},
     "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 64, 64]}],
     "outputs": [{"name": "predicted_depth", "datatype": "FP32", "shape": [-1, 64, 64]}]}

`extra.delay_ms` slows every `delay_every`-th request (by the request's numeric id) down: a
stand-in for an overloaded server.
"""

import asyncio
import json
import os

import numpy as np
import torch
import transformers
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class VisionModel(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = (params.extra if params else None) or {}
        uri = params.uri
        config = transformers.AutoConfig.from_pretrained(uri)
        architecture = config.architectures[0]
        model_class = getattr(transformers, architecture)
        self.model = model_class.from_pretrained(uri, attn_implementation="eager").eval()
        self.input_mode = extra.get("input", "float")
        self.delay_s = float(extra.get("delay_ms", 0)) / 1000.0
        self.delay_every = int(extra.get("delay_every", 1)) or 1
        outputs = self.settings.outputs or []
        self.output_name = outputs[0].name if outputs else (
            "predicted_depth" if "Depth" in architecture else "logits"
        )
        with open(os.path.join(uri, "preprocessor_config.json")) as f:
            processor = json.load(f)
        self.rescale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
        self.mean = torch.tensor(processor.get("image_mean", [0.5] * 3)).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.get("image_std", [0.5] * 3)).view(1, 3, 1, 1)
        self.normalize = processor.get("do_normalize", True)
        self.pad_to = processor.get("size_divisor") if processor.get("do_pad") else None
        return True

    def _pixel_values(self, array: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(array))
        if self.input_mode != "uint8":
            return x.float()
        # What visiond's processor does after the resize, here in the served model.
        x = x.float() * self.rescale
        if self.normalize:
            x = (x - self.mean) / self.std
        if self.pad_to:
            h, w = x.shape[-2:]
            ph, pw = (-h) % self.pad_to, (-w) % self.pad_to
            x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return x

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self.delay_s > 0:
            number = int(payload.id) if payload.id and payload.id.isdigit() else 0
            if number % self.delay_every == 0:
                await asyncio.sleep(self.delay_s)
        array = NumpyCodec.decode_input(payload.inputs[0])
        with torch.no_grad():
            out = self.model(pixel_values=self._pixel_values(array))
        tensor = out.predicted_depth if hasattr(out, "predicted_depth") else out.logits
        output = NumpyCodec.encode_output(self.output_name, tensor.float().numpy())
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=[output])
