"""Admission by estimated wait, through the real HTTP stack (uvicorn in a subprocess) with the
service's default settings: an item cap of 1024 that these requests never reach, and the
automatic wait budget. A burst far past what the model computes in that budget is turned away
with 429 `queue_full` and a Retry-After taken from the estimate, while every admitted request
still gets exactly the answer it gets alone."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.server import Server, running
from tests.reliability.test_bad_input import assert_clean_error

pytestmark = pytest.mark.asyncio(loop_scope="session")
ITEMS, REQUESTS = 16, 60  # 960 items at once: below the default item cap of 1024
TEXTS = [f"a good film number {i} with a long and funny story " * 6 for i in range(ITEMS)]
BODY = {"inputs": TEXTS, "model": "sst2-teacher", "top_k": None}


@pytest.fixture(scope="module")
def defaults(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("admission")
    shutil.copytree(model_repo / "sst2-teacher", root / "models" / "sst2-teacher")
    env = {"DISTILSERVE_BACKENDS": '["onnx"]', "DISTILSERVE_MAX_QUEUE_WAIT_MS": "0"}
    with running(root / "models", root / "server.log", env) as server:
        yield server


async def test_burst_past_the_wait_budget_gets_429_by_estimate(defaults: Server) -> None:
    limits = httpx.Limits(max_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=defaults.url, timeout=60, limits=limits) as client:
        alone = (await client.post("/classify", json=BODY)).json()
        burst = (client.post("/classify", json=BODY) for _ in range(REQUESTS))
        responses = await asyncio.wait_for(asyncio.gather(*burst), 120)
        after = await client.post("/classify", json=BODY)
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    for r in responses:
        if r.status_code == 200:
            _assert_same(r.json()["results"], alone["results"])
            continue
        err = assert_clean_error(r, 429, "queue_full", None)
        assert "estimated wait" in err["message"], err  # never the item cap: 960 < 1024
        assert int(r.headers["retry-after"]) >= 1
    assert after.status_code == 200
    _assert_same(after.json()["results"], alone["results"])


def _assert_same(results: list, alone: list) -> None:
    """Labels in the same order, scores equal up to batched-vs-solo float reassociation."""
    assert [[x["label"] for x in r] for r in results] == [[x["label"] for x in r] for r in alone]
    assert [x["score"] for r in results for x in r] == pytest.approx([x["score"] for r in alone for x in r], abs=1e-5)
