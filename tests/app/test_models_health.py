"""GET /models, /health, /ready (incl. 503 with a reason), /metrics, /docs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.conftest import serve
from tests.polling import wait_for_async
from tests.scrape import delta, parse

pytestmark = pytest.mark.asyncio(loop_scope="session")

METRICS = [
    "distilserve_request_duration_seconds", "distilserve_stage_duration_seconds", "distilserve_batch_size",
    "distilserve_batch_tokens", "distilserve_queue_depth", "distilserve_requests_total",
    "distilserve_input_tokens_total", "distilserve_truncated_inputs_total", "distilserve_errors_total",
    "distilserve_model_info",
]


async def test_models_lists_every_backend_with_manifest_figures(client) -> None:
    models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
    assert len(models) == 18
    teacher = models["sst2-teacher"]
    assert teacher["task"] == "classification"
    assert teacher["role"] == "teacher"
    assert teacher["backend"] == "onnx"
    assert teacher["layers"] == 2
    assert teacher["hidden_size"] == 32
    assert teacher["max_length"] == 64
    assert teacher["labels"] == ["negative", "positive"]
    assert teacher["quality"]["tiny-dev"]["accuracy"] == 0.5
    assert teacher["params"] > 10_000
    assert teacher["student"] == "sst2-student"
    assert models["squad-student@onnx-int8"]["backend"] == "onnx-int8"
    assert models["embed-student@torch"]["layers"] == 1
    # model workers unset: torch runs one call at a time; ONNX Runtime one or two, as measured at warm-up
    assert all(m["model_workers"] == 1 for name, m in models.items() if name.endswith("@torch"))
    assert {m["model_workers"] for m in models.values()} <= {1, 2}
    # with model workers unset, ONNX Runtime measures its choice once serving (no memory file here),
    # torch runs one call at a time
    assert {m["model_workers_choice"] for n, m in models.items() if "@torch" not in n} <= {"measuring", "measured"}
    assert {m["model_workers_choice"] for n, m in models.items() if "@torch" in n} == {"fixed"}
    # cold start per model, by phase: every phase ran and took time, but the choice, which is not
    # measured before serving
    phases = {"load", "warm_up", "model_workers", "calibrate"}
    assert all(set(m["startup_s"]) == phases and min(m["startup_s"].values()) >= 0 for m in models.values())
    assert all(m["startup_s"]["load"] > 0 and m["startup_s"]["warm_up"] > 0 for m in models.values())
    assert all(m["startup_s"]["model_workers"] < m["startup_s"]["load"] for m in models.values())


async def test_model_workers_setting_is_what_each_model_runs(model_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "sst2-student").symlink_to(model_repo / "sst2-student")
    settings = Settings(models_dir=tmp_path, backends=["onnx", "torch"], model_workers=3)
    async with serve(settings) as c:
        models = (await c.get("/models")).json()["models"]
        assert [m["model_workers"] for m in models] == [3, 3]
        assert [m["model_workers_choice"] for m in models] == ["set", "set"]
        body = {"inputs": ["good film", "dull film", "a film"], "model": "sst2-student@torch"}
        r = await c.post("/classify", json=body)
        assert r.status_code == 200
        assert len(r.json()["results"]) == 3


async def test_health_ready_docs(client) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json()["models"] == 18
    spec = (await client.get("/openapi.json")).json()
    for path in ("/classify", "/qa", "/embed", "/v1/embeddings"):
        request = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert spec["components"]["schemas"][request.split("/")[-1]]["examples"], path
    assert (await client.get("/docs")).status_code == 200


async def test_metrics_exposes_the_contract(client) -> None:
    before = parse((await client.get("/metrics")).text)
    await client.post("/classify", json={"inputs": "good", "model": "nope"})
    await client.post("/classify", json={"inputs": "good film"})
    text = (await client.get("/metrics")).text
    for name in METRICS:
        assert f"# TYPE {name}" in text, name
    after = parse(text)
    assert delta(before, after, "distilserve_errors_total", task="classification", type="model_not_found") == 1
    student = {"task": "classification", "model": "sst2-student", "role": "student", "backend": "onnx"}
    assert delta(before, after, "distilserve_requests_total", **student, status="200") == 1
    assert delta(before, after, "distilserve_stage_duration_seconds_count", **student, stage="inference") == 1
    assert delta(before, after, "distilserve_input_tokens_total", **student) == 4  # [CLS] good film [SEP]


async def test_not_ready_says_why(model_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(model_repo / "sst2-student", tmp_path / "broken")
    (tmp_path / "broken" / "manifest.json").write_text(json.dumps({"name": "broken", "task": "translation"}))
    async with serve(Settings(models_dir=tmp_path), wait_ready=False) as c:

        async def failed() -> httpx.Response | None:
            r = await c.get("/ready")
            return r if "failed" in r.json()["error"]["message"] else None

        r = await wait_for_async(failed, what="/ready to report the failed model")
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "not_ready"
        assert "translation" in r.json()["error"]["message"]
        assert (await c.post("/classify", json={"inputs": "x"})).status_code == 503
        assert (await c.get("/health")).status_code == 200


async def test_every_served_model_has_its_series_from_zero(model_repo: Path, tmp_path: Path) -> None:
    """Prometheus only sees an increase between two scrapes: a series must exist, at zero,
    before the model's first request, or a short burst never shows in rate() or quantiles."""
    shutil.copytree(model_repo / "sst2-student", tmp_path / "fresh-student")
    async with serve(Settings(models_dir=tmp_path, backends=["onnx"])) as c:
        text = (await c.get("/metrics")).text
    labels = 'backend="onnx",model="fresh-student",role="student"'
    assert f'distilserve_requests_total{{{labels},status="200",task="classification"}} 0.0' in text
    assert f'distilserve_request_duration_seconds_count{{{labels},status="200",task="classification"}} 0.0' in text
    assert f'distilserve_stage_duration_seconds_count{{{labels},stage="queue",task="classification"}}' in text
