"""What every inference route does the same way: enforce limits, resolve the model, run the
items through the model's batcher, and report per-item token counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request

from app.http.errors import STATUS, ServiceError
from app.repository.registry import Registry, ServedModel
from app.settings import Settings
from inference.tasks.classify import InputTooLong


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


async def run_items(
    model: ServedModel, payloads: Sequence[Any], param: str = "inputs", shadow: bool = True
) -> list[dict[str, Any]]:
    """Run the items through the model's batcher; a student with shadow traffic on also hands
    them to its teacher, off the response path (POST /compare, which runs both, passes False)."""
    try:
        outcomes = await model.batcher.run(payloads)
    except InputTooLong as exc:
        raise ServiceError(
            "input_too_long", str(exc).replace("input ", f"{param}.", 1), f"{param}.{exc.index}"
        ) from None
    if shadow and model.shadow is not None:
        model.shadow.offer(payloads, outcomes)
    return outcomes


def items_and_usage(outcomes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    items = [
        {"tokens": o["tokens"], "truncated": o["truncated"], **({"windows": o["windows"]} if "windows" in o else {})}
        for o in outcomes
    ]
    return items, {"tokens": sum(o["tokens"] for o in outcomes)}


def results_body(model: ServedModel, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """The response of /classify and /qa (and each side of /compare): results in input order,
    per-item token counts, and usage."""
    items, usage = items_and_usage(outcomes)
    return {"model": model.name, "results": [o["result"] for o in outcomes], "items": items, "usage": usage}
