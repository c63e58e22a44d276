"""Agreement between a teacher's and a student's answers to the same input, per task.

One place for the maths used by POST /compare and by shadow traffic, so that the live figures a
user sees in a response and the ones Prometheus aggregates are the same numbers. Span F1 uses the
official SQuAD normalisation from `training.squad_metric` (pure Python, no torch), so that
"F1 against the teacher" means what the SQuAD F1 of the manifests means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inference.squad_metric import f1 as squad_f1
from inference.squad_metric import normalize_answer


def same_label(teacher: Sequence[dict[str, Any]], student: Sequence[dict[str, Any]]) -> bool:
    """Classification: do both models rank the same label first (results are sorted best first)?"""
    return bool(teacher) and bool(student) and teacher[0]["label"] == student[0]["label"]


def span_f1(student: str, teacher: str) -> float:
    """SQuAD token F1 of the student's answer against the teacher's as if it were the gold one.

    Two answers that are both empty after normalisation (both "no answer") agree fully: the
    official metric would score that 0, which would count perfect agreement as disagreement."""
    if not normalize_answer(student) and not normalize_answer(teacher):
        return 1.0
    return squad_f1(student, teacher)


def cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cosine similarity; None when the dimensions differ (a student with a smaller hidden size
    lives in another space, so no cosine is meaningful) or a vector is all zeros."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return None
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else None


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of `a` with the same row of `b` ([items, dim] each): two runs' vectors
    of the same inputs (int8 against fp32, one server against another)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def _top_answer(answers: Sequence[dict[str, Any]]) -> str:
    return answers[0]["answer"] if answers else ""


def item_agreement(task: str, teacher: Any, student: Any) -> dict[str, Any]:
    """Per-item agreement of one input's results (`results[i]` of each model).

    classification: `same_label`; qa: `span_f1` of the top answers and `exact_match` (the same
    answer after normalisation); embedding: `cosine` (null when the dimensions differ)."""
    if task == "classification":
        return {"same_label": same_label(teacher, student)}
    if task == "qa":
        t, s = _top_answer(teacher), _top_answer(student)
        return {"span_f1": span_f1(s, t), "exact_match": normalize_answer(s) == normalize_answer(t)}
    if task == "embedding":
        return {"cosine": cosine(teacher, student)}
    raise ValueError(f"unknown task {task!r}")


def summarize(items: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Means over a request's items: booleans become rates; null cosines are left out (the
    mean is null when none is defined)."""
    keys = dict.fromkeys(k for item in items for k in item)
    out: dict[str, float | None] = {}
    for key in keys:
        values = [float(item[key]) for item in items if item.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out
