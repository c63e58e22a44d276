"""Growth benchmark: how a task's teacher and student cost grows with one factor at a time.

  python -m benchmarks.bench_growth --tiny                                   # the test suite's tiny models
  python -m benchmarks.bench_growth --teacher DIR --student DIR --out DIR    # any two model folders
  python -m benchmarks.bench_growth --models-dir models --task qa --factors length

Three factors, each swept with the others held fixed; teacher and student are measured point by
point in the same run (their order alternating from point to point, so that load from other
processes on a shared machine lands on both), and the student/teacher throughput ratio is
printed per point.

batch        In process (the model's own pipeline: tokenize, pad, model call, post-process; no
             HTTP, no queue), one caller, items of `--batch-tokens` tokens, batch 1 to 64: items/s
             and p99 per call. Batching amortises the fixed cost of a call (Python, session
             dispatch, thread synchronisation, small matrix products that leave cores idle) over
             more items, so items/s climbs until the matrix products saturate the cores; the
             student, with half the layers, has less work per item to hide that overhead behind,
             so its ratio to the teacher is lowest at batch 1 and grows with the batch.
length       In process, batch `--length-batch`, texts made to tokenize to 16, 32, 64 ... tokens up
             to each model's served window (manifest `max_length`; the token count is checked with
             the pipeline's own tokenizer): items/s, tokens/s and p99. The dense layers cost grows
             linearly with tokens, attention quadratically, so tokens/s falls at long inputs; the
             fixed per-call cost weighs most on short ones. With half the layers and their
             attention, the student saves a fixed share of both and its ratio settles near
             layers(teacher)/layers(student) as the model's own work dominates.
concurrency  Over HTTP: `uvicorn app.main:app` (the harness `Server`) serving just the pair, 1, 4,
             16, 64 and 256 closed-loop keep-alive clients, one item per request: req/s and
             client-side p99. Concurrency is what lets the service's batcher form batches, so
             req/s grows with clients until the model is saturated; past that, more clients add
             only queueing, and p99 grows with the client count (about clients / throughput).

Each point runs untimed calls first (`--warmup`, at least one call), then is timed for
`--seconds` (at least one call; a point ends after the call in flight at its bound, so a heavy
point can overrun by one call, or, over HTTP, by one round trip). The plan's timed total is
printed first and the whole run's wall time and the machine's load average at the end.
`--out DIR` writes growth.json (every row) and growth.png (throughput and p99 against each
factor, log x).
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, too

from benchmarks.bench_serving import InProcess, item
from benchmarks.bench_shadow import folders, percentile, requests_for
from benchmarks.harness import SENTENCES, Server, add_pair_options, rotations, run_load
from inference.pipelines import QAItem, valid_sequences

BATCHES = (1, 2, 4, 8, 16, 32, 64)
CLIENTS = (1, 4, 16, 64, 256)
FACTORS = ("batch", "length", "concurrency")
ROLES = ("teacher", "student")
QA_QUESTION = "When does the museum open?"  # fixed; the length factor grows a QA item's context
FILLER = " ".join(SENTENCES).lower().split()
X_HEADER = {"batch": "batch", "length": "asked", "concurrency": "clients"}
X_LABEL = {"batch": "batch size (items per call)", "length": "tokens per item", "concurrency": "concurrent clients"}
# per factor: the table's columns after x, (header, row key, format)
COLUMNS = {
    "batch": [("items/s", "throughput", "{:.1f}"), ("p99 ms", "p99_ms", "{:.2f}")],
    "length": [("items/s", "throughput", "{:.1f}"), ("tokens/s", "tokens_s", "{:.0f}"), ("p99 ms", "p99_ms", "{:.2f}")],
    "concurrency": [("req/s", "throughput", "{:.1f}"), ("p99 ms", "p99_ms", "{:.2f}")],
}


# ---- texts of a given token count -------------------------------------------------------------
def length_payload(task: str, text: str) -> Any:
    """One pipeline item whose variable part is `text` (a QA item's context, after a fixed question)."""
    return QAItem(0, QA_QUESTION, text) if task == "qa" else item(task, text)


def tokens_of(local: InProcess, words: list[str]) -> int:
    """Tokens the model's pipeline makes of `words` (special tokens included; all QA windows)."""
    seqs = valid_sequences(local.pipeline.encode([length_payload(local.spec.task, " ".join(words))])[0])
    return sum(s.tokens for s in seqs)


@functools.cache
def length_text(local: InProcess, n: int) -> tuple[str, int]:
    """A text whose item tokenizes to `n` tokens (or the nearest count below), and that count:
    the most words of `FILLER` that fit (binary search: the count only grows with words), then
    short filler words while one more still fits."""
    words = list(itertools.islice(itertools.cycle(FILLER), n))
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if tokens_of(local, words[:mid]) <= n else (lo, mid - 1)
    chosen = words[:lo]
    for _ in range(n):
        if tokens_of(local, [*chosen, "a"]) > n or tokens_of(local, chosen) >= n:
            break
        chosen.append("a")
    return " ".join(chosen), tokens_of(local, chosen)


def lengths_up_to(window: int) -> list[int]:
    """16, 32, 64 ... below `window`, then `window` itself."""
    out = list(itertools.takewhile(lambda n: n < window, (16 << i for i in itertools.count())))
    return [*out, window]


# ---- timing -------------------------------------------------------------------------------
def timed_calls(call: Callable[[], object], seconds: float) -> tuple[list[float], float]:
    """Per-call seconds of `call` run back to back for `seconds` (at least once), and the elapsed time."""
    latencies: list[float] = []
    start = time.perf_counter()
    until = start + seconds
    while not latencies or time.perf_counter() < until:
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - start


def point(factor: str, role: str, model: str, x: int, latencies: list[float], throughput: float,
          **extra: Any) -> dict[str, Any]:
    """One row: throughput (items or requests per second) and latency percentiles in ms."""
    return {"factor": factor, "role": role, "model": model, "x": x, "throughput": throughput,
            "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
            "samples": len(latencies), **extra}


def roles_in_turn(i: int) -> tuple[str, ...]:
    """Teacher first on even points, student first on odd ones: neither always gets the fresher machine."""
    return ROLES if i % 2 == 0 else ROLES[::-1]


# ---- in-process factors -------------------------------------------------------------------
def in_process_point(args: argparse.Namespace, factor: str, role: str, local: InProcess, batch: int, length: int,
                     x: int) -> dict[str, Any]:
    text, tokens = length_text(local, length)
    payloads = [length_payload(local.spec.task, text)] * batch
    timed_calls(lambda: local.run(payloads), args.warmup)
    latencies, elapsed = timed_calls(lambda: local.run(payloads), args.seconds)
    rate = len(latencies) * batch / elapsed
    return point(factor, role, local.spec.name, x, latencies, rate, batch=batch, tokens=tokens,
                 tokens_s=rate * tokens)


def sweep_points(factor: str, args: argparse.Namespace, window: int) -> list[tuple[int, int, int]]:
    """(batch, tokens asked for, x) per point of an in-process factor."""
    if factor == "batch":
        return [(b, min(args.batch_tokens, window), b) for b in BATCHES]
    return [(args.length_batch, n, n) for n in lengths_up_to(window)]


def in_process_sweep(args: argparse.Namespace, factor: str, models: dict[str, InProcess]) -> list[dict[str, Any]]:
    windows = {role: m.spec.max_length for role, m in models.items()}
    rows = []
    for i, (batch, length, x) in enumerate(sweep_points(factor, args, max(windows.values()))):
        for role in roles_in_turn(i):
            if length <= windows[role] or factor == "batch":  # a length past a model's window: no point
                rows.append(in_process_point(args, factor, role, models[role], batch, min(length, windows[role]), x))
        report_progress(rows[-2:])
    return rows


# ---- concurrency over HTTP -----------------------------------------------------------------
def server_env(args: argparse.Namespace) -> dict[str, str]:
    """Closed-loop clients, up to 256 in flight: no admission 429s, no deadline 504s, no shadowing."""
    env = {"DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000", "DISTILSERVE_REQUEST_DEADLINE_S": "900",
           "DISTILSERVE_SHADOW_RATE": "0"}
    return {**env, "DISTILSERVE_THREADS": str(args.threads)} if args.threads else env


def concurrency_sweep(args: argparse.Namespace, pair: dict[str, Path]) -> list[dict[str, Any]]:
    reqs = {role: requests_for(args.task, folder.name, len(SENTENCES)) for role, folder in pair.items()}
    rows = []
    with Server(pair["student"], args.backend, args.port, server_env(args), also=(pair["teacher"],)):
        for role_reqs in reqs.values():  # the whole HTTP path, and each model's batcher
            run_load(args.port, rotations(role_reqs, 4), max(args.warmup, 0.5))
        for i, clients in enumerate(CLIENTS):
            for role in roles_in_turn(i):
                per_client = rotations(reqs[role], clients)
                run_load(args.port, per_client, args.warmup)
                rate, latencies = run_load(args.port, per_client, args.seconds)
                rows.append(point("concurrency", role, pair[role].name, clients, latencies, rate))
            report_progress(rows[-2:])
    return rows


# ---- report -------------------------------------------------------------------------------
def report_progress(rows: list[dict[str, Any]]) -> None:
    print("  " + "  ".join(f"{r['factor']} {r['x']} {r['role']}: {r['throughput']:.1f}/s p99 {r['p99_ms']:.1f} ms"
                           for r in rows), flush=True)


def cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    return fmt.format(row[key]) if row else "-"


def table(factor: str, rows: list[dict[str, Any]]) -> list[str]:
    """One line per x: the items' actual tokens (in process), the teacher's columns, the
    student's, and student/teacher throughput."""
    cols = COLUMNS[factor]
    by = {(r["role"], r["x"]): r for r in rows if r["factor"] == factor}
    tokens = factor != "concurrency"
    lines = [f"{X_HEADER[factor]:>8}" + ("  tokens" if tokens else "")
             + "".join(f"{f'{role[0]} {h}':>13}" for role in ROLES for h, _, _ in cols) + f"{'s/t':>9}"]
    for x in sorted({x for _, x in by}):
        t, s = by.get(("teacher", x)), by.get(("student", x))
        ratio = f"{s['throughput'] / t['throughput']:.2f}x" if s and t else "-"
        # the actual token counts, one figure when teacher and student agree
        counts = "/".join(dict.fromkeys(str(r["tokens"]) for r in (t, s) if r and "tokens" in r))
        cells = [cell(by.get((role, x)), key, fmt) for role in ROLES for _, key, fmt in cols]
        lines.append(f"{x:>8}" + (f"{counts:>8}" if tokens else "") + "".join(f"{c:>13}" for c in cells)
                     + f"{ratio:>9}")
    return lines


def describe(args: argparse.Namespace, pair: dict[str, Path], specs: dict[str, Any]) -> None:
    print(f"task {args.task}  backend {args.backend}  threads {args.threads or 'runtime default'}  "
          f"{os.cpu_count()} cores")
    for role in ROLES:
        s = specs[role]
        print(f"  {role:<8} {pair[role]}  layers {s.layers}  window {s.max_length} tokens")


def print_tables(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    titles = {"batch": f"batch size: in process, one caller, {args.batch_tokens}-token items; items/s, p99 per call",
              "length": f"sequence length: in process, batch {args.length_batch}; items/s, tokens/s, p99 per call",
              "concurrency": "concurrency: HTTP, closed-loop clients, one item per request; req/s, client p99"}
    for factor in args.factors:
        print(f"\n{titles[factor]}  (t = teacher, s = student, s/t = student/teacher throughput)")
        print("\n".join(table(factor, rows)))


def planned_seconds(args: argparse.Namespace, window: int) -> float:
    """Timed and warm-up seconds the plan asks for (model loading, server start and overruns aside)."""
    points = {"batch": len(BATCHES), "length": len(lengths_up_to(window)), "concurrency": len(CLIENTS)}
    return sum(points[f] for f in args.factors) * len(ROLES) * (args.warmup + args.seconds)


# ---- plot ---------------------------------------------------------------------------------
def write_plot(rows: list[dict[str, Any]], factors: list[str], backend: str, path: Path) -> None:
    """Throughput (top row) and p99 (bottom row) against each factor, one column per factor."""
    from benchmarks.plots import concurrency_axis, log_axis, plt, style

    fig, axes = plt.subplots(2, len(factors), figsize=(5.2 * len(factors), 7.6), squeeze=False)
    for col, factor in enumerate(factors):
        for row, (key, label) in enumerate((("throughput", "req/s" if factor == "concurrency" else "items/s"),
                                            ("p99_ms", "p99 latency, ms"))):
            ax = axes[row][col]
            for role in ROLES:
                pts = sorted((r for r in rows if r["factor"] == factor and r["role"] == role), key=lambda r: r["x"])
                ax.plot([p["x"] for p in pts], [p[key] for p in pts], label=f"{role} ({pts[0]['model']})"
                        if pts else role, **style(role, backend))
            concurrency_axis(ax, sorted({r["x"] for r in rows if r["factor"] == factor}))
            ax.set_xlabel(X_LABEL[factor])
            log_axis(ax)
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
    fig.suptitle(f"Cost growth, one factor at a time ({backend})", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- run ----------------------------------------------------------------------------------
def measure(args: argparse.Namespace, pair: dict[str, Path]) -> Iterator[list[dict[str, Any]]]:
    """Each factor's rows in turn; the in-process models are dropped before the server starts."""
    models = {role: InProcess(folder, args.backend, args.threads) for role, folder in pair.items()}
    describe(args, pair, {role: m.spec for role, m in models.items()})
    print(f"plan: about {planned_seconds(args, max(m.spec.max_length for m in models.values())):.0f} s of warm-up "
          f"and timed runs ({args.warmup:g} s + {args.seconds:g} s per point and model)", flush=True)
    for factor in (f for f in args.factors if f != "concurrency"):
        yield in_process_sweep(args, factor, models)
    del models
    length_text.cache_clear()
    gc.collect()
    if "concurrency" in args.factors:
        yield concurrency_sweep(args, pair)


def save(args: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "growth.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_plot(rows, args.factors, args.backend, out / "growth.png")
    print(f"wrote {out / 'growth.json'} and {out / 'growth.png'}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_options(parser)
    parser.add_argument("--factors", default=",".join(FACTORS), help="comma-separated, of " + ", ".join(FACTORS))
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per point and model")
    parser.add_argument("--warmup", type=float, default=None,
                        help="untimed seconds before each point (at least one call; default: a quarter of --seconds)")
    parser.add_argument("--batch-tokens", type=int, default=32, help="tokens per item in the batch-size sweep")
    parser.add_argument("--length-batch", type=int, default=8, help="batch size in the sequence-length sweep")
    parser.add_argument("--port", type=int, default=18281)
    parser.add_argument("--out", help="folder for growth.json and growth.png")
    args = parser.parse_args(argv)
    args.factors = [f.strip() for f in args.factors.split(",") if f.strip()]
    if not args.factors or set(args.factors) - set(FACTORS):
        parser.error(f"--factors: pick from {', '.join(FACTORS)}")
    args.warmup = args.seconds / 4 if args.warmup is None else args.warmup
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    with ExitStack() as stack:
        teacher, student = folders(args, stack)
        pair = {"teacher": teacher, "student": student}
        rows = [r for part in measure(args, pair) for r in part]
    print_tables(rows, args)
    wall = time.perf_counter() - start
    load = os.getloadavg()
    print(f"\ntotal {wall:.0f} s; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} cores; other processes share them)")
    if args.out:
        meta = {"task": args.task, "backend": args.backend, "threads": args.threads, "seconds": args.seconds,
                "warmup": args.warmup, "teacher": str(teacher), "student": str(student), "wall_s": wall,
                "loadavg": load, "cores": os.cpu_count()}
        save(args, rows, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
