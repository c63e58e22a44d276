"""The model call alone on every engine that can run a folder's files, in one process.

  python -m benchmarks.bench_engines --model-dir models/squad-quick-student --batch 18 --tokens 256
  python -m benchmarks.bench_engines --model-dir models/sst2-quick-student --batch 32 --tokens 32

Why: ONNX Runtime and OpenVINO run the same two ONNX files with different kernels, and which is
faster depends on the file's int8 scheme and the CPU (README, Benchmarks, "OpenVINO"). This
times `Backend.forward` on one fixed batch of random token ids for each backend (`--backends`,
default every ONNX Runtime and OpenVINO kind the folder has files for), alternating the backends
in rounds so that load from other processes hits them alike, and prints the median per backend,
its speed against `onnx` (fp32 on ONNX Runtime) and how close its first output is to `onnx`'s:
the share of rows whose argmax is the same, the minimum cosine of a row, the largest difference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.agreement import row_cosines
from inference.backends import ONNX_FILES, OPENVINO_KINDS, Backend, available_kinds, load_backend
from inference.modelfolder import read_spec


def batch(backend: Backend, vocab: int, rows: int, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`rows` x `tokens` random ids of the vocabulary's upper 95% (no padding; the lowest ids are
    special tokens): the graph's inputs, token types zero."""
    ids = np.random.default_rng(seed).integers(vocab // 20, vocab, size=(rows, tokens), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: feeds[name] for name in backend.input_names}


def timed(backend: Backend, inputs: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    """Seconds of one forward and its first output, flattened per row."""
    started = time.perf_counter()
    outputs = backend.forward(inputs)
    seconds = time.perf_counter() - started
    first = next(iter(outputs.values()))
    return seconds, first.reshape(first.shape[0], -1)


def closeness(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    cosine = row_cosines(reference, other)
    return {"argmax_same": round(float((reference.argmax(-1) == other.argmax(-1)).mean()), 4),
            "min_cosine": round(float(cosine.min()), 6),
            "max_abs_diff": round(float(np.abs(reference - other).max()), 4)}


def run(model_dir: Path, kinds: list[str], rows: int, tokens: int, rounds: int,
        threads: int | None) -> list[dict[str, Any]]:
    """Every backend's median seconds over `rounds` alternating rounds, and its closeness to onnx."""
    task = read_spec(model_dir).task
    backends = {kind: load_backend(model_dir, task, kind, threads) for kind in kinds}
    vocab = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    inputs = {kind: batch(b, vocab, rows, tokens) for kind, b in backends.items()}
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    outputs: dict[str, np.ndarray] = {}
    for kind in kinds:  # warm-up: first calls allocate
        outputs[kind] = timed(backends[kind], inputs[kind])[1]
    for _ in range(rounds):
        for kind in kinds:
            seconds[kind].append(timed(backends[kind], inputs[kind])[0])
    base = statistics.median(seconds["onnx"])
    return [{"backend": kind, "median_ms": round(1000 * statistics.median(seconds[kind]), 1),
             "speedup": round(base / statistics.median(seconds[kind]), 3), **closeness(outputs["onnx"], outputs[kind])}
            for kind in kinds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a model folder with model.onnx")
    parser.add_argument("--backends", nargs="+", help="default: every ONNX Runtime / OpenVINO kind it has files for")
    parser.add_argument("--batch", type=int, default=16, help="rows per call")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per row")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    engines = [*ONNX_FILES, *OPENVINO_KINDS]
    kinds = args.backends or [k for k in available_kinds(args.model_dir) if k in engines]
    kinds = ["onnx", *[k for k in kinds if k != "onnx"]]  # the reference comes first
    rows = run(args.model_dir, kinds, args.batch, args.tokens, args.rounds, args.threads)
    print(f"{args.model_dir.name}: {args.batch} x {args.tokens} tokens, medians of {args.rounds}")
    print("| backend | median ms | x onnx | argmax same | min cosine | max abs diff |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['median_ms']:,.1f} | {r['speedup']:.2f}x | {r['argmax_same']:.3f} | "
              f"{r['min_cosine']:.6f} | {r['max_abs_diff']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
