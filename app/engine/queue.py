"""The queue in front of one model: what a request's items wait in, who may join it, and how a
free worker takes its next piece of work.

Admission happens here, on the event loop, before an item is queued: a hard item cap (memory)
and the estimated wait at the measured service rate (`app.engine.cost.ServiceRate`), so that a
deep queue of cheap items and a short queue of long ones are told apart by what they cost. The
worker side (`app.engine.batcher`) blocks in `take` for a window of items or for a batch
another worker cut, and hands back the calls it cut with `put_ready`.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.engine.cost import ServiceRate
from app.http.errors import ServiceError

_WAIT_SHARE = 0.25  # longest fill wait, as a share of the last model call
_AUTO_BUDGET = 0.5  # automatic admission budget, in solo service times (see `WorkQueue.budget`)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 0.0
    sort_by_length: bool = True
    sort_window: int = 256
    queue_depth: int = 1024
    deadline_s: float = 30.0
    retry_after_s: int = 1
    max_queue_wait_ms: float = 2000.0  # admission budget; 0: automatic (latency-protecting)
    workers: int = 1  # model calls in flight at once (worker threads sharing the backend)

    @property
    def collect_limit(self) -> int:
        """Items taken per cycle: when sorting, several batches' worth (the sort window), so
        that length sorting has room to work; first-come takes one batch at a time."""
        return max(self.sort_window, self.max_batch_size) if self.sort_by_length else self.max_batch_size


@dataclass(slots=True)
class Job:
    """One queued item: its payload, the future its request awaits, and, once tokenized, its
    sequences and the output row of each (a QA item may have several windows)."""

    payload: Any
    future: asyncio.Future[Any]
    enqueued: float
    deadline: float
    seqs: Sequence[Any] = ()
    rows: list[Any] = field(default_factory=list)
    pending: int = 0
    started: float = 0.0


@dataclass(slots=True)
class Batch:
    """One model call's sequences (job, sequence index), cut and waiting for a worker."""

    items: list[tuple[Job, int]]
    tokenize_share: float = 0.0  # tokenization seconds per sequence, charged to the call's cost

    def jobs(self) -> list[Job]:
        return list({id(j): j for j, _ in self.items}.values())


class WorkQueue:
    """Queued items and cut batches of one (model, backend), with admission by estimated wait."""

    def __init__(self, config: BatchConfig) -> None:
        self.config = config
        self.rate = ServiceRate()
        self._queue: collections.deque[Job] = collections.deque()
        self._ready: collections.deque[Batch] = collections.deque()  # cut, waiting for a worker
        self._ready_items = 0
        self._cond = threading.Condition()
        self._rate_lock = threading.Lock()
        self._stopping = False
        self._answered = 0  # requests answered since the last collect (they tend to come back)
        self._last_compute = 0.0  # seconds of model calls since the last collect
        self.busy_until = [0.0] * config.workers  # when each worker's call should end, by the estimate

    def __len__(self) -> int:
        return len(self._queue)

    # ---- event-loop side -------------------------------------------------------------
    def put(self, jobs: list[Job]) -> int:
        """Admit and enqueue a request's items atomically (all or none); the new depth."""
        with self._cond:
            self._admit(len(jobs))
            self._queue.extend(jobs)
            self._cond.notify()
            return len(self._queue)

    def _admit(self, count: int) -> None:
        """Under the lock. The item cap is a hard bound on memory; the estimated wait is what
        keeps admitted requests' latency near the uncongested one."""
        depth, cap, wait = len(self._queue), self.config.queue_depth, self.estimated_wait()
        if depth + count > cap:
            raise queue_full(f"queue full ({depth} of {cap} items waiting)", self.retry_after(wait))
        if wait is not None and wait > (budget := self.budget):
            message = f"estimated wait {wait * 1000:.0f} ms exceeds the admission budget of {budget * 1000:.0f} ms"
            raise queue_full(message, self.retry_after(wait))

    def estimated_wait(self) -> float | None:
        """Seconds a new item would wait: the items ahead (queued and cut), at the measured rate
        shared over the workers, after the first worker frees up; None before any model call
        was measured (item cap only). The rate is fitted on calls made while the other workers
        ran too, so under load it is the contended rate that the division assumes."""
        if not self.rate.calls:
            return None
        ahead = self.rate.work(len(self._queue) + self._ready_items, self.config.max_batch_size)
        return ahead / self.config.workers + max(0.0, min(self.busy_until) - time.perf_counter())

    @property
    def budget(self) -> float:
        """Admission budget in seconds: the setting, or automatically `_AUTO_BUDGET` solo service
        times. An admitted item waits up to the budget, then for its own cycle, on a machine the
        flood of turned-away requests also loads; an uncongested request waits about one to two
        solo times. So the budget is sized in solo times, not in full batches (on a CPU a full
        batch costs many solo times), and half of one kept admitted p99 within 2x of the
        uncongested p99 at 10x overload on 2 shared cores (benchmarks/overload.py), where one
        whole solo time did not. Under overload the service then runs near batch-1 throughput;
        a wider `max_queue_wait_ms` trades admitted latency for batch throughput."""
        ms = self.config.max_queue_wait_ms
        return ms / 1000 if ms else _AUTO_BUDGET * self.rate.solo

    def retry_after(self, wait: float | None = None) -> int:
        """Whole seconds for Retry-After: the estimated wait rounded up, at least the setting."""
        wait = self.estimated_wait() if wait is None else wait
        return max(self.config.retry_after_s, math.ceil(wait or 0.0), 1)

    @property
    def full(self) -> bool:
        """No room for even one more item (read without the lock: a hint for early 429s)."""
        if len(self._queue) >= self.config.queue_depth:
            return True
        wait = self.estimated_wait()
        return wait is not None and wait > self.budget

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def idle(self) -> bool:
        """Nothing queued, cut or in a model call (read without the lock: a hint)."""
        return not self._queue and not self._ready and not any(self.busy_until)

    def add_worker(self) -> None:
        """One more call in flight from now on (the model-worker choice made after start)."""
        self.busy_until.append(0.0)
        self.config = replace(self.config, workers=len(self.busy_until))

    # ---- worker side -----------------------------------------------------------------
    def take(self) -> Batch | list[Job] | None:
        """Block for work: a batch another worker cut (first, so a window's calls run before
        the next window is taken), or a window of queued items; None once stopping."""
        with self._cond:
            while not self._queue and not self._ready and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            if self._ready:
                batch = self._ready.popleft()
                self._ready_items -= len(batch.items)
                return batch
            return self._collect()

    @property
    def ready_waiting(self) -> bool:
        """A cut call waits for a worker (read without the lock: a hint)."""
        return bool(self._ready)

    def put_ready(self, batches: list[Batch]) -> None:
        """Calls a worker cut and leaves to whichever worker is free first."""
        if batches:
            with self._cond:
                self._ready.extend(batches)
                self._ready_items += sum(len(b.items) for b in batches)
                self._cond.notify(len(batches))

    def record(self, tokens: int, items: int, seconds: float, width: int, answered: int) -> None:
        """A finished model call: feeds the service-time fit and the fill wait."""
        with self._rate_lock:
            self.rate.observe(tokens, items, seconds, width)
            self._answered += answered
            self._last_compute += seconds

    def _collect(self) -> list[Job]:
        """Under the lock, with items queued: maybe wait for a fuller batch (see `_fill_target`),
        then take up to a window."""
        target, until = self._fill_target()
        while len(self._queue) < target and not self.full and (left := until - time.perf_counter()) > 0:
            self._cond.wait(left)
        self._answered, self._last_compute = 0, 0.0
        take = min(len(self._queue), self.config.collect_limit)
        return [self._queue.popleft() for _ in range(take)]

    def _fill_target(self) -> tuple[int, float]:
        """How many items to wait for, and until when.

        The clients whose results went out since the last collect usually come straight back,
        so under load we wait for them (queued + just answered, up to a cycle's intake: one
        batch, or the sort window when sorting, which only helps if it fills). The wait is
        capped by max_wait_ms (from now: queued items already waited through the last cycle)
        and by a quarter of the model time since the last collect, so it costs at most a
        fraction of compute: it shrinks on a fast machine and grows on a loaded one. A lone
        client never waits, nor does a queue that admission has closed (the awaited items
        would be turned away).
        """
        cfg = self.config
        expected = min(cfg.collect_limit, len(self._queue) + self._answered)
        if self._answered <= 1 or cfg.max_wait_ms <= 0:
            return 0, 0.0
        wait = min(cfg.max_wait_ms / 1000, _WAIT_SHARE * self._last_compute)
        return expected, time.perf_counter() + wait


def queue_full(reason: str, retry_after: int) -> ServiceError:
    return ServiceError("queue_full", f"{reason}; retry later", headers={"Retry-After": str(retry_after)})
