"""Start-up: build every served model (backend + tokenizer + pipeline + batcher) and warm it
up, so the first real request pays no lazy-initialisation cost."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from app.engine.batcher import BatchConfig, Batcher
from app.observability.metrics import register_model
from app.repository import workers
from app.repository.faults import ModelFault, load_fault
from app.repository.registry import (
    HubModelUnavailable,
    ServedModel,
    discover,
    hub_folder,
    metric_labels,
    served_names,
)
from app.settings import Settings
from inference.backends import FP32_OF, Backend, BackendUnavailable, available_kinds, load_backend
from inference.guard import Guard
from inference.modelfolder import ModelSpec, read_spec
from inference.pipelines import (
    ClassifyItem,
    EmbedItem,
    Pipeline,
    QAItem,
    make_pipeline,
    run_once,
)

log = logging.getLogger("distilserve")


class LoadState(Protocol):
    """What loading reports into (the app's state): progress for /ready, and the models that
    failed their checks or their load (named on /ready in `skip` mode)."""

    reason: str
    missing: list[ModelFault]


class BackendLoader(Protocol):
    """`inference.backends.load_backend`'s signature: how `build` gets a served model's backend."""

    def __call__(
        self, model_dir: Path | str, task: str, kind: str, threads: int | None = None,
        graph_optimization: str = "all", spinning: bool = False, device: str = "cpu", torch_thread: bool = False,
        cache_dir: Path | None = None,
    ) -> Backend: ...


@dataclass(frozen=True, slots=True)
class BackendSource:
    """Where served models' backends come from: the kinds a local folder can be served on, and
    the loader of one. The default reads the folder's files through `inference.backends`; the
    tests inject deterministic backends for folders with no weights (tests/dummy_backend.py)."""

    load: BackendLoader = load_backend
    kinds: Callable[[Path], list[str]] = available_kinds


_WARMUP = {
    "classification": ClassifyItem(0, "warm up the model"),
    "embedding": EmbedItem(0, "warm up the model"),
    "qa": QAItem(0, "what is warmed up?", "the model is warmed up before serving"),
}


def warm_up(pipeline: Pipeline, backend: Backend, pad: int, task: str) -> None:
    """One short item through every stage, so lazy initialisation (ORT arenas, torch kernels)
    happens before /ready turns green rather than in the first user's latency."""
    run_once(pipeline, backend, pad, [_WARMUP[task]])


def batch_config(settings: Settings, workers: int) -> BatchConfig:
    """The batcher's settings, with `workers` model calls in flight (see `first_workers`)."""
    return BatchConfig(
        max_batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms, sort_by_length=settings.sort_by_length,
        sort_window=settings.sort_window,
        queue_depth=settings.queue_depth, deadline_s=settings.request_deadline_s,
        retry_after_s=settings.retry_after_s, max_queue_wait_ms=settings.max_queue_wait_ms,
        workers=workers,
    )


def all_specs(settings: Settings, skip: Collection[str] = (), missing: list[ModelFault] | None = None,
              source: BackendSource | None = None) -> list[tuple[ModelSpec, list[str]]]:
    """Local folders with the configured backends (less the `skip` folders, which failed the
    start-up checks); hub ids are served on torch only. A hub id that cannot be had fails
    start-up, or in `skip` mode joins `missing` (named on /ready) like a broken folder."""
    specs = (
        [(s, settings.backends) for s in discover(settings.models_dir, skip)] if settings.models_dir.is_dir() else []
    )
    if source is not None:  # the kinds an injected source serves a folder on, not its files'
        for spec, _ in specs:
            spec.kinds = source.kinds(spec.path)
    for model_id in settings.hub_models:
        try:
            spec = read_spec(hub_folder(model_id))
        except HubModelUnavailable as exc:
            if settings.on_model_error == "fail" or missing is None:
                raise
            missing.append(fault := ModelFault(model_id, Path(model_id), str(exc)[:300]))
            log.error("model fault: %s", fault)
            continue
        spec.name = model_id
        specs.append((spec, ["torch"]))
    return specs


class Laps:
    """Seconds per start-up phase of one model (backend and tokenizer load, warm-up, the
    model-worker choice, admission calibration), shown on /models and logged: cold start is a
    target per model, and a breakdown says which phase to make cheaper."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 4)
        self._last = now


def build(
    spec: ModelSpec,
    name: str,
    kind: str,
    settings: Settings,
    loop: asyncio.AbstractEventLoop,
    load: BackendLoader = load_backend,
) -> ServedModel:
    lap = Laps()
    backend = _open(load, spec, kind, settings, settings.threads)
    pipeline, pad = make_pipeline(spec)
    lap("load")
    if settings.warmup:
        warm_up(pipeline, backend, pad, spec.task)
    lap("warm_up")
    calls, choice = first_workers(spec, name, kind, settings)
    lap("model_workers")
    guard = _guard(load, spec, kind, settings)
    batcher = Batcher(pipeline, backend, batch_config(settings, calls), metric_labels(name, spec, kind), pad, guard)
    batcher.workers_choice = choice
    if settings.warmup:
        batcher.calibrate(_WARMUP[spec.task])  # seeds the service-time estimate for admission
    batcher.start(loop)
    lap("calibrate")
    if guard is not None and isinstance(guard.fp32, Opening):
        batcher.openings.append(guard.fp32.thread)
    if (threads := workers.split_threads(kind, settings.threads, calls)) is not None:
        batcher.openings.append(
            open_split(batcher, lambda: _open(load, spec, kind, settings, threads), threads, name, settings.warmup))
    model = ServedModel(name, spec, kind, backend, batcher, startup_s=lap.seconds)
    register_model(
        name,
        spec.task,
        spec.role,
        kind,
        {
            "layers": str(spec.layers),
            "hidden_size": str(spec.hidden_size),
            "params": str(spec.params),
            "max_length": str(spec.max_length),
        },
    )
    return model


def _guard(load: BackendLoader, spec: ModelSpec, kind: str, settings: Settings) -> Guard | None:
    """An int8 model's guard: its fp32 file, opened beside it in the background, for the near
    ties the manifest's calibrated threshold names (`inference.guard`); None for other backends,
    for a file without a calibrated guard, or with `INT8_GUARD=false`."""
    partner, threshold = FP32_OF.get(kind), spec.int8_guard(kind)
    if partner is None or threshold is None or not settings.int8_guard or partner not in spec.kinds:
        return None
    fp32 = Opening(lambda: _open(load, spec, partner, settings, settings.threads), f"{spec.name} (int8 guard)", partner)
    return Guard(fp32, threshold)


class Opening:
    """A backend opened on a thread of its own. Cold start does not wait for it (the guard's
    fp32 MPNet student took 0.52-0.56 s to open, half a cold start); a call waits until it is
    open. A file that fails to open fails the calls (the guard then keeps int8's answers)."""

    input_names: tuple[str, ...] = ()  # the Backend contract's; the guard needs only forward

    def __init__(self, opener: Callable[[], Backend], name: str, kind: str = "onnx") -> None:
        self._ready, self._error, self._name, self.kind = threading.Event(), "", name, kind
        self._backend: Backend | None = None
        self.thread = threading.Thread(target=self._open, args=(opener,), name=f"open-{name}", daemon=True)
        self.thread.start()

    def _open(self, opener: Callable[[], Backend]) -> None:
        started = time.perf_counter()
        try:
            self._backend = opener()
            log.info("model %s: fp32 file open in %.2f s", self._name, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - reported by every call that needs it
            self._error = f"{type(exc).__name__}: {exc}"
            log.warning("model %s: the fp32 file did not open (%s)", self._name, self._error)
        finally:
            self._ready.set()

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._opened().forward(inputs)

    def _opened(self) -> Backend:
        self._ready.wait()
        if self._backend is None:
            raise BackendUnavailable(f"{self._name}: the fp32 file did not open ({self._error})")
        return self._backend


def _open(load: BackendLoader, spec: ModelSpec, kind: str, settings: Settings, threads: int | None) -> Backend:
    return load(
        spec.path,
        spec.task,
        kind,
        threads,
        settings.graph_optimization,
        settings.ort_spinning,
        settings.device,
        torch_thread=True,  # every torch model's calls on one thread: one OpenMP team
        cache_dir=settings.openvino_cache,
    )


def open_split(batcher: Batcher, opener: Callable[[], Backend], threads: int, name: str,
               warm: bool) -> threading.Thread:
    """Open the split session (`app.repository.workers.split_threads`) in the background: the
    model serves on its shared session meanwhile, so cold start does not wait for a second
    load. Returns the thread."""
    thread = threading.Thread(target=add_split, args=(batcher, opener, threads, name, warm), name=f"split-{name}",
                              daemon=True)
    thread.start()
    return thread


def add_split(batcher: Batcher, opener: Callable[[], Backend], threads: int, name: str, warm: bool) -> None:
    """Open, warm and hand the batcher its split session; one that fails to open leaves every
    call on the shared session."""
    try:
        split = opener()
        if warm:
            warm_up(batcher.pipeline, split, batcher.pad, batcher.pipeline.task)
    except Exception as exc:  # noqa: BLE001 - the model serves on without it
        log.warning("model %s: no split session (%s: %s); concurrent calls share one", name, type(exc).__name__, exc)
        return
    batcher.use_split(split, threads)
    log.info("model %s: calls that start while another runs use a session of %d thread(s)", name, threads)


def first_workers(spec: ModelSpec, name: str, kind: str, settings: Settings) -> tuple[int, str]:
    """Model calls in flight at start, and how that was chosen: `model_workers` when set
    ("set"); one on torch (two CPU calls oversubscribe its OpenMP threads; a GPU runs one call
    at a time anyway), on OpenVINO and without warm-up ("fixed"); on ONNX Runtime the choice
    remembered for this machine and model file ("remembered"), or else one until
    `settle_workers` has measured it with the service answering ("measuring")."""
    if settings.model_workers:
        return settings.model_workers, "set"
    if not kind.startswith("onnx") or not settings.warmup:
        return 1, "fixed"
    memory, key = workers.Memory(settings.model_workers_memory), workers.machine_key(spec.path, kind, settings.threads)
    if (remembered := memory.get(key)) is not None:
        log.info("model workers for %s: %d (remembered in %s)", name, remembered, memory.path)
        return remembered, "remembered"
    return 1, "measuring"


SplitOpener = Callable[[int], Backend]  # a served model's backend opened again on n intra-op threads


def settle_workers(models: Sequence[ServedModel], openers: dict[str, SplitOpener], settings: Settings) -> None:
    """Measure the model-worker choice of every model that started on one call for want of a
    remembered one (`first_workers`), on a thread of its own, one model at a time and only while
    no model of the service has a request (`app.repository.workers.measure`); remember it, and
    where two calls win add the second worker and its split session. The thread is joined at
    stop with each such model's batcher."""
    todo = [m for m in models if m.batcher.workers_choice == "measuring"]
    if not todo:
        return
    quiet = workers.Quiet([m.batcher for m in models])

    def run() -> None:
        for model in todo:
            _settle(model, quiet, openers[model.name], settings)

    thread = threading.Thread(target=run, name="model-workers", daemon=True)
    thread.start()
    for model in todo:
        model.batcher.openings.append(thread)


def _settle(model: ServedModel, quiet: workers.Traffic, opener: SplitOpener, settings: Settings) -> None:
    batcher, spec, kind = model.batcher, model.spec, model.backend_kind
    try:
        figures = workers.measure(batcher.pipeline, model.backend, batcher.pad, [_WARMUP[spec.task]] * 8, quiet)
    except Exception as exc:  # noqa: BLE001 - the model serves on, on one call at a time
        log.warning("model workers for %s: not measured (%s: %s); 1", model.name, type(exc).__name__, exc)
        return
    if figures is None:  # the service stopped first
        return
    chosen = workers.decide(figures)
    log.info("model workers for %s: %d (batch 8: %.0f items/s with one call, %.0f with two; median paired ratio "
             "%.2f, two kept from %.2f)", model.name, chosen, figures["one_items_s"], figures["two_items_s"],
             figures["ratio"], workers.PAIR_GAIN)
    workers.Memory(settings.model_workers_memory).put(workers.machine_key(spec.path, kind, settings.threads),
                                                      chosen, figures)
    if chosen == 2:
        batcher.add_worker()
        if (threads := workers.split_threads(kind, settings.threads, 2)) is not None:
            add_split(batcher, lambda: opener(threads), threads, model.name, settings.warmup)
    batcher.workers_choice = "measured"


async def load_all(settings: Settings, state: LoadState, source: BackendSource | None = None) -> list[ServedModel]:
    """Load and warm every served model, reporting progress through `state.reason`; `source`
    replaces where backends come from (default: the folders' files, `inference.backends`)."""
    loop = asyncio.get_running_loop()
    skip = {fault.name for fault in state.missing}
    specs = await asyncio.to_thread(all_specs, settings, skip, state.missing, source)
    load = source.load if source is not None else load_backend
    todo = [(spec, name, kind) for spec, kinds in specs for name, kind in served_names(spec, kinds)]
    models: list[ServedModel] = []
    openers: dict[str, SplitOpener] = {}
    for n, (spec, name, kind) in enumerate(todo, 1):
        state.reason = f"loading {name} ({n}/{len(todo)})"
        try:
            model = await asyncio.to_thread(build, spec, name, kind, settings, loop, load)
        except Exception as exc:
            if settings.on_model_error == "fail":
                raise
            state.missing.append(fault := load_fault(name, spec.path, exc))
            log.error("model fault: %s", fault, exc_info=exc)
            continue
        models.append(model)
        openers[name] = partial(_open, load, spec, kind, settings)
        log.info(
            "serving %s (%s, %s, %s, %d model workers, %s; start-up %s s)", name, spec.task, spec.role, kind,
            model.batcher.config.workers, model.batcher.workers_choice,
            ", ".join(f"{k} {v:.3f}" for k, v in model.startup_s.items()),
        )
        _warn_slow_int8(model)
    settle_workers(models, openers, settings)
    return models


def _warn_slow_int8(model: ServedModel) -> None:
    """A user who asked for `onnx-int8` where its export found it slower than fp32 (CPUs without
    AVX-512 VNNI: `training.export`) is told so at start, not left to find it in the latencies."""
    speedup = model.spec.int8_speedup
    if model.backend_kind == "onnx-int8" and speedup is not None and speedup < 1:
        log.warning("model %s: its int8 file ran at %.2fx fp32 as served where it was exported; onnx is faster "
                    "on such a CPU", model.name, speedup)
