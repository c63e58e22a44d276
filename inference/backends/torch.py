"""PyTorch backend (transformers). Imported lazily: serving from ONNX must not need torch."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from inference.backends import OUTPUT_NAMES

_MODEL_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "qa": "AutoModelForQuestionAnswering",
    "embedding": "AutoModel",
}
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def linear_weights_to(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast every Linear layer's weights to `dtype` in place, once.

    Why: under autocast a bf16 matmul casts its fp32 weight on every call; with the weights
    already bf16 the same call skips that copy and gives the same numbers, while the embeddings,
    LayerNorms and residual stream stay fp32 as autocast keeps them. Training's no-grad passes
    use it too (training.modeling.inference_copy)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(dtype)
    return model


class TorchBackend:
    """Runs the Hugging Face model under `torch.inference_mode`, same output names as ONNX;
    with `bf16`, its Linear layers in bfloat16 under autocast (kind `torch-bf16`)."""

    def __init__(
        self, source: Path | str, task: str, threads: int | None, device: str = "cpu", bf16: bool = False
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.task = task
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
        model_cls = getattr(transformers, _MODEL_CLASSES[task])
        self.model: Any = model_cls.from_pretrained(str(source)).eval().to(self.device)
        self.kind = "torch-bf16" if bf16 else "torch"
        self.bf16 = bf16
        if bf16:
            linear_weights_to(self.model, torch.bfloat16)
        params = inspect.signature(self.model.forward).parameters
        self.input_names: tuple[str, ...] = tuple(n for n in _INPUTS if n in params)
        self.output_names = OUTPUT_NAMES[task]

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed only the inputs the architecture takes; return float32 numpy."""
        feeds = {
            n: torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=np.int64)).to(self.device)
            for n in self.input_names
            if n in inputs
        }
        precision = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                     else contextlib.nullcontext())
        with torch.inference_mode(), precision:
            out = self.model(**feeds)
        return {n: out[n].float().cpu().numpy() for n in self.output_names}
