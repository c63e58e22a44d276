"""`python -m benchmarks.report` against a real running service (uvicorn in a subprocess, on the
session's tiny models, ONNX fp32 and int8): the command a user runs, checked by its outputs."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LEVELS = (1, 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service_url(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn serving the tiny models on 127.0.0.1, stopped after the module's tests."""
    port = free_port()
    env = {**os.environ, "DISTILSERVE_MODELS_DIR": str(model_repo), "DISTILSERVE_THREADS": "1",
           "DISTILSERVE_BACKENDS": '["onnx","onnx-int8"]',
           "DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000"}  # closed-loop clients: throughput, not admission
    log = (tmp_path_factory.mktemp("api") / "api.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited during start-up"
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/ready never answered 200")


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.report", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def report_dir(service_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    done = run_report("--url", service_url, "--out", str(out), "--concurrency", ",".join(map(str, LEVELS)),
                      "--requests", "24", "--max-seconds", "6")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def table_rows(report: str) -> list[list[str]]:
    lines = [ln for ln in report.splitlines() if ln.startswith("| ") and not ln.startswith("| model ")]
    return [[cell.strip() for cell in ln.strip("|").split("|")] for ln in lines]


def test_report_table_has_every_model_backend_and_concurrency(report_dir: Path) -> None:
    rows = table_rows((report_dir / "report.md").read_text())
    keys = {(r[0], r[1], r[2], r[3], int(r[4])) for r in rows}
    expected = {(f"{prefix}-{role}", role, backend, task, level)
                for prefix, task in (("sst2", "classification"), ("squad", "qa"), ("embed", "embedding"))
                for role in ("teacher", "student") for backend in ("onnx", "onnx-int8") for level in LEVELS}
    assert keys == expected
    assert len(rows) == len(expected)
    for r in rows:
        p50, p95, p99, throughput, errors = (float(x) for x in r[5:10])
        assert 0 < p50 <= p95 <= p99 < 10_000, r
        assert throughput > 0, r
        assert errors == 0, r
        assert r[10] == "tiny-dev accuracy [torch] 0.500", r  # manifest figure, measured on torch
        assert (r[11] == "—") == (r[1] == "teacher"), r


def test_student_speedup_is_its_throughput_over_the_teachers(report_dir: Path) -> None:
    rows = json.loads((report_dir / "results.json").read_text())["rows"]
    by_key = {(r["model"], r["backend"], r["concurrency"]): r for r in rows}
    for r in (r for r in rows if r["role"] == "student"):
        teacher = by_key[(r["model"].replace("student", "teacher"), r["backend"], r["concurrency"])]
        assert r["speedup"] == pytest.approx(r["throughput"] / teacher["throughput"])
        assert r["ok"] == 24


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_plots_are_written_and_linked(report_dir: Path) -> None:
    report = (report_dir / "report.md").read_text()
    for name in ("latency.png", "throughput.png", "quality_vs_speed.png"):
        width, height = png_size(report_dir / name)
        assert width >= 1000, (name, width, height)
        assert height >= 300, (name, width, height)
        assert f"]({name})" in report


def test_report_refuses_a_non_loopback_url(tmp_path: Path) -> None:
    done = run_report("--url", "http://192.0.2.1:8000", "--out", str(tmp_path))
    assert done.returncode != 0
    assert "127.0.0.1" in done.stderr
    assert not (tmp_path / "report.md").exists()
