"""One student's link to its teacher: offer a sampled request's items to the teacher's background
batcher (never waiting for it) and record how far the two agree."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.http.errors import ServiceError
from app.observability.metrics import SHADOW_AGREEMENT, SHADOW_COSINE, SHADOW_REQUESTS, SHADOW_SPAN_F1
from app.repository.registry import ServedModel
from inference.agreement import item_agreement

if TYPE_CHECKING:
    from app.shadow.hub import ShadowHub


class ShadowLink:
    """One student's path to its teacher, with its metric children bound once."""

    def __init__(self, hub: ShadowHub, teacher: ServedModel, task: str) -> None:
        self.hub, self.teacher, self.task = hub, teacher, task
        self.batcher = hub.batcher_for(teacher)
        self._results = {r: SHADOW_REQUESTS.labels(task=task, result=r) for r in ("sent", "dropped", "failed")}

    def offer(self, payloads: Sequence[Any], outcomes: list[dict[str, Any]]) -> None:
        """Called with the student's answers before its response is sent; returns at once.
        Counts each sampled request once: dropped (not enqueued) or sent; a sent one is later
        compared (agreement metrics) or failed."""
        hub = self.hub
        if hub.rate <= 0 or hub.sample() >= hub.rate:
            return
        if not hub.admit(len(payloads)):
            self._results["dropped"].inc()
            return
        try:
            futures = self.batcher.submit(payloads)
        except ServiceError:  # its queue is full
            hub.in_flight -= len(payloads)
            self._results["dropped"].inc()
            return
        self._results["sent"].inc()
        hub.track(asyncio.get_running_loop().create_task(self._record(futures, outcomes)), len(payloads))

    async def _record(self, futures: list[asyncio.Future[Any]], student: list[dict[str, Any]]) -> None:
        answers = await asyncio.gather(*futures, return_exceptions=True)
        results = [a for a in answers if not isinstance(a, BaseException)]
        if len(results) < len(answers):  # an error, or starved past the deadline
            self._results["failed"].inc()
            return
        for teacher, own in zip(results, student, strict=True):
            observe(self.task, item_agreement(self.task, teacher["result"], own["result"]), self.hub.agree_cosine)


def agrees(task: str, item: dict[str, Any], agree_cosine: float) -> bool | None:
    """The agreement counter's verdict: same label; same answer (SQuAD-normalised); cosine at
    least `agree_cosine`. None when there is nothing to compare (embeddings of other sizes)."""
    if task == "classification":
        return bool(item["same_label"])
    if task == "qa":
        return bool(item["exact_match"])
    cos = item.get("cosine")
    return None if cos is None else cos >= agree_cosine


def observe(task: str, item: dict[str, Any], agree_cosine: float) -> None:
    verdict = agrees(task, item, agree_cosine)
    if verdict is not None:
        SHADOW_AGREEMENT.labels(task=task, agree=str(verdict).lower()).inc()
    if "span_f1" in item:
        SHADOW_SPAN_F1.labels(task=task).observe(item["span_f1"])
    if item.get("cosine") is not None:
        SHADOW_COSINE.labels(task=task).observe(item["cosine"])
