"""Measure every int8 scheme of `training.int8` on one model: parity against torch (through the
serving code, as the export check does) and speed against the fp32 graph on the same batch.

This is how the default scheme was chosen; `python -m training export MODEL --compare-schemes`
re-runs it (nothing is written to MODEL: the graphs live in a temporary folder). The flag and
its options are added to the `export` command here (`register`, after `training.export`'s), so
that export never imports this module.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from inference.backends import Backend, load_backend
from inference.modelfolder import read_spec
from training.data import texts_of
from training.export import FP32_FILE, calibration_texts, export_model
from training.int8 import NEEDS_CALIBRATION, SCHEMES, export_int8
from training.int8_speed import bench_inputs, calibration_batches, round_robin_ms
from training.parity import compare, run_parity_set

log = logging.getLogger(__name__)


def compare_schemes(model_dir: Path, task: str | None = None, schemes: Sequence[str] | None = None,
                    texts: list[str] | None = None, rounds: int = 10, threads: int | None = None,
                    calibration: list[str] | None = None) -> list[dict]:
    """One row per scheme: parity figures against torch, and fp32 / int8 ms on one batch. The
    static schemes calibrate on `calibration` (texts other than the parity ones); without it
    they are left out."""
    from inference.backends.onnx import OnnxBackend
    from training.parity import PARITY_TEXTS

    model_dir = Path(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / model_dir.name
        export_model(model_dir, int8=False, task=task, out_dir=out, parity_texts=texts)
        spec = read_spec(out)
        reference = run_parity_set(load_backend(model_dir, spec.task, "torch"), spec, texts)
        config = AutoConfig.from_pretrained(str(model_dir))
        backends: dict[str, Backend] = {"fp32": load_backend(out, spec.task, "onnx", threads)}
        rows: list[dict[str, Any]] = []
        batches = calibration_batches(out, spec.task, calibration, spec.max_length) if calibration else []
        for scheme in _runnable(schemes or list(SCHEMES), bool(batches)):
            path = out / f"int8-{scheme}.onnx"
            export_int8(out / FP32_FILE, path, config, scheme, batches)
            backends[scheme] = OnnxBackend(path, spec.task, "onnx-int8", threads, "all")
            figures = compare(spec.task, reference, run_parity_set(backends[scheme], spec, texts))
            rows.append({"scheme": scheme, **figures, "int8_mb": round(path.stat().st_size / 1e6, 1)})
            log.info("%s", rows[-1])
        batch = bench_inputs(out, spec.task, texts or list(PARITY_TEXTS), spec.max_length)
        ms = round_robin_ms(backends, batch, rounds)
    for row in rows:
        row.update(fp32_ms=round(ms["fp32"], 1), int8_ms=round(ms[row["scheme"]], 1),
                   speedup=round(ms["fp32"] / ms[row["scheme"]], 2), batch=list(batch["input_ids"].shape))
    return rows


def _runnable(schemes: Sequence[str], calibrated: bool) -> list[str]:
    left_out = [] if calibrated else [s for s in schemes if s in NEEDS_CALIBRATION]
    if left_out:
        log.warning("left out %s: static schemes need calibration texts (--calibration FILE)", ", ".join(left_out))
    return [s for s in schemes if s not in left_out]


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


# --- CLI: `python -m training export MODEL --compare-schemes` ----------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add --compare-schemes (and its options) to the `export` command that `training.export`
    registered; with the flag, the command runs the comparison instead of the export."""
    parser = subparsers.choices.get("export")
    if parser is None:
        raise RuntimeError("training.int8_compare extends the export command: register training.export first")
    parser.add_argument("--compare-schemes", action="store_true",
                        help="write nothing: build every int8 scheme in a temp folder, print parity and speed")
    parser.add_argument("--schemes", help="with --compare-schemes: comma-separated subset")
    parser.add_argument("--texts", type=Path, help="with --compare-schemes: parity texts from a TSV/CSV/JSONL file")
    parser.add_argument("--limit", type=int, default=96, help="with --texts: how many texts")
    export: Callable[[argparse.Namespace], int] = parser.get_default("func")

    def run(args: argparse.Namespace) -> int:
        return _compare(args) if args.compare_schemes else export(args)

    parser.set_defaults(func=run)


def _compare(args: argparse.Namespace) -> int:
    schemes = args.schemes.split(",") if args.schemes else None
    texts = texts_of(args.texts, args.limit) if args.texts else None
    same = args.texts and args.calibration and args.texts.resolve() == args.calibration.resolve()
    calibration = calibration_texts(args, offset=args.limit if same else 0)  # never a parity text
    rows = compare_schemes(args.model_dir, args.task, schemes, texts, calibration=calibration)
    print(format_table(rows))
    return 0
