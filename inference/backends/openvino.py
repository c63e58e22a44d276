"""OpenVINO backend: the same ONNX files as ONNX Runtime, on Intel's CPU runtime.

Why a second engine for the same files: OpenVINO reads ONNX Runtime's MatMulNBits block-wise
int8 nodes and runs them on int8 dot products with activations quantised in small groups, which
on a 2-core AVX512-VNNI EPYC (2026-12-07) ran the SST-2 quick student's int8 file at 2.08x the
fp32 file against ONNX Runtime's 1.25x, and the QA student's (18 windows of 256 tokens) at 2.59x
against 2.02x (README, "OpenVINO"). The precision hint is pinned to f32: on a CPU with bf16 units
OpenVINO would otherwise compute in bf16 by default, and `openvino` must give the fp32 file's
numbers; `openvino-bf16` asks for bf16 by name (on that EPYC 1.6-2.5x the fp32 file's speed, mean
cosine of its outputs to fp32's 0.99997 and more). Imported only when an OpenVINO kind is asked for.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends import GUARD_KEYS, BackendUnavailable, model_input, required_outputs
from inference.modelfolder import int8_entry, read_json

try:
    import openvino as ov
except ImportError as exc:  # the optional extra is not installed
    raise BackendUnavailable("the openvino backends need OpenVINO: pip install 'distilserve[openvino]'") from exc

log = logging.getLogger("distilserve")


def compile_config(kind: str, threads: int | None, group: int | None = None) -> dict[str, Any]:
    """One stream (one call at a time per compiled model, as the batcher feeds it), latency-first;
    fp32 arithmetic outside the int8 MatMuls, bf16 for `openvino-bf16`; `threads` cores per call
    (None: every usable core); `group`: how many activations of an int8 MatMul's input share
    one scale (None: OpenVINO's default, 32 in 2026.4)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                              "INFERENCE_PRECISION_HINT": "bf16" if kind == "openvino-bf16" else "f32",
                              "INFERENCE_NUM_THREADS": threads or len(os.sched_getaffinity(0))}
    if group is not None:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = group
    return config


def recorded_group(path: Path) -> int | None:
    """The activation group size that `python -m training guard --backend openvino-int8` chose
    for this int8 file (manifest `onnx.model.int8.onnx.guard_openvino.group_size`), so that the
    file is served with the arithmetic its guard was calibrated on; None when not recorded."""
    try:
        guard = int8_entry(read_json(path.parent / "manifest.json")).get(GUARD_KEYS["openvino-int8"])
    except (OSError, ValueError):  # an unreadable manifest: OpenVINO's default
        return None
    group = guard.get("group_size") if isinstance(guard, dict) else None
    return group if isinstance(group, int) and group > 0 else None


class OpenVinoBackend:
    """Runs `model.onnx` / `model.int8.onnx` on OpenVINO's CPU plugin; feeds only the inputs the
    graph declares. Each calling thread gets its own infer request (a request is not thread-safe)."""

    def __init__(self, path: Path, task: str, kind: str, threads: int | None, cache_dir: Path | None = None,
                 group: int | None = None) -> None:
        self.kind, self.task, self.path = kind, task, path
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        if kind == "openvino-int8" and group is None:
            group = recorded_group(path)
        self.group = group
        self.compiled = core.compile_model(str(path), "CPU", compile_config(kind, threads, group))
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if kind == "openvino-bf16" and "bf" not in self.precision:
            log.warning("%s: this CPU has no bf16 units; openvino-bf16 computes in %s", path, self.precision)
        self.input_names: tuple[str, ...] = tuple(i.get_any_name() for i in self.compiled.inputs)
        declared = {o.get_any_name(): o for o in self.compiled.outputs}
        self._outputs = [declared[n] for n in required_outputs(path, task, set(declared))]
        self._local = threading.local()

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference on this thread's request."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        feeds = {name: model_input(inputs, name) for name in self.input_names}
        results = request.infer(feeds)
        return {o.get_any_name(): np.array(results[o], dtype=np.float32) for o in self._outputs}

