"""How many model calls to keep in flight per model: measured at warm-up on paired samples and
decided with a margin, logged with the figures it was decided on, and, when a memory file is
set, remembered per machine and model file so that every start of the same model on the same
machine makes the same choice without measuring again.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.backends import Backend, onnx_file
from inference.pipelines import Pipeline, concurrent_throughput

log = logging.getLogger("distilserve")
PAIR_GAIN = 1.15  # two calls in flight must beat one by this much (median of the paired ratios)
PAIRS = 3  # paired samples (one call, then two) at warm-up


def measure(pipeline: Pipeline, backend: Backend, pad: int, payloads: Sequence[Any]) -> dict[str, float]:
    """Items/s with one call and with two in flight, and the median of their paired ratios."""
    ones, twos = [], []
    for _ in range(PAIRS):
        ones.append(concurrent_throughput(pipeline, backend, pad, payloads, 1, calls=3)[0])
        twos.append(concurrent_throughput(pipeline, backend, pad, payloads, 2, calls=3)[0])
    ratio = statistics.median(two / one for one, two in zip(ones, twos, strict=True))
    return {"one_items_s": round(statistics.median(ones), 1), "two_items_s": round(statistics.median(twos), 1),
            "ratio": round(ratio, 3)}


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
