"""PyTorch backend (transformers). Imported lazily: serving from ONNX must not need torch."""

from __future__ import annotations

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


class TorchBackend:
    """Runs the Hugging Face model under `torch.inference_mode`, same output names as ONNX."""

    kind = "torch"

    def __init__(self, source: Path | str, task: str, threads: int | None, device: str = "cpu") -> None:
        if threads:
            torch.set_num_threads(threads)
        self.task = task
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
        model_cls = getattr(transformers, _MODEL_CLASSES[task])
        self.model: Any = model_cls.from_pretrained(str(source)).eval().to(self.device)
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
        with torch.inference_mode():
            out = self.model(**feeds)
        return {n: out[n].float().cpu().numpy() for n in self.output_names}
