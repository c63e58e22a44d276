"""Dynamic batching, one engine per served model: the worker side of `app.engine.queue`.

The event loop only enqueues items (`submit`) and awaits futures; worker threads do the rest.
A free worker takes a cut batch if one is waiting; otherwise it collects a window of queued
items, tokenizes it, sorts the sequences by length and cuts them into model calls where the
fitted cost (fixed per call + per token + attention, `app.engine.cost.ServiceRate`) is least,
within max items and max padded tokens (`app.engine.cutting`). It runs the first call itself
and leaves the rest to whichever worker is free first. Results go back with one
`call_soon_threadsafe` per model call. Tokenizers and ONNX Runtime release the GIL, so the loop
keeps serving HTTP while batches run.

Why more than one worker per model: on a CPU, ONNX Runtime spreads one call over its intra-op
threads and synchronises them after every operator, which costs most at the small batches a
service sees. Two calls in flight on one session keep the cores busy instead (int8 MiniLM,
2 cores, batch 16: 1,012-1,117 items/s against 700-844 for one call at a time). Big fp32
models parallelise well within a call, so the number is measured per model at warm-up
(`app.repository.workers`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from app.engine.cost import ServiceRate
from app.engine.cutting import greedy_bounds, partition, shares
from app.engine.queue import Batch, BatchConfig, Job, WorkQueue
from app.http.errors import ServiceError
from app.observability.metrics import ModelMetrics
from inference.backends import Backend
from inference.guard import Guard
from inference.pipelines import Pipeline, run_once
from inference.tasks import pad_batch

log = logging.getLogger("distilserve")
Outcome = tuple[Job, Any, BaseException | None]
_PARALLEL_MIN = 8  # sequences per call below which a window that fits one call is not shared out

__all__ = ["Batch", "BatchConfig", "Batcher", "Job"]


class Batcher:
    """Queue + worker threads for one (model, backend)."""

    def __init__(
        self, pipeline: Pipeline, backend: Backend, config: BatchConfig, labels: dict[str, str], pad: int = 0,
        guard: Guard | None = None,
    ) -> None:
        self.pipeline, self.backend, self.config, self.pad = pipeline, backend, config, pad
        self.guard = guard  # an int8 model's fp32 re-read of near ties (inference.guard)
        self.queue = WorkQueue(config)
        self._rows = threading.Lock()  # a request's sequences can be in calls on two workers
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._m = ModelMetrics(pipeline.task, labels)
        self.split: Backend | None = None  # the same model on fewer threads, for concurrent calls
        self.split_threads: int | None = None
        # threads still opening this model's other sessions (split, guard) in the background: joined
        # at stop, so that the process never exits while a runtime is half-way through creating one
        self.openings: list[threading.Thread] = []
        self.workers_choice = "set"  # how config.workers was chosen (app.repository.loading.first_workers)
        self.activity = 0  # items submitted so far, and when the last came: a model-worker measurement
        self._last_submit = time.perf_counter()  # made after start samples only while no request runs

    @property
    def name(self) -> str:
        return self._m.name

    @property
    def rate(self) -> ServiceRate:
        return self.queue.rate

    @property
    def full(self) -> bool:
        return self.queue.full

    def retry_after(self, wait: float | None = None) -> int:
        return self.queue.retry_after(wait)

    def use_split(self, backend: Backend, threads: int) -> None:
        """A second session of the same model on `threads` intra-op threads, for the calls that
        start while another worker's call runs (`app.repository.workers.split_threads`)."""
        self.split, self.split_threads = backend, threads

    def add_worker(self) -> None:
        """One more model call in flight: the model-worker choice, measured after serving began."""
        self.queue.add_worker()
        self.config = self.queue.config
        self._start_worker(self.config.workers - 1)

    def idle_for(self) -> float:
        """Seconds since the last request came in, if nothing is queued or running since; else 0."""
        return time.perf_counter() - self._last_submit if self.queue.idle else 0.0

    @property
    def stopping(self) -> bool:
        return self.queue.stopping

    # ---- event-loop side -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for k in range(self.config.workers):
            self._start_worker(k)

    def _start_worker(self, k: int) -> None:
        thread = threading.Thread(target=self._run, args=(k,), name=f"batcher-{self._m.name}-{k}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self.queue.stop()
        for thread in self._threads + self.openings:
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
        self.activity, self._last_submit = self.activity + len(jobs), now
        self._m.depth.set(self.queue.put(jobs))
        return [j.future for j in jobs]

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
        while (work := self.queue.take()) is not None:
            window, batch = (None, work) if isinstance(work, Batch) else (work, None)
            try:
                if window is not None:
                    self._m.depth.set(len(self.queue))
                    batch = self._prepare(window)
                if batch is not None:
                    self._compute(batch, worker)
            except BaseException as exc:  # noqa: BLE001 - a failed batch fails its items, never the worker
                failed = batch.jobs() if batch is not None else window or []
                self._resolve([(j, None, exc) for j in failed if not j.future.done()])
            self.queue.busy_until[worker] = 0.0  # the call is over, however long the estimate said

    def _prepare(self, jobs: list[Job]) -> Batch | None:
        """Tokenize a collected window and cut it into model calls: the first is this worker's,
        the rest wait in the queue's ready list for whichever worker is free first."""
        started = time.perf_counter()
        live = [j for j in jobs if not _expired(j, started)]
        self._drop([j for j in jobs if _expired(j, started)])
        encoded = self.pipeline.encode([j.payload for j in live])
        tokenized = time.perf_counter()
        ready: list[Job] = []
        for job, seqs in zip(live, encoded, strict=True):
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
        self.queue.put_ready(batches[1:])
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
            if len(bounds) == 2 and self._idle_workers():
                bounds = shares(len(seqs), cfg.workers, _PARALLEL_MIN)
        return [seqs[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    def _idle_workers(self) -> bool:
        """Every worker is free (none has a call in flight), and there is more than one."""
        return self.config.workers > 1 and not any(self.queue.busy_until)

    def _compute(self, batch: Batch, worker: int = 0) -> None:
        """Run one model call; items that expired before compute are dropped from it. Its time
        (with post-processing and its share of tokenization) feeds the service-time fit."""
        now = time.perf_counter()
        expired = {id(j): j for j, _ in batch.items if _expired(j, now)}
        self._drop(list(expired.values()))
        items = [(j, i) for j, i in batch.items if id(j) not in expired and not j.future.done()]
        if not items:
            return
        self.queue.busy_until[worker] = now + self.rate.work(len(items), self.config.max_batch_size)
        inputs = pad_batch([j.seqs[i] for j, i in items], self.pad)
        outputs = self.pipeline.reduce(self._backend(worker).forward(inputs), inputs)
        elapsed = time.perf_counter() - now
        self._m.batch(len(items), inputs["input_ids"].size)
        done = self._store(items, outputs)
        for _ in items:
            self._m.observe("inference", elapsed)
        self._resolve(self._finish_all(done))
        seconds = time.perf_counter() - now + batch.tokenize_share * len(items)
        ids = inputs["input_ids"]
        self.queue.record(int(ids.size), len(items), seconds, int(ids.shape[1]), len(done) + len(expired))

    def _backend(self, worker: int) -> Backend:
        """The split session while another worker's call is in flight, else the shared one: a
        lone call keeps every core, and concurrent calls do not oversubscribe them."""
        split = self.split
        others = any(t > 0.0 for k, t in enumerate(self.queue.busy_until) if k != worker)
        if split is not None and (others or self.queue.ready_waiting):  # a cut call about to start counts
            return split
        return self.backend

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

    def _finish_all(self, jobs: list[Job]) -> list[Outcome]:
        """Each complete job's result; under a guard, near ties read again in fp32 first. If
        that read fails, the int8 answers stand: the guard never fails a request."""
        outcomes = [self._finish(j) for j in jobs]
        done = [(job, result) for job, result, exc in outcomes if exc is None]
        if self.guard is None or not done:
            return outcomes
        try:
            results = self.guard.recheck(self.pipeline, self.pad, [(j.payload, j.seqs, r) for j, r in done])
        except Exception as exc:  # noqa: BLE001 - the int8 answers are still answers
            log.warning("model %s: the fp32 re-read of near ties failed (%s: %s); int8 answers kept",
                        self.name, type(exc).__name__, exc)
            return outcomes
        self._m.rechecked(sum(1 for r in results if r.get("rechecked")))
        failed = [o for o in outcomes if o[2] is not None]
        return failed + [(job, result, None) for (job, _), result in zip(done, results, strict=True)]

    def _finish(self, job: Job) -> Outcome:
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

    def _resolve(self, outcomes: list[Outcome]) -> None:
        if outcomes and self._loop is not None:
            self._loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[Outcome]) -> None:
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
