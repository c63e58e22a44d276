"""Graceful shutdown: on SIGTERM the service drains before the server stops.

Order of events: SIGTERM → `draining` (every new request but /health and /metrics gets 503
`shutting_down` with `Connection: close`, /ready turns 503 so a load balancer stops routing
here) → wait until the requests already admitted have answered, at most `shutdown_grace_s`
→ hand over to uvicorn's own SIGTERM handling (stop listening, close idle connections,
lifespan shutdown). If the grace period ran out with requests still running, uvicorn is told
to force the exit, so the process is gone within the grace period (plus uvicorn's 0.1 s tick);
`uvicorn --timeout-graceful-shutdown` bounds uvicorn's own wait as a second line.

The hook wraps whatever SIGTERM handler the server installed (uvicorn's `handle_exit`); with
none (the in-process test harness) nothing is installed and the process keeps its default."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from starlette.responses import Response
from starlette.types import Scope

from app.http.errors import TASK_BY_PATH, error_response

log = logging.getLogger("distilserve")
ALWAYS_SERVED = frozenset({"/health", "/metrics"})
_POLL_S = 0.02


class Drain:
    """Draining state: shared by the service middleware (its gate, the in-flight count) and
    the SIGTERM hook."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.in_flight = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self, stop: Callable[[], None], force: Callable[[], None]) -> None:
        """Drain, then `stop` the server; `force` it if requests outlived the grace period.
        A second SIGTERM while draining stops at once."""
        if self.draining:
            stop()
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        until = loop.time() + self.grace_s
        log.warning("SIGTERM: draining", extra={"fields": {"in_flight": self.in_flight, "grace_s": self.grace_s}})
        while self.in_flight and loop.time() < until:
            await asyncio.sleep(_POLL_S)
        log.warning("drained; stopping", extra={"fields": {"in_flight": self.in_flight}})
        stop()
        if self.in_flight:
            force()

    def rejection(self, scope: Scope) -> Response | None:
        """While draining, the 503 that answers a new request instead of admitting it (the
        service middleware counts the admitted ones in `in_flight`)."""
        if not self.draining or scope["path"] in ALWAYS_SERVED:
            return None
        headers = {"Connection": "close", "Retry-After": "1"}
        task = TASK_BY_PATH.get(scope["path"], "")
        return error_response("shutting_down", "service is shutting down; retry elsewhere", None, headers, task)


def install_sigterm(drain: Drain) -> Callable[[], None]:
    """Put the drain in front of the server's SIGTERM handler; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return lambda: None
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        def start() -> None:  # on the loop; the task is kept so it is not garbage-collected
            drain.task = loop.create_task(drain.run(lambda: previous(signum, frame), lambda: _force(previous)))

        # a fresh context: the handler interrupts whatever runs, maybe a request (its request id)
        loop.call_soon_threadsafe(start, context=contextvars.Context())

    signal.signal(signal.SIGTERM, on_sigterm)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return undo


def _force(handler: Any) -> None:
    """uvicorn's Server skips waiting for connections and tasks once `force_exit` is set."""
    server = getattr(handler, "__self__", None)
    if server is not None and hasattr(server, "force_exit"):
        server.force_exit = True
