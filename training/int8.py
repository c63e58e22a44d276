"""int8 quantisation of an exported fp32 ONNX graph: the schemes, and the MatMuls each one quantises.

Why the default scheme is block-wise: dynamic int8 quantises each MatMul input with ONE scale per
tensor, and the input of the feed-forward down-projection (after GELU) carries outlier tokens
that wreck that scale - on the MPNet teacher per-channel dynamic int8 fell to 0.92 mean cosine.
`MatMulNBits` with 8-bit weights in blocks of 256 and `accuracy_level=4` quantises activations
per token and per block at run time (int8 kernels), which keeps 0.999 cosine at ~1.9x the fp32
speed. Where a model's activations need finer blocks (the SST-2 student: max probability shift
0.15 with blocks of 256), the default `auto` falls back along `AUTO_CHAIN` to 32-channel blocks
(1.8x fp32 there), keeping the first file that passes parity (`training.export` checks it).
`python -m training export MODEL --compare-schemes` (training/int8_compare.py) measures every
scheme in `SCHEMES` on a model; each stays selectable with --int8-scheme.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx

HEAD_NAMES = ("pooler", "classifier", "qa_outputs", "pre_classifier", "score")


def weight_matmuls(path: Path, hidden: int, intermediate: int) -> dict[str, list[str]]:
    """Encoder MatMuls with a constant weight, by role, found from weight shapes (not names,
    which differ per architecture): attention projections [h,h], FFN up [h,i], FFN down [i,h].
    Task heads (pooler, classifier, qa_outputs) are left out: tiny cost, first to lose accuracy."""
    model = onnx.load(str(path), load_external_data=False)
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    roles: dict[str, list[str]] = {"attention": [], "ffn_up": [], "ffn_down": []}
    role_of = {(hidden, hidden): "attention", (hidden, intermediate): "ffn_up", (intermediate, hidden): "ffn_down"}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in dims:
            continue
        if any(h in node.name for h in HEAD_NAMES):
            continue
        role = role_of.get(dims[node.input[1]])
        if role:
            roles[role].append(node.name)
    return roles


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    """onnxruntime.quantization logs one INFO line per tensor on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _dynamic(src: Path, dst: Path, nodes: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root():
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes)


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


def _scheme_blockwise(src: Path, dst: Path, roles: dict[str, list[str]], heads: list[str], block: int) -> None:
    _blockwise(src, dst, heads, block)


def _scheme_blockwise32(src: Path, dst: Path, roles: dict[str, list[str]], heads: list[str], block: int) -> None:
    _blockwise(src, dst, heads, min(block, 32))


def _scheme_weight_only(src: Path, dst: Path, roles: dict[str, list[str]], heads: list[str], block: int) -> None:
    _blockwise(src, dst, heads, min(block, 32), accuracy_level=1)


def _scheme_hybrid(src: Path, dst: Path, roles: dict[str, list[str]], heads: list[str], block: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "dyn.onnx"
        _dynamic(src, mid, roles["attention"] + roles["ffn_up"])
        _blockwise(mid, dst, heads + roles["attention"] + roles["ffn_up"], min(block, 128))


def _scheme_hybrid_attention(src: Path, dst: Path, roles: dict[str, list[str]], heads: list[str], block: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "dyn.onnx"
        _dynamic(src, mid, roles["attention"])
        _blockwise(mid, dst, heads + roles["attention"], block)


def _scheme_dynamic_no_down(src: Path, dst: Path, roles: dict[str, list[str]], heads: list[str], block: int) -> None:
    _dynamic(src, dst, roles["attention"] + roles["ffn_up"])


def _scheme_dynamic_all(src: Path, dst: Path, roles: dict[str, list[str]], heads: list[str], block: int) -> None:
    _dynamic(src, dst, roles["attention"] + roles["ffn_up"] + roles["ffn_down"])


Scheme = Callable[[Path, Path, dict[str, list[str]], list[str], int], None]
SCHEMES: dict[str, tuple[Scheme, str]] = {
    "blockwise8": (_scheme_blockwise, "MatMulNBits 8-bit weights, block 256, int8 compute "
                   "(accuracy_level 4: activations quantised per token and block); heads fp32"),
    "blockwise8-b32": (_scheme_blockwise32, "MatMulNBits 8-bit weights, block 32, int8 compute "
                       "(activations quantised per token and 32-channel block); heads fp32"),
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
}
DEFAULT_SCHEME = "auto"
# "auto" tries these in order and keeps the first that passes parity: the fastest first, then
# finer activation blocks, so a model whose activations the coarse blocks hurt still gets an int8
# file. Measured on the SST-2 student (batch 16, vs fp32): blocks of 256 2.43x but parity fails;
# blocks of 32 1.81x and passes. "weight-only8" (fp32 compute) passes too but runs at 0.82x of
# fp32, so it is not in the chain: no int8 file beats a slower one.
AUTO_CHAIN = ("blockwise8", "blockwise8-b32")


def head_matmuls(path: Path) -> list[str]:
    """Every MatMul of a task head (kept fp32 by every scheme)."""
    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(h in n.name for h in HEAD_NAMES)]


def export_int8(fp32_path: Path, dst: Path, config: Any, scheme: str) -> None:
    """Quantise `fp32_path` into `dst` with `scheme` (a key of `SCHEMES`)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown int8 scheme {scheme!r}; choose from {sorted(SCHEMES)}")
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    if not hidden or not intermediate:
        raise ValueError(f"int8 export of {fp32_path}: {type(config).__name__} names no hidden size "
                         "(hidden_size / dim) or feed-forward size (intermediate_size / hidden_dim)")
    roles = weight_matmuls(fp32_path, hidden, intermediate)
    block = max(16, min(256, 1 << (hidden.bit_length() - 1)))  # 256 for BERT sizes; tiny models smaller
    SCHEMES[scheme][0](fp32_path, dst, roles, head_matmuls(fp32_path), block)
