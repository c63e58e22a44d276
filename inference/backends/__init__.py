"""One inference interface for every runtime, so that routes, the batcher and training's
`evaluate` never care whether numbers come from PyTorch or ONNX Runtime.

torch is imported only inside `app.backends.torch`, and only when a torch backend is asked
for: the ONNX serving path must run on a machine without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

TASKS: tuple[str, ...] = ("classification", "qa", "embedding")
KINDS: tuple[str, ...] = ("torch", "torch-bf16", "onnx", "onnx-int8")
TORCH_KINDS: tuple[str, ...] = ("torch", "torch-bf16")
ONNX_FILES: dict[str, str] = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
TORCH_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "classification": ("logits",),
    "qa": ("start_logits", "end_logits"),
    "embedding": ("last_hidden_state",),
}
GRAPH_OPTIMIZATIONS: tuple[str, ...] = ("disable", "basic", "extended", "all")


@runtime_checkable
class Backend(Protocol):
    """What every runtime offers: int64 `[batch, seq]` inputs in, float32 outputs out,
    named as models/README.md says (logits | start_logits, end_logits | last_hidden_state)."""

    kind: str
    input_names: tuple[str, ...]

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class BackendUnavailable(RuntimeError):
    """The model folder has no files for the requested backend (or its runtime is missing)."""


def available_kinds(model_dir: Path) -> list[str]:
    """Backends a folder has files for, in `KINDS` order; used to decide what to serve."""
    kinds = []
    if any((model_dir / f).is_file() for f in TORCH_WEIGHT_FILES):
        kinds += list(TORCH_KINDS)
    kinds += [k for k, f in ONNX_FILES.items() if (model_dir / f).is_file()]
    return kinds


def load_backend(
    model_dir: Path | str,
    task: str,
    kind: str,
    threads: int | None = None,
    graph_optimization: str = "all",
    spinning: bool = False,
    device: str = "cpu",
    torch_thread: bool = False,
) -> Backend:
    """Load `model_dir` for `task` on runtime `kind`.

    `model_dir` may also be a Hugging Face hub id for the torch backend (downloaded by
    transformers). `threads` sets intra-op threads (None: the runtime's default);
    `graph_optimization` and `spinning` (ORT thread spin-waiting) apply to ONNX only;
    `device` ("cpu", "cuda", "cuda:1") applies to torch only. `torch-bf16` is the torch model
    with its Linear weights in bfloat16, run under autocast: on the 2-core AMX Xeon 2.0-2.3x
    ONNX Runtime's fp32 speed (README, Benchmarks), at bf16's precision.
    `torch_thread`: on CPU, torch loads and runs on the process's one torch thread (the service
    sets it; see `inference.backends.torch.one_thread`).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if kind in TORCH_KINDS:
        from inference.backends.torch import TorchBackend

        return TorchBackend(model_dir, task, threads, device, bf16=kind == "torch-bf16", shared_thread=torch_thread)
    if kind in ONNX_FILES:
        from inference.backends.onnx import OnnxBackend

        path = Path(model_dir) / ONNX_FILES[kind]
        if not path.is_file():
            raise BackendUnavailable(f"{path} does not exist; backend {kind!r} cannot be served")
        return OnnxBackend(path, task, kind, threads, graph_optimization, spinning)
    raise ValueError(f"unknown backend {kind!r}; expected one of {KINDS}")


__all__ = [
    "Backend",
    "BackendUnavailable",
    "GRAPH_OPTIMIZATIONS",
    "KINDS",
    "ONNX_FILES",
    "OUTPUT_NAMES",
    "TASKS",
    "TORCH_KINDS",
    "available_kinds",
    "load_backend",
]
