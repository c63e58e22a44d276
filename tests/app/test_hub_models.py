"""Hub ids as models (DISTILSERVE_HUB_MODELS), resolved by the real huggingface_hub code from an
offline hub cache (tests/hubcache.py), in a real server process: the hub library reads its cache
location and offline switch from the environment when it is imported."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.app import reference
from tests.hubcache import add_model, offline_env
from tests.reliability.server import Server, launch, running, stop, wait_ready

HUB_SST2 = "distilserve-tests/tiny-sst2"
HUB_EMBED = "distilserve-tests/tiny-embed"
PLAIN = ("manifest.json", "model.onnx", "model.int8.onnx")  # left out: a hub repo is a plain HF folder
TEXTS = ["a good film with a great story", "the plot was dull and boring"]


def local_and_hub(model_repo: Path, root: Path) -> Path:
    """The tiny sst2 and embed teachers twice: as hub repos in the cache and as local folders."""
    local = root / "models"
    for folder, repo_id in (("sst2-teacher", HUB_SST2), ("embed-teacher", HUB_EMBED)):
        add_model(root / "hub", repo_id, model_repo / folder, skip=PLAIN)
        shutil.copytree(model_repo / folder, local / folder)
    return local


@pytest.fixture(scope="module")
def hub_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hub")
    env = {**offline_env(root), "DISTILSERVE_BACKENDS": '["torch"]',
           "DISTILSERVE_HUB_MODELS": json.dumps([HUB_SST2, HUB_EMBED])}
    with running(local_and_hub(model_repo, root), root / "server.log", env) as server:
        yield server


def post(server: Server, path: str, body: dict) -> dict:
    response = httpx.post(server.url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_models_lists_hub_ids_on_torch(hub_server: Server) -> None:
    models = {m["name"]: m for m in httpx.get(hub_server.url + "/models").json()["models"]}
    assert set(models) == {"sst2-teacher", "embed-teacher", HUB_SST2, HUB_EMBED}
    hub, local = models[HUB_SST2], models["sst2-teacher"]
    assert (hub["task"], hub["backend"], hub["labels"]) == ("classification", "torch", ["negative", "positive"])
    assert (hub["layers"], hub["hidden_size"], hub["params"]) == (2, 32, local["params"])
    assert (models[HUB_EMBED]["task"], models[HUB_EMBED]["backend"]) == ("embedding", "torch")
    assert httpx.get(hub_server.url + "/ready").json()["models"] == 4


def test_hub_classifier_scores_equal_the_local_folder(hub_server: Server, model_repo: Path) -> None:
    hub = post(hub_server, "/classify", {"inputs": TEXTS, "top_k": None, "model": HUB_SST2})
    local = post(hub_server, "/classify", {"inputs": TEXTS, "top_k": None, "model": "sst2-teacher"})
    assert hub["model"] == HUB_SST2
    assert hub["items"] == local["items"]
    for text, got, want in zip(TEXTS, hub["results"], local["results"], strict=False):
        scores = {d["label"]: d["score"] for d in got}
        assert scores == pytest.approx({d["label"]: d["score"] for d in want}, abs=1e-6)
        logits = reference.logits(model_repo / "sst2-teacher", text, kind="torch")
        expected = np.exp(logits) / np.exp(logits).sum()
        assert scores == pytest.approx({"negative": expected[0], "positive": expected[1]}, abs=1e-5)


def test_hub_embedder_vectors_equal_the_local_folder(hub_server: Server, model_repo: Path) -> None:
    hub = post(hub_server, "/embed", {"inputs": TEXTS, "normalize": False, "model": HUB_EMBED})
    local = post(hub_server, "/embed", {"inputs": TEXTS, "normalize": False, "model": "embed-teacher"})
    np.testing.assert_allclose(hub["embeddings"], local["embeddings"], atol=1e-5)
    expected = reference.mean_embedding(model_repo / "embed-teacher", TEXTS[0], kind="torch")
    np.testing.assert_allclose(hub["embeddings"][0], expected, atol=1e-5)


def test_an_uncached_hub_id_is_named_on_ready_in_skip_mode(model_repo: Path, tmp_path: Path) -> None:
    """Offline and not in the cache: the local models serve, /ready says 503 naming the id."""
    local = local_and_hub(model_repo, tmp_path)
    env = {**offline_env(tmp_path), "DISTILSERVE_BACKENDS": '["torch"]', "DISTILSERVE_ON_MODEL_ERROR": "skip",
           "DISTILSERVE_HUB_MODELS": json.dumps([HUB_SST2, "distilserve-tests/not-cached"])}
    server = launch(local, tmp_path / "server.log", env)
    try:
        message = wait_ready(server, status=503).json()["error"]["message"]
        assert "models not loaded: distilserve-tests/not-cached (hub model 'distilserve-tests/not-cached'" in message
        assert post(server, "/classify", {"inputs": TEXTS[0], "model": HUB_SST2})["model"] == HUB_SST2
    finally:
        stop(server)
