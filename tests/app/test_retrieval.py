"""POST /similarity and /rerank (text-embeddings-inference's bodies) and `dimensions` on the
embedding endpoints, checked against the vectors /embed returns for the same texts."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

SOURCE = "a man is playing a guitar"
SENTENCES = ["someone plays music", "a cat sleeps on the sofa", "a man is playing a guitar"]


async def _vectors(client, texts: list[str], model: str = "student") -> np.ndarray:
    body = {"inputs": texts, "model": model, "normalize": True}
    return np.array((await client.post("/embed", json=body)).json()["embeddings"])


async def test_similarity_is_the_cosine_of_the_embed_vectors_in_order(client) -> None:
    body = {"inputs": {"source_sentence": SOURCE, "sentences": SENTENCES}, "model": "teacher"}
    response = await client.post("/similarity", json=body)
    assert response.status_code == 200, response.text
    got = response.json()
    vectors = await _vectors(client, [SOURCE, *SENTENCES], "teacher")
    assert got["model"] == "embed-teacher"
    assert got["scores"] == pytest.approx((vectors[1:] @ vectors[0]).tolist(), abs=1e-5)
    assert got["scores"][2] == pytest.approx(1.0, abs=1e-5)  # the identical sentence
    assert len(got["items"]) == 1 + len(SENTENCES)
    assert got["usage"]["tokens"] == sum(item["tokens"] for item in got["items"])


async def test_rerank_orders_best_first_and_keeps_top_n(client) -> None:
    body = {"query": SOURCE, "texts": SENTENCES, "top_n": 2, "return_text": True}
    got = (await client.post("/rerank", json=body)).json()
    vectors = await _vectors(client, [SOURCE, *SENTENCES])
    cosines = vectors[1:] @ vectors[0]
    best = np.argsort(-cosines)[:2].tolist()
    assert [r["index"] for r in got["results"]] == best
    assert [r["text"] for r in got["results"]] == [SENTENCES[i] for i in best]
    assert [r["score"] for r in got["results"]] == pytest.approx(cosines[best].tolist(), abs=1e-5)
    plain = (await client.post("/rerank", json={"query": SOURCE, "texts": SENTENCES})).json()
    assert len(plain["results"]) == len(SENTENCES)
    assert "text" not in plain["results"][0]


async def test_dimensions_cut_and_renormalise_on_both_embedding_endpoints(client) -> None:
    full = await _vectors(client, SENTENCES)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    cut = (await client.post("/embed", json={"inputs": SENTENCES, "dimensions": 8})).json()
    assert cut["dim"] == 8
    assert np.array(cut["embeddings"]) == pytest.approx(expected, abs=1e-5)
    openai = (await client.post("/v1/embeddings", json={"input": SENTENCES, "dimensions": 8})).json()
    assert np.array([d["embedding"] for d in openai["data"]]) == pytest.approx(expected, abs=1e-5)


async def test_bad_retrieval_input_names_the_field_and_the_limit(client) -> None:
    size = (await _vectors(client, ["x"])).shape[1]
    too_wide = await client.post("/embed", json={"inputs": ["x"], "dimensions": size + 1})
    assert too_wide.status_code == 422
    assert too_wide.json()["error"]["param"] == "dimensions"
    assert f"at most {size}" in too_wide.json()["error"]["message"]
    empty = await client.post("/similarity", json={"inputs": {"source_sentence": "x", "sentences": []}})
    assert empty.status_code == 422
    assert "inputs.sentences" in empty.json()["error"]["param"]
    many = await client.post("/rerank", json={"query": "q", "texts": ["t"] * 64})  # 64 texts + the query > 64
    assert many.status_code == 413
    assert many.json()["error"]["param"] == "texts"
    long_text = await client.post("/rerank", json={"query": "q", "texts": ["ok", "y" * 20_001]})
    assert long_text.status_code == 413
    assert long_text.json()["error"]["param"] == "texts.1"
    assert (await client.post("/rerank", json={"query": "q", "texts": ["t"], "top_n": 0})).status_code == 422
