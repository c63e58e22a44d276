"""What every inference route does the same way: enforce limits, resolve the model, run the
items through the model's batcher, and report per-item token counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request

from app.engine.cascade import Cascade
from app.http.errors import STATUS, ServiceError
from app.repository.registry import Registry, Servable, ServedModel, is_cascade
from app.settings import Settings
from inference.tasks.classify import InputTooLong

# QA windows (read, and left unread under max_windows); a cascade's who and why; an int8 guard's re-read
_ITEM_EXTRAS = ("windows", "windows_skipped", "answered_by", "escalation", "reason", "rechecked")


def error_docs() -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses, all with the one error shape."""
    from app.http.schemas import ErrorResponse

    return {code: {"model": ErrorResponse, "description": "error"} for code in sorted(set(STATUS.values()))}


def check_limits(texts: Sequence[str], settings: Settings, param: str = "inputs") -> None:
    """413 for too many items or an over-long text: the limits are settings."""
    if len(texts) > settings.max_items:
        raise ServiceError(
            "payload_too_large", f"{len(texts)} items exceed the limit of {settings.max_items}", param
        )
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            raise ServiceError(
                "payload_too_large",
                f"{param}.{i} has {len(text)} characters; the limit is {settings.max_chars}",
                f"{param}.{i}",
            )


def check_max(value: int | None, limit: int, param: str) -> None:
    """422 naming the field and the limit, for knobs bounded by settings."""
    if value is not None and value > limit:
        raise ServiceError("invalid_input", f"{param}: must be at most {limit} (got {value})", param)


def resolve(registry: Registry, request: Request, name: str | None, task: str, settings: Settings) -> ServedModel:
    """Name or alias → served model (the task's default when none is named); remembered on the
    request for the metrics middleware."""
    model = registry.resolve(name, task) if name else registry.resolve_default(task, settings.default_model(task))
    request.state.served = model
    return model


def resolve_servable(registry: Registry, request: Request, name: str | None, task: str, settings: Settings
                     ) -> Servable:
    """As `resolve`, where a cascade may answer too (/classify, /qa)."""
    default = settings.default_model(task)
    if name or is_cascade(default):
        model: Servable = registry.resolve_any(name or default, task)
    else:
        model = registry.resolve_default(task, default)
    request.state.served = model
    return model


async def run_items(
    model: Servable, payloads: Sequence[Any], param: str = "inputs", shadow: bool = True
) -> list[dict[str, Any]]:
    """Run the items through the model's batcher (a cascade: the student's, then the teacher's
    for the unsure items); a student with shadow traffic on also hands them to its teacher, off
    the response path (POST /compare, which runs both, passes False)."""
    try:
        outcomes = await (model.run(payloads) if isinstance(model, Cascade) else model.batcher.run(payloads))
    except InputTooLong as exc:
        raise ServiceError(
            "input_too_long", str(exc).replace("input ", f"{param}.", 1), f"{param}.{exc.index}"
        ) from None
    if shadow and isinstance(model, ServedModel) and model.shadow is not None:
        model.shadow.offer(payloads, outcomes)
    return outcomes


def items_and_usage(outcomes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    items = [{"tokens": o["tokens"], "truncated": o["truncated"], **{k: o[k] for k in _ITEM_EXTRAS if k in o}}
             for o in outcomes]
    return items, {"tokens": sum(o["tokens"] for o in outcomes)}


def results_body(model: Servable, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """The response of /classify and /qa (and each side of /compare): results in input order,
    per-item token counts, and usage."""
    items, usage = items_and_usage(outcomes)
    return {"model": model.name, "results": [o["result"] for o in outcomes], "items": items, "usage": usage}
