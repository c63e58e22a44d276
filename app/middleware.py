"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path): rejects bodies over
the byte limit before they are read, and records request counts and latency per model."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import TASK_BY_PATH, error_response
from app.metrics import REQUEST_DURATION, REQUESTS


class ServingMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = TASK_BY_PATH.get(scope.get("path", "")) if scope["type"] == "http" else None
        if task is None:
            await self.app(scope, receive, send)
            return
        if self._too_large(scope):
            response = error_response("payload_too_large", f"body exceeds {self.max_body_bytes} bytes", task=task)
            await response(scope, receive, send)
            return
        await self._measured(scope, receive, send, task)

    def _too_large(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"content-length":
                return not value.isdigit() or int(value) > self.max_body_bytes
        return False

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

    @staticmethod
    def _record(scope: Scope, task: str, status: str, seconds: float) -> None:
        served: Any = scope.get("state", {}).get("served")
        labels = served.labels if served is not None else {"model": "", "role": "", "backend": ""}
        REQUEST_DURATION.labels(task=task, status=status, **labels).observe(seconds)
        REQUESTS.labels(task=task, status=status, **labels).inc()
