"""Bounded closed-loop load on one served model: `concurrency` clients, each sending its next
request when the last one answered, until a request count or a time budget runs out.

Closed loop (rather than a fixed arrival rate) because the report compares models at equal
client pressure: a faster model then shows up as more throughput at the same concurrency, and
latency at a given concurrency is what a caller with that many requests in flight sees.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np

from benchmarks.harness import ENDPOINT

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

# Inputs of mixed lengths, so that percentiles reflect more than one sequence length.
SENTENCES = (
    "A gripping, beautifully acted film.",
    "The plot wanders and the jokes fall flat, but the lead actor holds it together.",
    "I expected little and was still disappointed.",
    "An ambitious story that loses its nerve halfway through and never quite recovers, "
    "despite a score that does most of the emotional work.",
    "Funny, warm and far smarter than it needs to be.",
    "Two hours of my life I will not get back.",
)
QA_PAIRS = (
    ("Where is the Eiffel Tower?", "The Eiffel Tower is a wrought-iron tower in Paris, France."),
    ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("When did the Apollo 11 mission land?",
     "Apollo 11 was the spaceflight that first landed humans on the Moon, on July 20, 1969. "
     "Neil Armstrong and Buzz Aldrin formed the crew that landed the lunar module Eagle."),
)


@dataclass(frozen=True)
class Target:
    """One served model as GET /models lists it."""

    model: str  # what a request puts in "model"
    task: str
    role: str
    backend: str


@dataclass
class Run:
    """The outcome of one (target, concurrency) load run."""

    target: Target
    concurrency: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        """Successful requests per second over the run's wall time."""
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s > 0 else 0.0


def check_loopback(url: str) -> None:
    """Refuse to load anything but this machine: the report is a benchmark, not a load test."""
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"--url {url!r}: the report only drives a service on 127.0.0.1 / localhost")


def request_body(target: Target, i: int) -> tuple[str, dict]:
    """Route and JSON body of the i-th request for the target's task."""
    if target.task == "qa":
        question, context = QA_PAIRS[i % len(QA_PAIRS)]
        return ENDPOINT["qa"], {"question": question, "context": context, "model": target.model}
    if target.task not in ENDPOINT:
        raise ValueError(f"model {target.model!r}: unknown task {target.task!r}")
    return ENDPOINT[target.task], {"inputs": SENTENCES[i % len(SENTENCES)], "model": target.model}


async def _client_loop(client: httpx.AsyncClient, target: Target, counter: itertools.count,
                       limit: int, deadline: float, run: Run) -> None:
    """One closed-loop client: take the next request number, send, record, repeat."""
    while time.perf_counter() < deadline:
        i = next(counter)
        if i >= limit:
            return
        path, body = request_body(target, i)
        start = time.perf_counter()
        try:
            response = await client.post(path, json=body)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            run.latencies_ms.append((time.perf_counter() - start) * 1000.0)
        else:
            run.errors += 1


async def drive(client: httpx.AsyncClient, target: Target, concurrency: int,
                requests: int, max_seconds: float, warmup: int = 2) -> Run:
    """Warm the model up, then run `concurrency` clients for at most `requests` / `max_seconds`."""
    for i in range(warmup):
        path, body = request_body(target, i)
        await client.post(path, json=body)
    run = Run(target, concurrency, elapsed_s=0.0)
    counter = itertools.count()
    start = time.perf_counter()
    deadline = start + max_seconds
    await asyncio.gather(*(
        _client_loop(client, target, counter, requests, deadline, run) for _ in range(concurrency)
    ))
    run.elapsed_s = time.perf_counter() - start
    return run
