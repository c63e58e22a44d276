"""A real server for the reliability tests: `uvicorn app.main:app` in a subprocess on
127.0.0.1 (a free port), settings from the environment, logs to a file the test can read.
Real HTTP matters here: body streaming, connection handling and signals are the server's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def json_logs(self) -> list[dict]:
        """The structured (JSON) lines of the log; uvicorn's own lines are plain text."""
        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]


def launch(models_dir: Path, log_path: Path, env: dict[str, str] | None = None, grace_s: float = 10) -> Server:
    port = free_port()
    settings = {"DISTILSERVE_MODELS_DIR": str(models_dir), "DISTILSERVE_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--no-access-log", "--timeout-graceful-shutdown", str(grace_s)]
    out = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **settings}, stdout=out, stderr=subprocess.STDOUT)
    return Server(f"http://127.0.0.1:{port}", proc, log_path)


def wait_ready(server: Server, timeout_s: float = 180, status: int = 200) -> httpx.Response:
    """Poll /ready until it answers `status` (or the process dies, or time runs out)."""
    until = time.monotonic() + timeout_s
    last: httpx.Response | None = None
    while time.monotonic() < until:
        assert server.proc.poll() is None, f"server exited {server.proc.returncode}:\n{server.logs()[-3000:]}"
        with contextlib.suppress(httpx.TransportError):
            last = httpx.get(server.url + "/ready", timeout=5)
            if last.status_code == status and "loading" not in last.text and "starting" not in last.text:
                return last
        time.sleep(0.1)
    raise AssertionError(f"/ready never answered {status}: {last and last.text}\n{server.logs()[-3000:]}")


def stop(server: Server, timeout_s: float = 20) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)
    return server.proc.returncode


@contextlib.contextmanager
def running(
    models_dir: Path, log_path: Path, env: dict[str, str] | None = None, ready: bool = True
) -> Iterator[Server]:
    server = launch(models_dir, log_path, env)
    try:
        if ready:
            wait_ready(server)
        yield server
    finally:
        stop(server)
