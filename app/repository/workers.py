"""How many model calls to keep in flight per model: measured on paired samples and decided with
a margin, logged with the figures it was decided on, and, when a memory file is set, remembered
per machine and model file so that every start of the same model on the same machine makes the
same choice without measuring again.

The measurement runs after the service answers, not before: it took 0.6-1.0 s per model, which
made a first start miss the 1 s cold-start target by itself. A model serves on one call at a
time until it is done; its pairs are sampled only while no request is in the service (and
sampled again when one came in meanwhile), one model at a time, and a second worker (and the
split session) joins once two calls win.

Which wins depends on the model and the machine: on 2 cores the int8 MiniLM runs 1.2-1.4x
faster with two calls (one call at a time spends much of a small batch synchronising ONNX
Runtime's intra-op threads), while the 12-layer fp32 teacher runs 8% slower with two (its big
matrix products parallelise well, and two calls fight over the caches). Unpaired sums of two
short rounds chose differently between identical idle starts; the median of paired ratios
(one call, then two, back to back) is steadier on a noisy machine.

Where two calls run, a second session of the model with half the intra-op threads serves the
calls that start while another is in flight (`split_threads`, `app.engine.batcher`): two calls
of every thread each put twice as many threads as cores to work, two calls of half each
synchronise less and oversubscribe nothing, and a lone call still gets every core. On a 2-core
EPYC (2026-12-07), two in-process callers of the int8 MiniLM reached 786-870 items/s on
one-thread sessions against 680-760 on the shared one; over HTTP with 32 one-sentence clients the
gain was smaller, the event loop taking its share of the cores (three paired 10 s runs: int8
632-652 against 614-638 req/s, fp32 412-432 against 405-425), and with one client sending 32
sentences, shared out as two calls of 16 on idle workers (`app.engine.cutting.shares`), int8
684-688 against 536-588 sentences/s. A lone item took 10-20% longer on one thread than on two
(fp32 MiniLM 5.3 against 4.5-4.9 ms), which is why the lone call keeps the shared session.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from inference.backends import Backend, onnx_file
from inference.pipelines import Pipeline, concurrent_throughput

log = logging.getLogger("distilserve")
_WRITING = threading.Lock()
PAIR_GAIN = 1.15  # two calls in flight must beat one by this much (median of the paired ratios)
PAIRS = 3  # paired samples (one call, then two)
SETTLE_S = 0.5  # no request for this long before a pair is sampled on a serving model
_POLL_S = 0.05


class Traffic(Protocol):
    """What the measurement watches of the served models (`app.engine.batcher.Batcher`, or
    `Quiet` over all of them)."""

    @property
    def activity(self) -> int: ...  # items submitted so far

    @property
    def stopping(self) -> bool: ...

    def idle_for(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Quiet:
    """Every served model's traffic as one: a sample of one model's speed is disturbed by a
    request to any model on the same cores."""

    batchers: Sequence[Traffic]

    @property
    def activity(self) -> int:
        return sum(b.activity for b in self.batchers)

    @property
    def stopping(self) -> bool:
        return any(b.stopping for b in self.batchers)

    def idle_for(self) -> float:
        return min(b.idle_for() for b in self.batchers)


def measure(pipeline: Pipeline, backend: Backend, pad: int, payloads: Sequence[Any],
            traffic: Traffic | None = None) -> dict[str, float] | None:
    """Items/s with one call and with two in flight, and the median of their paired ratios.

    With `traffic` (the service already answering), a pair starts only once no request has come
    in for `SETTLE_S` and nothing runs, and a pair during which a request came in is taken again:
    it timed the request's call too, and the request waited for it. None once the service stops
    before `PAIRS` clean pairs."""
    ones: list[float] = []
    twos: list[float] = []
    while len(ones) < PAIRS:
        if traffic is not None and not _await_idle(traffic):
            return None
        mark = traffic.activity if traffic is not None else 0
        one = concurrent_throughput(pipeline, backend, pad, payloads, 1, calls=3)[0]
        two = concurrent_throughput(pipeline, backend, pad, payloads, 2, calls=3)[0]
        if traffic is None or traffic.activity == mark:
            ones.append(one)
            twos.append(two)
    ratio = statistics.median(two / one for one, two in zip(ones, twos, strict=True))
    return {"one_items_s": round(statistics.median(ones), 1), "two_items_s": round(statistics.median(twos), 1),
            "ratio": round(ratio, 3)}


def _await_idle(traffic: Traffic) -> bool:
    """Poll until the service has been idle for `SETTLE_S`; False once it stops."""
    while not traffic.stopping:
        if traffic.idle_for() >= SETTLE_S:
            return True
        time.sleep(_POLL_S)
    return False


def decide(figures: dict[str, float]) -> int:
    return 2 if figures["ratio"] >= PAIR_GAIN else 1


def split_threads(kind: str, threads: int | None, calls: int) -> int | None:
    """Intra-op threads of the session for concurrent calls: the cores shared out over the
    calls; None where there is nothing to split (not ONNX Runtime, one call, one core, or
    threads set)."""
    cores = len(os.sched_getaffinity(0))
    if not kind.startswith("onnx") or threads is not None or calls < 2 or cores < 2:
        return None
    return max(1, cores // calls)


def machine_key(model_dir: Path, kind: str, threads: int | None) -> str:
    """What a choice holds for: this CPU (model name, cores usable), the model file (size and
    time), the backend and the thread setting."""
    file = model_dir / onnx_file(kind)
    stamp = [(file.stat().st_size, int(file.stat().st_mtime))] if file.is_file() else []
    return json.dumps([_cpu_name(), len(os.sched_getaffinity(0)), str(model_dir.resolve()), kind, threads, stamp])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        return ""


class Memory:
    """Remembered choices in one JSON file; a file that cannot be read or written is ignored
    (the choice is then measured, as without a memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def get(self, key: str) -> int | None:
        entry = self._read().get(key)
        return int(entry["workers"]) if isinstance(entry, dict) and entry.get("workers") in (1, 2) else None

    def put(self, key: str, workers: int, figures: dict[str, float]) -> None:
        if self.path is None:
            return
        with _WRITING:  # read, change, write: one writer at a time
            self._write(key, workers, figures)

    def _write(self, key: str, workers: int, figures: dict[str, float]) -> None:
        assert self.path is not None
        entries = self._read()
        entries[key] = {"workers": workers, **figures}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(entries, indent=1))
        except OSError as exc:
            log.warning("model workers: cannot write %s (%s); the choice is not remembered", self.path, exc)

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
