"""How much of its teacher's quality a student keeps, with 95% intervals: per evaluation set and
backend both models were evaluated on, each model's headline figure and the student/teacher
ratio, from the per-item records `evaluate` stored (the paired bootstrap of inference.intervals)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from inference.intervals import interval, ratio_interval
from inference.modelfolder import quality_entries
from training.evaluate import read_predictions
from training.manifest import read_manifest
from training.scoring import headline_statistic

log = logging.getLogger(__name__)
HEADLINES = ("accuracy", "f1", "spearman")  # the figure a retention is quoted on, per kind of set


def retention(teacher_dir: Path, student_dir: Path) -> list[dict[str, Any]]:
    """One row per (set, backend) evaluated for both: figures, intervals, ratio and its interval."""
    teacher, student = read_manifest(teacher_dir), read_manifest(student_dir)
    theirs = {(s, b): e for s, b, e in quality_entries(student.get("quality") or {})}
    rows = []
    for set_name, backend, figures in quality_entries(teacher.get("quality") or {}):
        headline = next((h for h in HEADLINES if h in figures), None)
        if headline is None or (set_name, backend) not in theirs:
            continue
        try:
            rows.append(_row(teacher_dir, student_dir, set_name, backend, headline))
        except FileNotFoundError as exc:  # evaluated before per-item records were kept
            log.warning("retention of %s on %s skipped: %s", set_name, backend, exc)
    return rows


def _row(teacher_dir: Path, student_dir: Path, set_name: str, backend: str, headline: str) -> dict[str, Any]:
    t_records = read_predictions(teacher_dir, set_name, backend)
    s_records = read_predictions(student_dir, set_name, backend)
    if len(t_records) != len(s_records):
        raise ValueError(f"{set_name}@{backend}: teacher has {len(t_records)} items, student {len(s_records)}; "
                         "evaluate both on the same rows")
    t_stat, s_stat = headline_statistic(headline, t_records), headline_statistic(headline, s_records)
    items = len(t_records)
    return {"set": set_name, "backend": backend, "figure": headline, "items": items,
            "teacher": interval(t_stat, items).as_dict(), "student": interval(s_stat, items).as_dict(),
            "retention": ratio_interval(s_stat, t_stat, items).as_dict()}


def format_table(pair: str, rows: list[dict[str, Any]]) -> str:
    """The retention rows as a Markdown table (values with their 95% intervals)."""
    lines = [f"{pair}: student / teacher, 95% paired-bootstrap intervals",
             "| set | backend | figure | teacher | student | student / teacher |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [_fmt(r[k]) for k in ("teacher", "student", "retention")]
        lines.append(f"| {r['set']} ({r['items']}) | {r['backend']} | {r['figure']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: dict[str, float]) -> str:
    return f"{value['value']:.4g} [{value['low']:.4g}, {value['high']:.4g}]"
