"""Shadow-traffic benchmark: the student's latency with shadowing off and at a given rate,
measured in one run on 127.0.0.1.

  python -m benchmarks.bench_shadow --tiny                         # the test suite's tiny models
  python -m benchmarks.bench_shadow --models-dir models --task qa  # a built model repository
  python -m benchmarks.bench_shadow --teacher DIR --student DIR    # any two model folders

Two servers (`uvicorn app.main:app`, each serving only the task's teacher and student) run side
by side, one with `DISTILSERVE_SHADOW_RATE=0`, one at `--rate`. Rounds alternate between them
with the same fixed requests from a fixed number of closed-loop keep-alive clients, so load from
other processes on a shared machine hits both alike; after each shadowed round the teacher's
backlog drains before the next round starts. Latencies are pooled per setting; p50 and p99 and
their ratios (shadowed / off) are printed, with the shadow counters of the shadowed server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, too

from app.repository.registry import discover
from benchmarks.harness import (
    ENDPOINT,
    SENTENCES,
    Server,
    add_pair_options,
    body,
    metrics_text,
    request_bytes,
    run_load,
)


def pick_pair(models_dir: Path, task: str) -> tuple[Path, Path]:
    """(teacher, student) folders of `task` in a model repository: a student and the teacher
    its manifest names (any teacher of the task when that one is absent)."""
    specs = [s for s in discover(models_dir) if s.task == task]
    students = [s for s in specs if s.role == "student"]
    teachers = [s for s in specs if s.role == "teacher"]
    if not students or not teachers:
        raise SystemExit(f"{models_dir}: no {task} teacher and student (build them, or pass --tiny)")
    student = students[0]
    teacher = next((t for t in teachers if t.name == student.teacher), teachers[0])
    return teacher.path, student.path


def shadow_counts(url: str) -> dict[str, float]:
    """distilserve_shadow_requests_total by result, and agreement items recorded."""
    out: dict[str, float] = {}
    for line in metrics_text(url).splitlines():
        if line.startswith("distilserve_shadow_requests_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = out.get(result, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("distilserve_shadow_agreement_total{"):
            out["compared"] = out.get("compared", 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def drain(url: str, timeout_s: float = 30.0) -> None:
    """Wait until every shadow request sent has been compared or failed (teacher idle). The
    benchmark's requests have one item each, so items compared count requests."""
    until = time.time() + timeout_s
    while time.time() < until:
        c = shadow_counts(url)
        if c.get("compared", 0.0) + c.get("failed", 0.0) >= c.get("sent", 0.0):
            return
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def requests_for(task: str, model: str, n: int) -> list[bytes]:
    return [request_bytes(ENDPOINT[task], body(task, SENTENCES[i % len(SENTENCES)], model)) for i in range(n)]


def measure(args: argparse.Namespace, teacher: Path, student: Path, task: str) -> dict[str, Any]:
    """Alternate rounds between the two servers (each serving the teacher and the student);
    pooled latencies (ms) per setting."""
    base = {"DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000"}  # closed-loop clients: no admission 429s
    if args.threads:
        base["DISTILSERVE_THREADS"] = str(args.threads)
    reqs = requests_for(task, "student", args.requests)
    per_client = [reqs[i::args.concurrency] for i in range(args.concurrency)]
    lat: dict[str, list[float]] = {"off": [], "on": []}
    with ExitStack() as stack:
        rates = {"off": "0", "on": str(args.rate)}
        servers = {key: stack.enter_context(Server(student, args.backend, args.port + i,
                                                   {**base, "DISTILSERVE_SHADOW_RATE": rate}, also=(teacher,)))
                   for i, (key, rate) in enumerate(rates.items())}
        for srv in servers.values():  # warm both HTTP paths and the teacher
            run_load(srv.port, [reqs[:8]] * 2, None)
        drain(servers["on"].url)
        start_counts = shadow_counts(servers["on"].url)
        for i in range(args.rounds):
            for key in ("off", "on") if i % 2 == 0 else ("on", "off"):  # neither always goes first
                _, seconds = run_load(servers[key].port, per_client, None)
                lat[key] += [s * 1e3 for s in seconds]
                drain(servers["on"].url)  # no shadow backlog carries into the next round
        end_counts = shadow_counts(servers["on"].url)
    counts = {k: end_counts.get(k, 0.0) - start_counts.get(k, 0.0) for k in end_counts}
    return {"latencies": lat, "counts": counts}


def report(args: argparse.Namespace, teacher: Path, student: Path, result: dict[str, Any]) -> None:
    lat, counts = result["latencies"], result["counts"]
    stats = {k: {"p50": percentile(v, 50), "p99": percentile(v, 99), "mean": statistics.fmean(v), "n": len(v)}
             for k, v in lat.items()}
    print(f"teacher {teacher}  student {student}  task {args.task}  backend {args.backend}  threads {args.threads}")
    print(f"{args.concurrency} closed-loop clients, {args.requests} requests per round, "
          f"{args.rounds} rounds per setting")
    for key, label in (("off", "shadowing off"), ("on", f"shadow_rate {args.rate}")):
        s = stats[key]
        print(f"  {label:<18} student p50 {s['p50']:7.2f} ms   p99 {s['p99']:7.2f} ms   mean {s['mean']:7.2f} ms   "
              f"({s['n']} requests)")
    on, off = stats["on"], stats["off"]
    print(f"  ratio shadowed/off: p50 {on['p50'] / off['p50']:.3f}   p99 {on['p99'] / off['p99']:.3f}")
    print("  shadow requests: " + json.dumps({k: int(v) for k, v in sorted(counts.items())}))
    print(f"  load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores; other processes share them)")


def folders(args: argparse.Namespace, stack: ExitStack) -> tuple[Path, Path]:
    if args.teacher and args.student:
        return Path(args.teacher), Path(args.student)
    if args.tiny:
        from tests.tiny import build_repository  # torch is needed only to build them

        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tiny-"))
        return pick_pair(build_repository(Path(tmp)), args.task)
    return pick_pair(Path(args.models_dir), args.task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_options(parser)
    parser.add_argument("--rate", type=float, default=0.2, help="shadow_rate of the shadowed server")
    parser.add_argument("--concurrency", type=int, default=4, help="closed-loop clients")
    parser.add_argument("--requests", type=int, default=100, help="requests per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per setting; short alternating rounds "
                        "spread bursts of load from other processes over both settings")
    parser.add_argument("--port", type=int, default=18251)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        teacher, student = folders(args, stack)
        report(args, teacher, student, measure(args, teacher, student, args.task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
