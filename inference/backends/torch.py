"""PyTorch backend (transformers). Imported lazily: serving from ONNX must not need torch."""

from __future__ import annotations

import contextlib
import functools
import inspect
from concurrent.futures import ThreadPoolExecutor
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


# bf16 on CPU: a model call's padded tokens at most (whole rows, at least one). On the 2-core
# AMX Xeon (2026-12-06) the 6-layer QA student's cost per row was least at about 512 tokens a
# call at every length: 16 rows of 384 tokens 159 -> 86 ms a row, of 256 tokens 81 -> 48, 32 rows
# of 128 tokens 25 -> 17; past that the activations outgrow the core's cache. torch fp32 gained
# on long rows and lost on short ones (18 x 256 tokens 2,248 -> 1,828 ms at 512; 32 x 64 tokens
# 709 -> 758) and ONNX Runtime at most 12%, so only bf16 slices.
BF16_CPU_CALL_TOKENS = 512

@functools.cache
def one_thread() -> ThreadPoolExecutor:
    """The process's one thread for torch CPU work (created on first use).

    Why: every thread that runs a torch CPU op gets its own OpenMP team, and once the teams hold
    more threads than there are cores, GNU OpenMP stops spin-waiting between parallel regions. On
    2 cores, the QA student's 18 windows called one at a time from the batcher's thread took
    1,176 ms after the model had been loaded and warmed on the main thread, against 803 ms when
    one thread did everything. A server that loads on one thread and computes on others (several
    torch models, a worker each) loses that much on every call; running all of it on this thread
    keeps one team. Training does not use it: its loops run on the main thread."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-cpu")


class TorchBackend:
    """Runs the Hugging Face model under `torch.inference_mode`, same output names as ONNX;
    with `bf16`, its Linear layers in bfloat16 under autocast (kind `torch-bf16`); with
    `shared_thread` on CPU, loading and every call run on `one_thread()` (the service's choice)."""

    def __init__(
        self, source: Path | str, task: str, threads: int | None, device: str = "cpu", bf16: bool = False,
        shared_thread: bool = False,
    ) -> None:
        self.task = task
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
        self.kind = "torch-bf16" if bf16 else "torch"
        self.bf16 = bf16
        on_cpu = self.device.type == "cpu"
        self.runner = one_thread() if shared_thread and on_cpu else None
        self.call_tokens = BF16_CPU_CALL_TOKENS if bf16 and on_cpu else None  # None: one call a batch
        self.model: Any = self._run(self._load, source, threads)
        params = inspect.signature(self.model.forward).parameters
        self.input_names: tuple[str, ...] = tuple(n for n in _INPUTS if n in params)
        self.output_names = OUTPUT_NAMES[task]

    def _run(self, function: Any, *args: Any) -> Any:
        return function(*args) if self.runner is None else self.runner.submit(function, *args).result()

    def _load(self, source: Path | str, threads: int | None) -> Any:
        if threads:
            torch.set_num_threads(threads)
        model = getattr(transformers, _MODEL_CLASSES[self.task]).from_pretrained(str(source)).eval().to(self.device)
        return linear_weights_to(model, torch.bfloat16) if self.bf16 else model

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """On the shared thread when there is one (see `one_thread`)."""
        result: dict[str, np.ndarray] = self._run(self._sliced, inputs)
        return result

    def _sliced(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """bf16 on CPU: the batch in slices of at most `call_tokens` padded tokens."""
        rows, width = np.shape(inputs["input_ids"])
        step = rows if self.call_tokens is None else max(1, self.call_tokens // max(1, width))
        if step >= rows:
            return self._forward(inputs)
        parts = [self._forward({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, rows, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
