"""A confidence cascade over one teacher/student pair: the student answers every item, and the
items it is least sure of (confidence below the pair's calibrated threshold) go to the teacher
in the same request, through the teacher's own batcher. If the teacher refuses them (queue full,
deadline), the student's answers stand, marked `"escalation": "refused"` with the reason: the
request never fails for want of the teacher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.http.errors import ServiceError
from app.observability.metrics import CASCADE_ITEMS
from inference.cascade import confidence
from inference.pipelines import ClassifyItem

if TYPE_CHECKING:
    from app.repository.registry import ServedModel

_REFUSALS = ("queue_full", "deadline_exceeded", "shutting_down", "not_ready")


@dataclass(slots=True)
class Cascade:
    name: str
    pair: str
    task: str
    student: ServedModel
    teacher: ServedModel
    threshold: float
    confidence: str
    calibration: dict[str, Any]
    threshold_source: str  # "calibration" | "setting"

    @property
    def role(self) -> str:
        return "cascade"

    @property
    def backend_kind(self) -> str:
        return self.student.backend_kind

    @property
    def labels(self) -> dict[str, str]:
        return {"model": self.name, "role": "cascade", "backend": self.backend_kind}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pair": self.pair, "task": self.task, "student": self.student.name,
                "teacher": self.teacher.name, "threshold": self.threshold, "confidence": self.confidence,
                "threshold_source": self.threshold_source, "calibration": self.calibration}

    async def run(self, payloads: Sequence[Any]) -> list[dict[str, Any]]:
        """Every item through the student; the unsure ones again through the teacher."""
        answers = await self.student.batcher.run([_all_labels(p) for p in payloads])
        unsure = [i for i, a in enumerate(answers) if confidence(self.confidence, a["result"]) < self.threshold]
        escalated = await self._escalate([payloads[i] for i in unsure])
        outcomes = [_answered(p, a, "student") for p, a in zip(payloads, answers, strict=True)]
        for i, teacher_answer in zip(unsure, escalated, strict=True):
            outcomes[i] = _merged(payloads[i], answers[i], teacher_answer)
        self._count(outcomes)
        return outcomes

    async def _escalate(self, payloads: list[Any]) -> list[dict[str, Any] | ServiceError]:
        """The teacher's answers, or its refusal for all of them (one request to its batcher)."""
        if not payloads:
            return []
        try:
            return list(await self.teacher.batcher.run(payloads))
        except ServiceError as exc:
            if exc.type not in _REFUSALS:
                raise
            return [exc] * len(payloads)

    def _count(self, outcomes: list[dict[str, Any]]) -> None:
        for outcome in outcomes:
            who = "refused" if outcome.get("escalation") == "refused" else outcome["answered_by"]
            CASCADE_ITEMS.labels(task=self.task, pair=self.pair, answered_by=who).inc()


def _all_labels(payload: Any) -> Any:
    """The student is asked for every label (the margin needs the second); trimmed after."""
    return dataclasses.replace(payload, top_k=None) if isinstance(payload, ClassifyItem) else payload


def _trim(payload: Any, result: Any) -> Any:
    top_k = getattr(payload, "top_k", None)
    return result[:top_k] if isinstance(payload, ClassifyItem) and top_k is not None else result


def _answered(payload: Any, answer: dict[str, Any], who: str) -> dict[str, Any]:
    return {**answer, "result": _trim(payload, answer["result"]), "answered_by": who}


def _merged(payload: Any, student: dict[str, Any], teacher: dict[str, Any] | ServiceError) -> dict[str, Any]:
    """An escalated item: the teacher's answer with both models' tokens, or the student's with
    the refusal."""
    if isinstance(teacher, ServiceError):
        return {**_answered(payload, student, "student"), "escalation": "refused", "reason": teacher.message}
    return {**_answered(payload, teacher, "teacher"), "tokens": student["tokens"] + teacher["tokens"],
            "escalation": "answered"}
