"""SIGTERM under load, on a real uvicorn process: requests in flight complete, new ones get
503 `shutting_down`, /ready turns 503, and the process exits within the grace period - also
when a request outlives it.

A request is kept in flight for a known time by streaming its body slowly (the server has
admitted it once its headers arrive), so the test does not depend on how fast a model is."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.reliability.server import Server, launch, wait_ready
from tests.reliability.test_bad_input import assert_clean_error

JSON = {"content-type": "application/json"}


def start(model_repo: Path, tmp_path: Path, grace_s: float) -> Server:
    env = {"DISTILSERVE_BACKENDS": '["onnx"]', "DISTILSERVE_SHUTDOWN_GRACE_S": str(grace_s),
           "DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000"}  # 4 clients back to back: no 429s before SIGTERM
    server = launch(model_repo, tmp_path / "server.log", env, grace_s=30)  # uvicorn's own limit: far off
    wait_ready(server)
    return server


def slow_request(url: str, hold_s: float, result: dict) -> threading.Thread:
    """POST /classify whose body arrives in two parts `hold_s` apart."""

    def body() -> Iterator[bytes]:
        yield b'{"inputs": "a good'
        time.sleep(hold_s)
        yield b' film"}'

    def run() -> None:
        try:
            r = httpx.post(url + "/classify", content=body(), headers=JSON, timeout=30)
            result.update(status=r.status_code, json=r.json())
        except httpx.TransportError as exc:
            result.update(error=type(exc).__name__)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def load(url: str, stop: threading.Event, records: list) -> threading.Thread:
    """A keep-alive client sending requests back to back: (start time, status or error name)."""

    def run() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    records.append((started, client.post("/classify", json={"inputs": "funny film"}).status_code))
                except httpx.TransportError as exc:
                    records.append((started, type(exc).__name__))
                    time.sleep(0.02)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sigterm_drains_in_flight_and_turns_new_requests_away(model_repo: Path, tmp_path: Path) -> None:
    server = start(model_repo, tmp_path, grace_s=8)
    stop, records, slow = threading.Event(), [], {}
    loaders = [load(server.url, stop, records) for _ in range(4)]
    slow_thread = slow_request(server.url, 1.5, slow)
    time.sleep(0.5)
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert_clean_error(httpx.get(server.url + "/ready"), 503, "shutting_down", None)
    turned_away = httpx.post(server.url + "/classify", json={"inputs": "good"})
    assert_clean_error(turned_away, 503, "shutting_down", None)
    assert turned_away.headers["connection"] == "close"
    assert httpx.get(server.url + "/health").status_code == 200  # alive while draining
    slow_thread.join(15)
    exit_code = server.proc.wait(10)
    exited_after = time.monotonic() - sigterm_at
    stop.set()
    for thread in loaders:
        thread.join(15)
    assert slow.get("status") == 200 and slow["json"]["results"][0][0]["label"], slow  # in flight: completed
    assert 1.0 < exited_after < 5.0, exited_after  # when the last in-flight request ended, not at the grace
    assert exit_code in (0, -signal.SIGTERM), exit_code
    _check_load(records, sigterm_at)
    drain = _drain_log(server)  # the slow request, and maybe a load request, were in flight
    assert drain["SIGTERM: draining"] >= 1 and drain["drained; stopping"] == 0, drain


def _check_load(records: list, sigterm_at: float) -> None:
    """Before SIGTERM: answered. After: 200 (admitted just before), 503, or - once the server
    stopped listening - a refused connection. Never a 5xx other than 503, never a hang."""
    before = [outcome for started, outcome in records if started < sigterm_at - 0.05]
    after = [outcome for started, outcome in records if started > sigterm_at + 0.05]
    assert before and set(before) == {200}, set(before)
    assert 503 in after, set(after)
    assert set(after) <= {200, 503, "ConnectError", "RemoteProtocolError", "ReadError"}, set(after)


def test_sigterm_exits_within_the_grace_period_when_a_request_outlives_it(model_repo: Path, tmp_path: Path) -> None:
    server = start(model_repo, tmp_path, grace_s=1.0)
    slow: dict = {}
    slow_thread = slow_request(server.url, 3.5, slow)
    time.sleep(0.5)
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(10)
    exited_after = time.monotonic() - sigterm_at
    assert 0.9 < exited_after < 1.0 + 2.0, exited_after  # the grace, plus uvicorn's tick and process exit
    slow_thread.join(15)
    assert "status" not in slow or slow["status"] != 200, slow  # cut off, not answered after exit
    assert _drain_log(server) == {"SIGTERM: draining": 1, "drained; stopping": 1}


def _drain_log(server: Server) -> dict[str, int]:
    """In-flight counts the drain logged when it began and when it handed over to uvicorn."""
    lines = [e for e in server.json_logs() if e["msg"] in ("SIGTERM: draining", "drained; stopping")]
    assert all(e["request_id"] is None for e in lines), lines  # not some request's id
    return {e["msg"]: e["in_flight"] for e in lines}
