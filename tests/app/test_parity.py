"""Torch and ONNX serve the same numbers for the same model (fp32: within 1e-5 absolute on
probabilities and embeddings; int8: same labels/answers, embeddings at cosine > 0.99)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXTS = ["a good film", "the worst movie of the year, really boring", "funny story"]
FP32_TOL = 1e-5


async def _post(client, path: str, payload: dict) -> dict:
    r = await client.post(path, json=payload)
    assert r.status_code == 200, r.text
    return r.json()


async def test_classification_torch_vs_onnx(client) -> None:
    for model in ("sst2-teacher", "sst2-student"):
        results = {}
        for suffix in ("", "@torch", "@onnx-int8"):
            body = await _post(client, "/classify", {"inputs": TEXTS, "top_k": None, "model": model + suffix})
            results[suffix] = [{d["label"]: d["score"] for d in r} for r in body["results"]]
        for onnx, torch, int8 in zip(results[""], results["@torch"], results["@onnx-int8"], strict=False):
            assert onnx == pytest.approx(torch, abs=FP32_TOL)
            assert max(onnx, key=onnx.get) == max(int8, key=int8.get) or abs(onnx["positive"] - 0.5) < 0.01


async def test_qa_torch_vs_onnx(client) -> None:
    payload = {"question": "who jumps?", "context": "the quick brown fox jumps over the lazy dog", "top_k": 3}
    onnx = (await _post(client, "/qa", {**payload, "model": "squad-teacher"}))["results"][0]
    torch = (await _post(client, "/qa", {**payload, "model": "squad-teacher@torch"}))["results"][0]
    assert [(a["start"], a["end"]) for a in onnx] == [(a["start"], a["end"]) for a in torch]
    assert [a["score"] for a in onnx] == pytest.approx([a["score"] for a in torch], abs=FP32_TOL)


async def test_embedding_torch_vs_onnx(client) -> None:
    vectors = {}
    for suffix in ("", "@torch", "@onnx-int8"):
        body = await _post(client, "/embed", {"inputs": TEXTS, "model": "embed-teacher" + suffix})
        vectors[suffix] = np.array(body["embeddings"])
    np.testing.assert_allclose(vectors[""], vectors["@torch"], atol=FP32_TOL)
    cosine = (vectors[""] * vectors["@onnx-int8"]).sum(axis=1)
    assert cosine.min() > 0.99


async def test_torch_bf16_serves_the_fp32_answers_at_bf16_precision(model_repo) -> None:
    """`torch-bf16` (Linear weights bf16 under autocast) is a backend of its own: named in the
    response and /models, numbers within bf16's precision of fp32 torch (served first, under the
    plain names)."""
    from app.settings import Settings
    from tests.conftest import serve

    async with serve(Settings(models_dir=model_repo, backends=["torch", "torch-bf16"], threads=1)) as client:
        served = (await client.get("/models")).json()
        assert {(m["name"], m["backend"]) for m in served["models"]} >= {
            ("sst2-teacher@torch-bf16", "torch-bf16"), ("embed-student@torch-bf16", "torch-bf16")}
        scores = {}
        for suffix in ("", "@torch-bf16"):
            body = await _post(client, "/classify", {"inputs": TEXTS, "top_k": None, "model": "sst2-teacher" + suffix})
            assert body["model"] == "sst2-teacher" + suffix
            scores[suffix] = [{d["label"]: d["score"] for d in r} for r in body["results"]]
        for fp32, bf16 in zip(scores[""], scores["@torch-bf16"], strict=True):
            assert bf16 == pytest.approx(fp32, abs=0.02)
            assert bf16 != fp32  # computed in bf16, not silently in fp32
        vectors = [np.array((await _post(client, "/embed", {"inputs": TEXTS, "model": "embed-teacher" + suffix})
                             )["embeddings"]) for suffix in ("", "@torch-bf16")]
        assert (vectors[0] * vectors[1]).sum(axis=1).min() > 0.995
        # every torch model of the process loads and runs on one thread (one OpenMP team)
        assert [t.name for t in threading.enumerate() if t.name.startswith("torch-cpu")] == ["torch-cpu_0"]
