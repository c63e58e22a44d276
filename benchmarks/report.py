"""Offline teacher-vs-student comparison of a running service: bounded load at several
concurrencies on every served model (each role, backend and task), written as `report.md`,
`results.json` and PNG plots.

    python -m benchmarks.report --url http://127.0.0.1:8000 --out reports/

It measures from the client side, over HTTP on the loopback interface, because that is what a
caller of the service gets; quality figures come from the models' manifests (GET /models), so
the report puts what the student saves next to what it costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

import httpx

from benchmarks.loadgen import Run, Target, check_loopback, drive
from benchmarks.plots import write_plots
from benchmarks.tables import machine_description, render_markdown, row_of

EXAMPLE = "python -m benchmarks.report --url http://127.0.0.1:8000 --out reports/ --concurrency 1,4,16"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0],
        epilog=f"example:\n  {EXAMPLE}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="running service (loopback only)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for report.md and plots")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=300, help="requests per model and concurrency")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="time budget per model and concurrency")
    parser.add_argument("--tasks", default="", help="comma-separated tasks to include (default: all)")
    parser.add_argument("--backends", default="", help="comma-separated backends to include (default: all)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    args = parser.parse_args(argv)
    args.levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not args.levels or min(args.levels) < 1 or args.requests < 1 or args.max_seconds <= 0:
        parser.error("--concurrency, --requests and --max-seconds must be positive")
    return args


def listed_models(payload: object) -> list[dict]:
    """GET /models body as a list of model entries (a bare list or {"models"|"data": [...]})."""
    if isinstance(payload, dict):
        payload = payload.get("models", payload.get("data", []))
    if not isinstance(payload, list):
        raise SystemExit(f"GET /models returned {type(payload).__name__}, expected a list of models")
    return payload


def select(models: list[dict], tasks: str, backends: str) -> list[dict]:
    """Models to measure, teachers first, in a stable order."""
    keep_t = {t for t in tasks.split(",") if t}
    keep_b = {b for b in backends.split(",") if b}
    chosen = [m for m in models if (not keep_t or m["task"] in keep_t) and (not keep_b or m["backend"] in keep_b)]
    return sorted(chosen, key=lambda m: (m["task"], m["backend"], m["role"] != "teacher", m["name"]))


def target_of(entry: dict) -> Target:
    """What a request sends as "model": the entry's request id when the service gives one."""
    model = entry.get("id") or entry["name"]
    return Target(model=model, task=entry["task"], role=entry["role"], backend=entry["backend"])


async def sweep(args: argparse.Namespace, entries: list[dict]) -> list[Run]:
    """Every selected model at every concurrency, one run at a time (runs never overlap)."""
    limits = httpx.Limits(max_connections=max(args.levels), max_keepalive_connections=max(args.levels))
    runs: list[Run] = []
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        for entry in entries:
            for level in args.levels:
                run = await drive(client, target_of(entry), level, args.requests, args.max_seconds)
                print(f"{entry['name']:<24} {entry['backend']:<9} c={level:<3} "
                      f"p50={run.percentile(50):7.2f} ms  {run.throughput:8.1f} req/s  errors={run.errors}",
                      file=sys.stderr)
                runs.append(run)
    return runs


def fetch_models(url: str, timeout: float) -> list[dict]:
    with httpx.Client(base_url=url, timeout=timeout) as client:
        ready = client.get("/ready")
        if ready.status_code != 200:
            raise SystemExit(f"{url}/ready answered {ready.status_code}: {ready.text[:300]}")
        return listed_models(client.get("/models").json())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_loopback(args.url)
    entries = select(fetch_models(args.url, args.timeout), args.tasks, args.backends)
    if not entries:
        raise SystemExit("no served model matches --tasks/--backends")
    runs = asyncio.run(sweep(args, entries))
    rows = [row_of(run, entries, runs) for run in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(rows, args.out)
    meta = {"url": args.url, "machine": machine_description(), "concurrency": args.levels,
            "requests": args.requests, "max_seconds": args.max_seconds}
    (args.out / "report.md").write_text(render_markdown(rows, meta, plots))
    (args.out / "results.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "runs": [asdict(r) for r in runs]}, indent=2, default=str))
    print(f"wrote {args.out / 'report.md'} and {len(plots)} plots", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
