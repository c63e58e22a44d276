"""Ray Serve scale-out: throughput of one replica against two, on the same models and client.

  python -m benchmarks.bench_ray --tiny                          # the test suite's tiny models
  python -m benchmarks.bench_ray --models-dir models --task qa   # a built model repository
  python -m benchmarks.bench_ray --tiny --uvicorn                # also plain uvicorn, no Ray

A local Ray instance serves the task's student and teacher (deploy/ray/serve_app.py) behind
Serve's HTTP proxy on 127.0.0.1, first with one replica, then redeployed with two. The same
closed-loop keep-alive clients (benchmarks/harness.py) send the student's requests in timed
rounds; the median req/s of each setting's rounds and their ratio (2 / 1) are printed.

What to expect: at most 2x on two free cores, and little gain where each replica's ONNX
Runtime threads already use every core; on one core (e.g. under `taskset -c 1`) two replicas
share it and the ratio is about 1 or below (two processes, two sets of threads, the proxy).
The settings are blocks, not alternating rounds (a redeploy takes seconds): load from other
processes on a shared machine can favour either; the load average is printed at the end.
With `--uvicorn`, `uvicorn app.main:app` serving the same folders is measured too: the cost of
Ray's proxy hop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, too

from app.settings import Settings
from benchmarks.bench_shadow import folders, requests_for
from benchmarks.harness import Server, add_pair_options, rotations, run_load


def rounds(port: int, reqs: list[bytes], clients: int, seconds: float, count: int) -> list[float]:
    """A short warm-up (both replicas' first requests), then `count` timed rounds' req/s."""
    run_load(port, rotations(reqs[:8], clients), None)
    return [run_load(port, rotations(reqs, clients), seconds)[0] for _ in range(count)]


def settings_for(args: argparse.Namespace, models: Path) -> Settings:
    """Closed-loop clients cannot overload the service: no admission 429s (a wide budget)."""
    return Settings(models_dir=models, backends=[args.backend], threads=args.threads, max_queue_wait_ms=600_000)


def pair_folder(teacher: Path, student: Path, stack: ExitStack) -> Path:
    """A models folder holding only the pair (symlinks), so each replica loads just those."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ray-")))
    for folder in (teacher, student):
        (tmp / folder.name).symlink_to(folder.resolve())
    return tmp


def settle(count: int, timeout_s: float = 120.0) -> None:
    """Wait until exactly `count` replicas run and none is still stopping (a draining old
    replica would take CPU from the measured ones)."""
    from ray import serve

    from deploy.ray import serve_app

    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        app = serve.status().applications[serve_app.APP_NAME]
        if app.deployments[serve_app.DEPLOYMENT_NAME].replica_states == {"RUNNING": count}:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{count} replicas not settled after {timeout_s:g} s")


def measure_ray(args: argparse.Namespace, models: Path, reqs: list[bytes]) -> dict[int, list[float]]:
    """req/s per round, per replica count, on one Ray instance (redeployed between counts)."""
    from deploy.ray import serve_app

    serve_app.start_ray(num_cpus=max(2, *args.replicas))
    try:
        settings, results = settings_for(args, models), {}
        serve_app.serve_local(serve_app.build(settings, serve_app.Scaling(args.replicas[0])), "127.0.0.1", args.port)
        for count in args.replicas:
            if count != args.replicas[0]:
                from ray import serve

                serve.run(serve_app.build(settings, serve_app.Scaling(count)), name=serve_app.APP_NAME,
                          route_prefix="/")  # returns once the new replicas are up
                settle(count)
            results[count] = rounds(args.port, reqs, args.concurrency, args.seconds, args.rounds)
            print(f"  {count} replica(s): " + "  ".join(f"{r:.0f}" for r in results[count]) + " req/s", flush=True)
        return results
    finally:
        serve_app.stop_local()


def measure_uvicorn(args: argparse.Namespace, teacher: Path, student: Path, reqs: list[bytes]) -> list[float]:
    env = {"DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000", **({"DISTILSERVE_THREADS": str(args.threads)}
                                                          if args.threads else {})}
    with Server(student, args.backend, args.port + 1, env, also=(teacher,)) as server:
        return rounds(server.port, reqs, args.concurrency, args.seconds, args.rounds)


def report(args: argparse.Namespace, ray: dict[int, list[float]], uvicorn: list[float] | None) -> None:
    cores = len(os.sched_getaffinity(0))
    medians = {count: statistics.median(values) for count, values in ray.items()}
    print(f"task {args.task}  backend {args.backend}  threads {args.threads or 'runtime default'}  "
          f"{args.concurrency} closed-loop clients  {args.rounds} rounds of {args.seconds:g} s per setting")
    for count, median in medians.items():
        print(f"  Ray Serve, {count} replica(s): {median:8.1f} req/s (median)")
    if uvicorn is not None:
        print(f"  uvicorn, no Ray:        {statistics.median(uvicorn):8.1f} req/s (median)")
    low, high = min(medians), max(medians)
    if low != high:
        print(f"  ratio {high} / {low} replicas: {medians[high] / medians[low]:.2f}")
    print(f"  this process may run on {cores} core(s) of {os.cpu_count()} (Ray's processes inherit it); "
          f"load average at the end {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_options(parser)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts, in order")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--requests", type=int, default=64, help="distinct requests the clients cycle through")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each timed round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting; the median is reported")
    parser.add_argument("--uvicorn", action="store_true", help="also measure uvicorn alone (no Ray)")
    parser.add_argument("--port", type=int, default=18261)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        teacher, student = folders(args, stack)
        reqs = requests_for(args.task, "student", args.requests)
        print(f"teacher {teacher}  student {student}", flush=True)
        ray = measure_ray(args, pair_folder(teacher, student, stack), reqs)
        uvicorn = measure_uvicorn(args, teacher, student, reqs) if args.uvicorn else None
        report(args, ray, uvicorn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
