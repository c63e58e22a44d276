"""What the HTTP benchmarks share: a uvicorn server in its own process on 127.0.0.1 (started,
waited on until GET /ready answers 200, stopped), the request payloads, and a raw asyncio
HTTP/1.1 keep-alive client with its closed-loop load (each client sends its next request when
the last one answered).

The client is raw asyncio rather than httpx or aiohttp so that it costs little of the cores it
shares with the server. `bench_serving`, `bench_shadow` and `http_floor` drive the server with
`run_load`; `overload` uses the server and payloads, and its own pooled client (an open loop
needs one connection per request in flight, and a 429 there is an outcome, not an error).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Self

from inference.backends import KINDS

ROOT = Path(__file__).resolve().parents[1]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river.",
    "A gripping story with wonderful actors and a clever plot.",
    "I did not enjoy this film, it was far too long and dull.",
    "The weather in the city was cold and rainy all week long.",
    "She played the guitar while the children sang along happily.",
    "Our team shipped the new release two days ahead of schedule.",
    "He bought fresh bread and cheese at the market this morning.",
    "The museum opens at nine and closes late on Friday evenings.",
]
ENDPOINT = {"classification": "/classify", "embedding": "/embed", "qa": "/qa"}
QA_CONTEXT = "The museum opens at nine in the morning and closes late on Friday evenings in summer."


# ---- payloads -----------------------------------------------------------------------------
def body(task: str, text: str, model: str) -> dict[str, Any]:
    """The JSON body of one request to `model` (a QA question is asked of `QA_CONTEXT`)."""
    if task == "qa":
        return {"question": text, "context": QA_CONTEXT, "model": model}
    return {"inputs": text, "model": model}


def request_bytes(path: str, payload: dict[str, Any]) -> bytes:
    """A whole keep-alive POST request, encoded once and sent as is."""
    data = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


# ---- server -------------------------------------------------------------------------------
def uvicorn_command(target: str, port: int) -> list[str]:
    """One uvicorn worker on 127.0.0.1 with uvloop and httptools, no access log."""
    return [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """True once GET /ready answers 200; False if the process exits or `timeout_s` passes."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            return False
    return False


class UvicornServer:
    """`uvicorn <target>` on 127.0.0.1:`port` in its own process: ready on entering the `with`
    block (or a RuntimeError, with the tail of its log when it has one), stopped on leaving it."""

    def __init__(self, target: str, port: int, *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 log: Path | None = None, ready_timeout_s: float = 120.0) -> None:
        self.target, self.port, self.env, self.cwd = target, port, env, cwd
        self.log_path, self.ready_timeout_s = log, ready_timeout_s
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.target} is not running")
        return self.proc.pid

    def __enter__(self) -> Self:
        if self.log_path is not None:
            self.log = open(self.log_path, "wb")  # closed in __exit__
        self.proc = subprocess.Popen(uvicorn_command(self.target, self.port), cwd=self.cwd, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT if self.log else None)
        if wait_ready(self.url, self.proc, self.ready_timeout_s):
            return self
        if self.log is not None and self.log_path is not None:
            self.log.flush()
            sys.stderr.write(self.log_path.read_text()[-3000:])
        self.__exit__()
        raise RuntimeError(f"{self.target} did not become ready on port {self.port} in "
                           f"{self.ready_timeout_s:.0f} s (or exited)")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, 20)
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None


class Server(UvicornServer):
    """`uvicorn app.main:app` on 127.0.0.1 serving only the benchmarked folder (and the folders
    in `also`, e.g. its teacher), with `kind` as its one backend; `env` adds or overrides settings."""

    def __init__(self, model_dir: Path, kind: str, port: int, env: dict[str, str],
                 also: Sequence[Path] = ()) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-models-")
        for folder in (model_dir, *also):
            (Path(self.tmp.name) / folder.name).symlink_to(folder.resolve())
        self.name = model_dir.name
        settings = {**os.environ, "DISTILSERVE_MODELS_DIR": self.tmp.name,
                    "DISTILSERVE_BACKENDS": json.dumps([kind]), **env}
        super().__init__("app.main:app", port, env=settings, cwd=ROOT,
                         log=Path(self.tmp.name) / "server.log")  # the per-request JSON log

    def __exit__(self, *exc: object) -> None:
        super().__exit__()
        self.tmp.cleanup()


def served_models(url: str) -> list[dict[str, Any]]:
    """GET /models: one entry per served model (name, task, model_workers...)."""
    with urllib.request.urlopen(url + "/models", timeout=10) as r:
        models: list[dict[str, Any]] = json.loads(r.read())["models"]
    return models


def metrics_text(url: str) -> str:
    """GET /metrics: the Prometheus text."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    """Ask a server process to stop with `sig`; kill it if it has not exited in `timeout_s`."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mib(pid: int) -> float:
    """Resident memory of one process (/proc/<pid>/status VmRSS), MiB; 0 when not listed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (/proc/<pid>/stat fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- raw keep-alive HTTP client -------------------------------------------------------------
def content_length(head: bytes) -> int:
    """The Content-Length of a response head."""
    return int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> None:
    """Send one request and read its whole response; anything but a 200 is a RuntimeError."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    await reader.readexactly(content_length(head))


async def _client(port: int, requests: list[bytes], until: float | None, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        for raw in requests if until is None else itertools.cycle(requests):
            if until is not None and time.perf_counter() >= until:
                break
            t = time.perf_counter()
            await roundtrip(reader, writer, raw)
            latencies.append(time.perf_counter() - t)
            done += 1
    finally:
        writer.close()
    return done


async def load(port: int, per_client: list[list[bytes]], seconds: float | None) -> tuple[float, list[float]]:
    """Run clients (timed, or until each list is sent); returns (requests/s, latencies)."""
    latencies: list[float] = []
    start = time.perf_counter()
    until = start + seconds if seconds else None
    counts = await asyncio.gather(*(_client(port, reqs, until, latencies) for reqs in per_client))
    return sum(counts) / (time.perf_counter() - start), latencies


def run_load(port: int, per_client: list[list[bytes]], seconds: float | None) -> tuple[float, list[float]]:
    """`load` on uvloop when it is installed (as the server runs), else on asyncio's loop."""
    try:
        import uvloop

        return uvloop.run(load(port, per_client, seconds))
    except ImportError:
        return asyncio.run(load(port, per_client, seconds))


def rotations(reqs: list[bytes], clients: int) -> list[list[bytes]]:
    """Per client, the same requests starting at a different one."""
    return [reqs[i % len(reqs):] + reqs[: i % len(reqs)] for i in range(clients)]


def add_pair_options(parser: Any) -> None:
    """The options that pick a teacher/student pair and how it is served (bench_shadow, bench_ray)."""
    parser.add_argument("--task", default="classification", choices=sorted(ENDPOINT))
    parser.add_argument("--models-dir", default=str(ROOT / "models"), help="model repository to take the pair from")
    parser.add_argument("--tiny", action="store_true", help="build the test suite's tiny models and use those")
    parser.add_argument("--teacher", help="teacher folder (with --student: overrides --models-dir)")
    parser.add_argument("--student", help="student folder")
    parser.add_argument("--backend", default="onnx", choices=KINDS)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per model (default: runtime's)")
