"""Overload in small (the full figures come from benchmarks/overload.py): a queue of one item,
200 requests at once. Every request gets an answer - 200 with the right result, or 429
`queue_full` with Retry-After, most of them turned away before their body is parsed - and
nothing hangs or is dropped."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.server import Server, running
from tests.reliability.test_bad_input import assert_clean_error
from tests.scrape import delta, parse

pytestmark = pytest.mark.asyncio(loop_scope="session")
BODY = {"inputs": "a good film with a funny story", "model": "sst2-teacher"}


@pytest.fixture(scope="module")
def narrow(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One classification model, so that its full queue means no classification model has room."""
    root = tmp_path_factory.mktemp("narrow")
    shutil.copytree(model_repo / "sst2-teacher", root / "models" / "sst2-teacher")
    env = {"DISTILSERVE_BACKENDS": '["onnx"]', "DISTILSERVE_QUEUE_DEPTH": "1", "DISTILSERVE_MAX_BATCH_SIZE": "1",
           "DISTILSERVE_RETRY_AFTER_S": "2"}
    with running(root / "models", root / "server.log", env) as server:
        yield server


async def test_past_the_queue_limit_every_request_gets_200_or_429(narrow: Server) -> None:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=narrow.url, timeout=30, limits=limits) as client:
        alone = (await client.post("/classify", json=BODY)).json()
        before = parse((await client.get("/metrics")).text)
        burst = asyncio.gather(*(client.post("/classify", json=BODY) for _ in range(200)))
        responses = await asyncio.wait_for(burst, 60)
        after = parse((await client.get("/metrics")).text)
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, set(statuses)
    for r in responses:
        if r.status_code == 200:
            assert r.json()["results"] == alone["results"]
        else:
            assert_clean_error(r, 429, "queue_full", None)
            assert r.headers["retry-after"] == "2"
    shed_early = [r for r in responses if "every classification model" in r.text]
    assert shed_early, "no request was turned away before its body was parsed"
    counted = delta(before, after, "distilserve_errors_total", task="classification", type="queue_full")
    assert counted == statuses.count(429)
