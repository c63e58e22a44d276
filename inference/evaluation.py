"""The batched evaluation loop: payloads through a task pipeline and a backend the way the
service's batcher runs them (a collected group encoded at once, its sequences sorted by length
and cut into model calls), so a figure measured with it is the served figure for that backend.

`training.evaluate` scores data sets with it; benchmarks time it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inference.backends import Backend
from inference.guard import Guard
from inference.pipelines import Pipeline, run_sorted, valid_sequences

CHUNK = 256  # payloads encoded together, like one collected group of the batcher


@dataclass
class Served:
    """Per-payload results from the serving pipeline, and what it cost."""

    results: list[dict[str, Any]]
    seconds: float
    tokens: int
    sequences: int


def serve(pipeline: Pipeline, backend: Backend, pad: int, payloads: Sequence[Any], batch_size: int,
          progress: Callable[[int], object] | None = None, guard: Guard | None = None) -> Served:
    """Run payloads as the batcher does: encode a group, sort its sequences by length, cut
    into batches, one model call per batch, reduce, reassemble per payload, finish, and (an int8
    file with a guard) read its near ties again in fp32.
    `progress` is told how many payloads each group finished (a progress bar's update)."""
    results: list[dict[str, Any]] = []
    tokens = sequences = 0
    started = time.perf_counter()
    for i in range(0, len(payloads), CHUNK):
        group = payloads[i : i + CHUNK]
        encoded = [valid_sequences(s) for s in pipeline.encode(group)]
        rows = run_sorted(pipeline, backend, pad, encoded, batch_size)
        finished = [(payload, seqs, pipeline.finish(payload, seqs, item_rows))
                    for payload, seqs, item_rows in zip(group, encoded, rows, strict=False)]
        results += guard.recheck(pipeline, pad, finished) if guard else [result for _, _, result in finished]
        for seqs in encoded:
            tokens += sum(len(s.ids) for s in seqs)
            sequences += len(seqs)
        if progress is not None:
            progress(len(group))
    return Served(results, time.perf_counter() - started, tokens, sequences)

