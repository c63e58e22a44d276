"""ONNX Runtime backend: the production path, importable without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.backends import GRAPH_OPTIMIZATIONS, model_input, required_outputs

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int | None, graph_optimization: str, spinning: bool = False) -> ort.SessionOptions:
    """Intra-op threads from settings; one inter-op thread because the batcher already
    serialises batches per model and extra pools only fight for the same cores. Spin-waiting
    is off by default: idle pool threads spinning between batches took CPU from the event loop
    (server CPU per request roughly halved without it on 2 cores)."""
    if graph_optimization not in _LEVELS:
        raise ValueError(f"graph_optimization {graph_optimization!r} not in {GRAPH_OPTIMIZATIONS}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _LEVELS[graph_optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts


class OnnxBackend:
    """Runs `model.onnx` / `model.int8.onnx`; feeds only the inputs the graph declares."""

    def __init__(
        self, path: Path, task: str, kind: str, threads: int | None, graph_optimization: str,
        spinning: bool = False,
    ) -> None:
        self.kind = kind
        self.task = task
        self.path = path
        self.session = ort.InferenceSession(
            str(path), session_options(threads, graph_optimization, spinning), providers=["CPUExecutionProvider"]
        )
        self.input_names: tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        self.output_names = required_outputs(path, task, {o.name for o in self.session.get_outputs()})

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session.run; token_type_ids default to zeros when the caller has none."""
        feeds = {name: model_input(inputs, name) for name in self.input_names}
        outs = self.session.run(self.output_names, feeds)
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.output_names, outs, strict=False)}
