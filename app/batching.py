"""Dynamic batching, one engine per served model.

The event loop only enqueues items and awaits futures; a worker thread tokenizes, cuts
batches (max items, max padded tokens), sorts by length so a batch pads little, runs the
backend and hands results back with one `call_soon_threadsafe` per model call. Tokenizers
and ONNX Runtime release the GIL, so the loop keeps serving HTTP while a batch runs.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from app.backends import Backend
from app.errors import ServiceError
from app.metrics import BATCH_SIZE, BATCH_TOKENS, INPUT_TOKENS, QUEUE_DEPTH, STAGE_DURATION, TRUNCATED_INPUTS
from app.pipelines import Pipeline
from app.tasks import pad_batch


_WAIT_SHARE = 0.25  # longest fill wait, as a share of the last model call
_AUTO_BUDGET = 2.0  # automatic admission budget, in solo service times (see `Batcher.budget`)
_ALPHA = 0.1  # weight of the newest model call in the service-time fit


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 50.0
    sort_by_length: bool = True
    sort_window: int = 256
    queue_depth: int = 1024
    deadline_s: float = 30.0
    retry_after_s: int = 1
    max_queue_wait_ms: float | None = None  # admission budget; None or 0: automatic

    @property
    def collect_limit(self) -> int:
        """Items taken per cycle: when sorting, several batches' worth (the sort window), so
        that length sorting has room to work; first-come takes one batch at a time."""
        return max(self.sort_window, self.max_batch_size) if self.sort_by_length else self.max_batch_size


class ServiceRate:
    """What a model call costs here: seconds ~ fixed + per_token x padded tokens, fitted by
    exponentially weighted least squares over recent calls (so it follows the machine's load),
    plus the padded tokens an item brings. Admission needs a cost per item, not per call: on a
    CPU a full batch takes many times longer than one item, so an item count says little about
    how long the queue ahead will take."""

    def __init__(self) -> None:
        self.calls = 0
        self._x = self._y = self._xx = self._xy = 0.0
        self.fixed, self.per_token, self.tokens_per_item = 0.0, 0.0, 0.0

    def observe(self, tokens: int, items: int, seconds: float) -> None:
        """One model call (with its share of tokenization and post-processing)."""
        w = max(_ALPHA, 1.0 / (self.calls + 1))  # plain mean over the first calls
        self.calls += 1
        x = float(tokens)
        self._x += w * (x - self._x)
        self._y += w * (seconds - self._y)
        self._xx += w * (x * x - self._xx)
        self._xy += w * (x * seconds - self._xy)
        self.tokens_per_item += w * (tokens / items - self.tokens_per_item)
        self._fit()

    def _fit(self) -> None:
        """Slope and intercept; with too little spread in sizes (or a fit that goes negative)
        the whole cost is put on the tokens, which over- rather than under-states big queues."""
        mx, my = self._x, self._y
        var = self._xx - mx * mx
        slope = (self._xy - mx * my) / var if var > (0.05 * mx) ** 2 else -1.0
        if slope < 0 or my - slope * mx < 0:
            self.fixed, self.per_token = 0.0, my / mx if mx > 0 else 0.0
        else:
            self.fixed, self.per_token = my - slope * mx, slope

    def work(self, items: int, batch: int) -> float:
        """Seconds to compute `items` queued items in batches of `batch`."""
        return math.ceil(items / batch) * self.fixed + items * self.tokens_per_item * self.per_token

    @property
    def solo(self) -> float:
        """Seconds for one typical item alone: what a request on an idle service waits."""
        return self.fixed + self.tokens_per_item * self.per_token


@dataclass(slots=True)
class Job:
    payload: Any
    future: asyncio.Future[Any]
    enqueued: float
    deadline: float
    seqs: Sequence[Any] = ()
    rows: list[Any] = field(default_factory=list)
    pending: int = 0
    started: float = 0.0


class Batcher:
    """Queue + worker thread for one (model, backend)."""

    def __init__(
        self, pipeline: Pipeline, backend: Backend, config: BatchConfig, labels: dict[str, str], pad: int = 0
    ) -> None:
        self.pipeline, self.backend, self.config, self.pad = pipeline, backend, config, pad
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._answered = 0  # items answered in the last cycle (they tend to come back)
        self._last_compute = 0.0  # seconds of model calls in the last cycle
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._m = _Metrics(pipeline.task, labels)

    # ---- event-loop side -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"batcher-{self._m.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def run(self, payloads: Sequence[Any]) -> list[dict[str, Any]]:
        """Submit a request's items and await them all; 504 once the deadline passes."""
        futures = self.submit(payloads)
        loop = self._loop or asyncio.get_running_loop()
        timer = loop.call_later(self.config.deadline_s, _expire, futures)
        try:
            return [await f for f in futures]
        finally:
            timer.cancel()
            for f in futures:  # one failure answers the request; mark the rest as seen
                if f.done() and not f.cancelled():
                    f.exception()

    def submit(self, payloads: Sequence[Any]) -> list[asyncio.Future[Any]]:
        """Enqueue items atomically (all or none); 429 when the queue would overflow."""
        loop = self._loop or asyncio.get_running_loop()
        now = time.perf_counter()
        jobs = [Job(p, loop.create_future(), now, now + self.config.deadline_s) for p in payloads]
        with self._cond:
            if len(self._queue) + len(jobs) > self.config.queue_depth:
                raise _queue_full(self.config, len(self._queue))
            self._queue.extend(jobs)
            self._cond.notify()
            depth = len(self._queue)
        self._m.depth.set(depth)
        return [j.future for j in jobs]

    @property
    def full(self) -> bool:
        """No room for even one more item (read without the lock: a hint for early 429s)."""
        return len(self._queue) >= self.config.queue_depth

    # ---- worker side -----------------------------------------------------------------
    def _run(self) -> None:
        while (jobs := self._collect()) is not None:
            try:
                self._process(jobs)
            except BaseException as exc:  # a failed batch fails its items, never the worker
                self._resolve([(j, None, exc) for j in jobs if not j.future.done()])

    def _collect(self) -> list[Job] | None:
        """Block for work, then maybe wait for a fuller batch (see `_fill_target`)."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            target, until = self._fill_target()
            while len(self._queue) < target and (left := until - time.perf_counter()) > 0:
                self._cond.wait(left)
            take = min(len(self._queue), self.config.collect_limit)
            jobs = [self._queue.popleft() for _ in range(take)]
            depth = len(self._queue)
        self._m.depth.set(depth)
        return jobs

    def _fill_target(self) -> tuple[int, float]:
        """How many items to wait for, and until when.

        The clients whose results went out last cycle usually come straight back, so under
        load we wait for them (queued + just answered, up to a cycle's intake: one batch, or
        the sort window when sorting, which only helps if it fills). The wait is capped by
        max_wait_ms (from now: queued items already waited through the last cycle) and by a
        quarter of the last cycle's model time, so it costs at most a fraction of compute: it
        shrinks on a fast machine and grows on a loaded one. A lone client never waits.
        """
        cfg = self.config
        expected = min(cfg.collect_limit, len(self._queue) + self._answered)
        if self._answered <= 1 or cfg.max_wait_ms <= 0:
            return 0, 0.0
        wait = min(cfg.max_wait_ms / 1000, _WAIT_SHARE * self._last_compute)
        return expected, time.perf_counter() + wait

    def _process(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        live = [j for j in jobs if not _expired(j, started)]
        self._drop([j for j in jobs if _expired(j, started)])
        encoded = self.pipeline.encode([j.payload for j in live])
        tokenized = time.perf_counter()
        ready: list[Job] = []
        for job, seqs in zip(live, encoded):
            job.started = started
            self._m.observe("queue", started - job.enqueued)
            self._m.observe("tokenize", tokenized - started)
            if isinstance(seqs, Exception):
                self._resolve([(job, None, seqs)])
            else:
                job.seqs, job.rows, job.pending = seqs, [None] * len(seqs), len(seqs)
                ready.append(job)
        answered, compute_start = len(jobs) - len(ready), time.perf_counter()
        for batch in self._cut(ready):
            answered += self._compute(batch)
        self._answered, self._last_compute = answered, time.perf_counter() - compute_start

    def _cut(self, jobs: list[Job]) -> list[list[tuple[Job, int]]]:
        """Flatten to sequences, sort by length (if enabled), cut by items and padded tokens."""
        seqs = [(j, i) for j in jobs for i in range(len(j.seqs))]
        if self.config.sort_by_length:
            seqs.sort(key=lambda s: len(s[0].seqs[s[1]].ids))
        batches: list[list[tuple[Job, int]]] = []
        current: list[tuple[Job, int]] = []
        width = 0
        for job, i in seqs:
            n = len(job.seqs[i].ids)
            grown = max(width, n)
            if current and (len(current) >= self.config.max_batch_size or grown * (len(current) + 1) > self.config.max_batch_tokens):
                batches.append(current)
                current, grown = [], n
            current.append((job, i))
            width = grown
        return batches + ([current] if current else [])

    def _compute(self, batch: list[tuple[Job, int]]) -> int:
        """Run one model call; items that expired before compute are dropped from it.
        Returns how many requests' items were answered."""
        now = time.perf_counter()
        expired = {id(j): j for j, _ in batch if _expired(j, now)}
        self._drop(list(expired.values()))
        batch = [(j, i) for j, i in batch if id(j) not in expired and not j.future.done()]
        if not batch:
            return len(expired)
        inputs = pad_batch([j.seqs[i] for j, i in batch], self.pad)
        outputs = self.pipeline.reduce(self.backend.forward(inputs), inputs)
        elapsed = time.perf_counter() - now
        self._m.batch(len(batch), inputs["input_ids"].size)
        done = []
        for row, (job, i) in enumerate(batch):
            job.rows[i] = {name: value[row] for name, value in outputs.items()}
            job.pending -= 1
            self._m.observe("inference", elapsed)
            if job.pending == 0:
                done.append(job)
        self._resolve([self._finish(j) for j in done])
        return len(done) + len(expired)

    def _finish(self, job: Job) -> tuple[Job, Any, BaseException | None]:
        start = time.perf_counter()
        try:
            result = self.pipeline.finish(job.payload, job.seqs, job.rows)
        except Exception as exc:  # noqa: BLE001 - reported to the request, not the worker
            return job, None, exc
        self._m.observe("postprocess", time.perf_counter() - start)
        self._m.count(result["tokens"], result["truncated"])
        return job, result, None

    def _drop(self, jobs: list[Job]) -> None:
        if jobs:
            self._resolve([(j, None, _deadline_error(self.config)) for j in jobs])

    def _resolve(self, outcomes: list[tuple[Job, Any, BaseException | None]]) -> None:
        if outcomes and self._loop is not None:
            self._loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[Job, Any, BaseException | None]]) -> None:
    """On the event loop: complete each item's own future (skipping ones already expired)."""
    for job, result, exc in outcomes:
        if job.future.done():
            continue
        if exc is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(exc)


def _expire(futures: list[asyncio.Future[Any]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(ServiceError("deadline_exceeded", "request deadline exceeded"))


def _expired(job: Job, now: float) -> bool:
    return now > job.deadline or job.future.done()


def _deadline_error(config: BatchConfig) -> ServiceError:
    return ServiceError("deadline_exceeded", f"request exceeded its {config.deadline_s} s deadline before compute")


def _queue_full(config: BatchConfig, depth: int) -> ServiceError:
    return ServiceError(
        "queue_full", f"queue full ({depth} of {config.queue_depth} items waiting); retry later",
        headers={"Retry-After": str(config.retry_after_s)},
    )


class _Metrics:
    """Pre-bound metric children: label lookups once per model, not once per item."""

    def __init__(self, task: str, labels: dict[str, str]) -> None:
        self.name = labels["model"]
        self.depth = QUEUE_DEPTH.labels(**labels)
        self._stages = {s: STAGE_DURATION.labels(stage=s, task=task, **labels) for s in ("tokenize", "queue", "inference", "postprocess")}
        self._size, self._tokens = BATCH_SIZE.labels(**labels), BATCH_TOKENS.labels(**labels)
        self._in_tokens = INPUT_TOKENS.labels(task=task, **labels)
        self._truncated = TRUNCATED_INPUTS.labels(task=task, **labels)

    def observe(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(seconds)

    def batch(self, size: int, tokens: int) -> None:
        self._size.observe(size)
        self._tokens.observe(tokens)

    def count(self, tokens: int, truncated: bool) -> None:
        self._in_tokens.inc(tokens)
        if truncated:
            self._truncated.inc()
