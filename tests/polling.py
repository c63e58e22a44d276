"""Waiting in tests: poll a state (a metric, a log line, a flag) until it holds, with a generous
timeout, instead of sleeping a fixed time and hoping. A timeout fails with what was waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _message(what: str | Callable[[], str], timeout: float) -> str:
    return f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}"


def wait_for(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.02,
             what: str | Callable[[], str] = "the condition") -> T:
    """Call `predicate` until it returns something truthy, and return that; `what` (or what it
    returns, evaluated at the timeout: e.g. the log's tail) names it in the failure."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(_message(what, timeout))
        time.sleep(interval)
    return value


async def wait_for_async(predicate: Callable[[], Awaitable[T]], timeout: float = 30, interval: float = 0.02,
                         what: str | Callable[[], str] = "the condition") -> T:
    """`wait_for` for a coroutine predicate (e.g. one that reads /metrics through a client)."""
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(_message(what, timeout))
        await asyncio.sleep(interval)
    return value
