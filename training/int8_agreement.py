"""int8 against fp32 on the evaluation set: does the int8 file answer what the fp32 file answers?

The export's parity check runs 24 texts; a scheme can pass it and still flip a few percent of a
real set's labels (dynamic int8 on the SST-2 student: 0.96 label agreement on dev). So every
built model is also measured here, on the set its quality is reported on: label agreement
(classification), span agreement - the same answer text - (QA), or the cosine between the fp32
and int8 vector of every sentence (embeddings), with a 95% bootstrap interval, beside the int8
file's own quality figure. The figures go to manifest["int8_agreement"][set].

  python -m training agreement models/sst2-quick-student --data ../shared/data/sst2/dev.tsv
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.agreement import row_cosines
from inference.backends import FP32_OF, ONNX_FILES
from inference.intervals import interval, mean_of
from inference.modelfolder import read_spec
from training.data import Columns
from training.evaluate import data_source, evaluate_model, parse_articles, read_predictions

log = logging.getLogger(__name__)

# The targets the quality issue sets for every built model (point estimates).
TARGETS = {"label_agreement": 0.995, "span_agreement": 0.995, "mean_cosine": 0.99}


def measure(model_dir: Path, data: Path | str, *, set_name: str | None = None, limit: int | None = None,
            articles: Sequence[int] | None = None, threads: int | None = None,
            columns: Columns | None = None, fp32: dict[str, Any] | None = None,
            backend: str = "onnx-int8") -> dict[str, Any]:
    """Evaluate the int8 file on the set (its quality is recorded like any evaluation), compare
    it item by item with the fp32 ONNX file, and record the agreement in the manifest. `backend`:
    the engine that runs the int8 file (`openvino-int8`: OpenVINO; recorded as `SET@openvino-int8`);
    the reference is always the fp32 file on ONNX Runtime, the file the build evaluated. `fp32`:
    `evaluate_model`'s result for the fp32 file on the same set, when the caller has it (a build
    evaluates it just before): the embedding vectors are not stored, so this saves running it again."""
    model_dir = Path(model_dir)
    task = read_spec(model_dir).task
    args: dict[str, Any] = {"limit": limit, "articles": articles, "threads": threads, "columns": columns}
    int8 = evaluate_model(model_dir, backend, data, set_name=set_name, **args)
    name = int8["set"]
    if task == "embedding":
        if not fp32 or (fp32["set"], fp32["backend"], fp32["rows"]) != (name, "onnx", int8["rows"]):
            fp32 = evaluate_model(model_dir, "onnx", data, set_name=name, write=False, **args)
        figures = _cosines(fp32["outputs"], int8["outputs"])
    else:
        fp32 = {"records": _fp32_records(model_dir, name, data, args)}
        figures = _same_answers(task, fp32["records"], int8["records"])
    headline = next(iter(int8["interval"]))
    figures.update(set=name, int8_quality={headline: int8["interval"][headline]},
                   int8_items_s=int8["throughput_items_s"], scheme=_scheme(model_dir), backend=backend)
    metric = next(k for k in TARGETS if k in figures)
    figures["target"] = {metric: TARGETS[metric], "met": figures[metric] >= TARGETS[metric]}
    (log.info if figures["target"]["met"] else log.warning)(
        "%s: int8 vs fp32 on %s (%d items): %s %.4f (target %.3f)", model_dir.name, name, figures["items"], metric,
        figures[metric], TARGETS[metric])
    _record(model_dir, name if backend == "onnx-int8" else f"{name}@{backend}", figures)
    return figures


def _fp32_records(model_dir: Path, name: str, data: Path | str, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The fp32 ONNX evaluation of the set: the stored one, else evaluated now (and stored)."""
    try:
        return read_predictions(model_dir, name, "onnx")
    except FileNotFoundError:
        return list(evaluate_model(model_dir, "onnx", data, set_name=name, **args)["records"])


def _same_answers(task: str, fp32: list[dict[str, Any]], int8: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of items whose int8 answer (top label; answer text) is the fp32 one, with its interval."""
    if len(fp32) != len(int8) or any(a["i"] != b["i"] for a, b in zip(fp32, int8, strict=True)):
        raise ValueError(f"the fp32 and int8 evaluations cover different items ({len(fp32)} vs {len(int8)}): "
                         "evaluate both on the same set and limit")
    same = [float(a["prediction"] == b["prediction"]) for a, b in zip(fp32, int8, strict=True)]
    key = "label_agreement" if task == "classification" else "span_agreement"
    ci = interval(mean_of(same), len(same)).as_dict()
    figures = {key: ci["value"], "interval": {key: ci}, "items": len(same), "differ": int(len(same) - sum(same))}
    again = [b for b in int8 if b.get("rechecked")]
    if again:  # the guard's share, and what the bare int8 file would have agreed
        bare = [float(a["prediction"] == b.get("int8_prediction", b["prediction"])) for a, b in zip(fp32, int8,
                                                                                                   strict=True)]
        figures["guard"] = {"rechecked": len(again), "rechecked_share": round(len(again) / len(int8), 6),
                            "bare": {key: interval(mean_of(bare), len(bare)).as_dict(),
                                     "differ": int(len(bare) - sum(bare))}}
    return figures


def _cosines(fp32: list[np.ndarray], int8: list[np.ndarray]) -> dict[str, Any]:
    """Cosine between the fp32 and int8 vector of every sentence of the set."""
    cos = row_cosines(np.stack(fp32), np.stack(int8))
    ci = interval(mean_of(cos.tolist()), len(cos)).as_dict()
    return {"mean_cosine": ci["value"], "min_cosine": round(float(cos.min()), 6), "interval": {"mean_cosine": ci},
            "items": len(cos)}


def _scheme(model_dir: Path) -> str | None:
    from training.manifest import read_manifest

    entry = read_manifest(model_dir).get("onnx", {}).get(ONNX_FILES["onnx-int8"], {})
    return entry.get("scheme_name")


def _record(model_dir: Path, name: str, figures: dict[str, Any]) -> None:
    from training.manifest import read_manifest, write_manifest

    manifest = read_manifest(model_dir)
    if manifest:
        manifest.setdefault("int8_agreement", {})[name] = figures
        write_manifest(model_dir, manifest)


# --- CLI -----------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    """`python -m training agreement`."""
    from training.cli import add_command, add_item_options

    parser = add_command(subparsers, "agreement", "int8 against fp32 ONNX on an evaluation set: label / span "
                         "agreement or per-sentence cosine, with its interval, into the manifest.",
                         "python -m training agreement models/sst2-quick-student --data ../shared/data/sst2/dev.tsv")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=data_source, required=True, help="the evaluation file (as `evaluate` takes)")
    parser.add_argument("--name", help="evaluation set name (default e.g. sst2-dev)")
    parser.add_argument("--backend", default="onnx-int8", choices=sorted(FP32_OF),
                        help="the engine that runs the int8 file: ONNX Runtime (default) or OpenVINO")
    add_item_options(parser, "30:38")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from training.cli import columns_from_args

    if not (args.model_dir / ONNX_FILES["onnx-int8"]).is_file():
        raise ValueError(f"{args.model_dir}: no {ONNX_FILES['onnx-int8']} (export it first: python -m training export "
                         f"{args.model_dir})")
    figures = measure(args.model_dir, args.data, set_name=args.name, limit=args.limit,
                      articles=parse_articles(args.articles), threads=args.threads, columns=columns_from_args(args),
                      backend=args.backend)
    print(json.dumps(figures, indent=2))
    return 0

