"""POST /classify through the real HTTP stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.app import reference

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_scores_are_softmax_of_backend_logits(client, model_repo: Path) -> None:
    text = "a good film with a great story"
    r = await client.post("/classify", json={"inputs": text, "top_k": None, "model": "sst2-teacher"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = np.exp(reference.logits(model_repo / "sst2-teacher", text))
    expected /= expected.sum()
    got = {d["label"]: d["score"] for d in body["results"][0]}
    assert got == pytest.approx({"negative": expected[0], "positive": expected[1]}, abs=1e-6)
    assert [d["score"] for d in body["results"][0]] == sorted(got.values(), reverse=True)
    assert body["model"] == "sst2-teacher"
    assert body["items"] == [{"tokens": 9, "truncated": False}]
    assert body["usage"] == {"tokens": 9}


async def test_default_is_student_top1_and_batches_of_texts(client) -> None:
    r = await client.post("/classify", json={"inputs": ["good", "bad movie", "the plot was dull"]})
    body = r.json()
    assert body["model"] == "sst2-student"
    assert [len(res) for res in body["results"]] == [1, 1, 1]
    assert [i["tokens"] for i in body["items"]] == [3, 4, 6]
    assert body["usage"]["tokens"] == 13


async def test_text_pairs_use_both_segments(client, model_repo: Path) -> None:
    pair = ["the film was good", "the actor was bad"]
    r = await client.post("/classify", json={"inputs": [pair], "top_k": 2, "model": "teacher"})
    assert r.status_code == 200, r.text
    expected = np.exp(reference.logits(model_repo / "sst2-teacher", tuple(pair)))
    expected /= expected.sum()
    scores = {d["label"]: d["score"] for d in r.json()["results"][0]}
    assert scores["positive"] == pytest.approx(expected[1], abs=1e-6)
    assert r.json()["items"][0]["tokens"] == 2 + 4 + 1 + 4


async def test_long_input_is_truncated_and_flagged(client) -> None:
    text = " ".join(["good"] * 100)
    body = (await client.post("/classify", json={"inputs": [text, "good"]})).json()
    assert body["items"] == [{"tokens": 64, "truncated": True}, {"tokens": 3, "truncated": False}]


async def test_truncate_false_rejects_long_input(client) -> None:
    text = " ".join(["good"] * 100)
    r = await client.post("/classify", json={"inputs": ["good", text], "truncate": False})
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "input_too_long"
    assert r.json()["error"]["param"] == "inputs.1"
