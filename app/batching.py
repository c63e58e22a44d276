"""Dynamic batching, one engine per served model.

The event loop only enqueues items and awaits futures; worker threads do the rest. A free worker
takes a cut batch if one is waiting; otherwise it collects a window of queued items, tokenizes
it, sorts the sequences by length and cuts them into model calls where the fitted cost (fixed
per call + per token + attention, `app.admission.ServiceRate`) is least, within max items and
max padded tokens. It runs the first call itself and leaves the rest to whichever worker is
free first. Results go back with one `call_soon_threadsafe` per model call. Tokenizers and
ONNX Runtime release the GIL, so the loop keeps serving HTTP while batches run.

Why more than one worker per model: on a CPU, ONNX Runtime spreads one call over its intra-op
threads and synchronises them after every operator, which costs most at the small batches a
service sees. Two calls in flight on one session keep the cores busy instead (int8 MiniLM,
2 cores, batch 16: 1,012-1,117 items/s against 700-844 for one call at a time). Big fp32
models parallelise well within a call, so the number is measured per model at warm-up
(`app.loading.pick_workers`).
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
from app.admission import ServiceRate
from app.errors import ServiceError
from app.metrics import BATCH_SIZE, BATCH_TOKENS, INPUT_TOKENS, QUEUE_DEPTH, STAGE_DURATION, STAGES, TRUNCATED_INPUTS
from app.cutting import greedy_bounds, partition
from app.pipelines import Pipeline, run_once
from app.tasks import pad_batch


_WAIT_SHARE = 0.25  # longest fill wait, as a share of the last model call
_AUTO_BUDGET = 0.5  # automatic admission budget, in solo service times (see `Batcher.budget`)


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


class Batcher:
    """Queue + worker thread for one (model, backend)."""

    def __init__(
        self, pipeline: Pipeline, backend: Backend, config: BatchConfig, labels: dict[str, str], pad: int = 0
    ) -> None:
        self.pipeline, self.backend, self.config, self.pad = pipeline, backend, config, pad
        self._queue: collections.deque[Job] = collections.deque()
        self._ready: collections.deque[Batch] = collections.deque()  # cut, waiting for a worker
        self._ready_items = 0
        self._cond = threading.Condition()
        self._rows = threading.Lock()  # a request's sequences can be in calls on two workers
        self._stopping = False
        self._answered = 0  # requests answered since the last collect (they tend to come back)
        self._last_compute = 0.0  # seconds of model calls since the last collect
        self.rate = ServiceRate()
        self._rate_lock = threading.Lock()
        self._busy_until = [0.0] * config.workers  # when each worker's call should end, by the estimate
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._m = _Metrics(pipeline.task, labels)

    # ---- event-loop side -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._threads = [
            threading.Thread(target=self._run, args=(k,), name=f"batcher-{self._m.name}-{k}", daemon=True)
            for k in range(self.config.workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

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
        """Enqueue items atomically (all or none); 429 when they would overflow the queue or
        when the estimated wait is already past the admission budget."""
        loop = self._loop or asyncio.get_running_loop()
        now = time.perf_counter()
        jobs = [Job(p, loop.create_future(), now, now + self.config.deadline_s) for p in payloads]
        with self._cond:
            self._admit(len(jobs))
            self._queue.extend(jobs)
            self._cond.notify()
            depth = len(self._queue)
        self._m.depth.set(depth)
        return [j.future for j in jobs]

    def _admit(self, count: int) -> None:
        """Under the lock. The item cap is a hard bound on memory; the estimated wait is what
        keeps admitted requests' latency near the uncongested one (a deep queue of cheap items
        and a short queue of long ones are told apart by what they cost, not their count)."""
        depth, cap, wait = len(self._queue), self.config.queue_depth, self.estimated_wait()
        if depth + count > cap:
            raise _queue_full(f"queue full ({depth} of {cap} items waiting)", self.retry_after(wait))
        if wait is not None and wait > (budget := self.budget):
            message = f"estimated wait {wait * 1000:.0f} ms exceeds the admission budget of {budget * 1000:.0f} ms"
            raise _queue_full(message, self.retry_after(wait))

    def estimated_wait(self) -> float | None:
        """Seconds a new item would wait: the items ahead (queued and cut), at the measured rate
        shared over the workers, after the first worker frees up; None before any model call
        was measured (item cap only). The rate is fitted on calls made while the other workers
        ran too, so under load it is the contended rate that the division assumes."""
        if not self.rate.calls:
            return None
        ahead = self.rate.work(len(self._queue) + self._ready_items, self.config.max_batch_size)
        return ahead / self.config.workers + max(0.0, min(self._busy_until) - time.perf_counter())

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

    def calibrate(self, payload: Any, sizes: Sequence[int] = (1, 8)) -> None:
        """Warm-up: time full cycles (tokenize, model call, post-process) of a few batch sizes, so
        the service-time fit and admission by estimated wait hold from the first request."""
        for n in sizes:
            start = time.perf_counter()
            inputs = run_once(self.pipeline, self.backend, self.pad, [payload] * n)
            ids = inputs["input_ids"]
            self.rate.observe(int(ids.size), int(ids.shape[0]), time.perf_counter() - start, int(ids.shape[1]))

    # ---- worker side -----------------------------------------------------------------
    def _run(self, worker: int = 0) -> None:
        """One worker: run a cut batch if one waits, else collect and cut a window first."""
        while (work := self._next()) is not None:
            window, batch = (None, work) if isinstance(work, Batch) else (work, None)
            try:
                if window is not None:
                    batch = self._prepare(window)
                if batch is not None:
                    self._compute(batch, worker)
            except BaseException as exc:  # a failed batch fails its items, never the worker
                failed = batch.jobs() if batch is not None else window or []
                self._resolve([(j, None, exc) for j in failed if not j.future.done()])
            self._busy_until[worker] = 0.0  # the call is over, however long the estimate said

    def _next(self) -> Batch | list[Job] | None:
        """Block for work: a batch another worker cut (first, so a window's calls run before
        the next window is taken), or a window of queued items."""
        with self._cond:
            while not self._queue and not self._ready and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            if self._ready:
                batch = self._ready.popleft()
                self._ready_items -= len(batch.items)
                return batch
            jobs = self._collect()
            depth = len(self._queue)
        self._m.depth.set(depth)
        return jobs

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

    def _prepare(self, jobs: list[Job]) -> Batch | None:
        """Tokenize a collected window and cut it into model calls: the first is this worker's,
        the rest wait in the ready list for whichever worker is free first."""
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
        share = (tokenized - started) / max(1, sum(j.pending for j in ready))
        batches = [Batch(items, share) for items in self._cut(ready)]
        if len(batches) > 1:
            with self._cond:
                self._ready.extend(batches[1:])
                self._ready_items += sum(len(b.items) for b in batches[1:])
                self._cond.notify(len(batches) - 1)
        return batches[0] if batches else None

    def _cut(self, jobs: list[Job]) -> list[list[tuple[Job, int]]]:
        """Flatten to sequences; when sorting, order them by length and split where the fitted
        cost says (`partition`); first-come batches fill greedily up to items and padded tokens."""
        seqs = [(j, i) for j in jobs for i in range(len(j.seqs))]
        lengths = [len(j.seqs[i].ids) for j, i in seqs]
        cfg = self.config
        if cfg.sort_by_length:
            order = sorted(range(len(seqs)), key=lengths.__getitem__)
            seqs, lengths = [seqs[k] for k in order], [lengths[k] for k in order]
        # the cost-aware cut where a sorted window needs several calls anyway (a loaded service);
        # a window that fits one call stays one call: splitting it would make its later items
        # wait for the earlier calls, for a saving that only matters under load
        if cfg.sort_by_length and len(seqs) > cfg.max_batch_size and self.rate.fixed > 0 and self.rate.per_token > 0:
            bounds = partition(lengths, cfg.max_batch_size, cfg.max_batch_tokens, self.rate.fixed, self.rate.item_cost)
        else:
            bounds = greedy_bounds(lengths, cfg.max_batch_size, cfg.max_batch_tokens)
        return [seqs[a:b] for a, b in zip(bounds, bounds[1:])]

    def _compute(self, batch: Batch, worker: int = 0) -> None:
        """Run one model call; items that expired before compute are dropped from it. Its time
        (with post-processing and its share of tokenization) feeds the service-time fit."""
        now = time.perf_counter()
        expired = {id(j): j for j, _ in batch.items if _expired(j, now)}
        self._drop(list(expired.values()))
        items = [(j, i) for j, i in batch.items if id(j) not in expired and not j.future.done()]
        if not items:
            return
        self._busy_until[worker] = now + self.rate.work(len(items), self.config.max_batch_size)
        inputs = pad_batch([j.seqs[i] for j, i in items], self.pad)
        outputs = self.pipeline.reduce(self.backend.forward(inputs), inputs)
        elapsed = time.perf_counter() - now
        self._m.batch(len(items), inputs["input_ids"].size)
        done = self._store(items, outputs)
        for _ in items:
            self._m.observe("inference", elapsed)
        self._resolve([self._finish(j) for j in done])
        seconds = time.perf_counter() - now + batch.tokenize_share * len(items)
        ids = inputs["input_ids"]
        with self._rate_lock:
            self.rate.observe(int(ids.size), len(items), seconds, int(ids.shape[1]))
            self._answered += len(done) + len(expired)
            self._last_compute += seconds

    def _store(self, items: list[tuple[Job, int]], outputs: dict[str, Any]) -> list[Job]:
        """Each sequence's output row into its job; returns the jobs now complete."""
        done = []
        with self._rows:
            for row, (job, i) in enumerate(items):
                job.rows[i] = {name: value[row] for name, value in outputs.items()}
                job.pending -= 1
                if job.pending == 0:
                    done.append(job)
        return done

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


def _queue_full(reason: str, retry_after: int) -> ServiceError:
    return ServiceError("queue_full", f"{reason}; retry later", headers={"Retry-After": str(retry_after)})


class _Metrics:
    """Pre-bound metric children: label lookups once per model, not once per item."""

    def __init__(self, task: str, labels: dict[str, str]) -> None:
        self.name = labels["model"]
        self.depth = QUEUE_DEPTH.labels(**labels)
        self._stages = {s: STAGE_DURATION.labels(stage=s, task=task, **labels) for s in STAGES}
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
