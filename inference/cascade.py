"""The confidence cascade's maths, shared by the service (which escalates) and training's
`calibrate` (which picks the threshold): how sure the student is of one answer, and the least
escalation that keeps the cascade's quality within a tolerance of the teacher's.

Confidence is read from the student's own served result: for classification the top label's
probability or its margin over the second (the one that calibrates better is recorded per
pair), for QA the best span's score (start x end probability, as the HF pipeline scores it).
Items below the threshold go to the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCES = {"classification": ("top_probability", "margin"), "qa": ("span_score",)}


def confidence(kind: str, result: Sequence[dict[str, Any]]) -> float:
    """The student's confidence in one served result (labels best first, or answers best first)."""
    if not result:
        return 0.0
    if kind == "top_probability" or kind == "span_score":
        return float(result[0]["score"])
    if kind == "margin":
        second = float(result[1]["score"]) if len(result) > 1 else 0.0
        return float(result[0]["score"]) - second
    raise ValueError(f"unknown cascade confidence {kind!r}; known: top_probability, margin, span_score")


@dataclass(frozen=True, slots=True)
class Calibration:
    """What `calibrate` found on a validation split, as recorded in the pair's manifests."""

    confidence: str
    threshold: float
    escalation_rate: float
    cascade_quality: float
    student_quality: float
    teacher_quality: float
    items: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence, "threshold": round(self.threshold, 6),
            "escalation_rate": round(self.escalation_rate, 6), "cascade_quality": round(self.cascade_quality, 6),
            "student_quality": round(self.student_quality, 6), "teacher_quality": round(self.teacher_quality, 6),
            "items": self.items,
        }


def sweep(confidences: Sequence[float], student: Sequence[float], teacher: Sequence[float]
          ) -> list[tuple[float, float, float]]:
    """Every useful threshold as (threshold, escalation rate, cascade quality): escalating the
    items below a threshold replaces their student score by the teacher's. Thresholds are the
    distinct confidences (escalate everything below each one), plus 'escalate nothing'."""
    conf = np.asarray(confidences, dtype=np.float64)
    s, t = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    order = np.argsort(conf, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum((t - s)[order])])  # escalating the k least confident
    base, n = s.sum(), len(conf)
    points = [(0.0, 0.0, float(base / n))]
    for k in range(1, n + 1):
        if k < n and conf[order[k]] == conf[order[k - 1]]:
            continue  # a threshold cannot split equal confidences
        threshold = float(conf[order[k]]) if k < n else float(np.nextafter(conf[order[-1]], np.inf))
        points.append((threshold, k / n, float((base + gain[k]) / n)))
    return points


def least_escalation(points: Sequence[tuple[float, float, float]], teacher_quality: float, tolerance: float
                     ) -> tuple[float, float, float]:
    """The point of least escalation whose quality is within `tolerance` of the teacher's (the
    full escalation always is: then the cascade is the teacher)."""
    for point in sorted(points, key=lambda p: p[1]):
        if point[2] >= teacher_quality - tolerance:
            return point
    return max(points, key=lambda p: p[1])


def calibrate(kind: str, confidences: Sequence[float], student: Sequence[float], teacher: Sequence[float],
              tolerance: float) -> Calibration:
    """Per-item student confidences and per-item scores (0/1 correct, or SQuAD F1 on a 0-1
    scale) of student and teacher on one validation split -> the recorded calibration."""
    if not (len(confidences) == len(student) == len(teacher)) or not confidences:
        raise ValueError("calibration needs one confidence and one student and teacher score per item")
    teacher_quality = float(np.mean(teacher))
    threshold, rate, quality = least_escalation(sweep(confidences, student, teacher), teacher_quality, tolerance)
    return Calibration(kind, threshold, rate, quality, float(np.mean(student)), teacher_quality, len(confidences))
