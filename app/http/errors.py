"""One table from error type to HTTP status, and one JSON shape for every error:
`{"error": {"message", "type", "param"}}`. Handlers never leak tracebacks or paths."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.http.responses import FastJSON
from app.observability.metrics import ERRORS

log = logging.getLogger("distilserve")

STATUS: dict[str, int] = {
    "invalid_request": 400,
    "unauthorized": 401,
    "wrong_task": 400,
    "not_found": 404,
    "model_not_found": 404,
    "method_not_allowed": 405,
    "invalid_input": 422,
    "payload_too_large": 413,
    "input_too_long": 413,
    "queue_full": 429,
    "not_ready": 503,
    "shutting_down": 503,
    "deadline_exceeded": 504,
    "internal_error": 500,
}


TASK_BY_PATH = {
    "/classify": "classification",
    "/qa": "qa",
    "/embed": "embedding",
    "/v1/embeddings": "embedding",
    "/similarity": "embedding",
    "/rerank": "embedding",
}


def _task(request: Request) -> str:
    return TASK_BY_PATH.get(request.url.path, "")


class ServiceError(Exception):
    """Raised anywhere in the service; rendered from the STATUS table."""

    def __init__(
        self, type_: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        if type_ not in STATUS:
            raise ValueError(f"error type {type_!r} missing from the status table")
        super().__init__(message)
        self.type, self.message, self.param, self.headers = type_, message, param, headers

    @property
    def status(self) -> int:
        return STATUS[self.type]


def error_response(
    type_: str, message: str, param: str | None = None, headers: dict[str, str] | None = None, task: str = ""
) -> FastJSON:
    """The single error body, counted by type."""
    ERRORS.labels(type=type_, task=task).inc()
    body = {"error": {"message": message, "type": type_, "param": param}}
    return FastJSON(body, status_code=STATUS[type_], headers=headers)


def _is_type_tag(part: Any) -> bool:
    """Pydantic puts union member names (`str`, `list[str]`) in error locations; a client's
    JSON has no such level, so they are dropped from the path."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def _field_path(loc: tuple[Any, ...]) -> str:
    """`("body", "inputs", 3)` → `inputs.3`: the dotted path a client can find in its JSON."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path") and not _is_type_tag(p)]
    return ".".join(parts) or "body"


def _error_path(err: dict[str, Any]) -> str:
    """The client's field for one pydantic error. A body that is not JSON has a character
    offset for a location: the field is the body. A model-level validator names its field
    by starting its message with `field: `."""
    if err.get("type") == "json_invalid":
        return "body"
    path = _field_path(tuple(err.get("loc", ())))
    named = str(err.get("msg", "")).removeprefix("Value error, ").split(": ", 1)
    if path == "body" and len(named) == 2 and named[0].isidentifier():
        return named[0]
    return path


def _validation_message(err: dict[str, Any]) -> str:
    """Pydantic's message plus the limit it enforced (ctx), so the client sees the bound."""
    path, msg = _error_path(err), str(err.get("msg", "invalid value"))
    msg = f"{path}: {msg.removeprefix('Value error, ').removeprefix(path + ': ')}"
    ctx = {k: v for k, v in (err.get("ctx") or {}).items() if isinstance(v, (int, float, str))}
    return f"{msg} ({', '.join(f'{k}={v}' for k, v in ctx.items())})" if ctx else msg


async def _validation(request: Request, exc: RequestValidationError) -> FastJSON:
    errors = exc.errors()
    paths = [_error_path(e) for e in errors] or ["body"]
    message = "; ".join(dict.fromkeys(_validation_message(e) for e in errors[:5])) or "invalid request"
    # a union reports each member's failure; the deepest path is the one inside the client's JSON
    param = max(paths, key=lambda p: p.count("."))
    return error_response("invalid_input", message, param, task=_task(request))


async def _service(request: Request, exc: ServiceError) -> FastJSON:
    return error_response(exc.type, exc.message, exc.param, exc.headers, _task(request))


async def _http(request: Request, exc: StarletteHTTPException) -> FastJSON:
    type_ = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "invalid_request"
    )
    param = "body" if exc.status_code in (400, 413) else None  # FastAPI's body parsing / the body limit
    return error_response(type_, str(exc.detail), param, getattr(exc, "headers", None), _task(request))


async def _unhandled(request: Request, exc: Exception) -> FastJSON:
    log.exception("unhandled error on %s", request.url.path)
    return error_response("internal_error", "internal server error", task=_task(request))


_HANDLERS: list[tuple[type[Exception], Callable[[Request, Any], Awaitable[FastJSON]]]] = [
    (RequestValidationError, _validation),
    (ServiceError, _service),
    (StarletteHTTPException, _http),
    (Exception, _unhandled),
]


def install(app: FastAPI) -> None:
    """Register the handlers; the catch-all turns anything unexpected into a bare 500."""
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)


async def render(request: Request, exc: Exception) -> FastJSON:
    """The response the registered handlers give `exc`, for routes called without Starlette's
    exception middleware (`app.http.middleware.ServiceMiddleware`'s direct calls)."""
    handler = next(h for kind, h in _HANDLERS if isinstance(exc, kind))
    return await handler(request, exc)
