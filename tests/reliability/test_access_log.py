"""The access log is written in batches (app/middleware.py `JsonHandler`): on a real server,
every request still gets exactly one JSON line, a line shows up soon after its request while
the server is idle, and none is lost or reordered behind other records when it shuts down."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.polling import wait_for
from tests.reliability.server import Server, launch, stop, wait_ready

ENV = {"DISTILSERVE_BACKENDS": '["onnx"]', "DISTILSERVE_MAX_QUEUE_WAIT_MS": "600000"}
REQUESTS = 150  # more than one batch of lines (64), fewer than enough to fill the last one


def _access_lines(server: Server, prefix: str) -> list[dict]:
    return [e for e in server.json_logs() if e["msg"] == "request" and str(e["request_id"]).startswith(prefix)]


def test_a_line_is_written_soon_after_its_request_while_idle(model_repo: Path, tmp_path: Path) -> None:
    server = launch(model_repo, tmp_path / "server.log", ENV)
    try:
        wait_ready(server)
        # the server is idle once the line of wait_ready's last (200) /ready is out
        wait_for(lambda: any(e["msg"] == "request" and e["path"] == "/ready" and e["status"] == 200
                             for e in server.json_logs()), what="the access line of the last /ready")
        headers = {"X-Request-ID": "idle-1"}
        r = httpx.post(server.url + "/embed", json={"inputs": "a quiet moment"}, headers=headers)
        assert r.status_code == 200
        answered = time.monotonic()
        (line,) = wait_for(lambda: _access_lines(server, "idle-1"), timeout=30, interval=0.01,
                           what="the access line of idle-1")
        waited = time.monotonic() - answered
        # timing is the subject: the flush interval is 0.1 s, while a line held for a full batch
        # (64) or for shutdown would never come here; generous for a busy machine
        assert waited < 5.0, f"the line took {waited:.2f} s (flush interval 0.1 s)"
        assert (line["method"], line["path"], line["status"]) == ("POST", "/embed", 200)
        assert line["model"] == "embed-student"
    finally:
        stop(server)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_every_line_is_written_by_shutdown_and_before_later_records(
    model_repo: Path, tmp_path: Path, signum: int
) -> None:
    """SIGTERM drains, and its records must follow the access lines; SIGINT stops without a
    record of its own that would write the held lines first."""
    server = launch(model_repo, tmp_path / "server.log", ENV)
    wait_ready(server)

    def post(i: int) -> int:
        headers = {"X-Request-ID": f"bulk-{i}"}
        body = {"inputs": f"sentence {i}"}
        return httpx.post(server.url + "/embed", json=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(post, range(REQUESTS))) == {200}
    server.proc.send_signal(signum)  # at once: the last lines are likely still held
    server.proc.wait(30)  # uvicorn re-raises the signal once it has shut down: no exit code 0
    entries = server.json_logs()
    ids = [e["request_id"] for e in entries if e["msg"] == "request" and str(e["request_id"]).startswith("bulk-")]
    assert sorted(ids) == sorted(f"bulk-{i}" for i in range(REQUESTS))  # each exactly once
    if signum == signal.SIGTERM:
        draining = next(i for i, e in enumerate(entries) if e["msg"] == "SIGTERM: draining")
        last_access = max(i for i, e in enumerate(entries) if e["request_id"] in set(ids))
        assert last_access < draining, "an access line was written after a record logged later"
