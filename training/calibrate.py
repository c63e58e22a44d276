"""`calibrate`: the cascade threshold of one teacher/student pair, from a validation split.

Both models answer the split through the serving code (`evaluate` without recording); per item
the student's confidence (top-label probability and margin for classification, best span score
for QA) and each model's score (0/1 correct, or SQuAD F1). The threshold kept is the one of least
escalation at which the cascade's figure is within `tolerance` points of the teacher's; for
classification the confidence measure that needs less escalation wins. Threshold, escalation
rate and the three figures go into both models' manifests (`cascade`), where the service reads them.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference.backends import KINDS
from inference.cascade import CONFIDENCES, Calibration, calibrate, confidence, sweep
from inference.modelfolder import read_spec
from training.evaluate import data_source, evaluate_model, parse_articles
from training.manifest import read_manifest, update_manifest
from training.paths import models_dir

log = logging.getLogger(__name__)


def pair_folders(models: Path, pair: str) -> tuple[Path, Path]:
    """The pair's teacher and student folders (by the `pair` their manifests name)."""
    found = {}
    for folder in sorted(p for p in models.iterdir() if (p / "manifest.json").is_file()):
        spec = read_spec(folder)
        if spec.pair == pair and spec.role in ("teacher", "student"):
            found[spec.role] = folder
    if set(found) != {"teacher", "student"}:
        have = sorted(found) or "no models"
        raise ValueError(f"pair {pair!r}: found {have} in {models}; need a teacher and a student")
    return found["teacher"], found["student"]


def validation_split(student: Path) -> tuple[str, list[int] | None]:
    """The data file (and SQuAD articles) of the validation split training recorded."""
    entry = read_manifest(student).get("validation")
    if not entry:
        raise ValueError(f"{student.name}: its manifest records no validation split; pass --data FILE")
    return entry["path"], entry.get("articles")


def run_key(model: str, backend: str, path: str | Path, articles: list[int] | None, limit: int | None
            ) -> tuple[Any, ...]:
    """What identifies one validation run of a model: a build keeps its runs by this key, so the
    int8 guard's fp32 run is not run again for the cascade."""
    return model, backend, str(path), tuple(articles or ()), limit


def score_of(task: str, record: dict[str, Any]) -> float:
    return float(record["correct"]) if task == "classification" else float(record["f1"])


def run_calibration(pair: str, models: Path, data: str | None, articles: list[int] | None, backend: str,
                    tolerance: float, limit: int | None, known: dict[tuple[Any, ...], dict] | None = None
                    ) -> dict[str, Any]:
    """Evaluate both models on the split (unless `known` has the run, by `run_key`), calibrate
    every confidence kind, record the best."""
    teacher_dir, student_dir = pair_folders(models, pair)
    task = read_spec(student_dir).task
    if task not in CONFIDENCES:
        raise ValueError(f"pair {pair!r} is a {task} pair; cascades serve classification and qa")
    path, articles = (data, articles) if data else validation_split(student_dir)
    runs = {role: _answers(folder, backend, path, articles, limit, known or {})
            for role, folder in (("teacher", teacher_dir), ("student", student_dir))}
    s_records, t_records = runs["student"]["records"], runs["teacher"]["records"]
    student = [score_of(task, r) for r in s_records]
    teacher = [score_of(task, r) for r in t_records]
    found = {kind: _calibrated(kind, task, s_records, student, teacher, tolerance) for kind in CONFIDENCES[task]}
    best = min(found.values(), key=lambda c: (c.escalation_rate, CONFIDENCES[task].index(c.confidence)))
    entry = {**best.as_dict(), "tolerance_points": tolerance * 100, "backend": backend,
             "data": {"path": str(path), **({"articles": articles} if articles else {})},
             "others": {k: c.as_dict() for k, c in found.items() if k != best.confidence},
             "calibrated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for folder in (teacher_dir, student_dir):
        update_manifest(folder, cascade=entry)
    return {"pair": pair, **entry, "curve": _curve(best.confidence, s_records, student, teacher)}


def _answers(folder: Path, backend: str, path: str, articles: list[int] | None, limit: int | None,
             known: dict[tuple[Any, ...], dict]) -> dict[str, Any]:
    """`folder`'s answers on the split: a run the caller already has (`known`), or a new one."""
    found = known.get(run_key(folder.name, backend, path, articles, limit))
    if found:
        log.info("calibrate: %s answered the split already in this build; its answers are reused", folder.name)
        return found
    return evaluate_model(folder, backend, data_source(path), articles=articles, limit=limit, write=False)


def _confidences(kind: str, task: str, records: list[dict[str, Any]]) -> list[float]:
    if task == "classification":
        return [confidence(kind, r["labels"]) for r in records]
    return [float(r["score"]) for r in records]


def _calibrated(kind: str, task: str, records: list[dict[str, Any]], student: list[float], teacher: list[float],
                tolerance: float) -> Calibration:
    return calibrate(kind, _confidences(kind, task, records), student, teacher, tolerance)


def _curve(kind: str, records: list[dict[str, Any]], student: list[float], teacher: list[float]
           ) -> list[dict[str, float]]:
    """Threshold, escalation rate and cascade figure at every distinct confidence (for plots)."""
    task = "classification" if "labels" in records[0] else "qa"
    points = sweep(_confidences(kind, task, records), student, teacher)
    return [{"threshold": t, "escalation_rate": e, "quality": q} for t, e, q in points]


def register(subparsers: argparse._SubParsersAction) -> None:
    from training.cli import add_command

    parser = add_command(subparsers, "calibrate", "Find a pair's cascade threshold on a validation split and "
                         "record it in the pair's manifests (the service reads it at start-up).",
                         "python -m training calibrate sst2-quick   # on the validation split its training carved")
    parser.add_argument("pair", help="pair name, e.g. sst2-quick (see GET /models)")
    parser.add_argument("--data", help="validation data file (default: the split the pair's training recorded)")
    parser.add_argument("--articles", help="SQuAD articles of --data as a slice '26:30' or a list")
    parser.add_argument("--models", type=Path, default=models_dir(),
                        help="model repository (env DISTILSERVE_MODELS_DIR)")
    parser.add_argument("--backend", default="onnx", choices=KINDS)
    parser.add_argument("--tolerance", type=float, default=0.3, help="points below the teacher the cascade may be")
    parser.add_argument("--limit", type=int, help="first N items of the split only")
    parser.add_argument("--curve", type=Path, help="write the threshold curve as JSON here")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """A missing pair or split: one `error: ...` line and exit status 2 (training.cli.main)."""
    result = run_calibration(args.pair, args.models, args.data, parse_articles(args.articles), args.backend,
                             args.tolerance / 100, args.limit)
    if args.curve:
        args.curve.write_text(json.dumps(result["curve"], indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=2))
    return 0
