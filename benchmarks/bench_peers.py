"""distilserve against infinity-emb on the same embedding model, side by side, in one run.

  python -m benchmarks.bench_peers --model-dir /tmp/bench/minilm --hf-dir .cache/pretrained/all-minilm-l6-v2 \\
      --infinity /path/to/infinity-venv/bin/infinity_emb

`--model-dir` is our export of the model (`python -m training export <hf folder> --task embedding
--out DIR`); `--hf-dir` the plain Hugging Face folder; `--infinity` the `infinity_emb` command of
its own virtual environment (its pins conflict with ours). infinity's ONNX engine loads ONNX files
from the model folder, as the hub's sentence-transformers repositories ship them: this prepares a
copy with `model.onnx` from `optimum-cli export onnx` and, for int8, a copy with
`model_quantized.onnx` from optimum's ORTQuantizer with its AVX2 dynamic per-channel config
(how the hub's `model_quint8_avx2.onnx` is made), both in infinity's venv. infinity runs with
`--engine optimum --pooling-method mean` (its default pools CLS, which makes its vectors differ
from the model's own mean pooling).

One server at a time on 127.0.0.1, both answering POST /embeddings in OpenAI's shape with the
same raw keep-alive closed-loop client (benchmarks.harness), `--seconds` per cell:
clients x sentences per request of 1x1, 32x1 (req/s), 1x32 and 32x32 (sentences/s). Per
precision (fp32, int8) it prints each server's figure and distilserve / infinity. Also: cold
start (process start to the first answered embeddings request), RSS after the load, and
parity: the cosine of each server's vectors to the other's and of int8 to fp32 on 64 sentences.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import ROOT, SENTENCES, request_bytes, rotations, rss_mib, run_load, stop_process
from inference.agreement import row_cosines

PATH = "/v1/embeddings"  # ours; infinity's /embeddings under --url-prefix /v1
CELLS = ((1, 1), (32, 1), (1, 32), (32, 32))   # (clients, sentences per request)
PARITY = [f"{s} ({i})" for i, s in enumerate(SENTENCES * 8)]  # 64 distinct sentences


@dataclass
class Peer:
    """One server process: how to start it, its port, and what was measured on it."""

    name: str
    command: list[str]
    model: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path, timeout_s: float = 300) -> float:
        """Start it; seconds until it answered a real embeddings request."""
        started = time.perf_counter()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.command, env={**os.environ, **self.env}, cwd=self.cwd,
                                         stdout=out, stderr=subprocess.STDOUT)
        while time.perf_counter() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {log.read_text()[-2000:]}")
            try:
                self.embed(["warm up"])
                return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer in {timeout_s:.0f} s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 30)
            self.proc = None

    def embed(self, texts: list[str]) -> np.ndarray:
        data = json.dumps({"model": self.model, "input": texts}).encode()
        request = urllib.request.Request(self.url + PATH, data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            rows = json.loads(response.read())["data"]
        return np.array([r["embedding"] for r in sorted(rows, key=lambda r: r["index"])], dtype=np.float64)

    def rss_mb(self) -> float:
        """Resident memory of the server and its children (MB)."""
        assert self.proc is not None
        pids = [self.proc.pid] + [int(p) for p in _children(self.proc.pid)]
        return sum(rss_mib(pid) for pid in pids)


def _children(pid: int) -> list[str]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return path.read_text().split() if path.exists() else []


def ours(model_dir: Path, precision: str, port: int, models: Path) -> Peer:
    """`uvicorn app.main:app` as `make serve` runs it (its JSON access log on), one backend; the
    admission budget is raised, as infinity queues without one (32 x 32 on a busy machine can
    estimate more than the default 2 s of wait, and a closed loop cannot overload anyway)."""
    backend = "onnx" if precision == "fp32" else "onnx-int8"
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
               "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    env = {"DISTILSERVE_MODELS_DIR": str(models), "DISTILSERVE_BACKENDS": json.dumps([backend]),
           "DISTILSERVE_MAX_QUEUE_WAIT_MS": "60000"}
    return Peer("distilserve", command, model_dir.name, port, env, ROOT)


def infinity(binary: str, folder: Path, precision: str, port: int, name: str) -> Peer:
    """`infinity_emb v2` on the ONNX (optimum) engine with mean pooling, its routes under /v1;
    int8: told to prefer the folder's quantised file. It runs in the model folder with model id
    "." and the ONNX file at the folder's top: infinity 0.0.78 hands optimum the file's path as
    found under the model id, and optimum matches it against bare file names only."""
    command = [binary, "v2", "--model-id", ".", "--served-model-name", name, "--engine", "optimum",
               "--pooling-method", "mean", "--device", "cpu", "--port", str(port), "--url-prefix", "/v1",
               "--no-model-warmup"] + (["--no-onnx-do-not-prefer-quantized"] if precision == "int8" else [])
    return Peer("infinity", command, name, port, {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}, folder)


_PREPARE = """
import shutil, sys
from pathlib import Path
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
export, fp32, int8 = (Path(p) for p in sys.argv[1:4])
ORTQuantizer.from_pretrained(export).quantize(AutoQuantizationConfig.avx2(is_static=False, per_channel=True),
                                              save_dir=export / "q")
for folder, src in ((fp32, export / "model.onnx"), (int8, export / "q" / "model_quantized.onnx")):
    shutil.copy(src, folder / src.name)
"""


def prepare_infinity(binary: str, hf_dir: Path, tmp: Path) -> dict[str, Path]:
    """Two copies of the HF folder for infinity: one with the fp32 ONNX file, one with the int8."""
    bin_dir = Path(binary).parent
    export = tmp / "optimum-export"
    subprocess.run([str(bin_dir / "optimum-cli"), "export", "onnx", "--model", str(hf_dir), "--task",
                    "feature-extraction", str(export)], check=True, capture_output=True)
    folders = {p: tmp / f"infinity-{p}" / hf_dir.name for p in ("fp32", "int8")}
    for folder in folders.values():
        shutil.copytree(hf_dir, folder, ignore=shutil.ignore_patterns("*.onnx", "onnx"))
    subprocess.run([str(bin_dir / "python"), "-c", _PREPARE, str(export), str(folders["fp32"]),
                    str(folders["int8"])], check=True, capture_output=True)
    return folders


def measure(peer: Peer, seconds: float, log: Path) -> dict[str, Any]:
    """Cold start, every cell, RSS, and the parity sentences' vectors."""
    figures: dict[str, Any] = {"cold_start_s": round(peer.start(log), 2)}
    try:
        for clients, per_request in CELLS:
            reqs = [request_bytes(PATH, {"model": peer.model, "input": _batch(i, per_request)})
                    for i in range(16)]
            run_load(peer.port, rotations(reqs, clients), min(2.0, seconds))  # warm: pools, caches
            rps, latencies = run_load(peer.port, rotations(reqs, clients), seconds)
            figures[f"{clients}x{per_request}"] = {"req_s": round(rps, 2), "sentences_s": round(rps * per_request, 1),
                                                   "p50_ms": round(1000 * float(np.median(latencies)), 2)}
        figures["rss_mb"] = round(peer.rss_mb(), 1)
        figures["vectors"] = peer.embed(PARITY)
    finally:
        peer.stop()
    return figures


def _batch(i: int, n: int) -> list[str]:
    return [SENTENCES[(i + k) % len(SENTENCES)] + f" #{i}.{k}" for k in range(n)]


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = row_cosines(a, b)
    return float(cos.mean()), float(cos.min())


def report(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The matrix: per cell and precision, each server's figure and distilserve / infinity."""
    lines = ["| cell | unit | fp32 ours | fp32 infinity | fp32 ratio | int8 ours | int8 infinity | int8 ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for clients, per_request in CELLS:
        cell, unit = f"{clients}x{per_request}", "req_s" if per_request == 1 else "sentences_s"
        row = [cell, unit.replace("_", "/")]
        for precision in ("fp32", "int8"):
            a, b = (results[precision][p][cell][unit] for p in ("distilserve", "infinity"))
            row += [f"{a:.1f}", f"{b:.1f}", f"**{a / b:.2f}×**"]
        lines.append("| " + " | ".join(row) + " |")
    for precision in ("fp32", "int8"):
        ours_, theirs = results[precision]["distilserve"], results[precision]["infinity"]
        lines.append(f"{precision}: cold start {ours_['cold_start_s']} s vs {theirs['cold_start_s']} s; "
                     f"RSS {ours_['rss_mb']} MB vs {theirs['rss_mb']} MB; vectors ours vs infinity "
                     "mean/min cosine %.5f / %.5f" % cosines(ours_["vectors"], theirs["vectors"]))
    for peer in ("distilserve", "infinity"):
        mean, low = cosines(results["int8"][peer]["vectors"], results["fp32"][peer]["vectors"])
        lines.append(f"{peer} int8 vs fp32: mean cosine {mean:.4f}, min {low:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="our exported model folder (onnx + int8)")
    parser.add_argument("--hf-dir", type=Path, required=True, help="the plain HF folder infinity loads")
    parser.add_argument("--infinity", required=True, help="infinity_emb command (from its own venv)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per cell (default 20)")
    parser.add_argument("--port", type=int, default=8941)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, dict[str, Any]]] = {"fp32": {}, "int8": {}}
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        (models / args.model_dir.name).symlink_to(args.model_dir.resolve())
        folders = prepare_infinity(args.infinity, args.hf_dir, Path(tmp))
        for precision in ("fp32", "int8"):
            for peer in (ours(args.model_dir, precision, args.port, models),
                         infinity(args.infinity, folders[precision], precision, args.port, args.model_dir.name)):
                results[precision][peer.name] = measure(peer, args.seconds, Path(tmp) / f"{peer.name}-{precision}.log")
                print(precision, peer.name, {k: v for k, v in results[precision][peer.name].items() if k != "vectors"},
                      file=sys.stderr, flush=True)
        print(report(results))
    if args.out:
        plain = {p: {name: {k: v for k, v in f.items() if k != "vectors"} for name, f in r.items()}
                 for p, r in results.items()}
        args.out.write_text(json.dumps(plain, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
