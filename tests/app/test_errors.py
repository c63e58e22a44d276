"""The error table through HTTP: every status with the one shape, never internals."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.conftest import serve

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _error(r: httpx.Response, status: int, type_: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param"}
    assert body["error"]["type"] == type_
    return body["error"]


@pytest.fixture(scope="module")
def one_model(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only sst2-student, plus a misconfigured copy whose manifest claims a window (400 tokens)
    longer than its position table (128): long inputs then fail inside the runtime."""
    root = tmp_path_factory.mktemp("one")
    shutil.copytree(model_repo / "sst2-student", root / "sst2-student")
    shutil.copytree(model_repo / "sst2-student", root / "misconfigured")
    manifest = json.loads((root / "misconfigured" / "manifest.json").read_text())
    (root / "misconfigured" / "manifest.json").write_text(json.dumps({**manifest, "max_length": 400}))
    return root


@pytest.fixture(scope="module")
async def small(one_model: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        models_dir=one_model, max_items=3, max_chars=2000, max_body_bytes=9000, queue_depth=3, max_top_k=5
    )
    async with serve(settings) as c:
        yield c


async def test_unknown_model_404_and_wrong_task_400(client) -> None:
    err = _error(await client.post("/classify", json={"inputs": "x", "model": "gpt"}), 404, "model_not_found")
    assert err["param"] == "model"
    assert "sst2-student" in err["message"]
    err = _error(await client.post("/embed", json={"inputs": "x", "model": "sst2-teacher"}), 400, "wrong_task")
    assert "classification" in err["message"]


async def test_validation_names_the_field_and_limit(client) -> None:
    err = _error(await client.post("/classify", json={"inputs": ["ok", 5]}), 422, "invalid_input")
    assert err["param"] == "inputs.1"
    err = _error(await client.post("/classify", json={"inputs": "ok", "top_k": 0}), 422, "invalid_input")
    assert err["param"] == "top_k"
    assert "ge=1" in err["message"]
    err = _error(await client.post("/qa", json={"inputs": [{"question": "q"}]}), 422, "invalid_input")
    assert err["param"] == "inputs.0.context"
    err = _error(await client.post("/embed", json={"inputs": "x", "normalise": True}), 422, "invalid_input")
    assert err["param"] == "normalise"
    err = _error(await client.post("/classify", json={"inputs": [["a", "b", "c"]]}), 422, "invalid_input")
    assert err["param"] == "inputs"
    assert "pair" in err["message"]
    headers = {"content-type": "application/json"}
    _error(await client.post("/classify", content=b"{not json", headers=headers), 422, "invalid_input")


async def test_a_body_is_json_only_when_declared_json(client) -> None:
    """The inference routes parse their bodies themselves (app.http.deps.DirectRoute) and keep
    FastAPI's rules: a form post from another site's page is refused, an empty body is missing,
    and broken JSON says where it broke."""
    sentence = b'{"inputs": "a fine film"}'
    for route in ("/classify", "/embed", "/v1/embeddings", "/qa", "/compare"):
        err = _error(await client.post(route, content=sentence, headers={"content-type": "text/plain"}), 422,
                     "invalid_input")
        assert err["param"] == "body"
        assert err["message"] == "body: Content-Type must be application/json (got text/plain)"
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert "x-www-form-urlencoded" in _error(await client.post("/classify", content=sentence, headers=form), 422,
                                             "invalid_input")["message"]
    err = _error(await client.post("/classify", content=b"", headers={"content-type": "application/json"}), 422,
                 "invalid_input")
    assert (err["param"], err["message"]) == ("body", "body: Field required")
    err = _error(await client.post("/classify", content=b'{"inputs": [', headers={"content-type": "application/json"}),
                 422, "invalid_input")
    assert err["param"] == "body"
    assert "line 1 column 12" in err["message"]
    ok = await client.post("/classify", content=sentence, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200
    assert ok.json()["results"][0][0]["label"] in ("negative", "positive")
    schema = (await client.get("/openapi.json")).json()["paths"]["/classify"]["post"]["requestBody"]
    assert schema["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ClassifyRequest"}


async def test_limits_from_settings(small) -> None:
    err = _error(await small.post("/classify", json={"inputs": ["a"] * 4}), 413, "payload_too_large")
    assert "limit of 3" in err["message"]
    assert err["param"] == "inputs"
    err = _error(await small.post("/classify", json={"inputs": ["a", "b" * 2001]}), 413, "payload_too_large")
    assert err["param"] == "inputs.1"
    assert "2000" in err["message"]
    _error(await small.post("/classify", json={"inputs": "a " * 5000}), 413, "payload_too_large")
    err = _error(await small.post("/classify", json={"inputs": "a", "top_k": 6}), 422, "invalid_input")
    assert err["param"] == "top_k"
    assert "at most 5" in err["message"]


async def test_queue_full_is_429_with_retry_after(one_model: Path) -> None:
    """queue_depth=3 and a request's items are queued all-or-none: 3 fit, 4 never can."""
    async with serve(Settings(models_dir=one_model, queue_depth=3)) as c:
        assert (await c.post("/classify", json={"inputs": ["a", "b", "c"]})).status_code == 200
        r = await c.post("/classify", json={"inputs": ["a"] * 4})
        err = _error(r, 429, "queue_full")
        assert r.headers["retry-after"] == "1"
        assert "of 3" in err["message"]


async def test_internal_errors_hide_internals(small, one_model: Path) -> None:
    r = await small.post("/classify", json={"inputs": "good " * 300, "model": "misconfigured"})
    err = _error(r, 500, "internal_error")
    assert err["message"] == "internal server error"
    assert "/" not in r.text
    assert "Traceback" not in r.text


async def test_deadline_is_504(one_model: Path) -> None:
    async with serve(Settings(models_dir=one_model, request_deadline_s=1e-6)) as c:
        _error(await c.post("/classify", json={"inputs": "good"}), 504, "deadline_exceeded")


async def _burst(settings: Settings, requests: int = 24) -> list[httpx.Response]:
    texts = [f"a good film number {i} with a long and funny story " * 4 for i in range(8)]
    async with serve(settings) as c:
        return await asyncio.gather(*(c.post("/classify", json={"inputs": texts}) for _ in range(requests)))


async def test_wait_budget_rejects_before_the_item_cap(one_model: Path) -> None:
    """The same burst (192 items, far below the cap of 1024): a tiny wait budget turns most of it
    away by estimated wait, a wide one admits it all. Admission reads the measured service time
    (seeded at warm-up), not the item count."""
    tight = await _burst(Settings(models_dir=one_model, max_queue_wait_ms=0.001))
    wide = await _burst(Settings(models_dir=one_model, max_queue_wait_ms=600_000))
    assert {r.status_code for r in wide} == {200}
    shed = [r for r in tight if r.status_code == 429]
    assert len(shed) >= len(tight) // 2, [r.status_code for r in tight]
    assert 200 in {r.status_code for r in tight}, [r.status_code for r in tight]
    for r in shed:
        err = _error(r, 429, "queue_full")
        assert "admission budget of 0 ms" in err["message"] or "estimated wait" in err["message"], err
        assert int(r.headers["retry-after"]) >= 1
