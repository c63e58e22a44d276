"""int8 quantisation of an exported fp32 ONNX graph: the schemes, and the MatMuls each one quantises.

Two families, because which is faster depends on the CPU (`training.int8_speed` measures it):
- Block-wise `MatMulNBits` with 8-bit weights and `accuracy_level=4` quantises activations per
  token and per block at run time. Dynamic int8 with ONE scale per tensor lost too much on the
  MPNet teacher (0.92 mean cosine: the FFN down-projection's input carries outlier tokens), the
  blocks keep 0.999. With AVX512-VNNI they ran at 1.8-2.4x fp32; on AVX2 without VNNI at 0.60x.
- Dynamic int8 (ONNX Runtime's `DynamicQuantizeMatMul`, written by `_dynamic`) with per-column
  weights in 7 bits (`reduce_range`): 1.5-1.8x fp32 on that AVX2 machine. Without VNNI the u8 x s8
  products are summed in pairs into saturating int16 (VPMADDUBSW); full 8-bit weights overflow
  there (label agreement 0.54 on the SST-2 student), 7-bit ones cannot.
- `smooth-dynamic`: dynamic int8 after SmoothQuant's migration of activation outliers into the
  weights (`training.smoothing`), calibrated on texts (`--calibration`). Not in `auto`: it failed
  the export's parity on both models tried (README, int8), though far less than plain dynamic.
The default `auto` (in `training.export`) builds every scheme of `AUTO_CHAIN`, times each on the
model itself and keeps the fastest that passes parity; each candidate's figures go in the manifest.
`python -m training export MODEL --compare-schemes` (training/int8_compare.py) measures every
scheme in `SCHEMES` on a model; each stays selectable with --int8-scheme.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

HEAD_NAMES = ("pooler", "classifier", "qa_outputs", "pre_classifier", "score")


def weight_matmuls(graph: onnx.GraphProto, hidden: int, intermediate: int) -> dict[str, list[str]]:
    """Encoder MatMuls with a constant weight, by role, found from weight shapes (not names,
    which differ per architecture): attention projections [h,h], FFN up [h,i], FFN down [i,h].
    Task heads (pooler, classifier, qa_outputs) are left out: tiny cost, first to lose accuracy."""
    dims = {t.name: tuple(t.dims) for t in graph.initializer}
    roles: dict[str, list[str]] = {"attention": [], "ffn_up": [], "ffn_down": []}
    role_of = {(hidden, hidden): "attention", (hidden, intermediate): "ffn_up", (intermediate, hidden): "ffn_down"}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in dims:
            continue
        if any(h in node.name for h in HEAD_NAMES):
            continue
        role = role_of.get(dims[node.input[1]])
        if role:
            roles[role].append(node.name)
    return roles


@contextlib.contextmanager
def quiet_root() -> Iterator[None]:
    """onnxruntime.quantization logs one INFO line per tensor on the root logger (and the
    transformer optimiser one per fusion, on loggers that inherit the root's level)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _dynamic(src: Path, dst: Path, nodes: list[str], reduce_range: bool = False) -> None:
    """Dynamic int8 on `nodes`: each MatMul becomes ONNX Runtime's `DynamicQuantizeMatMul` (the
    kernel its load-time fusion makes of `quantize_dynamic`'s MatMulInteger chain) with
    symmetric per-column int8 weights, 7-bit with `reduce_range` (ORT's [-64, 64]).
    Why not `quantize_dynamic` itself: it quantises per channel in a Python loop, 6.6-9.8 s for a
    12-layer model against 1.4 s here, paid for two candidates of every export; the files ran
    at the same speed (113 against 117 ms, MPNet 12 layers, 16 x 48 tokens)."""
    model = onnx.load(str(src))
    graph, chosen, done = model.graph, set(nodes), set()
    weights = {t.name: t for t in graph.initializer}
    qmax = 64 if reduce_range else 127
    added: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.name not in chosen:
            continue
        name = node.input[1]
        quantised, scale = _per_column(numpy_helper.to_array(weights[name]), qmax)  # [K, N] int8, [N]
        added += [numpy_helper.from_array(quantised, f"{name}_qint8"),
                  numpy_helper.from_array(scale, f"{name}_scale")]
        node.CopyFrom(helper.make_node("DynamicQuantizeMatMul", [node.input[0], f"{name}_qint8", f"{name}_scale"],
                                            list(node.output), name=f"{node.name}_quant", domain="com.microsoft"))
        done.add(name)
    read = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name not in done or t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))


def _per_column(weight: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column: scale = max |w| / qmax, zero point 0."""
    scale = (np.abs(weight).max(axis=0) / qmax).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero column: any scale gives zeros
    return np.clip(np.rint(weight / scale), -qmax, qmax).astype(np.int8), scale


def _blockwise(src: Path, dst: Path, exclude: list[str], block: int = 256, accuracy_level: int = 4) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=accuracy_level, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), nodes_to_exclude=exclude, algo_config=config)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), False)


@dataclass(frozen=True)
class Job:
    """One quantisation: the fp32 graph, where the int8 one goes, its encoder MatMuls by role, the
    head MatMuls every scheme keeps fp32, the block size, the graph's input names, and (static
    schemes only) the batches that fix the activation scales."""

    src: Path
    dst: Path
    roles: dict[str, list[str]]
    heads: list[str]
    block: int
    inputs: tuple[str, ...] = ()
    calibration: Sequence[dict[str, np.ndarray]] = ()

    def encoder(self, *roles: str) -> list[str]:
        return [name for role in roles for name in self.roles[role]]


def _scheme_blockwise(job: Job) -> None:
    _blockwise(job.src, job.dst, job.heads, job.block)


def _scheme_blockwise32(job: Job) -> None:
    _blockwise(job.src, job.dst, job.heads, min(job.block, 32))


def _scheme_blockwise32_no_down(job: Job) -> None:
    """The finest block-wise variant, for a model whose FFN-down input carries outlier tokens
    that even blocks of 32 move too far: that MatMul (a third of the encoder's MatMul work) stays
    fp32, the rest is int8."""
    _blockwise(job.src, job.dst, job.heads + job.encoder("ffn_down"), min(job.block, 32))


def _scheme_weight_only(job: Job) -> None:
    _blockwise(job.src, job.dst, job.heads, min(job.block, 32), accuracy_level=1)


def _scheme_hybrid(job: Job) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "dyn.onnx"
        _dynamic(job.src, mid, job.encoder("attention", "ffn_up"))
        _blockwise(mid, job.dst, job.heads + job.encoder("attention", "ffn_up"), min(job.block, 128))


def _scheme_hybrid_attention(job: Job) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "dyn.onnx"
        _dynamic(job.src, mid, job.encoder("attention"))
        _blockwise(mid, job.dst, job.heads + job.encoder("attention"), job.block)


def _scheme_dynamic_no_down(job: Job) -> None:
    _dynamic(job.src, job.dst, job.encoder("attention", "ffn_up"))


def _scheme_dynamic_all(job: Job) -> None:
    _dynamic(job.src, job.dst, job.encoder("attention", "ffn_up", "ffn_down"))


def _scheme_reduce_range(job: Job) -> None:
    _dynamic(job.src, job.dst, job.encoder("attention", "ffn_up", "ffn_down"), reduce_range=True)


def _scheme_reduce_range_no_down(job: Job) -> None:
    _dynamic(job.src, job.dst, job.encoder("attention", "ffn_up"), reduce_range=True)


def _static(job: Job, roles: tuple[str, ...]) -> None:
    """Static int8 in QDQ form: per-channel int8 weights, and activation scales fixed once from
    the calibration batches (min/max) instead of measured per batch at run time, so no
    activation statistics are computed per call. The price: one scale per activation tensor
    for every input, which an outlier token outside the calibration range saturates."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet_root():
        quantize_static(str(job.src), str(job.dst), _reader(job), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=["MatMul"], nodes_to_quantize=job.encoder(*roles),
                        calibrate_method=CalibrationMethod.MinMax, calibration_providers=["CPUExecutionProvider"],
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def require_calibration(scheme: str, calibrated: bool) -> None:
    """A scheme that needs calibration texts and has none is refused with one line saying what to give."""
    if scheme in NEEDS_CALIBRATION and not calibrated:
        raise ValueError(f"int8 scheme {scheme} sets its scales from calibration texts: "
                         "give some (export --calibration FILE)")


def _reader(job: Job) -> Any:
    """The calibration batches as ONNX Runtime's data reader, fed only the graph's own inputs."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter([{n: b[n] for n in job.inputs} for b in job.calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    return Reader()


def _scheme_smooth_dynamic(job: Job) -> None:
    """Dynamic int8 on every encoder MatMul after SmoothQuant's migration (training.smoothing).
    Full 8-bit weights: on a CPU without VNNI their int16 sums saturate and parity rejects the file,
    as it does dynamic-per-channel's."""
    from training.smoothing import smooth

    encoder = job.encoder("attention", "ffn_up", "ffn_down")
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "smoothed.onnx"
        smooth(job.src, mid, encoder, job.calibration)
        _dynamic(mid, job.dst, encoder)


def _scheme_static(job: Job) -> None:
    _static(job, ("attention", "ffn_up", "ffn_down"))


def _scheme_static_no_down(job: Job) -> None:
    _static(job, ("attention", "ffn_up"))


Scheme = Callable[[Job], None]
SCHEMES: dict[str, tuple[Scheme, str]] = {
    "blockwise8": (_scheme_blockwise, "MatMulNBits 8-bit weights, block 256, int8 compute "
                   "(accuracy_level 4: activations quantised per token and block); heads fp32"),
    "blockwise8-b32": (_scheme_blockwise32, "MatMulNBits 8-bit weights, block 32, int8 compute "
                       "(activations quantised per token and 32-channel block); heads fp32"),
    "blockwise8-b32-no-ffn-down": (_scheme_blockwise32_no_down, "MatMulNBits 8-bit weights, block 32, int8 "
                                   "compute on attention + FFN-up; FFN-down and heads fp32"),
    "weight-only8": (_scheme_weight_only, "MatMulNBits 8-bit weights, block 32, fp32 compute "
                     "(accuracy_level 1: weights dequantised, activations stay fp32); heads fp32"),
    "hybrid": (_scheme_hybrid, "dynamic per-channel int8 on attention + FFN-up, "
               "MatMulNBits 8-bit block 128 on FFN-down; heads fp32"),
    "hybrid-attention": (_scheme_hybrid_attention, "dynamic per-channel int8 on attention projections, "
                         "MatMulNBits 8-bit block 256 on both FFN MatMuls; heads fp32"),
    "dynamic-no-ffn-down": (_scheme_dynamic_no_down, "dynamic per-channel int8 on attention + "
                            "FFN-up MatMuls; FFN-down and heads fp32"),
    "dynamic-per-channel": (_scheme_dynamic_all, "dynamic per-channel int8 on every encoder "
                            "MatMul; heads fp32 (fails parity on MPNet)"),
    "dynamic-reduce-range": (_scheme_reduce_range, "dynamic int8 (DynamicQuantizeMatMul), per-column 7-bit weights "
                             "(reduce_range: no int16 saturation without VNNI) on every encoder MatMul; heads fp32"),
    "dynamic-reduce-range-no-ffn-down": (_scheme_reduce_range_no_down, "dynamic int8 (DynamicQuantizeMatMul), "
                                         "per-column 7-bit weights on attention + FFN-up; FFN-down and heads fp32"),
    "smooth-dynamic": (_scheme_smooth_dynamic, "dynamic per-channel int8 on every encoder MatMul after "
                       "SmoothQuant (alpha 0.8: activation outliers moved into the weights, input "
                       "channel ranges from calibration texts); heads fp32"),
    "static-qdq": (_scheme_static, "static int8 in QDQ form: per-channel int8 weights, activation scales "
                   "calibrated once (min/max) on every encoder MatMul; heads fp32"),
    "static-qdq-no-ffn-down": (_scheme_static_no_down, "static int8 in QDQ form, calibrated activation scales, "
                               "on attention + FFN-up; FFN-down and heads fp32"),
}
# schemes that need calibration batches
NEEDS_CALIBRATION = frozenset({"static-qdq", "static-qdq-no-ffn-down", "smooth-dynamic"})
DEFAULT_SCHEME = "auto"
# "auto" builds each of these, times it against fp32 on the model itself, and keeps the fastest
# that passes parity (training.export). The block-wise pair wins where the CPU has VNNI, the
# dynamic pair where it has not; the finer variant of each is there for models whose
# activations the coarser one hurts (the SST-2 quick student needed blocks of 32; the standard
# one failed at 32 too, max prob diff 0.120 with every label kept, so the last block-wise
# candidate keeps FFN-down fp32). "weight-only8" (fp32 compute) ran at 0.82x fp32 and is never
# the fastest, so it is not a candidate.
AUTO_CHAIN = ("blockwise8", "blockwise8-b32", "blockwise8-b32-no-ffn-down", "dynamic-reduce-range",
              "dynamic-reduce-range-no-ffn-down")


def head_matmuls(graph: onnx.GraphProto) -> list[str]:
    """Every MatMul of a task head (kept fp32 by every scheme)."""
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(h in n.name for h in HEAD_NAMES)]


def export_int8(fp32_path: Path, dst: Path, config: Any, scheme: str,
                calibration: Sequence[dict[str, np.ndarray]] = ()) -> None:
    """Quantise `fp32_path` into `dst` with `scheme` (a key of `SCHEMES`); `calibration`: padded
    input batches, for the schemes of `NEEDS_CALIBRATION`."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown int8 scheme {scheme!r}; choose from {sorted(SCHEMES)}")
    require_calibration(scheme, bool(calibration))
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    if not hidden or not intermediate:
        raise ValueError(f"int8 export of {fp32_path}: {type(config).__name__} names no hidden size "
                         "(hidden_size / dim) or feed-forward size (intermediate_size / hidden_dim)")
    graph = onnx.load(str(fp32_path), load_external_data=False).graph  # read once: roles, heads, inputs
    block = max(16, min(256, 1 << (hidden.bit_length() - 1)))  # 256 for BERT sizes; tiny models smaller
    SCHEMES[scheme][0](Job(fp32_path, dst, weight_matmuls(graph, hidden, intermediate), head_matmuls(graph), block,
                           tuple(i.name for i in graph.input), calibration))
