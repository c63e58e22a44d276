"""How fast each int8 file runs against the fp32 graph, on one batch, on this machine.

Why measured here and not assumed: which int8 kernels win depends on the CPU. With AVX512-VNNI
the block-wise MatMulNBits files ran at 1.8-2.4x fp32; on an AVX2 machine without VNNI the same
file ran at 0.60x while dynamic int8 (7-bit weights) ran at 1.5-1.8x; on the AMX Xeon dynamic
int8 ran at 3.4x and blocks of 256 at 1.27x.
`training.export`'s `auto` scheme orders its candidates by these figures, and
`training.int8_compare` prints them for every scheme.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from inference.backends import Backend
from inference.tasks import classify, embed, load_tokenizer, pad_batch, pad_id

BENCH_ITEMS = 16   # items per timed batch: the batcher's usual size under load
ROUNDS = 5         # timed calls per graph; the fastest is kept


def shape_key(config: object) -> str:
    """Models of one architecture and size run the same kernels whatever their task head, so a
    build measures speed once per shape (`training.export`'s `measured` memo)."""
    names = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    return "-".join(str(getattr(config, name, None)) for name in names)


def bench_inputs(model_dir: Path, task: str, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """One padded batch of the first texts (QA: each text as question and context)."""
    tokenizer = load_tokenizer(model_dir, max_length)
    module = embed if task == "embedding" else classify
    pairs = [(t, t) for t in texts[:BENCH_ITEMS]] if task == "qa" else list(texts[:BENCH_ITEMS])
    return pad_batch(module.encode(tokenizer, pairs, max_length), pad_id(tokenizer))


def calibration_batches(model_dir: Path, task: str, texts: Sequence[str], max_length: int
                        ) -> list[dict[str, np.ndarray]]:
    """The texts as padded batches of `BENCH_ITEMS`, the form static int8 calibrates on."""
    return [bench_inputs(model_dir, task, texts[i:i + BENCH_ITEMS], max_length)
            for i in range(0, len(texts), BENCH_ITEMS)]


def in_turns(calls: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each of `rounds` timed calls per entry, after one warm-up call each, the entries
    taking turns within each round: on a shared machine interference then hits every entry alike."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def round_robin_ms(backends: dict[str, Backend], inputs: dict[str, np.ndarray], rounds: int = ROUNDS
                   ) -> dict[str, float]:
    """Fastest of `rounds` timed calls per backend, taken in turns (`in_turns`): the minimum is
    the estimate least moved by interference."""
    times = in_turns({name: partial(backend.forward, inputs) for name, backend in backends.items()}, rounds)
    return {name: 1000 * min(t) for name, t in times.items()}


def speed_figures(fp32: Path, files: dict[str, Path], task: str, inputs: dict[str, np.ndarray],
                  threads: int | None = None, rounds: int = ROUNDS) -> dict[str, dict]:
    """Per int8 file: its ms and fp32's on `inputs` (measured in turns), and fp32 ms / int8 ms."""
    from inference.backends.onnx import OnnxBackend

    backends: dict[str, Backend] = {"fp32": OnnxBackend(fp32, task, "onnx", threads, "all")}
    backends.update({name: OnnxBackend(path, task, "onnx-int8", threads, "all") for name, path in files.items()})
    ms = round_robin_ms(backends, inputs, rounds)
    batch = list(inputs["input_ids"].shape)
    return {name: {"int8_ms": round(ms[name], 2), "fp32_ms": round(ms["fp32"], 2),
                   "speedup": round(ms["fp32"] / ms[name], 3), "batch": batch, "rounds": rounds}
            for name in files}
