"""Offline graph fusion of the exported fp32 graph (ONNX Runtime's transformer optimiser), kept
only where it measurably helps.

What ONNX Runtime already fuses when it loads a graph (ORT_ENABLE_ALL): LayerNormalization,
BiasGelu, FusedMatMul. What the offline optimiser adds: SkipLayerNormalization (residual Add +
LayerNorm in one kernel, the bias Add folded in). Attention fusion is left off on purpose: it
packs Q, K and V into one weight that neither int8 family here quantises (the block-wise
quantiser looks for MatMuls; the dynamic one is told which MatMuls to quantise), and MPNet's
relative-position bias does not match its pattern anyway. Embedding-LayerNorm fusion is off too:
it changes the graph's inputs. The fused graph replaces `model.onnx` only when it is faster on
this machine by at least `MIN_GAIN` (it must then pass the same fp32 parity check); the manifest
records what was fused and the measured ratio either way.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from training.int8 import quiet_root

log = logging.getLogger(__name__)

MIN_GAIN = 1.03  # fused / plain speed needed to keep the fused graph: below it, noise
AT_LOAD = "ORT_ENABLE_ALL (LayerNormalization, BiasGelu, FusedMatMul fused by the session)"


def fuse(path: Path, config: Any) -> Any:
    """The fused model (onnxruntime.transformers OnnxModel), or None when the optimiser cannot
    handle the architecture."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = False        # keeps Q, K, V MatMuls for the int8 schemes
    options.enable_embed_layer_norm = False  # keeps the graph's inputs as exported
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    with quiet_root():  # the optimiser's modules log each fusion at INFO on loggers of their own
        return optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden,
                              optimization_options=options, opt_level=0)


def optimize_fp32(path: Path, config: Any, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Fuse `path` (the fp32 graph); replace it when the fused graph is faster on `inputs`.
    Returns the manifest record: what was fused, the measured ratio, whether it was kept."""
    from inference.backends.onnx import OnnxBackend
    from training.int8_speed import round_robin_ms

    record: dict[str, Any] = {"at_load": AT_LOAD, "offline": None}
    try:
        model = fuse(path, config)
        fused = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    except Exception as exc:  # noqa: BLE001 - an architecture the optimiser does not know: export unfused
        log.warning("graph fusion skipped: %s: %s", type(exc).__name__, exc)
        return {**record, "offline": {"error": f"{type(exc).__name__}: {exc}"[:300], "kept": False}}
    if not fused:
        return record
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fused-") as tmp:
        candidate = Path(tmp) / "fused.onnx"
        with quiet_root():
            model.save_model_to_file(str(candidate))
        ms = round_robin_ms({"plain": OnnxBackend(path, task, "onnx", None, "all"),
                             "fused": OnnxBackend(candidate, task, "onnx", None, "all")}, inputs)
        speedup = ms["plain"] / ms["fused"]
        kept = speedup >= MIN_GAIN
        if kept:
            shutil.move(candidate, path)
    record["offline"] = {"tool": "onnxruntime.transformers.optimizer (attention and embedding fusion off)",
                         "fused": fused, "plain_ms": round(ms["plain"], 2), "fused_ms": round(ms["fused"], 2),
                         "speedup": round(speedup, 3), "kept": kept, "batch": list(inputs["input_ids"].shape)}
    log.info("graph fusion %s: %.2fx on this machine, %s", fused, speedup, "kept" if kept else "not kept")
    return record


def apply_decision(path: Path, config: Any, record: dict[str, Any], measured_on: str) -> dict[str, Any]:
    """What an earlier model of the same shape measured (`optimize_fp32`'s record), applied to
    this one without timing again: fused when it was kept there."""
    offline = record.get("offline")
    if offline is None:
        return record
    if offline["kept"]:
        with quiet_root():
            fuse(path, config).save_model_to_file(str(path))
    return {**record, "offline": {**offline, "measured_on": measured_on}}
