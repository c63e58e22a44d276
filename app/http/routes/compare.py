"""POST /compare: teacher and student on the same input in one call - both outputs, how far they
agree item by item, and what each one took.

The body is the task's own request body (`/classify`, `/qa` or `/embed`: same inputs, same
options, same limits) plus `task` and the two model names. Both models run at once through
their normal batchers, exactly as their own endpoints would run them, so the outputs are the
ones those endpoints return and the latencies are what a caller of each would see under the
same load. These requests are never shadowed: the teacher already runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter

from app.http.deps import DirectRoute, RegistryDep, SettingsDep
from app.http.errors import ServiceError
from app.http.responses import FastJSON
from app.http.routes import classify, embed, qa
from app.http.routes.common import check_limits, error_docs, results_body, run_items
from app.http.schemas import CompareRequest, CompareResponse
from app.repository.registry import Registry, Servable, ServedModel
from app.settings import Settings
from inference.agreement import item_agreement, summarize

router = APIRouter(tags=["comparison"], route_class=DirectRoute)

def _resolve(registry: Registry, name: str, task: str, param: str) -> Servable:
    try:
        return registry.resolve(name, task) if task == "embedding" else registry.resolve_any(name, task)
    except ServiceError as exc:
        exc.param = param
        raise


def _payloads(task: str, body: Any, model: Servable, settings: Settings) -> list[Any]:
    """The queued items, built by the task endpoint's own code."""
    if task == "classification":
        return classify.prepare(body, settings)
    if task == "qa":
        return qa.prepare(body, settings)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    check_limits(texts, settings)
    assert isinstance(model, ServedModel)  # embeddings have no cascade (`_resolve`)
    return embed.prepare(texts, model, body.normalize, body.truncate)


async def _side(model: Servable, payloads: list[Any]) -> dict[str, Any]:
    start = time.perf_counter()
    outcomes = await run_items(model, payloads, shadow=False)
    latency_ms = (time.perf_counter() - start) * 1000.0
    return {**results_body(model, outcomes), "role": model.role, "backend": model.backend_kind,
            "latency_ms": latency_ms}


@router.post("/compare", response_model=CompareResponse, responses=error_docs())
async def compare(body: CompareRequest, registry: RegistryDep, settings: SettingsDep) -> FastJSON:
    """Run teacher and student on the same inputs at once; return both outputs, per-item
    agreement of the student with the teacher, and each model's latency with their ratio."""
    task_body = body.task_body()
    teacher = _resolve(registry, body.side("teacher"), body.task, "teacher")
    student = _resolve(registry, body.side("student"), body.task, "student")
    t_items = _payloads(body.task, task_body, teacher, settings)  # limits fail before either runs
    s_items = _payloads(body.task, task_body, student, settings)
    t_side, s_side = await asyncio.gather(_side(teacher, t_items), _side(student, s_items))
    agreement = [item_agreement(body.task, t, s) for t, s in zip(t_side["results"], s_side["results"], strict=False)]
    t_ms, s_ms = t_side["latency_ms"], s_side["latency_ms"]
    return FastJSON({
        "task": body.task, "teacher": t_side, "student": s_side, "agreement": agreement,
        "summary": summarize(agreement), "latency_ratio": s_ms / t_ms if t_ms > 0 else None,
        "speedup": t_ms / s_ms if s_ms > 0 else None,
    })
