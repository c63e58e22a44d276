"""`guard`: calibrate an int8 file's guard (`inference.guard`) on the model's validation split.

The fp32 and the bare int8 file answer the split through the serving code. The threshold kept
is how far int8 moves an answer's lead on 99.5% of the items whose first two answers are the
same two in both files, and at least the lead of every item whose answer it changed
(`inference.guard.choose_threshold`), unless that would read more than `MOST` of the items
again (then the int8 file would run at about fp32's cost, and the threshold is capped there).
It is recorded beside the int8 file in the manifest (`onnx.model.int8.onnx.guard`), with what it
caught on the split and the share of items it reads again; the service and `evaluate` apply it
from there. The report set is never looked at: `agreement` measures it afterwards. An export
records the guard it chose its int8 file with, on the few parity items (`training.int8_choice`);
this replaces it with one calibrated on the whole split (a build runs both).
`--backend openvino-int8` calibrates OpenVINO's run of the same file under its own key, and
chooses the activation group size it is served with (`choose_group`).

  python -m training guard models/squad-quick-student
  python -m training guard models/squad-quick-student --backend openvino-int8 --limit 120
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference.backends import FP32_OF, GUARD_KEYS, ONNX_FILES
from inference.guard import QUANTILE, choose_threshold
from inference.modelfolder import read_spec
from training.calibrate import validation_split
from training.data import Columns
from training.evaluate import data_source, evaluate_model, parse_articles
from training.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)

MOST = 0.25  # the largest share of items the guard may read again in fp32
KEEP = 0.995  # answers an openvino-int8 group size must keep, guarded, on the split (`choose_group`)
GROUPS = (32, 64, 128, 256)  # openvino-int8's activation group sizes tried; OpenVINO's default first
TASKS = ("classification", "qa")  # an embedding has no best answer to flip: its int8 check is a cosine


def calibrate(model_dir: Path, data: Path | str | None = None, articles: Sequence[int] | None = None,
              limit: int | None = None, threads: int | None = None, columns: Columns | None = None,
              fp32: dict[str, Any] | None = None, backend: str = "onnx-int8",
              groups: Sequence[int] = GROUPS) -> dict[str, Any]:
    """Evaluate fp32 (unless given: `evaluate_model`'s result on the same items) and bare int8 on
    the validation split (or `data`), choose the threshold, record it beside the int8 file;
    returns the manifest entry. `backend`: the engine whose int8 arithmetic is calibrated
    (`openvino-int8` quantises activations in other groups than ONNX Runtime, so its near ties
    move by other amounts; recorded under its own key, `inference.backends.GUARD_KEYS`, with the
    activation group size of `groups` it serves best with, `choose_group`)."""
    model_dir = Path(model_dir)
    task = read_spec(model_dir).task
    if task not in TASKS:
        raise ValueError(f"{model_dir.name}: task {task!r} has no best answer to keep; the int8 guard serves "
                         f"{', '.join(TASKS)}")
    if not (model_dir / ONNX_FILES["onnx-int8"]).is_file():
        raise ValueError(f"{model_dir}: no {ONNX_FILES['onnx-int8']} to guard (export it first)")
    path, articles = (data, articles) if data else validation_split(model_dir)
    args: dict[str, Any] = {"articles": articles, "limit": limit, "threads": threads, "columns": columns,
                            "write": False}
    fp32 = fp32 or evaluate_model(model_dir, FP32_OF[backend], data_source(str(path)), **args)
    if backend == "openvino-int8":
        chosen = choose_group(model_dir, path, fp32, args, groups)
    else:
        chosen = choose(fp32["records"], evaluate_model(model_dir, backend, data_source(str(path)), guard=False,
                                                        **args)["records"])
    where = {"path": str(path), **({"articles": list(articles)} if articles else {})}
    entry = {**chosen, "data": where, "backend": backend,
             "calibrated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    _record(model_dir, entry, GUARD_KEYS[backend])
    log.info("%s: %s guard %.4g reads %.1f%% of validation items again; agreement %.4f -> %.4f", model_dir.name,
             backend, entry["threshold"], 100 * entry["rechecked_share"], entry["validation"]["agreement_bare"],
             entry["validation"]["agreement_guarded"])
    return entry


def choose_group(model_dir: Path, path: Path | str, fp32: dict[str, Any], args: dict[str, Any],
                 groups: Sequence[int] = GROUPS) -> dict[str, Any]:
    """`openvino-int8`'s activation group size, chosen as served: OpenVINO quantises an int8
    MatMul's input in groups of this many values, one scale each; bigger groups run faster and
    move answers more (on the QA quick student's 18 windows of 256 tokens: 970 ms in groups of
    32, OpenVINO's default, 769 ms in groups of 256). Each of `groups` answers the split bare and
    gets its own threshold; its cost is its time plus the share it reads again times fp32's
    (as `training.int8_choice` weighs ONNX Runtime's candidates). The cheapest whose guarded
    answers keep `KEEP` of fp32's is kept (else the one that keeps most), with every group's
    figures beside it; the service compiles the file with that group size."""
    tried = []
    for group in groups:
        int8 = evaluate_model(model_dir, "openvino-int8", data_source(str(path)), guard=False, openvino_group=group,
                              **args)
        entry = choose(fp32["records"], int8["records"])
        cost = float(int8["seconds"]) + entry["rechecked_share"] * float(fp32["seconds"])
        tried.append({**entry, "group_size": group, "bare_s": int8["seconds"], "cost_s": round(cost, 3)})
    kept = [e for e in tried if e["validation"]["agreement_guarded"] >= KEEP] or \
        [max(tried, key=lambda e: e["validation"]["agreement_guarded"])]
    best = min(kept, key=lambda e: e["cost_s"])
    log.info("%s: openvino-int8 in groups of %d (%s)", model_dir.name, best["group_size"],
             ", ".join(f"{e['group_size']}: {e['cost_s']} s" for e in tried))
    return {**best, "fp32_s": fp32["seconds"],
            "groups": {str(e["group_size"]): {"threshold": e["threshold"], "rechecked_share": e["rechecked_share"],
                                              "validation": e["validation"], "bare_s": e["bare_s"],
                                              "cost_s": e["cost_s"]} for e in tried}}


def choose(fp32: list[dict[str, Any]], int8: list[dict[str, Any]]) -> dict[str, Any]:
    """The threshold and what it does on the split, from the two runs' per-item records."""
    if len(fp32) != len(int8):
        raise ValueError(f"the fp32 and int8 runs cover different items ({len(fp32)} vs {len(int8)})")
    changed = [a["prediction"] != b["prediction"] for a, b in zip(fp32, int8, strict=True)]
    leads, fp32_leads = _leads(int8), _leads(fp32)
    threshold, share = choose_threshold(leads, fp32_leads, changed, _same_pair(fp32, int8), MOST)
    missed = sum(1 for c, lead in zip(changed, leads, strict=True) if c and not lead < threshold)
    n = len(changed)
    return {"threshold": round(threshold, 6), "rechecked_share": round(share, 6), "most": MOST,
            "quantile": QUANTILE, "lead": "log(best score / second score) of the int8 answer",
            "validation": {"items": n, "changed": sum(changed), "missed": missed,
                           "agreement_bare": round(1 - sum(changed) / max(1, n), 6),
                           "agreement_guarded": round(1 - missed / max(1, n), 6)}}


def _same_pair(fp32: list[dict[str, Any]], int8: list[dict[str, Any]]) -> list[bool]:
    """Items whose first two answers are the same two in both runs (in either order)."""
    return [{a["prediction"], a.get("runner_up")} == {b["prediction"], b.get("runner_up")}
            for a, b in zip(fp32, int8, strict=True)]


def _leads(records: list[dict[str, Any]]) -> list[float]:
    return [math.inf if r.get("lead") is None else float(r["lead"]) for r in records]


def _record(model_dir: Path, entry: dict[str, Any], key: str) -> None:
    manifest = read_manifest(model_dir)
    int8 = manifest.get("onnx", {}).get(ONNX_FILES["onnx-int8"])
    if isinstance(int8, dict):
        int8[key] = entry
        write_manifest(model_dir, manifest)


# --- CLI -----------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    """`python -m training guard`."""
    from training.cli import add_command, add_item_options

    parser = add_command(subparsers, "guard", "Calibrate the int8 file's guard on the validation split: the "
                         "lead under which an int8 answer is read again in fp32 (recorded in the manifest).",
                         "python -m training guard models/squad-quick-student")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", help="calibrate on this file instead of the recorded validation split")
    parser.add_argument("--backend", default="onnx-int8", choices=sorted(GUARD_KEYS),
                        help="the engine whose int8 answers are calibrated (OpenVINO's has its own threshold)")
    parser.add_argument("--openvino-groups", type=int, nargs="+", default=list(GROUPS), metavar="N",
                        help="openvino-int8: the activation group sizes tried, the cheapest as served kept "
                        f"(default {' '.join(map(str, GROUPS))})")
    add_item_options(parser, "26:30")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from training.cli import columns_from_args

    entry = calibrate(args.model_dir, args.data, parse_articles(args.articles), args.limit, args.threads,
                      columns_from_args(args), backend=args.backend, groups=args.openvino_groups)
    print(json.dumps(entry, indent=2))
    return 0
