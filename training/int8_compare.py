"""Measure every int8 scheme of `training.export` on one model: parity against torch (through the
serving code, as the export check does) and speed against the fp32 graph on the same batch.

This is how the default scheme was chosen; `python -m training export MODEL --compare-schemes`
re-runs it (nothing is written to MODEL: the graphs live in a temporary folder).
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import AutoConfig

from app.backends import Backend, load_backend
from app.registry import read_spec
from app.tasks import classify, embed, load_tokenizer, pad_batch, pad_id
from training.export import FP32_FILE, INT8_FILE, SCHEMES, export_int8, export_model
from training.parity import compare, run_parity_set

log = logging.getLogger(__name__)
BENCH_ITEMS = 16


def load_texts(path: Path | None, limit: int) -> list[str] | None:
    """Texts (and second sentences) of a TSV/CSV/JSONL file, or None for the built-in set."""
    if path is None:
        return None
    from training.data import load_labelled

    examples, _ = load_labelled(path, labels=None, require_label=False, limit=limit, split="parity")
    texts = [e.text for e in examples] + [e.text_pair for e in examples if e.text_pair]
    return texts[:limit]


def bench_inputs(model_dir: Path, task: str, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """One padded batch of the first texts (QA: each text as question and context)."""
    tokenizer = load_tokenizer(model_dir, max_length)
    module = embed if task == "embedding" else classify
    pairs = [(t, t) for t in texts[:BENCH_ITEMS]] if task == "qa" else list(texts[:BENCH_ITEMS])
    return pad_batch(module.encode(tokenizer, pairs, max_length), pad_id(tokenizer))


def median_ms(backend: Backend, inputs: dict[str, np.ndarray], repeats: int) -> float:
    backend.forward(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.forward(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def compare_schemes(model_dir: Path, task: str | None = None, schemes: Sequence[str] | None = None,
                    texts: list[str] | None = None, repeats: int = 8, threads: int | None = None) -> list[dict]:
    """One row per scheme: parity figures, int8 and fp32 median ms on one batch, speed-up.
    fp32 is re-timed next to each scheme and the faster of its two runs kept, so a noisy
    shared machine biases against int8, never for it."""
    from training.parity import PARITY_TEXTS

    model_dir = Path(model_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / model_dir.name
        export_model(model_dir, int8=False, task=task, out_dir=out, parity_texts=texts)
        spec = read_spec(out)
        reference = run_parity_set(load_backend(model_dir, spec.task, "torch"), spec, texts)
        fp32 = load_backend(out, spec.task, "onnx", threads)
        batch = bench_inputs(out, spec.task, texts or list(PARITY_TEXTS), spec.max_length)
        config = AutoConfig.from_pretrained(str(model_dir))
        for scheme in schemes or list(SCHEMES):
            export_int8(out / FP32_FILE, out / INT8_FILE, config, scheme)
            int8 = load_backend(out, spec.task, "onnx-int8", threads)
            figures = compare(spec.task, reference, run_parity_set(int8, spec, texts))
            t32a, t8a, t32b, t8b = (median_ms(b, batch, repeats) for b in (fp32, int8, fp32, int8))
            t32, t8 = min(t32a, t32b), min(t8a, t8b)
            row = {"scheme": scheme, **figures, "fp32_ms": round(t32, 1), "int8_ms": round(t8, 1),
                   "speedup": round(t32 / t8, 2), "batch": list(batch["input_ids"].shape),
                   "int8_mb": round((out / INT8_FILE).stat().st_size / 1e6, 1)}
            log.info("%s", row)
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of the figures that matter for choosing a scheme."""
    keys = [k for k in ("mean_cosine", "min_cosine", "label_agreement", "max_prob_diff", "span_agreement",
                        "max_abs_diff") if k in rows[0]]
    head = ["scheme", *keys, "fp32_ms", "int8_ms", "speedup", "int8_mb"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row[k]:.4f}" if isinstance(row[k], float) and k in keys else str(row[k]) for k in head]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
