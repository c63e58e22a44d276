"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path):

- `RequestContextMiddleware`: accepts or creates `X-Request-ID`, returns it, and writes one
  structured JSON log line per request (input text only when `log_inputs` asks for it);
- `BodyLimitMiddleware`: 413 for a body over the byte limit, from Content-Length before a byte
  is read, or while a chunked body streams in, so a huge body is never buffered or parsed whole;
- `ServingMiddleware`: request counts and latency per model for the inference routes."""

from __future__ import annotations

import contextvars
import datetime
import itertools
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import TASK_BY_PATH, error_response
from app.metrics import REQUEST_DURATION, REQUESTS

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_VALID_ID = re.compile(rb"[A-Za-z0-9._:=+/-]{1,128}")
_LOGGED_BODY_BYTES = 4096
_ID_PREFIX = os.urandom(10).hex()  # 20 hex digits per process, then a 12-digit counter
_ID_COUNTER = itertools.count()
access_log = logging.getLogger("distilserve.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served (if any)
    and the structured `fields` a caller passes as `extra`, so logs can be queried by field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": REQUEST_ID.get(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the `distilserve` loggers; idempotent (one handler only)."""
    logger = logging.getLogger("distilserve")
    if not any(getattr(h, "_distilserve", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._distilserve = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token (no log injection), else a new one."""
    given = _header(scope, b"x-request-id")
    if given is not None and _VALID_ID.fullmatch(given):
        return given.decode()
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"  # unique, without a urandom call per request


class AccessLog:
    """The per-request JSON line, built and written directly. Through `logging` (a LogRecord,
    the formatter, a datetime) it cost about 7% of the event loop's time under load; this
    writes the same fields (those of `JsonFormatter`) to the same stream, under the handler's
    lock, one write per line. It follows the `distilserve.access` logger's level."""

    def __init__(self) -> None:
        self._second, self._stamp = -1, ""

    def write(self, request_id: str, fields: dict[str, Any]) -> None:
        handler = _handler()
        if handler is None or not access_log.isEnabledFor(logging.INFO):
            return
        entry = {"ts": self._ts(), "level": "info", "logger": access_log.name, "msg": "request",
                 "request_id": request_id, **fields}
        line = orjson.dumps(entry, default=str).decode() + "\n"
        stream: TextIO = handler.stream
        with handler.lock:  # type: ignore[union-attr]
            stream.write(line)
            stream.flush()

    def _ts(self) -> str:
        """ISO 8601 UTC with milliseconds, as `JsonFormatter` writes it; the date part is
        formatted once per second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}+00:00"


def _handler() -> logging.StreamHandler | None:  # type: ignore[type-arg]
    """The JSON handler `configure_logging` installed (None before it ran)."""
    for handler in logging.getLogger("distilserve").handlers:
        if getattr(handler, "_distilserve", False):
            return handler  # type: ignore[return-value]
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, log_inputs: bool = False, access_log: bool = True) -> None:
        self.app, self.log_inputs = app, log_inputs
        self.access = AccessLog() if access_log else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        token = REQUEST_ID.set(rid)
        start, status, body = time.perf_counter(), [500], bytearray()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        async def receive_logged() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < _LOGGED_BODY_BYTES:
                body.extend(message.get("body", b"")[: _LOGGED_BODY_BYTES - len(body)])
            return message

        try:
            await self.app(scope, receive_logged if self.log_inputs else receive, send_with_id)
        finally:
            if self.access is not None:
                self._log(rid, scope, status[0], time.perf_counter() - start, body)
            REQUEST_ID.reset(token)

    def _log(self, rid: str, scope: Scope, status: int, seconds: float, body: bytearray) -> None:
        served: Any = scope.get("state", {}).get("served")
        fields: dict[str, Any] = {
            "method": scope["method"], "path": scope["path"], "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "model": served.name if served is not None else None,
            "backend": served.backend_kind if served is not None else None,
        }
        if self.log_inputs:
            fields["body"] = body.decode("utf-8", "replace")
        self.access.write(rid, fields)  # type: ignore[union-attr]


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. An HTTPException because
    FastAPI re-raises those from body parsing (anything else becomes a 400); the app's handler
    then renders it as `payload_too_large`."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.limit = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            message = str(BodyTooLarge(self.limit).detail)
            task = TASK_BY_PATH.get(scope["path"], "")
            await error_response("payload_too_large", message, "body", {"Connection": "close"}, task)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        """`receive` that counts body bytes as they arrive and stops past the limit."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return limited


class ShedMiddleware:
    """Early 429: when every model that serves a route's task has a full queue, the request is
    answered before its body is read, parsed or validated. Under overload most requests are
    the ones turned away, so their cost decides how much CPU is left for the admitted ones.
    Only certain rejections are made here (no model of the task could take even one item);
    everything else goes on to the route, whose own queue check is exact."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._by_task: dict[str, list[Any]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = TASK_BY_PATH.get(scope["path"]) if scope["type"] == "http" else None
        batchers = self._batchers(scope, task) if task else None
        if batchers and all(b.full for b in batchers):
            message = f"every {task} model's queue is full (items or estimated wait); retry later"
            headers = {"Retry-After": str(min(b.retry_after() for b in batchers))}
            await error_response("queue_full", message, None, headers, task or "")(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _batchers(self, scope: Scope, task: str) -> list[Any] | None:
        """Batchers per task, indexed once the models are loaded (the list never changes after)."""
        if self._by_task is None:
            state = scope["app"].state
            if not state.ready:
                return None
            self._by_task = {}
            for model in state.served:
                self._by_task.setdefault(model.spec.task, []).append(model.batcher)
        return self._by_task.get(task)


class ServingMiddleware:
    """Request counts and latency per (task, model, backend, status) for inference routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = TASK_BY_PATH.get(scope.get("path", "")) if scope["type"] == "http" else None
        if task is None:
            await self.app(scope, receive, send)
            return
        await self._measured(scope, receive, send, task)

    async def _measured(self, scope: Scope, receive: Receive, send: Send, task: str) -> None:
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, task, str(status[0]), time.perf_counter() - start)

    def _record(self, scope: Scope, task: str, status: str, seconds: float) -> None:
        """Metric children are looked up once per label set (a `labels()` call per request
        builds and hashes the label tuple under a lock, twice)."""
        served: Any = scope.get("state", {}).get("served")
        labels = served.labels if served is not None else {"model": "", "role": "", "backend": ""}
        key = (task, status, labels["model"], labels["role"], labels["backend"])
        if (children := self._children.get(key)) is None:
            children = self._children[key] = (
                REQUEST_DURATION.labels(task=task, status=status, **labels), REQUESTS.labels(task=task, status=status, **labels)
            )
        children[0].observe(seconds)
        children[1].inc()


def install(app: Any, settings: Any) -> Any:
    """Every middleware in its place, outermost first: request id + log, drain gate, API keys
    (only when keys are set), body limit, metrics, early 429. Returns the app's `Drain` state."""
    from app.security import ApiKeyMiddleware
    from app.shutdown import Drain, DrainMiddleware

    configure_logging()
    drain = Drain(settings.shutdown_grace_s)
    app.add_middleware(ShedMiddleware)
    app.add_middleware(ServingMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.api_keys:
        keys = [k.get_secret_value() for k in settings.api_keys]
        app.add_middleware(ApiKeyMiddleware, keys=keys, public_paths=settings.public_paths)
    app.add_middleware(DrainMiddleware, drain=drain)
    app.add_middleware(RequestContextMiddleware, log_inputs=settings.log_inputs, access_log=settings.access_log)
    return drain
