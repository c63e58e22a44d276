"""One inference interface for every runtime, so that routes, the batcher and training's
`evaluate` never care whether numbers come from PyTorch or ONNX Runtime.

torch is imported only inside `app.backends.torch`, and only when a torch backend is asked
for: the ONNX serving path must run on a machine without torch. The same two ONNX files also run
on OpenVINO (`openvino`, `openvino-int8`; the optional `openvino` extra), imported only when asked
for: on AVX512 CPUs it runs the block-wise int8 files 1.1-1.7x faster than ONNX Runtime does,
and `openvino-bf16` computes the fp32 file in bfloat16 on CPUs with bf16 units (README, "OpenVINO").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

TASKS: tuple[str, ...] = ("classification", "qa", "embedding")
KINDS: tuple[str, ...] = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8", "openvino-bf16")
TORCH_KINDS: tuple[str, ...] = ("torch", "torch-bf16")
ONNX_FILES: dict[str, str] = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
# OpenVINO kinds run the ONNX Runtime kind's file: the same numbers of the same file, another engine
# (`openvino-bf16`: the fp32 file computed in bfloat16, where the CPU has bf16 units)
OPENVINO_KINDS: dict[str, str] = {"openvino": "onnx", "openvino-int8": "onnx-int8", "openvino-bf16": "onnx"}
# an int8 kind's fp32 partner on the same engine: where the int8 guard reads near ties again
FP32_OF: dict[str, str] = {"onnx-int8": "onnx", "openvino-int8": "openvino"}
# where the int8 file's manifest entry keeps each engine's guard calibration (training.int8_guard)
GUARD_KEYS: dict[str, str] = {"onnx-int8": "guard", "openvino-int8": "guard_openvino"}
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
    if openvino_installed():
        kinds += [k for k, onnx_kind in OPENVINO_KINDS.items() if onnx_kind in kinds]
    return kinds


def openvino_installed() -> bool:
    """Whether the `[openvino]` extra is installed (found, not imported: importing it takes time)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except ValueError:  # sys.modules["openvino"] is None: made unimportable
        return False


def model_input(inputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The int64 array an ONNX graph's input `name` is fed; token_type_ids default to zeros
    (a caller without segments gives none)."""
    if name in inputs:
        return np.ascontiguousarray(inputs[name], dtype=np.int64)
    if name == "token_type_ids":
        return np.zeros_like(np.asarray(inputs["input_ids"], dtype=np.int64))
    raise KeyError(f"model input {name!r} was not provided")


def required_outputs(path: Path, task: str, declared: set[str]) -> list[str]:
    """The outputs `task` needs (`OUTPUT_NAMES`), in order; a graph that lacks one is refused at load."""
    missing = [n for n in OUTPUT_NAMES[task] if n not in declared]
    if missing:
        raise ValueError(f"{path} lacks outputs {missing} required for task {task!r}")
    return list(OUTPUT_NAMES[task])


def onnx_file(kind: str) -> str:
    """The ONNX file an ONNX Runtime or OpenVINO kind runs (`model.onnx`, `model.int8.onnx`)."""
    return ONNX_FILES[OPENVINO_KINDS.get(kind, kind)]


def load_backend(
    model_dir: Path | str,
    task: str,
    kind: str,
    threads: int | None = None,
    graph_optimization: str = "all",
    spinning: bool = False,
    device: str = "cpu",
    torch_thread: bool = False,
    cache_dir: Path | None = None,
    openvino_group: int | None = None,
) -> Backend:
    """Load `model_dir` for `task` on runtime `kind`.

    `model_dir` may also be a Hugging Face hub id for the torch backend (downloaded by
    transformers). `threads` sets intra-op threads (None: the runtime's default);
    `graph_optimization` and `spinning` (ORT thread spin-waiting) apply to ONNX Runtime only;
    `cache_dir` to OpenVINO only (its compiled models, so that a later start imports them);
    `openvino_group` to `openvino-int8` only (activations per scale; None: the group its guard
    was calibrated with, `inference.backends.openvino.recorded_group`, else OpenVINO's default);
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
    if kind in ONNX_FILES or kind in OPENVINO_KINDS:
        path = Path(model_dir) / onnx_file(kind)
        if not path.is_file():
            raise BackendUnavailable(f"{path} does not exist; backend {kind!r} cannot be served")
        if kind in OPENVINO_KINDS:
            from inference.backends.openvino import OpenVinoBackend

            return OpenVinoBackend(path, task, kind, threads, cache_dir, openvino_group)
        from inference.backends.onnx import OnnxBackend

        return OnnxBackend(path, task, kind, threads, graph_optimization, spinning)
    raise ValueError(f"unknown backend {kind!r}; expected one of {KINDS}")


__all__ = [
    "Backend",
    "BackendUnavailable",
    "FP32_OF",
    "GRAPH_OPTIMIZATIONS",
    "GUARD_KEYS",
    "KINDS",
    "ONNX_FILES",
    "OPENVINO_KINDS",
    "OUTPUT_NAMES",
    "TASKS",
    "TORCH_KINDS",
    "available_kinds",
    "load_backend",
    "model_input",
    "onnx_file",
    "openvino_installed",
    "required_outputs",
]
