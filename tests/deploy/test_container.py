"""Questions to the real `runtime` image, started by `.ci/containers_check.sh` (podman) with a
models folder mounted read-only and its port published: the container must answer every task
exactly as the same code does in-process on the same folder (so the image holds the service, its
shared core and working ONNX Runtime, and reads the mounted models as its unprivileged user).

The script sets DISTILSERVE_CONTAINER_URL (the published port) and DISTILSERVE_CONTAINER_MODELS
(the folder it mounted); without them there is no container to ask, and these tests are skipped.
The same tests run against the compose stack's api, whose models the `models` image built."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.conftest import serve

URL = os.environ.get("DISTILSERVE_CONTAINER_URL", "")
MODELS = os.environ.get("DISTILSERVE_CONTAINER_MODELS", "")
pytestmark = pytest.mark.skipif(not URL, reason="needs the runtime image running: run .ci/containers_check.sh")

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/classify", {"inputs": ["a good film", "the worst plot , very dull"], "model": "student"}),
    ("/classify", {"inputs": ["a good film"], "model": "teacher"}),
    ("/embed", {"inputs": ["the quick brown fox", "a lazy dog"], "model": "student"}),
    ("/v1/embeddings", {"input": ["hello world"], "model": "teacher"}),
    ("/qa", {"question": "where do penguins live ?", "context": "penguins live in the southern hemisphere .",
             "model": "student"}),
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def in_process() -> AsyncIterator[httpx.AsyncClient]:
    """The service in this process on the folder the container mounted (ONNX, as the image)."""
    from app.settings import Settings

    if not MODELS:
        pytest.skip("DISTILSERVE_CONTAINER_MODELS (the mounted folder) not set")
    async with serve(Settings(models_dir=Path(MODELS), backends=["onnx"], threads=1)) as client:
        yield client


def close(a: Any, b: Any) -> bool:
    """Equal JSON, floats within 1e-4 (the same ONNX graph, possibly another thread count)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a if k not in VOLATILE)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


VOLATILE = {"latency_ms", "id", "created", "timings", "usage_ms"}  # per-request, not the answer


def test_ready_with_every_model() -> None:
    body = httpx.get(f"{URL}/ready", timeout=10).json()
    assert body["status"] == "ready"
    models = {(m["task"], m["role"]) for m in httpx.get(f"{URL}/models", timeout=10).json()["models"]}
    assert {(t, r) for t in ("classification", "qa", "embedding") for r in ("teacher", "student")} <= models


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=[f"{p}:{b['model']}" for p, b in REQUESTS])
async def test_answers_equal_the_in_process_service(in_process: httpx.AsyncClient, path: str,
                                                    body: dict[str, Any]) -> None:
    container = httpx.post(f"{URL}{path}", json=body, timeout=30)
    local = await in_process.post(path, json=body)
    assert container.status_code == local.status_code == 200, container.text
    assert close(container.json(), local.json()), (container.json(), local.json())


def test_bad_input_is_a_4xx_naming_the_field() -> None:
    response = httpx.post(f"{URL}/classify", json={"texts": ["x"]}, timeout=10)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "inputs"


def test_metrics_carry_the_roles() -> None:
    text = httpx.get(f"{URL}/metrics", timeout=10).text
    assert 'role="student"' in text
    assert 'role="teacher"' in text
