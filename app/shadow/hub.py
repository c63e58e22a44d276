"""Shadow traffic: a sampled fraction of the requests a student serves is sent to its teacher
as well, off the response path, and how far the two agree is recorded in Prometheus.

The student's answer never waits for the teacher: the items are enqueued (a lock and a deque
append) and a background task awaits them. They go to a second batcher of the teacher - the same
pipeline code and model, its own queue - whose worker thread runs at the lowest CPU priority
(Linux), so that the OS gives shadow compute the time the serving threads leave idle rather than
a share of theirs. With `threads=1` it shares the teacher's backend (ONNX Runtime then computes
in the calling thread). Otherwise an ONNX teacher gets a second, single-threaded session made
in that low-priority thread: a shared session would compute in its intra-op pool threads at
normal priority (measured: p50 x1.45, p99 x1.9 on 2 cores with the pool; see
benchmarks/bench_shadow.py) - this costs the teacher's weights in memory once more.
Its metrics carry role="shadow". Shadow work is bounded by the items in flight; a request that
would exceed the bound is dropped and counted, so a starved or slow teacher never builds a
backlog. Agreement uses `inference.agreement`, the maths of POST /compare (`app.shadow.link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from app.engine.batcher import Batcher
from app.repository.loading import batch_config
from app.repository.registry import ServedModel
from app.settings import Settings
from app.shadow.link import ShadowLink
from inference.backends import Backend, load_backend
from inference.pipelines import make_pipeline

log = logging.getLogger("distilserve")


class BackgroundBatcher(Batcher):
    """A batcher whose worker thread runs at the lowest CPU priority; given `load`, it first
    makes its own backend in that thread (threads a runtime starts inherit the priority)."""

    def __init__(self, *args: Any, load: Callable[[], Backend] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._load = load

    def _run(self, worker: int = 0) -> None:
        lower_priority()
        if self._load is not None:
            try:
                self.backend = self._load()
            except Exception:  # noqa: BLE001 - shadowing goes on with the shared backend
                log.exception("shadow backend for %s failed to load; sharing the teacher's", self.name)
        super()._run(worker)


def lower_priority() -> None:
    """nice 19 for the calling thread. Linux only: elsewhere setpriority(PRIO_PROCESS) would
    renice the whole process, serving threads included."""
    if sys.platform.startswith("linux"):
        # not permitted in some sandboxes: shadow work then runs at normal priority
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class ShadowHub:
    """What every student's shadow shares: the sampling rate, the in-flight bound, one
    background batcher per teacher and the running tasks (cancelled at shutdown)."""

    def __init__(self, settings: Settings, sample: Callable[[], float] = random.random) -> None:
        self.settings, self.sample = settings, sample
        self.rate, self.max_items, self.agree_cosine = (
            settings.shadow_rate,
            settings.shadow_max_items,
            settings.shadow_agree_cosine,
        )
        self.in_flight = 0  # items enqueued at a teacher and not answered yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._batchers: dict[str, Batcher] = {}

    def batcher_for(self, teacher: ServedModel) -> Batcher:
        """The teacher's background batcher, made on first use (one per served teacher)."""
        if teacher.name not in self._batchers:
            pipeline, pad = make_pipeline(teacher.spec)
            labels = {**teacher.labels, "role": "shadow"}
            batcher = BackgroundBatcher(
                pipeline,
                teacher.backend,
                batch_config(self.settings, workers=1),
                labels,
                pad,
                load=self._own_backend(teacher),
            )
            batcher.start(asyncio.get_running_loop())
            self._batchers[teacher.name] = batcher
        return self._batchers[teacher.name]

    def _own_backend(self, teacher: ServedModel) -> Callable[[], Backend] | None:
        """A single-threaded ONNX session for shadow work, unless the teacher's is one already."""
        if self.settings.threads == 1 or not teacher.backend_kind.startswith("onnx"):
            return None
        spec, kind, level = teacher.spec, teacher.backend_kind, self.settings.graph_optimization
        return lambda: load_backend(spec.path, spec.task, kind, 1, level)

    def admit(self, items: int) -> bool:
        """Reserve room for `items`; False when that would exceed the bound."""
        if self.in_flight + items > self.max_items:
            return False
        self.in_flight += items
        return True

    def track(self, task: asyncio.Task[None], items: int) -> None:
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._release(t, items))

    def _release(self, task: asyncio.Task[None], items: int) -> None:
        self._tasks.discard(task)
        self.in_flight -= items

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for batcher in self._batchers.values():
            batcher.stop()


def find_teacher(student: ServedModel, models: Iterable[ServedModel]) -> ServedModel | None:
    """The teacher the student's manifest names (else its pair's teacher, else any teacher of the
    task), preferably on the student's backend and under its plain name."""
    teachers = [m for m in models if m.spec.task == student.spec.task and m.spec.role == "teacher"]
    named = [m for m in teachers if m.spec.name == student.spec.teacher]
    pool = named or [m for m in teachers if student.spec.pair and m.spec.pair == student.spec.pair] or teachers
    pool.sort(key=lambda m: (m.backend_kind != student.backend_kind, m.name != m.spec.name))
    return pool[0] if pool else None


def install(models: list[ServedModel], settings: Settings) -> ShadowHub:
    """Link every served student to its teacher when `shadow_rate` > 0."""
    hub = ShadowHub(settings)
    if settings.shadow_rate > 0:
        for model in models:
            teacher = find_teacher(model, models) if model.spec.role == "student" else None
            if teacher is not None:
                model.shadow = ShadowLink(hub, teacher, model.spec.task)
    return hub
