"""Cold start: process start to the first real answer, per phase, as `make serve` starts the service.

  python -m benchmarks.bench_cold_start --model-dir /tmp/bench/minilm --backend onnx-int8
  python -m benchmarks.bench_cold_start --model-dir models/sst2-quick-student --backend onnx --rounds 7

Each round starts `uvicorn app.main:app` on the one model folder (its JSON access log on, as
`make serve` runs it), polls GET /health until the process listens, then sends the task's real
request until it answers 200 (the service answers 503 while models load), reads the model's
start-up phases from /models, and stops the process. Two modes, `--rounds` starts each:
`measured` decides the model-worker count at every start (MODEL_WORKERS_MEMORY unset), and
`remembered` reads the choice that one earlier start of the same model wrote to a memory file
(what every later start on the same machine does when the setting is on). The choice is measured
after the service answers, once it is idle (`app.repository.workers`): `workers_chosen_s` says when
it was made (each start waits for it; remembered: at once). Target: the first answer in <= 1 s per
model on ONNX. Medians over the rounds; the machine should be quiet.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.harness import ENDPOINT, ROOT, body, served_models, stop_process
from inference.backends import KINDS
from inference.modelfolder import read_spec

TARGET_S = 1.0
POLL_S = 0.005


def poll(url: str, data: bytes | None, deadline: float) -> float:
    """perf_counter when `url` first answers 200 (GET, or POST `data` as JSON)."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
                r.read()
                return time.perf_counter()
        except (urllib.error.HTTPError, OSError):
            time.sleep(POLL_S)
    raise RuntimeError(f"{url} did not answer 200 before the deadline")


def one_start(models_dir: Path, name: str, kind: str, port: int, env: dict[str, str],
              log: Path) -> dict[str, Any]:
    """One cold start: seconds to listening and to the first answer, and the model's phases."""
    task = read_spec(models_dir / name).task
    url = f"http://127.0.0.1:{port}"
    settings = {**os.environ, "DISTILSERVE_MODELS_DIR": str(models_dir), "DISTILSERVE_BACKENDS": json.dumps([kind]),
                **env}
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
               "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    request = json.dumps(body(task, "the first request after a cold start", name)).encode()
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=settings, stdout=out, stderr=subprocess.STDOUT)
        try:
            listening = poll(url + "/health", None, started + 120)
            answered = poll(url + ENDPOINT[task], request, started + 300)
            chosen, model = settled(url, name, started + 300)
        finally:
            stop_process(proc, signal.SIGINT, 20)
    return {"listening_s": listening - started, "first_answer_s": answered - started, **model["startup_s"],
            "workers_chosen_s": chosen - started, "workers": model["model_workers"]}


def settled(url: str, name: str, deadline: float) -> tuple[float, dict[str, Any]]:
    """perf_counter when the model's worker choice is made (measured once the service has been
    idle a moment, after the first answer), and the model's /models entry then."""
    while time.perf_counter() < deadline:
        model = next(m for m in served_models(url) if m["name"] == name)
        if model["model_workers_choice"] != "measuring":
            return time.perf_counter(), model
        time.sleep(POLL_S)
    raise RuntimeError(f"{name}'s model-worker choice was not made before the deadline")


def run_mode(model_dir: Path, kind: str, port: int, rounds: int, memory: Path | None) -> list[dict[str, Any]]:
    """`rounds` starts, the model-worker choice measured (memory None) or remembered."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        (models / model_dir.name).symlink_to(model_dir.resolve())
        env = {"DISTILSERVE_MODEL_WORKERS_MEMORY": str(memory)} if memory else {}
        if memory is not None:  # the earlier start that wrote the choice: not counted
            one_start(models, model_dir.name, kind, port, env, Path(tmp) / "first.log")
        return [one_start(models, model_dir.name, kind, port, env, Path(tmp) / f"{i}.log") for i in range(rounds)]


def report(results: dict[str, list[dict[str, Any]]], model: str, kind: str) -> str:
    keys = list(results["measured"][0])
    lines = [f"cold start of {model} on {kind}, median of {len(results['measured'])} starts (seconds)",
             "| mode | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for mode, rows in results.items():
        lines.append(f"| {mode} | " + " | ".join(f"{statistics.median(r[k] for r in rows):.3f}" for k in keys) + " |")
    for mode, rows in results.items():
        first = statistics.median(r["first_answer_s"] for r in rows)
        verdict = "met" if first <= TARGET_S else "not met"
        lines.append(f"{mode}: first answer {first:.3f} s = {first / TARGET_S:.2f}x the {TARGET_S:.0f} s target "
                     f"({verdict}); range {min(r['first_answer_s'] for r in rows):.3f}-"
                     f"{max(r['first_answer_s'] for r in rows):.3f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="an exported model folder")
    parser.add_argument("--backend", default="onnx", choices=KINDS)
    parser.add_argument("--rounds", type=int, default=5, help="starts per mode (default 5)")
    parser.add_argument("--port", type=int, default=8961)
    parser.add_argument("--out", type=Path, help="write every start's figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cold-memory-") as tmp:
        results = {"measured": run_mode(args.model_dir, args.backend, args.port, args.rounds, None),
                   "remembered": run_mode(args.model_dir, args.backend, args.port, args.rounds,
                                          Path(tmp) / "model-workers.json")}
    print(report(results, args.model_dir.name, args.backend))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
