"""SmoothQuant's migration of activation outliers into weights, before dynamic int8.

Why: dynamic int8 quantises each MatMul's input with ONE scale for the whole tensor, and a few
channels of a transformer's activations are far larger than the rest (the largest channel of an
FFN-down input measured 15-40x the median one on MiniLM and the MPNet QA student), so most
channels keep only a few of their 256 levels. Dividing input channel j by s_j and multiplying
row j of the weight by s_j leaves the product unchanged and moves that range into the weights,
which are quantised per column. s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) (Xiao et al., 2023),
with max|x_j| measured on calibration batches.

What it does not move: outliers that belong to tokens rather than channels. On the export's 24
parity texts in one padded batch the smoothed file's worst text fell to cosine 0.945 on MiniLM
(plain dynamic 0.978) and 0.926 on all-mpnet-base-v2 (plain dynamic 0.705), under the 0.98 the
export asks, so the scheme is opt-in (`--int8-scheme smooth-dynamic --calibration FILE`).

The division is a `Mul` node in front of the MatMuls that share the input (Q, K and V share one):
the inputs are LayerNorm outputs that also feed the residual path, or GELU outputs, so it cannot
be folded into the op before them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

SMOOTH_ALPHA = 0.8  # on the standard QA student: 0.5, 0.9, 1.0 kept fewer spans (README, standard QA)
SCALE_RANGE = (1e-2, 1e3)  # s_j kept within this: a channel never seen active is not blown up


def smooth(src: Path, dst: Path, nodes: Sequence[str], calibration: Sequence[dict[str, np.ndarray]],
           alpha: float = SMOOTH_ALPHA) -> None:
    """Write `src` to `dst` with the inputs of the MatMuls `nodes` smoothed (same outputs up to
    float rounding); `calibration`: input batches whose activations fix the channel ranges."""
    model = onnx.load(str(src))
    users = _users_by_input(model.graph, set(nodes))
    read = [m.input[1] for matmuls in users.values() for m in matmuls]
    assert len(read) == len(set(read)), "a weight read by two MatMuls would be scaled twice"
    ranges = channel_absmax(model, list(users), calibration)
    weights = {t.name: t for t in model.graph.initializer}
    muls = [_migrate(model.graph, weights, x, matmuls, ranges[x], alpha) for x, matmuls in users.items()]
    _insert_after_producers(model.graph, muls)
    onnx.save(model, str(dst))


def _users_by_input(graph: onnx.GraphProto, nodes: set[str]) -> dict[str, list[onnx.NodeProto]]:
    """The chosen MatMuls grouped by the activation they read."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.name in nodes:
            users.setdefault(node.input[0], []).append(node)
    return users


def channel_absmax(model: onnx.ModelProto, tensors: list[str], calibration: Sequence[dict[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """Largest |value| of each channel (last axis) of `tensors` over every calibration batch."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    ranges: dict[str, np.ndarray] = {}
    for batch in calibration:
        for name, value in zip(tensors, session.run(tensors, {n: batch[n] for n in feeds}), strict=True):
            seen = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            ranges[name] = np.maximum(ranges[name], seen) if name in ranges else seen
    return ranges


def _migrate(graph: onnx.GraphProto, weights: dict[str, onnx.TensorProto], x: str, matmuls: list[onnx.NodeProto],
             x_max: np.ndarray, alpha: float) -> onnx.NodeProto:
    """Scale the weights' rows by s and return the Mul that divides `x` by s; rewires `matmuls`."""
    arrays = [numpy_helper.to_array(weights[m.input[1]]) for m in matmuls]  # each [K, N]
    w_max = np.max([np.abs(w).max(axis=1) for w in arrays], axis=0)      # [K]
    assert w_max.shape == x_max.shape, f"{x}: {x_max.shape[0]} channels against weights of {w_max.shape[0]} rows"
    scale = np.clip(x_max ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha), *SCALE_RANGE).astype(np.float32)
    for matmul, w in zip(matmuls, arrays, strict=True):
        weights[matmul.input[1]].CopyFrom(numpy_helper.from_array(w * scale[:, None], matmul.input[1]))
        matmul.input[0] = f"{x}_smoothed"
    graph.initializer.append(numpy_helper.from_array(1.0 / scale, f"{x}_smooth_inverse"))
    return helper.make_node("Mul", [x, f"{x}_smooth_inverse"], [f"{x}_smoothed"], name=f"{x}_smooth")


def _insert_after_producers(graph: onnx.GraphProto, muls: list[onnx.NodeProto]) -> None:
    """Each Mul right after the node that makes its input (the graph stays topologically sorted);
    from the last position back, so earlier positions do not move."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    for mul in sorted(muls, key=lambda m: producer.get(m.input[0], -1), reverse=True):
        nodes.insert(producer.get(mul.input[0], -1) + 1, mul)
    del graph.node[:]
    graph.node.extend(nodes)
