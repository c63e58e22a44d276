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
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.compare import item_agreement, summarize
from app.deps import RegistryDep, SettingsDep
from app.errors import ServiceError
from app.registry import Registry, ServedModel
from app.responses import FastJSON
from app.routes import classify, embed, qa
from app.routes.common import check_limits, error_docs, results_body, run_items
from app.schemas import ClassifyRequest, EmbedRequest, ItemInfo, QARequest, Usage
from app.settings import Settings

router = APIRouter(tags=["comparison"])

TASK_BODIES: dict[str, type[BaseModel]] = {"classification": ClassifyRequest, "qa": QARequest, "embedding": EmbedRequest}


class CompareRequest(BaseModel):
    """`task`, `teacher`, `student`; every other field is the task endpoint's own (validated by
    that endpoint's schema), e.g. `inputs` and `top_k` for classification."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"task": "classification", "inputs": ["a gripping, funny film", "dull and overlong"]},
        {"task": "qa", "question": "Where do penguins live?", "context": "Most penguins live in Antarctica."},
        {"task": "embedding", "inputs": ["A man is playing a guitar."], "teacher": "teacher@onnx"},
    ]})
    task: Literal["classification", "qa", "embedding"]
    teacher: str = Field(default="teacher", description="model name or alias (teacher, teacher@backend)")
    student: str = Field(default="student", description="model name or alias (student, student@backend)")

    def task_body(self) -> BaseModel:
        """The remaining fields as the task endpoint's request; its validation errors answer 422."""
        fields = dict(self.model_extra or {})
        if "model" in fields:
            raise ServiceError("invalid_input", "model: /compare takes `teacher` and `student` instead", "model")
        try:
            return TASK_BODIES[self.task].model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None


class CompareSide(BaseModel):
    model: str
    role: str
    backend: str
    results: list[Any] = Field(description="as the task endpoint returns them (embeddings: vectors)")
    items: list[ItemInfo]
    usage: Usage
    latency_ms: float = Field(description="this model's request time: queue, tokenize, inference, postprocess")


class CompareResponse(BaseModel):
    task: str
    teacher: CompareSide
    student: CompareSide
    agreement: list[dict[str, float | bool | None]] = Field(
        description="per item: same_label | span_f1 + exact_match | cosine (null when dimensions differ)")
    summary: dict[str, float | None] = Field(description="means over the items")
    latency_ratio: float | None = Field(description="student latency / teacher latency")
    speedup: float | None = Field(description="teacher latency / student latency")


def _resolve(registry: Registry, name: str, task: str, param: str) -> ServedModel:
    try:
        return registry.resolve(name, task)
    except ServiceError as exc:
        exc.param = param
        raise


def _payloads(task: str, body: Any, model: ServedModel, settings: Settings) -> list[Any]:
    """The queued items, built by the task endpoint's own code."""
    if task == "classification":
        return classify.prepare(body, settings)
    if task == "qa":
        return qa.prepare(body, settings)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    check_limits(texts, settings)
    return embed.prepare(texts, model, body.normalize, body.truncate)


async def _side(model: ServedModel, payloads: list[Any]) -> dict[str, Any]:
    start = time.perf_counter()
    outcomes = await run_items(model, payloads, shadow=False)
    latency_ms = (time.perf_counter() - start) * 1000.0
    return {**results_body(model, outcomes), "role": model.spec.role, "backend": model.backend_kind,
            "latency_ms": latency_ms}


@router.post("/compare", response_model=CompareResponse, responses=error_docs())
async def compare(body: CompareRequest, registry: RegistryDep, settings: SettingsDep) -> FastJSON:
    """Run teacher and student on the same inputs at once; return both outputs, per-item
    agreement of the student with the teacher, and each model's latency with their ratio."""
    task_body = body.task_body()
    teacher = _resolve(registry, body.teacher, body.task, "teacher")
    student = _resolve(registry, body.student, body.task, "student")
    t_items = _payloads(body.task, task_body, teacher, settings)  # limits fail before either runs
    s_items = _payloads(body.task, task_body, student, settings)
    t_side, s_side = await asyncio.gather(_side(teacher, t_items), _side(student, s_items))
    agreement = [item_agreement(body.task, t, s) for t, s in zip(t_side["results"], s_side["results"])]
    t_ms, s_ms = t_side["latency_ms"], s_side["latency_ms"]
    return FastJSON({
        "task": body.task, "teacher": t_side, "student": s_side, "agreement": agreement,
        "summary": summarize(agreement), "latency_ratio": s_ms / t_ms if t_ms > 0 else None,
        "speedup": t_ms / s_ms if s_ms > 0 else None,
    })
