"""Deadlines: a request still waiting when its deadline passes gets 504, and the batcher drops
its remaining work instead of computing it for nobody (seen in the model-call metrics).
The same server logs request bodies (`log_inputs`), the one setting that allows input text
in the logs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.server import Server, running
from tests.reliability.test_bad_input import assert_clean_error

ITEMS = 2000  # with one sequence per model call: 2000 calls, far more than fit in the deadline
DEADLINE_S = 0.05


@pytest.fixture(scope="module")
def slow_lane(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "DISTILSERVE_BACKENDS": '["onnx"]', "DISTILSERVE_MAX_BATCH_SIZE": "1", "DISTILSERVE_MAX_ITEMS": str(ITEMS),
        "DISTILSERVE_QUEUE_DEPTH": str(2 * ITEMS),
        "DISTILSERVE_REQUEST_DEADLINE_S": str(DEADLINE_S), "DISTILSERVE_LOG_INPUTS": "true",
    }
    with running(model_repo, tmp_path_factory.mktemp("deadline") / "server.log", env) as server:
        yield server


def model_calls(server: Server, model: str) -> float:
    """Sequences computed so far by `model` (sum of its batch-size histogram)."""
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("distilserve_batch_size_sum{") and f'model="{model}"' in line)


def test_expired_work_is_dropped_from_the_batch(slow_lane: Server) -> None:
    before = model_calls(slow_lane, "sst2-teacher")
    texts = [f"a good film number {i} with a very long and funny story" for i in range(ITEMS)]
    started = time.perf_counter()
    r = httpx.post(slow_lane.url + "/classify", json={"inputs": texts, "model": "sst2-teacher"}, timeout=30)
    waited = time.perf_counter() - started
    err = assert_clean_error(r, 504, "deadline_exceeded", None)
    assert "deadline" in err["message"] and waited < 2, waited  # answered at the deadline, not after the work
    time.sleep(0.5)  # let the worker pass over what is left of the queue
    computed = model_calls(slow_lane, "sst2-teacher") - before
    assert 0 < computed < ITEMS / 2, f"{computed} of {ITEMS} sequences computed after the deadline passed"
    depth = httpx.get(slow_lane.url + "/metrics").text
    assert 'distilserve_queue_depth{backend="onnx",model="sst2-teacher",role="teacher"} 0.0' in depth
    ok = httpx.post(slow_lane.url + "/classify", json={"inputs": "good", "model": "sst2-teacher"})
    assert ok.status_code == 200, ok.text  # the lane is free again


def test_log_inputs_puts_the_body_in_the_log(slow_lane: Server) -> None:
    marker = "the quick brown fox jumps over the lazy dog"
    r = httpx.post(slow_lane.url + "/embed", json={"inputs": marker}, headers={"X-Request-ID": "with-body-1"})
    assert r.status_code == 200
    for _ in range(50):
        entry = next((e for e in slow_lane.json_logs() if e.get("request_id") == "with-body-1"), None)
        if entry:
            break
        time.sleep(0.05)
    assert entry is not None
    assert marker in entry["body"]
    assert entry["status"] == 200
